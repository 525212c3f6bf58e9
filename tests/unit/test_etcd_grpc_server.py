"""dengine.etcd.grpc_server: etcd's gRPC API on trio and h2, driven by real
gRPC clients -- grpcio (in a worker thread), etcdctl (when installed) -- and,
for what those never send (garbage, compressed messages, a tiny window), a
raw HTTP/2 client built on h2 in the test.

Rules of this module: one single-node engine in-process per test, the
server on 127.0.0.1 port 0, every test under an absolute ``fail_after``;
blocking grpcio calls run in ``trio.to_thread`` with their own timeouts.
"""

from __future__ import annotations

import os
import pathlib
import queue
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import trio
import trustme

import dengine
from dengine.errors import AddressInUse
from dengine.etcd.schema import MESSAGES as M
from dengine.etcd.service import RPCS, EtcdService
from tests.tls_files import cert_files

grpc = pytest.importorskip("grpc")
h2_connection = pytest.importorskip("h2.connection")  # before the server module, which needs it
import h2.config  # noqa: E402
import h2.events  # noqa: E402

from dengine.etcd import grpc_server as h2_server  # noqa: E402
from dengine.etcd.grpc_server import GrpcServer, grpc_message, open_grpc_server, parse_timeout  # noqa: E402

DEADLINE = 30
ETCDCTL = shutil.which("etcdctl")


@pytest.fixture
async def engine(tmp_path: pathlib.Path) -> AsyncIterator[dengine.Engine]:
    async with dengine.open_engine(tmp_path / "data") as engine:
        await engine.wait_ready(10)
        yield engine


@pytest.fixture
async def server(engine: dengine.Engine) -> AsyncIterator[GrpcServer]:
    async with open_grpc_server(EtcdService(engine), "127.0.0.1:0") as server:
        yield server


def _unary(channel: Any, path: str) -> Any:
    rpc = RPCS[path]
    return channel.unary_unary(path, request_serializer=M[rpc.request].SerializeToString,
                               response_deserializer=M[rpc.response].FromString)


def _stream(channel: Any, path: str) -> Any:
    rpc = RPCS[path]
    return channel.stream_stream(path, request_serializer=M[rpc.request].SerializeToString,
                                 response_deserializer=M[rpc.response].FromString)


async def _in_thread(port: int, fn: Callable[[Any], Any], *, credentials: Any = None) -> Any:
    """``fn(channel)`` on a grpcio channel to the server, in a worker thread."""
    def run() -> Any:
        target = f"127.0.0.1:{port}"
        channel = grpc.insecure_channel(target) if credentials is None else grpc.secure_channel(target, credentials)
        with channel:
            return fn(channel)
    return await trio.to_thread.run_sync(run)


def _requests(q: queue.Queue[Any]) -> Iterator[Any]:
    """A request iterator for a grpcio stream: items of ``q`` until None."""
    while (item := q.get(timeout=20)) is not None:
        yield item


# --------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------


def test_grpc_timeout_units() -> None:
    assert parse_timeout("10S") == 10
    assert parse_timeout("500m") == pytest.approx(0.5)
    assert parse_timeout("1000000u") == pytest.approx(1)
    assert parse_timeout("5000000n") == pytest.approx(0.005)
    assert parse_timeout("1H") == 3600
    assert parse_timeout("2M") == 120
    assert parse_timeout(None) is None
    assert parse_timeout("") is None
    assert parse_timeout("S") is None
    assert parse_timeout("10x") is None
    assert parse_timeout("-1S") is None


def test_grpc_message_is_percent_encoded() -> None:
    assert grpc_message("etcdserver: key not found") == "etcdserver: key not found"
    assert grpc_message("100%") == "100%25"
    assert grpc_message("a\nb") == "a%0Ab"
    assert grpc_message("é") == "%C3%A9"


# --------------------------------------------------------------------------
# grpcio: unary calls
# --------------------------------------------------------------------------


async def test_kv_calls(server: GrpcServer) -> None:
    def calls(channel: Any) -> None:
        put = _unary(channel, "/etcdserverpb.KV/Put")
        get = _unary(channel, "/etcdserverpb.KV/Range")
        txn = _unary(channel, "/etcdserverpb.KV/Txn")
        delete = _unary(channel, "/etcdserverpb.KV/DeleteRange")
        put(M["PutRequest"](key=b"a", value=b"1"), timeout=10)
        put(M["PutRequest"](key=b"a/b", value=b"2"), timeout=10)
        got = get(M["RangeRequest"](key=b"a"), timeout=10)
        assert [(kv.key, kv.value) for kv in got.kvs] == [(b"a", b"1")]
        assert got.header.revision > 0
        scan = get(M["RangeRequest"](key=b"a", range_end=b"b"), timeout=10)
        assert scan.count == 2
        res = txn(M["TxnRequest"](
            compare=[M["Compare"](key=b"a", target=3, result=0, value=b"1")],
            success=[M["RequestOp"](request_put=M["PutRequest"](key=b"a", value=b"3"))],
            failure=[]), timeout=10)
        assert res.succeeded
        assert get(M["RangeRequest"](key=b"a"), timeout=10).kvs[0].value == b"3"
        gone = delete(M["DeleteRangeRequest"](key=b"a", range_end=b"b", prev_kv=True), timeout=10)
        assert gone.deleted == 2
        assert get(M["RangeRequest"](key=b"a", range_end=b"b"), timeout=10).count == 0

    with trio.fail_after(DEADLINE):
        await _in_thread(server.port, calls)


async def test_large_values_span_many_frames(server: GrpcServer) -> None:
    value = os.urandom(900 * 1024)  # many DATA frames both ways, beyond the stream window

    def calls(channel: Any) -> bytes:
        _unary(channel, "/etcdserverpb.KV/Put")(M["PutRequest"](key=b"big", value=value), timeout=10)
        return bytes(_unary(channel, "/etcdserverpb.KV/Range")(M["RangeRequest"](key=b"big"), timeout=10).kvs[0].value)

    with trio.fail_after(DEADLINE):
        assert await _in_thread(server.port, calls) == value


async def test_unknown_method_is_unimplemented(server: GrpcServer) -> None:
    def call(channel: Any) -> tuple[Any, str]:
        for path in ("/nope.Service/Nothing", "/etcdserverpb.Maintenance/Defragment"):
            try:
                channel.unary_unary(path)(b"", timeout=10)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNIMPLEMENTED, path
                last = exc
        return last.code(), last.details()

    with trio.fail_after(DEADLINE):
        code, details = await _in_thread(server.port, call)
    assert "defragment" in details


async def test_deadline_cancels_the_call(engine: dengine.Engine) -> None:
    service = EtcdService(engine)
    cancelled = trio.Event()

    async def stuck(request: Any) -> Any:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    setattr(service, "range", stuck)
    with trio.fail_after(DEADLINE):
        async with open_grpc_server(service, "127.0.0.1:0") as server:
            def call(channel: Any) -> Any:
                with pytest.raises(grpc.RpcError) as info:
                    _unary(channel, "/etcdserverpb.KV/Range")(M["RangeRequest"](key=b"k"), timeout=0.3)
                return info.value.code()

            assert await _in_thread(server.port, call) == grpc.StatusCode.DEADLINE_EXCEEDED
            await cancelled.wait()  # the server cancelled the handler itself
            # The server answers DEADLINE_EXCEEDED itself (a raw client waits for the answer).
            async with await RawClient.open(server.port) as raw:
                reply = await raw.call("/etcdserverpb.KV/Range", _frame(M["RangeRequest"](key=b"k")),
                                       headers=[("grpc-timeout", "200m")])
            assert reply.status == 4
            assert reply.message == "context deadline exceeded"
            assert server.active == 0


async def test_concurrent_calls_from_many_threads(engine: dengine.Engine) -> None:
    service = EtcdService(engine)
    real_range = service.range

    async def slow_range(request: Any) -> Any:
        await trio.sleep(0.2)
        return await real_range(request)

    setattr(service, "range", slow_range)
    with trio.fail_after(DEADLINE):
        async with open_grpc_server(service, "127.0.0.1:0") as server:
            def calls(channel: Any) -> float:
                put = _unary(channel, "/etcdserverpb.KV/Put")
                get = _unary(channel, "/etcdserverpb.KV/Range")

                def worker(i: int) -> None:
                    for j in range(10):
                        put(M["PutRequest"](key=b"k%d-%d" % (i, j), value=b"v"), timeout=10)
                    assert get(M["RangeRequest"](key=b"k%d-0" % i), timeout=10).kvs[0].value == b"v"

                started = time.monotonic()
                with ThreadPoolExecutor(16) as pool:
                    list(pool.map(worker, range(16)))
                return time.monotonic() - started

            elapsed = await _in_thread(server.port, calls)
            # 16 slow reads of 0.2 s each, one connection: they ran at once.
            assert elapsed < 16 * 0.2
            count = await _in_thread(server.port, lambda ch: _unary(ch, "/etcdserverpb.KV/Range")(
                M["RangeRequest"](key=b"k", range_end=b"l", count_only=True), timeout=10).count)
            assert count == 160


async def test_oversized_message_is_resource_exhausted(engine: dengine.Engine) -> None:
    with trio.fail_after(DEADLINE):
        async with open_grpc_server(EtcdService(engine), "127.0.0.1:0", max_message_bytes=1024) as server:
            def calls(channel: Any) -> tuple[Any, Any]:
                put = _unary(channel, "/etcdserverpb.KV/Put")
                with pytest.raises(grpc.RpcError) as info:
                    put(M["PutRequest"](key=b"k", value=b"x" * 4000), timeout=10)
                put(M["PutRequest"](key=b"k", value=b"x" * 600), timeout=10)  # the connection still serves
                put(M["PutRequest"](key=b"k2", value=b"x" * 600), timeout=10)
                with pytest.raises(grpc.RpcError) as sent:  # a response over the limit
                    _unary(channel, "/etcdserverpb.KV/Range")(M["RangeRequest"](key=b"k", range_end=b"l"), timeout=10)
                return info.value.code(), sent.value.code()

            assert await _in_thread(server.port, calls) == (grpc.StatusCode.RESOURCE_EXHAUSTED,) * 2


async def test_too_many_calls_are_resource_exhausted(engine: dengine.Engine) -> None:
    service = EtcdService(engine)
    release = trio.Event()

    async def held(request: Any) -> Any:
        await release.wait()
        return M["RangeResponse"](header=service.header())

    setattr(service, "range", held)
    with trio.fail_after(DEADLINE):
        async with open_grpc_server(service, "127.0.0.1:0", max_rpcs=2) as server:
            body = _frame(M["RangeRequest"](key=b"k"))
            replies: list[Reply] = []

            async def call() -> None:
                async with await RawClient.open(server.port) as raw:
                    replies.append(await raw.call("/etcdserverpb.KV/Range", body))

            async with trio.open_nursery() as nursery, await RawClient.open(server.port) as third:
                nursery.start_soon(call)
                nursery.start_soon(call)
                while server.active < 2:
                    await trio.sleep(0.01)
                refused = await third.call("/etcdserverpb.KV/Range", body)
                assert (refused.status, refused.message) == (8, "Concurrent RPC limit exceeded!")
                release.set()
            assert [r.status for r in replies] == [0, 0]


# --------------------------------------------------------------------------
# grpcio: streams
# --------------------------------------------------------------------------


async def test_watch_stream(server: GrpcServer) -> None:
    def watch(channel: Any) -> list[str]:
        q: queue.Queue[Any] = queue.Queue()
        responses = _stream(channel, "/etcdserverpb.Watch/Watch")(_requests(q), timeout=20)
        seen = []
        q.put(M["WatchRequest"](create_request=M["WatchCreateRequest"](key=b"w", range_end=b"x")))
        created = next(responses)
        assert created.created
        _unary(channel, "/etcdserverpb.KV/Put")(M["PutRequest"](key=b"w1", value=b"v"), timeout=10)
        event = next(responses)
        seen.append(f"{event.events[0].type} {event.events[0].kv.key.decode()}")
        q.put(M["WatchRequest"](cancel_request=M["WatchCancelRequest"](watch_id=created.watch_id)))
        cancelled = next(responses)
        assert cancelled.canceled and cancelled.watch_id == created.watch_id
        responses.cancel()
        q.put(None)
        return seen

    with trio.fail_after(DEADLINE):
        assert await _in_thread(server.port, watch) == ["0 w1"]
        while server.active:  # the client's cancel ended the stream's task
            await trio.sleep(0.01)


async def test_lease_keep_alive_stream(server: GrpcServer) -> None:
    def keep_alive(channel: Any) -> list[int]:
        lease = _unary(channel, "/etcdserverpb.Lease/LeaseGrant")(M["LeaseGrantRequest"](TTL=30), timeout=10)
        # 200 requests at once: more than the stream's channel holds, so its bytes are held and drained.
        requests = [M["LeaseKeepAliveRequest"](ID=lease.ID)] * 200
        responses = _stream(channel, "/etcdserverpb.Lease/LeaseKeepAlive")(iter(requests), timeout=20)
        return [r.TTL for r in responses]

    with trio.fail_after(DEADLINE):
        ttls = await _in_thread(server.port, keep_alive)
    assert len(ttls) == 200 and all(ttl == 30 for ttl in ttls)
    assert server.active == 0


async def test_stop_ends_open_streams(engine: dengine.Engine) -> None:
    with trio.fail_after(DEADLINE):
        opened = trio.Event()
        result: list[Any] = []

        def watch(channel: Any, token: Any) -> None:
            q: queue.Queue[Any] = queue.Queue()
            responses = _stream(channel, "/etcdserverpb.Watch/Watch")(_requests(q), timeout=20)
            q.put(M["WatchRequest"](create_request=M["WatchCreateRequest"](key=b"w")))
            assert next(responses).created
            trio.from_thread.run_sync(opened.set, trio_token=token)
            try:
                next(responses)
            except grpc.RpcError as exc:
                result.append(exc.code())
            q.put(None)

        async with trio.open_nursery() as nursery:
            async with open_grpc_server(EtcdService(engine), "127.0.0.1:0") as server:
                token = trio.lowlevel.current_trio_token()
                nursery.start_soon(_in_thread, server.port, lambda ch: watch(ch, token))
                await opened.wait()
        assert result == [grpc.StatusCode.UNAVAILABLE]


# --------------------------------------------------------------------------
# Raw HTTP/2: what real clients never send
# --------------------------------------------------------------------------


def _frame(message: Any, flag: int = 0) -> bytes:
    data: bytes = message.SerializeToString()
    return bytes([flag]) + len(data).to_bytes(4, "big") + data


def _headers(headers: Any) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in headers}


class Reply:
    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.data = b""
        self.trailers: dict[str, str] = {}
        self.reset: int | None = None

    @property
    def status(self) -> int:
        return int({**self.headers, **self.trailers}.get("grpc-status", "-1"))

    @property
    def message(self) -> str:
        return {**self.headers, **self.trailers}.get("grpc-message", "")


class RawClient:
    """A minimal HTTP/2 client on h2: one call at a time, data acknowledged
    as read, (a small window, not opened more than by what it read)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h2 = h2_connection.H2Connection(config=h2.config.H2Configuration(client_side=True,
                                                                            header_encoding="utf-8"))

    @classmethod
    async def open(cls, port: int) -> RawClient:
        client = cls(await trio.open_tcp_stream("127.0.0.1", port))
        client.h2.initiate_connection()
        await client.flush()
        return client

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stream.aclose()

    async def flush(self) -> None:
        if data := self.h2.data_to_send():
            await self.stream.send_all(data)

    async def call(self, path: str, body: bytes, *, headers: list[tuple[str, str]] | None = None) -> Reply:
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", path),
                                   (":authority", "test"), ("content-type", "application/grpc"),
                                   ("te", "trailers"), *(headers or [])])
        reply = Reply()
        sent = 0
        while sent < len(body):  # the request as the server's window allows
            size = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size, len(body) - sent)
            if size <= 0:
                await self.flush()
                if await self._pump(sid, reply):
                    return reply
                continue
            self.h2.send_data(sid, body[sent:sent + size])
            sent += size
        self.h2.end_stream(sid)
        await self.flush()
        while not await self._pump(sid, reply):
            pass
        return reply

    async def _pump(self, sid: int, reply: Reply) -> bool:
        """Read once; True when stream ``sid`` ended."""
        data = await self.stream.receive_some(65536)
        assert data, "the server closed the connection"
        done = False
        for event in self.h2.receive_data(data):
            if getattr(event, "stream_id", None) != sid:
                continue
            if isinstance(event, h2.events.ResponseReceived):
                reply.headers = _headers(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                reply.data += event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length, sid)
            elif isinstance(event, h2.events.TrailersReceived):
                reply.trailers = _headers(event.headers)
            elif isinstance(event, h2.events.StreamReset):
                reply.reset = event.error_code
                done = True
            elif isinstance(event, h2.events.StreamEnded):
                done = True
        await self.flush()
        return done


async def test_garbage_closes_that_connection_only(server: GrpcServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # The last garbage is a preface and the header of a 16 MiB frame: it is dropped
    # when no SETTINGS came within the handshake time.
    monkeypatch.setattr(h2_server, "HANDSHAKE_TIMEOUT", 0.5)
    with trio.fail_after(DEADLINE):
        for garbage in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00" * 100,
                        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 64):
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            async with stream:
                await stream.send_all(garbage)
                while await stream.receive_some(65536):  # a SETTINGS, maybe a GOAWAY, then the end
                    pass
        put = await _in_thread(server.port, lambda ch: _unary(ch, "/etcdserverpb.KV/Put")(
            M["PutRequest"](key=b"after", value=b"garbage"), timeout=10))
        assert put.header.revision > 0


async def test_compressed_message_is_unimplemented(server: GrpcServer) -> None:
    with trio.fail_after(DEADLINE):
        async with await RawClient.open(server.port) as raw:
            reply = await raw.call("/etcdserverpb.KV/Put", _frame(M["PutRequest"](key=b"k", value=b"v"), flag=1),
                                   headers=[("grpc-encoding", "gzip")])
            assert (reply.status, reply.message) == (12, "compression is not supported")
            assert reply.headers[":status"] == "200"
            assert reply.headers["grpc-accept-encoding"] == "identity"
            # Same connection, a good call: messages split over frames, several in one stream error out.
            ok = await raw.call("/etcdserverpb.KV/Put", _frame(M["PutRequest"](key=b"k", value=b"v")))
            assert ok.status == 0 and M["PutResponse"].FromString(ok.data[5:]).header.revision > 0
            two = await raw.call("/etcdserverpb.KV/Range", _frame(M["RangeRequest"](key=b"k")) * 2)
            assert two.status == 13


async def test_responses_wait_for_the_client_window(server: GrpcServer) -> None:
    value = os.urandom(300 * 1024)  # several times the client's 64 KiB window
    with trio.fail_after(DEADLINE):
        async with await RawClient.open(server.port) as raw:
            put = await raw.call("/etcdserverpb.KV/Put", _frame(M["PutRequest"](key=b"big", value=value)))
            assert put.status == 0
            got = await raw.call("/etcdserverpb.KV/Range", _frame(M["RangeRequest"](key=b"big")))
            assert got.status == 0
            assert int.from_bytes(got.data[1:5], "big") == len(got.data) - 5
            assert M["RangeResponse"].FromString(got.data[5:]).kvs[0].value == value


async def test_not_grpc_is_refused(server: GrpcServer) -> None:
    with trio.fail_after(DEADLINE):
        async with await RawClient.open(server.port) as raw:
            sid = raw.h2.get_next_available_stream_id()
            raw.h2.send_headers(sid, [(":method", "GET"), (":scheme", "http"), (":path", "/"),
                                      (":authority", "test")], end_stream=True)
            await raw.flush()
            while True:
                events = raw.h2.receive_data(await raw.stream.receive_some(65536))
                got = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
                if got:
                    assert _headers(got[0].headers)[":status"] == "405"
                    break


# --------------------------------------------------------------------------
# Binding, TLS
# --------------------------------------------------------------------------


async def test_address_in_use(server: GrpcServer, engine: dengine.Engine) -> None:
    with pytest.raises(AddressInUse, match=f"127.0.0.1:{server.port}"):
        async with open_grpc_server(EtcdService(engine), f"127.0.0.1:{server.port}"):
            pass


async def test_tls_with_client_certificates(tmp_path: pathlib.Path, engine: dengine.Engine) -> None:
    ca = trustme.CA()
    cert, key = cert_files(tmp_path, ca, "server")
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    client = ca.issue_cert("client.example")
    trusted = ca.cert_pem.bytes()

    def put(channel: Any) -> Any:
        return _unary(channel, "/etcdserverpb.KV/Put")(M["PutRequest"](key=b"tls", value=b"1"), timeout=10)

    with trio.fail_after(DEADLINE):
        async with open_grpc_server(EtcdService(engine), "127.0.0.1:0", tls=(cert, key, None)) as server:
            assert (await _in_thread(server.port, put, credentials=grpc.ssl_channel_credentials(trusted))
                    ).header.revision > 0
            with pytest.raises(grpc.RpcError):  # plaintext to a TLS port
                await _in_thread(server.port, lambda ch: _unary(ch, "/etcdserverpb.KV/Put")(
                    M["PutRequest"](key=b"x", value=b"1"), timeout=2))
        async with open_grpc_server(EtcdService(engine), "127.0.0.1:0", tls=(cert, key, str(ca_path))) as server:
            with pytest.raises(grpc.RpcError) as info:  # no client certificate
                await _in_thread(server.port, put, credentials=grpc.ssl_channel_credentials(trusted))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            mutual = grpc.ssl_channel_credentials(trusted, client.private_key_pem.bytes(),
                                                  client.cert_chain_pems[0].bytes())
            assert (await _in_thread(server.port, put, credentials=mutual)).header.revision > 0


# --------------------------------------------------------------------------
# etcdctl (grpc-go)
# --------------------------------------------------------------------------


needs_etcdctl = pytest.mark.skipif(ETCDCTL is None, reason="etcdctl is missing; apt-get install -y etcd-client")


async def _etcdctl(port: int, *args: str, timeout: float = 15) -> str:
    assert ETCDCTL is not None
    env = _etcdctl_env()
    with trio.fail_after(timeout):
        done = await trio.run_process([ETCDCTL, f"--endpoints=127.0.0.1:{port}", "--command-timeout=10s", *args],
                                      capture_stdout=True, capture_stderr=True, check=False, env=env)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def _etcdctl_env() -> dict[str, str]:
    env = {**os.environ, "ETCDCTL_API": "3"}
    env.pop("ETCDCTL_ENDPOINTS", None)
    return env


@needs_etcdctl
async def test_etcdctl(server: GrpcServer) -> None:
    port = server.port
    with trio.fail_after(DEADLINE * 2):
        assert await _etcdctl(port, "put", "a", "b") == "OK\n"
        assert await _etcdctl(port, "get", "a") == "a\nb\n"
        assert "PUT\nw\nseen\n" in await _watch_output(port)
        lease_out = await _etcdctl(port, "lease", "grant", "10")
        assert "granted with TTL(10s)" in lease_out
        lease_id = lease_out.split()[1]
        assert "keepalived with TTL(10)" in await _etcdctl(port, "lease", "keep-alive", "--once", lease_id)
        assert (await _etcdctl(port, "lock", "mylock", "echo", "locked")).strip() == "locked"
        assert await _etcdctl(port, "del", "a") == "1\n"


async def _watch_output(port: int) -> str:
    """What ``etcdctl watch w`` (in the background) printed once it saw ``put w seen``."""
    assert ETCDCTL is not None
    proc = await trio.lowlevel.open_process([ETCDCTL, f"--endpoints=127.0.0.1:{port}", "watch", "w"],
                                            stdout=subprocess.PIPE, env=_etcdctl_env())
    try:
        assert proc.stdout is not None
        out = b""
        for _ in range(50):  # etcdctl says nothing when its watch is created: put until it shows one
            await _etcdctl(port, "put", "w", "seen")
            with trio.move_on_after(0.2):
                while b"seen\n" not in out:
                    chunk = await proc.stdout.receive_some(4096)
                    if not chunk:
                        break
                    out += chunk
            if b"seen\n" in out:
                break
        return out.decode()
    finally:
        proc.kill()
        await proc.wait()

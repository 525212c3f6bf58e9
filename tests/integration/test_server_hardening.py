"""The client endpoint under hostile or broken clients.

Rules: 127.0.0.1 and port 0 only; every test under an absolute fail_after;
no sleeps standing in for synchronisation (we wait on the server's
statistics or on the socket). After each attack a well-behaved client must
still be served and nothing it wrote is lost.
"""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import trio

import dengine
from dengine import Config
from dengine.codec import pack, unpack
from dengine.errors import ErrorCode
from dengine.server import Server, ServiceOptions
from dengine.transport.framing import FrameDecoder, encode_frame, receive_frame
from dengine.transport.handshake import Hello, encode_hello

DEADLINE = 30


def _config(tmp_path: pathlib.Path) -> Config:
    cfg = Config.single_node(str(tmp_path / "data"), client_address="127.0.0.1:0")
    return attrs.evolve(cfg, raft=attrs.evolve(cfg.raft, tick_interval_ms=10))


OPTIONS = ServiceOptions(max_connections=50, handshake_timeout=0.5, write_timeout=1.0, send_queue_size=8)


@pytest.fixture
async def server(tmp_path: pathlib.Path) -> AsyncIterator[Server]:
    with trio.fail_after(DEADLINE):
        async with dengine.open_server(_config(tmp_path), options=OPTIONS) as srv:
            await srv.wait_ready(timeout=5)
            yield srv


class Raw:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()

    async def send(self, body: bytes) -> None:
        await self.stream.send_all(encode_frame(body))

    async def receive(self) -> Any:
        return unpack(await receive_frame(self.stream, self.decoder))

    async def wait_closed(self) -> None:
        while await self.stream.receive_some(65536):
            pass


async def _raw(server: Server, *, hello: bool = True, cluster: str = "dengine", version: int = 1) -> Raw:
    host, port = server.client_address.rsplit(":", 1)
    raw = Raw(await trio.open_tcp_stream(host, int(port)))
    if hello:
        await raw.send(encode_hello(Hello(protocol_version=version, cluster_id=cluster, node_id=None, kind="client")))
    return raw


async def _welcomed(server: Server) -> Raw:
    raw = await _raw(server)
    assert (await raw.receive())[:2] == ["welcome", 1]
    return raw


async def _still_serves(server: Server, key: bytes) -> None:
    async with dengine.open_client([server.client_address], timeout=5) as client:
        await client.put(key, b"ok")
        assert await client.get(key) == b"ok"


async def test_oversized_frame_closes_only_that_connection(server: Server) -> None:
    with trio.fail_after(DEADLINE):
        raw = await _welcomed(server)
        await raw.stream.send_all((64 * 1024 * 1024).to_bytes(4, "big") + b"xx")
        reply = await raw.receive()
        assert reply[0] is None and reply[1] == "error" and reply[2]["code"] == ErrorCode.FRAME_TOO_LARGE
        await raw.wait_closed()
        await raw.stream.aclose()
        await _still_serves(server, b"after-oversized")
        assert server.statistics().protocol_errors == 1


async def test_malformed_msgpack_closes_only_that_connection(server: Server) -> None:
    with trio.fail_after(DEADLINE):
        raw = await _welcomed(server)
        await raw.send(b"\xc1\xc1\xc1")
        reply = await raw.receive()
        assert reply[:2] == [None, "error"] and reply[2]["code"] == ErrorCode.MALFORMED_MESSAGE
        await raw.wait_closed()
        await raw.stream.aclose()
        await _still_serves(server, b"after-garbage")


async def test_unknown_op_and_wrong_types_keep_the_connection(server: Server) -> None:
    with trio.fail_after(DEADLINE):
        raw = await _welcomed(server)
        await raw.send(pack([1, "frobnicate", {}]))
        await raw.send(pack([2, "get", {"key": "not-bytes"}]))
        await raw.send(pack([3, "put", {"key": b"k", "value": b"v", "ttl_ms": "soon"}]))
        await raw.send(pack([4, "put", {"key": b"k", "value": b"v"}]))
        replies = {r[0]: r for r in [await raw.receive() for _ in range(4)]}
        # Requests run concurrently: read only after the put was answered.
        await raw.send(pack([5, "get", {"key": b"k"}]))
        replies[5] = await raw.receive()
        assert replies[1][1:] == ["error", replies[1][2]] and replies[1][2]["code"] == ErrorCode.UNKNOWN_OPERATION
        assert replies[2][2]["code"] == ErrorCode.MALFORMED_MESSAGE and "'key'" in replies[2][2]["message"]
        assert replies[3][2]["code"] == ErrorCode.MALFORMED_MESSAGE
        assert replies[4][1] == "ok" and replies[4][2]["revision"] > 0
        rev = replies[4][2]["revision"]
        assert replies[5][1:] == ["ok", {"value": b"v", "revision": rev, "create_revision": rev, "version": 1,
                                             "lease": 0}]
        await raw.stream.aclose()


@pytest.mark.parametrize(
    ("cluster", "version", "code"),
    [("dengine", 2, ErrorCode.WRONG_PROTOCOL_VERSION), ("other", 1, ErrorCode.WRONG_CLUSTER)],
)
async def test_wrong_version_or_cluster_is_refused(server: Server, cluster: str, version: int, code: int) -> None:
    with trio.fail_after(DEADLINE):
        raw = await _raw(server, cluster=cluster, version=version)
        reply = await raw.receive()
        assert reply[0] == "error" and reply[1] == code
        await raw.wait_closed()
        await raw.stream.aclose()
        if cluster != "dengine":
            with pytest.raises(dengine.DengineError) as info:
                async with dengine.open_client([server.client_address], cluster_id=cluster) as client:
                    await client.get(b"k")
            assert info.value.code == ErrorCode.WRONG_CLUSTER
        await _still_serves(server, b"after-wrong-cluster")


async def test_peer_hello_on_the_client_port_is_refused(server: Server) -> None:
    with trio.fail_after(DEADLINE):
        raw = await _raw(server, hello=False)
        await raw.send(encode_hello(Hello(protocol_version=1, cluster_id="dengine", node_id=2, kind="peer")))
        reply = await raw.receive()
        assert reply[0] == "error" and reply[1] == ErrorCode.PROTOCOL_ERROR and "peer port" in reply[2]
        await raw.wait_closed()
        await raw.stream.aclose()


async def test_client_hello_on_the_peer_port_is_refused() -> None:
    from dengine.transport.peer import open_peer_transport

    with trio.fail_after(DEADLINE):
        async with open_peer_transport(1, "127.0.0.1:0", {}, "dengine") as transport:
            host, port = transport.listen_address.rsplit(":", 1)
            raw = Raw(await trio.open_tcp_stream(host, int(port)))
            await raw.send(encode_hello(Hello(protocol_version=1, cluster_id="dengine", node_id=None, kind="client")))
            reply = await raw.receive()
            assert reply[0] == "error" and reply[1] == ErrorCode.PROTOCOL_ERROR and "client port" in reply[2]
            await raw.wait_closed()
            await raw.stream.aclose()


async def test_silent_client_is_closed_after_the_handshake_timeout(server: Server) -> None:
    with trio.fail_after(DEADLINE):
        raw = await _raw(server, hello=False)
        await raw.wait_closed()  # the server hangs up (0.5 s handshake timeout)
        await raw.stream.aclose()
        await server.wait_statistics(lambda s: s.handshake_failures == 1)
        await _still_serves(server, b"after-silence")


async def test_connection_limit_refuses_with_resource_exhausted(server: Server) -> None:
    with trio.fail_after(DEADLINE):
        kept = [await _welcomed(server) for _ in range(OPTIONS.max_connections)]
        try:
            extra = [await _raw(server) for _ in range(10)]
            for raw in extra:
                reply = await raw.receive()
                assert reply[0] == "error" and reply[1] == ErrorCode.RESOURCE_EXHAUSTED
                await raw.wait_closed()
                await raw.stream.aclose()
            assert server.statistics().connections_refused == 10
            # The connections inside the limit are still served.
            await kept[0].send(pack([1, "put", {"key": b"kept", "value": b"1"}]))
            assert (await kept[0].receive())[1] == "ok"
        finally:
            for raw in kept:
                await raw.stream.aclose()
        await server.wait_statistics(lambda s: s.connections_open == 0)
        await _still_serves(server, b"after-limit")


async def test_client_that_stops_reading_its_watch(server: Server) -> None:
    with trio.fail_after(DEADLINE):
        raw = await _welcomed(server)
        await raw.send(pack([1, "watch", {"key": b"/big/", "prefix": True}]))
        assert (await raw.receive())[2]["created"] is True
        # Now it never reads again. Write far more than the socket buffers hold.
        value = b"x" * 256 * 1024
        async with dengine.open_client([server.client_address], timeout=10) as client:
            with trio.move_on_after(20):
                for i in range(400):
                    await client.put(b"/big/%d" % i, value)
                    if server.statistics().slow_consumers:
                        break
            await server.wait_statistics(lambda s: s.slow_consumers >= 1)
            # The server is unaffected and lost nothing.
            assert await client.get(b"/big/0") == value
            await client.put(b"after-slow", b"ok")
            assert await client.get(b"after-slow") == b"ok"
        await raw.stream.aclose()
        await server.wait_statistics(lambda s: s.streams_open == 0)


async def test_idle_connections_are_closed(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(DEADLINE):
        options = attrs.evolve(OPTIONS, idle_timeout=0.2)
        async with dengine.open_server(_config(tmp_path), options=options) as srv:
            await srv.wait_ready(timeout=5)
            raw = await _welcomed(srv)
            await raw.send(pack([1, "status", {}]))
            assert (await raw.receive())[1] == "ok"
            await raw.wait_closed()
            await raw.stream.aclose()
            assert srv.statistics().idle_closed == 1


async def test_duplicate_request_id_in_flight_is_refused(server: Server) -> None:
    with trio.fail_after(DEADLINE):
        raw = await _welcomed(server)
        await raw.send(pack([7, "watch", {"key": b"dup"}]))
        assert (await raw.receive())[2]["created"] is True
        await raw.send(pack([7, "get", {"key": b"dup"}]))
        reply = await raw.receive()
        assert reply[0] == 7 and reply[1] == "error" and reply[2]["code"] == ErrorCode.INVALID_ARGUMENT
        await raw.send(pack([8, "cancel", {"request_id": 7}]))
        assert await raw.receive() == [8, "ok", {"canceled": True}]
        await raw.stream.aclose()


async def test_thousands_of_connections(tmp_path: pathlib.Path) -> None:
    """2,000 clients connected at once, each with a request in flight: all
    are served, and the server still serves a newcomer afterwards."""
    count = 2000
    options = ServiceOptions(max_connections=count + 10, handshake_timeout=20.0, write_timeout=5.0)
    with trio.fail_after(60):
        async with dengine.open_server(_config(tmp_path), options=options) as srv:
            await srv.wait_ready(timeout=5)
            raws: list[Raw] = []
            try:
                for _ in range(count):
                    raws.append(await _raw(srv))
                for raw in raws:
                    assert (await raw.receive())[:2] == ["welcome", 1]
                assert srv.statistics().connections_open == count
                for n, raw in enumerate(raws):
                    await raw.send(pack([1, "get", {"key": b"/many/%d" % (n % 7), "consistency": "linearizable"}]))
                replies = [await raw.receive() for raw in raws]
                assert all(r[0] == 1 and r[1] == "ok" for r in replies)
            finally:
                for raw in raws:
                    await raw.stream.aclose()
            await srv.wait_statistics(lambda s: s.connections_open == 0)
            await _still_serves(srv, b"after-thousands")

"""dengine.etcd.gateway in-process: one embedded engine behind
``EtcdService`` and ``open_gateway`` on a free loopback port, spoken to over
real sockets with small limits (keep-alive, pipelining, the head/body/idle
timeouts, the connection, head and body limits, Transfer-Encoding, stream
bodies of several requests), and the ``encode``/``decode`` helpers.

Rules: 127.0.0.1 and port 0 only; an absolute fail_after on every test;
data directories under tmp_path.
"""

from __future__ import annotations

import base64
import json
import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

import dengine
from dengine.etcd.gateway import Gateway, GatewayOptions, decode, decode_body, encode, http_status, open_gateway
from dengine.etcd.schema import MESSAGES as M
from dengine.etcd.service import EtcdError, EtcdService
from tests.cluster.etcd_helpers import HttpConn as Peer

TIMEOUT = 20
SMALL = GatewayOptions(max_connections=2, max_head_bytes=1024, max_body_bytes=4096, head_timeout=0.5,
                       body_timeout=0.5, idle_timeout=0.5, write_timeout=2)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@asynccontextmanager
async def gateway(tmp_path: pathlib.Path, options: GatewayOptions = SMALL) -> AsyncIterator[Gateway]:
    async with dengine.open_engine(tmp_path / "d") as engine:
        await engine.wait_ready(timeout=10)
        service = EtcdService(engine)
        async with open_gateway(service, "127.0.0.1:0", options=options) as gw:
            service.etcd_urls = [gw.url]  # as dengine.etcd.server does
            yield gw


def post(path: str, body: bytes | str = b"", *, close: bool = False, extra: str = "") -> bytes:
    data = body.encode() if isinstance(body, str) else body
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            f"{'Connection: close' + chr(13) + chr(10) if close else ''}{extra}\r\n").encode() + data


async def exchange(address: str, request: bytes) -> tuple[int, dict[str, str], Any]:
    peer = await Peer.open(address)
    try:
        await peer.stream.send_all(request)
        return await peer.response()
    finally:
        await peer.aclose()


# -- the connection: keep-alive, pipelining, timeouts, limits -------------------


async def test_keep_alive_serves_two_requests_on_one_connection_then_idles_out(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with gateway(tmp_path) as gw:
            peer = await Peer.open(gw.address)
            try:
                await peer.stream.send_all(post("/v3/kv/put", json.dumps({"key": b64(b"k"), "value": b64(b"v")})))
                status, headers, body = await peer.response()
                assert (status, headers["connection"]) == (200, "keep-alive"), body
                await peer.stream.send_all(post("/v3/kv/range", json.dumps({"key": b64(b"k")})))
                status, headers, body = await peer.response()
                assert status == 200 and headers["content-type"] == "application/json"
                assert isinstance(body, bytes)
                doc = json.loads(body)
                assert [(kv["key"], kv["value"]) for kv in doc["kvs"]] == [(b64(b"k"), b64(b"v"))]
                assert doc["count"] == "1"
                # Idle for longer than idle_timeout (0.5 s): the server closes.
                with trio.fail_after(3):
                    assert await peer.closed()
            finally:
                await peer.aclose()


async def test_pipelined_requests_are_answered_in_order(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with gateway(tmp_path) as gw:
            peer = await Peer.open(gw.address)
            try:
                requests = (post("/v3/kv/put", json.dumps({"key": b64(b"p"), "value": b64(b"1")}))
                            + b"GET /version HTTP/1.1\r\nHost: t\r\n\r\n"
                            + post("/v3/kv/range", json.dumps({"key": b64(b"p")}), close=True))
                await peer.stream.send_all(requests)
                first, second, third = [await peer.response() for _ in range(3)]
                assert first[0] == 200 and "header" in json.loads(first[2])
                assert second[0] == 200 and json.loads(second[2])["etcdserver"] == "3.5.0"
                assert third[0] == 200 and third[1]["connection"] == "close"
                assert json.loads(third[2])["kvs"][0]["value"] == b64(b"1")
                with trio.fail_after(2):
                    assert await peer.closed()
            finally:
                await peer.aclose()


async def test_a_get_body_is_read_and_dropped_as_patroni_sends_it(tmp_path: pathlib.Path) -> None:
    """Patroni sends ``GET /version`` with ``{}``: the body must not be taken for the next request."""
    with trio.fail_after(TIMEOUT):
        async with gateway(tmp_path) as gw:
            peer = await Peer.open(gw.address)
            try:
                await peer.stream.send_all(b"GET /version HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}"
                                           + post("/v3/cluster/member/list", "{}"))
                version, members = await peer.response(), await peer.response()
                assert json.loads(version[2]) == {"etcdserver": "3.5.0", "etcdcluster": "3.5.0"}
                (member,) = json.loads(members[2])["members"]
                assert member["clientURLs"] == [gw.url] and member["ID"] == "1"
            finally:
                await peer.aclose()


async def test_a_head_that_stalls_is_answered_408_and_a_silent_connection_is_closed(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with gateway(tmp_path) as gw:
            peer = await Peer.open(gw.address)
            try:
                await peer.stream.send_all(b"POST /v3/kv/range HTTP/1.1\r\nHost: t\r\n")  # no empty line
                start = trio.current_time()
                status, headers, body = await peer.response()
                assert status == 408 and headers["connection"] == "close"
                assert json.loads(body)["message"] == "dengine: the request head did not arrive in time"
                assert 0.4 < trio.current_time() - start < 3
                with trio.fail_after(2):
                    assert await peer.closed()
            finally:
                await peer.aclose()
            silent = await Peer.open(gw.address)
            try:
                with trio.fail_after(3):
                    assert await silent.closed()
                assert silent.buf == b""  # nothing asked, nothing answered
            finally:
                await silent.aclose()


async def test_a_body_that_never_arrives_is_answered_408(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with gateway(tmp_path) as gw:
            peer = await Peer.open(gw.address)
            try:
                await peer.stream.send_all(b"POST /v3/kv/put HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{\"ke")
                start = trio.current_time()
                status, _, body = await peer.response()
                assert status == 408 and json.loads(body)["code"] == 3
                assert "body did not arrive" in json.loads(body)["error"]
                assert 0.4 < trio.current_time() - start < 3
                with trio.fail_after(2):
                    assert await peer.closed()
            finally:
                await peer.aclose()


async def test_one_connection_over_max_connections_is_answered_503(tmp_path: pathlib.Path) -> None:
    options = GatewayOptions(max_connections=1, head_timeout=5, idle_timeout=5)
    with trio.fail_after(TIMEOUT):
        async with gateway(tmp_path, options) as gw:
            held = await Peer.open(gw.address)
            try:
                await held.stream.send_all(b"GET /version HTTP/1.1\r\nHost: t\r\n\r\n")
                assert (await held.response())[0] == 200  # served, and kept open: it counts
                status, headers, body = await exchange(gw.address, b"GET /version HTTP/1.1\r\nHost: t\r\n\r\n")
                assert (status, headers["connection"]) == (503, "close")
                error = json.loads(body)
                assert error["code"] == 14 and "limit of 1 gateway connections" in error["message"]
            finally:
                await held.aclose()
            # The held connection gone, a new one is served.
            with trio.fail_after(5):
                while gw._active:
                    await trio.sleep(0.02)
            assert (await exchange(gw.address, b"GET /version HTTP/1.1\r\nHost: t\r\n\r\n"))[0] == 200


async def test_limits_of_head_body_and_encoding(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with gateway(tmp_path) as gw:
            # A head over max_head_bytes (1024): 431, complete or not.
            big = b"POST /v3/kv/range HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"a" * 2000 + b"\r\nContent-Length: 0\r\n\r\n"
            assert (await exchange(gw.address, big))[0] == 431
            assert (await exchange(gw.address, big[:1500]))[0] == 431
            # A body over max_body_bytes (4096): 413 from the head alone.
            status, _, body = await exchange(gw.address, b"POST /v3/kv/put HTTP/1.1\r\nHost: t\r\n"
                                                         b"Content-Length: 4097\r\n\r\n")
            assert status == 413 and "limit of 4096" in json.loads(body)["error"]
            # Transfer-Encoding: 411 (a Content-Length is required).
            status, _, body = await exchange(gw.address, b"POST /v3/kv/put HTTP/1.1\r\nHost: t\r\n"
                                                         b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
            assert status == 411 and "Content-Length" in json.loads(body)["error"]
            # Other methods: 405; HTTP/1.1 without Host: 400.
            assert (await exchange(gw.address, b"PUT /v3/kv/put HTTP/1.1\r\nHost: t\r\n\r\n"))[0] == 405
            assert (await exchange(gw.address, b"POST /v3/kv/put HTTP/1.1\r\n\r\n"))[0] == 400


async def test_paths_prefixes_and_refusals(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with gateway(tmp_path) as gw:
            put = json.dumps({"key": b64(b"a"), "value": b64(b"1")})
            for prefix in ("/v3", "/v3beta", "/v3alpha"):
                assert (await exchange(gw.address, post(f"{prefix}/kv/put", put)))[0] == 200
            status, _, body = await exchange(gw.address, post("/v3/nope", "{}"))
            assert (status, json.loads(body)["code"]) == (404, 5)
            status, headers, body = await exchange(gw.address, b"GET /v3/kv/range HTTP/1.1\r\nHost: t\r\n\r\n")
            assert (status, headers["allow"]) == (405, "POST")
            for path in ("/v3/maintenance/defragment", "/v3/auth/authenticate", "/v3/lock/lock"):
                status, _, body = await exchange(gw.address, post(path, "{}"))
                error = json.loads(body)
                assert (status, error["code"]) == (501, 12) and error["message"].startswith("dengine: "), error
            status, _, body = await exchange(gw.address, b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            assert (status, json.loads(body)) == (200, {"health": "true", "reason": ""})


async def test_a_stream_body_of_several_requests_gets_one_answer_each(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with gateway(tmp_path) as gw:
            status, _, body = await exchange(gw.address, post("/v3/lease/grant", '{"TTL": 30}'))
            lease = json.loads(body)["ID"]
            # Two JSON objects back to back (and whitespace), as grpc-gateway's decoder reads a stream body.
            stream_body = '{"ID": "%s"}\n {"ID": 424242}' % lease
            peer = await Peer.open(gw.address)
            try:
                await peer.stream.send_all(post("/v3/lease/keepalive", stream_body))
                status, headers, chunks = await peer.response()
                with trio.fail_after(2):
                    assert await peer.closed()  # the stream answered, the connection ends
            finally:
                await peer.aclose()
            assert (status, headers["transfer-encoding"]) == (200, "chunked")
            assert isinstance(chunks, list) and len(chunks) == 2
            assert all(c.endswith(b"\n") and c.count(b"\n") == 1 for c in chunks)  # one message per chunk
            first, second = (json.loads(c)["result"] for c in chunks)
            assert (first["ID"], first["TTL"]) == (lease, "30")
            assert second["ID"] == "424242" and "TTL" not in second  # gone: TTL 0, left out (as etcd)
            # A unary body of two objects is refused; a stream body that is not JSON too.
            status, _, body = await exchange(gw.address, post("/v3/kv/range", '{"key": "YQ=="}{"key": "Yg=="}'))
            assert status == 400 and "more than one JSON value" in json.loads(body)["error"]
            status, _, body = await exchange(gw.address, post("/v3/lease/keepalive", '{"ID": 1} [oops'))
            assert (status, json.loads(body)["code"]) == (400, 3)


async def test_a_closed_watch_frees_its_connection(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with gateway(tmp_path) as gw:
            peer = await Peer.open(gw.address)
            await peer.stream.send_all(post("/v3/watch", json.dumps({"create_request": {"key": b64(b"w")}})))
            while b'"created":true' not in peer.buf:
                await peer._fill()
            assert gw._active == 1
            await peer.aclose()
            with trio.fail_after(5):
                while gw._active:
                    await trio.sleep(0.02)


# -- encode / decode ------------------------------------------------------------


def test_encode_writes_etcd_json() -> None:
    header = M["ResponseHeader"](cluster_id=2**64 - 1, member_id=1, revision=5, raft_term=2)
    kv = M["KeyValue"](key=b"foo", value=b"bar", create_revision=5, mod_revision=5, version=1)
    out = encode(M["RangeResponse"](header=header, kvs=[kv], count=1))
    assert out == {"header": {"cluster_id": "18446744073709551615", "member_id": "1", "revision": "5",
                              "raft_term": "2"},
                   "kvs": [{"key": "Zm9v", "create_revision": "5", "mod_revision": "5", "version": "1",
                            "value": "YmFy"}],
                   "count": "1"}
    # Defaults are left out: no kvs/count/more, succeeded false, value b"", lease 0, PUT (enum 0).
    assert encode(M["RangeResponse"](header=M["ResponseHeader"](revision=3))) == {"header": {"revision": "3"}}
    assert encode(M["TxnResponse"](succeeded=False)) == {}
    assert encode(M["DeleteRangeResponse"](deleted=0)) == {}
    assert encode(M["LeaseKeepAliveResponse"](ID=7, TTL=0)) == {"ID": "7"}
    events = [M["Event"](type=0, kv=M["KeyValue"](key=b"k", value=b"", lease=0)),
              M["Event"](type=1, kv=M["KeyValue"](key=b"k", mod_revision=9))]
    assert encode(M["WatchResponse"](watch_id=0, created=True, events=events)) == {
        "created": True, "events": [{"kv": {"key": "aw=="}}, {"type": "DELETE", "kv": {"key": "aw==",
                                                                                        "mod_revision": "9"}}]}
    assert encode(M["WatchResponse"](watch_id=-1)) == {"watch_id": "-1"}


def test_decode_reads_what_clients_send() -> None:
    # int64 as a number or a string; bytes base64; enums by name or number.
    req = decode("RangeRequest", {"key": "Zm9v", "range_end": "Zm9w", "limit": 5, "revision": "7",
                                  "sort_order": "DESCEND", "sort_target": 3})
    assert (req.key, req.range_end, req.limit, req.revision, req.sort_order, req.sort_target) == (
        b"foo", b"fop", 5, 7, 2, 3)
    big = decode("LeaseKeepAliveRequest", {"ID": 7587000000000000002})
    assert big.ID == 7587000000000000002 == decode("LeaseKeepAliveRequest", {"ID": "7587000000000000002"}).ID
    # Unknown fields are ignored (grpc-gateway's allowUnknownFields).
    assert decode("PutRequest", {"key": "YQ==", "whatever": [1, 2]}).key == b"a"
    # lowerCamel JSON names, at every level (etcd's own gateway examples use them).
    txn = decode("TxnRequest", {"compare": [{"target": "CREATE", "key": "Zm9v", "createRevision": "2"}],
                                "success": [{"requestPut": {"key": "Zm9v", "value": "YmFy", "prevKv": True}}],
                                "failure": [{"request_range": {"key": "Zm9v", "rangeEnd": "AA=="}}]})
    assert txn.compare[0].create_revision == 2 and txn.compare[0].target == 1
    assert txn.success[0].WhichOneof("request") == "request_put" and txn.success[0].request_put.prev_kv
    assert txn.failure[0].request_range.range_end == b"\0"
    watch = decode("WatchRequest", {"createRequest": {"key": "Zm9v", "startRevision": "3", "prevKv": True,
                                                      "filters": ["NOPUT"]}})
    assert (watch.create_request.start_revision, watch.create_request.prev_kv,
            list(watch.create_request.filters)) == (3, True, [0])
    # What does not fit: EtcdError INVALID_ARGUMENT (HTTP 400).
    for name, bad in (("RangeRequest", {"key": 5}), ("RangeRequest", {"limit": "abc"}),
                      ("RangeRequest", {"sort_order": "SIDEWAYS"}), ("WatchRequest", {"create_request": {
                          "key": "YQ==", "filters": ["NOPUT", "NOTHING"]}}), ("PutRequest", [1]),
                      ("PutRequest", "x")):
        with pytest.raises(EtcdError) as caught:
            decode(name, bad)
        assert caught.value.code == "INVALID_ARGUMENT" and http_status(caught.value.code) == 400


def test_decode_body_takes_one_object_or_a_stream_of_them() -> None:
    assert decode_body("RangeRequest", b"", many=False)[0].key == b""  # an empty body: an empty request
    assert decode_body("RangeRequest", b"  \n", many=True) == []
    two = decode_body("LeaseKeepAliveRequest", b'{"ID": 1}{"ID": "2"}\n\n {"ID": 3}\n', many=True)
    assert [r.ID for r in two] == [1, 2, 3]
    for body in (b'{"key": ', b'{"a": 1} {"b": 2}', b"\xff"):
        with pytest.raises(EtcdError) as caught:
            decode_body("RangeRequest", body, many=False)
        assert caught.value.code == "INVALID_ARGUMENT"


def test_http_status_follows_grpc_gateway() -> None:
    assert [http_status(c) for c in ("OK", "CANCELLED", "INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION",
                                     "OUT_OF_RANGE", "UNIMPLEMENTED", "UNAVAILABLE", "RESOURCE_EXHAUSTED",
                                     "DEADLINE_EXCEEDED", "UNAUTHENTICATED")] == [
        200, 408, 400, 404, 400, 400, 501, 503, 429, 504, 401]


def test_the_gateway_needs_no_http2_library_and_the_grpc_face_says_how_to_get_it(tmp_path: pathlib.Path) -> None:
    """The JSON gateway (and the wiring of both faces) imports neither h2 nor
    grpcio; asking for the gRPC face without h2 is a ConfigError naming the
    install command, before anything is bound."""
    import subprocess
    import sys

    script = (
        "import sys, trio, dengine\n"
        "sys.modules['h2'] = None  # as if h2 were not installed\n"
        "import dengine.etcd.gateway, dengine.etcd.server\n"
        "assert 'grpc' not in sys.modules and 'h2.connection' not in sys.modules\n"
        "from dengine.errors import ConfigError\n"
        "async def main():\n"
        f"    async with dengine.open_engine({str(tmp_path / 'd')!r}) as engine:\n"
        "        try:\n"
        "            async with dengine.etcd.server.open_etcd_api(engine, grpc_address='127.0.0.1:0'):\n"
        "                pass\n"
        "        except ConfigError as exc:\n"
        "            print(exc)\n"
        "trio.run(main)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "needs h2: pip install 'dengine[etcd]'" in out.stdout and "gateway does not" in out.stdout

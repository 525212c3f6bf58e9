"""dengine.http's server in-process: an embedded engine (and one not yet
attached) behind ``open_http_server`` on a free loopback port, spoken to
over real sockets -- the routes, the strict protocol's refusals, the limits,
and the package's page files.

Rules: 127.0.0.1 and port 0 only; an absolute fail_after on every test;
data directories under tmp_path.
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import pytest
import trio

import dengine
from dengine.api import Health
from dengine.errors import AddressInUse
from dengine.http import HttpOptions, open_http_server, serve_http
from dengine.http.server import page_file
from dengine.testing import free_ports, open_cluster

TIMEOUT = 20


async def raw(address: str, request: bytes, *, close: bool = True) -> bytes:
    """Send ``request`` as is; everything the server answers until it closes."""
    host, port = address.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(request)
        if close:
            await stream.send_eof()
        data = bytearray()
        while chunk := await stream.receive_some(65536):
            data += chunk
    return bytes(data)


async def get(address: str, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    answer = await raw(address, f"{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert lines[0].startswith("HTTP/1.1 ")
    assert headers["connection"] == "close" and int(headers["content-length"]) == len(body) or method == "HEAD"
    return int(lines[0].split()[1]), headers, body


def status_line(answer: bytes) -> str:
    return answer.split(b"\r\n", 1)[0].decode()


async def test_an_engine_answers_every_route(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with dengine.open_engine(tmp_path / "d") as engine, open_http_server(engine, "127.0.0.1:0") as http:
            assert http.address is not None and http.address.startswith("127.0.0.1:")
            await engine.wait_ready(timeout=5)
            await engine.client.put(b"/k", b"v")
            code, headers, body = await get(http.address, "/health")
            assert (code, json.loads(body)) == (200, {"health": "true", "reason": ""})
            assert headers["cache-control"] == "no-store"
            for path in ("/livez", "/readyz"):
                assert (await get(http.address, path))[::2] == (200, b"ok\n")

            code, headers, body = await get(http.address, "/status.json")
            doc = json.loads(body)
            assert (code, headers["content-type"]) == (200, "application/json")
            assert (doc["node_id"], doc["role"], doc["leader_id"], doc["ready"]) == (1, "leader", 1, True)
            assert doc["commit_index"] >= 2 and doc["applied_index"] == doc["commit_index"]
            assert doc["health"] == {"health": "true", "reason": ""}
            assert doc["followers"] == [] and len(doc["members"]) == 1
            # The embedded node serves no client endpoint: it is listed, asked nothing.
            (row,) = doc["cluster"]
            assert (row["self"], row["reachable"], row["role"], row["lag"]) == (True, True, "leader", 0)

            code, headers, body = await get(http.address, "/metrics")
            assert code == 200 and headers["content-type"].startswith("text/plain")
            assert b"dengine_" in body

            code, headers, body = await get(http.address, "/")
            assert code == 200 and headers["content-type"] == "text/html; charset=utf-8"
            assert body == page_file("index.html") and b'id="members"' in body
            assert "default-src 'none'" in headers["content-security-policy"]
            for path, kind in (("/page.js", "text/javascript"), ("/page.css", "text/css")):
                code, headers, body = await get(http.address, path)
                assert code == 200 and headers["content-type"].startswith(kind) and body

            code, headers, body = await get(http.address, "/", "HEAD")
            assert code == 200 and body == b"" and int(headers["content-length"]) == len(page_file("index.html"))
            code, _, body = await get(http.address, "/status.json?x=1")
            assert code == 200
            code, _, body = await get(http.address, "/nope")
            assert code == 404 and b"/status.json" in body


async def _wait_unhealthy(engine: dengine.Engine) -> str:
    while (health := engine.health()).healthy:
        await trio.sleep(0.01)
    return health.reason


async def test_engine_health_follows_etcds_rule(tmp_path: pathlib.Path) -> None:
    """A follower cut off from its leader, and a leader cut off from a quorum
    (check-quorum off, so it stays leader), say so; healed, they are healthy."""
    with trio.fail_after(TIMEOUT):
        async with open_cluster(tmp_path / "a", 3) as cluster:
            leader = await cluster.wait_leader()
            # The slower follower may learn of the leader a moment after the quorum.
            while not all(e.health() == Health(True) for e in cluster.engines.values()):
                await trio.sleep(0.01)
            progress = leader.follower_progress()
            assert [p.node_id for p in progress] == sorted(set(cluster.engines) - {leader.status().node_id})
            assert all(p.recently_active and p.state in ("probe", "replicate") and p.lag >= 0 for p in progress)
            assert cluster.followers()[0].follower_progress() == ()
            follower = cluster.followers()[0]
            assert cluster.network is not None
            cluster.network.isolate(follower.status().node_id)
            reason = await _wait_unhealthy(follower)
            assert reason.startswith(("no word from leader", "no leader")), reason
            cluster.network.heal()
            while not follower.health().healthy:
                await trio.sleep(0.01)
        async with open_cluster(tmp_path / "b", 3, raft={"check_quorum": False}) as cluster:
            leader = await cluster.wait_leader()
            assert cluster.network is not None
            cluster.network.isolate(leader.status().node_id)
            reason = await _wait_unhealthy(leader)
            assert reason.startswith("leader without a quorum: heard from 1 of 3 voters"), reason


async def test_the_rates_come_from_the_sampler(tmp_path: pathlib.Path) -> None:
    options = HttpOptions(sample_interval=0.05)
    with trio.fail_after(TIMEOUT):
        async with dengine.open_engine(tmp_path / "d") as engine, open_http_server(
            engine, "127.0.0.1:0", options=options
        ) as http:
            assert http.address is not None
            await engine.wait_ready(timeout=5)
            for k in range(20):
                await engine.client.put(b"/k%d" % k, b"v")
                await trio.sleep(0.01)
            await trio.sleep(0.2)
            doc = json.loads((await get(http.address, "/status.json"))[2])
            history = doc["history"]
            assert history["interval"] == 0.05
            assert sum(v for v in history["writes_per_second"] if v) > 0
            assert sum(v for v in history["entries_per_second"] if v) > 0
            # An engine has no client endpoint: requests are not measured (null, not 0).
            assert set(history["requests_per_second"]) == {None} and doc["requests_per_second"] is None
            assert any(v is not None and v > 0 for v in history["fsync_p99_ms"])


async def test_before_attach_it_is_alive_and_starting(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_http_server(None, "127.0.0.1:0") as http:
            assert http.address is not None and http.source is None
            assert (await get(http.address, "/livez"))[::2] == (200, b"ok\n")
            code, _, body = await get(http.address, "/health")
            assert code == 503 and "starting" in json.loads(body)["reason"]
            assert (await get(http.address, "/readyz"))[0] == 503
            assert (await get(http.address, "/metrics"))[0] == 503
            code, _, body = await get(http.address, "/status.json")
            assert code == 503 and json.loads(body)["starting"] is True
            async with dengine.open_engine(tmp_path / "d") as engine:
                http.attach(engine)
                await engine.wait_ready(timeout=5)
                assert (await get(http.address, "/health"))[0] == 200
            # A stopped engine is neither healthy nor alive.
            assert (await get(http.address, "/health"))[0] == 503
            assert (await get(http.address, "/livez"))[0] == 503
        with pytest.raises(TypeError, match="Engine or Server"):
            http.attach("engine")  # type: ignore[arg-type]


async def test_off_listens_nowhere_and_serve_http_reports_its_address(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_http_server(None, None) as http:
            assert (http.addresses, http.address) == ((), None)
        async with trio.open_nursery() as nursery:
            started = await nursery.start(serve_http, None, "127.0.0.1:0")
            assert (await get(started.address, "/livez"))[0] == 200
            nursery.cancel_scope.cancel()


async def test_refusals_of_the_strict_protocol(tmp_path: pathlib.Path) -> None:
    options = HttpOptions(head_timeout=0.3, max_head_bytes=1024, max_connections=2)
    with trio.fail_after(TIMEOUT):
        async with open_http_server(None, "127.0.0.1:0", options=options) as http:
            a = http.address
            assert a is not None
            answer = await raw(a, b"POST /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status_line(answer) == "HTTP/1.1 405 Method Not Allowed" and b"\r\nAllow: GET, HEAD\r\n" in answer
            assert status_line(await raw(a, b"GET /livez HTTP/2.0\r\nHost: x\r\n\r\n")).startswith("HTTP/1.1 505")
            assert status_line(await raw(a, b"GET /livez HTTP/1.1\r\n\r\n")).startswith("HTTP/1.1 400")  # no Host
            assert status_line(await raw(a, b"GET /livez HTTP/1.0\r\n\r\n")).startswith("HTTP/1.1 200")
            assert status_line(await raw(a, b"GET /livez HTTP/1.1\nHost: x\n\n")).startswith("HTTP/1.1 200")  # bare LF
            body = b"GET /livez HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            assert status_line(await raw(a, body)).startswith("HTTP/1.1 400")
            chunked = b"GET /livez HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            assert status_line(await raw(a, chunked)).startswith("HTTP/1.1 400")
            assert status_line(await raw(a, b"GET http://x/livez HTTP/1.1\r\nHost: x\r\n\r\n")).startswith("HTTP/1.1 400")
            big = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n"
            assert status_line(await raw(a, big)).startswith("HTTP/1.1 431")
            # A client that never finishes its request is answered 408 and closed.
            answer = await raw(a, b"GET /livez HTTP/1.1\r\n", close=False)
            assert status_line(answer).startswith("HTTP/1.1 408")
            assert status_line(await raw(a, b"GET /livez HTTP/1.1\r\n")).startswith("HTTP/1.1 400")  # EOF early

            # Two idle connections fill max_connections: a third is answered 503.
            host, port = a.rsplit(":", 1)
            idle = [await trio.open_tcp_stream(host, int(port)) for _ in range(2)]
            await trio.sleep(0.05)
            assert status_line(await raw(a, b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")).startswith("HTTP/1.1 503")
            for stream in idle:
                await stream.aclose()
            await trio.sleep(0.05)
            assert status_line(await raw(a, b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")).startswith("HTTP/1.1 200")


async def test_an_address_in_use_is_named() -> None:
    with trio.fail_after(TIMEOUT):
        async with open_http_server(None, "127.0.0.1:0") as first:
            assert first.address is not None
            with pytest.raises(AddressInUse, match=rf"cannot listen for HTTP requests on {first.address}: .*in use.*metrics_address"):
                async with open_http_server(None, first.address):
                    pass  # pragma: no cover - never reached


def test_dengine_serve_with_its_http_address_in_use_exits_2_and_creates_nothing(tmp_path: pathlib.Path) -> None:
    import socket

    peer, client = free_ports(2)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        done = subprocess.run(
            [sys.executable, "-m", "dengine", "serve", "--data-dir", str(tmp_path / "d"), "--metrics-address", address,
             "--client-address", f"127.0.0.1:{client}", "--peer-address", f"127.0.0.1:{peer}"],
            capture_output=True, text=True, timeout=60, check=False,
        )
    assert done.returncode == 2, done.stderr
    assert f"cannot listen for HTTP requests on {address}" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "d").exists()


def test_the_page_loads_nothing_from_elsewhere() -> None:
    """No CDN, no external URL: the page works offline."""
    for name in ("index.html", "page.js", "page.css"):
        text = page_file(name).decode()
        assert "http://" not in text and "https://" not in text, name
        assert not re.search(r"""(src|href)\s*=\s*["']//|url\(\s*["']?//|@import""", text), name
    script = page_file("page.js").decode()
    assert re.findall(r"fetch\(\s*\"([^\"]+)\"", script) == ["status.json"]

"""The blocking client (``dengine.connect``) against real servers in this
process: every method of the trio client without ``await``, watches as
iterators, leader discovery by NotLeader hints, failover and watch resume
when a server stops, TLS, and URL endpoints.

Rules: 127.0.0.1, port 0 or free ports; every test under an absolute
fail_after; the blocking calls run in worker threads (trio.to_thread) while
the servers run in the test's trio loop; we wait on the client's own bounded
retries and on events, never on sleeps; every loop is bounded.
"""

from __future__ import annotations

import functools
import pathlib
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import attrs
import pytest
import trio
import trustme

import dengine
from dengine import Config, WatchEventType
from tests.integration.test_client_cluster import ServerCluster

DEADLINE = 60
T = TypeVar("T")


async def _blocking(fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kw))


def _config(tmp_path: pathlib.Path) -> Config:
    cfg = Config.single_node(str(tmp_path / "data"), client_address="127.0.0.1:0")
    return attrs.evolve(cfg, raft=attrs.evolve(cfg.raft, tick_interval_ms=10))


async def test_every_method_without_await(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(DEADLINE):
        async with dengine.open_server(_config(tmp_path)) as server:
            await server.wait_ready(timeout=5)
            ep = server.client_address

            def session() -> None:
                with dengine.connect([ep], timeout=5) as client:
                    assert client.endpoints == [ep]
                    rev = client.put(b"/a/1", b"one")
                    assert rev > 0
                    assert client.put(b"/a/2", b"two", ttl=60) > rev
                    assert client.get(b"/a/1") == b"one"
                    kv = client.get_kv(b"/a/1", consistency="eventual")
                    assert kv is not None and (kv.value, kv.revision) == (b"one", rev)
                    assert client.get(b"/missing") is None and client.get_kv(b"/missing") is None
                    assert client.get_many([b"/a/2", b"/missing", b"/a/1"]) == [b"two", None, b"one"]
                    assert [k for k, _ in client.scan_prefix(b"/a/").entries] == [b"/a/1", b"/a/2"]
                    assert client.compare_and_swap(b"/a/1", expected=b"nope", new=b"x") is False
                    assert client.compare_and_swap(b"/a/1", expected=b"one", new=b"1") is True
                    assert client.compare_and_swap(b"/lock", expected=None, new=b"me") is True
                    assert client.delete(b"/a/2") is True and client.delete(b"/a/2") is False
                    st = client.status()
                    assert (st.node_id, st.role, st.leader_id) == (1, "leader", 1)
                    assert client.status(endpoint=ep).node_id == 1
                    assert [m.node_id for m in client.members()] == [1]
                    assert client.leader().leader_id == 1
                    assert client.endpoint_of(1) == ep
                    with pytest.raises(dengine.InvalidArgument):
                        client.put(b"", b"v")
                    with pytest.raises(dengine.InvalidArgument):
                        client.get(b"k", consistency="sometimes")

            await _blocking(session)


async def test_a_watch_is_an_iterator(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(DEADLINE):
        async with dengine.open_server(_config(tmp_path)) as server:
            await server.wait_ready(timeout=5)
            ep = server.client_address

            def session() -> None:
                with dengine.connect(ep) as client:
                    first = client.put(b"/w/a", b"1")
                    with client.watch(b"/w/", prefix=True, prev_kv=True) as watch:
                        assert watch.endpoint == ep
                        client.put(b"/w/a", b"2")  # calls and the watch use separate connections
                        client.delete(b"/w/a")
                        events = [next(watch), next(watch)]
                    assert [(e.type, e.key, e.value, e.prev_value) for e in events] == [
                        (WatchEventType.PUT, b"/w/a", b"2", b"1"),
                        (WatchEventType.DELETE, b"/w/a", b"", b"2"),
                    ]
                    # start_revision replays; receive(timeout) says when nothing came.
                    with client.watch(b"/w/a", start_revision=first) as watch:
                        replayed = [watch.receive(timeout=5).revision for _ in range(3)]
                        assert replayed[0] == first and replayed == sorted(replayed)
                        with pytest.raises(dengine.Timeout, match="no event within 0.2 s"):
                            watch.receive(timeout=0.2)
                        assert watch.next_revision == replayed[-1]

            await _blocking(session)


async def test_leader_discovery_failover_and_watch_resume(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            cluster = ServerCluster(nursery, tmp_path, 3)
            for i in (1, 2, 3):
                await cluster.start(i)
            leader = await cluster.leader()
            follower = next(i for i in cluster.servers if i != leader.node_id)
            ep_leader = cluster.clients[leader.node_id]

            # Only a follower's endpoint: the NotLeader hint names the leader.
            def discover() -> None:
                with dengine.connect([cluster.clients[follower]], cluster_id="test", timeout=10) as client:
                    for attempt in range(5):  # bounded: a cluster just started may still change leader
                        try:
                            assert client.put(b"k", b"v") > 0
                            break
                        except dengine.LeaderChanged:  # outcome unknown; the put is idempotent
                            if attempt == 4:
                                raise
                    # The NotLeader hint named the leader (a newer one if it changed).
                    now = client.status(endpoint=cluster.clients[follower]).leader_id
                    assert now is not None
                    assert ep_leader in client.endpoints or cluster.clients[now] in client.endpoints
                    assert client.get(b"k", consistency="lease") == b"v"

            await _blocking(discover)

            # A watch served by the leader; the leader stops; the watch resumes
            # elsewhere with no gap and no duplicate; writes find the new leader.
            client = dengine.connect([ep_leader] + [a for i, a in cluster.clients.items() if a != ep_leader],
                                     cluster_id="test", timeout=10)
            try:
                watch = client.watch(b"/r/", prefix=True)
                await _blocking(watch.__enter__)
                assert watch.endpoint == ep_leader
                for i in range(5):
                    await _blocking(client.put, b"/r/%d" % i, b"%d" % i)
                await cluster.stop(leader.node_id)
                acked = []
                for i in range(5, 10):  # bounded: five writes through the failover
                    try:
                        await _blocking(client.put, b"/r/%d" % i, b"%d" % i)
                        acked.append(i)
                    except (dengine.Unavailable, dengine.Timeout):
                        pass  # outcome unknown; never retried blindly
                assert acked, "no write succeeded after the failover"
                seen = []
                while len(seen) < 5 + len(acked):  # bounded by the receive timeout
                    event = await _blocking(watch.receive, timeout=10)
                    seen.append(int(event.value))
                assert seen[:5] == list(range(5)) and set(acked) <= set(seen)
                assert len(seen) == len(set(seen)), "no duplicate after the resume"
                assert watch.resumes >= 1 and watch.endpoint != ep_leader
                await _blocking(watch.close)
            finally:
                await _blocking(client.close)
            nursery.cancel_scope.cancel()


async def test_tls_with_a_context_and_with_an_https_endpoint(tmp_path: pathlib.Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    cert.private_key_pem.write_to_path(str(key_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cfg = _config(tmp_path)
    cfg = attrs.evolve(cfg, server=attrs.evolve(cfg.server, tls_cert=str(cert_path), tls_key=str(key_path)))
    with trio.fail_after(DEADLINE):
        async with dengine.open_server(cfg) as server:
            await server.wait_ready(timeout=5)
            ep = server.client_address
            ctx = ssl.create_default_context()
            ca.configure_trust(ctx)

            def session() -> None:
                with dengine.connect([f"https://{ep}"], ssl_context=ctx) as client:
                    client.put(b"secret", b"1")
                    assert client.get(b"secret") == b"1"
                # Plain TCP to a TLS port: a dengine error, not a hang or a traceback.
                with dengine.connect([ep], timeout=1) as client, pytest.raises(dengine.DengineError):
                    client.get(b"secret")
                # A CA the client does not trust: refused, saying TLS failed.
                # (a long deadline: under load a 1 s one can pass before the TLS refusal is seen)
                with dengine.connect([ep], timeout=5, ssl_context=ssl.create_default_context()) as client:
                    with pytest.raises(dengine.Timeout, match="TLS failed"):
                        client.get(b"secret")

            await _blocking(session)


@pytest.fixture
async def http_like_server() -> AsyncIterator[str]:
    """Answers anything with an HTTP response, like any web server."""

    async def handle(stream: trio.SocketStream) -> None:
        try:
            await stream.receive_some(1024)
            await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        except trio.BrokenResourceError:
            pass
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        host, port = listeners[0].socket.getsockname()[:2]
        yield f"{host}:{port}"
        nursery.cancel_scope.cancel()


async def test_an_http_server_is_named_for_what_it_is(http_like_server: str) -> None:
    with trio.fail_after(DEADLINE):
        for endpoint in (http_like_server, f"http://{http_like_server}"):
            with dengine.connect(endpoint, timeout=2) as client:
                with pytest.raises(dengine.ProtocolError) as info:
                    await _blocking(client.get, b"k")
            assert str(info.value) == (
                f"{http_like_server} does not speak the dengine protocol (it answered like an HTTP server)"
            )
        async with dengine.open_client(http_like_server, timeout=2) as trio_client:
            with pytest.raises(dengine.ProtocolError, match="answered like an HTTP server"):
                await trio_client.get(b"k")


async def test_leases_transactions_and_a_kept_lease_without_await(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(DEADLINE):
        async with dengine.open_server(_config(tmp_path)) as server:
            await server.wait_ready(timeout=5)
            ep = server.client_address

            def session() -> None:
                with dengine.connect([ep], timeout=5) as client:
                    lease = client.grant_lease(30)
                    rev = client.put(b"/l/a", b"1", lease=lease.id)
                    assert client.get_kv(b"/l/a") == dengine.KeyValue(b"/l/a", b"1", rev, rev, 1, lease.id)
                    assert client.keep_alive(lease.id) == 30
                    assert client.lease_time_to_live(lease.id, keys=True).keys == (b"/l/a",)
                    assert lease.id in [x.id for x in client.leases()]
                    result = client.txn([dengine.Compare.lease(b"/l/a") == lease.id],
                                        [dengine.Op.get(b"/l/a"), dengine.Op.delete_prefix(b"/l/")])
                    assert result.succeeded and result.responses[1] == 1
                    client.revoke_lease(lease.id)
                    with pytest.raises(dengine.LeaseNotFound):
                        client.keep_alive(lease.id)
                    # A kept lease outlives its TTL while the block runs (1 s: a busy CI
                    # machine can delay one renewal of the 0.15 s minimum past its expiry).
                    with client.open_lease(1.0) as kept:
                        client.put(b"/kept", b"v", lease=kept.id)
                        for _ in range(15):
                            time_sleep(0.1)
                            assert client.get(b"/kept") == b"v", "the kept lease expired"
                        assert not kept.lost.is_set() and kept.renewals >= 3
                    assert client.get(b"/kept") is None  # revoked after the block
                    # Revoked under its keeper: lost is set at the next renewal.
                    with client.open_lease(0.15) as kept:
                        client.revoke_lease(kept.id)
                        assert kept.lost.wait(timeout=5)

            await _blocking(session)


def time_sleep(seconds: float) -> None:
    import time
    time.sleep(seconds)  # lets time pass in a blocking session (what the test is about)

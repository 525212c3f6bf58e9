"""Patroni's etcd3 DCS against dengine's etcd JSON gateway (no PostgreSQL).

Patroni (4.1.5) keeps its cluster state in etcd through ``patroni.dcs.etcd3.Etcd3``,
which speaks etcd's v3 JSON gateway over urllib3: a lease (``/v3/lease/grant``,
``/keepalive``), the leader key ``/service/<scope>/leader`` created in a txn on
``create_revision == 0`` with that lease, member keys on the same lease, a watch of
the cluster prefix that feeds ``get_cluster()``, and -- in ``update_leader`` when its
lease changed -- a txn whose ``failure`` branch is a nested txn. These tests drive
that class, as Patroni's HA loop does, against ``dengine serve
--etcd-gateway-address``: take and keep the leader key, write member keys and see
them in ``get_cluster()``, lose the key when the lease expires, hand it over,
delete it.

Patroni is blocking and threaded (a watch thread per DCS object): every call runs
in a worker thread, bounded in time, and fails the test if Patroni logged an error
from that thread meanwhile (Patroni turns most etcd errors into a logged ``False``,
which would otherwise look like a lost race).
"""

from __future__ import annotations

import logging
import pathlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

import pytest
import trio

from tests.cluster.etcd_helpers import EtcdFacedCluster, dengine_with_etcd, needs_etcdctl

etcd3 = pytest.importorskip("patroni.dcs.etcd3", reason="Patroni is missing: pip install -e '.[test]'")
mpp = pytest.importorskip("patroni.postgresql.mpp")

pytestmark = needs_etcdctl  # dengine_with_etcd waits for the etcd API with etcdctl

#: Patroni's ``ttl``: the TTL of its lease, hence of the leader and member keys.
TTL = 6
#: Patroni's ``loop_wait``: it keeps its lease alive at most once a loop_wait
#: (``touch_member``, ``attempt_to_acquire_leader``); ``update_leader`` always does.
LOOP_WAIT = 1
#: Patroni's ``retry_timeout``: its deadline for one DCS operation, retries included.
RETRY_TIMEOUT = 5
#: Bound on one Patroni call from the test (its own deadline, and some).
CALL_TIMEOUT = 3 * RETRY_TIMEOUT
#: After the TTL, how long an unrenewed lease may take to be revoked and the
#: deletions of its keys to reach a watcher.
EXPIRY_SLACK = 5.0
#: A lease must not expire much before its TTL after its last keepalive.
EARLY_SLACK = 1.0
POLL = 0.25

T = TypeVar("T")


class _ThreadErrors(logging.Handler):
    """The ERROR records Patroni logs from one thread."""

    def __init__(self, ident: int) -> None:
        super().__init__(logging.ERROR)
        self.ident = ident
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.ident:
            self.records.append(self.format(record))


async def call(fn: Callable[..., T], *args: Any, timeout: float = CALL_TIMEOUT) -> T:
    """``fn(*args)`` in a worker thread, bounded; fails if Patroni logged an error meanwhile."""

    def run() -> tuple[T, list[str]]:
        handler = _ThreadErrors(threading.get_ident())
        patroni_log = logging.getLogger("patroni")
        patroni_log.addHandler(handler)
        try:
            return fn(*args), handler.records
        finally:
            patroni_log.removeHandler(handler)

    name = getattr(fn, "__qualname__", repr(fn))
    with trio.fail_after(timeout):
        result, errors = await trio.to_thread.run_sync(run, abandon_on_cancel=True)
    assert not errors, f"Patroni logged errors during {name}{args!r}:\n" + "\n".join(errors)
    return result


def _park_watcher(dcs: Any) -> threading.Event:
    """Make the watch thread of a Patroni ``Etcd3`` stop once its watch ends, and
    end that watch the way Patroni does (``kill_stream``). Patroni never stops
    this thread (a daemon that rebuilds its watch forever, ``while True:
    self._build_cache()``): it is parked instead of rebuilding. The event is set
    once it is parked."""
    parked = threading.Event()
    cache = dcs._client._kv_cache
    if cache is None:
        parked.set()
        return parked

    def park() -> None:
        parked.set()
        threading.Event().wait()

    cache._build_cache = park
    cache.kill_stream()
    return parked


async def _wait_parked(events: list[threading.Event], dcses: list[Any], timeout: float = 15) -> None:
    """Until every watch thread is parked (their streams end at the latest when
    dengine stops), then close Patroni's connections."""
    with trio.move_on_after(timeout):
        while not all(e.is_set() for e in events):
            await trio.sleep(0.05)
    for dcs in dcses:
        dcs._client.http.clear()
    assert all(e.is_set() for e in events), "a Patroni watch thread did not stop"


class Patroni:
    """One Patroni member's DCS object (``Etcd3``), driven from trio."""

    def __init__(self, dcs: Any, name: str) -> None:
        self.dcs = dcs
        self.name = name
        self.data = {"conn_url": f"postgres://{name}:5432/postgres", "api_url": f"http://{name}:8008/patroni",
                     "state": "running", "role": "replica", "version": "4.1.5"}

    async def get_cluster(self) -> Any:
        return await call(self.dcs.get_cluster)

    async def touch_member(self) -> bool:
        return await call(self.dcs.touch_member, self.data)

    async def attempt_to_acquire_leader(self) -> bool:
        return await call(self.dcs.attempt_to_acquire_leader)

    async def update_leader(self, cluster: Any, last_lsn: int | None = None) -> bool:
        return await call(self.dcs.update_leader, cluster, last_lsn)

    async def delete_leader(self, leader: Any) -> bool:
        return await call(self.dcs.delete_leader, leader)

    async def wait_cluster(self, check: Callable[[Any], bool], what: str, timeout: float) -> Any:
        """get_cluster() until ``check`` holds (bounded); this member keeps its
        lease alive meanwhile (touch_member), as Patroni's HA loop does."""
        last = None
        with trio.move_on_after(timeout):
            while True:
                assert await self.touch_member()
                last = await self.get_cluster()
                if check(last):
                    return last
                await trio.sleep(POLL)
        raise AssertionError(f"{self.name}: {what} not seen within {timeout} s; last cluster: {last}")


def _leader(cluster: Any) -> str | None:
    return None if cluster.leader is None else cluster.leader.name


@asynccontextmanager
async def patroni_on_dengine(tmp: pathlib.Path, n: int, scope: str,
                             where: Callable[[EtcdFacedCluster, int], dict[str, int]]
                             ) -> AsyncIterator[tuple[EtcdFacedCluster, dict[str, Patroni]]]:
    """``n`` dengine nodes, and one Patroni ``Etcd3`` per name of ``where(cluster,
    leader)``, configured with that node's gateway address. On exit: the watch
    threads are told to stop, dengine stops (PIDs), the threads are parked."""
    dcses: list[Any] = []
    parked: list[threading.Event] = []
    async with AsyncExitStack() as stack:
        stack.push_async_callback(_wait_parked, parked, dcses)
        cluster = await stack.enter_async_context(dengine_with_etcd(tmp, n))
        stack.callback(lambda: parked.extend(_park_watcher(d) for d in dcses))
        placement = where(cluster, await cluster.wait_etcd_ready())
        members: dict[str, Patroni] = {}
        for name, node in placement.items():
            config = {"scope": scope, "name": name, "ttl": TTL, "loop_wait": LOOP_WAIT,
                      "retry_timeout": RETRY_TIMEOUT, "host": cluster.gateway[node]}
            # The constructor finds the members, starts the watch thread and grants the lease.
            dcs = await call(etcd3.Etcd3, config, mpp.get_mpp({}))
            dcses.append(dcs)
            members[name] = Patroni(dcs, name)
        yield cluster, members


def _on_node_1(cluster: EtcdFacedCluster, leader: int) -> dict[str, int]:
    return {"alice": 1, "bob": 1}


async def test_leader_key_member_keys_and_delete_leader(tmp_path: pathlib.Path) -> None:
    async with patroni_on_dengine(tmp_path, 1, "pg-basic", _on_node_1) as (_, m):
        alice, bob = m["alice"], m["bob"]
        empty = await alice.get_cluster()
        assert empty.leader is None and not empty.members

        assert await alice.attempt_to_acquire_leader()
        assert await alice.touch_member()
        assert await bob.touch_member()
        seen = await alice.get_cluster()
        assert _leader(seen) == "alice"
        session = seen.leader.session
        assert session and session == alice.dcs._lease  # the leader key is on alice's lease
        me = seen.get_member("alice", fallback_to_leader=False)
        assert me is not None and me.session == session
        assert me.data["conn_url"] == alice.data["conn_url"] and me.data["api_url"] == alice.data["api_url"]
        assert seen.leader.member.data["conn_url"] == alice.data["conn_url"]

        # bob sees the same through his own watch, and cannot take the key.
        seen_by_bob = await bob.wait_cluster(
            lambda c: _leader(c) == "alice" and {x.name for x in c.members} == {"alice", "bob"},
            "alice leading, both members", timeout=10)
        assert seen_by_bob.leader.session == session
        assert not await bob.attempt_to_acquire_leader()
        assert not await bob.delete_leader(seen_by_bob.leader)  # compare value == "bob" fails
        assert _leader(await alice.get_cluster()) == "alice"

        # alice gives the key up; bob sees it gone and takes it.
        assert await alice.delete_leader(seen.leader)
        assert _leader(await alice.get_cluster()) is None
        await bob.wait_cluster(lambda c: c.leader is None, "the leader key deleted", timeout=10)
        assert await bob.attempt_to_acquire_leader()
        after = await alice.wait_cluster(lambda c: _leader(c) == "bob", "bob leading", timeout=10)
        assert after.leader.session == bob.dcs._lease != session
        # alice's member key stays (on her live lease)
        assert {x.name for x in after.members} == {"alice", "bob"}


async def test_leader_key_kept_then_lost_when_the_lease_expires(tmp_path: pathlib.Path) -> None:
    async with patroni_on_dengine(tmp_path, 1, "pg-expiry", _on_node_1) as (_, m):
        alice, bob = m["alice"], m["bob"]
        assert await alice.attempt_to_acquire_leader()
        assert await alice.touch_member()
        assert await bob.touch_member()
        first = await alice.get_cluster()
        session = first.leader.session

        # alice's HA loop: update_leader over more than one TTL keeps the key (and
        # writes /status); bob's attempts fail all along.
        lsn = 100
        start = time.monotonic()
        while time.monotonic() - start < 1.5 * TTL:
            current = await alice.get_cluster()
            assert _leader(current) == "alice" and current.leader.session == session
            lsn += 1
            assert await alice.update_leader(current, lsn)
            last_renewal = time.monotonic()
            assert not await bob.attempt_to_acquire_leader()
            assert await bob.touch_member()
            await trio.sleep(LOOP_WAIT)
        held = await bob.wait_cluster(lambda c: c.status.last_lsn == lsn, f"/status at lsn {lsn}", timeout=10)
        assert _leader(held) == "alice" and held.leader.session == session
        stale = await alice.get_cluster()
        assert _leader(stale) == "alice"

        # alice stops: no more update_leader or keepalives. The key (and her member
        # key, on the same lease) go when the lease expires -- not much earlier.
        gone = await bob.wait_cluster(lambda c: c.leader is None, "the leader key expired",
                                      timeout=TTL + EXPIRY_SLACK)
        elapsed = time.monotonic() - last_renewal
        assert elapsed >= TTL - EARLY_SLACK, f"the leader key went {elapsed:.1f} s after the last keepalive"
        assert {x.name for x in gone.members} == {"bob"}

        assert await bob.attempt_to_acquire_leader()
        taken = await bob.get_cluster()
        assert _leader(taken) == "bob" and taken.leader.session == bob.dcs._lease

        # alice comes back with her stale view: update_leader finds her lease gone,
        # grants a new one and sends the txn "leader == alice, else (nested) create
        # it": both branches fail, bob keeps the key.
        assert not await alice.update_leader(stale, None)
        seen = await alice.wait_cluster(lambda c: _leader(c) == "bob", "bob leading", timeout=10)
        assert seen.leader.session == taken.leader.session
        assert _leader(await bob.get_cluster()) == "bob"


def _on_followers(cluster: EtcdFacedCluster, leader: int) -> dict[str, int]:
    followers = [i for i in sorted(cluster.gateway) if i != leader]
    return {"alice": followers[0], "bob": followers[1]}


async def test_three_nodes_follower_gateway_and_leader_key_recreated(tmp_path: pathlib.Path) -> None:
    async with patroni_on_dengine(tmp_path, 3, "pg-three", _on_followers) as (cluster, m):
        alice, bob = m["alice"], m["bob"]
        assert await alice.attempt_to_acquire_leader()
        assert await alice.touch_member()
        assert await bob.touch_member()
        first = await bob.wait_cluster(
            lambda c: _leader(c) == "alice" and {x.name for x in c.members} == {"alice", "bob"},
            "alice leading, both members", timeout=10)
        assert not await bob.attempt_to_acquire_leader()
        stale = await alice.get_cluster()
        assert _leader(stale) == "alice"

        # alice's key lapses with her lease...
        await bob.wait_cluster(lambda c: c.leader is None, "the leader key expired", timeout=TTL + EXPIRY_SLACK)
        # ...and her next update_leader recreates it on a new lease (the nested
        # txn in the failure branch: create if absent).
        assert await alice.update_leader(stale, None)
        back = await bob.wait_cluster(lambda c: _leader(c) == "alice", "alice leading again", timeout=10)
        assert back.leader.session == alice.dcs._lease != first.leader.session
        assert not await bob.attempt_to_acquire_leader()

        assert await alice.delete_leader(back.leader)
        await bob.wait_cluster(lambda c: c.leader is None, "the leader key deleted", timeout=10)
        assert await bob.attempt_to_acquire_leader()
        await alice.wait_cluster(lambda c: _leader(c) == "bob", "bob leading", timeout=10)

        # Patroni found the etcd members through /v3/cluster/member/list (asked at its
        # follower's gateway) and uses their clientURLs: every node's gateway, so that
        # it can go on through another node when this one fails.
        urls = {f"http://{cluster.gateway[i]}" for i in cluster.gateway}
        for p in (alice, bob):
            assert set(p.dcs._client.machines_cache) == urls, "clientURLs of /v3/cluster/member/list"


async def test_patroni_can_restart_its_watch(tmp_path: pathlib.Path) -> None:
    """Patroni restarts its watch (``kill_stream``: a shutdown of the watch
    response's socket) after a failed txn, a switch of node, or a stale node. It
    finds the socket through urllib3's connection, which http.client drops at once
    when the response says ``Connection: close``: etcd's watch answer does not."""
    async with patroni_on_dengine(tmp_path, 1, "pg-rewatch", _on_node_1) as (_, m):
        alice, bob = m["alice"], m["bob"]
        cache = bob.dcs._client._kv_cache
        assert cache is not None

        async def watch_response(other_than: Any = None) -> Any:
            with trio.move_on_after(10):
                while True:
                    response = cache._response
                    if response and response is not other_than:
                        return response
                    await trio.sleep(POLL)
            raise AssertionError("Patroni's watch did not (re)start within 10 s")

        first = await watch_response()
        assert await alice.attempt_to_acquire_leader()
        assert not await bob.attempt_to_acquire_leader()  # a failed txn: Patroni restarts its watch
        await watch_response(other_than=first)
        # and the new watch works
        assert await alice.delete_leader((await alice.get_cluster()).leader)
        await bob.wait_cluster(lambda c: c.leader is None, "the leader key deleted", timeout=10)

"""Helpers for tests of applications embedding dengine.

Like ``trio.testing``, this module is public and imported explicitly
(``import dengine.testing``); nothing in dengine itself imports it, and the
engine carries no test hooks of its own.

    from dengine.testing import open_cluster

    async def test_my_app_survives_a_leader_change(tmp_path):
        async with open_cluster(tmp_path, 3) as cluster:
            leader = await cluster.wait_leader()
            await leader.client.put(b"/jobs/1", b"queued")
            await cluster.stop(leader.status().node_id)
            new = await cluster.wait_leader()
            assert await new.client.get(b"/jobs/1") == b"queued"

What is here:

* :func:`open_cluster` -- an in-process cluster of engines, by default on
  an in-memory network (:class:`MemoryNetwork`: partitions, isolation,
  message loss) and otherwise on loopback TCP. Each engine runs in its own
  task, so a test can stop one and start it again on the same data.
* :func:`open_memory_engine` -- one engine on :class:`MemoryStorage` (nothing
  on disk) or on a storage or network the test supplies, e.g. a
  ``MemoryStorage`` subclass whose ``append`` fails like a dying disk.
* :func:`snapshots_installed` -- how many snapshots an engine installed from
  its leader (to check that a follower caught up by snapshot, not by log).
* :class:`MemoryNetwork`, :class:`MemoryStorage` -- the in-memory network
  and storage the helpers use, for tests that build their own.

Rules: helpers own what they open and close it when their block exits;
every wait is bounded by the caller (wrap a test in ``trio.fail_after``).
"""

from __future__ import annotations

import os
import pathlib
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from dengine.config import ClusterSettings, Config, NodeSettings, RaftSettings, TransportSettings
from dengine.embedded import Engine, open_engine
from dengine.errors import InvalidArgument
from dengine.storage.base import Storage
from dengine.storage.memory import MemoryStorage
from dengine.transport.base import single_leaf
from dengine.transport.memory import MemoryNetwork

__all__ = [
    "Cluster",
    "MemoryNetwork",
    "MemoryStorage",
    "open_cluster",
    "open_memory_engine",
    "snapshots_installed",
    "wait_snapshot_past",
]

#: Raft timings of the clusters opened here: 10 ms ticks, so an election
#: takes about 0.1-0.2 s instead of 1-2 s.
FAST_RAFT: Mapping[str, Any] = {"tick_interval_ms": 10, "election_ticks": 10}


@asynccontextmanager
async def open_memory_engine(
    config: Config | None = None,
    *,
    storage: Storage | None = None,
    network: MemoryNetwork | None = None,
) -> AsyncIterator[Engine]:
    """An engine on ``storage`` (a fresh :class:`MemoryStorage` when None:
    nothing touches the disk) and, for a member of a cluster, ``network``
    instead of TCP. ``config`` defaults to a single node; its ``data_dir``
    is not used. The storage is closed when the block exits."""
    cfg = config if config is not None else Config.single_node()
    async with open_engine(
        config=cfg, storage=storage if storage is not None else MemoryStorage(), network=network
    ) as engine:
        yield engine


def snapshots_installed(engine: Engine) -> int:
    """How many snapshots ``engine`` installed from a leader since it started."""
    return engine._node.installed_snapshots


async def wait_snapshot_past(engine: Engine, index: int, *, timeout: float = 10) -> int:
    """Wait until ``engine`` has saved a snapshot past ``index`` (snapshots
    are saved in the background, possibly after the write that set one off
    was answered); returns its index. Raises ``trio.TooSlowError`` after
    ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while (done := engine.status().last_snapshot_index) <= index:
            await trio.sleep(0.01)
    return done


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free at the time of the call (for
    servers a test starts on 127.0.0.1)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Cluster:
    """Engines of one cluster running in one nursery (from :func:`open_cluster`).

    ``engines`` holds the running ones by node id; ``network`` is the
    :class:`MemoryNetwork` (None on TCP); ``addresses`` the peer addresses.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        data_root: str | os.PathLike[str],
        n: int,
        *,
        tcp: bool = False,
        raft: Mapping[str, Any] | None = None,
        transport: Mapping[str, Any] | None = None,
        cluster_id: str = "test-cluster",
    ) -> None:
        if type(n) is not int or n < 1:
            raise InvalidArgument(f"a cluster needs at least one node, got {n!r}")
        self.nursery = nursery
        self.data_root = pathlib.Path(data_root)
        self.tcp = tcp
        self.cluster_id = cluster_id
        self.network: MemoryNetwork | None = None if tcp else MemoryNetwork()
        ports = free_ports(n) if tcp else [7000 + i for i in range(1, n + 1)]
        self.addresses: dict[int, str] = {i: f"127.0.0.1:{ports[i - 1]}" for i in range(1, n + 1)}
        self.raft: dict[str, Any] = {**FAST_RAFT, **(raft or {})}
        self.transport: dict[str, Any] = dict(transport or {})
        self.engines: dict[int, Engine] = {}
        self._initial = dict(self.addresses)
        self._scopes: dict[int, trio.CancelScope] = {}
        self._done: dict[int, trio.Event] = {}

    def config(self, node_id: int) -> Config:
        """The configuration node ``node_id`` starts with: data in
        ``data_root/n<id>``, the cluster's members, the fast timings."""
        return Config(
            node=NodeSettings(
                id=node_id, data_dir=str(self.data_root / f"n{node_id}"), peer_address=self.addresses[node_id]
            ),
            # A learner joins the running cluster: it knows the first members only.
            cluster=ClusterSettings(id=self.cluster_id, initial=self._initial, join=node_id not in self._initial),
            raft=attrs.evolve(RaftSettings(), **self.raft),
            transport=TransportSettings(**self.transport),
        )

    async def start(self, node_id: int) -> Engine:
        """Start (or restart, on the data it left) node ``node_id``; returns
        once its engine is open (not necessarily ready)."""
        if node_id in self.engines:
            raise InvalidArgument(f"node {node_id} is already running")
        done = trio.Event()
        self._done[node_id] = done
        config = self.config(node_id)

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with trio.CancelScope() as scope:
                self._scopes[node_id] = scope
                try:
                    async with open_engine(config=config, network=self.network) as engine:
                        self.engines[node_id] = engine
                        task_status.started()
                        await trio.sleep_forever()
                finally:
                    self.engines.pop(node_id, None)
                    done.set()

        await self.nursery.start(run)
        return self.engines[node_id]

    async def stop(self, node_id: int) -> None:
        """Stop node ``node_id`` (as its application would: a leader hands
        over first unless ``transfer_leadership_on_stop`` is off) and wait
        until it is stopped."""
        self._scopes[node_id].cancel()
        await self._done[node_id].wait()

    async def add_learner(self, node_id: int) -> Engine:
        """Add node ``node_id`` as a learner (a non-voting member) and start
        it. Needs the memory network: a TCP leader only knows the peers it
        started with."""
        if self.network is None:
            raise InvalidArgument("add_learner works on the memory network only (open_cluster(..., tcp=False))")
        if node_id in self.addresses:
            raise InvalidArgument(f"node {node_id} is already a member")
        leader = await self.wait_leader()
        self.addresses[node_id] = f"127.0.0.1:{7000 + node_id}"
        await leader.add_member(self.addresses[node_id], node_id=node_id)
        return await self.start(node_id)

    async def wait_leader(self, exclude: frozenset[int] | set[int] = frozenset()) -> Engine:
        """Wait until some running engine not in ``exclude`` is the leader and ready.
        Always a checkpoint: a caller retrying a refused write in a loop lets
        the engines run between tries."""
        await trio.lowlevel.checkpoint()
        while True:
            for nid, engine in self.engines.items():
                if nid not in exclude and engine.is_leader() and engine.ready_notify().is_set():
                    return engine
            # A leader change is announced on every node's subscription.
            with trio.move_on_after(0.05):
                if self.engines:
                    any_engine = next(iter(self.engines.values()))
                    with any_engine.leader_changed_notify() as changes:
                        await changes.receive()
                        await changes.receive()
                else:
                    await trio.sleep_forever()

    def followers(self) -> list[Engine]:
        """The running engines that are not the leader."""
        return [e for e in self.engines.values() if not e.is_leader()]


@asynccontextmanager
async def open_cluster(
    data_root: str | os.PathLike[str],
    n: int = 3,
    *,
    tcp: bool = False,
    raft: Mapping[str, Any] | None = None,
    transport: Mapping[str, Any] | None = None,
    cluster_id: str = "test-cluster",
) -> AsyncIterator[Cluster]:
    """Start ``n`` engines (node ids 1..n) of one new cluster, each storing
    its data in ``data_root/n<id>``, talking over a :class:`MemoryNetwork`
    (or loopback TCP with ``tcp=True``); stop them all when the block exits.

    ``raft`` overrides ``[raft]`` settings (by default 10 ms ticks),
    ``transport`` the ``[transport]`` ones (they matter on TCP). The
    engines are open, not necessarily ready: ``await cluster.wait_leader()``.
    An exception from the block or from one engine is raised as itself.
    """
    try:
        async with trio.open_nursery() as nursery:
            cluster = Cluster(nursery, data_root, n, tcp=tcp, raft=raft, transport=transport, cluster_id=cluster_id)
            for node_id in range(1, n + 1):
                await cluster.start(node_id)
            try:
                yield cluster
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # One clear exception, not a bare ExceptionGroup (STYLE.md, 9).
        leaf = single_leaf(group)
        if leaf is None:
            raise
        raise leaf from None

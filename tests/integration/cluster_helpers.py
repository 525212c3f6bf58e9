"""In-process clusters of engines, on the memory transport or loopback TCP.

Each engine runs in its own task under its own cancel scope, so a test can
"kill" one (cancel it) and start it again on the same data directory.
"""

from __future__ import annotations

import pathlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

import dengine
from dengine import Config
from dengine.embedded import Engine
from dengine.transport.memory import MemoryNetwork


def free_ports(n: int) -> list[int]:
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
    def __init__(
        self,
        nursery: trio.Nursery,
        tmp: pathlib.Path,
        n: int,
        *,
        tcp: bool,
        raft: dict[str, Any] | None = None,
    ) -> None:
        self.nursery = nursery
        self.tmp = tmp
        self.tcp = tcp
        self.network = None if tcp else MemoryNetwork()
        ports = free_ports(n) if tcp else [7000 + i for i in range(1, n + 1)]
        self.addresses = {i: f"127.0.0.1:{ports[i - 1]}" for i in range(1, n + 1)}
        self.raft = {"tick_interval_ms": 10, "election_ticks": 10, **(raft or {})}
        self.engines: dict[int, Engine] = {}
        self.scopes: dict[int, trio.CancelScope] = {}
        self.done: dict[int, trio.Event] = {}

    def config(self, node_id: int) -> Config:
        cfg = Config(
            node_id=node_id,
            data_dir=str(self.tmp / f"n{node_id}"),
            peer_address=self.addresses[node_id],
            initial_cluster=self.addresses,
            cluster_id="test-cluster",
        )
        return attrs.evolve(cfg, raft=attrs.evolve(cfg.raft, **self.raft))

    async def start(self, node_id: int) -> Engine:
        started = trio.Event()
        done = trio.Event()
        self.done[node_id] = done

        async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with trio.CancelScope() as scope:
                self.scopes[node_id] = scope
                try:
                    async with dengine.open_engine(config=self.config(node_id), network=self.network) as engine:
                        self.engines[node_id] = engine
                        task_status.started()
                        await trio.sleep_forever()
                finally:
                    done.set()

        await self.nursery.start(run)
        del started
        return self.engines[node_id]

    async def stop(self, node_id: int) -> None:
        self.scopes[node_id].cancel()
        await self.done[node_id].wait()
        del self.engines[node_id]

    async def wait_leader(self, exclude: set[int] = frozenset()) -> Engine:  # type: ignore[assignment]
        """Wait until some running engine is leader and ready."""
        while True:
            for nid, engine in self.engines.items():
                if nid not in exclude and engine.is_leader() and engine.ready_notify().is_set():
                    return engine
            # A leader change is announced on every node's subscription.
            with trio.move_on_after(0.05):
                any_engine = next(iter(self.engines.values()))
                with any_engine.leader_changed_notify() as changes:
                    await changes.receive()
                    await changes.receive()

    def followers(self) -> list[Engine]:
        return [e for e in self.engines.values() if not e.is_leader()]


@asynccontextmanager
async def open_cluster(
    tmp: pathlib.Path, n: int = 3, *, tcp: bool = False, raft: dict[str, Any] | None = None
) -> AsyncIterator[Cluster]:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, tmp, n, tcp=tcp, raft=raft)
        for i in range(1, n + 1):
            await cluster.start(i)
        try:
            yield cluster
        finally:
            nursery.cancel_scope.cancel()

"""A queue broker on dengine's lifecycle notifications (the d-queue use case).

Every node runs the same program. Producers append items under
``/queue/items/``; exactly one node -- the Raft leader -- acts as the broker
and moves items to ``/queue/delivered/``. The program

* waits until its engine is ready,
* acts as broker only while its node is the leader, following leader changes,
* stops cleanly when the engine's ``stop_notify`` fires.

Run a 3-node demo cluster in one process (loopback TCP), with a producer, and
a leader crash half way through:

    python examples/queue_broker.py

Delivery is at-least-once: a broker that dies between delivering an item and
deleting it leaves it for the next leader, which delivers it again to the
same key, so the delivered set is exact.
"""

from __future__ import annotations

import argparse
import logging
import socket
import tempfile
from collections.abc import Awaitable, Callable

import trio

import dengine
from dengine import Config

ITEMS = b"/queue/items/"
DELIVERED = b"/queue/delivered/"

log = logging.getLogger("queue_broker")


async def broker_loop(engine: dengine.Engine, node_id: int) -> None:
    """Deliver items while this node leads; returns when leadership is lost."""
    kv = engine.client
    while engine.is_leader():
        try:
            scan = await kv.scan_prefix(ITEMS)
            for key, value in scan.entries:
                item = key[len(ITEMS) :]
                await kv.put(DELIVERED + item, value)
                await kv.delete(key)
                log.info("node %d delivered %s", node_id, item.decode())
        except (dengine.NotLeader, dengine.ProposalDropped, dengine.Unavailable):
            return  # no longer leader: the next leader carries on
        if not scan.entries:
            await trio.sleep(0.02)


async def run_broker(engine: dengine.Engine, node_id: int) -> None:
    """The broker program: ready → broker while leader → stop on stop_notify."""
    await engine.wait_ready()
    log.info("node %d: engine ready", node_id)
    async with trio.open_nursery() as nursery:

        async def stop_when_engine_stops() -> None:
            await engine.stop_notify().wait()
            log.info("node %d: engine stopping, broker shuts down", node_id)
            nursery.cancel_scope.cancel()

        nursery.start_soon(stop_when_engine_stops)
        broker_scope: trio.CancelScope | None = None
        with engine.leader_changed_notify() as changes:
            async for info in changes:
                log.info("node %d: leader is now %s (term %d)", node_id, info.leader_id, info.term)
                if broker_scope is not None:
                    broker_scope.cancel()
                    broker_scope = None
                if info.leader_id == node_id:
                    broker_scope = trio.CancelScope()

                    async def lead(scope: trio.CancelScope = broker_scope) -> None:
                        with scope:
                            await broker_loop(engine, node_id)

                    nursery.start_soon(lead)
        nursery.cancel_scope.cancel()


async def produce(engine_for: Callable[[], Awaitable[dengine.Engine]], start: int, count: int) -> list[bytes]:
    """Append items ``start .. start+count-1`` through whichever node leads."""
    produced = []
    i = start
    while i < start + count:
        engine = await engine_for()
        item = b"%06d" % i
        try:
            await engine.client.put(ITEMS + item, b"payload-" + item)
        except (dengine.NotLeader, dengine.ProposalDropped, dengine.Unavailable, dengine.Timeout):
            continue  # leader changed: try again on the new one (the put is idempotent)
        produced.append(item)
        i += 1
        await trio.sleep(0.005)
    return produced


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


async def demo(data_root: str, items: int = 60, kill_leader_after: int = 25, network: object = None) -> dict[bytes, bytes]:
    """Three nodes + brokers + a producer; the leader is killed after
    ``kill_leader_after`` items. Returns what ended up delivered."""
    ports = free_ports(3)
    cluster = {i: f"127.0.0.1:{ports[i - 1]}" for i in (1, 2, 3)}
    engines: dict[int, dengine.Engine] = {}
    scopes: dict[int, trio.CancelScope] = {}
    stopped: dict[int, trio.Event] = {}

    async def node(node_id: int, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = Config(node_id=node_id, data_dir=f"{data_root}/n{node_id}", peer_address=cluster[node_id],
                     initial_cluster=cluster, cluster_id="queue-demo")
        stopped[node_id] = trio.Event()
        with trio.CancelScope() as scope:
            scopes[node_id] = scope
            try:
                async with dengine.open_engine(config=cfg, network=network) as engine:
                    engines[node_id] = engine
                    task_status.started()
                    await run_broker(engine, node_id)
            finally:
                engines.pop(node_id, None)
                stopped[node_id].set()

    async def leader() -> dengine.Engine:
        while True:
            for engine in list(engines.values()):
                if engine.is_leader():
                    return engine
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        for node_id in cluster:
            await nursery.start(node, node_id)
        first = await produce(leader, 0, kill_leader_after)
        victim = (await leader()).status().node_id
        log.info("killing the leader, node %d", victim)
        scopes[victim].cancel()
        await stopped[victim].wait()
        rest = await produce(leader, kill_leader_after, items - kill_leader_after)
        produced = first + rest
        # Wait until the broker drained the queue.
        while True:
            engine = await leader()
            scan = await engine.client.scan_prefix(ITEMS)
            delivered = await engine.client.scan_prefix(DELIVERED)
            if not scan.entries and len(delivered.entries) >= len(set(produced)):
                break
            await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    return {k[len(DELIVERED):]: v for k, v in delivered.entries}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=60)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        delivered = trio.run(demo, tmp, args.items, args.items // 2)
    print(f"delivered {len(delivered)} items, each exactly once")


if __name__ == "__main__":
    main()

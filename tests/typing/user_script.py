"""A small program as a user would write it, fully annotated.

It is not run by the test suite: tests/unit/test_typing.py type-checks it with
``mypy --strict``, which proves the package's annotations (and py.typed) are
usable from outside. Keep it to the public API: ``import dengine`` and the
names it exports, plus ``dengine.config`` for the settings sections.
"""

from __future__ import annotations

import tempfile

import trio

import dengine
from dengine.config import RaftSettings


def make_config(data_dir: str) -> dengine.Config:
    """Config construction: keywords, a settings section, and single_node."""
    config = dengine.Config(
        node_id=1,
        data_dir=data_dir,
        initial_cluster={1: "127.0.0.1:2380"},
        cluster_id="typing-demo",
        raft=RaftSettings(election_ticks=20),
    )
    ticks: int = config.raft.election_ticks
    assert ticks == 20
    return dengine.Config.single_node(data_dir)


async def embedded(data_dir: str) -> bytes | None:
    """An embedded engine: put, get, and the leader a NotLeader names."""
    async with dengine.open_engine(config=make_config(data_dir)) as engine:
        await engine.wait_ready()
        kv: dengine.EmbeddedClient = engine.client
        try:
            revision: int = await kv.put(b"/greeting", b"hello", ttl=30.0)
        except dengine.NotLeader as exc:
            leader: int | None = exc.leader_id
            print(f"not the leader; try node {leader}")
            return None
        print(f"written at revision {revision}")
        return await kv.get(b"/greeting")


async def remote(endpoint: str) -> list[dengine.WatchEvent]:
    """A remote client in trio: put, get, and a watch on a prefix."""
    events: list[dengine.WatchEvent] = []
    async with dengine.open_client(endpoint, timeout=2.0) as client:
        async with client.open_watch(b"/jobs/", prefix=True) as watch:
            await client.put(b"/jobs/1", b"queued")
            value: bytes | None = await client.get(b"/jobs/1", consistency="linearizable")
            assert value == b"queued"
            async for event in watch:
                kind: dengine.WatchEventType = event.type
                print(kind.name, event.key, event.value, event.revision)
                events.append(event)
                break
    return events


def blocking(endpoint: str) -> bytes | None:
    """The blocking client, for code that is not async."""
    with dengine.connect([endpoint], timeout=2.0) as client:
        try:
            client.put(b"/config/mode", b"active")
        except dengine.NotLeader as exc:
            print(f"the leader is node {exc.leader_id} at {exc.leader_address}")
            raise
        return client.get(b"/config/mode")


def main() -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        print(trio.run(embedded, data_dir))


if __name__ == "__main__":
    main()

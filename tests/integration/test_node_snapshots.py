"""A snapshot is verified on receipt from a peer: a damaged one is dropped
before the core adopts it or the disk keeps it."""

from __future__ import annotations

import trio
import trio.testing

from dengine.raft.core import RaftConfig
from dengine.raft.messages import ConfState, InstallSnapshot, Snapshot, SnapshotMeta
from dengine.kv.snapshot import wrap_snapshot_data
from dengine.runtime.node import NodeOptions, NullOutbox, open_node
from dengine.storage.memory import MemoryStorage


def _snapshot(data: bytes) -> InstallSnapshot:
    meta = SnapshotMeta(index=50, term=3, conf_state=ConfState(voters={1, 2, 3}))
    return InstallSnapshot(frm=2, to=1, term=3, snapshot=Snapshot(meta=meta, data=data))


async def test_damaged_snapshot_from_a_peer_is_dropped() -> None:
    from dengine.kv.snapshot import snapshot_bytes
    from dengine.kv.store import KVStore

    good = wrap_snapshot_data(snapshot_bytes(KVStore()))
    damaged = good[:-1] + bytes([good[-1] ^ 0xFF])
    send, receive = trio.open_memory_channel[object](10)
    storage = MemoryStorage()
    options = NodeOptions(raft=RaftConfig(id=1, initial_voters=frozenset({1, 2, 3})), tick_interval=10.0)
    with trio.fail_after(10):
        async with open_node(options, storage, NullOutbox(), receive) as node:  # type: ignore[arg-type]
            await send.send(_snapshot(damaged))
            await send.send(_snapshot(b""))
            while node.rejected_snapshots < 2:
                await trio.testing.wait_all_tasks_blocked()
            assert node.raw.core.log.snapshot_index == 0
            assert storage.load().snapshot is None
            await send.send(_snapshot(good))
            while node.raw.core.log.snapshot_index != 50:
                await trio.testing.wait_all_tasks_blocked()
            assert node.rejected_snapshots == 2

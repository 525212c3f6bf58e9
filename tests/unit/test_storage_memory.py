"""MemoryStorage's crash simulation: unsynced writes are lost by crash()."""

from __future__ import annotations

import pytest

from dengine.errors import StorageFailed
from dengine.raft.messages import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from dengine.storage import MemoryStorage


def test_auto_sync_survives_crash() -> None:
    s = MemoryStorage()
    s.append([Entry(1, 1)], HardState(term=1))
    assert s.unsynced == 0
    after = s.crash()
    assert after.load().entries == [Entry(1, 1)]
    assert after.load().hard_state == HardState(term=1)


def test_unsynced_writes_are_visible_until_a_crash() -> None:
    s = MemoryStorage(auto_sync=False)
    s.append([Entry(1, 1)])
    s.sync()
    s.append([Entry(2, 1)], HardState(term=1, vote=2))
    s.save_snapshot(Snapshot(SnapshotMeta(2, 1, ConfState({1}))))
    assert s.load().snapshot is not None and s.unsynced == 2
    after = s.crash()
    state = after.load()
    assert state.entries == [Entry(1, 1)]
    assert state.hard_state == HardState()
    assert state.snapshot is None


def test_crash_can_keep_a_prefix_of_unsynced_operations() -> None:
    s = MemoryStorage(auto_sync=False)
    for i in range(1, 6):
        s.append([Entry(i, 1)])
    after = s.crash(keep_unsynced=3)
    assert [e.index for e in after.load().entries] == [1, 2, 3]
    assert after.unsynced == 0


def test_crashed_instance_is_closed() -> None:
    s = MemoryStorage(auto_sync=False)
    s.crash()
    with pytest.raises(StorageFailed, match="crashed"):
        s.append([Entry(1, 1)])


def test_reopen_keeps_everything() -> None:
    s = MemoryStorage(auto_sync=False)
    s.append([Entry(1, 1)], HardState(term=1))
    assert s.reopen().load().entries == [Entry(1, 1)]

"""One suite for every Storage backend (the rules in dengine/storage/base.py).

Each test runs against MemoryStorage and FileStorage (small and large
segments). ``backend.reopen()`` restarts the storage on its durable state: a
rule that holds only until a restart is not a storage rule."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dengine.errors import InvalidArgument, StorageFailed
from dengine.raft.messages import HardState
from dengine.storage import Storage

from .storage_helpers import BACKENDS, Backend, backend_fixture, entry, run, snap


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from backend_fixture(request.param, tmp_path)


def both(backend: Backend) -> Iterator[Storage]:
    """The storage now, and the storage after a restart."""
    assert backend.current is not None
    yield backend.current
    yield backend.reopen()


def test_new_storage_is_empty(backend: Backend) -> None:
    s = backend.open()
    for s in both(backend):
        state = s.load()
        assert state.hard_state == HardState()
        assert state.snapshot is None
        assert state.entries == []
        assert state.last_index == 0


def test_append_and_load(backend: Backend) -> None:
    s = backend.open()
    s.append(run(1, 3, 1))
    s.append(run(4, 10, 2), HardState(term=2, vote=1, commit=3))
    for s in both(backend):
        state = s.load()
        assert state.entries == run(1, 3, 1) + run(4, 10, 2)
        assert state.hard_state == HardState(term=2, vote=1, commit=3)


def test_hard_state_alone(backend: Backend) -> None:
    s = backend.open()
    s.append([], HardState(term=5, vote=2, commit=0))
    s.append([], HardState(term=6, vote=None, commit=0))
    for s in both(backend):
        assert s.load().hard_state == HardState(term=6, vote=None, commit=0)
        assert s.load().entries == []


def test_hard_state_is_kept_when_not_given(backend: Backend) -> None:
    s = backend.open()
    s.append(run(1, 2, 1), HardState(term=1, vote=3, commit=1))
    s.append(run(3, 4, 1))
    for s in both(backend):
        assert s.load().hard_state == HardState(term=1, vote=3, commit=1)


def test_append_overwrites_conflicting_suffix(backend: Backend) -> None:
    s = backend.open()
    s.append(run(1, 10, 1))
    s.append(run(6, 7, 2))  # leader of term 2 replaces 6..10 with 6..7
    for s in both(backend):
        assert s.load().entries == run(1, 5, 1) + run(6, 7, 2)
    s.append(run(8, 8, 2))
    for s in both(backend):
        assert s.load().entries == run(1, 5, 1) + run(6, 8, 2)


def test_overwrite_from_the_first_entry(backend: Backend) -> None:
    s = backend.open()
    s.append(run(1, 5, 1))
    s.append(run(1, 2, 3))
    for s in both(backend):
        assert s.load().entries == run(1, 2, 3)


def test_truncate_suffix(backend: Backend) -> None:
    s = backend.open()
    s.append(run(1, 10, 1))
    s.truncate_suffix(4)
    s.truncate_suffix(20)  # nothing there: no-op
    for s in both(backend):
        assert s.load().entries == run(1, 3, 1)
    s.append(run(4, 5, 2))
    for s in both(backend):
        assert s.load().entries == run(1, 3, 1) + run(4, 5, 2)


def test_append_rejects_gaps_and_non_contiguous_batches(backend: Backend) -> None:
    s = backend.open()
    s.append(run(1, 3, 1))
    with pytest.raises(InvalidArgument, match="gap"):
        s.append(run(5, 6, 1))
    with pytest.raises(InvalidArgument, match="contiguous"):
        s.append([entry(4, 1), entry(6, 1)])
    with pytest.raises(InvalidArgument, match="start at 1"):
        s.append([entry(0, 1)])
    for s in both(backend):
        assert s.load().entries == run(1, 3, 1)


def test_snapshot_save_and_load(backend: Backend) -> None:
    s = backend.open()
    s.append(run(1, 10, 1), HardState(term=1, vote=1, commit=8))
    s.save_snapshot(snap(6, 1, b"image at 6"))
    for s in both(backend):
        state = s.load()
        assert state.snapshot == snap(6, 1, b"image at 6")
        assert state.entries == run(7, 10, 1)  # log kept: term at 6 matches
        assert state.hard_state == HardState(term=1, vote=1, commit=8)


def test_stale_snapshot_is_ignored(backend: Backend) -> None:
    s = backend.open()
    s.append(run(1, 10, 1))
    s.save_snapshot(snap(6, 1, b"new"))
    s.save_snapshot(snap(4, 1, b"old"))
    s.save_snapshot(snap(6, 1, b"same index"))
    for s in both(backend):
        assert s.load().snapshot == snap(6, 1, b"new")


def test_compaction(backend: Backend) -> None:
    s = backend.open()
    for i in range(1, 101):
        s.append([entry(i, 1, bytes(40))])
    s.save_snapshot(snap(80, 1))
    s.compact(80)
    for s in both(backend):
        state = s.load()
        assert state.snapshot == snap(80, 1)
        assert [e.index for e in state.entries] == list(range(81, 101))
    s.append(run(101, 102, 1))
    for s in both(backend):
        assert s.load().last_index == 102


def test_compaction_must_be_covered_by_snapshot(backend: Backend) -> None:
    s = backend.open()
    s.append(run(1, 10, 1))
    with pytest.raises(InvalidArgument, match="snapshot"):
        s.compact(3)
    s.save_snapshot(snap(5, 1))
    with pytest.raises(InvalidArgument, match="snapshot index 5"):
        s.compact(6)
    s.compact(5)
    s.compact(2)  # already gone: no-op
    for s in both(backend):
        assert s.load().entries == run(6, 10, 1)


def test_no_writes_at_or_below_the_snapshot(backend: Backend) -> None:
    s = backend.open()
    s.append(run(1, 10, 1))
    s.save_snapshot(snap(5, 1))
    with pytest.raises(InvalidArgument, match="covered by the snapshot"):
        s.append(run(5, 6, 2))
    with pytest.raises(InvalidArgument, match="covered by the snapshot"):
        s.truncate_suffix(3)
    s.append(run(6, 7, 2))  # just after the snapshot is fine
    for s in both(backend):
        assert s.load().entries == run(6, 7, 2)


def test_snapshot_beyond_the_log_discards_it(backend: Backend) -> None:
    s = backend.open()
    s.append(run(1, 5, 1))
    s.save_snapshot(snap(20, 3))  # installed from a leader
    for s in both(backend):
        state = s.load()
        assert state.entries == []
        assert state.last_index == 20
    s.append(run(21, 22, 3))
    for s in both(backend):
        assert s.load().entries == run(21, 22, 3)


def test_snapshot_with_conflicting_term_discards_the_log(backend: Backend) -> None:
    s = backend.open()
    s.append(run(1, 10, 1))
    s.save_snapshot(snap(5, 2))  # our entry 5 has term 1: our log is from another history
    for s in both(backend):
        assert s.load().entries == []
    # New entries after the snapshot must not bring the old 6..10 back.
    s.append(run(6, 7, 2))
    for s in both(backend):
        assert s.load().entries == run(6, 7, 2)
    s.compact(5)
    for s in both(backend):
        assert s.load().entries == run(6, 7, 2)


def test_append_after_compaction_to_empty_log(backend: Backend) -> None:
    s = backend.open()
    s.append(run(1, 10, 1))
    s.save_snapshot(snap(10, 1))
    s.compact(10)
    for s in both(backend):
        assert s.load().entries == []
        assert s.load().last_index == 10
    with pytest.raises(InvalidArgument, match="gap"):
        s.append(run(12, 12, 1))
    s.append(run(11, 12, 2))
    for s in both(backend):
        assert s.load().entries == run(11, 12, 2)


def test_many_reopens(backend: Backend) -> None:
    s = backend.open()
    expected = []
    for round_ in range(1, 8):
        batch = run(len(expected) + 1, len(expected) + round_, round_)
        s.append(batch, HardState(term=round_, vote=1, commit=len(expected)))
        expected += batch
        s = backend.reopen()
        assert s.load().entries == expected
        assert s.load().hard_state.term == round_


def test_large_entries(backend: Backend) -> None:
    s = backend.open()
    big = [entry(1, 1, bytes(range(256)) * 4096), entry(2, 1, b"")]
    s.append(big)
    for s in both(backend):
        assert s.load().entries == big


def test_closed_storage_refuses_calls(backend: Backend) -> None:
    s = backend.open()
    s.append(run(1, 1, 1))
    s.close()
    s.close()  # idempotent
    with pytest.raises(StorageFailed):
        s.append(run(2, 2, 1))
    with pytest.raises(StorageFailed):
        s.load()

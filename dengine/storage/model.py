"""The log rules shared by every backend, on plain Python values.

``validate_*`` raise InvalidArgument *before* a backend writes anything;
:class:`LogModel` is the reference behaviour: MemoryStorage is a LogModel, and
FileStorage's recovery replays WAL records into one.
"""

from __future__ import annotations

from collections.abc import Sequence

from dengine.errors import InvalidArgument
from dengine.raft.messages import Entry, HardState, Snapshot

from .base import InitialState


def validate_append(entries: Sequence[Entry], *, last_index: int, snapshot_index: int) -> None:
    """Reject a batch that is not contiguous, leaves a gap, or rewrites
    entries the snapshot covers."""
    if not entries:
        return
    first = entries[0].index
    for offset, entry in enumerate(entries):
        if entry.index != first + offset:
            raise InvalidArgument(
                f"entries must be contiguous: expected index {first + offset}, got {entry.index}"
            )
    if first < 1:
        raise InvalidArgument(f"entry indexes start at 1, got {first}")
    if first <= snapshot_index:
        raise InvalidArgument(
            f"entry {first} is covered by the snapshot at {snapshot_index}; committed entries are never rewritten"
        )
    if first > last_index + 1:
        raise InvalidArgument(f"entry {first} would leave a gap after the last index {last_index}")


def validate_truncate(from_index: int, *, snapshot_index: int) -> None:
    if from_index <= snapshot_index:
        raise InvalidArgument(
            f"cannot truncate from {from_index}: entries up to {snapshot_index} are covered by the snapshot"
        )


def validate_compact(index: int, *, snapshot_index: int) -> None:
    if index > snapshot_index:
        raise InvalidArgument(
            f"cannot compact up to {index}: only entries up to the snapshot index {snapshot_index} may be dropped"
        )


class LogModel:
    """Hard state + latest snapshot + contiguous entries, in memory."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []

    # -- queries ---------------------------------------------------------

    @property
    def snapshot_index(self) -> int:
        return self.snapshot.meta.index if self.snapshot is not None else 0

    @property
    def last_index(self) -> int:
        return self.entries[-1].index if self.entries else self.snapshot_index

    def term_at(self, index: int) -> int | None:
        if self.entries and self.entries[0].index <= index <= self.entries[-1].index:
            return self.entries[index - self.entries[0].index].term
        return None

    def initial_state(self) -> InitialState:
        after = self.snapshot_index
        entries = self.entries
        if entries and entries[0].index <= after:
            entries = entries[after - entries[0].index + 1 :]
        return InitialState(self.hard_state, self.snapshot, list(entries))

    def copy(self) -> LogModel:
        other = LogModel()
        other.hard_state, other.snapshot, other.entries = self.hard_state, self.snapshot, list(self.entries)
        return other

    # -- mutations (already validated) ------------------------------------

    def append(self, entries: Sequence[Entry], hard_state: HardState | None) -> None:
        if entries:
            first = entries[0].index
            if self.entries and first > self.entries[-1].index + 1:
                # Only during WAL recovery (validate_append forbids gaps): the
                # log restarts after a purged prefix or a discarded log; the
                # snapshot must cover the gap, which recovery checks at the end.
                self.entries = []
            self.truncate_suffix(first)
            self.entries.extend(entries)
        if hard_state is not None:
            self.hard_state = hard_state

    def truncate_suffix(self, from_index: int) -> None:
        if not self.entries or from_index > self.entries[-1].index:
            return
        keep = from_index - self.entries[0].index
        del self.entries[max(keep, 0) :]

    def save_snapshot(self, snapshot: Snapshot) -> bool:
        """Returns False (and changes nothing) for a snapshot not newer than
        the current one."""
        if snapshot.meta.index <= self.snapshot_index and self.snapshot is not None:
            return False
        if self.term_at(snapshot.meta.index) != snapshot.meta.term:
            self.entries = []
        self.snapshot = snapshot
        return True

    def compact(self, index: int) -> None:
        if self.entries and index >= self.entries[0].index:
            del self.entries[: index - self.entries[0].index + 1]

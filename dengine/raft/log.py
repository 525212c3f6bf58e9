"""The Raft log as the core sees it: a snapshot point, the entries after it,
and three cursors.

Rules:
* ``entries[k]`` has index ``snapshot_index + 1 + k``; indexes are contiguous.
* ``committed``: highest index known committed. Never decreases; committed
  entries are never truncated (Raft §5.3, Log Matching + Leader Completeness).
* ``persisted``: highest index known durable in local storage (the driver
  told us through ``on_persisted``). A truncation lowers it to the last index
  that is still the same entry.
* ``unstable_from``: first index not yet handed to the driver to persist.
* ``applied``: highest index handed to the driver to apply. Entries are
  handed out once committed (durable on a majority), even before they are
  durable locally; compaction waits for local durability.
"""

from __future__ import annotations

from collections.abc import Sequence

from dengine.raft.messages import Entry, Snapshot, SnapshotMeta


class LogInvariantBroken(AssertionError):
    """A message asked the log to do something Raft forbids (for example
    truncate a committed entry). Indicates a bug or a byzantine peer."""


class RaftLog:
    def __init__(
        self,
        *,
        snapshot: Snapshot | None = None,
        entries: Sequence[Entry] = (),
        committed: int = 0,
    ) -> None:
        self.snapshot_index = snapshot.meta.index if snapshot else 0
        self.snapshot_term = snapshot.meta.term if snapshot else 0
        self.entries: list[Entry] = [e for e in entries if e.index > self.snapshot_index]
        for k, e in enumerate(self.entries):
            if e.index != self.snapshot_index + 1 + k:
                raise LogInvariantBroken(
                    f"entries are not contiguous after the snapshot at {self.snapshot_index}: "
                    f"position {k} holds index {e.index}"
                )
        last = self.last_index()
        self.committed = min(max(committed, self.snapshot_index), last)
        self.persisted = last  # everything we were given came from storage
        self.unstable_from = last + 1
        self.applied = self.snapshot_index
        # A snapshot received from the leader, not yet handed to the driver.
        self.pending_snapshot: Snapshot | None = None
        # Handed to the driver, not yet durable.
        self.snapshot_in_flight: SnapshotMeta | None = None

    # -- queries ---------------------------------------------------------------

    def first_index(self) -> int:
        return self.snapshot_index + 1

    def last_index(self) -> int:
        return self.snapshot_index + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snapshot_term

    def term(self, index: int) -> int | None:
        """Term of the entry at ``index``; None if compacted or beyond the end."""
        if index == self.snapshot_index:
            return self.snapshot_term
        if index < self.snapshot_index or index > self.last_index():
            return None
        return self.entries[index - self.snapshot_index - 1].term

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def entry(self, index: int) -> Entry:
        return self.entries[index - self.snapshot_index - 1]

    def slice(self, lo: int, hi: int, max_count: int | None = None, max_bytes: int | None = None) -> list[Entry]:
        """Entries with lo <= index < hi (at least one if any), bounded in count and bytes."""
        if lo <= self.snapshot_index:
            raise LogInvariantBroken(f"entries at {lo} were compacted (first is {self.first_index()})")
        hi = min(hi, self.last_index() + 1)
        if max_count is not None:
            hi = min(hi, lo + max_count)
        base = self.snapshot_index + 1
        out = self.entries[lo - base : hi - base]
        if max_bytes is not None and len(out) > 1:
            size = 0
            for k, e in enumerate(out):
                size += len(e.data) + 16
                if size > max_bytes and k > 0:
                    return out[:k]
        return out

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft §5.4.1: the candidate's log is at least as up to date as ours."""
        my_term = self.last_term()
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index())

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """Index of the first entry that is new or whose term differs; 0 if none."""
        for e in entries:
            t = self.term(e.index)
            if t is None and e.index <= self.snapshot_index:
                continue  # already covered by our snapshot: committed, so identical
            if t != e.term:
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """The largest index <= ``index`` whose term is <= ``term`` (fast log
        backtracking, thesis §5.3 optimisation as in etcd)."""
        index = min(index, self.last_index())
        while index > self.snapshot_index:
            t = self.term(index)
            if t is not None and t <= term:
                return index
            index -= 1
        return self.snapshot_index

    # -- mutations -----------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """Append ``entries``, truncating any suffix from entries[0].index on."""
        if not entries:
            return
        first = entries[0].index
        if first <= self.committed:
            raise LogInvariantBroken(f"refusing to overwrite committed entry {first} (committed {self.committed})")
        if first > self.last_index() + 1:
            raise LogInvariantBroken(f"gap: appending {first} after last index {self.last_index()}")
        if first <= self.last_index():
            del self.entries[first - self.snapshot_index - 1 :]
            self.persisted = min(self.persisted, first - 1)
            self.unstable_from = min(self.unstable_from, first)
        self.entries.extend(entries)

    def maybe_append(self, prev_index: int, prev_term: int, commit: int, entries: Sequence[Entry]) -> int | None:
        """Follower side of AppendEntries. Returns the last index now known to
        match the leader, or None when prev_index/prev_term do not match."""
        # The caller answers prev_index < committed itself (etcd does the same),
        # so prev_index >= committed >= snapshot_index here.
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            self.append(entries[conflict - entries[0].index :])
        self.commit_to(min(commit, last_new))
        return last_new

    def commit_to(self, index: int) -> bool:
        index = min(index, self.last_index())
        if index > self.committed:
            self.committed = index
            return True
        return False

    def maybe_commit(self, index: int, term: int) -> bool:
        """Leader: commit ``index`` only if it is from the current ``term``
        (Raft §5.4.2: never commit a previous term's entry by counting)."""
        if index > self.committed and self.term(index) == term:
            self.committed = index
            return True
        return False

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log by ``snapshot`` (follower installing it)."""
        if snapshot.meta.index < self.committed:
            raise LogInvariantBroken(
                f"snapshot at {snapshot.meta.index} is behind the commit index {self.committed}"
            )
        self.snapshot_index = snapshot.meta.index
        self.snapshot_term = snapshot.meta.term
        self.entries = []
        self.committed = snapshot.meta.index
        self.persisted = min(self.persisted, snapshot.meta.index - 1)
        self.unstable_from = snapshot.meta.index + 1
        self.applied = snapshot.meta.index
        self.pending_snapshot = snapshot

    def compact(self, index: int, term: int) -> None:
        """Drop entries up to ``index`` (covered by a snapshot the application took)."""
        if index <= self.snapshot_index:
            return
        if index > self.applied or index > self.persisted:
            raise LogInvariantBroken(
                f"cannot compact to {index}: applied {self.applied}, persisted {self.persisted}"
            )
        del self.entries[: index - self.snapshot_index]
        self.snapshot_index = index
        self.snapshot_term = term

    # -- handing work to the driver -------------------------------------------

    def unstable_entries(self) -> list[Entry]:
        if self.unstable_from > self.last_index():
            return []
        return self.entries[self.unstable_from - self.snapshot_index - 1 :]

    def mark_handed(self) -> None:
        self.unstable_from = self.last_index() + 1

    def on_persisted(self, index: int, term: int) -> bool:
        """The driver made everything up to (index, term) durable. Ignored if
        that entry has since been replaced (the log matching property makes
        a term match at ``index`` imply the whole prefix matches)."""
        if index > self.persisted and self.term(index) == term:
            self.persisted = index
            return True
        return False

    def has_next_committed(self) -> bool:
        return self.committed > self.applied

    def next_committed(self, max_count: int | None = None, max_bytes: int | None = None) -> list[Entry]:
        # Committed means durable on a majority, so an entry may be applied
        # before it is durable *here* (etcd does the same): the leader applies
        # while its own fsync runs, and a crash cannot lose it -- the new
        # leader has it. Compaction still waits for local durability.
        hi = self.committed
        if hi <= self.applied:
            return []
        out = self.slice(self.applied + 1, hi + 1, max_count=max_count, max_bytes=max_bytes)
        self.applied = out[-1].index
        return out

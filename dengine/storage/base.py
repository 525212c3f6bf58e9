"""The storage interface: what the Raft driver needs from a disk.

A ``Storage`` holds, durably, three things:

* the **hard state** (term, vote, commit) -- the latest one written;
* the latest **snapshot** (a state-machine image up to ``meta.index``);
* the **log**: contiguous entries after the snapshot (or from index 1).

Rules every backend follows (tests/conformance/test_storage.py checks them):

* Every mutating call is **durable when it returns** (for FileStorage: one
  ``write`` and one ``fsync`` per :meth:`Storage.append`). The runtime calls
  these blocking methods through ``trio.to_thread``; nothing here imports trio.
* :meth:`Storage.append` with ``entries[0].index <= last_index`` first drops
  the conflicting suffix from ``entries[0].index`` on (Raft's "delete the
  existing entry and all that follow it", Figure 2), in the same durable
  batch. Entries must be contiguous, must not leave a gap after the last
  index, and must lie after the snapshot: committed entries are never
  rewritten. Violations are :class:`~dengine.errors.InvalidArgument` (a bug in
  the caller), raised before anything is written.
* :meth:`Storage.save_snapshot` keeps the log if it holds the snapshot's
  ``(index, term)``; otherwise (snapshot installed from a leader beyond our
  log, or a conflicting term at that index) the whole log is discarded. A
  snapshot not newer than the current one is ignored. The entries at or below
  the snapshot index stay until :meth:`Storage.compact` but are no longer
  returned by :meth:`Storage.load`.
* Errors: misuse -> InvalidArgument; disk problems -> a
  :class:`~dengine.errors.StorageError` subclass. After a failed write or
  sync every later mutating call raises :class:`~dengine.errors.StorageFailed`:
  the data may not be on disk and we never pretend otherwise.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import attrs

from dengine.raft.messages import Entry, HardState, Snapshot


@attrs.frozen
class InitialState:
    """What a node restarts from."""

    hard_state: HardState
    """``HardState()`` if none was ever written."""
    snapshot: Snapshot | None
    """The latest snapshot (checksum verified), or None."""
    entries: list[Entry]
    """Contiguous entries after ``snapshot.meta.index`` (or from index 1)."""

    @property
    def last_index(self) -> int:
        if self.entries:
            return self.entries[-1].index
        return self.snapshot.meta.index if self.snapshot is not None else 0


class Storage(abc.ABC):
    """Durable hard state, snapshot and log. Not safe for concurrent use by
    several threads unless a backend says so (FileStorage does: it serialises
    its calls with a lock)."""

    @abc.abstractmethod
    def load(self) -> InitialState:
        """The durable state as it is now (after recovery, for a backend that
        was just opened)."""

    @abc.abstractmethod
    def append(self, entries: Sequence[Entry], hard_state: HardState | None = None) -> float | None:
        """Durably append ``entries`` (truncating a conflicting suffix first)
        and/or record ``hard_state``, as ONE atomic batch: after a crash either
        all of it is there or none of it. Returns only once durable, with the
        seconds the backend spent making it durable (its fsync) when it
        measures them, else None (the runtime times the whole call either way)."""

    @abc.abstractmethod
    def truncate_suffix(self, from_index: int) -> None:
        """Durably drop every entry with index >= ``from_index`` (must be
        after the snapshot). A no-op if there is none."""

    @abc.abstractmethod
    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Durably make ``snapshot`` the latest one (see module docstring for
        what happens to the log)."""

    @abc.abstractmethod
    def read_snapshot(self, index: int) -> Snapshot | None:
        """The saved snapshot at ``index`` with its data, or None if the
        latest saved snapshot is not that one (a newer one replaced it). The
        runtime keeps only the meta in memory and reads the bytes back when a
        follower needs them."""

    @abc.abstractmethod
    def compact(self, index: int) -> None:
        """Drop entries <= ``index``; ``index`` must be covered by the saved
        snapshot (``index <= snapshot.meta.index``). Frees disk space (WAL
        segments wholly covered are deleted)."""

    @property
    def needs_preparation(self) -> bool:
        """Whether :meth:`prepare` has slow work to do. Cheap; read without
        locking, so it may be briefly stale."""
        return False

    def prepare(self) -> None:
        """Do slow, optional work off the write path (FileStorage: zero-fill
        the next WAL segment). May run in a worker thread beside the other
        calls; returns at once when there is nothing to do. Never needed for
        durability."""

    def size_on_disk(self) -> dict[str, int]:
        """Bytes the backend holds on disk, by kind (FileStorage: ``wal``,
        ``snapshot``); empty for a backend that keeps nothing on disk. Cheap
        enough to call at every metrics scrape, from the event loop."""
        return {}

    @abc.abstractmethod
    def close(self) -> None:
        """Release the backend (files, the data-dir lock). Idempotent. Every
        later call but close() raises StorageFailed."""

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

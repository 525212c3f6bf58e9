"""MemoryStorage: the Storage rules in memory, for tests and the simulator.

Crash simulation. By default (``auto_sync=True``) every call is durable when
it returns, like FileStorage. With ``auto_sync=False`` each mutating call is
only *written*: :meth:`MemoryStorage.load` sees it, but it becomes durable
only at the next :meth:`MemoryStorage.sync`. :meth:`MemoryStorage.crash`
models a power cut: it closes this instance and returns a fresh MemoryStorage
holding the durable state -- plus, if asked, the first ``keep_unsynced``
unsynced operations (a kernel may have flushed some of the page cache on its
own; operations are kept whole and in order, like the WAL's atomic batches).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dengine.errors import StorageFailed
from dengine.raft.messages import Entry, HardState, Snapshot

from .base import InitialState, Storage
from .model import LogModel, validate_append, validate_compact, validate_truncate

_Op = Callable[[LogModel], object]


class MemoryStorage(Storage):
    def __init__(self, *, auto_sync: bool = True, _durable: LogModel | None = None) -> None:
        self._auto_sync = auto_sync
        self._durable = _durable if _durable is not None else LogModel()
        # The visible state; the same object as _durable while nothing is
        # pending would save a copy, but two models keep the code obvious.
        self._written = self._durable.copy()
        self._unsynced: list[_Op] = []
        self._closed = False

    # -- Storage ----------------------------------------------------------

    def load(self) -> InitialState:
        self._check_open()
        return self._written.initial_state()

    def append(self, entries: Sequence[Entry], hard_state: HardState | None = None) -> None:
        self._check_open()
        entries = list(entries)
        validate_append(entries, last_index=self._written.last_index, snapshot_index=self._written.snapshot_index)
        if entries or hard_state is not None:
            self._do(lambda m: m.append(entries, hard_state))

    def truncate_suffix(self, from_index: int) -> None:
        self._check_open()
        validate_truncate(from_index, snapshot_index=self._written.snapshot_index)
        self._do(lambda m: m.truncate_suffix(from_index))

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self._check_open()
        self._do(lambda m: m.save_snapshot(snapshot))

    def read_snapshot(self, index: int) -> Snapshot | None:
        self._check_open()
        snapshot = self._written.snapshot
        return snapshot if snapshot is not None and snapshot.meta.index == index else None

    def compact(self, index: int) -> None:
        self._check_open()
        validate_compact(index, snapshot_index=self._written.snapshot_index)
        self._do(lambda m: m.compact(index))

    def close(self) -> None:
        self._closed = True

    # -- crash simulation ---------------------------------------------------

    @property
    def unsynced(self) -> int:
        """How many written operations a crash would lose now."""
        return len(self._unsynced)

    def sync(self) -> None:
        """Make every written operation durable."""
        self._check_open()
        for op in self._unsynced:
            op(self._durable)
        self._unsynced.clear()

    def crash(self, *, keep_unsynced: int = 0) -> MemoryStorage:
        """Close this instance and return the storage a restarted node would
        find: the durable state plus the first ``keep_unsynced`` unsynced
        operations. The new instance has the same ``auto_sync`` setting."""
        self._check_open()
        survivor = self._durable.copy()
        for op in self._unsynced[: max(keep_unsynced, 0)]:
            op(survivor)
        self._closed = True
        return MemoryStorage(auto_sync=self._auto_sync, _durable=survivor)

    def reopen(self) -> MemoryStorage:
        """A clean restart: sync, close, and return a new instance."""
        self.sync()
        return self.crash()

    # -- internals ------------------------------------------------------------

    def _do(self, op: _Op) -> None:
        op(self._written)
        if self._auto_sync:
            op(self._durable)
        else:
            self._unsynced.append(op)

    def _check_open(self) -> None:
        if self._closed:
            raise StorageFailed("this MemoryStorage was closed (or crashed); use the instance crash() returned")

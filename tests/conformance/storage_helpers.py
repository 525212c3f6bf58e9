"""Helpers shared by the storage tests: backends behind one factory."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import attrs

from dengine.raft.messages import ConfState, Entry, Snapshot, SnapshotMeta
from dengine.storage import FileStorage, MemoryStorage, Storage


def entry(index: int, term: int, data: bytes | None = None) -> Entry:
    return Entry(index, term, data=data if data is not None else f"{index}@{term}".encode())


def run(first: int, last: int, term: int) -> list[Entry]:
    return [entry(i, term) for i in range(first, last + 1)]


def snap(index: int, term: int, data: bytes = b"state") -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, ConfState(voters={1, 2, 3})), data)


@attrs.define
class Backend:
    """Opens a storage and "restarts" it: ``reopen`` closes the current one
    cleanly and opens it again on the same durable state."""

    open_new: Callable[[], Storage]
    reopen_fn: Callable[[Storage], Storage]
    current: Storage | None = None

    def open(self) -> Storage:
        self.current = self.open_new()
        return self.current

    def reopen(self) -> Storage:
        assert self.current is not None
        self.current = self.reopen_fn(self.current)
        return self.current

    def close(self) -> None:
        if self.current is not None:
            self.current.close()


def memory_backend() -> Backend:
    def reopen(s: Storage) -> Storage:
        assert isinstance(s, MemoryStorage)
        return s.reopen()

    return Backend(MemoryStorage, reopen)


def file_backend(path: str, *, segment_size: int = 512) -> Backend:
    # A tiny segment size so every test crosses segment boundaries.
    def open_new() -> Storage:
        return FileStorage(path, segment_size=segment_size)

    def reopen(s: Storage) -> Storage:
        s.close()
        return open_new()

    return Backend(open_new, reopen)


BACKENDS: dict[str, Callable[[str], Backend]] = {
    "memory": lambda path: memory_backend(),
    "file": lambda path: file_backend(path),
    "file-big-segments": lambda path: file_backend(path, segment_size=64 * 1024 * 1024),
}


def backend_fixture(name: str, tmp_path: os.PathLike[str]) -> Iterator[Backend]:
    backend = BACKENDS[name](os.path.join(os.fspath(tmp_path), "data"))
    try:
        yield backend
    finally:
        backend.close()

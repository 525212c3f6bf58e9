"""Small blocking file-system helpers and the OSError -> StorageError map."""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

from dengine.errors import (
    DataDirMissing,
    StorageError,
    StorageFailed,
    StorageFull,
    StoragePermissionDenied,
)

_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}


def storage_error(exc: OSError, doing: str, *, writing: bool) -> StorageError:
    """A typed, readable error for ``exc`` raised while ``doing`` something.

    ``writing``: the failure happened on the write path, where an untyped
    failure means the data may not be durable (StorageFailed)."""
    detail = f"{doing}: {exc.strerror or exc}"
    if exc.errno in _FULL:
        return StorageFull(f"disk full while {detail}")
    if exc.errno in _DENIED:
        return StoragePermissionDenied(f"permission denied while {detail}")
    if exc.errno == errno.ENOENT and not writing:
        return DataDirMissing(f"missing file or directory while {detail}")
    if writing:
        return StorageFailed(f"I/O error while {detail}; the data may not be on disk")
    return StorageError(f"I/O error while {detail}")


#: Large files (a snapshot, a preallocated WAL segment) are written and
#: synced this many bytes at a time: one fsync of hundreds of megabytes holds
#: the disk for the node's WAL fsyncs (docs/benchmarks.md).
SYNC_STEP = 16 << 20


def fsync_file(fd: int) -> None:
    """Make a file's data (and the size needed to read it) durable.

    fdatasync skips timestamps, which recovery never needs; looked up at call
    time so tests can make it fail."""
    sync = getattr(os, "fdatasync", None) or os.fsync
    sync(fd)


def fsync_dir(path: str) -> None:
    """Make the names in a directory durable (a created, renamed or deleted
    file is not durable until its directory is synced)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, buffers: Sequence[bytes | memoryview]) -> None:
    """One writev for the whole batch; loop only on a short write."""
    total = sum(len(b) for b in buffers)
    written = os.writev(fd, buffers)
    if written == total:
        return
    rest = memoryview(b"".join(buffers))[written:]
    while rest:
        n = os.write(fd, rest)
        rest = rest[n:]

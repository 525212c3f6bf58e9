"""FileStorage turns OS failures into typed errors, and a failed write closes
the write path for good. Tests run as root, so permission and disk-full
failures are injected by patching os functions."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from dengine.errors import (
    DataDirLocked,
    DataDirMissing,
    StorageFailed,
    StorageFull,
    StoragePermissionDenied,
)
from dengine.raft.messages import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from dengine.storage import FileStorage


def _raiser(err: int, real: object = None, *, after: int = 0):  # type: ignore[no-untyped-def]
    calls = {"n": 0}

    def fn(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(err, os.strerror(err))
        return real(*args, **kwargs)  # type: ignore[operator]

    return fn


def test_second_open_is_locked(tmp_path: Path) -> None:
    with FileStorage(tmp_path):
        with pytest.raises(DataDirLocked, match=f"already in use.*pid {os.getpid()}"):
            FileStorage(tmp_path)
    FileStorage(tmp_path).close()  # released on close


def test_missing_dir_when_not_creating(tmp_path: Path) -> None:
    with pytest.raises(DataDirMissing, match="does not exist"):
        FileStorage(tmp_path / "nope", create=False)
    assert not (tmp_path / "nope").exists()


def test_missing_dir_is_created_by_default(tmp_path: Path) -> None:
    with FileStorage(tmp_path / "a" / "b") as s:
        s.append([Entry(1, 1)])
    assert (tmp_path / "a" / "b" / "LOCK").exists()


def test_data_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataDirMissing, match="not a directory"):
        FileStorage(tmp_path / "f")


def test_unreadable_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "listdir", _raiser(errno.EACCES))
    with pytest.raises(StoragePermissionDenied, match=f"permission denied while opening data directory {tmp_path}"):
        FileStorage(tmp_path)


def test_lock_file_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "open", _raiser(errno.EPERM))
    with pytest.raises(StoragePermissionDenied, match="lock file"):
        FileStorage(tmp_path)


def test_disk_full_on_append(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FileStorage(tmp_path) as s:
        s.append([Entry(1, 1)])
        monkeypatch.setattr(os, "writev", _raiser(errno.ENOSPC))
        with pytest.raises(StorageFull, match="disk full while appending"):
            s.append([Entry(2, 1)])
        monkeypatch.undo()
        with pytest.raises(StorageFailed, match="failed earlier.*disk full"):
            s.append([Entry(2, 1)])
        with pytest.raises(StorageFailed):
            s.append([], HardState(term=2))


def test_permission_denied_on_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FileStorage(tmp_path) as s:
        s.append([Entry(1, 1)])
        monkeypatch.setattr(os, "replace", _raiser(errno.EACCES))
        with pytest.raises(StoragePermissionDenied, match="writing the snapshot"):
            s.save_snapshot(Snapshot(SnapshotMeta(1, 1, ConfState({1}))))
        monkeypatch.undo()
        with pytest.raises(StorageFailed):
            s.compact(0)


@pytest.mark.parametrize("op", ["append", "truncate", "hard_state"])
def test_fsync_failure_is_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, op: str) -> None:
    with FileStorage(tmp_path) as s:
        s.append([Entry(1, 1), Entry(2, 1)])
        monkeypatch.setattr(os, "fdatasync", _raiser(errno.EIO))
        with pytest.raises(StorageFailed, match="may not be on disk"):
            if op == "append":
                s.append([Entry(3, 1)])
            elif op == "truncate":
                s.truncate_suffix(2)
            else:
                s.append([], HardState(term=3))
        monkeypatch.undo()
        # No retry pretends the data is safe: every later write refuses.
        for _ in range(3):
            with pytest.raises(StorageFailed, match="refuses all writes"):
                s.append([Entry(3, 1)])
        with pytest.raises(StorageFailed):
            s.save_snapshot(Snapshot(SnapshotMeta(1, 1, ConfState({1}))))
        with pytest.raises(StorageFailed):
            s.load()
    # What reached the disk before the failure is still readable after a restart.
    with FileStorage(tmp_path) as s:
        assert s.load().entries[:2] == [Entry(1, 1), Entry(2, 1)][: len(s.load().entries[:2])]


def test_failure_when_rolling_a_segment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FileStorage(tmp_path, segment_size=10) as s:
        s.append([Entry(1, 1, data=bytes(20))])
        monkeypatch.setattr(os, "fsync", _raiser(errno.EIO))  # directory fsync of the new segment
        with pytest.raises(StorageFailed, match="may not be on disk"):
            s.append([Entry(2, 1)])
        monkeypatch.undo()
        with pytest.raises(StorageFailed):
            s.append([Entry(2, 1)])
    with FileStorage(tmp_path, segment_size=10) as s:
        assert s.load().entries[0] == Entry(1, 1, data=bytes(20))
        s.append([Entry(2, 2)])


def test_short_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.writev

    def short_writev(fd: int, bufs: list[bytes]) -> int:
        return real(fd, [b"".join(bufs)[:5]])

    entries = [Entry(i, 1, data=bytes(100)) for i in range(1, 20)]
    with FileStorage(tmp_path) as s:
        monkeypatch.setattr(os, "writev", short_writev)
        s.append(entries)
    monkeypatch.undo()
    with FileStorage(tmp_path) as s:
        assert s.load().entries == entries

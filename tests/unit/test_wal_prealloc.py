"""WAL segment preallocation: FileStorage.prepare zero-fills the next segment
off the write path; a roll-over renames it into place and appends overwrite
its zeros; recovery reads the zero tail as free space; failures and close
while preparing leave nothing behind."""

from __future__ import annotations

import errno
import logging
import os
import threading
from pathlib import Path

import pytest

from dengine.raft.messages import Entry, HardState
from dengine.storage import FileStorage, wal
from dengine.storage.file import SPARE_NAME

SEGMENT = 4096


def _entries(first: int, n: int, term: int = 1) -> list[Entry]:
    return [Entry(i, term, data=f"entry {i} ".encode() * 8) for i in range(first, first + n)]


def _layout(path: Path) -> list[tuple[str, int, int]]:
    """(name, file size, where its records end) of each segment."""
    out = []
    for seg in sorted(path.glob("wal-*.log")):
        data = seg.read_bytes()
        out.append((seg.name, len(data), wal.scan(data, zero_tail=True).end))
    return out


def test_prepare_writes_a_zero_filled_spare(tmp_path: Path) -> None:
    with FileStorage(tmp_path, segment_size=SEGMENT) as s:
        assert s.needs_preparation
        s.prepare()
        assert not s.needs_preparation
        spare = tmp_path / SPARE_NAME
        assert spare.read_bytes() == bytes(SEGMENT)
        s.prepare()  # nothing to do: one spare at a time
        assert spare.stat().st_size == SEGMENT


def test_roll_over_uses_the_spare_and_appends_overwrite_its_zeros(tmp_path: Path) -> None:
    entries: list[Entry] = []
    with FileStorage(tmp_path, segment_size=SEGMENT) as s:
        s.prepare()
        # The first segment was an ordinary growing file: the next append
        # moves to the prepared one at once.
        batch = _entries(1, 2)
        s.append(batch, HardState(term=1, commit=0))
        entries += batch
        assert not (tmp_path / SPARE_NAME).exists()
        assert s.needs_preparation
        (first, first_size, first_end), (second, second_size, second_end) = _layout(tmp_path)
        assert first_size == first_end  # grown, no zero tail
        assert second_size == SEGMENT and 0 < second_end < SEGMENT
        s.prepare()
        while len(_layout(tmp_path)) < 3:  # fill the prepared segment until it rolls
            batch = _entries(len(entries) + 1, 3)
            s.append(batch)
            entries += batch
            assert len(entries) < 1000
    layout = _layout(tmp_path)
    assert layout[1][1] == layout[1][2] >= SEGMENT  # filled (the last batch may run past it)
    assert layout[2][1] == SEGMENT > layout[2][2]  # the next spare, records then zeros
    with FileStorage(tmp_path, segment_size=SEGMENT) as s:
        assert s.load().entries == entries
        batch = _entries(len(entries) + 1, 1)
        s.append(batch)  # continues where the records end, inside the zeros
    assert _layout(tmp_path)[2][1] == SEGMENT
    with FileStorage(tmp_path, segment_size=SEGMENT) as s:
        assert s.load().entries == [*entries, *batch]


def test_torn_write_inside_a_preallocated_segment_is_repaired(tmp_path: Path) -> None:
    with FileStorage(tmp_path, segment_size=SEGMENT) as s:
        s.prepare()
        s.append(_entries(1, 2), HardState(term=1, commit=0))
        s.append(_entries(3, 2))
    name, size, end = _layout(tmp_path)[-1]
    seg = tmp_path / name
    data = bytearray(seg.read_bytes())
    last = [off for off, _ in wal.scan(bytes(data), zero_tail=True).records][-1]
    data[last + 20 : end] = bytes(end - last - 20)  # the end of the last record never landed
    seg.write_bytes(bytes(data))
    with FileStorage(tmp_path, segment_size=SEGMENT) as s:
        assert s.load().entries == _entries(1, 2)
        s.append(_entries(3, 1))
    with FileStorage(tmp_path, segment_size=SEGMENT) as s:
        assert s.load().entries == _entries(1, 3)


def test_corruption_before_a_zero_tail_is_still_corruption(tmp_path: Path) -> None:
    from dengine.errors import StorageCorrupted

    with FileStorage(tmp_path, segment_size=SEGMENT) as s:
        s.prepare()
        s.append(_entries(1, 2), HardState(term=1, commit=0))
        s.append(_entries(3, 2))
        s.append(_entries(5, 2))
    name, _, _ = _layout(tmp_path)[-1]
    seg = tmp_path / name
    data = bytearray(seg.read_bytes())
    offsets = [off for off, _ in wal.scan(bytes(data), zero_tail=True).records]
    data[offsets[1] + 12] ^= 0x40  # a record with good ones after it
    seg.write_bytes(bytes(data))
    with pytest.raises(StorageCorrupted) as info:
        FileStorage(tmp_path, segment_size=SEGMENT)
    assert info.value.path == str(seg) and info.value.offset == offsets[1]


def test_zero_tail_in_a_segment_that_is_not_the_last_is_corruption(tmp_path: Path) -> None:
    from dengine.errors import StorageCorrupted

    with FileStorage(tmp_path, segment_size=SEGMENT) as s:
        s.append(_entries(1, 2), HardState(term=1, commit=0))
        s.prepare()
        s.append(_entries(3, 2))
    first = sorted(tmp_path.glob("wal-*.log"))[0]
    size = first.stat().st_size
    with open(first, "ab") as f:
        f.write(bytes(512))
    with pytest.raises(StorageCorrupted) as info:
        FileStorage(tmp_path, segment_size=SEGMENT)
    assert info.value.path == str(first) and info.value.offset == size


def test_without_preallocation_nothing_is_prepared(tmp_path: Path) -> None:
    with FileStorage(tmp_path, segment_size=SEGMENT, preallocate=False) as s:
        assert not s.needs_preparation
        s.prepare()
        assert not (tmp_path / SPARE_NAME).exists()


def test_a_failed_preparation_is_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def full(path: str, size: int, *, stop: object) -> bool:
        with open(path, "wb") as f:
            f.write(b"\0" * 10)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(wal, "zero_fill", full)
    with FileStorage(tmp_path, segment_size=SEGMENT) as s:
        with caplog.at_level(logging.WARNING, logger="dengine.storage"):
            s.prepare()
        assert "disk full while preallocating" in caplog.text and SPARE_NAME in caplog.text
        assert not (tmp_path / SPARE_NAME).exists()
        assert not s.needs_preparation  # off for good: no retry loop
        s.append(_entries(1, 2), HardState(term=1, commit=0))  # the write path is fine
    with FileStorage(tmp_path, segment_size=SEGMENT) as s:
        assert s.load().entries == _entries(1, 2)


def test_close_while_preparing_waits_and_removes_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saw_close = threading.Event()
    go_on = threading.Event()
    real = wal.zero_fill
    result: list[bool] = []

    def zero_fill(path: str, size: int, *, stop):  # type: ignore[no-untyped-def]
        def held_stop() -> bool:
            if stop():
                saw_close.set()
                go_on.wait(10)  # the preparer is slow to notice
                return True
            return False

        result.append(real(path, size, stop=held_stop))
        return result[-1]

    monkeypatch.setattr(wal, "zero_fill", zero_fill)
    s = FileStorage(tmp_path, segment_size=1 << 30)  # far more than is written before close
    preparer = threading.Thread(target=s.prepare)
    closer = threading.Thread(target=s.close)
    preparer.start()
    try:
        closer.start()
        assert saw_close.wait(10)
        # close must not release the directory while the preparer runs: a
        # close that did not wait would be done in microseconds.
        closer.join(0.5)
        assert closer.is_alive()
        go_on.set()
        closer.join(10)
        assert not closer.is_alive()
        assert result == [False]
        assert not (tmp_path / SPARE_NAME).exists()
    finally:
        go_on.set()
        preparer.join(10)
        closer.join(10)
    assert not preparer.is_alive()
    s.prepare()  # closed: a late call does nothing
    assert not (tmp_path / SPARE_NAME).exists()


def test_a_spare_left_by_a_crash_is_removed_on_open(tmp_path: Path) -> None:
    with FileStorage(tmp_path, segment_size=SEGMENT) as s:
        s.append(_entries(1, 1), HardState(term=1, commit=0))
    (tmp_path / SPARE_NAME).write_bytes(bytes(100))  # half-written when the process died
    with FileStorage(tmp_path, segment_size=SEGMENT) as s:
        assert not (tmp_path / SPARE_NAME).exists()
        assert s.needs_preparation
        assert s.load().entries == _entries(1, 1)

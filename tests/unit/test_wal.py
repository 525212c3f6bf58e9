"""WAL bytes: the reader against a naive parser, and recovery from damaged
segments (torn tail -> truncated and logged; anything else -> StorageCorrupted
naming the file and offset)."""

from __future__ import annotations

import logging
import os
import random
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dengine.errors import StorageCorrupted
from dengine.raft.messages import Entry, HardState
from dengine.storage import FileStorage, wal


def naive_parse(data: bytes) -> tuple[list[bytes], int]:
    """The dumb oracle: records until the first one that does not check out."""
    out, pos = [], 0
    while True:
        if len(data) - pos < 8:
            return out, pos
        length = int.from_bytes(data[pos : pos + 4], "big")
        crc = int.from_bytes(data[pos + 4 : pos + 8], "big")
        payload = data[pos + 8 : pos + 8 + length]
        if len(payload) != length or zlib.crc32(data[pos : pos + 4] + payload) != crc:
            return out, pos
        out.append(payload)
        pos += 8 + length


payloads = st.lists(st.binary(max_size=40), max_size=8)


@settings(max_examples=300, deadline=None)
@given(items=payloads, tail=st.binary(max_size=30), flips=st.lists(st.integers(min_value=0), max_size=3))
def test_reader_matches_naive_parser(items: list[bytes], tail: bytes, flips: list[int]) -> None:
    data = bytearray(b"".join(wal.record(p) for p in items) + tail)
    for f in flips:
        if data:
            data[f % len(data)] ^= 1 << (f % 8)
    expected, end = naive_parse(bytes(data))
    result = wal.scan(bytes(data))
    assert [bytes(p) for _, p in result.records] == expected
    assert result.end == end
    assert (result.problem is None) == (end == len(data))


def test_record_layout_is_length_crc_payload() -> None:
    rec = wal.record(b"hello")
    length, crc = struct.unpack(">II", rec[:8])
    assert length == 5 and rec[8:] == b"hello"
    assert crc == zlib.crc32(rec[:4] + b"hello")


@settings(max_examples=100, deadline=None)
@given(items=st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=6), cut=st.integers(min_value=1))
def test_find_valid_record_after_damage(items: list[bytes], cut: int) -> None:
    recs = [wal.record(p) for p in items]
    data = b"".join(recs)
    assert wal.find_valid_record(data, 0) == 0
    last_start = len(data) - len(recs[-1])
    # Inside the last record no other record starts (barring a 2^-32 CRC match).
    assert wal.find_valid_record(data[: last_start + cut % len(recs[-1])], last_start + 1) is None


# --------------------------------------------------------------------------
# Recovery from damaged segments
# --------------------------------------------------------------------------


def _fill(path: Path, batches: int = 12, segment_size: int = 64 * 1024 * 1024) -> list[Entry]:
    entries = []
    with FileStorage(path, segment_size=segment_size) as s:
        for i in range(1, batches + 1):
            batch = [Entry(i, 1, data=f"payload {i}".encode() * 3)]
            s.append(batch, HardState(term=1, commit=i - 1))
            entries += batch
    return entries


def _last_segment(path: Path) -> Path:
    return sorted(path.glob("wal-*.log"))[-1]


def _record_offsets(seg: Path) -> list[int]:
    return [off for off, _ in wal.scan(seg.read_bytes()).records]


def test_truncation_at_every_offset_of_the_last_record(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = tmp_path / "src"
    entries = _fill(src, batches=4)
    seg = _last_segment(src)
    data = seg.read_bytes()
    last = _record_offsets(seg)[-1]
    assert len(data) - last > 20
    for cut in range(last, len(data)):
        seg.write_bytes(data[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="dengine.storage"):
            with FileStorage(src) as s:
                state = s.load()
                assert state.entries == entries[:-1], cut
                assert state.hard_state == HardState(term=1, commit=2)
        # A cut at a record boundary is a clean file, not a torn one; so is a
        # cut that left only zero bytes (the first bytes of a big-endian
        # length): they read as the unused tail of a preallocated segment.
        zeros_only = not data[last:cut].strip(b"\0")
        assert ("torn write" in caplog.text) == (not zeros_only), cut
        assert os.path.getsize(seg) == (cut if zeros_only else last)
    seg.write_bytes(data)


def test_repaired_log_accepts_new_appends(tmp_path: Path) -> None:
    entries = _fill(tmp_path)
    seg = _last_segment(tmp_path)
    with open(seg, "r+b") as f:
        f.truncate(os.path.getsize(seg) - 3)
    with FileStorage(tmp_path) as s:
        assert s.load().entries == entries[:-1]
        s.append([Entry(12, 2, data=b"again")])
    with FileStorage(tmp_path) as s:
        assert s.load().entries == entries[:-1] + [Entry(12, 2, data=b"again")]


def test_garbage_after_the_tail_is_dropped(tmp_path: Path) -> None:
    entries = _fill(tmp_path)
    seg = _last_segment(tmp_path)
    rng = random.Random(7)
    for garbage in (bytes(rng.randrange(256) for _ in range(1000)), b"\xff" * 3, b"\x01" + bytes(4096)):
        size = os.path.getsize(seg)
        with open(seg, "ab") as f:
            f.write(garbage)
        with FileStorage(tmp_path) as s:
            assert s.load().entries == entries
        assert os.path.getsize(seg) == size


def test_zero_bytes_after_the_tail_are_free_space(tmp_path: Path) -> None:
    # What a preallocated segment looks like: records, then zeros. They are
    # kept, and the next append overwrites them from the end of the records.
    entries = _fill(tmp_path, batches=3)
    seg = _last_segment(tmp_path)
    size = os.path.getsize(seg)
    with open(seg, "ab") as f:
        f.write(bytes(4096))
    with FileStorage(tmp_path) as s:
        assert s.load().entries == entries
        s.append([Entry(4, 1, data=b"four")])
    assert os.path.getsize(seg) == size + 4096
    assert _record_offsets(seg)[-1] == size
    with FileStorage(tmp_path) as s:
        assert s.load().entries == [*entries, Entry(4, 1, data=b"four")]


@pytest.mark.parametrize("seed", range(30))
def test_flipped_bit_in_a_random_record(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    entries = _fill(tmp_path, batches=12, segment_size=150)
    segs = sorted(tmp_path.glob("wal-*.log"))
    assert len(segs) >= 3
    seg = rng.choice(segs)
    offsets = _record_offsets(seg)
    k = rng.randrange(len(offsets))
    start = offsets[k]
    end = offsets[k + 1] if k + 1 < len(offsets) else os.path.getsize(seg)
    data = bytearray(seg.read_bytes())
    pos = rng.randrange(start, end)
    data[pos] ^= 1 << rng.randrange(8)
    seg.write_bytes(bytes(data))
    is_tail = seg == segs[-1] and k == len(offsets) - 1
    if is_tail:
        with FileStorage(tmp_path, segment_size=150) as s:
            got = s.load().entries
        # Only the last record is lost; it was a header-only segment start or a batch.
        assert got == entries[: len(got)] and len(got) >= len(entries) - 1
    else:
        with pytest.raises(StorageCorrupted) as info:
            FileStorage(tmp_path, segment_size=150)
        assert info.value.path == str(seg)
        assert info.value.offset == start
        assert str(seg) in str(info.value) and f"byte offset {start}" in str(info.value)


def test_truncated_non_last_segment_is_corruption(tmp_path: Path) -> None:
    _fill(tmp_path, segment_size=150)
    first = sorted(tmp_path.glob("wal-*.log"))[0]
    with open(first, "r+b") as f:
        f.truncate(os.path.getsize(first) - 1)
    with pytest.raises(StorageCorrupted, match="not the last one"):
        FileStorage(tmp_path)


def test_missing_middle_segment_is_corruption(tmp_path: Path) -> None:
    _fill(tmp_path, segment_size=150)
    segs = sorted(tmp_path.glob("wal-*.log"))
    segs[1].unlink()
    with pytest.raises(StorageCorrupted, match="is missing"):
        FileStorage(tmp_path)


def test_valid_checksum_but_bad_payload_is_corruption(tmp_path: Path) -> None:
    _fill(tmp_path, batches=2)
    seg = _last_segment(tmp_path)
    with open(seg, "ab") as f:
        f.write(wal.record(b"\x92\x63\x00"))  # msgpack [99, 0]: no such record kind
    with pytest.raises(StorageCorrupted, match="undecodable payload"):
        FileStorage(tmp_path)


def test_empty_last_segment_is_reused(tmp_path: Path) -> None:
    entries = _fill(tmp_path, segment_size=150)
    segs = sorted(tmp_path.glob("wal-*.log"))
    seq = wal.parse_segment_name(segs[-1].name)
    assert seq is not None
    empty = tmp_path / wal.segment_name(seq + 1)
    empty.write_bytes(b"")  # crash right after creating the next segment
    with FileStorage(tmp_path, segment_size=150) as s:
        assert s.load().entries == entries
        s.append([Entry(13, 1)])
    with FileStorage(tmp_path, segment_size=150) as s:
        assert s.load().entries == entries + [Entry(13, 1)]


def test_segments_roll_over_and_compaction_purges_them(tmp_path: Path) -> None:
    with FileStorage(tmp_path, segment_size=1000) as s:
        for i in range(1, 201):
            s.append([Entry(i, 1, data=bytes(50))])
        before = s.segment_paths
        assert len(before) > 10
        assert all(os.path.getsize(p) < 1000 + 200 for p in before)
        from dengine.raft.messages import ConfState, Snapshot, SnapshotMeta

        s.save_snapshot(Snapshot(SnapshotMeta(150, 1, ConfState({1}))))
        s.compact(150)
        after = s.segment_paths
        assert 0 < len(after) < len(before) / 3
        assert after == before[-len(after) :]
        assert sorted(str(p) for p in tmp_path.glob("wal-*.log")) == after
    with FileStorage(tmp_path, segment_size=1000) as s:
        assert [e.index for e in s.load().entries] == list(range(151, 201))


def test_one_write_and_one_sync_per_append(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_writev, real_sync = os.writev, os.fdatasync

    def writev(fd: int, bufs: list[bytes]) -> int:
        calls.append("write")
        return real_writev(fd, bufs)

    def fdatasync(fd: int) -> None:
        calls.append("sync")
        real_sync(fd)

    with FileStorage(tmp_path) as s:
        monkeypatch.setattr(os, "writev", writev)
        monkeypatch.setattr(os, "fdatasync", fdatasync)
        s.append([Entry(i, 1, data=bytes(256)) for i in range(1, 4097)], HardState(term=1))
        assert calls == ["write", "sync"]


@pytest.mark.parametrize("seed", range(10))
def test_flipped_bit_in_the_last_record_is_a_torn_tail(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    entries = _fill(tmp_path, batches=6)
    seg = _last_segment(tmp_path)
    start = _record_offsets(seg)[-1]
    data = bytearray(seg.read_bytes())
    data[rng.randrange(start, len(data))] ^= 1 << rng.randrange(8)
    seg.write_bytes(bytes(data))
    with FileStorage(tmp_path) as s:
        assert s.load().entries == entries[:-1]
    assert os.path.getsize(seg) == start


@pytest.mark.parametrize("seed", range(10))
def test_flipped_bit_before_the_last_record_of_the_last_segment(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    _fill(tmp_path, batches=6)
    seg = _last_segment(tmp_path)
    offsets = _record_offsets(seg)
    k = rng.randrange(len(offsets) - 1)
    data = bytearray(seg.read_bytes())
    data[rng.randrange(offsets[k], offsets[k + 1])] ^= 1 << rng.randrange(8)
    seg.write_bytes(bytes(data))
    with pytest.raises(StorageCorrupted, match="followed by a valid record") as info:
        FileStorage(tmp_path)
    assert (info.value.path, info.value.offset) == (str(seg), offsets[k])

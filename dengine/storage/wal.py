"""The write-ahead log: segment files of checksummed records.

Record layout (all integers big-endian, like the wire framing)::

    offset 0  u32  length   of the payload, in bytes
    offset 4  u32  crc      zlib.crc32 of the 4 length bytes + the payload
    offset 8  ...  payload  msgpack array [kind, ...] (see below)

The CRC covers the length so a flipped length bit is caught as well. Payload
kinds:

    [1, format, seq, hard_state]   HEADER: first record of every segment; seq
                                   must match the file name; hard_state is
                                   the one in force when the segment started,
                                   so purging older segments never loses it.
    [2, hard_state|nil, [entry..]] BATCH: one Storage.append. Entries whose
                                   first index <= the last index replace the
                                   suffix from there on (Raft truncation).
    [3, from_index]                TRUNCATE: drop entries >= from_index.
    [4, index, term]               RESET: a snapshot at (index, term) was saved
                                   and the log before this record discarded.

Segment files are named ``wal-<seq, 16 digits>.log``; seq starts at 1 and
increases by one per roll-over. A batch is never split: a segment is closed
once it has reached ``segment_size`` bytes, so it may exceed it by one batch.

A segment may be *preallocated*: created as a file of ``segment_size`` zero
bytes (written and fsynced ahead of time), which records then overwrite from
offset 0. Overwriting blocks that are already allocated and written lets
``fdatasync`` flush the data alone, without a journal commit for the file's
new size (about twice the synced bandwidth on ext4). In the LAST segment the
records therefore end either at the end of the file or where only zero bytes
follow; no valid record is all zeros (its length is non-zero, or it is 0
and the CRC is ``crc32(b"\0" * 4) != 0``), so the zero tail cannot be
mistaken for data.

This module is pure parsing and encoding on bytes plus a tiny file writer; the
recovery policy (torn tail vs corruption) lives in dengine.storage.file.
"""

from __future__ import annotations

import os
import re
import struct
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from dengine import codec
from dengine.errors import MalformedMessage
from dengine.raft.messages import Entry, HardState

from .osutil import SYNC_STEP, fsync_file, write_all

HEADER = struct.Struct(">II")
HEADER_SIZE = HEADER.size
FORMAT_VERSION = 1

KIND_HEADER = 1
KIND_BATCH = 2
KIND_TRUNCATE = 3
KIND_RESET = 4

_SEGMENT_RE = re.compile(r"^wal-(\d{16})\.log$")


def segment_name(seq: int) -> str:
    return f"wal-{seq:016d}.log"


def parse_segment_name(name: str) -> int | None:
    m = _SEGMENT_RE.match(name)
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------
# Framing
# --------------------------------------------------------------------------


def frame(payload: bytes | bytearray | memoryview) -> bytes:
    """The 8-byte record header for ``payload``."""
    length = len(payload).to_bytes(4, "big")
    return length + zlib.crc32(payload, zlib.crc32(length)).to_bytes(4, "big")


def record(payload: bytes) -> bytes:
    return frame(payload) + payload


@attrs.frozen
class ScanResult:
    records: list[tuple[int, memoryview]]
    """(offset of the record header, payload) of each valid record in order."""
    end: int
    """Offset just after the last valid record = where a bad one starts."""
    problem: str | None
    """Why scanning stopped before the end of the buffer (None: clean end)."""


def _check_at(buf: memoryview, offset: int) -> tuple[int, str | None]:
    """(payload length, problem) of the record starting at ``offset``."""
    remaining = len(buf) - offset
    if remaining < HEADER_SIZE:
        return 0, f"incomplete record header ({remaining} of {HEADER_SIZE} bytes)"
    length, crc = HEADER.unpack_from(buf, offset)
    if length > remaining - HEADER_SIZE:
        return length, f"record length {length} runs past the end of the file ({remaining - HEADER_SIZE} bytes left)"
    start = offset + HEADER_SIZE
    actual = zlib.crc32(buf[start : start + length], zlib.crc32(buf[offset : offset + 4]))
    if actual != crc:
        return length, f"checksum mismatch (stored {crc:#010x}, computed {actual:#010x})"
    return length, None


def nonzero_end(data: bytes, chunk: int = 1 << 16) -> int:
    """The offset just after the last non-zero byte of ``data`` (0 if all
    zero). Cost is proportional to the zero tail, at C speed."""
    end = len(data)
    while end > 0:
        start = max(0, end - chunk)
        kept = len(data[start:end].rstrip(b"\0"))
        if kept:
            return start + kept
        end = start
    return 0


def scan(data: bytes, *, zero_tail: bool = False) -> ScanResult:
    """Split ``data`` into records, stopping at the first invalid one.

    ``zero_tail``: the segment may be preallocated; the records end cleanly
    where nothing but zero bytes follows."""
    buf = memoryview(data)
    records: list[tuple[int, memoryview]] = []
    offset = 0
    limit = nonzero_end(data) if zero_tail else len(buf)
    while offset < limit:
        length, problem = _check_at(buf, offset)
        if problem is not None:
            return ScanResult(records, offset, problem)
        start = offset + HEADER_SIZE
        records.append((offset, buf[start : start + length]))
        offset = start + length
    return ScanResult(records, offset, None)


def find_valid_record(data: bytes, start: int) -> int | None:
    """The first offset >= ``start`` where a complete record with a correct
    CRC begins, or None. Used to tell a torn tail (nothing valid after the
    bad bytes) from corruption in the middle (valid records follow). A false
    match needs a 32-bit CRC to agree by chance. Only offsets before the last
    non-zero byte are tried: no valid record is all zeros (a non-zero length,
    or length 0 with CRC ``crc32(b"\0" * 4) != 0``), so none starts in a
    zero tail."""
    buf = memoryview(data)
    size = len(buf)
    unpack = HEADER.unpack_from
    last_start = min(size - HEADER_SIZE, nonzero_end(data) - 1)
    for offset in range(start, last_start + 1):
        length, _ = unpack(buf, offset)
        # Cheap reject first: most random lengths run past the end.
        if length <= size - offset - HEADER_SIZE and _check_at(buf, offset)[1] is None:
            return offset
    return None


# --------------------------------------------------------------------------
# Payloads
# --------------------------------------------------------------------------


def encode_header(seq: int, hard_state: HardState) -> bytes:
    return codec.pack([KIND_HEADER, FORMAT_VERSION, seq, codec.hard_state_to_obj(hard_state)])


def encode_batch(entries: Sequence[Entry], hard_state: HardState | None) -> bytes:
    # One msgpack call for the whole batch: per-entry cost is one small list.
    hs = None if hard_state is None else codec.hard_state_to_obj(hard_state)
    return codec.pack([KIND_BATCH, hs, codec.entries_to_obj(entries)])


def encode_truncate(from_index: int) -> bytes:
    return codec.pack([KIND_TRUNCATE, from_index])


def encode_reset(index: int, term: int) -> bytes:
    return codec.pack([KIND_RESET, index, term])


@attrs.frozen
class Header:
    seq: int
    hard_state: HardState


@attrs.frozen
class Batch:
    entries: list[Entry]
    hard_state: HardState | None


@attrs.frozen
class Truncate:
    from_index: int


@attrs.frozen
class Reset:
    index: int
    term: int


Record = Header | Batch | Truncate | Reset


def decode_payload(payload: bytes | memoryview) -> Record:
    """Decode a record payload; raises MalformedMessage if it is not one."""
    obj: Any = codec.unpack(payload, what="WAL record")
    if type(obj) is not list or not obj or type(obj[0]) is not int:
        raise MalformedMessage("WAL record must be an array [kind, ...]")
    kind, rest = obj[0], obj[1:]
    if kind == KIND_BATCH and len(rest) == 2:
        hs = None if rest[0] is None else codec.hard_state_from_obj(rest[0])
        return Batch(codec.entries_from_obj(rest[1]), hs)
    if kind == KIND_HEADER and len(rest) == 3:
        if rest[0] != FORMAT_VERSION:
            raise MalformedMessage(f"unsupported WAL format version {rest[0]!r}")
        return Header(codec.uint_from_obj(rest[1], "seq"), codec.hard_state_from_obj(rest[2]))
    if kind == KIND_TRUNCATE and len(rest) == 1:
        return Truncate(codec.uint_from_obj(rest[0], "from_index"))
    if kind == KIND_RESET and len(rest) == 2:
        return Reset(codec.uint_from_obj(rest[0], "index"), codec.uint_from_obj(rest[1], "term"))
    raise MalformedMessage(f"unknown WAL record kind {kind} with {len(rest)} fields")


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


class SegmentWriter:
    """Appends framed records to one segment file. Blocking; no policy.

    ``end``: where the records end (the next one is written there); None
    means the end of the file. Bytes after ``end`` must be zero (a
    preallocated segment)."""

    def __init__(self, path: str, seq: int, *, create: bool, end: int | None = None) -> None:
        self.path = path
        self.seq = seq
        flags = os.O_WRONLY | os.O_CLOEXEC | (os.O_CREAT | os.O_EXCL if create else 0)
        self.fd = os.open(path, flags, 0o644)
        try:
            self.capacity = os.fstat(self.fd).st_size
            self.size = os.lseek(self.fd, self.capacity if end is None else end, os.SEEK_SET)
        except BaseException:
            os.close(self.fd)
            raise

    @property
    def preallocated(self) -> bool:
        """Whether the next write lands in zero-filled, allocated space."""
        return self.size < self.capacity

    def write(self, payloads: Sequence[bytes], *, sync: bool = True) -> float:
        """Write the framed records with one writev, then (``sync``) make
        them durable; returns the seconds the fsync took (0.0 without one),
        for the slow-fsync warning and the fsync histogram."""
        buffers: list[bytes] = []
        for payload in payloads:
            buffers.append(frame(payload))
            buffers.append(payload)
        write_all(self.fd, buffers)
        self.size += sum(len(b) for b in buffers)
        if not sync:
            return 0.0
        started = time.perf_counter()
        fsync_file(self.fd)
        return time.perf_counter() - started

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


def zero_fill(path: str, size: int, *, stop: Callable[[], bool]) -> bool:
    """Create ``path`` as ``size`` zero bytes, written and fsynced (a
    preallocated segment in waiting). Returns False, with the file removed,
    if ``stop()`` turned true on the way (checked every MiB)."""
    chunk = memoryview(bytes(min(size, 1 << 20)))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        written = 0
        while written < size:
            if stop():
                break
            n = os.write(fd, chunk[: size - written])
            written += n
            if written % SYNC_STEP < n and written < size:
                # Synced a step at a time, as snapshot files are (SYNC_STEP).
                fsync_file(fd)
        else:
            fsync_file(fd)
            return True
    finally:
        os.close(fd)
    os.unlink(path)
    return False

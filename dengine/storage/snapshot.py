"""Snapshot files: self-checking bytes, written atomically.

Layout of a snapshot file (and of the bytes a peer may send)::

    offset 0   8 bytes  magic b"DENGSNAP"
    offset 8   u32      length of the payload (big-endian)
    offset 12  u32      zlib.crc32 of the 4 length bytes + the payload
    offset 16  ...      payload: dengine.codec.encode(Snapshot)

Files are named ``snap-<index, 20 digits>.snap``. Writing goes to
``<name>.tmp``, is fsynced, renamed into place, and the directory fsynced: a
crash leaves either the old set of snapshots or the new one, plus maybe a
``.tmp`` that the next open deletes.
"""

from __future__ import annotations

import os
import re
import zlib
from typing import BinaryIO

import msgpack

from dengine import codec
from dengine.errors import MalformedMessage, StorageCorrupted
from dengine.raft.messages import Snapshot, SnapshotMeta

from .osutil import SYNC_STEP, fsync_dir, fsync_file, write_all
from .wal import HEADER, HEADER_SIZE, frame

MAGIC = b"DENGSNAP"
_PREFIX = len(MAGIC) + HEADER_SIZE
_SNAP_RE = re.compile(r"^snap-(\d{20})\.snap$")


def snapshot_name(index: int) -> str:
    return f"snap-{index:020d}.snap"


def parse_snapshot_name(name: str) -> int | None:
    m = _SNAP_RE.match(name)
    return int(m.group(1)) if m else None


def _bin_header(n: int) -> bytes:
    if n < 0x100:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 0x10000:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def snapshot_pieces(snapshot: Snapshot) -> list[bytes]:
    """What :func:`snapshot_to_bytes` returns, as a small head and the
    snapshot's own data (not copied): a snapshot of hundreds of megabytes is
    written without being copied into one buffer (and without holding the
    GIL for the copies)."""
    empty = codec.encode(Snapshot(meta=snapshot.meta))  # ends with the empty data: bin8, length 0
    assert empty.endswith(b"\xc4\x00")
    data = snapshot.data
    head = empty[:-2] + _bin_header(len(data))
    length = (len(head) + len(data)).to_bytes(4, "big")
    crc = zlib.crc32(data, zlib.crc32(head, zlib.crc32(length)))  # zlib lets go of the GIL
    return [MAGIC + length + crc.to_bytes(4, "big") + head, data]


def snapshot_to_bytes(snapshot: Snapshot) -> bytes:
    """The checksummed encoding of ``snapshot`` (what a snapshot file holds):
    ``MAGIC``, a WAL-style frame header, and ``codec.encode(snapshot)``."""
    return b"".join(snapshot_pieces(snapshot))


def snapshot_from_bytes(data: bytes | memoryview, *, source: str = "snapshot bytes") -> Snapshot:
    """Decode and verify bytes from :func:`snapshot_to_bytes` -- read from a
    file or received from a peer. Raises StorageCorrupted (naming ``source``
    and the byte offset) on a bad magic, length, checksum or payload."""
    buf = memoryview(data)
    if bytes(buf[: len(MAGIC)]) != MAGIC:
        raise StorageCorrupted(f"{source}: not a dengine snapshot (bad magic)", path=source, offset=0)
    if len(buf) < _PREFIX:
        raise StorageCorrupted(f"{source}: truncated header ({len(buf)} bytes)", path=source, offset=len(MAGIC))
    length, crc = HEADER.unpack_from(buf, len(MAGIC))
    if length != len(buf) - _PREFIX:
        raise StorageCorrupted(
            f"{source}: length field says {length} payload bytes, found {len(buf) - _PREFIX}",
            path=source,
            offset=len(MAGIC),
        )
    payload = buf[_PREFIX:]
    if frame(payload)[4:] != crc.to_bytes(4, "big"):
        raise StorageCorrupted(f"{source}: checksum mismatch", path=source, offset=_PREFIX)
    try:
        return codec.decode(payload, Snapshot)
    except MalformedMessage as exc:
        raise StorageCorrupted(f"{source}: bad payload: {exc}", path=source, offset=_PREFIX) from exc


def verify_snapshot_bytes(data: bytes | memoryview, *, source: str = "snapshot bytes") -> SnapshotMeta:
    """Check snapshot bytes (e.g. received from a peer) without keeping the
    decoded data; returns the meta. Raises StorageCorrupted on any mismatch."""
    return snapshot_from_bytes(data, source=source).meta


def write_snapshot_file(directory: str, snapshot: Snapshot) -> str:
    """Atomically and durably write ``snapshot`` into ``directory``; returns
    the final path."""
    path = os.path.join(directory, snapshot_name(snapshot.meta.index))
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        head, data = snapshot_pieces(snapshot)
        first = memoryview(data)[:SYNC_STEP]
        pieces: list[bytes | memoryview] = [head, first]
        write_all(fd, pieces)
        for start in range(len(first), len(data), SYNC_STEP):
            # Flushed a step at a time: one fsync of hundreds of megabytes
            # holds the disk for the WAL's fsyncs of the same node (a write
            # waited up to 0.45 s behind a 275 MB snapshot, 0.17 s in steps).
            fsync_file(fd)
            write_all(fd, [memoryview(data)[start : start + SYNC_STEP]])
        fsync_file(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(directory)
    return path


#: How much of a snapshot file is read first to find where its data begins
#: (the meta before it is small: index, term, the members' ids).
_HEAD_PEEK = 1 << 16


def read_snapshot_from(file: BinaryIO, *, source: str) -> Snapshot:
    """What ``snapshot_from_bytes(file.read())`` returns, for a seekable
    ``file`` at its start, with the data field read from the file into its
    own bytes object: msgpack would copy it out of the file's bytes while
    holding the GIL (~140 ms for 275 MB, during which the event loop cannot
    run); a read lets go of the GIL. Anything unexpected (a damaged or
    truncated file, another layout) goes through ``snapshot_from_bytes``,
    which names what is wrong."""
    peek = file.read(_PREFIX + _HEAD_PEEK)
    found = _data_field(peek)
    if found is None:
        return snapshot_from_bytes(peek + file.read(), source=source)
    head_end, n = found
    file.seek(head_end)
    data = file.read(n)
    if len(data) != n or file.read(1):
        file.seek(0)
        return snapshot_from_bytes(file.read(), source=source)
    # The checksum covers the length field and the payload (wal.frame).
    crc = zlib.crc32(peek[_PREFIX:head_end], zlib.crc32(peek[len(MAGIC) : len(MAGIC) + 4]))
    if zlib.crc32(data, crc) != HEADER.unpack_from(peek, len(MAGIC))[1]:  # zlib lets go of the GIL
        raise StorageCorrupted(f"{source}: checksum mismatch", path=source, offset=_PREFIX)
    try:
        # The payload with an empty data field: the meta (see snapshot_pieces).
        meta = codec.decode(peek[_PREFIX : head_end - len(_bin_header(n))] + b"\xc4\x00", Snapshot).meta
    except MalformedMessage as exc:
        raise StorageCorrupted(f"{source}: bad payload: {exc}", path=source, offset=_PREFIX) from exc
    return Snapshot(meta=meta, data=data)


def _data_field(peek: bytes) -> tuple[int, int] | None:
    """Where the data of a snapshot file starts (its offset in the file)
    and its length, read from the first bytes of the file; None if they do
    not look like what snapshot_pieces writes."""
    if peek[: len(MAGIC)] != MAGIC or len(peek) < _PREFIX:
        return None
    length = HEADER.unpack_from(peek, len(MAGIC))[0]
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(peek[_PREFIX:])
    try:
        if unpacker.read_array_header() != 4:  # [version, tag, meta, data]
            return None
        for _ in range(3):
            unpacker.skip()
    except (msgpack.OutOfData, ValueError, msgpack.UnpackException):
        return None
    at = _PREFIX + unpacker.tell()
    widths = {0xC4: 1, 0xC5: 2, 0xC6: 4}
    if at >= len(peek) or peek[at] not in widths:
        return None
    width = widths[peek[at]]
    n = int.from_bytes(peek[at + 1 : at + 1 + width], "big")
    head_end = at + 1 + width
    if head_end > len(peek) or head_end - _PREFIX + n != length:
        return None
    return head_end, n


def read_snapshot_file(path: str) -> Snapshot:
    with open(path, "rb") as f:
        snap = read_snapshot_from(f, source=path)
    expected = parse_snapshot_name(os.path.basename(path))
    if expected is not None and expected != snap.meta.index:
        raise StorageCorrupted(
            f"{path}: file name says index {expected}, content says {snap.meta.index}", path=path, offset=_PREFIX
        )
    return snap

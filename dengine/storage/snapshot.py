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

from dengine import codec
from dengine.errors import MalformedMessage, StorageCorrupted
from dengine.raft.messages import Snapshot, SnapshotMeta

from .osutil import fsync_dir, fsync_file, write_all
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
        write_all(fd, snapshot_pieces(snapshot))
        fsync_file(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(directory)
    return path


def read_snapshot_file(path: str) -> Snapshot:
    with open(path, "rb") as f:
        data = f.read()
    snap = snapshot_from_bytes(data, source=path)
    expected = parse_snapshot_name(os.path.basename(path))
    if expected is not None and expected != snap.meta.index:
        raise StorageCorrupted(
            f"{path}: file name says index {expected}, content says {snap.meta.index}", path=path, offset=_PREFIX
        )
    return snap

"""Snapshots on a byte stream: split into frames, joined back (sans-IO).

A snapshot of a large state machine is far bigger than a frame (16 MiB by
default; a million keys make about 280 MB). The TCP transport therefore
never sends an InstallSnapshot as one frame. Rules:

* :func:`snapshot_parts` turns an InstallSnapshot into encoded
  :class:`~dengine.codec.SnapshotPart` frames, each within the connection's
  frame size (at most :data:`PART_SIZE` bytes of data), in order. It is lazy:
  one part is encoded at a time, so the sender can write a part, send any
  small message queued meanwhile (heartbeats keep flowing), and go on.
* :class:`SnapshotJoiner` is the receiving end of one connection. The part
  at offset 0 starts a snapshot (dropping any unfinished one: the sender
  gave it up); every later part must continue exactly where the previous
  one ended, for the same snapshot. When ``size`` bytes are in, it returns
  the whole InstallSnapshot. Anything else -- a gap, a part of another
  snapshot, data past the announced size, a size over ``max_size`` -- is a
  ProtocolError naming what was wrong, and the connection is closed.
* The bytes held are bounded by ``max_size`` (checked on the announced size
  before anything is kept) and grow only with data actually received.
"""

from __future__ import annotations

from collections.abc import Iterator

from dengine.codec import SnapshotPart, encode
from dengine.errors import InvalidArgument, ProtocolError
from dengine.raft.messages import InstallSnapshot, Snapshot

__all__ = ["DEFAULT_MAX_SNAPSHOT_SIZE", "PART_SIZE", "SnapshotJoiner", "part_capacity", "snapshot_parts"]

#: Data bytes per part when the frame size allows it. Large enough that a
#: part costs little to frame, small enough that a heartbeat queued behind
#: one waits about a millisecond on a fast link.
PART_SIZE = 1024 * 1024
#: The largest snapshot a receiver accepts unless configured otherwise.
DEFAULT_MAX_SNAPSHOT_SIZE = 8 * 1024**3
# msgpack's bin header is at most 5 bytes; a little slack beyond it.
_BIN_HEADER = 8


def part_capacity(msg: InstallSnapshot, max_frame_size: int) -> int:
    """How many data bytes fit in one part of ``msg`` under ``max_frame_size``
    (0 if not even an empty part fits)."""
    size = len(msg.snapshot.data)
    empty = encode(_part(msg, size, size, b""))  # the largest offset: the longest header
    return max(0, min(PART_SIZE, max_frame_size - len(empty) - _BIN_HEADER))


def _part(msg: InstallSnapshot, size: int, offset: int, data: bytes) -> SnapshotPart:
    return SnapshotPart(frm=msg.frm, to=msg.to, term=msg.term, meta=msg.snapshot.meta,
                        size=size, offset=offset, data=data)


def snapshot_parts(msg: InstallSnapshot, max_frame_size: int) -> Iterator[bytes]:
    """The encoded frames of ``msg``, in order (at least one: an empty
    snapshot is one empty part). Raises InvalidArgument if the frame size
    cannot hold even an empty part."""
    capacity = part_capacity(msg, max_frame_size)
    if capacity == 0:
        raise InvalidArgument(f"a frame size of {max_frame_size} bytes cannot hold a part of a snapshot")
    return _parts(msg, capacity)


def _parts(msg: InstallSnapshot, capacity: int) -> Iterator[bytes]:
    data = msg.snapshot.data
    size = len(data)
    offset = 0
    while True:
        chunk = data[offset : offset + capacity]
        yield encode(_part(msg, size, offset, chunk))
        offset += len(chunk)
        if offset >= size:
            return


class SnapshotJoiner:
    """Joins the parts arriving on one connection from ``peer``."""

    __slots__ = ("_buf", "_first", "max_size", "peer")

    def __init__(self, peer: int, max_size: int = DEFAULT_MAX_SNAPSHOT_SIZE) -> None:
        self.peer = peer
        self.max_size = max_size
        self._first: SnapshotPart | None = None
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held of an unfinished snapshot."""
        return len(self._buf)

    def feed(self, part: SnapshotPart) -> InstallSnapshot | None:
        if part.offset == 0:
            if part.size > self.max_size:
                raise ProtocolError(
                    f"node {self.peer} sent a snapshot of {part.size} bytes, over the limit of "
                    f"{self.max_size} bytes (transport.max_snapshot_size)"
                )
            self._first = part
            self._buf = bytearray()
        else:
            first = self._first
            if first is None:
                raise ProtocolError(f"node {self.peer} sent a snapshot part at offset {part.offset} "
                                    "without the part at offset 0")
            if (part.meta, part.size, part.term) != (first.meta, first.size, first.term):
                raise ProtocolError(
                    f"node {self.peer} sent a part of the snapshot at index {part.meta.index} in the middle "
                    f"of the snapshot at index {first.meta.index}"
                )
            if part.offset != len(self._buf):
                raise ProtocolError(f"node {self.peer} sent a snapshot part at offset {part.offset}, "
                                    f"expected offset {len(self._buf)}")
        if part.offset + len(part.data) > part.size:
            raise ProtocolError(f"node {self.peer} sent snapshot data past its announced size of {part.size} bytes")
        if part.data:
            self._buf += part.data
        if len(self._buf) < part.size:
            if not part.data:
                raise ProtocolError(f"node {self.peer} sent an empty part of an unfinished snapshot")
            return None
        data = bytes(self._buf)
        self._buf = bytearray()
        self._first = None
        return InstallSnapshot(frm=part.frm, to=part.to, term=part.term,
                               snapshot=Snapshot(meta=part.meta, data=data))

"""Length-prefixed frames: ``u32 big-endian length + body``.

Rules of the format:

* A frame is a 4-byte unsigned big-endian length ``n`` followed by exactly
  ``n`` bytes of body (a msgpack value; this module never looks inside).
* Every connection has a maximum frame size. A header announcing a larger
  body is a protocol error *at the header*: the decoder raises
  :class:`~dengine.errors.FrameTooLarge` before buffering a single byte of
  that body, so a hostile peer cannot make us allocate 4 GiB.
* After any error the decoder is dead: every later ``feed`` raises the same
  error. The connection must be closed; there is no resynchronising a byte
  stream whose framing has been lost.
* A stream that ends in the middle of a frame is malformed
  (:meth:`FrameDecoder.close` / :func:`receive_frames` raise
  :class:`~dengine.errors.MalformedMessage`).

:class:`FrameDecoder` is sans-IO (bytes in, bodies out). :func:`send_frames`
and :func:`receive_frames` are the trio helpers: a batch of frames goes out
in ONE ``send_all``, and that write is shielded from cancellation so a frame
is never half written on a connection that stays open.
"""

from __future__ import annotations

import math
import struct
from collections.abc import AsyncIterator, Iterable

import trio

from dengine.errors import FrameTooLarge, InvalidArgument, MalformedMessage, ProtocolError, Timeout

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "HEADER_SIZE",
    "MAX_FRAME_SIZE_LIMIT",
    "FrameDecoder",
    "encode_frame",
    "encode_frames",
    "receive_frame",
    "receive_frames",
    "send_frames",
]

_HEADER = struct.Struct(">I")
HEADER_SIZE = _HEADER.size
#: The largest body a u32 header can announce.
MAX_FRAME_SIZE_LIMIT = 2**32 - 1
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024
# How much one receive_some asks for.
_RECEIVE_SIZE = 256 * 1024


def _check_max(max_frame_size: int) -> int:
    if type(max_frame_size) is not int or not 0 < max_frame_size <= MAX_FRAME_SIZE_LIMIT:
        raise InvalidArgument(
            f"max_frame_size must be an integer between 1 and {MAX_FRAME_SIZE_LIMIT}, got {max_frame_size!r}"
        )
    return max_frame_size


def _too_large(size: int, limit: int) -> FrameTooLarge:
    return FrameTooLarge(f"frame of {size} bytes exceeds the maximum frame size of {limit} bytes")


def encode_frame(body: bytes, *, max_frame_size: int = MAX_FRAME_SIZE_LIMIT) -> bytes:
    """Header + body. Raises FrameTooLarge if ``body`` is over ``max_frame_size``
    (the receiver would refuse it and close the connection)."""
    if len(body) > max_frame_size:
        raise _too_large(len(body), max_frame_size)
    return _HEADER.pack(len(body)) + body


def encode_frames(bodies: Iterable[bytes], *, max_frame_size: int = MAX_FRAME_SIZE_LIMIT) -> bytes:
    """Many frames as one buffer (for one ``send_all``)."""
    parts: list[bytes] = []
    pack = _HEADER.pack
    for body in bodies:
        if len(body) > max_frame_size:
            raise _too_large(len(body), max_frame_size)
        parts.append(pack(len(body)))
        parts.append(body)
    return b"".join(parts)


class FrameDecoder:
    """Sans-IO frame decoder: :meth:`feed` bytes as they arrive, get back
    the bodies of the frames completed so far."""

    __slots__ = ("_buf", "_error", "max_frame_size")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        #: May be lowered for a while (the handshake reads its first frame
        #: under a small limit, before the peer is known).
        self.max_frame_size = _check_max(max_frame_size)
        self._buf = bytearray()
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for frames not yet complete (or not yet returned)."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview, *, limit: int | None = None) -> list[bytes]:
        """Add ``data``; return the bodies of the complete frames, in order.

        ``limit`` returns at most that many bodies and keeps the rest
        buffered (``feed(b"")`` returns them later): the handshake takes its
        one frame and leaves whatever the peer pipelined behind it.
        Raises FrameTooLarge as soon as a header over the limit is seen.
        """
        if self._error is not None:
            raise self._error
        buf = self._buf
        if data:
            buf += data
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        limit_ = math.inf if limit is None else limit
        max_size = self.max_frame_size
        unpack_from = _HEADER.unpack_from
        while len(out) < limit_ and end - pos >= HEADER_SIZE:
            (size,) = unpack_from(buf, pos)
            if size > max_size:
                # The frames completed before it go too: the connection is
                # about to be closed, and nothing after a bad header means
                # anything.
                self._error = _too_large(size, max_size)
                buf.clear()
                raise self._error
            start = pos + HEADER_SIZE
            if end - start < size:
                break
            out.append(bytes(buf[start : start + size]))
            pos = start + size
        if pos:
            del buf[:pos]
        return out

    def close(self) -> None:
        """The stream ended: raise MalformedMessage if it ended mid-frame."""
        if self._error is not None:
            raise self._error
        if self._buf:
            have = len(self._buf)
            if have < HEADER_SIZE:
                detail = f"{have} of {HEADER_SIZE} header bytes"
            else:
                (size,) = _HEADER.unpack_from(self._buf, 0)
                detail = f"{have - HEADER_SIZE} of {size} body bytes"
            self._error = MalformedMessage(f"stream ended in the middle of a frame ({detail})")
            self._buf.clear()
            raise self._error


# --------------------------------------------------------------------------
# trio helpers
# --------------------------------------------------------------------------


async def send_frames(
    stream: trio.abc.SendStream,
    bodies: Iterable[bytes],
    *,
    max_frame_size: int = MAX_FRAME_SIZE_LIMIT,
    write_timeout: float = math.inf,
) -> int:
    """Write ``bodies`` as frames with ONE ``send_all``; return the bytes written.

    The write is shielded from cancellation: a cancelled caller still gets
    whole frames on the wire (the cancellation is delivered at its next
    checkpoint), so the connection stays usable. ``write_timeout`` bounds the
    shielded write; if it passes, :class:`~dengine.errors.Timeout` is raised,
    a frame may be half written, and the caller must close the stream.
    """
    data = encode_frames(bodies, max_frame_size=max_frame_size)
    if not data:
        await trio.lowlevel.checkpoint()
        return 0
    with trio.CancelScope(shield=True, deadline=trio.current_time() + write_timeout) as scope:
        await stream.send_all(data)
    if scope.cancelled_caught:
        raise Timeout(f"writing {len(data)} bytes did not complete within {write_timeout}s; the stream must be closed")
    return len(data)


async def receive_frame(stream: trio.abc.ReceiveStream, decoder: FrameDecoder) -> bytes:
    """Exactly one frame body; frames behind it stay in ``decoder``.

    Raises MalformedMessage if the stream ends first (with nothing buffered,
    the message says the peer closed the connection).
    """
    frames = decoder.feed(b"", limit=1)
    if frames:
        await trio.lowlevel.checkpoint()
    while not frames:
        data = await stream.receive_some(_RECEIVE_SIZE)
        if not data:
            decoder.close()  # raises if the stream ended mid-frame
            raise MalformedMessage("connection closed before a frame arrived")
        frames = decoder.feed(data, limit=1)
    return frames[0]


async def receive_frames(
    stream: trio.abc.ReceiveStream, decoder: FrameDecoder, *, receive_size: int = _RECEIVE_SIZE
) -> AsyncIterator[bytes]:
    """Yield frame bodies until the stream ends cleanly (at a frame boundary).

    Raises FrameTooLarge / MalformedMessage when the peer breaks the framing.
    Use under ``contextlib.aclosing`` if you may stop early.
    """
    for body in decoder.feed(b""):
        yield body
    while True:
        data = await stream.receive_some(receive_size)
        if not data:
            decoder.close()
            return
        for body in decoder.feed(data):
            yield body

"""A fault-injecting TCP proxy for one directed peer link A -> B, in trio.

dengine peer connections are one-way (dengine/transport/peer.py): node A
dials B's peer address, sends a Hello frame, B answers one Welcome frame,
then only A writes (u32 big-endian length-prefixed msgpack frames) and B
never writes again. Node A's ``--initial-cluster`` lists, for B, the address
of the proxy of link A -> B, so every Raft message from A to B crosses it.

The members' peer addresses are replicated (dengine/embedded.py,
``_follow_members``): once a node has applied the member table it dials B at
the address the table records, which is the proxy of ONE link X -> B, whoever
dials. So a proxy does not trust the port it was reached on: it reads the
Hello, whose node id names the real sender A, and applies the faults of link
A -> B (``links``, shared by all proxies of a cluster). Without this,
isolating X also cut A -> B.

The proxy parses the A -> B byte stream into whole frames, so it can drop,
delay, duplicate or reorder *frames* while the stream stays valid (Raft must
tolerate message loss, delay, duplication and reordering). The B -> A
direction (the Welcome, then end-of-file) is copied as bytes.

Link modes:

* ``up``        frames pass (subject to delay / loss / dup / reorder settings)
* ``blackhole`` frames are dropped silently; a new connection's Hello is held
                until the link heals (the handshake hangs as on a dead network)
* ``reset``     open connections are closed at once; new ones are accepted
                and closed (connection refused / reset)
"""

from __future__ import annotations

import math
import random
import struct

import msgpack
import trio

__all__ = ["LinkProxy"]

_HEADER = struct.Struct(">I")
_RECEIVE = 256 * 1024
_MAX_FRAME = 64 * 1024 * 1024
_QUEUE = 8192
# A frame held back for reordering goes out after this long without a successor.
_REORDER_HOLD = 0.05

UP, BLACKHOLE, RESET = "up", "blackhole", "reset"


def _whole_frame(buf: bytearray) -> bool:
    return len(buf) >= 4 and len(buf) - 4 >= _HEADER.unpack_from(buf, 0)[0]


def _hello_sender(buf: bytearray) -> int | None:
    """The node id of the Hello at the start of ``buf`` (None if it is not one)."""
    (size,) = _HEADER.unpack_from(buf, 0)
    try:
        hello = msgpack.unpackb(bytes(buf[4 : 4 + size]), raw=False)
    except (ValueError, msgpack.UnpackException):
        return None
    if type(hello) is list and len(hello) >= 4 and hello[0] == "hello" and type(hello[3]) is int:
        return hello[3]
    return None


class LinkProxy:
    """The proxy of link ``src -> dst``; ``target`` is dst's real peer port."""

    def __init__(
        self, src: int, dst: int, target_port: int, rng: random.Random,
        links: dict[tuple[int, int], LinkProxy] | None = None,
    ) -> None:
        self.links = links if links is not None else {}
        self.src = src
        self.dst = dst
        self.target_port = target_port
        self.port = 0
        self.rng = rng
        self.mode = UP
        self.delay = 0.0
        self.jitter = 0.0
        self.loss = 0.0
        self.duplicate = 0.0
        self.reorder = 0.0
        self._healed = trio.Event()
        self._healed.set()
        self._scopes: set[trio.CancelScope] = set()
        # counters
        self.connections = 0
        self.frames = 0
        self.dropped = 0
        self.duplicated = 0
        self.reordered = 0

    @property
    def name(self) -> str:
        return f"{self.src}->{self.dst}"

    # -- control ---------------------------------------------------------------

    def set_mode(self, mode: str) -> None:
        if mode not in (UP, BLACKHOLE, RESET):
            raise ValueError(mode)
        self.mode = mode
        if mode == UP:
            self._healed.set()
        else:
            if self._healed.is_set():
                self._healed = trio.Event()
            if mode == RESET:
                for scope in list(self._scopes):
                    scope.cancel()

    def set_impairments(
        self, *, delay: float = 0.0, jitter: float = 0.0, loss: float = 0.0,
        duplicate: float = 0.0, reorder: float = 0.0,
    ) -> None:
        self.delay, self.jitter, self.loss = delay, jitter, loss
        self.duplicate, self.reorder = duplicate, reorder

    def heal(self) -> None:
        self.set_impairments()
        self.set_mode(UP)

    @property
    def impaired(self) -> bool:
        return self.mode != UP or any((self.delay, self.jitter, self.loss, self.duplicate, self.reorder))

    # -- serving -----------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        listener = listeners[0]
        self.port = listener.socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            async with listener:
                while True:
                    stream = await listener.accept()
                    nursery.start_soon(self._handle, stream)

    async def _handle(self, downstream: trio.SocketStream) -> None:
        try:
            buf = bytearray()
            with trio.move_on_after(10):  # the dialer sends its Hello at once
                while not _whole_frame(buf):
                    data = await downstream.receive_some(_RECEIVE)
                    if not data:
                        return
                    buf += data
            if not _whole_frame(buf):
                return
            sender = _hello_sender(buf)
            link = self.links.get((sender, self.dst), self) if sender is not None else self
            await link._relay(downstream, buf)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(downstream)

    async def _relay(self, downstream: trio.SocketStream, buf: bytearray) -> None:
        """Carry one connection of this link; ``buf`` holds what was read of it."""
        self.connections += 1
        try:
            if self.mode == RESET:
                return
            try:
                with trio.fail_after(2):
                    upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
            except (OSError, trio.TooSlowError):
                return  # dst is down: the dialer sees its connection closed
            try:
                with trio.CancelScope() as scope:
                    self._scopes.add(scope)
                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._forward, downstream, upstream, nursery.cancel_scope, buf)
                            nursery.start_soon(self._backward, upstream, downstream, nursery.cancel_scope)
                    finally:
                        self._scopes.discard(scope)
            finally:
                await trio.aclose_forcefully(upstream)
        finally:
            await trio.aclose_forcefully(downstream)

    async def _backward(self, upstream: trio.abc.Stream, downstream: trio.abc.Stream, scope: trio.CancelScope) -> None:
        """dst -> src: the Welcome, then nothing until end-of-file; copied as bytes."""
        try:
            while True:
                data = await upstream.receive_some(_RECEIVE)
                if not data:
                    break
                await downstream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        scope.cancel()

    async def _forward(self, downstream: trio.abc.Stream, upstream: trio.abc.Stream, scope: trio.CancelScope,
                       buf: bytearray) -> None:
        send, receive = trio.open_memory_channel[tuple[float, bytes]](_QUEUE)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, receive, upstream)
                await self._reader(downstream, send, buf)
                # clean end of the stream: let the writer flush, then stop
                await send.aclose()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ValueError):
            pass  # bare or wrapped in the nursery's ExceptionGroup: the link broke
        scope.cancel()

    async def _reader(self, downstream: trio.abc.Stream, send: trio.MemorySendChannel[tuple[float, bytes]],
                      buf: bytearray) -> None:
        first = True
        held: bytes | None = None
        last_at = 0.0
        data: bytes | bytearray = buf  # what was read before: the Hello
        buf = bytearray()
        while True:
            if not data:
                timeout = _REORDER_HOLD if held is not None else math.inf
                with trio.move_on_after(timeout):
                    data = await downstream.receive_some(_RECEIVE)
                    if not data:
                        return
            frames: list[bytes] = []
            if data:
                buf += data
                data = b""
                pos = 0
                while len(buf) - pos >= 4:
                    (size,) = _HEADER.unpack_from(buf, pos)
                    if size > _MAX_FRAME:
                        raise ValueError("frame too large")
                    if len(buf) - pos - 4 < size:
                        break
                    frames.append(bytes(buf[pos : pos + 4 + size]))
                    pos += 4 + size
                del buf[:pos]
            elif held is not None:  # nothing came while a frame was held back
                frames_out, held = [held], None
                last_at = await self._emit(send, frames_out, last_at)
                continue
            out: list[bytes] = []
            for frame in frames:
                if first:
                    first = False
                    # The Hello: never lost; held while the link is a black hole.
                    while self.mode == BLACKHOLE:
                        await self._healed.wait()
                    out.append(frame)
                    continue
                self.frames += 1
                if self.mode != UP or (self.loss and self.rng.random() < self.loss):
                    self.dropped += 1
                    continue
                if held is not None:
                    out.append(frame)
                    out.append(held)
                    held = None
                    self.reordered += 1
                    continue
                if self.reorder and self.rng.random() < self.reorder:
                    held = frame
                    continue
                out.append(frame)
                if self.duplicate and self.rng.random() < self.duplicate:
                    out.append(frame)
                    self.duplicated += 1
            if out:
                last_at = await self._emit(send, out, last_at)

    async def _emit(self, send: trio.MemorySendChannel[tuple[float, bytes]], frames: list[bytes], last_at: float) -> float:
        now = trio.current_time()
        at = now
        if self.delay or self.jitter:
            at = now + self.delay + self.rng.uniform(0, self.jitter)
        at = max(at, last_at)  # a TCP stream keeps its order
        await send.send((at, b"".join(frames)))
        return at

    async def _writer(self, receive: trio.MemoryReceiveChannel[tuple[float, bytes]], upstream: trio.abc.Stream) -> None:
        pending: tuple[float, bytes] | None = None
        while True:
            if pending is None:
                try:
                    pending = await receive.receive()
                except trio.EndOfChannel:
                    return
            at, data = pending
            pending = None
            if at > trio.current_time():
                await trio.sleep_until(at)
            chunks = [data]
            now = trio.current_time()
            while True:  # everything already due goes out in one write
                try:
                    item = receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                if item[0] > now:
                    pending = item
                    break
                chunks.append(item[1])
            await upstream.send_all(b"".join(chunks))

"""One client connection to one server: handshake, request ids, streams.

Rules:

* A connection is opened with the client handshake and then carries many
  requests at once, matched to responses by request id. Per connection, two
  tasks (in the client's nursery) do all the IO: one **writer** takes every
  frame queued since its last write and sends them with ONE ``send_all``
  (callers never touch the socket and never wait for each other), and one
  **reader** decodes every response of one receive and wakes each waiting
  caller once (by request id). A call therefore costs one enqueue and one
  wake-up, whatever the number of callers.
* When the connection breaks, every request waiting on it fails with
  :class:`ConnectionLost`, whose ``sent`` says whether the request may have
  reached the server: a request still queued was never written (``sent`` is
  False, the server cannot have acted on it). Of a batch whose write failed,
  the last frame was surely cut short (a frame cut short is never decoded);
  the frames before it may have been written in full.
* A request may carry a deadline, enforced by the connection rather than by
  a cancel scope per call: deadlines sit in a heap, and one timer task per
  connection sleeps until the earliest and wakes the callers whose deadline
  passed with :class:`Expired`. Answered requests leave the heap lazily
  (each new request pops the answered ones at its top).
* A caller that gives up (cancelled, or its deadline passed) before its
  frame was written takes the frame back: it is never sent.
* A stream keeps at most ``stream_buffer`` items the application has not
  read; one more and the stream is cancelled on the server and ends with
  ``ResourceExhausted`` locally (never a silent drop).
* A broken connection (reset, refused write, protocol error) ends
  :meth:`Connection.run` quietly: its reason goes to the waiting requests
  and streams, never out of ``run`` into the client's nursery (that would
  kill the user's ``async with open_client(...)`` block). The reader's
  error reaches ``run`` wrapped in the nursery's ExceptionGroup and is
  unwrapped with :func:`~dengine.transport.base.single_leaf`; the writer
  reports its error instead of raising it, because on a reset both sides
  fail at once and a group of two errors has no single leaf.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import ssl
from collections import deque
from typing import Any

import outcome
import trio

from dengine.errors import DengineError, ResourceExhausted
from dengine.transport.base import single_leaf
from dengine.transport.client_protocol import (
    STATUS_ITEM,
    Response,
    decode_response,
    encode_request,
    error_from_map,
)
from dengine.transport.framing import DEFAULT_MAX_FRAME_SIZE, FrameDecoder, encode_frame
from dengine.transport.handshake import PROTOCOL_VERSION, Hello, connect_handshake

log = logging.getLogger("dengine.client")

_RECEIVE_SIZE = 256 * 1024
_WRITE_TIMEOUT = 10.0
NETWORK_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError)

# Where a request's frame is.
_QUEUED = 0  # in the outbox: never written
_WRITING = 1  # in the batch being written
_SENT = 2  # written in full (or may have been: see _fail_all)
_DROPPED = 3  # its caller gave up before it was written: never written


class ConnectionLost(Exception):
    """The connection broke before the answer came. ``sent``: the request
    had been written in full (the server may have acted on it)."""

    def __init__(self, endpoint: str, *, sent: bool, reason: str = "") -> None:
        super().__init__(f"the connection to {endpoint} was lost" + (f" ({reason})" if reason else ""))
        self.endpoint = endpoint
        self.sent = sent


class Expired(Exception):
    """A request's deadline passed before its answer came. ``sent``: its
    frame had been written (the server may act on it)."""

    def __init__(self, *, sent: bool) -> None:
        super().__init__("the request's deadline passed before its answer came")
        self.sent = sent


class _Pending:
    """One unary request: its frame's state and its waiting task (None once
    it was woken or gave up)."""

    __slots__ = ("expired", "frame", "response", "state", "task")

    def __init__(self, frame: bytes) -> None:
        self.frame = frame
        self.state = _QUEUED
        self.response: Response | None = None
        self.task: trio.lowlevel.Task | None = None
        self.expired = False

    def __lt__(self, other: _Pending) -> bool:  # heap ties (same deadline): any order
        return False


class Stream:
    """The items of one streaming request, in order."""

    def __init__(self, conn: Connection, request_id: int, limit: int) -> None:
        self.conn = conn
        self.request_id = request_id
        self._items: deque[dict[str, Any]] = deque()
        self._limit = limit
        self._end: BaseException | None = None  # set once: what receive raises after the items
        self._event = trio.Event()

    def _push(self, response: Response) -> None:
        if self._end is not None:
            return
        if response.status == STATUS_ITEM:
            if len(self._items) >= self._limit:
                self._finish(ResourceExhausted(
                    f"the application read stream {self.request_id} too slowly ({self._limit} items unread)"
                ))
                self.conn._cancel_soon(self.request_id)
                return
            self._items.append(response.body)
        elif response.status == "ok":
            self._finish(trio.EndOfChannel())
        else:
            self._finish(error_from_map(response.body))
        self._event.set()

    def _finish(self, exc: BaseException) -> None:
        if self._end is None:
            self._end = exc
            self._event.set()

    async def receive(self) -> dict[str, Any]:
        """The next item; then raises the stream's end: ``EndOfChannel`` (the
        server ended it), its error, or ConnectionLost."""
        while True:
            if self._items:
                await trio.lowlevel.checkpoint()
                return self._items.popleft()
            if self._end is not None:
                await trio.lowlevel.checkpoint()
                raise self._end
            self._event = trio.Event()
            await self._event.wait()

    async def aclose(self) -> None:
        """Cancel the stream on the server (best effort: the cancel is queued
        for the writer) and forget it."""
        ended = self._end is not None
        self._finish(trio.ClosedResourceError("this stream was closed"))
        if self.conn._streams.pop(self.request_id, None) is not None and not ended:
            self.conn._cancel_soon(self.request_id)
        await trio.lowlevel.checkpoint()


class Connection:
    def __init__(self, endpoint: str, stream: trio.abc.Stream, node_id: int, max_frame_size: int) -> None:
        self.endpoint = endpoint
        self.node_id = node_id
        self._stream = stream
        self._decoder = FrameDecoder(max_frame_size)
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._streams: dict[int, Stream] = {}
        self._scope = trio.CancelScope()
        self._closed: str | None = None
        self._write_failed: str | None = None  # why the writer stopped, if it failed
        # Frames waiting for the writer, with their request (None: a stream's
        # or a cancel's frame).
        self._outbox: list[tuple[bytes, _Pending | None]] = []
        self._writer_lot = trio.lowlevel.ParkingLot()
        # Deadlines of requests (answered ones leave lazily) and the timer
        # that expires them; _timer_at is when the timer will look next.
        self._deadlines: list[tuple[float, _Pending]] = []
        self._timer_lot = trio.lowlevel.ParkingLot()
        self._timer_at = math.inf

    @classmethod
    async def open(
        cls,
        endpoint: str,
        host: str,
        port: int,
        *,
        cluster_id: str,
        ssl_context: ssl.SSLContext | None,
        connect_timeout: float,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> Connection:
        """Connect and shake hands; raises OSError/TooSlowError for an
        unreachable endpoint and the refusal's DengineError (WrongCluster, ...)."""
        with trio.fail_after(connect_timeout):
            tcp = await trio.open_tcp_stream(host, port)
            stream: trio.abc.Stream = tcp
            try:
                if ssl_context is not None:
                    stream = trio.SSLStream(tcp, ssl_context, server_hostname=host)
                decoder = FrameDecoder(max_frame_size)
                hello = Hello(protocol_version=PROTOCOL_VERSION, cluster_id=cluster_id, node_id=None, kind="client")
                welcome = await connect_handshake(stream, decoder, hello, peer=f"the server at {endpoint}")
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
        conn = cls(endpoint, stream, welcome.node_id, max_frame_size)
        conn._decoder = decoder  # it may hold frames pipelined behind the welcome
        return conn

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def _next_id(self) -> int:
        return next(self._ids)

    # -- running ------------------------------------------------------------

    async def run(self) -> None:
        """The reader and the writer; runs in the client's nursery until the
        connection closes."""
        reason = "closed"
        try:
            with self._scope:
                try:
                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._writer, nursery.cancel_scope)
                            nursery.start_soon(self._timer)
                            reason = await self._read()
                            nursery.cancel_scope.cancel()
                    except BaseExceptionGroup as group:
                        # The reader's error, with Cancelled siblings.
                        leaf = single_leaf(group)
                        if leaf is None:
                            raise
                        raise leaf from None
                    if self._write_failed is not None:
                        reason = self._write_failed
                except NETWORK_ERRORS as exc:
                    reason = f"{type(exc).__name__}: {exc}"
                except DengineError as exc:  # the server broke the protocol
                    reason = str(exc)
                    log.warning("closing the connection to %s: %s", self.endpoint, exc)
        finally:
            self._fail_all(reason)
            await trio.aclose_forcefully(self._stream)

    async def _read(self) -> str:
        data = b""
        while True:
            for body in self._decoder.feed(data):
                response = decode_response(body)
                if response.id is None:
                    return f"the server closed the connection: {error_from_map(response.body)}"
                self._dispatch(response)
            data = await self._stream.receive_some(_RECEIVE_SIZE)
            if not data:
                return "the server closed the connection"

    def _dispatch(self, response: Response) -> None:
        assert response.id is not None
        stream = self._streams.get(response.id)
        if stream is not None:
            stream._push(response)
            if response.final:
                self._streams.pop(response.id, None)
            return
        pending = self._pending.get(response.id)
        if pending is not None and pending.response is None and response.final:
            pending.response = response
            pending.state = _SENT
            self._wake(pending)
        # anything else answers a request nobody waits for any more

    @staticmethod
    def _wake(pending: _Pending) -> None:
        task, pending.task = pending.task, None
        if task is not None:
            trio.lowlevel.reschedule(task, outcome.Value(None))

    async def _writer(self, connection_scope: trio.CancelScope) -> None:
        """Send every queued frame with one ``send_all`` per batch. A failed
        write is reported (``_write_failed``) and ends the connection through
        ``connection_scope``; it is not raised (see the rules above)."""
        stream = self._stream
        while True:
            while not self._outbox:
                await self._writer_lot.park()
            batch, self._outbox = self._outbox, []
            frames: list[bytes] = []
            written: list[_Pending | None] = []
            for frame, pending in batch:
                if pending is not None:
                    if pending.state == _DROPPED:
                        continue
                    pending.state = _WRITING
                frames.append(frame)
                written.append(pending)
            if not frames:
                continue
            data = b"".join(frames)
            try:
                with trio.move_on_after(_WRITE_TIMEOUT) as timeout:
                    await stream.send_all(data)
                if timeout.cancelled_caught:
                    raise trio.TooSlowError(f"writing {len(data)} bytes took over {_WRITE_TIMEOUT:g} s")
            except BaseException as exc:
                # Only the batch's last frame was surely cut short; the
                # frames before it may have reached the server.
                last = written[-1]
                for pending in written:
                    if pending is not None:
                        pending.state = _QUEUED if pending is last else _SENT
                if not isinstance(exc, NETWORK_ERRORS):
                    raise
                self._write_failed = f"{type(exc).__name__}: {exc}"
                connection_scope.cancel()
                return
            for pending in written:
                if pending is not None and pending.state == _WRITING:
                    pending.state = _SENT

    async def _timer(self) -> None:
        """Wake the callers whose deadline passed (one cancel scope per
        sleep, none per request)."""
        heap = self._deadlines
        while True:
            while heap and heap[0][1].task is None:
                heapq.heappop(heap)
            if not heap:
                self._timer_at = math.inf
                await self._timer_lot.park()
                continue
            at, pending = heap[0]
            if at <= trio.current_time():
                heapq.heappop(heap)
                pending.expired = True
                if pending.state == _QUEUED:
                    pending.state = _DROPPED  # never written: the writer skips it
                self._wake(pending)
                continue
            self._timer_at = at
            with trio.move_on_at(at):
                await self._timer_lot.park()

    def _enqueue(self, frame: bytes, pending: _Pending | None) -> None:
        self._outbox.append((frame, pending))
        if self._writer_lot:
            self._writer_lot.unpark()

    def _cancel_soon(self, request_id: int) -> None:
        """Forget a stream and queue its cancel for the server (best effort)."""
        self._streams.pop(request_id, None)
        if self._closed is None:
            frame = encode_frame(encode_request(self._next_id(), "cancel", {"request_id": request_id}))
            self._enqueue(frame, None)

    def _fail_all(self, reason: str) -> None:
        self._closed = reason
        for pending in self._pending.values():
            self._wake(pending)
        for stream in self._streams.values():
            stream._finish(ConnectionLost(self.endpoint, sent=True, reason=reason))
        self._streams.clear()
        self._outbox = []

    def close(self) -> None:
        self._scope.cancel()

    # -- requests -------------------------------------------------------------

    async def request(self, op: str, args: dict[str, Any], *, deadline: float = math.inf) -> dict[str, Any]:
        """One unary request: its result map, or raise its DengineError /
        ConnectionLost, or :class:`Expired` once ``deadline`` (trio time)
        passes."""
        if self._closed is not None:
            await trio.lowlevel.checkpoint()
            raise ConnectionLost(self.endpoint, sent=False, reason=self._closed)
        rid = next(self._ids)
        pending = _Pending(encode_frame(encode_request(rid, op, args)))
        self._pending[rid] = pending
        try:
            self._enqueue(pending.frame, pending)
            pending.task = trio.lowlevel.current_task()
            if deadline != math.inf:
                heap = self._deadlines
                while heap and heap[0][1].task is None:
                    heapq.heappop(heap)  # answered: leave now, not at their deadline
                heapq.heappush(heap, (deadline, pending))
                if deadline < self._timer_at:
                    self._timer_at = deadline
                    self._timer_lot.unpark()

            def abort(_: Any) -> trio.lowlevel.Abort:
                pending.task = None
                if pending.state == _QUEUED:
                    pending.state = _DROPPED  # never written: the writer skips it
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        finally:
            del self._pending[rid]
        response = pending.response
        if pending.expired:
            raise Expired(sent=pending.state != _DROPPED)
        if response is None:
            raise ConnectionLost(
                self.endpoint, sent=pending.state not in (_QUEUED, _DROPPED), reason=self._closed or "closed"
            )
        if response.status != "ok":
            raise error_from_map(response.body)
        return response.body

    async def open_stream(self, op: str, args: dict[str, Any], *, limit: int) -> Stream:
        """Register a stream and queue its request; its items (or its end)
        arrive through :meth:`Stream.receive`."""
        if self._closed is not None:
            await trio.lowlevel.checkpoint()
            raise ConnectionLost(self.endpoint, sent=False, reason=self._closed)
        rid = next(self._ids)
        stream = Stream(self, rid, limit)
        self._streams[rid] = stream
        self._enqueue(encode_frame(encode_request(rid, op, args)), None)
        await trio.lowlevel.checkpoint()
        return stream

"""One client connection to one server, in trio: the IO around a
:class:`~dengine.client._core.ConnectionState`, which owns the protocol
(hello and welcome, request ids and frames, matching responses to requests
and streams, stream buffers and their overflow).

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
* While a request waits, a silent server is pinged and, silent for the
  keepalive timeout (by default the server's election timeout, from its
  welcome), the connection is closed: its requests fail with
  ConnectionLost at once instead of waiting out their deadline at a
  paused or cut-off server (the core's :class:`Liveness` decides; one
  keepalive task per connection sleeps until its next check).
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
import logging
import math
import ssl
from typing import Any

import outcome
import trio

from dengine.client._core import (
    MAX_FRAME_SIZE,
    ConnectionEnded,
    ConnectionLost,
    ConnectionState,
    Expired,
    Liveness,
    ServerInfo,
    StreamBuffer,
    StreamClosed,
    StreamEnded,
    result_of,
)
from dengine.client._core import keepalive_timeout as keepalive_timeout_of
from dengine.errors import DengineError
from dengine.transport.base import single_leaf

__all__ = ["NETWORK_ERRORS", "Connection", "ConnectionLost", "Expired", "Stream"]

log = logging.getLogger("dengine.client")

_RECEIVE_SIZE = 256 * 1024
_WRITE_TIMEOUT = 10.0
NETWORK_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError)

# Where a request's frame is.
_QUEUED = 0  # in the outbox: never written
_WRITING = 1  # in the batch being written
_SENT = 2  # written in full (or may have been: see _fail_all)
_DROPPED = 3  # its caller gave up before it was written: never written


class _Pending:
    """One unary request: its frame's state and its waiting task (None once
    it was woken or gave up)."""

    __slots__ = ("expired", "frame", "response", "state", "task")

    def __init__(self, frame: bytes) -> None:
        self.frame = frame
        self.state = _QUEUED
        self.response: Any = None
        self.task: trio.lowlevel.Task | None = None
        self.expired = False

    def __lt__(self, other: _Pending) -> bool:  # heap ties (same deadline): any order
        return False


class Stream:
    """The items of one streaming request, in order (a trio face on the
    core's StreamBuffer)."""

    def __init__(self, conn: Connection, buffer: StreamBuffer) -> None:
        self.conn = conn
        self.request_id = buffer.request_id
        self._buffer = buffer
        self._event = trio.Event()
        buffer.on_change = self._changed

    def _changed(self) -> None:
        self._event.set()

    async def receive(self) -> dict[str, Any]:
        """The next item; then raises the stream's end: ``EndOfChannel`` (the
        server ended it), its error, or ConnectionLost."""
        while True:
            try:
                item = self._buffer.pop()
            except StreamEnded:
                await trio.lowlevel.checkpoint()
                raise trio.EndOfChannel from None
            except StreamClosed as exc:
                await trio.lowlevel.checkpoint()
                raise trio.ClosedResourceError(str(exc)) from None
            if item is not None:
                await trio.lowlevel.checkpoint()
                return item
            self._event = trio.Event()
            await self._event.wait()

    async def aclose(self) -> None:
        """Cancel the stream on the server (best effort: the cancel is queued
        for the writer) and forget it."""
        frame = self.conn._state.cancel(self._buffer)
        if frame is not None:
            self.conn._enqueue(frame, None)
        await trio.lowlevel.checkpoint()


class Connection:
    def __init__(
        self,
        endpoint: str,
        stream: trio.abc.Stream,
        node_id: int,
        max_frame_size: int,
        *,
        state: ConnectionState | None = None,
        keepalive_timeout: float = math.inf,
    ) -> None:
        self.endpoint = endpoint
        self.node_id = node_id
        self._stream = stream
        if state is None:
            state = ConnectionState(endpoint, cluster_id="", max_frame_size=max_frame_size)
            state.node_id = node_id
        self._state = state  # it may hold frames pipelined behind the welcome
        self._pending: dict[int, _Pending] = {}
        self._scope = trio.CancelScope()
        self._closed: str | None = None
        self._failed: str | None = None  # why the writer or the keepalive ended the connection
        # Frames waiting for the writer, with their request (None: a stream's
        # or a cancel's frame).
        self._outbox: list[tuple[bytes, _Pending | None]] = []
        self._writer_lot = trio.lowlevel.ParkingLot()
        # Deadlines of requests (answered ones leave lazily) and the timer
        # that expires them; _timer_at is when the timer will look next.
        self._deadlines: list[tuple[float, _Pending]] = []
        self._timer_lot = trio.lowlevel.ParkingLot()
        self._timer_at = math.inf
        self._live = Liveness(keepalive_timeout, trio.current_time())
        self._keepalive_lot = trio.lowlevel.ParkingLot()

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
        max_frame_size: int = MAX_FRAME_SIZE,
        keepalive_timeout: float | None = None,
    ) -> Connection:
        """Connect and shake hands; raises OSError/TooSlowError for an
        unreachable endpoint, the refusal's DengineError (WrongCluster, ...),
        ProtocolError for a server that does not speak the protocol, Timeout
        for one that does not answer the hello."""
        state = ConnectionState(endpoint, cluster_id=cluster_id, max_frame_size=max_frame_size)
        handshake_at = math.inf
        try:
            with trio.fail_after(connect_timeout):
                tcp = await trio.open_tcp_stream(host, port)
                stream: trio.abc.Stream = tcp
                try:
                    if ssl_context is not None:
                        stream = trio.SSLStream(tcp, ssl_context, server_hostname=host)
                    handshake_at = trio.current_time()
                    await stream.send_all(state.hello())
                    node_id = None
                    while node_id is None:
                        data = await stream.receive_some(_RECEIVE_SIZE)
                        if not data:
                            raise state.handshake_ended()
                        node_id = state.receive_handshake(data)
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
        except trio.TooSlowError:
            if handshake_at == math.inf:
                raise
            raise state.handshake_timed_out(trio.current_time() - handshake_at) from None
        return cls(endpoint, stream, node_id, max_frame_size, state=state,
                   keepalive_timeout=keepalive_timeout_of(keepalive_timeout, state.info))

    @property
    def info(self) -> ServerInfo:
        """What the server's welcome said of it."""
        return self._state.info

    @property
    def closed(self) -> bool:
        return self._closed is not None

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
                            if self._live.timeout != math.inf:
                                nursery.start_soon(self._keepalive, nursery.cancel_scope)
                            reason = await self._read()
                            nursery.cancel_scope.cancel()
                    except BaseExceptionGroup as group:
                        # The reader's error, with Cancelled siblings.
                        leaf = single_leaf(group)
                        if leaf is None:
                            raise
                        raise leaf from None
                    if self._failed is not None:
                        reason = self._failed
                except NETWORK_ERRORS as exc:
                    reason = f"{type(exc).__name__}: {exc}"
                except DengineError as exc:
                    reason = str(exc)
        finally:
            self._fail_all(reason)
            await trio.aclose_forcefully(self._stream)

    async def _read(self) -> str:
        data: bytes | bytearray = b""
        state = self._state
        while True:
            try:
                answers = state.receive(data)
            except ConnectionEnded as exc:
                if "broke the protocol" in exc.reason:
                    log.warning("closing the connection to %s: %s", self.endpoint, exc.reason)
                return exc.reason
            for rid, response in answers:
                pending = self._pending.get(rid)
                if pending is not None and pending.response is None:
                    pending.response = response
                    pending.state = _SENT
                    self._wake(pending)
            for frame in state.outgoing():
                self._enqueue(frame, None)
            data = await self._stream.receive_some(_RECEIVE_SIZE)
            if not data:
                return "the server closed the connection"
            self._live.received(trio.current_time())

    @staticmethod
    def _wake(pending: _Pending) -> None:
        task, pending.task = pending.task, None
        if task is not None:
            trio.lowlevel.reschedule(task, outcome.Value(None))

    async def _writer(self, connection_scope: trio.CancelScope) -> None:
        """Send every queued frame with one ``send_all`` per batch. A failed
        write is reported (``_failed``) and ends the connection through
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
                self._failed = f"{type(exc).__name__}: {exc}"
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

    async def _keepalive(self, connection_scope: trio.CancelScope) -> None:
        """Ping a silent server while requests wait; end the connection
        through ``connection_scope`` once it stayed silent too long."""
        live = self._live
        while True:
            if not self._pending:
                await self._keepalive_lot.park()  # until a request waits
                continue
            at = live.next_check()
            if at > trio.current_time():
                await trio.sleep_until(at)
                continue
            verdict = live.check(trio.current_time())
            if verdict == Liveness.DEAD:
                self._failed = live.silence(self.endpoint, trio.current_time())
                log.info("closing the connection to %s: %s", self.endpoint, self._failed)
                connection_scope.cancel()
                return
            if verdict == Liveness.PING:
                self._enqueue(self._state.ping(), None)

    def _enqueue(self, frame: bytes, pending: _Pending | None) -> None:
        self._outbox.append((frame, pending))
        if self._writer_lot:
            self._writer_lot.unpark()

    def _fail_all(self, reason: str) -> None:
        self._closed = reason
        for pending in self._pending.values():
            self._wake(pending)
        self._state.close(reason)
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
        rid, frame = self._state.request(op, args)
        pending = _Pending(frame)
        if not self._pending:
            self._live.busy(trio.current_time())
            if self._keepalive_lot:
                self._keepalive_lot.unpark()
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
            self._state.forget(rid)
        response = pending.response
        if pending.expired:
            raise Expired(sent=pending.state != _DROPPED)
        if response is None:
            raise ConnectionLost(
                self.endpoint, sent=pending.state not in (_QUEUED, _DROPPED), reason=self._closed or "closed"
            )
        return result_of(response)

    async def open_stream(self, op: str, args: dict[str, Any], *, limit: int) -> Stream:
        """Register a stream and queue its request; its items (or its end)
        arrive through :meth:`Stream.receive`."""
        if self._closed is not None:
            await trio.lowlevel.checkpoint()
            raise ConnectionLost(self.endpoint, sent=False, reason=self._closed)
        buffer, frame = self._state.stream(op, args, limit=limit)
        stream = Stream(self, buffer)
        self._enqueue(frame, None)
        await trio.lowlevel.checkpoint()
        return stream

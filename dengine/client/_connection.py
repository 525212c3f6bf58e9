"""One client connection to one server: handshake, request ids, streams.

Rules:

* A connection is opened with the client handshake and then carries many
  requests at once, matched to responses by request id. One reader task
  (in the client's nursery) dispatches every response; writers share one
  lock and write whole frames (the write is shielded).
* When the connection breaks, every request waiting on it fails with
  :class:`ConnectionLost`, whose ``sent`` says whether the request had been
  written completely (if not, the server cannot have acted on it: a frame
  cut short is never decoded).
* A stream keeps at most ``stream_buffer`` items the application has not
  read; one more and the stream is cancelled on the server and ends with
  ``ResourceExhausted`` locally (never a silent drop).
"""

from __future__ import annotations

import itertools
import logging
import ssl
from collections import deque
from typing import Any

import trio

from dengine.errors import DengineError, ResourceExhausted
from dengine.transport.client_protocol import (
    STATUS_ITEM,
    Response,
    decode_response,
    encode_request,
    error_from_map,
)
from dengine.transport.framing import DEFAULT_MAX_FRAME_SIZE, FrameDecoder, send_frames
from dengine.transport.handshake import PROTOCOL_VERSION, Hello, connect_handshake

log = logging.getLogger("dengine.client")

_RECEIVE_SIZE = 256 * 1024
NETWORK_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError)


class ConnectionLost(Exception):
    """The connection broke before the answer came. ``sent``: the request
    had been written in full (the server may have acted on it)."""

    def __init__(self, endpoint: str, *, sent: bool, reason: str = "") -> None:
        super().__init__(f"the connection to {endpoint} was lost" + (f" ({reason})" if reason else ""))
        self.endpoint = endpoint
        self.sent = sent


class _Pending:
    __slots__ = ("event", "response")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.response: Response | None = None


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
        """Cancel the stream on the server (best effort) and forget it."""
        ended = self._end is not None
        self._finish(trio.ClosedResourceError("this stream was closed"))
        if self.conn._streams.pop(self.request_id, None) is not None and not ended:
            with trio.move_on_after(1.0) as scope:
                scope.shield = True
                try:
                    await self.conn._send_request(self.conn._next_id(), "cancel", {"request_id": self.request_id})
                except (ConnectionLost, DengineError):
                    pass


class Connection:
    def __init__(self, endpoint: str, stream: trio.abc.Stream, node_id: int, max_frame_size: int) -> None:
        self.endpoint = endpoint
        self.node_id = node_id
        self._stream = stream
        self._decoder = FrameDecoder(max_frame_size)
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._streams: dict[int, Stream] = {}
        self._send_lock = trio.Lock()
        self._scope = trio.CancelScope()
        self._closed: str | None = None
        self._cancels: list[int] = []
        self._cancel_event = trio.Event()

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
        """The reader (and the canceller of streams the application dropped);
        runs in the client's nursery until the connection closes."""
        reason = "closed"
        try:
            with self._scope:
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._canceller)
                        reason = await self._read()
                        nursery.cancel_scope.cancel()
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
            pending.event.set()
        # anything else answers a request nobody waits for any more

    async def _canceller(self) -> None:
        while True:
            await self._cancel_event.wait()
            self._cancel_event = trio.Event()
            ids, self._cancels = self._cancels, []
            for rid in ids:
                try:
                    await self._send_request(self._next_id(), "cancel", {"request_id": rid})
                except ConnectionLost:
                    return

    def _cancel_soon(self, request_id: int) -> None:
        self._streams.pop(request_id, None)
        self._cancels.append(request_id)
        self._cancel_event.set()

    def _fail_all(self, reason: str) -> None:
        self._closed = reason
        for pending in self._pending.values():
            pending.event.set()
        for stream in self._streams.values():
            stream._finish(ConnectionLost(self.endpoint, sent=True, reason=reason))
        self._streams.clear()

    def close(self) -> None:
        self._scope.cancel()

    # -- requests -------------------------------------------------------------

    async def _send_request(self, request_id: int, op: str, args: dict[str, Any]) -> None:
        if self._closed is not None:
            raise ConnectionLost(self.endpoint, sent=False, reason=self._closed)
        body = encode_request(request_id, op, args)
        try:
            async with self._send_lock:
                await send_frames(self._stream, [body], write_timeout=10.0)
        except (*NETWORK_ERRORS, DengineError) as exc:
            # A frame cut short is never decoded: the server did not act on it.
            self.close()
            raise ConnectionLost(self.endpoint, sent=False, reason=str(exc)) from None

    async def request(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """One unary request: its result map, or raise its DengineError /
        ConnectionLost."""
        rid = self._next_id()
        pending = self._pending[rid] = _Pending()
        try:
            await self._send_request(rid, op, args)
            await pending.event.wait()
            response = pending.response
            if response is None:
                raise ConnectionLost(self.endpoint, sent=True, reason=self._closed or "closed")
        finally:
            del self._pending[rid]
        if response.status != "ok":
            raise error_from_map(response.body)
        return response.body

    async def open_stream(self, op: str, args: dict[str, Any], *, limit: int) -> Stream:
        rid = self._next_id()
        stream = Stream(self, rid, limit)
        self._streams[rid] = stream
        try:
            await self._send_request(rid, op, args)
        except BaseException:
            self._streams.pop(rid, None)
            raise
        return stream

"""etcd's gRPC API on trio: HTTP/2 by the sans-IO ``h2`` library, no threads.

    async with open_grpc_server(service, "127.0.0.1:2379") as server:
        print(server.port)

A request arrives on the trio loop's own socket and is served there, so the
trio node stays the one owner of state with no thread in between. Needs
``h2`` (``pip install 'dengine[etcd]'``) beside the protobuf runtime.
(grpcio's server, run in worker threads that call into the loop with
``trio.from_thread``, was the first version: it served one call at a time
about as fast and half as many calls per second under load, where its
threads contend for the GIL; docs/benchmarks.md, "Issue 16".)

Rules of this module:

* One connection = one reader task (socket -> ``h2`` -> events) and one task
  per call, all in the connection's nursery. Every ``h2`` state change happens
  on the trio loop; after a change its task calls :meth:`_Connection.flush`.
  One task writes at a time: a flush that finds another writing returns, the
  writer sends whatever is queued until nothing is. Writes are shielded (a
  frame is never half written) and bounded by :data:`WRITE_TIMEOUT`: a client
  that stops reading is disconnected.
* HTTP/2 without TLS is h2c with prior knowledge (what gRPC clients speak);
  with TLS the ALPN protocol is ``h2``, and with a CA clients must show a
  certificate it signed. The TLS handshake and the client's preface and
  SETTINGS must come within :data:`HANDSHAKE_TIMEOUT`. A bad preface, a
  protocol error or a failed handshake closes that connection only (logged
  at debug), never the server.
* gRPC framing: a message is 1 byte compressed-flag, 4 bytes big-endian
  length and the bytes; a message may span DATA frames and a frame may hold
  several. Only identity encoding: a compressed message is answered
  ``UNIMPLEMENTED``; one larger than ``max_message_bytes`` (either way)
  ``RESOURCE_EXHAUSTED``, as grpcio does.
* A response is HEADERS (``:status`` 200, ``content-type application/grpc``),
  the messages, then trailers (``grpc-status``, percent-encoded
  ``grpc-message``) ending the stream; an error before any message is one
  trailers-only HEADERS. A stream the client still sends on is then reset
  with NO_ERROR (so late DATA is not a connection error).
* A unary call runs when its one message arrived and the client ended its
  side; a stream call (Watch, LeaseKeepAlive) runs from its HEADERS, with the
  client's messages on a bounded channel (:data:`STREAM_BUFFER`). Its service
  method decides when the stream ends; the client ending its side closes the
  channel; a client RST_STREAM cancels the call.
* ``grpc-timeout`` is the call's deadline; past it the call is cancelled and
  answered ``DEADLINE_EXCEEDED``.
* Flow control: received bytes are acknowledged as soon as they are parsed,
  except on a stream whose channel is full: its bytes are held (its window
  closes, the client waits) until the service took the waiting messages. The
  connection window is larger than every stream's window together, so one
  held stream never stops another. Sending waits for the client's window.
* At most ``max_rpcs`` calls at once per connection
  (SETTINGS_MAX_CONCURRENT_STREAMS) and in all (one more is answered
  ``RESOURCE_EXHAUSTED``).
* Stop: new calls are refused ``UNAVAILABLE``; unary calls in flight get
  :data:`STOP_GRACE` seconds; the calls left are answered ``UNAVAILABLE``,
  then GOAWAY is sent (h2 sends nothing after it) and every connection is
  cancelled.
* The port is bound before the block is entered; an address in use is an
  :class:`~dengine.errors.AddressInUse` naming it.
"""

from __future__ import annotations

import functools
import logging
import math
import ssl
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any, Final

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import trio
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings

from dengine.config import format_address, parse_address
from dengine.errors import AddressInUse, ConfigError
from dengine.etcd.schema import MESSAGES as M
from dengine.etcd.service import RPCS, EtcdError, EtcdService, Rpc, etcd_error, not_served

log = logging.getLogger("dengine.etcd")

__all__ = ["GrpcServer", "open_grpc_server"]

#: Default most calls served at once (streams included), per connection and in all.
DEFAULT_MAX_RPCS: Final = 256
#: Default largest message, either way (etcd's default request limit is 1.5 MiB + gRPC overhead).
DEFAULT_MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024
#: Client messages of one stream waiting for its service before its bytes are held.
STREAM_BUFFER: Final = 64
#: Each stream's receive window (SETTINGS_INITIAL_WINDOW_SIZE).
STREAM_WINDOW: Final = 256 * 1024
#: Seconds one write to a client may take before the connection is closed.
WRITE_TIMEOUT: Final = 10.0
#: Seconds for the TLS handshake and the client's first bytes.
HANDSHAKE_TIMEOUT: Final = 10.0
#: Seconds unary calls in flight are given when the server stops.
STOP_GRACE: Final = 0.5

_READ_BYTES: Final = 64 * 1024
_MAX_WINDOW: Final = 2**31 - 1
_DEFAULT_WINDOW: Final = 65535
_RESPONSE_HEADERS: Final = ((":status", "200"), ("content-type", "application/grpc"),
                            ("grpc-accept-encoding", "identity"))
_TIMEOUT_UNITS: Final = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def _stopped() -> EtcdError:
    return EtcdError("UNAVAILABLE", "etcdserver: server stopped")


def _deadline_exceeded() -> EtcdError:
    return EtcdError("DEADLINE_EXCEEDED", "context deadline exceeded")


def parse_timeout(value: str | None) -> float | None:
    """Seconds of a ``grpc-timeout`` header (``"10S"``, ``"500m"``, ...); None when absent or malformed."""
    if not value or len(value) < 2 or not value[:-1].isdigit():
        return None
    unit = _TIMEOUT_UNITS.get(value[-1])
    return None if unit is None else int(value[:-1]) * unit


def grpc_message(text: str) -> str:
    """``text`` percent-encoded as gRPC's HTTP/2 mapping says for ``grpc-message``:
    UTF-8, every byte outside printable ASCII and ``%`` as ``%XX``."""
    return "".join(chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in text.encode())


def _answer(exc: Exception) -> EtcdError:
    """:func:`etcd_error` of ``exc``, or of the one exception a nursery wrapped it in a group with."""
    while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return etcd_error(exc)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class _Call:
    """One gRPC call (one HTTP/2 stream) of a connection."""

    __slots__ = ("stream_id", "rpc", "deadline", "buffer", "requests", "inbound", "overflow", "held",
                 "draining", "remote_ended", "headers_sent", "done", "scope", "window", "lock")

    def __init__(self, stream_id: int, rpc: Rpc, deadline: float) -> None:
        self.stream_id = stream_id
        self.rpc = rpc
        self.deadline = deadline
        #: Received bytes not yet a whole message.
        self.buffer = bytearray()
        #: A unary call's request (one, once whole).
        self.requests: list[Any] = []
        #: A stream call's channel to its service.
        self.inbound: trio.MemorySendChannel[Any] | None = None
        #: Requests waiting for room in ``inbound`` (its bytes are ``held``).
        self.overflow: deque[Any] = deque()
        self.held = 0
        self.draining = False
        self.remote_ended = False
        self.headers_sent = False
        #: Answered (trailers queued) or reset: nothing more is sent.
        self.done = False
        #: Cancelled by a reset, the server stopping or the deadline (``grpc-timeout``).
        self.scope = trio.CancelScope(deadline=deadline)
        #: Set when the client opens its window (made when a sender waits for it).
        self.window: trio.Event | None = None
        #: One message at a time on a stream.
        self.lock: trio.Lock | None = None

    def wake(self) -> None:
        if self.window is not None:
            self.window.set()


class _Connection:
    """One client connection: its ``h2`` state, calls and writer."""

    def __init__(self, server: GrpcServer, stream: trio.abc.Stream, peer: str) -> None:
        self.server = server
        self.stream = stream
        self.peer = peer
        # Outbound headers are this module's own constants: h2 need not check them.
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8",
                                           validate_inbound_headers=True, validate_outbound_headers=False,
                                           normalize_outbound_headers=False)
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: server.max_rpcs,
            SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            SettingCodes.MAX_HEADER_LIST_SIZE: h2.connection.H2Connection.DEFAULT_MAX_HEADER_LIST_SIZE,
        })
        self.calls: dict[int, _Call] = {}
        self.nursery: trio.Nursery | None = None
        self.writing = False
        self.broken = False
        #: The client's SETTINGS arrived.
        self.settled = False

    # -- the connection task ----------------------------------------------

    async def serve(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                if await self._open():
                    await self._read_loop()
                nursery.cancel_scope.cancel()
        except Exception:  # a bug of ours: this connection only, never the server
            log.exception("etcd gRPC: connection from %s failed", self.peer)
        finally:
            for call in list(self.calls.values()):
                self._forget(call)
            self.server.connections.discard(self)
            await trio.aclose_forcefully(self.stream)

    async def _open(self) -> bool:
        stream = self.stream
        if isinstance(stream, trio.SSLStream):
            with trio.move_on_after(HANDSHAKE_TIMEOUT) as timer:
                try:
                    await stream.do_handshake()
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    log.debug("etcd gRPC: TLS handshake with %s failed: %s", self.peer, exc.__cause__ or exc)
                    return False
            if timer.cancelled_caught:
                log.debug("etcd gRPC: TLS handshake with %s timed out", self.peer)
                return False
            if stream.selected_alpn_protocol() not in (None, "h2"):
                log.debug("etcd gRPC: %s asked for %s, not h2", self.peer, stream.selected_alpn_protocol())
                return False
        self.h2.initiate_connection()
        increment = min(_MAX_WINDOW, STREAM_WINDOW * (self.server.max_rpcs + 1)) - _DEFAULT_WINDOW
        if increment > 0:
            self.h2.increment_flow_control_window(increment)
        await self.flush()
        return not self.broken

    async def _receive(self) -> bytes:
        """The next bytes from the client; b"" at its end or on an error."""
        try:
            return bytes(await self.stream.receive_some(_READ_BYTES))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("etcd gRPC: connection from %s broke: %s", self.peer, exc.__cause__ or exc)
            return b""

    async def _read_loop(self) -> None:
        # The client's preface and SETTINGS must come within HANDSHAKE_TIMEOUT
        # (h2 buffers a whole frame before it checks its length).
        with trio.move_on_after(HANDSHAKE_TIMEOUT):
            while not self.settled:
                if not await self._process(await self._receive()):
                    return
        if not self.settled:
            log.debug("etcd gRPC: %s sent no HTTP/2 preface in %s s", self.peer, HANDSHAKE_TIMEOUT)
            return
        while await self._process(await self._receive()):
            pass

    async def _process(self, data: bytes) -> bool:
        """Handle bytes from the client; False when the connection is over."""
        if not data:
            return False
        try:
            events = self.h2.receive_data(data)
            for event in events:
                self._on_event(event)
        except h2.exceptions.ProtocolError as exc:
            log.debug("etcd gRPC: closing the connection from %s: %s", self.peer, exc)
            await self.flush()  # the GOAWAY h2 queued
            return False
        await self.flush()
        return not self.broken

    # -- writing ----------------------------------------------------------

    async def flush(self) -> None:
        """Send what ``h2`` queued. A flush that finds another writing returns:
        the writer sends until nothing is queued."""
        if self.writing or self.broken:
            return
        self.writing = True
        try:
            while data := self.h2.data_to_send():
                with trio.CancelScope(shield=True, deadline=trio.current_time() + WRITE_TIMEOUT) as scope:
                    await self.stream.send_all(data)
                if scope.cancelled_caught:
                    raise trio.BrokenResourceError(f"a write took more than {WRITE_TIMEOUT} s")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("etcd gRPC: dropping the connection from %s: %s", self.peer, exc.__cause__ or exc)
            self.broken = True
            if self.nursery is not None:
                self.nursery.cancel_scope.cancel()
        finally:
            self.writing = False

    def _ack(self, length: int, stream_id: int) -> None:
        if length:
            self.h2.acknowledge_received_data(length, stream_id)

    def _respond(self, stream_id: int, headers: Iterable[tuple[str, str]]) -> None:
        """Queue the last HEADERS of a stream; reset it if the client still sends."""
        try:
            self.h2.send_headers(stream_id, headers, end_stream=True)
            stream = self.h2.streams.get(stream_id)
            if stream is not None and not stream.closed:
                self.h2.reset_stream(stream_id, ErrorCodes.NO_ERROR)
        except h2.exceptions.ProtocolError:  # the stream or the connection is gone
            pass

    def _refuse(self, stream_id: int, error: EtcdError) -> None:
        """A trailers-only answer for a stream that got no call."""
        self._respond(stream_id, (*_RESPONSE_HEADERS, ("grpc-status", str(error.number)),
                                  ("grpc-message", grpc_message(error.message))))

    def _end(self, call: _Call, error: EtcdError | None) -> None:
        """Queue the trailers of ``call`` (OK, or ``error``) and forget it."""
        if call.done:
            return
        call.done = True
        trailers = [("grpc-status", "0")] if error is None else [
            ("grpc-status", str(error.number)), ("grpc-message", grpc_message(error.message))]
        if call.headers_sent:
            self._respond(call.stream_id, trailers)
        else:
            self._respond(call.stream_id, [*_RESPONSE_HEADERS, *trailers])
        self._forget(call)

    def _forget(self, call: _Call) -> None:
        """Release everything ``call`` holds: its slot, held bytes, task and channel."""
        call.done = True
        if self.calls.pop(call.stream_id, None) is not call:
            return
        self.server.active -= 1
        call.overflow.clear()
        held, call.held = call.held, 0
        try:
            self._ack(held, call.stream_id)
        except h2.exceptions.ProtocolError:
            pass
        call.scope.cancel()
        call.wake()
        if call.inbound is not None:
            call.inbound.close()

    def close(self) -> None:
        """Answer every call UNAVAILABLE and queue GOAWAY (the server stops)."""
        for call in list(self.calls.values()):
            call.scope.cancel()
            self._end(call, _stopped())
        try:
            self.h2.close_connection()
        except h2.exceptions.ProtocolError:
            pass

    # -- events (reader task) -----------------------------------------------

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            self._on_data(event)
        elif isinstance(event, h2.events.RequestReceived):
            self._on_request(event)
        elif isinstance(event, h2.events.StreamEnded):
            self._on_end(event.stream_id)
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id:
                call = self.calls.get(event.stream_id)
                if call is not None:
                    call.wake()
            else:
                for call in self.calls.values():
                    call.wake()
        elif isinstance(event, h2.events.StreamReset):
            call = self.calls.get(event.stream_id)
            if call is not None:
                self._forget(call)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.settled = True
            for call in self.calls.values():
                call.wake()
        elif isinstance(event, h2.events.ConnectionTerminated):
            log.debug("etcd gRPC: %s sent GOAWAY (%s)", self.peer, event.error_code)
        # Pings are answered by h2; other events need nothing.

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        headers = {_text(name): _text(value) for name, value in event.headers}
        server = self.server
        if headers.get(":method") != "POST":
            self._respond(stream_id, [(":status", "405")])
            return
        if not headers.get("content-type", "").startswith("application/grpc"):
            self._respond(stream_id, [(":status", "415")])
            return
        if server.closing:
            self._refuse(stream_id, _stopped())
            return
        path = headers.get(":path", "")
        rpc = RPCS.get(path)
        if rpc is None:
            self._refuse(stream_id, not_served(path))
            return
        if server.active >= server.max_rpcs:
            self._refuse(stream_id, EtcdError("RESOURCE_EXHAUSTED", "Concurrent RPC limit exceeded!"))
            return
        timeout = parse_timeout(headers.get("grpc-timeout"))
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        call = _Call(stream_id, rpc, deadline)
        self.calls[stream_id] = call
        server.active += 1
        if rpc.stream:
            send, receive = trio.open_memory_channel[Any](STREAM_BUFFER)
            call.inbound = send
            assert self.nursery is not None
            self.nursery.start_soon(self._run_stream, call, receive, name=f"dengine etcd {rpc.method} stream")

    def _on_data(self, event: h2.events.DataReceived) -> None:
        stream_id = event.stream_id
        length = event.flow_controlled_length
        call = self.calls.get(stream_id)
        if call is None:
            self._ack(length, stream_id)
            return
        call.buffer += event.data
        if len(call.buffer) >= 5:
            self._parse(call)
        if call.overflow and not call.done:
            call.held += length
            if not call.draining:
                call.draining = True
                assert self.nursery is not None
                self.nursery.start_soon(self._drain, call)
        else:
            self._ack(length, stream_id)

    def _parse(self, call: _Call) -> None:
        """Take every whole message out of ``call.buffer``."""
        buf = call.buffer
        limit = self.server.max_message_bytes
        decode = M[call.rpc.request].FromString
        while len(buf) >= 5 and not call.done:
            flag = buf[0]
            size = int.from_bytes(buf[1:5], "big")
            if flag:
                self._reject(call, EtcdError("UNIMPLEMENTED", "compression is not supported") if flag == 1
                             else EtcdError("INTERNAL", f"grpc: invalid compressed flag {flag}"))
                return
            if size > limit:
                self._reject(call, EtcdError("RESOURCE_EXHAUSTED",
                                             f"Received message larger than max ({size} vs. {limit})"))
                return
            end = 5 + size
            if len(buf) < end:
                return
            data = bytes(buf[5:end])
            del buf[:end]
            try:
                request = decode(data)
            except Exception:
                self._reject(call, EtcdError("INTERNAL", "grpc: error unmarshalling request"))
                return
            if call.inbound is None:
                if call.requests:
                    self._reject(call, EtcdError("INTERNAL", "grpc: a unary call sent more than one request"))
                    return
                call.requests.append(request)
            else:
                self._deliver(call, call.inbound, request)

    def _deliver(self, call: _Call, inbound: trio.MemorySendChannel[Any], request: Any) -> None:
        if call.overflow or call.draining:
            call.overflow.append(request)
            return
        try:
            inbound.send_nowait(request)
        except trio.WouldBlock:
            call.overflow.append(request)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the service stopped reading: the stream ends when it returns

    def _reject(self, call: _Call, error: EtcdError) -> None:
        log.debug("etcd gRPC: %s stream %d: %s", self.peer, call.stream_id, error.message)
        self._end(call, error)

    def _on_end(self, stream_id: int) -> None:
        call = self.calls.get(stream_id)
        if call is None or call.done:
            return
        call.remote_ended = True
        if call.buffer:
            self._reject(call, EtcdError("INTERNAL", "grpc: the request ended inside a message"))
        elif call.inbound is not None:
            if not call.draining:
                call.inbound.close()
        elif len(call.requests) != 1:
            self._reject(call, EtcdError("INTERNAL", "grpc: a unary call sent no request"))
        else:
            assert self.nursery is not None
            self.nursery.start_soon(self._run_unary, call, name=f"dengine etcd {call.rpc.method}")

    async def _drain(self, call: _Call) -> None:
        """Feed a full stream's waiting requests to its service, then give back their bytes."""
        inbound = call.inbound
        assert inbound is not None
        try:
            while call.overflow:
                try:
                    await inbound.send(call.overflow[0])
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    call.overflow.clear()
                    break
                call.overflow.popleft()
        finally:
            call.draining = False
        if call.done:
            return
        held, call.held = call.held, 0
        self._ack(held, call.stream_id)
        if call.remote_ended:
            inbound.close()
        await self.flush()

    # -- calls ------------------------------------------------------------

    async def _send_message(self, call: _Call, payload: bytes) -> None:
        """Queue one response message of ``call``, waiting for the client's window."""
        conn = self.h2
        stream_id = call.stream_id
        if not call.headers_sent:
            conn.send_headers(stream_id, _RESPONSE_HEADERS)
            call.headers_sent = True
        frame = memoryview(b"\x00" + len(payload).to_bytes(4, "big") + payload)
        offset, total = 0, len(frame)
        while offset < total:
            window = conn.local_flow_control_window(stream_id)
            if window <= 0:
                call.window = event = trio.Event()
                await self.flush()
                await event.wait()
                if call.done:
                    raise trio.BrokenResourceError("the stream ended")
                continue
            size = min(window, conn.max_outbound_frame_size, total - offset)
            conn.send_data(stream_id, frame[offset:offset + size])
            offset += size

    def _too_large(self, payload: bytes) -> EtcdError | None:
        limit = self.server.max_message_bytes
        if len(payload) > limit:
            return EtcdError("RESOURCE_EXHAUSTED", f"Sent message larger than max ({len(payload)} vs. {limit})")
        return None

    async def _run_unary(self, call: _Call) -> None:
        server = self.server
        server.unary_running += 1
        try:
            error: EtcdError | None = None
            with call.scope:
                try:
                    response = await getattr(server.service, call.rpc.method)(call.requests[0])
                    payload = response.SerializeToString()
                except Exception as exc:
                    error = _answer(exc)
                else:
                    error = self._too_large(payload)
                    if error is None:
                        await self._send_message(call, payload)
            if call.scope.cancelled_caught:
                error = _deadline_exceeded()  # (a reset or a stop ended the call already)
            self._end(call, error)
            await self.flush()
        except (h2.exceptions.ProtocolError, trio.BrokenResourceError):
            self._forget(call)
        finally:
            server.unary_running -= 1
            if not server.unary_running:
                server.idle.set()

    async def _run_stream(self, call: _Call, requests: trio.MemoryReceiveChannel[Any]) -> None:
        error: EtcdError | None = None
        try:
            with call.scope:
                try:
                    async with requests:
                        await getattr(self.server.service, call.rpc.method)(
                            requests, functools.partial(self._send_response, call))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                except Exception as exc:
                    if not call.done:
                        error = _answer(exc)
            if call.scope.cancelled_caught:
                error = _deadline_exceeded()  # (a reset or a stop ended the call already)
            self._end(call, error)
            await self.flush()
        except h2.exceptions.ProtocolError:
            self._forget(call)

    async def _send_response(self, call: _Call, response: Any) -> None:
        """The ``send`` a stream's service method is given."""
        payload = response.SerializeToString()
        error = self._too_large(payload)
        if error is not None:
            raise error
        if call.lock is None:
            call.lock = trio.Lock()
        async with call.lock:
            if call.done:
                raise trio.BrokenResourceError("the stream ended")
            try:
                await self._send_message(call, payload)
            except h2.exceptions.ProtocolError:
                self._forget(call)
                raise trio.BrokenResourceError("the stream ended") from None
        await self.flush()


class GrpcServer:
    """A running gRPC face: ``port`` is the bound port."""

    def __init__(self, service: EtcdService, port: int, max_rpcs: int, max_message_bytes: int) -> None:
        self.service = service
        self.port = port
        self.max_rpcs = max_rpcs
        self.max_message_bytes = max_message_bytes
        self.connections: set[_Connection] = set()
        #: Calls (streams included) in flight on every connection.
        self.active = 0
        self.unary_running = 0
        self.idle = trio.Event()
        self.closing = False

    async def _handle(self, stream: trio.abc.Stream) -> None:
        conn = _Connection(self, stream, _peer(stream))
        self.connections.add(conn)
        await conn.serve()

    async def _stop(self) -> None:
        self.closing = True
        with trio.move_on_after(STOP_GRACE):
            while self.unary_running:
                self.idle = trio.Event()
                await self.idle.wait()
        async with trio.open_nursery() as nursery:
            for conn in list(self.connections):
                conn.close()
                nursery.start_soon(conn.flush)


def _peer(stream: trio.abc.Stream) -> str:
    transport = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if isinstance(transport, trio.SocketStream):
        try:
            host, port = transport.socket.getpeername()[:2]
            return format_address(host, port)
        except OSError:
            pass
    return "a client"


def _ssl_context(cert: str, key: str, ca: str | None) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert, key)
        if ca:
            ctx.load_verify_locations(ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"the etcd API cannot load its TLS files ({cert}, {key}, {ca}): {exc}") from None
    ctx.set_alpn_protocols(["h2"])
    return ctx


@asynccontextmanager
async def open_grpc_server(
    service: EtcdService,
    address: str,
    *,
    tls: tuple[str, str, str | None] | None = None,
    max_rpcs: int = DEFAULT_MAX_RPCS,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> AsyncIterator[GrpcServer]:
    """Serve etcd's gRPC API for ``service`` at ``address`` (``host:port``)
    until the block exits. ``tls``: (certificate, key, CA or None) paths;
    with a CA, clients must present a certificate it signed."""
    if max_rpcs < 1 or max_message_bytes < 1:
        raise ConfigError("max_rpcs and max_message_bytes must be at least 1")
    ssl_context = _ssl_context(*tls) if tls is not None else None
    host, port = parse_address(address)
    try:
        sockets = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise AddressInUse(f"cannot serve the etcd API at {address}: {exc.strerror or exc}") from None
    bound = [format_address(*s.socket.getsockname()[:2]) for s in sockets]
    listeners: list[trio.abc.Listener[Any]] = list(sockets)
    if ssl_context is not None:
        listeners = [trio.SSLListener(s, ssl_context, https_compatible=False) for s in sockets]
    server = GrpcServer(service, sockets[0].socket.getsockname()[1], max_rpcs, max_message_bytes)
    accepting = trio.CancelScope()

    async def accept(task_status: trio.TaskStatus[list[trio.abc.Listener[Any]]] = trio.TASK_STATUS_IGNORED) -> None:
        with accepting:
            await trio.serve_listeners(server._handle, listeners, handler_nursery=nursery, task_status=task_status)

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(accept)
            log.info("etcd gRPC API (h2) at %s", ", ".join(bound))
            try:
                yield server
            finally:
                accepting.cancel()
                with trio.CancelScope(shield=True):
                    await server._stop()
                nursery.cancel_scope.cancel()
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)

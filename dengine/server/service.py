"""The client endpoint: client protocol connections -> the engine.

Rules of this service (docs/protocol.md is the wire contract):

* One task per listener accepts; one nursery per connection. A connection
  first passes the client handshake (``kind = "client"``, same protocol
  version and cluster id), bounded by ``handshake_timeout``; a client that
  connects and sends nothing is closed when it passes.
* At most ``max_connections`` connections are served at once. One more is
  answered with a handshake refusal ``RESOURCE_EXHAUSTED`` and closed; the
  connections already served are not touched.
* After the handshake a reader decodes every complete request of one
  receive and dispatches them in the same pass: ops that need no waiting
  (``cancel``, ``status``, ``members``, ``leader``) are answered inline;
  every other request is queued for the connection's workers (a worker
  serves one request at a time; one is started only when none is idle), all
  queued before any of them runs, so the writes of one receive reach the
  engine together (one Raft entry) and many are in flight on one
  connection; at most
  ``max_inflight`` per connection (the reader then stops reading: TCP
  backpressure). One writer sends everything queued on the connection's
  bounded send queue as a batch of frames in one shielded ``send_all``,
  bounded by ``write_timeout`` (a client that stops reading is closed).
  Queueing a response never switches tasks unless the queue is full.
* A final response waits for room on the send queue. A stream item never
  waits: if the queue is full the client is not keeping up, and that stream
  is ended with a CANCELED event and a ``WATCH_BUFFER_OVERFLOW`` error
  (events are never dropped silently). The server and its other clients
  are unaffected.
* A request that cannot be read (unknown op, wrong field types) gets an
  error for its id; a frame that breaks the framing or is not a request at
  all gets a connection-level error (nil id) and the connection is closed.
  Either way only that connection is affected.
* ``NotLeader`` from the engine carries the leader's *peer* address; the
  service replaces it with the leader's *client* address from
  ``cluster.client_addresses`` (nil when unknown).
* Stop (:meth:`ClientService.stop`): listeners close, readers stop, streams
  end with ``UNAVAILABLE`` "server stopping", requests in flight finish and
  their responses are flushed, all under a deadline, then everything is
  cancelled.
* Accounting (``[metrics] enabled``): every request is counted by op and
  outcome (``"OK"`` or the error code's name; an op the protocol does not
  know is ``"invalid"``), and a unary op's time from its worker taking it to
  its answer being queued goes into that op's histogram; a stream is counted
  when it ends, with no duration (``ServerStatistics.by_operation``).
"""

from __future__ import annotations

import errno
import logging
import math
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from dengine.api import LeaderInfo, Member, WatchEvent, WatchEventType
from dengine.embedded import Engine
from dengine.stats import RequestStatistics, RequestStats
from dengine.errors import (
    DengineError,
    EngineStopped,
    ErrorCode,
    InvalidArgument,
    NotLeader,
    ProtocolError,
    ResourceExhausted,
    Timeout,
    Unavailable,
)
from dengine.transport.client_protocol import (
    OPS,
    STATUS_ERROR,
    STATUS_ITEM,
    STATUS_OK,
    Request,
    RequestError,
    decode_request,
    decode_txn_request,
    encode_error,
    encode_kv,
    encode_lease_status,
    encode_scan,
    encode_txn_result,
    encode_leader,
    encode_member,
    encode_membership_change,
    encode_response,
    encode_status,
    encode_watch_event,
)
from dengine.transport.describe import describe_error, remote_name
from dengine.transport.framing import FrameDecoder, send_frames
from dengine.transport.handshake import (
    _first_frame,
    accept_handshake,
    decode_hello,
    encode_reply,
    refusal_for,
)

__all__ = ["ClientService", "ServerStatistics", "ServiceOptions"]

log = logging.getLogger("dengine.server")

_RECEIVE_SIZE = 256 * 1024
_ACCEPT_CAPACITY_ERRNOS = frozenset(e for e in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS) if e)
_ACCEPT_RETRY_DELAY = 0.1
_NETWORK_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, DengineError, trio.TooSlowError)
# A refusal is a courtesy: never wait long to deliver it.
_REFUSAL_TIMEOUT = 1.0


@attrs.frozen
class ServiceOptions:
    max_connections: int = 10000
    max_frame_size: int = 16 * 1024 * 1024
    handshake_timeout: float = 5.0
    idle_timeout: float = 0.0  # 0: never
    write_timeout: float = 10.0
    send_queue_size: int = 1024  # frames queued per connection
    max_inflight: int = 1024  # requests in flight per connection
    drain_timeout: float = 2.0


@attrs.frozen
class ServerStatistics:
    """Counters of the client endpoint (for tests and operators)."""

    connections_open: int
    connections_accepted: int
    connections_refused: int  # over max_connections
    handshake_failures: int
    protocol_errors: int  # connections closed for breaking the protocol
    idle_closed: int
    requests: int
    request_errors: int  # requests answered with an error
    streams_open: int
    slow_consumers: int  # streams ended / connections closed because a client did not read
    #: Requests by (op, outcome) and unary latency by op; None when ``[metrics] enabled`` is off.
    by_operation: RequestStatistics | None = None


#: "OK" or an error code's name, by code: the outcome label of a request.
_CODE_NAMES: dict[int, str] = {
    value: name for name, value in vars(ErrorCode).items() if name.isupper() and isinstance(value, int)
}


def _outcome(code: int) -> str:
    """The label of a request's outcome: ``"OK"`` or the error code's name."""
    return _CODE_NAMES.get(code, str(code)) if code else "OK"


@attrs.define
class _Counters:
    connections_open: int = 0
    connections_accepted: int = 0
    connections_refused: int = 0
    handshake_failures: int = 0
    protocol_errors: int = 0
    idle_closed: int = 0
    requests: int = 0
    request_errors: int = 0
    streams_open: int = 0
    slow_consumers: int = 0
    by_op: RequestStats | None = None
    _event: trio.Event = attrs.field(factory=trio.Event)

    def changed(self) -> None:
        self._event.set()
        self._event = trio.Event()

    def snapshot(self) -> ServerStatistics:
        fields = {f.name: getattr(self, f.name) for f in attrs.fields(ServerStatistics) if f.name != "by_operation"}
        return ServerStatistics(**fields, by_operation=self.by_op.snapshot() if self.by_op is not None else None)


class _SlowConsumer(Exception):
    """A stream's items do not fit in the send queue."""


class ClientService:
    """Serves the client protocol for one engine. Create it, ``start_soon``
    :meth:`serve_listener` for each bound listener, call :meth:`stop` to
    drain."""

    def __init__(
        self,
        engine: Engine,
        nursery: trio.Nursery,
        options: ServiceOptions,
        *,
        client_addresses: Mapping[int, str],
    ) -> None:
        self.engine = engine
        self.options = options
        self._nursery = nursery
        self._client_addresses = client_addresses
        self._counters = _Counters()
        #: Requests by op and outcome, unary latency (None: [metrics] enabled is off).
        self.requests: RequestStats | None = RequestStats() if engine.config.metrics.enabled else None
        self._counters.by_op = self.requests
        self._connections: set[_Connection] = set()
        self._stopping = False
        self._listener_scopes: list[trio.CancelScope] = []
        self._node_id = engine.config.node_id
        self._cluster_id = engine.config.cluster_id
        raft = engine.config.raft
        # What a client learns in the welcome (docs/protocol.md §2): the
        # limits it should check before sending, and the election timeout
        # its retries and keepalive are scaled to.
        # One backup at a time: each holds a whole encoded image in memory.
        self._backup_lock = trio.Lock()
        self._welcome_info: dict[str, Any] = {
            "max_key_size": raft.max_key_size,
            "max_value_size": raft.max_value_size,
            "max_frame_size": options.max_frame_size,
            "election_timeout_ms": round(raft.election_ticks * raft.tick_interval_ms),
        }

    # -- statistics ---------------------------------------------------------

    def statistics(self) -> ServerStatistics:
        return self._counters.snapshot()

    async def wait_statistics(self, predicate: Callable[[ServerStatistics], bool]) -> ServerStatistics:
        """Wait until ``predicate(statistics())`` holds; return those statistics."""
        while True:
            stats = self.statistics()
            if predicate(stats):
                return stats
            await self._counters._event.wait()

    def client_address_of(self, node_id: int | None) -> str | None:
        """A member's client address: configured (an override), this
        server's own, the replicated state's, or announced by the member."""
        if node_id is None:
            return None
        address = self._client_addresses.get(node_id)
        if address is None:
            held = self.engine._node.kv.members.get(node_id)
            address = held.client_address if held is not None else None
        return address

    def with_client_address(self, member: Member) -> Member:
        """``member`` with a client address: the one the replicated state
        records, else the configured / announced one."""
        if member.client_address is not None:
            return member
        return attrs.evolve(member, client_address=self.client_address_of(member.node_id))

    def members(self) -> tuple[Member, ...]:
        return tuple(self.with_client_address(m) for m in self.engine.members())

    # -- listeners ------------------------------------------------------------

    async def serve_listener(self, listener: trio.abc.Listener[trio.abc.Stream]) -> None:
        with trio.CancelScope() as scope:
            self._listener_scopes.append(scope)
            try:
                while True:
                    try:
                        stream = await listener.accept()
                    except OSError as exc:
                        if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                            raise
                        log.error("accept failed (%s); retrying in %ss", exc, _ACCEPT_RETRY_DELAY)
                        await trio.sleep(_ACCEPT_RETRY_DELAY)
                        continue
                    if len(self._connections) >= self.options.max_connections:
                        self._counters.connections_refused += 1
                        self._counters.changed()
                        self._nursery.start_soon(self._refuse, stream, name="dengine client refusal")
                        continue
                    conn = _Connection(self, stream)
                    self._connections.add(conn)
                    self._counters.connections_open += 1
                    self._counters.connections_accepted += 1
                    self._counters.changed()
                    self._nursery.start_soon(self._run_connection, conn, name="dengine client connection")
            finally:
                await trio.aclose_forcefully(listener)

    async def _run_connection(self, conn: _Connection) -> None:
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)
            self._counters.connections_open -= 1
            self._counters.changed()

    async def _refuse(self, stream: trio.abc.Stream) -> None:
        """Over the connection limit: read the hello (so closing does not reset
        the connection under the refusal), answer RESOURCE_EXHAUSTED, close."""
        err = ResourceExhausted(
            f"node {self._node_id} already serves its maximum of {self.options.max_connections} client connections"
        )
        try:
            with trio.move_on_after(min(self.options.handshake_timeout, _REFUSAL_TIMEOUT)):
                try:
                    decode_hello(await _first_frame(stream, FrameDecoder(self.options.max_frame_size)))
                except _NETWORK_ERRORS:
                    pass
                await send_frames(stream, [encode_reply(refusal_for(err))], write_timeout=_REFUSAL_TIMEOUT)
        except _NETWORK_ERRORS:
            pass
        finally:
            await trio.aclose_forcefully(stream)

    # -- stop -------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop accepting, end streams, let requests in flight finish and be
        answered (under ``drain_timeout``), then close every connection."""
        self._stopping = True
        for scope in self._listener_scopes:
            scope.cancel()
        for conn in list(self._connections):
            conn.begin_stop()
        with trio.move_on_after(self.options.drain_timeout):
            await self.wait_statistics(lambda s: s.connections_open == 0)
        for conn in list(self._connections):
            conn.cancel()


class _Connection:
    def __init__(self, service: ClientService, stream: trio.abc.Stream) -> None:
        self.service = service
        self.engine = service.engine
        self.stream = stream
        self.remote = remote_name(stream)
        # The send queue: response bodies for the writer, at most
        # send_queue_size of them; finals wait in _room when it is full.
        self._out: list[bytes] = []
        self._out_closed = False
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._room = trio.lowlevel.ParkingLot()
        self._slot_freed: trio.Event | None = None  # set when a request finishes
        # Requests waiting for a worker; idle workers park in _idle_workers.
        self._work: deque[Request] = deque()
        self._idle_workers = trio.lowlevel.ParkingLot()
        self._dispatching = True
        self._scope = trio.CancelScope()
        self._reader_scope = trio.CancelScope()
        self._idle_scope: trio.CancelScope | None = None
        self._inflight: dict[int, trio.CancelScope | None] = {}  # request id -> stream scope
        self._stream_tasks: dict[int, trio.CancelScope] = {}
        self._client_cancelled: set[int] = set()
        self._stopping = False
        self._requests = service.requests

    # -- control from the service ------------------------------------------------

    def begin_stop(self) -> None:
        self._stopping = True
        self._reader_scope.cancel()
        for scope in list(self._stream_tasks.values()):
            scope.cancel()

    def cancel(self) -> None:
        self._scope.cancel()

    # -- the connection ------------------------------------------------------------

    async def run(self) -> None:
        counters = self.service._counters
        opts = self.service.options
        decoder = FrameDecoder(opts.max_frame_size)
        with self._scope:
            try:
                try:
                    await accept_handshake(
                        self.stream,
                        decoder,
                        cluster_id=self.service._cluster_id,
                        node_id=self.service._node_id,
                        kind="client",
                        timeout=opts.handshake_timeout,
                        info=self.service._welcome_info,
                    )
                except _NETWORK_ERRORS as exc:
                    counters.handshake_failures += 1
                    counters.changed()
                    log.info("refused a client connection from %s: %s", self.remote, describe_error(exc))
                    return
                if self.service._stopping:
                    return
                async with trio.open_nursery() as outer:
                    outer.start_soon(self._writer, outer.cancel_scope)
                    try:
                        async with trio.open_nursery() as requests:
                            try:
                                await self._read(decoder, requests)
                            finally:
                                self._end_dispatch()
                            if self._stopping:
                                # Streams end with "stopping"; requests in flight finish.
                                for scope in list(self._stream_tasks.values()):
                                    scope.cancel()
                            else:
                                # The client went away, idled, or broke the protocol.
                                requests.cancel_scope.cancel()
                    finally:
                        self._close_queue()
            except _NETWORK_ERRORS as exc:
                log.info("client connection from %s ended: %s", self.remote, describe_error(exc))
            finally:
                await trio.aclose_forcefully(self.stream)

    async def _read(self, decoder: FrameDecoder, requests: trio.Nursery) -> None:
        """Read requests until the client goes away, the server stops, the
        connection idles out, or the client breaks the protocol (then the
        connection-level error is queued)."""
        counters = self.service._counters
        idle = self.service.options.idle_timeout
        data: bytes | bytearray = b""
        with self._reader_scope:
            while True:
                try:
                    bodies = decoder.feed(data)
                except ProtocolError as exc:
                    self._protocol_error(exc)
                    return
                for body in bodies:
                    try:
                        request = decode_request(body)
                    except RequestError as exc:
                        if exc.request_id is None:
                            self._protocol_error(exc.error)
                            return
                        counters.requests += 1
                        if self._requests is not None:
                            self._requests.count("invalid", _outcome(exc.error.code))
                        await self._reply_error(exc.request_id, exc.error)
                        continue
                    counters.requests += 1
                    await self._start(request, requests)
                if bodies:
                    counters.changed()
                with trio.CancelScope() as idle_scope:
                    self._idle_scope = idle_scope
                    if idle > 0 and not self._inflight:
                        idle_scope.deadline = trio.current_time() + idle
                    try:
                        data = await self.stream.receive_some(_RECEIVE_SIZE)
                    except _NETWORK_ERRORS as exc:
                        log.info("client %s: connection broke: %s", self.remote, describe_error(exc))
                        return
                    finally:
                        self._idle_scope = None
                if idle_scope.cancelled_caught:
                    counters.idle_closed += 1
                    counters.changed()
                    log.info("client %s: closing an idle connection", self.remote)
                    return
                if not data:
                    try:
                        decoder.close()
                    except ProtocolError as exc:
                        log.info("client %s: %s", self.remote, exc)
                    return

    def _protocol_error(self, exc: DengineError) -> None:
        counters = self.service._counters
        counters.protocol_errors += 1
        counters.changed()
        log.warning("client %s broke the protocol; closing the connection: %s", self.remote, exc)
        # If the queue is full it is not reading anyway.
        self._queue_nowait(encode_response(None, STATUS_ERROR, encode_error(exc)))

    # -- writer ------------------------------------------------------------------------

    async def _writer(self, scope: trio.CancelScope) -> None:
        """Send everything queued since the last write as one batch, until
        the queue is closed and empty."""
        opts = self.service.options
        try:
            while True:
                while not self._out:
                    if self._out_closed:
                        return
                    await self._writer_lot.park()
                batch, self._out = self._out, []
                if self._room:
                    self._room.unpark_all()
                await send_frames(self.stream, batch, write_timeout=opts.write_timeout)
        except Timeout:
            counters = self.service._counters
            counters.slow_consumers += 1
            counters.changed()
            log.warning("client %s stopped reading; closing the connection", self.remote)
            scope.cancel()
        except _NETWORK_ERRORS as exc:
            log.info("client %s: write failed: %s", self.remote, describe_error(exc))
            scope.cancel()
        finally:
            self._close_queue()

    def _close_queue(self) -> None:
        """No more responses: the writer sends what is queued and ends;
        responses queued later are dropped (the connection is going away)."""
        self._out_closed = True
        self._writer_lot.unpark_all()
        self._room.unpark_all()

    def _queue_nowait(self, body: bytes) -> bool:
        """Queue ``body`` for the writer; False if the queue is full. Once
        the queue is closed, bodies are dropped (True)."""
        if self._out_closed:
            return True
        out = self._out
        if len(out) >= self.service.options.send_queue_size:
            return False
        out.append(body)
        if self._writer_lot:
            self._writer_lot.unpark()
        return True

    async def _queue(self, body: bytes) -> None:
        """Queue a final response, waiting for room if the queue is full."""
        while not self._queue_nowait(body):
            await self._room.park()

    def _queue_item(self, body: bytes) -> None:
        if not self._queue_nowait(body):
            raise _SlowConsumer

    async def _reply_error(self, request_id: int, exc: DengineError) -> None:
        counters = self.service._counters
        counters.request_errors += 1
        counters.changed()
        leader_address = self.service.client_address_of(exc.leader_id) if isinstance(exc, NotLeader) else None
        await self._queue(encode_response(request_id, STATUS_ERROR, encode_error(exc, leader_address=leader_address)))

    # -- requests ---------------------------------------------------------------------------

    def _busy(self) -> None:
        if self._idle_scope is not None:
            self._idle_scope.deadline = math.inf

    def _maybe_idle(self) -> None:
        idle = self.service.options.idle_timeout
        if idle > 0 and not self._inflight and self._idle_scope is not None:
            self._idle_scope.deadline = trio.current_time() + idle

    async def _start(self, request: Request, requests: trio.Nursery) -> None:
        """Dispatch one request. Switches tasks only when the connection is
        at ``max_inflight`` or its send queue is full."""
        accounted = self._requests
        if request.op == "cancel":
            target = request.args["request_id"]
            scope = self._stream_tasks.get(target)
            if scope is not None:
                self._client_cancelled.add(target)
                scope.cancel()
            if accounted is not None:
                accounted.count("cancel", "OK")
            await self._queue(encode_response(request.id, STATUS_OK, {"canceled": scope is not None}))
            return
        if request.id in self._inflight:
            if accounted is not None:
                accounted.count(request.op, _outcome(ErrorCode.INVALID_ARGUMENT))
            await self._reply_error(
                request.id, InvalidArgument(f"request id {request.id} is already in flight on this connection")
            )
            return
        inline = _INLINE.get(request.op)
        if inline is not None:
            started = time.perf_counter() if accounted is not None else 0.0
            try:
                result = inline(self, request.args)
            except DengineError as exc:
                err = _public(exc)
                if accounted is not None:
                    accounted.observe(request.op, _outcome(err.code), time.perf_counter() - started)
                await self._reply_error(request.id, err)
            else:
                if accounted is not None:
                    accounted.observe(request.op, "OK", time.perf_counter() - started)
                await self._queue(encode_response(request.id, STATUS_OK, result))
            return
        while len(self._inflight) >= self.service.options.max_inflight:
            self._slot_freed = event = trio.Event()
            await event.wait()
        self._inflight[request.id] = None
        self._busy()
        self._work.append(request)
        if self._idle_workers:
            self._idle_workers.unpark()
        else:
            requests.start_soon(self._worker, name="dengine request worker")

    async def _worker(self) -> None:
        """Serve queued requests one at a time; park when there are none.
        Workers are started only when none is idle, so a connection has as
        many as it has had requests in flight at once."""
        work = self._work
        while True:
            while work:
                await self._serve(work.popleft())
            if not self._dispatching:
                return
            await self._idle_workers.park()

    def _end_dispatch(self) -> None:
        """The reader is done: idle workers end once the queue is empty."""
        self._dispatching = False
        self._idle_workers.unpark_all()

    async def _serve(self, request: Request) -> None:
        try:
            if OPS[request.op].stream:
                await self._serve_stream(request)
            else:
                accounted = self._requests
                started = time.perf_counter() if accounted is not None else 0.0
                try:
                    result = await _UNARY[request.op](self, request.args)
                except DengineError as exc:
                    err = _public(exc)
                    if accounted is not None:
                        accounted.observe(request.op, _outcome(err.code), time.perf_counter() - started)
                    await self._reply_error(request.id, err)
                else:
                    if accounted is not None:
                        accounted.observe(request.op, "OK", time.perf_counter() - started)
                    await self._queue(encode_response(request.id, STATUS_OK, result))
        finally:
            del self._inflight[request.id]
            if self._slot_freed is not None:
                self._slot_freed.set()
                self._slot_freed = None
            self._maybe_idle()

    async def _serve_stream(self, request: Request) -> None:
        counters = self.service._counters
        counters.streams_open += 1
        counters.changed()
        scope = trio.CancelScope()
        self._stream_tasks[request.id] = scope
        final: DengineError | None = None
        try:
            with scope:
                if self._stopping:
                    scope.cancel()
                try:
                    await _STREAMS[request.op](self, request)
                except _SlowConsumer:
                    counters.slow_consumers += 1
                    counters.changed()
                    log.warning("client %s does not keep up with stream %d (%s); ending it",
                                self.remote, request.id, request.op)
                    final = _SlowStream(request.op)
                except DengineError as exc:
                    final = _public(exc)
            if scope.cancelled_caught:
                # Cancelled by the client (its cancel was answered) or by a stop.
                final = None if request.id in self._client_cancelled else EngineStopped(
                    f"node {self.service._node_id} is stopping"
                )
            if self._requests is not None:
                self._requests.count(request.op, "OK" if final is None else _outcome(final.code))
            if final is None and not scope.cancelled_caught:
                await self._queue(encode_response(request.id, STATUS_OK, {}))  # the server ended it cleanly
            elif final is not None:
                if request.op == "watch" and isinstance(final, _SlowStream):
                    canceled = WatchEvent(WatchEventType.CANCELED, b"", b"", None, 0, ErrorCode.WATCH_BUFFER_OVERFLOW)
                    await self._queue(encode_response(request.id, STATUS_ITEM, encode_watch_event(canceled)))
                await self._reply_error(request.id, final)
        finally:
            self._stream_tasks.pop(request.id, None)
            self._client_cancelled.discard(request.id)
            counters.streams_open -= 1
            counters.changed()


class _SlowStream(Unavailable):
    code = ErrorCode.WATCH_BUFFER_OVERFLOW

    def __init__(self, op: str) -> None:
        super().__init__(f"the {op} stream was ended because the client did not read it fast enough")


def _public(exc: DengineError) -> DengineError:
    return exc


def _seconds(timeout_ms: int | None) -> float | None:
    if timeout_ms is None:
        return None
    if timeout_ms == 0:
        raise InvalidArgument("timeout_ms must be greater than 0")
    return timeout_ms / 1000


def _ttl(ttl_ms: int | None) -> float | None:
    """Seconds whose validate_ttl() is exactly ``ttl_ms`` again."""
    if ttl_ms is None:
        return None
    if ttl_ms == 0:
        raise InvalidArgument("ttl_ms must be greater than 0")
    seconds = ttl_ms / 1000
    while math.ceil(seconds * 1000) > ttl_ms:
        seconds = math.nextafter(seconds, 0.0)
    return seconds


# -- unary operations -----------------------------------------------------------------


async def _put(conn: _Connection, a: dict[str, Any]) -> dict[str, Any]:
    rev = await conn.engine.client.put(a["key"], a["value"], ttl=_ttl(a["ttl_ms"]), lease=a["lease"] or 0,
                                       timeout=_seconds(a["timeout_ms"]))
    return {"revision": rev}


async def _get(conn: _Connection, a: dict[str, Any]) -> dict[str, Any]:
    kv = await conn.engine.client.get_kv(a["key"], consistency=a["consistency"], timeout=_seconds(a["timeout_ms"]))
    return encode_kv(kv)


async def _txn(conn: _Connection, a: dict[str, Any]) -> dict[str, Any]:
    compare, success, failure = decode_txn_request(a)
    result = await conn.engine.client.txn(compare, success, failure, timeout=_seconds(a["timeout_ms"]))
    return encode_txn_result(result, success if result.succeeded else failure)


async def _lease_grant(conn: _Connection, a: dict[str, Any]) -> dict[str, Any]:
    ttl = _ttl(a["ttl_ms"])
    assert ttl is not None
    lease = await conn.engine.client.grant_lease(ttl, lease_id=a["id"] or 0, timeout=_seconds(a["timeout_ms"]))
    return {"id": lease.id, "ttl_ms": round(lease.ttl * 1000)}


async def _lease_revoke(conn: _Connection, a: dict[str, Any]) -> dict[str, Any]:
    await conn.engine.client.revoke_lease(a["id"], timeout=_seconds(a["timeout_ms"]))
    return {}


async def _lease_keep_alive(conn: _Connection, a: dict[str, Any]) -> dict[str, Any]:
    remaining = await conn.engine.client.keep_alive(a["id"], timeout=_seconds(a["timeout_ms"]))
    return {"ttl_ms": int(remaining * 1000)}


async def _lease_ttl(conn: _Connection, a: dict[str, Any]) -> dict[str, Any]:
    status = await conn.engine.client.lease_time_to_live(a["id"], keys=bool(a["keys"]),
                                                         timeout=_seconds(a["timeout_ms"]))
    return encode_lease_status(status)


async def _lease_list(conn: _Connection, a: dict[str, Any]) -> dict[str, Any]:
    leases = await conn.engine.client.leases(timeout=_seconds(a["timeout_ms"]))
    return {"leases": [[lease.id, round(lease.ttl * 1000)] for lease in leases]}


async def _get_many(conn: _Connection, a: dict[str, Any]) -> dict[str, Any]:
    values = await conn.engine.client.get_many(a["keys"], consistency=a["consistency"], timeout=_seconds(a["timeout_ms"]))
    return {"values": values}


async def _delete(conn: _Connection, a: dict[str, Any]) -> dict[str, Any]:
    return {"deleted": await conn.engine.client.delete(a["key"], timeout=_seconds(a["timeout_ms"]))}


async def _cas(conn: _Connection, a: dict[str, Any]) -> dict[str, Any]:
    swapped = await conn.engine.client.compare_and_swap(
        a["key"], expected=a["expected"], new=a["new"], ttl=_ttl(a["ttl_ms"]), timeout=_seconds(a["timeout_ms"])
    )
    return {"swapped": swapped}


def _scan_options(a: dict[str, Any]) -> dict[str, Any]:
    kw: dict[str, Any] = {"timeout": _seconds(a["timeout_ms"]), "limit": a["limit"] or None,
                          "keys_only": bool(a["keys_only"]), "count_only": bool(a["count_only"])}
    if a["consistency"] is not None:
        kw["consistency"] = a["consistency"]
    return kw


async def _scan(conn: _Connection, a: dict[str, Any]) -> dict[str, Any]:
    return encode_scan(await conn.engine.client.scan_prefix(a["prefix"], **_scan_options(a)))


async def _scan_range(conn: _Connection, a: dict[str, Any]) -> dict[str, Any]:
    return encode_scan(await conn.engine.client.scan_range(a["start"], a["end"], **_scan_options(a)))


def _status(conn: _Connection, a: dict[str, Any]) -> dict[str, Any]:
    status = attrs.evolve(conn.engine.status(), members=conn.service.members())
    return encode_status(status)


def _members(conn: _Connection, a: dict[str, Any]) -> dict[str, Any]:
    return {
        "members": [encode_member(m) for m in conn.service.members()],
        "leader_id": conn.engine.current_leader(),
    }


def _leader(conn: _Connection, a: dict[str, Any]) -> dict[str, Any]:
    info = LeaderInfo(leader_id=conn.engine.current_leader(), term=conn.engine.current_term())
    return encode_leader(info, conn.service.client_address_of(info.leader_id))


async def _add_member(conn: _Connection, a: dict[str, Any]) -> dict[str, Any]:
    member = await conn.engine.add_member(
        a["peer_address"], learner=a["learner"] is not False, node_id=a["node_id"],
        client_address=a["client_address"], timeout=_seconds(a["timeout_ms"]),
    )
    return {"member": encode_member(conn.service.with_client_address(member))}


async def _promote_member(conn: _Connection, a: dict[str, Any]) -> dict[str, Any]:
    member = await conn.engine.promote_member(a["node_id"], timeout=_seconds(a["timeout_ms"]))
    return {"member": encode_member(conn.service.with_client_address(member))}


async def _remove_member(conn: _Connection, a: dict[str, Any]) -> dict[str, Any]:
    await conn.engine.remove_member(a["node_id"], timeout=_seconds(a["timeout_ms"]))
    return {}


async def _update_member(conn: _Connection, a: dict[str, Any]) -> dict[str, Any]:
    member = await conn.engine.update_member(
        a["node_id"], peer_address=a["peer_address"], client_address=a["client_address"],
        timeout=_seconds(a["timeout_ms"]),
    )
    return {"member": encode_member(conn.service.with_client_address(member))}


_UNARY: dict[str, Callable[[_Connection, dict[str, Any]], Any]] = {
    "add_member": _add_member,
    "promote_member": _promote_member,
    "remove_member": _remove_member,
    "update_member": _update_member,
    "put": _put,
    "get": _get,
    "get_many": _get_many,
    "delete": _delete,
    "cas": _cas,
    "txn": _txn,
    "lease_grant": _lease_grant,
    "lease_revoke": _lease_revoke,
    "lease_keep_alive": _lease_keep_alive,
    "lease_ttl": _lease_ttl,
    "lease_list": _lease_list,
    "scan_prefix": _scan,
    "scan_range": _scan_range,
}

# Ops answered inline by the reader: they never wait.
_INLINE: dict[str, Callable[[_Connection, dict[str, Any]], dict[str, Any]]] = {
    "status": _status,
    "members": _members,
    "leader": _leader,
}


# -- streams ----------------------------------------------------------------------------


async def _watch_leader(conn: _Connection, request: Request) -> None:
    with conn.engine.leader_changed_notify() as changes:
        async for info in changes:
            body = encode_leader(info, conn.service.client_address_of(info.leader_id))
            conn._queue_item(encode_response(request.id, STATUS_ITEM, body))
    raise EngineStopped(f"node {conn.service._node_id} is stopping")


async def _watch(conn: _Connection, request: Request) -> None:
    """Items: ``{"created": true, "start_revision": n}``, then events; the
    stream ends (final ``ok``) after a CANCELED event."""
    a = request.args
    async with conn.engine.client.open_watch(
        a["key"], prefix=a["prefix"], prev_kv=a["prev_kv"], start_revision=a["start_revision"]
    ) as watch:
        created = {"created": True, "start_revision": watch.start_revision}
        conn._queue_item(encode_response(request.id, STATUS_ITEM, created))
        async for event in watch:
            conn._queue_item(encode_response(request.id, STATUS_ITEM, encode_watch_event(event)))
            if event.type == WatchEventType.CANCELED:
                return
    raise EngineStopped(f"node {conn.service._node_id} is stopping")  # pragma: no cover - iteration ends on CANCELED


async def _watch_members(conn: _Connection, request: Request) -> None:
    """Items: one membership change each (revision, kind, node_id, members)."""
    with conn.engine.watch_members() as changes:
        async for change in changes:
            members = tuple(conn.service.with_client_address(m) for m in change.members)
            body = encode_membership_change(attrs.evolve(change, members=members))
            conn._queue_item(encode_response(request.id, STATUS_ITEM, body))
    raise EngineStopped(f"node {conn.service._node_id} is stopping")


_SNAPSHOT_CHUNK = 256 * 1024


async def _snapshot(conn: _Connection, request: Request) -> None:
    """A backup: first ``{"revision", "size", "crc32", "cluster_id"}``, then
    ``{"chunk": bin}`` items of the image in order (each waits for room in
    the send queue: a slow reader slows the server down, nothing is
    dropped), then the final ``ok``. A server takes one backup at a time (a
    second waits), so at most one encoded image is held in memory."""
    async with conn.service._backup_lock:
        revision, data = await conn.engine.backup_image(timeout=_seconds(request.args["timeout_ms"]))
        header = {"revision": revision, "size": len(data), "crc32": zlib.crc32(data),
                  "cluster_id": conn.service._cluster_id}
        await conn._queue(encode_response(request.id, STATUS_ITEM, header))
        view = memoryview(data)
        for at in range(0, len(data), _SNAPSHOT_CHUNK):
            chunk = bytes(view[at:at + _SNAPSHOT_CHUNK])
            await conn._queue(encode_response(request.id, STATUS_ITEM, {"chunk": chunk}))


_STREAMS: dict[str, Callable[[_Connection, Request], Any]] = {
    "watch": _watch, "watch_leader": _watch_leader, "watch_members": _watch_members, "snapshot": _snapshot,
}

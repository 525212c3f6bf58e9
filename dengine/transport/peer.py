"""Raft peer traffic over TCP (optionally TLS).

Rules of this transport:

* Connections are one-way. Node A sends to node B only on the connection A
  opened to B's listen address; B sends to A on its own connection to A.
  Each side of a connection has one job, so neither end ever waits on the
  other's reading or writing.
* ``open_peer_transport`` binds its listeners *before* it yields (port 0
  works; ``listen_address`` is the bound one) and owns a nursery: one accept
  loop per listener, one task per inbound connection, one sender task per
  peer. Leaving the ``async with`` cancels them all; nothing outlives it.
* Outbound: ``send`` never blocks (see dengine.transport.base). A peer's
  sender connects lazily, when it has something to send, keeps ONE
  connection, and writes everything queued with one ``send_all``. It also
  reads that connection: the peer never writes on it, so end-of-file (or
  any byte) means it is dead or broken, and it is closed at once rather
  than discovered on a later write.
* A failed connect drops the batch that wanted it, then the peer is in
  backoff: capped exponential, jittered, and every message queued for it
  meanwhile is dropped (counted ``dropped_unreachable``) -- stale Raft
  messages are worth nothing, and Raft will send fresh ones. A connection
  from that peer (it restarted, it introduces itself) ends the backoff at
  once: it is up, and a vote it needs must not wait out a long backoff.
* Inbound: after the handshake (same cluster id, a known peer id), frames
  are decoded to messages and put on the ONE inbound channel. If that
  channel is full the connection stops reading: TCP backpressure reaches
  the sender, whose queue then drops. A malformed or oversized frame, or a
  message whose ``frm``/``to`` do not match the handshake, closes that
  connection only (logged, counted ``protocol_errors``).
* An InstallSnapshot never travels as one frame: it is streamed in parts
  within the frame size (dengine.transport.snapshots), one part at a time,
  with whatever else is queued for that peer sent between parts, so
  heartbeats keep the follower's election timer quiet during a long
  transfer. Asked to send the snapshot it is already streaming, the sender
  goes on with it instead of starting over; a different snapshot replaces
  it. The receiver joins the parts (bounded by ``max_snapshot_size``) and
  hands the core one whole InstallSnapshot.
"""

from __future__ import annotations

import errno
import logging
import math
import random
import ssl
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager

import attrs
import trio

from dengine.codec import SnapshotPart, decode_wire, encode_message
from dengine.config.addresses import format_address, parse_address
from dengine.errors import DengineError, InvalidArgument, MemberRemoved, ProtocolError
from dengine.raft.messages import Heartbeat, HeartbeatResponse, InstallSnapshot, Message, SnapshotMeta
from dengine.transport.base import (
    Counters,
    PeerQueue,
    TransportCommon,
    check_queue_size,
    single_leaf,
)
from dengine.transport.describe import bind_error, describe_error, remote_name
from dengine.transport.framing import (
    DEFAULT_MAX_FRAME_SIZE,
    MAX_FRAME_SIZE_LIMIT,
    FrameDecoder,
    send_frames,
)
from dengine.transport.handshake import PROTOCOL_VERSION, Hello, accept_handshake, connect_handshake
from dengine.transport.snapshots import DEFAULT_MAX_SNAPSHOT_SIZE, SnapshotJoiner, snapshot_parts

__all__ = ["PeerTransport", "format_address", "open_peer_transport", "parse_address"]

logger = logging.getLogger("dengine.transport.peer")

_RECEIVE_SIZE = 256 * 1024
# accept() failures that mean "out of resources right now", not "broken".
_ACCEPT_CAPACITY_ERRNOS = frozenset(
    e for e in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS) if e is not None
)
_ACCEPT_RETRY_DELAY = 0.1
# What a dead or misbehaving network looks like to a sender or receiver.
_NETWORK_ERRORS = (OSError, trio.BrokenResourceError, trio.TooSlowError, DengineError)


def _check_timeout(value: float, name: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise InvalidArgument(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


@attrs.define(eq=False)
class _Peer:
    node_id: int
    address: str
    host: str
    port: int
    queue: PeerQueue
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    # True while connects keep failing: log the first failure loudly only.
    failing: bool = False
    # The snapshot being streamed to this peer, if any.
    outgoing: _OutgoingSnapshot | None = None
    # Set while the sender backs off; cancelled when the peer connects to us.
    backoff: trio.CancelScope | None = None


@attrs.define(eq=False)
class _OutgoingSnapshot:
    meta: SnapshotMeta
    size: int
    parts: Iterator[bytes]
    started: float
    sent_parts: int = 0


class PeerTransport(TransportCommon):
    """The running transport (from :func:`open_peer_transport`)."""

    _kind = "peer transport"

    def __init__(
        self,
        *,
        node_id: int,
        cluster_id: str,
        listen_addresses: tuple[str, ...],
        nursery: trio.Nursery,
        inbound_send: trio.MemorySendChannel[Message],
        inbound_receive: trio.MemoryReceiveChannel[Message],
        max_frame_size: int,
        max_snapshot_size: int,
        connect_timeout: float,
        handshake_timeout: float,
        write_timeout: float,
        queue_size: int,
        backoff: tuple[float, float],
        client_ssl_context: ssl.SSLContext | None,
        rng: random.Random,
        client_address: str | None = None,
    ) -> None:
        self._node_id = node_id
        self._client_address = client_address
        # Client addresses the other members announced in their handshakes.
        self.client_addresses: dict[int, str] = {}
        self._cluster_id = cluster_id
        self._listen_addresses = listen_addresses
        self._nursery = nursery
        self._inbound_send = inbound_send
        self._inbound_receive = inbound_receive
        self._max_frame_size = max_frame_size
        self._max_snapshot_size = max_snapshot_size
        self._connect_timeout = connect_timeout
        self._handshake_timeout = handshake_timeout
        self._write_timeout = write_timeout
        self._queue_size = queue_size
        self._backoff_min, self._backoff_max = backoff
        self._client_ssl_context = client_ssl_context
        self._rng = rng
        self._peers: dict[int, _Peer] = {}
        # Inbound connections per remote node id, so removing a peer closes them.
        self._inbound_scopes: dict[int, set[trio.CancelScope]] = {}
        self._counters = Counters()
        self._peer_stats = {}
        self._closed = False
        #: Node ids that were members and were removed: their handshakes are
        #: refused with MemberRemoved (set from the applied membership).
        self.removed_peers: set[int] = set()
        #: Set when a peer refused this node as removed.
        self.removed = trio.Event()

    # -- the Transport interface ----------------------------------------------

    @property
    def cluster_id(self) -> str:
        return self._cluster_id

    @property
    def listen_address(self) -> str:
        """The bound address (``host:port``; the real port if 0 was asked)."""
        return self._listen_addresses[0]

    @property
    def listen_addresses(self) -> tuple[str, ...]:
        return self._listen_addresses

    @property
    def peers(self) -> dict[int, str]:
        """The current peers (node id -> address), a copy."""
        return {nid: p.address for nid, p in self._peers.items()}

    def update_peers(self, peers: Mapping[int, str]) -> None:
        """Make ``peers`` (node id -> address) the peer set. New peers get a
        sender; removed peers lose theirs (queued messages dropped) and their
        inbound connections are closed; a changed address reconnects. This
        node's own id is ignored."""
        if self._closed:
            raise trio.ClosedResourceError("the peer transport is closed")
        wanted: dict[int, tuple[str, str, int]] = {}
        for nid, address in peers.items():
            if type(nid) is not int or nid < 0:
                raise InvalidArgument(f"a peer id must be a non-negative integer, got {nid!r}")
            if nid != self._node_id:
                wanted[nid] = (address, *parse_address(address, allow_port_zero=False))
        for nid, peer in list(self._peers.items()):
            if nid not in wanted or wanted[nid][0] != peer.address:
                self._remove_peer(peer, close_inbound=nid not in wanted)
        for nid, (address, host, port) in wanted.items():
            if nid not in self._peers:
                peer = _Peer(nid, address, host, port, PeerQueue(self._queue_size))
                self._peers[nid] = peer
                self._nursery.start_soon(self._run_sender, peer, name=f"dengine peer sender {nid}")

    # -- outbound -------------------------------------------------------------

    def _queue_for(self, node_id: int) -> PeerQueue | None:
        peer = self._peers.get(node_id)
        return None if peer is None else peer.queue

    def _remove_peer(self, peer: _Peer, *, close_inbound: bool) -> None:
        del self._peers[peer.node_id]
        self.client_addresses.pop(peer.node_id, None)
        self._peer_stats.pop(peer.node_id, None)
        peer.scope.cancel()
        dropped = peer.queue.clear()
        if dropped:
            self._counters.dropped_unreachable += dropped
        if close_inbound:
            for scope in self._inbound_scopes.pop(peer.node_id, ()):
                scope.cancel()
        self._counters.changed()

    def _drop_unreachable(self, count: int) -> None:
        self._counters.dropped_unreachable += count
        self._counters.changed()

    async def _run_sender(self, peer: _Peer) -> None:
        delay = self._backoff_min
        # A node that serves clients introduces itself to every peer at once
        # (its handshake carries its client address), not only when it first
        # has a message for it: followers learn each other's addresses too.
        introduce = self._client_address is not None
        with peer.scope:
            while True:
                batch = [] if introduce else await peer.queue.get_batch()
                try:
                    stream = await self._connect(peer)
                except _NETWORK_ERRORS as exc:
                    if isinstance(exc, MemberRemoved) and not self.removed.is_set():
                        logger.warning("node %d: node %d refused it as removed from the cluster",
                                       self._node_id, peer.node_id)
                        self.removed.set()
                    if introduce:
                        # The peer is not up yet: it introduces itself when it starts.
                        introduce = False
                        logger.debug("node %d: node %d is not reachable yet: %s",
                                     self._node_id, peer.node_id, describe_error(exc))
                        continue
                    self._counters.connect_failures += 1
                    self._drop_unreachable(len(batch))
                    level = logging.DEBUG if peer.failing else logging.WARNING
                    logger.log(level, "node %d: cannot reach node %d at %s: %s",
                               self._node_id, peer.node_id, peer.address, describe_error(exc))
                    peer.failing = True
                    await self._back_off(peer, delay)
                    delay = min(delay * 2, self._backoff_max)
                    continue
                introduce = False
                if peer.failing:
                    logger.info("node %d: connected to node %d at %s", self._node_id, peer.node_id, peer.address)
                peer.failing = False
                delay = self._backoff_min
                self._counters.connects += 1
                self._counters.changed()
                try:
                    await self._pump(peer, stream, batch)
                finally:
                    await trio.aclose_forcefully(stream)
                # _pump returns only when the connection is lost (removal and
                # shutdown cancel this task instead).
                self._counters.disconnects += 1
                self._counters.changed()

    async def _connect(self, peer: _Peer) -> trio.abc.Stream:
        with trio.fail_after(self._connect_timeout):
            tcp = await trio.open_tcp_stream(peer.host, peer.port)
        stream: trio.abc.Stream = tcp
        try:
            if self._client_ssl_context is not None:
                stream = trio.SSLStream(tcp, self._client_ssl_context, server_hostname=peer.host)
            hello = Hello(protocol_version=PROTOCOL_VERSION, cluster_id=self._cluster_id,
                          node_id=self._node_id, kind="peer", client_address=self._client_address)
            welcome = await connect_handshake(
                stream,
                FrameDecoder(self._max_frame_size),
                hello,
                expected_node_id=peer.node_id,
                timeout=self._handshake_timeout,
                peer=f"node {peer.node_id} at {peer.address}",
            )
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        self._learn_client_address(peer.node_id, welcome.client_address)
        return stream

    def _learn_client_address(self, peer_id: int, address: str | None) -> None:
        if address is None or self.client_addresses.get(peer_id) == address:
            return
        try:
            parse_address(address, allow_port_zero=False)
        except InvalidArgument as exc:
            logger.warning("node %d: node %d announced a client address that is not usable: %s",
                           self._node_id, peer_id, exc)
            return
        if peer_id in self._peers:  # only members; bounded by the membership
            self.client_addresses[peer_id] = address

    async def _back_off(self, peer: _Peer, delay: float) -> None:
        # Equal jitter: [delay/2, delay). Meanwhile nothing can reach the peer.
        with trio.move_on_after(delay * (0.5 + self._rng.random() / 2)) as peer.backoff:
            while True:
                self._drop_unreachable(len(await peer.queue.get_batch()))
        peer.backoff = None

    async def _pump(self, peer: _Peer, stream: trio.abc.Stream, batch: list[Message]) -> None:
        """Write batches on ``stream`` until it breaks or the peer closes it."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_for_close, peer, stream, nursery.cancel_scope)
            try:
                while True:
                    await self._write(peer, stream, batch)
                    batch = []
                    while peer.outgoing is not None:
                        await self._write_snapshot_part(peer, stream)
                        batch = peer.queue.take_all()  # what came meanwhile goes between parts
                        await self._write(peer, stream, batch)
                        batch = []
                    batch = await peer.queue.get_batch()
            except _NETWORK_ERRORS as exc:
                self._drop_unreachable(len(batch) + (peer.outgoing is not None))
                self._abandon_snapshot(peer, describe_error(exc))
                self.peer_stats(peer.node_id).lost()
                logger.warning("node %d: connection to node %d at %s failed: %s",
                               self._node_id, peer.node_id, peer.address, describe_error(exc))
            nursery.cancel_scope.cancel()

    def _abandon_snapshot(self, peer: _Peer, why: str) -> None:
        out = peer.outgoing
        if out is not None:
            peer.outgoing = None
            logger.warning("node %d: gave up sending the snapshot at index %d to node %d after %d parts: %s",
                           self._node_id, out.meta.index, peer.node_id, out.sent_parts, why)

    def _start_snapshot(self, peer: _Peer, msg: InstallSnapshot) -> None:
        meta = msg.snapshot.meta
        out = peer.outgoing
        if out is not None and out.meta == meta:
            return  # already on its way: going on beats starting over
        try:
            parts = snapshot_parts(msg, self._max_frame_size)
        except InvalidArgument as exc:
            self._counters.dropped_too_large += 1
            self._counters.changed()
            logger.error("node %d: cannot send a snapshot to node %d: %s", self._node_id, peer.node_id, exc)
            return
        self._abandon_snapshot(peer, f"the snapshot at index {meta.index} replaces it")
        peer.outgoing = _OutgoingSnapshot(meta, len(msg.snapshot.data), parts, time.monotonic())
        logger.info("node %d: sending the snapshot at index %d (%d bytes) to node %d",
                    self._node_id, meta.index, len(msg.snapshot.data), peer.node_id)

    async def _write_snapshot_part(self, peer: _Peer, stream: trio.abc.Stream) -> None:
        out = peer.outgoing
        assert out is not None
        body = next(out.parts, None)
        stats = self.peer_stats(peer.node_id)
        if body is None:
            peer.outgoing = None
            stats.sent_messages += 1
            logger.info("node %d: sent the snapshot at index %d (%d bytes, %d parts) to node %d in %.3f s",
                        self._node_id, out.meta.index, out.size, out.sent_parts, peer.node_id,
                        time.monotonic() - out.started)
            await trio.lowlevel.checkpoint()
            return
        written = await send_frames(stream, (body,), write_timeout=self._write_timeout)
        out.sent_parts += 1
        c = self._counters
        c.frames_sent += 1
        c.bytes_sent += written
        c.changed()
        stats.sent_bytes += written

    async def _write(self, peer: _Peer, stream: trio.abc.Stream, batch: list[Message]) -> None:
        bodies = []
        too_large = 0
        heartbeat = False
        for msg in batch:
            if type(msg) is Heartbeat:
                heartbeat = True
            elif type(msg) is InstallSnapshot:
                self._start_snapshot(peer, msg)
                continue
            body = encode_message(msg)
            if len(body) > self._max_frame_size:
                too_large += 1
                logger.error(
                    "node %d: dropped a %s of %d bytes for node %d: over the maximum frame size of %d bytes",
                    self._node_id, type(msg).__name__, len(body), peer.node_id, self._max_frame_size,
                )
            else:
                bodies.append(body)
        if too_large:
            self._counters.dropped_too_large += too_large
            self._counters.changed()
        if not bodies:
            return
        stats = self.peer_stats(peer.node_id)
        if heartbeat:
            stats.heartbeat_sent(trio.current_time())
        written = await send_frames(stream, bodies, write_timeout=self._write_timeout)
        c = self._counters
        c.frames_sent += len(bodies)
        c.bytes_sent += written
        c.batches_sent += 1
        c.changed()
        stats.sent_messages += len(bodies)
        stats.sent_bytes += written

    async def _watch_for_close(self, peer: _Peer, stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
        try:
            data = await stream.receive_some(1024)
        except _NETWORK_ERRORS as exc:
            logger.info("node %d: connection to node %d broke: %s", self._node_id, peer.node_id, describe_error(exc))
        else:
            if data:
                self._counters.protocol_errors += 1
                self._counters.changed()
                logger.warning("node %d: node %d wrote on an outbound-only connection; closing it",
                               self._node_id, peer.node_id)
            else:
                logger.info("node %d: node %d closed the connection", self._node_id, peer.node_id)
        scope.cancel()

    # -- inbound --------------------------------------------------------------

    async def _accept_loop(self, listener: trio.abc.Listener[trio.abc.Stream]) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                logger.error("node %d: accept failed (%s); retrying in %ss", self._node_id, exc, _ACCEPT_RETRY_DELAY)
                await trio.sleep(_ACCEPT_RETRY_DELAY)
                continue
            self._nursery.start_soon(self._handle_inbound, stream, name="dengine peer connection")

    async def _handle_inbound(self, stream: trio.abc.Stream) -> None:
        remote = remote_name(stream)
        decoder = FrameDecoder(self._max_frame_size)
        try:
            try:
                hello = await accept_handshake(
                    stream,
                    decoder,
                    cluster_id=self._cluster_id,
                    node_id=self._node_id,
                    kind="peer",
                    known_peers=self._peers,
                    removed_peers=self.removed_peers,
                    timeout=self._handshake_timeout,
                    client_address=self._client_address,
                )
            except _NETWORK_ERRORS as exc:
                self._counters.inbound_rejected += 1
                self._counters.changed()
                logger.warning("node %d: refused a peer connection from %s: %s",
                               self._node_id, remote, describe_error(exc))
                return
            peer_id = hello.node_id
            assert peer_id is not None  # a peer hello always names its node
            if peer_id not in self._peers:  # removed while we sent the welcome
                return
            self._learn_client_address(peer_id, hello.client_address)
            backoff = self._peers[peer_id].backoff
            if backoff is not None:  # it is up: dial it now, not when the backoff ends
                logger.debug("node %d: node %d connected; retrying it at once", self._node_id, peer_id)
                backoff.cancel()
            self._counters.inbound_connections += 1
            self._counters.changed()
            with trio.CancelScope() as scope:
                scopes = self._inbound_scopes.setdefault(peer_id, set())
                scopes.add(scope)
                try:
                    await self._receive_loop(stream, decoder, peer_id)
                except ProtocolError as exc:
                    self._counters.protocol_errors += 1
                    self._counters.changed()
                    logger.warning("node %d: closing the connection from node %d (%s): %s",
                                   self._node_id, peer_id, remote, exc)
                except _NETWORK_ERRORS as exc:
                    logger.info("node %d: connection from node %d broke: %s", self._node_id, peer_id, describe_error(exc))
                except trio.ClosedResourceError:
                    pass  # the inbound channel was closed: we are stopping
                finally:
                    scopes.discard(scope)
                    if not scopes and self._inbound_scopes.get(peer_id) is scopes:
                        del self._inbound_scopes[peer_id]
        finally:
            await trio.aclose_forcefully(stream)

    async def _receive_loop(self, stream: trio.abc.Stream, decoder: FrameDecoder, peer_id: int) -> None:
        inbound = self._inbound_send
        counters = self._counters
        node_id = self._node_id
        stats = self.peer_stats(peer_id)
        joiner = SnapshotJoiner(peer_id, self._max_snapshot_size)
        # Whatever the peer pipelined behind its hello.
        data: bytes | bytearray = b""
        while True:
            bodies = decoder.feed(data)
            for body in bodies:
                wire = decode_wire(body)
                if wire.frm != peer_id or wire.to != node_id:
                    raise ProtocolError(
                        f"node {peer_id} sent a {type(wire).__name__} from node {wire.frm} to node {wire.to}"
                    )
                msg: Message
                if isinstance(wire, SnapshotPart):
                    counters.frames_received += 1
                    joined = joiner.feed(wire)
                    if joined is None:
                        continue
                    logger.info("node %d: received the snapshot at index %d (%d bytes) from node %d",
                                node_id, wire.meta.index, wire.size, peer_id)
                    msg = joined
                else:
                    msg = wire
                if type(msg) is HeartbeatResponse:
                    stats.heartbeat_answered(trio.current_time())
                try:
                    inbound.send_nowait(msg)
                except trio.WouldBlock:
                    await inbound.send(msg)  # backpressure: stop reading
                if type(wire) is not SnapshotPart:
                    counters.frames_received += 1
            if bodies:
                counters.changed()
                stats.received_messages += len(bodies)
            data = await stream.receive_some(_RECEIVE_SIZE)
            if not data:
                decoder.close()  # raises if the peer stopped mid-frame
                logger.info("node %d: node %d closed its connection", node_id, peer_id)
                return
            counters.bytes_received += len(data)
            stats.received_bytes += len(data)


@asynccontextmanager
async def open_peer_transport(
    node_id: int,
    listen_address: str,
    peers: Mapping[int, str],
    cluster_id: str,
    *,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    max_snapshot_size: int = DEFAULT_MAX_SNAPSHOT_SIZE,
    connect_timeout: float = 5.0,
    handshake_timeout: float = 5.0,
    write_timeout: float = 10.0,
    queue_size: int = 4096,
    inbound_size: int | None = None,
    backoff_min: float = 0.05,
    backoff_max: float = 2.0,
    ssl_context: ssl.SSLContext | None = None,
    client_ssl_context: ssl.SSLContext | None = None,
    rng: random.Random | None = None,
    client_address: str | None = None,
) -> AsyncIterator[PeerTransport]:
    """Run the peer transport of ``node_id`` of ``cluster_id``.

    Binds ``listen_address`` (``host:port``, port 0 for any) before
    yielding. ``peers`` maps node ids to their listen addresses (this node's
    own id may be in it; it is ignored). ``queue_size`` bounds each peer's
    outbound queue, ``inbound_size`` (default ``queue_size``) the inbound
    channel, ``max_snapshot_size`` the snapshot a peer may stream here.
    ``write_timeout`` bounds one shielded batch write (and so how
    long closing can wait on a peer that stopped reading). ``ssl_context``
    serves TLS on the listener; ``client_ssl_context`` (default
    ``ssl_context``) is used to connect. ``rng`` jitters the backoff.
    """
    if type(node_id) is not int or node_id < 0:
        raise InvalidArgument(f"node_id must be a non-negative integer, got {node_id!r}")
    if not isinstance(cluster_id, str) or not cluster_id:
        raise InvalidArgument(f"cluster_id must be a non-empty string, got {cluster_id!r}")
    if type(max_frame_size) is not int or not 0 < max_frame_size <= MAX_FRAME_SIZE_LIMIT:
        raise InvalidArgument(f"max_frame_size must be between 1 and {MAX_FRAME_SIZE_LIMIT}, got {max_frame_size!r}")
    if type(max_snapshot_size) is not int or max_snapshot_size < 1:
        raise InvalidArgument(f"max_snapshot_size must be a positive integer, got {max_snapshot_size!r}")
    connect_timeout = _check_timeout(connect_timeout, "connect_timeout")
    handshake_timeout = _check_timeout(handshake_timeout, "handshake_timeout")
    write_timeout = _check_timeout(write_timeout, "write_timeout")
    backoff_min = _check_timeout(backoff_min, "backoff_min")
    backoff_max = _check_timeout(backoff_max, "backoff_max")
    if backoff_max < backoff_min:
        raise InvalidArgument(f"backoff_max ({backoff_max}) must not be less than backoff_min ({backoff_min})")
    check_queue_size(queue_size)
    inbound_size = check_queue_size(queue_size if inbound_size is None else inbound_size)
    host, port = parse_address(listen_address, allow_port_zero=True)
    for address in peers.values():
        parse_address(address, allow_port_zero=False)
    if math.isinf(write_timeout):
        raise InvalidArgument("write_timeout must be finite")

    try:
        listeners: list[trio.abc.Listener[trio.abc.Stream]] = list(await trio.open_tcp_listeners(port, host=host))
    except OSError as exc:
        raise bind_error(exc, "peer", listen_address) from None
    try:
        bound = tuple(
            format_address(*listener.socket.getsockname()[:2])  # type: ignore[attr-defined]
            for listener in listeners
        )
        if ssl_context is not None:
            listeners = [trio.SSLListener(listener, ssl_context) for listener in listeners]
        inbound_send, inbound_receive = trio.open_memory_channel[Message](inbound_size)
        try:
            async with trio.open_nursery() as nursery:
                transport = PeerTransport(
                    node_id=node_id,
                    cluster_id=cluster_id,
                    listen_addresses=bound,
                    nursery=nursery,
                    inbound_send=inbound_send,
                    inbound_receive=inbound_receive,
                    max_frame_size=max_frame_size,
                    max_snapshot_size=max_snapshot_size,
                    connect_timeout=connect_timeout,
                    handshake_timeout=handshake_timeout,
                    write_timeout=write_timeout,
                    queue_size=queue_size,
                    backoff=(backoff_min, backoff_max),
                    client_ssl_context=client_ssl_context if client_ssl_context is not None else ssl_context,
                    rng=rng if rng is not None else random.Random(),
                    client_address=client_address,
                )
                for listener in listeners:
                    nursery.start_soon(transport._accept_loop, listener, name=f"dengine peer listener {node_id}")
                transport.update_peers(peers)
                try:
                    yield transport
                finally:
                    transport._closed = True
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            leaf = single_leaf(group)
            if leaf is None:
                raise
            raise leaf from leaf.__cause__
        finally:
            inbound_send.close()
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)

"""An in-memory network of transports, for tests.

Rules:

* ``MemoryNetwork()`` connects every transport opened on it;
  ``network.open_transport(node_id)`` gives the same interface as
  :func:`~dengine.transport.peer.open_peer_transport` (send / inbound /
  receive / statistics / wait_statistics / update_peers) and the same
  outbound path: per-peer bounded queues, one sender task per peer draining
  a batch at a time, ``send`` never blocks.
* A link is checked when the sender delivers, message by message: a cut
  link (``partition``, ``isolate``, ``cut``), random loss
  (``drop_probability`` with the injected ``random.Random``) or a
  destination that is not running drops the message (counted
  ``dropped_unreachable``). ``heal()`` restores every link.
* Delivery puts the message on the destination's inbound channel; if that
  channel is full the sender waits (like TCP backpressure).
* By default each message crosses the codec (``encode_message`` then
  ``decode_message``), so a message that could not cross a real wire fails
  here too.
* With ``peers=None`` any node id is a peer; ``update_peers`` (or
  ``peers=[...]``) restricts the set, and messages to others are dropped
  as unknown, like the TCP transport.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager

import attrs
import trio

from dengine.codec import decode_message, encode_message
from dengine.errors import InvalidArgument
from dengine.raft.messages import Heartbeat, HeartbeatResponse, Message
from dengine.transport.base import (
    Counters,
    PeerQueue,
    TransportCommon,
    check_queue_size,
    single_leaf,
)

__all__ = ["MemoryNetwork", "MemoryTransport"]



@attrs.define(eq=False)
class _Peer:
    node_id: int
    queue: PeerQueue
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)


class MemoryNetwork:
    """Links between in-memory transports, with faults you switch on and off."""

    def __init__(
        self,
        *,
        drop_probability: float = 0.0,
        rng: random.Random | None = None,
        roundtrip: bool = True,
    ) -> None:
        self._rng = rng if rng is not None else random.Random(0)
        self._drop_probability = 0.0
        self.drop_probability = drop_probability
        self._roundtrip = roundtrip
        self._transports: dict[int, MemoryTransport] = {}
        self._cut: set[tuple[int, int]] = set()
        self._isolated: set[int] = set()

    @property
    def drop_probability(self) -> float:
        return self._drop_probability

    @drop_probability.setter
    def drop_probability(self, value: float) -> None:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
            raise InvalidArgument(f"drop_probability must be between 0 and 1, got {value!r}")
        self._drop_probability = float(value)

    @property
    def nodes(self) -> frozenset[int]:
        """Node ids with an open transport."""
        return frozenset(self._transports)

    def partition(self, *groups: Iterable[int]) -> None:
        """Cut every link (both ways) between nodes of different groups.
        Adds to the cuts already in force; nodes in no group keep their links."""
        sets = [frozenset(g) for g in groups]
        for i, a_group in enumerate(sets):
            for b_group in sets[i + 1 :]:
                if a_group & b_group:
                    raise InvalidArgument(f"partition groups overlap: {sorted(a_group & b_group)}")
                for a in a_group:
                    for b in b_group:
                        self._cut.add((a, b))
                        self._cut.add((b, a))

    def isolate(self, node_id: int) -> None:
        """Cut every link to and from ``node_id`` (also to nodes opened later)."""
        self._isolated.add(node_id)

    def cut(self, frm: int, to: int) -> None:
        """Cut the link from ``frm`` to ``to`` (one direction only)."""
        self._cut.add((frm, to))

    def heal(self) -> None:
        """Restore every link (the drop probability stays)."""
        self._cut.clear()
        self._isolated.clear()

    def can_reach(self, frm: int, to: int) -> bool:
        return frm not in self._isolated and to not in self._isolated and (frm, to) not in self._cut

    def _lost(self, frm: int, to: int) -> bool:
        if not self.can_reach(frm, to):
            return True
        return self._drop_probability > 0.0 and self._rng.random() < self._drop_probability

    @asynccontextmanager
    async def open_transport(
        self,
        node_id: int,
        peers: Iterable[int] | None = None,
        *,
        queue_size: int = 4096,
        inbound_size: int | None = None,
    ) -> AsyncIterator[MemoryTransport]:
        """Run ``node_id``'s transport on this network. One at a time per id;
        a node that stops and opens again is a restart."""
        if type(node_id) is not int or node_id < 0:
            raise InvalidArgument(f"node_id must be a non-negative integer, got {node_id!r}")
        if node_id in self._transports:
            raise InvalidArgument(f"node {node_id} already has an open transport on this network")
        check_queue_size(queue_size)
        inbound_size = check_queue_size(queue_size if inbound_size is None else inbound_size)
        inbound_send, inbound_receive = trio.open_memory_channel[Message](inbound_size)
        try:
            async with trio.open_nursery() as nursery:
                transport = MemoryTransport(self, node_id, nursery, inbound_send, inbound_receive, queue_size)
                if peers is not None:
                    transport.update_peers({nid: "" for nid in peers})
                self._transports[node_id] = transport
                try:
                    yield transport
                finally:
                    transport._closed = True
                    del self._transports[node_id]
                    inbound_send.close()  # wakes senders blocked on our full inbound
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            leaf = single_leaf(group)
            if leaf is None:
                raise
            raise leaf from leaf.__cause__
        finally:
            inbound_send.close()


class MemoryTransport(TransportCommon):
    """One node's end of a :class:`MemoryNetwork`."""

    _kind = "memory transport"

    def __init__(
        self,
        network: MemoryNetwork,
        node_id: int,
        nursery: trio.Nursery,
        inbound_send: trio.MemorySendChannel[Message],
        inbound_receive: trio.MemoryReceiveChannel[Message],
        queue_size: int,
    ) -> None:
        self._network = network
        self._node_id = node_id
        self._nursery = nursery
        self._inbound_send = inbound_send
        self._inbound_receive = inbound_receive
        self._queue_size = queue_size
        self._known: frozenset[int] | None = None  # None: every id is a peer
        self._peers: dict[int, _Peer] = {}
        self._counters = Counters()
        self._peer_stats = {}
        self._closed = False

    @property
    def network(self) -> MemoryNetwork:
        return self._network

    def update_peers(self, peers: Mapping[int, str]) -> None:
        """Make the keys of ``peers`` the peer set (addresses are ignored)."""
        if self._closed:
            raise trio.ClosedResourceError("the memory transport is closed")
        known = frozenset(nid for nid in peers if nid != self._node_id)
        for nid in known:
            if type(nid) is not int or nid < 0:
                raise InvalidArgument(f"a peer id must be a non-negative integer, got {nid!r}")
        self._known = known
        for nid, peer in list(self._peers.items()):
            if nid not in known:
                del self._peers[nid]
                peer.scope.cancel()
                self._counters.dropped_unreachable += peer.queue.clear()
        for nid in [n for n in self._peer_stats if n not in known]:
            del self._peer_stats[nid]
        self._counters.changed()

    def _queue_for(self, node_id: int) -> PeerQueue | None:
        peer = self._peers.get(node_id)
        if peer is not None:
            return peer.queue
        if node_id == self._node_id or (self._known is not None and node_id not in self._known):
            return None
        peer = _Peer(node_id, PeerQueue(self._queue_size))
        self._peers[node_id] = peer
        self._nursery.start_soon(self._run_sender, peer, name=f"dengine memory sender {self._node_id}->{node_id}")
        return peer.queue

    async def _run_sender(self, peer: _Peer) -> None:
        with peer.scope:
            while True:
                await self._deliver(peer.node_id, await peer.queue.get_batch())

    async def _deliver(self, to: int, batch: list[Message]) -> None:
        network = self._network
        counters = self._counters
        stats = self.peer_stats(to)
        delivered = lost = size = 0
        for msg in batch:
            kind = type(msg)
            if kind is Heartbeat:
                stats.heartbeat_sent(trio.current_time())
            # Looked up per message: the destination may stop or restart mid-batch.
            dest = network._transports.get(to)
            if dest is None or network._lost(self._node_id, to):
                lost += 1
                continue
            length = 0
            if network._roundtrip:
                body = encode_message(msg)
                length = len(body)
                size += length
                msg = decode_message(body)
            channel = dest._inbound_send
            try:
                try:
                    channel.send_nowait(msg)
                except trio.WouldBlock:
                    await channel.send(msg)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                lost += 1  # the destination stopped (or stopped reading)
                continue
            dest._counters.frames_received += 1
            dest._counters.bytes_received += length
            dest._counters.changed()
            theirs = dest.peer_stats(self._node_id)
            theirs.received_messages += 1
            theirs.received_bytes += length
            if kind is HeartbeatResponse:
                theirs.heartbeat_answered(trio.current_time())
            delivered += 1
        counters.frames_sent += delivered
        counters.bytes_sent += size
        stats.sent_messages += delivered
        stats.sent_bytes += size
        counters.dropped_unreachable += lost
        if delivered:
            counters.batches_sent += 1
        counters.changed()

"""What the runtime needs from a peer transport, and the parts both
transports (TCP in peer.py, in-memory in memory.py) share.

Rules every transport keeps:

* ``send(messages)`` never blocks and never raises for a network reason: it
  groups messages by destination onto per-peer bounded queues. A full queue,
  an unknown destination, an unreachable peer all *drop* the message and
  count it (Raft tolerates loss: it retransmits on its own schedule).
* One sender task per peer drains everything queued for that peer and
  writes it as one batch, so per-message costs are paid once per batch.
* Everything received goes onto ONE inbound memory channel, in per-peer
  order; when the transport closes, that channel ends.
* ``statistics()`` is a frozen snapshot; ``wait_statistics(pred)`` waits for
  a snapshot that satisfies ``pred`` (tests and diagnostics, never polling).
* Per peer (``peer_statistics()``, for the metrics): bytes and messages sent
  to and received from it, recorded once per batch, and the round trip of
  the leader's heartbeats to it (dengine.stats.PeerStats). A removed peer's
  figures are forgotten with it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import Protocol, runtime_checkable

import attrs
import trio

from dengine.errors import InvalidArgument
from dengine.raft.messages import MESSAGE_TYPES, Message
from dengine.stats import PeerStatistics, PeerStats

_MESSAGE_TYPES = frozenset(MESSAGE_TYPES)

__all__ = ["PeerQueue", "Transport", "TransportCommon", "TransportStatistics"]


@attrs.frozen(slots=True, kw_only=True)
class TransportStatistics:
    #: Messages written to the wire (TCP: one frame each) / delivered (memory).
    frames_sent: int = 0
    #: Messages received and put on the inbound channel.
    frames_received: int = 0
    #: Writes (``send_all`` calls / memory deliveries of a batch).
    batches_sent: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    #: Dropped because the peer's queue was full.
    dropped_queue_full: int = 0
    #: Dropped because the destination is not a known peer.
    dropped_unknown_peer: int = 0
    #: Dropped because the peer could not be reached: connect failed, in
    #: reconnect backoff, the connection broke, a cut link, random loss, the
    #: destination not running.
    dropped_unreachable: int = 0
    #: Dropped because the encoded message is over the maximum frame size.
    dropped_too_large: int = 0
    #: Outbound connections established (handshake done).
    connects: int = 0
    connect_failures: int = 0
    #: Outbound connections lost (closed or broken by the peer or the network).
    disconnects: int = 0
    #: Inbound connections accepted (handshake done) / refused or failed.
    inbound_connections: int = 0
    inbound_rejected: int = 0
    #: Connections closed because the peer broke the protocol after the
    #: handshake (malformed or oversized frame, message for another node).
    protocol_errors: int = 0
    #: Messages waiting in the per-peer queues right now.
    queued: int = 0

    @property
    def dropped(self) -> int:
        return self.dropped_queue_full + self.dropped_unknown_peer + self.dropped_unreachable + self.dropped_too_large


@runtime_checkable
class Transport(Protocol):
    """The interface the runtime takes: TCP (:func:`open_peer_transport`) or
    in-memory (:meth:`MemoryNetwork.open_transport`)."""

    @property
    def node_id(self) -> int: ...

    @property
    def inbound(self) -> trio.MemoryReceiveChannel[Message]:
        """Every message received from any peer; ends when the transport closes."""
        ...

    def send(self, messages: Iterable[Message]) -> None:
        """Queue ``messages`` for their ``to`` peers. Never blocks."""
        ...

    def receive(self) -> AsyncIterator[Message]:
        """``async for msg in transport.receive()``: the inbound messages."""
        ...

    def statistics(self) -> TransportStatistics: ...

    async def wait_statistics(self, predicate: Callable[[TransportStatistics], bool]) -> TransportStatistics:
        """Wait until ``predicate(self.statistics())`` is true; return that snapshot."""
        ...

    def update_peers(self, peers: Mapping[int, str]) -> None:
        """Replace the peer set (node id -> address); this node's own id is ignored."""
        ...

    def peer_statistics(self) -> dict[int, PeerStatistics]:
        """Traffic with each peer, by node id (a snapshot)."""
        ...


# --------------------------------------------------------------------------
# shared machinery (internal to dengine.transport)
# --------------------------------------------------------------------------


@attrs.define(slots=True)
class Counters:
    """The mutable side of TransportStatistics, with a wake-up for waiters."""

    frames_sent: int = 0
    frames_received: int = 0
    batches_sent: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    dropped_queue_full: int = 0
    dropped_unknown_peer: int = 0
    dropped_unreachable: int = 0
    dropped_too_large: int = 0
    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    inbound_connections: int = 0
    inbound_rejected: int = 0
    protocol_errors: int = 0
    _lot: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot, init=False)

    def changed(self) -> None:
        if self._lot:
            self._lot.unpark_all()

    def snapshot(self, queued: int) -> TransportStatistics:
        return TransportStatistics(
            frames_sent=self.frames_sent,
            frames_received=self.frames_received,
            batches_sent=self.batches_sent,
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
            dropped_queue_full=self.dropped_queue_full,
            dropped_unknown_peer=self.dropped_unknown_peer,
            dropped_unreachable=self.dropped_unreachable,
            dropped_too_large=self.dropped_too_large,
            connects=self.connects,
            connect_failures=self.connect_failures,
            disconnects=self.disconnects,
            inbound_connections=self.inbound_connections,
            inbound_rejected=self.inbound_rejected,
            protocol_errors=self.protocol_errors,
            queued=queued,
        )

    async def wait(
        self, snapshot: Callable[[], TransportStatistics], predicate: Callable[[TransportStatistics], bool]
    ) -> TransportStatistics:
        await trio.lowlevel.checkpoint()
        while True:
            stats = snapshot()
            if predicate(stats):
                return stats
            await self._lot.park()


class PeerQueue:
    """A bounded FIFO of messages for one peer, drained a batch at a time by
    that peer's sender task. ``put`` never blocks; it refuses when full."""

    __slots__ = ("_capacity", "_items", "_lot")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: deque[Message] = deque()
        self._lot = trio.lowlevel.ParkingLot()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, msg: Message) -> bool:
        if len(self._items) >= self._capacity:
            return False
        self._items.append(msg)
        if self._lot:
            self._lot.unpark_all()
        return True

    def clear(self) -> int:
        n = len(self._items)
        self._items.clear()
        return n

    def take_all(self) -> list[Message]:
        """Everything queued now (maybe nothing), oldest first; never waits."""
        batch = list(self._items)
        self._items.clear()
        return batch

    async def get_batch(self) -> list[Message]:
        """Everything queued (at least one message), oldest first."""
        await trio.lowlevel.checkpoint_if_cancelled()
        parked = False
        while not self._items:
            parked = True
            await self._lot.park()
        batch = list(self._items)
        self._items.clear()
        if not parked:
            await trio.lowlevel.cancel_shielded_checkpoint()
        return batch


def route(
    messages: Iterable[Message],
    queue_for: Callable[[int], PeerQueue | None],
    counters: Counters,
) -> None:
    """The body of every ``send``: per-destination queues, drops counted."""
    full = unknown = 0
    for msg in messages:
        queue = queue_for(msg.to)
        if queue is None:
            unknown += 1
        elif not queue.put(msg):
            full += 1
    if full or unknown:
        counters.dropped_queue_full += full
        counters.dropped_unknown_peer += unknown
        counters.changed()


def checked_messages(messages: Iterable[Message]) -> Iterator[Message]:
    """``messages``, raising InvalidArgument at the first non-message."""
    for msg in messages:
        if type(msg) not in _MESSAGE_TYPES:
            raise InvalidArgument(f"{type(msg).__name__} is not a Raft peer message")
        yield msg


def check_queue_size(queue_size: int) -> int:
    if type(queue_size) is not int or queue_size < 1:
        raise InvalidArgument(f"queue_size must be a positive integer, got {queue_size!r}")
    return queue_size


def single_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception other than ``trio.Cancelled`` inside ``group``, or
    None when there are several.

    Our ``open_*`` context managers yield inside their nursery; trio wraps an
    exception from the ``async with`` body (or from a dying task) in an
    ExceptionGroup, with Cancelled siblings. The one real error is what the
    caller should see (STYLE.md, 9).
    """
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        elif not isinstance(exc, trio.Cancelled):
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else None


class _Queued(Protocol):
    """What TransportCommon needs of a peer: its outbound queue."""

    @property
    def queue(self) -> PeerQueue: ...


class TransportCommon:
    """The half of the Transport interface both transports implement alike:
    subclasses set ``_node_id``, ``_inbound_receive``, ``_counters``,
    ``_closed``, ``_peers`` (values with a ``queue``) and ``_queue_for``."""

    _kind = "transport"
    _node_id: int
    _inbound_receive: trio.MemoryReceiveChannel[Message]
    _counters: Counters
    _closed: bool
    _peers: Mapping[int, _Queued]
    _peer_stats: dict[int, PeerStats]

    @property
    def node_id(self) -> int:
        return self._node_id

    @property
    def inbound(self) -> trio.MemoryReceiveChannel[Message]:
        return self._inbound_receive

    def receive(self) -> AsyncIterator[Message]:
        return self._inbound_receive

    def send(self, messages: Iterable[Message]) -> None:
        """Queue messages for their ``to`` peers; never blocks. Messages to
        unknown peers or to a full queue are dropped and counted. Raises
        InvalidArgument for something that is not a Raft message (those before
        it are queued) and ClosedResourceError once the transport is closed."""
        if self._closed:
            raise trio.ClosedResourceError(f"the {self._kind} is closed")
        route(checked_messages(messages), self._queue_for, self._counters)

    def _queue_for(self, node_id: int) -> PeerQueue | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def statistics(self) -> TransportStatistics:
        return self._counters.snapshot(sum(len(p.queue) for p in self._peers.values()))

    def peer_stats(self, node_id: int) -> PeerStats:
        """The live figures of traffic with ``node_id`` (created on first use)."""
        stats = self._peer_stats.get(node_id)
        if stats is None:
            stats = self._peer_stats[node_id] = PeerStats()
        return stats

    def peer_statistics(self) -> dict[int, PeerStatistics]:
        return {nid: stats.snapshot() for nid, stats in sorted(self._peer_stats.items())}

    async def wait_statistics(self, predicate: Callable[[TransportStatistics], bool]) -> TransportStatistics:
        return await self._counters.wait(self.statistics, predicate)

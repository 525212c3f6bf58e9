"""What the engine counts and times, in plain Python objects (pure).

Rules of this module:

* Recording must stay cheap on the hot paths: a counter is an ``int``
  attribute incremented where the work already happens; a
  :class:`Histogram` has fixed bucket bounds and ``observe(v)`` is one
  ``bisect`` and two additions. Nothing here knows Prometheus: the exporter
  (dengine.http.metrics) reads these objects at scrape time and turns them
  into metric families.
* Each component keeps its own stats object and records into it on the
  event loop (the runtime's :class:`NodeStats`, a transport's
  :class:`PeerStats` per peer, the client endpoint's :class:`RequestStats`);
  durations measured in a worker thread are handed back to the event loop
  and recorded there.
* Readers get frozen snapshots (:class:`HistogramData`,
  :class:`PeerStatistics`, :class:`RequestStatistics`), like
  ``statistics()`` everywhere else in dengine.

Layer 1: the standard library and attrs only.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence

import attrs

__all__ = [
    "BYTES_BUCKETS",
    "LATENCY_BUCKETS",
    "SLOW_BUCKETS",
    "Histogram",
    "HistogramData",
    "NodeStats",
    "PeerStatistics",
    "PeerStats",
    "RequestStatistics",
    "RequestStats",
    "exponential_buckets",
]


def exponential_buckets(start: float, factor: float, count: int) -> tuple[float, ...]:
    """``count`` upper bounds ``start, start*factor, start*factor**2, ...``
    (Prometheus' ExponentialBuckets)."""
    if not start > 0 or not factor > 1 or count < 1:
        raise ValueError(f"exponential_buckets needs start > 0, factor > 1, count >= 1 (got {start}, {factor}, {count})")
    return tuple(start * factor**k for k in range(count))


#: Fast operations (a WAL append and its fsync, a peer round trip, a client
#: request): 100 µs doubling to 6.6 s. etcd's WAL fsync histogram starts at
#: 1 ms; ours starts lower because a preallocated segment syncs in ~0.2 ms.
LATENCY_BUCKETS = exponential_buckets(0.0001, 2, 17)
#: Slow operations (saving or installing a snapshot): 1 ms doubling to 32.8 s.
SLOW_BUCKETS = exponential_buckets(0.001, 2, 16)
#: Sizes (a snapshot): 1 KiB, multiplied by 4 up to 16 GiB.
BYTES_BUCKETS = exponential_buckets(1024, 4, 13)


@attrs.frozen(slots=True)
class HistogramData:
    """A histogram, now: ``counts[k]`` values fell in bucket ``k``, i.e. at
    most ``bounds[k]`` and above the bound before it; the last count is the
    ``+Inf`` bucket (``len(counts) == len(bounds) + 1``). Not cumulative."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, values <= it)`` per bucket, ending with ``(inf, count)``:
        the Prometheus ``le`` buckets."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts):
            running += n
            out.append((bound, running))
        return out


class Histogram:
    """Fixed buckets; :meth:`observe` is one bisect and two additions."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        ordered = tuple(float(b) for b in bounds)
        if not ordered or any(a >= b for a, b in zip(ordered, ordered[1:])):
            raise ValueError("histogram bounds must be a non-empty, strictly increasing sequence")
        self.bounds = ordered
        self.counts = [0] * (len(ordered) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # Prometheus buckets are "less than or equal": bisect_left finds the
        # first bound >= value (len(bounds): the +Inf bucket).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def snapshot(self) -> HistogramData:
        return HistogramData(self.bounds, tuple(self.counts), self.sum)


class NodeStats:
    """What one node's runtime records (dengine.runtime.node, the embedded
    client). Gauges (term, indexes, lag, watchers) are not here: the
    exporter reads them from the node at scrape time.

    ``timed`` (the ``[metrics] enabled`` setting) switches the histograms
    off; the counters are single integer additions where the work happens
    anyway and are always kept."""

    __slots__ = (
        "timed",
        "leader_changes",
        "proposals_failed",
        "reads_linearizable",
        "reads_lease",
        "reads_eventual",
        "keys_expired",
        "leases_expired",
        "slow_applies",
        "slow_fsyncs",
        "wal_fsync",
        "wal_append",
        "snapshot_save_seconds",
        "snapshot_apply_seconds",
        "snapshot_save_bytes",
        "snapshot_apply_bytes",
    )

    def __init__(self, *, timed: bool = True) -> None:
        self.timed = timed
        self.leader_changes = 0
        self.proposals_failed = 0
        self.reads_linearizable = 0
        self.reads_lease = 0
        self.reads_eventual = 0
        self.keys_expired = 0
        self.leases_expired = 0
        self.slow_applies = 0
        self.slow_fsyncs = 0
        self.wal_fsync = Histogram(LATENCY_BUCKETS)
        self.wal_append = Histogram(LATENCY_BUCKETS)
        self.snapshot_save_seconds = Histogram(SLOW_BUCKETS)
        self.snapshot_apply_seconds = Histogram(SLOW_BUCKETS)
        self.snapshot_save_bytes = Histogram(BYTES_BUCKETS)
        self.snapshot_apply_bytes = Histogram(BYTES_BUCKETS)

    def reads(self) -> dict[str, int]:
        """Reads served, by consistency level."""
        return {"linearizable": self.reads_linearizable, "lease": self.reads_lease, "eventual": self.reads_eventual}


@attrs.frozen(slots=True)
class PeerStatistics:
    """Traffic with one peer, now: what this node sent to it and received
    from it, and the round trips of the leader's heartbeats to it."""

    sent_bytes: int
    sent_messages: int
    received_bytes: int
    received_messages: int
    round_trip: HistogramData


class PeerStats:
    """Traffic with one peer, recorded by a transport per batch.

    Round trip: the time from sending a heartbeat to receiving the next
    heartbeat answer from that peer (only a leader sends heartbeats). The
    first unanswered heartbeat is the probe; answers with no probe out are
    ignored, so a lost heartbeat makes one sample longer, never a wrong one
    shorter. ``lost()`` forgets the probe when the link broke."""

    __slots__ = ("sent_bytes", "sent_messages", "received_bytes", "received_messages", "round_trip", "_probe_at")

    def __init__(self) -> None:
        self.sent_bytes = 0
        self.sent_messages = 0
        self.received_bytes = 0
        self.received_messages = 0
        self.round_trip = Histogram(LATENCY_BUCKETS)
        self._probe_at: float | None = None

    def heartbeat_sent(self, now: float) -> None:
        if self._probe_at is None:
            self._probe_at = now

    def heartbeat_answered(self, now: float) -> None:
        sent = self._probe_at
        if sent is not None:
            self._probe_at = None
            self.round_trip.observe(now - sent)

    def lost(self) -> None:
        self._probe_at = None

    def snapshot(self) -> PeerStatistics:
        return PeerStatistics(
            sent_bytes=self.sent_bytes,
            sent_messages=self.sent_messages,
            received_bytes=self.received_bytes,
            received_messages=self.received_messages,
            round_trip=self.round_trip.snapshot(),
        )


@attrs.frozen(slots=True)
class RequestStatistics:
    """Client requests a server answered, now: ``counts[(op, code)]``
    (``code`` is ``"OK"`` or an error code's name) and, per unary op, the
    time from reading the request to queueing its answer."""

    counts: Mapping[tuple[str, str], int]
    seconds: Mapping[str, HistogramData]


class RequestStats:
    """Client requests by operation and outcome, and their latency (the
    standalone server's client endpoint). Bounded: ops come from the
    protocol's fixed table (anything else is counted as ``"invalid"``), codes
    from the error code table."""

    __slots__ = ("counts", "seconds")

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.seconds: dict[str, Histogram] = {}

    def count(self, op: str, code: str) -> None:
        key = (op, code)
        self.counts[key] = self.counts.get(key, 0) + 1

    def observe(self, op: str, code: str, seconds: float) -> None:
        self.count(op, code)
        hist = self.seconds.get(op)
        if hist is None:
            hist = self.seconds[op] = Histogram(LATENCY_BUCKETS)
        hist.observe(seconds)

    def snapshot(self) -> RequestStatistics:
        return RequestStatistics(
            counts=dict(self.counts), seconds={op: h.snapshot() for op, h in self.seconds.items()}
        )

"""dengine.stats: the fixed-bucket histogram against a dumb oracle (count
the values <= each bound), and the small recorders built on it."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dengine.stats import (
    BYTES_BUCKETS,
    LATENCY_BUCKETS,
    SLOW_BUCKETS,
    Histogram,
    HistogramData,
    NodeStats,
    PeerStats,
    RequestStats,
    exponential_buckets,
)

values = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)


@given(st.lists(values, max_size=200))
def test_cumulative_buckets_are_the_count_of_values_at_or_below_each_bound(observed: list[float]) -> None:
    h = Histogram(LATENCY_BUCKETS)
    for v in observed:
        h.observe(v)
    data = h.snapshot()
    expected = [(b, sum(1 for v in observed if v <= b)) for b in LATENCY_BUCKETS] + [(math.inf, len(observed))]
    assert data.cumulative() == expected
    assert data.count == h.count == len(observed)
    assert data.sum == pytest.approx(sum(observed))


def test_a_value_on_a_bound_falls_in_that_bucket() -> None:
    h = Histogram((1.0, 2.0))
    for v in (1.0, 2.0, 2.0000001, 0.5):
        h.observe(v)
    assert h.counts == [2, 1, 1]
    assert h.snapshot().cumulative() == [(1.0, 2), (2.0, 3), (math.inf, 4)]


def test_a_snapshot_does_not_move_with_the_histogram() -> None:
    h = Histogram((1.0,))
    h.observe(0.5)
    before = h.snapshot()
    h.observe(3.0)
    assert before == HistogramData((1.0,), (1, 0), 0.5)
    assert h.snapshot().counts == (1, 1)


def test_exponential_buckets_and_the_presets() -> None:
    assert exponential_buckets(0.5, 2, 4) == (0.5, 1.0, 2.0, 4.0)
    assert LATENCY_BUCKETS[0] == 0.0001 and LATENCY_BUCKETS[-1] == pytest.approx(6.5536)
    assert SLOW_BUCKETS[0] == 0.001 and SLOW_BUCKETS[-1] == pytest.approx(32.768)
    assert BYTES_BUCKETS[0] == 1024 and BYTES_BUCKETS[-1] == 16 * 1024**3
    for bad in ((0, 2, 3), (1, 1, 3), (1, 2, 0)):
        with pytest.raises(ValueError):
            exponential_buckets(*bad)
    for bounds in ((), (2.0, 1.0), (1.0, 1.0)):
        with pytest.raises(ValueError):
            Histogram(bounds)


def test_node_stats_reads_by_consistency() -> None:
    stats = NodeStats(timed=False)
    stats.reads_lease += 2
    stats.reads_eventual += 1
    assert stats.reads() == {"linearizable": 0, "lease": 2, "eventual": 1}
    assert not stats.timed


def test_round_trip_uses_the_first_unanswered_heartbeat() -> None:
    peer = PeerStats()
    peer.heartbeat_answered(5.0)  # no probe out: ignored
    peer.heartbeat_sent(10.0)
    peer.heartbeat_sent(10.5)  # still the first one
    peer.heartbeat_answered(10.25)
    peer.heartbeat_answered(11.0)  # no probe out again
    peer.heartbeat_sent(20.0)
    peer.lost()  # the link broke: that probe is forgotten
    peer.heartbeat_answered(30.0)
    data = peer.snapshot().round_trip
    assert data.count == 1 and data.sum == pytest.approx(0.25)


def test_requests_by_op_and_code_with_latency_per_op() -> None:
    stats = RequestStats()
    stats.observe("put", "OK", 0.001)
    stats.observe("put", "NOT_LEADER", 0.002)
    stats.observe("put", "OK", 0.003)
    stats.count("invalid", "MALFORMED_MESSAGE")
    snap = stats.snapshot()
    assert snap.counts == {("put", "OK"): 2, ("put", "NOT_LEADER"): 1, ("invalid", "MALFORMED_MESSAGE"): 1}
    assert set(snap.seconds) == {"put"} and snap.seconds["put"].count == 3
    stats.count("put", "OK")
    assert snap.counts[("put", "OK")] == 2  # a snapshot is a copy

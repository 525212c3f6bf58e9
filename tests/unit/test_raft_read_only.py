"""ReadIndex rounds and the lease (dengine/raft/read_only.py), rule by rule
from the docstring at the top of that file (thesis §6.4, §6.4.1)."""

from __future__ import annotations

from dengine.raft.read_only import ReadOnly

VOTERS = {1, 2, 3, 4, 5}


def test_a_round_takes_every_waiting_read_and_later_reads_wait_for_the_next() -> None:
    ro = ReadOnly()
    ro.add(b"a", 1)
    ro.add(b"b", 2)
    first = ro.open_round(1, tick=10, commit=7, take_reads=True)
    ro.add(b"c", 1)
    assert ro.reads_waiting_for_round()
    second = ro.open_round(1, tick=11, commit=8, take_reads=True)
    assert second == first + 1
    assert [[r.ctx for r in rnd.reads] for rnd in ro.rounds] == [[b"a", b"b"], [b"c"]]


def test_a_round_opened_without_taking_reads_leaves_them_waiting() -> None:
    ro = ReadOnly()
    ro.add(b"a", 1)
    ro.open_round(1, tick=1, commit=1, take_reads=False)
    assert ro.reads_waiting_for_round() and ro.rounds[0].reads == []


def test_round_is_released_once_a_quorum_of_voters_answered_with_its_open_commit() -> None:
    ro = ReadOnly()
    ro.add(b"a", 1)
    n = ro.open_round(1, tick=3, commit=42, take_reads=True)
    assert ro.ack(2, n, VOTERS) == []  # leader + 2 = 2 of 5
    assert ro.ack(9, n, VOTERS) == []  # not a voter: does not count
    assert ro.ack(2, n, VOTERS) == []  # a duplicate does not count twice
    released = ro.ack(3, n, VOTERS)
    assert [(r.number, r.index, [p.ctx for p in r.reads]) for r in released] == [(n, 42, [b"a"])]
    assert ro.rounds == []


def test_an_answer_to_round_r_acknowledges_every_older_round() -> None:
    ro = ReadOnly()
    r1 = ro.open_round(1, tick=1, commit=5, take_reads=True)
    r2 = ro.open_round(1, tick=2, commit=6, take_reads=True)
    r3 = ro.open_round(1, tick=3, commit=7, take_reads=True)
    ro.ack(2, r2, VOTERS)
    released = ro.ack(3, r2, VOTERS)
    assert [r.number for r in released] == [r1, r2]  # oldest first
    assert [r.number for r in ro.rounds] == [r3]
    assert ro.ack(4, r1, VOTERS) == []  # an answer to an older round does not touch r3


def test_lease_starts_at_the_send_tick_of_the_newest_confirmed_round_and_never_moves_back() -> None:
    ro = ReadOnly()
    assert ro.lease_start_tick is None
    ro.open_round(1, tick=4, commit=1, take_reads=True)
    r2 = ro.open_round(1, tick=9, commit=1, take_reads=True)
    ro.ack(2, r2, {1, 2, 3})
    assert ro.lease_start_tick == 9
    # r1 was released with r2; an older confirmation cannot shorten the lease.
    r3 = ro.open_round(1, tick=2, commit=1, take_reads=True)
    ro.ack(2, r3, {1, 2, 3})
    assert ro.lease_start_tick == 9


def test_expire_drops_rounds_older_than_max_age() -> None:
    ro = ReadOnly()
    ro.add(b"old", 1)
    ro.open_round(1, tick=1, commit=1, take_reads=True)
    ro.add(b"new", 1)
    ro.open_round(1, tick=8, commit=1, take_reads=True)
    assert [p.ctx for p in ro.expire(tick=11, max_age=10)] == []
    assert [p.ctx for p in ro.expire(tick=11, max_age=5)] == [b"old"]
    assert len(ro.rounds) == 1


def test_drain_returns_every_read_and_forgets_the_lease() -> None:
    ro = ReadOnly()
    ro.add(b"a", 1)
    n = ro.open_round(1, tick=1, commit=1, take_reads=True)
    ro.add(b"b", 2)
    ro.ack(2, n, {1, 2, 3})
    ro.add(b"c", 3)
    ro.open_round(1, tick=2, commit=1, take_reads=True)
    ro.add(b"d", 1)
    assert sorted(p.ctx for p in ro.drain()) == [b"b", b"c", b"d"]  # not the released a
    assert ro.lease_start_tick is None and ro.rounds == [] and not ro.reads_waiting_for_round()


def test_recheck_releases_rounds_that_reach_quorum_after_the_voters_shrank() -> None:
    ro = ReadOnly()
    n = ro.open_round(1, tick=1, commit=3, take_reads=True)
    ro.ack(2, n, VOTERS)
    assert ro.recheck(VOTERS) == []
    assert [r.number for r in ro.recheck({1, 2, 3})] == [n]

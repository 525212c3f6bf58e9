"""Bounds of the pure core: nothing a peer or a caller does makes it hold
more and more (issue 11): forwarded reads that are never answered, writes
that never commit, committed entries handed out per Ready; and the one place
that decides which messages wait for durability."""

from __future__ import annotations

import pytest

from dengine.errors import ResourceExhausted
from dengine.raft.core import RaftConfig
from dengine.raft.messages import (
    Entry,
    Role,
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    ReadIndexRequest,
    RequestVote,
    VoteResponse,
    needs_durability,
)
from dengine.raft.rawnode import RawNode
from tests.unit.raft_helpers import Net


def test_reads_forwarded_to_a_leader_that_never_answers_are_dropped() -> None:
    net = Net(3)
    net.elect(1)
    core2 = net.core(2)
    for k in range(50):
        net[2].raw.read_index(b"r%d" % k)
    net.process(2)
    assert len(net.take(ReadIndexRequest, frm=2)) == 1  # lost on the way: never answered
    assert len(core2.forwarded_reads) == 50
    limit = core2.read_timeout_ticks()
    for _ in range(limit):
        # The leader stays alive and heard (no election drops the reads).
        net.tick(1)
        net.tick(2)
        net.stabilize()
    assert core2.lead == 1
    assert len(core2.forwarded_reads) == 50  # not given up early
    net.tick(2)
    net.process(2)
    assert core2.forwarded_reads == {}
    assert sorted(net[2].dropped_reads) == sorted(b"r%d" % k for k in range(50))


def test_a_late_answer_to_a_dropped_forwarded_read_releases_nothing() -> None:
    net = Net(3)
    net.elect(1)
    net[2].raw.read_index(b"late")
    net.process(2)
    (request,) = net.take(ReadIndexRequest, frm=2)
    for _ in range(net.core(2).read_timeout_ticks() + 1):
        net.tick(1)
        net.tick(2)
        net.stabilize()
    assert net[2].dropped_reads == [b"late"]
    net.queue.append(request)
    net.stabilize()
    assert net[2].read_states == []


def test_leader_refuses_writes_over_the_uncommitted_limit_and_takes_them_again_after_commit() -> None:
    net = Net(3, max_uncommitted_bytes=1000)
    leader = net.elect(1)
    net.isolate(1)  # nothing commits
    net[1].raw.propose([b"x" * 600])
    net[1].raw.propose([b"y" * 300])
    with pytest.raises(ResourceExhausted, match="1000"):
        net[1].raw.propose([b"z" * 200])
    assert leader.uncommitted_bytes == 900
    net.heal()
    net.leader_heartbeat(1)
    net.stabilize()
    assert leader.uncommitted_bytes == 0
    net[1].raw.propose([b"z" * 200])


def test_one_write_larger_than_the_limit_is_let_through_when_nothing_is_uncommitted() -> None:
    net = Net(3, max_uncommitted_bytes=100)
    net.elect(1)
    index, _ = net[1].raw.propose([b"x" * 5000])
    net.stabilize()
    assert net.core(1).log.committed >= index


def test_a_new_leader_starts_with_nothing_uncommitted() -> None:
    net = Net(3, max_uncommitted_bytes=1000)
    net.elect(1)
    net.isolate(1)
    net[1].raw.propose([b"x" * 900])
    for _ in range(4 * net.core(1).config.election_tick):
        net.tick(2)
        net.tick(3)
        net.stabilize()
    (new,) = [n for n in (2, 3) if net.core(n).role is Role.LEADER]
    assert net.core(new).uncommitted_bytes == 0
    net[new].raw.propose([b"y" * 900])


def _drain(raw: RawNode) -> list[Entry]:
    """Take and persist every Ready of a single voter; apply nothing."""
    handed: list[Entry] = []
    for _ in range(100):
        if not raw.has_ready():
            break
        rd = raw.ready()
        handed.extend(rd.committed)
        raw.on_persisted(rd.number)
    return handed


def test_committed_entries_are_handed_out_in_bounded_steps_until_applied() -> None:
    raw = RawNode(RaftConfig(id=1, initial_voters=frozenset({1}), max_committed_bytes_per_ready=1000))
    raw.campaign()
    _drain(raw)
    raw.on_applied(raw.core.log.applied)
    for k in range(20):
        raw.propose([bytes([k]) * 200])
    handed = _drain(raw)
    assert raw.core.log.committed >= 22  # all committed ...
    assert sum(len(e.data) + 16 for e in handed) <= 1000 + 216  # ... a bounded step handed out
    assert 0 < len(handed) < 20
    assert not raw.has_ready()  # nothing more until the step is applied
    raw.on_applied(handed[-1].index)
    more = _drain(raw)
    assert more and more[0].index == handed[-1].index + 1


@pytest.mark.parametrize(
    ("message", "waits"),
    [
        (AppendResponse(frm=2, to=1, term=3, index=4), True),
        (AppendResponse(frm=2, to=1, term=3, index=4, reject=True, reject_hint=2, hint_term=1), True),
        (VoteResponse(frm=2, to=1, term=3, granted=True), True),
        (VoteResponse(frm=2, to=1, term=3, granted=False), True),
        (VoteResponse(frm=2, to=1, term=3, granted=True, pre_vote=True), False),
        (RequestVote(frm=1, to=2, term=3, last_index=4, last_term=2), True),
        (RequestVote(frm=1, to=2, term=3, last_index=4, last_term=2, pre_vote=True), False),
        (AppendEntries(frm=1, to=2, term=3, prev_index=0, prev_term=0, entries=(), commit=0), False),
        (Heartbeat(frm=1, to=2, term=3, commit=0, round=1), False),
        (HeartbeatResponse(frm=2, to=1, term=3, round=1), False),
    ],
)
def test_durability_is_decided_by_message_type(message: object, waits: bool) -> None:
    assert needs_durability(message) is waits  # type: ignore[arg-type]


def test_the_core_routes_every_message_by_its_type() -> None:
    net = Net(3)
    net.elect(1)
    for k in range(5):
        net[1].raw.propose([b"v%d" % k])
        net.stabilize()
    net.isolate(1)
    net.tick_all(30)
    net.heal()
    net.stabilize()
    for node in net.nodes.values():
        for ready in node.readies:
            assert all(not needs_durability(m) for m in ready.messages)
            assert all(needs_durability(m) for m in ready.after_persist)


def test_check_quorum_steps_down_one_election_timeout_after_last_hearing_from_a_quorum() -> None:
    net = Net(3, election_tick=10)
    leader = net.elect(1)
    # Run for a while with answers, so the isolation falls at any phase of
    # the old once-per-election-timeout check.
    for _ in range(13):
        net.tick(1)
        net.stabilize()
    net.isolate(1)
    for k in range(9):
        net.tick(1)
        net.process(1)
        assert leader.role is Role.LEADER, f"stepped down {k + 1} ticks after the last answer"
    net.tick(1)
    assert leader.role is not Role.LEADER  # before: up to 20 ticks


def test_a_leader_that_hears_nobody_hands_off_to_a_caught_up_follower() -> None:
    """Only the leader's inbound side is cut: the followers keep hearing its
    heartbeats, so they would wait out their own timeouts after it steps
    down. The leader asks the most caught-up voter it did not hear from to
    campaign at once (TimeoutNow), and that voter wins without waiting."""
    from dengine.raft.messages import TimeoutNow

    net = Net(3, election_tick=10)
    leader = net.elect(1)
    net.core(1).propose([b"x"])
    net.stabilize()
    # Node 3 falls behind: it misses the next entry.
    net.cut(1, 3)
    net.core(1).propose([b"y"])
    net.stabilize()
    net.heal()
    net.cut_links = {(2, 1), (3, 1)}  # the leader still sends, hears nothing
    for _ in range(9):
        net.tick(1)
        net.deliver()
    net.tick(1)
    net.process(1)
    assert leader.role is not Role.LEADER
    (handoff,) = net.peek(TimeoutNow, frm=1)
    assert handoff.to == 2  # the caught-up one
    old_term = leader.term
    net.stabilize()  # no ticks: nothing but the hand-off can start an election
    assert net.core(2).role is Role.LEADER and net.core(2).term == old_term + 1


def test_a_leader_on_the_minority_side_hands_off_across_the_cut_only() -> None:
    """A leader left with one follower of five asks a voter on the far side
    (its message is lost in a real partition), never the follower beside it,
    whose forced term could only disrupt the majority later."""
    from dengine.raft.messages import TimeoutNow

    net = Net(5, election_tick=10)
    leader = net.elect(1)
    for far in (3, 4, 5):
        for near in (1, 2):
            net.cut(near, far)
    for _ in range(10):
        net.tick(1)
        net.tick(2)
        net.deliver()
    assert leader.role is not Role.LEADER
    sent = [m.to for m in net.dropped if isinstance(m, TimeoutNow)] + [m.to for m in net.peek(TimeoutNow)]
    assert sent and all(to in (3, 4, 5) for to in sent)
    assert net.core(2).term == leader.term  # node 2 was not pushed into a new term

"""One test per rule of the Raft paper and Ongaro's thesis, on the pure core.

Each test is init / act / check and is named after the sentence it pins
(section numbers: paper §5, thesis §3.10, §4, §6, §7, §9.6). Nodes are built
with tests/unit/raft_helpers.py: a deterministic in-process network where a
Ready is persisted as soon as it is taken unless a test says otherwise.
"""

from __future__ import annotations

import random

import pytest

from dengine.errors import NotLeader, ProposalDropped
from dengine.raft.core import MembershipChangeInProgress, RaftCore, bootstrap_entries
from dengine.raft.messages import (
    AppendEntries,
    AppendResponse,
    ConfChange,
    ConfChangeType,
    Entry,
    EntryType,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    ReadIndexRequest,
    ReadState,
    RequestVote,
    Role,
    TimeoutNow,
    VoteResponse,
)
from tests.unit.raft_helpers import Net, config, entries

BOOT3 = bootstrap_entries(frozenset({1, 2, 3}))  # indexes 1..3, term 1


def run_until_leader(net: Net, nid: int, max_rounds: int = 20) -> RaftCore:
    """Deliver round by round until ``nid`` is leader; stop right there."""
    net.process_all()
    for _ in range(max_rounds):
        if net.core(nid).role is Role.LEADER:
            return net.core(nid)
        net.deliver()
    raise AssertionError(f"node {nid} did not become leader: {net.core(nid).soft_state()}")


def add_learner(net: Net, leader: int, nid: int) -> None:
    net.add(nid)
    net.warm_up(nid)
    net[leader].raw.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, nid))
    net.stabilize()


# ---------------------------------------------------------------------------
# §5.1 terms
# ---------------------------------------------------------------------------


def test_5_1_higher_term_turns_leader_into_follower() -> None:
    net = Net(3)
    leader = net.elect(1)
    term = leader.term
    net[1].raw.step(Heartbeat(frm=2, to=1, term=term + 1, commit=0))
    assert leader.role is Role.FOLLOWER
    assert leader.term == term + 1
    assert leader.lead == 2


def test_5_1_higher_term_in_a_response_turns_leader_into_follower_without_leader() -> None:
    net = Net(3)
    leader = net.elect(1)
    term = leader.term
    net[1].raw.step(AppendResponse(frm=2, to=1, term=term + 1, index=0, reject=True))
    assert (leader.role, leader.term, leader.lead, leader.vote) == (Role.FOLLOWER, term + 1, None, None)


def test_5_1_request_from_a_stale_term_is_rejected_with_the_current_term() -> None:
    net = Net(3)
    net.elect(1)
    f = net.core(2)
    term, last = f.term, f.log.last_index()
    net[2].raw.step(
        AppendEntries(
            frm=3, to=2, term=term - 1, prev_index=last, prev_term=f.log.last_term(),
            entries=(Entry(last + 1, term - 1),), commit=last + 1,
        )
    )
    assert f.log.last_index() == last
    assert (f.term, f.lead) == (term, 1)
    ready = net.process(2)
    assert ready is not None
    # Every AppendResponse leaves after the Ready is durable (it carries our term).
    assert [m for m in ready.after_persist if isinstance(m, AppendResponse)] == [
        AppendResponse(frm=2, to=3, term=term, index=0, reject=True)
    ]


# ---------------------------------------------------------------------------
# §5.2 leader election
# ---------------------------------------------------------------------------


def test_5_2_follower_becomes_candidate_after_election_timeout() -> None:
    net = Net(3, pre_vote=False)
    net.warm_up()
    c = net.core(2)
    net.tick(2, c.randomized_election_timeout - 1)
    assert (c.role, c.term) == (Role.FOLLOWER, 1)
    net.tick(2)
    assert (c.role, c.term, c.vote) == (Role.CANDIDATE, 2, 2)
    ready = net.process(2, persist=False)
    assert ready is not None
    # The candidate's own vote must be durable before it asks for others'.
    assert not [m for m in ready.messages if isinstance(m, RequestVote)]
    asks = [m for m in ready.after_persist if isinstance(m, RequestVote)]
    assert sorted(m.to for m in asks) == [1, 3]
    assert all(m.term == 2 and not m.pre_vote for m in asks)
    assert ready.hard_state == HardState(term=2, vote=2, commit=3)


def test_5_2_election_timeouts_are_randomized_above_et_up_to_one_and_a_half_et() -> None:
    # Narrower than etcd's [ET, 2 ET) (docs/design.md, Elections); never ET itself.
    seen = set()
    for seed in range(40):
        core = RaftCore(config(1, [1, 2, 3], election_tick=10), rng=random.Random(seed))
        seen.add(core.randomized_election_timeout)
    assert seen == set(range(11, 16))


def test_5_2_follower_votes_at_most_once_per_term() -> None:
    net = Net(3, pre_vote=False)
    net.warm_up()
    for frm in (1, 2, 1):
        net[3].raw.step(RequestVote(frm=frm, to=3, term=2, last_index=3, last_term=1))
    assert net.core(3).vote == 1
    ready = net.process(3, persist=False)
    assert ready is not None
    answers = [(m.to, m.granted) for m in ready.after_persist if isinstance(m, VoteResponse)]
    # The retransmitted request from the same candidate is granted again.
    assert answers == [(1, True), (2, False), (1, True)]


def test_5_2_candidate_wins_with_majority() -> None:
    net = Net(5, pre_vote=False)
    net.warm_up()
    net[1].raw.campaign()
    c = net.core(1)
    assert c.role is Role.CANDIDATE
    net[1].raw.step(VoteResponse(frm=2, to=1, term=c.term, granted=True))
    assert c.role is Role.CANDIDATE  # 2 of 5
    net[1].raw.step(VoteResponse(frm=3, to=1, term=c.term, granted=False))
    assert c.role is Role.CANDIDATE
    net[1].raw.step(VoteResponse(frm=4, to=1, term=c.term, granted=True))
    assert c.role is Role.LEADER  # 3 of 5


def test_5_2_candidate_returns_to_follower_when_a_majority_rejects() -> None:
    net = Net(5, pre_vote=False)
    net.warm_up()
    net[1].raw.campaign()
    c = net.core(1)
    term = c.term
    for frm in (2, 3):
        net[1].raw.step(VoteResponse(frm=frm, to=1, term=term, granted=False))
    assert c.role is Role.CANDIDATE  # 3 of 5 may still grant
    net[1].raw.step(VoteResponse(frm=4, to=1, term=term, granted=False))
    assert (c.role, c.term, c.lead) == (Role.FOLLOWER, term, None)


@pytest.mark.parametrize("kind", ["append", "heartbeat"])
def test_5_2_candidate_steps_down_on_append_from_leader_of_same_term(kind: str) -> None:
    net = Net(3, pre_vote=False)
    net.warm_up()
    net[1].raw.campaign()
    c = net.core(1)
    term = c.term
    msg = (
        AppendEntries(frm=2, to=1, term=term, prev_index=3, prev_term=1, commit=3)
        if kind == "append"
        else Heartbeat(frm=2, to=1, term=term, commit=3)
    )
    net[1].raw.step(msg)
    assert (c.role, c.term, c.lead) == (Role.FOLLOWER, term, 2)


def test_5_2_leader_sends_heartbeats_every_heartbeat_tick() -> None:
    net = Net(3, heartbeat_tick=3)
    net.elect(1)
    for _ in range(2):
        net.tick(1)
        net.process(1)
        assert not net.take(Heartbeat)
    net.tick(1)
    net.process(1)
    assert sorted(m.to for m in net.take(Heartbeat)) == [2, 3]


def test_leader_appends_noop_on_election() -> None:
    net = Net(3)
    net.warm_up()
    net[1].raw.campaign()
    leader = run_until_leader(net, 1)
    noop = Entry(index=4, term=leader.term, type=EntryType.NORMAL, data=b"")
    assert leader.log.entries[-1] == noop
    appends = net.peek(AppendEntries, frm=1)
    assert sorted(m.to for m in appends) == [2, 3]
    assert all(m.entries[-1] == noop for m in appends)


# ---------------------------------------------------------------------------
# §5.3 log replication
# ---------------------------------------------------------------------------


def follower_with_log(log: list[Entry], term: int = 3, commit: int = 3) -> Net:
    net = Net([])
    net.add(2, hard_state=HardState(term=term, commit=commit), log=log)
    net.warm_up()
    return net


@pytest.mark.parametrize("prev_index", [5, 7])  # mismatching term / beyond the end
def test_5_3_follower_rejects_append_with_mismatching_prev(prev_index: int) -> None:
    log = BOOT3 + entries(2, 2, start=4)
    net = follower_with_log(log)
    f = net.core(2)
    net[2].raw.step(
        AppendEntries(
            frm=1, to=2, term=3, prev_index=prev_index, prev_term=3,
            entries=(Entry(prev_index + 1, 3),), commit=prev_index + 1,
        )
    )
    assert [(e.index, e.term) for e in f.log.entries] == [(e.index, e.term) for e in log]
    assert f.log.committed == 3  # a rejected append's commit is not taken
    ready = net.process(2)
    assert ready is not None
    # Hint: our last index no later than prev_index whose term is <= prev_term.
    assert list(ready.messages) == []  # every AppendResponse waits for durability
    assert list(ready.after_persist) == [
        AppendResponse(frm=2, to=1, term=3, index=prev_index, reject=True, reject_hint=5, hint_term=2)
    ]


def test_5_3_follower_appends_matching_entries_and_follows_leader_commit() -> None:
    net = follower_with_log(BOOT3 + entries(2, start=4))
    f = net.core(2)
    new = tuple(entries(3, 3, start=5))
    net[2].raw.step(AppendEntries(frm=1, to=2, term=3, prev_index=4, prev_term=2, entries=new, commit=10))
    assert f.log.entries[-2:] == list(new)
    assert f.log.committed == 6  # min(leader commit, index of last new entry)
    ready = net.process(2, persist=False)
    assert ready is not None
    assert ready.entries == new
    assert list(ready.after_persist) == [AppendResponse(frm=2, to=1, term=3, index=6)]


def test_5_3_follower_keeps_entries_beyond_a_matching_append() -> None:
    # A delayed, shorter append must not truncate entries that follow it.
    net = follower_with_log(BOOT3 + entries(3, 3, 3, start=4))
    f = net.core(2)
    net[2].raw.step(
        AppendEntries(frm=1, to=2, term=3, prev_index=3, prev_term=1, entries=tuple(entries(3, start=4)), commit=3)
    )
    assert f.log.last_index() == 6


def test_5_3_leader_overwrites_conflicting_follower_entries() -> None:
    net = Net([])
    hs = HardState(term=3, commit=3)
    net.add(1, hard_state=hs, log=BOOT3 + entries(2, 3, start=4))
    net.add(2, hard_state=hs, log=BOOT3 + entries(2, start=4))
    net.add(3, hard_state=hs, log=BOOT3 + entries(2, 2, 2, start=4))  # 5@2, 6@2 never committed
    leader = net.elect(1)
    expected = [(i, 1) for i in (1, 2, 3)] + [(4, 2), (5, 3), (6, leader.term)]
    for nid in (1, 2, 3):
        assert net[nid].log_terms() == expected, nid
        assert [(e.index, e.term) for e in net[nid].durable.entries] == expected, nid
    assert net.core(3).log.committed == 6


def test_5_3_leader_skips_a_whole_conflicting_term_per_rejection() -> None:
    net = Net([])
    hs = HardState(term=3, commit=3)
    net.add(1, hard_state=hs, log=BOOT3 + entries(*[3] * 7, start=4))
    net.add(2, hard_state=hs, log=BOOT3 + entries(*[3] * 7, start=4))
    net.add(3, hard_state=hs, log=BOOT3 + entries(*[2] * 7, start=4))
    leader = net.elect(1)
    rejections = [
        m for r in net[3].readies for m in r.after_persist if isinstance(m, AppendResponse) and m.reject
    ]
    assert len(rejections) == 1  # not one per entry of term 2
    assert net[3].log_terms() == net[1].log_terms()
    assert net.core(3).log.committed == leader.log.committed


# ---------------------------------------------------------------------------
# §5.4.1 election restriction
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("voter_log", "cand_last_index", "cand_last_term", "granted"),
    [
        (BOOT3 + entries(3, start=4), 10, 2, False),  # stale last term, longer log
        (BOOT3 + entries(2, 2, start=4), 4, 2, False),  # same last term, shorter log
        (BOOT3 + entries(2, 2, start=4), 4, 3, True),  # newer last term, shorter log
        (BOOT3 + entries(2, 2, start=4), 5, 2, True),  # same last term, same length
    ],
)
@pytest.mark.parametrize("pre_vote", [False, True])
def test_5_4_1_vote_denied_to_candidate_with_stale_log(
    voter_log: list[Entry], cand_last_index: int, cand_last_term: int, granted: bool, pre_vote: bool
) -> None:
    net = follower_with_log(voter_log)
    f = net.core(2)
    net[2].raw.step(
        RequestVote(frm=1, to=2, term=4, last_index=cand_last_index, last_term=cand_last_term, pre_vote=pre_vote)
    )
    ready = net.process(2, persist=False)
    assert ready is not None
    out = ready.messages if pre_vote else ready.after_persist
    assert [(m.to, m.granted) for m in out if isinstance(m, VoteResponse)] == [(1, granted)]
    assert f.vote == (1 if granted and not pre_vote else None)
    assert f.term == (3 if pre_vote else 4)


# ---------------------------------------------------------------------------
# §5.4.2 committing entries from previous terms (Figure 8)
# ---------------------------------------------------------------------------


def figure_8() -> tuple[Net, list[int]]:
    """Figure 8 (c) on five nodes. S1 led term 2 and wrote 6@2 to S1, S2;
    S5 led term 3 and wrote 6@3 to itself only; S5 and S4 are down. S1 is
    elected for term 4 and replicates 6@2 (one entry per append) to S3.

    Returns the network after S1 settled and, per delivery round, the
    commit index of S1 at every moment 6@2 was on a majority but 7@4 was not."""
    boot = bootstrap_entries(frozenset({1, 2, 3, 4, 5}))
    hs = HardState(term=3, commit=5)
    net = Net([], max_append_entries=1)
    net.add(1, hard_state=hs, log=boot + entries(2, start=6))
    net.add(2, hard_state=hs, log=boot + entries(2, start=6))
    net.add(3, hard_state=hs, log=boot)
    net.add(4, hard_state=hs, log=boot)
    net.add(5, hard_state=hs, log=boot + entries(3, start=6))
    net.isolate(4)
    net.isolate(5)
    net.warm_up()
    net[1].raw.campaign()
    leader = run_until_leader(net, 1)
    assert leader.term == 4
    commits_at_figure_8c = []
    for _ in range(30):
        if not net.queue:
            break
        net.deliver()
        holders = [n for n in net.nodes if net.core(n).log.term(6) == 2 and net.core(n).log.persisted >= 6]
        has_7 = [n for n in net.nodes if net.core(n).log.term(7) == 4 and net.core(n).log.persisted >= 7]
        if len(holders) >= 3 and len(has_7) < 3:
            commits_at_figure_8c.append(leader.log.committed)
            # Why counting is unsafe: S5 (last term 3) could still win the
            # votes of S3 and S4 (3 of 5 with its own) and overwrite index 6.
            assert all(net.core(n).log.is_up_to_date(6, 3) for n in (3, 4))
    return net, commits_at_figure_8c


def test_5_4_2_leader_does_not_commit_previous_term_entry_by_counting() -> None:
    _, commits = figure_8()
    assert commits, "the scenario never reached Figure 8 (c)"
    assert set(commits) == {5}  # 6@2 is on S1, S2, S3 and still not committed


def test_5_4_2_previous_term_entries_commit_with_current_term_entry() -> None:
    net, _ = figure_8()
    assert net.core(1).log.committed == 7
    assert [(e.index, e.term) for e in net[1].applied][-2:] == [(6, 2), (7, 4)]
    assert net[1].first_commits == [7]


# ---------------------------------------------------------------------------
# Persistence rules (thesis §3.8 / Ready contract)
# ---------------------------------------------------------------------------


def test_leader_commits_only_persisted_on_majority() -> None:
    net = Net(3)
    leader = net.elect(1)
    net.auto_persist[1] = False
    index, _ = net[1].raw.propose([b"a"])
    net.process(1)
    net.deliver(keep=lambda m: m.to == 2)  # node 2 persists and acknowledges
    net.deliver(keep=lambda m: m.frm == 2)
    assert leader.prs[2].match == index
    # 2 of 3 hold it, but one of them is the leader's unfinished fsync.
    assert leader.log.committed == index - 1
    net.persist(1)
    assert leader.log.committed == index


def test_votes_and_acks_wait_for_persistence() -> None:
    net = Net(3, pre_vote=False)
    net.warm_up()
    net.auto_persist[3] = False
    net[3].raw.step(RequestVote(frm=1, to=3, term=2, last_index=3, last_term=1))
    vote_ready = net.process(3)
    assert vote_ready is not None
    assert vote_ready.messages == ()
    assert vote_ready.hard_state == HardState(term=2, vote=1, commit=3)
    net[3].raw.step(AppendEntries(frm=1, to=3, term=2, prev_index=3, prev_term=1, entries=(Entry(4, 2),), commit=3))
    append_ready = net.process(3)
    assert append_ready is not None
    assert not [m for m in append_ready.messages if isinstance(m, AppendResponse)]
    vote = VoteResponse(frm=3, to=1, term=2, granted=True)
    ack = AppendResponse(frm=3, to=1, term=2, index=4)
    assert net[3].raw.on_persisted(vote_ready.number) == [vote]
    assert net[3].raw.on_persisted(append_ready.number) == [ack]


# ---------------------------------------------------------------------------
# §9.6 pre-vote, §6.2 check-quorum, the leader lease on the voter's side
# ---------------------------------------------------------------------------


def test_9_6_pre_vote_does_not_increase_term() -> None:
    net = Net(3)
    net.warm_up()
    net[1].raw.campaign()
    c = net.core(1)
    assert (c.role, c.term, c.vote) == (Role.PRE_CANDIDATE, 1, None)
    ready = net.process(1, persist=False)
    assert ready is not None
    asks = [m for m in ready.messages if isinstance(m, RequestVote)]
    assert sorted(m.to for m in asks) == [2, 3]
    assert all(m.pre_vote and m.term == 2 for m in asks)
    net.deliver(keep=lambda m: m.frm == 1)
    for nid in (2, 3):
        assert (net.core(nid).term, net.core(nid).vote) == (1, None)
    answers = net.peek(VoteResponse, to=1)
    assert len(answers) == 2 and all(m.pre_vote and m.granted for m in answers)


def test_9_6_pre_vote_denied_inside_leader_lease() -> None:
    net = Net(3)
    leader = net.elect(1)
    f = net.core(2)
    term, vote = leader.term, f.vote
    for pre_vote in (True, False):
        net[2].raw.step(RequestVote(frm=3, to=2, term=term + 1, last_index=100, last_term=term, pre_vote=pre_vote))
    assert (f.term, f.vote, f.lead) == (term, vote, 1)
    ready = net.process(2)
    assert ready is None or not [m for m in ready.messages + ready.after_persist if isinstance(m, VoteResponse)]
    # Once an election timeout passed without word from the leader, it votes.
    net.tick(2, net.core(2).config.election_tick)
    net.take(RequestVote)  # its own pre-vote, if it timed out
    net[2].raw.step(RequestVote(frm=3, to=2, term=term + 1, last_index=100, last_term=term, pre_vote=True))
    ready = net.process(2)
    assert ready is not None
    assert [(m.to, m.granted) for m in ready.messages if isinstance(m, VoteResponse)] == [(3, True)]


def test_9_6_rejoining_partitioned_node_does_not_disrupt_leader() -> None:
    net = Net(3)
    leader = net.elect(1)
    term = leader.term
    net.isolate(3)
    for _ in range(5 * leader.config.election_tick):
        net.tick_all()
        net.stabilize()
    assert net.core(3).term == term  # pre-votes never reached a majority
    net.heal()
    for _ in range(3):
        net.tick_all()
        net.stabilize()
    assert (leader.role, leader.term) == (Role.LEADER, term)
    assert (net.core(3).role, net.core(3).lead) == (Role.FOLLOWER, 1)


def test_restart_lease_guard_refuses_votes_for_an_election_timeout() -> None:
    net = Net(3)
    leader = net.elect(1)
    term = leader.term
    node = net.restart(3)  # forgot when it last heard from the leader
    vote = node.core.vote
    ask = RequestVote(frm=2, to=3, term=term + 1, last_index=100, last_term=term)
    node.raw.step(ask)
    assert (node.core.term, node.core.vote) == (term, vote)
    net.process(3)
    assert not net.peek(VoteResponse)
    net.tick(3, node.core.config.election_tick)
    net.queue.clear()
    node.raw.step(ask)
    assert (node.core.term, node.core.vote) == (term + 1, 2)


def test_6_2_leader_steps_down_without_a_quorum_of_active_followers() -> None:
    net = Net(3)
    leader = net.elect(1)
    et = leader.config.election_tick
    net.isolate(1)
    for _ in range(2 * et):
        net.tick(1)
        net.stabilize()
    assert (leader.role, leader.lead) == (Role.FOLLOWER, None)


def test_6_2_leader_with_an_active_quorum_stays_leader() -> None:
    net = Net(3)
    leader = net.elect(1)
    term = leader.term
    net.isolate(3)
    for _ in range(4 * leader.config.election_tick):
        net.tick(1)
        net.stabilize()
    assert (leader.role, leader.term) == (Role.LEADER, term)


# ---------------------------------------------------------------------------
# §6.4 ReadIndex and §6.4.1 lease reads
# ---------------------------------------------------------------------------


def test_6_4_read_waits_for_leader_commit_in_its_term() -> None:
    net = Net(3)
    net.warm_up()
    net[1].raw.campaign()
    leader = run_until_leader(net, 1)
    held = net.take(AppendEntries)  # the no-op is not committed yet
    net[1].raw.read_index(b"r")
    net.process(1)
    assert not net.peek(Heartbeat) and net[1].read_states == []
    net.queue.extend(held)
    net.stabilize()
    noop = leader.log.last_index()
    assert leader.log.committed == noop
    assert net[1].read_states == [ReadState(b"r", noop)]


def test_6_4_one_heartbeat_round_shared_by_all_waiting_reads() -> None:
    net = Net(3)
    leader = net.elect(1)
    commit = leader.log.committed
    net[1].raw.read_index(b"a")
    net[1].raw.read_index(b"b")
    net.process(1)
    beats = net.peek(Heartbeat, frm=1)
    assert sorted(m.to for m in beats) == [2, 3]
    assert len({m.round for m in beats}) == 1
    net.stabilize()
    assert net[1].read_states == [ReadState(b"a", commit), ReadState(b"b", commit)]


def test_6_4_read_index_is_the_commit_index_when_the_round_starts() -> None:
    net = Net(3)
    leader = net.elect(1)
    commit = leader.log.committed
    net[1].raw.read_index(b"r")
    net.process(1)
    held = net.take(Heartbeat)
    net[1].raw.propose([b"x"])
    net.stabilize()
    assert leader.log.committed == commit + 1 and net[1].read_states == []
    net.queue.extend(held)
    net.stabilize()
    assert net[1].read_states == [ReadState(b"r", commit)]


def test_6_4_read_needs_a_quorum_of_heartbeat_answers() -> None:
    net = Net(5)
    net.elect(1)
    net[1].raw.read_index(b"r")
    net.process(1)
    (round_,) = {m.round for m in net.peek(Heartbeat, frm=1)}
    net.deliver(keep=lambda m: m.to in (1, 2))
    net.deliver()
    assert net[1].read_states == []  # leader + node 2 = 2 of 5
    net[1].raw.step(HeartbeatResponse(frm=3, to=1, term=net.core(1).term, round=round_))
    net.process(1)
    assert [rs.ctx for rs in net[1].read_states] == [b"r"]


def test_6_4_deposed_leader_cannot_release_reads() -> None:
    net = Net(3)
    old = net.elect(1)
    net[1].raw.read_index(b"r")
    net.process(1)
    held = net.take(Heartbeat)
    net.isolate(1)
    et = old.config.election_tick
    net.tick(2, et)
    net.tick(3, et)
    net[2].raw.campaign()
    net.stabilize()
    new = net.core(2) if net.core(2).role is Role.LEADER else net.core(3)
    assert new.role is Role.LEADER and new.term > old.term
    assert old.role is Role.LEADER  # it does not know yet
    net.heal()
    net.queue.extend(held)  # its round reaches voters of the newer term
    net.stabilize()
    assert old.role is Role.FOLLOWER
    assert net[1].read_states == []
    assert net[1].dropped_reads == [b"r"]


def test_6_4_follower_read_is_confirmed_by_the_leader() -> None:
    net = Net(3)
    leader = net.elect(1)
    net[2].raw.read_index(b"f")
    net.process(2)
    assert [m.ctxs for m in net.peek(ReadIndexRequest, frm=2, to=1)] == [(b"f",)]
    net.stabilize()
    assert net[2].read_states == [ReadState(b"f", leader.log.committed)]


def test_6_4_read_forwarded_to_a_node_no_longer_leader_is_dropped_at_once() -> None:
    net = Net(3)
    old = net.elect(1)
    term = old.term
    net.isolate(1)
    for _ in range(2 * old.config.election_tick):
        net.tick(1)
        net.stabilize()
    assert (old.role, old.term) == (Role.FOLLOWER, term)  # check-quorum, same term
    net.heal()
    assert net.core(2).lead == 1  # node 2 has not noticed yet
    net[2].raw.read_index(b"f")
    net.stabilize()
    # The caller can retry elsewhere now rather than after an election timeout.
    assert net[2].dropped_reads == [b"f"] and net[2].read_states == []
    assert net.core(2).forwarded_reads == {}


def test_6_4_read_index_excludes_entries_not_yet_committed() -> None:
    net = Net(3)
    leader = net.elect(1)
    commit = leader.log.committed
    net[1].raw.propose([b"x"])
    net[1].raw.read_index(b"r")
    net.process(1)
    held = net.take(AppendEntries)
    net.stabilize()
    assert leader.log.last_index() == commit + 1
    assert net[1].read_states == [ReadState(b"r", commit)]
    net.queue.extend(held)
    net.stabilize()


def test_5_2_follower_stays_follower_while_it_hears_heartbeats() -> None:
    net = Net(3)
    leader = net.elect(1)
    term = leader.term
    for _ in range(5 * leader.config.election_tick):
        net.tick_all()
        net.stabilize()
    for nid in (2, 3):
        asks = [m for r in net[nid].readies for m in r.messages + r.after_persist if isinstance(m, RequestVote)]
        assert asks == [], nid
    assert (leader.role, leader.term) == (Role.LEADER, term)


def test_6_4_1_lease_read_valid_after_quorum_heartbeat_ack() -> None:
    net = Net(3)
    leader = net.elect(1)
    assert net[1].raw.lease_read_index() is None  # no round acknowledged yet
    net.leader_heartbeat(1)
    assert net[1].raw.lease_read_index() == leader.log.committed


def test_6_4_1_lease_read_invalid_after_lease_ticks_without_acks() -> None:
    net = Net(3, election_tick=10, max_clock_drift=0.1)
    assert net.core(1).config.lease_ticks() == 7  # (10 - 1) * 0.9 / 1.1 = 7.4
    leader = net.elect(1)
    net.leader_heartbeat(1)
    net.isolate(1)
    for _ in range(7 - 1):
        net.tick(1)
        net.stabilize()
        assert net[1].raw.lease_read_index() == leader.log.committed
    net.tick(1)
    assert leader.role is Role.LEADER
    assert net[1].raw.lease_read_index() is None


def test_6_4_1_lease_read_invalid_after_timeout_now_was_sent() -> None:
    net = Net(3)
    net.elect(1)
    net.leader_heartbeat(1)
    assert net[1].raw.lease_read_index() is not None
    net[1].raw.transfer_leader(2)
    net.process(1)
    assert net.take(TimeoutNow, to=2)  # dropped: the transfer will not happen
    assert net[1].raw.lease_read_index() is None
    for _ in range(net.core(1).config.election_tick):
        net.tick(1)
        net.stabilize()
    assert net.core(1).lead_transferee is None  # transfer given up ...
    assert net[1].raw.lease_read_index() is None  # ... but not the doubt about node 2


# ---------------------------------------------------------------------------
# §7 log compaction
# ---------------------------------------------------------------------------


def leader_with_compacted_log(net: Net) -> None:
    net.elect(1)
    net.isolate(3)
    net[1].raw.propose([b"a", b"b", b"c"])
    net.stabilize()
    net.compact(1)
    net[1].raw.propose([b"d"])
    net.stabilize()


def test_7_follower_whose_next_entry_was_compacted_gets_snapshot_then_catches_up() -> None:
    net = Net(3)
    leader_with_compacted_log(net)
    leader = net.core(1)
    snap = leader.snapshot
    assert snap is not None and leader.log.first_index() > net.core(3).log.last_index() + 1
    net.heal()
    net.leader_heartbeat(1)
    sent = [m for r in net[1].readies for m in r.messages if isinstance(m, InstallSnapshot)]
    assert [m.to for m in sent] == [3]
    assert net[3].durable.snapshot == snap
    assert net[3].log_terms() == net[1].log_terms()
    assert net.core(3).log.committed == leader.log.committed
    assert leader.prs[3].match == leader.log.last_index()


def test_7_snapshot_ack_is_sent_after_persist() -> None:
    net = Net(3)
    leader_with_compacted_log(net)
    snap = net.core(1).snapshot
    assert snap is not None
    net.queue.clear()
    net[3].raw.step(InstallSnapshot(frm=1, to=3, term=net.core(1).term, snapshot=snap))
    ready = net.process(3, persist=False)
    assert ready is not None
    assert ready.snapshot == snap
    assert not [m for m in ready.messages if isinstance(m, AppendResponse)]
    assert list(ready.after_persist) == [AppendResponse(frm=3, to=1, term=net.core(1).term, index=snap.meta.index)]
    assert net[3].raw.on_persisted(ready.number) == list(ready.after_persist)
    assert net.core(3).log.persisted == snap.meta.index


# ---------------------------------------------------------------------------
# §4 membership changes
# ---------------------------------------------------------------------------


def test_4_learner_does_not_vote() -> None:
    net = Net(3, pre_vote=False)
    net.elect(1)
    add_learner(net, 1, 4)
    learner = net.core(4)
    assert learner.role is Role.LEARNER
    # A learner never campaigns, however long it waits.
    for _ in range(3 * learner.config.election_tick):
        net.tick(4)
    net.process(4)
    assert not net.peek(RequestVote, frm=4) and learner.role is Role.LEARNER
    # Candidates do not ask it; its vote would not count anyway.
    net.tick(2, net.core(2).config.election_tick)
    net[2].raw.campaign()
    net.process(2)
    assert sorted(m.to for m in net.peek(RequestVote, frm=2)) == [1, 3]
    net.queue.clear()
    c = net.core(2)
    net[2].raw.step(VoteResponse(frm=4, to=2, term=c.term, granted=True))
    assert c.role is Role.CANDIDATE


def test_4_learner_does_not_count_for_commit() -> None:
    net = Net(2)
    leader = net.elect(1)
    add_learner(net, 1, 3)
    net.cut(1, 2)
    index, _ = net[1].raw.propose([b"x"])
    net.stabilize()
    assert net.core(3).log.last_index() == index  # the learner has it ...
    assert leader.log.committed == index - 1  # ... and it does not count
    net.heal()
    net.leader_heartbeat(1)
    assert leader.log.committed == index


def test_4_promoted_learner_votes_and_counts() -> None:
    net = Net(3)
    leader = net.elect(1)
    add_learner(net, 1, 4)
    net[1].raw.propose_conf_change(ConfChange(ConfChangeType.PROMOTE, 4))
    net.stabilize()
    assert leader.conf.voters == {1, 2, 3, 4}
    assert net.core(4).role is Role.FOLLOWER and not leader.prs[4].is_learner
    net.cut(1, 3)
    net.cut(1, 4)
    index, _ = net[1].raw.propose([b"x"])
    net.stabilize()
    assert leader.log.committed == index - 1  # 2 of 4 is no majority
    net.heal()
    net.cut(1, 3)
    net.leader_heartbeat(1)
    assert leader.log.committed == index  # 1, 2 and 4


def test_4_removed_voter_no_longer_counts() -> None:
    net = Net(3)
    leader = net.elect(1)
    net[1].raw.propose_conf_change(ConfChange(ConfChangeType.REMOVE, 3))
    net.stabilize()
    assert leader.conf.voters == {1, 2} and 3 not in leader.prs
    net.cut(1, 3)
    net.cut(1, 2)
    index, _ = net[1].raw.propose([b"x"])
    net.stabilize()
    assert leader.log.committed == index - 1  # 1 of 2
    net.heal()
    net.cut(1, 3)
    net.leader_heartbeat(1)
    assert leader.log.committed == index


def test_4_7_learner_added_after_compaction_joins_from_the_snapshot() -> None:
    net = Net(3)
    leader = net.elect(1)
    net[1].raw.propose([b"a", b"b"])
    net.stabilize()
    snap = net.compact(1)
    add_learner(net, 1, 4)
    learner = net.core(4)
    assert net[4].durable.snapshot == snap
    assert learner.role is Role.LEARNER and learner.conf.learners == {4}
    assert learner.log.committed == leader.log.committed
    net[1].raw.propose_conf_change(ConfChange(ConfChangeType.PROMOTE, 4))
    net.stabilize()
    assert learner.role is Role.FOLLOWER and learner.conf.voters == {1, 2, 3, 4}


def test_4_one_membership_change_at_a_time() -> None:
    net = Net(3)
    net.elect(1)
    net.add(4)
    net.add(5)
    net[1].raw.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    with pytest.raises(MembershipChangeInProgress):
        net[1].raw.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 5))
    net.stabilize()
    net[1].raw.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 5))
    net.stabilize()
    assert net.core(1).conf.learners == {4, 5}


def test_4_leader_must_commit_in_its_term_before_proposing_a_change() -> None:
    net = Net(3)
    net.warm_up()
    net[1].raw.campaign()
    run_until_leader(net, 1)
    with pytest.raises(ProposalDropped) as info:
        net[1].raw.propose_conf_change(ConfChange(ConfChangeType.REMOVE, 3))
    assert info.type is ProposalDropped
    net.stabilize()
    net[1].raw.propose_conf_change(ConfChange(ConfChangeType.REMOVE, 3))


def test_4_removing_the_leader_hands_over_with_timeout_now() -> None:
    net = Net(3)
    old = net.elect(1)
    term = old.term
    net[1].raw.propose_conf_change(ConfChange(ConfChangeType.REMOVE, 1))
    net.stabilize()
    handover = [m for r in net[1].readies for m in r.messages if isinstance(m, TimeoutNow)]
    assert [m.to for m in handover] == [2]  # most up to date voter, lowest id on ties
    assert old.role is Role.FOLLOWER
    new = net.core(2)
    assert (new.role, new.term) == (Role.LEADER, term + 1)
    assert new.conf.voters == {2, 3}


# ---------------------------------------------------------------------------
# §3.10 leadership transfer
# ---------------------------------------------------------------------------


def lagging_transfer(net: Net) -> RaftCore:
    leader = net.elect(1)
    net.cut(1, 3)
    net[1].raw.propose([b"a", b"b"])
    net.stabilize()
    net.heal()
    net[1].raw.transfer_leader(3)
    return leader


def test_3_10_lagging_target_is_caught_up_before_timeout_now() -> None:
    net = Net(3)
    leader = lagging_transfer(net)
    term = leader.term
    net.process(1)
    assert not net.peek(TimeoutNow)
    for _ in range(20):
        net.deliver()
        if net.peek(TimeoutNow):
            break
    assert [m.to for m in net.peek(TimeoutNow)] == [3]
    assert net.core(3).log.last_index() == leader.log.last_index()
    net.stabilize()  # the voters are in lease: only TimeoutNow's force wins
    assert (net.core(3).role, net.core(3).term) == (Role.LEADER, term + 1)
    assert leader.role is Role.FOLLOWER


def test_3_10_proposals_refused_during_transfer() -> None:
    net = Net(3)
    lagging_transfer(net)
    with pytest.raises(ProposalDropped):
        net[1].raw.propose([b"x"])
    net.stabilize()
    with pytest.raises(NotLeader):
        net[1].raw.propose([b"x"])


def test_3_10_transfer_aborted_after_an_election_timeout() -> None:
    net = Net(3)
    leader = net.elect(1)
    term = leader.term
    net.isolate(3)
    net[1].raw.propose([b"a"])
    net.stabilize()
    net[1].raw.transfer_leader(3)
    for _ in range(leader.config.election_tick - 1):
        net.tick(1)
        net.stabilize()
        assert leader.lead_transferee == 3
    net.tick(1)
    net.stabilize()
    assert leader.lead_transferee is None
    assert (leader.role, leader.term) == (Role.LEADER, term)
    net[1].raw.propose([b"b"])  # accepted again

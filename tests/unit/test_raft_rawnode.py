"""The Ready contract of RawNode (dengine/raft/rawnode.py, ready.py).

Rules pinned: Readies are numbered 1, 2, 3 ...; every entry is handed to be
persisted once (again only if a truncation replaced it); a committed entry is
handed to be applied once, as soon as it is committed (durable on a majority,
maybe not yet here); ``on_persisted(n)`` returns exactly the after_persist messages of the
Readies numbered <= n, once; soft and hard state appear only when changed;
``first_commit_in_term`` is reported once per term of leadership.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dengine.raft.messages import (
    AppendEntries,
    AppendResponse,
    Entry,
    HardState,
    RequestVote,
    Role,
    VoteResponse,
)
from dengine.raft.rawnode import RawNode
from tests.unit.raft_helpers import Net, config


def test_readies_are_numbered_consecutively_from_one() -> None:
    net = Net(3)
    net.elect(1)
    numbers = [r.number for r in net[1].readies]
    assert numbers == list(range(1, len(numbers) + 1))


def test_nothing_to_do_means_no_ready() -> None:
    net = Net(3)
    net.elect(1)
    assert not net[2].raw.has_ready()
    assert net.process(2) is None


def test_entries_are_handed_once() -> None:
    net = Net(3)
    net.elect(1)
    net[1].raw.propose([b"a"])
    net[1].raw.propose([b"b"])
    first = net[1].raw.ready()
    assert [e.data for e in first.entries] == [b"a", b"b"]
    net[1].raw.propose([b"c"])
    second = net[1].raw.ready()
    assert [e.data for e in second.entries] == [b"c"]
    assert net[1].raw.ready().entries == ()


def test_committed_is_handed_once_as_soon_as_committed() -> None:
    net = Net(3)
    net.elect(1)
    f = net[2].raw
    term = f.core.term
    last = f.core.log.last_index()
    # The leader says the new entry is already committed (a majority has it);
    # it is not durable here yet, but it may be applied: a crash cannot lose it.
    f.step(AppendEntries(frm=1, to=2, term=term, prev_index=last, prev_term=term,
                         entries=(Entry(last + 1, term, data=b"y"),), commit=last))
    ready0 = f.ready()
    assert ready0.committed == ()  # not committed: not handed out
    f.step(AppendEntries(frm=1, to=2, term=term, prev_index=last + 1, prev_term=term,
                         entries=(Entry(last + 2, term, data=b"x"),), commit=last + 2))
    ready = f.ready()
    assert f.core.log.committed == last + 2
    assert [e.index for e in ready.entries] == [last + 2]
    assert [e.data for e in ready.committed] == [b"y", b"x"]
    f.on_persisted(ready.number)
    assert f.ready().committed == ()


def test_on_persisted_returns_exactly_the_after_persist_messages_of_readies_up_to_n() -> None:
    net = Net(3, pre_vote=False)
    net.warm_up()
    raw = net[3].raw
    readies = []
    for term, frm in ((2, 1), (3, 2), (4, 1)):
        raw.step(RequestVote(frm=frm, to=3, term=term, last_index=3, last_term=1))
        readies.append(raw.ready())
    assert [len(r.after_persist) for r in readies] == [1, 1, 1]
    assert raw.on_persisted(readies[1].number) == [*readies[0].after_persist, *readies[1].after_persist]
    assert raw.on_persisted(readies[1].number) == []  # released once
    assert raw.on_persisted(readies[2].number) == list(readies[2].after_persist)
    assert readies[2].after_persist == (VoteResponse(frm=3, to=1, term=4, granted=True),)


def test_after_persist_messages_are_never_in_messages() -> None:
    net = Net(3, pre_vote=False)
    net.warm_up()
    raw = net[3].raw
    raw.step(RequestVote(frm=1, to=3, term=2, last_index=3, last_term=1))
    raw.step(AppendEntries(frm=1, to=3, term=2, prev_index=3, prev_term=1, entries=(Entry(4, 2),)))
    ready = raw.ready()
    assert not any(isinstance(m, (VoteResponse, AppendResponse)) for m in ready.messages)
    assert len(ready.after_persist) == 2


def test_soft_and_hard_state_only_when_changed() -> None:
    raw = RawNode(config(1, [1, 2, 3]))
    first = raw.ready()
    assert first.soft_state is not None and first.hard_state == HardState(term=1, vote=None, commit=3)
    raw.on_persisted(first.number)
    second = raw.ready()
    assert (second.soft_state, second.hard_state) == (None, None)
    raw.core.tick_count = raw.core.config.election_tick
    raw.step(RequestVote(frm=2, to=1, term=5, last_index=3, last_term=1))
    third = raw.ready()
    assert third.hard_state == HardState(term=5, vote=2, commit=3)
    assert third.soft_state is not None and third.soft_state.term == 5


def test_restarted_node_reports_no_hard_state_it_already_has() -> None:
    hs = HardState(term=4, vote=2, commit=3)
    raw = RawNode(config(1), hard_state=hs, entries=[Entry(i, 1) for i in (1, 2, 3)])
    ready = raw.ready()
    assert ready.hard_state is None and ready.entries == ()
    assert ready.must_persist() is False


def test_first_commit_in_term_is_reported_once_per_term() -> None:
    net = Net(3)
    leader = net.elect(1)
    assert net[1].first_commits == [leader.log.last_index()]
    net[1].raw.propose([b"a"])
    net.stabilize()
    assert len(net[1].first_commits) == 1
    # A new term of leadership reports again: hand over to 2 and back.
    net[1].raw.transfer_leader(2)
    net.stabilize()
    assert net.core(2).role is Role.LEADER and len(net[2].first_commits) == 1
    net[2].raw.transfer_leader(1)
    net.stabilize()
    assert leader.role is Role.LEADER
    assert len(net[1].first_commits) == 2
    assert net[1].first_commits[-1] == leader.log.last_index()


def test_followers_never_report_a_first_commit() -> None:
    net = Net(3)
    net.elect(1)
    net[1].raw.propose([b"a"])
    net.stabilize()
    assert net[2].first_commits == [] and net[3].first_commits == []


@settings(max_examples=40, deadline=None)
@given(script=st.lists(st.sampled_from(["propose", "deliver", "persist1", "persist2", "tick"]), max_size=40))
def test_each_index_is_applied_once_in_order_whatever_the_persist_schedule(script: list[str]) -> None:
    net = Net(3)
    net.elect(1)
    for nid in (1, 2):
        net.auto_persist[nid] = False
    for step in script:
        if step == "propose":
            net[1].raw.propose([b"p"])
            net.process_all()
        elif step == "deliver":
            net.deliver()
        elif step == "tick":
            net.tick(1)
            net.process_all()
        else:
            net.process(int(step[-1]))
            net.persist(int(step[-1]))
    net.auto_persist = {1: True, 2: True, 3: True}
    net.persist(1)
    net.persist(2)
    net.tick(1)
    net.stabilize()
    for nid in (1, 2, 3):
        indexes = [e.index for e in net[nid].applied]
        assert indexes == list(range(1, net.core(nid).log.committed + 1)), nid
        # Handed to disk once each, in order (no truncation happens here).
        handed = [e.index for r in net[nid].readies for e in r.entries]
        assert handed == list(range(1, net.core(nid).log.last_index() + 1)), nid

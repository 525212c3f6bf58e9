"""check_message (dengine/raft/validate.py): one test per rule of its
docstring, the legal corner cases it must let through, every message the
real core sends in 3-node runs, and never an exception on arbitrary fields."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dengine.errors import InvalidArgument, NotLeader, ProposalDropped, ResourceExhausted
from dengine.raft.messages import (
    MESSAGE_TYPES,
    AppendEntries,
    AppendResponse,
    ConfState,
    Entry,
    EntryType,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    Role,
    Snapshot,
    SnapshotMeta,
    TimeoutNow,
    TransferLeader,
    VoteResponse,
)
from dengine.raft.validate import check_message
from tests.unit.raft_helpers import Net

# Messages from node 1 to node 2 (this node), in term 5, unless a test says otherwise.
ME = 2


def ae(**kw: Any) -> AppendEntries:
    return AppendEntries(**{"frm": 1, "to": ME, "term": 5, "prev_index": 4, "prev_term": 3, **kw})


def ar(**kw: Any) -> AppendResponse:
    return AppendResponse(**{"frm": 1, "to": ME, "term": 5, "index": 4, **kw})


def rv(**kw: Any) -> RequestVote:
    return RequestVote(**{"frm": 1, "to": ME, "term": 5, "last_index": 4, "last_term": 3, **kw})


def snap(index: int = 9, term: int = 4, voters: Any = (1, 2, 3), learners: Any = (), **kw: Any) -> InstallSnapshot:
    meta = SnapshotMeta(index, term, ConfState(voters=voters, learners=learners))
    return InstallSnapshot(**{"frm": 1, "to": ME, "term": 5, "snapshot": Snapshot(meta, b"image"), **kw})


def rir(**kw: Any) -> ReadIndexResponse:
    return ReadIndexResponse(**{"frm": 1, "to": ME, "term": 5, "ctxs": (b"r",), "index": 7, **kw})


def E(index: int, term: int, data: bytes = b"") -> Entry:  # noqa: N802 - reads like the class
    return Entry(index, term, data=data)


# -- one test per rule -------------------------------------------------------------


REJECTED: list[tuple[str, Message, str]] = [
    # field types
    ("sender id not an integer", ae(frm="1"), "sender id is not an integer (str)"),
    ("term is a bool", ae(term=True), "term is not an integer (bool)"),
    ("negative term", ae(term=-1), "negative term -1"),
    ("term beyond 64 bits", ae(term=2**64), "term does not fit in 64 bits"),
    ("negative index", ar(index=-3), "negative index -3"),
    ("negative commit", ae(commit=-2), "negative commit -2"),
    ("huge negative commit", ae(commit=-(2**70)), "negative commit (beyond 64 bits)"),
    ("flag not a bool", ar(reject=1), "reject is not a boolean (int)"),
    ("vote flag not a bool", VoteResponse(frm=1, to=ME, term=5, granted=None), "granted is not a boolean (NoneType)"),  # type: ignore[arg-type]
    ("negative round", HeartbeatResponse(frm=1, to=ME, term=5, round=-1), "negative round -1"),
    ("entries not a sequence", ae(entries=None), "entries is not a sequence (NoneType)"),
    ("entry not an Entry", ae(entries=((5, 3),)), "an entry is a tuple, not an Entry"),
    ("entry of unknown type", ae(entries=(Entry(5, 3, type=7),)), "entry 5 has an unknown type (int)"),  # type: ignore[arg-type]
    ("entry data not bytes", ae(entries=(Entry(5, 3, data="x"),)), "entry 5 data is not bytes (str)"),  # type: ignore[arg-type]
    ("read context not bytes", rir(ctxs=(b"a", "b")), "read contexts holds a str, not bytes"),
    # addressing
    ("message from node 0", ae(frm=0), "message from node 0"),
    ("message for another node", ae(to=3), "message to node 3 delivered to node 2"),
    ("message claiming to be ours", ae(frm=ME), "message from node 2, which is this node"),
    # index 0 <-> term 0
    ("prev_term at prev_index 0", ae(prev_index=0, prev_term=2), "prev_term 2 at prev_index 0: index 0 has term 0"),
    ("prev_term 0 above index 0", ae(prev_index=4, prev_term=0), "prev_term 0 at prev_index 4: only index 0 has term 0"),
    ("entry of term 0", ae(prev_index=0, prev_term=0, entries=(E(1, 0),)),
     "entry term 0 at entry index 1: only index 0 has term 0"),
    ("last_term at last_index 0", rv(last_index=0, last_term=1), "last_term 1 at last_index 0: index 0 has term 0"),
    ("hint term at hint 0", ar(reject=True, reject_hint=0, hint_term=2),
     "hint term 2 at rejection hint 0: index 0 has term 0"),
    ("snapshot term 0", snap(index=9, term=0), "snapshot term 0 at snapshot index 9: only index 0 has term 0"),
    # terms never exceed the message's term
    ("prev_term above the message term", ae(prev_term=6), "prev_term 6 is above the message term 5"),
    ("entry term above the message term", ae(term=3, prev_term=3, entries=(E(5, 9),)),
     "entry term 9 is above the message term 3"),
    ("last_term above the campaign term", rv(last_term=6), "last_term 6 is above the message term 5"),
    ("hint term above the message term", ar(reject=True, reject_hint=2, hint_term=6),
     "hint term 6 is above the message term 5"),
    ("snapshot term above the message term", snap(term=6), "snapshot term 6 is above the message term 5"),
    # AppendEntries shape
    ("first entry not after prev_index", ae(entries=(E(7, 3),)), "first entry index 7 does not follow prev_index 4"),
    ("entries with a gap", ae(entries=(E(5, 3), E(7, 3))), "append entries are not contiguous: index 7 follows 5"),
    ("entries out of order", ae(entries=(E(5, 3), E(6, 3), E(1, 3))),
     "append entries are not contiguous: index 1 follows 6"),
    ("first entry below prev_term", ae(entries=(E(5, 2),)), "first entry term 2 is below prev_term 3"),
    ("entry terms go down", ae(entries=(E(5, 5), E(6, 4))), "entry terms go down: 4 after 5"),
    # term 0 is before any election
    ("append in term 0", ae(term=0, prev_index=0, prev_term=0), "AppendEntries in term 0, before any election"),
    ("heartbeat in term 0", Heartbeat(frm=1, to=ME, term=0, commit=0), "Heartbeat in term 0, before any election"),
    ("snapshot in term 0", InstallSnapshot(frm=1, to=ME, term=0, snapshot=snap().snapshot),
     "InstallSnapshot in term 0, before any election"),
    ("timeout-now in term 0", TimeoutNow(frm=1, to=ME, term=0), "TimeoutNow in term 0, before any election"),
    ("vote request in term 0", rv(term=0, last_index=0, last_term=0), "RequestVote in term 0, before any election"),
    # RequestVote
    ("forced pre-vote", rv(pre_vote=True, force=True), "a pre-vote request is never forced"),
    # AppendResponse rejection
    ("hint above the rejected index", ar(reject=True, index=4, reject_hint=6, hint_term=3),
     "rejection hint 6 is above the rejected index 4"),
    # InstallSnapshot
    ("snapshot meta index -1", snap(index=-1), "negative snapshot index -1"),
    ("snapshot at index 0", snap(index=0, term=0), "snapshot at index 0 covers nothing"),
    ("snapshot without voters", snap(voters=()), "snapshot configuration has no voters"),
    ("snapshot voter and learner", snap(voters=(1, 2, 3), learners=(3, 4)),
     "snapshot configuration lists node 3 as both voter and learner"),
    ("snapshot voter 0", snap(voters=(0, 1)), "snapshot voters lists node 0"),
    ("snapshot learner not an id", snap(learners=("x",)), "a node id in snapshot learners is not an integer (str)"),
    ("snapshot data not bytes", InstallSnapshot(frm=1, to=ME, term=5, snapshot=Snapshot(snap().snapshot.meta, None)),  # type: ignore[arg-type]
     "snapshot data is not bytes (NoneType)"),
    ("snapshot not a Snapshot", InstallSnapshot(frm=1, to=ME, term=5, snapshot=b"image"),  # type: ignore[arg-type]
     "the snapshot is a bytes, not a Snapshot"),
    # reads
    ("read request without reads", ReadIndexRequest(frm=1, to=ME, term=5, ctxs=()), "read index request carries no reads"),
    ("ReadIndexResponse index negative", rir(index=-1), "negative read index -1"),
    ("read index 0 granted", rir(index=0), "read index 0 granted: a leader serves reads only after its first commit"),
    # TransferLeader
    ("transfer to node 0", TransferLeader(frm=1, to=ME, term=5, transferee=0), "transfer to node 0"),
    # not a message at all
    ("not a peer message", Entry(1, 1), "Entry is not a Raft peer message"),  # type: ignore[list-item]
]


@pytest.mark.parametrize(("message", "problem"), [r[1:] for r in REJECTED], ids=[r[0] for r in REJECTED])
def test_rejected_with_a_plain_sentence(message: Message, problem: str) -> None:
    assert check_message(message, self_id=ME) == problem


ACCEPTED: list[tuple[str, Message]] = [
    ("empty append (heartbeat / probe)", ae()),
    ("append at the start of the log", ae(prev_index=0, prev_term=0, entries=(E(1, 1), E(2, 1)), commit=0)),
    ("commit beyond the entries carried", ae(entries=(E(5, 3),), commit=40)),
    ("commit beyond prev_index of an empty append", ae(commit=40)),
    ("entries of several terms", ae(entries=(E(5, 3), E(6, 4), E(7, 5)))),
    ("entries as a list", ae(entries=[E(5, 3)])),
    ("a conf change entry with any data", ae(entries=(Entry(5, 3, EntryType.CONF_CHANGE, b"?"),))),
    ("success response", ar()),
    ("success response at index 0", ar(index=0)),
    ("stale-term rejection", ar(index=0, reject=True)),
    ("rejection with a hint", ar(index=9, reject=True, reject_hint=6, hint_term=3)),
    ("vote request from an empty log", rv(last_index=0, last_term=0)),
    ("pre-vote request", rv(pre_vote=True)),
    ("forced vote request (transfer)", rv(force=True)),
    ("vote response", VoteResponse(frm=1, to=ME, term=5, granted=False, pre_vote=True)),
    ("snapshot with learners", snap(learners=(4,))),
    ("snapshot in the message's term", snap(term=5)),
    ("heartbeat", Heartbeat(frm=1, to=ME, term=5, commit=0, round=0)),
    ("heartbeat response", HeartbeatResponse(frm=1, to=ME, term=0, round=0)),
    ("read request", ReadIndexRequest(frm=1, to=ME, term=5, ctxs=(b"a", b"b"))),
    ("read index rejected", rir(index=0, reject=True)),
    ("read rejection echoing no reads", rir(ctxs=(), index=0, reject=True)),
    ("timeout-now", TimeoutNow(frm=1, to=ME, term=5)),
    ("transfer to the sender", TransferLeader(frm=1, to=ME, term=5, transferee=1)),
    ("transfer to the leader itself", TransferLeader(frm=1, to=ME, term=5, transferee=ME)),
    ("largest ids and terms", ae(frm=2**64 - 1, term=2**64 - 1, commit=2**64 - 1)),
]


@pytest.mark.parametrize("message", [a[1] for a in ACCEPTED], ids=[a[0] for a in ACCEPTED])
def test_legal_corner_cases_are_accepted(message: Message) -> None:
    assert check_message(message, self_id=ME) is None


def test_every_rule_has_its_test() -> None:
    # Each type of peer message appears among the rejected and the accepted.
    assert {type(r[1]) for r in REJECTED} >= set(MESSAGE_TYPES)
    assert {type(a[1]) for a in ACCEPTED} == set(MESSAGE_TYPES)


# -- every message the real core sends -----------------------------------------


class CheckedNet(Net):
    """A Net that checks every message the cores sent before delivering
    (or dropping) it."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.seen: Counter[str] = Counter()

    def deliver(self, keep: Callable[[Message], bool] | None = None) -> int:
        for m in self.queue:
            problem = check_message(m, self_id=m.to)
            assert problem is None, f"{m!r} refused: {problem}"
            self.seen[_kind(m)] += 1
        return super().deliver(keep)


def _kind(m: Message) -> str:
    name = type(m).__name__
    if getattr(m, "reject", False):
        return name + " reject"
    if getattr(m, "pre_vote", False):
        return name + " pre-vote"
    if getattr(m, "force", False):
        return name + " force"
    if isinstance(m, AppendEntries) and not m.entries:
        return name + " empty"
    return name


def _propose(net: Net, nid: int, n: int) -> None:
    for k in range(n):
        net[nid].raw.propose([b"v%d" % k])
        net.stabilize()


def _leader(net: Net, among: tuple[int, ...] = (1, 2, 3)) -> int | None:
    return next((n for n in among if net.core(n).role is Role.LEADER), None)


def test_every_message_of_a_scripted_3_node_run_is_accepted() -> None:
    net = CheckedNet(3)
    net.elect(1)  # pre-votes, votes, the no-op appended and acknowledged
    _propose(net, 1, 5)
    net.leader_heartbeat(1)

    # Reads: on the leader (a heartbeat round), and on a follower (forwarded).
    net[1].raw.read_index(b"leader-read")
    net[2].raw.read_index(b"follower-read")
    net.stabilize()
    assert [r.ctx for r in net[1].read_states] == [b"leader-read"]
    assert [r.ctx for r in net[2].read_states] == [b"follower-read"]

    # The leader is cut off and keeps proposing; 2 and 3 elect one of them
    # (only they tick: 1 still believes it leads).
    net.isolate(1)
    net[1].raw.propose([b"lost-1"])
    net[1].raw.propose([b"lost-2"])
    net.stabilize()
    for _ in range(100):  # bounded
        net.tick(2)
        net.tick(3)
        net.stabilize()
        if _leader(net, (2, 3)) is not None:
            break
    leader = _leader(net, (2, 3))
    assert leader is not None
    # Healed: the old leader's heartbeat is refused for its stale term, and
    # its unreplicated entries conflict with the new leader's log (rejection hints).
    net.heal()
    net.leader_heartbeat(1)
    net.leader_heartbeat(leader)
    _propose(net, leader, 3)
    assert net.core(1).role is Role.FOLLOWER
    assert net.core(1).log.last_index() == net.core(leader).log.last_index()

    # A follower's forwarded read that reaches a node that is not the leader is refused.
    follower, other = (n for n in (1, 2, 3) if n != leader)
    net[follower].raw.read_index(b"misdirected")
    net.process(follower)
    forwarded = net.take(ReadIndexRequest)
    assert forwarded
    for m in forwarded:
        net[other].raw.step(attrs.evolve(m, to=other))
    net.stabilize()
    assert b"misdirected" in net[follower].dropped_reads

    # Snapshot: a follower misses entries the leader then compacts away.
    net.isolate(other)
    _propose(net, leader, 5)
    net.compact(leader)
    net.heal()
    net.leader_heartbeat(leader)
    net.leader_heartbeat(leader)
    assert net.core(other).log.snapshot_index == net.core(leader).log.snapshot_index > 0

    # Leadership transfer asked on a follower: TransferLeader, TimeoutNow, a forced vote.
    net[other].raw.transfer_leader(other)
    net.stabilize()
    assert net.core(other).role is Role.LEADER
    _propose(net, other, 2)

    # A restart (unpersisted state lost), then catching up.
    net.restart(leader)
    net.leader_heartbeat(other)
    _propose(net, other, 2)

    for kind in (
        "AppendEntries", "AppendEntries empty", "AppendResponse", "AppendResponse reject",
        "RequestVote", "RequestVote pre-vote", "RequestVote force", "VoteResponse", "VoteResponse pre-vote",
        "InstallSnapshot", "Heartbeat", "HeartbeatResponse", "ReadIndexRequest", "ReadIndexResponse",
        "ReadIndexResponse reject", "TimeoutNow", "TransferLeader",
    ):
        assert net.seen[kind] > 0, (kind, net.seen)


@pytest.mark.parametrize("seed", range(12))
def test_every_message_of_random_3_node_schedules_is_accepted(seed: int) -> None:
    """Every node ticks each step; one random action per step among
    proposals, reads, partitions, compactions, transfers and restarts; up to
    30 % of messages lost. Every message sent must pass (bounded: 400 steps)."""
    rng = random.Random(seed)
    net = CheckedNet(3)
    net.warm_up()
    reads = 0
    for _ in range(400):
        net.tick_all()
        nid = rng.randrange(1, 4)
        core = net.core(nid)
        action = rng.random()
        try:
            if action < 0.40:
                if core.role is Role.LEADER:
                    net[nid].raw.propose([rng.randbytes(rng.randrange(0, 8))])
            elif action < 0.55:
                reads += 1
                net[nid].raw.read_index(b"read-%d" % reads)
            elif action < 0.58:
                net.isolate(nid)
            elif action < 0.68:
                net.heal()
            elif action < 0.75:
                log = core.log
                if log.snapshot_index < log.applied <= log.persisted:
                    net.compact(nid)
            elif action < 0.78:
                net[nid].raw.transfer_leader(rng.randrange(1, 4))
            elif action < 0.80:
                net.restart(nid)
        except (NotLeader, ProposalDropped, ResourceExhausted, InvalidArgument):
            pass  # refused by the core, as a caller would be told
        net.process_all()
        loss = rng.random() * 0.3
        net.deliver(keep=lambda m: rng.random() >= loss)
    net.heal()
    net.stabilize()
    assert net.seen["AppendEntries"] > 0 and sum(net.seen.values()) > 400, net.seen


# -- never raises ----------------------------------------------------------------------


def _raw(cls: type, **fields: Any) -> Any:
    """An instance of an attrs class with any field values (no converters)."""
    obj = object.__new__(cls)
    for name, value in fields.items():
        object.__setattr__(obj, name, value)
    return obj


_scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(),
    # Too long for int -> str (refused past 4300 digits): never formatted.
    st.builds(lambda sign, digits: sign * 10**digits, st.sampled_from([1, -1]), st.integers(4300, 5000)),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True),
    st.text(max_size=5),
    st.binary(max_size=5),
)
_small = st.one_of(st.integers(min_value=-2, max_value=12), st.booleans())
_values = st.one_of(_scalars, _small)


@st.composite
def _entries(draw: st.DrawFn) -> Any:
    def entry() -> Any:
        return _raw(Entry, index=draw(_values), term=draw(_values),
                    type=draw(st.one_of(st.sampled_from(list(EntryType)), _values)),
                    data=draw(st.one_of(st.binary(max_size=3), _values)))

    items = [entry() if draw(st.booleans()) else draw(_values) for _ in range(draw(st.integers(0, 4)))]
    return draw(st.sampled_from([tuple(items), items, None, 3, "entries"]))


@st.composite
def _snapshots(draw: st.DrawFn) -> Any:
    node_sets = st.one_of(st.frozensets(_values, max_size=4), st.lists(_values, max_size=3), _values)
    conf = _raw(ConfState, voters=draw(node_sets), learners=draw(node_sets))
    meta = _raw(SnapshotMeta, index=draw(_values), term=draw(_values), conf_state=draw(st.one_of(st.just(conf), _values)))
    snapshot = _raw(Snapshot, meta=draw(st.one_of(st.just(meta), _values)), data=draw(st.one_of(st.binary(max_size=3), _values)))
    return draw(st.one_of(st.just(snapshot), _values))


@st.composite
def _messages(draw: st.DrawFn) -> Any:
    cls = draw(st.sampled_from(list(MESSAGE_TYPES)))
    fields: dict[str, Any] = {}
    for field in attrs.fields(cls):
        if field.name == "entries":
            fields[field.name] = draw(_entries())
        elif field.name == "snapshot":
            fields[field.name] = draw(_snapshots())
        elif field.name == "ctxs":
            fields[field.name] = draw(st.one_of(st.lists(st.one_of(st.binary(max_size=3), _values), max_size=3).map(tuple), _values))
        else:
            fields[field.name] = draw(_values)
    return _raw(cls, **fields)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=st.one_of(_messages(), _values), self_id=_values)
def test_never_raises_whatever_the_fields_hold(message: Any, self_id: Any) -> None:
    problem = check_message(message, self_id=self_id)
    assert problem is None or (isinstance(problem, str) and 0 < len(problem) < 200)

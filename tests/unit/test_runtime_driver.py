"""The sans-IO runtime driver (dengine/runtime/driver.py), driven by hand.

Each of the runtime defects of issue 11 that lives in the driver has a test
here; the simulator (tests/sim) drives the same object through random
schedules."""

from __future__ import annotations

import logging
from typing import Any

import attrs
import pytest

from dengine.errors import LeaderChanged, NotLeader, ProposalDropped, ResourceExhausted, Timeout
from dengine.raft.core import RaftConfig
from dengine.raft.messages import (
    AppendEntries,
    AppendResponse,
    ConfState,
    Entry,
    HardState,
    Heartbeat,
    Role,
    Snapshot,
    SnapshotMeta,
    VoteResponse,
)
from dengine.raft.rawnode import RawNode
from dengine.runtime.driver import ApplyJob, Driver, DriverOptions, PersistJob, merge_entries
from dengine.storage.memory import MemoryStorage


class W:
    """A waiter: records its one outcome."""

    def __init__(self) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self._done = False

    def set(self, value: Any) -> None:
        if not self._done:
            self.value, self._done = value, True

    def fail(self, error: BaseException) -> None:
        if not self._done:
            self.error, self._done = error, True

    def done(self) -> bool:
        return self._done


@attrs.frozen
class Result:
    results: list[Any]


def encode(commands: list[Any]) -> bytes:
    return b"|".join(commands)


def make(nid: int = 1, voters: tuple[int, ...] = (1, 2, 3), **opts: Any) -> Driver:
    raw = RawNode(RaftConfig(id=nid, initial_voters=frozenset(voters), election_tick=10))
    return Driver(raw, DriverOptions(**opts), encode=encode, durable_hard_state=HardState())


def settle(d: Driver, storage: MemoryStorage | None = None) -> list[Any]:
    """Persist and apply everything the driver has, as the runtime would;
    returns the messages that left."""
    out: list[Any] = []
    for _ in range(50):
        out.extend(d.poll())
        job = d.take_persist()
        if job is not None:
            if storage is not None:
                job.write_to(storage)
            out.extend(d.on_persisted(job))
            continue
        apply = d.take_apply()
        if apply is not None:
            d.on_applied(apply, [Result(e.data.split(b"|")) if e.data else None for e in apply.entries])
            continue
        if not d.raw.has_ready():
            return out
    raise AssertionError("the driver did not settle")


def leader(**opts: Any) -> Driver:
    """Node 1, elected leader of term 2 by node 2's votes."""
    d = make(**opts)
    d.raw.campaign()
    settle(d)
    d.on_message(VoteResponse(frm=2, to=1, term=2, granted=True, pre_vote=True))
    settle(d)
    d.on_message(VoteResponse(frm=2, to=1, term=2, granted=True))
    settle(d)
    assert d.role is Role.LEADER and d.term == 2
    return d


def ack(d: Driver, frm: int = 2) -> None:
    """``frm`` acknowledges the leader's whole log."""
    d.on_message(AppendResponse(frm=frm, to=1, term=d.term, index=d.raw.core.log.last_index()))
    d.poll()


# -- 1. Ready merging ------------------------------------------------------------


def test_a_later_ready_that_truncates_below_a_queued_run_is_merged() -> None:
    """A follower's fsync is slow: Readies with entries 10..12 wait while a
    new leader overwrites from index 8. One persist job holds the outcome."""
    log = [Entry(i, 1) for i in range(1, 10)]
    raw = RawNode(
        RaftConfig(id=2, initial_voters=frozenset({1, 2, 3})),
        hard_state=HardState(term=1, commit=7),
        entries=log,
    )
    d = Driver(raw, DriverOptions(), encode=encode, durable_hard_state=HardState(term=1, commit=7))
    storage = MemoryStorage()
    storage.append(log, HardState(term=1, commit=7))
    d.on_message(
        AppendEntries(frm=1, to=2, term=2, prev_index=9, prev_term=1, entries=tuple(Entry(i, 2) for i in (10, 11, 12)), commit=7)
    )
    d.poll()
    d.on_message(
        AppendEntries(frm=3, to=2, term=3, prev_index=7, prev_term=1, entries=(Entry(8, 3), Entry(9, 3)), commit=7)
    )
    d.poll()
    job = d.take_persist()
    assert job is not None
    assert [[(e.index, e.term) for e in step] for step in job.steps] == [[(8, 3), (9, 3)]]
    job.write_to(storage)  # before the fix: "entries must be contiguous" and the node stopped
    d.on_persisted(job)
    assert [(e.index, e.term) for e in storage.load().entries][-3:] == [(7, 1), (8, 3), (9, 3)]
    assert d.raw.core.log.persisted == 9


@pytest.mark.parametrize(
    ("run", "new", "expect"),
    [
        ([10, 11, 12], [8, 9], [8, 9]),
        ([10, 11, 12], [10], [10]),
        ([10, 11, 12], [11, 12, 13], [10, 11, 12, 13]),
        ([10, 11, 12], [13], [10, 11, 12, 13]),
        ([], [5, 6], [5, 6]),
    ],
)
def test_merge_entries(run: list[int], new: list[int], expect: list[int]) -> None:
    merged = merge_entries([Entry(i, 1) for i in run], [Entry(i, 2) for i in new])
    assert [e.index for e in merged] == expect


def test_a_commit_only_change_needs_no_io_and_rides_along_later() -> None:
    d = leader()
    d.on_message(Heartbeat(frm=9, to=1, term=1, commit=0, round=1))  # stale: ignored
    d.poll()
    job = d.take_persist()
    assert job is None or not job.needs_io


# -- 8. NotLeader never names the node itself ----------------------------------------


def test_not_leader_uses_the_cores_view_not_the_last_ready() -> None:
    d = leader()
    w = W()
    # A higher term arrives from node 3 (the new leader); no Ready taken yet.
    d.on_message(Heartbeat(frm=3, to=1, term=5, commit=0, round=1))
    assert d.role is Role.LEADER  # the last Ready's view
    with pytest.raises(NotLeader) as caught:
        d.propose(b"x", w, 1)
    assert "the leader is node 3" in str(caught.value) and caught.value.leader_id == 3
    assert "the leader is node 1" not in str(caught.value)
    assert not w.done()


def test_a_node_that_has_just_won_accepts_writes_before_its_ready_is_taken() -> None:
    # A single node elects itself inside campaign(); the Ready saying so is
    # taken at the next pass. A write in between must not be told "node 1 is
    # not the leader; the leader is node 1".
    d = make(voters=(1,))
    d.raw.campaign()
    assert d.raw.core.role is Role.LEADER and d.role is not Role.LEADER
    w = W()
    d.propose(b"x", w, 1)
    settle(d)
    assert w.error is None and w.done()


def test_not_leader_without_a_known_leader_says_so() -> None:
    d = make()
    err = d.not_leader()
    assert err.leader_id is None and "no leader is known" in str(err)


# -- 10. a leader that steps down answers at once ---------------------------------------


def test_step_down_fails_queued_writes_with_not_leader_and_in_flight_ones_with_leader_changed() -> None:
    d = leader()
    in_log = [W() for _ in range(3)]
    for w in in_log:
        d.propose(b"a", w, 1)
    d.poll()  # proposed: in the log, not committed (nobody acknowledged)
    assert len(d.proposal_waiters) == 1
    queued = W()
    d.propose(b"b", queued, 1)
    # Node 3 leads a higher term now.
    d.on_message(Heartbeat(frm=3, to=1, term=7, commit=0, round=1))
    d.poll()
    assert isinstance(queued.error, NotLeader) and queued.error.leader_id == 3
    for w in in_log:
        assert isinstance(w.error, LeaderChanged)
        assert "may or may not have been applied" in str(w.error) and w.error.leader_id == 3
    assert d.proposal_waiters == {}


def test_step_down_by_check_quorum_answers_within_an_election_timeout() -> None:
    d = leader()
    ack(d)
    w = W()
    d.propose(b"a", w, 1)
    d.poll()
    now = 0.0
    d.on_tick(now)
    for _ in range(2 * 10):
        now += 0.1
        d.on_tick(now)
        d.poll()
        if w.done():
            break
    assert isinstance(w.error, LeaderChanged)
    assert d.role is not Role.LEADER


def test_writes_known_committed_at_step_down_are_still_answered_by_apply() -> None:
    d = leader()
    ack(d)
    w = W()
    d.propose(b"c", w, 1)
    d.poll()
    d.take_persist()  # the leader's own fsync is slow ...
    ack(d, 2)  # ... but nodes 2 and 3 acknowledged: committed
    ack(d, 3)
    index = d.raw.core.log.committed
    assert index in d.proposal_waiters
    d.on_message(Heartbeat(frm=3, to=1, term=9, commit=0, round=1))
    d.poll()
    assert not w.done()  # committed: it will apply here
    while (job := d.take_apply()) is not None:
        d.on_applied(job, [Result([b"ok"]) if e.data else None for e in job.entries])
    assert w.value == b"ok"


# -- 4. flow control ---------------------------------------------------------------


def test_writes_over_the_pending_limit_fail_fast_while_the_disk_is_slow() -> None:
    d = leader(max_pending_bytes=1000)
    ack(d)
    accepted = 0
    with pytest.raises(ResourceExhausted, match="not yet on its disk"):
        for _ in range(100):
            d.propose(b"x" * 100, W(), 100)
            accepted += 1
            d.poll()  # proposed; no persist job is ever started (a stalled disk)
    assert 0 < accepted < 10
    assert d.unpersisted_bytes <= 1000 + 116


def test_queued_proposals_count_toward_the_pending_limit() -> None:
    d = Driver(
        leader().raw, DriverOptions(max_pending_bytes=250), encode=encode, durable_hard_state=HardState()
    )
    d.role = Role.LEADER
    d.propose(b"a", W(), 100)
    d.propose(b"b", W(), 100)
    with pytest.raises(ResourceExhausted):
        d.propose(b"c", W(), 100)


# -- deadlines, reads, stop -------------------------------------------------------------


def test_deadlines_fail_waiters_and_forgotten_reads_are_dropped() -> None:
    d = leader()
    w = W()
    d.read(w)
    d.expire(w, 1.0, "read did not complete within {:g} s", 1.0)
    d.poll()
    assert len(d.read_waiters) == 1
    d.on_tick(0.5)
    assert not w.done()
    d.on_tick(1.0)
    assert isinstance(w.error, Timeout) and "1 s" in str(w.error)
    assert d.read_waiters == {}


def test_pending_drains_and_fail_pending_fails_everything() -> None:
    d = leader()
    ws = [W() for _ in range(3)]
    d.propose(b"a", ws[0], 1)
    d.read(ws[1])
    assert d.wait_applied(10_000, ws[2])
    d.poll()
    assert sum(d.pending().values()) >= 3
    err = RuntimeError("stop")
    d.fail_pending(err)
    assert all(w.error is err for w in ws)
    assert sum(v for k, v in d.pending().items() if k != "forwarded_reads") == 0


def test_persist_and_apply_jobs_complete_in_order() -> None:
    d = leader()
    d.propose(b"a", W(), 1)
    d.poll()
    job = d.take_persist()
    assert isinstance(job, PersistJob)
    assert d.take_persist() is None  # one at a time
    with pytest.raises(AssertionError):
        d.on_persisted(PersistJob(number=99, steps=[], hard_state=None, size=0))
    d.on_persisted(job)
    with pytest.raises(AssertionError):
        d.on_applied(ApplyJob(None, ()), [])


def test_proposal_dropped_when_the_entry_at_its_index_has_another_term() -> None:
    d = leader()
    w = W()
    d.propose(b"a", w, 1)
    d.poll()
    index = max(d.proposal_waiters)
    d._applying = job = ApplyJob(None, (Entry(index, 99, data=b"other"),))
    d.on_applied(job, [Result([b"x"])])
    assert isinstance(w.error, ProposalDropped)


# -- 6. peer input is checked for sense ---------------------------------------------------


def test_a_nonsensical_append_is_dropped_counted_and_the_node_keeps_serving(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dengine.node")
    d = make(nid=2)
    before = [(e.index, e.term) for e in d.raw.core.log.entries]
    bad = AppendEntries(frm=1, to=2, term=2, prev_index=0, prev_term=0, entries=(Entry(1, 2), Entry(5, 2)), commit=0)
    for _ in range(3):
        assert d.on_message(bad) is False
    assert [(e.index, e.term) for e in d.raw.core.log.entries] == before  # before the fix: index 5 at position 2
    assert d.raw.core.term == 1  # not even its term was taken
    assert d.dropped_messages[(1, "AppendEntries")] == 3
    warnings = [r for r in caplog.records if "makes no sense" in r.getMessage()]
    assert len(warnings) == 1 and "node 1" in warnings[0].getMessage() and "not contiguous" in warnings[0].getMessage()
    # The node still takes good messages.
    good = AppendEntries(frm=1, to=2, term=2, prev_index=3, prev_term=1, entries=(Entry(4, 2),), commit=3)
    assert d.on_message(good) is True
    assert d.raw.core.log.last_index() == 4


def test_a_message_the_core_refuses_is_dropped_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    from dengine.raft.log import LogInvariantBroken

    d = make(nid=2)

    def refuse(message: object) -> None:
        raise LogInvariantBroken("refusing to overwrite committed entry 1 (committed 3)")

    monkeypatch.setattr(d.raw, "step", refuse)
    msg = AppendEntries(frm=1, to=2, term=5, prev_index=3, prev_term=1, entries=(Entry(4, 5),), commit=0)
    assert d.on_message(msg) is False
    assert d.dropped_messages[(1, "AppendEntries")] == 1


def test_read_contexts_of_a_restarted_node_do_not_collide_with_the_last_ones() -> None:
    """A follower's read is forwarded with a context; if the node restarts
    while the leader's answer is in flight, that late answer must not release
    a read asked after the restart (the sequence starts again): every start
    has its own context prefix (the runtime passes random bytes)."""
    from dengine.raft.messages import ReadIndexRequest, ReadIndexResponse

    def follower_read(prefix: bytes) -> tuple[Driver, W, bytes]:
        d = make(2, read_ctx_prefix=prefix)
        d.raw.step(Heartbeat(frm=1, to=2, term=1, commit=0))  # node 1 leads term 1
        w = W()
        d.read(w)
        (sent,) = [m for m in d.poll() if isinstance(m, ReadIndexRequest)]
        return d, w, sent.ctxs[0]

    _, _, before = follower_read(b"first.")
    after_driver, after_waiter, after = follower_read(b"second")
    assert before != after
    # The answer to the read of the first incarnation reaches the second: ignored.
    after_driver.raw.step(ReadIndexResponse(frm=1, to=2, term=1, ctxs=(before,), index=40))
    after_driver.poll()
    assert not after_waiter.done() and after in after_driver.read_waiters


# -- what the node may do in the pass that produced the work ----------------------------


def test_write_waiting_is_entries_to_write_not_a_moved_commit_index() -> None:
    d = leader()
    ack(d)
    settle(d)
    assert not d.write_waiting
    w = W()
    d.propose(b"x", w, 1)
    d.poll()
    assert d.write_waiting  # the new entry
    job = d.take_persist()
    assert job is not None and job.needs_io
    d.on_persisted(job)
    ack(d)  # commits it: only the commit index moved
    assert d.persist_waiting and not d.write_waiting


def test_take_apply_entries_only_leaves_a_snapshot_step_to_the_applier() -> None:
    d = leader()
    snap = Snapshot(SnapshotMeta(index=50, term=2, conf_state=ConfState(voters=frozenset({1, 2, 3}))), b"image")
    d._apply_queue.append(ApplyJob(snap, ()))
    assert d.take_apply(entries_only=True) is None
    job = d.take_apply()
    assert job is not None and job.snapshot is snap

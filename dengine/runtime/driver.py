"""The runtime driver: every decision between the Raft core and the IO, sans-IO.

The trio tasks of :mod:`dengine.runtime.node` only carry data between this
object, the disk, the network and the callers; everything they would have to
*decide* is decided here, where the simulator (tests/sim) can drive it with
late fsyncs, power loss, clock drift and hostile peers:

* **Ready merging** -- several Readies are persisted as one job
  (:meth:`Driver.take_persist`): entries of a later Ready truncate those of an
  earlier one from their first index (even below the earlier run's start: a
  new leader overwrote them), a snapshot is written in its place in the
  sequence, and the newest hard state rides along with the last write.
* **What needs IO**: a job whose Readies carry no entries, no snapshot and no
  change of term or vote is acknowledged without touching the disk (a
  commit-only hard state change rides along with the next write).
* **Order**: messages of a Ready leave at once; messages that promise
  durability (:func:`dengine.raft.messages.needs_durability`) only after
  :meth:`Driver.on_persisted`; committed entries are handed to the applier
  in bounded steps (``RaftConfig.max_committed_bytes_per_ready``) and the
  next step only after :meth:`Driver.on_applied`.
* **Callers**: proposals are batched into one entry per pass (a command
  that must have a revision of its own, such as a transaction, gets an
  entry of its own, proposed in the same pass); reads of one
  pass share one ReadIndex request; every waiter has a deadline; when this
  node stops leading, writes not yet in its log fail with ``NotLeader`` and
  writes in its log beyond the commit index fail at once with
  ``LeaderChanged`` (their outcome is unknown) instead of waiting for a
  deadline.
* **Flow control**: bytes queued for proposal plus bytes waiting for the
  local disk are bounded (``max_pending_bytes``); over it a write fails at
  once with ``ResourceExhausted``.
* **Peer input**: a message that makes no sense on its own
  (:func:`dengine.raft.validate.check_message`), or that the core refuses, is
  dropped, counted, and logged once per peer; the node keeps serving.
* **Time**: ticks are derived from the clock reading the caller passes in
  (``on_tick(now)``), never read here.

Waiters are any objects with ``set(value)``, ``fail(error)`` and ``done()``
(:class:`dengine.runtime.waiters.Waiter` in the runtime, plain objects in the
simulator).
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs

from dengine.errors import (
    DengineError,
    LeaderChanged,
    NotLeader,
    ProposalDropped,
    ResourceExhausted,
    Timeout,
    Unavailable,
)
from dengine.kv.store import CommandError
from dengine.raft.log import LogInvariantBroken
from dengine.raft.messages import (
    AppendResponse,
    ConfChange,
    Entry,
    HardState,
    Message,
    Role,
    Snapshot,
    SnapshotMeta,
)
from dengine.raft.rawnode import RawNode
from dengine.raft.ready import Ready
from dengine.raft.validate import check_message

log = logging.getLogger("dengine.node")

# After a long pause (a stopped process, a slow disk) at most this many
# election timeouts of ticks are replayed: enough for every lease and timer to
# expire, which is what safety needs; the rest are skipped.
_MAX_CATCH_UP_ELECTIONS = 10


class WaiterLike(Protocol):
    def set(self, value: Any) -> None: ...

    def fail(self, error: BaseException) -> None: ...

    def done(self) -> bool: ...


class StorageLike(Protocol):
    def append(self, entries: Sequence[Entry], hard_state: HardState | None = None) -> float | None: ...

    def save_snapshot(self, snapshot: Snapshot) -> None: ...


@attrs.frozen
class DriverOptions:
    tick_interval: float = 0.1  # in the unit of the clock passed to on_tick
    proposal_batch_max: int = 1024
    # Bytes of writes queued here for proposal plus bytes of entries waiting
    # for the local disk; a proposal over it fails with ResourceExhausted.
    max_pending_bytes: int = 64 << 20
    # Client addresses by node id, for leader hints.
    addresses: dict[int, str] = attrs.field(factory=dict)
    # Commands that must have a revision (an entry) of their own, such as a
    # transaction, whose revision callers use as a unique token. Others of a
    # pass share one entry.
    alone: Callable[[Any], bool] | None = None
    # Put before every ReadIndex context of this incarnation, so contexts are
    # unique across restarts: an answer to a read asked before a crash, still
    # in flight, must not release a read asked after the restart (the
    # sequence starts again at 1). The runtime passes random bytes.
    read_ctx_prefix: bytes = b""


def merge_entries(run: list[Entry], new: Sequence[Entry]) -> list[Entry]:
    """Append ``new`` to the unwritten ``run``; entries of ``new`` replace
    every entry of ``run`` from their first index on, as the storage would
    (a new leader may overwrite below the start of what is still queued)."""
    if not new:
        return run
    if run:
        first = new[0].index
        if first <= run[-1].index:
            cut = first - run[0].index
            run = run[:cut] if cut > 0 else []
        elif first != run[-1].index + 1:
            raise LogInvariantBroken(f"entries to persist jump from {run[-1].index} to {first}")
    run.extend(new)
    return run


@attrs.define
class PersistJob:
    """One durable write: the merged content of Readies up to ``number``.

    ``steps`` are written in order (a snapshot, or a run of entries that
    truncates the stored suffix from its first index); ``hard_state`` goes with
    the last write. The runtime calls :meth:`write_to` in a worker thread and
    fsyncs (the storage does, per append); then :meth:`Driver.on_persisted`.
    """

    number: int
    steps: list[Snapshot | list[Entry]]
    hard_state: HardState | None
    size: int  # bytes of entries it holds (flow control)

    @property
    def needs_io(self) -> bool:
        return bool(self.steps) or self.hard_state is not None

    def write_to(self, storage: StorageLike) -> float | None:
        """Write the job; returns the seconds the storage reported spending
        in fsync (summed over its appends), or None if it reported none."""
        last = len(self.steps) - 1
        synced: float | None = None
        for k, step in enumerate(self.steps):
            if isinstance(step, Snapshot):
                storage.save_snapshot(step)
                if k == last and self.hard_state is not None:
                    synced = _add(synced, storage.append((), self.hard_state))
            else:
                synced = _add(synced, storage.append(step, self.hard_state if k == last else None))
        if not self.steps and self.hard_state is not None:
            synced = _add(synced, storage.append((), self.hard_state))
        return synced


def _add(total: float | None, more: float | None) -> float | None:
    if more is None:
        return total
    return more if total is None else total + more


@attrs.frozen
class ApplyJob:
    """Committed work for the state machine: a snapshot to install first (if
    any), then entries, in index order. Entries at or below the state
    machine's applied index are skipped by the applier."""

    snapshot: Snapshot | None
    entries: tuple[Entry, ...]


@attrs.define
class _Proposal:
    command: Any
    waiter: WaiterLike
    size: int


def _entries_size(entries: Sequence[Entry]) -> int:
    return sum(len(e.data) + 16 for e in entries)


class Driver:
    """Decisions of one node's runtime. See the module docstring."""

    def __init__(
        self,
        raw: RawNode,
        options: DriverOptions,
        *,
        encode: Callable[[list[Any]], bytes],
        durable_hard_state: HardState,
        applied_index: int = 0,
        on_leader_changed: Callable[[int | None, int], None] | None = None,
        on_first_commit: Callable[[int], None] | None = None,
    ) -> None:
        self.raw = raw
        self.options = options
        self._encode = encode
        self._on_leader_changed = on_leader_changed
        self._on_first_commit = on_first_commit
        soft = raw.soft_state()
        self.role = soft.role
        self.leader: int | None = None
        self.term = soft.term
        self.stopped: BaseException | None = None
        # Callers' writes not yet proposed, and the waiters of proposed ones:
        # index -> (term, one waiter per command of that entry).
        self._proposals: list[_Proposal] = []
        self._proposal_bytes = 0
        self.proposal_waiters: dict[int, tuple[int, list[WaiterLike]]] = {}
        # Reads asked for since the last pass share one ReadIndex request.
        self._read_batch: list[WaiterLike] = []
        self.read_waiters: dict[bytes, list[WaiterLike]] = {}
        self._read_seq = itertools.count(1)
        # Waiters for the applied index to reach a point: (index, seq, waiter).
        self._applied_waiters: list[tuple[int, int, WaiterLike]] = []
        self.applied_index = applied_index
        self.applied_term = 0
        # Callers' deadlines, expired by on_tick: (deadline, seq, waiter, template, limit).
        self._deadlines: list[tuple[float, int, WaiterLike, str, float]] = []
        self._seq = itertools.count()
        # Persistence.
        self._durable_hs = durable_hard_state
        self._latest_hs = durable_hard_state
        self._persist_queue: list[Ready] = []
        self._persisting: PersistJob | None = None
        self.unpersisted_bytes = 0
        # Committed work not yet handed to the applier, and the one handed out.
        self._apply_queue: list[ApplyJob] = []
        self._applying: ApplyJob | None = None
        # Time.
        self._next_tick_at: float | None = None
        # Peer messages dropped, by (peer, message type): bounded by the
        # members and the message types; the first reason per peer is logged.
        self.dropped_messages: Counter[tuple[int, str]] = Counter()
        self._complained: set[int] = set()
        # (peer, term) pairs already warned about as having lost data they
        # acknowledged: one WARNING each; bounded by members x terms seen.
        self._lost_data: set[tuple[int, int]] = set()
        # Peers this leader has not heard from for an election timeout, with
        # the tick it last heard from each: one WARNING per episode, one INFO
        # when the peer answers again.
        self._silent: dict[int, int] = {}

    # ------------------------------------------------------------------
    # Callers
    # ------------------------------------------------------------------

    def not_leader(self) -> NotLeader:
        """NotLeader with the best hint: the core's current view (which may be
        newer than the last Ready's), never this node itself."""
        lead = self.raw.core.lead
        if lead == self.raw.id and self.raw.core.role is not Role.LEADER:
            lead = None
        addr = self.options.addresses.get(lead) if lead is not None else None
        where = f"; the leader is node {lead}" if lead is not None else "; no leader is known"
        return NotLeader(f"node {self.raw.id} is not the leader{where}", leader_id=lead, leader_address=addr)

    def propose(self, command: Any, waiter: WaiterLike, size: int) -> None:
        """Queue one write for the next pass; ``waiter`` gets its result.
        Whether this node leads is the core's current view: the last Ready's
        may lag by one pass (a node that has just won, or just lost)."""
        if self.raw.core.role is not Role.LEADER:
            raise self.not_leader()
        pending = self._proposal_bytes + self.unpersisted_bytes
        if pending and pending + size > self.options.max_pending_bytes:
            raise ResourceExhausted(
                f"node {self.raw.id} holds {pending} bytes of writes not yet proposed or not yet on its disk "
                f"(limit {self.options.max_pending_bytes}); retry shortly"
            )
        self._proposals.append(_Proposal(command, waiter, size))
        self._proposal_bytes += size

    def read(self, waiter: WaiterLike) -> bool:
        """Ask for a linearizable read point; ``waiter`` gets the read index.
        Returns True when this is the first read of the pass (wake the loop)."""
        first = not self._read_batch
        self._read_batch.append(waiter)
        return first

    def lease_read_index(self, now: float) -> int | None:
        self.on_clock(now)
        return self.raw.lease_read_index()

    def wait_applied(self, index: int, waiter: WaiterLike) -> bool:
        """Set ``waiter`` once ``index`` is applied; False if it already is."""
        if index <= self.applied_index:
            return False
        heapq.heappush(self._applied_waiters, (index, next(self._seq), waiter))
        return True

    def expire(self, waiter: WaiterLike, deadline: float, template: str, limit: float) -> None:
        """Fail ``waiter`` with Timeout(template.format(limit)) if it is still
        pending at ``deadline`` (checked on every tick)."""
        heapq.heappush(self._deadlines, (deadline, next(self._seq), waiter, template, limit))

    def propose_conf_change(self, change: ConfChange) -> tuple[int, int]:
        return self.raw.propose_conf_change(change)

    def transfer_leader(self, target: int) -> None:
        self.raw.transfer_leader(target)

    # ------------------------------------------------------------------
    # Time
    # ------------------------------------------------------------------

    def on_clock(self, now: float) -> int:
        """Tick once per interval that has passed by ``now``; returns how
        many ticks were taken."""
        interval = self.options.tick_interval
        if self._next_tick_at is None:
            self._next_tick_at = now + interval
            return 0
        cap = _MAX_CATCH_UP_ELECTIONS * self.raw.core.config.election_tick
        n = 0
        while self._next_tick_at <= now and n < cap:
            self.raw.tick()
            self._next_tick_at += interval
            n += 1
        if self._next_tick_at <= now:
            self._next_tick_at = now + interval
        return n

    @property
    def next_tick_at(self) -> float | None:
        return self._next_tick_at

    def on_tick(self, now: float) -> None:
        """The ticker's call: catch up ticks, expire deadlines, forget reads
        whose every caller gave up."""
        self.on_clock(now)
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, _, waiter, template, limit = heapq.heappop(heap)
            if not waiter.done():
                waiter.fail(Timeout(template.format(limit)))
        if len(heap) > 10_000:
            # Entries of answered calls linger until their deadline; drop them.
            self._deadlines = [e for e in heap if not e[2].done()]
            heapq.heapify(self._deadlines)
        if self.read_waiters:
            for ctx in [c for c, ws in self.read_waiters.items() if all(w.done() for w in ws)]:
                del self.read_waiters[ctx]
        if self._applied_waiters and len(self._applied_waiters) > 1024:
            self._applied_waiters = [e for e in self._applied_waiters if not e[2].done()]
            heapq.heapify(self._applied_waiters)
        if self.role is Role.LEADER or self._silent:
            self._check_peers()

    def _check_peers(self) -> None:
        """Leader only: a peer not heard from for an election timeout is
        unreachable or down (its progress's ``last_heard``, which check-quorum
        keeps too): logged once per episode, and again when it answers."""
        core = self.raw.core
        silent = self._silent
        if core.role is not Role.LEADER:
            silent.clear()  # a follower hears only from the leader: nothing to judge
            return
        now, limit = core.tick_count, core.config.election_tick
        interval = self.options.tick_interval
        for peer, pr in core.prs.items():
            if peer == core.id:
                continue
            quiet = now - pr.last_heard
            if quiet >= limit:
                if peer not in silent:
                    silent[peer] = pr.last_heard
                    log.warning(
                        "node %d: node %d has not answered for %.3g s (the election timeout is %.3g s): "
                        "it is unreachable or down",
                        core.id, peer, quiet * interval, limit * interval,
                    )
            elif peer in silent:
                since = silent.pop(peer)
                log.info("node %d: node %d answers again (it was silent for %.3g s)",
                         core.id, peer, (pr.last_heard - since) * interval)
        for gone in [p for p in silent if p not in core.prs]:
            del silent[gone]  # no longer a member

    # ------------------------------------------------------------------
    # Peers
    # ------------------------------------------------------------------

    def on_message(self, message: Message) -> bool:
        """Step a peer's message into the core; a message that makes no
        sense is dropped (counted, logged once per peer). True if stepped."""
        problem = check_message(message, self_id=self.raw.id)
        if problem is None:
            if type(message) is AppendResponse and message.reject:
                self._check_lost_data(message)
            try:
                self.raw.step(message)
                return True
            except (LogInvariantBroken, DengineError) as exc:
                problem = f"refused by the core: {exc}"
        self._drop_message(message, problem)
        return False

    def _check_lost_data(self, m: AppendResponse) -> None:
        """A follower whose log now ends below what it acknowledged to this
        leader lost data it had made durable: its data directory was wiped
        or replaced by an older copy, and it was restarted under its old id.
        Raft cannot repair that (the leader keeps its match index, so the
        follower is probed there forever); the operator must remove the
        member and add it back as a new one, as with etcd. Observation
        only: the core decides nothing from it."""
        core = self.raw.core
        pr = core.prs.get(m.frm) if core.role is Role.LEADER and m.term == core.term else None
        if pr is None or m.reject_hint >= pr.match or m.index < pr.match:
            return
        if len(self._lost_data) > 1024:
            self._lost_data.clear()
        if (m.frm, m.term) in self._lost_data:
            return
        self._lost_data.add((m.frm, m.term))
        log.warning(
            "node %d: node %d says its log ends at index %d, but it had acknowledged index %d: it lost data "
            "it had written (a wiped or restored data directory, restarted under its old id?) and cannot "
            "catch up as it is; remove it (`dengine member remove %d`) and add it back as a new member "
            "with an empty data directory",
            self.raw.id, m.frm, m.reject_hint, pr.match, m.frm,
        )

    def _drop_message(self, message: Message, problem: str) -> None:
        peer = getattr(message, "frm", 0)
        if not isinstance(peer, int) or len(self._complained) > 1024 and peer not in self._complained:
            peer = -1  # nonsense ids are counted together
        self.dropped_messages[(peer, type(message).__name__)] += 1
        if peer not in self._complained:
            self._complained.add(peer)
            log.warning(
                "node %d: dropped a %s from node %s that makes no sense (%s); further ones from it are only counted",
                self.raw.id, type(message).__name__, peer, problem,
            )

    # ------------------------------------------------------------------
    # One pass of the raft loop
    # ------------------------------------------------------------------

    def poll(self) -> list[Message]:
        """Turn everything waiting into Readies; returns the messages that
        may leave now. Persist and apply work queues up for take_persist /
        take_apply."""
        raw = self.raw
        if self._proposals:
            self._flush_proposals()
        if self._read_batch:
            ctx = self.options.read_ctx_prefix + next(self._read_seq).to_bytes(8, "big")
            self.read_waiters[ctx], self._read_batch = self._read_batch, []
            raw.read_index(ctx)
        out: list[Message] = []
        while raw.has_ready():
            rd = raw.ready()
            if rd.messages:
                out.extend(rd.messages)
            self._handle_ready(rd)
        return out

    def _flush_proposals(self) -> None:
        max_batch = self.options.proposal_batch_max
        queued, self._proposals, self._proposal_bytes = self._proposals, [], 0
        for start in range(0, len(queued), max_batch):
            batch = queued[start : start + max_batch]
            groups = self._entries_of(batch)
            try:
                index, term = self.raw.propose([self._encode([p.command for p in group]) for group in groups])
            except NotLeader:
                self._fail_all(batch, self.not_leader())
                continue
            except (ProposalDropped, ResourceExhausted) as exc:
                self._fail_all(batch, exc)
                continue
            for k, group in enumerate(groups):
                self.proposal_waiters[index + k] = (term, [p.waiter for p in group])

    def _entries_of(self, batch: list[_Proposal]) -> list[list[_Proposal]]:
        """The entries one batch becomes: one, unless it holds commands that
        must be alone in theirs (DriverOptions.alone)."""
        alone = self.options.alone
        if alone is None or not any(alone(p.command) for p in batch):
            return [batch]
        groups: list[list[_Proposal]] = []
        shared: list[_Proposal] = []
        for p in batch:
            if alone(p.command):
                groups.append([p])
            else:
                shared.append(p)
        if shared:
            groups.insert(0, shared)
        return groups

    @staticmethod
    def _fail_all(batch: list[_Proposal], error: BaseException) -> None:
        for p in batch:
            p.waiter.fail(error)

    def _handle_ready(self, rd: Ready) -> None:
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state.role, rd.soft_state.leader, rd.soft_state.term)
        for rs in rd.read_states:
            for w in self.read_waiters.pop(rs.ctx, ()):
                w.set(rs.index)
        if rd.dropped_reads:
            err = self._read_dropped_error()
            for ctx in rd.dropped_reads:
                for w in self.read_waiters.pop(ctx, ()):
                    w.fail(err)
        if rd.first_commit_in_term is not None and self._on_first_commit is not None:
            self._on_first_commit(rd.first_commit_in_term)
        self._persist_queue.append(rd)
        if rd.entries:
            self.unpersisted_bytes += _entries_size(rd.entries)
        if rd.snapshot is not None or rd.committed:
            self._apply_queue.append(ApplyJob(rd.snapshot, rd.committed))

    def _read_dropped_error(self) -> Exception:
        if self.role is Role.LEADER and self.raw.core.role is Role.LEADER:
            return Unavailable("the leader could not confirm its leadership for this read; retry")
        return self.not_leader()

    def _on_soft_state(self, role: Role, leader: int | None, term: int) -> None:
        was_leader = self.role is Role.LEADER
        self.role, self.leader, self.term = role, leader, term
        if self._on_leader_changed is not None:
            self._on_leader_changed(leader, term)
        if was_leader and role is not Role.LEADER:
            self._on_step_down()

    def _on_step_down(self) -> None:
        """No longer leader: nothing waiting here will be answered by this
        node's log any time soon. Writes not yet proposed were not applied
        (NotLeader: retry at the new leader); writes in the log beyond the
        commit index may still commit under the new leader, or be
        overwritten: their outcome is unknown, said at once (etcd's "leader
        changed"). Writes up to the commit index will apply here as usual."""
        err = self.not_leader()
        queued, self._proposals, self._proposal_bytes = self._proposals, [], 0
        self._fail_all(queued, err)
        committed = self.raw.core.log.committed
        where = f"; the new leader is node {err.leader_id}" if err.leader_id is not None else ""
        changed = LeaderChanged(
            f"node {self.raw.id} lost leadership while the write was in flight{where}; "
            "it may or may not have been applied",
            leader_id=err.leader_id,
        )
        for index in [i for i in self.proposal_waiters if i > committed]:
            for w in self.proposal_waiters.pop(index)[1]:
                w.fail(changed)

    # ------------------------------------------------------------------
    # Persisting
    # ------------------------------------------------------------------

    def take_persist(self) -> PersistJob | None:
        """The next durable write (every Ready waiting, merged), or None if
        one is in progress or nothing waits."""
        if self._persisting is not None or not self._persist_queue:
            return None
        batch, self._persist_queue = self._persist_queue, []
        steps: list[Snapshot | list[Entry]] = []
        run: list[Entry] = []
        size = 0
        io = False
        for rd in batch:
            if rd.hard_state is not None:
                self._latest_hs = rd.hard_state
                if (rd.hard_state.term, rd.hard_state.vote) != (self._durable_hs.term, self._durable_hs.vote):
                    io = True  # term and vote must be durable before votes leave
            if rd.snapshot is not None:
                io = True
                if run:
                    steps.append(run)
                    run = []
                steps.append(rd.snapshot)
            if rd.entries:
                io = True
                size += _entries_size(rd.entries)
                run = merge_entries(run, rd.entries)
        if run:
            steps.append(run)
        # A hard state that only moved the commit index is not worth an fsync
        # of its own (commit is re-learned after a restart): it rides along
        # with the next write that is made anyway.
        hs = self._latest_hs if io and self._latest_hs != self._durable_hs else None
        job = PersistJob(number=batch[-1].number, steps=steps, hard_state=hs, size=size)
        self._persisting = job
        return job

    def on_persisted(self, job: PersistJob) -> list[Message]:
        """``job`` is durable; returns the messages that waited for it."""
        assert job is self._persisting, "persist jobs complete one at a time, in order"
        self._persisting = None
        if job.hard_state is not None:
            self._durable_hs = job.hard_state
        self.unpersisted_bytes -= job.size
        return self.raw.on_persisted(job.number)

    @property
    def persist_waiting(self) -> bool:
        """Readies wait for a persist job (take_persist may return one)."""
        return bool(self._persist_queue)

    @property
    def write_waiting(self) -> bool:
        """Entries or a snapshot wait to be written (not only a moved commit
        index, which needs no IO of its own)."""
        return any(rd.entries or rd.snapshot is not None for rd in self._persist_queue)

    # ------------------------------------------------------------------
    # Applying
    # ------------------------------------------------------------------

    @property
    def apply_waiting(self) -> bool:
        return bool(self._apply_queue)

    def take_apply(self, *, entries_only: bool = False) -> ApplyJob | None:
        """The next bounded step of committed work, or None if one is being
        applied or nothing waits (or, with ``entries_only``, if the next step
        installs a snapshot)."""
        if self._applying is not None or not self._apply_queue:
            return None
        if entries_only and self._apply_queue[0].snapshot is not None:
            return None
        job = self._apply_queue.pop(0)
        self._applying = job
        return job

    def on_snapshot_installed(self, meta: SnapshotMeta) -> None:
        """The state machine now holds the snapshot at ``meta``."""
        self.applied_index = max(self.applied_index, meta.index)
        self.applied_term = meta.term
        # Writes we proposed as leader and never saw applied: outcome unknown.
        err = Unavailable("leadership changed; the write may or may not have been applied")
        for index in [i for i in self.proposal_waiters if i <= meta.index]:
            for w in self.proposal_waiters.pop(index)[1]:
                w.fail(err)

    def on_applied(self, job: ApplyJob, results: Sequence[Any | None]) -> bool:
        """``job`` is applied; ``results[k]`` is what entry k produced (an
        object with ``results``: one per command, exceptions for commands
        that failed) or None for entries that carry no commands (no-ops,
        membership changes, entries already applied). Returns True when
        committed entries held back by the apply bound may now be taken
        (the raft loop should run)."""
        assert job is self._applying, "apply jobs complete one at a time, in order"
        self._applying = None
        for entry, result in zip(job.entries, results):
            pending = self.proposal_waiters.pop(entry.index, None)
            if pending is not None:
                self._resolve(entry, pending, result)
        if job.entries:
            last = job.entries[-1]
            if last.index > self.applied_index:
                self.applied_index = last.index
                self.applied_term = last.term
        elif job.snapshot is not None:
            self.applied_index = max(self.applied_index, job.snapshot.meta.index)
        unblocked = self.raw.on_applied(self.applied_index)
        heap = self._applied_waiters
        while heap and heap[0][0] <= self.applied_index:
            heapq.heappop(heap)[2].set(None)
        return unblocked

    @staticmethod
    def _resolve(entry: Entry, pending: tuple[int, list[WaiterLike]], result: Any | None) -> None:
        term, waiters = pending
        if term != entry.term or result is None:
            err = ProposalDropped("leadership changed before the write committed; it was not applied")
            for w in waiters:
                w.fail(err)
            return
        outcomes = result.results
        for w, r in zip(waiters, outcomes):
            if isinstance(r, CommandError):
                w.fail(r.to_exception())
            else:
                w.set(r)
        for w in waiters[len(outcomes) :]:
            w.fail(ProposalDropped("the write was not applied"))

    # ------------------------------------------------------------------
    # Observation and stop
    # ------------------------------------------------------------------

    def pending(self) -> dict[str, int]:
        """What callers still wait on, by kind (drains to zero once faults
        stop: a property the simulator checks)."""
        return {
            "proposals": len(self._proposals),
            "proposal_waiters": sum(len(ws) for _, ws in self.proposal_waiters.values()),
            "reads": len(self._read_batch) + sum(len(ws) for ws in self.read_waiters.values()),
            "applied_waiters": sum(1 for e in self._applied_waiters if not e[2].done()),
            "forwarded_reads": len(self.raw.core.forwarded_reads),
        }

    def fail_pending(self, error: BaseException) -> None:
        """Fail every waiter (the node stops)."""
        self.stopped = error
        queued, self._proposals, self._proposal_bytes = self._proposals, [], 0
        self._fail_all(queued, error)
        for _, waiters in self.proposal_waiters.values():
            for w in waiters:
                w.fail(error)
        self.proposal_waiters = {}
        for waiters in self.read_waiters.values():
            for w in waiters:
                w.fail(error)
        self.read_waiters = {}
        for w in self._read_batch:
            w.fail(error)
        self._read_batch = []
        for _, _, w in self._applied_waiters:
            w.fail(error)
        self._applied_waiters = []

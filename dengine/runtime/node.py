"""One Raft node in one trio nursery: the only place the pure core meets trio.

Every decision (what to persist and when, what a caller is told, when a read
may answer, flow control, what to do with a nonsensical peer message) is
taken by the sans-IO :class:`~dengine.runtime.driver.Driver`, which the
simulator drives too. The tasks here only carry work between it, the disk,
the network, the state machine and the callers.

Task tree (ARCHITECTURE.md, "The trio driver"):

    open_node ─ nursery
       ├─ ticker      sleeps until the next tick; the driver catches ticks up and expires deadlines
       ├─ raft loop   wakes on any input; driver.poll() turns everything waiting into Readies
       ├─ persister   driver.take_persist(): one WAL write + one fsync per job, on the node's WAL thread
       ├─ WAL thread  one long-lived worker thread (runtime/worker.py) the persister hands its writes to
       ├─ preparer    zero-fills the next WAL segment off the write path (worker thread)
       ├─ applier     driver.take_apply(): bounded steps into the KV store; results to callers (a pass
       │              that commits entries applies the first step itself when no write waits)
       ├─ receiver    inbound peer messages → driver.on_message (validated) → core, then the loop's pass itself
       └─ snapshots   encodes and saves a frozen image off the apply path

What it tells an operator (docs/operations.md, "Metrics" and "Logs"): it
records into a :class:`~dengine.stats.NodeStats` (WAL and snapshot timings,
leader changes, expirations; the durations measured in worker threads are
handed back and recorded on the event loop) and logs one INFO line per
leader change, membership change and snapshot, and a WARNING for a slow
fsync, a slow apply step, and a clock that seems to run behind the
leader's (the log's time, the largest leader stamp applied, is ahead of
this node's clock by more than ``max_clock_drift`` of an election timeout:
no network delay can make a stamp look newer than it is). The driver warns
about peers the leader has not heard from for an election timeout.

Rules:
* Batching is the performance model. Callers only append to lists and wake
  the loop; one loop pass proposes every waiting write as ONE entry; the
  persister writes every Ready waiting for it as one job; the applier resolves
  every waiter of a step together.
* The leader sends appends before its own fsync returns (Ready.messages go out
  at once); votes and acknowledgements leave only after the fsync.
* Committed entries are durable on a majority, so the applier runs in
  parallel with the persister (the leader answers while its own fsync runs);
  a snapshot waits until its index is durable here before the log is compacted.
* A failure in any task stops the node: the nursery unwinds and the embedding
  layer reports one clear error.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import attrs
import trio

from dengine.api import Member, MembershipChange, WatchEvent
from dengine.config import WatchSettings
from dengine.errors import DengineError, EngineStopped, MemberRemoved, NotLeader, StorageCorrupted
from dengine.kv.commands import Command, ExpireKeys, LeaseRevoke, Txn, command_size, encode_batch
from dengine.kv.lessor import Lessor
from dengine.kv.snapshot import encode_snapshot_data, restore, unwrap_snapshot_data
from dengine.kv.store import ApplyResult, KVStore
from dengine.lifecycle import Lifecycle
from dengine.runtime.memory import release_free_heap
from dengine.raft import membership
from dengine.raft.core import RaftConfig
from dengine.raft.messages import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    InstallSnapshot,
    Message,
    RequestVote,
    Role,
    Snapshot,
    SnapshotMeta,
    VoteResponse,
)
from dengine.raft.rawnode import RawNode
from dengine.runtime.driver import ApplyJob, Driver, DriverOptions, PersistJob
from dengine.runtime.waiters import Waiter
from dengine.runtime.worker import Pending, WorkerThread
from dengine.stats import NodeStats
from dengine.storage.base import Storage
from dengine.watch.dispatcher import WatchDispatcher

log = logging.getLogger("dengine.node")

#: How long an encoder in a worker thread sleeps after each chunk of keys
#: (:func:`pace_encoding`). A thread that keeps the CPU busy takes the GIL
#: every time the event loop lets go of it (each socket call, each wait) and
#: keeps it for the interpreter's switch interval (5 ms): the loop then runs a
#: few steps per 5 ms and writes stall for up to a second. Sleeping as long
#: as a chunk takes (~2 ms) leaves the loop the GIL about half the time; a
#: snapshot of 1 M keys then takes ~3.5 s instead of ~2.7 s here
#: (docs/benchmarks.md).
ENCODE_PAUSE = 0.002


def pace_encoding() -> None:
    """The ``pause`` of an image encoded in a worker thread beside a running
    node (the runtime's snapshots, a backup)."""
    time.sleep(ENCODE_PAUSE)


#: A snapshot at least this large is followed by a heap trim (_take_snapshot).
TRIM_AFTER_BYTES = 32 << 20


class Outbox(Protocol):
    def send(self, messages: Sequence[Message]) -> None: ...


class NullOutbox:
    """A single node has nobody to talk to."""

    def send(self, messages: Sequence[Message]) -> None:
        return None


@attrs.frozen
class NodeOptions:
    raft: RaftConfig
    tick_interval: float = 0.1  # seconds
    snapshot_threshold: int = 10_000
    # Bytes of entries applied since the last snapshot that also set one off:
    # the log before a snapshot is held in memory, and a few large entries
    # (batches of a bulk load) would otherwise keep it for a long time.
    snapshot_threshold_bytes: int = 64 * 1024 * 1024
    max_key_size: int = 4096
    max_value_size: int = 1 << 20
    proposal_batch_max: int = 1024
    ttl_sweep_limit: int = 1000
    # Wall clock in seconds, used only to stamp writes and filter expired keys.
    wall_clock: Callable[[], float] = time.time
    # Peer addresses by node id, for leader hints.
    addresses: dict[int, str] = attrs.field(factory=dict)
    watch: WatchSettings = attrs.field(factory=WatchSettings)
    # [metrics]: record histograms; warn above these durations (seconds).
    metrics: bool = True
    slow_fsync: float = 1.0
    slow_apply: float = 0.1


class _ExpiryWaiter:
    """The waiter of a TTL sweep's deletion: nobody awaits it; if the
    deletion fails, its keys may be swept again."""

    __slots__ = ("_expiring", "_keys", "_done")

    def __init__(self, expiring: set[tuple[bytes, int]], keys: tuple[tuple[bytes, int], ...]) -> None:
        self._expiring = expiring
        self._keys = keys
        self._done = False

    def set(self, value: Any) -> None:
        self._done = True

    def fail(self, error: BaseException) -> None:
        self._done = True
        self._expiring.difference_update(self._keys)

    def done(self) -> bool:
        return self._done


def _owns_a_revision(command: object) -> bool:
    """A transaction gets a revision of its own: its callers use it as a
    unique token (a lock's fencing token, an election's term)."""
    return type(command) is Txn


class _RevokeWaiter:
    """The waiter of the revoke of an expired lease: nobody awaits it; if it
    fails, the lessor proposes it again at the next sweep."""

    __slots__ = ("_lessor", "_lease_id", "_done")

    def __init__(self, lessor: Lessor, lease_id: int) -> None:
        self._lessor = lessor
        self._lease_id = lease_id
        self._done = False

    def set(self, value: Any) -> None:
        self._done = True

    def fail(self, error: BaseException) -> None:
        self._done = True
        self._lessor.revoke_failed(self._lease_id)

    def done(self) -> bool:
        return self._done


_KIND_WORDS = {
    "added_learner": "added as a learner",
    "added_voter": "added as a voter",
    "promoted": "promoted to voter",
    "removed": "removed",
    "updated": "addresses updated",
}


def _timed_write(job: PersistJob, storage: Storage) -> tuple[float | None, float]:
    """In the persister's worker thread: write ``job``; returns the fsync
    seconds the storage measured (or None) and the seconds of the whole write."""
    started = time.perf_counter()
    synced = job.write_to(storage)
    return synced, time.perf_counter() - started


class Node:
    """The trio half of one node: tasks that carry work between the
    :class:`~dengine.runtime.driver.Driver` (which decides), the storage,
    the network, the state machine and the callers. Create with
    :func:`open_node`."""

    def __init__(self, options: NodeOptions, storage: Storage, outbox: Outbox) -> None:
        self.options = options
        self.storage = storage
        self.outbox = outbox
        self.wal_thread = WorkerThread("WAL writer")
        # The persist job in progress and its write on the WAL thread.
        self._persist_job: PersistJob | None = None
        self._persist_write: Pending[tuple[float | None, float]] | None = None
        self.lifecycle = Lifecycle()
        state = storage.load()
        limits = {"max_key_size": options.max_key_size, "max_value_size": options.max_value_size}
        self.kv = KVStore(**limits)
        snapshot = state.snapshot
        self.applied_conf = ConfState()
        if snapshot is not None:
            image = unwrap_snapshot_data(snapshot.data, source="local snapshot")
            self.kv = restore(image, **limits)
            self.applied_conf = snapshot.meta.conf_state
        self.raw = RawNode(
            options.raft,
            rng=random.Random(),
            hard_state=state.hard_state,
            snapshot=snapshot,
            entries=state.entries,
        )
        self.last_snapshot_index = snapshot.meta.index if snapshot else 0
        if snapshot is not None:
            # The store holds the state; the bytes stay on disk until a
            # follower needs them (_send_snapshots).
            self.raw.drop_snapshot_data(snapshot.meta)
        self.kv.bind_clock(self.now_ms)
        #: When leases expire, kept while this node leads (dengine.kv.lessor).
        self.lessor = Lessor()
        self.kv.lease_observer = self._on_lease
        self._expiring: set[tuple[bytes, int]] = set()
        self._leader_seen: tuple[int | None, int] | None = None
        self.driver = Driver(
            self.raw,
            DriverOptions(
                tick_interval=options.tick_interval,
                proposal_batch_max=options.proposal_batch_max,
                max_pending_bytes=options.raft.max_uncommitted_bytes,
                addresses=options.addresses,
                alone=_owns_a_revision,
                read_ctx_prefix=os.urandom(8),
            ),
            encode=self._encode,
            durable_hard_state=state.hard_state,
            applied_index=self.kv.applied_index,
            on_leader_changed=self._on_leader_changed,
            on_first_commit=self.lifecycle.first_commit,
        )
        if snapshot is not None:
            self.driver.applied_term = snapshot.meta.term
        self._wakeup = trio.Event()
        self._persist_wakeup = trio.Event()
        # InstallSnapshot messages waiting for their bytes from disk: the
        # latest per follower (bounded by the membership).
        self._snapshot_requests: dict[int, InstallSnapshot] = {}
        # Bytes of entries applied since the last snapshot was started.
        self._applied_bytes = 0
        self._snapshot_wakeup = trio.Event()
        self._prepare_wakeup = trio.Event()
        self._persisted_event = trio.Event()
        self._apply_wakeup = trio.Event()
        self._snapshotting = False
        self._stopped = False
        #: The revision at which this node was removed from the cluster, if it was.
        self.removed_at: int | None = None
        # Watchers: fed synchronously by the applier, never blocking it.
        self.watch = WatchDispatcher(options.watch, applied_index=self.kv.applied_index)
        self.persisted_batches = 0
        self.installed_snapshots = 0
        self.rejected_snapshots = 0
        self._nursery: trio.Nursery | None = None
        #: What this node counts and times (read by dengine.http.metrics).
        self.stats = NodeStats(timed=options.metrics)
        #: Commit and applied index when this node started: entries committed
        #: and applied since then are the difference.
        self.started_commit = self.raw.core.log.committed
        self.started_applied = self.kv.applied_index
        self._known_leader: int | None = None
        # A clock behind the log's time by more than this (ms) is suspect:
        # max_clock_drift of an election timeout (what the lease allows for).
        raft = options.raft
        self._clock_slack_ms = max(1, round(raft.max_clock_drift * raft.election_tick * options.tick_interval * 1000))
        self._clock_suspect = False

    # ------------------------------------------------------------------
    # State, as the driver last reported it
    # ------------------------------------------------------------------

    @property
    def current_role(self) -> Role:
        return self.driver.role

    @property
    def current_leader(self) -> int | None:
        return self.driver.leader

    @property
    def current_term(self) -> int:
        return self.driver.term

    @property
    def applied_term(self) -> int:
        return self.driver.applied_term

    def wake(self) -> None:
        self._wakeup.set()

    # ------------------------------------------------------------------
    # Inputs (called by the embedding layer)
    # ------------------------------------------------------------------

    def check_open(self) -> None:
        if self._stopped or self.lifecycle.stopping.is_set():
            raise EngineStopped("the engine is stopping or has stopped")
        if self.removed_at is not None:
            when = f" at revision {self.removed_at}" if self.removed_at else " (a member refused it as removed)"
            raise MemberRemoved(
                f"node {self.raw.id} was removed from the cluster{when}; it serves no requests: talk to the "
                "remaining members"
            )

    def mark_removed(self, revision: int | None) -> None:
        """This node is no longer a member (``revision``: where its removal
        applied; None: a member said so). Idempotent."""
        if self.removed_at is not None:
            return
        self.removed_at = revision or 0
        log.warning("node %d: removed from the cluster%s; it stops serving", self.raw.id,
                    f" at revision {revision}" if revision else " (a member refused it as removed)")
        self.lifecycle.removed.set()

    def not_leader(self) -> NotLeader:
        return self.driver.not_leader()

    def propose(self, command: Command) -> Waiter:
        """Queue one write; its waiter yields the command's result."""
        self.check_open()
        waiter = Waiter()
        self.driver.propose(command, waiter, command_size(command))
        self.wake()
        return waiter

    def request_read_index(self) -> Waiter:
        """A linearizable read point (ReadIndex, thesis §6.4). Every read asked
        for before the next loop pass shares one request to the core."""
        self.check_open()
        waiter = Waiter()
        if self.driver.read(waiter):
            self.wake()
        return waiter

    def expire(self, waiter: Waiter, deadline: float, template: str, limit: float) -> None:
        """Fail ``waiter`` with Timeout(template.format(limit)) if it is still pending at
        ``deadline`` (trio time). Enforced by the ticker, within one tick."""
        self.driver.expire(waiter, deadline, template, limit)

    def lease_read_index(self) -> int | None:
        return self.driver.lease_read_index(trio.current_time())

    def applied_waiter(self, index: int) -> Waiter | None:
        """A waiter set once ``index`` is applied (None if it already is)."""
        if index <= self.driver.applied_index:
            return None  # the common case on the read path: no waiter, no event
        waiter = Waiter()
        return waiter if self.driver.wait_applied(index, waiter) else None

    def now_ms(self) -> int:
        return int(self.options.wall_clock() * 1000)

    def _encode(self, commands: list[Command]) -> bytes:
        return encode_batch(commands, self.now_ms())

    def transfer_leadership(self, target: int) -> None:
        self.driver.transfer_leader(target)
        self.wake()

    def propose_conf_change(self, change: ConfChange) -> tuple[int, int]:
        self.check_open()
        index, term = self.driver.propose_conf_change(change)
        self.wake()
        return index, term

    # ------------------------------------------------------------------
    # Tasks
    # ------------------------------------------------------------------

    async def ticker(self) -> None:
        driver = self.driver
        driver.on_tick(trio.current_time())
        while True:
            next_at = driver.next_tick_at
            assert next_at is not None
            await trio.sleep_until(next_at)
            driver.on_tick(trio.current_time())
            self._sweep_ttl()
            self._sweep_leases()
            self.wake()

    def _sweep_ttl(self) -> None:
        """Leader only: propose the deletion of keys whose TTL passed, so every
        replica expires them at the same revision (ARCHITECTURE "Time and TTL")."""
        if self.current_role is not Role.LEADER or self.kv.next_expiry() is None:
            return
        expired = tuple(p for p in self.kv.expired(self.now_ms(), self.options.ttl_sweep_limit) if p not in self._expiring)
        if not expired:
            return
        self._expiring.update(expired)
        waiter = _ExpiryWaiter(self._expiring, expired)
        try:
            self.driver.propose(ExpireKeys(expired), waiter, 0)
        except DengineError as exc:
            waiter.fail(exc)
        else:
            self.stats.keys_expired += len(expired)

    def _on_lease(self, lease_id: int, ttl_ms: int | None) -> None:
        self.lessor.observe(lease_id, ttl_ms, trio.current_time())

    def _sweep_leases(self) -> None:
        """Leader only: propose the revoke of every lease whose deadline
        passed; it ends on every replica when the revoke commits."""
        lessor = self.lessor
        if not lessor.primary or self.current_role is not Role.LEADER:
            return
        for lease_id in lessor.expired(trio.current_time(), self.options.ttl_sweep_limit):
            waiter = _RevokeWaiter(lessor, lease_id)
            try:
                self.driver.propose(LeaseRevoke(lease_id), waiter, 16)
            except DengineError as exc:
                waiter.fail(exc)
            else:
                self.stats.leases_expired += 1

    def renew_lease(self, lease_id: int, since: float) -> float:
        """Keep a lease alive from ``since`` (trio time, taken before the
        caller confirmed this node's leadership); the TTL in seconds."""
        if not self.lessor.primary or self.current_role is not Role.LEADER:
            raise self.not_leader()
        return self.lessor.renew(lease_id, since, trio.current_time())

    def lease_remaining(self, lease_id: int) -> float | None:
        """Seconds before a lease expires, as this leader counts them."""
        if not self.lessor.primary or self.current_role is not Role.LEADER:
            raise self.not_leader()
        return self.lessor.remaining(lease_id, trio.current_time())

    async def raft_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            self._take_readies()

    def _take_readies(self) -> None:
        """One pass: everything the core has to say, sent or queued."""
        driver = self.driver
        messages = driver.poll()
        if messages:
            if log.isEnabledFor(logging.DEBUG):
                self._log_votes("sends", messages)
            if any(type(m) is InstallSnapshot and not m.snapshot.data for m in messages):
                messages = self._hold_snapshot_requests(messages)
            self.outbox.send(messages)
        if driver.persist_waiting:
            self._start_persist()
        if driver.apply_waiting:
            if not driver.write_waiting:
                # (A write to start goes first: on a follower it is on the
                # critical path, the apply is not.)
                self._apply_now()
            if driver.apply_waiting:
                self._apply_wakeup.set()

    def _hold_snapshot_requests(self, messages: list[Message]) -> list[Message]:
        """Set aside the InstallSnapshots the core sent without bytes (it
        keeps only the meta, see drop_snapshot_data): _send_snapshots reads
        the bytes from disk and sends them."""
        rest = []
        for m in messages:
            if type(m) is InstallSnapshot and not m.snapshot.data:
                self._snapshot_requests[m.to] = m
                self._snapshot_wakeup.set()
            else:
                rest.append(m)
        return rest

    async def snapshot_sender(self) -> None:
        while True:
            await self._snapshot_wakeup.wait()
            self._snapshot_wakeup = trio.Event()
            requests, self._snapshot_requests = self._snapshot_requests, {}
            by_index: dict[int, Snapshot | None] = {}
            for peer, m in sorted(requests.items()):
                index = m.snapshot.meta.index
                if index not in by_index:  # one read for every follower that needs it
                    by_index[index] = await trio.to_thread.run_sync(self.storage.read_snapshot, index)
                snapshot = by_index[index]
                if snapshot is None or snapshot.meta != m.snapshot.meta:
                    # A newer snapshot replaced it: the core sends that one next time.
                    log.info("node %d: the snapshot at index %d for node %d was replaced before it was read",
                             self.raw.id, index, peer)
                    continue
                self.outbox.send([InstallSnapshot(frm=m.frm, to=m.to, term=m.term, snapshot=snapshot)])

    def _on_leader_changed(self, leader: int | None, term: int) -> None:
        if leader is not None and leader != self._known_leader:
            # etcd's leader_changes_seen: a leader other than the one last
            # known ("no leader" in between counts as a change).
            self.stats.leader_changes += 1
        self._known_leader = leader
        if (leader, term) != self._leader_seen:
            self._leader_seen = (leader, term)
            me = self.raw.id
            if leader is None:
                log.info("node %d: no leader in term %d", me, term)
            elif leader == me:
                log.info("node %d: became the leader in term %d", me, term)
            else:
                log.info("node %d: the leader is node %d in term %d", me, leader, term)
        self.lifecycle.leader_changed(leader, term)
        if self.driver.role is not Role.LEADER:
            self._expiring.clear()
            if self.lessor.primary:
                self.lessor.demote()
        elif not self.lessor.primary:
            # A new leader gives every lease its full TTL again (etcd's rule).
            self.lessor.promote(self.kv.leases(), trio.current_time())
        self._maybe_ready()

    def _maybe_ready(self) -> None:
        if self.lifecycle.ready.is_set():
            return
        if self.current_leader is not None and self.applied_term == self.current_term and self.current_term > 0:
            self.lifecycle.mark_ready()

    def _start_persist(self) -> None:
        """Take the next persist job and queue its write on the WAL thread in
        this pass, without a hop through the persister task (a scheduling
        round on the critical path of every write); the persister waits for
        it. Nothing happens while a job is in progress."""
        if self._persist_job is not None:
            return
        job = self.driver.take_persist()
        if job is None:
            return
        self._persist_job = job
        if job.needs_io and self.wal_thread.open:
            self._persist_write = self.wal_thread.submit(_timed_write, job, self.storage)
        self._persist_wakeup.set()

    async def persister(self) -> None:
        driver = self.driver
        while True:
            await self._persist_wakeup.wait()
            self._persist_wakeup = trio.Event()
            self._start_persist()
            job = self._persist_job
            if job is None:
                continue
            if job.needs_io:
                pending = self._persist_write or self.wal_thread.submit(_timed_write, job, self.storage)
                synced, took = await self.wal_thread.wait(pending)
                self._record_write(job, synced, took)
                self.persisted_batches += 1
                if self.storage.needs_preparation:
                    self._prepare_wakeup.set()
            self._persist_job = self._persist_write = None
            released = driver.on_persisted(job)
            self._persisted_event.set()
            if released:
                if log.isEnabledFor(logging.DEBUG):
                    self._log_votes("sends", released)
                self.outbox.send(released)
            # What the fsync unblocked (a commit, acknowledgements) goes out
            # now, without a hop through the raft loop task; the next write,
            # if one waits, starts here too.
            self._take_readies()

    def _record_write(self, job: PersistJob, synced: float | None, took: float) -> None:
        """One durable write's timings (measured in the worker thread):
        ``took`` the whole append, ``synced`` its fsync as the storage
        measured it (None: it does not say; the whole append counts)."""
        stats = self.stats
        if stats.timed:
            stats.wal_append.observe(took)
            if synced is not None:
                stats.wal_fsync.observe(synced)
        sync = took if synced is None else synced
        if sync > self.options.slow_fsync:
            stats.slow_fsyncs += 1
            entries = sum(len(step) for step in job.steps if isinstance(step, list))
            log.warning(
                "node %d: slow fdatasync: syncing the WAL took %.3f s, expected under %.3g s (metrics.slow_fsync_ms); "
                "the append of %d entries took %.3f s in all: the disk is too slow or overloaded",
                self.raw.id, sync, self.options.slow_fsync, entries, took,
            )

    async def preparer(self) -> None:
        """Slow storage work kept off the write path (FileStorage: zero-fill
        the next WAL segment), woken by the persister. The worker thread is
        abandoned on cancel; Storage.close waits for it to notice."""
        while True:
            if self.storage.needs_preparation:
                await trio.to_thread.run_sync(self.storage.prepare, abandon_on_cancel=True)
            await self._prepare_wakeup.wait()
            self._prepare_wakeup = trio.Event()

    async def applier(self) -> None:
        """Bounded steps of committed work, each followed by a checkpoint so
        a long catch-up never starves the ticker, the network or callers."""
        driver = self.driver
        while True:
            await self._apply_wakeup.wait()
            self._apply_wakeup = trio.Event()
            if driver.write_waiting:
                # Let the persister start that write first (it is runnable
                # now): on a follower the write is on the critical path of
                # the leader's next commit, this apply is not.
                await trio.lowlevel.cancel_shielded_checkpoint()
            while (job := driver.take_apply()) is not None:
                if job.snapshot is not None:
                    await self._install_snapshot(job.snapshot)
                self._finish_apply(job)
                if driver.apply_waiting:
                    await trio.lowlevel.checkpoint()

    def _apply_now(self) -> None:
        """One bounded step of committed entries in the pass that committed
        them, without a hop through the applier task (it would delay every
        answer by a scheduling round); a snapshot to install and any further
        step are left to the applier."""
        job = self.driver.take_apply(entries_only=True)
        if job is not None:
            self._finish_apply(job)

    def _finish_apply(self, job: ApplyJob) -> None:
        """Apply ``job``'s entries (its snapshot, if any, is installed) and
        hand the results to the driver."""
        if job.entries:
            self._applied_bytes += sum(len(e.data) for e in job.entries)
            started = time.perf_counter()
            results = self._apply_entries(job.entries)
            took = time.perf_counter() - started
            if took > self.options.slow_apply:
                self._slow_apply(job.entries, took)
            self._check_clock()
        else:
            results = []
        if self.driver.on_applied(job, results):
            self.wake()  # the next bounded step may be handed out now
        self._maybe_ready()
        self._maybe_snapshot()

    def _slow_apply(self, entries: tuple[Entry, ...], took: float) -> None:
        self.stats.slow_applies += 1
        log.warning(
            "node %d: applying %d committed entries (index %d to %d) took %.3f s, expected under %.3g s "
            "(metrics.slow_apply_ms): the state machine is overloaded or the process is starved of CPU",
            self.raw.id, len(entries), entries[0].index, entries[-1].index, took, self.options.slow_apply,
        )

    def _check_clock(self) -> None:
        """Clock-drift suspicion: the log's time (the largest leader stamp
        applied) ahead of this node's clock by more than the allowed drift
        of an election timeout. Delays only make a stamp look older, so a
        stamp from the future means the leader's clock (or an earlier
        leader's) runs ahead of this one. Logged once per episode."""
        ahead = self.kv.clock_ms - self.now_ms()
        if ahead > self._clock_slack_ms:
            if not self._clock_suspect:
                self._clock_suspect = True
                log.warning(
                    "node %d: clock drift suspected: the leader's time stamps (up to revision %d) are %.3f s ahead "
                    "of this node's clock, more than raft.max_clock_drift of an election timeout (%.3g s); check "
                    "NTP on this node and on the leader (node %s): TTLs expire by the leader's clock",
                    self.raw.id, self.kv.applied_index, ahead / 1000, self._clock_slack_ms / 1000, self.current_leader,
                )
        elif self._clock_suspect and ahead <= 0:
            self._clock_suspect = False
            log.info("node %d: this node's clock has caught up with the leader's time stamps", self.raw.id)

    async def _install_snapshot(self, snapshot: Snapshot) -> None:
        started = time.perf_counter()
        image = unwrap_snapshot_data(snapshot.data, source=f"snapshot {snapshot.meta.index} from the leader")
        # Decoding a large image takes long: off the event loop. The store is
        # then replaced in place, so references to it (get_nowait) stay valid.
        restored = await trio.to_thread.run_sync(
            functools.partial(restore, image, max_key_size=self.options.max_key_size, max_value_size=self.options.max_value_size)
        )
        self.kv.load_from(restored)
        self.applied_conf = snapshot.meta.conf_state
        self.last_snapshot_index = snapshot.meta.index
        self._applied_bytes = 0
        self.installed_snapshots += 1
        self.driver.on_snapshot_installed(snapshot.meta)
        self.raw.drop_snapshot_data(snapshot.meta)  # the store holds it now; the bytes are on disk
        self.watch.publish_snapshot(snapshot.meta.index)
        took = time.perf_counter() - started
        size = len(snapshot.data)
        stats = self.stats
        if stats.timed:
            stats.snapshot_apply_seconds.observe(took)
            stats.snapshot_apply_bytes.observe(size)
        log.info("node %d: installed the leader's snapshot at index %d (term %d, %d bytes) in %.3f s",
                 self.raw.id, snapshot.meta.index, snapshot.meta.term, size, took)

    def _apply_entries(self, entries: Iterable[Entry]) -> list[ApplyResult | None]:
        kv = self.kv
        events: list[WatchEvent] = []
        results: list[ApplyResult | None] = []
        for entry in entries:
            if entry.index <= kv.applied_index:
                results.append(None)
                continue
            if entry.type is EntryType.CONF_CHANGE:
                self._apply_membership(entry)
                results.append(None)
            else:
                result = kv.apply(entry.index, entry.data)
                if result.events:
                    events.extend(result.events)
                results.append(result)
        if self._expiring and events:
            self._expiring.difference_update((e.key, e.revision) for e in events)
            if len(self._expiring) > 10 * self.options.ttl_sweep_limit:
                self._expiring.clear()
        self.watch.publish(events, kv.applied_index)
        return results

    def _apply_membership(self, entry: Entry) -> None:
        """A committed membership entry: Raft's roles, the member table's
        addresses, and a notification of what changed."""
        try:
            change = ConfChange.decode(entry.data)
        except ValueError:
            self.kv.apply_member(entry.index, 0, "none")  # malformed: applies as nothing, as in the core
            return
        before = self.applied_conf
        after = self.applied_conf = membership.apply(before, change)
        node = change.node_id
        kind: str | None = None
        if change.type is ConfChangeType.UPDATE:
            kind = "updated" if node in after.members() else None
        elif after != before:
            if change.type is ConfChangeType.REMOVE:
                kind = "removed"
            elif change.type is ConfChangeType.PROMOTE:
                kind = "promoted"
            else:
                kind = "added_learner" if node in after.learners else "added_voter"
        effect = "none" if kind in (None, "promoted") else "remove" if kind == "removed" else "record"
        self.kv.apply_member(entry.index, node, effect, change.context)
        if kind == "removed" and node == self.raw.id:
            self.mark_removed(entry.index)
        if kind is not None:
            members = self.member_list()
            log.info(
                "node %d: membership change at revision %d: node %d %s; members now %s",
                self.raw.id, entry.index, node, _KIND_WORDS.get(kind, kind),
                ", ".join(f"{m.node_id}{' (learner)' if m.is_learner else ''}" for m in members) or "none",
            )
            self.lifecycle.membership_changed(
                MembershipChange(revision=entry.index, kind=kind, node_id=node, members=members)
            )

    def member_list(self) -> tuple[Member, ...]:
        """The members as the applied state says: roles from the applied
        configuration, addresses from the member table (an address the
        table lacks -- a cluster bootstrapped before the table existed -- is
        the configured one, or empty)."""
        conf = self.applied_conf
        table = self.kv.members
        fallback = self.options.addresses
        out = []
        for n in sorted(conf.members()):
            held = table.get(n)
            peer = held.peer_address if held is not None else None
            out.append(Member(
                node_id=n,
                peer_address=peer if peer is not None else fallback.get(n, ""),
                client_address=held.client_address if held is not None else None,
                is_learner=n in conf.learners,
            ))
        return tuple(out)

    def snapshot_thresholds(self) -> tuple[float, float]:
        """The entries and the bytes applied since the last snapshot that
        set off the next one here: ``raft.snapshot_threshold`` and
        ``raft.snapshot_threshold_bytes``, staggered by node id (x1, x1.25,
        x1.5). The members of a cluster apply the same entries, and if all
        of them snapshot at the same index they all pay for it at once."""
        stagger = 1 + ((self.raw.id - 1) % 3) / 4
        return self.options.snapshot_threshold * stagger, self.options.snapshot_threshold_bytes * stagger

    def _maybe_snapshot(self) -> None:
        kv = self.kv
        if self._snapshotting or self._nursery is None:
            return
        entries, size = self.snapshot_thresholds()
        if kv.applied_index - self.last_snapshot_index < entries and self._applied_bytes < size:
            return
        self._applied_bytes = 0
        image = kv.freeze()  # a copy, on the apply path; encoding happens off it
        meta = SnapshotMeta(index=image.applied_index, term=self.applied_term, conf_state=self.applied_conf)
        self._snapshotting = True
        self._nursery.start_soon(self._take_snapshot, image, meta)

    async def _take_snapshot(self, image: Any, meta: SnapshotMeta) -> None:
        try:
            # Applied may run ahead of the local fsync; the log can only be
            # compacted up to what is durable here.
            while self.raw.core.log.persisted < meta.index:
                self._persisted_event = trio.Event()
                await self._persisted_event.wait()
            started = time.perf_counter()
            data = await trio.to_thread.run_sync(encode_snapshot_data, image, pace_encoding)
            snapshot = Snapshot(meta=meta, data=data)
            await trio.to_thread.run_sync(self.storage.save_snapshot, snapshot)
            took = time.perf_counter() - started
            stats = self.stats
            if stats.timed:
                stats.snapshot_save_seconds.observe(took)
                stats.snapshot_save_bytes.observe(len(data))
            if meta.index > self.raw.core.log.snapshot_index:
                self.raw.compact(Snapshot(meta=meta))  # the bytes stay on disk
            await trio.to_thread.run_sync(self.storage.compact, meta.index)
            self.last_snapshot_index = meta.index
            size = len(data)
            log.info("node %d: snapshot at index %d saved (%d bytes, encoded and written in %.3f s); "
                     "the log before it is compacted", self.raw.id, meta.index, size, took)
            # The image's copies of the maps and the encoding's pieces are
            # garbage now: give their pages back (runtime/memory.py). Only
            # after a large snapshot: a trim walks the whole heap holding
            # malloc's lock, which every thread's allocations then wait for.
            del data, snapshot, image
            if size >= TRIM_AFTER_BYTES:
                await trio.to_thread.run_sync(release_free_heap)
        finally:
            self._snapshotting = False

    async def receiver(self, inbound: trio.MemoryReceiveChannel[Message]) -> None:
        """Every message that has arrived goes to the driver, then one pass
        of the raft loop's work runs here, at once: a hop through the loop
        task would cost a scheduling round on every step of replication
        (docs/benchmarks.md, "Where a single write's time goes")."""
        async for message in inbound:
            self._receive(message)
            while True:
                try:
                    message = inbound.receive_nowait()
                except trio.WouldBlock:
                    break
                self._receive(message)
            self._take_readies()

    def _log_votes(self, verb: str, messages: Iterable[Message]) -> None:
        """Elections at DEBUG level: every vote request and answer."""
        for m in messages:
            if type(m) is RequestVote:
                log.debug("node %d: %s %s request %s node %d for term %d (log %d/%d%s)", self.raw.id, verb,
                          "pre-vote" if m.pre_vote else "vote", *self._peer(verb, m), m.term,
                          m.last_term, m.last_index, ", forced" if m.force else "")
            elif type(m) is VoteResponse:
                log.debug("node %d: %s %s %s %s node %d (term %d)", self.raw.id, verb,
                          "pre-vote" if m.pre_vote else "vote", "grant" if m.granted else "refusal",
                          *self._peer(verb, m), m.term)

    @staticmethod
    def _peer(verb: str, m: RequestVote | VoteResponse) -> tuple[str, int]:
        return ("to", m.to) if verb == "sends" else ("from", m.frm)

    def _receive(self, message: Message) -> None:
        if type(message) in (RequestVote, VoteResponse) and log.isEnabledFor(logging.DEBUG):
            self._log_votes("receives", [message])
        if type(message) is InstallSnapshot and not self._snapshot_intact(message):
            return
        self.driver.on_message(message)

    def _snapshot_intact(self, message: InstallSnapshot) -> bool:
        """Verify a snapshot's checksum on receipt, before the core adopts it
        and the persister writes it: a damaged one is dropped (the leader
        sends it again after an election timeout), never installed."""
        try:
            unwrap_snapshot_data(message.snapshot.data, source=f"snapshot from node {message.frm}")
        except StorageCorrupted as exc:
            self.rejected_snapshots += 1
            log.warning("node %d: dropped a damaged snapshot: %s", self.raw.id, exc)
            return False
        return True

    # ------------------------------------------------------------------
    # Stop
    # ------------------------------------------------------------------

    def fail_pending(self, error: Exception) -> None:
        self.kv.close()
        self.driver.fail_pending(error)
        self.watch.close(EngineStopped(str(error)) if not isinstance(error, EngineStopped) else error)


@asynccontextmanager
async def open_node(
    options: NodeOptions,
    storage: Storage,
    outbox: Outbox,
    inbound: trio.MemoryReceiveChannel[Message] | None = None,
) -> AsyncIterator[Node]:
    """Run a node until the block exits. The caller owns storage and transport."""
    node = Node(options, storage, outbox)
    try:
        async with trio.open_nursery() as nursery:
            node._nursery = nursery
            nursery.start_soon(node.raft_loop)
            await nursery.start(node.wal_thread.run)
            nursery.start_soon(node.persister)
            nursery.start_soon(node.preparer)
            nursery.start_soon(node.applier)
            nursery.start_soon(node.ticker)
            nursery.start_soon(node.snapshot_sender)
            nursery.start_soon(node.watch.run)
            if inbound is not None:
                nursery.start_soon(node.receiver, inbound)
            if node.raw.core.conf.voters == {node.raw.id}:
                # A single voter needs nobody's vote: lead at once, not after
                # an election timeout.
                node.raw.campaign()
            node.wake()
            try:
                yield node
            finally:
                node.lifecycle.begin_stop()
                node._stopped = True
                node.fail_pending(EngineStopped("the engine stopped"))
                nursery.cancel_scope.cancel()
    finally:
        node._stopped = True
        node.fail_pending(EngineStopped("the engine stopped"))
        node.lifecycle.finish_stop()

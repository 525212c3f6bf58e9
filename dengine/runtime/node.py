"""One Raft node in one trio nursery: the only place the pure core meets trio.

Task tree (ARCHITECTURE.md, "The trio driver"):

    open_node ─ nursery
       ├─ ticker      sleeps one tick interval, catches the core up on ticks
       ├─ raft loop   wakes on any input; turns everything waiting into one Ready
       ├─ persister   one WAL write + one fsync (in a worker thread) per batch of Readies
       ├─ applier     committed entries → KV store → results to callers, events to watchers
       ├─ receiver    inbound peer messages → core.step
       └─ snapshots   encodes and saves a frozen image off the apply path

Rules:
* Batching is the performance model. Callers only append to lists and wake
  the loop; one loop pass proposes every waiting write as ONE entry, takes one
  Ready, hands it on. The persister merges every Ready waiting for it into one
  storage call. The applier resolves every waiter of a pass together.
* The leader sends appends before its own fsync returns (Ready.messages go out
  at once); votes and acknowledgements leave only after the fsync
  (``RawNode.on_persisted``).
* Committed entries are durable on a majority, so the applier runs in
  parallel with the persister (the leader answers while its own fsync runs);
  a snapshot waits until its index is durable here before the log is compacted.
* A failure in any task stops the node: the nursery unwinds and the embedding
  layer reports one clear error.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import attrs
import trio

from dengine.api import WatchEvent
from dengine.config import WatchSettings
from dengine.errors import (
    EngineStopped,
    NotLeader,
    ProposalDropped,
    StorageCorrupted,
    Timeout,
    Unavailable,
)
from dengine.kv.commands import Command, ExpireKeys, encode_batch
from dengine.kv.snapshot import encode_image, restore
from dengine.kv.store import ApplyResult, CommandError, KVStore
from dengine.lifecycle import Lifecycle
from dengine.raft import membership
from dengine.raft.core import RaftConfig
from dengine.raft.messages import (
    ConfChange,
    InstallSnapshot,
    ConfState,
    Entry,
    EntryType,
    Message,
    Role,
    Snapshot,
    SnapshotMeta,
)
from dengine.raft.rawnode import RawNode
from dengine.raft.ready import Ready
from dengine.runtime.waiters import AppliedWaiters, Waiter
from dengine.storage.base import Storage
from dengine.watch.dispatcher import WatchDispatcher

log = logging.getLogger("dengine.node")


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
    max_key_size: int = 4096
    max_value_size: int = 1 << 20
    proposal_batch_max: int = 1024
    ttl_sweep_limit: int = 1000
    # Wall clock in seconds, used only to stamp writes and filter expired keys.
    wall_clock: Callable[[], float] = time.time
    # Peer addresses by node id, for leader hints.
    addresses: dict[int, str] = attrs.field(factory=dict)
    watch: WatchSettings = attrs.field(factory=WatchSettings)


# A snapshot's data is the KV image wrapped with a CRC32, so a corrupted
# snapshot from a peer (or a disk) is refused before it replaces anything.
def wrap_snapshot_data(image: bytes) -> bytes:
    return zlib.crc32(image).to_bytes(4, "big") + image


def unwrap_snapshot_data(data: bytes, *, source: str) -> bytes:
    if len(data) < 4:
        raise StorageCorrupted(f"{source}: snapshot data is {len(data)} bytes, too short", path=source, offset=0)
    image = data[4:]
    if zlib.crc32(image).to_bytes(4, "big") != data[:4]:
        raise StorageCorrupted(f"{source}: snapshot checksum mismatch", path=source, offset=0)
    return image


@attrs.define
class _Proposal:
    command: Command
    waiter: Waiter | None


class Node:
    """The runtime state of one node. Create with :func:`open_node`."""

    def __init__(self, options: NodeOptions, storage: Storage, outbox: Outbox) -> None:
        self.options = options
        self.storage = storage
        self.outbox = outbox
        self.lifecycle = Lifecycle()
        state = storage.load()
        self.kv = KVStore(max_key_size=options.max_key_size, max_value_size=options.max_value_size)
        snapshot = state.snapshot
        self.applied_conf = ConfState()
        self.applied_term = 0
        if snapshot is not None:
            image = unwrap_snapshot_data(snapshot.data, source="local snapshot")
            self.kv = restore(image, max_key_size=options.max_key_size, max_value_size=options.max_value_size)
            self.applied_conf = snapshot.meta.conf_state
            self.applied_term = snapshot.meta.term
        self._durable_hs = state.hard_state
        self._latest_hs = state.hard_state
        self.raw = RawNode(
            options.raft,
            rng=random.Random(),
            hard_state=state.hard_state,
            snapshot=snapshot,
            entries=state.entries,
        )
        self.last_snapshot_index = snapshot.meta.index if snapshot else 0
        self.kv.bind_clock(self.now_ms)
        self.applied_waiters = AppliedWaiters()
        self.applied_waiters.applied = self.kv.applied_index
        # index -> (term, waiters of the commands in that entry, in order)
        self.proposal_waiters: dict[int, tuple[int, list[Waiter | None]]] = {}
        # Reads asked for since the last loop pass: they share one ReadIndex
        # request to the core; in flight ones by their ctx.
        self._read_batch: list[Waiter] = []
        self.read_waiters: dict[bytes, list[Waiter]] = {}
        # Deadlines of callers' waiters, expired by the ticker (one check per
        # tick instead of one cancel scope per call).
        self._deadlines: list[tuple[float, int, Waiter, str, float]] = []
        self._deadline_seq = itertools.count()
        self._proposals: list[_Proposal] = []
        self._read_seq = itertools.count(1)
        self._wakeup = trio.Event()
        self._persist_queue: list[Ready] = []
        self._persist_wakeup = trio.Event()
        self._prepare_wakeup = trio.Event()
        self._persisted_event = trio.Event()
        self._apply_queue: list[tuple[Snapshot | None, tuple[Entry, ...]]] = []
        self._apply_wakeup = trio.Event()
        self._expiring: set[tuple[bytes, int]] = set()
        self._snapshotting = False
        self._next_tick_at = 0.0
        self._stopped = False
        self.event_sinks: list[Callable[[list[WatchEvent], int], None]] = []
        # Watchers: fed synchronously by the applier, never blocking it.
        self.watch = WatchDispatcher(options.watch, applied_index=self.kv.applied_index)
        self.persisted_batches = 0
        self.installed_snapshots = 0
        self.rejected_snapshots = 0
        self.current_role = self.raw.core.role
        self.current_leader: int | None = None
        self.current_term = self.raw.core.term
        self._nursery: trio.Nursery | None = None

    # ------------------------------------------------------------------
    # Waking tasks
    # ------------------------------------------------------------------

    def wake(self) -> None:
        self._wakeup.set()

    # ------------------------------------------------------------------
    # Inputs (called by the embedding layer)
    # ------------------------------------------------------------------

    def check_open(self) -> None:
        if self._stopped or self.lifecycle.stopping.is_set():
            raise EngineStopped("the engine is stopping or has stopped")

    def not_leader(self) -> NotLeader:
        lead = self.current_leader
        addr = self.options.addresses.get(lead) if lead is not None else None
        return NotLeader(
            f"node {self.raw.id} is not the leader" + (f"; the leader is node {lead}" if lead else "; no leader is known"),
            leader_id=lead,
            leader_address=addr,
        )

    def propose(self, command: Command) -> Waiter:
        """Queue one write; its waiter yields the command's result."""
        self.check_open()
        if self.current_role is not Role.LEADER:
            raise self.not_leader()
        waiter = Waiter()
        self._proposals.append(_Proposal(command, waiter))
        self.wake()
        return waiter

    def request_read_index(self) -> Waiter:
        """A linearizable read point (ReadIndex, thesis §6.4). Every read asked
        for before the next loop pass shares one request to the core."""
        self.check_open()
        waiter = Waiter()
        if not self._read_batch:
            self.wake()
        self._read_batch.append(waiter)
        return waiter

    def expire(self, waiter: Waiter, deadline: float, template: str, limit: float) -> None:
        """Fail ``waiter`` with Timeout(template.format(limit)) if it is still pending at
        ``deadline`` (trio time). Enforced by the ticker, within one tick."""
        heapq.heappush(self._deadlines, (deadline, next(self._deadline_seq), waiter, template, limit))

    def _expire_deadlines(self, now: float) -> None:
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, _, waiter, template, limit = heapq.heappop(heap)
            if not waiter.done():
                waiter.fail(Timeout(template.format(limit)))
        if len(heap) > 10_000:
            # Entries of answered calls linger until their deadline; drop them.
            self._deadlines = [e for e in heap if not e[2].done()]
            heapq.heapify(self._deadlines)

    def lease_read_index(self) -> int | None:
        self._catch_up_ticks(trio.current_time())
        return self.raw.lease_read_index()

    def applied_waiter(self, index: int) -> Waiter | None:
        """A waiter set once ``index`` is applied (None if it already is)."""
        return self.applied_waiters.wait_for(index)

    def now_ms(self) -> int:
        return int(self.options.wall_clock() * 1000)

    def transfer_leadership(self, target: int) -> None:
        self.raw.transfer_leader(target)
        self.wake()

    def propose_conf_change(self, change: ConfChange) -> tuple[int, int]:
        self.check_open()
        index, term = self.raw.propose_conf_change(change)
        self.wake()
        return index, term

    # ------------------------------------------------------------------
    # Tasks
    # ------------------------------------------------------------------

    async def ticker(self) -> None:
        interval = self.options.tick_interval
        self._next_tick_at = trio.current_time() + interval
        while True:
            await trio.sleep_until(self._next_tick_at)
            now = trio.current_time()
            self._catch_up_ticks(now)
            self._expire_deadlines(now)
            self._sweep_ttl()
            self.wake()

    def _catch_up_ticks(self, now: float) -> None:
        """Tick once per interval that has passed. After a long pause (a
        stopped process, a slow disk) at most 10 election timeouts are
        replayed: enough for every lease and timer to expire, which is what
        safety needs; the rest are skipped."""
        interval = self.options.tick_interval
        if self._next_tick_at == 0.0:
            self._next_tick_at = now + interval
            return
        cap = 10 * self.options.raft.election_tick
        n = 0
        while self._next_tick_at <= now and n < cap:
            self.raw.tick()
            self._next_tick_at += interval
            n += 1
        if self._next_tick_at <= now:
            self._next_tick_at = now + interval

    def _sweep_ttl(self) -> None:
        """Leader only: propose the deletion of keys whose TTL passed, so every
        replica expires them at the same revision (ARCHITECTURE "Time and TTL")."""
        if self.current_role is not Role.LEADER or self.kv.next_expiry() is None:
            return
        expired = [p for p in self.kv.expired(self.now_ms(), self.options.ttl_sweep_limit) if p not in self._expiring]
        if not expired:
            return
        self._expiring.update(expired)
        self._proposals.append(_Proposal(ExpireKeys(tuple(expired)), None))

    async def raft_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            self._take_readies()

    def _take_readies(self) -> None:
        """One pass: everything the core has to say, as Readies."""
        raw = self.raw
        if self._proposals:
            self._flush_proposals()
        if self._read_batch:
            ctx = next(self._read_seq).to_bytes(8, "big")
            self.read_waiters[ctx], self._read_batch = self._read_batch, []
            raw.read_index(ctx)
        while raw.has_ready():
            self._handle_ready(raw.ready())

    def _flush_proposals(self) -> None:
        max_batch = self.options.proposal_batch_max
        while self._proposals:
            batch, self._proposals = self._proposals[:max_batch], self._proposals[max_batch:]
            try:
                payload = encode_batch([p.command for p in batch], self.now_ms())
                index, term = self.raw.propose([payload])
            except (NotLeader, ProposalDropped) as exc:
                err = self.not_leader() if isinstance(exc, NotLeader) else exc
                for p in batch:
                    if p.waiter is not None:
                        p.waiter.fail(err)
                    elif isinstance(p.command, ExpireKeys):
                        self._expiring.difference_update(p.command.keys)
                continue
            self.proposal_waiters[index] = (term, [p.waiter for p in batch])

    def _handle_ready(self, rd: Ready) -> None:
        if rd.messages:
            self.outbox.send(rd.messages)
        if rd.soft_state is not None:
            self._on_soft_state(rd)
        for rs in rd.read_states:
            for w in self.read_waiters.pop(rs.ctx, ()):
                w.set(rs.index)
        for ctx in rd.dropped_reads:
            dropped = self.read_waiters.pop(ctx, ())
            if dropped:
                err = self._read_dropped_error()
                for w in dropped:
                    w.fail(err)
        if rd.first_commit_in_term is not None:
            self.lifecycle.first_commit(rd.first_commit_in_term)
        self._persist_queue.append(rd)
        self._persist_wakeup.set()
        if rd.snapshot is not None or rd.committed:
            self._apply_queue.append((rd.snapshot, rd.committed))
            self._apply_wakeup.set()

    def _read_dropped_error(self) -> Exception:
        if self.current_role is Role.LEADER:
            return Unavailable("the leader could not confirm its leadership for this read; retry")
        return self.not_leader()

    def _on_soft_state(self, rd: Ready) -> None:
        soft = rd.soft_state
        assert soft is not None
        was_leader = self.current_role is Role.LEADER
        self.current_role = soft.role
        self.current_leader = soft.leader
        self.current_term = soft.term
        self.lifecycle.leader_changed(soft.leader, soft.term)
        if was_leader and soft.role is not Role.LEADER:
            # Writes not yet proposed cannot be: fail them with a hint.
            err = self.not_leader()
            for p in self._proposals:
                if p.waiter is not None:
                    p.waiter.fail(err)
            self._proposals = []
            self._expiring.clear()
        self._maybe_ready()

    def _maybe_ready(self) -> None:
        if self.lifecycle.ready.is_set():
            return
        if self.current_leader is not None and self.applied_term == self.current_term and self.current_term > 0:
            self.lifecycle.mark_ready()

    async def persister(self) -> None:
        raw = self.raw
        while True:
            await self._persist_wakeup.wait()
            self._persist_wakeup = trio.Event()
            if not self._persist_queue:
                continue
            batch, self._persist_queue = self._persist_queue, []
            for rd in batch:
                if rd.hard_state is not None:
                    self._latest_hs = rd.hard_state
            if any(self._needs_io(rd) for rd in batch):
                await trio.to_thread.run_sync(self._persist_batch, batch)
                self.persisted_batches += 1
                if self.storage.needs_preparation:
                    self._prepare_wakeup.set()
            released = raw.on_persisted(batch[-1].number)
            self._persisted_event.set()
            if released:
                self.outbox.send(released)
            # What the fsync unblocked (a commit, acknowledgements) goes out
            # now, without a hop through the raft loop task.
            self._take_readies()

    async def preparer(self) -> None:
        """Slow storage work kept off the write path (FileStorage: zero-fill
        the next WAL segment), woken by the persister. The worker thread is
        abandoned on cancel; Storage.close waits for it to notice."""
        while True:
            if self.storage.needs_preparation:
                await trio.to_thread.run_sync(self.storage.prepare, abandon_on_cancel=True)
            await self._prepare_wakeup.wait()
            self._prepare_wakeup = trio.Event()

    def _needs_io(self, rd: Ready) -> bool:
        """Whether a Ready must reach the disk before its messages leave.
        Term and vote must be durable (votes), entries and snapshots too
        (acknowledgements); a hard state that only moved the commit index is
        not: commit is re-learned after a restart, so it rides along with the
        next batch of entries instead of costing an fsync of its own."""
        if rd.entries or rd.snapshot is not None:
            return True
        hs = rd.hard_state
        return hs is not None and (hs.term, hs.vote) != (self._durable_hs.term, self._durable_hs.vote)

    def _persist_batch(self, batch: list[Ready]) -> None:
        """Blocking: runs in a worker thread. One storage append (one write +
        one fsync) for all the entries of the batch; a snapshot received from
        the leader is saved first."""
        entries: list[Entry] = []
        for rd in batch:
            if rd.snapshot is not None:
                if entries:
                    self.storage.append(entries, None)
                    entries = []
                self.storage.save_snapshot(rd.snapshot)
            if rd.entries:
                first = rd.entries[0].index
                if entries and first <= entries[-1].index:
                    del entries[first - entries[0].index :]
                entries.extend(rd.entries)
        # The newest hard state seen, including commit-only changes that were
        # not worth an fsync of their own (see _needs_io).
        hard_state = self._latest_hs if self._latest_hs != self._durable_hs else None
        if entries or hard_state is not None:
            self.storage.append(entries, hard_state)
            if hard_state is not None:
                self._durable_hs = hard_state

    async def applier(self) -> None:
        while True:
            await self._apply_wakeup.wait()
            self._apply_wakeup = trio.Event()
            work, self._apply_queue = self._apply_queue, []
            for snapshot, entries in work:
                if snapshot is not None:
                    self._install_snapshot(snapshot)
                if entries:
                    self._apply_entries(entries)
            self.applied_waiters.advance(self.kv.applied_index)
            self._maybe_ready()
            self._maybe_snapshot()

    def _install_snapshot(self, snapshot: Snapshot) -> None:
        image = unwrap_snapshot_data(snapshot.data, source=f"snapshot {snapshot.meta.index} from the leader")
        # In place, so references to the store (the client's get_nowait) stay valid.
        self.kv.load_from(restore(image, max_key_size=self.options.max_key_size, max_value_size=self.options.max_value_size))
        self.applied_conf = snapshot.meta.conf_state
        self.applied_term = snapshot.meta.term
        self.last_snapshot_index = snapshot.meta.index
        self.installed_snapshots += 1
        # Writes we proposed as leader and never saw applied: outcome unknown.
        for index in [i for i in self.proposal_waiters if i <= snapshot.meta.index]:
            _, waiters = self.proposal_waiters.pop(index)
            for w in waiters:
                if w is not None:
                    w.fail(Unavailable("leadership changed; the write may or may not have been applied"))
        self.watch.publish_snapshot(snapshot.meta.index)
        for sink in self.event_sinks:
            sink([], snapshot.meta.index)

    def _apply_entries(self, entries: Iterable[Entry]) -> None:
        kv = self.kv
        events: list[WatchEvent] = []
        for entry in entries:
            if entry.index <= kv.applied_index:
                continue
            if entry.type is EntryType.CONF_CHANGE:
                kv.apply(entry.index, b"")
                try:
                    self.applied_conf = membership.apply(self.applied_conf, ConfChange.decode(entry.data))
                except ValueError:
                    pass  # malformed: applies as nothing, as in the core
                result: ApplyResult | None = None
            else:
                result = kv.apply(entry.index, entry.data)
                if result.events:
                    events.extend(result.events)
            self.applied_term = entry.term
            pending = self.proposal_waiters.pop(entry.index, None)
            if pending is not None:
                self._resolve(entry, pending, result)
        if self._expiring and events:
            self._expiring.difference_update((e.key, e.revision) for e in events)
            if len(self._expiring) > 10 * self.options.ttl_sweep_limit:
                self._expiring.clear()
        self.watch.publish(events, kv.applied_index)
        for sink in self.event_sinks:
            sink(events, kv.applied_index)

    def _resolve(self, entry: Entry, pending: tuple[int, list[Waiter | None]], result: ApplyResult | None) -> None:
        term, waiters = pending
        if term != entry.term or result is None:
            err = ProposalDropped("leadership changed before the write committed; it was not applied")
            for w in waiters:
                if w is not None:
                    w.fail(err)
            return
        for w, r in zip(waiters, result.results):
            if w is None:
                continue
            if isinstance(r, CommandError):
                w.fail(r.to_exception())
            else:
                w.set(r)
        for cmd_waiter in waiters[len(result.results):]:
            if cmd_waiter is not None:
                cmd_waiter.fail(ProposalDropped("the write was not applied"))

    def _maybe_snapshot(self) -> None:
        kv = self.kv
        if self._snapshotting or self._nursery is None:
            return
        if kv.applied_index - self.last_snapshot_index < self.options.snapshot_threshold:
            return
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
            data = await trio.to_thread.run_sync(lambda: wrap_snapshot_data(encode_image(image)))
            snapshot = Snapshot(meta=meta, data=data)
            await trio.to_thread.run_sync(self.storage.save_snapshot, snapshot)
            if meta.index > self.raw.core.log.snapshot_index:
                self.raw.compact(snapshot)
            await trio.to_thread.run_sync(self.storage.compact, meta.index)
            self.last_snapshot_index = meta.index
            log.info("node %d: snapshot at index %d", self.raw.id, meta.index)
        finally:
            self._snapshotting = False

    async def receiver(self, inbound: trio.abc.ReceiveChannel[Message]) -> None:
        async for message in inbound:
            if type(message) is InstallSnapshot and not self._snapshot_intact(message):
                continue
            self.raw.step(message)
            self.wake()

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
        for p in self._proposals:
            if p.waiter is not None:
                p.waiter.fail(error)
        self._proposals = []
        for _, waiters in self.proposal_waiters.values():
            for w in waiters:
                if w is not None:
                    w.fail(error)
        self.proposal_waiters = {}
        for waiters in self.read_waiters.values():
            for w in waiters:
                w.fail(error)
        self.read_waiters = {}
        for w in self._read_batch:
            w.fail(error)
        self._read_batch = []
        self.applied_waiters.fail_all(error)
        self.watch.close(EngineStopped(str(error)) if not isinstance(error, EngineStopped) else error)


@asynccontextmanager
async def open_node(
    options: NodeOptions,
    storage: Storage,
    outbox: Outbox,
    inbound: trio.abc.ReceiveChannel[Message] | None = None,
) -> AsyncIterator[Node]:
    """Run a node until the block exits. The caller owns storage and transport."""
    node = Node(options, storage, outbox)
    try:
        async with trio.open_nursery() as nursery:
            node._nursery = nursery
            nursery.start_soon(node.raft_loop)
            nursery.start_soon(node.persister)
            nursery.start_soon(node.preparer)
            nursery.start_soon(node.applier)
            nursery.start_soon(node.ticker)
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

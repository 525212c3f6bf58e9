"""Deterministic simulation of a cluster of runtime drivers over pure Raft cores.

One ``Simulation`` drives 3 or 5 nodes in one process -- each the runtime's
own sans-IO :class:`~dengine.runtime.driver.Driver` over a RawNode, exactly
as the trio runtime drives it -- through a schedule drawn from one seeded
``random.Random``:

* the network: message drop, delay, reordering and duplication; symmetric
  and asymmetric partitions; leader isolation; malformed peer messages;
* the disk: persist jobs whose fsync returns late or stalls, so several
  Readies wait and are merged into one job (a later one may truncate an
  earlier one); crashes that lose the write in progress in whole or in part
  (power loss: a prefix reached the disk), and restarts from what is durable;
* time: every node has its own clock, with its own tick phase and a rate
  within the configured ``max_clock_drift`` of real time;
* the application: proposals and ReadIndex / lease reads with deadlines,
  applied in bounded steps; snapshots and compaction; membership changes and
  leadership transfers during faults.

After every step the checkers in ``checkers.py`` look for a broken Raft
safety property; after healing, for liveness and for every caller's waiter
drained. Same seed, same run: a failure is reproduced by its seed, and
``trace`` holds the last steps for the report.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from dengine.errors import DengineError, MembershipChangeRefused
from dengine.raft.core import RaftConfig
from dengine.raft.messages import (
    ConfChange,
    ConfChangeType,
    Entry,
    EntryType,
    HardState,
    InstallSnapshot,
    Message,
    Role,
    Snapshot,
    SnapshotMeta,
)
from dengine.raft.rawnode import RawNode
from dengine.raft.ready import Ready
from dengine.runtime.driver import Driver, DriverOptions, PersistJob
from tests.sim.checkers import Checker, Violation
from tests.sim.hostile import hostile_message


@attrs.define
class Durable:
    """What survives a crash: exactly what the driver persisted."""

    hard_state: HardState | None = None
    snapshot: Snapshot | None = None
    entries: list[Entry] = attrs.field(factory=list)

    def append(self, entries: Sequence[Entry], hard_state: HardState | None = None) -> None:
        if hard_state is not None:
            self.hard_state = hard_state
        if not entries:
            return
        for a, b in zip(entries, entries[1:]):
            if b.index != a.index + 1:
                # The real storages refuse this too (InvalidArgument): the node would stop.
                raise Violation(f"storage: entries to append are not contiguous ({a.index} then {b.index})")
        first = entries[0].index
        base = self.snapshot.meta.index if self.snapshot else 0
        keep = first - base - 1
        if keep < 0:
            entries = tuple(e for e in entries if e.index > base)
            keep = 0
        del self.entries[keep:]
        self.entries.extend(entries)

    def save_snapshot(self, snap: Snapshot) -> None:
        base = snap.meta.index
        if self.snapshot is not None and self.snapshot.meta.index >= base:
            return
        matching = [e for e in self.entries if e.index == base and e.term == snap.meta.term]
        self.entries = [e for e in self.entries if e.index > base] if matching else []
        self.snapshot = snap


class SimWaiter:
    """A caller's waiter in the simulation: reports its outcome to a hook."""

    __slots__ = ("on_set", "on_fail", "_done", "value", "error")

    def __init__(self, on_set: Callable[[Any], None] | None = None, on_fail: Callable[[BaseException], None] | None = None) -> None:
        self.on_set = on_set
        self.on_fail = on_fail
        self._done = False
        self.value: Any = None
        self.error: BaseException | None = None

    def set(self, value: Any) -> None:
        if not self._done:
            self._done, self.value = True, value
            if self.on_set is not None:
                self.on_set(value)

    def fail(self, error: BaseException) -> None:
        if not self._done:
            self._done, self.error = True, error
            if self.on_fail is not None:
                self.on_fail(error)

    def done(self) -> bool:
        return self._done


@attrs.frozen
class SimResult:
    """What applying one entry produced: one result per command, each the
    (index, term, command) it was applied as."""

    results: list[tuple[int, int, bytes]]


def sim_encode(commands: list[Any]) -> bytes:
    return b"|".join(commands)


@attrs.define
class SimNode:
    id: int
    raw: RawNode
    driver: Driver
    durable: Durable
    clock_rate: float
    clock_offset: float
    alive: bool = True
    # The persist job the disk is working on, and the step its fsync returns.
    persisting: PersistJob | None = None
    persist_done_at: int = 0
    # The "state machine": index of the last applied entry and a running digest.
    applied: int = 0
    digest: int = 0
    down_until: int = 0
    last_job_number: int = 0
    # A disk that hangs: the next write that starts does not return until released.
    hang_next_write: bool = False


@attrs.frozen
class SimConfig:
    nodes: int = 3
    steps: int = 1500
    heal_ticks: int = 200
    drop: float = 0.05
    duplicate: float = 0.02
    max_delay: int = 8
    crash_rate: float = 0.004
    partition_rate: float = 0.006
    propose_rate: float = 0.15
    read_rate: float = 0.08
    compact_rate: float = 0.01
    conf_rate: float = 0.004
    transfer_rate: float = 0.004
    election_tick: int = 10
    trace_len: int = 80
    # The disk: an fsync returns 0..disk_delay steps after it starts, and a
    # stall holds it for up to stall_steps more. Several Readies wait and are
    # merged meanwhile.
    disk_delay: int = 4
    stall_rate: float = 0.01
    stall_steps: int = 60
    # A crash loses the write in progress, in whole or (power_loss_partial)
    # in part: a prefix of it reached the platter.
    power_loss_partial: float = 0.5
    # Clocks: each node's runs at a rate within 1 +- drift_factor *
    # RaftConfig.max_clock_drift of real time, with its own tick phase. A
    # factor above 1 breaks the bound the lease relies on (a planted bug).
    drift_factor: float = 1.0
    # Malformed peer messages (nonsense a correct peer never sends).
    hostile_rate: float = 0.01
    # Callers' deadlines, in ticks.
    deadline_ticks: int = 30


def snapshot_data(applied: int, digest: int) -> bytes:
    return applied.to_bytes(8, "big") + digest.to_bytes(8, "big")


def parse_snapshot_data(data: bytes) -> tuple[int, int]:
    return int.from_bytes(data[:8], "big"), int.from_bytes(data[8:16], "big")


# Real time advances this much per step; a tick is 1.0 on a node's clock.
STEP_TIME = 1.0 / 3


class Simulation:
    def __init__(self, seed: int, config: SimConfig | None = None) -> None:
        self.seed = seed
        self.cfg = config or SimConfig()
        self.rng = random.Random(seed)
        self._starts: dict[int, int] = {}  # node id -> how many times it was started
        self.step_count = 0
        self.nodes: dict[int, SimNode] = {}
        self.initial = frozenset(range(1, self.cfg.nodes + 1))
        self.next_id = self.cfg.nodes + 1
        self.conf_proposed: dict[str, int] = {}  # membership changes proposed, by kind
        self.conf_refused = 0  # refused as unsafe (learner behind, no reachable majority)
        # In flight: (deliver at step, seq, message)
        self.network: list[tuple[int, int, Message]] = []
        self.seq = 0
        self.cut: set[tuple[int, int]] = set()  # (from, to) links that drop everything
        self.faults_on = True
        self.trace: deque[str] = deque(maxlen=self.cfg.trace_len)
        self.checker = Checker(self)
        self.proposal_seq = 0
        self.read_seq = 0
        self.hostile_sent = 0
        self.clients_on = True
        self.partial_writes = 0
        self.merged_jobs = 0
        for nid in sorted(self.initial):
            self._start_node(nid, Durable(), voters=self.initial)

    @property
    def now(self) -> float:
        """Real time."""
        return self.step_count * STEP_TIME

    @property
    def tick_count(self) -> int:
        return int(self.now)

    # -- node lifecycle ----------------------------------------------------------

    def _raft_config(self, nid: int, voters: frozenset[int]) -> RaftConfig:
        return RaftConfig(
            id=nid,
            initial_voters=voters,
            election_tick=self.cfg.election_tick,
            heartbeat_tick=1,
            max_inflight=8,
            max_append_entries=16,
            max_committed_bytes_per_ready=64,
        )

    def _incarnation(self, nid: int) -> bytes:
        """A prefix unique to this start of node ``nid`` (deterministic)."""
        self._starts[nid] = self._starts.get(nid, 0) + 1
        return f"{nid}.{self._starts[nid]}.".encode()

    def _start_node(self, nid: int, durable: Durable, voters: frozenset[int]) -> None:
        d = durable
        config = self._raft_config(nid, voters)
        raw = RawNode(
            config,
            rng=random.Random(self.rng.getrandbits(32)),
            hard_state=d.hard_state,
            snapshot=d.snapshot,
            entries=list(d.entries),
        )
        applied, digest = parse_snapshot_data(d.snapshot.data) if d.snapshot is not None else (0, 0)
        # The state machine is rebuilt from the snapshot plus committed log on
        # restart: the core hands those entries out again.
        raw.core.log.applied = applied
        driver = Driver(
            raw,
            # Each start of a node is a new incarnation: its ReadIndex contexts must not
            # collide with those of the last one (seed 10535 on 5 nodes: a late answer
            # to a read asked before a crash released a read asked after it).
            DriverOptions(tick_interval=1.0, proposal_batch_max=4, max_pending_bytes=4096,
                          read_ctx_prefix=self._incarnation(nid)),
            durable_hard_state=d.hard_state or HardState(),
            applied_index=applied,
            **self._driver_hooks(nid),
        )
        bound = self.cfg.drift_factor * config.max_clock_drift
        node = SimNode(
            id=nid,
            raw=raw,
            driver=driver,
            durable=d,
            clock_rate=1 + self.rng.uniform(-bound, bound),
            clock_offset=self.rng.random(),
            applied=applied,
            digest=digest,
        )
        # The checker sees every Ready the driver takes.
        take = raw.ready

        def tapped() -> Ready:
            ready = take()
            self.checker.on_ready(node, ready)
            return ready

        raw.ready = tapped  # type: ignore[method-assign]
        self.nodes[nid] = node
        self._node_started(node)

    # -- hooks for simulations built on this one (tests/sim/leases.py) -------------
    # None of them draws from ``rng``: the base simulation's seeds run the same.

    def _driver_hooks(self, nid: int) -> dict[str, Any]:
        """Keyword arguments for node ``nid``'s Driver: its encoder and callbacks."""
        return {"encode": sim_encode}

    def _node_started(self, node: SimNode) -> None:
        """``node`` was just (re)started from its durable state."""

    def _ticked(self, node: SimNode) -> None:
        """``node``'s ticker ran (after ``driver.on_tick``), as the runtime's
        ticker runs its sweepers after each tick."""

    def _snapshot_data(self, node: SimNode) -> bytes:
        """The state machine image of ``node`` at ``node.applied``: starts with
        :func:`snapshot_data` (the checkers read the index from it)."""
        return snapshot_data(node.applied, node.digest)

    def local_time(self, node: SimNode) -> float:
        return node.clock_offset + node.clock_rate * self.now

    def crash(self, nid: int, downtime: int) -> None:
        node = self.nodes[nid]
        job = node.persisting
        if job is not None and self.rng.random() < self.cfg.power_loss_partial:
            # Power loss in the middle of the write: a prefix reached the disk.
            self._write_prefix(node, job)
        node.persisting = None
        node.alive = False
        node.driver.fail_pending(DengineError("crashed"))
        node.down_until = self.step_count + downtime
        self.log(f"crash {nid} (down {downtime} steps)")

    def _write_prefix(self, node: SimNode, job: PersistJob) -> None:
        steps = list(job.steps)
        if not steps:
            return
        keep = self.rng.randrange(len(steps))
        partial = PersistJob(number=job.number, steps=steps[:keep], hard_state=None, size=0)
        last = steps[keep]
        if isinstance(last, list) and len(last) > 1:
            partial.steps.append(last[: self.rng.randrange(1, len(last))])
        partial.write_to(node.durable)
        self.partial_writes += 1

    def restart(self, nid: int) -> None:
        node = self.nodes[nid]
        self._start_node(nid, node.durable, voters=self.initial if nid in self.initial else frozenset())
        self.log(f"restart {nid}")

    # -- helpers ----------------------------------------------------------------

    def log(self, text: str) -> None:
        self.trace.append(f"[step {self.step_count} t {self.now:.1f}] {text}")

    def live(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.alive]

    def leaders(self) -> list[SimNode]:
        return [n for n in self.live() if n.raw.core.role is Role.LEADER]

    def leader(self) -> SimNode | None:
        best = None
        for n in self.leaders():
            if best is None or n.raw.core.term > best.raw.core.term:
                best = n
        return best

    def send(self, msg: Message) -> None:
        delay = 1 + (self.rng.randrange(self.cfg.max_delay) if self.faults_on else 0)
        self.seq += 1
        self.network.append((self.step_count + delay, self.seq, msg))

    def deadline(self, node: SimNode) -> float:
        return self.local_time(node) + self.cfg.deadline_ticks

    # -- the step loop ------------------------------------------------------------

    def run(self) -> Violation | None:
        try:
            for _ in range(self.cfg.steps):
                self.step()
                self.checker.check_step()
            self.heal()
            self.checker.check_liveness(self.cfg.heal_ticks)
            self.checker.check_drained(self.cfg.deadline_ticks + 3 * self.cfg.election_tick)
        except Violation as v:
            return v
        except Exception as exc:  # a crash of the core or the driver is a violation too
            import traceback

            return Violation(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        return None

    def step(self) -> None:
        self.step_count += 1
        rng = self.rng
        cfg = self.cfg
        # Restarts are due.
        for node in self.nodes.values():
            if not node.alive and node.down_until <= self.step_count and node.down_until >= 0:
                self.restart(node.id)
        if self.faults_on:
            r = rng.random()
            if r < cfg.crash_rate:
                self._random_crash()
            elif r < cfg.crash_rate + cfg.partition_rate:
                self._random_partition()
        for node in self.live():
            node.driver.on_tick(self.local_time(node))
            self._ticked(node)
        if rng.random() < cfg.propose_rate:
            self._random_propose()
        if rng.random() < cfg.read_rate:
            self._random_read()
        if self.faults_on and rng.random() < cfg.compact_rate:
            self._random_compact()
        if self.faults_on and rng.random() < cfg.conf_rate:
            self._random_conf_change()
        if self.faults_on and rng.random() < cfg.transfer_rate:
            self._random_transfer()
        if self.faults_on and rng.random() < cfg.hostile_rate:
            self._random_hostile()
        self.deliver_some()
        for node in self.live():
            self.process(node)
        for node in self.live():
            self.disk(node)
        for node in self.live():
            if not self.faults_on or rng.random() < 0.8:
                self.apply(node)

    def deliver_some(self) -> None:
        due = [item for item in self.network if item[0] <= self.step_count]
        if not due:
            return
        self.rng.shuffle(due)  # reordering
        keep = [item for item in self.network if item[0] > self.step_count]
        for _, _, msg in due:
            self.deliver(msg)
            if self.faults_on and self.rng.random() < self.cfg.duplicate:
                self.seq += 1
                keep.append((self.step_count + 1 + self.rng.randrange(self.cfg.max_delay), self.seq, msg))
        self.network = keep

    def deliver(self, msg: Message) -> None:
        target = self.nodes.get(msg.to)
        if target is None or not target.alive:
            return
        if (msg.frm, msg.to) in self.cut:
            return
        if self.faults_on and self.rng.random() < self.cfg.drop:
            return
        if isinstance(msg, InstallSnapshot):
            self.checker.check_snapshot_message(msg)
        if not target.driver.on_message(msg):
            raise Violation(f"node {target.id} refused a message a correct peer sent: {msg}")

    def process(self, node: SimNode) -> None:
        """One pass of the node's raft loop."""
        for msg in node.driver.poll():
            self.send(msg)

    def disk(self, node: SimNode) -> None:
        """The persister: start a write when none runs; finish it when due."""
        cfg = self.cfg
        if node.persisting is None:
            job = node.driver.take_persist()
            if job is None:
                return
            delay = self.rng.randrange(cfg.disk_delay + 1) if self.faults_on else 0
            if self.faults_on and self.rng.random() < cfg.stall_rate:
                delay += self.rng.randrange(cfg.stall_steps)
            if node.hang_next_write and job.needs_io:
                node.hang_next_write, delay = False, 10**9
            node.persisting, node.persist_done_at = job, self.step_count + delay
            if job.number - node.last_job_number > 1:
                self.merged_jobs += 1  # several Readies in one write
            node.last_job_number = job.number
        if node.persisting is not None and node.persist_done_at <= self.step_count:
            job, node.persisting = node.persisting, None
            if job.needs_io:
                job.write_to(node.durable)  # and fsync
            for msg in node.driver.on_persisted(job):
                self.send(msg)
            self.process(node)

    def apply(self, node: SimNode) -> None:
        """The applier: bounded steps, each acknowledged to the driver."""
        for _ in range(4):
            job = node.driver.take_apply()
            if job is None:
                return
            results: list[SimResult | None] = []
            if job.snapshot is not None:
                node.applied, node.digest = parse_snapshot_data(job.snapshot.data)
                self.checker.on_snapshot_applied(node, job.snapshot)
                node.driver.on_snapshot_installed(job.snapshot.meta)
            for entry in job.entries:
                if entry.index <= node.applied:
                    results.append(None)
                    continue
                if entry.index != node.applied + 1:
                    raise Violation(f"node {node.id} applied {entry.index} after {node.applied}: gap")
                node.applied = entry.index
                node.digest = (node.digest * 1_000_003 + hash((entry.index, entry.term, entry.data))) % (1 << 61)
                self.checker.on_apply(node, entry)
                if entry.type is EntryType.NORMAL and entry.data:
                    cmds = entry.data.split(b"|")
                    results.append(SimResult([(entry.index, entry.term, c) for c in cmds]))
                else:
                    results.append(None)
            node.driver.on_applied(job, results)
            self.process(node)

    # -- random actions -----------------------------------------------------------

    def _random_crash(self) -> None:
        live = self.live()
        if len(live) <= 1:
            return
        # Bias towards the leader: that is where the interesting bugs are.
        leader = self.leader()
        victim = leader if leader is not None and self.rng.random() < 0.5 else self.rng.choice(live)
        self.crash(victim.id, downtime=self.rng.randrange(5, 120))

    def _random_partition(self) -> None:
        ids = sorted(self.nodes)
        kind = self.rng.random()
        if kind < 0.35 or self.cut:
            if self.cut:
                self.cut.clear()
                self.log("heal partitions")
                return
        if kind < 0.55:
            leader = self.leader()
            victim = leader.id if leader else self.rng.choice(ids)
            self.cut = {(victim, o) for o in ids if o != victim} | {(o, victim) for o in ids if o != victim}
            self.log(f"isolate {victim}")
        elif kind < 0.8:
            side = set(self.rng.sample(ids, max(1, len(ids) // 2)))
            self.cut = {(a, b) for a in ids for b in ids if (a in side) != (b in side)}
            self.log(f"partition {sorted(side)} | {sorted(set(ids) - side)}")
        else:
            a, b = self.rng.sample(ids, 2)
            self.cut = {(a, b)}
            self.log(f"asymmetric cut {a}->{b}")

    def _random_propose(self) -> None:
        if not self.clients_on:
            return
        candidates = self.leaders() if self.rng.random() < 0.9 else self.live()
        if not candidates:
            return
        node = self.rng.choice(candidates)
        self.proposal_seq += 1
        data = b"p%d" % self.proposal_seq
        waiter = SimWaiter(
            on_set=lambda value: self.checker.on_write_acknowledged(node, data, value),
            on_fail=lambda error: self.checker.on_write_failed(node, data, error),
        )
        try:
            node.driver.propose(data, waiter, len(data))
        except DengineError:
            return
        node.driver.expire(waiter, self.deadline(node), "write did not complete within {:g} ticks", self.cfg.deadline_ticks)
        self.checker.on_propose(node, data)

    def _random_read(self) -> None:
        if not self.clients_on:
            return
        live = self.live()
        if not live:
            return
        node = self.rng.choice(live)
        self.read_seq += 1
        ctx = b"r%d" % self.read_seq
        if node.raw.core.role is Role.LEADER and self.rng.random() < 0.4:
            index = node.driver.lease_read_index(self.local_time(node))
            if index is not None:
                self.checker.on_lease_read(node, index)
            return
        self.checker.on_read_start(node, ctx)
        waiter = SimWaiter(
            on_set=lambda index: self.checker.on_read_released(node, ctx, index),
            on_fail=lambda error: self.checker.on_read_dropped(node, ctx),
        )
        node.driver.read(waiter)
        node.driver.expire(waiter, self.deadline(node), "read did not complete within {:g} ticks", self.cfg.deadline_ticks)

    def _random_hostile(self) -> None:
        """A malformed message from a peer (nonsense a correct peer never
        sends): the target drops it, counts it and keeps serving."""
        live = self.live()
        if not live:
            return
        target = self.rng.choice(live)
        msg = hostile_message(self.rng, target.id, sorted(self.nodes))
        before = sum(target.driver.dropped_messages.values())
        if target.driver.on_message(msg):
            raise Violation(f"node {target.id} accepted a malformed message: {msg}")
        if sum(target.driver.dropped_messages.values()) != before + 1:
            raise Violation(f"node {target.id} dropped a malformed message without counting it")
        self.hostile_sent += 1

    def _random_compact(self) -> None:
        live = [n for n in self.live() if n.applied > n.raw.core.log.snapshot_index]
        if not live:
            return
        node = self.rng.choice(live)
        log = node.raw.core.log
        index = min(node.applied, log.persisted, log.applied)
        if index <= log.snapshot_index:
            return
        term = log.term(index)
        if term is None:
            return
        # The state machine image as of `index`: replay is not possible here,
        # so compact exactly at the applied point.
        if index != node.applied:
            return
        snap = Snapshot(
            meta=SnapshotMeta(index=index, term=term, conf_state=node.raw.core.conf),
            data=self._snapshot_data(node),
        )
        node.raw.compact(snap)
        node.durable.save_snapshot(snap)
        self.log(f"compact {node.id} at {index}")

    def _random_conf_change(self) -> None:
        leader = self.leader()
        if leader is None:
            return
        conf = leader.raw.core.conf
        r = self.rng.random()
        change: ConfChange | None = None
        if conf.learners and r < 0.4:
            change = ConfChange(ConfChangeType.PROMOTE, self.rng.choice(sorted(conf.learners)))
        elif r < 0.7 and len(conf.members()) < self.cfg.nodes + 2:
            nid = self.next_id
            change = ConfChange(ConfChangeType.ADD_LEARNER, nid)
        elif len(conf.voters) > 2:
            change = ConfChange(ConfChangeType.REMOVE, self.rng.choice(sorted(conf.members())))
        if change is None:
            return
        try:
            leader.raw.propose_conf_change(change)
        except MembershipChangeRefused as exc:
            # The operator path's safety rules (membership.check_safe).
            self.conf_refused += 1
            self.log(f"refused {change.type.name} {change.node_id} on {leader.id}: {exc}")
            return
        except DengineError:
            return
        self.conf_proposed[change.type.name] = self.conf_proposed.get(change.type.name, 0) + 1
        if change.type is ConfChangeType.ADD_LEARNER:
            self.next_id += 1
            self._start_node(change.node_id, Durable(), voters=frozenset())
        self.log(f"propose {change.type.name} {change.node_id} on {leader.id}")

    def _random_transfer(self) -> None:
        leader = self.leader()
        if leader is None:
            return
        voters = sorted(v for v in leader.raw.core.conf.voters if v != leader.id)
        if not voters:
            return
        target = self.rng.choice(voters)
        try:
            leader.raw.transfer_leader(target)
        except DengineError:
            return
        self.log(f"transfer {leader.id} -> {target}")

    # -- healing ---------------------------------------------------------------

    def heal(self) -> None:
        self.faults_on = False
        self.cut.clear()
        for node in self.nodes.values():
            if not node.alive and node.down_until >= 0:
                self.restart(node.id)
        self.log("heal everything")

    def settle(self, max_ticks: int, until: Callable[[], bool]) -> bool:
        for _ in range(max_ticks * 3):
            self.step()
            self.checker.check_step()
            if until():
                return True
        return False


def run_seed(seed: int, nodes: int = 3, steps: int | None = None) -> tuple[Violation | None, Simulation]:
    cfg = SimConfig(nodes=nodes) if steps is None else SimConfig(nodes=nodes, steps=steps)
    sim = Simulation(seed, cfg)
    return sim.run(), sim


def entry_is_noop(entry: Entry) -> bool:
    return entry.type is EntryType.NORMAL and not entry.data

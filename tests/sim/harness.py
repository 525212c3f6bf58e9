"""Deterministic simulation of a cluster of pure Raft cores.

One ``Simulation`` drives 3 or 5 RawNodes in one process through a schedule
drawn from one seeded ``random.Random``: message drop, delay, reordering and
duplication; symmetric and asymmetric partitions; leader isolation; crashes
that lose everything not yet persisted, and restarts from what was; snapshots
and compaction; membership changes and leadership transfers during faults;
proposals and ReadIndex / lease reads throughout.

After every step the checkers in ``checkers.py`` look for a broken Raft
safety property. Same seed, same run: a failure is reproduced by its seed, and
``trace`` holds the last steps for the report.

Time: every live node ticks together (a global tick), which models clocks
that run at the same rate -- the assumption the leader lease relies on.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

import attrs

from dengine.errors import DengineError
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
from tests.sim.checkers import Checker, Violation


@attrs.define
class Durable:
    """What survives a crash: exactly what the driver persisted."""

    hard_state: HardState | None = None
    snapshot: Snapshot | None = None
    entries: list[Entry] = attrs.field(factory=list)

    def append(self, entries: tuple[Entry, ...]) -> None:
        if not entries:
            return
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


@attrs.define
class SimNode:
    id: int
    raw: RawNode
    durable: Durable
    unpersisted: deque[Ready] = attrs.field(factory=deque)
    alive: bool = True
    # The "state machine": index of the last applied entry and a running digest.
    applied: int = 0
    digest: int = 0
    down_until: int = 0


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


def snapshot_data(applied: int, digest: int) -> bytes:
    return applied.to_bytes(8, "big") + digest.to_bytes(8, "big")


def parse_snapshot_data(data: bytes) -> tuple[int, int]:
    return int.from_bytes(data[:8], "big"), int.from_bytes(data[8:16], "big")


class Simulation:
    def __init__(self, seed: int, config: SimConfig | None = None) -> None:
        self.seed = seed
        self.cfg = config or SimConfig()
        self.rng = random.Random(seed)
        self.step_count = 0
        self.tick_count = 0
        self.nodes: dict[int, SimNode] = {}
        self.initial = frozenset(range(1, self.cfg.nodes + 1))
        self.next_id = self.cfg.nodes + 1
        # In flight: (deliver at step, seq, message)
        self.network: list[tuple[int, int, Message]] = []
        self.seq = 0
        self.cut: set[tuple[int, int]] = set()  # (from, to) links that drop everything
        self.faults_on = True
        self.trace: deque[str] = deque(maxlen=self.cfg.trace_len)
        self.checker = Checker(self)
        self.proposal_seq = 0
        self.read_seq = 0
        for nid in sorted(self.initial):
            self._start_node(nid, Durable(), voters=self.initial)

    # -- node lifecycle ----------------------------------------------------------

    def _raft_config(self, nid: int, voters: frozenset[int]) -> RaftConfig:
        return RaftConfig(
            id=nid,
            initial_voters=voters,
            election_tick=self.cfg.election_tick,
            heartbeat_tick=1,
            max_inflight=8,
            max_append_entries=16,
        )

    def _start_node(self, nid: int, durable: Durable, voters: frozenset[int]) -> None:
        d = durable
        raw = RawNode(
            self._raft_config(nid, voters),
            rng=random.Random(self.rng.getrandbits(32)),
            hard_state=d.hard_state,
            snapshot=d.snapshot,
            entries=list(d.entries),
        )
        node = SimNode(id=nid, raw=raw, durable=d)
        if d.snapshot is not None:
            node.applied, node.digest = parse_snapshot_data(d.snapshot.data)
        # The state machine is rebuilt from the snapshot plus committed log on
        # restart: the core hands those entries out again.
        raw.core.log.applied = node.applied
        self.nodes[nid] = node

    def crash(self, nid: int, downtime: int) -> None:
        node = self.nodes[nid]
        node.alive = False
        node.unpersisted.clear()
        node.down_until = self.step_count + downtime
        self.log(f"crash {nid} (down {downtime} steps)")

    def restart(self, nid: int) -> None:
        node = self.nodes[nid]
        self._start_node(nid, node.durable, voters=self.initial if nid in self.initial else frozenset())
        self.log(f"restart {nid}")

    # -- helpers ----------------------------------------------------------------

    def log(self, text: str) -> None:
        self.trace.append(f"[step {self.step_count} tick {self.tick_count}] {text}")

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

    # -- the step loop ------------------------------------------------------------

    def run(self) -> Violation | None:
        try:
            for _ in range(self.cfg.steps):
                self.step()
                self.checker.check_step()
            self.heal()
            self.checker.check_liveness(self.cfg.heal_ticks)
        except Violation as v:
            return v
        except Exception as exc:  # a crash of the core is a violation too
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
        if self.step_count % 3 == 0:
            self.global_tick()
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
        self.deliver_some()
        for node in self.live():
            self.process_ready(node)
        for node in self.live():
            if node.unpersisted and (not self.faults_on or rng.random() < 0.7):
                self.persist(node, all_of_them=not self.faults_on or rng.random() < 0.5)

    def global_tick(self) -> None:
        self.tick_count += 1
        for node in self.live():
            node.raw.tick()

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
        try:
            target.raw.step(msg)
        except DengineError as exc:  # pragma: no cover - a bug
            raise Violation(f"node {target.id} raised on {type(msg).__name__}: {exc}") from exc

    def process_ready(self, node: SimNode) -> None:
        raw = node.raw
        if not raw.has_ready():
            return
        ready = raw.ready()
        self.checker.on_ready(node, ready)
        for msg in ready.messages:
            self.send(msg)
        # Committed entries may be applied before this Ready is durable (a
        # majority has them); a crash before the persist then exercises that.
        self.apply(node, ready)
        node.unpersisted.append(ready)

    def persist(self, node: SimNode, all_of_them: bool) -> None:
        while node.unpersisted:
            ready = node.unpersisted.popleft()
            d = node.durable
            if ready.snapshot is not None:
                d.save_snapshot(ready.snapshot)
            d.append(ready.entries)
            if ready.hard_state is not None:
                d.hard_state = ready.hard_state
            for msg in node.raw.on_persisted(ready.number):
                self.send(msg)
            if not all_of_them:
                break

    def apply(self, node: SimNode, ready: Ready) -> None:
        if ready.snapshot is not None:
            node.applied, node.digest = parse_snapshot_data(ready.snapshot.data)
            self.checker.on_snapshot_applied(node, ready.snapshot)
        for entry in ready.committed:
            if entry.index <= node.applied:
                continue
            if entry.index != node.applied + 1:
                raise Violation(f"node {node.id} applied {entry.index} after {node.applied}: gap")
            node.applied = entry.index
            node.digest = (node.digest * 1_000_003 + hash((entry.index, entry.term, entry.data))) % (1 << 61)
            self.checker.on_apply(node, entry)
        node.raw.on_applied(node.applied)
        for rs in ready.read_states:
            self.checker.on_read_released(node, rs.ctx, rs.index)
        for ctx in ready.dropped_reads:
            self.checker.on_read_dropped(node, ctx)
        if ready.first_commit_in_term is not None:
            self.checker.on_first_commit(node, ready.first_commit_in_term)

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
        candidates = self.leaders() if self.rng.random() < 0.9 else self.live()
        if not candidates:
            return
        node = self.rng.choice(candidates)
        self.proposal_seq += 1
        data = b"p%d" % self.proposal_seq
        try:
            index, term = node.raw.propose([data])
        except DengineError:
            return
        self.checker.on_propose(node, index, term, data)

    def _random_read(self) -> None:
        live = self.live()
        if not live:
            return
        node = self.rng.choice(live)
        self.read_seq += 1
        ctx = b"r%d" % self.read_seq
        if node.raw.core.role is Role.LEADER and self.rng.random() < 0.4:
            index = node.raw.lease_read_index()
            if index is not None:
                self.checker.on_lease_read(node, index)
            return
        self.checker.on_read_start(node, ctx)
        node.raw.read_index(ctx)

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
            data=snapshot_data(node.applied, node.digest),
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
        except DengineError:
            return
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

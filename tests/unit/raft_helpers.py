"""A tiny in-process network of RawNodes for the unit tests of the pure core.

Rules of this harness (simpler than tests/sim, on purpose):
* Nothing is random: node ``n`` gets ``random.Random(n)``; messages are
  delivered in the order they were sent, one *round* at a time (everything
  queued when ``deliver`` is called).
* ``process(id)`` takes the node's Ready, queues its ``messages``, and -- unless
  told not to -- persists it at once (snapshot, entries, hard state into a
  ``Durable``), calls ``on_persisted`` and queues what that released. Applied
  entries, read states, dropped reads and first-commit reports are recorded
  on the ``Node``.
* ``cut`` / ``isolate`` drop messages on links; dropped messages are kept in
  ``net.dropped`` for inspection.
* A fresh node refuses votes for an election timeout (restart lease guard);
  ``warm_up`` advances its tick counter past that, as if it had been running
  for an election timeout without hearing from any leader.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import TypeVar

import attrs

from dengine.raft.core import RaftConfig, RaftCore
from dengine.raft.messages import (
    ConfState,
    Entry,
    HardState,
    Message,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
)
from dengine.raft.rawnode import RawNode
from dengine.raft.ready import Ready

M = TypeVar("M")


@attrs.define
class Durable:
    """What the driver made durable for one node."""

    hard_state: HardState | None = None
    snapshot: Snapshot | None = None
    entries: list[Entry] = attrs.field(factory=list)

    def save(self, ready: Ready) -> None:
        if ready.snapshot is not None:
            meta = ready.snapshot.meta
            self.snapshot = ready.snapshot
            self.entries = [e for e in self.entries if e.index > meta.index]
        if ready.entries:
            first = ready.entries[0].index
            self.entries = [e for e in self.entries if e.index < first]
            self.entries.extend(ready.entries)
        if ready.hard_state is not None:
            self.hard_state = ready.hard_state


@attrs.define
class Node:
    raw: RawNode
    durable: Durable = attrs.field(factory=Durable)
    unpersisted: list[Ready] = attrs.field(factory=list)
    readies: list[Ready] = attrs.field(factory=list)
    applied: list[Entry] = attrs.field(factory=list)
    read_states: list[ReadState] = attrs.field(factory=list)
    dropped_reads: list[bytes] = attrs.field(factory=list)
    first_commits: list[int] = attrs.field(factory=list)

    @property
    def core(self) -> RaftCore:
        return self.raw.core

    @property
    def id(self) -> int:
        return self.raw.id

    def log_terms(self) -> list[tuple[int, int]]:
        log = self.core.log
        return [(e.index, e.term) for e in log.entries]


def config(nid: int, voters: Iterable[int] = (), **kw: object) -> RaftConfig:
    kw.setdefault("election_tick", 10)
    kw.setdefault("heartbeat_tick", 1)
    return RaftConfig(id=nid, initial_voters=frozenset(voters), **kw)  # type: ignore[arg-type]


def entries(*terms: int, start: int = 1) -> list[Entry]:
    """Entries with the given terms at consecutive indexes from ``start``."""
    return [Entry(index=start + k, term=t, data=f"{start + k}@{t}".encode()) for k, t in enumerate(terms)]


class Net:
    def __init__(self, voters: int | Iterable[int] = 3, **cfg: object) -> None:
        ids = list(range(1, voters + 1)) if isinstance(voters, int) else list(voters)
        self.cfg = cfg
        self.voters = frozenset(ids)
        self.nodes: dict[int, Node] = {}
        self.queue: list[Message] = []
        self.dropped: list[Message] = []
        self.cut_links: set[tuple[int, int]] = set()
        self.auto_persist: dict[int, bool] = {}
        for nid in ids:
            self.add(nid, voters=self.voters)

    # -- building ---------------------------------------------------------

    def add(
        self,
        nid: int,
        *,
        voters: Iterable[int] = (),
        hard_state: HardState | None = None,
        snapshot: Snapshot | None = None,
        log: Iterable[Entry] = (),
        **cfg: object,
    ) -> Node:
        """Start node ``nid``: from scratch (bootstrap when ``voters`` is given)
        or from the given durable state."""
        merged = {**self.cfg, **cfg}
        raw = RawNode(
            config(nid, voters, **merged),
            rng=random.Random(nid),
            hard_state=hard_state,
            snapshot=snapshot,
            entries=list(log),
        )
        node = Node(raw=raw, durable=Durable(hard_state, snapshot, list(log)))
        self.nodes[nid] = node
        self.auto_persist[nid] = True
        return node

    def restart(self, nid: int, **cfg: object) -> Node:
        """Crash ``nid`` (losing what it did not persist) and start it again."""
        d = self.nodes[nid].durable
        self.queue = [m for m in self.queue if m.frm != nid]
        node = self.add(nid, hard_state=d.hard_state, snapshot=d.snapshot, log=list(d.entries), **cfg)
        node.durable = d
        # The state machine is rebuilt from the snapshot: entries after it are
        # handed out again as committed.
        return node

    def __getitem__(self, nid: int) -> Node:
        return self.nodes[nid]

    def core(self, nid: int) -> RaftCore:
        return self.nodes[nid].core

    # -- time -----------------------------------------------------------------

    def warm_up(self, *ids: int) -> None:
        for nid in ids or tuple(self.nodes):
            core = self.core(nid)
            core.tick_count = max(core.tick_count, core.config.election_tick)

    def tick(self, nid: int, n: int = 1) -> None:
        for _ in range(n):
            self.nodes[nid].raw.tick()

    def tick_all(self, n: int = 1) -> None:
        for _ in range(n):
            for node in self.nodes.values():
                node.raw.tick()

    # -- Readies -----------------------------------------------------------------

    def process(self, nid: int, *, persist: bool | None = None) -> Ready | None:
        node = self.nodes[nid]
        if not node.raw.has_ready():
            return None
        ready = node.raw.ready()
        node.readies.append(ready)
        self.queue.extend(ready.messages)
        node.read_states.extend(ready.read_states)
        node.dropped_reads.extend(ready.dropped_reads)
        if ready.first_commit_in_term is not None:
            node.first_commits.append(ready.first_commit_in_term)
        node.unpersisted.append(ready)
        if persist if persist is not None else self.auto_persist[nid]:
            self.persist(nid)
        return ready

    def persist(self, nid: int) -> list[Message]:
        """Persist every Ready of ``nid`` taken so far; returns the released messages."""
        node = self.nodes[nid]
        released: list[Message] = []
        while node.unpersisted:
            ready = node.unpersisted.pop(0)
            node.durable.save(ready)
            released.extend(node.raw.on_persisted(ready.number))
            node.applied.extend(ready.committed)
            if ready.committed:
                node.raw.on_applied(ready.committed[-1].index)
        self.queue.extend(released)
        return released

    def process_all(self) -> None:
        for nid in sorted(self.nodes):
            self.process(nid)

    # -- network -------------------------------------------------------------------

    def cut(self, a: int, b: int) -> None:
        self.cut_links |= {(a, b), (b, a)}

    def isolate(self, nid: int) -> None:
        for other in self.nodes:
            if other != nid:
                self.cut(nid, other)

    def heal(self) -> None:
        self.cut_links = set()

    def take(self, kind: type[M], frm: int | None = None, to: int | None = None) -> list[M]:
        """Remove and return the queued messages of ``kind`` (from/to filters)."""
        out: list[M] = []
        keep: list[Message] = []
        for m in self.queue:
            if isinstance(m, kind) and (frm is None or m.frm == frm) and (to is None or m.to == to):
                out.append(m)
            else:
                keep.append(m)
        self.queue = keep
        return out

    def peek(self, kind: type[M], frm: int | None = None, to: int | None = None) -> list[M]:
        return [
            m
            for m in self.queue
            if isinstance(m, kind) and (frm is None or m.frm == frm) and (to is None or m.to == to)
        ]

    def deliver(self, keep: Callable[[Message], bool] | None = None) -> int:
        """Deliver every queued message (one round), then process every node.
        ``keep`` may drop messages (return False). Returns how many were delivered."""
        batch, self.queue = self.queue, []
        n = 0
        for m in batch:
            if (m.frm, m.to) in self.cut_links or m.to not in self.nodes or (keep and not keep(m)):
                self.dropped.append(m)
                continue
            self.nodes[m.to].raw.step(m)
            n += 1
        self.process_all()
        return n

    def stabilize(self, max_rounds: int = 200) -> None:
        self.process_all()
        for _ in range(max_rounds):
            if not self.queue:
                return
            self.deliver()
        raise AssertionError(f"network did not settle in {max_rounds} rounds: {self.queue[:5]}")

    # -- scenarios -------------------------------------------------------------

    def elect(self, nid: int) -> RaftCore:
        """Make ``nid`` leader through a normal (pre-)vote, and settle."""
        self.warm_up()
        self.nodes[nid].raw.campaign()
        self.stabilize()
        core = self.core(nid)
        assert core.role is Role.LEADER, core.soft_state()
        return core

    def leader_heartbeat(self, nid: int) -> None:
        """One heartbeat round from leader ``nid``, answered and settled."""
        core = self.core(nid)
        self.tick(nid, core.config.heartbeat_tick)
        self.stabilize()

    def compact(self, nid: int, index: int | None = None) -> Snapshot:
        core = self.core(nid)
        idx = core.log.applied if index is None else index
        term = core.log.term(idx)
        assert term is not None
        snap = Snapshot(SnapshotMeta(idx, term, core.conf), data=f"state@{idx}".encode())
        self.nodes[nid].raw.compact(snap)
        return snap


def voters_state(*voters: int, learners: Iterable[int] = ()) -> ConfState:
    return ConfState(voters=frozenset(voters), learners=frozenset(learners))

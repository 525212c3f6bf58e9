"""Raft's safety properties, checked after every simulated step.

* Election Safety: at most one leader per term.
* Log Matching: two entries with the same index and term hold the same
  command, and the logs are identical up to them (checked by recording, for
  every (index, term) ever handed out to persist, its data and the term of
  the entry before it).
* Leader Completeness: a new leader's log holds every entry committed before.
* State Machine Safety: no two nodes apply different entries at one index.
* Durability of commits: an entry reported committed is never lost (follows
  from the two above; also checked at the end against every live log).
* Linearizable reads: a ReadIndex / lease read point is at least the highest
  commit index any node knew when the read began.
* Acknowledged writes: a write acknowledged to its caller was applied at the
  index and term its result names, holding that command.
* Liveness after healing: a leader is elected and a fresh proposal commits on
  every live voter within a bounded number of ticks.
* Drained: once faults and callers stop, every waiter, queued proposal,
  pending read and forwarded read on every node resolves (no leak).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dengine.errors import DengineError
from dengine.raft.messages import Entry, InstallSnapshot, Role, Snapshot
from dengine.raft.ready import Ready

if TYPE_CHECKING:
    from tests.sim.harness import SimNode, Simulation


class Violation(Exception):
    """A safety or liveness property was broken."""


class Checker:
    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.leader_of_term: dict[int, int] = {}
        # (index, term) -> (data, prev_term)
        self.entries: dict[tuple[int, int], tuple[bytes, int | None]] = {}
        # index -> (term, data) of what was applied there (by anyone)
        self.applied: dict[int, tuple[int, bytes]] = {}
        self.max_commit = 0
        self.reads: dict[bytes, int] = {}  # ctx -> commit index known when the read began
        self.reads_released = 0
        self.reads_dropped = 0
        self.lease_reads = 0
        self.proposals = 0
        self.last_leader_check: dict[int, int] = {}
        self.first_commits = 0
        self.acknowledged: dict[bytes, tuple[int, int]] = {}
        self.failed_writes: dict[str, int] = {}

    def fail(self, what: str) -> None:
        raise Violation(what)

    # -- per step ---------------------------------------------------------------

    def check_step(self) -> None:
        for node in self.sim.live():
            core = node.raw.core
            if core.log.committed > self.max_commit:
                self.max_commit = core.log.committed
            if core.role is Role.LEADER:
                holder = self.leader_of_term.setdefault(core.term, node.id)
                if holder != node.id:
                    self.fail(f"two leaders in term {core.term}: {holder} and {node.id}")
                if self.last_leader_check.get(node.id) != core.term:
                    self.last_leader_check[node.id] = core.term
                    self._check_leader_completeness(node)

    def _check_leader_completeness(self, node: SimNode) -> None:
        log = node.raw.core.log
        for index, (term, _data) in self.applied.items():
            if index <= log.snapshot_index:
                continue
            have = log.term(index)
            if have != term:
                self.fail(
                    f"leader {node.id} of term {node.raw.core.term} lacks committed entry "
                    f"{index} (term {term}); it has term {have}"
                )

    # -- events from the harness ----------------------------------------------

    def on_ready(self, node: SimNode, ready: Ready) -> None:
        log = node.raw.core.log
        for entry in ready.entries:
            prev_term = log.term(entry.index - 1) if entry.index - 1 >= log.snapshot_index else None
            self._record_entry(node, entry, prev_term)
        if ready.first_commit_in_term is not None:
            core = node.raw.core
            if core.role is not Role.LEADER or log.term(ready.first_commit_in_term) != core.term:
                self.fail(f"node {node.id} reported a first commit at {ready.first_commit_in_term} not of its term")
        for entry in ready.committed:
            if entry.index > log.committed:
                self.fail(f"node {node.id} handed out {entry.index} beyond its commit {log.committed}")

    def _record_entry(self, node: SimNode, entry: Entry, prev_term: int | None) -> None:
        key = (entry.index, entry.term)
        seen = self.entries.get(key)
        if seen is None:
            self.entries[key] = (entry.data, prev_term)
            return
        data, seen_prev = seen
        if data != entry.data:
            self.fail(f"log matching: node {node.id} has different data at index {entry.index} term {entry.term}")
        if prev_term is not None and seen_prev is not None and prev_term != seen_prev:
            self.fail(
                f"log matching: node {node.id} entry {entry.index}/{entry.term} follows term "
                f"{prev_term}, elsewhere {seen_prev}"
            )

    def on_apply(self, node: SimNode, entry: Entry) -> None:
        seen = self.applied.get(entry.index)
        if seen is None:
            self.applied[entry.index] = (entry.term, entry.data)
            return
        if seen != (entry.term, entry.data):
            self.fail(
                f"state machine safety: node {node.id} applied {entry.index}/{entry.term} "
                f"but {seen[0]} was applied there before"
            )

    def on_snapshot_applied(self, node: SimNode, snapshot: Snapshot) -> None:
        self.check_snapshot(snapshot, f"node {node.id} installed")

    def check_snapshot_message(self, msg: InstallSnapshot) -> None:
        self.check_snapshot(msg.snapshot, f"node {msg.frm} sent")

    def check_snapshot(self, snapshot: Snapshot, who: str) -> None:
        from tests.sim.harness import parse_snapshot_data

        applied, _digest = parse_snapshot_data(snapshot.data)
        if applied != snapshot.meta.index:
            self.fail(f"{who} a snapshot whose image is at {applied} but claims {snapshot.meta.index}")
        seen = self.applied.get(snapshot.meta.index)
        if seen is not None and seen[0] != snapshot.meta.term:
            self.fail(f"{who} a snapshot at {snapshot.meta.index} with term {snapshot.meta.term}, applied {seen[0]}")

    def on_propose(self, node: SimNode, data: bytes) -> None:
        self.proposals += 1

    def on_write_acknowledged(self, node: SimNode, data: bytes, value: object) -> None:
        index, term, command = value  # type: ignore[misc]
        if command != data:
            self.fail(f"node {node.id} acknowledged write {data!r} with the result of {command!r}")
        seen = self.applied.get(index)
        if seen is None or seen[0] != term or data not in seen[1].split(b"|"):
            self.fail(f"node {node.id} acknowledged write {data!r} at {index}/{term}, but {seen} was applied there")
        self.acknowledged[data] = (index, term)

    def on_write_failed(self, node: SimNode, data: bytes, error: BaseException) -> None:
        self.failed_writes[type(error).__name__] = self.failed_writes.get(type(error).__name__, 0) + 1

    def on_read_start(self, node: SimNode, ctx: bytes) -> None:
        self.reads[ctx] = self.known_commit()

    def known_commit(self) -> int:
        """The highest commit index any node knows or ever knew (a crashed
        leader may have acknowledged a write before it died)."""
        for n in self.sim.nodes.values():
            if n.alive and n.raw.core.log.committed > self.max_commit:
                self.max_commit = n.raw.core.log.committed
        return self.max_commit

    def on_read_released(self, node: SimNode, ctx: bytes, index: int) -> None:
        need = self.reads.pop(ctx, None)
        if need is None:
            self.fail(f"node {node.id} released unknown or duplicate read {ctx!r}")
        self.reads_released += 1
        if index < need:
            self.fail(f"stale read on node {node.id}: read index {index} < commit {need} known when it began")

    def on_read_dropped(self, node: SimNode, ctx: bytes) -> None:
        self.reads.pop(ctx, None)
        self.reads_dropped += 1

    def on_lease_read(self, node: SimNode, index: int) -> None:
        self.lease_reads += 1
        need = self.known_commit()
        if index < need:
            self.fail(f"stale lease read on leader {node.id}: index {index} < commit {need}")

    def on_first_commit(self, node: SimNode, index: int) -> None:
        self.first_commits += 1

    # -- end of run -------------------------------------------------------------

    def check_liveness(self, max_ticks: int) -> None:
        sim = self.sim
        start_tick = sim.tick_count

        def leader_ready() -> bool:
            leader = sim.leader()
            return leader is not None and leader.raw.core.committed_in_term()

        if not sim.settle(max_ticks, leader_ready):
            self.fail(f"no leader with an own-term commit within {max_ticks} ticks after healing")
        proposed: list[tuple[int, SimNode]] = []

        def proposal_accepted() -> bool:
            leader = sim.leader()
            if leader is None:
                return False
            try:
                index, _term = leader.raw.propose([b"final"])
            except DengineError:
                return False  # e.g. a transfer still in progress; try next step
            proposed.append((index, leader))
            return True

        if not sim.settle(max_ticks, proposal_accepted):
            self.fail(f"no leader accepted a proposal within {max_ticks} ticks after healing")
        index, leader = proposed[0]
        def committed_everywhere() -> bool:
            # Membership may still change while we wait (a pending removal).
            current = sim.leader() or leader
            voters = [n for n in sim.live() if n.id in current.raw.core.conf.voters]
            return all(n.applied >= index for n in voters)

        if not sim.settle(max_ticks, committed_everywhere):
            self.fail(
                f"a proposal at {index} did not commit on every voter within {max_ticks} ticks "
                f"(after {sim.tick_count - start_tick} ticks)"
            )
        self._check_final_logs()

    def check_drained(self, max_ticks: int) -> None:
        """Callers stop; within ``max_ticks`` every node's pending work drains."""
        sim = self.sim
        sim.clients_on = False

        def drained() -> bool:
            return all(sum(n.driver.pending().values()) == 0 for n in sim.live())

        if not sim.settle(max_ticks, drained):
            stuck = {n.id: {k: v for k, v in n.driver.pending().items() if v} for n in sim.live()}
            self.fail(f"pending work did not drain within {max_ticks} ticks after healing: {stuck}")

    def _check_final_logs(self) -> None:
        for node in self.sim.live():
            log = node.raw.core.log
            for index, (term, _data) in self.applied.items():
                if index <= log.snapshot_index or index > log.committed:
                    continue
                if log.term(index) != term:
                    self.fail(f"committed entry {index} lost on node {node.id}")

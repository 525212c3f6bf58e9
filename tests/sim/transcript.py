"""Transcript tests for the pure Raft core (STYLE.md example 2).

A script (tests/sim/scripts/*.txt) is a list of blocks in the datadriven
style of etcd-io/raft's ``testdata``::

    # comment lines explain what the next block pins
    command arg key=value
    another-command
    ----
    expected output

Blocks are separated by a blank line; the output of a block never contains a
blank line. The runner below (``Env``) is a tiny deterministic world: RawNodes
with ``random.Random(id)`` as their only randomness, one FIFO network queue,
per-node queues of Readies handed out but not yet persisted, and a durable
store per node that is all a crash leaves behind. Nothing happens unless a
command says so: no tick, no delivery, no persistence.

The command language is documented in docs/transcripts.md.

Run a script by hand (``--rewrite`` stores the actual output as the expected
one -- then *read* it: a transcript is a specification, not a snapshot)::

    python -m tests.sim.transcript tests/sim/scripts/election.txt [--rewrite]
"""

from __future__ import annotations

import difflib
import json
import random
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import attrs

from dengine.errors import DengineError
from dengine.raft.core import RaftConfig
from dengine.raft.log import LogInvariantBroken
from dengine.raft import membership
from dengine.raft.messages import (
    AppendEntries,
    AppendResponse,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
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
    SoftState,
    TimeoutNow,
    TransferLeader,
    VoteResponse,
)
from dengine.raft.rawnode import RawNode
from dengine.raft.ready import Ready
from tests.sim.harness import Durable

SCRIPTS = Path(__file__).parent / "scripts"
STABILIZE_ROUNDS = 50


class ScriptError(Exception):
    """The script itself is wrong (unknown command, bad argument)."""


# ---------------------------------------------------------------------------
# Printing: one compact line per value. Entries and log positions are written
# term/index everywhere, as etcd does.
# ---------------------------------------------------------------------------


def ids(xs: Iterable[int]) -> str:
    return "(" + ",".join(str(x) for x in sorted(xs)) + ")"


def fmt_conf(conf: ConfState) -> str:
    out = f"voters={ids(conf.voters)}"
    if conf.learners:
        out += f" learners={ids(conf.learners)}"
    return out


_CC_NAMES = {
    ConfChangeType.ADD_LEARNER: "AddLearner",
    ConfChangeType.PROMOTE: "Promote",
    ConfChangeType.REMOVE: "Remove",
    ConfChangeType.ADD_VOTER: "AddVoter",
}


def fmt_entry(e: Entry) -> str:
    if e.type is EntryType.CONF_CHANGE:
        try:
            cc = ConfChange.decode(e.data)
            return f"{e.term}/{e.index} EntryConfChange {_CC_NAMES[cc.type]} {cc.node_id}"
        except ValueError:
            return f"{e.term}/{e.index} EntryConfChange <malformed {e.data!r}>"
    return f"{e.term}/{e.index} EntryNormal {json.dumps(e.data.decode('utf-8', 'backslashreplace'))}"


def fmt_entries(entries: Iterable[Entry]) -> str:
    return "[" + ", ".join(fmt_entry(e) for e in entries) + "]"


def fmt_ctxs(ctxs: Iterable[bytes]) -> str:
    return "[" + " ".join(c.decode("utf-8", "backslashreplace") for c in ctxs) + "]"


def fmt_msg(m: Message) -> str:
    head = f"{m.frm}->{m.to}"
    if isinstance(m, AppendEntries):
        out = f"{head} MsgApp term={m.term} prev={m.prev_term}/{m.prev_index} commit={m.commit}"
        if m.entries:
            out += f" entries={fmt_entries(m.entries)}"
        return out
    if isinstance(m, AppendResponse):
        if m.reject:
            return f"{head} MsgAppResp term={m.term} rejected index={m.index} hint={m.hint_term}/{m.reject_hint}"
        return f"{head} MsgAppResp term={m.term} index={m.index}"
    if isinstance(m, RequestVote):
        kind = "MsgPreVote" if m.pre_vote else "MsgVote"
        out = f"{head} {kind} term={m.term} last={m.last_term}/{m.last_index}"
        return out + (" force" if m.force else "")
    if isinstance(m, VoteResponse):
        kind = "MsgPreVoteResp" if m.pre_vote else "MsgVoteResp"
        return f"{head} {kind} term={m.term} {'granted' if m.granted else 'rejected'}"
    if isinstance(m, InstallSnapshot):
        meta = m.snapshot.meta
        return f"{head} MsgSnap term={m.term} snap={meta.term}/{meta.index} {fmt_conf(meta.conf_state)}"
    if isinstance(m, Heartbeat):
        return f"{head} MsgHeartbeat term={m.term} commit={m.commit} round={m.round}"
    if isinstance(m, HeartbeatResponse):
        return f"{head} MsgHeartbeatResp term={m.term} round={m.round}"
    if isinstance(m, ReadIndexRequest):
        return f"{head} MsgReadIndex term={m.term} ctxs={fmt_ctxs(m.ctxs)}"
    if isinstance(m, ReadIndexResponse):
        out = f"{head} MsgReadIndexResp term={m.term} index={m.index} ctxs={fmt_ctxs(m.ctxs)}"
        return out + (" rejected" if m.reject else "")
    if isinstance(m, TimeoutNow):
        return f"{head} MsgTimeoutNow term={m.term}"
    if isinstance(m, TransferLeader):
        return f"{head} MsgTransferLeader term={m.term} transferee={m.transferee}"
    raise AssertionError(f"unknown message {m!r}")  # pragma: no cover


def fmt_lead(lead: int | None) -> str:
    return "none" if lead is None else str(lead)


def fmt_soft(s: SoftState) -> str:
    return f"{s.role.value} term={s.term} lead={fmt_lead(s.leader)} {fmt_conf(s.conf_state)}"


def fmt_hard(h: HardState) -> str:
    return f"term={h.term} vote={fmt_lead(h.vote)} commit={h.commit}"


# ---------------------------------------------------------------------------
# The environment
# ---------------------------------------------------------------------------


@attrs.define
class Node:
    id: int
    raw: RawNode
    config: RaftConfig
    durable: Durable
    unpersisted: list[Ready] = attrs.field(factory=list)
    alive: bool = True
    # The "state machine": the applied index and the data of applied entries.
    applied: int = 0
    data: list[str] = attrs.field(factory=list)


def _snapshot_data(data: list[str]) -> bytes:
    return json.dumps(data).encode()


class Env:
    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self.network: list[Message] = []
        self.groups: list[set[int]] | None = None  # partition; None = fully connected
        self.out: list[str] = []

    # -- output ------------------------------------------------------------------

    def p(self, line: str) -> None:
        self.out.append(line)

    # -- helpers -----------------------------------------------------------------

    def node(self, arg: str, allow_down: bool = False) -> Node:
        try:
            nid = int(arg)
        except ValueError:
            raise ScriptError(f"not a node id: {arg!r}") from None
        if nid not in self.nodes:
            raise ScriptError(f"no node {nid}")
        if not self.nodes[nid].alive and not allow_down:
            raise ScriptError(f"node {nid} is down; restart it first")
        return self.nodes[nid]

    def select(self, arg: str) -> list[Node]:
        if arg == "all":
            return [self.nodes[i] for i in sorted(self.nodes)]
        return [self.node(a, allow_down=True) for a in arg.split(",")]

    def live(self, arg: str) -> list[Node]:
        return [n for n in self.select(arg) if n.alive]

    def _observe(self) -> dict[int, tuple[Role, int, int | None]]:
        return {
            n.id: (n.raw.core.role, n.raw.core.term, n.raw.core.lead) for n in self.nodes.values() if n.alive
        }

    def _report_changes(self, before: dict[int, tuple[Role, int, int | None]]) -> None:
        """One line per node whose role, term or leader changed (like etcd's
        'became follower at term 2' log lines)."""
        after = self._observe()
        for nid in sorted(after):
            if nid in before and before[nid] != after[nid]:
                role, term, lead = after[nid]
                self.p(f"  ~ {nid} is {role.value} term={term} lead={fmt_lead(lead)}")

    def watching(self, fn: Callable[[], None]) -> None:
        before = self._observe()
        fn()
        self._report_changes(before)

    def connected(self, a: int, b: int) -> bool:
        if self.groups is None:
            return True
        return any(a in g and b in g for g in self.groups)

    def _start(self, nid: int, config: RaftConfig, durable: Durable) -> Node:
        raw = RawNode(
            config,
            rng=random.Random(nid),
            hard_state=durable.hard_state,
            snapshot=durable.snapshot,
            entries=list(durable.entries),
        )
        node = Node(id=nid, raw=raw, config=config, durable=durable)
        if durable.snapshot is not None:
            node.data = json.loads(durable.snapshot.data)
            node.applied = durable.snapshot.meta.index
        return node

    # -- commands ----------------------------------------------------------------

    def cmd_add_nodes(self, args: list[str], kw: dict[str, str]) -> None:
        if len(args) != 1:
            raise ScriptError("add-nodes N [voters=1,2,3] [election=10 heartbeat=1 ...]")
        n = int(args[0])
        first = max(self.nodes, default=0) + 1
        new = list(range(first, first + n))
        if "voters" in kw:
            voters = frozenset(int(x) for x in kw.pop("voters").split(",") if x)
        elif not self.nodes:
            voters = frozenset(new)
        else:
            voters = frozenset()  # joining an existing cluster
        opts = dict(
            election_tick=int(kw.pop("election", 10)),
            heartbeat_tick=int(kw.pop("heartbeat", 1)),
            max_inflight=int(kw.pop("max-inflight", 256)),
            max_append_entries=int(kw.pop("max-entries", 1024)),
            pre_vote=kw.pop("prevote", "true") == "true",
            check_quorum=kw.pop("checkquorum", "true") == "true",
            max_clock_drift=float(kw.pop("drift", 0.1)),
        )
        if kw:
            raise ScriptError(f"add-nodes: unknown options {sorted(kw)}")
        for nid in new:
            config = RaftConfig(id=nid, initial_voters=voters if nid in voters else frozenset(), **opts)
            node = self._start(nid, config, Durable())
            self.nodes[nid] = node
            # Bootstrap: an initial member writes the membership entries at
            # 1..n and applies them, like a driver does on first start. Done
            # quietly; `raft-log` shows the result.
            if config.initial_voters:
                while node.raw.has_ready():
                    ready = node.raw.ready()
                    if ready.messages or ready.after_persist:  # pragma: no cover - a bug
                        raise AssertionError(f"bootstrap sent messages: {ready}")
                    self._persist_one(node, ready, quiet=True)
            c = node.raw.core
            self.p(
                f"{nid}: {c.role.value} term={c.term} commit={c.log.committed} "
                f"applied={node.applied} {fmt_conf(c.conf)}"
            )

    def cmd_campaign(self, args: list[str], kw: dict[str, str]) -> None:
        node = self.node(args[0])
        self.watching(node.raw.campaign)

    def _tick(self, node: Node, n: int) -> None:
        def run() -> None:
            for _ in range(n):
                node.raw.tick()

        self.watching(run)

    def cmd_tick(self, args: list[str], kw: dict[str, str]) -> None:
        n = int(kw.pop("n", 1))
        for node in self.live(args[0] if args else "all"):
            self._tick(node, n)

    def cmd_tick_heartbeat(self, args: list[str], kw: dict[str, str]) -> None:
        for node in self.live(args[0]):
            self._tick(node, node.config.heartbeat_tick)

    def cmd_tick_election(self, args: list[str], kw: dict[str, str]) -> None:
        for node in self.live(args[0]):
            self._tick(node, node.config.election_tick)

    def _process_ready(self, node: Node) -> bool:
        raw = node.raw
        if not node.alive or not raw.has_ready():
            return False
        before = self._observe()
        ready = raw.ready()
        self._report_changes(before)  # flush() may drop forwarded reads, never changes roles
        self.p(f"> {node.id} handling Ready #{ready.number}")
        if ready.soft_state is not None:
            self.p(f"  soft: {fmt_soft(ready.soft_state)}")
        if ready.hard_state is not None:
            self.p(f"  hard: {fmt_hard(ready.hard_state)}")
        if ready.snapshot is not None:
            meta = ready.snapshot.meta
            self.p(f"  snapshot: {meta.term}/{meta.index} {fmt_conf(meta.conf_state)}")
        if ready.entries:
            self.p("  entries:")
            for e in ready.entries:
                self.p(f"    {fmt_entry(e)}")
        if ready.messages:
            self.p("  messages:")
            for m in ready.messages:
                self.p(f"    {fmt_msg(m)}")
        if ready.after_persist:
            self.p("  after-persist:")
            for m in ready.after_persist:
                self.p(f"    {fmt_msg(m)}")
        if ready.committed:
            self.p("  committed:")
            for e in ready.committed:
                self.p(f"    {fmt_entry(e)}")
        if ready.first_commit_in_term is not None:
            self.p(f"  first-commit-in-term: {ready.first_commit_in_term}")
        for rs in ready.read_states:
            self.p(f"  read-state: ctx={rs.ctx.decode()} index={rs.index}")
        if ready.dropped_reads:
            self.p(f"  dropped-reads: {fmt_ctxs(ready.dropped_reads)}")
        self.network.extend(ready.messages)
        node.unpersisted.append(ready)
        return True

    def cmd_process_ready(self, args: list[str], kw: dict[str, str]) -> None:
        for node in self.live(args[0] if args else "all"):
            if not self._process_ready(node):
                self.p(f"> {node.id}: no Ready")

    def _persist_one(self, node: Node, ready: Ready, quiet: bool = False) -> None:
        d = node.durable
        if ready.snapshot is not None:
            d.save_snapshot(ready.snapshot)
        d.append(ready.entries)
        if ready.hard_state is not None:
            d.hard_state = ready.hard_state
        before = self._observe()
        released = node.raw.on_persisted(ready.number)
        # A Ready with nothing to persist, release or apply is acknowledged silently.
        if not (ready.must_persist() or released or ready.committed):
            quiet = True
        if not quiet:
            self.p(f"> {node.id} persisted Ready #{ready.number}")
            for m in released:
                self.p(f"  send: {fmt_msg(m)}")
            self._report_changes(before)
        self.network.extend(released)
        # Apply (Ready contract step 4): snapshot, then committed entries.
        if ready.snapshot is not None:
            node.data = json.loads(ready.snapshot.data)
            node.applied = ready.snapshot.meta.index
        for e in ready.committed:
            if e.index <= node.applied:
                continue
            if e.index != node.applied + 1:  # pragma: no cover - a bug
                raise AssertionError(f"{node.id} applies {e.index} after {node.applied}")
            node.applied = e.index
            if e.type is EntryType.NORMAL and e.data:
                node.data.append(e.data.decode("utf-8", "backslashreplace"))
        node.raw.on_applied(node.applied)
        if not quiet and (ready.committed or ready.snapshot is not None):
            self.p(f"  applied={node.applied}")

    def _persist(self, node: Node, limit: int | None = None) -> bool:
        done = 0
        while node.alive and node.unpersisted and (limit is None or done < limit):
            self._persist_one(node, node.unpersisted.pop(0))
            done += 1
        return done > 0

    def cmd_persist(self, args: list[str], kw: dict[str, str]) -> None:
        limit = int(kw.pop("n")) if "n" in kw else None
        any_done = False
        for node in self.live(args[0] if args else "all"):
            any_done |= self._persist(node, limit)
        if not any_done:
            self.p("nothing to persist")

    def _deliver(self, targets: set[int], drops: set[tuple[int, int]]) -> bool:
        """Deliver every queued message addressed to ``targets``, recipient by
        recipient in id order, each queue in FIFO order."""
        mine = [m for m in self.network if m.to in targets]
        if not mine:
            return False
        self.network = [m for m in self.network if m.to not in targets]
        for nid in sorted(targets):
            for m in (m for m in mine if m.to == nid):
                target = self.nodes.get(m.to)
                if (m.frm, m.to) in drops:
                    self.p(f"  dropped: {fmt_msg(m)}")
                elif target is None or not target.alive:
                    self.p(f"  dropped ({m.to} is down): {fmt_msg(m)}")
                elif not self.connected(m.frm, m.to):
                    self.p(f"  dropped (partition): {fmt_msg(m)}")
                else:
                    self.p(f"  {fmt_msg(m)}")
                    self.watching(lambda: target.raw.step(m))
        return True

    def cmd_deliver_msgs(self, args: list[str], kw: dict[str, str]) -> None:
        drops: set[tuple[int, int]] = set()
        for spec in kw.pop("drop", "").split(","):
            if spec:
                a, b = spec.split("->")
                drops.add((int(a), int(b)))
        targets = {n.id for n in self.select(args[0] if args else "all")}
        if not self._deliver(targets, drops):
            self.p("no messages")

    def cmd_stabilize(self, args: list[str], kw: dict[str, str]) -> None:
        ids_ = {n.id for n in self.select(args[0] if args else "all")}
        for _ in range(STABILIZE_ROUNDS):
            changed = False
            for nid in sorted(ids_):
                changed |= self._process_ready(self.nodes[nid])
            for nid in sorted(ids_):
                changed |= self._persist(self.nodes[nid])
            for nid in sorted(ids_):
                if any(m.to == nid for m in self.network):
                    self.p(f"> {nid} receiving messages")
                    self._deliver({nid}, set())
                    changed = True
            if not changed:
                return
        self.p(f"not stable after {STABILIZE_ROUNDS} rounds")

    def cmd_propose(self, args: list[str], kw: dict[str, str]) -> None:
        node = self.node(args[0])
        index, term = node.raw.propose([args[1].encode()])
        self.p(f"{node.id}: proposed {term}/{index}")

    def cmd_propose_conf_change(self, args: list[str], kw: dict[str, str]) -> None:
        node = self.node(args[0])
        kinds = {"add-learner": ConfChangeType.ADD_LEARNER, "promote": ConfChangeType.PROMOTE,
                 "remove": ConfChangeType.REMOVE, "add-voter": ConfChangeType.ADD_VOTER}
        if args[1] not in kinds:
            raise ScriptError(f"conf change kind must be one of {sorted(kinds)}")
        index, term = node.raw.propose_conf_change(ConfChange(kinds[args[1]], int(args[2])))
        self.p(f"{node.id}: proposed {term}/{index} {_CC_NAMES[kinds[args[1]]]} {args[2]}")

    def cmd_read_index(self, args: list[str], kw: dict[str, str]) -> None:
        node = self.node(args[0])
        node.raw.read_index(args[1].encode())
        self.p("ok")

    def cmd_lease_read(self, args: list[str], kw: dict[str, str]) -> None:
        node = self.node(args[0])
        index = node.raw.lease_read_index()
        self.p(f"{node.id}: lease read refused" if index is None else f"{node.id}: lease read at index {index}")

    def cmd_transfer_leadership(self, args: list[str], kw: dict[str, str]) -> None:
        node = self.node(kw.pop("from"))
        self.watching(lambda: node.raw.transfer_leader(int(kw.pop("to"))))

    def cmd_compact(self, args: list[str], kw: dict[str, str]) -> None:
        node = self.node(args[0])
        index = int(args[1])
        if index > node.applied:
            raise ScriptError(f"node {node.id} applied only {node.applied}; cannot snapshot at {index}")
        log = node.raw.core.log
        term = log.term(index)
        if term is None:
            raise ScriptError(f"node {node.id} has no entry at {index}")
        # The membership as of `index`: the last snapshot's, then the changes up to index.
        d = node.durable
        conf = d.snapshot.meta.conf_state if d.snapshot is not None else ConfState()
        n_data = 0 if d.snapshot is None else len(json.loads(d.snapshot.data))
        for e in d.entries:
            if e.index > index:
                break
            if e.type is EntryType.CONF_CHANGE:
                conf = membership.apply(conf, ConfChange.decode(e.data))
            elif e.data:
                n_data += 1
        snap = Snapshot(meta=SnapshotMeta(index=index, term=term, conf_state=conf),
                        data=_snapshot_data(node.data[:n_data]))
        node.raw.compact(snap)
        node.durable.save_snapshot(snap)
        self.p(f"{node.id}: compacted to {term}/{index} {fmt_conf(conf)}")

    def cmd_crash(self, args: list[str], kw: dict[str, str]) -> None:
        node = self.node(args[0])
        lost = node.unpersisted
        node.alive = False
        node.unpersisted = []
        nums = ",".join(f"#{r.number}" for r in lost) or "none"
        self.p(f"{node.id}: crashed; unpersisted Readies lost: {nums}")

    def cmd_restart(self, args: list[str], kw: dict[str, str]) -> None:
        old = self.node(args[0], allow_down=True)
        if old.alive:
            raise ScriptError(f"node {old.id} is running; crash it first")
        node = self._start(old.id, old.config, old.durable)
        self.nodes[old.id] = node
        c = node.raw.core
        self.p(
            f"{node.id}: restarted {c.role.value} term={c.term} vote={fmt_lead(c.vote)} "
            f"commit={c.log.committed} last={c.log.last_term()}/{c.log.last_index()} {fmt_conf(c.conf)}"
        )

    def cmd_partition(self, args: list[str], kw: dict[str, str]) -> None:
        groups = [{int(x) for x in g.split(",") if x} for g in args[0].split("|")]
        listed = set().union(*groups)
        groups += [{nid} for nid in self.nodes if nid not in listed]
        self.groups = groups
        self.p("partition " + " | ".join(ids(g) for g in sorted(groups, key=min)))

    def cmd_heal(self, args: list[str], kw: dict[str, str]) -> None:
        self.groups = None
        self.p("ok")

    def cmd_status(self, args: list[str], kw: dict[str, str]) -> None:
        for node in self.select(args[0] if args else "all"):
            if not node.alive:
                self.p(f"{node.id}: down")
                continue
            c = node.raw.core
            log = c.log
            line = (
                f"{node.id}: {c.role.value} term={c.term} vote={fmt_lead(c.vote)} lead={fmt_lead(c.lead)} "
                f"commit={log.committed} applied={node.applied} last={log.last_term()}/{log.last_index()} "
                f"{fmt_conf(c.conf)}"
            )
            if c.lead_transferee is not None:
                line += f" transferee={c.lead_transferee}"
            self.p(line)
            for peer, pr in sorted(c.prs.items()):
                if peer == c.id:
                    continue
                extra = " paused" if pr.is_paused() else ""
                if pr.state.value == "snapshot":
                    extra += f" pending-snapshot={pr.pending_snapshot}"
                if pr.is_learner:
                    extra += " learner"
                self.p(
                    f"  {peer}: {pr.state.value} match={pr.match} next={pr.next} "
                    f"inflight={len(pr.inflights)}{extra}"
                )

    def cmd_raft_log(self, args: list[str], kw: dict[str, str]) -> None:
        node = self.node(args[0])
        log = node.raw.core.log
        if log.snapshot_index:
            self.p(f"snapshot {log.snapshot_term}/{log.snapshot_index}")
        if not log.entries:
            self.p("(no entries)")
        for e in log.entries:
            self.p(fmt_entry(e))

    def cmd_msgs(self, args: list[str], kw: dict[str, str]) -> None:
        """The network queue, without delivering anything."""
        if not self.network:
            self.p("no messages")
        for m in self.network:
            self.p(fmt_msg(m))

    # -- dispatch ----------------------------------------------------------------

    def run(self, line: str) -> None:
        parts = line.split()
        name, rest = parts[0], parts[1:]
        args = [a for a in rest if "=" not in a]
        kw = dict(a.split("=", 1) for a in rest if "=" in a)
        fn = getattr(self, "cmd_" + name.replace("-", "_"), None)
        if fn is None:
            raise ScriptError(f"unknown command {name!r}")
        start = len(self.out)
        try:
            fn(args, kw)
        except (DengineError, LogInvariantBroken) as exc:
            self.p(f"error: {type(exc).__name__}: {exc}")
        if len(self.out) == start:
            self.p("ok")


# ---------------------------------------------------------------------------
# Script files
# ---------------------------------------------------------------------------


@attrs.define
class Block:
    comments: list[str]  # comment and blank lines before the block
    commands: list[str]
    expected: list[str]
    line: int


def parse(text: str) -> tuple[list[Block], list[str]]:
    """Blocks, and the trailing comment lines after the last block."""
    lines = text.splitlines()
    blocks: list[Block] = []
    pending: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("#"):
            pending.append(line)
            i += 1
            continue
        start = i + 1
        commands = []
        while i < len(lines) and lines[i] != "----":
            if not lines[i].strip():
                raise ScriptError(f"line {i + 1}: blank line inside a block (missing '----'?)")
            commands.append(lines[i])
            i += 1
        if i == len(lines):
            raise ScriptError(f"line {start}: block without '----'")
        i += 1
        expected = []
        while i < len(lines) and lines[i].strip():
            expected.append(lines[i])
            i += 1
        blocks.append(Block(pending, commands, expected, start))
        pending = []
    return blocks, pending


def run_script(text: str) -> tuple[str, list[tuple[Block, list[str]]]]:
    """Run every block; returns the script text with the *actual* outputs in
    place of the expected ones, and (block, actual output) pairs."""
    blocks, trailing = parse(text)
    env = Env()
    results = []
    out_lines: list[str] = []
    for block in blocks:
        env.out = []
        for command in block.commands:
            env.run(command)
        actual = env.out
        if any(not a.strip() for a in actual):  # pragma: no cover - a runner bug
            raise AssertionError("output contains a blank line")
        results.append((block, actual))
        out_lines += block.comments + block.commands + ["----"] + actual
    out_lines += trailing
    return "\n".join(out_lines).rstrip("\n") + "\n", results


def check_file(path: Path, rewrite: bool = False) -> str | None:
    """None if the script's expected outputs match; else a unified diff.
    With ``rewrite`` the file is overwritten with the actual outputs."""
    text = path.read_text()
    actual, _ = run_script(text)
    if actual == text:
        return None
    if rewrite:
        path.write_text(actual)
        return None
    return "".join(
        difflib.unified_diff(
            text.splitlines(keepends=True), actual.splitlines(keepends=True), f"{path} (expected)", "actual"
        )
    )


def main(argv: list[str]) -> int:
    rewrite = "--rewrite" in argv
    paths = [Path(a) for a in argv if not a.startswith("--")] or sorted(SCRIPTS.glob("*.txt"))
    failed = 0
    for path in paths:
        diff = check_file(path, rewrite)
        if diff:
            failed += 1
            print(diff)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

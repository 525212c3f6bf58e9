"""One chaos run: start the cluster behind its proxies, run the clients and
watchers under the fault schedule, heal, converge, check, report.

Every wait is bounded (the whole run sits under one ``fail_after``); every
process is killed by PID in a ``finally``.
"""

from __future__ import annotations

import pathlib
import random
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import trio

import dengine
from dengine import ReadConsistency
from tests.chaos import analysis
from tests.chaos.checker import GET, KeyVerdict, check_register, quick_violations
from tests.chaos.cluster import CLUSTER_ID, ChaosCluster, election_timeout
from tests.chaos.faults import FaultRunner
from tests.chaos.workload import END_KEY, FAIL, OK, PREFIX, WatchRecorder, Workload

__all__ = ["Options", "Result", "run_chaos"]

WATCH_KINDS = (
    "missed acknowledged put", "prev_value", "differ at revision", "lacks revision", "delivered twice",
    "out of order", "never delivered the end marker", "a value no client wrote", "surely failed",
    "not swapped", "acknowledged with revision", "never showed the acknowledged cas", "began after put",
)


@dataclass
class Options:
    seconds: float = 60.0
    seed: int = 0
    nodes: int = 3
    plant_bug: str | None = None
    tick_ms: float = 30.0
    clients: int = 5
    keys: int = 4
    op_timeout: float = 1.5
    workdir: str | None = None
    keep: bool = False
    checker_steps: int = 2_000_000
    checker_seconds: float = 30.0


@dataclass
class Result:
    ops: int = 0
    unknown: int = 0
    faults: int = 0
    anomalies: int = 0
    lost: int = 0
    gave_up: int = 0
    lines: list[str] = field(default_factory=list)

    @property
    def last_line(self) -> str:
        return (f"ops={self.ops} unknown={self.unknown} faults={self.faults} "
                f"anomalies={self.anomalies} lost={self.lost}")

    @property
    def exit_code(self) -> int:
        if self.anomalies or self.lost:
            return 1
        return 3 if self.gave_up else 0


class Run:
    def __init__(self, opts: Options, out: Callable[[str], None]) -> None:
        self.opts = opts
        self.out = out
        self.rng = random.Random(opts.seed)
        self.et = election_timeout(opts.tick_ms)
        if opts.workdir:
            self.workdir = pathlib.Path(opts.workdir)
            self.workdir.mkdir(parents=True, exist_ok=True)
        else:
            self.workdir = pathlib.Path(tempfile.mkdtemp(prefix=f"dengine-chaos-s{opts.seed}-"))
        self.cluster = ChaosCluster(self.workdir, opts.nodes, tick_ms=opts.tick_ms,
                                    rng=random.Random(self.rng.random()))
        self.keys = [PREFIX + b"k%d" % i for i in range(opts.keys)]
        self.workload = Workload(self.cluster, self.keys, opts.clients, opts.op_timeout, opts.seed,
                                 plant_bug=opts.plant_bug)
        self.watchers = [WatchRecorder(0, self.cluster, 1), WatchRecorder(1, self.cluster, None)]
        self.faults: FaultRunner | None = None
        self.t0 = 0.0
        self.t_faults = (0.0, 0.0)
        self.final_reads: dict[bytes, bytes | None] = {}
        self.finals: dict[int, dict[bytes, bytes | None]] = {}
        self.converged = False
        self.convergence_notes: list[str] = []
        self.end_revision: int | None = None

    def log(self, line: str) -> None:
        self.out(line)

    def now(self) -> float:
        return trio.current_time() - self.t0

    def status(self) -> str:
        c = self.workload.counts()
        return (f"ops {len(self.workload.records)} ok {c['ok']} acked-writes {c['w_ok']} "
                f"unknown {c['w_unknown']} failed {c['fail']}")

    # -- the run ------------------------------------------------------------------

    async def main(self) -> None:
        opts = self.opts
        self.t0 = trio.current_time()
        self.log(f"chaos: seed {opts.seed}, {opts.nodes} nodes, {opts.seconds:g}s of faults, tick {opts.tick_ms:g}ms "
                 f"(election timeout {self.et * 1000:.0f}ms), {opts.clients} clients on {len(self.keys)} keys, "
                 f"op timeout {opts.op_timeout:g}s{', planted bug ' + opts.plant_bug if opts.plant_bug else ''}; "
                 f"work dir {self.workdir}")
        async with trio.open_nursery() as nursery:
            await self.cluster.start_proxies(nursery)
            try:
                for i in self.cluster.ids:
                    await self.cluster.start(i)
                async with dengine.open_client(self.cluster.endpoints(), cluster_id=CLUSTER_ID, timeout=5,
                                               rng=random.Random(self.rng.random())) as admin:
                    await self._run_with(admin)
            finally:
                await self.cluster.stop_all()
                nursery.cancel_scope.cancel()

    async def _run_with(self, admin: dengine.Client) -> None:
        opts = self.opts
        first = await self.cluster.wait_leader(admin, 60)
        if first is None:
            raise RuntimeError("no leader within 60 s of starting the cluster:\n" + self.cluster.log_tail(1))
        await admin.put(b"/ttl/warmup", b"x", timeout=10)
        self.log(f"[{self.now():6.1f}s] cluster up, leader node {first[0]} term {first[1]}")
        self.faults = FaultRunner(self.cluster, admin, random.Random(self.rng.random()), election_timeout=self.et,
                                  t0=self.t0, log=self.log, status=self.status, plant_bug=opts.plant_bug)
        async with trio.open_nursery() as watch_nursery:
            for w in self.watchers:
                watch_nursery.start_soon(w.run)
            with trio.move_on_after(20):
                for w in self.watchers:
                    await w.ready.wait()
            watch_nursery.start_soon(self._progress)
            async with trio.open_nursery() as client_nursery:
                for c in range(opts.clients):
                    client_nursery.start_soon(self.workload.run_client, c)
                start = trio.current_time()
                await self.faults.run(opts.seconds)
                self.t_faults = (start, trio.current_time())
                await self.faults.heal_everything()
                self.log(f"[{self.now():6.1f}s] faults over ({len(self.faults.events)}); healed | {self.status()}")
                leader = await self.cluster.wait_leader(admin, 30)
                self.log(f"[{self.now():6.1f}s] leader after healing: {leader}")
                await trio.sleep(2.0)  # the clients run on the healed cluster for a moment
                # The clients finish the op in flight and return; any still
                # running after this bound is cancelled (its op: unknown).
                self.workload.stop.set()
                client_nursery.cancel_scope.deadline = trio.current_time() + 3 * opts.op_timeout + 10
            self.log(f"[{self.now():6.1f}s] clients stopped | {self.status()}")
            await self._final_reads(admin)
            await self._end_marker(admin)
            with trio.move_on_after(30):
                for w in self.watchers:
                    await w.end_seen.wait()
            watch_nursery.cancel_scope.cancel()
        await self._converge(admin)
        assert self.faults is not None
        for i, code in self.cluster.exited().items():
            self.faults.crashes.append(f"node {i} exited by itself with code {code} by the end of the run")
            self.log(f"node {i} exited by itself with code {code}\n{self.cluster.log_tail(i)}")

    async def _progress(self) -> None:
        for _ in range(100_000):
            await trio.sleep(10)
            self.log(f"[{self.now():6.1f}s] progress | {self.status()} | watch events "
                     f"{[len(w.events) for w in self.watchers]}")

    async def _final_reads(self, admin: dengine.Client) -> None:
        for key in self.keys:
            for _ in range(20):
                rec = self.workload._new(-1, GET, key, consistency="linearizable")
                rec.invoke = trio.current_time()
                try:
                    rec.result = await admin.get(key, consistency=ReadConsistency.LINEARIZABLE, timeout=5)
                except dengine.DengineError as exc:
                    rec.outcome, rec.complete, rec.error = FAIL, trio.current_time(), str(exc)
                    continue
                rec.outcome, rec.complete = OK, trio.current_time()
                self.final_reads[key] = rec.result
                break
        self.log(f"[{self.now():6.1f}s] final linearizable reads: "
                 + ", ".join(f"{k.decode()}={v!r}" for k, v in self.final_reads.items()))

    async def _end_marker(self, admin: dengine.Client) -> None:
        for _ in range(10):
            try:
                self.end_revision = await admin.put(END_KEY, b"end", timeout=5)
                return
            except dengine.DengineError as exc:
                self.log(f"end marker put failed: {exc}")

    async def _converge(self, admin: dengine.Client) -> None:
        """Every node reaches the same applied index, and then holds the same
        values (eventual reads of each node on its own)."""
        ids = self.cluster.ids
        async with AsyncExitStack() as stack:
            node_clients = {
                i: await stack.enter_async_context(dengine.open_client(
                    [self.cluster.endpoint(i)], cluster_id=CLUSTER_ID, timeout=2))
                for i in ids
            }

            async def values_of(i: int) -> dict[bytes, bytes | None] | None:
                try:
                    vals = await node_clients[i].get_many(self.keys, consistency=ReadConsistency.EVENTUAL, timeout=2)
                except dengine.DengineError:
                    return None
                return dict(zip(self.keys, vals))

            last_applied: dict[int, int] = {}
            with trio.move_on_after(30):
                for _ in range(1000):
                    sts = await self.cluster.statuses(admin, 1.0)
                    last_applied = {i: s.applied_index for i, s in sts.items()}
                    if len(sts) == len(ids) and len(set(last_applied.values())) == 1 and \
                            len({s.commit_index for s in sts.values()}) == 1:
                        finals = {i: await values_of(i) for i in ids}
                        again = await self.cluster.statuses(admin, 1.0)
                        if all(v is not None for v in finals.values()) and \
                                {i: s.applied_index for i, s in again.items()} == last_applied:
                            self.finals = {i: v for i, v in finals.items() if v is not None}
                            self.converged = True
                            break
                    await trio.sleep(0.2)
            if not self.converged:
                self.convergence_notes.append(f"nodes did not reach one applied index within 30 s: {last_applied}")
                for i in ids:
                    v = await values_of(i)
                    if v is not None:
                        self.finals[i] = v
        applied = next(iter(last_applied.values()), None)
        self.log(f"[{self.now():6.1f}s] convergence: {'yes' if self.converged else 'NO'} "
                 f"(applied index {applied if self.converged else last_applied})")

    # -- the verdict ------------------------------------------------------------------

    def verdict(self) -> Result:
        res = Result()
        lines = res.lines
        opts = self.opts
        records = self.workload.records
        ops = [o for o in (r.to_op() for r in records) if o is not None]
        res.ops = len(ops)
        res.unknown = sum(1 for o in ops if o.unknown)
        assert self.faults is not None
        res.faults = len(self.faults.events)
        counts = Counter((r.kind, r.outcome) for r in records)
        lines.append("operations: " + ", ".join(f"{k} {o} {n}" for (k, o), n in sorted(counts.items())))
        for name, n in self.workload.errors.most_common():
            lines.append(f"  errors: {name}: {n}")
        lines.append(f"client blocks that died: {sum(self.workload.client_block_errors.values())} "
                     f"({dict(self.workload.client_block_errors)}); of them trio.BrokenResourceError out of "
                     f"open_client: {self.workload.broken_resource}")
        kinds = Counter(ev.kind for ev in self.faults.events)
        lines.append(f"faults: {res.faults} ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}); "
                     f"kill -9 {self.cluster.kills}, SIGSTOP {self.cluster.pauses}, "
                     f"proxy frames dropped {sum(p.dropped for p in self.cluster.proxies.values())}, "
                     f"duplicated {sum(p.duplicated for p in self.cluster.proxies.values())}, "
                     f"reordered {sum(p.reordered for p in self.cluster.proxies.values())}")
        for crash in self.faults.crashes:
            lines.append(f"CRASH: {crash}")

        # Linearizability, key by key.
        nonlinear: set[bytes] = set()
        by_key: dict[bytes, list] = {k: [] for k in self.keys}
        for o in ops:
            by_key.setdefault(o.key, []).append(o)
        for key, kops in sorted(by_key.items()):
            v: KeyVerdict = check_register(kops, key=key, max_steps=opts.checker_steps,
                                           max_seconds=opts.checker_seconds)
            how = ""
            if v.ok is None:
                refined = analysis.refine_unknowns(kops, self.watchers[0])
                if refined is not None:
                    kops2, applied, dropped = refined
                    v2 = check_register(kops2, key=key, max_steps=opts.checker_steps,
                                        max_seconds=opts.checker_seconds)
                    how = (f" (first search gave up: {v.detail}; rechecked with unknown writes resolved by the "
                           f"complete watch: {applied} applied, {dropped} never applied)")
                    v = v2
            unknown = sum(1 for o in kops if o.unknown)
            state = {True: "linearizable", False: "NOT LINEARIZABLE", None: "CHECKER GAVE UP"}[v.ok]
            lines.append(f"checker: {key.decode()}: {state}: {len(kops)} ops ({unknown} unknown), "
                         f"{v.steps} steps, {v.seconds:.2f}s{how}")
            if v.ok is False:
                nonlinear.add(key)
                lines.append(f"  {v.detail}")
                for w in v.witness:
                    lines.append(f"    near it: {w}")
            elif v.ok is None:
                res.gave_up += 1
                lines.append(f"  {v.detail}")
        quick = quick_violations(ops)
        for q in quick[:20]:
            lines.append(f"  quick check: {q}")
        if len(quick) > 20:
            lines.append(f"  quick check: ... {len(quick) - 20} more")
        for q in quick:
            nonlinear.add(q.split(":", 1)[0].encode())
        # Watches.
        watch_problems: list[str] = []
        for w in self.watchers:
            watch_problems += analysis.check_watch(w, records)
            lines.append(f"watch {w.wid} (from {'revision 1' if w.start_revision == 1 else 'now'}): "
                         f"{len(w.events)} events, first start {w.first_start}, last revision {w.last_revision}, "
                         f"opened {w.opened}x, resumed after failover {w.resumes}x, CANCELED {len(w.canceled)}x, "
                         f"errors {dict(w.errors)} (BrokenResourceError {w.broken_resource}), "
                         f"end marker {'seen' if w.end_seen.is_set() else 'NOT seen'}")
            for n in w.notes[:10]:
                lines.append(f"  {n}")
        watch_problems += analysis.compare_watchers(self.watchers)
        watch_problems += analysis.revision_order(records)
        for p in watch_problems[:30]:
            lines.append(f"WATCH ANOMALY: {p}")
        if len(watch_problems) > 30:
            lines.append(f"WATCH ANOMALY: ... {len(watch_problems) - 30} more")
        if watch_problems:
            kinds_seen = Counter(next((k for k in WATCH_KINDS if k in p), "other") for p in watch_problems)
            lines.append("watch anomalies by kind: " + ", ".join(f"{k}: {n}" for k, n in kinds_seen.most_common()))
        # TTL.
        ttl = self.faults.ttl
        if ttl.ran:
            lines.append(f"ttl across a leader change: key {ttl.key.decode()} ttl {ttl.ttl:g}s, leader "
                         f"{ttl.old_leader} -> {ttl.new_leader}, read absent {ttl.expired_after and round(ttl.expired_after, 2)}s "
                         f"after its put" + ("; " + "; ".join(ttl.notes) if ttl.notes else ""))
        else:
            lines.append("ttl across a leader change: not run (run shorter than 20 s)")
        for a in ttl.anomalies:
            lines.append(f"TTL ANOMALY: {a}")
        # Convergence and lost writes.
        conv_failures = 0
        if not self.converged:
            conv_failures += 1
            lines.extend(f"CONVERGENCE: {n}" for n in self.convergence_notes)
        for i in self.cluster.ids:
            vals = self.finals.get(i)
            if vals is None:
                conv_failures += 1
                lines.append(f"CONVERGENCE: node {i}: no final values")
                continue
            differ = {k: (vals.get(k), self.final_reads[k]) for k in self.keys
                      if k in self.final_reads and vals.get(k) != self.final_reads[k]}
            if differ:
                conv_failures += 1
                lines.append(f"CONVERGENCE: node {i} holds {differ} (node value, final linearizable read)")
        res.lost, lost_details = analysis.lost_writes(records, self.finals, self.keys)
        lines.extend(lost_details[:20])
        lines.append(f"convergence: {'every node at one applied index' if self.converged else 'FAILED'}, "
                     f"{conv_failures} failures; lost acknowledged writes: {res.lost}")
        # A node that exits by itself is counted too: nothing here should crash one.
        res.anomalies = (len(nonlinear) + len(watch_problems) + conv_failures + len(ttl.anomalies)
                         + len(self.faults.crashes))
        # Availability.
        t_a, t_b = self.t_faults
        gap = analysis.longest_write_gap(records, t_a, t_b)
        lines.append(f"longest gap between acknowledged writes: {gap.seconds:.2f}s "
                     f"({gap.seconds / self.et:.1f} election timeouts) from {gap.start - self.t0:.1f}s "
                     f"to {gap.end - self.t0:.1f}s")
        cuts = analysis.leader_cut_gaps(records, self.faults.events, t_b + 60)
        if cuts:
            ev, worst = max(cuts, key=lambda c: c[1].seconds)
            mean = sum(g.seconds for _, g in cuts) / len(cuts)
            lines.append(f"longest gap after a leader was cut off/paused/killed: {worst.seconds:.2f}s "
                         f"({worst.seconds / self.et:.1f} election timeouts) after fault {ev.index} {ev.kind} "
                         f"{ev.detail} {worst.note}; mean over {len(cuts)} such faults {mean:.2f}s "
                         f"({mean / self.et:.1f} election timeouts)")
            for ev, g in cuts:
                stalled = sum(1 for r in records if r.is_write and r.outcome != OK
                              and g.start <= r.invoke <= ev.end)
                lines.append(f"  fault {ev.index} {ev.kind} at {g.start - self.t0:.1f}s (lasted "
                             f"{ev.end - g.start:.1f}s): first write acknowledged {g.seconds:.2f}s later "
                             f"({g.seconds / self.et:.1f} election timeouts); {stalled} writes invoked during it "
                             f"failed or have an unknown outcome {g.note}")
                if g.seconds > 2 * self.et and ev.kind != "kill-all":  # a restart, not a failover
                    lines.extend(analysis.clients_during(records, g))
        else:
            lines.append("longest gap after a leader was cut off/paused/killed: no such fault")
        if res.gave_up:
            lines.append(f"the checker gave up on {res.gave_up} key(s): the verdict for them is unknown")
        return res


async def run_chaos(opts: Options, out: Callable[[str], None] = print) -> Result:
    run = Run(opts, out)
    with trio.fail_after(opts.seconds + 300):
        await run.main()
    res = run.verdict()
    for line in res.lines:
        out(line)
    keep = opts.keep or res.exit_code != 0
    if keep:
        out(f"logs and data kept in {run.workdir}")
    elif not opts.workdir:
        shutil.rmtree(run.workdir, ignore_errors=True)
    out(res.last_line)
    return res

"""The fault schedule of a chaos run, chosen from the seed.

Faults come one at a time, each bounded in time and healed in a ``finally``,
with a heal period in between. A fault that cuts off, pauses or kills the
leader is marked ``leader_cut`` so the report can measure how long writes
stalled after it. One TTL check across a leader change runs once, near the
middle of a run of 20 s or more.
"""

from __future__ import annotations

import datetime
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

import dengine
from dengine import ReadConsistency
from tests.chaos.cluster import ChaosCluster
from tests.chaos.proxy import BLACKHOLE, RESET, UP

__all__ = ["FaultEvent", "FaultRunner", "TTLCheck"]

# kind -> weight
WEIGHTS: dict[str, float] = {
    "isolate-leader": 3,
    "partition": 3,
    "one-way": 2,
    "leader-out": 1,
    "leader-in": 1,
    "flap": 2,
    "delay": 1.5,
    "dup-reorder": 1.5,
    "loss": 1,
    "kill": 2,
    "pause-leader": 2.5,
    "pause-follower": 1,
    "kill-all": 1,
}
# In the planted-bug run every other fault splits the cluster, so stale
# local reads have something to be stale about.
PARTITIONS = ("isolate-leader", "partition")


@dataclass
class FaultEvent:
    index: int
    kind: str
    start: float
    end: float = math.nan
    detail: str = ""
    leader: int | None = None
    leader_cut: bool = False
    cut_at: float = math.nan  # when the fault took effect


@dataclass
class TTLCheck:
    ran: bool = False
    ttl: float = 0.0
    key: bytes = b""
    put_at: float = 0.0
    old_leader: int | None = None
    new_leader: int | None = None
    expired_after: float | None = None
    anomalies: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class FaultRunner:
    def __init__(self, cluster: ChaosCluster, admin: dengine.Client, rng: random.Random, *,
                 election_timeout: float, t0: float, log: Callable[[str], None],
                 status: Callable[[], str], plant_bug: str | None = None) -> None:
        self.cluster = cluster
        self.admin = admin
        self.rng = rng
        self.et = election_timeout
        self.t0 = t0
        self.log = log
        self.status = status
        self.plant_bug = plant_bug
        self.events: list[FaultEvent] = []
        self.ttl = TTLCheck()
        self.crashes: list[str] = []

    def _now(self) -> float:
        return trio.current_time() - self.t0

    # -- the schedule ------------------------------------------------------------

    async def run(self, seconds: float) -> None:
        start = trio.current_time()
        deadline = start + seconds
        ttl_at = start + seconds * self.rng.uniform(0.3, 0.6) if seconds >= 20 else math.inf
        kinds = list(WEIGHTS)
        weights = [WEIGHTS[k] for k in kinds]
        for n in range(10_000):  # bounded by the deadline
            remaining = deadline - trio.current_time()
            if remaining < 1.5:
                break
            if trio.current_time() >= ttl_at and not self.ttl.ran and remaining > 8:
                kind = "ttl-failover"
            elif self.plant_bug and n % 2 == 0:
                kind = self.rng.choice(PARTITIONS)
            else:
                kind = self.rng.choices(kinds, weights)[0]
            duration = min(self.rng.uniform(1.0, 3.5), remaining - 0.5)
            await self.inject(kind, duration)
            heal = self.rng.uniform(1.0, 2.0)
            await trio.sleep(max(0.0, min(heal, deadline - trio.current_time())))
            # The next fault starts on a whole cluster. A node restarted by the
            # last fault (kill, kill-all) can take seconds to start on a loaded
            # machine; a fault that cut the leader then would leave no quorum,
            # and its write gap would measure that start-up, not the failover.
            if not await self.cluster.wait_whole(self.admin, max(0.0, min(10.0, deadline - trio.current_time()))):
                self.log(f"[{self._now():6.1f}s] the cluster is not whole (every node answering, one leading) "
                         "after 10 s: the next fault may leave no quorum")

    async def inject(self, kind: str, duration: float) -> None:
        ev = FaultEvent(len(self.events) + 1, kind, trio.current_time())
        self.events.append(ev)
        try:
            await getattr(self, "_" + kind.replace("-", "_"))(ev, duration)
        finally:
            with trio.CancelScope(shield=True):
                await self.heal_everything()
            ev.end = trio.current_time()

    async def heal_everything(self) -> None:
        """Links up, paused nodes resumed, dead nodes restarted."""
        self.cluster.heal_links()
        for i in list(self.cluster.paused):
            self.cluster.resume(i)
        for i, code in self.cluster.exited().items():
            self.crashes.append(f"node {i} exited by itself with code {code} at {self._now():.1f}s")
            self.log(f"node {i} exited by itself with code {code}; restarting it\n{self.cluster.log_tail(i)}")
            await self.cluster.kill(i)
        for i in self.cluster.ids:
            if i not in self.cluster.procs:
                await self.cluster.start(i)

    def _announce(self, ev: FaultEvent, duration: float, detail: str) -> None:
        ev.detail = detail
        ev.cut_at = trio.current_time()
        # The wall clock too, to find the fault in the servers' logs (--keep).
        wall = datetime.datetime.now().strftime("%H:%M:%S.%f")[:-3]
        self.log(f"[{self._now():6.1f}s] fault {ev.index}: {ev.kind} {detail} for {duration:.1f}s "
                 f"(at {wall}) | {self.status()}")

    async def _leader(self) -> int:
        found = await self.cluster.find_leader(self.admin)
        if found is None:
            found = await self.cluster.wait_leader(self.admin, 2.0)
        if found is None:
            return self.rng.choice(self.cluster.ids)
        return found[0]

    def _mode(self) -> str:
        return self.rng.choice([BLACKHOLE, BLACKHOLE, RESET])

    # -- faults ------------------------------------------------------------------------

    async def _isolate_leader(self, ev: FaultEvent, d: float) -> None:
        leader = await self._leader()
        others = [i for i in self.cluster.ids if i != leader]
        mode = self._mode()
        ev.leader, ev.leader_cut = leader, True
        self._announce(ev, d, f"node {leader} ({mode})")
        self.cluster.cut(self.cluster.links_between({leader}, others), mode)
        await trio.sleep(d)

    async def _partition(self, ev: FaultEvent, d: float) -> None:
        leader = await self._leader()
        ids = list(self.cluster.ids)
        self.rng.shuffle(ids)
        size = (len(ids) - 1) // 2
        if self.rng.random() < 0.5:
            minority = [leader] + [i for i in ids if i != leader][: size - 1]
        else:
            minority = [i for i in ids if i != leader][:size]
        majority = [i for i in ids if i not in minority]
        mode = self._mode()
        ev.leader, ev.leader_cut = leader, leader in minority
        self._announce(ev, d, f"minority {sorted(minority)} | majority {sorted(majority)} (leader {leader}, {mode})")
        self.cluster.cut(self.cluster.links_between(set(minority), set(majority)), mode)
        await trio.sleep(d)

    async def _one_way(self, ev: FaultEvent, d: float) -> None:
        leader = await self._leader()
        others = [i for i in self.cluster.ids if i != leader]
        r = self.rng.random()
        if r < 0.5:
            a, b = leader, self.rng.choice(others)
        elif r < 0.75:
            a, b = self.rng.choice(others), leader
        else:
            a, b = self.rng.sample(self.cluster.ids, 2)
        ev.leader = leader
        self._announce(ev, d, f"cut {a}->{b} only (leader {leader})")
        self.cluster.cut([self.cluster.proxies[(a, b)]], BLACKHOLE)
        await trio.sleep(d)

    async def _leader_out(self, ev: FaultEvent, d: float) -> None:
        """The leader receives but cannot send."""
        leader = await self._leader()
        ev.leader, ev.leader_cut = leader, True
        self._announce(ev, d, f"every link out of node {leader}")
        self.cluster.cut([p for (a, _), p in self.cluster.proxies.items() if a == leader], BLACKHOLE)
        await trio.sleep(d)

    async def _leader_in(self, ev: FaultEvent, d: float) -> None:
        """The leader sends but hears nothing back."""
        leader = await self._leader()
        ev.leader, ev.leader_cut = leader, True
        self._announce(ev, d, f"every link into node {leader}")
        self.cluster.cut([p for (_, b), p in self.cluster.proxies.items() if b == leader], BLACKHOLE)
        await trio.sleep(d)

    async def _flap(self, ev: FaultEvent, d: float) -> None:
        if self.rng.random() < 0.5:
            node = self.rng.choice(self.cluster.ids)
            links = [p for (a, b), p in self.cluster.proxies.items() if node in (a, b)]
            what = f"every link of node {node}"
        else:
            links = self.rng.sample(list(self.cluster.proxies.values()), min(4, len(self.cluster.proxies)))
            what = "links " + ", ".join(p.name for p in links)
        self._announce(ev, d, what)
        end = trio.current_time() + d
        for _ in range(1000):  # bounded by the deadline
            if trio.current_time() >= end:
                break
            for p in links:
                if self.rng.random() < 0.5:
                    p.set_mode(UP if p.mode != UP else self._mode())
            await trio.sleep(min(self.rng.uniform(0.05, 0.4), max(0.0, end - trio.current_time())))

    async def _delay(self, ev: FaultEvent, d: float) -> None:
        delay = self.rng.uniform(0.2, 1.5) * self.et / 4
        jitter = self.rng.uniform(0, 0.5) * delay
        if self.rng.random() < 0.5:
            links = list(self.cluster.proxies.values())
            what = "all links"
        else:
            node = self.rng.choice(self.cluster.ids)
            links = [p for (a, b), p in self.cluster.proxies.items() if node in (a, b)]
            what = f"links of node {node}"
        self._announce(ev, d, f"{what} +{delay * 1000:.0f}ms (jitter {jitter * 1000:.0f}ms)")
        for p in links:
            p.set_impairments(delay=delay, jitter=jitter)
        await trio.sleep(d)

    async def _dup_reorder(self, ev: FaultEvent, d: float) -> None:
        dup, reorder = self.rng.uniform(0.05, 0.25), self.rng.uniform(0.05, 0.25)
        self._announce(ev, d, f"all links: duplicate {dup:.2f}, reorder {reorder:.2f}, delay 2-10ms")
        for p in self.cluster.proxies.values():
            p.set_impairments(delay=0.002, jitter=0.008, duplicate=dup, reorder=reorder)
        await trio.sleep(d)

    async def _loss(self, ev: FaultEvent, d: float) -> None:
        loss = self.rng.uniform(0.05, 0.35)
        self._announce(ev, d, f"all links lose {loss:.2f} of frames")
        for p in self.cluster.proxies.values():
            p.set_impairments(loss=loss)
        await trio.sleep(d)

    async def _kill(self, ev: FaultEvent, d: float) -> None:
        leader = await self._leader()
        node = leader if self.rng.random() < 0.5 else self.rng.choice(self.cluster.ids)
        ev.leader, ev.leader_cut = leader, node == leader
        self._announce(ev, d, f"kill -9 node {node} (leader {leader}), restart after")
        if node in self.cluster.procs:
            await self.cluster.kill(node)
        await trio.sleep(d)
        await self.cluster.start(node)

    async def _pause_leader(self, ev: FaultEvent, d: float) -> None:
        leader = await self._leader()
        d = max(d, 2.5 * self.et)
        ev.leader, ev.leader_cut = leader, True
        self._announce(ev, d, f"SIGSTOP node {leader} ({d / self.et:.1f} election timeouts)")
        if leader in self.cluster.procs:
            self.cluster.pause(leader)
        await trio.sleep(d)

    async def _pause_follower(self, ev: FaultEvent, d: float) -> None:
        leader = await self._leader()
        node = self.rng.choice([i for i in self.cluster.ids if i != leader])
        ev.leader = leader
        self._announce(ev, d, f"SIGSTOP node {node} (leader {leader})")
        if node in self.cluster.procs:
            self.cluster.pause(node)
        await trio.sleep(d)

    async def _kill_all(self, ev: FaultEvent, d: float) -> None:
        leader = await self._leader()
        ev.leader, ev.leader_cut = leader, True
        down = min(d, self.rng.uniform(0.2, 1.5))
        self._announce(ev, down, "kill -9 every node, restart all")
        for i in list(self.cluster.procs):
            await self.cluster.kill(i)
        await trio.sleep(down)
        for i in self.cluster.ids:
            await self.cluster.start(i)

    async def _ttl_failover(self, ev: FaultEvent, d: float) -> None:
        """Put a key with a TTL at the leader, pause that leader until another
        is elected, resume it, and read (linearizably) until the key expires."""
        t = self.ttl
        t.ran = True
        t.ttl = ttl = 3.0
        t.key = key = b"/ttl/k%d" % ev.index
        value = b"ttl-%d" % ev.index
        leader = await self._leader()
        ev.leader, ev.leader_cut = leader, True
        t.old_leader = leader
        self._announce(ev, d, f"put {key.decode()} ttl={ttl:g}s, then SIGSTOP leader {leader} until a new leader")
        t0 = trio.current_time()
        try:
            await self.admin.put(key, value, ttl=ttl, timeout=3)
        except dengine.DengineError as exc:
            t.notes.append(f"ttl check skipped: the put failed ({type(exc).__name__}: {exc})")
            return
        t1 = trio.current_time()
        t.put_at = t0 - self.t0
        if leader in self.cluster.procs:
            self.cluster.pause(leader)
        paused_at = ev.cut_at = trio.current_time()
        new = await self.cluster.wait_leader(self.admin, 6.0, not_in={leader})
        await trio.sleep(max(0.0, paused_at + 2 * self.et - trio.current_time()))
        self.cluster.resume(leader)
        if new is None:
            t.notes.append(f"ttl check: no other leader was elected within 6 s of pausing node {leader}")
        else:
            t.new_leader = new[0]
        slack = 5.0
        deadline = t0 + ttl + slack
        for _ in range(1000):  # bounded by the deadline
            if trio.current_time() >= deadline:
                break
            try:
                got = await self.admin.get(key, consistency=ReadConsistency.LINEARIZABLE, timeout=1.0)
            except dengine.DengineError:
                await trio.sleep(0.05)
                continue
            r1 = trio.current_time()
            if got is None:
                if r1 < t0 + ttl - 0.05:
                    t.anomalies.append(
                        f"ttl: {key.decode()} read as absent {r1 - t0:.2f}s after its put began (ttl {ttl:g}s)")
                t.expired_after = r1 - t0
                break
            if got != value:
                t.anomalies.append(f"ttl: {key.decode()} read {got!r}, never written")
            await trio.sleep(0.1)
        if t.expired_after is None:
            t.anomalies.append(
                f"ttl: {key.decode()} (ttl {ttl:g}s) still present {trio.current_time() - t0:.1f}s after its put")
        self.log(f"[{self._now():6.1f}s] ttl check: leader {leader} -> {t.new_leader}, "
                 f"expired after {t.expired_after if t.expired_after is None else round(t.expired_after, 2)}s "
                 f"(ttl {ttl:g}s) {'; '.join(t.anomalies)}")

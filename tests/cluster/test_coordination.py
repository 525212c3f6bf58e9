"""Locks and leases of a real 3-process cluster under kill -9 and SIGSTOP
of the leader, checked on a history recorded in this process.

While contenders loop over ``Lock(session, b"/locks/job").hold(...)``, the
harness kills -9 the leader (restarting it later on the same data dir), then
pauses the leader with SIGSTOP for longer than an election timeout. After
the run:

* lock: the holders' fencing tokens, in the order they entered, strictly
  increase; no two holds ``[t_enter, t_exit]`` overlap (one trio clock: every
  contender runs in this process); a storage that refuses a token lower than
  the highest it saw never refused one; and some holds began after each fault;
* a lease kept alive (``open_lease``) through every fault was never lost,
  its key is still there and ``lease_time_to_live`` answers on the leader
  of a later term;
* leases never renewed expire -- one in a quiet period, one counting down
  while the leader is killed, one while the leader is paused -- and on every
  member, each watched on its own, their keys' DELETE events carry one
  revision, the same on all members, never earlier than the TTL allows
  (a new leader gives every lease its full TTL again); afterwards the keys
  are gone from every member (EVENTUAL reads there).

Rules of tests/cluster/test_processes.py: free ports on 127.0.0.1, every
process stopped by its PID (the fixture's finally; a paused one is
SIGCONT'ed in a finally), every loop bounded in count and time, the whole
run under one fail_after. Sleeps only let time pass (a hold, time with a
node down or paused); waiting for something is done on watches.

The seed (printed on failure) picks the hold times and the jitter of the
fault schedule; DENGINE_COORD_SEED=<n> replays one.
"""

from __future__ import annotations

import os
import pathlib
import random
import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import pytest
import trio

import dengine
from dengine import WatchEventType
from dengine.concurrency import Election, Lock, Session
from dengine.errors import DengineError, LeaseNotFound, SessionLost
from dengine.keepalive import KeptLease
from tests.cluster.test_processes import Processes

CLUSTER = "proc-test"  # what tests.cluster.test_processes.Processes starts
LOCK = b"/locks/job"
WATCHED = b"/t/"  # every key of the lease checks lives here; each member's watch covers it
KEPT_KEY = b"/t/kept"

SESSION_TTL = 2.0  # contenders' sessions
KEPT_TTL = 2.0  # the lease kept alive through every fault
QUIET_TTL = 1.0  # a lease left to expire with no fault
KILL_TTL = 2.5  # a lease left to expire while the leader is killed
PAUSE_TTL = 2.0  # a lease left to expire while the leader is paused
DOWN = 1.5  # seconds the killed leader stays dead
PAUSE = 1.5  # seconds the leader stays stopped (election timeout: 0.2-0.4 s)
DWELL = 1.5  # seconds of plain lock traffic after each fault


@dataclass
class Hold:
    contender: int
    session: int  # lease id of the holder's session
    token: int
    t_enter: float
    t_exit: float | None = None
    end: str = "released"  # or what ended it

    def __str__(self) -> str:
        exit_ = "still held" if self.t_exit is None else f"{self.t_exit:.4f}"
        return (f"[contender {self.contender} session {self.session:x} token {self.token}: "
                f"{self.t_enter:.4f} -> {exit_} ({self.end})]")


class FencedStore:
    """Storage guarded by fencing tokens: refuses any token lower than the
    highest it has seen."""

    def __init__(self) -> None:
        self.highest = 0
        self.refused: list[tuple[Hold, int]] = []

    def write(self, hold: Hold) -> None:
        if hold.token < self.highest:
            self.refused.append((hold, self.highest))
        else:
            self.highest = hold.token


@dataclass
class Seen:
    type: WatchEventType
    key: bytes
    revision: int
    at: float


class MemberView:
    """What one member's own watch of ``WATCHED`` delivered."""

    def __init__(self, node: int) -> None:
        self.node = node
        self.events: list[Seen] = []
        self.ended: str | None = None
        self._changed = trio.Event()

    def add(self, seen: Seen) -> None:
        self.events.append(seen)
        self._notify()

    def end(self, why: str) -> None:
        self.ended = why
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def wait_until(self, done: Callable[[MemberView], bool], what: str) -> None:
        """Until ``done(self)`` (bounded by the caller's deadline)."""
        while not done(self):
            if self.ended is not None:
                raise AssertionError(f"the watch on node {self.node} ended ({self.ended}) before {what}")
            await self._changed.wait()

    def last_revision(self) -> int:
        return self.events[-1].revision if self.events else 0

    def deletes(self, keys: tuple[bytes, ...]) -> dict[bytes, list[Seen]]:
        return {k: [e for e in self.events if e.key == k and e.type == WatchEventType.DELETE] for k in keys}


@dataclass
class Unkept:
    """A lease granted and never renewed."""

    name: str
    lease_id: int
    ttl: float
    keys: tuple[bytes, ...]
    t_granted: float  # before the grant was sent
    #: (what, when) of the fault during its countdown: it cannot expire
    #: before ``when + ttl`` (a new leader's full TTL).
    fault: tuple[str, float] | None = None


@dataclass
class Run:
    seed: int
    holds: list[Hold] = field(default_factory=list)
    store: FencedStore = field(default_factory=FencedStore)
    faults: list[tuple[str, int, float]] = field(default_factory=list)  # (what, node, when)
    unkept: list[Unkept] = field(default_factory=list)
    sessions: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    #: Events of the lock's keys, from a watch of the harness (diagnostics).
    lock_events: list[Seen] = field(default_factory=list)
    t0: float = 0.0

    def fault_times(self, what: str) -> list[float]:
        return [t for w, _, t in self.faults if w == what]

    def describe(self) -> str:
        lines = [f"seed {self.seed} (DENGINE_COORD_SEED={self.seed} replays it); times are trio seconds",
                 "faults: " + ", ".join(f"{w} node {n} at {t:.3f}" for w, n, t in self.faults),
                 f"holds {len(self.holds)}, sessions per contender {dict(self.sessions)}, "
                 f"errors {dict(self.errors)}"]
        return "\n".join(lines)


@pytest.fixture
async def procs(tmp_path: pathlib.Path) -> AsyncIterator[Processes]:
    p = Processes(tmp_path)
    try:
        for i in sorted(p.clients):
            await p.start(i)
        yield p
    finally:
        with trio.CancelScope(shield=True):
            for i in list(p.procs):
                await p.stop(i)  # SIGKILL by PID (also ends a stopped process) and wait


# -- the cluster -------------------------------------------------------------------


async def find_leader(procs: Processes, among: list[int], exclude: Collection[int] = ()) -> tuple[int, int]:
    """The leader (node, term) as the members ``among`` come to see it, not one
    of ``exclude``; confirmed by the leader's own status. Awaits the leader
    stream; the caller bounds it."""
    async with dengine.open_client([procs.clients[i] for i in among], cluster_id=CLUSTER, timeout=10) as c:
        async with c.watch_leader() as leaders:
            async for info in leaders:
                if info.leader_id is None or info.leader_id in exclude:
                    continue
                status = await c.status(endpoint=procs.clients[info.leader_id])
                if status.role == "leader":
                    return info.leader_id, status.term
    raise AssertionError(f"the leader stream of nodes {among} ended")


async def watch_member(procs: Processes, node: int, view: MemberView, start: int, *,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Record every event of ``WATCHED`` from ``start`` as ``node`` itself
    delivers it (a client with that endpoint only: a resume after a kill
    waits for the restart, within the client's timeout)."""
    async with dengine.open_client([procs.clients[node]], cluster_id=CLUSTER, timeout=30) as c:
        try:
            async with c.open_watch(WATCHED, prefix=True, start_revision=start) as watch:
                task_status.started()
                async for event in watch:
                    if event.type == WatchEventType.PROGRESS:
                        continue
                    if event.type == WatchEventType.CANCELED:
                        view.end(f"CANCELED, error {event.error}, at revision {event.revision}")
                        return
                    assert watch.endpoint == procs.clients[node]
                    view.add(Seen(event.type, event.key, event.revision, trio.current_time()))
        except DengineError as exc:
            view.end(f"{type(exc).__name__}: {exc}")
        view.end(view.ended or "the watch ended")


async def watch_lock_keys(client: dengine.Client, run: Run, start: int, *,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Record the lock's keys' PUTs and DELETEs (to explain a lock problem)."""
    try:
        async with client.open_watch(LOCK + b"/", prefix=True, start_revision=start) as watch:
            task_status.started()
            async for event in watch:
                if event.type in (WatchEventType.PUT, WatchEventType.DELETE):
                    run.lock_events.append(Seen(event.type, event.key, event.revision, trio.current_time()))
    except DengineError:
        pass  # diagnostics only


async def caught_up(client: dengine.Client, views: dict[int, MemberView], nodes: list[int], name: str) -> int:
    """Write a marker; wait until the watches of ``nodes`` delivered it."""
    revision = await client.put(WATCHED + b"marker/" + name.encode(), b"")
    for node in nodes:
        view = views[node]
        await view.wait_until(lambda v: v.last_revision() >= revision, f"marker {name} (revision {revision})")
    return revision


async def grant_unkept(client: dengine.Client, run: Run, name: str, ttl: float) -> Unkept:
    t = trio.current_time()
    lease = await client.grant_lease(ttl)
    keys = tuple(WATCHED + b"exp/" + name.encode() + b"/%d" % i for i in range(3))
    for key in keys:
        await client.put(key, name.encode(), lease=lease.id)
    unkept = Unkept(name, lease.id, lease.ttl, keys, t)
    run.unkept.append(unkept)
    return unkept


def all_deleted(view: MemberView, unkept: Unkept) -> bool:
    """Whether the member's watch delivered a DELETE of each of the lease's keys."""
    return all(view.deletes(unkept.keys).values())


# -- the lock contenders ------------------------------------------------------------


async def contender(idx: int, procs: Processes, run: Run, stop: trio.Event, done: Callable[[], None]) -> None:
    """Loop: a session, then holds of the lock on it, until ``stop``. A
    lost session or any cluster error: a new session (bounded counts)."""
    rng = random.Random(run.seed * 1000 + idx)
    eps = procs.endpoints()
    eps = eps[idx % len(eps):] + eps[: idx % len(eps)]
    try:
        async with dengine.open_client(eps, cluster_id=CLUSTER, timeout=5) as client:
            for _ in range(200):  # sessions
                if stop.is_set():
                    return
                run.sessions[idx] += 1
                try:
                    async with Session(client, ttl=SESSION_TTL) as session:
                        for _ in range(2000):  # holds on this session
                            if stop.is_set():
                                return
                            lock = Lock(session, LOCK)
                            async with lock.hold(cancel_on_loss=True):
                                hold = Hold(idx, session.lease_id, lock.fencing_token, trio.current_time())
                                run.holds.append(hold)
                                try:
                                    run.store.write(hold)
                                    await trio.sleep(rng.uniform(0.005, 0.06))
                                    run.store.write(hold)
                                except BaseException as exc:
                                    hold.end = type(exc).__name__
                                    raise
                                finally:
                                    hold.t_exit = trio.current_time()
                except SessionLost:
                    run.errors["SessionLost"] += 1
                except DengineError as exc:
                    run.errors[type(exc).__name__] += 1
    finally:
        done()


# -- the checks ------------------------------------------------------------------------


def check_lock_history(run: Run) -> list[str]:
    """Holds in order of entry: tokens strictly increase, no two overlap,
    every hold ended, the fenced store refused nothing."""
    problems: list[str] = []
    holds = sorted(run.holds, key=lambda h: h.t_enter)
    for h in holds:
        if h.t_exit is None:
            problems.append(f"hold never ended: {h}")
    for prev, nxt in zip(holds, holds[1:]):
        if nxt.token == prev.token and nxt.session != prev.session:
            created = [e.key.decode() for e in run.lock_events if e.type == WatchEventType.PUT
                       and e.revision == nxt.token]
            problems.append(f"one fencing token for two sessions: {prev} then {nxt} -- both keys have "
                            f"create_revision {nxt.token}, neither is older (one Raft entry created "
                            f"{created or 'them'})")
        elif nxt.token == prev.token:
            key = LOCK + b"/%016x" % nxt.session
            history = [(e.type.name, e.revision) for e in run.lock_events if e.key == key and e.revision >= nxt.token]
            problems.append(f"fencing token did not increase: {prev} then {nxt} -- the same session took the lock "
                            f"again with the same key: the release in between did not delete it "
                            f"(events of {key.decode()} from revision {nxt.token}: {history[:3]})")
        elif nxt.token < prev.token:
            problems.append(f"fencing token went down: {prev} then {nxt}")
    latest: Hold | None = None  # the hold with the latest exit so far
    for h in holds:
        if latest is not None and latest.t_exit is not None and h.t_enter < latest.t_exit:
            problems.append(f"two holders at once: {latest} overlaps {h} by {latest.t_exit - h.t_enter:.4f} s")
        if h.t_exit is not None and (latest is None or latest.t_exit is None or h.t_exit > latest.t_exit):
            latest = h
    for hold, highest in run.store.refused:
        problems.append(f"the fenced store refused {hold}: it had seen token {highest}")
    return problems


def check_faults_covered(run: Run) -> list[str]:
    """The run proves something: holds began while the killed leader was
    down, and after each fault."""
    problems: list[str] = []
    for what in ("kill -9", "SIGCONT"):
        for t in run.fault_times(what):
            if not any(h.t_enter > t for h in run.holds):
                problems.append(f"no hold began after {what} at {t:.3f}")
    for t_kill, t_restart in zip(run.fault_times("kill -9"), run.fault_times("restart")):
        if not any(t_kill < h.t_enter < t_restart for h in run.holds):
            problems.append(f"no hold began while the killed leader was down ({t_kill:.3f}-{t_restart:.3f})")
    return problems


def check_unkept(run: Run, views: dict[int, MemberView], gone: dict[int, dict[str, object]]) -> list[str]:
    """Each lease left alone expired: on every member one DELETE per key,
    all at one revision, the same on every member; not before its TTL
    (counted from the fault during its countdown: a new leader's full TTL);
    its keys gone from every member's local state."""
    problems: list[str] = []
    nodes = sorted(views)
    if {u.name.rstrip("0123456789") for u in run.unkept} != {"quiet", "kill", "pause"}:
        problems.append(f"not every case of unkept lease ran: {[u.name for u in run.unkept]}")
    for u in run.unkept:
        what = f"lease {u.name} (id {u.lease_id:x}, ttl {u.ttl:g}, fault {u.fault})"
        per_node: dict[int, object] = {}
        for n in nodes:
            dels = views[n].deletes(u.keys)
            per_node[n] = {k.decode(): [e.revision for e in d] for k, d in dels.items()}
            if any(len(d) != 1 for d in dels.values()):
                problems.append(f"{what}: node {n} saw DELETEs {per_node[n]} (one per key expected)")
        revisions = {e.revision for n in nodes for d in views[n].deletes(u.keys).values() for e in d}
        if len(revisions) != 1:
            problems.append(f"{what}: DELETE revisions differ (per member, per key): {per_node}")
        seen = [e.at for n in nodes for d in views[n].deletes(u.keys).values() for e in d]
        floor = (u.t_granted if u.fault is None else u.fault[1]) + u.ttl
        if seen and min(seen) < floor:
            problems.append(f"{what}: expired at {min(seen):.3f}, before {floor:.3f} (granted {u.t_granted:.3f})")
        for n in nodes:
            if gone[n][u.name] != [None] * len(u.keys):
                problems.append(f"{what}: node {n} still reads {gone[n][u.name]} for its keys")
    for n in nodes:  # a control: these reads see deletes (the kept lease's, revoked when its block ended)
        if gone[n]["kept"] is not None:
            problems.append(f"node {n} still reads the kept lease's key after the lease was revoked: {gone[n]['kept']}")
    return problems


def context_of(run: Run, problems: list[str], around: int = 3) -> str:
    """The holds around the first offending one, in order of entry."""
    holds = sorted(run.holds, key=lambda h: h.t_enter)
    text = "\n".join(problems[:20])
    for i, h in enumerate(holds):
        if str(h) in text:
            return "\n".join(str(x) for x in holds[max(0, i - around): i + around + 1])
    return "\n".join(str(x) for x in holds[-2 * around:])


# -- the run --------------------------------------------------------------------------


async def coordination_run(procs: Processes, *, seed: int, rounds: int, contenders: int, deadline: float) -> None:
    run = Run(seed)
    rng = random.Random(seed)
    nodes = sorted(procs.clients)
    views = {n: MemberView(n) for n in nodes}
    try:
        with trio.fail_after(deadline):
            async with dengine.open_client(procs.endpoints(), cluster_id=CLUSTER, timeout=20) as client:
                start = await client.put(WATCHED + b"start", b"")  # waits (bounded) for the processes and a leader
                run.t0 = trio.current_time()
                async with trio.open_nursery() as watchers:
                    for n in nodes:
                        await watchers.start(watch_member, procs, n, views[n], start)
                    await watchers.start(watch_lock_keys, client, run, start)
                    async with client.open_lease(KEPT_TTL) as kept:
                        await client.put(KEPT_KEY, b"kept", lease=kept.id)
                        _, grant_term = await find_leader(procs, nodes)
                        await lock_run_with_faults(procs, client, run, views, rng, rounds=rounds,
                                                   contenders=contenders)
                        kept_problems = await check_kept(procs, client, views, kept, grant_term)
                    # Every lease left alone expires, on every member.
                    with trio.fail_after(20):
                        for unkept in run.unkept:
                            for n in nodes:
                                await views[n].wait_until(lambda v: all_deleted(v, unkept),
                                                          f"the keys of lease {unkept.name} were deleted")
                    await caught_up(client, views, nodes, "end")
                    gone, lease_problems = await eventual_reads(procs, run, nodes)
                    watchers.cancel_scope.cancel()
    except BaseException:
        print(run.describe())
        print(procs.log_tail())
        raise

    sections = {
        "lock": check_lock_history(run),
        "coverage": check_faults_covered(run),
        "kept lease": kept_problems,
        "unkept leases": check_unkept(run, views, gone) + lease_problems,
    }
    report = [f"{name}: {len(found)} problems\n  " + "\n  ".join(found[:15])
              for name, found in sections.items() if found]
    if sections["lock"]:
        report.append("-- holds around the first lock problem --\n" + context_of(run, sections["lock"]))
    assert not report, "\n".join(report) + "\n" + run.describe()


async def lock_run_with_faults(procs: Processes, client: dengine.Client, run: Run, views: dict[int, MemberView],
                               rng: random.Random, *, rounds: int, contenders: int) -> None:
    nodes = sorted(procs.clients)
    stop = trio.Event()
    left = contenders
    all_done = trio.Event()

    def done() -> None:
        nonlocal left
        left -= 1
        if left == 0:
            all_done.set()

    async with trio.open_nursery() as workers:
        for i in range(contenders):
            workers.start_soon(contender, i, procs, run, stop, done)
        try:
            # A lease left to expire with no fault.
            quiet = await grant_unkept(client, run, "quiet", QUIET_TTL)
            with trio.fail_after(10):
                for n in nodes:
                    await views[n].wait_until(lambda v: all_deleted(v, quiet), "the quiet lease expired")
            await trio.sleep(rng.uniform(0.5, 1.0))  # lock traffic before any fault
            for r in range(rounds):
                await kill_round(procs, client, run, views, rng, r)
                await pause_round(procs, client, run, views, rng, r)
        finally:
            stop.set()
        with trio.move_on_after(15):  # the contenders finish their holds and close their sessions
            await all_done.wait()
        workers.cancel_scope.cancel()
    assert all_done.is_set(), f"{left} contenders did not stop within 15 s\n{run.describe()}"


async def kill_round(procs: Processes, client: dengine.Client, run: Run, views: dict[int, MemberView],
                     rng: random.Random, r: int) -> None:
    nodes = sorted(procs.clients)
    unkept = await grant_unkept(client, run, f"kill{r}", KILL_TTL)
    with trio.fail_after(10):
        leader, _ = await find_leader(procs, nodes)
    t = trio.current_time()
    await procs.stop(leader)  # SIGKILL by PID
    run.faults.append(("kill -9", leader, t))
    unkept.fault = ("kill -9", t)
    others = [n for n in nodes if n != leader]
    with trio.fail_after(10):
        new, _ = await find_leader(procs, others, exclude={leader})
    run.faults.append(("new leader", new, trio.current_time()))
    await trio.sleep_until(t + DOWN + rng.uniform(0, 0.5))
    await procs.start(leader)
    run.faults.append(("restart", leader, trio.current_time()))
    with trio.fail_after(20):
        await caught_up(client, views, nodes, f"restarted{r}")
    await trio.sleep(DWELL * rng.uniform(0.8, 1.2))


async def pause_round(procs: Processes, client: dengine.Client, run: Run, views: dict[int, MemberView],
                      rng: random.Random, r: int) -> None:
    nodes = sorted(procs.clients)
    unkept = await grant_unkept(client, run, f"pause{r}", PAUSE_TTL)
    with trio.fail_after(10):
        leader, _ = await find_leader(procs, nodes)
    proc = procs.procs[leader]
    t = trio.current_time()
    proc.send_signal(signal.SIGSTOP)
    try:
        run.faults.append(("SIGSTOP", leader, t))
        unkept.fault = ("SIGSTOP", t)
        with trio.fail_after(10):
            new, _ = await find_leader(procs, [n for n in nodes if n != leader], exclude={leader})
        run.faults.append(("new leader", new, trio.current_time()))
        await trio.sleep_until(t + PAUSE + rng.uniform(0, 0.5))
    finally:
        proc.send_signal(signal.SIGCONT)
    run.faults.append(("SIGCONT", leader, trio.current_time()))
    with trio.fail_after(20):
        await caught_up(client, views, nodes, f"resumed{r}")
    await trio.sleep(DWELL * rng.uniform(0.8, 1.2))


async def check_kept(procs: Processes, client: dengine.Client, views: dict[int, MemberView], kept: KeptLease,
                     grant_term: int) -> list[str]:
    """While the kept lease is still open: it was never lost, no member
    deleted its key, and the leader of a later term knows it and its key."""
    nodes = sorted(procs.clients)
    leader, term = await find_leader(procs, nodes)
    with trio.fail_after(10):
        await caught_up(client, views, nodes, "kept")
    status = await client.lease_time_to_live(kept.id, keys=True)
    kv = await client.get_kv(KEPT_KEY)
    listed = kept.id in {lease.id for lease in await client.leases()}
    about = (f"kept lease {kept.id:x} (ttl {kept.ttl:g}, {kept.renewals} renewals, granted in term {grant_term}; "
             f"now node {leader} leads in term {term}): time_to_live {status}, key {kv}, listed {listed}")
    problems: list[str] = []
    if kept.lost.is_set():
        problems.append(f"lost: {about}")
    for n in nodes:
        deleted = views[n].deletes((KEPT_KEY,))[KEPT_KEY]
        if deleted:
            problems.append(f"node {n} deleted its key while it was kept alive: {deleted}; {about}")
    if term <= grant_term:
        problems.append(f"no leader change while it was kept: {about}")
    if status.keys != (KEPT_KEY,) or not 0 < status.remaining <= status.granted_ttl or not listed:
        problems.append(f"the leader's view is wrong: {about}")
    if kv is None or kv.value != b"kept" or kv.lease != kept.id:
        problems.append(f"its key is wrong: {about}")
    return problems


async def eventual_reads(procs: Processes, run: Run, nodes: list[int]) -> tuple[dict[int, dict[str, object]], list[str]]:
    """On each member, read locally (EVENTUAL): the unkept leases' keys, and
    the lease of the kept key (revoked when its block ended: a control that
    these reads see deletes). Also: the leader lists none of the unkept
    leases and knows none of them."""
    out: dict[int, dict[str, object]] = {}
    problems: list[str] = []
    for n in nodes:
        async with dengine.open_client([procs.clients[n]], cluster_id=CLUSTER, timeout=10) as c:
            got: dict[str, object] = {}
            for unkept in run.unkept:
                got[unkept.name] = [await c.get(k, consistency="eventual") for k in unkept.keys]
            kv = await c.get_kv(KEPT_KEY, consistency="eventual")
            got["kept"] = None if kv is None else kv.lease
            out[n] = got
    async with dengine.open_client(procs.endpoints(), cluster_id=CLUSTER, timeout=10) as c:
        live = {lease.id for lease in await c.leases()}
        for unkept in run.unkept:
            if unkept.lease_id in live:
                problems.append(f"lease {unkept.name} (id {unkept.lease_id:x}) is still listed by leases()")
            try:
                status = await c.lease_time_to_live(unkept.lease_id)
            except LeaseNotFound:
                continue
            problems.append(f"lease {unkept.name} (id {unkept.lease_id:x}) still has a time to live: {status}")
    return out, problems


def _seed() -> int:
    env = os.environ.get("DENGINE_COORD_SEED")
    return int(env) if env else random.randrange(2**31)


async def test_locks_and_leases_under_kill_and_pause_of_the_leader(procs: Processes) -> None:
    await coordination_run(procs, seed=_seed(), rounds=1, contenders=4, deadline=75)


@pytest.mark.slow
@pytest.mark.parametrize("contenders", [4, 8])
async def test_locks_and_leases_soak(procs: Processes, contenders: int) -> None:
    await coordination_run(procs, seed=_seed(), rounds=5, contenders=contenders, deadline=300)


@pytest.mark.slow  # the default run covers it in-process: tests/conformance/test_coordination.py, test_concurrency.py
@pytest.mark.parametrize("recipe", ["lock", "election"])
async def test_contenders_queued_by_one_raft_entry_never_hold_together(procs: Processes, recipe: str) -> None:
    """Lock and Election order their queue by create_revision, and commands
    batched into one Raft entry share its revision (docs/kv.md). Contenders
    whose enqueue transactions reach the leader together (here: six started
    at once on one client) must still hold one at a time, with distinct
    fencing tokens. No fault is needed: this is the plain path."""
    name = b"/" + recipe.encode() + b"s/together"
    problems: list[str] = []
    with trio.fail_after(40):
        async with dengine.open_client(procs.endpoints(), cluster_id=CLUSTER, timeout=20) as client:
            await client.put(b"/warm", b"")  # waits (bounded) for the processes and a leader
            async with AsyncExitStack() as stack:
                sessions = [await stack.enter_async_context(Session(client, ttl=5)) for _ in range(6)]
                for attempt in range(3):  # bounded rounds; each starts every contender at once
                    holds: list[Hold] = []
                    queue: dict[str, int] = {}

                    async def hold_once(i: int, session: Session, holds: list[Hold] = holds,
                                        queue: dict[str, int] = queue) -> None:
                        if recipe == "lock":
                            lock = Lock(session, name)
                            await lock.acquire()
                            token = lock.fencing_token
                        else:
                            election = Election(session, name)
                            await election.campaign(b"candidate %d" % i)
                            token = election.revision
                        try:
                            hold = Hold(i, session.lease_id, token, trio.current_time())
                            holds.append(hold)
                            if len(holds) == 1:  # the first holder: the queue as it is now
                                scan = await client.scan_prefix(name + b"/")
                                queue.update({kv.key.decode(): kv.create_revision for kv in scan.entries})
                            await trio.sleep(0.05)
                            hold.t_exit = trio.current_time()
                        finally:
                            await (lock.release() if recipe == "lock" else election.resign())

                    async with trio.open_nursery() as nursery:
                        for i, session in enumerate(sessions):
                            nursery.start_soon(hold_once, i, session)
                    found = check_lock_history(Run(seed=0, holds=holds))
                    if found:
                        problems.append(f"round {attempt}: {recipe} queue (key: create_revision) {queue}")
                        problems += found
    assert not problems, "\n".join(problems[:20])

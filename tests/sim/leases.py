"""Leases in the deterministic simulator, across leader changes.

:class:`LeaseSimulation` is the harness's :class:`~tests.sim.harness.Simulation`
(same network, disk, crash, partition, membership, transfer and clock-drift
faults, same Raft checkers) whose nodes run the real state machine and the
real lessor, wired as ``dengine/runtime/node.py`` wires them:

* committed entries apply into a :class:`~dengine.kv.store.KVStore`
  (snapshots carry its image; a restart rebuilds it from snapshot + log);
  writes are stamped by ``encode_batch`` with the proposer's wall clock;
* the store's ``lease_observer`` feeds ``Lessor.observe``; the driver's
  ``on_leader_changed`` promotes / demotes the :class:`~dengine.kv.lessor.Lessor`
  (``Node._on_leader_changed``); after every tick a leader proposes a
  ``LeaseRevoke`` for each ``lessor.expired(...)`` with a waiter that calls
  ``revoke_failed`` on failure (``Node._sweep_leases``); every clock the
  lessor sees is the node's own drifting clock;
* a keep-alive is ``EmbeddedClient.keep_alive``: ``since`` = the node's clock,
  refuse if not leader, a ReadIndex (retried on NotLeader / Unavailable until
  the deadline), wait until applied >= that index, NotFound if the store lacks
  the lease, then ``renew(lease, since)`` if still leader and lessor primary.
  Each continuation (after the read, after the apply wait) runs at the end
  of the step its waiter fired in, as an awaiting task resumes later.

Not simulated: TTL keys and their ExpireKeys sweeper (no client write here
carries a ttl_ms), the member table (membership entries apply as no-ops).

One client grants leases (TTLs of a few election timeouts), attaches keys to
them, keeps some alive from whichever node it believes leads (following
NotLeader hints; keep-alives are sent on a timer and may overlap, as etcd's
stream does), lets others lapse and revokes some itself.

Checks (:class:`LeaseChecker`; a failure names the seed and step):

1. Agreement: every replica that applied index ``i`` holds the same store
   (lease table, keys, values, revisions, attachments, log time) and emitted
   the same events there; a revoke deleted exactly the keys attached to the
   lease, at the revoke's revision, the same keys on every replica.
2. Safety for holders: no revoke of a lease the client did not itself ask to
   revoke commits before the lower bound its grant and keep-alives promised
   (see :meth:`LeaseChecker.promise_bound` for the drift arithmetic), and no
   keep-alive answered after such a revoke promises beyond its commit.
   Also, after every step: a node's lessor is primary iff its driver
   reports it leads (the wiring itself).
3. Liveness: once the network heals and the client stops keeping leases
   alive, every lease is revoked on every live member within a bound.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import attrs

from dengine.api import WatchEventType
from dengine.errors import DengineError, EngineStopped, LeaseNotFound, NotLeader, Unavailable
from dengine.kv.commands import (
    CompareAndSwap,
    Delete,
    LeaseGrant,
    LeaseRevoke,
    Put,
    command_size,
    decode_batch,
    encode_batch,
)
from dengine.kv.lessor import Lessor
from dengine.kv.snapshot import encode_image, restore, unwrap_snapshot_data, wrap_snapshot_data
from dengine.kv.store import ApplyResult, CommandError, KVStore
from dengine.raft.messages import EntryType, Role
from tests.sim.checkers import Violation
from tests.sim.harness import (
    SimConfig,
    SimNode,
    Simulation,
    SimWaiter,
    parse_snapshot_data,
    snapshot_data,
)

# One tick of a node's clock is 100 ms (the runtime's default tick_interval):
# the lessor and the write stamps see a node's local_time() * TICK_SECONDS.
TICK_SECONDS = 0.1
# Float noise allowance when comparing global times.
EPS = 1e-9
# The sweeper's batch limit (NodeOptions.ttl_sweep_limit).
SWEEP_LIMIT = 1000


@attrs.frozen
class LeaseSimConfig(SimConfig):
    # Lease TTLs the client grants, in ticks (an election timeout is
    # election_tick..2*election_tick ticks; the engine's minimum is 1.5).
    ttl_ticks: tuple[int, ...] = (20, 30, 45, 60)
    max_leases: int = 6
    keys: int = 12
    # How the client uses a lease it was granted: keep it alive for a while
    # (then let it lapse), let it lapse at once, or revoke it itself.
    keep_share: float = 0.6
    revoke_share: float = 0.15
    keep_for_ticks: tuple[int, int] = (40, 300)
    # Keep-alives every ttl * U(a, b); overlapping ones are allowed.
    keepalive_every: tuple[float, float] = (0.2, 0.4)


@attrs.define
class NodeApp:
    """One incarnation's state machine and lessor."""

    store: KVStore
    lessor: Lessor


@attrs.define
class ClientLease:
    lease_id: int
    ttl: float  # seconds
    mode: str  # "keep" | "lapse" | "revoke"
    keep_until: float  # global seconds; the client keeps it alive until then
    act_at: float  # next keep-alive (keep) or the revoke (revoke), global seconds
    gone: bool = False


@attrs.define
class KeepAlive:
    """One keep-alive call in flight on one node (EmbeddedClient.keep_alive)."""

    lease_id: int
    node: SimNode
    app: NodeApp
    since: float  # the node's clock, seconds
    t0: float  # global seconds when since was taken
    deadline: float  # the node's clock, in ticks (the driver's unit)


class RevokeWaiter:
    """``dengine.runtime.node._RevokeWaiter``: nobody awaits the revoke of an
    expired lease; if it fails, the lessor proposes it again next sweep."""

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


def store_state(store: KVStore) -> tuple[Any, ...]:
    """What every replica must agree on after applying the same index."""
    img = store.freeze()
    keys = tuple((k, img.values[k], img.revisions[k], img.key_lease.get(k, 0), img.expire_at.get(k)) for k in img.keys)
    return (img.applied_index, img.clock_ms, tuple(sorted(img.leases.items())), img.next_lease, keys)


def store_data(node: SimNode, store: KVStore) -> bytes:
    return snapshot_data(node.applied, node.digest) + wrap_snapshot_data(encode_image(store.freeze()))


def store_from_data(data: bytes) -> KVStore:
    return restore(unwrap_snapshot_data(data[16:], source="simulated snapshot"))


class LeaseChecker:
    """Checks 1-3 of the module docstring, plus what the tests count."""

    def __init__(self, sim: LeaseSimulation) -> None:
        self.sim = sim
        # Clocks run at most (1 + drift) times as fast as real time.
        self.drift = sim.max_drift
        self.commit_upto = 0
        self.commit_time: dict[int, float] = {}  # index -> global seconds of its first commit anywhere
        self.state_at: dict[int, tuple[tuple[Any, ...], int]] = {}  # index -> (state, node that applied first)
        self.events_at: dict[int, tuple[Any, ...]] = {}
        self.revoke_keys: dict[int, tuple[int, frozenset[bytes], int]] = {}  # lease -> (index, keys, node)
        self.checked_index: set[int] = set()
        # Lower bounds (global seconds) before which no revoke of a lease may commit, with why.
        self.bound: dict[int, tuple[float, str]] = {}
        self.client_revoke_asked: dict[int, float] = {}  # lease -> global seconds of the first request
        self.revoked: dict[int, tuple[int, float, bool]] = {}  # lease -> (index, commit time, by the client)
        # Counts.
        self.grants = 0
        self.keepalives_answered = 0
        self.keepalive_terms: dict[int, set[int]] = {}  # lease -> terms whose leader answered a keep-alive
        self.expiry_revokes = 0
        self.client_revokes = 0
        self.lost: set[int] = set()  # revoked by expiry while the client was still keeping it alive
        self.min_slack: float | None = None  # smallest commit time - bound of an expiry revoke
        self.liveness_revoked = 0

    def fail(self, what: str) -> None:
        sim = self.sim
        raise Violation(f"seed {sim.seed} step {sim.step_count} (t={sim.now_s:.2f}s): {what}")

    # -- time ------------------------------------------------------------------

    def promise_bound(self, t0: float, ttl: float) -> float:
        """The earliest global time a revoke may commit after a lessor was
        told at global time ``t0`` that the lease lives ``ttl`` seconds.

        A node's clock is ``offset + rate * t`` with ``|rate - 1| <= drift``
        (``drift = SimConfig.drift_factor * RaftConfig.max_clock_drift``: the
        harness draws ``rate`` uniformly in that band, a new one per restart;
        a lessor never outlives its incarnation). Every deadline any lessor
        holds for the lease is ``local(t_set) + ttl`` for some ``t_set >= t0``:
        the answering leader's renew (``since`` was read at ``t0``), a later
        leader's promote (it won its election after a quorum acknowledged the
        keep-alive's ReadIndex round, which was sent after ``t0``), a grant
        applied later. The sweeper proposes the revoke once its clock reads
        the deadline, i.e. at ``t`` with ``rate * (t - t_set) >= ttl``, so
        ``t >= t0 + ttl / (1 + drift)``; the commit comes later still. The
        same holds for the grant with ``t0`` = the grant's commit time: no
        lessor knows a lease before it applied the grant.

        (The grant's *acknowledgement* time would not do: a follower may have
        applied the grant and been elected before the old leader applied it
        and answered the client.)"""
        return t0 + ttl / (1 + self.drift)

    def check_step(self) -> None:
        top = self.commit_upto
        for node in self.sim.live():
            top = max(top, node.raw.core.log.committed)
            if self.sim.apps[node.id].lessor.primary != (node.driver.role is Role.LEADER):
                self.fail(f"node {node.id}: lessor primary={self.sim.apps[node.id].lessor.primary} "
                          f"but the driver reports {node.driver.role.name}")
        now = self.sim.now_s
        for index in range(self.commit_upto + 1, top + 1):
            self.commit_time[index] = now
        self.commit_upto = top

    def committed_at(self, index: int) -> float:
        # Applied in this step before check_step ran: committed in this step.
        return self.commit_time.get(index, self.sim.now_s)

    def _raise_bound(self, lease_id: int, bound: float, why: str) -> None:
        old = self.bound.get(lease_id)
        if old is None or bound > old[0]:
            self.bound[lease_id] = (bound, why)

    # -- events from the simulation ---------------------------------------------

    def on_keepalive_answered(self, ka: KeepAlive, ttl: float, term: int) -> None:
        self.keepalives_answered += 1
        self.keepalive_terms.setdefault(ka.lease_id, set()).add(term)
        bound = self.promise_bound(ka.t0, ttl)
        why = f"keep-alive answered by node {ka.node.id} in term {term}: since taken at t={ka.t0:.2f}s, remaining {ttl:g}s"
        revoked = self.revoked.get(ka.lease_id)
        if revoked is not None and not revoked[2] and revoked[1] + EPS < bound:
            # A deposed leader may still answer (its ReadIndex acks were in
            # flight) after a newer leader revoked the lease -- but only once
            # the promise has run out: the newer leader counted from later.
            self.fail(f"lease {ka.lease_id} was revoked by expiry at index {revoked[0]}, committed at "
                      f"t={revoked[1]:.3f}s, yet a {why} promised it until t={bound:.3f}s")
        self._raise_bound(ka.lease_id, bound, why)

    def on_client_revoke(self, lease_id: int) -> None:
        self.client_revoke_asked.setdefault(lease_id, self.sim.now_s)

    def on_apply(self, node: SimNode, index: int, store: KVStore, result: ApplyResult | None,
                 before: dict[int, set[bytes]], touched: set[bytes], revokes: list[tuple[int, bool]],
                 grants: list[tuple[int, int]]) -> None:
        """``node`` applied ``index``: ``before`` are the keys attached to each
        lease the entry revokes, as they were before it; ``touched`` the keys
        its other commands name; ``revokes`` (lease, succeeded); ``grants``
        (lease, ttl_ms) that succeeded."""
        state = store_state(store)
        seen = self.state_at.get(index)
        if seen is None:
            self.state_at[index] = (state, node.id)
        elif seen[0] != state:
            self.fail(f"agreement: node {node.id} holds after index {index}:\n  {state}\n"
                      f"but node {seen[1]} held:\n  {seen[0]}")
        if result is not None:
            events = tuple((e.type.name, e.key, e.value, e.revision) for e in result.events)
            seen_events = self.events_at.setdefault(index, events)
            if seen_events != events:
                self.fail(f"agreement: node {node.id} emitted {events} at index {index}, elsewhere {seen_events}")
            deleted = {e.key for e in result.events if e.type is WatchEventType.DELETE and e.revision == index}
        else:
            deleted = set()
        for lease_id, ok in revokes:
            if not ok:
                continue
            attached = before.get(lease_id, set())
            missing = (attached - touched) - deleted
            if missing:
                self.fail(f"node {node.id}: the revoke of lease {lease_id} at index {index} left keys "
                          f"{sorted(missing)} that were attached to it")
            if store.lease_ttl_ms(lease_id) is not None or store.lease_keys(lease_id):
                self.fail(f"node {node.id}: lease {lease_id} or keys attached to it survive its revoke at {index}")
            gone = frozenset(attached & deleted)
            first = self.revoke_keys.setdefault(lease_id, (index, gone, node.id))
            if first[:2] != (index, gone):
                self.fail(f"agreement: node {node.id}: the revoke of lease {lease_id} deleted {sorted(gone)} at "
                          f"revision {index}; node {first[2]} deleted {sorted(first[1])} at revision {first[0]}")
        if index in self.checked_index:
            return
        self.checked_index.add(index)
        at = self.committed_at(index)
        for lease_id, ttl_ms in grants:
            self.grants += 1
            self._raise_bound(lease_id, self.promise_bound(at, ttl_ms / 1000),
                              f"granted with ttl {ttl_ms / 1000:g}s at index {index}, committed at t={at:.2f}s")
        for lease_id, ok in revokes:
            if ok:
                self._on_revoke_committed(lease_id, index, at)

    def _on_revoke_committed(self, lease_id: int, index: int, at: float) -> None:
        asked = self.client_revoke_asked.get(lease_id)
        by_client = asked is not None and asked <= at
        self.revoked[lease_id] = (index, at, by_client)
        if by_client:
            self.client_revokes += 1
            return
        self.expiry_revokes += 1
        cl = self.sim.client_leases.get(lease_id)
        if cl is not None and at < cl.keep_until:
            self.lost.add(lease_id)
        bound = self.bound.get(lease_id)
        if bound is None:
            return  # a grant whose entry this checker never saw applied (cannot happen: apply is in log order)
        slack = at - bound[0]
        if self.min_slack is None or slack < self.min_slack:
            self.min_slack = slack
        if at + EPS < bound[0]:
            self.fail(
                f"lease {lease_id} was revoked by expiry at index {index}, committed at t={at:.3f}s, before "
                f"t={bound[0]:.3f}s promised by its {bound[1]} (drift bound {self.drift:g})"
            )

    def on_snapshot(self, node: SimNode, store: KVStore) -> None:
        index = store.applied_index
        seen = self.state_at.get(index)
        state = store_state(store)
        if seen is not None and seen[0] != state:
            self.fail(f"agreement: node {node.id} installed a snapshot at {index} holding\n  {state}\n"
                      f"but node {seen[1]} held\n  {seen[0]}")

    # -- end of run -------------------------------------------------------------

    def check_leases_expire(self, max_ticks: int) -> None:
        """Liveness: with the network healed and nobody keeping leases alive,
        every lease is revoked on every live member within ``max_ticks``."""
        sim = self.sim
        sim.keepalives_on = False
        for cl in sim.client_leases.values():
            cl.keep_until = min(cl.keep_until, sim.now_s)
        before = len(self.revoked)

        def all_revoked() -> bool:
            leader = sim.leader()
            if leader is None:
                return False
            members = leader.raw.core.conf.members()
            return all(not sim.apps[n.id].store.leases() for n in sim.live() if n.id in members)

        if not sim.settle(max_ticks, all_revoked):
            held = {n.id: sorted(sim.apps[n.id].store.leases()) for n in sim.live()}
            self.fail(f"liveness: leases nobody keeps alive were not all revoked within {max_ticks} ticks "
                      f"after healing: {held}")
        self.liveness_revoked = len(self.revoked) - before

    # -- what the tests count ---------------------------------------------------

    def kept_across_terms(self) -> int:
        """Leases kept alive by leaders of two or more terms and never lost."""
        return sum(1 for lease, terms in self.keepalive_terms.items() if len(terms) >= 2 and lease not in self.lost)


class LeaseSimulation(Simulation):
    """The harness with the KV store, the lessor and a lease client on top."""

    cfg: LeaseSimConfig

    def __init__(self, seed: int, config: LeaseSimConfig | None = None,
                 lessor_factory: Callable[[], Lessor] = Lessor) -> None:
        self.lessor_factory = lessor_factory
        self.apps: dict[int, NodeApp] = {}
        super().__init__(seed, config or LeaseSimConfig())
        self.max_drift = self.cfg.drift_factor * self._raft_config(1, self.initial).max_clock_drift
        self.lease_checker = LeaseChecker(self)
        self.client_leases: dict[int, ClientLease] = {}
        self.client_target: int | None = None
        self.keepalives_on = True
        self._later: list[Callable[[], None]] = []
        self.keepalives_sent = 0
        self.keepalive_failures: dict[str, int] = {}
        self.leader_terms: set[int] = set()

    @property
    def now_s(self) -> float:
        """Real time in seconds."""
        return self.now * TICK_SECONDS

    def local_seconds(self, node: SimNode) -> float:
        """The node's own clock in seconds (trio.current_time() in the runtime)."""
        return self.local_time(node) * TICK_SECONDS

    # -- the node, wired as dengine/runtime/node.py wires it -------------------

    def _driver_hooks(self, nid: int) -> dict[str, Any]:
        def encode(commands: list[Any]) -> bytes:
            return encode_batch(commands, int(self.local_seconds(self.nodes[nid]) * 1000))

        def on_leader_changed(leader: int | None, term: int) -> None:
            self._on_leader_changed(self.nodes[nid], leader, term)

        return {"encode": encode, "on_leader_changed": on_leader_changed}

    def _node_started(self, node: SimNode) -> None:
        snap = node.durable.snapshot
        store = store_from_data(snap.data) if snap is not None else KVStore()
        if store.applied_index != node.applied:
            raise Violation(f"node {node.id}: snapshot image at {store.applied_index}, header says {node.applied}")
        lessor = self.lessor_factory()
        store.lease_observer = lambda lease_id, ttl_ms: lessor.observe(lease_id, ttl_ms, self.local_seconds(node))
        self.apps[node.id] = NodeApp(store, lessor)

    def _on_leader_changed(self, node: SimNode, leader: int | None, term: int) -> None:
        lessor = self.apps[node.id].lessor
        if node.driver.role is not Role.LEADER:
            if lessor.primary:
                lessor.demote()
        elif not lessor.primary:
            # A new leader gives every lease its full TTL again (etcd's rule).
            lessor.promote(self.apps[node.id].store.leases(), self.local_seconds(node))
            self.leader_terms.add(term)
            self.log(f"node {node.id} leads term {term}; lessor promoted with {len(lessor)} leases")

    def _ticked(self, node: SimNode) -> None:
        """Node._sweep_leases."""
        lessor = self.apps[node.id].lessor
        if not lessor.primary or node.driver.role is not Role.LEADER:
            return
        for lease_id in lessor.expired(self.local_seconds(node), SWEEP_LIMIT):
            waiter = RevokeWaiter(lessor, lease_id)
            try:
                node.driver.propose(LeaseRevoke(lease_id), waiter, 16)
            except DengineError as exc:
                waiter.fail(exc)
            self.log(f"node {node.id} proposes the revoke of expired lease {lease_id}")

    def _snapshot_data(self, node: SimNode) -> bytes:
        return store_data(node, self.apps[node.id].store)

    def apply(self, node: SimNode) -> None:
        """The applier (Node.applier / _apply_entries) over the KV store."""
        app = self.apps[node.id]
        store = app.store
        for _ in range(4):
            job = node.driver.take_apply()
            if job is None:
                return
            results: list[ApplyResult | None] = []
            if job.snapshot is not None:
                restored = store_from_data(job.snapshot.data)
                store.load_from(restored)
                node.applied, node.digest = parse_snapshot_data(job.snapshot.data)
                self.checker.on_snapshot_applied(node, job.snapshot)
                node.driver.on_snapshot_installed(job.snapshot.meta)
                self.lease_checker.on_snapshot(node, store)
            for entry in job.entries:
                if entry.index <= node.applied:
                    results.append(None)
                    continue
                if entry.index != node.applied + 1:
                    raise Violation(f"node {node.id} applied {entry.index} after {node.applied}: gap")
                node.applied = entry.index
                node.digest = (node.digest * 1_000_003 + hash((entry.index, entry.term, entry.data))) % (1 << 61)
                self.checker.on_apply(node, entry)
                if entry.type is not EntryType.NORMAL or entry.data == b"final":
                    # Membership entries reach only the member table (not
                    # simulated); the base checker's liveness probe proposes
                    # b"final" straight to the core: a no-op here.
                    store.apply_member(entry.index, 0, "none")
                    results.append(None)
                    self.lease_checker.on_apply(node, entry.index, store, None, {}, set(), [], [])
                    continue
                results.append(self._apply_kv(node, store, entry.index, entry.data))
            node.driver.on_applied(job, results)
            self.process(node)

    def _apply_kv(self, node: SimNode, store: KVStore, index: int, data: bytes) -> ApplyResult:
        commands = decode_batch(data).commands if data else []
        before: dict[int, set[bytes]] = {}
        touched: set[bytes] = set()
        for cmd in commands:
            if isinstance(cmd, LeaseRevoke):
                before.setdefault(cmd.lease_id, set(store.lease_keys(cmd.lease_id)))
            elif isinstance(cmd, (Put, Delete, CompareAndSwap)):
                touched.add(cmd.key)
        result = store.apply(index, data)
        revokes: list[tuple[int, bool]] = []
        grants: list[tuple[int, int]] = []
        for cmd, res in zip(commands, result.results):
            if type(cmd) is LeaseRevoke:
                revokes.append((cmd.lease_id, not isinstance(res, CommandError)))
            elif type(cmd) is LeaseGrant and not isinstance(res, CommandError):
                assert isinstance(res, int)
                grants.append((res, cmd.ttl_ms))
        self.lease_checker.on_apply(node, index, store, result, before, touched, revokes, grants)
        return result

    # -- the step loop ------------------------------------------------------------

    def step(self) -> None:
        super().step()
        self._client_step()
        self.lease_checker.check_step()

    def run(self) -> Violation | None:
        cfg = self.cfg
        try:
            for _ in range(cfg.steps):
                self.step()
                self.checker.check_step()
            self.heal()
            self.checker.check_liveness(cfg.heal_ticks)
            self.lease_checker.check_leases_expire(self.lease_liveness_ticks())
            self.checker.check_drained(cfg.deadline_ticks + 3 * cfg.election_tick)
        except Violation as v:
            return v
        except Exception as exc:  # a crash of the store, lessor, core or driver is a violation too
            import traceback

            return Violation(f"seed {self.seed} step {self.step_count}: {type(exc).__name__}: {exc}\n"
                             f"{traceback.format_exc()}")
        return None

    def lease_liveness_ticks(self) -> int:
        """The leader is stable once healed: its deadlines are at most its
        clock now + the longest TTL (a keep-alive still in flight adds at most
        its deadline), i.e. max_ttl / (1 - drift) real ticks; then the revoke
        commits within a few heartbeat rounds. Slack for a leadership change
        that was already under way."""
        cfg = self.cfg
        longest = max(cfg.ttl_ticks)
        return int(longest / (1 - self.max_drift)) + cfg.deadline_ticks + 4 * cfg.election_tick

    # -- the client ---------------------------------------------------------------

    def _random_propose(self) -> None:
        """The base loop's client write: a lease client action instead."""
        if not self.clients_on:
            return
        rng = self.rng
        cfg = self.cfg
        live = [cl for cl in self.client_leases.values() if not cl.gone]
        r = rng.random()
        if r < 0.3 and len(live) < cfg.max_leases and self.keepalives_on:
            ttl_ms = rng.choice(cfg.ttl_ticks) * int(TICK_SECONDS * 1000)
            self._client_write(LeaseGrant(0, ttl_ms), functools.partial(self._granted, ttl_ms=ttl_ms))
        elif r < 0.7 and live:
            cl = rng.choice(live)
            self._client_write(Put(b"k%d" % rng.randrange(cfg.keys), b"v%d" % self.step_count, lease=cl.lease_id))
        elif r < 0.85:
            self._client_write(Put(b"k%d" % rng.randrange(cfg.keys), b"v%d" % self.step_count))
        elif r < 0.97:
            # A lease that may be gone or never existed: LeaseNotFound at apply.
            self._client_write(Put(b"k%d" % rng.randrange(cfg.keys), b"x", lease=rng.randrange(1, 40)))
        elif live:
            # A revoke the client decided on early, or one of a lease it kept.
            cl = rng.choice(live)
            self._client_revoke(cl)

    def _granted(self, value: Any, ttl_ms: int) -> None:
        rng = self.rng
        cfg = self.cfg
        now = self.now_s
        ttl = ttl_ms / 1000
        r = rng.random()
        if r < cfg.keep_share and self.keepalives_on:
            lo, hi = cfg.keep_for_ticks
            cl = ClientLease(value, ttl, "keep", now + rng.randrange(lo, hi) * TICK_SECONDS,
                             now + ttl * rng.uniform(*cfg.keepalive_every))
        elif r < cfg.keep_share + cfg.revoke_share:
            cl = ClientLease(value, ttl, "revoke", now, now + ttl * rng.uniform(0.1, 0.9))
        else:
            cl = ClientLease(value, ttl, "lapse", now, now)
        self.client_leases[value] = cl
        self.log(f"client: lease {value} granted (ttl {ttl:g}s), {cl.mode}")

    def _client_node(self) -> SimNode | None:
        node = self.nodes.get(self.client_target) if self.client_target is not None else None
        if node is None or not node.alive or self.rng.random() < 0.03:
            live = self.live()
            if not live:
                return None
            node = self.rng.choice(live)
            self.client_target = node.id
        return node

    def _redirect(self, error: BaseException) -> None:
        if isinstance(error, NotLeader):
            self.client_target = error.leader_id

    def _client_write(self, cmd: Any, on_set: Callable[[Any], None] | None = None) -> None:
        node = self._client_node()
        if node is None:
            return
        waiter = SimWaiter(on_set=on_set, on_fail=self._redirect)
        try:
            node.driver.propose(cmd, waiter, command_size(cmd))
        except DengineError as exc:
            self._redirect(exc)
            return
        node.driver.expire(waiter, self.deadline(node), "write did not complete within {:g} ticks",
                           self.cfg.deadline_ticks)

    def _client_revoke(self, cl: ClientLease) -> None:
        self.lease_checker.on_client_revoke(cl.lease_id)
        cl.mode = "revoke"
        self._client_write(LeaseRevoke(cl.lease_id))
        self.log(f"client: revoke lease {cl.lease_id}")

    def _client_step(self) -> None:
        calls, self._later = self._later, []
        for call in calls:
            call()
        if not self.clients_on:
            return
        now = self.now_s
        for cl in list(self.client_leases.values()):
            if cl.gone or cl.act_at > now:
                continue
            if cl.mode == "keep":
                if now >= cl.keep_until or not self.keepalives_on:
                    cl.mode = "lapse"
                    self.log(f"client: lets lease {cl.lease_id} lapse")
                    continue
                cl.act_at = now + cl.ttl * self.rng.uniform(*self.cfg.keepalive_every)
                self._keep_alive(cl.lease_id)
            elif cl.lease_id in self.lease_checker.revoked:
                cl.gone = True
            elif cl.mode == "revoke":
                # Ask, and ask again while the lease lives (a revoke may fail).
                self._client_revoke(cl)
                cl.act_at = now + cl.ttl / 2
            else:
                cl.act_at = now + cl.ttl

    # -- EmbeddedClient.keep_alive, step by step ------------------------------------

    def _keep_alive(self, lease_id: int) -> None:
        node = self._client_node()
        if node is None:
            return
        self.keepalives_sent += 1
        since = self.local_seconds(node)
        if node.driver.role is not Role.LEADER:
            self._ka_failed(None, node.driver.not_leader())
            return
        ka = KeepAlive(lease_id, node, self.apps[node.id], since, self.now_s,
                       self.local_time(node) + self.cfg.deadline_ticks)
        self._ka_read(ka)

    def _ka_read(self, ka: KeepAlive) -> None:
        waiter = SimWaiter(
            on_set=lambda index: self._later.append(lambda: self._ka_read_done(ka, index)),
            on_fail=lambda error: self._later.append(lambda: self._ka_read_failed(ka, error)),
        )
        ka.node.driver.read(waiter)
        ka.node.driver.expire(waiter, ka.deadline, "read did not complete within {:g} ticks", self.cfg.deadline_ticks)

    def _ka_read_failed(self, ka: KeepAlive, error: BaseException) -> None:
        # Engine._read_index_with_retry: no leader right now, try again until the deadline.
        retry = isinstance(error, (NotLeader, Unavailable)) and not isinstance(error, EngineStopped)
        if retry and ka.node.alive and self.local_time(ka.node) < ka.deadline:
            self._ka_read(ka)
        else:
            self._ka_failed(ka, error)

    def _ka_read_done(self, ka: KeepAlive, index: int) -> None:
        if not ka.node.alive:
            self._ka_failed(ka, DengineError("crashed"))
            return
        waiter = SimWaiter(
            on_set=lambda _: self._later.append(lambda: self._ka_renew(ka)),
            on_fail=lambda error: self._later.append(lambda: self._ka_failed(ka, error)),
        )
        if ka.node.driver.wait_applied(index, waiter):
            ka.node.driver.expire(waiter, ka.deadline, "read did not complete within {:g} ticks",
                                  self.cfg.deadline_ticks)
        else:
            self._ka_renew(ka)

    def _ka_renew(self, ka: KeepAlive) -> None:
        node, app = ka.node, ka.app
        if not node.alive:
            self._ka_failed(ka, DengineError("crashed"))
            return
        if app.store.lease_ttl_ms(ka.lease_id) is None:
            self._ka_failed(ka, LeaseNotFound(f"lease {ka.lease_id}"))
            return
        # Node.renew_lease
        if not app.lessor.primary or node.driver.role is not Role.LEADER:
            self._ka_failed(ka, node.driver.not_leader())
            return
        try:
            ttl = app.lessor.renew(ka.lease_id, ka.since, self.local_seconds(node))
        except LeaseNotFound as exc:
            self._ka_failed(ka, exc)
            return
        self.lease_checker.on_keepalive_answered(ka, ttl, node.driver.term)

    def _ka_failed(self, ka: KeepAlive | None, error: BaseException) -> None:
        name = type(error).__name__
        self.keepalive_failures[name] = self.keepalive_failures.get(name, 0) + 1
        self._redirect(error)
        if ka is not None and isinstance(error, LeaseNotFound):
            cl = self.client_leases.get(ka.lease_id)
            if cl is not None and cl.mode == "keep":
                self.log(f"client: lease {ka.lease_id} is gone (keep-alive at node {ka.node.id}: not found)")
                cl.mode = "lapse"


def run_lease_seed(seed: int, nodes: int = 3, steps: int | None = None,
                   lessor_factory: Callable[[], Lessor] = Lessor) -> tuple[Violation | None, LeaseSimulation]:
    cfg = LeaseSimConfig(nodes=nodes) if steps is None else LeaseSimConfig(nodes=nodes, steps=steps)
    sim = LeaseSimulation(seed, cfg, lessor_factory=lessor_factory)
    return sim.run(), sim

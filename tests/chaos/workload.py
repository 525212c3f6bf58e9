"""The chaos workload: clients that record a history, and watchers.

Every client is one trio task with its own ``dengine.open_client`` doing put /
get (linearizable or lease) / compare_and_swap / delete on a few keys, each
with a short timeout, and recording every operation: invoke and completion
times (trio's clock) and its outcome --

* ``ok``      the answer (value read, cas flag, delete flag, put revision);
* ``fail``    surely not applied (the client says so: NotLeader /
              ProposalDropped, or a Timeout whose message does not say the
              write may have been applied) -- left out of the history;
* ``unknown`` may or may not have been applied (Timeout / Unavailable saying
              so, a connection lost after the request was sent, the client
              block dying under the call): completion = +infinity.

A read that fails is dropped. Every written value is unique
(``c<client>.<n>``), which makes the checker strong and lets the watch be
matched to the writes.

``open_client`` can raise a bare ``trio.BrokenResourceError`` out of its
``async with`` on a connection reset (a known dengine defect): the client
task catches it around the whole block, records the op in flight as
unknown, counts it, and opens a new client.
"""

from __future__ import annotations

import math
import random
from collections import Counter, deque
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import trio

import dengine
from dengine import ReadConsistency, WatchEventType
from dengine.errors import ErrorCode
from tests.chaos.checker import CAS, DELETE, GET, PUT, UNKNOWN, Op
from tests.chaos.cluster import CLUSTER_ID, ChaosCluster

__all__ = ["PREFIX", "Record", "WatchRecorder", "Workload", "leaf_errors"]

PREFIX = b"/chaos/"
END_KEY = b"/chaos/end"

OK, FAIL, UNKNOWN_OUTCOME, PENDING = "ok", "fail", "unknown", "pending"


def leaf_errors(exc: BaseException) -> list[BaseException]:
    """The leaves of an exception (group)."""
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for e in exc.exceptions:
            out.extend(leaf_errors(e))
        return out
    return [exc]


@dataclass
class Record:
    ident: int
    client: int
    kind: str
    key: bytes
    value: bytes | None = None
    expected: bytes | None = None
    consistency: str = ""
    invoke: float = 0.0
    complete: float = math.inf
    outcome: str = PENDING
    result: Any = None
    revision: int | None = None
    error: str = ""
    endpoint: str = ""

    @property
    def is_write(self) -> bool:
        return self.kind != GET

    def to_op(self) -> Op | None:
        """The checker's view, None when the op is not part of the history."""
        if self.outcome == OK:
            return Op(self.kind, self.key, self.value, self.expected, self.result, self.invoke, self.complete,
                      self.client, self.ident)
        if self.outcome in (UNKNOWN_OUTCOME, PENDING) and self.is_write:
            return Op(self.kind, self.key, self.value, self.expected, UNKNOWN, self.invoke, math.inf,
                      self.client, self.ident)
        return None

    @property
    def effective(self) -> bool:
        """An acknowledged write that changed the key (put, swapped cas, delete of a present key)."""
        return self.outcome == OK and (
            self.kind == PUT or (self.kind in (CAS, DELETE) and self.result is True))


@dataclass
class Workload:
    cluster: ChaosCluster
    keys: list[bytes]
    clients: int
    op_timeout: float
    seed: int
    plant_bug: str | None = None
    think: float = 0.005
    records: list[Record] = field(default_factory=list)
    stop: trio.Event = field(default_factory=trio.Event)
    broken_resource: int = 0
    client_block_errors: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    reopened: int = 0

    def __post_init__(self) -> None:
        self._latest: dict[bytes, bytes | None] = {k: None for k in self.keys}
        self._recent: dict[bytes, deque[bytes]] = {k: deque(maxlen=4) for k in self.keys}
        self._seq = 0
        self._current: dict[int, Record | None] = {}

    # -- bookkeeping -----------------------------------------------------------

    def _new(self, client: int, kind: str, key: bytes, **kw: Any) -> Record:
        rec = Record(len(self.records), client, kind, key, **kw)
        self.records.append(rec)
        return rec

    def acked_writes(self) -> list[Record]:
        return [r for r in self.records if r.is_write and r.outcome == OK]

    def counts(self) -> Counter[str]:
        c: Counter[str] = Counter()
        for r in self.records:
            c[r.outcome] += 1
            if r.is_write:
                c["w_" + r.outcome] += 1
        return c

    # -- clients ---------------------------------------------------------------

    async def run_client(self, cid: int) -> None:
        rng = random.Random(self.seed * 1000 + cid)
        endpoints = self.cluster.endpoints()
        rng.shuffle(endpoints)
        for _ in range(100_000):  # bounded; ends with self.stop
            if self.stop.is_set():
                return
            try:
                async with AsyncExitStack() as stack:
                    client = await stack.enter_async_context(dengine.open_client(
                        endpoints, cluster_id=CLUSTER_ID, timeout=self.op_timeout,
                        rng=random.Random(rng.random())))
                    node_clients: dict[int, dengine.Client] = {}
                    if self.plant_bug == "stale-reads":
                        for i in self.cluster.ids:
                            node_clients[i] = await stack.enter_async_context(dengine.open_client(
                                [self.cluster.endpoint(i)], cluster_id=CLUSTER_ID, timeout=self.op_timeout,
                                rng=random.Random(rng.random())))
                    while not self.stop.is_set():
                        await self._one_op(cid, rng, client, node_clients)
                        if self.think:
                            await trio.sleep(rng.uniform(0, self.think))
                return
            except BaseException as exc:  # noqa: BLE001 - sorted below; cancellation re-raised
                leaves = leaf_errors(exc)
                if any(isinstance(e, (trio.Cancelled, KeyboardInterrupt)) for e in leaves):
                    self._abandon(cid)
                    raise
                if any(isinstance(e, trio.BrokenResourceError) for e in leaves):
                    self.broken_resource += 1
                for e in leaves:
                    self.client_block_errors[type(e).__name__] += 1
                self._abandon(cid)
                self.reopened += 1
                await trio.sleep(0.05)

    def _abandon(self, cid: int) -> None:
        """The op in flight when the client block died: unknown (write) or dropped (read)."""
        rec = self._current.get(cid)
        self._current[cid] = None
        if rec is not None and rec.outcome == PENDING:
            rec.outcome = UNKNOWN_OUTCOME if rec.is_write else FAIL
            rec.error = "client block died"
            rec.complete = math.inf if rec.is_write else trio.current_time()

    def _value(self, cid: int) -> bytes:
        self._seq += 1
        return b"c%d.%d" % (cid, self._seq)

    async def _one_op(self, cid: int, rng: random.Random, client: dengine.Client,
                      node_clients: dict[int, dengine.Client]) -> None:
        key = rng.choice(self.keys)
        r = rng.random()
        if r < 0.30:
            rec = self._new(cid, PUT, key, value=self._value(cid))
        elif r < 0.50:
            rec = self._new(cid, GET, key, consistency="linearizable")
        elif r < 0.62:
            rec = self._new(cid, GET, key, consistency="lease")
        elif r < 0.87:
            choice = rng.random()
            if choice < 0.6:
                expected = self._latest[key]
            elif choice < 0.8 or not self._recent[key]:
                expected = None
            else:
                expected = rng.choice(list(self._recent[key]))
            rec = self._new(cid, CAS, key, value=self._value(cid), expected=expected)
        else:
            rec = self._new(cid, DELETE, key)
        target = client
        if rec.kind == GET and node_clients:
            # The planted bug: local (eventual) reads of any node, recorded
            # as if they were linearizable.
            node = rng.choice(list(node_clients))
            target = node_clients[node]
            rec.consistency = "eventual"
            rec.endpoint = self.cluster.endpoint(node)
        self._current[cid] = rec
        rec.invoke = trio.current_time()
        try:
            if rec.kind == PUT:
                assert rec.value is not None
                rec.revision = await target.put(key, rec.value)
                rec.result = None
            elif rec.kind == GET:
                rec.result = await target.get(key, consistency=ReadConsistency.parse(rec.consistency))
            elif rec.kind == CAS:
                assert rec.value is not None
                rec.result = await target.compare_and_swap(key, expected=rec.expected, new=rec.value)
            else:
                rec.result = await target.delete(key)
        except dengine.Timeout as exc:
            self._finish_error(rec, exc, unknown="may or may not" in str(exc))
        except (dengine.NotLeader, dengine.ProposalDropped) as exc:
            self._finish_error(rec, exc, unknown=False)
        except dengine.DengineError as exc:  # Unavailable, EngineStopped, anything else: unknown
            self._finish_error(rec, exc, unknown=True)
        else:
            rec.complete = trio.current_time()
            rec.outcome = OK
            if rec.kind == GET:
                self._latest[key] = rec.result
            elif rec.kind == PUT or (rec.kind == CAS and rec.result):
                assert rec.value is not None
                self._latest[key] = rec.value
                self._recent[key].append(rec.value)
            elif rec.kind == DELETE:
                self._latest[key] = None
        finally:
            if rec.outcome != PENDING:
                self._current[cid] = None

    def _finish_error(self, rec: Record, exc: BaseException, *, unknown: bool) -> None:
        name = type(exc).__name__
        rec.error = f"{name}: {exc}"[:300]
        if rec.is_write and unknown:
            rec.outcome = UNKNOWN_OUTCOME
            rec.complete = math.inf
            self.errors[f"{rec.kind} {name} (unknown)"] += 1
        else:
            rec.outcome = FAIL
            rec.complete = trio.current_time()
            self.errors[f"{rec.kind} {name}"] += 1


@dataclass
class WatchEventRecord:
    type: WatchEventType
    key: bytes
    value: bytes
    prev_value: bytes | None
    revision: int
    at: float


@dataclass
class WatchRecorder:
    """One watcher task: a prefix watch on /chaos/ with prev_kv, from
    ``start_revision`` (1 = replay everything) or live (None). On CANCELED
    it reopens from the first undelivered revision; a COMPACTED gap is noted."""

    wid: int
    cluster: ChaosCluster
    start_revision: int | None
    events: list[WatchEventRecord] = field(default_factory=list)
    canceled: list[tuple[int, int]] = field(default_factory=list)  # (error code, revision)
    gaps: list[tuple[int, int]] = field(default_factory=list)  # [from, to) revisions not covered
    notes: list[str] = field(default_factory=list)
    first_start: int | None = None
    opened: int = 0
    resumes: int = 0
    broken_resource: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    end_seen: trio.Event = field(default_factory=trio.Event)
    ready: trio.Event = field(default_factory=trio.Event)

    @property
    def last_revision(self) -> int:
        return self.events[-1].revision if self.events else (self.first_start or 1) - 1

    async def run(self) -> None:
        # Reopen at the revision of the last event (several events may share
        # one revision: one Raft entry), skipping the ones already recorded.
        next_rev = self.start_revision
        cur_rev = -1
        cur: list[tuple[WatchEventType, bytes, bytes]] = []
        gap_from: int | None = None
        endpoints = self.cluster.endpoints()
        random.Random(self.wid).shuffle(endpoints)
        for _ in range(10_000):  # bounded; ends at the END marker or by cancellation
            try:
                async with dengine.open_client(endpoints, cluster_id=CLUSTER_ID, timeout=5) as client:
                    while True:
                        skip = list(cur) if next_rev == cur_rev else []
                        async with client.open_watch(PREFIX, prefix=True, prev_kv=True,
                                                     start_revision=next_rev) as watch:
                            self.opened += 1
                            if self.first_start is None:
                                self.first_start = watch.next_revision
                            if gap_from is not None:
                                self.gaps.append((gap_from, watch.next_revision or gap_from))
                                self.notes.append(f"watch {self.wid}: COMPACTED gap {gap_from}..{watch.next_revision}")
                                gap_from = None
                            self.ready.set()
                            try:
                                async for ev in watch:
                                    if ev.type == WatchEventType.PROGRESS:
                                        continue
                                    if ev.type == WatchEventType.CANCELED:
                                        self.canceled.append((ev.error, ev.revision))
                                        self.notes.append(
                                            f"watch {self.wid}: CANCELED error={ev.error} at revision {ev.revision}; reopened")
                                        if ev.error == ErrorCode.COMPACTED:
                                            gap_from = ev.revision
                                            next_rev = None
                                        else:
                                            next_rev = ev.revision
                                        break
                                    ident = (ev.type, ev.key, ev.value)
                                    if skip:
                                        if ev.revision == cur_rev and ident == skip[0]:
                                            skip.pop(0)
                                            continue
                                        skip.clear()
                                    self.events.append(WatchEventRecord(ev.type, ev.key, ev.value, ev.prev_value,
                                                                        ev.revision, trio.current_time()))
                                    if ev.revision != cur_rev:
                                        cur_rev, cur = ev.revision, []
                                    cur.append(ident)
                                    next_rev = ev.revision
                                    if ev.key == END_KEY and ev.type == WatchEventType.PUT:
                                        self.end_seen.set()
                                        return
                                else:
                                    self.notes.append(f"watch {self.wid}: stream ended without CANCELED; reopened")
                            finally:
                                self.resumes += watch.resumes
            except BaseException as exc:  # noqa: BLE001 - sorted below; cancellation re-raised
                leaves = leaf_errors(exc)
                if any(isinstance(e, (trio.Cancelled, KeyboardInterrupt)) for e in leaves):
                    raise
                if any(isinstance(e, trio.BrokenResourceError) for e in leaves):
                    self.broken_resource += 1
                for e in leaves:
                    self.errors[type(e).__name__] += 1
                await trio.sleep(0.1)

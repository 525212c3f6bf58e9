"""What a chaos run's records say: watch checks, lost writes, write gaps.

Pure functions over the records of :mod:`tests.chaos.workload` (no trio)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

from dengine import WatchEventType
from tests.chaos.checker import CAS, DELETE, PUT, Op
from tests.chaos.faults import FaultEvent
from tests.chaos.workload import END_KEY, FAIL, OK, UNKNOWN_OUTCOME, Record, WatchRecorder

__all__ = [
    "Gap",
    "check_watch",
    "clients_during",
    "compare_watchers",
    "leader_cut_gaps",
    "longest_write_gap",
    "lost_writes",
    "refine_unknowns",
]


def _k(key: bytes) -> str:
    return key.decode(errors="replace")


def _covered(w: WatchRecorder, rev: int) -> bool:
    if w.first_start is None or not w.first_start <= rev <= w.last_revision:
        return False
    return not any(a <= rev < b for a, b in w.gaps)


def _by_revision(w: WatchRecorder) -> dict[int, list[tuple[WatchEventType, bytes, bytes]]]:
    out: dict[int, list[tuple[WatchEventType, bytes, bytes]]] = {}
    for e in w.events:
        out.setdefault(e.revision, []).append((e.type, e.key, e.value))
    return out


def check_watch(w: WatchRecorder, records: Sequence[Record]) -> list[str]:
    """Anomalies of one watcher: order, duplicates, gaps against acknowledged
    puts, events of writes that cannot have happened, broken prev_kv chains.
    Commands batched in one Raft entry share its revision (docs/kv.md), so
    several events may carry one revision, in apply order."""
    problems: list[str] = []
    name = f"watch {w.wid}"
    if not w.end_seen.is_set():
        problems.append(f"{name}: never delivered the end marker (last revision {w.last_revision}, "
                        f"{len(w.events)} events)")
    evs = w.events
    for a, b in zip(evs, evs[1:]):
        if b.revision < a.revision:
            problems.append(f"{name}: revision {b.revision} delivered after {a.revision} (out of order)")
    seen_values: set[bytes] = set()
    for e in evs:
        if e.type == WatchEventType.PUT and e.key != END_KEY:
            if e.value in seen_values:
                problems.append(f"{name}: PUT {_k(e.key)}={_k(e.value)} delivered twice (revision {e.revision})")
            seen_values.add(e.value)
    writes: dict[bytes, Record] = {}
    for r in records:
        if r.kind in (PUT, CAS) and r.value is not None:
            writes[r.value] = r
    by_rev = _by_revision(w)
    for e in evs:
        if e.key == END_KEY or e.type != WatchEventType.PUT:
            continue
        r = writes.get(e.value)
        where = f"{name}: revision {e.revision} PUT {_k(e.key)}={_k(e.value)}"
        if r is None:
            problems.append(f"{where}: a value no client wrote")
        elif r.key != e.key:
            problems.append(f"{where}: the value was written to {_k(r.key)}")
        elif r.outcome == FAIL:
            problems.append(f"{where}: the client was told this write surely failed ({r.error})")
        elif r.kind == CAS and r.outcome == OK and r.result is False:
            problems.append(f"{where}: from a cas that answered 'not swapped'")
        elif r.kind == PUT and r.outcome == OK and r.revision is not None and r.revision != e.revision:
            problems.append(f"{where}: the put was acknowledged with revision {r.revision}")
    for r in records:
        if r.kind == PUT and r.outcome == OK and r.revision is not None and _covered(w, r.revision):
            if (WatchEventType.PUT, r.key, r.value) not in by_rev.get(r.revision, []):
                elsewhere = [e.revision for e in evs if e.type == WatchEventType.PUT and e.value == r.value]
                problems.append(f"{name}: missed acknowledged put {_k(r.key)}={_k(r.value or b'')} "
                                f"at revision {r.revision} (events there: {_show(by_rev.get(r.revision, []))}"
                                + (f"; the value appears at revision {elsewhere}" if elsewhere else "") + ")")
    if w.first_start == 1 and not w.gaps and w.end_seen.is_set():
        for r in records:
            if r.kind == CAS and r.outcome == OK and r.result is True and r.value not in seen_values:
                problems.append(f"{name}: never showed the acknowledged cas {_k(r.key)}={_k(r.value or b'')}")
    # prev_kv: each event's previous value is the value of the key's last event.
    last: dict[bytes, bytes | None] = {}
    complete_from_start = w.first_start == 1
    prev_rev = 0
    for e in evs:
        if any(prev_rev < b <= e.revision for _, b in w.gaps):
            last.clear()  # events were lost to compaction in between
            complete_from_start = False
        prev_rev = e.revision
        if e.key in last or complete_from_start:
            expected = last.get(e.key)
            if e.prev_value != expected:
                problems.append(f"{name}: revision {e.revision} {e.type.name} {_k(e.key)} has prev_value "
                                f"{e.prev_value!r}, the previous event left {expected!r}")
        last[e.key] = e.value if e.type == WatchEventType.PUT else None
    return problems


def compare_watchers(watchers: Sequence[WatchRecorder]) -> list[str]:
    """Two watchers must show the same events at every revision both cover."""
    problems: list[str] = []
    for i, a in enumerate(watchers):
        for b in watchers[i + 1:]:
            amap, bmap = _by_revision(a), _by_revision(b)
            for rev in sorted(set(amap) | set(bmap)):
                if not (_covered(a, rev) and _covered(b, rev)):
                    continue
                if amap.get(rev, []) != bmap.get(rev, []):
                    problems.append(f"watches {a.wid} and {b.wid} differ at revision {rev}: "
                                    f"{_show(amap.get(rev, []))} vs {_show(bmap.get(rev, []))}")
    return problems


def _show(events: list[tuple[WatchEventType, bytes, bytes]]) -> str:
    return "[" + ", ".join(f"{t.name} {_k(k)}={_k(v)}" for t, k, v in events) + "]"


def revision_order(records: Sequence[Record]) -> list[str]:
    """Acknowledged puts: a put that began after another completed has a
    higher revision (commands of one entry share a revision, but such two
    puts cannot be in one entry)."""
    problems: list[str] = []
    puts = [r for r in records if r.kind == PUT and r.outcome == OK and r.revision is not None]
    puts.sort(key=lambda r: r.complete)
    completes = [r.complete for r in puts]
    prefix_max: list[tuple[int, Record | None]] = []
    best: tuple[int, Record | None] = (0, None)
    for r in puts:
        assert r.revision is not None
        if r.revision > best[0]:
            best = (r.revision, r)
        prefix_max.append(best)
    for r in puts:
        i = bisect.bisect_left(completes, r.invoke)
        if i:
            rev, before = prefix_max[i - 1]
            assert r.revision is not None and before is not None
            if rev >= r.revision:
                problems.append(f"put #{r.ident} began after put #{before.ident} completed, but got revision "
                                f"{r.revision} <= {rev}")
    return problems


def refine_unknowns(ops: Sequence[Op], w: WatchRecorder) -> tuple[list[Op], int, int] | None:
    """With a watch that saw every revision from 1 to the end, an unknown put
    or cas whose (unique) value never appeared was not applied: drop it.
    This can only make the history stricter. None if the watch is not complete."""
    if w.first_start != 1 or w.gaps or not w.end_seen.is_set():
        return None
    seen = {e.value for e in w.events if e.type == WatchEventType.PUT}
    out: list[Op] = []
    applied = dropped = 0
    for o in ops:
        if o.unknown and o.kind in (PUT, CAS):
            if o.value in seen:
                applied += 1
            else:
                dropped += 1
                continue
        out.append(o)
    return out, applied, dropped


def lost_writes(records: Sequence[Record], finals: dict[int, dict[bytes, bytes | None]],
                keys: Sequence[bytes]) -> tuple[int, list[str]]:
    """An acknowledged write that nothing could have been ordered after (every
    other write to its key that may have taken effect completed before it was
    invoked) must be the key's final state on every node; count each node
    where it is not."""
    lost = 0
    details: list[str] = []
    for key in keys:
        candidates = [r for r in records if r.key == key and r.is_write and r.outcome in (OK, UNKNOWN_OUTCOME)
                      and not (r.outcome == OK and r.kind in (CAS, DELETE) and r.result is False)]
        for w in candidates:
            if w.outcome != OK or not w.effective:
                continue
            if any(o is not w and o.complete > w.invoke for o in candidates):
                continue
            expected = w.value if w.kind in (PUT, CAS) else None
            for node, values in sorted(finals.items()):
                if values.get(key, b"<missing>") != expected:
                    lost += 1
                    details.append(f"lost: node {node} holds {_k(key)}={values.get(key)!r}, "
                                   f"the last acknowledged write was #{w.ident} {w.kind} -> {expected!r}")
    return lost, details


@dataclass
class Gap:
    seconds: float
    start: float
    end: float
    note: str = ""


def longest_write_gap(records: Sequence[Record], t_from: float, t_to: float) -> Gap:
    """The longest stretch of [t_from, t_to] with no write acknowledged."""
    acks = sorted(r.complete for r in records if r.is_write and r.outcome == OK and t_from <= r.complete <= t_to)
    points = [t_from, *acks, t_to]
    best = Gap(0.0, t_from, t_from)
    for a, b in zip(points, points[1:]):
        if b - a > best.seconds:
            best = Gap(b - a, a, b)
    return best


def leader_cut_gaps(records: Sequence[Record], events: Sequence[FaultEvent], t_end: float) -> list[tuple[FaultEvent, Gap]]:
    """For every fault that cut off, paused or killed the leader: from its
    start to the first acknowledgement of a write invoked after it."""
    writes = sorted((r.invoke, r.complete) for r in records if r.is_write and r.outcome == OK)
    out: list[tuple[FaultEvent, Gap]] = []
    for ev in events:
        if not ev.leader_cut:
            continue
        at = ev.start if math.isnan(ev.cut_at) else ev.cut_at
        first = min((c for i, c in writes if i >= at), default=math.inf)
        if math.isinf(first):
            out.append((ev, Gap(t_end - at, at, t_end, "no write acknowledged after it")))
        else:
            out.append((ev, Gap(first - at, at, first)))
    return out


def clients_during(records: Sequence[Record], gap: Gap, limit: int = 40, stale: float = 5.0) -> list[str]:
    """What each client was doing during ``gap`` (a slow failover): every
    operation in flight at any moment of it, with its times relative to the
    gap's start, its outcome and its error. The lines tell a failover that
    had no leader to answer from one whose clients were still waiting on
    the old leader (or backing off) when the new one could already answer.
    A write whose outcome stayed unknown and that began more than ``stale``
    seconds before the gap is left out: it ended long before, unanswered."""
    out: list[str] = []
    ops = sorted((r for r in records if r.invoke <= gap.end and r.complete >= gap.start
                  and not (math.isinf(r.complete) and r.invoke < gap.start - stale)),
                 key=lambda r: (r.client, r.invoke))
    for r in ops[:limit]:
        end = "never" if math.isinf(r.complete) else f"{r.complete - gap.start:+.3f}s"
        what = f"{r.kind} {r.consistency}".strip()
        error = f" ({r.error[:120]})" if r.error else ""
        out.append(f"    client {r.client}: {what} invoked {r.invoke - gap.start:+.3f}s, done {end}: {r.outcome}{error}")
    if len(ops) > limit:
        out.append(f"    ... and {len(ops) - limit} more")
    return out

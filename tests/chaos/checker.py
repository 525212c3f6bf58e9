"""A linearizability checker for key-value histories (pure, no IO, no trio).

The model is one register per key (P-compositionality: a history is
linearizable iff the sub-history of every key is, so each key is checked on
its own). Operations on a key:

* ``put(v)``            state := v
* ``get() -> r``        valid iff state == r (``None`` = absent)
* ``cas(e, n) -> b``    b == (state == e); if it swapped, state := n
* ``delete() -> b``     b == (state is not None); state := None

An operation whose outcome is unknown (the client gave up: timeout,
connection lost after the request was sent) has result :data:`UNKNOWN` and
completion time ``math.inf``: it may take effect at any point after its
invocation, or never (placing it after everything else is the same as never,
since nothing observes the state after the last completed operation).
Operations that surely did not take effect are simply left out of the history.

Two exact searches:

* :func:`_dfs` -- Wing & Gong's search with Lowe's just-in-time
  linearization and porcupine's memoization: entries (calls and returns) in a
  doubly linked list sorted by time; depth-first, always trying to linearize
  a call that comes before the first return still in the list; a cache of
  (linearized operations as a bit mask, state) pairs already explored.
  Fast when the history is linearizable; when an anomaly sits late in a long
  history with many unknown outcomes it must unwind everything before it.
* :func:`_sweep` -- the same just-in-time linearization breadth-first (as
  Knossos' "linear" checker): calls and returns swept in time order with the
  set of reachable configurations; it stops at the operation where the
  history breaks, whatever comes before.

:func:`check_register` runs the first with part of the budget and the second
if needed. Both are capped in steps and seconds: the verdict ``None`` means
"the checker gave up", never a hang.

:func:`quick_violations` adds cheap, sound, partial checks that rely on
written values being unique (read of a value never written, read before the
write was invoked, stale read past a later completed write); they name an
anomaly even when the full search gives up.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CAS",
    "DELETE",
    "GET",
    "PUT",
    "UNKNOWN",
    "KeyVerdict",
    "Op",
    "check_history",
    "check_register",
    "quick_violations",
]

PUT = "put"
GET = "get"
CAS = "cas"
DELETE = "delete"
_CODES = {PUT: 0, GET: 1, CAS: 2, DELETE: 3}


class _Unknown:
    _instance: _Unknown | None = None

    def __new__(cls) -> _Unknown:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNKNOWN"

    def __reduce__(self) -> str:
        return "UNKNOWN"


#: The result of an operation whose outcome the client does not know.
UNKNOWN: Any = _Unknown()


@dataclass(frozen=True, slots=True)
class Op:
    """One completed (or given-up) operation of a history.

    ``value`` is the value written by put / the new value of cas;
    ``expected`` is cas's expected value (None: "absent"). ``result``: the
    value read by get (None if absent), the flag of cas / delete, None for
    put, or :data:`UNKNOWN`. Times are in seconds on one monotonic clock;
    ``complete`` is ``math.inf`` for an unknown outcome.
    """

    kind: str
    key: bytes
    value: bytes | None = None
    expected: bytes | None = None
    result: Any = None
    invoke: float = 0.0
    complete: float = math.inf
    client: int = -1
    ident: int = -1

    @property
    def unknown(self) -> bool:
        return self.result is UNKNOWN

    def describe(self) -> str:
        if self.kind == PUT:
            what = f"put({_v(self.value)})"
        elif self.kind == GET:
            what = "get()"
        elif self.kind == CAS:
            what = f"cas({_v(self.expected)} -> {_v(self.value)})"
        else:
            what = "delete()"
        if self.result is UNKNOWN:
            res = "unknown"
        elif self.kind == GET:
            res = _v(self.result)
        elif self.kind == PUT:
            res = "ok"
        else:
            res = str(self.result)
        end = "inf" if math.isinf(self.complete) else f"{self.complete:.3f}"
        return f"#{self.ident} client {self.client} {self.key.decode(errors='replace')} {what} -> {res} [{self.invoke:.3f}, {end}]"


def _v(value: bytes | None) -> str:
    return "None" if value is None else value.decode(errors="replace")


@dataclass
class KeyVerdict:
    """The verdict for one key: ``ok`` is True (linearizable), False (not),
    or None (the checker gave up: step or time budget exhausted)."""

    key: bytes
    ok: bool | None
    ops: int
    steps: int
    seconds: float
    detail: str = ""
    linearized_at_best: int = 0
    witness: list[str] = field(default_factory=list)


class _Entry:
    __slots__ = ("id", "is_call", "match", "next", "prev", "time")

    def __init__(self, ident: int, is_call: bool, at: float) -> None:
        self.id = ident
        self.is_call = is_call
        self.time = at
        self.match: _Entry | None = None
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


class _Ghost:
    def __repr__(self) -> str:
        return "<a value nothing reads>"


_GHOST: Any = _Ghost()


def _spec(ops: Sequence[Op], initial: bytes | None) -> list[tuple[int, Any, Any, Any, bool]]:
    """(code, value, expected, result, unknown) per op, for the inner loops. A
    written value that no read returns and no cas expects becomes one shared
    token: no operation can tell such values apart (exact)."""
    observed: set[bytes | None] = {initial}
    for o in ops:
        if o.kind == GET and o.result is not UNKNOWN:
            observed.add(o.result)
        elif o.kind == CAS:
            observed.add(o.expected)
    return [
        (_CODES[o.kind], o.value if o.value in observed else _GHOST, o.expected, o.result, o.result is UNKNOWN)
        for o in ops
    ]


def _step(code: int, value: Any, expected: Any, result: Any, unknown: bool, state: Any) -> tuple[bool, Any]:
    if code == 0:  # put
        return True, value
    if code == 1:  # get
        return (unknown or state == result), state
    if code == 2:  # cas
        hit = state == expected
        return (unknown or result == hit), (value if hit else state)
    return (unknown or result == (state is not None)), None  # delete


def check_register(
    ops: Sequence[Op],
    *,
    key: bytes = b"",
    initial: bytes | None = None,
    max_steps: int = 3_000_000,
    max_seconds: float = 60.0,
    dfs_share: float = 0.2,
) -> KeyVerdict:
    """Is ``ops`` (the operations of one key) linearizable for a register
    starting at ``initial``? The depth-first search runs first with
    ``dfs_share`` of the budget (it is fastest when the history is fine); if
    it runs out -- typically an anomaly late in a long history with many
    unknown outcomes, which makes it unwind everything -- the breadth-first
    sweep decides with the rest. Both are exact; None only if both give up."""
    t0 = time.monotonic()
    first = _dfs(ops, key=key, initial=initial, max_steps=max(20_000, int(max_steps * dfs_share)),
                 max_seconds=max_seconds * dfs_share)
    if first.ok is not None:
        return first
    left = max(0.0, max_seconds - (time.monotonic() - t0))
    second = _sweep(ops, key=key, initial=initial, max_steps=max(20_000, max_steps - first.steps), max_seconds=left)
    second.steps += first.steps
    second.seconds = time.monotonic() - t0
    if second.ok is None:
        second.detail = f"depth-first search: {first.detail}; sweep: {second.detail}"
    else:
        second.detail = (second.detail + " " if second.detail else "") + \
            f"(the depth-first search {first.detail}; the breadth-first sweep decided)"
    return second


def _dfs(
    ops: Sequence[Op],
    *,
    key: bytes = b"",
    initial: bytes | None = None,
    max_steps: int = 3_000_000,
    max_seconds: float = 60.0,
) -> KeyVerdict:
    """Porcupine's depth-first search (see the module docstring)."""
    t0 = time.monotonic()
    n = len(ops)
    if n == 0:
        return KeyVerdict(key, True, 0, 0, 0.0)
    spec = _spec(ops, initial)
    entries: list[_Entry] = []
    for i, o in enumerate(ops):
        if o.result is UNKNOWN:
            end = math.inf
        else:
            end = o.complete
            if not end >= o.invoke:
                raise ValueError(f"operation {o.describe()} completes before it is invoked")
        call = _Entry(i, True, o.invoke)
        ret = _Entry(i, False, end)
        call.match = ret
        entries.append(call)
        entries.append(ret)
    # Time order; on a tie a call comes first (the two operations overlap).
    entries.sort(key=lambda e: (e.time, not e.is_call))
    head = _Entry(-1, True, -math.inf)
    prev = head
    for e in entries:
        prev.next = e
        e.prev = prev
        prev = e

    state: Any = initial
    linearized = 0
    cache: set[tuple[int, Any]] = set()
    calls: list[tuple[_Entry, Any]] = []
    entry = head.next
    steps = 0
    best = -1
    best_detail = ""
    best_witness: list[str] = []
    check_every = 20_000
    gave_up = ""
    while head.next is not None:
        steps += 1
        if steps % check_every == 0:
            if steps >= max_steps:
                gave_up = f"gave up after {steps} steps"
                break
            if time.monotonic() - t0 > max_seconds:
                gave_up = f"gave up after {max_seconds:g} s ({steps} steps)"
                break
        assert entry is not None
        if entry.is_call:
            code, value, expected, result, unknown = spec[entry.id]
            if code == 0:  # put
                ok, new = True, value
            elif code == 1:  # get
                ok, new = (unknown or state == result), state
            elif code == 2:  # cas
                hit = state == expected
                new = value if hit else state
                ok = unknown or result == hit
            else:  # delete
                ok, new = (unknown or result == (state is not None)), None
            if ok:
                bit = 1 << entry.id
                probe = (linearized | bit, new)
                if probe not in cache:
                    cache.add(probe)
                    calls.append((entry, state))
                    state = new
                    linearized |= bit
                    # lift the call and its return out of the list
                    entry.prev.next = entry.next  # type: ignore[union-attr]
                    entry.next.prev = entry.prev  # type: ignore[union-attr]
                    match = entry.match
                    assert match is not None
                    match.prev.next = match.next  # type: ignore[union-attr]
                    if match.next is not None:
                        match.next.prev = match.prev
                    entry = head.next
                    continue
            entry = entry.next
        else:
            # A return whose call is not linearized: nothing before it can be
            # linearized now; undo the last choice.
            if len(calls) > best:
                best = len(calls)
                blocked = ops[entry.id]
                best_detail = (
                    f"after {len(calls)} of {n} operations linearized (state {_show(state)}), "
                    f"no candidate fits before {blocked.describe()}"
                )
                best_witness = [ops[c.id].describe() for c, _ in calls[-6:]]
            if not calls:
                return KeyVerdict(key, False, n, steps, time.monotonic() - t0, best_detail, max(best, 0), best_witness)
            top, state = calls.pop()
            linearized &= ~(1 << top.id)
            match = top.match
            assert match is not None
            match.prev.next = match  # type: ignore[union-attr]
            if match.next is not None:
                match.next.prev = match
            top.prev.next = top  # type: ignore[union-attr]
            top.next.prev = top  # type: ignore[union-attr]
            entry = top.next
    elapsed = time.monotonic() - t0
    if gave_up:
        return KeyVerdict(key, None, n, steps, elapsed, gave_up, max(best, 0), best_witness)
    return KeyVerdict(key, True, n, steps, elapsed)


def _sweep(
    ops: Sequence[Op],
    *,
    key: bytes = b"",
    initial: bytes | None = None,
    max_steps: int = 3_000_000,
    max_seconds: float = 60.0,
) -> KeyVerdict:
    """Is ``ops`` (the operations of one key) linearizable for a register
    starting at ``initial``?

    Lowe's just-in-time linearization, breadth-first (as Knossos' "linear"
    checker): the calls and returns are swept in time order, keeping the set
    of *configurations* -- (register state, which of the operations now in
    flight are already linearized, which unknown operations were used). At
    a return, every configuration is first closed under linearizing any
    in-flight operation (and any unknown one already invoked); only those
    where the returning operation is linearized survive. No survivor: the
    history is not linearizable, and that operation is where it broke.

    Configurations are memoized (a set, as porcupine's cache), and two exact
    reductions keep unknown outcomes cheap:

    * an unknown operation is optional (its completion is +inf, so it may
      also never happen): a configuration that used a superset of another's
      unknown operations, with the same state and in-flight set, is dropped
      (the other has every option it has); unknown operations with the same
      effect are interchangeable once invoked, so each class is used in
      invocation order;
    * a written value that no read returns and no cas expects is replaced by
      one shared token: no operation can tell such values apart.
    """
    t0 = time.monotonic()
    n = len(ops)
    if n == 0:
        return KeyVerdict(key, True, 0, 0, 0.0)
    spec = _spec(ops, initial)
    # Events: (time, 0 = call / 1 = return, op). A call sorts before a return
    # at the same time (the two operations overlap).
    events: list[tuple[float, int, int]] = []
    for i, o in enumerate(ops):
        events.append((o.invoke, 0, i))
        if o.result is not UNKNOWN:
            if not o.complete >= o.invoke:
                raise ValueError(f"operation {o.describe()} completes before it is invoked")
            events.append((o.complete, 1, i))
    events.sort()

    # Unknown operations: their bit in a used-mask, and their class (same effect).
    u_bit: dict[int, int] = {}
    u_class_of: dict[int, int] = {}
    classes: dict[tuple[Any, ...], int] = {}
    class_members: list[list[int]] = []  # unknown op ids in invocation order
    for _, kind, i in events:
        if kind == 0 and spec[i][4]:
            u_bit[i] = 1 << len(u_bit)
            c = classes.setdefault(spec[i][:3], len(classes))
            if c == len(class_members):
                class_members.append([])
            class_members[c].append(i)
            u_class_of[i] = c
    class_masks = [sum(u_bit[i] for i in members) for members in class_members]

    # In-flight known operations hold a slot (a bit in the linearized-mask).
    slot_of: dict[int, int] = {}
    free_slots: list[int] = []
    next_slot = 0
    in_flight: list[int] = []  # known op ids
    invoked_classes: list[int] = []  # classes with at least one invoked member

    frontier: dict[tuple[Any, int], list[int]] = {(initial, 0): [0]}
    steps = 0

    def insert(table: dict[tuple[Any, int], list[int]], state: Any, lin: int, used: int) -> bool:
        masks = table.get((state, lin))
        if masks is None:
            table[(state, lin)] = [used]
            return True
        for m in masks:
            if not m & ~used:
                return False  # a configuration with fewer unknown operations used has every option
        masks[:] = [m for m in masks if m & ~used or m == used]
        masks.append(used)
        return True

    for at, kind, i in events:
        if kind == 0:
            if spec[i][4]:
                c = u_class_of[i]
                if class_members[c][0] == i:
                    invoked_classes.append(c)
                continue
            if free_slots:
                slot = free_slots.pop()
            else:
                slot, next_slot = next_slot, next_slot + 1
            slot_of[i] = slot
            in_flight.append(i)
            continue
        # The return of known operation i: close the frontier, keep those where i is linearized.
        work = [(st, lin, used) for (st, lin), masks in frontier.items() for used in masks]
        closed = {k: list(v) for k, v in frontier.items()}
        while work:
            steps += 1
            if steps % 20_000 == 0:
                if steps >= max_steps:
                    return KeyVerdict(key, None, n, steps, time.monotonic() - t0, f"gave up after {steps} steps")
                if time.monotonic() - t0 > max_seconds:
                    return KeyVerdict(key, None, n, steps, time.monotonic() - t0,
                                      f"gave up after {max_seconds:g} s ({steps} steps)")
            state, lin, used = work.pop()
            masks = closed.get((state, lin))
            if masks is None or used not in masks:
                continue  # superseded meanwhile
            for j in in_flight:
                bit = 1 << slot_of[j]
                if lin & bit:
                    continue
                ok, new = _step(*spec[j], state)
                if ok and insert(closed, new, lin | bit, used):
                    work.append((new, lin | bit, used))
            for c in invoked_classes:
                members = class_members[c]
                k = bin(used & class_masks[c]).count("1")
                if k >= len(members):
                    continue
                j = members[k]
                if ops[j].invoke > at:
                    continue  # not invoked yet
                _, new = _step(*spec[j], state)
                if insert(closed, new, lin, used | u_bit[j]):
                    work.append((new, lin, used | u_bit[j]))
        bit = 1 << slot_of[i]
        survivors: dict[tuple[Any, int], list[int]] = {}
        for (state, lin), masks in closed.items():
            if lin & bit:
                for used in masks:
                    insert(survivors, state, lin & ~bit, used)
        if not survivors:
            states = sorted({_show(st) for (st, _lin) in frontier})
            detail = (f"{ops[i].describe()} cannot be linearized: just before, the register could hold "
                      f"{', '.join(states[:8])}{' ...' if len(states) > 8 else ''}")
            witness = [ops[j].describe() for j in in_flight if j != i][:8]
            return KeyVerdict(key, False, n, steps, time.monotonic() - t0, detail, 0, witness)
        frontier = survivors
        in_flight.remove(i)
        free_slots.append(slot_of.pop(i))
    return KeyVerdict(key, True, n, steps, time.monotonic() - t0)


def _show(state: Any) -> str:
    return "<a value nothing reads>" if state is _GHOST else _v(state)


def check_history(
    ops: Iterable[Op], *, max_steps: int = 3_000_000, max_seconds: float = 60.0
) -> dict[bytes, KeyVerdict]:
    """Check every key of ``ops`` on its own; keys start absent."""
    by_key: dict[bytes, list[Op]] = defaultdict(list)
    for o in ops:
        by_key[o.key].append(o)
    return {
        k: check_register(v, key=k, max_steps=max_steps, max_seconds=max_seconds)
        for k, v in sorted(by_key.items())
    }


def quick_violations(ops: Iterable[Op]) -> list[str]:
    """Sound, partial checks of one or many keys, assuming every written value
    is unique per key. Each string names an anomaly that no linearization can
    explain. Observations are gets with a value and cas that swapped (both
    saw the key hold a value)."""
    by_key: dict[bytes, list[Op]] = defaultdict(list)
    for o in ops:
        by_key[o.key].append(o)
    problems: list[str] = []
    for key, kops in sorted(by_key.items()):
        writers: dict[bytes, list[Op]] = defaultdict(list)
        for o in kops:
            if o.kind in (PUT, CAS) and o.value is not None:
                writers[o.value].append(o)
        # Writes known to have replaced the value (completed with an effect).
        effective = sorted(
            (o for o in kops if not o.unknown and (
                o.kind == PUT or (o.kind == CAS and o.result is True) or (o.kind == DELETE and o.result is True))),
            key=lambda o: o.invoke,
        )
        invokes = [o.invoke for o in effective]
        suffix_min: list[float] = [math.inf] * (len(effective) + 1)
        suffix_arg: list[Op | None] = [None] * (len(effective) + 1)
        for i in range(len(effective) - 1, -1, -1):
            if effective[i].complete < suffix_min[i + 1]:
                suffix_min[i], suffix_arg[i] = effective[i].complete, effective[i]
            else:
                suffix_min[i], suffix_arg[i] = suffix_min[i + 1], suffix_arg[i + 1]
        for o in kops:
            if o.unknown:
                continue
            if o.kind == GET and o.result is not None:
                seen: bytes = o.result
            elif o.kind == CAS and o.result is True and o.expected is not None:
                seen = o.expected
            else:
                continue
            ws = writers.get(seen, [])
            if not ws:
                problems.append(f"{key.decode(errors='replace')}: {o.describe()} saw a value never written")
                continue
            if len(ws) != 1:
                continue  # values not unique: no conclusion
            w = ws[0]
            if w is o:
                continue
            if o.complete < w.invoke:
                problems.append(
                    f"{key.decode(errors='replace')}: {o.describe()} saw a value before its write {w.describe()} began"
                )
                continue
            if w.kind == CAS and w.result is False:
                problems.append(
                    f"{key.decode(errors='replace')}: {o.describe()} saw the value of a cas that did not swap: {w.describe()}"
                )
                continue
            if w.unknown:
                continue  # its effect may come at any time after invoke
            # A known write w2 that started after w completed and completed
            # before o began overwrote ``seen`` for good (values are unique).
            i = bisect.bisect_right(invokes, w.complete)
            if suffix_min[i] < o.invoke:
                w2 = suffix_arg[i]
                assert w2 is not None
                problems.append(
                    f"{key.decode(errors='replace')}: stale: {o.describe()} saw the value of {w.describe()}, "
                    f"overwritten by {w2.describe()} before it began"
                )
    return problems

"""tests.chaos.checker: the linearizability checker of the chaos run.

Rules: linearizable histories pass; the classic anomalies (stale read, lost
write, cas anomaly, read of a value never written) fail; an unknown outcome
may take effect any time after its invocation, or never; histories made by a
sequential reference register with random real-time overlaps always pass;
the search gives up (verdict None) at its budget instead of hanging.
"""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.chaos.checker import (
    CAS,
    DELETE,
    GET,
    PUT,
    UNKNOWN,
    Op,
    check_history,
    check_register,
    quick_violations,
)

K = b"/k"
INF = math.inf


def put(v: str, t0: float, t1: float = INF, *, unknown: bool = False, c: int = 0) -> Op:
    return Op(PUT, K, value=v.encode(), result=UNKNOWN if unknown else None, invoke=t0,
              complete=INF if unknown else t1, client=c)


def get(r: str | None, t0: float, t1: float, c: int = 0) -> Op:
    return Op(GET, K, result=None if r is None else r.encode(), invoke=t0, complete=t1, client=c)


def cas(e: str | None, n: str, swapped: bool | None, t0: float, t1: float = INF, c: int = 0) -> Op:
    return Op(CAS, K, value=n.encode(), expected=None if e is None else e.encode(),
              result=UNKNOWN if swapped is None else swapped, invoke=t0,
              complete=INF if swapped is None else t1, client=c)


def delete(existed: bool | None, t0: float, t1: float = INF, c: int = 0) -> Op:
    return Op(DELETE, K, result=UNKNOWN if existed is None else existed, invoke=t0,
              complete=INF if existed is None else t1, client=c)


def ok(ops: list[Op]) -> bool | None:
    return check_register(ops, key=K).ok


# -- linearizable ------------------------------------------------------------


def test_empty_and_sequential_histories_pass() -> None:
    assert ok([]) is True
    assert ok([get(None, 0, 1)]) is True
    assert ok([put("a", 0, 1), get("a", 2, 3), cas("a", "b", True, 4, 5), get("b", 6, 7),
               delete(True, 8, 9), get(None, 10, 11), delete(False, 12, 13)]) is True


def test_concurrent_write_may_be_seen_or_not() -> None:
    # A read overlapping a write may return the old or the new value.
    assert ok([put("a", 0, 1), put("b", 2, 6), get("a", 3, 4)]) is True
    assert ok([put("a", 0, 1), put("b", 2, 6), get("b", 3, 4)]) is True
    # Two overlapping reads both seeing the new value, then one the old: the
    # later read overlaps the write too, but began after a read saw "b".
    assert ok([put("a", 0, 1), put("b", 2, 10), get("b", 3, 4), get("a", 5, 6)]) is False


def test_concurrent_writes_order_chosen_by_reads() -> None:
    ops = [put("a", 0, 5, c=1), put("b", 0, 5, c=2), get("a", 6, 7), get("a", 8, 9)]
    assert ok(ops) is True
    ops = [put("a", 0, 5, c=1), put("b", 0, 5, c=2), get("a", 6, 7), get("b", 8, 9)]
    assert ok(ops) is False


# -- the classic anomalies ----------------------------------------------------


def test_stale_read_fails() -> None:
    ops = [put("a", 0, 1), put("b", 2, 3), get("a", 4, 5)]
    assert ok(ops) is False
    assert any("stale" in p for p in quick_violations(ops))


def test_lost_write_fails() -> None:
    # An acknowledged write is not visible to a later read (the key reads absent).
    ops = [put("a", 0, 1), get(None, 2, 3)]
    assert ok(ops) is False
    ops = [put("a", 0, 1), put("b", 2, 3), get("a", 4, 5), get("a", 6, 7)]
    assert ok(ops) is False


def test_cas_anomalies_fail() -> None:
    # Two cas from the same expected value both swap.
    ops = [put("a", 0, 1), cas("a", "b", True, 2, 3, c=1), cas("a", "c", True, 2, 3, c=2)]
    assert ok(ops) is False
    # A cas that did not swap although the value matched.
    assert ok([put("a", 0, 1), cas("a", "b", False, 2, 3)]) is False
    # A cas that swapped on a wrong expected value.
    assert ok([put("a", 0, 1), cas("z", "b", True, 2, 3)]) is False
    # A read of the value of a cas that did not swap.
    ops = [put("a", 0, 1), cas("z", "b", False, 2, 3), get("b", 4, 5)]
    assert ok(ops) is False
    assert quick_violations(ops)


def test_delete_anomalies_fail() -> None:
    assert ok([put("a", 0, 1), delete(False, 2, 3)]) is False
    assert ok([delete(True, 0, 1)]) is False
    assert ok([put("a", 0, 1), delete(True, 2, 3), get("a", 4, 5)]) is False


def test_read_of_a_value_never_written_fails() -> None:
    ops = [put("a", 0, 1), get("zzz", 2, 3)]
    assert ok(ops) is False
    assert any("never written" in p for p in quick_violations(ops))


def test_read_before_the_write_began_fails() -> None:
    ops = [get("a", 0, 1), put("a", 2, 3)]
    assert ok(ops) is False
    assert any("before its write" in p for p in quick_violations(ops))


def test_failure_detail_names_the_blocked_operation() -> None:
    ops = [put("a", 0, 1), put("b", 2, 3), get("a", 4, 5)]
    verdict = check_register([Op(o.kind, o.key, o.value, o.expected, o.result, o.invoke, o.complete, o.client, i)
                              for i, o in enumerate(ops)], key=K)
    assert verdict.ok is False
    assert "#2" in verdict.detail and "get()" in verdict.detail


# -- unknown outcomes -------------------------------------------------------------


def test_unknown_write_may_take_effect_late_or_never() -> None:
    # Never: later reads see the previous value.
    assert ok([put("a", 0, 1), put("b", 2, unknown=True), get("a", 10, 11), get("a", 20, 21)]) is True
    # Late: long after the client gave up.
    assert ok([put("a", 0, 1), put("b", 2, unknown=True), get("a", 10, 11), get("b", 20, 21)]) is True
    # But once seen it cannot be undone, and it cannot act before its invocation.
    assert ok([put("a", 0, 1), put("b", 2, unknown=True), get("b", 10, 11), get("a", 20, 21)]) is False
    assert ok([put("a", 0, 1), get("b", 2, 3), put("b", 4, unknown=True)]) is False


def test_unknown_cas_and_delete() -> None:
    assert ok([put("a", 0, 1), cas("a", "b", None, 2), get("a", 5, 6)]) is True
    assert ok([put("a", 0, 1), cas("a", "b", None, 2), get("b", 5, 6)]) is True
    # An unknown cas whose expected value never held cannot install its value.
    assert ok([put("a", 0, 1), cas("z", "b", None, 2), get("b", 5, 6)]) is False
    assert ok([put("a", 0, 1), delete(None, 2), get(None, 5, 6), get(None, 7, 8)]) is True
    assert ok([put("a", 0, 1), delete(None, 2), get(None, 5, 6), get("a", 7, 8)]) is False


def test_many_unknown_writes_stay_tractable() -> None:
    ops = [put("v0", 0, 1)]
    t = 2.0
    for i in range(1, 60):
        ops.append(put(f"u{i}", t, unknown=True, c=1))
        ops.append(put(f"v{i}", t + 0.1, t + 0.5, c=2))
        ops.append(get(f"v{i}", t + 0.6, t + 0.7, c=3))
        t += 1
    verdict = check_register(ops, key=K)
    assert verdict.ok is True, verdict.detail


def _long_history(n: int, *, clients: int = 5, unknown_p: float = 0.02, seed: int = 1) -> list[Op]:
    """A linearizable history of ``n`` ops by overlapping sequential clients,
    some writes with an unknown outcome (applied or not)."""
    rng = random.Random(seed)
    free_at = [0.0] * clients
    slots = []
    for i in range(n):
        c = i % clients
        t0 = free_at[c] + rng.uniform(0, 0.01)
        t1 = t0 + rng.uniform(0.001, 0.05)
        free_at[c] = t1
        slots.append((rng.uniform(t0, t1), t0, t1, c, i))
    slots.sort()
    state: bytes | None = None
    ops = []
    for _, t0, t1, c, i in slots:
        kind = rng.choice([PUT, GET, GET, CAS, DELETE])
        unknown = kind != GET and rng.random() < unknown_p
        applied = not unknown or rng.random() < 0.5
        end = INF if unknown else t1
        if kind == PUT:
            value = b"v%d" % i
            state = value if applied else state
            ops.append(Op(PUT, K, value=value, result=UNKNOWN if unknown else None, invoke=t0, complete=end, client=c, ident=i))
        elif kind == GET:
            ops.append(Op(GET, K, result=state, invoke=t0, complete=t1, client=c, ident=i))
        elif kind == CAS:
            expected = rng.choice([state, None])
            value = b"v%d" % i
            hit = state == expected
            state = value if applied and hit else state
            ops.append(Op(CAS, K, value=value, expected=expected, result=UNKNOWN if unknown else hit,
                          invoke=t0, complete=end, client=c, ident=i))
        else:
            existed = state is not None
            state = None if applied else state
            ops.append(Op(DELETE, K, result=UNKNOWN if unknown else existed, invoke=t0, complete=end, client=c, ident=i))
    return ops


def test_long_histories_are_checked_within_seconds() -> None:
    ops = _long_history(3000, unknown_p=0.01)
    verdict = check_register(ops, key=K, max_seconds=30)
    assert verdict.ok is True and verdict.seconds < 10, verdict


def test_a_late_anomaly_after_many_unknown_outcomes_is_found_and_located() -> None:
    ops = _long_history(1500, unknown_p=0.02, seed=3)
    end = max(o.complete for o in ops if not o.unknown)
    ops += [Op(PUT, K, value=b"late", invoke=end + 1, complete=end + 2, ident=90001),
            Op(GET, K, result=b"v0", invoke=end + 3, complete=end + 4, ident=90002)]
    verdict = check_register(ops, key=K, max_seconds=60)
    assert verdict.ok is False, verdict
    assert "#90002" in verdict.detail and "could hold" in verdict.detail, verdict.detail


def test_gives_up_at_the_budget() -> None:
    ops = _long_history(1500, unknown_p=0.02, seed=3)
    end = max(o.complete for o in ops if not o.unknown)
    ops += [Op(GET, K, result=b"v0", invoke=end + 3, complete=end + 4)]
    verdict = check_register(ops, key=K, max_steps=40_000, max_seconds=30)
    assert verdict.ok is None and "gave up" in verdict.detail, verdict


def test_keys_are_checked_independently() -> None:
    a = Op(PUT, b"/a", value=b"1", invoke=0, complete=1)
    b = Op(GET, b"/b", result=b"1", invoke=2, complete=3)  # b never held "1"
    verdicts = check_history([a, b])
    assert verdicts[b"/a"].ok is True
    assert verdicts[b"/b"].ok is False


# -- generated histories from a sequential reference register ------------------------


@st.composite
def reference_histories(draw: st.DrawFn) -> list[Op]:
    """Run random ops on a real register one after another at increasing
    linearization points, then widen each op's [invoke, complete] around its
    point at random; some writes get an unknown outcome (applied or not)."""
    n = draw(st.integers(min_value=0, max_value=40))
    seed = draw(st.integers(min_value=0, max_value=2**32 - 1))
    rng = random.Random(seed)
    state: bytes | None = None
    written: list[bytes] = []
    ops: list[Op] = []
    point = 0.0
    for i in range(n):
        point += rng.uniform(0.01, 1.0)
        t0 = point - rng.choice([0.0, rng.uniform(0, 3)])
        t1 = point + rng.choice([0.0, rng.uniform(0, 3)])
        kind = rng.choice([PUT, GET, GET, CAS, DELETE])
        unknown = kind != GET and rng.random() < 0.15
        applied = not unknown or rng.random() < 0.5
        if kind == PUT:
            value = b"v%d" % i
            if applied:
                state = value
            written.append(value)
            ops.append(Op(PUT, K, value=value, result=UNKNOWN if unknown else None, invoke=t0,
                          complete=INF if unknown else t1, client=i))
        elif kind == GET:
            ops.append(Op(GET, K, result=state, invoke=t0, complete=t1, client=i))
        elif kind == CAS:
            expected = rng.choice([None, state, *written[-3:]])
            value = b"v%d" % i
            hit = state == expected
            if applied and hit:
                state = value
            written.append(value)
            ops.append(Op(CAS, K, value=value, expected=expected, result=UNKNOWN if unknown else hit,
                          invoke=t0, complete=INF if unknown else t1, client=i))
        else:
            existed = state is not None
            if applied:
                state = None
            ops.append(Op(DELETE, K, result=UNKNOWN if unknown else existed, invoke=t0,
                          complete=INF if unknown else t1, client=i))
    rng.shuffle(ops)
    return ops


@settings(max_examples=300, deadline=None)
@given(reference_histories())
def test_histories_of_a_sequential_register_always_pass(ops: list[Op]) -> None:
    verdict = check_register(ops, key=K)
    assert verdict.ok is True, verdict.detail
    assert quick_violations(ops) == []


@settings(max_examples=200, deadline=None)
@given(reference_histories(), st.data())
def test_a_read_of_a_never_written_value_always_fails(ops: list[Op], data: st.DataObject) -> None:
    t = data.draw(st.floats(min_value=0, max_value=100))
    bad = Op(GET, K, result=b"never-written", invoke=t, complete=t + 0.5, client=999)
    assert check_register([*ops, bad], key=K).ok is False


# -- both searches against a brute-force oracle ---------------------------------------


def _brute_force(ops: list[Op]) -> bool:
    """Linearizable iff some subset of the unknown ops, with every known op, has
    an order that respects real time (a before b when a completes before b
    is invoked) and the register's rules."""
    from itertools import combinations

    from tests.chaos.checker import _CODES, _step

    known = [o for o in ops if not o.unknown]
    unknown = [o for o in ops if o.unknown]

    def search(remaining: list[Op], state: bytes | None) -> bool:
        if not remaining:
            return True
        for o in remaining:
            # o may go first only if no other remaining op completed before o began.
            if any(p is not o and p.complete < o.invoke for p in remaining):
                continue
            ok, new = _step(_CODES[o.kind], o.value, o.expected, o.result, o.unknown, state)
            if ok and search([p for p in remaining if p is not o], new):
                return True
        return False

    return any(search(known + list(extra), None)
               for r in range(len(unknown) + 1) for extra in combinations(unknown, r))


@st.composite
def small_random_histories(draw: st.DrawFn) -> list[Op]:
    """Arbitrary small histories (most are not linearizable) over few values."""
    n = draw(st.integers(min_value=1, max_value=6))
    ops = []
    values = [b"a", b"b", b"c"]
    for i in range(n):
        kind = draw(st.sampled_from([PUT, GET, CAS, DELETE]))
        t0 = draw(st.integers(min_value=0, max_value=8))
        unknown = kind != GET and draw(st.booleans()) and draw(st.booleans())
        t1 = INF if unknown else t0 + draw(st.integers(min_value=0, max_value=4))
        value = expected = result = None
        if kind == PUT:
            value = values[i % 3] + b"%d" % i
        elif kind == GET:
            result = draw(st.sampled_from([None, *values, *[v + b"%d" % j for v in values for j in range(n)]]))
        elif kind == CAS:
            value = values[i % 3] + b"%d" % i
            expected = draw(st.sampled_from([None, *[v + b"%d" % j for v in values for j in range(n)]]))
            result = draw(st.booleans())
        else:
            result = draw(st.booleans())
        ops.append(Op(kind, K, value=value, expected=expected, result=UNKNOWN if unknown else result,
                      invoke=float(t0), complete=float(t1), client=i, ident=i))
    return ops


@settings(max_examples=600, deadline=None)
@given(small_random_histories())
def test_both_searches_agree_with_brute_force(ops: list[Op]) -> None:
    from tests.chaos.checker import _dfs, _sweep

    expected = _brute_force(ops)
    assert _dfs(ops, key=K).ok is expected
    assert _sweep(ops, key=K).ok is expected
    assert check_register(ops, key=K).ok is expected
    if quick_violations(ops):
        assert expected is False

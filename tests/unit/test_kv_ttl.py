"""dengine.kv.ttl: the TTL index.

Rules: ``expired`` returns exactly the live keys whose stamp <= now, earliest
first, without removing them; stale heap entries never resurface; the heap
stays bounded by the live size."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dengine.kv.ttl import TTLIndex


def test_expired_boundary_is_inclusive_and_non_destructive() -> None:
    idx = TTLIndex()
    idx.set(b"a", 100)
    idx.set(b"b", 50)
    assert idx.expired(49, 10) == []
    assert idx.expired(50, 10) == [(b"b", 50)]
    assert idx.expired(100, 10) == [(b"b", 50), (b"a", 100)]
    assert idx.expired(100, 10) == [(b"b", 50), (b"a", 100)]  # still there
    assert idx.expired(100, 1) == [(b"b", 50)]
    assert idx.expired(100, 0) == []


def test_rewritten_key_reports_only_its_current_stamp() -> None:
    idx = TTLIndex()
    idx.set(b"a", 10)
    idx.set(b"a", 30)
    assert idx.expired(20, 10) == []
    assert idx.expired(30, 10) == [(b"a", 30)]
    idx.set(b"a", 10)  # back to an older stamp: the old heap entry is valid again
    assert idx.expired(40, 10) == [(b"a", 10)]


def test_cleared_key_never_resurfaces() -> None:
    idx = TTLIndex()
    idx.set(b"a", 10)
    idx.clear(b"a")
    idx.clear(b"missing")
    assert idx.expired(100, 10) == []
    assert idx.get(b"a") is None and b"a" not in idx and len(idx) == 0
    assert idx.next_expiry() is None


def test_next_expiry_skips_stale_entries() -> None:
    idx = TTLIndex()
    idx.set(b"a", 5)
    idx.set(b"b", 9)
    idx.set(b"a", 20)
    assert idx.next_expiry() == 9
    assert idx.is_expired(b"b", 9) and not idx.is_expired(b"a", 19)


def test_heap_stays_bounded_under_rewrites() -> None:
    idx = TTLIndex()
    for i in range(10_000):
        idx.set(b"k%d" % (i % 10), i)
    assert len(idx) == 10
    assert len(idx._heap) <= 2 * 10 + 64 + 1


def test_construct_from_map_and_copy() -> None:
    idx = TTLIndex({b"a": 3, b"b": 1})
    assert idx.expired(5, 5) == [(b"b", 1), (b"a", 3)]
    copy = idx.copy_map()
    copy[b"c"] = 0
    assert b"c" not in idx
    assert sorted(idx.items()) == [(b"a", 3), (b"b", 1)]


ops = st.lists(
    st.tuples(st.sampled_from(["set", "clear", "sweep"]), st.sampled_from([b"a", b"b", b"c", b"d"]), st.integers(0, 50)),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops=ops, limit=st.integers(1, 5))
def test_expired_matches_dict_oracle(ops: list[tuple[str, bytes, int]], limit: int) -> None:
    idx = TTLIndex()
    oracle: dict[bytes, int] = {}
    for op, key, t in ops:
        if op == "set":
            idx.set(key, t)
            oracle[key] = t
        elif op == "clear":
            idx.clear(key)
            oracle.pop(key, None)
        else:
            expected = sorted(((k, at) for k, at in oracle.items() if at <= t), key=lambda p: (p[1], p[0]))
            got = idx.expired(t, limit)
            assert len(got) == min(limit, len(expected))
            assert got == expected[: len(got)]
        assert dict(idx.items()) == oracle
    assert idx.next_expiry() == (min(oracle.values()) if oracle else None)

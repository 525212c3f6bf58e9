"""dengine.watch.registry: exact and slash-boundary prefix matching.

Rules: the prefix table of the watch reference is pinned one row per case;
prefix matching agrees with a naive ``key.startswith(prefix)`` oracle over
random slash-terminated prefixes; lookups never scan all watchers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dengine.errors import InvalidArgument, ResourceExhausted
from dengine.watch.registry import WatchRegistry, WatchSpec

# The table from the d-engine watch reference, prefix "/services/payment/".
PAYMENT_TABLE = [
    (b"/services/payment/node1", True),
    (b"/services/payment/node2", True),
    (b"/services/payment/node1/sub", True),
    (b"/services/payment", False),
    (b"/services/", False),
    (b"/services/paymentextra/node", False),
]


@pytest.mark.parametrize(("key", "fires"), PAYMENT_TABLE)
def test_prefix_slash_boundary_table(key: bytes, fires: bool) -> None:
    reg = WatchRegistry()
    reg.register(1, b"/services/payment/", prefix=True)
    assert (reg.match(key) == [1]) is fires
    assert reg.match(key) in ([1], [])


def test_exact_watch_matches_only_its_key() -> None:
    reg = WatchRegistry()
    reg.register(1, b"/config/timeout")
    assert reg.match(b"/config/timeout") == [1]
    assert reg.match(b"/config/timeout/x") == []
    assert reg.match(b"/config/timeou") == []
    assert reg.match(b"/config/") == []


def test_match_order_exact_then_shallow_to_deep_prefix_in_registration_order() -> None:
    reg = WatchRegistry()
    reg.register(10, b"/a/b/", prefix=True)
    reg.register(11, b"/", prefix=True)
    reg.register(12, b"/a/b/c")
    reg.register(13, b"/a/", prefix=True)
    reg.register(14, b"/a/b/", prefix=True)
    reg.register(15, b"/a/b/c")
    assert reg.match(b"/a/b/c") == [12, 15, 11, 13, 10, 14]


def test_key_equal_to_prefix_matches_like_startswith() -> None:
    reg = WatchRegistry()
    reg.register(1, b"/a/", prefix=True)
    assert reg.match(b"/a/") == [1]


def test_unregister_removes_and_cleans_up() -> None:
    reg = WatchRegistry()
    reg.register(1, b"/a/", prefix=True)
    reg.register(2, b"/a/x")
    reg.register(3, b"/a/", prefix=True)
    assert reg.count() == 3
    assert reg.unregister(1) is True
    assert reg.unregister(1) is False
    assert reg.match(b"/a/x") == [2, 3]
    assert reg.unregister(2) and reg.unregister(3)
    assert reg.match(b"/a/x") == []
    assert reg.count() == 0
    assert 1 not in reg
    # Internal tables are emptied, so nothing leaks across re-registration.
    assert not reg._exact and not reg._prefix


def test_any_prev_kv_counts_watchers() -> None:
    reg = WatchRegistry()
    assert reg.any_prev_kv() is False
    reg.register(1, b"k", prev_kv=True)
    reg.register(2, b"/p/", prefix=True, prev_kv=True)
    reg.register(3, b"k")
    assert reg.any_prev_kv() is True
    reg.unregister(1)
    assert reg.any_prev_kv() is True
    reg.unregister(2)
    assert reg.any_prev_kv() is False


def test_get_returns_the_spec() -> None:
    reg = WatchRegistry()
    spec = reg.register(7, b"/p/", prefix=True, prev_kv=True)
    assert spec == WatchSpec(7, b"/p/", True, True)
    assert reg.get(7) == spec
    assert reg.get(8) is None


@pytest.mark.parametrize("bad", [b"/a", b"a/", b"", "/a/"])
def test_register_rejects_bad_prefix(bad: object) -> None:
    reg = WatchRegistry()
    with pytest.raises(InvalidArgument, match="prefix"):
        reg.register(1, bad, prefix=True)  # type: ignore[arg-type]
    assert reg.count() == 0


@pytest.mark.parametrize("bad", [b"", "k", None])
def test_register_rejects_bad_exact_key(bad: object) -> None:
    reg = WatchRegistry()
    with pytest.raises(InvalidArgument, match="watch key"):
        reg.register(1, bad)  # type: ignore[arg-type]
    assert reg.count() == 0


def test_register_rejects_duplicate_id() -> None:
    reg = WatchRegistry()
    reg.register(1, b"k")
    with pytest.raises(ValueError, match="already registered"):
        reg.register(1, b"other")
    assert reg.match(b"other") == []


def test_max_watchers_is_a_hard_cap() -> None:
    reg = WatchRegistry(max_watchers=2)
    reg.register(1, b"a")
    reg.register(2, b"/p/", prefix=True)
    with pytest.raises(ResourceExhausted, match="2 watchers"):
        reg.register(3, b"b")
    reg.unregister(1)
    reg.register(3, b"b")


def test_match_cost_does_not_grow_with_watcher_count() -> None:
    """Many prefix watchers on unrelated namespaces are never consulted."""

    class CountingDict(dict):  # type: ignore[type-arg]
        lookups = 0

        def get(self, key, default=None):  # type: ignore[no-untyped-def]
            CountingDict.lookups += 1
            return super().get(key, default)

    reg = WatchRegistry()
    for i in range(1000):
        reg.register(i, b"/ns%d/" % i, prefix=True)
    reg._prefix = CountingDict(reg._prefix)
    assert reg.match(b"/ns7/a/b") == [7]
    assert CountingDict.lookups == 3  # "/", "/ns7/", "/ns7/a/"


# --- property: prefix matching vs a naive startswith oracle ----------------

segment = st.sampled_from([b"a", b"b", b"ab", b"", b"a/b"])
key_st = st.lists(segment, min_size=0, max_size=4).map(lambda parts: b"/" + b"/".join(parts))
prefix_st = st.lists(st.sampled_from([b"a", b"b", b"ab"]), max_size=3).map(
    lambda parts: b"/" + b"".join(p + b"/" for p in parts)
)
watchers_st = st.lists(
    st.tuples(st.booleans(), st.one_of(prefix_st, key_st.filter(bool))), max_size=20
)


@settings(max_examples=300, deadline=None)
@given(watchers=watchers_st, keys=st.lists(st.one_of(key_st, st.binary(max_size=6)), max_size=10))
def test_match_agrees_with_startswith_oracle(watchers: list[tuple[bool, bytes]], keys: list[bytes]) -> None:
    reg = WatchRegistry()
    for wid, (is_prefix, key) in enumerate(watchers):
        if is_prefix and not (key.startswith(b"/") and key.endswith(b"/")):
            is_prefix = False
        reg.register(wid, key, prefix=is_prefix)
    for key in keys:
        expected = {
            wid
            for wid, (is_prefix, wkey) in enumerate(watchers)
            if (key.startswith(wkey) if reg.get(wid).prefix else key == wkey)  # type: ignore[union-attr]
        }
        got = reg.match(key)
        assert len(got) == len(set(got))
        assert set(got) == expected


@settings(max_examples=100, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(0, 9), st.booleans(), prefix_st), max_size=40))
def test_register_unregister_sequences_keep_tables_consistent(ops: list[tuple[int, bool, bytes]]) -> None:
    reg = WatchRegistry()
    live: dict[int, bytes] = {}
    for wid, add, prefix in ops:
        if add and wid not in live:
            reg.register(wid, prefix, prefix=True, prev_kv=wid % 2 == 0)
            live[wid] = prefix
        elif not add:
            assert reg.unregister(wid) is (wid in live)
            live.pop(wid, None)
    assert reg.count() == len(live)
    assert reg.any_prev_kv() is any(w % 2 == 0 for w in live)
    probe = b"/a/b/ab/"
    assert set(reg.match(probe)) == {w for w, p in live.items() if probe.startswith(p)}

"""dengine.kv.store: the replicated KV state machine.

Rules pinned here: revision = entry index; per-command results; a failed CAS
or a no-op delete changes nothing and emits nothing; prev_value None vs b"";
TTL stamped from the entry (log time), filtered on read, expired only by a
matching ExpireKeys (or when a write replaces an expired key); limits give an
error result, never a crash; the store agrees with a plain-dict oracle over
random command sequences; two stores fed the same log end identical."""

from __future__ import annotations

from typing import Any

import attrs
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from dengine.api import KeyValue, WatchEvent, WatchEventType
from dengine.errors import ErrorCode, InvalidArgument, MalformedMessage
from dengine.kv.commands import (
    Command,
    CompareAndSwap,
    Delete,
    ExpireKeys,
    LeaseGrant,
    Put,
    encode_batch,
    encode_command,
)
from dengine.kv.store import ApplyResult, CommandError, KVStore, prefix_end

PUT, DELETE = WatchEventType.PUT, WatchEventType.DELETE


def ev(kind: WatchEventType, key: bytes, value: bytes, prev: bytes | None, rev: int,
       created: int = 0, version: int = 0, lease: int = 0,
       prev_meta: tuple[int, int, int, int] = (0, 0, 0, 0)) -> WatchEvent:
    """An event; a PUT also carries the key's create_revision and version
    (by default: created by this write, version 1); ``prev_meta`` is the
    key's (create_revision, mod revision, version, lease) before it."""
    if kind is PUT and not created:
        created, version = rev, 1
    return WatchEvent(kind, key, value, prev, rev, 0, created, version, lease, *prev_meta)


def without_prev_meta(result: ApplyResult) -> ApplyResult:
    """``result`` with its events' prev metadata zeroed (the tests of the
    store's basics compare events without it; test_events_carry_prev_meta
    and the oracle check it)."""
    result.events[:] = [attrs.evolve(e, prev_create_revision=0, prev_revision=0, prev_version=0, prev_lease=0)
                        for e in result.events]
    return result


class Log:
    """Feeds a store entries with increasing indexes."""

    def __init__(self, store: KVStore | None = None) -> None:
        self.store = KVStore() if store is None else store
        self.index = 0

    def run(self, now: int, *cmds: Command, prev_meta: bool = False) -> ApplyResult:
        """Apply ``cmds`` as the next entry; the events without their prev
        metadata unless ``prev_meta``."""
        self.index += 1
        result = self.store.apply(self.index, encode_batch(cmds, now))
        return result if prev_meta else without_prev_meta(result)


# --- basics ---------------------------------------------------------------------


def test_put_returns_revision_and_emits_put_with_prev() -> None:
    log = Log()
    r1 = log.run(0, Put(b"k", b"v1"))
    r2 = log.run(0, Put(b"k", b"v2"))
    assert r1.results == [1] and r2.results == [2]
    assert r1.events == [ev(PUT, b"k", b"v1", None, 1)]
    assert r2.events == [ev(PUT, b"k", b"v2", b"v1", 2, created=1, version=2)]
    assert log.store.get(b"k", 0) == b"v2"
    kv = log.store.get_kv(b"k", 0)
    assert kv == KeyValue(b"k", b"v2", 2, create_revision=1, version=2) and kv.mod_revision == 2
    assert log.store.applied_index == 2


def test_events_carry_prev_meta() -> None:
    """A PUT over a key and a DELETE carry what the key was (etcd's prev_kv)."""
    log = Log()
    grant = log.run(0, LeaseGrant(7, 60_000))
    assert grant.results == [7]
    log.run(0, Put(b"k", b"v1"))  # rev 2
    r3 = log.run(0, Put(b"k", b"v2", None, 7), prev_meta=True)
    assert r3.events == [ev(PUT, b"k", b"v2", b"v1", 3, created=2, version=2, lease=7, prev_meta=(2, 2, 1, 0))]
    r4 = log.run(0, Put(b"k", b"v3"), prev_meta=True)
    assert r4.events == [ev(PUT, b"k", b"v3", b"v2", 4, created=2, version=3, prev_meta=(2, 3, 2, 7))]
    r5 = log.run(0, Delete(b"k"), prev_meta=True)
    assert r5.events == [ev(DELETE, b"k", b"", b"v3", 5, prev_meta=(2, 4, 3, 0))]
    r6 = log.run(0, Put(b"k", b"new"), prev_meta=True)  # created again: nothing before it
    assert r6.events == [ev(PUT, b"k", b"new", None, 6)]


def test_empty_value_is_not_absent() -> None:
    log = Log()
    log.run(0, Put(b"k", b""))
    r = log.run(0, Put(b"k", b"x"))
    assert r.events[0].prev_value == b""
    assert log.store.get(b"k", 0) == b"x"
    log.run(0, Put(b"k", b""))
    assert log.store.get(b"k", 0) == b""
    assert log.store.get(b"missing", 0) is None


def test_delete_reports_whether_a_key_was_removed() -> None:
    log = Log()
    log.run(0, Put(b"k", b"v"))
    r = log.run(0, Delete(b"k"), Delete(b"k"))
    assert r.results == [True, False]
    assert r.events == [ev(DELETE, b"k", b"", b"v", 2)]
    assert log.store.get(b"k", 0) is None and log.store.key_count() == 0


def test_cas_success_and_failure() -> None:
    log = Log()
    r = log.run(0, CompareAndSwap(b"k", None, b"a"), CompareAndSwap(b"k", None, b"b"))
    assert r.results == [True, False]
    assert r.events == [ev(PUT, b"k", b"a", None, 1)]  # the failed CAS emitted nothing
    before = log.store.freeze()
    r = log.run(0, CompareAndSwap(b"k", b"x", b"c"), CompareAndSwap(b"k", b"", b"c"))
    assert r.results == [False, False] and r.events == []
    after = log.store.freeze()
    assert (after.values, after.revisions, after.expire_at) == (before.values, before.revisions, before.expire_at)
    r = log.run(0, CompareAndSwap(b"k", b"a", b"c"))
    assert r.results == [True]
    assert r.events == [ev(PUT, b"k", b"c", b"a", 3, created=1, version=2)]


def test_cas_expected_empty_matches_empty_value_not_absence() -> None:
    log = Log()
    assert log.run(0, CompareAndSwap(b"k", b"", b"x")).results == [False]
    log.run(0, Put(b"k", b""))
    assert log.run(0, CompareAndSwap(b"k", b"", b"x")).results == [True]


def test_noop_entry_advances_applied_index_only() -> None:
    store = KVStore()
    r = store.apply(5, b"")
    assert r == ApplyResult(5, [], [])
    assert store.applied_index == 5 and store.key_count() == 0


def test_indexes_must_increase_but_may_skip() -> None:
    store = KVStore()
    store.apply(3, encode_command(Put(b"k", b"v"), 0))
    with pytest.raises(ValueError, match="not after the applied index 3"):
        store.apply(3, b"")
    store.apply(10, b"")
    assert store.get_kv(b"k", 0) == KeyValue(b"k", b"v", 3, create_revision=3, version=1)


def test_undecodable_entry_raises_and_changes_nothing() -> None:
    store = KVStore()
    with pytest.raises(MalformedMessage):
        store.apply(1, b"\x93garbage")
    assert store.applied_index == 0


def test_many_commands_in_one_entry_share_the_revision() -> None:
    log = Log()
    r = log.run(0, Put(b"a", b"1"), Put(b"b", b"2"), Delete(b"a"), Put(b"a", b"3"))
    assert r.results == [1, 1, True, 1]
    assert [(e.type, e.key, e.prev_value) for e in r.events] == [
        (PUT, b"a", None),
        (PUT, b"b", None),
        (DELETE, b"a", b"1"),
        (PUT, b"a", None),
    ]
    assert {e.revision for e in r.events} == {1}


def test_emit_events_false_still_applies() -> None:
    store = KVStore()
    r = store.apply(1, encode_command(Put(b"k", b"v"), 0), emit_events=False)
    assert r.results == [1] and r.events == []
    assert store.get(b"k", 0) == b"v"


# --- limits -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cmd", "words"),
    [
        (Put(b"", b"v"), "key must not be empty"),
        (Put(b"kkkkk", b"v"), "key is 5 bytes"),
        (Put(b"k", b"vvvvvvvvv"), "value is 9 bytes"),
        (Put(b"k", b"v", 0), "ttl_ms"),
        (Put(b"k", b"v", 2**62), "ttl_ms"),
        (CompareAndSwap(b"kkkkk", None, b"v"), "key is 5 bytes"),
        (CompareAndSwap(b"k", None, b"vvvvvvvvv"), "value is 9 bytes"),
        (Delete(b""), "key must not be empty"),
    ],
)
def test_oversized_or_invalid_command_yields_error_result(cmd: Command, words: str) -> None:
    log = Log(KVStore(max_key_size=4, max_value_size=8))
    r = log.run(0, cmd, Put(b"ok", b"v"))
    err = r.results[0]
    assert isinstance(err, CommandError) and err.code == ErrorCode.INVALID_ARGUMENT
    assert words in err.message
    assert isinstance(err.to_exception(), InvalidArgument)
    assert r.results[1] == 1  # the rest of the entry still applies
    assert r.events == [ev(PUT, b"ok", b"v", None, 1)]
    assert log.store.key_count() == 1


# --- reads ----------------------------------------------------------------------------


def test_scan_prefix_is_ordered_and_bounded() -> None:
    log = Log()
    keys = [b"/a", b"/a/", b"/a/x", b"/a/y/z", b"/a0", b"/b", b"/a\xff", b"/a\xff\xff"]
    log.run(0, *[Put(k, k.upper()) for k in reversed(keys)])
    s = log.store
    assert [k for k, _ in s.scan_prefix(b"/a/", 0)] == [b"/a/", b"/a/x", b"/a/y/z"]
    assert [k for k, _ in s.scan_prefix(b"/a", 0)] == [b"/a", b"/a/", b"/a/x", b"/a/y/z", b"/a0", b"/a\xff", b"/a\xff\xff"]
    assert [k for k, _ in s.scan_prefix(b"/a\xff", 0)] == [b"/a\xff", b"/a\xff\xff"]
    assert [k for k, _ in s.scan_prefix(b"", 0)] == sorted(keys)
    assert s.scan_prefix(b"/a/", 0, limit=2) == [(b"/a/", b"/A/"), (b"/a/x", b"/A/X")]
    assert s.scan_prefix(b"/c", 0) == []
    assert s.get_many([b"/a", b"/nope", b"/b"], 0) == [b"/A", None, b"/B"]


# --- TTL ------------------------------------------------------------------------------


def test_ttl_is_stamped_from_the_entry_and_filtered_on_read() -> None:
    log = Log()
    log.run(1000, Put(b"k", b"v", 500), Put(b"p", b"v"))
    s = log.store
    assert s.expired(1499, 10) == []
    assert s.expired(1500, 10) == [(b"k", 1500)]
    assert s.get(b"k", 1499) == b"v"
    assert s.get(b"k", 1500) is None  # expiry is inclusive
    assert s.scan_prefix(b"", 1500) == [(b"p", b"v")]
    assert s.scan_prefix(b"", 1500, limit=1) == [(b"p", b"v")]
    assert s.get_kv(b"k", 1500) is None
    assert s.key_count() == 2  # still held until the deletion commits
    assert s.next_expiry() == 1500


def test_expire_keys_deletes_only_matching_stamps_once_due() -> None:
    log = Log()
    log.run(0, Put(b"a", b"1", 10), Put(b"b", b"2", 10), Put(b"c", b"3", 100))
    due = log.store.expired(10, 10)
    assert due == [(b"a", 10), (b"b", 10)]
    log.run(5, Put(b"b", b"new", 50))  # rewritten since the sweep: expires at 55 now
    r = log.run(10, ExpireKeys(due + [(b"c", 100), (b"missing", 1)]))
    assert r.results == [1]  # only a; c's stamp has not passed in log time
    assert r.events == [ev(DELETE, b"a", b"", b"1", 3)]
    assert log.store.get(b"b", 10) == b"new"
    assert log.store.get(b"c", 10) == b"3"


def test_put_without_ttl_clears_the_ttl() -> None:
    log = Log()
    log.run(0, Put(b"k", b"v", 10))
    log.run(1, Put(b"k", b"w"))
    assert log.store.expired(10**9, 10) == []
    assert log.store.get(b"k", 10**9) == b"w"
    assert log.run(20, ExpireKeys([(b"k", 10)])).results == [0]


def test_log_time_never_runs_backwards() -> None:
    log = Log()
    log.run(1000, Put(b"a", b"v"))
    log.run(400, Put(b"k", b"v", 100))  # a new leader with a slow clock
    assert log.store.clock_ms == 1000
    assert log.store.expired(1100, 10) == [(b"k", 1100)]
    # A reader with a slow clock still sees log time.
    log.run(1100, Put(b"z", b"v"))
    assert log.store.get(b"k", 0) is None


def test_writing_over_an_expired_key_expires_it_first() -> None:
    log = Log()
    log.run(0, Put(b"k", b"old", 10))
    r = log.run(10, Put(b"k", b"new"))
    assert r.events == [ev(DELETE, b"k", b"", b"old", 2), ev(PUT, b"k", b"new", None, 2)]
    r = log.run(20, ExpireKeys([(b"k", 10)]))
    assert r.results == [0] and r.events == []
    assert log.store.get(b"k", 20) == b"new"


def test_cas_treats_an_expired_key_as_absent() -> None:
    log = Log()
    log.run(0, Put(b"k", b"old", 10))
    r = log.run(10, CompareAndSwap(b"k", b"old", b"x"))
    assert r.results == [False] and r.events == []
    r = log.run(10, CompareAndSwap(b"k", None, b"x", 5))
    assert r.results == [True]
    assert r.events == [ev(DELETE, b"k", b"", b"old", 3), ev(PUT, b"k", b"x", None, 3)]
    assert log.store.expired(15, 10) == [(b"k", 15)]


def test_delete_of_an_expired_key_leaves_it_to_the_sweeper() -> None:
    log = Log()
    log.run(0, Put(b"k", b"old", 10))
    r = log.run(10, Delete(b"k"))
    assert r.results == [False] and r.events == []
    r = log.run(10, ExpireKeys([(b"k", 10)]))
    assert r.events == [ev(DELETE, b"k", b"", b"old", 3)]


# --- oracle: a plain dict that follows the module rules ------------------------------

MAX_KEY = 4
MAX_VALUE = 3
KEYS = [b"/a", b"/a/b", b"/b", b"", b"/aaaa"]  # "" and "/aaaa" are invalid
VALUES = [b"", b"x", b"yy", b"zzzz"]  # "zzzz" is oversized
PREFIXES = [b"", b"/", b"/a", b"/a/", b"/b"]


class Oracle:
    def __init__(self) -> None:
        self.data: dict[bytes, tuple[bytes, int, int | None]] = {}
        self.history: dict[bytes, tuple[int, int]] = {}  # key -> (create_revision, version)
        self.clock = 0

    def alive(self, key: bytes, t: int) -> bool:
        entry = self.data.get(key)
        return entry is not None and (entry[2] is None or entry[2] > t)

    def read(self, key: bytes, now: int) -> bytes | None:
        return self.data[key][0] if self.alive(key, max(now, self.clock)) else None

    def _bad(self, key: bytes, value: bytes = b"", ttl: int | None = None) -> bool:
        return not key or len(key) > MAX_KEY or len(value) > MAX_VALUE or ttl == 0

    def _meta(self, key: bytes) -> tuple[int, int, int, int]:
        """What a key is now: (create_revision, mod revision, version, lease)."""
        created, version = self.history[key]
        return created, self.data[key][1], version, 0

    def _delete(self, key: bytes, rev: int) -> Any:
        meta = self._meta(key)
        del self.history[key]
        return ev(DELETE, key, b"", self.data.pop(key)[0], rev, prev_meta=meta)

    def _write(self, key: bytes, value: bytes, ttl: int | None, rev: int, events: list[Any]) -> None:
        if key in self.data and not self.alive(key, self.clock):
            events.append(self._delete(key, rev))
        prev = self.data[key][0] if key in self.data else None
        meta = self._meta(key) if prev is not None else (0, 0, 0, 0)
        created, version = self.history.get(key, (rev, 0))
        self.history[key] = (created, version + 1)
        self.data[key] = (value, rev, None if ttl is None else self.clock + ttl)
        events.append(ev(PUT, key, value, prev, rev, created, version + 1, prev_meta=meta))

    def apply(self, rev: int, now: int, cmds: list[Command]) -> tuple[list[Any], list[Any]]:
        self.clock = max(self.clock, now)
        results: list[Any] = []
        events: list[Any] = []
        for c in cmds:
            if isinstance(c, Put):
                if self._bad(c.key, c.value, c.ttl_ms):
                    results.append("error")
                else:
                    self._write(c.key, c.value, c.ttl_ms, rev, events)
                    results.append(rev)
            elif isinstance(c, Delete):
                if self._bad(c.key):
                    results.append("error")
                elif self.alive(c.key, self.clock):
                    events.append(self._delete(c.key, rev))
                    results.append(True)
                else:
                    results.append(False)
            elif isinstance(c, CompareAndSwap):
                current = self.data[c.key][0] if self.alive(c.key, self.clock) else None
                if self._bad(c.key, c.new, c.ttl_ms):
                    results.append("error")
                elif current != c.expected:
                    results.append(False)
                else:
                    self._write(c.key, c.new, c.ttl_ms, rev, events)
                    results.append(True)
            else:
                assert isinstance(c, ExpireKeys)
                n = 0
                for key, stamp in c.keys:
                    if key in self.data and self.data[key][2] == stamp and stamp <= self.clock:
                        events.append(self._delete(key, rev))
                        n += 1
                results.append(n)
        return results, events


key_st = st.sampled_from(KEYS)
value_st = st.sampled_from(VALUES)
ttl_st = st.one_of(st.none(), st.none(), st.integers(0, 30))
command_st = st.one_of(
    st.builds(Put, key_st, value_st, ttl_st),
    st.builds(Delete, key_st),
    st.builds(CompareAndSwap, key_st, st.one_of(st.none(), value_st), value_st, ttl_st),
    st.builds(ExpireKeys, st.lists(st.tuples(key_st, st.integers(0, 60)), max_size=3)),
)


class StoreVsOracle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store = KVStore(max_key_size=MAX_KEY, max_value_size=MAX_VALUE)
        self.oracle = Oracle()
        self.index = 0
        self.now = 0

    def _apply(self, now: int, cmds: list[Command]) -> None:
        self.index += 1
        got = self.store.apply(self.index, encode_batch(cmds, now))
        results, events = self.oracle.apply(self.index, now, cmds)
        assert ["error" if isinstance(r, CommandError) else r for r in got.results] == results
        assert [type(r) for r in got.results if not isinstance(r, CommandError)] == [
            type(r) for r in results if r != "error"
        ]
        assert got.events == events

    @rule(cmds=st.lists(command_st, min_size=1, max_size=4), step=st.integers(-5, 15))
    def write(self, cmds: list[Command], step: int) -> None:
        self.now = max(0, self.now + step)  # a new leader's clock may lag
        self._apply(self.now, cmds)

    @rule(ahead=st.integers(0, 20), limit=st.integers(1, 4))
    def sweep(self, ahead: int, limit: int) -> None:
        due = self.store.expired(self.now + ahead, limit)
        oracle_due = sorted(
            (entry[2], k) for k, entry in self.oracle.data.items() if entry[2] is not None and entry[2] <= self.now + ahead
        )
        assert [(at, k) for k, at in due] == oracle_due[: len(due)]
        assert len(due) == min(limit, len(oracle_due))
        if due:
            self.now += ahead
            self._apply(self.now, [ExpireKeys(due)])

    @rule()
    def noop(self) -> None:
        self.index += 1
        self.store.apply(self.index, b"")

    @invariant()
    def reads_agree(self) -> None:
        for now in (self.now, self.now + 7, 0):
            for key in KEYS:
                assert self.store.get(key, now) == self.oracle.read(key, now)
            for prefix in PREFIXES:
                expected = sorted(
                    (k, v)
                    for k, (v, _, _) in self.oracle.data.items()
                    if k.startswith(prefix) and self.oracle.read(k, now) is not None
                )
                assert self.store.scan_prefix(prefix, now) == expected
                assert self.store.scan_prefix(prefix, now, limit=1) == expected[:1]
                # A range with a limit still counts every live key in it.
                assert self.store.scan_range(prefix, prefix_end(prefix), now, 1, count=True) == (
                    expected[:1], len(expected))
        for key, (value, rev, _) in self.oracle.data.items():
            kv = self.store.get_kv(key, self.now)
            created, version = self.oracle.history[key]
            assert kv is None or kv == KeyValue(key, value, rev, created, version)
        assert self.store.key_count() == len(self.oracle.data)
        assert self.store.applied_index == self.index


StoreVsOracle.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
test_store_matches_dict_oracle = StoreVsOracle.TestCase


# --- determinism ----------------------------------------------------------------------

log_st = st.lists(st.tuples(st.integers(0, 100), st.lists(command_st, min_size=0, max_size=4)), max_size=25)


@settings(max_examples=150, deadline=None)
@given(entries=log_st)
def test_two_replicas_applying_the_same_log_agree(entries: list[tuple[int, list[Command]]]) -> None:
    payloads = [encode_batch(cmds, now) if cmds else b"" for now, cmds in entries]
    a = KVStore(max_key_size=MAX_KEY, max_value_size=MAX_VALUE)
    b = KVStore(max_key_size=MAX_KEY, max_value_size=MAX_VALUE)
    for i, payload in enumerate(payloads, start=1):
        # Replica b interleaves reads and sweeps; they must not change its state.
        b.get(b"/a", 10**6)
        b.scan_prefix(b"", 10**6)
        b.expired(10**6, 2)
        assert a.apply(i, payload) == b.apply(i, payload)
    assert a.freeze() == b.freeze()


def test_get_nowait_checks_the_key_hides_expired_and_refuses_after_close() -> None:
    from dengine.errors import EngineStopped, InvalidArgument
    from dengine.kv.commands import Put, encode_batch

    store = KVStore(max_key_size=8)
    now = [1_000]
    store.bind_clock(lambda: now[0])
    store.apply(1, encode_batch([Put(b"a", b"1", None), Put(b"t", b"2", 500)], 1_000))
    assert store.get_nowait(b"a") == b"1"
    assert store.get_nowait(b"t") == b"2"
    now[0] = 1_500  # the TTL passed: hidden before its deletion commits
    assert store.get_nowait(b"t") is None
    assert store.get_nowait(b"nope") is None
    with pytest.raises(InvalidArgument):
        store.get_nowait("a")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        store.get_nowait(b"123456789")
    store.close()
    with pytest.raises(EngineStopped):
        store.get_nowait(b"a")


def test_load_from_replaces_the_state_in_place() -> None:
    from dengine.kv.commands import Put, encode_batch

    a, b = KVStore(), KVStore()
    a.apply(1, encode_batch([Put(b"x", b"old", None)], 0))
    b.apply(7, encode_batch([Put(b"y", b"new", None)], 0))
    read = a.get_nowait
    a.load_from(b)
    assert read(b"x") is None and read(b"y") == b"new"
    assert a.applied_index == 7
    assert a.scan_prefix(b"", 0) == [(b"y", b"new")]


def test_each_key_carries_its_create_revision_and_version_through_snapshots() -> None:
    from dengine.kv.snapshot import decode_image, restore, snapshot_bytes

    log = Log()
    log.run(0, Put(b"k", b"a"))  # 1: created
    log.run(0, Put(b"k", b"b"))  # 2
    log.run(0, CompareAndSwap(b"k", b"b", b"c"))  # 3
    assert log.store.get_kv(b"k", 0) == KeyValue(b"k", b"c", 3, create_revision=1, version=3)
    log.run(0, Delete(b"k"))  # 4: gone, and its history with it
    log.run(0, Put(b"k", b"d"))  # 5: created again
    log.run(0, Put(b"other", b"x"))  # 6
    assert log.store.get_kv(b"k", 0) == KeyValue(b"k", b"d", 5, create_revision=5, version=1)
    again = restore(snapshot_bytes(log.store))
    assert again.get_kv(b"k", 0) == KeyValue(b"k", b"d", 5, create_revision=5, version=1)
    assert again.get_kv(b"other", 0) == KeyValue(b"other", b"x", 6, create_revision=6, version=1)
    # A version 2 snapshot (four fields per key) restores each key as created at its last write.
    v2 = msgpack.packb([2, 9, 0, [b"k", b"v", 7, None], [0, []]], use_bin_type=True)
    assert KVStore.from_image(decode_image(v2)).get_kv(b"k", 0) == KeyValue(b"k", b"v", 7, create_revision=7, version=1)


def test_history_is_kept_only_for_keys_written_more_than_once() -> None:
    from dengine.kv.snapshot import restore, snapshot_bytes

    log = Log()
    for i in range(100):
        log.run(0, Put(b"/once/%02d" % i, b"v"))
    log.run(0, Put(b"/twice", b"a"))  # 101
    log.run(0, Put(b"/twice", b"b"))  # 102
    store = log.store
    # Memory: a million write-once keys cost no history entries.
    assert (store._created, store._versions) == ({b"/twice": 101}, {b"/twice": 2})
    assert store.get_kv(b"/once/07", 0) == KeyValue(b"/once/07", b"v", 8, create_revision=8, version=1)
    again = restore(snapshot_bytes(store))
    assert (again._created, again._versions) == ({b"/twice": 101}, {b"/twice": 2})
    assert again.freeze() == store.freeze()
    log.run(0, Delete(b"/twice"))
    assert (store._created, store._versions) == ({}, {})


# --- leases and transactions -----------------------------------------------------

from dengine.api import Compare, Op, TxnResult  # noqa: E402
from dengine.kv.commands import LeaseRevoke, Txn  # noqa: E402


def test_leases_attach_detach_and_revoke_their_keys_at_one_revision() -> None:
    log = Log()
    seen: list[tuple[int, int | None]] = []
    log.store.lease_observer = lambda lease, ttl: seen.append((lease, ttl))
    assert log.run(0, LeaseGrant(0, 1000), LeaseGrant(0, 2000), LeaseGrant(7, 500)).results == [1, 2, 7]
    assert seen == [(1, 1000), (2, 2000), (7, 500)]
    assert log.run(0, LeaseGrant(0, 10)).results == [8]  # continues after the largest id
    r = log.run(0, LeaseGrant(7, 500), Put(b"/a", b"1", None, 1), Put(b"/b", b"2", None, 1),
                Put(b"/c", b"3", None, 99), Put(b"/d", b"4", 5, 1))
    assert r.results[0] == CommandError(ErrorCode.INVALID_ARGUMENT, "lease 7 already exists")
    assert r.results[3] == CommandError(ErrorCode.LEASE_NOT_FOUND,
                                        "lease 99 does not exist (it expired, was revoked or never granted)")
    assert r.results[4] == CommandError(ErrorCode.INVALID_ARGUMENT, "a put takes a lease or a ttl, not both")
    assert log.store.lease_keys(1) == [b"/a", b"/b"]
    log.run(0, Put(b"/b", b"2", None, 2))  # moves to lease 2
    assert log.store.lease_keys(1) == [b"/a"] and log.store.lease_keys(2) == [b"/b"]
    log.run(0, Delete(b"/a"))
    assert log.store.lease_keys(1) == []
    log.run(0, Put(b"/a", b"x", None, 2), Put(b"/z", b"z"))
    r = log.run(0, LeaseRevoke(2))
    assert r.results == [2] and seen[-1] == (2, None)
    assert [(e.type, e.key, e.revision) for e in r.events] == [(DELETE, b"/a", r.index), (DELETE, b"/b", r.index)]
    assert log.store.leases() == {1: 1000, 7: 500, 8: 10} and log.store.get(b"/z", 0) == b"z"
    assert log.run(0, LeaseRevoke(2)).results[0].code == ErrorCode.LEASE_NOT_FOUND


def test_txn_checks_every_op_before_running_any() -> None:
    log = Log(KVStore(max_key_size=4, max_value_size=4))
    log.run(0, Put(b"k", b"1"))
    r = log.run(0, Txn((), (Op.put(b"k", b"2"), Op.put(b"long-key", b"v")), ()))
    assert r.results[0].code == ErrorCode.INVALID_ARGUMENT and r.events == []
    assert log.store.get(b"k", 0) == b"1"
    r = log.run(0, Txn((Compare.value(b"k") == b"1",), (Op.put(b"k", b"2"), Op.get(b"k")), (Op.get(b"k"),)))
    assert r.results == [TxnResult(True, r.index, [r.index, KeyValue(b"k", b"2", r.index, 1, 2)])]


def test_txn_reads_and_deletes_see_log_time_expiry() -> None:
    log = Log()
    log.run(0, Put(b"/a", b"1", 10), Put(b"/b", b"2"))
    r = log.run(50, Txn((Compare.version(b"/a") == 0,), (Op.get(b"/a"), Op.scan(b"/"), Op.delete_prefix(b"/")), ()))
    [result] = r.results
    assert result.succeeded and result.responses[0] is None
    assert [tuple(e) for e in result.responses[1].entries] == [(b"/b", b"2")]
    assert result.responses[2] == 1  # only the live key counts; the expired one is the sweeper's


# --- nested transactions ----------------------------------------------------------

from dengine.api import MAX_TXN_DEPTH, ScanResult  # noqa: E402
from dengine.kv.commands import Batch  # noqa: E402

ME, LEADER = b"me", b"/leader"


def _update_or_create() -> Txn:
    """Patroni's write: update the key if it holds our value, else create it if absent."""
    return Txn((Compare.value(LEADER) == ME,), (Op.put(LEADER, ME),),
               (Op.txn([Compare.create_revision(LEADER) == 0], [Op.put(LEADER, ME)], [Op.get(LEADER)]),))


def test_a_nested_txn_in_the_failure_branch_runs_its_own_compares() -> None:
    log = Log()
    # Absent: the outer compare fails, the nested one (created_revision 0) holds.
    r = log.run(0, _update_or_create())
    assert r.results == [TxnResult(False, r.index, [TxnResult(True, r.index, [r.index])])]
    assert r.events == [ev(PUT, LEADER, ME, None, r.index)]
    # Ours: the outer compare holds; the nested txn does not run.
    r2 = log.run(0, _update_or_create())
    assert r2.results == [TxnResult(True, r2.index, [r2.index])]
    # Someone else's: both fail, and the nested failure branch answers who holds it.
    r3 = log.run(0, Put(LEADER, b"other"))
    r4 = log.run(0, _update_or_create())
    held = KeyValue(LEADER, b"other", r3.index, create_revision=r.index, version=3)
    assert r4.results == [TxnResult(False, r4.index, [TxnResult(False, r4.index, [held])])]
    assert r4.events == [] and log.store.get(LEADER, 0) == b"other"


def test_a_nested_txn_sees_the_earlier_writes_of_its_branch_and_later_ops_see_its_writes() -> None:
    log = Log()
    log.run(0, Put(b"/b", b"old"))
    nested = Op.txn([Compare.value(b"/a") == b"1", Compare.version(b"/b") == 1],
                    [Op.get(b"/a"), Op.put(b"/b", b"2"), Op.scan(b"/")], [Op.get(b"/b")])
    r = log.run(0, Txn((), (Op.put(b"/a", b"1"), nested, Op.get(b"/b"), Op.delete(b"/a")), ()))
    rev = r.index
    a = KeyValue(b"/a", b"1", rev, rev, 1)
    b = KeyValue(b"/b", b"2", rev, 1, 2)
    assert r.results == [TxnResult(True, rev, [
        rev, TxnResult(True, rev, [a, rev, ScanResult([a, b], rev, more=False, count=2)]), b, 1])]
    assert [(e.type, e.key, e.revision) for e in r.events] == [
        (PUT, b"/a", rev), (PUT, b"/b", rev), (DELETE, b"/a", rev)]


@pytest.mark.parametrize("branch", ["success", "failure"])
def test_a_bad_op_in_either_branch_of_a_nested_txn_refuses_everything(branch: str) -> None:
    log = Log(KVStore(max_value_size=4))
    log.run(0, LeaseGrant(7, 1000), Put(b"/a", b"1"))
    for bad, code in ((Op.put(b"/x", b"v", lease=99), ErrorCode.LEASE_NOT_FOUND),
                      (Op.put(b"/x", b"too long"), ErrorCode.INVALID_ARGUMENT)):
        good = Op.put(b"/y", b"v", lease=7)
        inner = Op.txn([], [bad, good] if branch == "success" else [good],
                       [good] if branch == "success" else [good, bad])
        # The nested branch holding the bad op would not even run (its compares are unknown yet).
        r = log.run(0, Txn((), (Op.put(b"/a", b"2"), Op.txn([], [Op.delete(b"/a")], [inner])), ()))
        [result] = r.results
        assert isinstance(result, CommandError) and result.code == code, result
        assert r.events == [] and log.store.get(b"/a", 0) == b"1" and log.store.lease_keys(7) == []
        assert log.store.scan_prefix(b"/", 0) == [(b"/a", b"1")]


def _chain(levels: int) -> Op:
    op = Op.put(b"/deep", b"v")
    for _ in range(levels):
        op = Op("txn", b"", txn=((), (op,), ()))
    return op


def test_the_store_refuses_nesting_deeper_than_the_limit() -> None:
    log = Log()
    r = log.run(0, Txn((), (_chain(MAX_TXN_DEPTH),), ()))
    response: Any = r.results[0]
    for _ in range(MAX_TXN_DEPTH + 1):
        assert isinstance(response, TxnResult) and response.succeeded and response.revision == r.index
        [response] = response.responses
    assert response == r.index and log.store.get(b"/deep", 0) == b"v"
    # The codec refuses deeper ones; a Batch handed to the store directly is refused at apply.
    log.index += 1
    deeper = log.store.apply_batch(log.index, Batch(0, (Txn((), (_chain(MAX_TXN_DEPTH + 1),), ()),)))
    assert deeper.results == [CommandError(ErrorCode.INVALID_ARGUMENT, "txn nesting is deeper than the limit of 8")]
    assert deeper.events == []


def test_replaying_nested_transactions_is_deterministic() -> None:
    entries = [(0, [LeaseGrant(1, 1000), _update_or_create()]), (5, [_update_or_create(), Put(LEADER, b"x", 3)]),
               (10, [Txn((Compare.version(LEADER) == 0,), (Op.txn([], [Op.put(b"/n", b"1", lease=1)]),),
                         (Op.delete(LEADER), Op.txn([Compare.version(LEADER) == 0], [Op.put(b"/n", b"2")])))])]
    one, two = Log(), Log()
    assert [one.run(now, *cmds) for now, cmds in entries] == [two.run(now, *cmds) for now, cmds in entries]
    # The leader key expired in log time (stamp 10 >= 5 + 3), so the success branch ran.
    assert one.store.freeze() == two.store.freeze() and one.store.get(b"/n", 10) == b"1"
    assert one.store.lease_keys(1) == [b"/n"]

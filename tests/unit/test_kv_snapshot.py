"""dengine.kv.snapshot: one applied index, frozen then encoded.

Rules: restore(snapshot_bytes(s)) is identical to s and behaves identically
afterwards; a frozen image does not change when the store moves on;
anything that is not a valid snapshot raises MalformedMessage."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dengine.errors import MalformedMessage
from dengine.api import Compare, Op
from dengine.kv.commands import Command, CompareAndSwap, Delete, ExpireKeys, LeaseGrant, LeaseRevoke, Put, Txn, encode_batch
from dengine.kv.snapshot import (
    SNAPSHOT_VERSION,
    decode_image,
    encode_image,
    encode_snapshot_data,
    restore,
    snapshot_bytes,
    unwrap_snapshot_data,
    wrap_snapshot_data,
)
from dengine.kv.store import KVStore

key_st = st.sampled_from([b"/a", b"/a/b", b"/b", b"/c\xff", b"z"])
value_st = st.binary(max_size=4)
ttl_st = st.one_of(st.none(), st.integers(1, 50))
command_st = st.one_of(
    st.builds(Put, key_st, value_st, ttl_st),
    st.builds(Delete, key_st),
    st.builds(CompareAndSwap, key_st, st.one_of(st.none(), value_st), value_st, ttl_st),
    st.builds(ExpireKeys, st.lists(st.tuples(key_st, st.integers(0, 80)), max_size=3)),
    st.builds(LeaseGrant, st.sampled_from([0, 0, 5]), st.integers(1, 50)),
    st.builds(LeaseRevoke, st.integers(1, 5)),
    st.builds(Put, key_st, value_st, st.none(), st.integers(1, 5)),
    st.builds(lambda k, v, n: Txn((Compare.version(k) == n,), (Op.put(k, v, lease=1), Op.delete_prefix(b"/a")), ()),
              key_st, value_st, st.integers(0, 2)),
    # A nested txn: its compares see the outer branch's earlier writes.
    st.builds(lambda k, v, n: Txn((Compare.version(k) == n,), (Op.put(k, v),),
                                  (Op.txn([Compare.create_revision(k) == 0], [Op.put(k, v, lease=1)],
                                          [Op.delete_prefix(b"/a"), Op.get(k)]),)),
              key_st, value_st, st.integers(0, 2)),
)
log_st = st.lists(st.tuples(st.integers(0, 60), st.lists(command_st, min_size=1, max_size=3)), max_size=15)


def build(entries: list[tuple[int, list[Command]]], start: int = 1, store: KVStore | None = None) -> KVStore:
    store = KVStore() if store is None else store
    for i, (now, cmds) in enumerate(entries, start=start):
        store.apply(i, encode_batch(cmds, now))
    return store


@settings(max_examples=150, deadline=None)
@given(before=log_st, after=log_st)
def test_round_trip_is_identical_and_behaves_identically(
    before: list[tuple[int, list[Command]]], after: list[tuple[int, list[Command]]]
) -> None:
    original = build(before)
    copy = restore(snapshot_bytes(original))
    assert copy.freeze() == original.freeze()
    assert copy.applied_index == original.applied_index == len(before)
    assert copy.clock_ms == original.clock_ms
    assert copy.expired(10**6, 100) == original.expired(10**6, 100)
    # Both continue with the same log and still agree, results and events included.
    for i, (now, cmds) in enumerate(after, start=len(before) + 1):
        payload = encode_batch(cmds, now)
        assert copy.apply(i, payload) == original.apply(i, payload)
    assert copy.freeze() == original.freeze()
    assert copy.scan_prefix(b"", 30) == original.scan_prefix(b"", 30)


def test_snapshot_covers_leases_and_restores_older_layouts_without_them() -> None:
    store = build([(0, [LeaseGrant(0, 5000), LeaseGrant(9, 1000)]), (1, [Put(b"/a", b"1", None, 1), Put(b"/b", b"2")])])
    image = decode_image(snapshot_bytes(store))
    assert image.leases == {1: 5000, 9: 1000} and image.key_lease == {b"/a": 1} and image.next_lease == 10
    copy = restore(snapshot_bytes(store))
    assert copy.lease_keys(1) == [b"/a"] and copy.leases() == store.leases()
    # The next auto id continues after the restored ones; revoking deletes the restored key.
    r = copy.apply(3, encode_batch([LeaseGrant(0, 10), LeaseRevoke(1)], 2))
    assert r.results == [10, 1] and copy.get(b"/a", 2) is None and copy.get(b"/b", 2) == b"2"
    # A version-3 snapshot (before leases) restores with none.
    raw = msgpack.unpackb(snapshot_bytes(build([(0, [Put(b"/a", b"1")])])), raw=False)
    old = restore(msgpack.packb([3, *raw[1:5]], use_bin_type=True))
    assert old.leases() == {} and old.get(b"/a", 0) == b"1"


def test_snapshot_covers_values_revisions_expiries_and_clock() -> None:
    store = build([(100, [Put(b"k", b"v", 50), Put(b"p", b"")]), (200, [Put(b"q", b"w")])])
    image = decode_image(snapshot_bytes(store))
    assert image.applied_index == 2 and image.clock_ms == 200
    assert image.keys == [b"k", b"p", b"q"]
    assert image.values == {b"k": b"v", b"p": b"", b"q": b"w"}
    assert image.revisions == {b"k": 1, b"p": 1, b"q": 2}
    assert image.expire_at == {b"k": 150}


def one_call_encoding(store: KVStore) -> bytes:
    """The layout of the module docstring, packed in one msgpack call."""
    image = store.freeze()
    flat = []
    for key in image.keys:
        rev = image.revisions[key]
        flat += [key, image.values[key], rev, image.expire_at.get(key), image.created.get(key, rev),
                 image.versions.get(key, 1)]
    leases = [x for pair in sorted(image.leases.items()) for x in pair]
    attached = [x for pair in sorted(image.key_lease.items()) for x in pair]
    return msgpack.packb([SNAPSHOT_VERSION, image.applied_index, image.clock_ms, flat, image.members.to_wire(),
                          [image.next_lease, leases, attached]], use_bin_type=True)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 10, 2047, 2048, 2049, 2730, 2731, 8191, 8192, 8193, 11000, 20000])
def test_encoding_in_chunks_gives_the_bytes_of_one_call(n: int) -> None:
    # n keys make 6n items: across the fixarray, array16 and array32 headers and the 2048-key chunks.
    puts = [Put(b"/k/%06d" % i, b"v" * (i % 40), None, 7) if i % 5 == 0 else
            Put(b"/k/%06d" % i, b"v" * (i % 40), 30 if i % 3 else None) for i in range(n)]
    store = build([(0, [LeaseGrant(7, 900)])] + ([(5, puts)] if puts else []))
    expected = one_call_encoding(store)
    assert encode_image(store.freeze()) == expected
    wrapped = encode_snapshot_data(store.freeze())
    assert wrapped == wrap_snapshot_data(expected)
    assert unwrap_snapshot_data(wrapped, source="test") == expected
    assert restore(expected).freeze() == store.freeze()
    # paced (the runtime's worker thread pauses after each chunk): the same bytes, one pause per chunk
    pauses: list[None] = []
    assert encode_snapshot_data(store.freeze(), lambda: pauses.append(None)) == wrapped
    assert len(pauses) == -(-n // 2048)


def test_pieces_are_bytes_so_their_join_lets_go_of_the_gil() -> None:
    # CPython's bytes.join releases the GIL while copying a large result only
    # when every piece is a bytes object (not a memoryview).
    from dengine.kv.snapshot import _image_parts

    store = build([(5, [Put(b"/k/%06d" % i, b"v" * 30) for i in range(5000)])])
    parts = _image_parts(store.freeze())
    assert len(parts) > 4 and all(type(p) is bytes for p in parts)


def test_frozen_image_is_unaffected_by_later_applies() -> None:
    store = build([(0, [Put(b"a", b"1", 10), Put(b"b", b"2")])])
    image = store.freeze()
    expected = encode_image(image)
    build([(5, [Put(b"a", b"x"), Delete(b"b"), Put(b"c", b"3", 4)])], start=2, store=store)
    assert encode_image(image) == expected
    assert restore(expected).get(b"b", 0) == b"2"


def test_restore_applies_limits() -> None:
    copy = restore(snapshot_bytes(KVStore()), max_key_size=3, max_value_size=5)
    assert (copy.max_key_size, copy.max_value_size) == (3, 5)
    assert copy.applied_index == 0 and copy.key_count() == 0


def test_restored_store_keeps_order_for_scans() -> None:
    keys = [b"/b", b"/a/2", b"/a/1", b"/c"]
    store = build([(0, [Put(k, k) for k in keys])])
    copy = restore(snapshot_bytes(store))
    assert [k for k, _ in copy.scan_prefix(b"/a/", 0)] == [b"/a/1", b"/a/2"]


def _pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        _pack([SNAPSHOT_VERSION, 1, 0, []]) + b"x",
        _pack([SNAPSHOT_VERSION + 1, 1, 0, []]),
        _pack([SNAPSHOT_VERSION, -1, 0, []]),
        _pack([SNAPSHOT_VERSION, 1, 0, [b"k", b"v", 1]]),  # incomplete group
        _pack([SNAPSHOT_VERSION, 1, 0, ["k", b"v", 1, None]]),
        _pack([SNAPSHOT_VERSION, 1, 0, [b"k", None, 1, None]]),
        _pack([SNAPSHOT_VERSION, 1, 0, [b"k", b"v", -1, None]]),
        _pack([SNAPSHOT_VERSION, 1, 0, [b"k", b"v", 1, "5"]]),
        _pack([SNAPSHOT_VERSION, 1, 0, [b"b", b"v", 1, None, b"a", b"v", 1, None]]),  # not sorted
        _pack([SNAPSHOT_VERSION, 1, 0, [b"a", b"v", 1, None, b"a", b"w", 1, None]]),  # duplicate
        _pack({"version": 1}),
        _pack([SNAPSHOT_VERSION, 1, 0, [], [0, [], []]]),  # no lease element
        _pack([SNAPSHOT_VERSION, 1, 0, [], [0, [], []], [1, [5], []]]),  # odd lease list
        _pack([SNAPSHOT_VERSION, 1, 0, [], [0, [], []], [1, [5, -1], []]]),
        _pack([SNAPSHOT_VERSION, 1, 0, [], [0, [], []], [1, [5, 100], [b"k", 5]]]),  # key it does not hold
        _pack([SNAPSHOT_VERSION, 1, 0, [b"k", b"v", 1, None, 1, 1], [0, [], []], [1, [5, 100], [b"k", 6]]]),
        _pack([SNAPSHOT_VERSION, 1, 0, [], [0, [], []], "leases"]),
    ],
)
def test_restore_rejects_invalid_snapshots(data: bytes) -> None:
    with pytest.raises(MalformedMessage):
        restore(data)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=48))
def test_restore_random_bytes_only_raises_malformed(data: bytes) -> None:
    try:
        restore(data)
    except MalformedMessage:
        pass

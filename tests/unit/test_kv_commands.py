"""dengine.kv.commands: the entry payload codec.

Rules: every encodable batch decodes to the same commands and stamp;
encoding refuses what could not be decoded; decoding anything else raises
MalformedMessage (never another exception)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dengine.api import Compare, Op
from dengine.errors import InvalidArgument, MalformedMessage
from dengine.kv.commands import (
    FORMAT_VERSION,
    Batch,
    CompareAndSwap,
    Delete,
    ExpireKeys,
    LeaseGrant,
    LeaseRevoke,
    Put,
    Txn,
    decode_batch,
    decode_command,
    encode_batch,
    encode_command,
)

small = st.binary(max_size=8)
ttl = st.one_of(st.none(), st.integers(0, 2**63 - 1))
commands = st.one_of(
    st.builds(Put, small, small, ttl),
    st.builds(Delete, small),
    st.builds(CompareAndSwap, small, st.one_of(st.none(), small), small, ttl),
    st.builds(ExpireKeys, st.lists(st.tuples(small, st.integers(0, 2**63 - 1)), max_size=4)),
    st.builds(Put, small, small, st.none(), st.integers(1, 2**63 - 1)),
    st.builds(LeaseGrant, st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1)),
    st.builds(LeaseRevoke, st.integers(0, 2**63 - 1)),
)
key = st.binary(min_size=1, max_size=4)
compares = st.one_of(
    st.builds(lambda k, v: Compare.value(k) == v, key, small),
    st.builds(lambda k, n: Compare.mod_revision(k) < n, key, st.integers(0, 99)),
    st.builds(lambda k, n: Compare.lease(k) != n, key, st.integers(0, 99)),
)
plain_ops = st.one_of(
    st.builds(lambda k, v, lease: Op.put(k, v, lease=lease), key, small, st.integers(0, 9)),
    st.builds(Op.delete, key), st.builds(Op.delete_prefix, key), st.builds(Op.get, key),
    st.builds(lambda k, n: Op.scan(k, limit=n), small, st.one_of(st.none(), st.integers(1, 9))),
)


def _ops(depth: int) -> st.SearchStrategy[Op]:
    """Plain ops, and txn ops nested up to ``depth`` levels."""
    if depth == 0:
        return plain_ops
    inner = _ops(depth - 1)
    return st.one_of(plain_ops, st.builds(lambda c, s, f: Op("txn", b"", txn=(tuple(c), tuple(s), tuple(f))),
                                          st.lists(compares, max_size=2), st.lists(inner, max_size=2),
                                          st.lists(inner, max_size=2)))


ops = _ops(3)
commands = st.one_of(commands, st.builds(lambda c, s, f: Txn(tuple(c), tuple(s), tuple(f)),
                                         st.lists(compares, max_size=3), st.lists(ops, max_size=3),
                                         st.lists(ops, max_size=3)))


@settings(max_examples=300, deadline=None)
@given(cmds=st.lists(commands, min_size=1, max_size=6), now=st.integers(0, 2**63 - 1))
def test_batch_round_trip(cmds: list, now: int) -> None:  # type: ignore[type-arg]
    assert decode_batch(encode_batch(cmds, now)) == Batch(now, tuple(cmds))


def test_single_command_round_trip() -> None:
    cmd = CompareAndSwap(b"k", None, b"v", 500)
    assert decode_command(encode_command(cmd, 42)) == (cmd, 42)


def test_empty_value_and_absent_expected_stay_distinct() -> None:
    absent = decode_command(encode_command(CompareAndSwap(b"k", None, b""), 1))[0]
    empty = decode_command(encode_command(CompareAndSwap(b"k", b"", b""), 1))[0]
    assert absent.expected is None  # type: ignore[union-attr]
    assert empty.expected == b""  # type: ignore[union-attr]


def test_layout_is_a_compact_tagged_array() -> None:
    raw = msgpack.unpackb(encode_batch([Put(b"k", b"v"), Delete(b"k")], 7))
    assert raw == [FORMAT_VERSION, 7, [[0, b"k", b"v", None], [1, b"k"]]]


def test_decode_command_refuses_a_batch_of_two() -> None:
    with pytest.raises(MalformedMessage, match="one KV command, found 2"):
        decode_command(encode_batch([Delete(b"a"), Delete(b"b")], 1))


@pytest.mark.parametrize(
    ("cmd", "words"),
    [
        (Put("k", b"v"), "put key must be bytes"),  # type: ignore[arg-type]
        (Put(b"k", "v"), "put value must be bytes"),  # type: ignore[arg-type]
        (Put(b"k", b"v", 1.5), "put ttl_ms must be an int"),  # type: ignore[arg-type]
        (Put(b"k", b"v", True), "put ttl_ms must be an int"),
        (Put(b"k", b"v", -1), "between 0 and"),
        (Put(b"k", b"v", 2**64), "between 0 and"),
        (Delete(bytearray(b"k")), "delete key must be bytes"),  # type: ignore[arg-type]
        (CompareAndSwap(b"k", "x", b"v"), "expected value must be bytes"),  # type: ignore[arg-type]
        (CompareAndSwap(b"k", None, None), "new value must be bytes"),  # type: ignore[arg-type]
        (ExpireKeys([(b"k",)]), "pairs"),  # type: ignore[list-item]
        (ExpireKeys([(b"k", None)]), "expire_at_ms must be an int"),  # type: ignore[list-item]
        ("put", "not a KV command"),
    ],
)
def test_encode_refuses_what_would_not_decode(cmd: object, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        encode_command(cmd, 1)  # type: ignore[arg-type]


def test_encode_refuses_bad_stamp_and_empty_batch() -> None:
    with pytest.raises(InvalidArgument, match="now_ms"):
        encode_command(Delete(b"k"), -1)
    with pytest.raises(InvalidArgument, match="at least one command"):
        encode_batch([], 1)


def _pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        b"\x93\x01",  # truncated array
        _pack([1, 2, [[1, b"k"]]]) + b"\x00",  # trailing data
        _pack({"a": 1}),
        _pack([2, 1, [[1, b"k"]]]),  # unknown version
        _pack([True, 1, [[1, b"k"]]]),  # bool is not a version
        _pack([1, -1, [[1, b"k"]]]),  # negative stamp
        _pack([1, 1.0, [[1, b"k"]]]),
        _pack([1, 1, []]),  # no commands
        _pack([1, 1, [[]]]),
        _pack([1, 1, [[9, b"k"]]]),  # unknown tag
        _pack([1, 1, [[1.0, b"k"]]]),
        _pack([1, 1, [[1, "k"]]]),  # str key
        _pack([1, 1, [[1, b"k", b"extra"]]]),
        _pack([1, 1, [[0, b"k", b"v"]]]),  # missing ttl field
        _pack([1, 1, [[0, b"k", b"v", -5]]]),
        _pack([1, 1, [[0, b"k", b"v", False]]]),
        _pack([1, 1, [[2, b"k", 1, b"v", None]]]),
        _pack([1, 1, [[3, [b"k"]]]]),  # odd pair list
        _pack([1, 1, [[3, [b"k", "1"]]]]),
        _pack([1, 1, [[3, b"k"]]]),
        _pack([1, 1, [[0, b"k", b"v", None, -1]]]),  # negative lease
        _pack([1, 1, [[4, 1]]]),  # grant without a ttl
        _pack([1, 1, [[4, 1, "10"]]]),
        _pack([1, 1, [[5, b"1"]]]),
        _pack([1, 1, [[6, [], []]]]),  # txn without a failure branch
        _pack([1, 1, [[6, [[9, b"k", 0, 1]], [], []]]]),  # unknown compare target
        _pack([1, 1, [[6, [[0, b"k", 0, 1]], [], []]]]),  # value compare with an int
        _pack([1, 1, [[6, [], [[7, b"k", b"", None, 0, None, None]], []]]]),  # unknown op kind
        _pack([1, 1, [[6, [], [[0, b"k", b"", None, 0, None]], []]]]),  # short op
        _pack([1, 1, [[6, [], [[6, b"k", b"", None, 0, None, None]], []]]]),  # unknown op kind
        _pack([1, 1, [[6, [], [[]], []]]]),  # empty op
        # Nested transactions: the 8th field belongs to txn ops, and only to them.
        _pack([1, 1, [[6, [], [[5, b"", b"", None, 0, None, None]], []]]]),  # txn op without a body
        _pack([1, 1, [[6, [], [[3, b"k", b"", None, 0, None, None, [[], [], []]]], []]]]),  # get with a body
        _pack([1, 1, [[6, [], [[5, b"", b"", None, 0, None, None, b"body"]], []]]]),
        _pack([1, 1, [[6, [], [[5, b"", b"", None, 0, None, None, [[], []]]], []]]]),  # two parts
        _pack([1, 1, [[6, [], [[5, b"", b"", None, 0, None, None, [[], [], [], []]]], []]]]),
        _pack([1, 1, [[6, [], [[5, b"", b"", None, 0, None, None, [[], b"ops", []]]], []]]]),
        _pack([1, 1, [[6, [], [[5, b"", b"", None, 0, None, None, [[], [], []], None]], []]]]),  # 9 fields
        _pack([1, 1, [[6, [], [], [[5, b"", b"", None, 0, None, None, [[[9, b"k", 0, 1]], [], []]]]]]]),
        _pack([1, 1, [[6, [], [], [[5, b"", b"", None, 0, None, None, [[[0, b"k", 0, 1]], [], []]]]]]]),
        _pack([1, 1, [[6, [], [], [[5, b"", b"", None, 0, None, None, [[], [[0, b"k"]], []]]]]]]),
        _pack([1, 1, [[6, [], [], [[5, b"", "k", None, 0, None, None, [[], [], []]]]]]]),  # str value
        _pack([1, 1, [[6, [], [], [[5, b"", b"", None, 0, None, None,
                                     [[], [], [[5, b"", b"", None, 0, None, None, [[], [[1], []]]]]]]]]]]),
        b"\x91" * 10000 + b"\xc0",  # deep nesting
    ],
)
def test_decode_garbage_raises_malformed(payload: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode_batch(payload)


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=64))
def test_decode_random_bytes_only_raises_malformed(data: bytes) -> None:
    try:
        decode_batch(data)
    except MalformedMessage:
        pass


@settings(max_examples=200, deadline=None)
@given(cmds=st.lists(commands, min_size=1, max_size=3), cut=st.integers(1, 200))
def test_decode_truncated_payload_raises_malformed(cmds: list, cut: int) -> None:  # type: ignore[type-arg]
    data = encode_batch(cmds, 5)
    cut = min(cut, len(data) - 1)
    with pytest.raises(MalformedMessage):
        decode_batch(data[:cut])


# --- nested transactions --------------------------------------------------------------

from dengine.api import MAX_TXN_DEPTH  # noqa: E402


def _chain(levels: int) -> Op:
    op = Op.get(b"k")
    for _ in range(levels):
        op = Op("txn", b"", txn=((Compare.version(b"k") == 0,), (), (op,)))
    return op


def _chain_wire(levels: int) -> list:  # type: ignore[type-arg]
    op: list = [3, b"k", b"", None, 0, None, None]  # type: ignore[type-arg]
    for _ in range(levels):
        op = [5, b"", b"", None, 0, None, None, [[[1, b"k", 0, 0]], [], [op]]]
    return op


def test_a_nested_txn_op_is_the_op_layout_plus_its_body() -> None:
    nested = Op.txn([Compare.value(b"k") == b"v"], [Op.put(b"k", b"w", lease=3)], [Op.txn([], [Op.get(b"k")])])
    cmd = Txn((), (Op.delete(b"k"), nested), ())
    raw = msgpack.unpackb(encode_command(cmd, 7))
    assert raw == [FORMAT_VERSION, 7, [[6, [], [
        [1, b"k", b"", None, 0, None, None],  # plain ops keep their seven fields
        [5, b"", b"", None, 0, None, None, [
            [[0, b"k", 0, b"v"]],
            [[0, b"k", b"w", None, 3, None, None]],
            [[5, b"", b"", None, 0, None, None, [[], [[3, b"k", b"", None, 0, None, None]], []]]],
        ]],
    ], []]]]
    assert decode_command(encode_command(cmd, 7)) == (cmd, 7)


def test_txn_entries_written_before_nested_txns_decode_unchanged() -> None:
    old = _pack([1, 3, [[6, [[1, b"k", 0, 0]], [[0, b"k", b"v", None, 0, None, None]], [[4, b"", b"", b"z", 0, 2, None]]]]])
    assert decode_command(old) == (Txn((Compare.version(b"k") == 0,), (Op("put", b"k", b"v"),),
                                       (Op("scan", b"", end=b"z", limit=2),)), 3)


def test_nesting_is_bounded_on_both_sides_of_the_codec() -> None:
    deepest = Txn((), (_chain(MAX_TXN_DEPTH),), ())
    assert decode_command(encode_command(deepest, 1))[0] == deepest
    assert msgpack.unpackb(encode_command(deepest, 1))[2][0][2] == [_chain_wire(MAX_TXN_DEPTH)]
    with pytest.raises(InvalidArgument, match="txn nesting is deeper than the limit of 8"):
        encode_command(Txn((), (), (_chain(MAX_TXN_DEPTH + 1),)), 1)
    with pytest.raises(MalformedMessage, match="txn nesting is deeper than the limit of 8"):
        decode_batch(_pack([1, 1, [[6, [], [_chain_wire(MAX_TXN_DEPTH + 1)], []]]]))
    with pytest.raises(MalformedMessage):
        decode_batch(_pack([1, 1, [[6, [], [_chain_wire(100)], []]]]))  # far too deep: still only Malformed


@pytest.mark.parametrize(
    ("op", "words"),
    [
        (Op("txn", b""), "must hold a"),
        (Op("txn", b"", txn=((), ()),), "must hold a"),  # type: ignore[arg-type]
        (Op("get", b"k", txn=((), (), ())), "a get op carries no nested txn"),
        (Op("txn", b"", txn=((), ("put",), ())), "must be a dengine.Op"),  # type: ignore[arg-type]
        (Op("txn", b"", txn=((), (), (Op("get", "k"),))), "op key must be bytes"),  # type: ignore[arg-type]
        (Op("txn", b"", txn=(None, (), ())), "compares must be a tuple"),  # type: ignore[arg-type]
        (Op("rename", b"k"), "unknown txn op 'rename'"),
    ],
)
def test_encode_refuses_nested_txns_that_would_not_decode(op: Op, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        encode_command(Txn((), (op,), ()), 1)


def test_command_size_counts_nested_ops() -> None:
    from dengine.kv.commands import command_size

    flat = Txn((), (Op.put(b"k", b"v" * 100),), ())
    nested = Txn((), (Op.txn([], [], [Op.put(b"k", b"v" * 100)]),), ())
    assert command_size(nested) > command_size(flat) > 100

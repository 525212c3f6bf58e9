"""dengine.api: value types and the validators every client shares.

Rules: each validator rejects each kind of bad input with InvalidArgument
whose message names the problem; good input comes back (normalised)."""

from __future__ import annotations

import math

import attrs
import pytest

from dengine import api
from dengine.api import (
    KeyValue,
    LeaderInfo,
    Member,
    ReadConsistency,
    ScanResult,
    Status,
    WatchEvent,
    WatchEventType,
    validate_key,
    validate_prefix,
    validate_scan_prefix,
    validate_ttl,
    validate_value,
)
from dengine.errors import ErrorCode, InvalidArgument


# --- ReadConsistency ---------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("linearizable", ReadConsistency.LINEARIZABLE),
        ("LEASE", ReadConsistency.LEASE),
        (" Eventual ", ReadConsistency.EVENTUAL),
        (ReadConsistency.LEASE, ReadConsistency.LEASE),
    ],
)
def test_read_consistency_parse_accepts_names_in_any_case(given: object, expected: ReadConsistency) -> None:
    assert ReadConsistency.parse(given) is expected  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["strong", "", 1, None])
def test_read_consistency_parse_names_the_bad_value(bad: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        ReadConsistency.parse(bad)  # type: ignore[arg-type]
    assert repr(bad) in str(info.value)
    assert "linearizable" in str(info.value)
    assert info.value.code == ErrorCode.INVALID_ARGUMENT


# --- value types ---------------------------------------------------------------


def test_value_types_are_frozen() -> None:
    values = [
        KeyValue(b"k", b"v", 3),
        ScanResult([(b"k", b"v")], 4),
        WatchEvent(WatchEventType.PUT, b"k", b"v", None, 5),
        LeaderInfo(None, 2),
        Member(1, "127.0.0.1:7000"),
        Status(1, "leader", 2, 1, 10, 9, (Member(1, "a"),), 0),
    ]
    for value in values:
        field = attrs.fields(type(value))[0].name
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            setattr(value, field, None)


def test_watch_event_defaults_and_wire_numbers() -> None:
    event = WatchEvent(WatchEventType.DELETE, b"k", b"", b"old", 7)
    assert event.error == 0
    assert [int(t) for t in WatchEventType] == [0, 1, 2, 3]
    assert [t.name for t in WatchEventType] == ["PUT", "DELETE", "CANCELED", "PROGRESS"]


def test_prev_value_none_differs_from_empty() -> None:
    absent = WatchEvent(WatchEventType.PUT, b"k", b"v", None, 1)
    empty = WatchEvent(WatchEventType.PUT, b"k", b"v", b"", 1)
    assert absent != empty


def test_member_defaults() -> None:
    member = Member(3, "h:1")
    assert member.client_address is None
    assert member.is_learner is False


# --- validate_key / validate_value ------------------------------------------


def test_validate_key_returns_good_key() -> None:
    assert validate_key(b"/a", 10) == b"/a"
    assert validate_key(b"x" * 10, 10) == b"x" * 10


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ("text", ["key", "bytes", "str"]),
        (bytearray(b"k"), ["key", "bytes", "bytearray"]),
        (None, ["key", "bytes", "NoneType"]),
        (b"", ["key", "empty"]),
        (b"x" * 11, ["key", "11 bytes", "10 bytes"]),
    ],
)
def test_validate_key_names_the_problem(bad: object, words: list[str]) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_key(bad, 10)
    for word in words:
        assert word in str(info.value)


def test_validate_value_accepts_empty_and_limit() -> None:
    assert validate_value(b"", 4) == b""
    assert validate_value(b"1234", 4) == b"1234"


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ("text", ["value", "bytes", "str"]),
        (5, ["value", "bytes", "int"]),
        (b"12345", ["value", "5 bytes", "4 bytes"]),
    ],
)
def test_validate_value_names_the_problem(bad: object, words: list[str]) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_value(bad, 4)
    for word in words:
        assert word in str(info.value)


def test_default_limits_apply() -> None:
    validate_key(b"k" * api.DEFAULT_MAX_KEY_SIZE)
    with pytest.raises(InvalidArgument):
        validate_key(b"k" * (api.DEFAULT_MAX_KEY_SIZE + 1))
    validate_value(b"v" * api.DEFAULT_MAX_VALUE_SIZE)
    with pytest.raises(InvalidArgument):
        validate_value(b"v" * (api.DEFAULT_MAX_VALUE_SIZE + 1))


# --- validate_ttl ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ttl", "ms"),
    [(None, None), (1, 1000), (0.5, 500), (0.0001, 1), (1.0005, 1001), (api.MAX_TTL_SECONDS, api.MAX_TTL_SECONDS * 1000)],
)
def test_validate_ttl_converts_seconds_to_ms_rounding_up(ttl: float | None, ms: int | None) -> None:
    assert validate_ttl(ttl) == ms


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (0, ["ttl", "greater than 0"]),
        (-1.5, ["ttl", "greater than 0", "-1.5"]),
        ("10", ["ttl", "number", "str"]),
        (True, ["ttl", "number", "bool"]),
        (math.nan, ["ttl", "nan"]),
        (math.inf, ["ttl", "limit"]),
        (api.MAX_TTL_SECONDS + 1, ["ttl", "limit"]),
        (10**400, ["ttl", "limit"]),
    ],
)
def test_validate_ttl_names_the_problem(bad: object, words: list[str]) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_ttl(bad)
    for word in words:
        assert word in str(info.value)


# --- validate_prefix / validate_scan_prefix ----------------------------------------


@pytest.mark.parametrize("good", [b"/", b"/a/", b"/services/payment/"])
def test_validate_prefix_accepts_slash_delimited(good: bytes) -> None:
    assert validate_prefix(good) == good


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ("/a/", ["prefix", "bytes", "str"]),
        (b"", ["prefix", "start and end with '/'"]),
        (b"a/", ["prefix", "start and end with '/'", "b'a/'"]),
        (b"/a", ["prefix", "start and end with '/'", "b'/a'"]),
        (b"/" + b"x" * 10 + b"/", ["prefix", "12 bytes", "limit of 8"]),
    ],
)
def test_validate_prefix_names_the_problem(bad: object, words: list[str]) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_prefix(bad, 8)
    for word in words:
        assert word in str(info.value)


def test_validate_scan_prefix() -> None:
    assert validate_scan_prefix(b"") == b""
    assert validate_scan_prefix(b"abc", 3) == b"abc"
    with pytest.raises(InvalidArgument, match="scan prefix must be bytes"):
        validate_scan_prefix("abc")
    with pytest.raises(InvalidArgument, match="4 bytes"):
        validate_scan_prefix(b"abcd", 3)


# --- nested transactions (Op.txn) -----------------------------------------------------

from dengine.api import MAX_TXN_DEPTH, Compare, Op, validate_txn  # noqa: E402


def _chain(levels: int) -> Op:
    """``levels`` txn ops, each the only success op of the one around it."""
    op = Op.get(b"/k")
    for _ in range(levels):
        op = Op("txn", b"", txn=((), (op,), ()))  # the plain constructor: no depth check
    return op


def test_op_txn_builds_a_nested_txn_op_and_op_txn_reads_its_body() -> None:
    inner = Op.txn([Compare.version(b"/a") == 0], [Op.put(b"/a", b"1")], [Op.get(b"/a")])
    assert inner.kind == "txn" and inner.key == b""
    assert inner.txn == ((Compare.version(b"/a") == 0,), (Op.put(b"/a", b"1"),), (Op.get(b"/a"),))
    assert Op.get(b"/a").txn is None
    assert Op.txn() == Op("txn", b"", txn=((), (), ()))
    assert hash(inner) == hash(Op.txn((Compare.version(b"/a") == 0,), (Op.put(b"/a", b"1"),), (Op.get(b"/a"),)))
    assert attrs.evolve(inner, txn=None).txn is None
    # writes: if an op of either branch writes, at any depth.
    assert inner.writes and not Op.txn([], [Op.get(b"/a")], [Op.scan(b"/")]).writes
    assert Op.txn([], [], [Op.txn([], [Op.delete(b"/a")])]).writes
    assert not Op.txn().writes


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: Op.txn(Compare.version(b"/a") == 0), "txn compare must be a list"),
        (lambda: Op.txn([], b"/a"), "txn success must be a list"),
        (lambda: Op.txn([], [], [("get", b"/a")]), "txn failure[0] must be a dengine.Op"),
        (lambda: Op.txn([Op.get(b"/a")]), "txn compare[0] must be a dengine.Compare"),
        (lambda: Op.txn([], [Op.put(b"/a", b"1"), Op.delete(b"/a")]), "writes the key b'/a' more than once"),
        (lambda: Op.txn([], [Op("txn", b"", txn=((), (), (1,)))]), "txn success[0].failure[0] must be a dengine.Op"),
    ],
)
def test_op_txn_checks_types(call: object, needle: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        call()  # type: ignore[operator]
    assert needle in str(info.value)


def test_validate_txn_recurses_into_nested_transactions() -> None:
    nested = Op("txn", b"", txn=([Compare.value(b"/a") == b"x"], [Op.put(b"/a", b"1")], []))  # lists: normalised
    compare, success, failure = validate_txn([], [Op.put(b"/a", b"0"), nested], [])
    assert success[1].txn == ((Compare.value(b"/a") == b"x",), (Op.put(b"/a", b"1"),), ())
    # The outer branch and the nested one may each write /a once: each list is checked on its own.
    assert success[0].key == success[1].txn[1][0].key == b"/a"
    cases: list[tuple[Op, int, str]] = [
        (Op.txn([], [Op.get(b"/k%d" % i) for i in range(5)]), 4,
         "txn success[0].success holds 5 items, more than the limit of 4"),
        (Op.txn([Compare.version(b"/k%d" % i) == 0 for i in range(5)]), 4, "txn success[0].compare holds 5 items"),
        (Op.txn([], [], [Op.txn([], [Op.put(b"/" + b"k" * 9, b"")])]), 8, "key is 10 bytes, larger than the limit"),
        (Op.txn([], [Op.put(b"/v", b"v" * 9)]), 8, "value is 9 bytes, larger than the limit"),
        (Op.txn([Compare.version(b"/" + b"k" * 9) == 0]), 8, "key is 10 bytes"),
        (Op("txn", b"/k", txn=((), (), ())), 8, "it takes no key, value, end, lease, limit or ttl"),
        (Op("txn", b""), 8, "txn success[0] must hold (compare, success, failure)"),
        (Op("get", b"/k", txn=((), (), ())), 8, "a get op carries no nested txn"),
    ]
    for op, limit, needle in cases:
        with pytest.raises(InvalidArgument) as info:
            validate_txn([], [op], [], max_ops=limit, max_key_size=limit, max_value_size=limit)
        assert needle in str(info.value), (op, str(info.value))


def test_nesting_deeper_than_the_limit_is_refused() -> None:
    assert MAX_TXN_DEPTH == 8
    validate_txn([], [_chain(MAX_TXN_DEPTH)], [])  # eight levels below the transaction are fine
    with pytest.raises(InvalidArgument, match="txn nesting is deeper than the limit of 8"):
        validate_txn([], [], [_chain(MAX_TXN_DEPTH + 1)])
    # Op.txn counts from where it will stand: inside a transaction, one level down.
    op = Op.get(b"/k")
    for _ in range(MAX_TXN_DEPTH):
        op = Op.txn([], [op])
    with pytest.raises(InvalidArgument, match="deeper than the limit of 8"):
        Op.txn([], [op])

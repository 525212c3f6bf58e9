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

"""dengine.codec: round trips for every Raft value, and hostile input.

Rule under test: decode(encode(x)) == x for every value; any other bytes give
MalformedMessage (never another exception)."""

from __future__ import annotations

import re

import attrs
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dengine import codec
from dengine.errors import InvalidArgument, MalformedMessage
from dengine.raft.messages import (
    MESSAGE_TYPES,
    AppendEntries,
    AppendResponse,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    Snapshot,
    SnapshotMeta,
    TimeoutNow,
    TransferLeader,
    VoteResponse,
)

u64 = st.integers(min_value=0, max_value=2**64 - 1)
small = st.integers(min_value=0, max_value=1000)
uint = st.one_of(small, u64)
ids = st.frozensets(small, max_size=5)

entries = st.builds(Entry, index=uint, term=uint, type=st.sampled_from(EntryType), data=st.binary(max_size=64))
hard_states = st.builds(HardState, term=uint, vote=st.none() | uint, commit=uint)


@st.composite
def conf_states(draw: st.DrawFn) -> ConfState:
    voters = draw(ids)
    learners = draw(ids) - voters
    return ConfState(voters=voters, learners=learners)


metas = st.builds(SnapshotMeta, index=uint, term=uint, conf_state=conf_states())
snapshots = st.builds(Snapshot, meta=metas, data=st.binary(max_size=256))
peer = {"frm": uint, "to": uint, "term": uint}

MESSAGES = {
    AppendEntries: st.builds(
        AppendEntries, **peer, prev_index=uint, prev_term=uint,
        entries=st.lists(entries, max_size=5).map(tuple), commit=uint,
    ),
    AppendResponse: st.builds(
        AppendResponse, **peer, index=uint, reject=st.booleans(), reject_hint=uint, hint_term=uint
    ),
    RequestVote: st.builds(
        RequestVote, **peer, last_index=uint, last_term=uint, pre_vote=st.booleans(), force=st.booleans()
    ),
    VoteResponse: st.builds(VoteResponse, **peer, granted=st.booleans(), pre_vote=st.booleans()),
    InstallSnapshot: st.builds(InstallSnapshot, **peer, snapshot=snapshots),
    Heartbeat: st.builds(Heartbeat, **peer, commit=uint, round=uint),
    HeartbeatResponse: st.builds(HeartbeatResponse, **peer, round=uint),
    ReadIndexRequest: st.builds(ReadIndexRequest, **peer, ctxs=st.lists(st.binary(max_size=16), max_size=4).map(tuple)),
    ReadIndexResponse: st.builds(
        ReadIndexResponse, **peer, ctxs=st.lists(st.binary(max_size=16), max_size=4).map(tuple),
        index=uint, reject=st.booleans(),
    ),
    TimeoutNow: st.builds(TimeoutNow, **peer),
    TransferLeader: st.builds(TransferLeader, **peer, transferee=uint),
}

ALL_VALUES = st.one_of(entries, hard_states, conf_states(), metas, snapshots, *MESSAGES.values())


def test_every_message_type_has_a_strategy() -> None:
    assert set(MESSAGES) == set(MESSAGE_TYPES)


@pytest.mark.parametrize("cls", list(MESSAGES), ids=lambda c: c.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_message_round_trip(cls: type, data: st.DataObject) -> None:
    msg = data.draw(MESSAGES[cls])
    encoded = codec.encode_message(msg)
    decoded = codec.decode_message(encoded)
    assert decoded == msg
    assert type(decoded) is cls
    # bytes stay bytes, tuples stay tuples: equality alone would not tell.
    for field in attrs.fields(cls):
        assert type(getattr(decoded, field.name)) is type(getattr(msg, field.name))


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(entries, hard_states, conf_states(), metas, snapshots))
def test_value_round_trip(value: object) -> None:
    assert codec.decode(codec.encode(value), type(value)) == value


@given(entry=entries)
def test_entry_type_decodes_to_the_enum(entry: Entry) -> None:
    decoded = codec.decode(codec.encode(entry), Entry)
    assert type(decoded.type) is EntryType
    assert type(decoded.data) is bytes


def test_encoding_is_a_compact_array() -> None:
    hb = Heartbeat(frm=1, to=2, term=3, commit=4, round=5)
    raw = msgpack.unpackb(codec.encode(hb))
    assert raw == [codec.CODEC_VERSION, codec.TAGS[Heartbeat], 1, 2, 3, 4, 5]
    assert len(codec.encode(hb)) < 16


def test_conf_state_sets_encode_deterministically() -> None:
    a = codec.encode(ConfState(voters={3, 1, 2}))
    b = codec.encode(ConfState(voters={2, 3, 1}))
    assert a == b


def test_tags_are_unique() -> None:
    assert len(set(codec.TAGS.values())) == len(codec.TAGS)


# --------------------------------------------------------------------------
# Malformed input
# --------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=64))
def test_garbage_bytes_raise_only_malformed(data: bytes) -> None:
    try:
        codec.decode(data)
    except MalformedMessage:
        pass  # expected for almost every input; anything else escapes and fails


@settings(max_examples=300, deadline=None)
@given(value=ALL_VALUES, cut=st.integers(min_value=0))
def test_truncated_encoding_is_malformed(value: object, cut: int) -> None:
    encoded = codec.encode(value)
    with pytest.raises(MalformedMessage):
        codec.decode(encoded[: cut % len(encoded)])


@settings(max_examples=300, deadline=None)
@given(value=ALL_VALUES, position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_flipped_bit_is_malformed_or_a_valid_value(value: object, position: int, bit: int) -> None:
    encoded = bytearray(codec.encode(value))
    encoded[position % len(encoded)] ^= 1 << bit
    try:
        decoded = codec.decode(bytes(encoded))
    except MalformedMessage:
        return
    # A flip inside an integer or a byte string can give another valid value
    # (msgpack allows non-canonical integer widths); it must be a proper one.
    assert codec.decode(codec.encode(decoded)) == decoded


@settings(max_examples=300, deadline=None)
@given(obj=st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.binary(max_size=8)
    | st.text(max_size=8) | st.floats(allow_nan=False),
    lambda children: st.lists(children, max_size=6),
    max_leaves=20,
))
def test_arbitrary_msgpack_structures_raise_only_malformed(obj: object) -> None:
    for candidate in (obj, [codec.CODEC_VERSION, 10, obj], [codec.CODEC_VERSION, 1, *([obj] * 4)]):
        try:
            codec.decode(msgpack.packb(candidate, use_bin_type=True))
        except MalformedMessage:
            pass


def _raw(*fields: object) -> bytes:
    return msgpack.packb(list(fields), use_bin_type=True)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "not valid msgpack"),
        (b"\xc1", "not valid msgpack"),  # never-used msgpack byte
        (_raw(1, 15, 1, 2, 3, 4, 5) + b"\x00", "not valid msgpack"),  # trailing data
        (msgpack.packb({"a": 1}), "must be an array"),
        (_raw(1), "must be an array"),
        (_raw(2, 15, 1, 2, 3, 4, 5), "unsupported codec version"),
        (_raw(1, 99, 1), "unknown message tag"),
        (_raw(1, "x", 1), "unknown message tag"),
        (_raw(1, 15, 1, 2, 3, 4), "must have 5 fields"),
        (_raw(1, 15, 1, 2, 3, 4, 5, 6), "must have 5 fields"),
        (_raw(1, 15, -1, 2, 3, 4, 5), "'frm' must be a non-negative integer"),
        (_raw(1, 15, True, 2, 3, 4, 5), "'frm' must be a non-negative integer"),
        (_raw(1, 15, 1, 2, 3.0, 4, 5), "'term' must be a non-negative integer"),
        (_raw(1, 13, 1, 2, 3, 1, False), "'granted' must be a boolean"),
        (_raw(1, 1, 1, 1, 7, b""), "'type' must be one of"),
        (_raw(1, 1, 1, 1, 0, "text"), "'data' must be bytes"),
        (_raw(1, 2, 1, "x", 0), "'vote' must be a non-negative integer"),
        (_raw(1, 3, [1, 2], [2]), "overlap"),
        (_raw(1, 10, 1, 2, 3, 4, 5, [[1, 1, 0]], 0), "must have 4 elements"),
        (_raw(1, 10, 1, 2, 3, 4, 5, "nope", 0), "'entries' must be an array"),
        (_raw(1, 17, 1, 2, 3, [b"a", 1]), "'ctxs[1]' must be bytes"),
        (msgpack.packb([1, 15, msgpack.ExtType(1, b"x"), 2, 3, 4, 5]), "'frm' must be a non-negative integer"),
        (b"\x93\x01\x0f\xa2\xff\xfe", "not valid msgpack"),  # invalid UTF-8 string
        (b"\xdd\xff\xff\xff\xff", "not valid msgpack"),  # claims a 4-billion-element array
    ],
)
def test_malformed_input_names_the_problem(data: bytes, expected: str) -> None:
    with pytest.raises(MalformedMessage, match=re.escape(expected)):
        codec.decode(data)


def test_decode_message_rejects_non_messages() -> None:
    with pytest.raises(MalformedMessage, match="expected AppendEntries"):
        codec.decode_message(codec.encode(HardState(term=1)))


def test_decode_expect_rejects_other_types() -> None:
    with pytest.raises(MalformedMessage, match="expected Entry, got a HardState"):
        codec.decode(codec.encode(HardState(term=1)), Entry)


def test_decode_rejects_non_bytes() -> None:
    with pytest.raises(MalformedMessage, match="expected bytes"):
        codec.decode("a string")  # type: ignore[arg-type]


def test_encode_rejects_unknown_types() -> None:
    with pytest.raises(InvalidArgument, match="not a Raft value"):
        codec.encode({"term": 1})
    with pytest.raises(InvalidArgument, match="not a peer message"):
        codec.encode_message(HardState())  # type: ignore[arg-type]


def test_encode_rejects_values_that_do_not_fit() -> None:
    with pytest.raises(InvalidArgument, match="cannot encode HardState"):
        codec.encode(HardState(term=2**64))

"""Splitting an InstallSnapshot into frames and joining it back
(dengine.transport.snapshots), without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dengine.codec import SnapshotPart, decode_message, decode_wire, encode
from dengine.errors import InvalidArgument, MalformedMessage, ProtocolError
from dengine.raft.messages import ConfState, InstallSnapshot, Snapshot, SnapshotMeta
from dengine.transport.snapshots import PART_SIZE, SnapshotJoiner, part_capacity, snapshot_parts

META = SnapshotMeta(40, 3, ConfState(frozenset({1, 2, 3}), frozenset({4})))


def install(data: bytes, meta: SnapshotMeta = META, term: int = 3) -> InstallSnapshot:
    return InstallSnapshot(frm=1, to=2, term=term, snapshot=Snapshot(meta, data))


def parts_of(msg: InstallSnapshot, max_frame_size: int) -> list[SnapshotPart]:
    bodies = list(snapshot_parts(msg, max_frame_size))
    assert all(len(b) <= max_frame_size for b in bodies)
    parts = [decode_wire(b) for b in bodies]
    assert all(type(p) is SnapshotPart for p in parts)
    return parts  # type: ignore[return-value]


def join(parts: list[SnapshotPart], joiner: SnapshotJoiner | None = None) -> list[InstallSnapshot]:
    joiner = joiner if joiner is not None else SnapshotJoiner(1)
    return [m for m in (joiner.feed(p) for p in parts) if m is not None]


@given(size=st.integers(0, 5000), frame=st.integers(120, 3000))
def test_parts_fit_the_frame_and_join_back_to_the_same_message(size: int, frame: int) -> None:
    msg = install(bytes(i % 251 for i in range(size)))
    parts = parts_of(msg, frame)
    capacity = part_capacity(msg, frame)
    assert len(parts) == max(1, -(-size // capacity))
    assert [p.offset for p in parts] == [i * capacity for i in range(len(parts))]
    assert join(parts) == [msg]


def test_a_large_snapshot_goes_in_parts_of_at_most_a_mebibyte() -> None:
    msg = install(b"z" * (3 * PART_SIZE + 7))
    parts = parts_of(msg, 16 * 1024 * 1024)
    assert [len(p.data) for p in parts] == [PART_SIZE] * 3 + [7]
    assert join(parts) == [msg]


def test_a_frame_too_small_for_any_part_is_refused() -> None:
    msg = install(b"abc")
    header = len(encode(part(3, b"", size=3)))
    with pytest.raises(InvalidArgument, match=f"frame size of {header} bytes cannot hold a part"):
        snapshot_parts(msg, header)
    assert len(list(snapshot_parts(msg, header + 9))) == 3  # one byte per part still goes


def test_a_new_start_drops_the_unfinished_snapshot() -> None:
    old = parts_of(install(b"a" * 1000), 300)
    new = install(b"b" * 900, SnapshotMeta(50, 3, META.conf_state))
    joiner = SnapshotJoiner(1)
    assert join(old[:2], joiner) == []
    assert joiner.pending > 0
    assert join(parts_of(new, 300), joiner) == [new]
    assert joiner.pending == 0


def part(offset: int, data: bytes, size: int = 100, meta: SnapshotMeta = META, term: int = 3) -> SnapshotPart:
    return SnapshotPart(frm=1, to=2, term=term, meta=meta, size=size, offset=offset, data=data)


@pytest.mark.parametrize(
    ("parts", "error"),
    [
        ([part(0, b"x", size=10_001)], "snapshot of 10001 bytes, over the limit of 10000 bytes"),
        ([part(10, b"x")], "at offset 10 without the part at offset 0"),
        ([part(0, b"x" * 10), part(20, b"x")], "at offset 20, expected offset 10"),
        ([part(0, b"x" * 10), part(10, b"x", meta=SnapshotMeta(41, 3, META.conf_state))],
         "snapshot at index 41 in the middle of the snapshot at index 40"),
        ([part(0, b"x" * 10), part(10, b"x", size=200)], "in the middle of the snapshot"),
        ([part(0, b"x" * 10), part(10, b"x", term=4)], "in the middle of the snapshot"),
        ([part(0, b"x" * 101)], "past its announced size of 100 bytes"),
        ([part(0, b"x" * 10), part(10, b"")], "an empty part of an unfinished snapshot"),
    ],
    ids=["over the limit", "no start", "gap", "other snapshot", "other size", "other term", "past the size",
         "empty part"],
)
def test_a_broken_stream_is_a_protocol_error_naming_what_was_wrong(parts: list[SnapshotPart], error: str) -> None:
    joiner = SnapshotJoiner(7, max_size=10_000)
    with pytest.raises(ProtocolError, match=error) as caught:
        for p in parts:
            assert joiner.feed(p) is None
    assert str(caught.value).startswith("node 7 sent")


def test_the_part_is_a_wire_value_not_a_raft_message() -> None:
    body = encode(part(0, b"hello", size=5))
    assert decode_wire(body) == part(0, b"hello", size=5)
    with pytest.raises(MalformedMessage, match="got a SnapshotPart"):
        decode_message(body)

"""dengine.transport.framing: the sans-IO decoder against a naive parser, and
the trio helpers (one send_all per batch, shielded writes).

Rules of this module: trio tests run on in-memory streams (no sockets) under
an absolute ``trio.fail_after``; timeouts run on the autojump clock.
"""

from __future__ import annotations

import struct

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from dengine.errors import FrameTooLarge, InvalidArgument, MalformedMessage, Timeout
from dengine.transport.framing import (
    DEFAULT_MAX_FRAME_SIZE,
    HEADER_SIZE,
    FrameDecoder,
    encode_frame,
    encode_frames,
    receive_frame,
    receive_frames,
    send_frames,
)

TEST_TIMEOUT = 10


def naive_parse(data: bytes) -> tuple[list[bytes], bytes]:
    """The oracle: walk the whole buffer at once."""
    frames = []
    pos = 0
    while len(data) - pos >= 4:
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        if len(data) - pos - 4 < n:
            break
        frames.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return frames, data[pos:]


def feed_chunks(decoder: FrameDecoder, data: bytes, cuts: list[int]) -> list[bytes]:
    out: list[bytes] = []
    prev = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        out.extend(decoder.feed(data[prev:cut]))
        prev = cut
    return out


# -- encoding ----------------------------------------------------------------


def test_encode_frame_is_big_endian_length_then_body() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"") == b"\x00\x00\x00\x00"
    assert encode_frames([b"a", b"", b"bc"]) == b"\x00\x00\x00\x01a\x00\x00\x00\x00\x00\x00\x00\x02bc"
    assert encode_frames([]) == b""


def test_encode_refuses_a_body_over_the_limit() -> None:
    with pytest.raises(FrameTooLarge, match="frame of 11 bytes exceeds the maximum frame size of 10 bytes"):
        encode_frame(b"x" * 11, max_frame_size=10)
    with pytest.raises(FrameTooLarge):
        encode_frames([b"ok", b"x" * 11], max_frame_size=10)
    assert encode_frame(b"x" * 10, max_frame_size=10)[HEADER_SIZE:] == b"x" * 10


@pytest.mark.parametrize("bad", [0, -1, 2**32, 1.5, "16"])
def test_decoder_rejects_a_bad_limit(bad: object) -> None:
    with pytest.raises(InvalidArgument, match="max_frame_size"):
        FrameDecoder(bad)  # type: ignore[arg-type]


def test_default_limit_is_16_mib() -> None:
    assert DEFAULT_MAX_FRAME_SIZE == 16 * 1024 * 1024
    assert FrameDecoder().max_frame_size == DEFAULT_MAX_FRAME_SIZE


# -- decoding ----------------------------------------------------------------


def test_split_at_every_byte() -> None:
    bodies = [b"", b"a", b"hello world", bytes(range(256)), b"\x00" * 5]
    data = encode_frames(bodies)
    for cut in range(len(data) + 1):
        decoder = FrameDecoder()
        assert decoder.feed(data[:cut]) + decoder.feed(data[cut:]) == bodies
        assert decoder.buffered == 0
        decoder.close()


def test_one_byte_at_a_time() -> None:
    bodies = [b"x" * n for n in range(20)]
    data = encode_frames(bodies)
    decoder = FrameDecoder()
    out = []
    for i in range(len(data)):
        out.extend(decoder.feed(data[i : i + 1]))
    assert out == bodies


@settings(max_examples=300, deadline=None)
@given(
    bodies=st.lists(st.binary(max_size=300), max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=20),
    tail=st.binary(max_size=10),
)
def test_decoder_matches_naive_parser_over_random_chunkings(bodies: list[bytes], cuts: list[int], tail: bytes) -> None:
    # ``tail`` may be a partial header or a header with a partial body.
    data = encode_frames(bodies) + tail
    cuts = [c for c in cuts if c <= len(data)]
    decoder = FrameDecoder(max_frame_size=2**32 - 1)
    got = feed_chunks(decoder, data, cuts)
    want, rest = naive_parse(data)
    assert got == want
    assert decoder.buffered == len(rest)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200), cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=10))
def test_decoder_on_arbitrary_bytes_matches_naive_parser_or_refuses(data: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder(max_frame_size=64)
    want, _ = naive_parse(data)
    try:
        got = feed_chunks(decoder, data, [c for c in cuts if c <= len(data)])
    except FrameTooLarge:
        # Only if the naive walk meets a header over the limit.
        pos = 0
        while len(data) - pos >= 4:
            (n,) = struct.unpack(">I", data[pos : pos + 4])
            if n > 64:
                return
            pos += 4 + n
        raise
    assert got == want


def test_oversized_header_raises_before_the_body_is_buffered() -> None:
    decoder = FrameDecoder(max_frame_size=1024)
    decoder.feed(b"\x00\x00")  # half a header: nothing known yet
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(b"\x04\x01")  # announces 1025 bytes: not one body byte sent
    assert "1025 bytes" in str(info.value) and "1024 bytes" in str(info.value)
    assert decoder.buffered == 0


def test_huge_announcement_is_refused_without_allocation() -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameTooLarge, match=f"frame of {2**32 - 1} bytes exceeds .* {DEFAULT_MAX_FRAME_SIZE} bytes"):
        decoder.feed(b"\xff\xff\xff\xff" + b"x" * 100)
    assert decoder.buffered == 0


def test_frame_at_exactly_the_limit_is_accepted() -> None:
    decoder = FrameDecoder(max_frame_size=8)
    assert decoder.feed(encode_frame(b"12345678")) == [b"12345678"]


def test_errors_are_sticky() -> None:
    decoder = FrameDecoder(max_frame_size=4)
    with pytest.raises(FrameTooLarge):
        decoder.feed(encode_frame(b"toolong"))
    with pytest.raises(FrameTooLarge):
        decoder.feed(encode_frame(b"ok"))
    with pytest.raises(FrameTooLarge):
        decoder.close()


def test_close_mid_frame_is_malformed() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\x00\x00")
    with pytest.raises(MalformedMessage, match="2 of 4 header bytes"):
        decoder.close()
    decoder = FrameDecoder()
    decoder.feed(b"\x00\x00\x00\x05abc")
    with pytest.raises(MalformedMessage, match="3 of 5 body bytes"):
        decoder.close()
    FrameDecoder().close()  # nothing buffered: a clean end


def test_feed_with_limit_keeps_the_rest_buffered() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frames([b"a", b"b", b"c"]), limit=1) == [b"a"]
    assert decoder.feed(b"", limit=1) == [b"b"]
    assert decoder.feed(encode_frame(b"d")) == [b"c", b"d"]


# -- trio helpers -------------------------------------------------------------


class CountingStream(trio.abc.SendStream):
    def __init__(self, inner: trio.abc.SendStream) -> None:
        self.inner = inner
        self.calls = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.calls += 1
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_send_frames_writes_a_batch_with_one_send_all() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        left, right = trio.testing.memory_stream_pair()
        counting = CountingStream(left)
        bodies = [b"one", b"two", b"x" * 1000]
        written = await send_frames(counting, bodies)
        assert counting.calls == 1
        assert written == sum(len(b) + 4 for b in bodies)
        await left.aclose()
        decoder = FrameDecoder()
        assert [f async for f in receive_frames(right, decoder)] == bodies
        await right.aclose()


async def test_send_frames_with_nothing_writes_nothing() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        left, right = trio.testing.memory_stream_pair()
        counting = CountingStream(left)
        assert await send_frames(counting, []) == 0
        assert counting.calls == 0
        await left.aclose()
        await right.aclose()


async def test_a_cancelled_write_still_writes_whole_frames() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        left, right = trio.testing.lockstep_stream_pair()  # send_all waits for the reader
        body = b"z" * 10_000
        outcome: list[str] = []

        async def writer(scope: trio.CancelScope) -> None:
            with scope:
                await send_frames(left, [body])
                outcome.append("returned")
                await trio.sleep_forever()
            outcome.append("cancelled after the write")

        scope = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer, scope)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()  # while send_all is blocked on the reader
            await trio.testing.wait_all_tasks_blocked()
            assert outcome == []  # still writing: the write is shielded
            frame = await receive_frame(right, FrameDecoder())
        assert frame == body
        assert outcome == ["returned", "cancelled after the write"]
        await left.aclose()
        await right.aclose()


async def test_write_timeout_bounds_the_shielded_write(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        left, right = trio.testing.lockstep_stream_pair()  # nobody reads
        start = trio.current_time()
        with pytest.raises(Timeout, match="must be closed"):
            await send_frames(left, [b"stuck"], write_timeout=3)
        assert trio.current_time() - start == pytest.approx(3)
        await trio.aclose_forcefully(left)
        await trio.aclose_forcefully(right)


async def test_receive_frames_raises_on_oversized_and_truncated_streams() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        left, right = trio.testing.memory_stream_pair()
        await left.send_all(encode_frame(b"fine") + b"\x00\x01\x00\x00")
        got = []
        with pytest.raises(FrameTooLarge, match="65536 bytes exceeds the maximum frame size of 100"):
            async for body in receive_frames(right, FrameDecoder(max_frame_size=100)):
                got.append(body)
        await left.aclose()
        await right.aclose()

        left, right = trio.testing.memory_stream_pair()
        await left.send_all(encode_frame(b"fine") + b"\x00\x00\x00\x09abc")
        await left.aclose()
        got = []
        with pytest.raises(MalformedMessage, match="middle of a frame"):
            async for body in receive_frames(right, FrameDecoder()):
                got.append(body)
        assert got == [b"fine"]
        await right.aclose()


async def test_receive_frame_leaves_pipelined_frames_in_the_decoder() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        left, right = trio.testing.memory_stream_pair()
        await left.send_all(encode_frames([b"first", b"second", b"third"]))
        await left.aclose()
        decoder = FrameDecoder()
        assert await receive_frame(right, decoder) == b"first"
        assert [f async for f in receive_frames(right, decoder)] == [b"second", b"third"]
        with pytest.raises(MalformedMessage, match="closed before a frame"):
            await receive_frame(right, decoder)
        await right.aclose()

"""What a server's welcome tells a client (its limits, its election
timeout), and the keepalive that gives up a silent server while a request
waits: the sans-IO rules in dengine.client._core, then the trio connection
that carries them out, on a mock clock.

Rules: every trio test under an absolute fail_after; no sockets, no real
sleeps: the "server" is the other end of ``trio.testing.lockstep_stream_pair``
and time is trio's MockClock (autojump), so "0.5 s of silence" is exact.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from dengine.client import _core
from dengine.client._connection import Connection, ConnectionLost
from dengine.codec import pack, unpack
from dengine.errors import InvalidArgument, Unavailable
from dengine.transport import framing, handshake
from dengine.transport.framing import FrameDecoder, encode_frames

DEADLINE = 60
INFO = {"max_key_size": 8, "max_value_size": 100, "max_frame_size": 4096, "election_timeout_ms": 300}


def _welcomed(info: Any = INFO) -> _core.ConnectionState:
    state = _core.ConnectionState("s:1", cluster_id="c")
    assert state.receive_handshake(framing.encode_frame(handshake.encode_reply(handshake.Welcome(2, None, info)))) == 2
    return state


# -- the welcome ---------------------------------------------------------------------------


def test_the_welcome_gives_the_servers_limits_and_election_timeout() -> None:
    state = _welcomed()
    assert state.info == _core.ServerInfo(max_key_size=8, max_value_size=100, max_frame_size=4096,
                                          election_timeout=0.3)


@pytest.mark.parametrize("info", ["junk", {"max_key_size": "8"}, {"max_value_size": -1}, {"max_frame_size": True},
                                  {"election_timeout_ms": 0}, {}])
def test_an_info_map_the_client_cannot_use_is_ignored_field_by_field(info: Any) -> None:
    state = _core.ConnectionState("s:1", cluster_id="c")
    assert state.receive_handshake(framing.encode_frame(pack(["welcome", 2, None, info]))) == 2
    assert state.info == _core.ServerInfo()


def test_a_welcome_without_info_leaves_the_limits_to_the_server() -> None:
    state = _core.ConnectionState("s:1", cluster_id="c")
    state.receive_handshake(framing.encode_frame(pack(["welcome", 2])))
    assert state.info == _core.ServerInfo()
    state.request("put", {"key": b"k" * 100, "value": b"v" * 5000})  # the server will judge


@pytest.mark.parametrize(
    ("op", "args", "said"),
    [
        ("put", {"key": b"k", "value": b"v" * 101}, "value is 101 bytes, larger than the limit of 100 bytes of the "
                                                     "server at s:1 (its raft.max_value_size)"),
        ("put", {"key": b"k" * 9, "value": b"v"}, "key is 9 bytes, larger than the limit of 8 bytes of the server "
                                                  "at s:1 (its raft.max_key_size)"),
        ("cas", {"key": b"k", "new": b"n" * 101}, "value is 101 bytes, larger than the limit of 100 bytes"),
        ("get", {"key": b"k" * 9}, "key is 9 bytes"),
        ("scan_prefix", {"prefix": b"/" * 9}, "prefix is 9 bytes"),
    ],
)
def test_keys_and_values_over_the_servers_limits_are_refused_before_sending(op: str, args: dict[str, Any],
                                                                            said: str) -> None:
    state = _welcomed()
    with pytest.raises(InvalidArgument) as info:
        state.request(op, args)
    assert said in str(info.value)


def test_the_servers_frame_limit_counts_when_smaller_than_the_clients() -> None:
    state = _welcomed({**INFO, "max_value_size": 1 << 20})
    with pytest.raises(InvalidArgument, match=r"more than one frame may carry \(4096 bytes"):
        state.request("put", {"key": b"k", "value": b"v" * 5000})
    rid, data = state.request("put", {"key": b"k", "value": b"v" * 100})  # within every limit
    assert unpack(data[4:])[0] == rid


# -- retries scale with the election timeout -------------------------------------------------


def test_backoff_is_capped_at_a_quarter_of_the_servers_election_timeout() -> None:
    router = _core.Router(["a:1", "b:2"])
    assert router.backoff_cap() == _core.BACKOFF_MAX  # nothing known yet
    att = _core.Attempts(_core.calls.get(b"k", consistency=None, timeout=None), router, limit=100.0, now=0.0,
                         rng=random.Random(7))
    slow = [att.backoff(0.0) for _ in range(12)]
    assert max(slow) > 0.3  # the 500 ms cap, jittered
    router.welcomed("a:1", 1, _core.ServerInfo(election_timeout=0.3))
    assert router.backoff_cap() == pytest.approx(0.075)
    fast = [att.backoff(0.0) for _ in range(12)]
    assert all(d is not None and d <= 0.075 for d in fast)
    router.welcomed("b:2", 2, _core.ServerInfo(election_timeout=0.01))
    assert router.backoff_cap() == _core.BACKOFF_MIN  # never below the first step


# -- keepalive: the rules -----------------------------------------------------------------


def test_keepalive_timeout_is_the_callers_else_the_servers_election_timeout() -> None:
    assert _core.keepalive_timeout(2.5, _core.ServerInfo(election_timeout=0.3)) == 2.5
    assert _core.keepalive_timeout(None, _core.ServerInfo(election_timeout=2.0)) == 2.0
    assert _core.keepalive_timeout(None, _core.ServerInfo(election_timeout=0.3)) == _core.KEEPALIVE_MIN == 0.5
    assert _core.keepalive_timeout(None, _core.ServerInfo()) == math.inf  # an older server: off
    assert _core.check_keepalive(None) is None
    assert _core.check_keepalive(math.inf) == math.inf
    for bad in (0, -1, float("nan"), True, "1"):
        with pytest.raises(InvalidArgument, match="keepalive_timeout must be"):
            _core.check_keepalive(bad)


def test_liveness_pings_once_at_half_the_timeout_and_gives_up_at_the_timeout() -> None:
    live = _core.Liveness(1.0, now=10.0)
    assert live.next_check() == 10.5
    assert live.check(10.4) is None
    assert live.check(10.5) == _core.Liveness.PING
    assert live.next_check() == 11.0
    assert live.check(10.9) is None  # one ping per silence
    assert live.check(11.0) == _core.Liveness.DEAD
    assert "no answer from s:1 for 1.00 s, not even to a ping" in live.silence("s:1", 11.0)


def test_any_bytes_received_or_a_request_after_idling_restart_the_silence() -> None:
    live = _core.Liveness(1.0, now=0.0)
    assert live.check(0.6) == _core.Liveness.PING
    live.received(0.9)  # the ping's answer, or any response
    assert live.check(1.2) is None
    assert live.check(1.45) == _core.Liveness.PING  # a new silence gets its own ping
    live.received(1.5)
    # Idle for a minute (no request waited, so nothing was checked), then a request:
    live.busy(61.5)
    assert live.check(61.9) is None
    assert live.next_check() == 62.0
    assert _core.Liveness(math.inf, now=0.0).next_check() == math.inf


# -- keepalive: the trio connection ---------------------------------------------------------


class SilentServer:
    """Reads requests and answers only what it is told to."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()

    async def receive_requests(self) -> list[Any]:
        data = await self.stream.receive_some(1 << 20)
        return [unpack(body) for body in self.decoder.feed(data)]

    async def answer(self, request: list[Any], body: dict[str, Any]) -> None:
        await self.stream.send_all(encode_frames([pack([request[0], "ok", body])]))


@asynccontextmanager
async def _connection(keepalive: float) -> AsyncIterator[tuple[Connection, SilentServer, trio.Nursery]]:
    client_end, server_end = trio.testing.lockstep_stream_pair()
    conn = Connection("s:1", client_end, node_id=1, max_frame_size=1 << 20, keepalive_timeout=keepalive)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.run)
        yield conn, SilentServer(server_end), nursery
        conn.close()


async def test_a_silent_server_is_pinged_then_given_up(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(DEADLINE):
        async with _connection(keepalive=1.0) as (conn, server, nursery):
            failures: list[ConnectionLost] = []

            async def call() -> None:
                with pytest.raises(ConnectionLost) as info:
                    await conn.request("put", {"key": b"k", "value": b"v"}, deadline=trio.current_time() + 30)
                failures.append(info.value)

            start = trio.current_time()
            nursery.start_soon(call)
            [put] = await server.receive_requests()
            assert put[1] == "put"
            [ping] = await server.receive_requests()  # the server stays silent: a ping
            assert ping[1] == "leader" and trio.current_time() - start == pytest.approx(0.5)
            while not failures:
                await trio.sleep(0.1)  # mock time; bounded by fail_after
            assert trio.current_time() - start == pytest.approx(1.0, abs=0.11)
            assert failures[0].sent is True  # a write's outcome is unknown
            assert "no answer from s:1 for 1.00 s, not even to a ping" in failures[0].reason
            assert conn.closed


async def test_a_server_that_answers_pings_is_waited_for(autojump_clock: trio.testing.MockClock) -> None:
    """A slow answer (a write waiting for a quorum) is not silence: the
    server answers each ping, and the request gets its answer at 5 s."""
    with trio.fail_after(DEADLINE):
        async with _connection(keepalive=1.0) as (conn, server, nursery):
            results: list[dict[str, Any]] = []

            async def call() -> None:
                results.append(await conn.request("put", {"key": b"k", "value": b"v"},
                                                  deadline=trio.current_time() + 30))

            start = trio.current_time()
            nursery.start_soon(call)
            [put] = await server.receive_requests()
            pings = 0
            while trio.current_time() - start < 5:  # bounded: mock time advances with every ping
                [ping] = await server.receive_requests()
                assert ping[1] == "leader"
                pings += 1
                await server.answer(ping, {"leader_id": 1, "term": 3})
            await server.answer(put, {"revision": 7})
            await trio.testing.wait_all_tasks_blocked()
            assert results == [{"revision": 7}]
            assert pings >= 9 and not conn.closed


async def test_an_idle_connection_is_never_closed_for_silence(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(DEADLINE):
        async with _connection(keepalive=1.0) as (conn, server, nursery):
            await trio.sleep(30)  # nothing waits: nothing to check, no ping sent
            assert not conn.closed
            results: list[dict[str, Any]] = []

            async def call() -> None:
                results.append(await conn.request("get", {"key": b"k"}, deadline=trio.current_time() + 30))

            nursery.start_soon(call)
            [get] = await server.receive_requests()
            assert get[1] == "get"  # no stale ping queued ahead of it
            await server.answer(get, {"value": b"v", "revision": 1})
            await trio.testing.wait_all_tasks_blocked()
            assert results == [{"value": b"v", "revision": 1}]


def test_a_lost_write_names_why_the_connection_was_lost() -> None:
    att = _core.Attempts(_core.calls.put(b"k", b"v", ttl=None, timeout=None), _core.Router(["a:1"]), limit=5.0,
                         now=0.0, rng=random.Random(1))
    att.sending()
    with pytest.raises(Unavailable, match=r"was lost after the write was sent \(no answer from a:1"):
        att.failed("a:1", _core.ConnectionLost("a:1", sent=True, reason="no answer from a:1 for 0.30 s"))


# -- after a silent or unreachable server -------------------------------------------------------


def test_an_endpoint_that_failed_is_tried_last_until_it_welcomes_again() -> None:
    router = _core.Router(["a:1", "b:2", "c:3"])
    router.dropped("a:1")  # its connection went silent, or connecting failed
    assert [router.rotate() for _ in range(4)] == ["b:2", "c:3", "b:2", "c:3"]
    router.dropped("b:2")
    assert {router.rotate() for _ in range(3)} == {"c:3"}
    router.dropped("c:3")  # all failed: every one is tried again in turn
    assert {router.rotate() for _ in range(3)} == {"a:1", "b:2", "c:3"}
    router.welcomed("a:1", 1)
    assert {router.rotate() for _ in range(3)} == {"a:1"}
    assert router.rotate(avoid="a:1") in ("b:2", "c:3")  # avoided: the others, unreachable or not


def test_a_handshake_is_given_as_long_as_silence_is_tolerated_but_at_least_half_a_second() -> None:
    assert _core.connect_timeout(100.0, 0.0) == _core.CONNECT_TIMEOUT  # nothing known
    assert _core.connect_timeout(100.0, 0.0, silence=2.0) == 2.0
    assert _core.connect_timeout(100.0, 0.0, silence=0.3) == _core.HANDSHAKE_MIN
    assert _core.connect_timeout(0.2, 0.0, silence=2.0) == 0.2  # the call's deadline first
    router = _core.Router(["a:1"])
    assert router.silence(None) == math.inf
    router.welcomed("a:1", 1, _core.ServerInfo(election_timeout=1.5))
    assert router.silence(None) == 1.5 and router.silence(4.0) == 4.0

"""The client connection's batching, over an in-memory lockstep stream; and
the sans-IO protocol core both clients share (dengine.client._core):
framing and handshake checked against the transport's own encoders, what a
server that does not speak the protocol looked like, response matching,
endpoints, the retry rules, the diagnosis of a call that found no leader,
and watch resume.

Rules: every trio test under an absolute fail_after; no sockets, no sleeps:
the "server" side is the other end of ``trio.testing.lockstep_stream_pair``,
whose ``send_all`` returns only once the peer has received everything, so
which frames were written is exact. The core is driven by hand: bytes,
times and outcomes in, decisions out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from dengine.client._connection import Connection, ConnectionLost, Expired
from dengine.codec import pack, unpack
from dengine.transport.framing import FrameDecoder, encode_frames

DEADLINE = 10


class FakeServer:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()

    async def receive_requests(self) -> list[Any]:
        """The requests of ONE receive."""
        data = await self.stream.receive_some(1 << 20)
        return [unpack(body) for body in self.decoder.feed(data)]

    async def reply(self, requests: list[Any]) -> None:
        await self.stream.send_all(encode_frames([pack([r[0], "ok", {"n": r[2]["n"]}]) for r in requests]))


@asynccontextmanager
async def _connection() -> AsyncIterator[tuple[Connection, FakeServer, trio.Nursery]]:
    client_end, server_end = trio.testing.lockstep_stream_pair()
    conn = Connection("test:1", client_end, node_id=1, max_frame_size=1 << 20)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.run)
        yield conn, FakeServer(server_end), nursery
        conn.close()


async def test_concurrent_requests_go_out_in_one_write_and_each_gets_its_answer() -> None:
    with trio.fail_after(DEADLINE):
        async with _connection() as (conn, server, nursery):
            results: dict[int, Any] = {}

            async def call(n: int) -> None:
                results[n] = (await conn.request("get", {"n": n}))["n"]

            for n in range(50):
                nursery.start_soon(call, n)
            requests = await server.receive_requests()
            assert sorted(r[2]["n"] for r in requests) == list(range(50))  # one send_all
            await server.reply(list(reversed(requests)))  # any order
            await trio.testing.wait_all_tasks_blocked()
            assert results == {n: n for n in range(50)}


async def test_a_caller_that_gives_up_before_its_frame_is_written_is_never_sent() -> None:
    with trio.fail_after(DEADLINE):
        async with _connection() as (conn, server, nursery):
            first = trio.Event()

            async def call(n: int, scope: trio.CancelScope | None = None) -> None:
                if scope is None:
                    await conn.request("get", {"n": n})
                    first.set()
                    return
                with scope:
                    await conn.request("get", {"n": n})

            nursery.start_soon(call, 1)
            await trio.testing.wait_all_tasks_blocked()  # the writer is blocked writing request 1
            given_up = trio.CancelScope()
            nursery.start_soon(call, 2, given_up)
            await trio.testing.wait_all_tasks_blocked()
            given_up.cancel()  # its frame is still queued
            await trio.testing.wait_all_tasks_blocked()
            requests = await server.receive_requests()
            assert [r[2]["n"] for r in requests] == [1]
            await server.reply(requests)
            await first.wait()
            nursery.start_soon(call, 3)
            requests = await server.receive_requests()
            assert [r[2]["n"] for r in requests] == [3]  # 2 was never written
            await server.reply(requests)


async def test_connection_lost_says_which_requests_may_have_been_sent() -> None:
    with trio.fail_after(DEADLINE):
        async with _connection() as (conn, server, nursery):
            outcomes: dict[int, bool] = {}

            async def call(n: int) -> None:
                with pytest.raises(ConnectionLost) as info:
                    await conn.request("put", {"n": n})
                outcomes[n] = info.value.sent

            nursery.start_soon(call, 1)
            assert [r[2]["n"] for r in await server.receive_requests()] == [1]  # written in full
            nursery.start_soon(call, 2)
            await trio.testing.wait_all_tasks_blocked()  # 2: being written, the server reads nothing
            nursery.start_soon(call, 3)
            await trio.testing.wait_all_tasks_blocked()  # 3: queued behind it
            await server.stream.aclose()
            await trio.testing.wait_all_tasks_blocked()
            assert outcomes == {1: True, 2: False, 3: False}
            assert conn.closed
            with pytest.raises(ConnectionLost) as info:
                await conn.request("get", {"n": 4})
            assert info.value.sent is False


async def test_closing_a_stream_queues_its_cancel() -> None:
    with trio.fail_after(DEADLINE):
        async with _connection() as (conn, server, nursery):
            stream = await conn.open_stream("watch", {"n": 0}, limit=4)
            [request] = await server.receive_requests()
            assert request[1] == "watch" and request[0] == stream.request_id
            await stream.aclose()
            [cancel] = await server.receive_requests()
            assert cancel[1] == "cancel" and cancel[2] == {"request_id": stream.request_id}


async def test_deadlines_expire_without_a_scope_per_call(autojump_clock: trio.testing.MockClock) -> None:
    """The connection's timer wakes a caller whose deadline passed: one still
    queued is never written (sent=False), one written may have been (sent=True)."""
    with trio.fail_after(DEADLINE):
        async with _connection() as (conn, server, nursery):
            outcomes: dict[int, bool] = {}

            async def call(n: int, after: float) -> None:
                with pytest.raises(Expired) as info:
                    await conn.request("put", {"n": n}, deadline=trio.current_time() + after)
                outcomes[n] = info.value.sent

            nursery.start_soon(call, 1, 2.0)
            await trio.testing.wait_all_tasks_blocked()  # 1 is being written: the server reads nothing yet
            nursery.start_soon(call, 2, 1.0)
            await trio.sleep(1.5)  # the mock clock jumps: 2 expires while queued
            assert outcomes == {2: False}
            assert [r[2]["n"] for r in await server.receive_requests()] == [1]
            await trio.sleep(1.0)  # 1 expires, written, unanswered
            assert outcomes == {2: False, 1: True}
            assert not conn._pending
            result = await _answered(conn, server, nursery)
            assert result == 3  # the connection still works


async def _answered(conn: Connection, server: FakeServer, nursery: trio.Nursery) -> Any:
    results: list[Any] = []

    async def call() -> None:
        results.append((await conn.request("get", {"n": 3}, deadline=trio.current_time() + 5))["n"])

    nursery.start_soon(call)
    requests = await server.receive_requests()
    assert [r[2]["n"] for r in requests] == [3]  # 2 was never written
    await server.reply(requests)
    await trio.testing.wait_all_tasks_blocked()
    return results[0]


# -- the sans-IO core ------------------------------------------------------------------

import random  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import dengine.config  # noqa: E402
from dengine.api import Member, Status, WatchEventType  # noqa: E402
from dengine.client import _core  # noqa: E402
from dengine.errors import (  # noqa: E402
    InvalidArgument,
    NotLeader,
    ProposalDropped,
    ProtocolError,
    ResourceExhausted,
    Timeout,
    Unavailable,
    WrongCluster,
)
from dengine.transport import framing, handshake  # noqa: E402
from dengine.transport.client_protocol import encode_error, encode_response  # noqa: E402


def test_the_core_speaks_exactly_what_the_transport_speaks() -> None:
    assert _core.MAX_FRAME_SIZE == framing.DEFAULT_MAX_FRAME_SIZE
    assert _core.HANDSHAKE_MAX_FRAME_SIZE == handshake.HANDSHAKE_MAX_FRAME_SIZE
    assert _core.PROTOCOL_VERSION == handshake.PROTOCOL_VERSION
    assert _core.DEFAULT_CLUSTER_ID == dengine.config.DEFAULT_CLUSTER_ID
    assert _core.DEFAULT_ENDPOINT == dengine.config.DEFAULT_CLIENT_ADDRESS
    state = _core.ConnectionState("s:1", cluster_id="c1")
    hello = handshake.Hello(protocol_version=1, cluster_id="c1", node_id=None, kind="client")
    assert state.hello() == framing.encode_frame(handshake.encode_hello(hello))
    assert handshake.decode_hello(state.hello()[4:]) == hello


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8), st.lists(st.integers(1, 64), min_size=1, max_size=20))
def test_frames_cut_like_the_transport_decoder(bodies: list[bytes], cuts: list[int]) -> None:
    """Any split of a byte stream of responses gives the transport decoder's frames."""
    payloads = [encode_response(i + 1, "ok", {"b": b}) for i, b in enumerate(bodies)]
    data = framing.encode_frames(payloads)
    state = _core.ConnectionState("s:1", cluster_id="c")
    for i in range(len(bodies)):
        state.request("get", {"key": b"k"})
    oracle = framing.FrameDecoder()
    got, want, pos, k = [], [], 0, 0
    while pos < len(data):
        chunk = data[pos:pos + cuts[k % len(cuts)]]
        pos, k = pos + len(chunk), k + 1
        got += [r.body["b"] for _, r in state.receive(chunk)]
        want += [unpack(b)[2]["b"] for b in oracle.feed(chunk)]
    assert got == want == bodies


def test_the_welcome_split_anywhere_and_a_response_pipelined_behind_it() -> None:
    welcome = framing.encode_frame(handshake.encode_reply(handshake.Welcome(7)))
    behind = framing.encode_frame(encode_response(1, "ok", {"n": 1}))
    for cut in range(1, len(welcome) + len(behind)):
        state = _core.ConnectionState("s:1", cluster_id="c")
        data = welcome + behind
        first = state.receive_handshake(data[:cut])
        node = first if first is not None else state.receive_handshake(data[cut:])
        assert node == 7 and state.node_id == 7
        rid, _ = state.request("get", {"key": b"k"})
        rest = b"" if first is None else data[cut:]
        assert [r.body for _, r in state.receive(rest)] == [{"n": 1}], cut


def test_a_welcome_with_more_fields_is_a_welcome() -> None:
    state = _core.ConnectionState("s:1", cluster_id="c")
    assert state.receive_handshake(framing.encode_frame(pack(["welcome", 4, "127.0.0.1:9084"]))) == 4


def test_a_refusal_is_its_dengine_error() -> None:
    state = _core.ConnectionState("s:1", cluster_id="c")
    refusal = handshake.Refused(4004, "cluster id 'c' does not match this node's cluster id 'd'")
    with pytest.raises(WrongCluster, match="the server at s:1 refused the handshake: cluster id 'c'"):
        state.receive_handshake(framing.encode_frame(handshake.encode_reply(refusal)))


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", "it answered like an HTTP server"),
        (b"SSH-2.0-OpenSSH_9.6\r\n", "it answered like an SSH server"),
        (b"\x15\x03\x03\x00\x02\x02\x46", "it answered with TLS"),
        (b"\xff\xff\xff\xff\x00", "its answer began with the bytes ff ff ff ff 00"),
        (framing.encode_frame(pack(["hi"])), "its first answer was ['hi'], not a welcome"),
    ],
)
def test_a_server_that_does_not_speak_the_protocol_is_named_for_what_it_looked_like(answer: bytes, said: str) -> None:
    state = _core.ConnectionState("127.0.0.1:9300", cluster_id="c")
    with pytest.raises(ProtocolError) as info:
        state.receive_handshake(answer)
    assert str(info.value).startswith("127.0.0.1:9300 does not speak the dengine protocol (")
    assert said in str(info.value)
    assert "IPv6" not in str(info.value)


def test_a_server_that_closes_or_stays_silent_during_the_handshake() -> None:
    state = _core.ConnectionState("h:1", cluster_id="c")
    assert "closed the connection without answering the handshake" in str(state.handshake_ended())
    assert state.receive_handshake(b"HT") is None  # not enough to judge yet
    assert "its answer began with the bytes 48 54, then closed the connection" in str(state.handshake_ended())
    assert "did not answer the handshake within 2 s" in str(state.handshake_timed_out(2.0))


def test_responses_are_matched_to_whoever_still_waits() -> None:
    state = _core.ConnectionState("s:1", cluster_id="c")
    a, _ = state.request("get", {"key": b"a"})
    b, _ = state.request("get", {"key": b"b"})
    buffer, _ = state.stream("watch", {"key": b"k"}, limit=2)
    state.forget(a)  # its caller gave up
    data = framing.encode_frames([
        encode_response(a, "ok", {"x": 1}),
        encode_response(buffer.request_id, "item", {"i": 1}),
        encode_response(b, "error", encode_error(NotLeader("not me", leader_id=2), leader_address="s:2")),
        encode_response(999, "ok", {}),  # nobody asked
    ])
    answers = state.receive(data)
    assert [rid for rid, _ in answers] == [b]
    with pytest.raises(NotLeader) as info:
        _core.result_of(answers[0][1])
    assert (info.value.leader_id, info.value.leader_address) == (2, "s:2")
    assert buffer.pop() == {"i": 1} and buffer.pop() is None
    # Two more unread items than the limit: the stream ends and its cancel is queued.
    state.receive(framing.encode_frames([encode_response(buffer.request_id, "item", {"i": i}) for i in range(3)]))
    [cancel] = state.outgoing()
    assert unpack(cancel[4:])[1:] == ["cancel", {"request_id": buffer.request_id}]
    assert buffer.pop() == {"i": 0} and buffer.pop() == {"i": 1}
    with pytest.raises(ResourceExhausted):
        buffer.pop()
    with pytest.raises(_core.ConnectionEnded, match="the server closed the connection: bye"):
        state.receive(framing.encode_frame(encode_response(None, "error", encode_error(Unavailable("bye")))))


def test_a_request_larger_than_a_frame_is_refused_naming_the_frame_limit() -> None:
    state = _core.ConnectionState("s:1", cluster_id="c", max_frame_size=1000)
    with pytest.raises(InvalidArgument) as info:
        state.request("put", {"key": b"k", "value": b"v" * 2000})
    assert "more than one frame may carry (1000 bytes" in str(info.value)
    # No value limit of the client's own: the server's answer names its limit.
    call = _core.calls.put(b"k", b"v" * (9 << 20), ttl=None, timeout=None)
    assert len(call.args["value"]) == 9 << 20


@pytest.mark.parametrize(
    ("text", "address", "tls"),
    [
        ("127.0.0.1:9081", "127.0.0.1:9081", None),
        ("http://127.0.0.1:9081", "127.0.0.1:9081", False),
        ("https://node1.example:9081/", "node1.example:9081", True),
        ("HTTP://[::1]:9081", "[::1]:9081", False),
    ],
)
def test_endpoints_accept_urls_like_etcdctl(text: str, address: str, tls: bool | None) -> None:
    ep = _core.parse_endpoint(text)
    assert (ep.address, ep.tls) == (address, tls)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("ftp://127.0.0.1:9081", "the scheme 'ftp://' is not one dengine speaks"),
        ("http://127.0.0.1:9081/v3/kv", "no path, user or query"),
        ("http://127.0.0.1", "no port was found"),
        ("127.0.0.1:0", "needs a real port, not 0"),
        ("localhost", "no port was found"),
    ],
)
def test_bad_endpoints_say_why_and_never_mention_ipv6(text: str, said: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        _core.parse_endpoints([text])
    assert said in str(info.value) and "IPv6" not in str(info.value)


def test_endpoints_do_not_mix_tls_and_plain() -> None:
    with pytest.raises(InvalidArgument, match="mix https"):
        _core.parse_endpoints("https://a:1,http://b:2")
    assert _core.wants_tls(_core.parse_endpoints("https://a:1,b:2"), False)
    with pytest.raises(InvalidArgument, match="TLS is configured"):
        _core.wants_tls(_core.parse_endpoints("http://a:1"), True)


def _attempts(op: str = "put", endpoints: tuple[str, ...] = ("a:1", "b:2", "c:3"), limit: float = 5.0
              ) -> _core.Attempts:
    if op == "put":
        call = _core.calls.put(b"k", b"v", ttl=None, timeout=None)
    else:
        call = _core.calls.get(b"k", consistency=None, timeout=None)
    return _core.Attempts(call, _core.Router(list(endpoints)), limit=limit, now=100.0, rng=random.Random(1))


def test_a_not_leader_hint_is_followed_at_once_and_a_bare_one_moves_on() -> None:
    att = _attempts()
    assert att.target() == "a:1"
    att.connected("a:1", 1)
    att.sending()
    assert att.failed("a:1", NotLeader("no", leader_id=3, leader_address="c:3")) is _core.Next.RETRY
    assert not att.unknown  # rejected before it entered the log
    assert att.target() == "c:3"
    att.sending()
    assert att.failed("c:3", NotLeader("no")) is _core.Next.BACKOFF
    assert att.target() == "b:2"  # the next endpoint, not the one that said no
    att.sending()
    assert att.answered("b:2", {"revision": 9}) == 9
    assert att.router.leader == "b:2"


def test_a_write_is_retried_only_when_it_surely_was_not_applied() -> None:
    att = _attempts()
    att.sending()
    assert att.failed("a:1", _core.ConnectionLost("a:1", sent=False)) is _core.Next.BACKOFF
    assert not att.unknown
    att.sending()
    assert att.failed("b:2", ProposalDropped("dropped")) is _core.Next.BACKOFF and not att.unknown
    att.sending()
    with pytest.raises(Unavailable, match="it may or may not have been applied"):
        att.failed("c:3", _core.ConnectionLost("c:3", sent=True))
    att = _attempts()
    att.sending()
    with pytest.raises(Timeout):
        att.failed("a:1", Timeout("the write did not complete"))
    att = _attempts()
    att.sending()
    assert att.failed("a:1", _core.Expired(sent=True)) is _core.Next.GIVE_UP
    assert "it may or may not have been applied" in str(att.timeout_error())


def test_reads_are_retried_and_the_timeout_names_the_last_error() -> None:
    att = _attempts("get", endpoints=("a:1",), limit=1.0)
    assert att.request_deadline == pytest.approx(100.9)  # a tenth kept to say why
    with pytest.raises(ProtocolError):
        att.connect_failed("a:1", ProtocolError("a:1 does not speak the dengine protocol"))
    att.connect_failed("a:1", ConnectionRefusedError(111, "Connection refused"))
    assert att.backoff(100.0) is not None and att.backoff(101.0) is None
    text = str(att.timeout_error(att.diagnosis()))
    assert text.startswith("get did not complete within 1 s: ")
    assert "last seen: a:1: connection refused" in text and "applied" not in text


def _status(node_id: int, role: str, leader: int | None) -> Status:
    members = tuple(Member(node_id=i, peer_address=f"p:{i}", client_address=f"c:{i}") for i in (1, 2, 3))
    return Status(node_id=node_id, role=role, term=7, leader_id=leader, commit_index=4, applied_index=4, last_snapshot_index=0,
                  members=members)


def test_a_call_that_found_no_leader_says_how_many_members_it_reached() -> None:
    att = _attempts("get", endpoints=("c:3",))
    att.connected("c:3", 3)
    att.sending()
    assert att.failed("c:3", Timeout("no leader could confirm the read")) is _core.Next.BACKOFF
    diag = att.diagnosis()
    assert diag is not None and diag.status_targets() == ["c:3"]
    diag.saw_status("c:3", _status(3, "pre-candidate", None))
    assert diag.probe_targets() == ["c:1", "c:2"]
    diag.saw_probe("c:1", ConnectionRefusedError(111, "Connection refused"))
    diag.saw_probe("c:2", TimeoutError())
    text = str(att.timeout_error(diag))
    assert "no leader: 1 of 3 members reachable" in text
    assert "node 3 at c:3 is pre-candidate in term 7 and knows no leader" in text
    assert "node 1 at c:1: connection refused" in text and "node 2 at c:2: no answer in time" in text
    assert "None" not in text


def test_a_diagnosis_is_only_for_calls_that_needed_a_leader_and_found_none() -> None:
    att = _attempts("get")
    att.router.leader = "a:1"
    assert att.diagnosis() is None
    call = _core.calls.get(b"k", consistency="eventual", timeout=None)
    assert _core.Attempts(call, _core.Router(["a:1"]), limit=1, now=0, rng=random.Random()).diagnosis() is None


def _item(rev: int, value: bytes, kind: WatchEventType = WatchEventType.PUT) -> dict[str, object]:
    return {"type": int(kind), "key": b"/k", "value": value, "prev_value": None, "revision": rev, "error": 0}


def test_a_watch_resumed_inside_a_shared_revision_delivers_the_rest_once() -> None:
    w = _core.WatchState(b"/k", prefix=False, prev_kv=False, start_revision=None)
    assert w.open_args()["start_revision"] is None
    w.opened({"created": True, "start_revision": 5})
    assert [e.value for e in (w.item(_item(5, b"a")), w.item(_item(5, b"b")))] == [b"a", b"b"]
    w.lost("s:1", _core.ConnectionLost("s:1", sent=True), auto_resume=True)
    assert w.open_args()["start_revision"] == 5 and w.resumes == 1
    w.opened({"created": True, "start_revision": 5})
    replayed = [w.item(_item(5, v)) for v in (b"a", b"b", b"c")] + [w.item(_item(6, b"d"))]
    assert [e and e.value for e in replayed] == [None, None, b"c", b"d"]
    progress = w.item(_item(9, b"", WatchEventType.PROGRESS))
    assert progress is not None and w.start == 10
    canceled = w.item({**_item(10, b"", WatchEventType.CANCELED), "error": 5001})
    assert canceled is not None and w.done


def test_a_watch_without_auto_resume_ends_saying_where_to_resume() -> None:
    w = _core.WatchState(b"/p/", prefix=True, prev_kv=False, start_revision=3)
    w.opened({"created": True, "start_revision": 3})
    w.item(_item(3, b"x"))
    with pytest.raises(Unavailable, match=r"resume with start_revision=3 \(its first 1 events were delivered\)"):
        w.lost("s:1", _core.ConnectionLost("s:1", sent=True, reason="reset"), auto_resume=False)
    with pytest.raises(InvalidArgument):
        _core.WatchState(b"/p", prefix=True, prev_kv=False, start_revision=None)

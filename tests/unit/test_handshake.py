"""dengine.transport.handshake: the sans-IO encode/decode/check pair, and the
trio helpers over in-memory streams.

Rules of this module: no sockets; every trio test under an absolute
``trio.fail_after``; timeouts on the autojump clock.
"""

from __future__ import annotations

import msgpack
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from dengine.errors import (
    ErrorCode,
    FrameTooLarge,
    MalformedMessage,
    NotLeader,
    ProtocolError,
    Timeout,
    WrongCluster,
    WrongProtocolVersion,
)
from dengine.transport.framing import FrameDecoder, encode_frame, receive_frame, send_frames
from dengine.transport.handshake import (
    HANDSHAKE_MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
    Hello,
    Refused,
    Welcome,
    accept_handshake,
    check_hello,
    connect_handshake,
    decode_hello,
    decode_reply,
    encode_hello,
    encode_reply,
    refusal_for,
)

TEST_TIMEOUT = 10


def peer_hello(node_id: int = 2, cluster_id: str = "c1", version: int = PROTOCOL_VERSION) -> Hello:
    return Hello(protocol_version=version, cluster_id=cluster_id, node_id=node_id, kind="peer")


# -- sans-IO --------------------------------------------------------------------


def test_hello_round_trips_and_has_the_documented_layout() -> None:
    hello = peer_hello()
    assert msgpack.unpackb(encode_hello(hello)) == ["hello", PROTOCOL_VERSION, "c1", 2, "peer"]
    assert decode_hello(encode_hello(hello)) == hello
    client = Hello(protocol_version=PROTOCOL_VERSION, cluster_id="c1", node_id=None, kind="client")
    assert decode_hello(encode_hello(client)) == client


def test_a_peer_may_announce_its_client_address_both_ways() -> None:
    hello = Hello(protocol_version=PROTOCOL_VERSION, cluster_id="c1", node_id=2, kind="peer",
                  client_address="127.0.0.1:9082")
    assert msgpack.unpackb(encode_hello(hello)) == ["hello", PROTOCOL_VERSION, "c1", 2, "peer", "127.0.0.1:9082"]
    assert decode_hello(encode_hello(hello)) == hello
    welcome = Welcome(3, "[::1]:9083")
    assert msgpack.unpackb(encode_reply(welcome)) == ["welcome", 3, "[::1]:9083"]
    assert decode_reply(encode_reply(welcome)) == welcome
    # Nil is allowed (a node that does not serve clients).
    assert decode_reply(msgpack.packb(["welcome", 3, None])) == Welcome(3)


def test_replies_round_trip() -> None:
    assert msgpack.unpackb(encode_reply(Welcome(3))) == ["welcome", 3]
    assert decode_reply(encode_reply(Welcome(3))) == Welcome(3)
    refused = Refused(ErrorCode.WRONG_CLUSTER, "no")
    assert msgpack.unpackb(encode_reply(refused)) == ["error", ErrorCode.WRONG_CLUSTER, "no"]
    assert decode_reply(encode_reply(refused)) == refused


def test_a_client_welcome_may_carry_an_info_map() -> None:
    info = {"max_value_size": 1024, "election_timeout_ms": 300, "future_key": [1]}
    body = encode_reply(Welcome(3, None, info))
    assert msgpack.unpackb(body) == ["welcome", 3, None, info]
    assert decode_reply(body) == Welcome(3, None, info)
    with_address = Welcome(3, "h:1", {"max_key_size": 8})
    assert decode_reply(encode_reply(with_address)) == with_address


def test_another_protocol_version_is_refused_before_the_rest_is_read() -> None:
    # A future version may lay the hello out differently: only the version counts.
    body = msgpack.packb(["hello", PROTOCOL_VERSION + 1, {"new": "layout"}])
    with pytest.raises(WrongProtocolVersion, match=f"version {PROTOCOL_VERSION + 1} is not supported"):
        decode_hello(body)


@pytest.mark.parametrize(
    "obj",
    [
        [],
        ["hello"],
        ["welcome", 1],
        ["hello", "1", "c", 1, "peer"],
        ["hello", PROTOCOL_VERSION, "c", 1],
        ["hello", PROTOCOL_VERSION, b"c", 1, "peer"],
        ["hello", PROTOCOL_VERSION, "c", -1, "peer"],
        ["hello", PROTOCOL_VERSION, "c", None, "peer"],
        ["hello", PROTOCOL_VERSION, "c", True, "peer"],
        ["hello", PROTOCOL_VERSION, "c", 1, "client"],
        ["hello", PROTOCOL_VERSION, "c", 1, "admin"],
        ["hello", PROTOCOL_VERSION, "c", 1, "peer", 9082],
        ["hello", PROTOCOL_VERSION, "c", 1, "peer", ""],
        ["hello", PROTOCOL_VERSION, "c", 1, "peer", "x" * 301],
        ["hello", PROTOCOL_VERSION, "c", 1, "peer", "a:1", "extra"],
        {"hello": 1},
        "hello",
    ],
)
def test_malformed_hellos(obj: object) -> None:
    with pytest.raises(MalformedMessage):
        decode_hello(msgpack.packb(obj))


@pytest.mark.parametrize(
    "obj",
    [["welcome"], ["welcome", -1], ["welcome", "1"], ["welcome", 1, 5], ["welcome", 1, "a:1", 2],
     ["welcome", 1, None, [1]], ["welcome", 1, None, {1: 2}], ["welcome", 1, None, {}, "extra"],
     ["error", "x", "y"], ["error", 1], ["ok"], 7],
)
def test_malformed_replies(obj: object) -> None:
    with pytest.raises(MalformedMessage):
        decode_reply(msgpack.packb(obj))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_is_only_ever_a_protocol_error(body: bytes) -> None:
    for decode in (decode_hello, decode_reply):
        try:
            decode(body)
        except ProtocolError:
            pass


def test_check_hello_accepts_a_known_peer_of_the_same_cluster() -> None:
    check_hello(peer_hello(), cluster_id="c1", node_id=1, kind="peer", known_peers={2, 3})
    check_hello(peer_hello(9), cluster_id="c1", node_id=1, kind="peer")  # no list: any peer


def test_check_hello_refuses_another_cluster() -> None:
    with pytest.raises(WrongCluster, match="cluster id 'other' does not match this node's cluster id 'c1'"):
        check_hello(peer_hello(cluster_id="other"), cluster_id="c1", node_id=1, kind="peer")


def test_check_hello_refuses_another_version() -> None:
    with pytest.raises(WrongProtocolVersion):
        check_hello(peer_hello(version=99), cluster_id="c1", node_id=1, kind="peer")


def test_check_hello_refuses_a_client_on_the_peer_port_and_back() -> None:
    client = Hello(protocol_version=PROTOCOL_VERSION, cluster_id="c1", node_id=None, kind="client")
    with pytest.raises(ProtocolError, match="peer port of node 1; clients must use the client port"):
        check_hello(client, cluster_id="c1", node_id=1, kind="peer")
    with pytest.raises(ProtocolError, match="client port of node 1; peers must use the peer port"):
        check_hello(peer_hello(), cluster_id="c1", node_id=1, kind="client")
    check_hello(client, cluster_id="c1", node_id=1, kind="client")


def test_check_hello_refuses_an_unknown_peer_and_itself() -> None:
    with pytest.raises(ProtocolError, match="node 7 is not a known peer of node 1"):
        check_hello(peer_hello(7), cluster_id="c1", node_id=1, kind="peer", known_peers={2, 3})
    with pytest.raises(ProtocolError, match="connected to itself"):
        check_hello(peer_hello(1), cluster_id="c1", node_id=1, kind="peer")


def test_a_refusal_becomes_the_error_it_names() -> None:
    exc = Refused(ErrorCode.WRONG_CLUSTER, "bad cluster").to_exception("node 2: ")
    assert type(exc) is WrongCluster and str(exc) == "node 2: bad cluster"
    assert type(Refused(ErrorCode.NOT_LEADER, "x").to_exception()) is NotLeader
    assert type(Refused(99999, "x").to_exception()).__name__ == "DengineError"
    assert refusal_for(WrongProtocolVersion("v")) == Refused(ErrorCode.WRONG_PROTOCOL_VERSION, "v")


# -- trio helpers -----------------------------------------------------------------


async def run_both(
    hello: Hello,
    *,
    server_cluster: str = "c1",
    server_id: int = 1,
    known: set[int] | None = None,
    expected: int | None = 1,
) -> tuple[object, object]:
    """Run both halves over an in-memory stream pair; return each side's
    result or exception."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    results: dict[str, object] = {}

    async def client() -> None:
        try:
            results["client"] = await connect_handshake(
                client_stream, FrameDecoder(), hello, expected_node_id=expected, timeout=5, peer="node 1"
            )
        except Exception as exc:
            results["client"] = exc

    async def server() -> None:
        try:
            results["server"] = await accept_handshake(
                server_stream, FrameDecoder(), cluster_id=server_cluster, node_id=server_id, kind="peer",
                known_peers=known, timeout=5,
            )
        except Exception as exc:
            results["server"] = exc
        await server_stream.aclose()  # a refusing server closes the connection

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client)
        nursery.start_soon(server)
    await client_stream.aclose()
    return results["client"], results["server"]


async def test_handshake_succeeds() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        client, server = await run_both(peer_hello(2), known={2, 3})
        assert client == Welcome(1)
        assert server == peer_hello(2)


async def test_handshake_wrong_cluster_fails_on_both_sides() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        client, server = await run_both(peer_hello(2, cluster_id="other"))
        assert isinstance(client, WrongCluster) and str(client).startswith("node 1 refused the handshake: ")
        assert isinstance(server, WrongCluster)


async def test_handshake_wrong_version_fails_on_both_sides() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        client, server = await run_both(peer_hello(2, version=PROTOCOL_VERSION + 1))
        assert isinstance(client, WrongProtocolVersion)
        assert isinstance(server, WrongProtocolVersion)


async def test_handshake_client_kind_on_peer_port_is_refused() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        hello = Hello(protocol_version=PROTOCOL_VERSION, cluster_id="c1", node_id=None, kind="client")
        client, server = await run_both(hello)
        assert isinstance(client, ProtocolError) and "clients must use the client port" in str(client)
        assert isinstance(server, ProtocolError)


async def test_handshake_unknown_peer_is_refused() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        client, server = await run_both(peer_hello(9), known={2, 3})
        assert isinstance(client, ProtocolError) and "node 9 is not a known peer" in str(client)
        assert isinstance(server, ProtocolError)


async def test_handshake_reaching_the_wrong_node_fails() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        client, server = await run_both(peer_hello(2), server_id=5, expected=1)
        assert isinstance(client, ProtocolError) and "is node 5, expected node 1" in str(client)
        assert server == peer_hello(2)


async def test_server_gives_up_on_a_silent_connection(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(TEST_TIMEOUT * 10):
        client_stream, server_stream = trio.testing.memory_stream_pair()
        start = trio.current_time()
        with pytest.raises(Timeout, match="within 3"):
            await accept_handshake(server_stream, FrameDecoder(), cluster_id="c1", node_id=1, kind="peer", timeout=3)
        assert trio.current_time() - start == pytest.approx(3)
        await client_stream.aclose()
        await server_stream.aclose()


async def test_client_gives_up_on_a_silent_server(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(TEST_TIMEOUT * 10):
        client_stream, server_stream = trio.testing.memory_stream_pair()
        with pytest.raises(Timeout, match="handshake with node 1 did not complete within 2"):
            await connect_handshake(client_stream, FrameDecoder(), peer_hello(), timeout=2, peer="node 1")
        await client_stream.aclose()
        await server_stream.aclose()


async def test_a_slow_trickle_is_bounded_by_the_whole_handshake_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(TEST_TIMEOUT * 10):
        client_stream, server_stream = trio.testing.memory_stream_pair()
        body = encode_frame(encode_hello(peer_hello()))

        async def trickle() -> None:
            for byte in body:  # one byte a second: each read is quick, the whole is not
                await client_stream.send_all(bytes([byte]))
                await trio.sleep(1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            with pytest.raises(Timeout):
                await accept_handshake(server_stream, FrameDecoder(), cluster_id="c1", node_id=1, kind="peer", timeout=5)
            nursery.cancel_scope.cancel()
        await client_stream.aclose()
        await server_stream.aclose()


async def test_an_oversized_first_frame_is_refused_under_the_handshake_limit() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        client_stream, server_stream = trio.testing.memory_stream_pair()
        decoder = FrameDecoder()  # 16 MiB for later frames, but not for the hello
        await client_stream.send_all((HANDSHAKE_MAX_FRAME_SIZE + 1).to_bytes(4, "big"))
        with pytest.raises(FrameTooLarge):
            await accept_handshake(server_stream, decoder, cluster_id="c1", node_id=1, kind="peer", timeout=5)
        reply = decode_reply(await receive_frame(client_stream, FrameDecoder()))
        assert isinstance(reply, Refused) and reply.code == ErrorCode.FRAME_TOO_LARGE
        await client_stream.aclose()
        await server_stream.aclose()


async def test_frames_pipelined_behind_the_hello_are_kept() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        client_stream, server_stream = trio.testing.memory_stream_pair()
        decoder = FrameDecoder()
        await send_frames(client_stream, [encode_hello(peer_hello()), b"next"])
        assert await accept_handshake(server_stream, decoder, cluster_id="c1", node_id=1, kind="peer") == peer_hello()
        assert await receive_frame(server_stream, decoder) == b"next"
        assert decoder.max_frame_size == FrameDecoder().max_frame_size  # restored after the hello
        await client_stream.aclose()
        await server_stream.aclose()

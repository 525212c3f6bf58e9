"""The TCP peer transport on loopback.

Rules of this module: 127.0.0.1 and port 0 only; every test under an
absolute ``trio.fail_after``; synchronisation through the inbound channel,
``wait_statistics`` and end-of-file on our own sockets -- the one retry loop
(a restarted peer, with a reconnect backoff in between) is bounded and is
what Raft itself does: send again. Every socket is closed.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio

from dengine.codec import SnapshotPart, decode_wire, encode, encode_message
from dengine.errors import InvalidArgument, WrongCluster
from dengine.raft.messages import (
    AppendEntries,
    ConfState,
    Entry,
    EntryType,
    Heartbeat,
    InstallSnapshot,
    Message,
    Snapshot,
    SnapshotMeta,
)
from dengine.transport.base import Transport, TransportStatistics
from dengine.transport.framing import FrameDecoder, encode_frame, receive_frame, send_frames
from dengine.transport.handshake import PROTOCOL_VERSION, Hello, connect_handshake, encode_hello
from dengine.transport.peer import PeerTransport, open_peer_transport, parse_address
from dengine.transport.snapshots import SnapshotJoiner, part_capacity

TEST_TIMEOUT = 15
CLUSTER = "test-cluster"
FAST = {"backoff_min": 0.01, "backoff_max": 0.05, "handshake_timeout": 5.0, "connect_timeout": 5.0}


def hb(frm: int, to: int, n: int = 0) -> Heartbeat:
    return Heartbeat(frm=frm, to=to, term=1, commit=n)


async def receive_n(transport: Transport, n: int) -> list[Message]:
    return [await transport.inbound.receive() for _ in range(n)]


@asynccontextmanager
async def mesh(n: int, **kwargs: Any) -> AsyncIterator[list[PeerTransport]]:
    """``n`` transports (ids 1..n) on port 0, each a peer of all the others."""
    cluster_id = kwargs.pop("cluster_id", CLUSTER)
    async with AsyncExitStack() as stack:
        transports = [
            await stack.enter_async_context(
                open_peer_transport(i, "127.0.0.1:0", {}, cluster_id, **{**FAST, **kwargs})
            )
            for i in range(1, n + 1)
        ]
        addresses = {t.node_id: t.listen_address for t in transports}
        for t in transports:
            t.update_peers(addresses)  # its own id is ignored
        yield transports


async def open_raw(address: str) -> trio.SocketStream:
    host, port = parse_address(address)
    return await trio.open_tcp_stream(host, port)


async def read_until_eof(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


# -- the happy path -------------------------------------------------------------


async def test_three_transports_exchange_messages_both_ways() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with mesh(3) as ts:
            assert all(isinstance(t, Transport) for t in ts)
            for t in ts:
                t.send([hb(t.node_id, other.node_id, i) for other in ts if other is not t for i in range(50)])
            for t in ts:
                got = await receive_n(t, 100)
                assert all(m.to == t.node_id for m in got)
                for other in ts:
                    if other is not t:
                        # per-peer order is kept
                        assert [m.commit for m in got if m.frm == other.node_id] == list(range(50))  # type: ignore[union-attr]
                with pytest.raises(trio.WouldBlock):
                    t.inbound.receive_nowait()
            for t in ts:
                stats = await t.wait_statistics(lambda s: s.frames_sent == 100)
                assert stats.connects == 2 and stats.inbound_connections == 2
                assert stats.frames_received == 100 and stats.dropped == 0 and stats.queued == 0


async def test_a_batch_goes_out_in_one_write() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with mesh(2) as (t1, t2):
            t1.send([hb(1, 2, i) for i in range(1000)])
            assert [m.commit for m in await receive_n(t2, 1000)] == list(range(1000))  # type: ignore[union-attr]
            stats = t1.statistics()
            assert stats.frames_sent == 1000 and stats.batches_sent == 1 and stats.connects == 1
            assert stats.bytes_sent == t2.statistics().bytes_received > 1000


async def test_listen_port_zero_exposes_the_bound_address() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with open_peer_transport(1, "127.0.0.1:0", {}, CLUSTER) as t:
            host, port = parse_address(t.listen_address)
            assert host == "127.0.0.1" and port > 0
            # bound before we got here: a plain connect works at once
            stream = await open_raw(t.listen_address)
            await stream.aclose()


async def test_receive_iterates_and_ends_when_the_transport_closes() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        got: list[Message] = []
        async with mesh(2) as (t1, t2):
            t1.send([hb(1, 2, i) for i in range(3)])
            async for msg in t2.receive():
                got.append(msg)
                if len(got) == 3:
                    break
            inbound = t2.inbound
        assert [m.commit for m in got] == [0, 1, 2]  # type: ignore[union-attr]
        assert [m async for m in inbound] == []  # the channel ended


# -- peers come and go ----------------------------------------------------------


async def test_a_restarted_peer_is_reconnected() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with open_peer_transport(1, "127.0.0.1:0", {}, CLUSTER, **FAST) as t1:
            async with open_peer_transport(2, "127.0.0.1:0", {1: t1.listen_address}, CLUSTER, **FAST) as t2:
                address2 = t2.listen_address
                t1.update_peers({2: address2})
                t1.send([hb(1, 2, 1)])
                assert (await t2.inbound.receive()) == hb(1, 2, 1)

            # t2 closed its end: t1's sender notices at once (it reads its
            # outbound connection for end-of-file), not on a later write.
            await t1.wait_statistics(lambda s: s.disconnects == 1)

            # Restart on the same address: the next send connects afresh.
            async with open_peer_transport(2, address2, {1: t1.listen_address}, CLUSTER, **FAST) as t2:
                t1.send([hb(1, 2, 2)])
                assert (await t2.inbound.receive()) == hb(1, 2, 2)
                assert t1.statistics().connects == 2

            # Down: sending fails to connect and drops; then the peer comes
            # back while t1 may be in backoff, and Raft-style resending wins.
            await t1.wait_statistics(lambda s: s.disconnects == 2)
            t1.send([hb(1, 2, 3)])
            stats = await t1.wait_statistics(lambda s: s.connect_failures >= 1)
            assert stats.dropped_unreachable >= 1
            async with open_peer_transport(2, address2, {1: t1.listen_address}, CLUSTER, **FAST) as t2:
                received = None
                for attempt in range(200):
                    t1.send([hb(1, 2, 100 + attempt)])
                    with trio.move_on_after(0.1):
                        received = await t2.inbound.receive()
                        break
                assert received is not None and received.commit >= 100  # type: ignore[union-attr]
                assert t1.statistics().connects == 3


async def test_a_peer_that_connects_to_us_ends_our_backoff_towards_it() -> None:
    slow = {**FAST, "backoff_min": 30.0, "backoff_max": 60.0}  # a backoff far past the test's deadline
    with trio.fail_after(TEST_TIMEOUT):
        async with open_peer_transport(1, "127.0.0.1:0", {}, CLUSTER, **slow) as t1:
            async with open_peer_transport(2, "127.0.0.1:0", {}, CLUSTER, **FAST) as t2:
                address2 = t2.listen_address
            t1.update_peers({2: address2})
            t1.send([hb(1, 2, 1)])
            await t1.wait_statistics(lambda s: s.connect_failures == 1)  # down: t1 backs off for 15-30 s
            async with open_peer_transport(2, address2, {1: t1.listen_address}, CLUSTER, **FAST) as t2:
                t2.send([hb(2, 1, 1)])  # t2 dials t1: it is up
                assert (await t1.inbound.receive()) == hb(2, 1, 1)
                t1.send([hb(1, 2, 2)])  # not dropped in a backoff: t1 dials t2 at once
                assert (await t2.inbound.receive()) == hb(1, 2, 2)
                assert t1.statistics().connects == 1


async def test_messages_to_a_stopped_peer_are_dropped_without_blocking() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with open_peer_transport(2, "127.0.0.1:0", {}, CLUSTER) as gone:
            dead_address = gone.listen_address  # nothing listens here any more
        async with open_peer_transport(1, "127.0.0.1:0", {2: dead_address}, CLUSTER, queue_size=100, **FAST) as t1:
            t1.send([hb(1, 2, i) for i in range(10_000)])  # synchronous: it cannot block
            stats = t1.statistics()
            assert stats.dropped_queue_full == 9_900 and stats.queued == 100
            stats = await t1.wait_statistics(lambda s: s.dropped == 10_000)
            assert stats.queued == 0 and stats.connect_failures >= 1 and stats.frames_sent == 0
            # and again, while it is in backoff
            t1.send([hb(1, 2, i) for i in range(10)])
            await t1.wait_statistics(lambda s: s.dropped == 10_010)


async def test_messages_to_unknown_peers_are_dropped_and_counted() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with mesh(2) as (t1, t2):
            t1.send([hb(1, 99), hb(1, 1), hb(1, 2, 7)])
            assert t1.statistics().dropped_unknown_peer == 2
            assert (await t2.inbound.receive()) == hb(1, 2, 7)


async def test_update_peers_adds_and_removes() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with mesh(2) as (t1, t2), open_peer_transport(3, "127.0.0.1:0", {}, CLUSTER, **FAST) as t3:
            t1.send([hb(1, 3)])
            assert t1.statistics().dropped_unknown_peer == 1

            t1.update_peers({2: t2.listen_address, 3: t3.listen_address})
            t3.update_peers({1: t1.listen_address})
            assert t1.peers == {2: t2.listen_address, 3: t3.listen_address}
            t1.send([hb(1, 3, 1)])
            assert (await t3.inbound.receive()) == hb(1, 3, 1)

            t2.send([hb(2, 1, 1)])
            assert (await t1.inbound.receive()) == hb(2, 1, 1)
            # Removing node 2 closes its inbound connection to us ...
            t1.update_peers({3: t3.listen_address})
            await t2.wait_statistics(lambda s: s.disconnects == 1)
            # ... and refuses it from now on.
            t2.send([hb(2, 1, 2)])
            await t2.wait_statistics(lambda s: s.connect_failures == 1)
            await t1.wait_statistics(lambda s: s.inbound_rejected == 1)
            t1.send([hb(1, 2)])
            assert t1.statistics().dropped_unknown_peer == 2
            with pytest.raises(trio.WouldBlock):
                t1.inbound.receive_nowait()


async def test_update_peers_with_a_new_address_reconnects_there() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with open_peer_transport(2, "127.0.0.1:0", {}, CLUSTER) as gone:
            dead_address = gone.listen_address
        async with mesh(2) as (t1, t2):
            t1.update_peers({2: dead_address})
            t1.send([hb(1, 2, 1)])
            await t1.wait_statistics(lambda s: s.connect_failures == 1)
            t1.update_peers({2: t2.listen_address})  # a fresh sender: no backoff carried over
            t1.send([hb(1, 2, 2)])
            assert (await t2.inbound.receive()) == hb(1, 2, 2)


async def test_a_message_over_the_frame_limit_is_dropped_not_sent() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with mesh(2, max_frame_size=100) as (t1, t2):
            append = AppendEntries(frm=1, to=2, term=1, prev_index=0, prev_term=0,
                                   entries=(Entry(1, 1, EntryType.NORMAL, b"x" * 100),), commit=0)
            many = ConfState(frozenset(range(1, 100)))  # its part header alone is over 100 bytes
            snap = Snapshot(SnapshotMeta(5, 1, many), b"x" * 10)
            t1.send([append, InstallSnapshot(frm=1, to=2, term=1, snapshot=snap), hb(1, 2, 1)])
            assert (await t2.inbound.receive()) == hb(1, 2, 1)
            stats = t1.statistics()
            assert stats.dropped_too_large == 2 and stats.frames_sent == 1
            assert t2.statistics().protocol_errors == 0


async def test_a_snapshot_larger_than_a_frame_arrives_whole_in_parts() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with mesh(2, max_frame_size=4096) as (t1, t2):
            data = bytes(range(256)) * 400  # 100 KiB: 26 parts of about 4 KiB
            msg = InstallSnapshot(frm=1, to=2, term=1, snapshot=Snapshot(SnapshotMeta(5, 1, ConfState({1, 2})), data))
            t1.send([msg, hb(1, 2, 1)])
            assert (await t2.inbound.receive()) == hb(1, 2, 1)  # queued with it: written before the parts
            assert (await t2.inbound.receive()) == msg
            stats = await t1.wait_statistics(lambda s: s.frames_sent >= 27)
            assert stats.frames_sent == 1 + -(-len(data) // part_capacity(msg, 4096))
            assert stats.dropped_too_large == 0
            assert t2.statistics().protocol_errors == 0


@asynccontextmanager
async def lockstep_pump(**kwargs: Any) -> AsyncIterator[tuple[PeerTransport, Any, trio.abc.Stream, FrameDecoder]]:
    """Node 1's sender pumping to node 2 over a lockstep stream: each write
    waits until the test reads it, so what goes between parts is exact."""
    async with open_peer_transport(1, "127.0.0.1:0", {}, CLUSTER, **{**FAST, **kwargs}) as t1:
        t1.update_peers({2: "127.0.0.1:1"})
        peer = t1._peers[2]
        peer.scope.cancel()  # its own sender would try to connect; this test pumps instead
        ours, theirs = trio.testing.lockstep_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(t1._pump, peer, ours, [])
            yield t1, peer, theirs, FrameDecoder()
            nursery.cancel_scope.cancel()


async def next_frame(stream: trio.abc.Stream, decoder: FrameDecoder) -> Any:
    return decode_wire(await receive_frame(stream, decoder))


async def test_messages_queued_during_a_snapshot_go_between_its_parts() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with lockstep_pump(max_frame_size=1024) as (t1, _peer, stream, decoder):
            msg = InstallSnapshot(frm=1, to=2, term=1,
                                  snapshot=Snapshot(SnapshotMeta(5, 1, ConfState({1, 2})), b"s" * 20_000))
            count = -(-20_000 // part_capacity(msg, 1024))
            t1.send([msg])
            frames = [await next_frame(stream, decoder)]
            t1.send([hb(1, 2, 7)])
            while len(frames) < count + 1:
                frames.append(await next_frame(stream, decoder))
            # The heartbeat goes right after the part being written when it came, not after the snapshot.
            assert frames.index(hb(1, 2, 7)) in (1, 2)
            parts = [f for f in frames if type(f) is SnapshotPart]
            assert len(parts) == count
            joiner = SnapshotJoiner(1)
            assert [m for m in map(joiner.feed, parts) if m is not None] == [msg]


async def test_the_same_snapshot_asked_again_goes_on_and_a_newer_one_replaces_it() -> None:
    def install(index: int) -> InstallSnapshot:
        meta = SnapshotMeta(index, 1, ConfState({1, 2}))
        return InstallSnapshot(frm=1, to=2, term=1, snapshot=Snapshot(meta, bytes([index]) * 10_000))

    with trio.fail_after(TEST_TIMEOUT):
        async with lockstep_pump(max_frame_size=1024) as (t1, peer, stream, decoder):
            t1.send([install(5)])
            got = [await next_frame(stream, decoder)]
            t1.send([install(5)])  # the leader asks again: the stream goes on
            got.append(await next_frame(stream, decoder))
            got.append(await next_frame(stream, decoder))
            step = len(got[0].data)
            assert [(p.meta.index, p.offset) for p in got] == [(5, 0), (5, step), (5, 2 * step)]
            t1.send([install(9)])  # a newer snapshot: the old one is given up
            joiner = SnapshotJoiner(2)
            joined = [m for m in map(joiner.feed, got) if m is not None]
            for _ in range(100):  # bounded: the newer snapshot is 10 parts, after at most one more of the old
                if joined:
                    break
                joined = [m for m in [joiner.feed(await next_frame(stream, decoder))] if m is not None]
            assert joined == [install(9)]


# -- hostile and mistaken connections ----------------------------------------------


def peer_hello(node_id: int, cluster_id: str = CLUSTER) -> Hello:
    return Hello(protocol_version=PROTOCOL_VERSION, cluster_id=cluster_id, node_id=node_id, kind="peer")


ROGUE_PAYLOADS = {
    "not msgpack": encode_frame(b"\xc1\xc1\xc1"),
    "msgpack but not a message": encode_frame(msgpack.packb([1, 999, 1, 2])),
    "oversized frame": (16 * 1024 * 1024 + 1).to_bytes(4, "big"),
    "message claiming another sender": encode_frame(encode_message(hb(3, 1))),
    "message for another node": encode_frame(encode_message(hb(2, 3))),
    "snapshot over the size limit": encode_frame(encode(SnapshotPart(
        frm=2, to=1, term=1, meta=SnapshotMeta(5, 1, ConfState({1, 2})), size=2**40, offset=0, data=b"x"))),
    "snapshot part without its start": encode_frame(encode(SnapshotPart(
        frm=2, to=1, term=1, meta=SnapshotMeta(5, 1, ConfState({1, 2})), size=10, offset=5, data=b"x"))),
}


@pytest.mark.parametrize("payload", list(ROGUE_PAYLOADS.values()), ids=list(ROGUE_PAYLOADS))
async def test_a_bad_frame_closes_only_that_connection(payload: bytes) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with mesh(3) as (t1, t2, t3):
            t2.send([hb(2, 1, 1)])
            assert (await t1.inbound.receive()) == hb(2, 1, 1)

            # The rogue passes the handshake as node 2, then misbehaves.
            rogue = await open_raw(t1.listen_address)
            try:
                await connect_handshake(rogue, FrameDecoder(), peer_hello(2), expected_node_id=1, timeout=5)
                await rogue.send_all(encode_frame(encode_message(hb(2, 1, 42))))
                assert (await t1.inbound.receive()) == hb(2, 1, 42)  # behaving so far
                await rogue.send_all(payload)
                assert await read_until_eof(rogue) == b""  # t1 hung up on it
            finally:
                await rogue.aclose()
            stats = await t1.wait_statistics(lambda s: s.protocol_errors == 1)
            assert stats.inbound_connections == 2  # node 2 and the rogue (node 3 has sent nothing yet)

            # Everyone else is unaffected, both ways.
            t2.send([hb(2, 1, 2)])
            t3.send([hb(3, 1, 3)])
            assert sorted(await receive_n(t1, 2), key=lambda m: m.frm) == [hb(2, 1, 2), hb(3, 1, 3)]
            t1.send([hb(1, 2, 4), hb(1, 3, 5)])
            assert (await t2.inbound.receive()) == hb(1, 2, 4)
            assert (await t3.inbound.receive()) == hb(1, 3, 5)


@pytest.mark.parametrize(
    "first",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        encode_frame(b"\x93\x01\x02\x03"),
        encode_frame(encode_message(hb(2, 1))),
        encode_frame(encode_hello(Hello(protocol_version=PROTOCOL_VERSION, cluster_id=CLUSTER, node_id=None,
                                        kind="client"))),
        encode_frame(encode_hello(peer_hello(7))),
        encode_frame(encode_hello(peer_hello(1))),
    ],
    ids=["http", "garbage", "no hello", "client hello", "unknown peer", "own id"],
)
async def test_a_connection_without_a_valid_hello_is_refused(first: bytes) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with mesh(2) as (t1, t2):
            rogue = await open_raw(t1.listen_address)
            try:
                await rogue.send_all(first)
                reply = await read_until_eof(rogue)
            finally:
                await rogue.aclose()
            assert b"error" in reply  # an error frame, then the connection closed
            await t1.wait_statistics(lambda s: s.inbound_rejected == 1)
            t2.send([hb(2, 1, 1)])
            assert (await t1.inbound.receive()) == hb(2, 1, 1)


async def test_wrong_cluster_id_is_refused() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with open_peer_transport(1, "127.0.0.1:0", {}, "cluster-a", **FAST) as t1, \
                open_peer_transport(2, "127.0.0.1:0", {1: t1.listen_address}, "cluster-b", **FAST) as t2:
            t1.update_peers({2: t2.listen_address})
            t1.send([hb(1, 2)])
            t2.send([hb(2, 1)])
            for t in (t1, t2):
                await t.wait_statistics(lambda s: s.connect_failures >= 1 and s.inbound_rejected >= 1)
                assert t.statistics().frames_received == 0
                with pytest.raises(trio.WouldBlock):
                    t.inbound.receive_nowait()

            stream = await open_raw(t1.listen_address)
            try:
                with pytest.raises(WrongCluster, match="cluster id 'cluster-b' does not match .* 'cluster-a'"):
                    await connect_handshake(stream, FrameDecoder(), peer_hello(2, "cluster-b"), timeout=5)
            finally:
                await stream.aclose()


async def test_a_connection_that_never_says_hello_times_out(autojump_clock: trio.testing.MockClock) -> None:
    # The autojump clock moves only when every task is blocked, and a
    # connection accepted but silent is exactly that.
    with trio.fail_after(TEST_TIMEOUT * 10):
        async with open_peer_transport(1, "127.0.0.1:0", {2: "127.0.0.1:9"}, CLUSTER, handshake_timeout=30) as t1:
            silent = await open_raw(t1.listen_address)
            try:
                start = trio.current_time()
                assert await read_until_eof(silent) == b""
                assert trio.current_time() - start >= 30
            finally:
                await silent.aclose()
            assert t1.statistics().inbound_rejected == 1


# -- the interface ----------------------------------------------------------------


async def test_usage_errors() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        with pytest.raises(InvalidArgument, match="host:port"):
            async with open_peer_transport(1, "nonsense", {}, CLUSTER):
                pass
        with pytest.raises(InvalidArgument, match="real port"):
            async with open_peer_transport(1, "127.0.0.1:0", {2: "127.0.0.1:0"}, CLUSTER):
                pass
        with pytest.raises(InvalidArgument, match="cluster_id"):
            async with open_peer_transport(1, "127.0.0.1:0", {}, ""):
                pass
        async with mesh(2) as (t1, _):
            with pytest.raises(InvalidArgument, match="not a Raft peer message"):
                t1.send(["hello"])  # type: ignore[list-item]
            with pytest.raises(InvalidArgument):
                t1.update_peers({2: "no port"})
        with pytest.raises(trio.ClosedResourceError):
            t1.send([hb(1, 2)])


async def test_an_error_in_the_body_comes_out_as_itself() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        with pytest.raises(KeyError, match="mine"):
            async with mesh(2):
                raise KeyError("mine")


def test_statistics_are_frozen() -> None:
    stats = TransportStatistics(dropped_queue_full=1, dropped_unreachable=2)
    assert stats.dropped == 3
    with pytest.raises(AttributeError):
        stats.dropped_queue_full = 5  # type: ignore[misc]


# -- TLS --------------------------------------------------------------------------


def make_tls_contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dengine test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client = ssl.create_default_context(cadata=cert_pem.decode())
    return server, client


async def test_tls_peers_exchange_messages(tmp_path: Path) -> None:
    server_ctx, client_ctx = make_tls_contexts(tmp_path)
    with trio.fail_after(TEST_TIMEOUT):
        async with mesh(2, ssl_context=server_ctx, client_ssl_context=client_ctx) as (t1, t2):
            t1.send([hb(1, 2, 1)])
            t2.send([hb(2, 1, 2)])
            assert (await t2.inbound.receive()) == hb(1, 2, 1)
            assert (await t1.inbound.receive()) == hb(2, 1, 2)
            # a plaintext peer cannot talk to a TLS port
            plain = await open_raw(t1.listen_address)
            try:
                await send_frames(plain, [encode_hello(peer_hello(2))])
                with trio.move_on_after(5):
                    await read_until_eof(plain)
            except trio.BrokenResourceError:
                pass
            finally:
                await plain.aclose()
            await t1.wait_statistics(lambda s: s.inbound_rejected == 1)

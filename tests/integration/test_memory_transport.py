"""The in-memory network: same interface as the TCP transport, plus faults.

Rules of this module: no sockets, no sleeps; every test under an absolute
``trio.fail_after``; "nothing arrived" is checked after
``wait_all_tasks_blocked`` (every sender has delivered or dropped).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
import trio.testing

from dengine.errors import InvalidArgument
from dengine.raft.messages import Heartbeat, Message
from dengine.transport.base import Transport
from dengine.transport.memory import MemoryNetwork, MemoryTransport

TEST_TIMEOUT = 10


def hb(frm: int, to: int, n: int = 0) -> Heartbeat:
    return Heartbeat(frm=frm, to=to, term=1, commit=n)


@asynccontextmanager
async def nodes(network: MemoryNetwork, *ids: int, **kwargs: object) -> AsyncIterator[list[MemoryTransport]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(network.open_transport(i, **kwargs)) for i in ids]  # type: ignore[arg-type]


def drain(t: Transport) -> list[Message]:
    out = []
    while True:
        try:
            out.append(t.inbound.receive_nowait())
        except trio.WouldBlock:
            return out


async def all_to_all(ts: list[MemoryTransport], n: int = 0) -> dict[int, list[tuple[int, int]]]:
    """Everyone sends one heartbeat to everyone; who got what from whom."""
    for t in ts:
        t.send([hb(t.node_id, o.node_id, n) for o in ts if o is not t])
    await trio.testing.wait_all_tasks_blocked()
    return {t.node_id: sorted((m.frm, m.to) for m in drain(t)) for t in ts}


async def test_exchange_both_ways_in_order() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        network = MemoryNetwork()
        async with nodes(network, 1, 2, 3) as ts:
            assert all(isinstance(t, Transport) for t in ts)
            assert network.nodes == {1, 2, 3}
            for t in ts:
                t.send([hb(t.node_id, o.node_id, i) for o in ts if o is not t for i in range(20)])
            for t in ts:
                got = [await t.inbound.receive() for _ in range(40)]
                for o in ts:
                    if o is not t:
                        assert [m.commit for m in got if m.frm == o.node_id] == list(range(20))  # type: ignore[union-attr]
            stats = await ts[0].wait_statistics(lambda s: s.frames_sent == 40)
            assert stats.frames_received == 40 and stats.dropped == 0 and stats.bytes_sent > 0


async def test_a_batch_is_delivered_as_one_batch() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with nodes(MemoryNetwork(), 1, 2) as (t1, t2):
            t1.send([hb(1, 2, i) for i in range(500)])
            await trio.testing.wait_all_tasks_blocked()
            assert len(drain(t2)) == 500
            assert t1.statistics().batches_sent == 1


async def test_partition_isolate_cut_heal() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        network = MemoryNetwork()
        async with nodes(network, 1, 2, 3) as ts:
            everyone = {1: [(2, 1), (3, 1)], 2: [(1, 2), (3, 2)], 3: [(1, 3), (2, 3)]}
            assert await all_to_all(ts) == everyone

            network.partition({1, 2}, {3})
            assert await all_to_all(ts) == {1: [(2, 1)], 2: [(1, 2)], 3: []}
            assert not network.can_reach(3, 1) and network.can_reach(1, 2)
            network.heal()
            assert await all_to_all(ts) == everyone

            network.isolate(2)
            assert await all_to_all(ts) == {1: [(3, 1)], 2: [], 3: [(1, 3)]}
            network.heal()

            network.cut(1, 3)  # one direction only
            assert await all_to_all(ts) == {1: [(2, 1), (3, 1)], 2: [(1, 2), (3, 2)], 3: [(2, 3)]}
            network.heal()
            assert await all_to_all(ts) == everyone
            assert ts[0].statistics().dropped_unreachable == 1 + 1 + 1  # 3 (partition), 2 (isolate), 3 (cut)


async def test_partition_groups_must_not_overlap() -> None:
    with pytest.raises(InvalidArgument, match="overlap"):
        MemoryNetwork().partition({1, 2}, {2, 3})


async def test_random_loss_uses_the_injected_rng() -> None:
    async def lost_with(seed: int) -> list[int]:
        network = MemoryNetwork(drop_probability=0.5, rng=random.Random(seed))
        async with nodes(network, 1, 2) as (t1, t2):
            t1.send([hb(1, 2, i) for i in range(200)])
            await trio.testing.wait_all_tasks_blocked()
            got = [m.commit for m in drain(t2)]  # type: ignore[attr-defined]
            assert t1.statistics().dropped_unreachable == 200 - len(got)
            return got

    with trio.fail_after(TEST_TIMEOUT):
        first = await lost_with(7)
        assert 50 < len(first) < 150 and first == sorted(first)
        assert await lost_with(7) == first  # reproducible
        assert await lost_with(8) != first
    with pytest.raises(InvalidArgument):
        MemoryNetwork(drop_probability=1.5)


async def test_messages_to_a_stopped_peer_are_dropped_without_blocking() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        network = MemoryNetwork()
        async with network.open_transport(1, queue_size=10) as t1:
            async with network.open_transport(2) as t2:
                t1.send([hb(1, 2, 1)])
                assert (await t2.inbound.receive()) == hb(1, 2, 1)
            t1.send([hb(1, 2, i) for i in range(100)])  # synchronous: it cannot block
            assert t1.statistics().dropped_queue_full == 90
            stats = await t1.wait_statistics(lambda s: s.dropped == 100)
            assert stats.dropped_unreachable == 10 and stats.queued == 0
            # a restart on the same id is reachable again
            async with network.open_transport(2) as t2:
                t1.send([hb(1, 2, 2)])
                assert (await t2.inbound.receive()) == hb(1, 2, 2)


async def test_a_full_inbound_channel_makes_the_sender_wait_not_send() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        network = MemoryNetwork()
        async with network.open_transport(1) as t1, network.open_transport(2, inbound_size=5) as t2:
            t1.send([hb(1, 2, i) for i in range(20)])  # never blocks
            await trio.testing.wait_all_tasks_blocked()
            assert t2.statistics().frames_received == 5
            got = [await t2.inbound.receive() for _ in range(20)]
            assert [m.commit for m in got] == list(range(20))  # type: ignore[attr-defined]


async def test_a_sender_blocked_on_a_stopping_peer_is_released() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        network = MemoryNetwork()
        async with network.open_transport(1) as t1:
            async with network.open_transport(2, inbound_size=1):
                t1.send([hb(1, 2, i) for i in range(5)])
                await trio.testing.wait_all_tasks_blocked()  # t1's sender waits on 2's inbound
            stats = await t1.wait_statistics(lambda s: s.frames_sent + s.dropped == 5)
            assert stats.frames_sent == 1 and stats.dropped_unreachable == 4


async def test_unknown_peers_and_update_peers() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        network = MemoryNetwork()
        async with network.open_transport(1, peers=[2]) as t1, network.open_transport(2) as t2, \
                network.open_transport(3) as t3:
            t1.send([hb(1, 3), hb(1, 1), hb(1, 2, 1)])
            assert t1.statistics().dropped_unknown_peer == 2
            assert (await t2.inbound.receive()) == hb(1, 2, 1)
            t1.update_peers({1: "", 3: ""})  # own id ignored
            t1.send([hb(1, 2), hb(1, 3, 2)])
            assert t1.statistics().dropped_unknown_peer == 3
            assert (await t3.inbound.receive()) == hb(1, 3, 2)


async def test_messages_cross_the_codec_unless_told_not_to() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        for roundtrip in (True, False):
            network = MemoryNetwork(roundtrip=roundtrip)
            async with network.open_transport(1) as t1, network.open_transport(2) as t2:
                sent = hb(1, 2, 5)
                t1.send([sent])
                got = await t2.inbound.receive()
                assert got == sent
                assert (got is sent) is not roundtrip  # decoded afresh, as off a wire
                assert (t2.statistics().bytes_received > 0) is roundtrip


async def test_usage_errors_and_closing() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        network = MemoryNetwork()
        async with network.open_transport(1) as t1:
            with pytest.raises(InvalidArgument, match="already has an open transport"):
                async with network.open_transport(1):
                    pass
            with pytest.raises(InvalidArgument, match="not a Raft peer message"):
                t1.send([object()])  # type: ignore[list-item]
            inbound = t1.inbound
        assert network.nodes == frozenset()
        assert [m async for m in inbound] == []
        with pytest.raises(trio.ClosedResourceError):
            t1.send([hb(1, 2)])
        with pytest.raises(ValueError, match="mine"):
            async with network.open_transport(1):
                raise ValueError("mine")

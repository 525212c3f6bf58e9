"""Watches through real engines: one node on a data directory, and 3-node
clusters (plus a learner) on the memory transport.

Rules of this module: every test runs under an absolute ``trio.fail_after``;
tests wait for events or conditions, never for a fixed time; the clock is
real (the dispatcher's heartbeat timing is pinned under the mock clock in
tests/unit/test_watch_dispatcher.py)."""

from __future__ import annotations

import pathlib
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import attrs
import pytest
import trio

import dengine
from dengine import Config, WatchEvent, WatchEventType
from dengine.config import WatchSettings
from dengine.embedded import Engine
from dengine.errors import ErrorCode
from dengine.testing import Cluster, open_cluster, snapshots_installed, wait_snapshot_past

PUT, DELETE = WatchEventType.PUT, WatchEventType.DELETE
CANCELED, PROGRESS = WatchEventType.CANCELED, WatchEventType.PROGRESS


def config(tmp_path: pathlib.Path, **watch: Any) -> Config:
    cfg = Config.single_node(str(tmp_path / "data"))
    raft = attrs.evolve(cfg.raft, tick_interval_ms=10, watch=WatchSettings(**watch))
    return attrs.evolve(cfg, raft=raft)


@asynccontextmanager
async def engine(tmp_path: pathlib.Path, **watch: Any) -> AsyncIterator[Engine]:
    async with dengine.open_engine(config=config(tmp_path, **watch)) as e:
        await e.wait_ready(timeout=5)
        yield e


def brief(events: list[WatchEvent]) -> list[tuple[Any, ...]]:
    return [(e.type, e.key, e.value, e.revision) for e in events]


async def take(watch: dengine.Watch, n: int) -> list[WatchEvent]:
    return [await watch.receive() for _ in range(n)]


# The table of the watch reference, prefix "/services/payment/".
PAYMENT_TABLE = [
    (b"/services/payment/node1", True),
    (b"/services/payment/node2", True),
    (b"/services/payment/node1/sub", True),
    (b"/services/payment", False),
    (b"/services/", False),
    (b"/services/paymentextra/node", False),
]


@pytest.mark.parametrize(("key", "fires"), PAYMENT_TABLE)
async def test_prefix_slash_boundary_table(tmp_path: pathlib.Path, key: bytes, fires: bool) -> None:
    with trio.fail_after(10):
        async with engine(tmp_path) as e:
            async with e.client.open_watch(b"/services/payment/", prefix=True) as watch:
                rev = await e.client.put(key, b"x")
                await e.client.put(b"/services/payment/~sentinel", b"s")
                first = await watch.receive()
                assert (first.key == key and first.revision == rev) is fires
                if fires:
                    assert (await watch.receive()).key == b"/services/payment/~sentinel"


async def test_exact_versus_prefix_and_bad_arguments(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(10):
        async with engine(tmp_path) as e:
            kv = e.client
            for bad in [b"services/", b"/services", b"", "/s/"]:
                with pytest.raises(dengine.InvalidArgument):
                    async with kv.open_watch(bad, prefix=True):  # type: ignore[arg-type]
                        pass
            for bad_key in [b"", "k"]:
                with pytest.raises(dengine.InvalidArgument):
                    async with kv.open_watch(bad_key):  # type: ignore[arg-type]
                        pass
            with pytest.raises(dengine.InvalidArgument):
                async with kv.open_watch(b"/k", start_revision=0):
                    pass
            async with kv.open_watch(b"/config/timeout") as exact, kv.open_watch(b"/config/", prefix=True) as pre:
                for k in [b"/config/timeout2", b"/config/timeout/x", b"/config/timeout", b"/config"]:
                    await kv.put(k, b"1")
                last = await kv.put(b"/config/end", b"")
                assert [(ev.key, ev.type) for ev in await take(exact, 1)] == [(b"/config/timeout", PUT)]
                assert [ev.key for ev in await take(pre, 4)] == [
                    b"/config/timeout2",
                    b"/config/timeout/x",
                    b"/config/timeout",
                    b"/config/end",
                ]
                assert exact.statistics().buffered == 0 and pre.statistics().last_revision == last
                assert e.watch_statistics().watchers == 2
            assert e.watch_statistics().watchers == 0  # leaving the block unregisters


async def test_prev_kv_on_put_and_delete(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(10):
        async with engine(tmp_path) as e:
            kv = e.client
            async with kv.open_watch(b"k", prev_kv=True) as prev, kv.open_watch(b"k") as plain:
                await kv.put(b"k", b"")
                await kv.put(b"k", b"x")
                await kv.delete(b"k")
                await kv.put(b"k", b"y")
                got = await take(prev, 4)
                assert [(ev.type, ev.value, ev.prev_value) for ev in got] == [
                    (PUT, b"", None),  # did not exist
                    (PUT, b"x", b""),  # existed, empty
                    (DELETE, b"", b"x"),
                    (PUT, b"y", None),
                ]
                plain_got = await take(plain, 4)
                assert [ev.prev_value for ev in plain_got] == [None] * 4
                assert brief(plain_got) == brief(got)


async def test_ttl_expiry_is_a_delete_and_a_failed_cas_is_silent(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(10):
        async with engine(tmp_path) as e:
            kv = e.client
            async with kv.open_watch(b"/s/", prefix=True, prev_kv=True) as watch:
                await kv.put(b"/s/a", b"x", ttl=0.2)
                assert await kv.compare_and_swap(b"/s/b", expected=b"nope", new=b"z") is False
                assert await kv.compare_and_swap(b"/s/a", expected=b"other", new=b"z") is False
                marker = await kv.put(b"/s/marker", b"m")
                got = await take(watch, 3)
                assert [(ev.type, ev.key) for ev in got] == [(PUT, b"/s/a"), (PUT, b"/s/marker"), (DELETE, b"/s/a")]
                assert got[1].revision == marker and got[2].revision > marker and got[2].prev_value == b"x"


async def test_slow_consumer_is_canceled_once_and_never_blocks_writes(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(20):
        async with engine(tmp_path, watcher_buffer_size=4, enable_metrics=True) as e:
            kv = e.client
            fast_got: list[WatchEvent] = []
            async with (
                kv.open_watch(b"/k/", prefix=True) as slow,
                kv.open_watch(b"/k/", prefix=True) as fast,
                kv.open_watch(b"/other/", prefix=True) as other,
            ):
                async with trio.open_nursery() as nursery:

                    async def read_fast() -> None:
                        while len(fast_got) < 20:
                            fast_got.append(await fast.receive())

                    nursery.start_soon(read_fast)
                    # Nobody reads `slow`: every write still completes.
                    revs = [await kv.put(b"/k/%02d" % i, b"v") for i in range(20)]
                    other_rev = await kv.put(b"/other/x", b"1")
                slow_got = [ev async for ev in slow]  # iteration ends after CANCELED
                assert [ev.revision for ev in slow_got[:-1]] == revs[:4]
                last = slow_got[-1]
                assert (last.type, last.error, last.revision) == (CANCELED, ErrorCode.WATCH_BUFFER_OVERFLOW, revs[4])
                with pytest.raises(trio.EndOfChannel):
                    await slow.receive()
                assert slow.statistics().state == "canceled"
                assert [ev.revision for ev in fast_got] == revs
                assert (await other.receive()).revision == other_rev
                stats = e.watch_statistics()
                assert stats.canceled_buffer_overflow == 1 and stats.watchers == 2


async def test_ten_thousand_watchers_receive_every_event_in_order(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(30):
        async with engine(tmp_path) as e:
            kv = e.client
            async with AsyncExitStack() as stack:
                watches = []
                for i in range(10_000):
                    if i % 2:
                        w = await stack.enter_async_context(kv.open_watch(b"/w/", prefix=True))
                    else:
                        w = await stack.enter_async_context(kv.open_watch(b"/w/a"))
                    watches.append(w)
                revs = [await kv.put(b"/w/a", b"%d" % i) for i in range(3)]
                for w in watches:
                    assert [ev.revision for ev in await take(w, 3)] == revs
                    assert w.statistics().buffered == 0


async def test_max_watcher_count(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(10):
        async with engine(tmp_path, max_watcher_count=2) as e:
            kv = e.client
            async with kv.open_watch(b"a"), kv.open_watch(b"/p/", prefix=True):
                with pytest.raises(dengine.ResourceExhausted):
                    async with kv.open_watch(b"c"):
                        pass
            async with kv.open_watch(b"c"), kv.open_watch(b"d"):
                pass


async def test_engine_stop_raises_engine_stopped_after_the_buffered_events(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(10):
        seen: list[WatchEvent] = []
        stopped = trio.Event()
        async with trio.open_nursery() as nursery:
            async with engine(tmp_path) as e:
                started = trio.Event()

                async def consume() -> None:
                    async with e.client.open_watch(b"k") as watch:
                        started.set()
                        with pytest.raises(dengine.EngineStopped) as info:
                            async for ev in watch:
                                seen.append(ev)
                        assert isinstance(info.value, dengine.Unavailable)
                        stopped.set()

                nursery.start_soon(consume)
                await started.wait()
                rev = await e.client.put(b"k", b"v")
            await stopped.wait()
        assert [ev.revision for ev in seen] == [rev]
        with pytest.raises(dengine.EngineStopped):
            async with e.client.open_watch(b"k"):
                pass


async def test_heartbeats_carry_the_applied_revision(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(10):
        async with engine(tmp_path, heartbeat_interval_ms=20) as e:
            async with e.client.open_watch(b"k") as watch:
                rev = await e.client.put(b"k", b"v")
                events = [await watch.receive()]
                while events[-1].type is not PROGRESS or events[-1].revision < rev:
                    events.append(await watch.receive())
                # A heartbeat sent before the put applied may come first (20 ms apart).
                puts = [ev for ev in events if ev.type is PUT]
                assert [(ev.key, ev.revision) for ev in puts] == [(b"k", rev)]
                assert all(ev.type is PROGRESS and ev.revision < rev for ev in events[:events.index(puts[0])])
                beat = events[-1]
                # The applied revision when it was sent: at least the put's, at most
                # what is applied now (an entry may have committed since).
                assert (beat.key, beat.value) == (b"", b"")
                assert rev <= beat.revision <= e.status().applied_index


async def test_restart_then_resume_with_start_revision_has_no_gap(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(20):
        cfg = config(tmp_path)
        written: list[tuple[bytes, int]] = []
        async with dengine.open_engine(config=cfg) as e:
            await e.wait_ready(timeout=5)
            async with e.client.open_watch(b"/r/", prefix=True) as watch:
                for i in range(6):
                    written.append((b"/r/%d" % i, await e.client.put(b"/r/%d" % i, b"v%d" % i)))
                processed = await take(watch, 3)  # the application got this far
        last = processed[-1].revision
        async with dengine.open_engine(config=cfg) as e:
            await e.wait_ready(timeout=5)
            async with e.client.open_watch(b"/r/", prefix=True, start_revision=last + 1) as watch:
                for i in range(6, 9):
                    written.append((b"/r/%d" % i, await e.client.put(b"/r/%d" % i, b"v%d" % i)))
                rest = await take(watch, 6)
                assert watch.statistics().buffered == 0
        assert [(ev.key, ev.revision) for ev in processed + rest] == written


async def _random_writes(kv: dengine.EmbeddedClient, n: int, seed: int, progress: trio.Event) -> int:
    rng = random.Random(seed)
    for i in range(n):
        key = b"/reg/%d" % rng.randrange(12)
        if rng.random() < 0.25:
            await kv.delete(key)
        else:
            await kv.put(key, b"%d" % i)
        if i == n // 3:
            progress.set()
    return await kv.put(b"/reg/~done", b"")


def _apply(state: dict[bytes, bytes], ev: WatchEvent) -> None:
    if ev.type is PUT:
        state[ev.key] = ev.value
    elif ev.type is DELETE:
        state.pop(ev.key, None)


async def test_watch_first_scan_second_under_concurrent_writes(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(30):
        async with engine(tmp_path) as e:
            kv = e.client
            some_written = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_random_writes, kv, 300, 7, some_written)
                await some_written.wait()
                async with kv.open_watch(b"/reg/", prefix=True) as watch:  # 1. watch first
                    scan = await kv.scan_prefix(b"/reg/")  # 2. scan second
                    state = dict(scan.entries)
                    seen: set[int] = set()
                    prev = 0
                    async for ev in watch:  # 3. skip what the scan holds
                        assert ev.type in (PUT, DELETE) and ev.revision > prev and ev.revision not in seen
                        prev = ev.revision
                        seen.add(ev.revision)
                        if ev.revision > scan.revision:
                            _apply(state, ev)
                        if ev.key == b"/reg/~done":
                            break
            final = await kv.scan_prefix(b"/reg/")
            assert state == dict(final.entries)


async def test_resume_with_start_revision_under_concurrent_writes(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(30):
        async with engine(tmp_path, watcher_buffer_size=1024) as e:  # the reference is read last
            kv = e.client
            async with kv.open_watch(b"/reg/", prefix=True) as reference:
                some_written = trio.Event()
                got: list[WatchEvent] = []
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_random_writes, kv, 300, 11, some_written)
                    for round_ in range(4):  # disconnect and resume three times
                        start = got[-1].revision + 1 if got else None
                        async with kv.open_watch(b"/reg/", prefix=True, start_revision=start) as watch:
                            async for ev in watch:
                                got.append(ev)
                                if ev.key == b"/reg/~done" or (round_ < 3 and len(got) >= 40 * (round_ + 1)):
                                    break
                        if got[-1].key == b"/reg/~done":
                            break
                    while got[-1].key != b"/reg/~done":
                        async with kv.open_watch(b"/reg/", prefix=True, start_revision=got[-1].revision + 1) as w:
                            got.append(await w.receive())
                expected = await take(reference, len(got))
                assert brief(got) == brief(expected)
                assert reference.statistics().buffered == 0


# ---------------------------------------------------------------------------
# Clusters
# ---------------------------------------------------------------------------


async def test_leader_follower_and_learner_watches_see_the_same_events(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(30):
        async with open_cluster(tmp_path) as cluster:
            leader = await cluster.wait_leader()
            # A learner: proposed by the leader, started with cluster.join = true.
            learner = await cluster.add_learner(4)
            assert learner.config.cluster.join and learner.config.node_id == 4
            async with AsyncExitStack() as stack:
                watches = {
                    nid: await stack.enter_async_context(eng.client.open_watch(b"/w/", prefix=True, prev_kv=True))
                    for nid, eng in cluster.engines.items()
                }
                for i in range(10):
                    await leader.client.put(b"/w/%d" % (i % 3), b"%d" % i)
                await leader.client.delete(b"/w/0")
                streams = {nid: brief(await take(w, 11)) for nid, w in watches.items()}
                assert len({tuple(s) for s in streams.values()}) == 1, streams
                assert all(w.statistics().buffered == 0 for w in watches.values())
                assert set(streams) == {1, 2, 3, 4}
            assert learner.status().role in ("learner", "follower")
            assert any(m.node_id == 4 and m.is_learner for m in leader.status().members)


async def put_at_leader(cluster: Cluster, key: bytes, *, exclude: set[int]) -> Engine:
    """Put ``key`` at the leader among the nodes not in ``exclude``, as a
    client does: a leader change on a slow disk (the tests' election timeout
    is 0.1 s) is answered by retrying at the new leader, not by failing.
    Returns the engine that acknowledged the write."""
    for _ in range(20):
        leader = await cluster.wait_leader(exclude=exclude)
        try:
            await leader.client.put(key, b"v")
            return leader
        except (dengine.LeaderChanged, dengine.NotLeader):
            continue
    raise AssertionError(f"no leader acknowledged {key!r} in 20 attempts")


async def test_snapshot_install_on_a_follower_cancels_its_watchers_with_compacted(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(40):
        async with open_cluster(tmp_path, raft={"snapshot_threshold": 20}) as cluster:
            leader = await cluster.wait_leader()
            fid = next(nid for nid in cluster.engines if nid != leader.status().node_id)
            follower = cluster.engines[fid]
            rev0 = await leader.client.put(b"/k/first", b"v")
            async with follower.client.open_watch(b"/k/", prefix=True) as watch:
                first = await watch.receive()
                assert first.revision == rev0
                assert cluster.network is not None
                cluster.network.isolate(fid)
                for i in range(100):
                    leader = await put_at_leader(cluster, b"/k/%03d" % i, exclude={fid})
                await wait_snapshot_past(leader, rev0 + 20)
                cluster.network.heal()
                last = await watch.receive()
                assert (last.type, last.error) == (CANCELED, ErrorCode.COMPACTED)
                assert last.revision > rev0  # the first revision it did not get
                with pytest.raises(trio.EndOfChannel):
                    await watch.receive()
            assert snapshots_installed(follower) >= 1
            assert follower.watch_statistics().canceled_compacted == 1
            # Re-sync: a resume from before the snapshot is COMPACTED; scan + a new watch works.
            async with follower.client.open_watch(b"/k/", prefix=True, start_revision=rev0 + 1) as old:
                assert (await old.receive()).error == ErrorCode.COMPACTED
            async with follower.client.open_watch(b"/k/", prefix=True) as fresh:
                scan = await follower.client.scan_prefix(b"/k/")
                assert len(scan.entries) == 101
                rev = await leader.client.put(b"/k/new", b"n")
                ev = await fresh.receive()
                while ev.revision <= scan.revision:
                    ev = await fresh.receive()
                assert (ev.key, ev.revision) == (b"/k/new", rev)

"""dengine.watch.dispatcher without an engine: the applier is simulated by
calling ``publish`` / ``publish_snapshot``; ``dispatch_pending`` is the
dispatcher task's pass (``run`` is used only where time matters, under the
autojump clock). Rules pinned: order, no duplicate, no silent loss (CANCELED
with the right code and resume revision), atomic register + replay, limits,
stop, jittered heartbeats. Every async test runs under an absolute deadline."""

from __future__ import annotations

import random
from collections import deque

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from dengine.api import WatchEvent, WatchEventType
from dengine.config import WatchSettings
from dengine.errors import EngineStopped, ErrorCode, InvalidArgument, ResourceExhausted
from dengine.watch.dispatcher import Watch, WatchDispatcher

PUT, DELETE = WatchEventType.PUT, WatchEventType.DELETE
CANCELED, PROGRESS = WatchEventType.CANCELED, WatchEventType.PROGRESS


def put(key: bytes, rev: int, value: bytes = b"v", prev: bytes | None = None) -> WatchEvent:
    return WatchEvent(PUT, key, value, prev, rev)


def dispatcher(**kw: int | bool) -> WatchDispatcher:
    return WatchDispatcher(WatchSettings(**kw), applied_index=0, rng=random.Random(1))  # type: ignore[arg-type]


def drain(w: Watch) -> list[WatchEvent]:
    out = []
    while w._buf:
        out.append(w._buf.popleft())
    return out


def test_exact_and_prefix_in_apply_order() -> None:
    d = dispatcher()
    exact = d.open_watch(b"/a/x")
    pre = d.open_watch(b"/a/", prefix=True)
    other = d.open_watch(b"/b/", prefix=True)
    d.publish([put(b"/a/x", 1), put(b"/a/y", 1)], 1)
    d.publish([], 2)  # a no-op entry
    d.publish([put(b"/a/x", 3), put(b"/a/xx", 3)], 3)
    d.dispatch_pending()
    assert [(e.key, e.revision) for e in drain(exact)] == [(b"/a/x", 1), (b"/a/x", 3)]
    assert [(e.key, e.revision) for e in drain(pre)] == [(b"/a/x", 1), (b"/a/y", 1), (b"/a/x", 3), (b"/a/xx", 3)]
    assert drain(other) == []
    assert d.statistics().dispatched_revision == 3


def test_prev_value_is_stripped_for_watchers_without_prev_kv() -> None:
    d = dispatcher()
    with_prev = d.open_watch(b"k", prev_kv=True)
    without = d.open_watch(b"k")
    ev = put(b"k", 1, b"new", prev=b"")
    d.publish([ev], 1)
    d.dispatch_pending()
    assert drain(with_prev) == [ev]  # the very same object: no copy when wanted
    assert drain(without) == [put(b"k", 1, b"new", prev=None)]


def test_live_watch_starts_after_the_applied_index_at_registration() -> None:
    d = dispatcher()
    d.publish([put(b"k", 1)], 1)  # published, not yet dispatched
    w = d.open_watch(b"k")
    d.publish([put(b"k", 2)], 2)
    d.dispatch_pending()
    assert [e.revision for e in drain(w)] == [2]


async def test_overflow_gives_one_canceled_then_nothing_and_spares_others() -> None:
    with trio.fail_after(5):
        d = dispatcher(watcher_buffer_size=3)
        slow = d.open_watch(b"/k/", prefix=True)
        fast = d.open_watch(b"/k/", prefix=True)
        for rev in range(1, 7):
            d.publish([put(b"/k/a", rev)], rev)
            d.dispatch_pending()
            drain(fast)
        assert fast.statistics().state == "open"
        got = [ev async for ev in slow]
        assert [(e.type, e.revision) for e in got] == [(PUT, 1), (PUT, 2), (PUT, 3), (CANCELED, 4)]
        assert got[-1].error == ErrorCode.WATCH_BUFFER_OVERFLOW
        with pytest.raises(trio.EndOfChannel):
            await slow.receive()
        assert slow.id not in d._registry and d.watcher_count() == 1
        assert d.statistics().canceled_buffer_overflow == 1


def test_overflow_inside_one_revision_drops_that_revision_for_an_exact_resume() -> None:
    d = dispatcher(watcher_buffer_size=3)
    w = d.open_watch(b"/k/", prefix=True)
    d.publish([put(b"/k/a", 1), put(b"/k/a", 2), put(b"/k/b", 2), put(b"/k/c", 2)], 2)
    d.dispatch_pending()
    got = drain(w)
    assert [(e.type, e.revision) for e in got] == [(PUT, 1), (CANCELED, 2)]
    # Resuming at the CANCELED revision replays revision 2 whole: no gap, no duplicate.
    again = d.open_watch(b"/k/", prefix=True, start_revision=got[-1].revision)
    assert [e.key for e in drain(again)] == [b"/k/a", b"/k/b", b"/k/c"]


def test_global_queue_overflow_cancels_exactly_the_watchers_that_lose_events() -> None:
    d = dispatcher(event_queue_size=2)
    hit = d.open_watch(b"/a/", prefix=True)
    spared = d.open_watch(b"/b/", prefix=True)
    d.publish([put(b"/a/1", 1)], 1)
    d.publish([put(b"/a/2", 2)], 2)
    d.publish([put(b"/a/3", 3)], 3)  # the queue is full: dropped
    d.publish([put(b"/b/4", 4)], 4)  # still full: dropped, but nobody watching /a/ loses it
    d.dispatch_pending()
    got = drain(hit)
    assert [(e.type, e.revision) for e in got] == [(PUT, 1), (PUT, 2), (CANCELED, 3)]
    assert got[-1].error == ErrorCode.WATCH_BUFFER_OVERFLOW
    assert [(e.type, e.revision) for e in drain(spared)] == [(CANCELED, 4)]
    stats = d.statistics()
    assert stats.canceled_queue_overflow == 2 and stats.history_floor == 5
    late = d.open_watch(b"/a/", prefix=True, start_revision=3)
    assert [(e.type, e.error) for e in drain(late)] == [(CANCELED, ErrorCode.COMPACTED)]
    # After the jam, new passes flow again.
    fresh = d.open_watch(b"/a/", prefix=True)
    d.publish([put(b"/a/5", 5)], 5)
    d.dispatch_pending()
    assert [e.revision for e in drain(fresh)] == [5]


def test_one_pass_larger_than_the_queue_is_taken_when_the_queue_is_empty() -> None:
    d = dispatcher(event_queue_size=2)
    w = d.open_watch(b"/a/", prefix=True)
    d.publish([put(b"/a/%d" % i, 1) for i in range(5)], 1)
    d.dispatch_pending()
    assert len(drain(w)) == 5


def test_snapshot_jump_cancels_watchers_that_missed_events_with_compacted() -> None:
    d = dispatcher()
    before = d.open_watch(b"/a/", prefix=True)
    future = d.open_watch(b"/a/", prefix=True, start_revision=500)
    d.publish([put(b"/a/1", 1)], 1)
    d.publish_snapshot(100)
    after = d.open_watch(b"/a/", prefix=True)  # registered after the jump was published
    old = d.open_watch(b"/a/", prefix=True, start_revision=50)
    d.publish([put(b"/a/101", 101)], 101)
    d.dispatch_pending()
    got = drain(before)
    assert [(e.type, e.revision) for e in got] == [(PUT, 1), (CANCELED, 2)]
    assert got[-1].error == ErrorCode.COMPACTED
    assert drain(future) == [] and future.statistics().state == "open"
    assert [e.revision for e in drain(after)] == [101]
    assert [(e.type, e.error) for e in drain(old)] == [(CANCELED, ErrorCode.COMPACTED)]
    assert d.statistics().canceled_compacted == 2


def test_start_revision_replays_then_continues_live() -> None:
    d = dispatcher(history_size=4)
    for rev in range(1, 7):
        d.publish([put(b"k", rev)], rev)
    d.dispatch_pending()
    assert d.statistics().history_floor == 3
    d.publish([put(b"k", 7)], 7)  # queued, not yet dispatched
    w = d.open_watch(b"k", start_revision=4)
    d.publish([put(b"k", 8)], 8)
    d.dispatch_pending()
    assert [e.revision for e in drain(w)] == [4, 5, 6, 7, 8]
    too_old = d.open_watch(b"k", start_revision=2)
    got = drain(too_old)
    assert [(e.type, e.revision, e.error) for e in got] == [(CANCELED, 2, ErrorCode.COMPACTED)]
    ahead = d.open_watch(b"k", start_revision=20)
    for rev in range(9, 22):
        d.publish([put(b"k", rev)], rev)
    d.dispatch_pending()
    assert [e.revision for e in drain(ahead)] == [20, 21]


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "3"])
def test_start_revision_must_be_a_positive_integer(bad: object) -> None:
    d = dispatcher()
    with pytest.raises(InvalidArgument):
        d.open_watch(b"k", start_revision=bad)  # type: ignore[arg-type]
    assert d.watcher_count() == 0


def test_replay_does_not_count_against_the_live_buffer() -> None:
    d = dispatcher(watcher_buffer_size=2, history_size=100)
    for rev in range(1, 11):
        d.publish([put(b"k", rev)], rev)
    d.dispatch_pending()
    w = d.open_watch(b"k", start_revision=1)
    d.publish([put(b"k", 11)], 11)
    d.publish([put(b"k", 12)], 12)
    d.dispatch_pending()
    assert [e.revision for e in drain(w)] == list(range(1, 13))


def test_max_watcher_count() -> None:
    d = dispatcher(max_watcher_count=2)
    a = d.open_watch(b"a")
    d.open_watch(b"/p/", prefix=True)
    with pytest.raises(ResourceExhausted):
        d.open_watch(b"c")
    a.close()
    d.open_watch(b"c")


async def test_close_by_the_application_and_stop_by_the_engine() -> None:
    with trio.fail_after(5):
        d = dispatcher()
        mine = d.open_watch(b"k")
        theirs = d.open_watch(b"k")
        d.publish([put(b"k", 1)], 1)
        d.publish([put(b"k", 2)], 2)
        mine.close()
        mine.close()
        with pytest.raises(trio.ClosedResourceError):
            await mine.receive()
        d.close(EngineStopped("the engine stopped"))  # dispatches what was queued first
        assert [e.revision async for e in _until_stopped(theirs)] == [1, 2]
        with pytest.raises(EngineStopped):
            d.open_watch(b"k")


async def _until_stopped(w: Watch):  # type: ignore[no-untyped-def]
    with pytest.raises(EngineStopped):
        async for ev in w:
            yield ev


async def test_a_blocked_reader_is_woken_by_dispatch_and_by_stop() -> None:
    with trio.fail_after(5):
        d = dispatcher()
        w = d.open_watch(b"k")
        got: list[WatchEvent] = []

        async def reader() -> None:
            with pytest.raises(EngineStopped):
                async for ev in w:
                    got.append(ev)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(d.run)
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            d.publish([put(b"k", 1)], 1)
            await trio.testing.wait_all_tasks_blocked()
            assert [e.revision for e in got] == [1]
            d.close()
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        assert [e.revision for e in got] == [1]


async def test_heartbeats_carry_the_revision_with_ten_percent_jitter(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(1000):
        d = dispatcher(heartbeat_interval_ms=1000)
        w = d.open_watch(b"k")
        d.publish([], 7)
        times: list[float] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(d.run)
            for _ in range(30):
                ev = await w.receive()
                assert (ev.type, ev.key, ev.value, ev.revision) == (PROGRESS, b"", b"", 7)
                times.append(trio.current_time())
            nursery.cancel_scope.cancel()
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert all(0.9 - 1e-9 <= g <= 1.1 + 1e-9 for g in gaps), gaps
        assert max(gaps) - min(gaps) > 0.05  # jittered, not a fixed beat
        assert d.statistics().heartbeats == 30


async def test_heartbeats_off_and_never_overflow_a_full_buffer(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(1000):
        off = dispatcher()
        quiet = off.open_watch(b"k")
        full_d = dispatcher(heartbeat_interval_ms=100, watcher_buffer_size=1)
        full = full_d.open_watch(b"k")
        full_d.publish([put(b"k", 1)], 1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(off.run)
            nursery.start_soon(full_d.run)
            await trio.sleep(10)  # mock time: 100 heartbeat periods
            nursery.cancel_scope.cancel()
        assert quiet._buf == deque() and off.statistics().heartbeats == 0
        assert [e.type for e in drain(full)] == [PUT] and full.statistics().state == "open"


# A model check: any interleaving of publishes, dispatch passes and watch
# registrations (live or resumed) gives each watcher exactly the matching
# events with revision >= its start, in order -- or a prefix of them ending
# in CANCELED at the first revision it did not get.
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.lists(st.sampled_from([b"/a/x", b"/a/y", b"/b/z"]), max_size=3)),
        st.tuples(st.just("dispatch")),
        st.tuples(st.just("watch"), st.sampled_from([b"/a/", b"/b/", b"/"]), st.integers(0, 12)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops=OPS, history=st.integers(0, 6), buf=st.integers(1, 4), queue=st.integers(1, 4))
def test_model_no_gap_no_duplicate(ops: list[tuple], history: int, buf: int, queue: int) -> None:
    d = dispatcher(history_size=history, watcher_buffer_size=buf, event_queue_size=queue)
    all_events: list[WatchEvent] = []
    watches: list[tuple[Watch, bytes, int]] = []
    received: dict[int, list[WatchEvent]] = {}
    rev = 0
    for op in ops:
        if op[0] == "publish":
            rev += 1
            events = [put(k, rev, b"%d" % i) for i, k in enumerate(op[1])]
            all_events.extend(events)
            d.publish(events, rev)
        elif op[0] == "dispatch":
            d.dispatch_pending()
        else:
            start = op[2] or None
            w = d.open_watch(op[1], prefix=True, start_revision=start)
            watches.append((w, op[1], start if start is not None else d._published + 1))
        for w, _, _ in watches:  # a reader that takes one event per step
            if w._buf:
                received.setdefault(w.id, []).append(w._buf.popleft())
    d.dispatch_pending()
    for w, prefix, start in watches:
        got = received.get(w.id, []) + list(w._buf)
        expected = [e for e in all_events if e.key.startswith(prefix) and e.revision >= start]
        if got and got[-1].type is CANCELED:
            body = got[:-1]
            assert body == expected[: len(body)]
            missed = expected[len(body)] if len(body) < len(expected) else None
            if got[-1].error == ErrorCode.WATCH_BUFFER_OVERFLOW:
                assert missed is not None and got[-1].revision == missed.revision
            else:
                assert got[-1].error == ErrorCode.COMPACTED
        else:
            assert got == expected

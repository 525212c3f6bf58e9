"""Watch benchmark: one single-node engine on in-memory storage (so the
dispatcher's own cost is not hidden behind fsync).

    python -m benchmarks watch [--quick]

Measures:
* latency from apply to receipt (p50, p99) with 1 and 100 watchers on the
  written key, each read by its own task; one write at a time;
* delivered events/s with 1, 100 and 10,000 watchers (prefix watches, one
  reader task each) while 32 writer tasks put as fast as they can;
* write throughput (32 concurrent writers) with 0 watchers vs 100 idle
  watchers on other keys, in alternating rounds, medians compared.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Any

import attrs
import trio

import dengine
from dengine import Config
from dengine.config import WatchSettings
from dengine.storage.memory import MemoryStorage

WRITERS = 32


def _config(**watch: Any) -> Config:
    cfg = Config.single_node("/nonexistent-dengine-bench")
    raft = attrs.evolve(cfg.raft, tick_interval_ms=10, watch=WatchSettings(**watch))
    return attrs.evolve(cfg, raft=raft)


async def _latency(watchers: int, writes: int) -> tuple[float, float]:
    applied_at: dict[int, float] = {}
    samples: list[float] = []
    async with dengine.open_engine(config=_config(), storage=MemoryStorage()) as engine:
        await engine.wait_ready(timeout=10)

        dispatcher = engine._node.watch
        publish = dispatcher.publish

        def timed_publish(events: list[dengine.WatchEvent], applied: int) -> None:
            # The moment the applier hands the events to the dispatcher.
            if events:
                applied_at[events[0].revision] = time.perf_counter()
            publish(events, applied)

        dispatcher.publish = timed_publish  # type: ignore[method-assign]
        async with trio.open_nursery() as holders:
            async with trio.open_nursery() as readers:
                for _ in range(watchers):
                    watch = await _enter(holders, engine, b"/lat/key", False)

                    async def read(w: dengine.Watch = watch) -> None:
                        for _ in range(writes):
                            ev = await w.receive()
                            samples.append(time.perf_counter() - applied_at[ev.revision])

                    readers.start_soon(read)
                for i in range(writes):
                    await engine.client.put(b"/lat/key", b"%d" % i)
            holders.cancel_scope.cancel()
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99)]


async def _enter(nursery: trio.Nursery, engine: dengine.Engine, key: bytes, prefix: bool) -> dengine.Watch:
    """Open a watch that stays open until the nursery ends."""

    async def hold(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with engine.client.open_watch(key, prefix=prefix) as w:
            task_status.started(w)
            await trio.sleep_forever()

    watch: dengine.Watch = await nursery.start(hold)
    return watch


async def _writers(engine: dengine.Engine, prefix: bytes, total: int) -> None:
    per = total // WRITERS

    async def writer(n: int) -> None:
        for i in range(per):
            await engine.client.put(prefix + b"%d-%d" % (n, i), b"x" * 64)

    async with trio.open_nursery() as nursery:
        for n in range(WRITERS):
            nursery.start_soon(writer, n)


async def _delivery(watchers: int, events: int) -> tuple[float, int]:
    events = events // WRITERS * WRITERS
    cfg = _config(watcher_buffer_size=events + 10)
    async with dengine.open_engine(config=cfg, storage=MemoryStorage()) as engine:
        await engine.wait_ready(timeout=10)
        done = 0
        finished = trio.Event()
        async with trio.open_nursery() as nursery:
            holders = trio.open_nursery()
            async with holders as hn:
                for _ in range(watchers):
                    watch = await _enter(hn, engine, b"/d/", True)

                    async def read(w: dengine.Watch = watch) -> None:
                        nonlocal done
                        for _ in range(events):
                            await w.receive()
                        done += 1
                        if done == watchers:
                            finished.set()

                    nursery.start_soon(read)
                t0 = time.perf_counter()
                await _writers(engine, b"/d/", events)
                await finished.wait()
                elapsed = time.perf_counter() - t0
                hn.cancel_scope.cancel()
        stats = engine.watch_statistics()
    canceled = stats.canceled_buffer_overflow + stats.canceled_queue_overflow
    return watchers * events / elapsed, canceled


async def _write_rate(idle_watchers: int, writes: int) -> float:
    async with dengine.open_engine(config=_config(), storage=MemoryStorage()) as engine:
        await engine.wait_ready(timeout=10)
        async with trio.open_nursery() as hn:
            for i in range(idle_watchers):
                await _enter(hn, engine, b"/idle/%d/" % i, True)
            t0 = time.perf_counter()
            await _writers(engine, b"/w/", writes)
            elapsed = time.perf_counter() - t0
            hn.cancel_scope.cancel()
    return writes // WRITERS * WRITERS / elapsed


async def _run(quick: bool) -> None:
    lat_writes = 300 if quick else 3000
    print()
    print("latency, apply -> watcher receipt (one write at a time)")
    print(f"{'watchers':>10}{'p50 µs':>10}{'p99 µs':>10}")
    for n in (1, 100):
        p50, p99 = await _latency(n, lat_writes)
        print(f"{n:>10,}{p50 * 1e6:>10.0f}{p99 * 1e6:>10.0f}")
        if n == 100:
            p99_100 = p99

    print()
    print(f"delivered events/s ({WRITERS} concurrent writers, prefix watches, one reader task each)")
    print(f"{'watchers':>10}{'events':>10}{'deliveries/s':>15}{'canceled':>10}")
    for n, ev in ((1, 20_000), (100, 5_000), (10_000, 200)):
        if quick:
            ev //= 5
        rate, canceled = await _delivery(n, ev)
        print(f"{n:>10,}{ev // WRITERS * WRITERS:>10,}{rate:>15,.0f}{canceled:>10}")

    print()
    writes = 4_000 if quick else 20_000
    rounds = 3 if quick else 11
    off, on = [], []
    for _ in range(rounds):
        off.append(await _write_rate(0, writes))
        on.append(await _write_rate(100, writes))
    off_m, on_m = statistics.median(off), statistics.median(on)
    overhead = (off_m - on_m) / off_m * 100
    print(f"write throughput ({WRITERS} concurrent writers, {writes:,} puts, median of {rounds} alternating rounds)")
    print(f"{'no watchers':<28}{off_m:>12,.0f} writes/s")
    print(f"{'100 idle watchers':<28}{on_m:>12,.0f} writes/s")
    print()
    print(f"p99 latency at 100 watchers: {p99_100 * 1e6:.0f} µs  (goal < 1000 µs: {'met' if p99_100 < 1e-3 else 'NOT met'})")
    print(f"write overhead, 100 idle watchers: {overhead:+.1f}%  (goal < 5%: {'met' if overhead < 5 else 'NOT met'})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks watch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short runs (~10 s)")
    ns = parser.parse_args(argv)
    print(f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.platform()}")
    print(f"command: {' '.join(['python -m benchmarks watch', *(argv or [])])}")
    trio.run(_run, ns.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())

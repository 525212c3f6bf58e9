"""Scenarios and closed-loop load drivers shared by every system under test.

A scenario is a pattern of operations over a key/value store: key 8 bytes,
value 256 bytes, sequential keys. Write scenarios write fresh keys from a
counter that carries on across write scenarios; read scenarios re-read the
keys the write runs wrote (cycling over them). Each scenario runs ``concurrency``
callers, each issuing its next operation as soon as the previous one returns
(closed loop), until ``max_ops`` operations were started or ``seconds`` passed.

An operation that raises, or a read that does not find a key that was
written, is counted as an error (with its first messages kept), never skipped.

The ops are plain coroutines over a small ``kv`` adapter (``await
kv.put(key, value)``, ``await kv.get(key, level) -> bytes | None``), so one
definition serves the trio driver (dengine) and the asyncio driver (etcd).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.histogram import Histogram

KEY_SIZE = 8
VALUE_SIZE = 256
VALUE = (b"dengine-" * 32)[:VALUE_SIZE]
HOT_KEYS = 10
PREFILL = 1000


def key(i: int) -> bytes:
    return b"k%07d" % i


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # write | read | hot | mixed | watch
    concurrency: int
    level: str = "linearizable"  # read consistency, for read | hot | mixed
    doc: str = ""


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("write-1", "write", 1, doc="single-client write"),
        Scenario("write-100", "write", 100, doc="high-concurrency write, 100 callers"),
        Scenario("write-1000", "write", 1000, doc="high-concurrency write, 1,000 callers"),
        Scenario("read-linearizable", "read", 100, "linearizable", "linearizable read, 100 callers"),
        Scenario("read-lease", "read", 100, "lease", "lease read, 100 callers"),
        Scenario("read-eventual", "read", 1, "eventual", "eventual (local) read, 1 caller"),
        Scenario("hot-key", "hot", 100, "linearizable", "10 hot keys, linearizable read, 100 callers"),
        Scenario("mixed", "mixed", 100, "linearizable", "90 % linearizable read / 10 % write, 100 callers"),
        Scenario("watch-latency", "watch", 1, doc="put -> watcher event latency (benchmarks/watch.py)"),
        Scenario("watch-fanout", "watch", 1, doc="one put -> many watchers (benchmarks/watch.py)"),
    ]
}


class Missing(Exception):
    """A read did not find a key that the write run wrote."""


@dataclass
class Run:
    """Book-keeping of one scenario run on one system."""

    hist: Histogram
    ops: int = 0
    errors: int = 0
    elapsed: float = 0.0
    error_samples: list[str] | None = None

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        if self.error_samples is None:
            self.error_samples = []
        if len(self.error_samples) < 5:
            self.error_samples.append(f"{type(exc).__name__}: {exc}"[:200])

    def result(self, scenario: Scenario, **extra: Any) -> dict[str, Any]:
        out: dict[str, Any] = {
            "scenario": scenario.name,
            "concurrency": scenario.concurrency,
            "ops": self.ops,
            "errors": self.errors,
            "seconds": self.elapsed,
            "throughput": self.hist.count / self.elapsed if self.elapsed > 0 else 0.0,
            **self.hist.summary(),
            "histogram": self.hist.to_dict(),
        }
        if self.error_samples:
            out["error_samples"] = self.error_samples
        out.update(extra)
        return out


class KeyPlan:
    """Which key each operation touches; ``written`` grows with write runs."""

    def __init__(self) -> None:
        self.written = 0

    def make_op(self, scenario: Scenario, kv: Any) -> Callable[[int], Awaitable[None]]:
        level = scenario.level
        put, get = kv.put, kv.get
        if scenario.kind == "write":
            base = self.written

            async def op(i: int) -> None:
                await put(key(base + i), VALUE)

            return op
        n = max(self.written, 1)
        if scenario.kind == "hot":
            n = min(n, HOT_KEYS)
        if scenario.kind in ("read", "hot"):

            async def op(i: int) -> None:
                if await get(key(i % n), level) is None:
                    raise Missing(f"key {key(i % n)!r} was written but read as absent")

            return op
        if scenario.kind == "mixed":

            async def op(i: int) -> None:
                k = key(i % n)
                if i % 10 == 9:
                    await put(k, VALUE)
                elif await get(k, level) is None:
                    raise Missing(f"key {k!r} was written but read as absent")

            return op
        raise ValueError(f"scenario {scenario.name} has no key/value ops")

    def after(self, scenario: Scenario, run: Run) -> None:
        if scenario.kind == "write":
            # Every started write counts: a failed one may still have landed,
            # and reads of a key that is absent are reported as errors.
            self.written += run.ops - run.errors


async def drive_trio(op: Callable[[int], Awaitable[None]], concurrency: int, seconds: float, max_ops: int) -> Run:
    import trio

    run = Run(Histogram())
    clock = time.perf_counter
    start = clock()
    deadline = start + seconds
    counter = 0

    async def caller() -> None:
        nonlocal counter
        record = run.hist.record_ns
        while counter < max_ops:
            t0 = clock()
            if t0 >= deadline:
                return
            i = counter
            counter += 1
            try:
                await op(i)
            except Exception as exc:  # counted and reported, never skipped
                run.error(exc)
            else:
                record(int((clock() - t0) * 1e9))
            if concurrency == 1 and i % 64 == 63:
                # A lone caller whose ops never block would starve the engine.
                await trio.lowlevel.checkpoint()

    with trio.fail_after(seconds + 60):
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(caller)
    run.elapsed = clock() - start
    run.ops = counter
    return run


async def drive_asyncio(op: Callable[[int], Awaitable[None]], concurrency: int, seconds: float, max_ops: int) -> Run:
    import asyncio

    run = Run(Histogram())
    clock = time.perf_counter
    start = clock()
    deadline = start + seconds
    counter = 0

    async def caller() -> None:
        nonlocal counter
        record = run.hist.record_ns
        while counter < max_ops:
            t0 = clock()
            if t0 >= deadline:
                return
            i = counter
            counter += 1
            try:
                await op(i)
            except Exception as exc:
                run.error(exc)
            else:
                record(int((clock() - t0) * 1e9))

    await asyncio.wait_for(asyncio.gather(*(caller() for _ in range(concurrency))), seconds + 60)
    run.elapsed = clock() - start
    run.ops = counter
    return run


def dict_get_baseline(n_keys: int, seconds: float, max_ops: int = 50_000_000) -> dict[str, Any]:
    """A bare ``dict.get`` loop over the same keys: the ceiling of a local read."""
    d = {key(i): VALUE for i in range(n_keys)}
    keys = [key(i) for i in range(n_keys)]
    get = d.get
    ops = 0
    start = time.perf_counter()
    chunk = 100_000
    while ops < max_ops and time.perf_counter() - start < seconds:
        for i in range(chunk):
            get(keys[i % n_keys])
        ops += chunk
    elapsed = time.perf_counter() - start
    return {"scenario": "dict-get", "ops": ops, "seconds": elapsed, "throughput": ops / elapsed}


def local_get_loop(get_nowait: Callable[[bytes], Any], n_keys: int, seconds: float, max_ops: int = 50_000_000) -> dict[str, Any]:
    """The embedded engine's local read (``client.get_nowait``, an EVENTUAL
    read without awaiting) in exactly the loop of :func:`dict_get_baseline`,
    so the two rates compare the read, not the harness."""
    keys = [key(i) for i in range(n_keys)]
    missing = 0
    ops = 0
    start = time.perf_counter()
    chunk = 100_000
    while ops < max_ops and time.perf_counter() - start < seconds:
        for i in range(chunk):
            if get_nowait(keys[i % n_keys]) is None:
                missing += 1
        ops += chunk
    elapsed = time.perf_counter() - start
    return {"scenario": "local-get", "ops": ops, "seconds": elapsed, "throughput": ops / elapsed, "errors": missing}

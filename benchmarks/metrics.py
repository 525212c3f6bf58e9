"""The cost of metrics: write-100 on emb-3 with ``[metrics] enabled`` on vs off.

    python -m benchmarks metrics [--rounds N] [--seconds S] [--warmup S] [--scrape T] [--quick] [--dir DIR]

Two dengine-embedded-3 clusters run side by side for the whole benchmark
(three engine processes each on loopback, FileStorage under ``--dir``, the
load in the leader's process, as the suite's ``emb-3``), one with
``[metrics] enabled = true`` and one with ``false``. After an unmeasured
warm-up on each (``--warmup`` seconds: the first WAL segment is being
zero-filled meanwhile), each round runs write-100 (100 concurrent writers,
256 B values) for ``--seconds`` on one cluster, then on the other, while
the idle one only ticks; the order alternates between rounds (on/off,
off/on, ...) so drift of the disk or of other load on the machine falls on
both sides. With metrics on, the leader process also renders ``/metrics`` every
``--scrape`` seconds during the run (default 1 s; Prometheus usually scrapes
every 15-60 s), so the figure includes scraping. Throughputs are compared
by their medians; the goal (issue: metrics) is on within 3 % of off.

Needs prometheus-client (``pip install -e '.[bench]'`` or ``'.[metrics]'``).
The 1-minute load average is printed before and after: on a shared machine
compare the rounds, not runs made at different loads.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

from benchmarks.peers.etcd import Started
from benchmarks.procs import Child, stop_all
from benchmarks.suite import start_dengine_embedded

GOAL = 3.0  # per cent


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def start_cluster(workdir: str, children: list[Child], metrics: str) -> Started:
    """Three engine processes with ``--metrics on|off``; the leader drives the load."""
    return start_dengine_embedded(workdir, children, 3, 0, extra_args=["--metrics", metrics])


def one_run(started: Started, metrics: str, seconds: float, scrape: float) -> dict[str, Any]:
    cmd: dict[str, Any] = {"cmd": "run", "scenario": "write-100", "seconds": seconds, "max_ops": 10_000_000}
    if metrics == "on" and scrape > 0:
        cmd["scrape"] = scrape
    result = started.driver.ask(cmd, seconds + 120)
    if "error" in result:
        raise RuntimeError(f"write-100 with metrics {metrics} failed: {result['error']}")
    return result


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover - not on Linux
        return float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks metrics", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="pairs of runs (default 7, --quick 2)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per run (default 4, --quick 1)")
    parser.add_argument("--warmup", type=float, default=None, help="unmeasured seconds per cluster first (default 3)")
    parser.add_argument("--scrape", type=float, default=1.0, help="render /metrics every S seconds with metrics on")
    parser.add_argument("--quick", action="store_true", help="a smoke run whose figure means nothing")
    parser.add_argument("--dir", default=".", help="where the data directories go (the data disk)")
    ns = parser.parse_args(argv)
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        print("prometheus-client is not installed: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    rounds = 2 if ns.quick and ns.rounds == 7 else ns.rounds
    seconds = ns.seconds if ns.seconds is not None else (1.0 if ns.quick else 4.0)
    print(f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.platform()}")
    print(f"load average (1 min) before: {load_average():.2f}")
    print(f"write-100 on emb-3, {rounds} rounds of {seconds:g} s per side, /metrics rendered every "
          f"{ns.scrape:g} s with metrics on")
    warmup = ns.warmup if ns.warmup is not None else (0.5 if ns.quick else 3.0)
    figures: dict[str, list[float]] = {"on": [], "off": []}
    scrape_ms: list[float] = []
    children: list[Child] = []
    root = tempfile.mkdtemp(prefix="dengine-metrics-bench-", dir=ns.dir)
    try:
        clusters: dict[str, Started] = {}
        for mode in ("on", "off"):
            workdir = os.path.join(root, mode)
            os.makedirs(workdir)
            clusters[mode] = start_cluster(workdir, children, mode)
            progress(f"metrics {mode}: cluster ready; warming up for {warmup:g} s")
            # The warm-up scrapes too: the first render imports prometheus-client (~60 ms).
            one_run(clusters[mode], mode, warmup, min(ns.scrape, warmup / 2))
        for r in range(rounds):
            order = ("on", "off") if r % 2 == 0 else ("off", "on")
            for mode in order:
                res = one_run(clusters[mode], mode, seconds, ns.scrape)
                figures[mode].append(res["throughput"])
                if mode == "on" and res.get("scrapes"):
                    scrape_ms.append(res["scrape_ms"])
                progress(f"round {r + 1}/{rounds} metrics {mode:<3} {res['throughput']:>9,.0f} writes/s "
                         f"p50 {res.get('p50_ms', 0):.2f} ms p99 {res.get('p99_ms', 0):.1f} ms"
                         + (f", {res['scrapes']} scrapes of {res['scrape_ms']:.1f} ms" if res.get("scrapes") else ""))
    finally:
        stop_all(children)
        shutil.rmtree(root, ignore_errors=True)
    on, off = statistics.median(figures["on"]), statistics.median(figures["off"])
    overhead = (off - on) / off * 100 if off else float("nan")
    print()
    print(f"{'round':>5} {'metrics on':>12} {'metrics off':>12}")
    for r, (a, b) in enumerate(zip(figures["on"], figures["off"]), 1):
        print(f"{r:>5} {a:>12,.0f} {b:>12,.0f}")
    print(f"{'median':>5} {on:>12,.0f} {off:>12,.0f}")
    if scrape_ms:
        print(f"one /metrics render on the leader: {statistics.median(scrape_ms):.2f} ms (median of run means)")
    verdict = "met" if overhead <= GOAL else "NOT met"
    print(f"write-100 emb-3, metrics on vs off: {overhead:+.1f}% slower (goal <= {GOAL:g}%: {verdict})")
    print(f"load average (1 min) after: {load_average():.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How cost grows with data: memory, snapshots, restart, catch-up and writes at N keys.

    python -m benchmarks growth [--quick] [--keys N] [--seconds S] [--callers C] [--snapshot-threshold E]
                                [--max-frame-size B] [--py-spy] [--skip-cluster] [--dir DIR] [--out DIR]

N keys (default 1,000,000; ``--quick`` 100,000) named ``/g/%08d``, each with its
own 256-byte value (distinct objects, as an application's values are). Every
engine runs in a child process of its own (``python -m benchmarks.growth
_node ...``, spoken to in JSON lines like benchmarks/node_proc.py), with
FileStorage in a temporary directory under ``--dir``:

1. Memory per key: RSS (``/proc/self/statm``) after ``gc.collect()`` minus
   RSS before, divided by N -- in a fresh process holding a bare dict of the
   same keys and values, and in a fresh 1-node engine loaded by ``--callers``
   concurrent puts (the load time is reported too); also in the restarted
   engines of 2 and 3 below (log compacted, snapshot held).
2. Snapshot save: the runtime's own snapshot (what ``raft.snapshot_threshold``
   entries applied set off: freeze on the apply path, encode and write in
   worker threads, compact the log), set off by small transactions (one
   entry each) on the engine restarted from the WAL. Snapshot load: the
   restart from that snapshot, and the two steps of it timed apart (read +
   verify the file; decode + build the store).
3. Restart: the loaded engine stopped and opened again on its data dir, from
   ``open_engine`` until ready and a linearizable count of the keys says N:
   once with the whole load as WAL tail (no snapshot yet), once with the
   snapshot covering all but a few entries.
4. Catch-up by snapshot: a 3-node cluster loaded with N keys; a new member
   joins (added as a learner, started with an empty data directory and
   ``cluster.join``); the time until its applied index reaches the leader's.
   (A follower restarted with its data wiped under the same id is not a
   valid Raft member: the leader keeps its old match index and never sends
   it a snapshot; as in etcd, such a member must be removed and re-added.)
5. write-100 on that cluster (100 callers overwriting the N keys with 256 B
   values): (a) no snapshot; (b) while the nodes take the runtime snapshot
   (the leader's applied index is first brought to one second of (a)'s
   entries short of ``snapshot_threshold``, so it starts about a second into
   the run -- the followers reach the same index and snapshot too); (c) while another new
   member installs the leader's snapshot. Throughput, p50/p99/p99.9, the
   longest gap between two completed writes and the event loop's worst lag
   (a task sleeping 5 ms, in the leader's process), against the election
   timeout; with ``--py-spy``, where the leader's process held the GIL.

The engines keep the default ``transport.max_frame_size`` (16 MiB): a
snapshot travels in parts of at most 1 MiB (docs/peer-protocol.md), whatever
its size. ``--max-frame-size`` sets another.

Progress goes to stderr. The report (Markdown, JSON, PNG chart when
matplotlib is installed) goes to ``--out`` (default benchmarks/results/),
named ``growth`` for a full run and ``growth-quick`` for ``--quick``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from benchmarks.histogram import Histogram
from benchmarks.procs import Child, free_ports, stop_all
from benchmarks.suite import RESULTS_DIR, progress
from benchmarks.workload import VALUE, VALUE_SIZE

KEYS_FULL = 1_000_000
KEYS_QUICK = 100_000
PREFIX = b"/g/"
PROBE_PERIOD = 0.005  # seconds: the loop-lag probe's sleep
ERROR_BACKOFF = 0.01  # seconds a writer waits after a failed write
# Goals (the issue): memory <= 2x a bare dict; restart <= 5 s at 1 M keys;
# p99 during a snapshot <= 3x without; no stall longer than an election timeout.
GOAL_MEMORY_RATIO = 2.0
GOAL_RESTART_S = 5.0
GOAL_P99_RATIO = 3.0


def key(i: int) -> bytes:
    return b"/g/%08d" % i


def value(i: int) -> bytes:
    """256 bytes, different for every key."""
    return VALUE[:-8] + b"%08d" % (i % 100_000_000)


assert len(value(0)) == VALUE_SIZE


def rss() -> int:
    """Resident set size of this process, in bytes."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak is the best the stdlib offers
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def settled_rss() -> int:
    gc.collect()
    return rss()


def trimmed_rss() -> int | None:
    """RSS after glibc's ``malloc_trim(0)`` handed freed heap memory back to
    the system (None where there is no glibc): what is live, as opposed to
    what the allocator kept after frees."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return None
    return rss()


# =============================================================================
# Child processes
# =============================================================================


def dict_child(n: int) -> int:
    """A bare dict of the same keys and values, measured like the engine."""
    from benchmarks.node_proc import emit

    before = settled_rss()
    started = time.perf_counter()
    d = {key(i): value(i) for i in range(n)}
    took = time.perf_counter() - started
    after = settled_rss()
    emit({"event": "dict", "keys": len(d), "rss_before": before, "rss_after": after, "build_s": took,
          "rss_trimmed": trimmed_rss()})
    return 0


class LoopProbe:
    """A task that sleeps PROBE_PERIOD and records how late it woke (the
    event loop's lag), and, on the same beat, when the node's snapshot task
    ran and when it installed a leader's snapshot. Reads two attributes of
    the runtime (``_snapshotting``, ``installed_snapshots``): the engine has
    no public signal for either."""

    def __init__(self, engine: Any) -> None:
        self.node = engine._node
        self.lags: list[tuple[float, float]] = []  # (time.monotonic() woken, lag s)
        self.events: list[tuple[float, str]] = []
        #: (starts, ends, began, finished) of the last write run, for windows known only afterwards.
        self.last_run: tuple[list[float], list[float], float, float] = ([], [], 0.0, 0.0)

    async def run(self) -> None:
        import trio

        node = self.node
        clock = time.monotonic
        snapping = node._snapshotting
        installed = node.installed_snapshots
        while True:
            t = clock()
            await trio.sleep(PROBE_PERIOD)
            now = clock()
            self.lags.append((now, max(0.0, now - t - PROBE_PERIOD)))
            if node._snapshotting != snapping:
                snapping = node._snapshotting
                self.events.append((now, "snapshot-start" if snapping else "snapshot-end"))
            if node.installed_snapshots != installed:
                installed = node.installed_snapshots
                self.events.append((now, "installed"))

    def worst(self, since: float, until: float | None = None) -> dict[str, float]:
        lags = [lag for t, lag in self.lags if t >= since and (until is None or t <= until)]
        if not lags:
            return {"max_lag_ms": 0.0, "lag_over_100ms_s": 0.0}
        return {"max_lag_ms": max(lags) * 1e3, "lag_over_100ms_s": sum(x for x in lags if x > 0.1)}

    def events_since(self, since: float) -> list[tuple[float, str]]:
        return [(t, what) for t, what in self.events if t >= since]

    def trim(self, before: float) -> None:
        self.lags = [x for x in self.lags if x[0] >= before]


def node_config(args: argparse.Namespace) -> Any:
    import attrs

    from benchmarks.node_proc import build_config

    cfg = build_config(args)
    if args.snapshot_threshold:
        cfg = attrs.evolve(cfg, raft=attrs.evolve(cfg.raft, snapshot_threshold=args.snapshot_threshold))
    if args.max_frame_size:
        cfg = attrs.evolve(cfg, transport=attrs.evolve(cfg.transport, max_frame_size=args.max_frame_size))
    if args.join:
        cfg = attrs.evolve(cfg, cluster=attrs.evolve(cfg.cluster, join=True))
    return cfg


async def node_child(args: argparse.Namespace) -> None:
    import trio

    import dengine
    from benchmarks.node_proc import emit

    cfg = node_config(args)
    rss_before_open = settled_rss()
    opened = time.monotonic()
    async with dengine.open_engine(config=cfg) as engine:
        entered = time.monotonic()
        probe = LoopProbe(engine)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe.run)
            ready: dict[str, Any] = {"event": "ready", "id": cfg.node_id, "opened_at": opened,
                                     "enter_s": entered - opened, "rss_before_open": rss_before_open}
            if not args.join:
                await engine.wait_ready(timeout=600)
                ready["ready_s"] = time.monotonic() - opened
                found = await engine.client.scan_prefix(PREFIX, count_only=True, timeout=600)
                ready["served_s"] = time.monotonic() - opened
                ready["keys"] = found.count
            ready["leader"] = engine.is_leader()
            ready["applied"] = engine.applied_index
            ready["last_snapshot"] = engine.status().last_snapshot_index
            emit(ready)
            while True:
                line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
                if not line:
                    break
                cmd = json.loads(line)
                if cmd.get("cmd") == "stop":
                    emit({"event": "stopping"})
                    break
                try:
                    emit(await node_command(engine, probe, cmd, opened))
                except Exception as exc:  # reported to the parent, which decides
                    emit({"error": f"{type(exc).__name__}: {exc}"})
            nursery.cancel_scope.cancel()


def node_status(engine: Any) -> dict[str, Any]:
    node = engine._node
    st = engine.status()
    return {"id": st.node_id, "leader": engine.is_leader(), "leader_id": st.leader_id, "term": st.term,
            "applied": st.applied_index, "commit": st.commit_index, "last_snapshot": st.last_snapshot_index,
            "snapshotting": node._snapshotting, "installed": node.installed_snapshots,
            "keys": node.kv.key_count(), "threshold": engine.config.raft.snapshot_threshold}


async def node_command(engine: Any, probe: LoopProbe, cmd: dict[str, Any], opened: float) -> dict[str, Any]:
    import trio

    what = cmd["cmd"]
    if what == "status":
        return node_status(engine)
    if what == "rss":
        return {"rss": settled_rss(), "trimmed": trimmed_rss()}
    if what == "load":
        return await load_keys(engine, int(cmd["n"]), int(cmd["callers"]))
    if what == "position":
        return await position(engine, int(cmd["remaining"]))
    if what == "snapshot":
        return await runtime_snapshot(engine, probe)
    if what == "write":
        return await write_run(engine, probe, cmd)
    if what == "wait_applied":
        deadline = time.monotonic() + float(cmd["timeout"])
        while engine.applied_index < int(cmd["index"]):
            if time.monotonic() > deadline:
                return {"error": f"applied index {engine.applied_index} < {cmd['index']} after {cmd['timeout']} s",
                        **node_status(engine)}
            await trio.sleep(0.005)
        now = time.monotonic()
        return {"since_open_s": now - opened, "at": now, **node_status(engine)}
    if what == "add_member":
        m = await engine.add_member(cmd["address"], node_id=int(cmd["node_id"]), learner=True, timeout=60)
        return {"node_id": m.node_id}
    if what == "remove_member":
        await engine.remove_member(int(cmd["node_id"]), timeout=60)
        return {"removed": int(cmd["node_id"])}
    if what == "events":
        return {"events": probe.events_since(float(cmd.get("since", 0))), "opened_at": opened}
    if what == "window":
        starts, ends, began, finished = probe.last_run
        return window_stats(starts, ends, float(cmd["from"]), float(cmd["to"]), began, finished)
    if what == "snapload":
        return await trio.to_thread.run_sync(time_snapshot_load, engine.config.data_dir)
    return {"error": f"unknown command {what!r}"}


async def load_keys(engine: Any, n: int, callers: int) -> dict[str, Any]:
    """Put keys 0..n-1 with ``callers`` concurrent callers (the suite's load driver)."""
    import trio

    from benchmarks.node_proc import emit
    from benchmarks.workload import drive_trio

    put = engine.client.put
    applied0 = engine.applied_index

    async def op(i: int) -> None:
        await put(key(i), value(i))

    async def report(started: float) -> None:
        while True:
            await trio.sleep(2.0)
            done = engine._node.kv.key_count()
            emit({"event": "progress", "text": f"{done:,} of {n:,} keys in {time.monotonic() - started:.0f} s"})

    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(report, started)
        run = await drive_trio(op, callers, 3600.0, n)
        nursery.cancel_scope.cancel()
    return {"keys": n, "seconds": run.elapsed, "ops": run.ops, "errors": run.errors,
            "error_samples": run.error_samples, "rate": run.ops / run.elapsed if run.elapsed else 0.0,
            "entries": engine.applied_index - applied0, "p99_ms": run.hist.percentile(99) * 1e3,
            "last_snapshot": engine.status().last_snapshot_index}


async def position(engine: Any, remaining: int) -> dict[str, Any]:
    """Write one-entry transactions until the next runtime snapshot is
    ``remaining`` entries away (on the leader; a transaction is always an
    entry of its own)."""
    import trio

    from dengine import Op

    node = engine._node
    threshold = node.snapshot_thresholds()[0]  # this node's, staggered by its id
    started = time.monotonic()
    written = 0

    def left() -> int:
        return int(threshold - (node.kv.applied_index - node.last_snapshot_index))

    async def writer(n: int) -> None:
        nonlocal written
        while left() > remaining + 128 and not node._snapshotting:
            await engine.client.txn(success=[Op.put(b"/s/%d" % n, b"x")])
            written += 1

    async with trio.open_nursery() as nursery:
        for n in range(64):
            nursery.start_soon(writer, n)
    last_issued = time.monotonic()
    while left() > remaining and not node._snapshotting:
        last_issued = time.monotonic()
        await engine.client.txn(success=[Op.put(b"/s/0", b"x")])
        written += 1
    return {"entries": written, "seconds": time.monotonic() - started, "left": left(), "last_issued": last_issued,
            **node_status(engine)}


def _snapshot_seconds(engine: Any) -> float:
    h = engine.statistics().snapshot_save_seconds
    return h.sum if h is not None else 0.0


async def runtime_snapshot(engine: Any, probe: LoopProbe) -> dict[str, Any]:
    """Set off the runtime's snapshot (one-entry transactions until
    ``snapshot_threshold`` entries were applied since the last) and wait
    until it is saved and the log compacted."""
    import trio

    node = engine._node
    before_index = node.last_snapshot_index
    before_s = _snapshot_seconds(engine)
    pos = await position(engine, 0)
    # The entry that crossed the threshold was issued at pos["last_issued"]:
    # its apply, the freeze and the snapshot task follow (on one node a
    # write takes a millisecond or two: that is the error of this start).
    started = pos["last_issued"]
    with trio.fail_after(600):
        while node.last_snapshot_index == before_index or node._snapshotting:
            await trio.sleep(0.001)
    done = time.monotonic()
    path = snapshot_path(engine.config.data_dir)
    return {"index": node.last_snapshot_index, "entries_written": pos["entries"],
            "wall_s": done - started, "engine_save_s": _snapshot_seconds(engine) - before_s,
            "bytes": os.path.getsize(path) if path else 0, **probe.worst(started, done)}


def snapshot_path(data_dir: str) -> str | None:
    from dengine.storage.snapshot import parse_snapshot_name

    snaps = sorted((parse_snapshot_name(n) or 0, n) for n in os.listdir(data_dir) if parse_snapshot_name(n))
    return os.path.join(data_dir, snaps[-1][1]) if snaps else None


def time_snapshot_load(data_dir: str) -> dict[str, Any]:
    """The two steps of opening a snapshot, as a restart takes them: read and
    verify the file (FileStorage), then decode the image and build the store
    (the node)."""
    from dengine.kv.snapshot import restore, unwrap_snapshot_data
    from dengine.storage.snapshot import read_snapshot_file

    path = snapshot_path(data_dir)
    if path is None:
        return {"error": "no snapshot file in the data directory"}
    t0 = time.perf_counter()
    snap = read_snapshot_file(path)
    t1 = time.perf_counter()
    store = restore(unwrap_snapshot_data(snap.data, source=path))
    t2 = time.perf_counter()
    return {"bytes": os.path.getsize(path), "read_s": t1 - t0, "restore_s": t2 - t1, "keys": store.key_count()}


async def write_run(engine: Any, probe: LoopProbe, cmd: dict[str, Any]) -> dict[str, Any]:
    """write-100 over the loaded keys: the suite's closed-loop driver, each
    write also stamped (start, end) for the gaps and for the window figures."""
    import trio

    from benchmarks.workload import drive_trio

    n, offset, seconds = int(cmd["n"]), int(cmd["offset"]), float(cmd["seconds"])
    put = engine.client.put
    starts: list[float] = []
    ends: list[float] = []
    clock = time.monotonic
    node = engine._node
    term0, leader_changes0 = engine.current_term(), node.stats.leader_changes
    snap0 = node.last_snapshot_index

    async def op(i: int) -> None:
        t0 = clock()
        try:
            await put(key((offset + i) % n), value(offset + i))
        except Exception:
            # Counted by the driver; a caller backs off as an application
            # would, instead of spinning on NotLeader while there is no leader.
            await trio.sleep(ERROR_BACKOFF)
            raise
        starts.append(t0)
        ends.append(clock())

    began = clock()
    run = await drive_trio(op, int(cmd["callers"]), seconds, 50_000_000)
    finished = clock()
    gap, gap_at, last = 0.0, 0.0, began
    for t in [*ends, finished]:  # in completion order; a run that ends with no write completing is a gap too
        if t - last > gap:
            gap, gap_at = t - last, last - began
        last = t
    res: dict[str, Any] = {
        "ops": run.ops, "errors": run.errors, "seconds": run.elapsed,
        "throughput": run.hist.count / run.elapsed if run.elapsed else 0.0, **run.hist.summary(),
        "max_gap_ms": gap * 1e3, "max_gap_at_s": gap_at, **probe.worst(began, finished),
        "term_changed": engine.current_term() != term0, "leader_changes": node.stats.leader_changes - leader_changes0,
        "still_leader": engine.is_leader(), "snapshot_taken": node.last_snapshot_index != snap0,
        "began_at": began, "finished_at": finished, "histogram": run.hist.to_dict(),
        "events": [(t - began, w) for t, w in probe.events_since(began)],
    }
    if run.error_samples:
        res["error_samples"] = run.error_samples
    windows: list[tuple[float, float]] = []
    snap_window = _window(probe.events_since(began), "snapshot-start", "snapshot-end", finished)
    if snap_window:
        windows.append(snap_window)
        res["snapshot_window_s"] = [snap_window[0] - began, snap_window[1] - began]
    res["windows"] = [window_stats(starts, ends, w0, w1, began, finished) for w0, w1 in windows]
    probe.trim(began)
    probe.last_run = (starts, ends, began, finished)
    return res


def _window(events: list[tuple[float, str]], start: str, end: str, default_end: float) -> tuple[float, float] | None:
    t0 = next((t for t, w in events if w == start), None)
    if t0 is None:
        return None
    t1 = next((t for t, w in events if w == end and t >= t0), default_end)
    return t0, t1


def window_stats(starts: list[float], ends: list[float], w0: float, w1: float, began: float,
                 finished: float) -> dict[str, Any]:
    """The writes that were in flight at some moment of [w0, w1] (clipped
    to the run)."""
    w0, w1 = max(w0, began), min(w1, finished)
    h = Histogram()
    last, gap = w0, 0.0
    for s, e in zip(starts, ends):
        if s < w1 and e > w0:
            h.record(e - s)
    for e in ends:
        if w0 <= e <= w1:
            gap = max(gap, e - last)
            last = e
    span = max(w1 - w0, 1e-9)
    return {"from_s": w0 - began, "to_s": w1 - began, "ops": h.count, "throughput": h.count / span,
            "max_gap_ms": max(gap, w1 - last if last >= w0 else 0.0) * 1e3, **h.summary()}


# =============================================================================
# The parent: runs the children, collects the figures
# =============================================================================


class Node:
    """One engine child and what the parent knows of it."""

    def __init__(self, child: Child, ready: dict[str, Any], spawned: float) -> None:
        self.child = child
        self.ready = ready
        self.spawned = spawned  # time.monotonic() of the Popen

    def ask(self, cmd: dict[str, Any], timeout: float, label: str = "") -> dict[str, Any]:
        """One command; progress lines on the way are printed; errors raise."""
        self.child.send(cmd)
        deadline = time.monotonic() + timeout
        while True:
            msg = self.child.recv(max(deadline - time.monotonic(), 0.01))
            if msg.get("event") == "progress":
                progress(f"{label or cmd['cmd']}: {msg['text']}")
                continue
            if "error" in msg:
                raise RuntimeError(f"{cmd['cmd']} on node {self.ready.get('id')}: {msg['error']}")
            return msg


class Run:
    """Settings of this run and every child it started."""

    def __init__(self, ns: argparse.Namespace, workdir: str) -> None:
        self.ns = ns
        self.workdir = workdir
        self.children: list[Child] = []
        self.logs: list[str] = []
        self.frame_size = 0  # transport.max_frame_size for the engines (0: their default)

    def node_args(self, d: str, node_id: int = 1, cluster: str = "", join: bool = False) -> list[str]:
        args = ["_node", "--id", str(node_id), "--dir", d]
        if cluster:
            args += ["--cluster", cluster]
        if self.ns.snapshot_threshold:
            args += ["--snapshot-threshold", str(self.ns.snapshot_threshold)]
        if self.frame_size:
            args += ["--max-frame-size", str(self.frame_size)]
        return args + (["--join"] if join else [])

    def spawn(self, name: str, args: list[str]) -> tuple[Child, float]:
        log = os.path.join(self.workdir, f"{name}.log")
        self.logs.append(log)
        spawned = time.monotonic()
        child = Child.python("benchmarks.growth", args, log)
        self.children.append(child)
        return child, spawned

    def start_node(self, name: str, d: str, timeout: float, **kw: Any) -> Node:
        child, spawned = self.spawn(name, self.node_args(d, **kw))
        ready = child.recv(timeout)
        ready["process_ready_s"] = time.monotonic() - spawned
        return Node(child, ready, spawned)

    def stop(self, node: Node, grace: float = 120.0) -> float:
        started = time.monotonic()
        node.child.stop(grace)
        self.children.remove(node.child)
        return time.monotonic() - started


def measure_dict(run: Run, n: int) -> dict[str, Any]:
    child, _ = run.spawn("dict", ["_dict", "--keys", str(n)])
    try:
        res = child.recv(300)
    finally:
        child.stop(30)
        run.children.remove(child)
    res["per_key"] = (res["rss_after"] - res["rss_before"]) / n
    res["per_key_trimmed"] = None if res["rss_trimmed"] is None else (res["rss_trimmed"] - res["rss_before"]) / n
    return res


def single_node(run: Run, data: dict[str, Any], n: int) -> None:
    """Memory (loaded; restarted), snapshot save and load, restart times."""
    ns = run.ns
    d = os.path.join(run.workdir, "single")
    timeout = 120 + n / 1000

    progress("1 node: starting a fresh engine")
    node = run.start_node("single-load", d, 120)
    rss0 = node.ask({"cmd": "rss"}, 60)["rss"]
    progress(f"1 node: loading {n:,} keys with {ns.callers} concurrent callers")
    load = node.ask({"cmd": "load", "n": n, "callers": ns.callers}, timeout, "1 node: load")
    status = node.ask({"cmd": "status"}, 30)
    data["load_1"] = load
    data["memory"]["engine_loaded"] = mem = memory_row(node, rss0, n)
    mem.update(entries=status["applied"], last_snapshot=status["last_snapshot"])
    progress(f"1 node: loaded in {load['seconds']:.1f} s ({load['rate']:,.0f} keys/s, {load['entries']:,} entries, "
             f"{load['errors']} errors); {mem['per_key']:,.0f} B/key resident")
    data["stop_after_load_s"] = run.stop(node)

    progress("1 node: restart with the whole load as WAL tail")
    node = run.start_node("single-restart-wal", d, timeout)
    data["restart_wal"] = restart_figures(node, n)
    progress(f"1 node: restart (WAL tail of {node.ready['applied']:,} entries): ready in "
             f"{node.ready['ready_s']:.2f} s, {node.ready['keys']:,} keys served in {node.ready['served_s']:.2f} s")
    progress("1 node: setting off the runtime snapshot (one-entry transactions up to raft.snapshot_threshold)")
    snap = node.ask({"cmd": "snapshot"}, timeout)
    data["snapshot_save"] = snap
    data["memory"]["engine_after_snapshot"] = memory_row(node, node.ready["rss_before_open"], n)
    progress(f"1 node: snapshot at index {snap['index']:,} ({snap['bytes'] / 1e6:.1f} MB) saved in "
             f"{snap['wall_s']:.2f} s (engine's own timing {snap['engine_save_s']:.2f} s); worst loop lag "
             f"{snap['max_lag_ms']:.0f} ms")
    run.stop(node)

    progress("1 node: restart from the snapshot")
    node = run.start_node("single-restart-snap", d, timeout)
    data["restart_snapshot"] = restart_figures(node, n)
    data["memory"]["engine_restarted_from_snapshot"] = memory_row(node, node.ready["rss_before_open"], n)
    progress(f"1 node: restart from the snapshot: ready in {node.ready['ready_s']:.2f} s, keys served in "
             f"{node.ready['served_s']:.2f} s")
    data["snapshot_load"] = node.ask({"cmd": "snapload"}, timeout)
    sl = data["snapshot_load"]
    progress(f"1 node: snapshot file read + verified in {sl['read_s']:.2f} s, decoded into a store in "
             f"{sl['restore_s']:.2f} s")
    run.stop(node)
    shutil.rmtree(d, ignore_errors=True)


def memory_row(node: Node, before: int, n: int) -> dict[str, Any]:
    r = node.ask({"cmd": "rss"}, 300)
    trimmed = r["trimmed"]
    return {"rss_before": before, "rss_after": r["rss"], "per_key": (r["rss"] - before) / n,
            "rss_trimmed": trimmed, "per_key_trimmed": None if trimmed is None else (trimmed - before) / n}


def restart_figures(node: Node, n: int) -> dict[str, Any]:
    r = node.ready
    if r.get("keys") != n:
        raise RuntimeError(f"the restarted engine serves {r.get('keys')} keys, not {n}")
    return {k: r[k] for k in ("enter_s", "ready_s", "served_s", "process_ready_s", "keys", "applied", "last_snapshot")}


def start_cluster(run: Run, dirs: list[str], ports: list[int]) -> tuple[list[Node], str]:
    cluster = ",".join(f"{i + 1}=127.0.0.1:{p}" for i, p in enumerate(ports))
    children = []
    for i, d in enumerate(dirs):
        children.append(run.spawn(f"n{i + 1}", run.node_args(d, i + 1, cluster)))
    nodes = []
    for child, spawned in children:
        ready = child.recv(120)
        ready["process_ready_s"] = time.monotonic() - spawned
        nodes.append(Node(child, ready, spawned))
    return nodes, cluster


def leader_of(nodes: list[Node], timeout: float = 30) -> Node:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in nodes:
            if node.ask({"cmd": "status"}, 30)["leader"]:
                return node
        time.sleep(0.1)
    raise RuntimeError(f"no leader within {timeout:g} s")


def wait_all_applied(nodes: list[Node], index: int, timeout: float) -> None:
    for node in nodes:
        node.ask({"cmd": "wait_applied", "index": index, "timeout": timeout}, timeout + 30)


def wait_no_snapshot_running(nodes: list[Node], timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        states = [node.ask({"cmd": "status"}, 30) for node in nodes]
        if not any(s["snapshotting"] for s in states) or time.monotonic() > deadline:
            return states
        time.sleep(0.1)


def current_leader(nodes: list[Node], leader: Node, during: str, out: dict[str, Any]) -> Node:
    """The leader now (after elections, if any), noted in ``out``."""
    now = leader_of(nodes, 120)
    if now is not leader:
        progress(f"3 nodes: the leader changed during {during}: node {leader.ready['id']} -> node {now.ready['id']}")
        out.setdefault("leader_changes", []).append([during, leader.ready["id"], now.ready["id"]])
    return now


def leader_ask(nodes: list[Node], leader: Node, cmd: dict[str, Any], out: dict[str, Any]) -> tuple[Node, dict[str, Any]]:
    """``cmd`` on the leader, asked again of the new one if leadership moved."""
    for attempt in range(5):
        try:
            return leader, leader.ask(cmd, 120)
        except RuntimeError as exc:
            if "NotLeader" not in str(exc) or attempt == 4:
                raise
            time.sleep(1.0)
            leader = current_leader(nodes, leader, f"{cmd['cmd']} ({exc})", out)
    raise AssertionError("unreachable")


def max_term(nodes: list[Node]) -> int:
    return max(int(node.ask({"cmd": "status"}, 120)["term"]) for node in nodes)


def write(run: Run, nodes: list[Node], leader: Node, label: str, n: int, offset: int, seconds: float, callers: int,
          profile: str = "") -> dict[str, Any]:
    """One write run on the leader; with ``--py-spy``, ``profile`` names a
    py-spy recording of the leader's process for the run's length.
    ``elections``: how far the highest term of the voters moved meanwhile."""
    term0 = max_term(nodes)
    # (b): every voter snapshots, so every voter is recorded; else the leader.
    spies = profile_nodes(run, nodes if profile == "b" else [leader], leader, seconds + 1, profile)
    res = leader.ask({"cmd": "write", "n": n, "offset": offset, "seconds": seconds, "callers": callers}, seconds + 180)
    if spies:
        res["py_spy"] = finish_profiles(run, spies)
    res["elections"] = max_term(nodes) - term0
    progress(f"3 nodes: write-{callers} {label}: {res['throughput']:,.0f} ops/s, p99 {res['p99_ms']:.1f} ms, "
             f"longest gap {res['max_gap_ms']:.0f} ms, worst loop lag {res['max_lag_ms']:.0f} ms, "
             f"errors {res['errors']}, elections {res['elections']}")
    return res


def three_nodes(run: Run, data: dict[str, Any], n: int) -> None:
    """write-100 without / during snapshots, and catch-up of joining members."""
    ns = run.ns
    seconds, callers = ns.seconds, 100
    dirs = [os.path.join(run.workdir, f"n{i + 1}") for i in range(3)]
    progress("3 nodes: starting")
    ports = free_ports(5)  # three voters, two members that join later
    nodes, cluster = start_cluster(run, dirs, ports[:3])
    leader = leader_of(nodes)
    out: dict[str, Any] = {"leader": leader.ready["id"]}
    data["cluster"] = out
    timeout = 120 + n / 1000

    progress(f"3 nodes: loading {n:,} keys on the leader (node {leader.ready['id']}), {ns.callers} callers")
    out["load"] = load = leader.ask({"cmd": "load", "n": n, "callers": ns.callers}, timeout, "3 nodes: load")
    progress(f"3 nodes: loaded in {load['seconds']:.1f} s ({load['rate']:,.0f} keys/s, {load['errors']} errors)")
    st = leader.ask({"cmd": "status"}, 30)
    wait_all_applied(nodes, st["applied"], timeout)
    out["after_load"] = st
    # The load's last snapshots (set off by bytes) may still be encoding: (a) must run without one.
    wait_no_snapshot_running(nodes, 120)

    # Unmeasured warm-up (the first WAL segments are being zero-filled meanwhile).
    warm = leader.ask({"cmd": "write", "n": n, "offset": 0, "seconds": min(seconds, 2.0), "callers": callers}, 180)
    offset = warm["ops"]
    # (a) no snapshot: none is due within this run (checked after it).
    before_plain = leader.ask({"cmd": "status"}, 30)["applied"]
    out["write_plain"] = plain = write(run, nodes, leader, "(a) no snapshot", n, offset, seconds, callers, "a")
    offset += plain["ops"]
    out["after_plain"] = wait_no_snapshot_running(nodes, 10)

    # (b) the runtime snapshot about 1 s into the run (and on the followers at the same index).
    lead_st = leader.ask({"cmd": "status"}, 30)
    entries_per_s = (lead_st["applied"] - before_plain) / max(plain["seconds"], 1e-9)
    remaining = max(1, int(entries_per_s * 1.0))
    progress(f"3 nodes: bringing the leader to {remaining} entries before its next snapshot "
             f"({entries_per_s:,.0f} entries/s under write-100)")
    out["position"] = leader.ask({"cmd": "position", "remaining": remaining}, timeout)
    snap_s = data.get("snapshot_save", {}).get("wall_s", 1.0)
    during = max(seconds, 1.0 + 3 * snap_s + 1.0)
    out["write_snapshot"] = snap = write(run, nodes, leader, "(b) during the nodes' snapshot", n, offset, during, callers,
                                         "b")
    offset += snap["ops"]
    out["after_snapshot"] = wait_no_snapshot_running(nodes, timeout)
    if not snap.get("snapshot_taken"):
        progress("3 nodes: (b) the leader took no snapshot during the run")

    # 4. a new member (a learner) joins, with no load: caught up by snapshot.
    leader = current_leader(nodes, leader, "(b)", out)
    lead_st = leader.ask({"cmd": "status"}, 30)
    progress(f"3 nodes: node 4 joins as a learner (leader node {lead_st['id']}: applied index {lead_st['applied']:,}, "
             f"snapshot at {lead_st['last_snapshot']:,})")
    term0 = max_term(nodes)
    leader, node = join(run, nodes, leader, 4, ports[3], cluster, out)
    spies = profile_nodes(run, nodes, leader, 40, "catch-up")
    caught = node.ask({"cmd": "wait_applied", "index": lead_st["applied"], "timeout": timeout}, timeout + 30,
                      "3 nodes: catch-up")
    out["catch_up"] = cu = {"node": 4, "target_applied": lead_st["applied"], "since_open_s": caught["since_open_s"],
                            "since_spawn_s": caught["at"] - node.spawned, "installed": caught["installed"],
                            "process_ready_s": node.ready["process_ready_s"], "keys": caught["keys"]}
    progress(f"3 nodes: node 4 caught up {cu['since_open_s']:.2f} s after open_engine ({cu['since_spawn_s']:.2f} s "
             f"after its process started); snapshots installed: {cu['installed']}")
    cu["elections"] = max_term(nodes) - term0
    if spies:
        cu["py_spy"] = finish_profiles(run, spies)
    leader = current_leader(nodes, leader, "the catch-up", out)
    leader, _ = leader_ask(nodes, leader, {"cmd": "remove_member", "node_id": 4}, out)
    run.stop(node, 60)

    # (c) write-100 while another new member installs the snapshot: twice as
    # long as the catch-up above took (an install under load is slower),
    # within a minute.
    during = max(seconds, min(2 * cu["since_spawn_s"] + 2.0, 60.0))
    leader = current_leader(nodes, leader, "the removal of node 4", out)
    progress("3 nodes: node 5 joins as a learner; write-100 on the leader while it installs the snapshot")
    leader, node = join(run, nodes, leader, 5, ports[4], cluster, out)
    opened = node.ready["opened_at"]
    out["write_install"] = inst = write(run, nodes, leader, "(c) while a new member installs a snapshot", n, offset,
                                        during, callers, "c")
    ev = node.ask({"cmd": "events", "since": 0}, 30)
    installed_at = next((t for t, w in ev["events"] if w == "installed"), None)
    j_st = node.ask({"cmd": "status"}, 30)
    out["catch_up_under_load"] = {
        "node": 5, "installed": j_st["installed"],
        "install_done_since_open_s": None if installed_at is None else installed_at - opened,
        "install_done_since_spawn_s": None if installed_at is None else installed_at - node.spawned,
        "applied": j_st["applied"]}
    if installed_at is not None:
        w = leader.ask({"cmd": "window", "from": node.spawned, "to": installed_at}, 60)
        inst["install_window"] = w
        progress(f"3 nodes: node 5 installed the snapshot {installed_at - node.spawned:.2f} s after its process "
                 f"started; writes in flight meanwhile: p99 {w['p99_ms']:.1f} ms, longest gap {w['max_gap_ms']:.0f} ms")
    else:
        progress("3 nodes: node 5 had installed no snapshot by the end of the run")
    out["final"] = leader.ask({"cmd": "status"}, 30)


def profile_nodes(run: Run, nodes: list[Node], leader: Node, seconds: float,
                  name: str) -> list[tuple[str, Child, str]]:
    """With ``--py-spy``: a py-spy recording of each of ``nodes``."""
    if not run.ns.py_spy or not name:
        return []
    return [(f"node {node.ready['id']}" + (" (leader at the start)" if node is leader else ""),
             *start_py_spy(run, node.child.pid, seconds, f"{name}-{node.ready['id']}")) for node in nodes]


def finish_profiles(run: Run, spies: list[tuple[str, Child, str]]) -> dict[str, Any]:
    return {label: finish_py_spy(run, child, path) for label, child, path in spies}


def start_py_spy(run: Run, pid: int, seconds: float, name: str) -> tuple[Child, str]:
    path = os.path.join(run.workdir, f"py-spy-{name}.txt")
    child = Child(["py-spy", "record", "--pid", str(pid), "--gil", "--threads", "--nonblocking", "--format", "raw",
                   "--rate", "100", "--duration", str(int(seconds + 1.5)), "-o", path],
                  os.path.join(run.workdir, f"py-spy-{name}.log"), json_io=False)
    run.children.append(child)
    return child, path


def finish_py_spy(run: Run, child: Child, path: str) -> dict[str, Any]:
    """Where the leader's process held the GIL during the run: samples by
    thread (the trio loop is MainThread; worker threads run the encoding,
    the WAL writes and the snapshot saving), the most frequent innermost
    three frames of each."""
    if child.proc.poll() is None:
        child.proc.send_signal(signal.SIGINT)  # py-spy then writes what it has and exits
    try:
        child.proc.wait(60)
    except subprocess.TimeoutExpired:
        pass
    child.stop(5)
    run.children.remove(child)
    by_thread: dict[str, dict[str, int]] = {}
    by_dengine: dict[str, dict[str, int]] = {}
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as exc:
        return {"error": f"py-spy wrote no profile: {exc}"}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread = "loop (MainThread)" if "MainThread" in frames[0] else "worker threads"
        tail = " < ".join(re.sub(r":\d+\)", ")", f) for f in reversed(frames[-3:]))
        counts = by_thread.setdefault(thread, {})
        counts[tail] = counts.get(tail, 0) + int(count)
        # The innermost frame in dengine's own code: which of its steps it was.
        own = next((f for f in reversed(frames) if "(dengine/" in f), "(outside dengine)")
        own = re.sub(r":\d+\)", ")", own)
        counts = by_dengine.setdefault(thread, {})
        counts[own] = counts.get(own, 0) + int(count)

    def top(d: dict[str, dict[str, int]]) -> dict[str, list[tuple[str, int]]]:
        return {t: sorted(c.items(), key=lambda kv: -kv[1])[:8] for t, c in d.items()}

    return {"rate_hz": 100, "samples": {t: sum(c.values()) for t, c in by_thread.items()},
            "top": top(by_thread), "top_dengine": top(by_dengine)}


def join(run: Run, nodes: list[Node], leader: Node, node_id: int, port: int, cluster: str,
         out: dict[str, Any]) -> tuple[Node, Node]:
    """Add a learner on the leader, then start it with ``cluster.join``;
    returns the leader (it may have moved) and the new member."""
    address = f"127.0.0.1:{port}"
    leader, _ = leader_ask(nodes, leader, {"cmd": "add_member", "node_id": node_id, "address": address}, out)
    d = os.path.join(run.workdir, f"n{node_id}")
    child, spawned = run.spawn(f"n{node_id}", run.node_args(d, node_id, f"{cluster},{node_id}={address}", join=True))
    ready = child.recv(120)
    ready["process_ready_s"] = time.monotonic() - spawned
    return leader, Node(child, ready, spawned)


# =============================================================================
# Report
# =============================================================================


def log_notes(paths: list[str]) -> list[str]:
    """The children's log lines that explain a figure: snapshots, drops,
    warnings, elections. Repeated warnings (slow applies, unanswered or
    unreachable peers) are counted per process instead of listed."""
    wanted = re.compile(r"snapshot|dropped|WARNING|ERROR|slow|leader is|became the leader|no leader", re.I)
    repeated = {"slow applies": re.compile(r"applying \d+ committed entries"),
                "peer unanswered": re.compile(r"has not answered"), "peer unreachable": re.compile(r"cannot reach"),
                "connection failed": re.compile(r"connection to node \d+ at")}
    notes = []
    for path in paths:
        name = os.path.basename(path)
        counts = dict.fromkeys(repeated, 0)
        try:
            with open(path, errors="replace") as f:
                for line in f:
                    kind = next((k for k, rx in repeated.items() if rx.search(line)), None)
                    if kind is not None:
                        counts[kind] += 1
                    elif wanted.search(line):
                        notes.append(f"{name}: {line.strip()[:300]}")
        except OSError:
            continue
        if any(counts.values()):
            notes.append(f"{name}: (" + ", ".join(f"{k}: {v} warnings" for k, v in counts.items() if v) + ")")
    return notes[:400]


_SAVED = re.compile(r"^(\S+ [\d:,]+) .*node (\d+): snapshot at index (\d+) saved \((\d+) bytes, encoded and written "
                    r"in ([\d.]+) s\)")
_INSTALLED = re.compile(r"^(\S+ [\d:,]+) .*node (\d+): installed the leader's snapshot at index (\d+) \(term \d+, "
                        r"(\d+) bytes\) in ([\d.]+) s")
_LED = re.compile(r"^(\S+ [\d:,]+) .*node (\d+): became the leader in term (\d+)")


def engine_log_figures(paths: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Snapshots saved and installed, and leaders elected, as the engines
    logged them (their own timings)."""
    out: dict[str, list[dict[str, Any]]] = {"snapshots": [], "elected": []}
    for path in paths:
        proc = os.path.basename(path).removesuffix(".log")
        try:
            with open(path, errors="replace") as f:
                for line in f:
                    for kind, rx in (("saved", _SAVED), ("installed", _INSTALLED)):
                        m = rx.match(line)
                        if m:
                            out["snapshots"].append({"process": proc, "at": m[1], "node": int(m[2]), "kind": kind,
                                                     "index": int(m[3]), "bytes": int(m[4]), "seconds": float(m[5])})
                    m = _LED.match(line)
                    if m:
                        out["elected"].append({"process": proc, "at": m[1], "node": int(m[2]), "term": int(m[3])})
        except OSError:
            continue
    return out


def goals(data: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    mem = data.get("memory", {})
    dict_pk = mem.get("dict", {}).get("per_key")
    election = data["config"]["election_timeout_s"]

    def add(goal: str, value: float | None, target: float, unit: str) -> None:
        out.append({"goal": goal, "value": value, "target": target, "unit": unit,
                    "met": None if value is None else value <= target})

    for name, label in (("engine_loaded", "just loaded"), ("engine_after_snapshot", "after the snapshot"),
                        ("engine_restarted_from_snapshot", "restarted from the snapshot")):
        pk = mem.get(name, {}).get("per_key")
        add(f"resident memory per key, engine {label} / bare dict", pk / dict_pk if pk and dict_pk else None,
            GOAL_MEMORY_RATIO, "x")
    for name, label in (("restart_wal", "whole load as WAL tail"), ("restart_snapshot", "from the snapshot")):
        r = data.get(name)
        add(f"restart until {data['keys']:,} keys are served ({label})", r["served_s"] if r else None,
            GOAL_RESTART_S, "s")
    c = data.get("cluster", {})
    base = c.get("write_plain", {}).get("p99_ms")
    for name, label in (("write_snapshot", "(b) nodes taking a snapshot"),
                        ("write_install", "(c) a new member installing one")):
        r = c.get(name)
        add(f"write-100 p99 {label} / (a) no snapshot", r["p99_ms"] / base if r and base else None,
            GOAL_P99_RATIO, "x")
    for name, label in (("write_plain", "(a)"), ("write_snapshot", "(b)"), ("write_install", "(c)")):
        r = c.get(name)
        add(f"longest gap between completed writes {label}", r["max_gap_ms"] / 1e3 if r else None, election, "s")
    return out


def _f(v: Any, fmt: str = "{:,.2f}") -> str:
    return "—" if v is None else fmt.format(v)


def markdown(data: dict[str, Any]) -> str:
    m, cfg, n = data["machine"], data["config"], data["keys"]
    mem = data.get("memory", {})
    lines = [
        f"# How cost grows with data: {n:,} keys" + (" (quick run)" if data["quick"] else ""),
        "",
        f"Command: `{data['command']}`  ",
        f"Started: {data['started']}; wall time {data.get('wall_seconds', 0):.0f} s.",
        "",
        f"Machine: {m['cpus']} CPUs; Python {m['python']} ({m['implementation']}); {m['platform']}; "
        f"data under {m['data_dir']}. Load average (1, 5, 15 min) at the start "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_start'])}, at the end "
        f"{', '.join(f'{x:.2f}' for x in m.get('loadavg_end', ()))}: above 0 means other processes shared the CPUs.",
        "",
        f"Keys `/g/%08d`, values {VALUE_SIZE} B (a different bytes object per key). Engine settings: "
        f"raft.snapshot_threshold {cfg['snapshot_threshold']:,} entries; election timeout "
        f"{cfg['election_timeout_s']:g} s (randomised up to 1.5x); transport.max_frame_size "
        f"{cfg['max_frame_size']:,} B{' (set by --max-frame-size)' if cfg['frame_raised'] else ' (the default)'}; "
        "FileStorage; every engine in a child process of its own.",
        "",
    ]
    if data.get("errors"):
        lines += ["## Not measured", ""] + [f"* {e}" for e in data["errors"]] + [""]

    dict_pk = mem.get("dict", {}).get("per_key")
    lines += ["## 1. Resident memory per key", "",
              "RSS after `gc.collect()` minus RSS before, over N, each in a fresh process. The last column: the same "
              "after glibc's `malloc_trim(0)` returned freed heap memory (what is live rather than kept by the "
              "allocator).", "",
              "| holder | RSS before (MB) | RSS after (MB) | bytes / key | / bare dict | bytes / key after malloc_trim |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, label in (("dict", "bare dict, same keys and values"),
                        ("engine_loaded", "1-node engine, just loaded (Raft log still in memory)"),
                        ("engine_after_snapshot", "1-node engine restarted from the WAL, after its snapshot"),
                        ("engine_restarted_from_snapshot", "1-node engine restarted from the snapshot")):
        r = mem.get(name)
        if not r:
            continue
        ratio = r["per_key"] / dict_pk if dict_pk else None
        lines.append(f"| {label} | {r['rss_before'] / 1e6:,.1f} | {r['rss_after'] / 1e6:,.1f} | "
                     f"{r['per_key']:,.0f} | {_f(ratio, '{:.2f}x')} | {_f(r.get('per_key_trimmed'), '{:,.0f}')} |")
    load1, load3 = data.get("load_1"), data.get("cluster", {}).get("load")
    lines += [""]
    for label, ld in (("1 node", load1), ("3 nodes", load3)):
        if ld:
            lines.append(f"Load, {label}: {n:,} puts by {data['callers']:,} concurrent callers in "
                         f"{ld['seconds']:.1f} s ({ld['rate']:,.0f} keys/s, {ld['entries']:,} Raft entries, "
                         f"{ld['errors']} errors).  ")
    lines.append("")

    ss, sl = data.get("snapshot_save"), data.get("snapshot_load")
    lines += ["## 2. Snapshot save and load", "",
              "Save: the runtime's own snapshot (`raft.snapshot_threshold` entries applied since the last; freeze "
              "on the apply path, encode + write in worker threads, then the log compacted), set off on the 1-node "
              "engine restarted from the WAL. Load: the restart from that snapshot; its two steps timed apart in "
              "the restarted process (page cache warm).", "",
              "| step | seconds | size (MB) | worst event-loop lag (ms) |", "|---|---:|---:|---:|"]
    if ss:
        lines.append(f"| save, wall (set off → saved and compacted) | {ss['wall_s']:.2f} | {ss['bytes'] / 1e6:,.1f} | "
                     f"{ss['max_lag_ms']:,.0f} |")
        lines.append(f"| save, engine's own timing (encode + write; `snapshot_save_seconds`) | "
                     f"{ss['engine_save_s']:.2f} | | |")
    if sl:
        lines.append(f"| load: read + verify the file | {sl['read_s']:.2f} | {sl['bytes'] / 1e6:,.1f} | |")
        lines.append(f"| load: decode + build the store | {sl['restore_s']:.2f} | | |")
    lines.append("")

    lines += ["## 3. Restart (1 node)", "",
              "From entering `open_engine` until ready, and until a linearizable count of `/g/` says N; "
              "`process` adds interpreter start-up and imports.", "",
              "| restart | entries replayed | open → ready (s) | open → N keys served (s) "
              "| process start → served (s) |",
              "|---|---:|---:|---:|---:|"]
    for name, label in (("restart_wal", "whole load as WAL tail, no snapshot"),
                        ("restart_snapshot", "snapshot + short WAL tail")):
        r = data.get(name)
        if r:
            replayed = r["applied"] - r["last_snapshot"]
            lines.append(f"| {label} | {replayed:,} | {r['ready_s']:.2f} | {r['served_s']:.2f} | "
                         f"{r['process_ready_s']:.2f} |")
    lines.append("")

    c = data.get("cluster", {})
    cu, cul = c.get("catch_up"), c.get("catch_up_under_load")
    lines += ["## 4. New follower catch-up by snapshot (3 nodes)", ""]
    if cu:
        lines += ["A new member joins: the leader adds it as a learner (`add_member`), then it starts with an empty "
                  "data directory and `cluster.join`; the time until its applied index reaches the leader's "
                  "(no load meanwhile).", "",
                  "| member | open_engine → caught up (s) | process start → caught up (s) | snapshots installed |",
                  "|---|---:|---:|---:|",
                  f"| node {cu['node']} | {cu['since_open_s']:.2f} | {cu['since_spawn_s']:.2f} | {cu['installed']} |",
                  "", f"Elections meanwhile: {cu.get('elections', '—')}."]
        if cul:
            if cul["install_done_since_spawn_s"] is None:
                lines += ["", f"Under write-100 (c): node {cul['node']} had not finished installing the snapshot "
                          f"when the run ended (applied index {cul['applied']:,})."]
            else:
                lines += ["", f"Under write-100 (c): node {cul['node']} finished installing the snapshot "
                          f"{cul['install_done_since_spawn_s']:.2f} s after its process started "
                          f"(snapshots installed: {cul['installed']})."]
    lines.append("")

    lines += ["## 5. write-100 on 3 nodes (100 callers overwriting the N keys, 256 B)", "",
              "Load generated in the leader's process. Longest gap: between two completed writes; event-loop lag: "
              f"how late a task sleeping {PROBE_PERIOD * 1e3:g} ms woke, in the leader's process.", "",
              f"A failed write (NotLeader while there is no leader) is counted and its caller waits "
              f"{ERROR_BACKOFF * 1e3:g} ms before the next. Elections: how far the voters' highest term moved during "
              "the run.", "",
              "| condition | seconds | ops/s | p50 ms | p99 ms | p99.9 ms | max ms | longest gap ms | worst loop lag ms "
              "| errors | elections |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, label in (("write_plain", "(a) no snapshot"), ("write_snapshot", "(b) nodes taking a snapshot"),
                        ("write_install", "(c) a new member installing a snapshot")):
        r = c.get(name)
        if r:
            lines.append(f"| {label} | {r['seconds']:.1f} | {r['throughput']:,.0f} | {r['p50_ms']:.1f} | "
                         f"{r['p99_ms']:.1f} | {r['p999_ms']:.1f} | {r['max_ms']:.0f} | {r['max_gap_ms']:.0f} | "
                         f"{r['max_lag_ms']:.0f} | {r['errors']:,} of {r['ops']:,} | {r.get('elections', '—')} |")
    win_rows = []
    ws = c.get("write_snapshot", {})
    for w in ws.get("windows", []):
        win_rows.append(("(b) writes in flight while the leader's snapshot task ran", w))
    wi = c.get("write_install", {}).get("install_window")
    if wi and "ops" in wi:
        win_rows.append(("(c) writes in flight from the new member's start until its install completed", wi))
    if win_rows:
        lines += ["", "| window | from s | to s | ops | ops/s | p99 ms | max ms | longest gap ms |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for label, w in win_rows:
            lines.append(f"| {label} | {w['from_s']:.2f} | {w['to_s']:.2f} | {w['ops']:,} | {w['throughput']:,.0f} | "
                         f"{w['p99_ms']:.1f} | {w['max_ms']:.0f} | {w['max_gap_ms']:.0f} |")
    lines.append("")

    spied = [(label, c[k]["py_spy"]) for k, label in (("write_plain", "(a)"), ("write_snapshot", "(b)"),
                                                        ("catch_up", "4. catch-up (no load)"),
                                                        ("write_install", "(c)")) if c.get(k, {}).get("py_spy")]
    if spied:
        lines += ["### Where the engines' processes held the GIL (py-spy --gil --nonblocking, 100 samples/s)", "",
                  "Samples are taken only while a thread holds the GIL: a worker thread's samples are time the "
                  "event loop (MainThread) of that process could not run Python.", ""]
        for label, by_node in spied:
            for who, spy in by_node.items():
                if "error" in spy:
                    lines += [f"{label}, {who}: {spy['error']}", ""]
                    continue
                lines += [f"{label}, {who}: samples " + ", ".join(f"{t} {k:,}" for t, k in spy["samples"].items()),
                          "", "| thread | innermost dengine frame | samples |", "|---|---|---:|"]
                for thread, top in spy.get("top_dengine", {}).items():
                    lines += [f"| {thread} | `{frames}` | {k:,} |" for frames, k in top[:5]]
                lines.append("")
    logs = data.get("engine_logs", {})
    if logs.get("snapshots"):
        lines += ["## Snapshots as the engines logged them", "",
                  "Saved: encode + write in worker threads (the freeze on the apply path comes before); installed: "
                  "verify + decode + build the store on a new member.", "",
                  "| process | node | at | kind | index | MB | seconds |", "|---|---:|---|---|---:|---:|---:|"]
        lines += [f"| {x['process']} | {x['node']} | {x['at'].split()[-1]} | {x['kind']} | {x['index']:,} | "
                  f"{x['bytes'] / 1e6:,.1f} | {x['seconds']:.2f} |" for x in logs["snapshots"]]
        lines.append("")
    elected = sorted((x for x in logs.get("elected", []) if x["process"].startswith("n")), key=lambda x: x["at"])
    if len(elected) > 1:
        shown = elected if len(elected) <= 8 else elected[:4] + elected[-2:]
        lines += [f"Leaders elected in the 3-node cluster: {len(elected)}: " + ", ".join(
            f"node {x['node']} term {x['term']} at {x['at'].split()[-1]}" for x in shown)
            + (f" (first four and last two of {len(elected)})" if len(shown) < len(elected) else "") + ".", ""]
    if c.get("leader_changes"):
        lines += ["Leader moves seen by the benchmark: " + "; ".join(
            f"during {d}: node {a} → node {b}" for d, a, b in c["leader_changes"]) + ".", ""]
    lines += ["## Goals", "", "| goal | measured | target | |", "|---|---:|---:|---|"]
    for g in data.get("goals", []):
        unit = g["unit"]
        value = "—" if g["value"] is None else (f"{g['value']:.2f}x" if unit == "x" else f"{g['value']:.2f} s")
        target = f"≤ {g['target']:g}{'x' if unit == 'x' else ' s'}"
        met = "n/a (not measured)" if g["met"] is None else ("**met**" if g["met"] else "NOT met")
        lines.append(f"| {g['goal']} | {value} | {target} | {met} |")
    lines.append("")
    if data.get("findings"):
        lines += ["## Findings", ""] + [f"* {x}" for x in data["findings"]] + [""]
    if data.get("log_notes"):
        lines += ["## Engine log lines (snapshots, elections, warnings)", "", "```", *data["log_notes"][:150], "```", ""]
    return "\n".join(lines)


def chart(data: dict[str, Any], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    mem, c = data.get("memory", {}), data.get("cluster", {})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    names = [("dict", "bare dict"), ("engine_loaded", "engine\nloaded"),
             ("engine_after_snapshot", "engine after\nsnapshot"),
             ("engine_restarted_from_snapshot", "engine from\nsnapshot")]
    rows = [(label, mem[k]["per_key"]) for k, label in names if k in mem]
    ax = axes[0]
    ax.bar([r[0] for r in rows], [r[1] for r in rows], color=["grey"] + ["tab:blue"] * (len(rows) - 1))
    if "dict" in mem:
        ax.axhline(GOAL_MEMORY_RATIO * mem["dict"]["per_key"], color="red", ls="--", lw=1, label="goal: 2x dict")
        ax.legend(fontsize=8)
    ax.set_ylabel("resident bytes per key")
    ax.set_title("memory per key", fontsize=10)
    ax.tick_params(axis="x", labelsize=8)

    secs = []
    if data.get("snapshot_save"):
        secs.append(("snapshot\nsave", data["snapshot_save"]["wall_s"]))
    if data.get("snapshot_load"):
        sl = data["snapshot_load"]
        secs.append(("snapshot\nload", sl["read_s"] + sl["restore_s"]))
    for k, label in (("restart_wal", "restart\nWAL tail"), ("restart_snapshot", "restart\nsnapshot")):
        if data.get(k):
            secs.append((label, data[k]["served_s"]))
    if c.get("catch_up"):
        secs.append(("new member\ncatch-up", c["catch_up"]["since_open_s"]))
    ax = axes[1]
    ax.bar([s[0] for s in secs], [s[1] for s in secs], color="tab:green")
    ax.axhline(GOAL_RESTART_S, color="red", ls="--", lw=1, label="restart goal 5 s")
    ax.legend(fontsize=8)
    ax.set_ylabel("seconds")
    ax.set_title(f"at {data['keys']:,} keys", fontsize=10)
    ax.tick_params(axis="x", labelsize=8)

    ax = axes[2]
    conds = [(k, label) for k, label in (("write_plain", "(a) none"), ("write_snapshot", "(b) snapshot"),
                                         ("write_install", "(c) install")) if c.get(k)]
    xs = range(len(conds))
    ax.bar([x - 0.2 for x in xs], [c[k]["p99_ms"] for k, _ in conds], width=0.4, label="p99 ms")
    ax.bar([x + 0.2 for x in xs], [c[k]["max_gap_ms"] for k, _ in conds], width=0.4, label="longest gap ms")
    ax.axhline(data["config"]["election_timeout_s"] * 1e3, color="red", ls="--", lw=1, label="election timeout")
    ax.set_xticks(list(xs), [label for _, label in conds])
    ax.set_yscale("log")
    ax.set_ylabel("milliseconds (log)")
    ax.set_title("write-100, 3 nodes", fontsize=10)
    ax.legend(fontsize=8)
    fig.suptitle(data["command"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(data: dict[str, Any], out_dir: str, stem: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    data["goals"] = goals(data)
    paths = [os.path.join(out_dir, f"{stem}.json"), os.path.join(out_dir, f"{stem}.md")]
    with open(paths[0], "w") as f:
        json.dump(data, f, indent=1, default=str)
    png = os.path.join(out_dir, f"{stem}.png")
    text = markdown(data)
    if chart(data, png):
        text += f"\n![memory, seconds, write-100 p99]({stem}.png)\n"
        paths.append(png)
    else:
        msg = "matplotlib is not installed (pip install -e '.[bench]'): no chart"
        progress(msg)
        text += f"\n({msg}.)\n"
    with open(paths[1], "w") as f:
        f.write(text)
    return paths


def findings(data: dict[str, Any]) -> list[str]:
    out = []
    cfg = data["config"]
    size = data.get("snapshot_save", {}).get("bytes")
    if size and size > cfg["max_frame_size"]:
        out.append(
            f"The snapshot ({size / 1e6:,.1f} MB) is larger than transport.max_frame_size "
            f"({cfg['max_frame_size'] / 2**20:g} MiB): it reached the new member in parts (docs/peer-protocol.md).")
    mem = data.get("memory", {})
    if "engine_loaded" in mem and mem["engine_loaded"].get("last_snapshot", 0) == 0:
        out.append(
            f"The load wrote {mem['engine_loaded']['entries']:,} Raft entries (each carries a batch of puts), fewer "
            f"than raft.snapshot_threshold ({cfg['snapshot_threshold']:,}): no snapshot was taken, so the whole load "
            "stayed in the in-memory Raft log and in the WAL. The threshold counts entries, not bytes.")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_dict"]:
        p = argparse.ArgumentParser(prog="python -m benchmarks.growth _dict")
        p.add_argument("--keys", type=int, required=True)
        return dict_child(int(p.parse_args(argv[1:]).keys))
    if argv[:1] == ["_node"]:
        import logging

        import trio

        p = argparse.ArgumentParser(prog="python -m benchmarks.growth _node")
        p.add_argument("--id", type=int, default=1)
        p.add_argument("--dir", required=True)
        p.add_argument("--cluster", default="")
        p.add_argument("--snapshot-threshold", type=int, default=0)
        p.add_argument("--max-frame-size", type=int, default=0)
        p.add_argument("--join", action="store_true", help="a new member: cluster.join, and no wait for ready")
        args = p.parse_args(argv[1:])
        args.tick_ms, args.metrics = 0.0, "on"
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")
        trio.run(node_child, args)
        return 0

    parser = argparse.ArgumentParser(prog="python -m benchmarks growth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{KEYS_QUICK:,} keys, short write runs")
    parser.add_argument("--keys", type=int, default=None, help=f"N (default {KEYS_FULL:,}; --quick {KEYS_QUICK:,})")
    parser.add_argument("--seconds", type=float, default=None, help="seconds of each write-100 run (default 5, --quick 2)")
    parser.add_argument("--callers", type=int, default=1000, help="concurrent callers of the load (default 1000)")
    parser.add_argument("--snapshot-threshold", type=int, default=0,
                        help="raft.snapshot_threshold of every engine (default: the engine's default)")
    parser.add_argument("--max-frame-size", type=int, default=0,
                        help="transport.max_frame_size (default 0: the engine's default, 16 MiB)")
    parser.add_argument("--py-spy", action="store_true",
                        help="record the leader with py-spy (--gil) during each write run: where its time went")
    parser.add_argument("--skip-cluster", action="store_true", help="only the 1-node measurements (1-3)")
    parser.add_argument("--dir", default=".", help="where the temporary data directories go (the data disk)")
    parser.add_argument("--out", default=RESULTS_DIR, help="report directory (default benchmarks/results)")
    ns = parser.parse_args(argv)
    n = ns.keys if ns.keys is not None else (KEYS_QUICK if ns.quick else KEYS_FULL)
    if n < 1:
        parser.error("--keys must be at least 1")
    ns.seconds = ns.seconds if ns.seconds is not None else (2.0 if ns.quick else 5.0)

    import dengine
    from dengine.transport.framing import DEFAULT_MAX_FRAME_SIZE

    raft = dengine.Config.single_node("/nonexistent").raft
    threshold = ns.snapshot_threshold or raft.snapshot_threshold
    frame = ns.max_frame_size or DEFAULT_MAX_FRAME_SIZE
    command = "python -m benchmarks growth" + "".join(" " + shlex.quote(a) for a in argv)
    began = time.time()
    data: dict[str, Any] = {
        "command": command, "quick": ns.quick, "keys": n, "callers": ns.callers, "seconds_per_run": ns.seconds,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(began)),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "implementation": platform.python_implementation(), "platform": platform.platform(),
                    "data_dir": os.path.abspath(ns.dir), "loadavg_start": os.getloadavg()},
        "config": {"snapshot_threshold": threshold, "election_timeout_s": raft.election_ticks * raft.tick_interval_ms / 1e3,
                   "max_frame_size": frame, "default_max_frame_size": DEFAULT_MAX_FRAME_SIZE,
                   "frame_raised": frame != DEFAULT_MAX_FRAME_SIZE},
        "memory": {}, "errors": [],
    }
    progress(f"{command}: {n:,} keys on {os.cpu_count()} CPUs, Python {platform.python_version()}")
    os.makedirs(ns.dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dengine-growth-", dir=ns.dir) as workdir:
        run = Run(ns, workdir)
        run.frame_size = frame if frame != DEFAULT_MAX_FRAME_SIZE else 0
        steps: list[tuple[str, Callable[[], None]]] = [
            ("bare dict", lambda: data["memory"].__setitem__("dict", measure_dict(run, n))),
            ("1 node", lambda: single_node(run, data, n)),
        ]
        if not ns.skip_cluster:
            steps.append(("3 nodes", lambda: three_nodes(run, data, n)))
        try:
            for name, step in steps:
                if name == "bare dict":
                    progress(f"bare dict: {n:,} keys in a fresh process")
                try:
                    step()
                except Exception as exc:
                    data["errors"].append(f"{name}: {type(exc).__name__}: {str(exc).strip()[:1500]}")
                    progress(f"{name}: FAILED: {exc}")
                finally:
                    stop_all(run.children)
                    run.children.clear()
                if name == "bare dict" and "dict" in data["memory"]:
                    progress(f"bare dict: {data['memory']['dict']['per_key']:,.0f} B/key resident")
        finally:
            stop_all(run.children)
            data["log_notes"] = log_notes(run.logs)
            data["engine_logs"] = engine_log_figures(run.logs)
    data["machine"]["loadavg_end"] = os.getloadavg()
    data["findings"] = findings(data)
    data["wall_seconds"] = time.time() - began
    paths = write_report(data, ns.out, "growth-quick" if ns.quick else "growth")
    progress(f"done in {data['wall_seconds']:.0f} s: " + ", ".join(paths))
    print(markdown(data))
    return 0 if not data["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())

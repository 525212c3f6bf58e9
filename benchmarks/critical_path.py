"""Where a single write's time goes: the critical path of one put, stage by stage.

    python -m benchmarks critical-path [--nodes 1|3] [--writes N] [--dir DIR]

Starts the engine processes of the suite's dengine-embedded-N system
(benchmarks.node_proc, run through this module so that it can time them),
has the leader's process make ``--writes`` puts one after the other (the
suite's write-1 scenario) and prints, for each step of a put, when it
happened after the put was called: the median over all puts, and the
median gap from the step before. Steps, on the leader (L) and on the
follower that answered first (F):

    L put called -> L raft loop polls -> L appends handed to the socket
    -> F AppendEntries reaches the driver -> F WAL write starts (WAL thread)
    -> F WAL write + fsync done -> F ack handed to the socket
    -> L ack reaches the driver -> L apply starts -> L put returns

plus the leader's own WAL write (it runs beside the followers'). Every
process stamps steps with ``time.perf_counter`` (CLOCK_MONOTONIC on Linux,
one clock for all processes of the machine). The timing wrappers cost a few
microseconds per step; the put's total is measured inside them, so compare
totals with the suite's write-1 figures, not with this tool's.

Timing is installed here, in the benchmark, by wrapping methods of the
engine's classes in the child processes: nothing in dengine knows about it.
"""

from __future__ import annotations

import argparse
import bisect
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

#: (side, label) of each step, in the order they happen on the critical path.
STEPS_3 = [
    ("L", "put>"), ("L", "poll>"), ("L", "send>"), ("F", "recv AppendEntries"), ("F", "write>"), ("F", "write<"),
    ("F", "send>"), ("L", "recv AppendResponse"), ("L", "apply>"), ("L", "put<"),
]
STEPS_1 = [("L", "put>"), ("L", "poll>"), ("L", "write>"), ("L", "write<"), ("L", "persisted>"), ("L", "apply>"),
           ("L", "put<")]
#: Steps off the critical path shown beside it.
BESIDE_3 = [("L", "write>"), ("L", "write<")]

_TRACE: list[tuple[float, str]] = []


# -- in the child processes ---------------------------------------------------------


def _wrap_sync(owner: Any, name: str, label: str, *, detail: Callable[..., str] | None = None) -> None:
    original = getattr(owner, name)
    stamp = time.perf_counter
    out = _TRACE

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        out.append((stamp(), label + (detail(*args) if detail else "") + ">"))
        try:
            return original(*args, **kwargs)
        finally:
            out.append((stamp(), label + "<"))

    setattr(owner, name, timed)


def _wrap_async(owner: Any, name: str, label: str) -> None:
    original = getattr(owner, name)
    stamp = time.perf_counter
    out = _TRACE

    @functools.wraps(original)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        out.append((stamp(), label + ">"))
        try:
            return await original(*args, **kwargs)
        finally:
            out.append((stamp(), label + "<"))

    setattr(owner, name, timed)


def install_timing() -> None:
    """Wrap the steps of a write (see the module doc) in this process."""
    from dengine import embedded
    from dengine.runtime import driver, node
    from dengine.transport import peer

    _wrap_async(embedded.EmbeddedClient, "put", "put")
    _wrap_sync(driver.Driver, "poll", "poll")
    _wrap_sync(driver.Driver, "on_persisted", "persisted")
    _wrap_sync(node, "_timed_write", "write")
    _wrap_sync(node.Node, "_apply_entries", "apply")
    original = driver.Driver.on_message
    stamp = time.perf_counter

    def on_message(self: Any, message: Any) -> bool:
        _TRACE.append((stamp(), "recv " + type(message).__name__))
        return original(self, message)  # type: ignore[no-any-return]

    driver.Driver.on_message = on_message  # type: ignore[method-assign]
    _wrap_async(peer.PeerTransport, "_write", "send")


def child(argv: Sequence[str]) -> int:
    """``--trace-file PATH`` then benchmarks.node_proc's arguments."""
    args = list(argv)
    where = args.index("--trace-file")
    path = args[where + 1]
    del args[where : where + 2]
    install_timing()
    from benchmarks import node_proc

    try:
        return node_proc.main(args)
    finally:
        with open(path, "w") as f:
            json.dump(_TRACE, f)


# -- in the benchmark process ------------------------------------------------------


def first_after(events: list[tuple[float, str]], label: str, t: float, end: float) -> float | None:
    """The first ``label`` at or after ``t`` and not after ``end`` (``events`` sorted)."""
    for when, what in events[bisect.bisect_left(events, (t, "")) :]:
        if when > end:
            return None
        if what == label:
            return when
    return None


def analyse(leader: list[tuple[float, str]], followers: list[list[tuple[float, str]]],
            steps: list[tuple[str, str]], beside: list[tuple[str, str]]) -> dict[str, Any]:
    """Per step: median offset from the put's start, median gap from the
    step before. Puts where a step cannot be placed are counted, not used."""
    leader.sort()
    for f in followers:
        f.sort()
    starts = [t for t, what in leader if what == "put>"]
    ends = [t for t, what in leader if what == "put<"]
    offsets: dict[tuple[str, str], list[float]] = {s: [] for s in steps + beside}
    gaps: dict[tuple[str, str], list[float]] = {s: [] for s in steps}
    unplaced = 0
    for t0, t1 in zip(starts, ends, strict=False):
        placed: list[float] = []
        at = t0
        ok = True
        for side, label in steps:
            if side == "L":
                when = first_after(leader, label, at, t1)
            else:  # the follower that got there first
                candidates = [w for f in followers if (w := first_after(f, label, at, t1)) is not None]
                when = min(candidates) if candidates else None
            if when is None:
                ok = False
                break
            placed.append(when)
            at = when
        if not ok:
            unplaced += 1
            continue
        for k, step in enumerate(steps):
            offsets[step].append(placed[k] - t0)
            gaps[step].append(placed[k] - (placed[k - 1] if k else t0))
        for side, label in beside:
            when = first_after(leader, label, t0, t1)
            if when is not None:
                offsets[(side, label)].append(when - t0)
    med = lambda xs: statistics.median(xs) * 1e6 if xs else float("nan")  # noqa: E731
    return {
        "puts": len(starts), "unplaced": unplaced,
        "steps": [{"side": s, "step": lab, "at_us": med(offsets[(s, lab)]), "gap_us": med(gaps[(s, lab)])}
                  for s, lab in steps],
        "beside": [{"side": s, "step": lab, "at_us": med(offsets[(s, lab)])} for s, lab in beside],
    }


def render(result: dict[str, Any], nodes: int) -> str:
    lines = [f"critical path of one put, {nodes} node{'s' if nodes > 1 else ''} "
             f"({result['puts']} puts, {result['unplaced']} not placed; medians, microseconds)",
             f"{'side':4} {'step':24} {'at':>8} {'gap':>8}"]
    for s in result["steps"]:
        lines.append(f"{s['side']:4} {s['step']:24} {s['at_us']:8.0f} {s['gap_us']:8.0f}")
    for s in result["beside"]:
        lines.append(f"{s['side']:4} {s['step'] + ' (beside)':24} {s['at_us']:8.0f}")
    return "\n".join(lines)


def run(nodes: int, writes: int, workdir: str) -> dict[str, Any]:
    from benchmarks.procs import Child, stop_all
    from benchmarks.suite import progress, start_dengine_embedded

    children: list[Child] = []
    trace_dir = os.path.join(workdir, "traces")
    os.makedirs(trace_dir, exist_ok=True)
    try:
        started = start_dengine_embedded(workdir, children, nodes, 0.0, module="benchmarks.critical_path",
                                         node_args=lambda i: ["--trace-file", os.path.join(trace_dir, f"n{i}.json")])
        progress(f"critical-path: {writes} puts, one at a time, on a {nodes}-node cluster")
        out = started.driver.ask({"cmd": "run", "scenario": "write-1", "seconds": 120.0, "max_ops": writes}, 180)
        if "error" in out:
            raise RuntimeError(f"the run failed: {out['error']}")
        leader_pid = started.driver.pid
    finally:
        stop_all(children)
    traces = {}
    for i, c in enumerate(children, start=1):
        with open(os.path.join(trace_dir, f"n{i}.json")) as f:
            traces[c.pid] = [tuple(e) for e in json.load(f)]
    leader = traces.pop(leader_pid)
    steps, beside = (STEPS_1, []) if nodes == 1 else (STEPS_3, BESIDE_3)
    result = analyse(leader, list(traces.values()), steps, beside)
    result["suite_p50_ms"] = out.get("p50_ms")
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--trace-file" in argv:
        return child(argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks critical-path", description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, choices=(1, 3), default=3)
    parser.add_argument("--writes", type=int, default=3000, help="puts to time (default %(default)s)")
    parser.add_argument("--dir", default=None, help="work directory (default: a temporary one, removed)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    ns = parser.parse_args(argv)
    if ns.writes < 1:
        parser.error(f"--writes must be at least 1, got {ns.writes}")
    with tempfile.TemporaryDirectory(dir=ns.dir) as workdir:
        result = run(ns.nodes, ns.writes, workdir)
    print(json.dumps(result, indent=1) if ns.json else render(result, ns.nodes))
    return 0


if __name__ == "__main__":
    sys.exit(main())

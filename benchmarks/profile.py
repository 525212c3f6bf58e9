"""Where a suite scenario's CPU goes, process by process: py-spy over a suite run.

    python -m benchmarks profile --systems S --scenarios X [--seconds N] [--rate HZ]
                                 [--top K] [--dir DIR] [--out DIR]

Runs ``python -m benchmarks suite --systems S --scenarios X --seconds N`` under
``py-spy record --subprocesses --threads --format raw`` (py-spy samples only
threads that are running, not idle ones, so a process's samples / rate is its
CPU time; sampling costs the machine a little CPU of its own). Then it prints,
for each process that took part:

* its role, read from the code its stacks run (the suite's orchestrator, an
  embedded engine process and whether it ran the load, a ``dengine serve``
  server, the standalone load client, an etcd load process, a PySyncObj node),
* CPU seconds in all and per thread (the trio loop is MainThread),
* the functions that held the CPU longest including what they called
  (inclusive; frames on 80 % of the process's stacks or more, such as the
  entry point and ``trio.run``, left out) and by themselves (self), with file
  names shortened.

Start-up (imports, ``<frozen importlib>`` stacks) is left out. Compare
processes and functions as shares of one run, not as wall-clock figures:
the profile also runs the suite's raw-fsync probe and each system's start
and stop. Needs py-spy (``pip install py-spy``); writes the raw profile and
a summary (``profile-<system>-<scenario>.txt.gz`` / ``.md``) to ``--out``.
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any

# (marker found in a process's stacks, role); the first that matches names it.
ROLES = [
    ("benchmarks/standalone_load.py", "standalone load client"),
    ("benchmarks/peers/etcd_load.py", "etcd load process (aetcd)"),
    ("benchmarks/peers/syncobj_node.py", "PySyncObj node"),
    ("dengine/server/", "dengine serve, serving the clients"),
    ("dengine/cli.py", "dengine serve"),
    ("benchmarks/workload.py", "embedded engine running the load"),
    ("benchmarks/node_proc.py", "embedded engine"),
    ("benchmarks/suite.py", "suite orchestrator"),
    # PySyncObj forks a child to write each full dump (its log compaction);
    # the child's one thread is the node's tick thread.
    ("pysyncobj/", "PySyncObj fork writing a full dump"),
]
_LINE_NO = re.compile(r":\d+\)$")


def short(frame: str) -> str:
    """``func (path/to/site-packages/trio/_core/_run.py:123)`` -> ``func (trio/_core/_run.py)``."""
    frame = _LINE_NO.sub(")", frame)
    return re.sub(r"\((?:[^()]*/site-packages/|[^()]*/lib/python3\.\d+/|/[^()]*?/(?=dengine/|benchmarks/))", "(",
                  frame)


def parse(path: str) -> dict[str, dict[str, Any]]:
    """Raw py-spy lines -> per process: samples by thread, inclusive and self counts."""
    procs: dict[str, dict[str, Any]] = {}
    with open(path) as f:
        for line in f:
            stack, _, count_s = line.rstrip("\n").rpartition(" ")
            if not stack or not count_s.isdigit():
                continue
            count = int(count_s)
            frames = stack.split(";")
            # A child's stacks start with the chain of processes down to it.
            last = max(i for i, fr in enumerate(frames) if fr.startswith("process ") or i == 0)
            pid = frames[last].split(":", 1)[0].removeprefix("process ").strip()
            has_thread = len(frames) > last + 1 and frames[last + 1].startswith("thread ")
            thread = frames[last + 1] if has_thread else "thread ?"
            code = [short(fr) for fr in frames[last + 1 + has_thread:]]
            if any("<frozen importlib" in fr for fr in code):
                continue  # start-up
            p = procs.setdefault(pid, {"threads": Counter(), "incl": Counter(), "self": Counter(),
                                       "markers": set(), "samples": 0})
            p["samples"] += count
            p["threads"][_thread_name(thread)] += count
            for fr in set(code):
                p["incl"][fr] += count
            if code:
                p["self"][code[-1]] += count
            joined = ";".join(frames)
            for marker, _ in ROLES:
                if marker in joined:
                    p["markers"].add(marker)
    return procs


def _thread_name(thread: str) -> str:
    # py-spy writes 'thread (TID)' or 'thread (TID): Name'
    return thread.partition(": ")[2] or thread


def role(p: dict[str, Any]) -> str:
    return next((name for marker, name in ROLES if marker in p["markers"]), "other")


def summary(procs: dict[str, dict[str, Any]], rate: float, top: int, title: str) -> str:
    lines = [f"# {title}", "", f"py-spy, {rate:g} samples/s of running threads; CPU s = samples / rate; "
             "start-up (imports) left out.", ""]
    total = sum(p["samples"] for p in procs.values()) or 1
    for pid, p in sorted(procs.items(), key=lambda kv: -kv[1]["samples"]):
        if p["samples"] < rate * 0.05:
            continue  # under 50 ms: a helper process, not a participant
        threads = ", ".join(f"{t} {n / rate:.2f}" for t, n in p["threads"].most_common(4))
        lines += [f"## pid {pid}: {role(p)} — {p['samples'] / rate:.2f} CPU s ({p['samples'] / total:.0%} of all)",
                  "", f"threads: {threads}", "",
                  "| inclusive | s | share | | self | s | share |", "|---|---:|---:|---|---|---:|---:|"]
        # Frames on nearly every stack (the entry point, trio.run) say nothing.
        incl = [kv for kv in p["incl"].most_common() if kv[1] < 0.8 * p["samples"]][:top]
        self_ = p["self"].most_common(top)
        for i in range(max(len(incl), len(self_))):
            a = incl[i] if i < len(incl) else ("", 0)
            b = self_[i] if i < len(self_) else ("", 0)
            lines.append(f"| `{a[0]}` | {a[1] / rate:.2f} | {a[1] / p['samples']:.0%} | "
                         f"| `{b[0]}` | {b[1] / rate:.2f} | {b[1] / p['samples']:.0%} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks profile",
                                     description="py-spy over one suite run: CPU per process and function")
    parser.add_argument("--systems", required=True, help="suite systems, comma list (see python -m benchmarks --help)")
    parser.add_argument("--scenarios", required=True, help="suite scenarios, comma list")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per scenario (default 8)")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second (default 100)")
    parser.add_argument("--top", type=int, default=15, help="functions listed per process (default 15)")
    parser.add_argument("--dir", default=None, help="where the systems keep their data (default: a temporary dir)")
    parser.add_argument("--out", default="benchmarks/results/profiles", help="where to write the profile and summary")
    ns = parser.parse_args(argv)
    if ns.seconds <= 0 or ns.rate <= 0 or ns.top <= 0:
        parser.error("--seconds, --rate and --top must be positive")
    spy = shutil.which("py-spy")
    if spy is None:
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    os.makedirs(ns.out, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    name = f"profile-{ns.systems.replace(',', '+')}-{ns.scenarios.replace(',', '+')}"
    raw = os.path.join(ns.out, name + ".txt")
    with tempfile.TemporaryDirectory(prefix="dengine-profile-", dir=ns.dir) as work:
        suite = [sys.executable, "-m", "benchmarks", "suite", "--systems", ns.systems, "--scenarios", ns.scenarios,
                 "--seconds", str(ns.seconds), "--no-check-perf", "--out", os.path.join(work, "suite"), "--dir", work]
        cmd = [spy, "record", "--subprocesses", "--threads", "--rate", str(ns.rate), "--format", "raw", "-o", raw,
               "--", *suite]
        print("running:", " ".join(cmd), file=sys.stderr, flush=True)
        rc = subprocess.call(cmd)
        if rc != 0 or not os.path.exists(raw):
            print(f"py-spy or the suite failed (exit {rc}); see the lines above", file=sys.stderr)
            return 1
        with open(os.path.join(work, "suite", "suite.md")) as f:
            results = []
            for ln in f.read().splitlines():
                if ln.startswith("### "):
                    results += ["", ln, "", "| system | ops/s | avg | p50 | p99 | p99.9 | errors |",
                                "|---|---:|---:|---:|---:|---:|---:|"]
                elif ln.startswith(("| dengine", "| etcd", "| pysyncobj")):
                    results.append(ln)
    title = f"Profile: {ns.systems} / {ns.scenarios}, {ns.seconds:g} s per scenario"
    text = summary(parse(raw), ns.rate, ns.top, title)
    command = " ".join(["python -m benchmarks profile", *(argv if argv is not None else sys.argv[1:])])
    text = text.replace("\n\n", f"\n\nCommand: `{command}`  \nStarted: {started}\n\n", 1)
    with open(raw, "rb") as src, gzip.open(raw + ".gz", "wb") as dst:
        shutil.copyfileobj(src, dst)  # flamegraph.pl / speedscope read it back after gunzip
    os.remove(raw)
    text += "\n## The suite's figures in this run (slowed by the sampling)\n" + "\n".join(results) + "\n"
    with open(os.path.join(ns.out, name + ".md"), "w") as f:
        f.write(text)
    print(text)
    return 0

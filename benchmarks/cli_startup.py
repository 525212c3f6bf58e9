"""CLI start-up: how long ``dengine get k`` takes, whole, against a running
server, beside ``python3 -c pass`` on the same machine.

    python -m benchmarks cli [--rounds N] [--quick]

Measures, in alternating rounds (so drifting load hits both alike), the wall
time of a fresh process for:

* ``python3 -c pass`` -- the interpreter alone (the yardstick);
* ``python3 -m dengine get k`` -- a client command: start, import, connect,
  handshake, one linearizable read, print, exit;
* ``dengine get k`` -- the same through the installed console script (when
  it is on PATH next to this interpreter).

The server is one ``dengine serve`` process on free loopback ports, started
(and stopped by its PID) by the benchmark. Bytecode: a package installed by
pip has its ``.pyc`` files; this checkout may run with
``PYTHONDONTWRITEBYTECODE=1``, which would make every run compile dengine
from source. The children therefore run with that variable removed and a
``PYTHONPYCACHEPREFIX`` in a temporary directory, after one warm-up run
each, so the figures are those of an installed package (``--cold`` keeps
the compiling behaviour, for comparison).

Then it lists the modules the client command imports, by their own import
time (``-X importtime``, the minimum over a few runs), to show where the
time goes. Goal (issue 12): ``dengine get k`` within 4x ``python3 -c pass``.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.procs import free_ports

GOAL_RATIO = 4.0


def _timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    run = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, timeout=60)
    took = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({run.returncode}): {run.stderr.decode(errors='replace')}")
    return took


def _import_profile(argv: list[str], env: dict[str, str], runs: int
                    ) -> tuple[list[tuple[str, float]], dict[str, float]]:
    """Each module's own import time and its cumulative one (ms, the
    minimum over ``runs``)."""
    own: dict[str, float] = collections.defaultdict(lambda: float("inf"))
    cumulative: dict[str, float] = collections.defaultdict(lambda: float("inf"))
    for _ in range(runs):
        err = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], capture_output=True, text=True, env=env,
                             timeout=60).stderr
        for m in re.finditer(r"^import time:\s+(\d+) \|\s+(\d+) \|\s+(\S+)$", err, re.M):
            own[m.group(3)] = min(own[m.group(3)], int(m.group(1)) / 1000)
            cumulative[m.group(3)] = min(cumulative[m.group(3)], int(m.group(2)) / 1000)
    return sorted(own.items(), key=lambda kv: -kv[1]), cumulative


def _group(module: str) -> str:
    """dengine modules by package (dengine.raft.core apart: dengine.config
    imports it), others by their top-level package."""
    parts = module.split(".")
    if parts[0] != "dengine":
        return parts[0]
    return ".".join(parts[:3]) if module == "dengine.raft.core" else ".".join(parts[:2])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks cli", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=21, help="alternating rounds (default 21)")
    parser.add_argument("--quick", action="store_true", help="5 rounds: a smoke run, not figures to report")
    parser.add_argument("--cold", action="store_true", help="no bytecode cache: every run compiles dengine")
    args = parser.parse_args(argv)
    rounds = 5 if args.quick else args.rounds
    py = sys.executable

    print(f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.platform()}")
    print(f"load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="dengine-cli-bench-") as tmp:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "DENGINE_ENDPOINTS")}
        if args.cold:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        else:
            env["PYTHONPYCACHEPREFIX"] = os.path.join(tmp, "pycache")
        peer, client = free_ports(2)
        endpoint = f"127.0.0.1:{client}"
        server = subprocess.Popen(
            [py, "-m", "dengine", "serve", "--log-level", "warning", "--data-dir", os.path.join(tmp, "data"),
             "--client-address", endpoint, "--peer-address", f"127.0.0.1:{peer}", "--metrics-address", "off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )
        try:
            put = [py, "-m", "dengine", "put", "k", "v", "--endpoints", endpoint, "--timeout", "30"]
            _timed(put, env)  # waits (bounded) for the server, and warms the bytecode cache
            commands = {
                "python3 -c pass": [py, "-c", "pass"],
                "python3 -m dengine get k": [py, "-m", "dengine", "get", "k", "--endpoints", endpoint],
            }
            script = shutil.which("dengine", path=os.path.dirname(py))
            if script is not None:
                commands["dengine get k"] = [script, "get", "k", "--endpoints", endpoint]
            for cmd in commands.values():
                _timed(cmd, env)  # warm-up
            times: dict[str, list[float]] = {name: [] for name in commands}
            for _ in range(rounds):
                for name, cmd in commands.items():
                    times[name].append(_timed(cmd, env))
            runs = 3 if args.quick else 7
            profile, cumulative = _import_profile(commands["python3 -m dengine get k"], env, runs)
            baseline = {m for m, _ in _import_profile(commands["python3 -c pass"], env, runs)[0]}
        finally:
            server.send_signal(signal.SIGKILL)
            server.wait(timeout=30)
    print(f"load average at end:   {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"bytecode: {'none (compiled on every run)' if args.cold else 'cached, as in an installed package'}")
    print()
    print(f"wall time of a fresh process, {rounds} alternating rounds")
    print(f"  {'command':28s} {'median ms':>10s} {'p10 ms':>8s} {'p90 ms':>8s}")
    medians = {}
    for name, xs in times.items():
        xs = sorted(xs)
        medians[name] = statistics.median(xs)
        p10, p90 = xs[len(xs) // 10], xs[min(len(xs) - 1, (len(xs) * 9) // 10)]
        print(f"  {name:28s} {medians[name] * 1000:10.1f} {p10 * 1000:8.1f} {p90 * 1000:8.1f}")
    print()
    by_group: dict[str, float] = collections.defaultdict(float)
    for module, ms in profile:
        if module not in baseline:  # `python3 -c pass` imports it too (site, .pth files)
            by_group[_group(module)] += ms
    print("own import time of what `dengine get k` imports beyond `python3 -c pass`, grouped (min of the runs)")
    for group, ms in sorted(by_group.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {group:36s} {ms:7.1f} ms")
    print(f"  {'all of them':36s} {sum(by_group.values()):7.1f} ms")
    print("of which, cumulative (each with what it is the first to import; see docs/benchmarks.md)")
    for module in ("dengine.api", "dengine.codec", "dengine.config", "dengine.transport.client_protocol",
                   "dengine.client._core", "dengine.client.blocking", "dengine.cli"):
        if module in cumulative:
            print(f"  {module:36s} {cumulative[module]:7.1f} ms")
    forbidden = [m for m, _ in profile if m.split(".")[0] == "trio" or m.startswith(
        ("dengine.runtime", "dengine.server", "dengine.embedded", "dengine.storage"))]
    print(f"  trio or engine modules imported: {', '.join(forbidden) or 'none'}")
    print()
    base = medians["python3 -c pass"]
    for name in commands:
        if name == "python3 -c pass":
            continue
        ratio = medians[name] / base
        verdict = "met" if ratio <= GOAL_RATIO else "NOT met"
        print(f"{name} vs python3 -c pass: {ratio:.2f}x  (goal <= {GOAL_RATIO:g}x: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark suite: dengine's scenarios beside etcd and PySyncObj, one run.

    python -m benchmarks [--quick] [--systems a,b] [--scenarios x,y] [--no-peers]
                         [--connections N] [--seconds S] [--dir DIR] [--out DIR]

Systems (each started, measured and stopped in turn; every process it starts
is stopped by PID in a finally block, all on 127.0.0.1):

* dengine-embedded-1   one engine in a child process, load in that process
* dengine-embedded-3   three engine processes on loopback, load in the leader's
* dengine-standalone-3 three ``dengine serve`` processes, load from a client
                       process with ``--connections`` connections (when the
                       standalone server and client exist in this tree)
* dengine-etcdapi-3    three ``dengine serve --etcd-address`` processes, load from
                       the same aetcd process as etcd-3 through etcd's gRPC API
* etcd-3               etcd 3.4, three members, load from a Python process (aetcd)
* pysyncobj-journal-3  PySyncObj ReplDict with its journal file, load in the leader
* pysyncobj-memory-3   the same with PySyncObj's in-memory journal

Scenarios: see benchmarks/workload.py (key 8 B, value 256 B, sequential keys;
reads re-read what the write runs wrote). Watch latency and fan-out come from
``python -m benchmarks watch`` (benchmarks/watch.py), run as it is.

Progress goes to stderr, one line per step. The report (Markdown, JSON, PNG
chart when matplotlib is installed) goes to ``--out`` (default
benchmarks/results/), named ``suite`` for a full run and ``suite-quick`` for
``--quick``. A peer that is not installed is reported as skipped with the
command that installs it; the suite installs nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks import report
from benchmarks.histogram import Histogram
from benchmarks.peers import etcd as etcd_peer
from benchmarks.peers import syncobj as syncobj_peer
from benchmarks.peers.etcd import Started
from benchmarks.procs import Child, free_ports, stop_all, wait_port
from benchmarks.workload import SCENARIOS, VALUE

SYSTEMS = [
    "dengine-embedded-1",
    "dengine-embedded-3",
    "dengine-standalone-3",
    "dengine-etcdapi-3",
    "etcd-3",
    "pysyncobj-journal-3",
    "pysyncobj-memory-3",
]
PEERS = {"etcd-3", "pysyncobj-journal-3", "pysyncobj-memory-3"}
KV_SCENARIOS = [name for name, s in SCENARIOS.items() if s.kind != "watch"]
WATCH_SCENARIOS = [name for name, s in SCENARIOS.items() if s.kind == "watch"]
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- machine facts ----------------------------------------------------------


def fsync_latency(d: str, seconds: float) -> dict[str, Any]:
    """Raw ``write`` (256 B) + ``fsync`` on the data disk, as a histogram."""
    path = os.path.join(d, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    hist = Histogram()
    try:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds and hist.count < 1_000_000:
            t0 = time.perf_counter()
            os.write(fd, VALUE)
            os.fsync(fd)
            hist.record(time.perf_counter() - t0)
    finally:
        os.close(fd)
        os.unlink(path)
    return {"ops": hist.count, "throughput": hist.count / max(hist.total_ns / 1e9, 1e-9), **hist.summary()}


def machine_facts(d: str, seconds: float) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "data_dir": os.path.abspath(d),
    }
    try:
        out = subprocess.run(["df", "-T", d], capture_output=True, text=True, timeout=10).stdout.splitlines()
        if len(out) > 1:
            fields = out[1].split()
            facts["filesystem"] = f"{fields[1]} on {fields[0]}"
    except (OSError, subprocess.SubprocessError):
        pass
    facts["fsync"] = fsync_latency(d, seconds)
    return facts


# -- systems ----------------------------------------------------------------


def start_dengine_embedded(workdir: str, children: list[Child], nodes: int, tick_ms: float,
                           extra_args: Sequence[str] = (), *, module: str = "benchmarks.node_proc",
                           node_args: Callable[[int], list[str]] = lambda _i: []) -> Started:
    """Engine processes (``module``: benchmarks.node_proc, or a module that
    runs it); ``extra_args`` go to each, ``node_args(i)`` to node ``i``."""
    extra = [*(["--tick-ms", str(tick_ms)] if tick_ms else []), *extra_args]
    if nodes == 1:
        child = Child.python(module, ["--dir", os.path.join(workdir, "n1"), *extra, *node_args(1)],
                             os.path.join(workdir, "n1.log"))
        children.append(child)
        child.recv(60)
        return Started(child, children, {})
    ports = free_ports(nodes)
    cluster = ",".join(f"{i + 1}=127.0.0.1:{ports[i]}" for i in range(nodes))
    procs = []
    for i in range(1, nodes + 1):
        child = Child.python(module,
                             ["--id", str(i), "--dir", os.path.join(workdir, f"n{i}"), "--cluster", cluster, *extra,
                              *node_args(i)],
                             os.path.join(workdir, f"n{i}.log"))
        children.append(child)
        procs.append(child)
    for child in procs:
        child.recv(90)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for child in procs:
            if child.ask({"cmd": "status"}, 10).get("leader"):
                return Started(child, children, {"leader_pid": child.pid})
        time.sleep(0.1)
    raise RuntimeError("no dengine node became leader within 30 s")


def standalone_missing() -> str | None:
    try:
        import dengine
    except ImportError:  # pragma: no cover
        return "dengine is not importable"
    if not hasattr(dengine, "open_client"):
        return "this tree has no standalone client yet (dengine.open_client)"
    out = subprocess.run([sys.executable, "-m", "dengine", "serve", "--help"], capture_output=True, text=True,
                         timeout=60)
    if out.returncode != 0:
        return "this tree has no `dengine serve` command yet"
    return None


def start_dengine_standalone(workdir: str, children: list[Child], connections: int, etcd_api: bool = False) -> Started:
    """Three ``dengine serve`` processes; the load from dengine's own client,
    or with ``etcd_api`` from the aetcd process of etcd-3 through dengine's
    etcd gRPC API."""
    ports = free_ports(9)
    peer, client, etcd = ports[:3], ports[3:6], ports[6:]
    initial = "\n".join(f'{i + 1} = "127.0.0.1:{peer[i]}"' for i in range(3))
    client_map = "\n".join(f'{i + 1} = "127.0.0.1:{client[i]}"' for i in range(3))
    for i in range(3):
        d = os.path.join(workdir, f"s{i + 1}")
        os.makedirs(d, exist_ok=True)
        toml = os.path.join(d, "dengine.toml")
        with open(toml, "w") as f:
            f.write(
                f'[node]\nid = {i + 1}\ndata_dir = "{os.path.join(d, "data")}"\n'
                f'peer_address = "127.0.0.1:{peer[i]}"\nclient_address = "127.0.0.1:{client[i]}"\n\n'
                f'[cluster]\nid = "dengine"\n\n[cluster.initial]\n{initial}\n\n[cluster.client_addresses]\n{client_map}\n'
                '\n[server]\nmetrics_address = "off"\n'
                + (f'etcd_address = "127.0.0.1:{etcd[i]}"\n' if etcd_api else "")
            )
        children.append(Child([sys.executable, "-m", "dengine", "--log-level", "warning", "serve", "--config", toml],
                              os.path.join(d, "server.log"), json_io=False))
    if etcd_api:
        for p in etcd:
            if not wait_port(p, 60):
                raise RuntimeError(f"dengine's etcd API did not listen on 127.0.0.1:{p} within 60 s")
        return etcd_peer.start_load(workdir, children, [f"127.0.0.1:{p}" for p in etcd], connections,
                                    {"server": "dengine serve --etcd-address"})
    endpoints = ",".join(f"127.0.0.1:{p}" for p in client)
    driver = Child.python("benchmarks.standalone_load", ["--endpoints", endpoints, "--connections", str(connections)],
                          os.path.join(workdir, "standalone-load.log"))
    children.append(driver)
    driver.recv(90)
    return Started(driver, children, {"endpoints": endpoints, "connections": connections})


# -- running ----------------------------------------------------------------


def run_system(name: str, start: Callable[[str, list[Child]], Started], scenarios: list[str], workdir: str,
               seconds: float, max_ops: int, extra: Callable[[Started], dict[str, Any]] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"system": name, "results": {}}
    children: list[Child] = []
    sysdir = os.path.join(workdir, name)
    os.makedirs(sysdir, exist_ok=True)
    t0 = time.perf_counter()
    try:
        progress(f"{name}: starting")
        started = start(sysdir, children)
        out["info"] = started.info
        progress(f"{name}: ready in {time.perf_counter() - t0:.1f} s")
        for sc in scenarios:
            if sc == "write-1" and name == "dengine-embedded-1":
                # The disk's sync latency drifts: measure it right beside write-1.
                out["fsync_adjacent"] = [started.driver.ask({"cmd": "fsync", "seconds": 1.0}, 60)]
            res = started.driver.ask({"cmd": "run", "scenario": sc, "seconds": seconds, "max_ops": max_ops},
                                     seconds + 120)
            res.pop("event", None)
            out["results"][sc] = res
            progress(f"{name}: {sc:<18} {report.one_line(res)}")
            if "fsync_adjacent" in out and len(out["fsync_adjacent"]) == 1:
                out["fsync_adjacent"].append(started.driver.ask({"cmd": "fsync", "seconds": 1.0}, 60))
                progress(f"{name}: raw write+fsync p50 before/after write-1: "
                         + " / ".join(f"{f['p50_ms']:.3f} ms" for f in out["fsync_adjacent"]))
        if extra is not None:
            out.update(extra(started))
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        progress(f"{name}: FAILED: {exc}")
    finally:
        stop_all(children)
        shutil.rmtree(sysdir, ignore_errors=True)
    out["wall_seconds"] = time.perf_counter() - t0
    return out


def run_watch(quick: bool) -> dict[str, Any]:
    """``python -m benchmarks watch`` as it is; its tables are read back."""
    cmd = [sys.executable, "-m", "benchmarks", "watch", *(["--quick"] if quick else [])]
    progress("watch: running python -m benchmarks watch" + (" --quick" if quick else ""))
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    except subprocess.TimeoutExpired:
        return {"error": "python -m benchmarks watch did not finish within 300 s"}
    if out.returncode != 0:
        return {"error": f"python -m benchmarks watch exited {out.returncode}: {out.stderr.strip()[-500:]}"}
    parsed = report.parse_watch_output(out.stdout)
    progress(f"watch: done ({len(parsed.get('latency', []))} latency rows, {len(parsed.get('fanout', []))} fan-out rows)")
    return {"command": " ".join(["python -m benchmarks watch", *(["--quick"] if quick else [])]),
            "output": out.stdout, **parsed}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a one-minute smoke run (short scenarios)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma list of systems (default: all)")
    parser.add_argument("--scenarios", default=",".join(KV_SCENARIOS + WATCH_SCENARIOS),
                        help="comma list of scenarios (default: all)")
    parser.add_argument("--no-peers", action="store_true", help="dengine only")
    parser.add_argument("--connections", type=int, default=1, help="client connections of the standalone and etcd load")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per scenario (default 4, --quick 0.4)")
    parser.add_argument("--max-ops", type=int, default=2_000_000, help="operations per scenario at most")
    parser.add_argument("--tick-ms", type=float, default=0.0, help="dengine raft.tick_interval_ms (default: config's)")
    parser.add_argument("--pysyncobj-period", type=float, default=0.0,
                        help="PySyncObj appendEntriesPeriod in seconds (default: its own default, 0.1)")
    parser.add_argument("--no-check-perf", action="store_true", help="skip etcdctl check perf (60 s)")
    parser.add_argument("--dir", default=".", help="where the temporary data directories go (the data disk)")
    parser.add_argument("--out", default=RESULTS_DIR, help="report directory (default benchmarks/results)")
    ns = parser.parse_args(argv)
    seconds = ns.seconds if ns.seconds is not None else (0.4 if ns.quick else 4.0)
    systems = [s.strip() for s in ns.systems.split(",") if s.strip()]
    scenarios = [s.strip() for s in ns.scenarios.split(",") if s.strip()]
    for s in systems:
        if s not in SYSTEMS:
            parser.error(f"unknown system {s!r} (choose from {', '.join(SYSTEMS)})")
    for s in scenarios:
        if s not in SCENARIOS:
            parser.error(f"unknown scenario {s!r} (choose from {', '.join(SCENARIOS)})")
    if ns.no_peers:
        systems = [s for s in systems if s not in PEERS]
    kv = [s for s in scenarios if s in KV_SCENARIOS]
    watch = [s for s in scenarios if s in WATCH_SCENARIOS]
    command = "python -m benchmarks" + "".join(" " + shlex.quote(a) for a in argv)
    began = time.time()
    progress(f"{command}: {len(systems)} systems x {len(kv)} scenarios, {seconds:g} s each")

    data: dict[str, Any] = {"command": command, "quick": ns.quick, "seconds_per_scenario": seconds,
                            "started": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(began)),
                            "systems": {}, "skipped": {}}
    os.makedirs(ns.dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dengine-suite-", dir=ns.dir) as workdir:
        progress("machine: measuring write+fsync latency of the data disk")
        data["machine"] = machine_facts(workdir, 0.5 if ns.quick else 2.0)
        progress(f"machine: {data['machine']['cpus']} CPUs, Python {data['machine']['python']}, "
                 f"fsync p50 {data['machine']['fsync']['p50_ms']:.3f} ms")
        for name in systems:
            start: Callable[[str, list[Child]], Started]
            extra: Callable[[Started], dict[str, Any]] | None = None
            why: str | None = None
            if name == "dengine-embedded-1":
                start = lambda d, c: start_dengine_embedded(d, c, 1, ns.tick_ms)  # noqa: E731

                def extra(st: Started) -> dict[str, Any]:
                    progress("dengine-embedded-1: bare dict.get loop in the same process")
                    progress("dengine-embedded-1: the same loop over client.get_nowait (local read)")
                    return {
                        "dict_get": st.driver.ask({"cmd": "dict-get", "seconds": min(seconds, 2.0)}, 60),
                        "local_get": st.driver.ask({"cmd": "local-get", "seconds": min(seconds, 2.0)}, 60),
                    }
            elif name == "dengine-embedded-3":
                start = lambda d, c: start_dengine_embedded(d, c, 3, ns.tick_ms)  # noqa: E731
            elif name == "dengine-standalone-3":
                why = standalone_missing()
                start = lambda d, c: start_dengine_standalone(d, c, ns.connections)  # noqa: E731
            elif name == "dengine-etcdapi-3":
                why = standalone_missing() or etcd_peer.missing()
                start = lambda d, c: start_dengine_standalone(d, c, ns.connections, etcd_api=True)  # noqa: E731
            elif name == "etcd-3":
                why = etcd_peer.missing()
                start = lambda d, c: etcd_peer.start(d, c, ns.connections)  # noqa: E731
                if not ns.quick and not ns.no_check_perf:

                    def extra(st: Started) -> dict[str, Any]:
                        progress("etcd-3: etcdctl check perf --load=s (60 s)")
                        res = etcd_peer.check_perf(st.info["endpoints"])
                        progress(f"etcd-3: check perf: {'; '.join(res.get('lines', [])) or res}")
                        return {"check_perf": res}
            else:
                journal = name == "pysyncobj-journal-3"
                why = syncobj_peer.missing()
                start = lambda d, c, j=journal: syncobj_peer.start(d, c, j, ns.pysyncobj_period)  # noqa: E731
            if why is not None:
                data["skipped"][name] = why
                progress(f"{name}: skipped: {why}")
                continue
            data["systems"][name] = run_system(name, start, kv, workdir, seconds, ns.max_ops, extra)
        if watch and any(s.startswith("dengine-embedded") for s in systems):
            data["watch"] = run_watch(ns.quick)
    if "etcd-3" in data["systems"]:
        data["systems"]["etcd-3"].setdefault("info", {})["etcd_benchmark_tool"] = (
            "not run: etcd's `benchmark` tool is not shipped by Debian's etcd-server/etcd-client 3.4")
    data["wall_seconds"] = time.time() - began
    paths = report.write_all(data, ns.out, "suite-quick" if ns.quick else "suite")
    progress(f"done in {data['wall_seconds']:.0f} s: " + ", ".join(paths))
    print(report.markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())

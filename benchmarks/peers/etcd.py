"""etcd 3.4 (Debian's ``etcd-server``): three members on loopback, driven from
Python through ``aetcd`` (a maintained asyncio client for etcd's v3 gRPC API,
works with current grpcio/protobuf; ``etcd3`` is unmaintained and breaks on
protobuf >= 4). The load runs in its own process, connected to the leader.

Where etcd's own tooling is installed, ``etcdctl check perf`` is run too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks.procs import Child, free_ports, wait_port

INSTALL = "apt-get install etcd-server etcd-client && pip install aetcd"


def missing() -> str | None:
    if shutil.which("etcd") is None or shutil.which("etcdctl") is None:
        return f"etcd/etcdctl not found (install: {INSTALL})"
    try:
        import aetcd  # noqa: F401
    except ImportError:
        return "the aetcd Python client is not installed (install: pip install aetcd, or pip install -e '.[bench]')"
    return None


def version() -> str:
    try:
        out = subprocess.run(["etcd", "--version"], capture_output=True, text=True, timeout=10).stdout
        return out.splitlines()[0].strip() if out else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


@dataclass
class Started:
    driver: Child
    children: list[Child] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def _etcdctl(endpoints: list[str], *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ETCDCTL_API": "3"}
    return subprocess.run(["etcdctl", f"--endpoints={','.join(endpoints)}", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def start(workdir: str, children: list[Child], connections: int) -> Started:
    """Start the members (appended to ``children`` as they start, so the
    caller's finally stops them even if this fails) and the load process."""
    ports = free_ports(6)
    client_ports, peer_ports = ports[:3], ports[3:]
    initial = ",".join(f"e{i}=http://127.0.0.1:{peer_ports[i]}" for i in range(3))
    for i in range(3):
        d = os.path.join(workdir, f"etcd-{i}")
        os.makedirs(d, exist_ok=True)
        argv = [
            "etcd", "--name", f"e{i}", "--data-dir", os.path.join(d, "data"),
            "--listen-client-urls", f"http://127.0.0.1:{client_ports[i]}",
            "--advertise-client-urls", f"http://127.0.0.1:{client_ports[i]}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer_ports[i]}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_ports[i]}",
            "--initial-cluster", initial, "--initial-cluster-token", "dengine-bench",
            "--initial-cluster-state", "new", "--logger", "zap", "--log-level", "error",
        ]
        children.append(Child(argv, os.path.join(d, "etcd.log"), json_io=False))
    endpoints = [f"127.0.0.1:{p}" for p in client_ports]
    for p in client_ports:
        if not wait_port(p, 30):
            raise RuntimeError(f"etcd did not listen on 127.0.0.1:{p} within 30 s\n{children[-1].log_tail()}")
    return start_load(workdir, children, endpoints, connections, {"version": version()})


def leader_endpoint(endpoints: list[str], timeout: float = 30) -> str:
    """The endpoint of the member that leads, by etcd's Status RPC (``etcdctl endpoint status``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = _etcdctl(endpoints, "endpoint", "status", "-w", "json")
        if out.returncode == 0:
            for st in json.loads(out.stdout):
                status = st["Status"]
                if status.get("leader") and status["leader"] == status["header"].get("member_id"):
                    return str(st["Endpoint"])
        time.sleep(0.2)
    raise RuntimeError(f"no leader answered etcd's Status RPC at {', '.join(endpoints)} within {timeout:g} s")


def start_load(workdir: str, children: list[Child], endpoints: list[str], connections: int,
               info: dict[str, Any]) -> Started:
    """The aetcd load process, connected to the leader among ``endpoints``
    (an etcd cluster, or dengine's etcd API: the same client either way)."""
    leader_ep = leader_endpoint(endpoints)
    driver = Child.python("benchmarks.peers.etcd_load",
                          ["--endpoint", leader_ep, "--connections", str(connections)],
                          os.path.join(workdir, "etcd-load.log"))
    children.append(driver)
    driver.recv(60)  # ready
    return Started(driver, children, {"endpoints": endpoints, "leader": leader_ep, **info,
                                      "client": "aetcd (asyncio gRPC)", "connections": connections})


def check_perf(endpoints: list[str], timeout: float = 120) -> dict[str, Any]:
    """etcd's own ``etcdctl check perf --load=s`` (60 s, 50 clients, 150 writes/s)."""
    try:
        out = _etcdctl(endpoints, "check", "perf", "--load=s", timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"etcdctl check perf did not finish within {timeout:g} s"}
    lines = [ln.strip() for ln in (out.stdout + out.stderr).splitlines()
             if ln.strip() and ("PASS" in ln or "FAIL" in ln or "Slowest" in ln or "Stddev" in ln)]
    return {"command": "ETCDCTL_API=3 etcdctl check perf --load=s", "returncode": out.returncode, "lines": lines}

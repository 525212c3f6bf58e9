"""PySyncObj (PyPI ``pysyncobj``): three processes on loopback, each a
``ReplDict``; the load runs in the leader's process (PySyncObj, like dengine
embedded, is a library inside the application). Two variants: with its
journal file, and in memory."""

from __future__ import annotations

import os
import time

from benchmarks.peers.etcd import Started
from benchmarks.procs import Child, free_ports

INSTALL = "pip install pysyncobj (or pip install -e '.[bench]')"


def missing() -> str | None:
    try:
        import pysyncobj  # noqa: F401
    except ImportError:
        return f"pysyncobj is not installed (install: {INSTALL})"
    return None


def version() -> str:
    from importlib.metadata import version as v

    return v("pysyncobj")


def start(workdir: str, children: list[Child], journal: bool, append_period: float = 0.0) -> Started:
    ports = free_ports(3)
    addrs = [f"127.0.0.1:{p}" for p in ports]
    nodes = []
    for i in range(3):
        d = os.path.join(workdir, f"syncobj-{'journal' if journal else 'memory'}-{i}")
        os.makedirs(d, exist_ok=True)
        args = ["--self", addrs[i], "--partners", ",".join(a for a in addrs if a != addrs[i])]
        if journal:
            args += ["--journal", d]
        if append_period:
            args += ["--append-period", str(append_period)]
        child = Child.python("benchmarks.peers.syncobj_node", args, os.path.join(d, "node.log"))
        children.append(child)
        nodes.append(child)
    leader = None
    for child in nodes:
        child.recv(60)
    deadline = time.monotonic() + 30
    while leader is None and time.monotonic() < deadline:
        for child in nodes:
            if child.ask({"cmd": "status"}, 10).get("leader"):
                leader = child
                break
        else:
            time.sleep(0.1)
    if leader is None:
        raise RuntimeError("PySyncObj elected no leader within 30 s")
    return Started(leader, children, {"version": version(), "journal": journal,
                                      "appendEntriesPeriod": append_period or "0.1 (default)"})

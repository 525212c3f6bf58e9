"""Helpers for the tests of dengine's etcd faces against real programs:
`dengine serve` processes with ``--etcd-address`` and ``--etcd-gateway-address``,
a real etcd beside them (Debian's etcd-server) to compare with, and etcdctl.

Rules: free ports on 127.0.0.1; every process is stopped by its PID in a
finally; every wait is bounded in time.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import IO

import pytest
import trio

from dengine.testing import free_ports
from tests.cluster.http_helpers import HttpCluster

ETCDCTL = shutil.which("etcdctl")
ETCD = shutil.which("etcd")
INSTALL_ETCD = "install etcd: apt-get install -y etcd-server etcd-client"

needs_etcdctl = pytest.mark.skipif(ETCDCTL is None, reason=f"etcdctl is missing; {INSTALL_ETCD}")
needs_etcd = pytest.mark.skipif(ETCD is None or ETCDCTL is None, reason=f"etcd is missing; {INSTALL_ETCD}")


class EtcdFacedCluster(HttpCluster):
    """`dengine serve` processes that also answer etcd's API: node ``i`` serves
    gRPC on ``self.grpc[i]`` and the JSON gateway on ``self.gateway[i]``."""

    def __init__(self, tmp: pathlib.Path, n: int = 1) -> None:
        super().__init__(tmp, n)
        ports = free_ports(2 * n)
        self.grpc = {i: f"127.0.0.1:{ports[i - 1]}" for i in range(1, n + 1)}
        self.gateway = {i: f"127.0.0.1:{ports[n + i - 1]}" for i in range(1, n + 1)}

    def argv(self, node_id: int) -> list[str]:
        return [*super().argv(node_id), "--etcd-address", self.grpc[node_id],
                "--etcd-gateway-address", self.gateway[node_id]]

    async def wait_etcd_ready(self, timeout: float = 30) -> int:
        """The leader, once every node has one and answers etcd's API."""
        leader = await self.wait_for_leader(timeout)
        for i in sorted(self.procs):
            await wait_endpoint(self.grpc[i], timeout)
        return leader


@asynccontextmanager
async def dengine_with_etcd(tmp: pathlib.Path, n: int = 1) -> AsyncIterator[EtcdFacedCluster]:
    """``n`` `dengine serve` processes answering etcd's API, ready (a leader elected)."""
    cluster = EtcdFacedCluster(tmp, n)
    try:
        for i in range(1, n + 1):
            await cluster.start(i)
        await cluster.wait_etcd_ready()
        yield cluster
    finally:
        await cluster.stop_all()


async def etcdctl(endpoint: str, *args: str, stdin: bytes | None = None, timeout: float = 20,
                  endpoints: Sequence[str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run ``etcdctl --endpoints=<endpoint> ARGS`` (API 3); its output, bounded by ``timeout``."""
    assert ETCDCTL is not None
    env = {**os.environ, "ETCDCTL_API": "3"}
    env.pop("ETCDCTL_ENDPOINTS", None)
    eps = ",".join(endpoints) if endpoints else endpoint
    with trio.fail_after(timeout):
        return await trio.run_process([ETCDCTL, f"--endpoints={eps}", "--command-timeout=10s", *args],
                                      stdin=stdin or b"", capture_stdout=True, capture_stderr=True, check=False,
                                      env=env)


async def wait_endpoint(endpoint: str, timeout: float = 30) -> None:
    """Until ``etcdctl endpoint status`` answers at ``endpoint`` (bounded)."""
    last = b""
    with trio.move_on_after(timeout):
        while True:
            done = await etcdctl(endpoint, "endpoint", "status", timeout=10)
            if done.returncode == 0:
                return
            last = done.stderr
            await trio.sleep(0.2)
    raise AssertionError(f"no etcd API at {endpoint} within {timeout} s: {last.decode(errors='replace')}")


class RealEtcd:
    """One real etcd (Debian's etcd-server) on free ports: ``endpoint`` is its client address."""

    def __init__(self, tmp: pathlib.Path) -> None:
        client, peer = free_ports(2)
        self.endpoint = f"127.0.0.1:{client}"
        self.peer = f"127.0.0.1:{peer}"
        self.data_dir = tmp / "etcd-data"
        self.proc: trio.Process | None = None
        self.log: IO[bytes] | None = None
        self.log_path = tmp / "etcd.log"

    async def start(self) -> None:
        assert ETCD is not None
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = await trio.lowlevel.open_process(
            [ETCD, "--name", "default", "--data-dir", str(self.data_dir),
             "--listen-client-urls", f"http://{self.endpoint}", "--advertise-client-urls", f"http://{self.endpoint}",
             "--listen-peer-urls", f"http://{self.peer}", "--initial-advertise-peer-urls", f"http://{self.peer}",
             "--initial-cluster", f"default=http://{self.peer}", "--log-level", "error", "--logger", "zap"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        await wait_endpoint(self.endpoint)

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            with trio.CancelScope(shield=True):
                if proc.returncode is None:
                    proc.kill()
                with trio.move_on_after(15):
                    await proc.wait()
        if self.log is not None:
            self.log.close()
            self.log = None


@asynccontextmanager
async def real_etcd(tmp: pathlib.Path) -> AsyncIterator[RealEtcd]:
    etcd = RealEtcd(tmp)
    try:
        await etcd.start()
        yield etcd
    finally:
        await etcd.stop()

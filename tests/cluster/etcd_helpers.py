"""Helpers for the tests of dengine's etcd faces against real programs:
`dengine serve` processes with ``--etcd-address`` and ``--etcd-gateway-address``,
a real etcd beside them (Debian's etcd-server) to compare with, and etcdctl.

Rules: free ports on 127.0.0.1; every process is stopped by its PID in a
finally; every wait is bounded in time.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import IO, Any

import attrs

import pytest
import trio

from dengine.testing import free_ports
from tests.cluster.http_helpers import HttpCluster, running_cluster

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
    async with running_cluster(tmp, n, EtcdFacedCluster) as cluster:
        await cluster.wait_etcd_ready()
        yield cluster


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


# -- a tiny HTTP/1.1 client for the gateway's tests (stdlib + trio) -------------


@attrs.define
class Response:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    #: The chunks of a chunked body (each as sent), else None.
    chunks: list[bytes] | None = None

    def json(self) -> Any:
        return json.loads(b"".join(self.chunks) if self.chunks is not None else self.body)

    def __iter__(self) -> Iterator[Any]:
        """Unpacks as (status, headers, the body or the chunks of a chunked one)."""
        yield self.status
        yield self.headers
        yield self.chunks if self.chunks is not None else self.body

    def __getitem__(self, index: int) -> Any:
        return tuple(self)[index]


class HttpConn:
    """One HTTP connection that reads a response head, then a body or chunks as they come."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    @classmethod
    async def open(cls, address: str) -> HttpConn:
        host, port = address.rsplit(":", 1)
        return cls(await trio.open_tcp_stream(host, int(port)))

    async def _fill(self) -> bool:
        data = await self.stream.receive_some(65536)
        self.buf += data
        return bool(data)

    async def head(self) -> Response:
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            if not await self._fill():
                raise EOFError(f"closed before a response head: {bytes(self.buf)!r}")
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[: end + 4]
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        return Response(int(lines[0].split()[1]), headers)

    async def chunk(self) -> bytes | None:
        """The next chunk of a chunked body; None at its end (trailers dropped)."""
        while (eol := self.buf.find(b"\r\n")) < 0:
            if not await self._fill():
                raise EOFError("closed inside a chunked body")
        size = int(bytes(self.buf[:eol]).split(b";")[0], 16)
        if size == 0:
            return None
        while len(self.buf) < eol + 2 + size + 2:
            if not await self._fill():
                raise EOFError("closed inside a chunk")
        data = bytes(self.buf[eol + 2: eol + 2 + size])
        assert self.buf[eol + 2 + size: eol + 4 + size] == b"\r\n"
        del self.buf[: eol + 4 + size]
        return data

    async def response(self) -> Response:
        resp = await self.head()
        if resp.headers.get("transfer-encoding") == "chunked":
            resp.chunks = []
            while (data := await self.chunk()) is not None:
                resp.chunks.append(data)
        else:
            length = int(resp.headers.get("content-length", "0"))
            while len(self.buf) < length:
                if not await self._fill():
                    raise EOFError("closed inside a body")
            resp.body = bytes(self.buf[:length])
            del self.buf[:length]
        return resp

    async def closed(self) -> bool:
        """Whether the server closes the connection (reads until EOF; bounded by the caller)."""
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                return True
            if not data:
                return True
            self.buf += data

    async def aclose(self) -> None:
        await self.stream.aclose()

"""Helpers for the tests of the HTTP face against real `dengine serve` processes:
a cluster whose nodes each answer HTTP on a free port, a tiny HTTP GET, and
headless Chromium driven over the DevTools protocol on a pipe (stdlib only).

Rules: free ports on 127.0.0.1; every process is stopped by its PID in a
finally (kill, then a bounded wait); every wait is bounded in time.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import IO, Any, TypeVar

import trio

from dengine.testing import free_ports

CLUSTER_ID = "http-test"
CHROMIUM = shutil.which("chromium")
INSTALL_CHROMIUM = "install chromium: apt-get install -y chromium"


class HttpCluster:
    """Three (or ``n``) `dengine serve` processes; node ``i`` answers HTTP on ``self.http[i]``."""

    def __init__(self, tmp: pathlib.Path, n: int = 3) -> None:
        self.tmp = tmp
        ports = free_ports(3 * n)
        ids = range(1, n + 1)
        self.peers = {i: f"127.0.0.1:{ports[i - 1]}" for i in ids}
        self.clients = {i: f"127.0.0.1:{ports[n + i - 1]}" for i in ids}
        self.http = {i: f"127.0.0.1:{ports[2 * n + i - 1]}" for i in ids}
        self.procs: dict[int, trio.Process] = {}
        self.logs: dict[int, IO[bytes]] = {}

    def argv(self, node_id: int) -> list[str]:
        return [
            sys.executable, "-m", "dengine", "serve", "--id", str(node_id),
            "--data-dir", str(self.tmp / f"n{node_id}"), "--peer-address", self.peers[node_id],
            "--client-address", self.clients[node_id], "--metrics-address", self.http[node_id],
            "--initial-cluster", ",".join(f"{i}={a}" for i, a in self.peers.items()),
            "--client-addresses", ",".join(f"{i}={a}" for i, a in self.clients.items()),
            "--cluster-id", CLUSTER_ID,
        ]

    async def start(self, node_id: int) -> None:
        log = self.logs[node_id] = open(self.tmp / f"n{node_id}.log", "ab")  # noqa: SIM115 - closed in stop()
        # 50 ms ticks: elections in about a second, yet no flapping on a busy machine.
        env = {**os.environ, "DENGINE_RAFT__TICK_INTERVAL_MS": "50"}
        self.procs[node_id] = await trio.lowlevel.open_process(
            self.argv(node_id), stdout=log, stderr=subprocess.STDOUT, env=env
        )

    async def stop(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(node_id)
        try:
            if proc.returncode is None:
                proc.send_signal(sig)
            with trio.move_on_after(15):
                await proc.wait()
                return
            proc.kill()
            await proc.wait()
        finally:
            self.logs.pop(node_id).close()

    async def stop_all(self) -> None:
        with trio.CancelScope(shield=True):
            for i in list(self.procs):
                await self.stop(i)

    def log_tail(self) -> str:
        return "\n".join(
            f"--- n{i} ---\n" + (self.tmp / f"n{i}.log").read_text(errors="replace")[-3000:]
            for i in sorted(self.http)
        )

    async def status(self, node_id: int) -> dict[str, Any] | None:
        """Node ``node_id``'s /status.json, or None if it does not answer (yet)."""
        try:
            code, _, body = await http_get(self.http[node_id], "/status.json")
        except OSError:
            return None
        return json.loads(body) if code == 200 else None

    async def wait_for_leader(self, timeout: float = 20) -> int:
        """The leader, once every node answers /status.json, sees it and sees
        every member reachable and healthy (bounded by ``timeout``)."""
        with trio.move_on_after(timeout):
            while True:
                docs = [await self.status(i) for i in sorted(self.procs)]
                leaders = {d["leader_id"] for d in docs if d is not None}
                if all(d is not None and all(r["healthy"] for r in d["cluster"]) for d in docs) and (
                    len(leaders) == 1 and None not in leaders
                ):
                    (leader,) = leaders
                    assert isinstance(leader, int)
                    return leader
                await trio.sleep(0.1)
        raise AssertionError(f"no leader seen by every node within {timeout} s\n{self.log_tail()}")


C = TypeVar("C", bound=HttpCluster)


@asynccontextmanager
async def running_cluster(tmp: pathlib.Path, n: int = 3, kind: type[C] = HttpCluster) -> AsyncIterator[C]:  # type: ignore[assignment]
    """``n`` processes of cluster ``kind`` started, all stopped on the way out."""
    cluster = kind(tmp, n)
    try:
        for i in range(1, n + 1):
            await cluster.start(i)
        yield cluster
    finally:
        await cluster.stop_all()


async def http_get(address: str, path: str, *, timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
    """GET ``path`` from ``address`` (one request per connection, as the
    server answers): (status, headers with lower-case names, body)."""
    host, port = address.rsplit(":", 1)
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n".encode())
            data = bytearray()
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


# -- headless Chromium over the DevTools protocol ------------------------------------


class Browser:
    """Chromium started with ``--remote-debugging-pipe``: it reads commands
    from its fd 3 and writes answers to its fd 4, as NUL-terminated JSON."""

    def __init__(self, proc: trio.Process, send: trio.lowlevel.FdStream, receive: trio.lowlevel.FdStream) -> None:
        self.proc = proc
        self._send = send
        self._receive = receive
        self._next_id = 0
        self._waiting: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self.session: str | None = None

    async def read_messages(self) -> None:
        buffer = bytearray()
        while chunk := await self._receive.receive_some(1 << 16):
            buffer += chunk
            while (end := buffer.find(b"\0")) >= 0:
                message = json.loads(bytes(buffer[:end]))
                del buffer[: end + 1]
                channel = self._waiting.pop(message.get("id", -1), None)
                if channel is not None:
                    channel.send_nowait(message)

    async def call(self, method: str, params: dict[str, Any] | None = None, *, timeout: float = 15) -> dict[str, Any]:
        """One DevTools command (in the page's session once :meth:`open` ran)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session is not None and not method.startswith("Target."):
            message["sessionId"] = self.session
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._waiting[self._next_id] = send
        with trio.fail_after(timeout):
            await self._send.send_all(json.dumps(message).encode() + b"\0")
            answer = await receive.receive()
        if "error" in answer:
            raise AssertionError(f"{method} failed: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def open(self, url: str) -> None:
        """Load ``url`` in a page (created on first use)."""
        if self.session is None:
            target = await self.call("Target.createTarget", {"url": "about:blank"})
            attached = await self.call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
            self.session = attached["sessionId"]
            await self.call("Page.enable")
            await self.call("Emulation.setDeviceMetricsOverride",
                            {"width": 1180, "height": 760, "deviceScaleFactor": 1, "mobile": False})
        await self.call("Page.navigate", {"url": url})

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} raised: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, check: Callable[[Any], bool], *, timeout: float) -> Any:
        """Evaluate ``expression`` every 0.1 s until ``check`` accepts its
        value; raises AssertionError with the last value after ``timeout``."""
        value: Any = None
        with trio.move_on_after(timeout):
            while True:
                value = await self.evaluate(expression)
                if check(value):
                    return value
                await trio.sleep(0.1)
        raise AssertionError(f"the page did not get there within {timeout} s; it shows {value!r}")

    async def screenshot(self, path: pathlib.Path) -> None:
        shot = await self.call("Page.captureScreenshot", {"format": "png"})
        path.write_bytes(base64.b64decode(shot["data"]))


def _high_fd(fd: int) -> int:
    """A duplicate of ``fd`` numbered 10 or more (so setting the child's 3
    and 4 cannot clobber it); ``fd`` is closed."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


@asynccontextmanager
async def open_browser(tmp: pathlib.Path) -> AsyncIterator[Browser]:
    """Headless Chromium with its own profile under ``tmp``; stopped (by
    PID, bounded) when the block exits."""
    assert CHROMIUM is not None
    to_child_r, to_child_w = (_high_fd(fd) for fd in os.pipe())
    from_child_r, from_child_w = (_high_fd(fd) for fd in os.pipe())
    argv = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--mute-audio", "--remote-debugging-pipe",
        f"--user-data-dir={tmp / 'chromium-profile'}",
    ]
    # A trampoline puts the pipe ends on the fds Chromium reads (3) and writes (4).
    trampoline = (
        "import os, sys; r, w = int(sys.argv[1]), int(sys.argv[2]); os.dup2(r, 3); os.dup2(w, 4); "
        "os.close(r); os.close(w); os.execv(sys.argv[3], sys.argv[3:])"
    )
    log = open(tmp / "chromium.log", "ab")  # noqa: SIM115 - closed below
    try:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-c", trampoline, str(to_child_r), str(from_child_w), *argv],
            pass_fds=(to_child_r, from_child_w),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    finally:
        os.close(to_child_r)
        os.close(from_child_w)
    send = trio.lowlevel.FdStream(to_child_w)
    receive = trio.lowlevel.FdStream(from_child_r)
    browser = Browser(proc, send, receive)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(browser.read_messages)
            try:
                yield browser
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await send.aclose()
            await receive.aclose()
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                with trio.move_on_after(5):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            # Chromium's own helpers (renderer, zygote) share its process group.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            log.close()

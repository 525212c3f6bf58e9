"""A server that resets the connection (RST) never kills the remote client.

The client's calls fail with a dengine error, or are retried on another
endpoint; a watch ends with Unavailable (``auto_resume=False``) or is
re-opened elsewhere; the ``async with open_client(...)`` block itself never
raises a bare ``trio.BrokenResourceError``.

Rules: 127.0.0.1, port 0 or free ports; every test under an absolute
fail_after; we wait on events and on trio.testing.wait_all_tasks_blocked,
never on sleeps; every loop is bounded; a server process is stopped by its
PID in a finally.

The fake server speaks the real handshake (dengine.transport.handshake)
and resets each connection by closing it with SO_LINGER (1, 0), which makes
the kernel send RST instead of FIN.
"""

from __future__ import annotations

import functools
import os
import pathlib
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import pytest
import trio
import trio.testing

import dengine
from dengine import Config, WatchEventType
from dengine.client._connection import Connection, ConnectionLost
from dengine.codec import unpack
from dengine.transport.client_protocol import STATUS_ITEM, encode_response
from dengine.transport.framing import FrameDecoder, encode_frames
from dengine.transport.handshake import accept_handshake
from tests.integration.cluster_helpers import free_ports

DEADLINE = 30
CLUSTER = "reset-test"
# Bounds the fake server's per-connection read loop.
_MAX_RECEIVES = 1000


class ResetServer:
    """Accepts client connections, completes the real handshake as node 9,
    answers a watch request with its "created" item, and resets the
    connection once ``hold`` unary requests have arrived on it (right after
    the handshake when ``hold`` is 0). ``hold_first`` applies to the first
    connection only; later ones use ``hold``."""

    def __init__(self, *, hold_first: int = 0, hold: int = 0) -> None:
        self.hold_first = hold_first
        self.hold = hold
        self.endpoint = ""
        self.accepted = 0
        self.resets = 0
        self.watches = 0
        self.reset_event = trio.Event()  # set at the first reset

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            await self._serve(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, dengine.DengineError):
            pass  # the client went away first (its deadline passed, or its block ended)

    async def _serve(self, stream: trio.SocketStream) -> None:
        decoder = FrameDecoder()
        await accept_handshake(stream, decoder, cluster_id=CLUSTER, node_id=9, kind="client", timeout=5)
        self.accepted += 1
        hold = self.hold_first if self.accepted == 1 else self.hold
        unary = 0
        data = b""
        for _ in range(_MAX_RECEIVES):
            for body in decoder.feed(data):
                rid, op, _args = unpack(body)
                if op == "watch":
                    self.watches += 1
                    created = {"created": True, "start_revision": 1}
                    await stream.send_all(encode_frames([encode_response(rid, STATUS_ITEM, created)]))
                else:
                    unary += 1
            if unary >= hold:
                break
            data = await stream.receive_some(1 << 16)
            if not data:
                return
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await stream.aclose()  # RST: the kernel discards the connection at once
        self.resets += 1
        self.reset_event.set()


@asynccontextmanager
async def open_reset_server(*, hold_first: int = 0, hold: int = 0) -> AsyncIterator[ResetServer]:
    server = ResetServer(hold_first=hold_first, hold=hold)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, server._handle, 0, host="127.0.0.1"))
        host, port = listeners[0].socket.getsockname()[:2]
        server.endpoint = f"{host}:{port}"
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


def _config(tmp_path: pathlib.Path) -> Config:
    cfg = Config.single_node(str(tmp_path / "real"), client_address="127.0.0.1:0", cluster_id=CLUSTER)
    return attrs.evolve(cfg, raft=attrs.evolve(cfg.raft, tick_interval_ms=10))


@asynccontextmanager
async def open_real_server(tmp_path: pathlib.Path) -> AsyncIterator[dengine.Server]:
    async with dengine.open_server(_config(tmp_path)) as server:
        await server.wait_ready(timeout=10)
        yield server


# -- a reset right after the handshake ----------------------------------------------


async def test_a_reset_right_after_the_handshake_fails_the_call_with_a_dengine_error() -> None:
    with trio.fail_after(DEADLINE):
        async with open_reset_server() as fake:
            async with dengine.open_client([fake.endpoint], cluster_id=CLUSTER, timeout=0.5) as client:
                # A read is retried on any cluster error until its deadline.
                with pytest.raises(dengine.Timeout, match="get did not complete within 0.5 s"):
                    await client.get(b"k")
                # A write is retried while it surely was not sent (then times
                # out); one that was sent fails at once: its outcome is unknown.
                with pytest.raises(
                    (dengine.Unavailable, dengine.Timeout),
                    match="put did not complete within 0.5 s|may or may not have been applied",
                ):
                    await client.put(b"k", b"v")
                with pytest.raises(dengine.Unavailable):
                    await client.status(endpoint=fake.endpoint)
            assert fake.resets >= 2


async def test_a_reset_endpoint_is_left_for_a_real_one(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(DEADLINE):
        async with open_reset_server() as fake, open_real_server(tmp_path) as real:
            endpoints = [fake.endpoint, real.client_address]  # the fake one is tried first
            async with dengine.open_client(endpoints, cluster_id=CLUSTER, timeout=10) as client:
                assert await client.get(b"k") is None
                assert fake.resets == 1
                assert await client.put(b"k", b"v") > 0
                assert await client.get(b"k") == b"v"


# -- a reset while requests are in flight and a watch is open --------------------------


async def test_a_reset_with_requests_in_flight_and_a_watch_open() -> None:
    with trio.fail_after(DEADLINE):
        async with open_reset_server(hold_first=6) as fake:
            async with dengine.open_client(
                [fake.endpoint], cluster_id=CLUSTER, timeout=1, auto_resume=False
            ) as client:
                async with client.open_watch(b"/w/", prefix=True) as watch:
                    assert watch.endpoint == fake.endpoint
                    errors: list[BaseException] = []

                    async def call(n: int) -> None:
                        try:
                            if n % 2:
                                await client.put(b"/w/%d" % n, b"v")
                            else:
                                await client.get(b"/w/%d" % n)
                        except dengine.DengineError as exc:
                            errors.append(exc)

                    async with trio.open_nursery() as nursery:
                        for n in range(6):  # the fake resets once all six arrived
                            nursery.start_soon(call, n)
                        with pytest.raises(dengine.Unavailable, match="resume with start_revision=1"):
                            await watch.receive()
                    assert fake.resets >= 1
                    assert len(errors) == 6
                    for exc in errors:
                        # Sent reads are retried until their deadline; sent
                        # writes fail at once: their outcome is unknown.
                        assert isinstance(exc, (dengine.Timeout, dengine.Unavailable)), exc
                        assert "may or may not have been applied" in str(exc) or "get did not complete" in str(exc)
                # The client is still usable: the next call fails cleanly too.
                with pytest.raises(dengine.Timeout):
                    await client.get(b"/w/x")


async def test_a_watch_on_a_reset_server_reopens_on_another(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(DEADLINE):
        async with open_reset_server(hold_first=3) as fake, open_real_server(tmp_path) as real:
            endpoints = [fake.endpoint, real.client_address]
            async with dengine.open_client(endpoints, cluster_id=CLUSTER, timeout=10) as client:
                async with client.open_watch(b"/w/", prefix=True) as watch:
                    assert watch.endpoint == fake.endpoint
                    results: list[bytes | None] = []

                    async def read(n: int) -> None:
                        # Eventual reads go to the open connection: the fake one.
                        results.append(await client.get(b"/w/%d" % n, consistency="eventual"))

                    async with trio.open_nursery() as nursery:
                        for n in range(3):
                            nursery.start_soon(read, n)
                        await fake.reset_event.wait()
                    assert results == [None, None, None]  # retried on the real server
                    # A write through the real server reaches the resumed watch.
                    async with dengine.open_client([real.client_address], cluster_id=CLUSTER) as other:
                        revision = await other.put(b"/w/a", b"1")
                    event = await watch.receive()
                    assert (event.type, event.key, event.revision) == (WatchEventType.PUT, b"/w/a", revision)
                    assert watch.endpoint == real.client_address
                    assert watch.resumes == 1
                    assert fake.watches == 1  # not re-opened on the server that reset it


# -- both halves of a connection fail at once ------------------------------------------


class _ResetStream(trio.abc.Stream):
    """A stream whose pending write and pending read both fail at the same
    moment, as on a reset: ``reset`` wakes both."""

    def __init__(self) -> None:
        self.reset = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.reset.wait()
        raise trio.BrokenResourceError("write: connection reset by peer")

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await self.reset.wait()
        raise trio.BrokenResourceError("read: connection reset by peer")

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_a_reader_and_a_writer_failing_together_end_the_connection_quietly() -> None:
    with trio.fail_after(DEADLINE):
        stream = _ResetStream()
        conn = Connection("fake:1", stream, node_id=9, max_frame_size=1 << 20)
        lost: list[ConnectionLost] = []

        async def call() -> None:
            with pytest.raises(ConnectionLost) as info:
                await conn.request("get", {"key": b"k"})
            lost.append(info.value)

        async with trio.open_nursery() as nursery:  # would raise a group of two errors
            nursery.start_soon(conn.run)
            nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()  # the frame is in send_all, the reader in receive_some
            stream.reset.set()
        assert conn.closed
        assert len(lost) == 1
        assert not lost[0].sent  # its frame was cut short: the server cannot have acted on it
        assert "connection reset by peer" in str(lost[0])


# -- a real server process killed with SIGKILL -----------------------------------------


class ServeProcess:
    """One single-node `dengine serve` process on free loopback ports."""

    def __init__(self, tmp: pathlib.Path) -> None:
        self.tmp = tmp
        peer, client = free_ports(2)
        self.peer = f"127.0.0.1:{peer}"
        self.endpoint = f"127.0.0.1:{client}"
        self.proc: trio.Process | None = None

    async def start(self) -> None:
        argv = [
            sys.executable, "-m", "dengine", "--log-level", "warning", "serve", "--metrics-address", "off", "--id", "1",
            "--data-dir", str(self.tmp / "n1"), "--peer-address", self.peer,
            "--client-address", self.endpoint, "--initial-cluster", f"1={self.peer}", "--cluster-id", CLUSTER,
        ]
        env = {**os.environ, "DENGINE_RAFT__TICK_INTERVAL_MS": "20"}
        with open(self.tmp / "n1.log", "ab") as log:
            self.proc = await trio.lowlevel.open_process(argv, stdout=log, stderr=subprocess.STDOUT, env=env)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def stop(self) -> None:
        """SIGKILL by PID (if still running) and reap."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()


async def test_a_server_killed_with_requests_in_flight(tmp_path: pathlib.Path) -> None:
    server = ServeProcess(tmp_path)
    try:
        with trio.fail_after(DEADLINE):
            await server.start()
            async with dengine.open_client([server.endpoint], cluster_id=CLUSTER, timeout=15) as client:
                await client.put(b"k", b"v")  # waits (bounded) for the process to serve
                # Stopped, the server reads nothing: the requests below stay
                # unread in its socket, so SIGKILL closes it with RST.
                server.signal(signal.SIGSTOP)
                errors: list[BaseException] = []

                async def call(n: int) -> None:
                    try:
                        if n % 2:
                            await client.put(b"k%d" % n, b"v", timeout=1)
                        else:
                            await client.get(b"k", timeout=1)
                    except dengine.DengineError as exc:
                        errors.append(exc)

                async with trio.open_nursery() as nursery:
                    for n in range(8):
                        nursery.start_soon(call, n)
                    await trio.testing.wait_all_tasks_blocked()  # all eight written, none answered
                    assert errors == []
                    await server.stop()
                assert len(errors) == 8
                for exc in errors:
                    assert isinstance(exc, (dengine.Timeout, dengine.Unavailable)), exc
                assert any("may or may not have been applied" in str(exc) for exc in errors)
                # The same client serves again once the server is back.
                await server.start()
                assert await client.get(b"k") == b"v"
    finally:
        with trio.CancelScope(shield=True):
            await server.stop()

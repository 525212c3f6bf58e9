"""Three real `dengine serve` processes on 127.0.0.1, driven through the
client and the CLI; kill -9 of the leader under a stream of writes.

Rules: free ports on 127.0.0.1; every process is stopped by its PID in a
finally (kill + wait); every loop is bounded in count and time; the whole
test runs under an absolute fail_after. Waiting is done by the client's own
bounded retries, never by sleeps.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import IO

import pytest
import trio

import dengine
from dengine import WatchEventType
from tests.integration.cluster_helpers import free_ports

DEADLINE = 50


class Processes:
    def __init__(self, tmp: pathlib.Path, n: int = 3) -> None:
        self.tmp = tmp
        ports = free_ports(2 * n)
        self.peers = {i: f"127.0.0.1:{ports[i - 1]}" for i in range(1, n + 1)}
        self.clients = {i: f"127.0.0.1:{ports[n + i - 1]}" for i in range(1, n + 1)}
        self.procs: dict[int, trio.Process] = {}
        self.logs: dict[int, IO[bytes]] = {}

    def argv(self, node_id: int) -> list[str]:
        members = ",".join(f"{i}={a}" for i, a in self.peers.items())
        clients = ",".join(f"{i}={a}" for i, a in self.clients.items())
        return [
            sys.executable, "-m", "dengine", "serve", "--metrics-address", "off", "--id", str(node_id),
            "--data-dir", str(self.tmp / f"n{node_id}"), "--peer-address", self.peers[node_id],
            "--client-address", self.clients[node_id], "--initial-cluster", members,
            "--client-addresses", clients, "--cluster-id", "proc-test",
        ]

    async def start(self, node_id: int) -> None:
        log = self.logs[node_id] = open(self.tmp / f"n{node_id}.log", "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "DENGINE_RAFT__TICK_INTERVAL_MS": "20"}
        self.procs[node_id] = await trio.lowlevel.open_process(
            self.argv(node_id), stdout=log, stderr=subprocess.STDOUT, env=env
        )

    async def stop(self, node_id: int, sig: int = signal.SIGKILL) -> int:
        proc = self.procs.pop(node_id)
        try:
            if proc.returncode is None:
                proc.send_signal(sig)
            with trio.move_on_after(15):
                return await proc.wait()
            proc.kill()
            return await proc.wait()
        finally:
            self.logs.pop(node_id).close()

    def endpoints(self) -> list[str]:
        return [self.clients[i] for i in sorted(self.clients)]

    def node_of(self, endpoint: str) -> int:
        return next(i for i, a in self.clients.items() if a == endpoint)

    def log_tail(self) -> str:
        return "\n".join(
            f"--- n{i} ---\n" + (self.tmp / f"n{i}.log").read_text(errors="replace")[-3000:]
            for i in sorted(self.clients)
        )


@pytest.fixture
async def procs(tmp_path: pathlib.Path) -> AsyncIterator[Processes]:
    p = Processes(tmp_path)
    try:
        for i in (1, 2, 3):
            await p.start(i)
        yield p
    finally:
        with trio.CancelScope(shield=True):
            for i in list(p.procs):
                await p.stop(i)


async def _cli(*argv: str, endpoints: list[str]) -> tuple[int, str]:
    result = await trio.run_process(
        [sys.executable, "-m", "dengine", "--log-level", "warning", *argv,
         "--endpoints", ",".join(endpoints), "--cluster-id", "proc-test", "--timeout", "10"],
        capture_stdout=True, capture_stderr=True, check=False,
    )
    return result.returncode, result.stdout.decode() + result.stderr.decode()


async def test_three_processes_survive_kill_9_of_the_leader(procs: Processes) -> None:
    with trio.fail_after(DEADLINE):
        async with dengine.open_client(procs.endpoints(), cluster_id="proc-test", timeout=20) as client:
            await client.put(b"/p/0", b"0")  # waits (bounded) for processes, election, leader
            leader = (await client.leader()).leader_id
            assert leader is not None
            # The CLI talks to the same cluster.
            code, out = await _cli("put", "/cli/x", "1", endpoints=procs.endpoints())
            assert code == 0 and out.startswith("OK revision "), out
            code, out = await _cli("get", "/cli/x", endpoints=procs.endpoints())
            assert (code, out) == (0, "1\n")
            code, out = await _cli("members", endpoints=procs.endpoints())
            assert code == 0 and all(a in out for a in procs.clients.values())

        # A watch served by the leader, and a writer, through the kill.
        endpoints = [procs.clients[leader]] + [a for i, a in procs.clients.items() if i != leader]
        async with dengine.open_client(endpoints, cluster_id="proc-test", timeout=10) as client:
            acked: dict[bytes, bytes] = {}
            unknown = 0
            async with client.open_watch(b"/p/", prefix=True, start_revision=1) as watch:
                assert watch.endpoint == procs.clients[leader]
                seen: list[tuple[bytes, bytes, int]] = []

                async def reader() -> None:
                    async for event in watch:
                        assert event.type == WatchEventType.PUT
                        seen.append((event.key, event.value, event.revision))
                        if event.key == b"/p/end":
                            return

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(reader)
                    for i in range(1, 121):  # bounded: 120 writes
                        if i == 40:
                            await procs.stop(leader)  # kill -9 under the stream of writes
                        key, value = b"/p/%d" % i, b"v%d" % i
                        try:
                            await client.put(key, value)
                        except (dengine.Unavailable, dengine.Timeout):
                            unknown += 1  # outcome unknown; never silently retried
                            continue
                        acked[key] = value
                    await client.put(b"/p/end", b"end")
                assert watch.resumes >= 1
                assert watch.endpoint != procs.clients[leader]
            assert unknown <= 5
            revisions = [r for _, _, r in seen]
            assert revisions == sorted(set(revisions)), "the watch saw no duplicate"
            delivered = {k: v for k, v, _ in seen}
            for key, value in acked.items():
                assert delivered.get(key) == value, f"the watch missed acknowledged {key!r}"
            values = await client.get_many(list(acked))
            assert values == list(acked.values()), "every acknowledged write is readable"
            new_leader = (await client.leader()).leader_id
            assert new_leader is not None and new_leader != leader

        # The survivors stop gracefully on SIGTERM, exit 0.
        for i in list(procs.procs):
            assert await procs.stop(i, signal.SIGTERM) == 0, procs.log_tail()


async def test_a_paused_leader_is_given_up_at_once_not_at_the_deadline(procs: Processes) -> None:
    """SIGSTOP of the leader: a write waiting there fails as soon as the
    server stays silent through a ping (its error says so, and that the
    write's outcome is unknown), not at the call's 20 s deadline; the next
    calls of the same client reach the new leader. Both clients, the trio
    one and the blocking one, follow the same rule."""
    with trio.fail_after(DEADLINE):
        async with dengine.open_client(procs.endpoints(), cluster_id="proc-test", timeout=20) as client:
            await client.put(b"/s/0", b"0")  # waits (bounded) for processes, election, leader
            leader = (await client.leader()).leader_id
            assert leader is not None
        first = [procs.clients[leader]] + [a for i, a in procs.clients.items() if i != leader]
        blocking = dengine.connect(first, cluster_id="proc-test", timeout=20)
        try:
            async with dengine.open_client(first, cluster_id="proc-test", timeout=20) as client:
                await client.put(b"/s/1", b"1")  # both connected to the leader
                await trio.to_thread.run_sync(blocking.put, b"/s/2", b"2")
                procs.procs[leader].send_signal(signal.SIGSTOP)
                try:
                    with pytest.raises(dengine.Unavailable) as trio_error:
                        await client.put(b"/s/3", b"3")
                    with pytest.raises(dengine.Unavailable) as blocking_error:
                        await trio.to_thread.run_sync(blocking.put, b"/s/4", b"4")
                    for error in (trio_error.value, blocking_error.value):
                        text = str(error)
                        assert f"the connection to {procs.clients[leader]} was lost after the write was sent" in text
                        assert "not even to a ping" in text and "may or may not have been applied" in text
                    # The same clients go on, at the new leader.
                    assert await client.get(b"/s/2") == b"2"
                    await client.put(b"/s/5", b"5")
                    assert await trio.to_thread.run_sync(blocking.get, b"/s/5") == b"5"
                    new_leader = (await client.leader()).leader_id
                    assert new_leader not in (None, leader)
                finally:
                    procs.procs[leader].send_signal(signal.SIGCONT)
        finally:
            blocking.close()

"""The coordination commands of the CLI (docs/cli.md: Leases, Transactions,
Locks and elections) as subprocesses against one real ``dengine serve``
process:

* ``lease grant / ttl / list / keep-alive --once / revoke`` and ``put
  --lease`` (a revoked lease's key is gone); ``lease keep-alive`` renews
  until its lease is revoked;
* ``txn`` from stdin: the success and the failure branch, and a syntax
  error naming its line;
* ``lock NAME -- COMMAND``: two contenders never run their commands at the
  same time and the second gets the larger DENGINE_LOCK_TOKEN; the exit code
  is the command's; a lost session terminates the command;
* ``elect NAME VALUE`` and ``elect NAME --listen``: the listener sees the
  leadership move from one candidate to the next.

Rules: 127.0.0.1 and free ports; the server is stopped by its PID in a
finally (SIGKILL, then wait); every subprocess is killed by its PID if it is
still running when its test ends; every wait is on an output line, a watch
event or a process exit, each bounded in time.
"""

from __future__ import annotations

import json
import os
import pathlib
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

import dengine
from dengine.testing import free_ports

CLUSTER = "cli-coordination"
RUN_TIMEOUT = 30  # seconds, any one CLI run or wait
START_TIMEOUT = 60  # seconds for the server to serve


class Server:
    """One ``dengine serve`` process on free loopback ports."""

    def __init__(self, tmp: pathlib.Path) -> None:
        peer, client = free_ports(2)
        self.endpoint = f"127.0.0.1:{client}"
        self.log = tmp / "server.log"
        argv = [sys.executable, "-m", "dengine", "serve", "--metrics-address", "off", "--id", "1", "--data-dir", str(tmp / "data"),
                "--client-address", self.endpoint, "--peer-address", f"127.0.0.1:{peer}", "--cluster-id", CLUSTER,
                "--log-level", "warning"]
        env = {**os.environ, "DENGINE_RAFT__TICK_INTERVAL_MS": "20"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)

    def client(self, timeout: float = 10) -> dengine.BlockingClient:
        return dengine.connect(self.endpoint, cluster_id=CLUSTER, timeout=timeout)

    def env(self) -> dict[str, str]:
        return {**os.environ, "DENGINE_ENDPOINTS": self.endpoint, "DENGINE_CLUSTER_ID": CLUSTER}

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("cli-coordination"))
    try:
        with srv.client(timeout=START_TIMEOUT) as client:  # the client's own bounded retries
            client.put(b"/ready", b"1")
        yield srv
    finally:
        srv.stop()


def _cli(server: Server, *argv: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    run = subprocess.run([sys.executable, "-m", "dengine", *argv], input=stdin, capture_output=True,
                         timeout=RUN_TIMEOUT, env=server.env())
    return subprocess.CompletedProcess(run.args, run.returncode, run.stdout.decode(), run.stderr.decode())


class Proc:
    """A CLI process left running; threads read its output lines."""

    def __init__(self, server: Server, *argv: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "dengine", *argv], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                     env=server.env())
        self.out: queue.Queue[str | None] = queue.Queue()
        self.err: queue.Queue[str | None] = queue.Queue()
        self.err_seen: list[str] = []
        self.readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream: object, lines: queue.Queue[str | None]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.put(line.rstrip("\n"))
        lines.put(None)  # the end

    def _next(self, lines: queue.Queue[str | None], what: str) -> str:
        try:
            line = lines.get(timeout=RUN_TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"no {what} line within {RUN_TIMEOUT} s; stderr so far: {self.err_seen}") from None
        if line is None:
            raise AssertionError(f"{what} ended (exit {self.proc.wait(timeout=RUN_TIMEOUT)}); stderr: "
                                 f"{self.err_seen + self._drain(self.err)}")
        return line

    def line(self) -> str:
        return self._next(self.out, "stdout")

    def err_line(self) -> str:
        line = self._next(self.err, "stderr")
        self.err_seen.append(line)
        return line

    @staticmethod
    def _drain(lines: queue.Queue[str | None]) -> list[str]:
        rest = []
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            rest.append(line)
        return rest

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def finish(self) -> tuple[int, list[str], list[str]]:
        """Its exit code, and the stdout and stderr lines not read yet."""
        code = self.proc.wait(timeout=RUN_TIMEOUT)
        return code, self._drain(self.out), self.err_seen + self._drain(self.err)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=RUN_TIMEOUT)
        for reader in self.readers:  # they end at the pipes' end (a child of the CLI may hold them longer)
            reader.join(timeout=RUN_TIMEOUT)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.kill()


def _wait_put(watch: dengine.BlockingWatch, not_key: bytes | None = None) -> bytes:
    """The key of the next PUT event (other than ``not_key``), bounded."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while (left := deadline - time.monotonic()) > 0:
        event = watch.receive(timeout=left)
        if event.type == dengine.WatchEventType.PUT and event.key != not_key:
            return event.key
    raise AssertionError(f"no PUT within {RUN_TIMEOUT} s")


# -- leases --------------------------------------------------------------------------------------


def test_lease_grant_ttl_list_keep_alive_revoke_and_put_lease(server: Server) -> None:
    run = _cli(server, "lease", "grant", "60")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("lease ") and run.stdout.endswith(" granted with TTL(60s)\n"), run.stdout
    lease = run.stdout.split()[1]
    lease_id = int(lease, 16)  # hex, as etcdctl prints it

    run = _cli(server, "put", "/lease/a", "1", "--lease", lease)
    assert (run.returncode, run.stdout.startswith("OK revision ")) == (0, True), run.stderr
    with server.client() as client:
        kv = client.get_kv(b"/lease/a")
        assert kv is not None and kv.lease == lease_id

    run = _cli(server, "lease", "ttl", lease, "--keys")
    assert run.returncode == 0, run.stderr
    prefix = f"lease {lease} granted with TTL(60s), remaining("
    assert run.stdout.startswith(prefix) and run.stdout.endswith("s), attached keys([/lease/a])\n"), run.stdout
    remaining = float(run.stdout[len(prefix):].split("s)")[0])
    assert 0 < remaining <= 60

    run = _cli(server, "lease", "list")
    lines = run.stdout.splitlines()
    assert run.returncode == 0 and lines[0] == f"found {len(lines) - 1} leases" and lease in lines[1:], run.stderr

    run = _cli(server, "lease", "keep-alive", lease, "--once")
    assert (run.returncode, run.stdout) == (0, f"lease {lease} keepalived with TTL(60)\n"), run.stderr

    run = _cli(server, "lease", "revoke", lease)
    assert (run.returncode, run.stdout) == (0, f"lease {lease} revoked\n"), run.stderr
    with server.client() as client:
        assert client.get_kv(b"/lease/a") is None  # the revoked lease's key is gone
    run = _cli(server, "lease", "ttl", lease)
    assert run.returncode == 3 and run.stdout == ""
    assert f"lease {lease} not found" in run.stderr and "Traceback" not in run.stderr
    run = _cli(server, "put", "/lease/b", "1", "--lease", lease)
    assert run.returncode == 2 and f"lease {lease} does not exist" in run.stderr


def test_lease_keep_alive_renews_until_the_lease_is_revoked(server: Server, procs: list[Proc]) -> None:
    with server.client() as client:
        lease = client.grant_lease(5)
        procs.append(proc := Proc(server, "lease", "keep-alive", f"{lease.id:x}"))
        for _ in range(2):  # the first renewal, then another about a third of the TTL later
            assert proc.line() == f"lease {lease.id:x} keepalived with TTL(5)"
        client.revoke_lease(lease.id)
    code, out, err = proc.finish()
    assert code == 3, (out, err)
    assert f"dengine: lease {lease.id:x} expired or was revoked" in err


# -- txn -----------------------------------------------------------------------------------------


def test_txn_success_and_failure_branches_from_stdin(server: Server) -> None:
    with server.client() as client:
        client.put(b"/txn/k1", b"v1")
        lease = client.grant_lease(60)
    stdin = (
        'value("/txn/k1") = "v1"\n'
        'mod("/txn/k1") > "0"\n'
        'create("/txn/k2") = "0"\n'
        "\n"
        'put /txn/k1 "v 2"\n'
        f"put /txn/k2 two --lease={lease.id:x}\n"
        "get /txn/ --prefix\n"
        "del /txn/nothing\n"
        "\n"
        "put /txn/k1 failed\n"
    ).encode()
    run = _cli(server, "txn", stdin=stdin)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "SUCCESS\n\nOK\n\nOK\n\n/txn/k1\nv 2\n/txn/k2\ntwo\n\n0\n"
    with server.client() as client:
        kv = client.get_kv(b"/txn/k2")
        assert kv is not None and kv.lease == lease.id
    # The same compares fail now: the failure branch runs; FAILURE exits 3, like a cas that did not swap.
    run = _cli(server, "txn", "-w", "json", stdin=stdin)
    assert run.returncode == 3, run.stderr
    result = json.loads(run.stdout)
    assert result["succeeded"] is False
    assert [(r["op"], r["key"]) for r in result["responses"]] == [("put", "/txn/k1")]
    stdin = b'version("/txn/k1") = "2"\n\ndel /txn/ --prefix\n\nget /txn/k1\n'
    run = _cli(server, "txn", stdin=stdin)
    assert (run.returncode, run.stdout) == (3, "FAILURE\n\n/txn/k1\nfailed\n"), run.stderr


def test_txn_syntax_error_names_the_line(server: Server) -> None:
    stdin = b'value("/txn/x") = "1"\nmod("/txn/x") >> "0"\n\nput /txn/x 2\n'
    run = _cli(server, "txn", stdin=stdin)
    assert run.returncode == 2 and run.stdout == ""
    assert 'dengine: txn: line 2 `mod("/txn/x") >> "0"`: malformed comparison' in run.stderr
    with server.client() as client:
        assert client.get_kv(b"/txn/x") is None  # nothing was sent


# -- lock ----------------------------------------------------------------------------------------

# Appends "start TAG TOKEN KEY", waits (bounded) for the GO file, appends
# "end TAG", exits with CODE.
HOLDER = """
import os, pathlib, sys, time
log, go, tag, code = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
with log.open("a") as f:
    f.write(f"start {tag} {os.environ['DENGINE_LOCK_TOKEN']} {os.environ['DENGINE_LOCK_KEY']}\\n")
deadline = time.monotonic() + 30
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.01)
with log.open("a") as f:
    f.write(f"end {tag}\\n")
sys.exit(code if go.exists() else 99)
"""


def test_two_lock_commands_never_run_at_once(server: Server, procs: list[Proc], tmp_path: pathlib.Path) -> None:
    log, go_a, go_b = tmp_path / "log", tmp_path / "go-a", tmp_path / "go-b"
    go_b.touch()  # the second holder finishes at once, when it gets the lock
    with server.client() as client, client.watch(b"/locks/cli/", prefix=True) as watch:
        procs.append(a := Proc(server, "lock", "/locks/cli", "--", sys.executable, "-c", HOLDER, str(log),
                               str(go_a), "A", "0"))
        assert a.err_line().startswith("dengine: holding lock '/locks/cli' as /locks/cli/")
        key_a = _wait_put(watch)
        procs.append(b := Proc(server, "lock", "/locks/cli", "--", sys.executable, "-c", HOLDER, str(log),
                               str(go_b), "B", "7"))
        _wait_put(watch, not_key=key_a)  # B is queued behind A
        assert b.proc.poll() is None
        assert log.read_text().splitlines() == [f"start A {_token(log, 'A')} {key_a.decode()}"]
        go_a.touch()
        assert a.finish()[0] == 0
        code, _, err = b.finish()
        assert code == 7, err  # the command's exit code
    lines = log.read_text().splitlines()
    assert [line.split()[:2] for line in lines] == [["start", "A"], ["end", "A"], ["start", "B"], ["end", "B"]]
    assert _token(log, "B") > _token(log, "A")
    key_b = lines[2].split()[3]
    assert key_b.startswith("/locks/cli/") and key_b != key_a.decode()
    with server.client() as client:
        assert client.scan_prefix(b"/locks/cli/").entries == []  # both released


def _token(log: pathlib.Path, tag: str) -> int:
    [line] = [line for line in log.read_text().splitlines() if line.startswith(f"start {tag} ")]
    return int(line.split()[2])


# Prints its pid and the lock's lease, then sleeps (bounded).
SLEEPER = """
import os, time
print(os.getpid(), os.environ["DENGINE_LOCK_LEASE"], flush=True)
time.sleep(60)
"""


def test_a_lost_lock_session_terminates_the_command(server: Server, procs: list[Proc]) -> None:
    procs.append(proc := Proc(server, "lock", "/locks/lost", "--ttl", "3", "--", sys.executable, "-c", SLEEPER))
    pid, lease = proc.line().split()
    with server.client() as client:
        client.revoke_lease(int(lease, 16))  # the session is lost at its next renewal
    code, _, err = proc.finish()
    assert code == 1, err
    message = "\n".join(err)
    assert f"lock '/locks/lost': the session's lease {lease} was lost" in message
    assert f"terminating the command (pid {pid})" in message
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid), 0)  # the command is gone (and was reaped)


def test_lock_without_a_command_holds_until_sigterm(server: Server, procs: list[Proc]) -> None:
    procs.append(holder := Proc(server, "lock", "/locks/hold", "-w", "json"))
    held = json.loads(holder.line())
    assert held["key"].startswith("/locks/hold/") and held["fencing_token"] > 0
    with server.client() as client, client.watch(b"/locks/hold/", prefix=True) as watch:
        assert [kv.key for kv in client.scan_prefix(b"/locks/hold/").entries] == [held["key"].encode()]
        # A waiter interrupted gives its place back at once (not when its 60 s lease expires).
        procs.append(waiter := Proc(server, "lock", "/locks/hold"))
        queued = _wait_put(watch, not_key=held["key"].encode())
        waiter.signal(signal.SIGINT)
        assert waiter.finish()[:2] == (130, [])
        deadline = time.monotonic() + 10
        while (event := watch.receive(timeout=max(0.001, deadline - time.monotonic()))).key != queued:
            pass
        assert event.type == dengine.WatchEventType.DELETE
        holder.signal(signal.SIGTERM)
        assert holder.finish()[0] == 0
        assert client.scan_prefix(b"/locks/hold/").entries == []  # released


# -- elect ---------------------------------------------------------------------------------------


def test_elect_and_listen_see_the_leadership_move(server: Server, procs: list[Proc]) -> None:
    procs.append(alpha := Proc(server, "elect", "/elections/cli", "alpha"))
    key_alpha = alpha.line()
    assert key_alpha.startswith("/elections/cli/") and alpha.line() == "alpha"
    procs.append(listener := Proc(server, "elect", "/elections/cli", "--listen"))
    assert listener.line() == "alpha"
    with server.client() as client, client.watch(b"/elections/cli/", prefix=True) as watch:
        procs.append(beta := Proc(server, "elect", "/elections/cli", "beta"))
        _wait_put(watch, not_key=key_alpha.encode())  # beta is a candidate
    alpha.signal(signal.SIGINT)
    assert alpha.finish()[0] == 0  # resigned
    key_beta = beta.line()
    assert key_beta.startswith("/elections/cli/") and key_beta != key_alpha and beta.line() == "beta"
    assert listener.line() == "beta"
    beta.signal(signal.SIGTERM)
    assert beta.finish()[0] == 0
    listener.signal(signal.SIGINT)
    code, out, _ = listener.finish()
    assert code == 130 and out == []  # nothing more: nobody leads after beta resigned

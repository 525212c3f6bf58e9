"""The first hour of a new user (issue 12), as subprocesses: ``python -m
dengine`` and the ``dengine`` script against real ``dengine serve``
processes.

* client commands import neither trio nor the engine (``-X importtime``);
* ``--version``;
* the common flags before or after the command, URL endpoints, ``serve
  --log-level debug``;
* ``members`` keeps empty columns, ``--keys-only`` with every output
  format, ``watch`` prints the lines docs/cli.md says;
* timeouts say what was seen: an HTTP server, a node with no quorum;
* values from standard input and files, and the server's own value limit;
* ``status`` prints the leader's id.

Rules: 127.0.0.1 and free ports; every server process is stopped by its
PID in a finally (SIGKILL, then wait); every subprocess and every loop is
bounded in count and time; waiting is done by the client's own bounded
retries, never by sleeps.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from importlib import metadata

import pytest

import dengine
from tests.integration.cluster_helpers import free_ports

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLI_DOC = ROOT / "docs" / "cli.md"
RUN_TIMEOUT = 60  # seconds, any one CLI run
START_TIMEOUT = 60  # seconds for servers to serve
CLUSTER = "first-hour"


def _cli(*argv: str, stdin: bytes | None = None, env: dict[str, str] | None = None,
         python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(
        [sys.executable, *python_flags, "-m", "dengine", *argv], input=stdin,
        capture_output=True, timeout=RUN_TIMEOUT, env={**os.environ, **(env or {})},
    )
    return subprocess.CompletedProcess(run.args, run.returncode, run.stdout.decode(), run.stderr.decode())


class Servers:
    """``dengine serve`` processes of one cluster on free loopback ports."""

    def __init__(self, tmp: pathlib.Path, n: int, *, client_addresses: bool = True) -> None:
        self.tmp = tmp
        ports = free_ports(2 * n)
        self.peers = {i: f"127.0.0.1:{ports[i - 1]}" for i in range(1, n + 1)}
        self.clients = {i: f"127.0.0.1:{ports[n + i - 1]}" for i in range(1, n + 1)}
        self.client_addresses = client_addresses
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, node_id: int, *extra: str) -> None:
        argv = [sys.executable, "-m", "dengine", "serve", "--metrics-address", "off", "--id", str(node_id),
                "--data-dir", str(self.tmp / f"n{node_id}"), "--client-address", self.clients[node_id],
                "--peer-address", self.peers[node_id], "--cluster-id", CLUSTER, *extra]
        if len(self.peers) > 1:
            argv += ["--initial-cluster", ",".join(f"{i}={a}" for i, a in self.peers.items())]
            if self.client_addresses:
                argv += ["--client-addresses", ",".join(f"{i}={a}" for i, a in self.clients.items())]
        env = {**os.environ, "DENGINE_RAFT__TICK_INTERVAL_MS": "20"}
        with open(self.tmp / f"n{node_id}.log", "ab") as log:
            self.procs[node_id] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)

    def kill(self, node_id: int) -> None:
        proc = self.procs.pop(node_id)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def kill_all(self) -> None:
        for node_id in list(self.procs):
            self.kill(node_id)

    def log(self, node_id: int) -> str:
        return (self.tmp / f"n{node_id}.log").read_text(errors="replace")

    def endpoints(self) -> str:
        return ",".join(self.clients[i] for i in sorted(self.procs))

    def wait_serving(self) -> int:
        """The leader's id, once a write commits (the client's bounded retries)."""
        with dengine.connect(self.endpoints(), cluster_id=CLUSTER, timeout=START_TIMEOUT) as client:
            client.put(b"/ready", b"1")
            leader = client.leader().leader_id
        assert leader is not None
        return leader


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    servers = Servers(tmp_path_factory.mktemp("single"), 1)
    try:
        servers.start(1, "--log-level", "warning")  # a common flag after the command
        servers.wait_serving()
        yield servers
    finally:
        servers.kill_all()


def _env(servers: Servers) -> dict[str, str]:
    return {"DENGINE_ENDPOINTS": servers.endpoints(), "DENGINE_CLUSTER_ID": CLUSTER}


# -- 3: client commands never import trio or the engine ------------------------------------


def test_a_client_command_imports_neither_trio_nor_the_engine(single: Servers) -> None:
    assert _cli("put", "/imports/k", "v", env=_env(single)).returncode == 0
    run = _cli("get", "/imports/k", env=_env(single), python_flags=("-X", "importtime"))
    assert (run.returncode, run.stdout) == (0, "v\n"), run.stderr
    imported = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", run.stderr, re.M)
    assert "dengine.client.blocking" in imported and "dengine.cli" in imported
    forbidden = [m for m in imported if m.split(".")[0] == "trio"
                 or m.startswith(("dengine.runtime", "dengine.server", "dengine.embedded", "dengine.storage"))]
    assert forbidden == []


# -- 4: --version ----------------------------------------------------------------------------


def test_version() -> None:
    expected = f"dengine {metadata.version('dengine')}\n"
    run = _cli("--version")
    assert (run.returncode, run.stdout) == (0, expected)
    script = shutil.which("dengine", path=os.pathsep.join([str(pathlib.Path(sys.executable).parent),
                                                            os.environ.get("PATH", "")]))
    if script is not None:  # the console script, when installed
        out = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=RUN_TIMEOUT)
        assert (out.returncode, out.stdout) == (0, expected)


# -- 5: common flags before or after the command; URLs; serve --log-level --------------------


def test_common_flags_before_or_after_the_command(single: Servers) -> None:
    ep = single.clients[1]
    common = ("--cluster-id", CLUSTER)
    assert _cli("--endpoints", ep, *common, "put", "/flags/k", "1").returncode == 0
    before = _cli("--endpoints", ep, "-w", "json", "--timeout", "5", *common, "get", "/flags/k")
    after = _cli("get", "/flags/k", "--endpoints", ep, "--write-out", "json", "--timeout", "5", *common)
    assert before.returncode == after.returncode == 0, (before.stderr, after.stderr)
    assert json.loads(before.stdout)["value"] == json.loads(after.stdout)["value"] == "1"
    # The command's flag wins over the same flag before it.
    mixed = _cli("-w", "json", "get", "/flags/k", "-w", "simple", "--endpoints", ep, *common)
    assert mixed.stdout == "1\n"


def test_url_endpoints_are_accepted_or_refused_saying_why(single: Servers) -> None:
    ep = single.clients[1]
    for url in (f"http://{ep}", f"http://{ep}/"):
        run = _cli("get", "/ready", "--endpoints", url, "--cluster-id", CLUSTER)
        assert (run.returncode, run.stdout) == (0, "1\n"), run.stderr
    for url, said in ((f"ftp://{ep}", "the scheme 'ftp://' is not one dengine speaks"),
                      (f"http://{ep}/v3/kv/range", "no path, user or query")):
        run = _cli("get", "/ready", "--endpoints", url)
        assert run.returncode == 2 and said in run.stderr and "IPv6" not in run.stderr, run.stderr


def test_serve_takes_log_level_after_the_command_and_refuses_client_flags(single: Servers) -> None:
    assert " INFO " not in single.log(1)  # started with `serve --log-level warning`
    assert _cli("serve", "--log-level", "debug", "--help").returncode == 0
    run = _cli("serve", "--log-level", "loud")
    assert run.returncode == 2 and "invalid choice: 'loud'" in run.stderr
    run = _cli("--endpoints", "127.0.0.1:1", "serve")
    assert run.returncode == 2 and "--endpoints is a flag of the client commands" in run.stderr


# -- 6: members, --keys-only, watch ------------------------------------------------------------


def test_members_keep_empty_columns(single: Servers) -> None:
    run = _cli("members", env=_env(single))
    assert run.returncode == 0, run.stderr
    [line] = run.stdout.splitlines()
    # Five columns, whatever is unknown (an empty field keeps its column).
    fields = line.split(", ")
    assert len(fields) == 5 and fields[0] == "1" and fields[2:] == [single.clients[1], "voter", "true"]
    table = _cli("members", "-w", "table", env=_env(single)).stdout
    assert re.search(r"\| id \| peer address +\| client address +\| kind +\| leader +\|", table), table


def test_keys_only_with_every_output_format(single: Servers) -> None:
    env = _env(single)
    for key in ("/ko/a", "/ko/b"):
        assert _cli("put", key, "value-" + key, env=env).returncode == 0
    simple = _cli("scan", "/ko/", "--keys-only", env=env).stdout
    assert simple == "/ko/a\n/ko/b\n"
    as_json = json.loads(_cli("scan", "/ko/", "--keys-only", "-w", "json", env=env).stdout)
    assert as_json["entries"] == [{"key": "/ko/a"}, {"key": "/ko/b"}]
    table = _cli("get", "/ko/", "--prefix", "--keys-only", "-w", "table", env=env).stdout
    assert "/ko/a" in table and "value-" not in table and "value" not in table


def _start_watch(servers: Servers, *argv: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "dengine", "watch", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **_env(servers)})
    # It says "watching ..." on stderr once the watch is registered.
    ready = threading.Event()
    threading.Thread(target=lambda: (proc.stderr.readline(), ready.set()), daemon=True).start()  # type: ignore[union-attr]
    if not ready.wait(RUN_TIMEOUT):
        proc.kill()
        raise AssertionError("the watch did not start")
    return proc


def test_watch_prints_the_lines_docs_cli_md_says(single: Servers) -> None:
    doc = CLI_DOC.read_text()
    assert "3 lines per event" in doc and "--prev-kv` adds a 4th" in doc
    for flags, per_event in (((), 3), (("--prev-kv",), 4)):
        proc = _start_watch(single, "/wl/", "--prefix", "--count", "3", *flags)
        try:
            with dengine.connect(single.endpoints(), cluster_id=CLUSTER) as client:
                client.put(b"/wl/a", b"1")
                client.put(b"/wl/a", b"2")
                client.delete(b"/wl/a")
            out, err = proc.communicate(timeout=RUN_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        assert proc.returncode == 0, err
        lines = out.split("\n")[:-1]
        assert len(lines) == 3 * per_event, out
        events = [lines[i:i + per_event] for i in range(0, len(lines), per_event)]
        expected = [["PUT", "/wl/a", "1"], ["PUT", "/wl/a", "2"], ["DELETE", "/wl/a", ""]]
        if per_event == 4:
            expected = [e + [p] for e, p in zip(expected, ["", "1", "2"])]
        assert events == expected


# -- 8: timeouts say what was seen ---------------------------------------------------------------


@pytest.fixture
def http_server() -> Iterator[str]:
    """Answers anything with an HTTP response, like any web server (a
    bounded number of connections)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(RUN_TIMEOUT)

    def serve() -> None:
        for _ in range(10):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    conn.recv(1024)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1:%d" % listener.getsockname()[1]
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(timeout=30)


def test_an_http_server_is_named_for_what_it_is(http_server: str) -> None:
    run = _cli("get", "k", "--endpoints", http_server, "--timeout", "3")
    assert run.returncode == 1
    assert f"{http_server} does not speak the dengine protocol (it answered like an HTTP server)" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_node_with_no_quorum_says_how_many_members_are_reachable(tmp_path: pathlib.Path) -> None:
    servers = Servers(tmp_path, 3)
    try:
        for i in (1, 2, 3):
            servers.start(i)
        leader = servers.wait_serving()
        survivor = leader % 3 + 1
        for i in (1, 2, 3):
            if i != survivor:
                servers.kill(i)
        ep = servers.clients[survivor]
        for argv in (("get", "/ready"), ("put", "/x", "1")):
            run = _cli(*argv, "--endpoints", ep, "--cluster-id", CLUSTER, "--timeout", "3")
            assert run.returncode == 1, run.stdout
            assert "no leader: 1 of 3 members reachable" in run.stderr, run.stderr
            assert f"node {survivor} at {ep} is " in run.stderr and "connection refused" in run.stderr
            assert "None" not in run.stderr and "Traceback" not in run.stderr
    finally:
        servers.kill_all()


# -- 9: values from standard input and files; the server's limit ----------------------------------


def test_large_values_from_stdin_or_a_file_and_the_servers_own_limit(single: Servers,
                                                                     tmp_path: pathlib.Path) -> None:
    env = _env(single)
    value = bytes(range(256)) * (270_000 // 256 + 1)
    value = value[:270_000]
    run = _cli("put", "/big/stdin", "-", stdin=value, env=env)
    assert run.returncode == 0, run.stderr
    path = tmp_path / "value.bin"
    path.write_bytes(value)
    assert _cli("put", "/big/file", "--value-file", str(path), env=env).returncode == 0
    for key in ("/big/stdin", "/big/file"):
        got = _cli("get", key.encode().hex(), "--hex", env=env)
        assert (got.returncode, bytes.fromhex(got.stdout.strip())) == (0, value)
    # Over the server's raft.max_value_size (1 MiB by default): the server's limit, not one of the client's.
    path.write_bytes(b"x" * (2 << 20))
    run = _cli("put", "/big/too", "--value-file", str(path), env=env)
    assert run.returncode == 2
    assert "value is 2097152 bytes, larger than the limit of 1048576 bytes" in run.stderr
    assert "8388608" not in run.stderr and "16777216" not in run.stderr
    run = _cli("put", "/big/none", env=env)
    assert run.returncode == 2 and "'-' for standard input, or --value-file PATH" in run.stderr


# -- 10: status prints the leader's id -------------------------------------------------------------


def test_status_prints_the_leader_id(single: Servers) -> None:
    env = _env(single)
    run = _cli("status", env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"{single.clients[1]}: " + run.stdout.split(": ", 1)[1]
    assert " leader 1 " in run.stdout and "None" not in run.stdout
    table = _cli("status", "--all", "-w", "table", env=env).stdout
    row = next(line for line in table.splitlines() if single.clients[1] in line)
    assert [c.strip() for c in row.strip("|").split("|")][4] == "1"
    assert json.loads(_cli("status", "-w", "json", env=env).stdout)["leader_id"] == 1

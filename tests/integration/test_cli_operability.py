"""Operability from the command line, as subprocesses against real
``dengine serve`` processes (docs/cli.md, "Every member" and "Logs"):

* ``status --cluster -w table`` lists every member with its own view, one
  leader, each member's version and the size of its data directory;
* ``health --cluster`` is healthy, then, with one member stopped, says it is
  unhealthy and exits 1, while ``status --cluster`` shows its error;
* ``serve --log-format json``: every stderr line is a JSON object, from
  start to a graceful stop, and an error that stops the server is a record
  too.

Rules: 127.0.0.1 and free ports; every server process is stopped by its PID
in a finally (SIGKILL, then wait) or, where the test needs a graceful stop,
by SIGTERM and a bounded wait; every subprocess is bounded in time; waiting
for the cluster is done by the client's own bounded retries, never by
sleeps.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

import dengine
from tests.integration.cluster_helpers import free_ports
from tests.integration.test_cli_first_hour import CLUSTER, Servers, _cli

STOP_TIMEOUT = 30  # seconds for a server to stop on SIGTERM


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    servers = Servers(tmp_path_factory.mktemp("three"), 3)  # with no HTTP listener (--metrics-address off)
    try:
        for node_id in (1, 2, 3):
            servers.start(node_id, "--log-level", "warning")
        servers.wait_serving()
        yield servers
    finally:
        servers.kill_all()


def _env(servers: Servers, *node_ids: int) -> dict[str, str]:
    endpoints = ",".join(servers.clients[i] for i in node_ids) if node_ids else servers.endpoints()
    return {"DENGINE_ENDPOINTS": endpoints, "DENGINE_CLUSTER_ID": CLUSTER}


def _table_rows(text: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[1:]]


def _leader_of(servers: Servers) -> int:
    with dengine.connect(servers.endpoints(), cluster_id=CLUSTER, timeout=30) as client:
        leader = client.leader().leader_id
    assert leader is not None
    return leader


def test_status_cluster_lists_every_member_from_one_endpoint(three: Servers) -> None:
    run = _cli("status", "--cluster", "-w", "table", env=_env(three, 1))  # one endpoint is enough
    assert run.returncode == 0, run.stderr
    rows = _table_rows(run.stdout)
    assert [(r["endpoint"], r["id"]) for r in rows] == [(three.clients[i], str(i)) for i in (1, 2, 3)]
    assert [r["role"] for r in rows].count("leader") == 1
    leader = next(r["id"] for r in rows if r["role"] == "leader")
    assert {r["leader"] for r in rows} == {leader}
    assert {(r["version"], r["is learner"], r["errors"]) for r in rows} == {(dengine.__version__, "false", "")}
    assert all(re.fullmatch(r"\d+(\.\d)? (B|kB|MB|GB)", r["db size"]) for r in rows), rows
    assert all(int(r["raft applied index"]) <= int(r["raft index"]) for r in rows)

    objs = json.loads(_cli("status", "--cluster", "-w", "json", env=_env(three, 2)).stdout)
    assert [o["node_id"] for o in objs] == [1, 2, 3]
    assert {(o["version"], o["leader_id"], tuple(o["errors"])) for o in objs} == {
        (dengine.__version__, int(leader), ())}
    assert all(isinstance(o["db_size"], int) and o["db_size"] > 0 for o in objs), objs


def test_health_cluster_is_healthy(three: Servers) -> None:
    run = _cli("health", "--cluster", env=_env(three, 3))
    assert (run.returncode, run.stderr) == (0, ""), run.stderr
    lines = run.stdout.splitlines()
    assert [line.split(" ")[0] for line in lines] == [three.clients[i] for i in (1, 2, 3)]
    assert all(re.fullmatch(r"\S+ is healthy: served a linearizable read: took = [0-9.]+m?s", line) for line in lines)
    results = json.loads(_cli("health", "-w", "json", env=_env(three)).stdout)  # the --endpoints themselves
    assert [(r["endpoint"], r["health"], r["error"]) for r in results] == [
        (three.clients[i], True, None) for i in (1, 2, 3)]


def test_a_stopped_member_is_unhealthy_and_exit_status_is_1(three: Servers) -> None:
    # Last in this module: it stops a member of the shared cluster.
    stopped = next(i for i in (1, 2, 3) if i != _leader_of(three))
    three.kill(stopped)
    alive = [i for i in (1, 2, 3) if i != stopped]
    env = _env(three, *alive)

    run = _cli("health", "--cluster", "--timeout", "1", env=env)
    assert run.returncode == 1
    assert sorted(line.split(" ")[0] for line in run.stdout.splitlines()) == sorted(three.clients[i] for i in alive)
    assert f"{three.clients[stopped]} is unhealthy: failed to serve a linearizable read: " in run.stderr
    assert "unhealthy cluster: 1 of 3 members unhealthy" in run.stderr

    run = _cli("status", "--cluster", "-w", "table", "--timeout", "1", env=env)
    assert run.returncode == 1 and "1 of 3 members did not answer" in run.stderr
    rows = {r["id"]: r for r in _table_rows(run.stdout)}
    assert "cannot reach" in rows[str(stopped)]["errors"] and rows[str(stopped)]["role"] == ""
    assert [rows[str(i)]["errors"] for i in alive] == ["", ""]


# -- --log-format json -------------------------------------------------------------------------------


def _json_lines(text: str) -> list[dict[str, object]]:
    records = []
    for line in text.splitlines():
        record = json.loads(line)  # every line, or the test fails naming it
        assert isinstance(record, dict), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(record["time"])), line
        assert record["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), line
        assert isinstance(record["logger"], str) and isinstance(record["message"], str), line
        records.append(record)
    return records


def test_serve_log_format_json_every_stderr_line_is_json(tmp_path: pathlib.Path) -> None:
    client, peer, http = (f"127.0.0.1:{p}" for p in free_ports(3))
    argv = [sys.executable, "-m", "dengine", "serve", "--data-dir", str(tmp_path / "d"), "--client-address", client,
            "--peer-address", peer, "--metrics-address", http,  # the HTTP listener's lines must be JSON too
            "--cluster-id", CLUSTER]
    env = {**os.environ, "DENGINE_RAFT__TICK_INTERVAL_MS": "20", "DENGINE_LOG_FORMAT": "json"}  # the variable
    with open(tmp_path / "stderr", "wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:
        with dengine.connect(client, cluster_id=CLUSTER, timeout=60) as c:
            c.put(b"/logs", b"1")
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=STOP_TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT)
    records = _json_lines((tmp_path / "stderr").read_text())
    messages = [str(r["message"]) for r in records]
    assert any(m.startswith("ready: node 1 serving clients on") for m in messages), messages
    assert any(m.startswith("received SIGTERM") for m in messages) and messages[-1] == "stopped"


def test_serve_log_format_json_an_error_that_stops_it_is_a_record(tmp_path: pathlib.Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = "127.0.0.1:%d" % taken.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-m", "dengine", "serve", "--log-format", "json", "--data-dir", str(tmp_path / "d"),
             "--client-address", address, "--peer-address", f"127.0.0.1:{free_ports(1)[0]}",
             "--metrics-address", "off"],
            capture_output=True, timeout=60)
    assert run.returncode != 0
    records = _json_lines(run.stderr.decode())
    assert records[-1]["level"] == "ERROR" and address in str(records[-1]["message"]), records

"""The README's 3-node cluster, run exactly as written: three `dengine serve`
processes, then client commands each given one endpoint (a follower, most
likely) -- every one must work (issue 12: leader hints carry the leader's
client address, which each node announces to its peers).

The commands are read from README.md, so the README cannot drift from what
is tested. Each process is stopped by its PID in a finally; every wait is
bounded.
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import signal
import socket
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEADLINE = 60


def readme_cluster_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("A 3-node cluster") :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "README: no sh block after 'A 3-node cluster'"
    return [line for line in block.group(1).replace("\\\n", " ").splitlines() if line.strip()]


def argv_of(command: str) -> list[str]:
    words = shlex.split(command.rstrip("& "))
    assert words[0] == "dengine", command
    return [sys.executable, "-m", "dengine", *words[1:]]


def test_the_readme_commands_give_a_cluster_any_endpoint_serves(tmp_path: pathlib.Path) -> None:
    commands = readme_cluster_commands()
    servers = [c for c in commands if c.endswith("&")]
    clients = [c for c in commands if not c.endswith("&")]
    assert len(servers) == 3 and clients, commands
    for port in re.findall(r"127\.0\.0\.1:(\d+)", " ".join(commands)):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", int(port))) == 0:
                pytest.fail(f"port {port} of the README's cluster is in use on this machine")
    env = {**os.environ, "DENGINE_RAFT__TICK_INTERVAL_MS": "20"}
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for k, command in enumerate(servers):
            log = open(tmp_path / f"serve{k}.log", "wb")  # noqa: SIM115 - closed below
            logs.append(log)
            procs.append(subprocess.Popen(argv_of(command), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env))
        outputs = []
        for command in clients:
            done = subprocess.run(argv_of(command), cwd=tmp_path, capture_output=True, text=True,
                                  timeout=DEADLINE, env=env, check=False)
            assert done.returncode == 0, (
                f"{command!r} failed ({done.returncode}): {done.stdout}{done.stderr}\n" + _tails(tmp_path)
            )
            outputs.append(done.stdout)
        by_command = dict(zip(clients, outputs))
        get = next(c for c in clients if " get " in f" {c} ")
        put = next(c for c in clients if " put " in f" {c} ")
        assert by_command[get].strip() == shlex.split(put)[3], by_command
        members = next(c for c in clients if " members" in c)
        for port in (9081, 9082, 9083):
            assert f"127.0.0.1:{port}" in by_command[members], by_command[members]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=15)
        for log in logs:
            log.close()


def _tails(tmp: pathlib.Path) -> str:
    return "\n".join(
        f"--- {p.name} ---\n" + p.read_text(errors="replace")[-2000:] for p in sorted(tmp.glob("serve*.log"))
    )

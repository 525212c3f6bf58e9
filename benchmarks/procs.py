"""Child processes of the suite: started with pipes, spoken to in JSON lines,
always stopped by PID (terminate, then kill) in the caller's ``finally``."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from typing import Any

import dengine.testing


free_ports = dengine.testing.free_ports


def wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


class Child:
    """A child process; stdout carries JSON lines when ``json_io``."""

    def __init__(self, argv: list[str], log_path: str, *, json_io: bool = True, env: dict[str, str] | None = None,
                 cwd: str | None = None) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if json_io else subprocess.DEVNULL,
            stdout=subprocess.PIPE if json_io else self._log,
            stderr=self._log,
            env=env,
            cwd=cwd,
        )
        self.pid = self.proc.pid
        self._pending = b""  # read from stdout, not yet returned as lines

    @staticmethod
    def python(module: str, args: list[str], log_path: str, **kw: Any) -> Child:
        return Child([sys.executable, "-m", module, *args], log_path, **kw)

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()

    def recv(self, timeout: float) -> dict[str, Any]:
        """The next JSON line; raises TimeoutError / RuntimeError (with the log tail)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            # Lines already read come first: select() only sees what is still
            # in the pipe, so a reply that arrived in one read with the line
            # before it must not wait for more data.
            while b"\n" in self._pending:
                line, _, self._pending = self._pending.partition(b"\n")
                text = line.decode(errors="replace").strip()
                if text.startswith("{"):
                    return json.loads(text)  # type: ignore[no-any-return]
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer from {self.argv[2:4]} within {timeout:g} s\n{self.log_tail()}")
            ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            if not ready:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"child {self.pid} exited with {self.proc.returncode}\n{self.log_tail()}")
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise RuntimeError(f"child {self.pid} closed its output\n{self.log_tail()}")
            self._pending += chunk

    def ask(self, obj: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.send(obj)
        return self.recv(timeout)

    def log_tail(self, n: int = 15) -> str:
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
            return "\n".join("    " + line for line in lines[-n:])
        except OSError:
            return ""

    def stop(self, grace: float = 10.0) -> None:
        """Ask politely (the stop command, or SIGTERM), then SIGKILL this PID."""
        if self.proc.poll() is None:
            try:
                if self.proc.stdin is not None:
                    self.send({"cmd": "stop"})
                else:
                    self.proc.terminate()
            except (BrokenPipeError, OSError, ValueError):
                self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        self._log.close()


def stop_all(children: list[Child]) -> None:
    for child in children:
        try:
            child.stop()
        except Exception as exc:  # keep stopping the others
            print(f"  (could not stop child {child.pid}: {exc})", file=sys.stderr)

"""An address a node must listen on that cannot be bound: the error says
which listener and which address, and nothing is created on disk (issue 12,
item 7)."""

from __future__ import annotations

import pathlib
import socket
import subprocess
import sys

import pytest
import trio

import dengine
from tests.integration.cluster_helpers import free_ports


def _busy() -> tuple[socket.socket, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, f"127.0.0.1:{sock.getsockname()[1]}"


async def test_client_address_in_use(tmp_path: pathlib.Path) -> None:
    sock, address = _busy()
    data = tmp_path / "data"
    with sock, trio.fail_after(10):
        with pytest.raises(dengine.AddressInUse) as info:
            async with dengine.open_server(dengine.Config(data_dir=str(data), client_address=address)):
                pass  # pragma: no cover - never reached
    assert str(info.value) == f"cannot listen for clients on {address}: it is already in use (another dengine node or program listens there)"
    assert info.value.code == 1003
    assert not data.exists()


async def test_peer_address_in_use(tmp_path: pathlib.Path) -> None:
    sock, address = _busy()
    others = free_ports(3)
    initial = {1: address, 2: f"127.0.0.1:{others[0]}", 3: f"127.0.0.1:{others[1]}"}
    data = tmp_path / "data"
    cfg = dengine.Config(data_dir=str(data), node_id=1, initial_cluster=initial,
                         client_address=f"127.0.0.1:{others[2]}")
    with sock, trio.fail_after(10):
        with pytest.raises(dengine.AddressInUse, match=f"cannot listen for peers on {address}: it is already in use"):
            async with dengine.open_server(cfg):
                pass  # pragma: no cover - never reached
    assert not data.exists()


def test_the_cli_says_which_address_and_creates_nothing(tmp_path: pathlib.Path) -> None:
    sock, address = _busy()
    with sock:
        done = subprocess.run(
            [sys.executable, "-m", "dengine", "serve", "--metrics-address", "off", "--data-dir", str(tmp_path / "d"),
             "--client-address", address],
            capture_output=True, text=True, timeout=60, check=False,
        )
    assert done.returncode != 0
    assert f"cannot listen for clients on {address}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "d").exists()

"""Backup and restore with real processes: `dengine snapshot save` from a
follower of a three-node cluster under write load, `dengine snapshot
restore` into three new data directories, and the new cluster holds
exactly the source's data at the backup's revision (and refuses to start
under the old cluster id).

Rules: free ports on 127.0.0.1; processes stopped by PID in a finally;
bounded loops; an absolute fail_after; no sleeps.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
from typing import IO

import pytest
import trio

import dengine
from dengine.backup import read_backup
from dengine.kv.snapshot import decode_image
from tests.integration.cluster_helpers import free_ports

CLUSTER = "backup-test"


class Cluster:
    def __init__(self, tmp: pathlib.Path, name: str) -> None:
        self.tmp = tmp
        self.name = name
        ports = free_ports(6)
        self.peers = {i: f"127.0.0.1:{ports[i - 1]}" for i in (1, 2, 3)}
        self.clients = {i: f"127.0.0.1:{ports[i + 2]}" for i in (1, 2, 3)}
        self.procs: dict[int, trio.Process] = {}
        self.logs: dict[int, IO[bytes]] = {}

    def initial(self) -> str:
        return ",".join(f"{i}={a}" for i, a in self.peers.items())

    def data_dir(self, i: int) -> pathlib.Path:
        return self.tmp / f"{self.name}{i}"

    async def start(self, i: int, cluster_id: str) -> None:
        argv = [sys.executable, "-m", "dengine", "serve", "--metrics-address", "off", "--id", str(i),
                "--data-dir", str(self.data_dir(i)),
                "--peer-address", self.peers[i], "--client-address", self.clients[i],
                "--initial-cluster", self.initial(), "--cluster-id", cluster_id]
        log = self.logs[i] = open(self.tmp / f"{self.name}{i}.log", "ab")  # noqa: SIM115 - closed in stop_all()
        env = {**os.environ, "DENGINE_RAFT__TICK_INTERVAL_MS": "20"}
        self.procs[i] = await trio.lowlevel.open_process(argv, stdout=log, stderr=subprocess.STDOUT, env=env)

    async def stop_all(self) -> None:
        for i, proc in list(self.procs.items()):
            if proc.returncode is None:
                os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
            self.logs.pop(i).close()
        self.procs.clear()


async def _cli(*argv: str) -> tuple[int, str, str]:
    result = await trio.run_process([sys.executable, "-m", "dengine", "--log-level", "warning", *argv],
                                    capture_stdout=True, capture_stderr=True, check=False)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_a_backup_under_writes_restores_to_a_new_cluster_with_the_data_at_its_revision(
        tmp_path: pathlib.Path) -> None:
    source = Cluster(tmp_path, "src")
    target = Cluster(tmp_path, "new")
    backup = tmp_path / "backup.db"
    try:
        with trio.fail_after(120):
            for i in (1, 2, 3):
                await source.start(i, CLUSTER)
            endpoints = list(source.clients.values())
            async with dengine.open_client(endpoints, cluster_id=CLUSTER, timeout=20) as client:
                await client.put(b"/b/warm", b"up")  # waits (bounded) for the processes and a leader
                leader = (await client.leader()).leader_id
                follower = next(a for i, a in source.clients.items() if i != leader)
                history: list[tuple[int, bytes, bytes]] = []  # (revision, key, value) of every write
                stop = trio.Event()

                async def writer() -> None:
                    for n in range(100_000):  # bounded; stops when the backup is done
                        if stop.is_set():
                            return
                        key, value = b"/b/%d" % (n % 37), b"v%d" % n
                        history.append((await client.put(key, value), key, value))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(writer)
                    code, out, err = await _cli("snapshot", "save", str(backup), "--endpoints", follower,
                                                "--cluster-id", CLUSTER, "-w", "json")
                    stop.set()
                assert code == 0, err
                revision = json.loads(out)["revision"]
                header, _ = read_backup(str(backup))
                assert header.revision == revision and header.cluster_id == CLUSTER
                assert any(r > revision for r, _, _ in history), "the backup was not taken under writes"
                # Python's save_snapshot gives a backup too (of a later revision).
                later = tmp_path / "later.db"
                assert await client.save_snapshot(later) >= revision
            expected: dict[bytes, bytes] = {b"/b/warm": b"up"}
            for r, key, value in sorted(history):
                if r <= revision:
                    expected[key] = value
            await source.stop_all()
            # Disaster recovery: a stopped node's log backed up offline. The old leader's log holds
            # every write it acknowledged (the writer's whole history here).
            rescue = tmp_path / "rescue.db"
            code, out, err = await _cli("snapshot", "save", str(rescue), "--data-dir", str(source.data_dir(leader)),
                                        "-w", "json")
            assert code == 0 and "disaster recovery only" in err, err
            everything = {b"/b/warm": b"up"}
            for _, key, value in sorted(history):
                everything[key] = value
            assert decode_image(read_backup(str(rescue))[1]).values == everything
            assert json.loads(out)["revision"] >= max(r for r, _, _ in history)

            for i in (1, 2, 3):
                code, out, err = await _cli("snapshot", "restore", str(backup), "--data-dir",
                                            str(target.data_dir(i)), "--id", str(i),
                                            "--initial-cluster", target.initial(), "-w", "json")
                assert code == 0, err
                new_id = json.loads(out)["cluster_id"]
            assert new_id == f"{CLUSTER}-restored-{revision}"
            # Under the old cluster id, a restored directory refuses to start.
            code, _, err = await _cli("serve", "--metrics-address", "off", "--id", "1", "--data-dir", str(target.data_dir(1)),
                                      "--peer-address", target.peers[1], "--client-address", target.clients[1],
                                      "--initial-cluster", target.initial(), "--cluster-id", CLUSTER)
            assert code == 2 and f"belongs to cluster {new_id!r}" in err, err
            for i in (1, 2, 3):
                await target.start(i, new_id)
            async with dengine.open_client(list(target.clients.values()), cluster_id=new_id, timeout=20) as client:
                result = await client.scan_prefix(b"/b/")
                assert dict(result.entries) == expected
                members = await client.members()
                assert {m.peer_address for m in members} == set(target.peers.values())
                assert await client.put(b"/b/new", b"cluster") > revision  # it goes on from the backup
    finally:
        with trio.CancelScope(shield=True):
            await source.stop_all()
            await target.stop_all()


def test_a_damaged_backup_is_refused_saying_what_is_wrong(tmp_path: pathlib.Path) -> None:
    from dengine.backup import write_backup
    from dengine.kv.snapshot import snapshot_bytes
    from dengine.kv.store import KVStore

    store = KVStore()
    image = snapshot_bytes(store)
    path = tmp_path / "b.db"
    write_backup(str(path), 0, "c", image)
    assert read_backup(str(path))[1] == image
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(dengine.StorageCorrupted, match="checksum does not match"):
        read_backup(str(path))
    path.write_bytes(b"not a backup")
    with pytest.raises(dengine.StorageCorrupted, match="does not start with the dengine backup magic"):
        read_backup(str(path))
    path.write_bytes(data[:-3])
    with pytest.raises(dengine.StorageCorrupted, match="the header says"):
        read_backup(str(path))
    with pytest.raises(dengine.InvalidArgument, match="not in the initial cluster"):
        dengine.restore_snapshot(str(tmp_path / "x"), str(tmp_path / "d"), node_id=9, initial_cluster={1: "h:1"})


async def test_a_large_backup_shows_progress(tmp_path: pathlib.Path) -> None:
    """Pieces arrive in order and progress reaches the whole size (Python's
    callback, and the CLI's lines on stderr); the backup restores to the data."""
    import attrs

    cfg = dengine.Config.single_node(str(tmp_path / "d"), client_address="127.0.0.1:0")
    cfg = attrs.evolve(cfg, raft=attrs.evolve(cfg.raft, tick_interval_ms=10))
    with trio.fail_after(60):
        async with dengine.open_server(cfg) as server:
            await server.wait_ready(timeout=10)
            async with dengine.open_client([server.client_address], timeout=20) as client:
                for i in range(24):  # 24 x 100 KB: about ten 256 KiB pieces
                    await client.put(b"/big/%02d" % i, bytes([i]) * 100_000)
                calls: list[tuple[int, int]] = []
                revision = await client.save_snapshot(tmp_path / "big.db", progress=lambda d, t: calls.append((d, t)))
            assert len(calls) >= 8
            assert [d for d, _ in calls] == sorted({d for d, _ in calls})  # strictly growing
            assert calls[-1][0] == calls[-1][1] == read_backup(str(tmp_path / "big.db"))[0].size
            # Backups asked for at once are taken one after the other; each is whole.
            async with dengine.open_client([server.client_address], timeout=20) as client:
                async with trio.open_nursery() as nursery:
                    for n in range(3):
                        nursery.start_soon(client.save_snapshot, tmp_path / f"par{n}.db")
            assert all(read_backup(str(tmp_path / f"par{n}.db"))[0].size == calls[-1][1] for n in range(3))
            code, out, err = await _cli("snapshot", "save", str(tmp_path / "cli.db"), "--endpoints",
                                        server.client_address)
            assert code == 0 and out.startswith("Snapshot saved at revision "), err
            lines = [line for line in err.splitlines() if line.startswith("saved ")]
            assert len(lines) >= 5 and lines[-1].endswith("(100%)"), err
    values = decode_image(read_backup(str(tmp_path / "big.db"))[1]).values
    assert values == {b"/big/%02d" % i: bytes([i]) * 100_000 for i in range(24)} and revision > 24

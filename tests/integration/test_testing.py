"""dengine.testing: the helpers applications use to test code embedding dengine.

Rules of this module: every test runs under an absolute ``trio.fail_after``
and waits for conditions, never for a fixed time.
"""

from __future__ import annotations

import pathlib

import pytest
import trio

import dengine
from dengine import Config
from dengine.errors import InvalidArgument
from dengine.testing import MemoryNetwork, MemoryStorage, open_cluster, open_memory_engine, snapshots_installed


async def test_a_memory_engine_never_touches_the_disk(tmp_path: pathlib.Path) -> None:
    data_dir = tmp_path / "never-created"
    with trio.fail_after(20):
        async with open_memory_engine(Config.single_node(str(data_dir))) as engine:
            await engine.wait_ready(timeout=5)
            assert await engine.client.put(b"k", b"v") > 0
            assert await engine.client.get(b"k") == b"v"
            assert snapshots_installed(engine) == 0
        async with open_memory_engine() as engine:  # the single-node defaults
            await engine.wait_ready(timeout=5)
    assert not data_dir.exists()


async def test_a_memory_engine_writes_to_the_storage_it_is_given_and_closes_it() -> None:
    storage = MemoryStorage()
    with trio.fail_after(20):
        async with open_memory_engine(storage=storage) as engine:
            await engine.wait_ready(timeout=5)
            rev = await engine.client.put(b"k", b"v")
            assert storage.load().entries[-1].index >= rev
    with pytest.raises(dengine.errors.StorageFailed, match="closed"):
        storage.load()


async def test_open_cluster_stop_and_restart_a_leader(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(30):
        async with open_cluster(tmp_path, 3) as cluster:
            assert isinstance(cluster.network, MemoryNetwork)
            assert sorted(cluster.engines) == [1, 2, 3]
            leader = await cluster.wait_leader()
            old = leader.status().node_id
            rev = await leader.client.put(b"/jobs/1", b"queued")
            await cluster.stop(old)
            assert old not in cluster.engines
            new = await cluster.wait_leader()
            assert new.status().node_id != old
            assert await new.client.get(b"/jobs/1") == b"queued"
            back = await cluster.start(old)  # on the data it left
            await back.wait_ready(timeout=10)
            kv = await back.client.get_kv(b"/jobs/1")
            assert kv is not None and kv.revision == rev
            assert len(cluster.followers()) == 2
            with pytest.raises(InvalidArgument, match="already running"):
                await cluster.start(old)
            with pytest.raises(InvalidArgument, match="already a member"):
                await cluster.add_learner(old)


async def test_open_cluster_on_tcp(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(30):
        async with open_cluster(tmp_path, 3, tcp=True, cluster_id="tcp-test") as cluster:
            assert cluster.network is None
            leader = await cluster.wait_leader()
            assert leader.config.cluster_id == "tcp-test"
            await leader.client.put(b"k", b"v")
            for engine in cluster.engines.values():
                assert await engine.client.get(b"k") == b"v"
            with pytest.raises(InvalidArgument, match="memory network"):
                await cluster.add_learner(4)


async def test_an_error_in_the_block_is_raised_as_is(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(30):
        with pytest.raises(KeyError, match="mine"):
            async with open_cluster(tmp_path, 1):
                raise KeyError("mine")


async def test_open_cluster_refuses_no_nodes(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(5):
        with pytest.raises(InvalidArgument, match="at least one node"):
            async with open_cluster(tmp_path, 0):
                pass

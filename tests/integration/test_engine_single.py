"""A single-node engine on a real data directory: every KV operation, TTL,
restart, lifecycle, bad input. Every test runs under an absolute deadline."""

from __future__ import annotations

import pathlib
import threading

import attrs
import pytest
import trio

import dengine
import dengine.errors
from dengine import Config, ReadConsistency
from dengine.testing import MemoryStorage, open_memory_engine, wait_snapshot_past


def single(tmp_path: pathlib.Path, **raft: object) -> Config:
    cfg = Config.single_node(str(tmp_path / "data"))
    return attrs.evolve(cfg, raft=attrs.evolve(cfg.raft, **{"tick_interval_ms": 10, **raft}))


async def test_every_kv_operation(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(20):
        async with dengine.open_engine(config=single(tmp_path)) as engine:
            await engine.wait_ready(timeout=5)
            kv = engine.client
            rev1 = await kv.put(b"/config/timeout", b"30")
            rev2 = await kv.put(b"/config/retries", b"3")
            assert rev2 > rev1 > 0
            assert await kv.get(b"/config/timeout") == b"30"
            assert await kv.get(b"/missing") is None
            assert await kv.get(b"/config/timeout", consistency=ReadConsistency.LEASE) == b"30"
            assert await kv.get(b"/config/timeout", consistency="eventual") == b"30"
            assert await kv.get_many([b"/config/retries", b"/nope", b"/config/timeout"]) == [b"3", None, b"30"]
            scan = await kv.scan_prefix(b"/config/")
            assert [tuple(e) for e in scan.entries] == [(b"/config/retries", b"3"), (b"/config/timeout", b"30")]
            assert scan.revision >= rev2
            assert await kv.compare_and_swap(b"lock", expected=None, new=b"me") is True
            assert await kv.compare_and_swap(b"lock", expected=None, new=b"you") is False
            assert await kv.compare_and_swap(b"lock", expected=b"me", new=b"you") is True
            assert await kv.get(b"lock") == b"you"
            assert await kv.delete(b"lock") is True
            assert await kv.delete(b"lock") is False
            assert await kv.get(b"lock") is None
            kv_item = await kv.get_kv(b"/config/retries")
            assert kv_item is not None and kv_item.revision == rev2


async def test_bytes_applied_also_set_off_a_snapshot(tmp_path: pathlib.Path) -> None:
    cfg = single(tmp_path, snapshot_threshold=1_000_000, snapshot_threshold_bytes=20_000)
    with trio.fail_after(30):
        async with dengine.open_engine(config=cfg) as engine:
            await engine.wait_ready(timeout=5)
            for i in range(10):  # about 10 kB: under the byte threshold
                await engine.client.put(b"/big/%d" % i, b"x" * 1000)
            assert engine.status().last_snapshot_index == 0
            for i in range(10, 25):  # past 20 kB: a snapshot, though far from 1,000,000 entries
                await engine.client.put(b"/big/%d" % i, b"x" * 1000)
            await wait_snapshot_past(engine, 0)
            assert 15 <= engine.status().last_snapshot_index <= 27


async def test_restart_keeps_everything(tmp_path: pathlib.Path) -> None:
    cfg = single(tmp_path, snapshot_threshold=50)
    with trio.fail_after(30):
        async with dengine.open_engine(config=cfg) as engine:
            await engine.wait_ready(timeout=5)
            for i in range(120):  # crosses two snapshots
                await engine.client.put(b"/k/%03d" % i, b"v%d" % i)
            await engine.client.delete(b"/k/007")
            before = await engine.client.scan_prefix(b"/k/")
            assert engine.status().last_snapshot_index > 0
        async with dengine.open_engine(config=cfg) as engine:
            await engine.wait_ready(timeout=5)
            after = await engine.client.scan_prefix(b"/k/")
            assert after.entries == before.entries
            assert len(after.entries) == 119
            assert await engine.client.get(b"/k/007") is None
            assert after.revision > before.revision  # the new term's no-op


async def test_ttl_expires_through_the_log(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(20):
        async with dengine.open_engine(config=single(tmp_path)) as engine:
            await engine.wait_ready(timeout=5)
            kv = engine.client
            # Long enough that the next three calls finish first on a loaded machine.
            await kv.put(b"/session/a", b"x", ttl=1.5)
            await kv.put(b"/session/b", b"y", ttl=1.5)
            await kv.put(b"/session/b", b"y2")  # a put without ttl clears the TTL
            assert await kv.get(b"/session/a") == b"x"
            applied_before = engine.status().applied_index
            # Wait until the leader's sweeper proposed the deletion and it applied.
            while await kv.get(b"/session/a", consistency="eventual") is not None or (
                engine.status().applied_index == applied_before
            ):
                await trio.sleep(0.02)
            assert await kv.get(b"/session/a") is None
            assert await kv.get(b"/session/b") == b"y2"


async def test_lifecycle_notifications(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(20):
        async with dengine.open_engine(config=single(tmp_path)) as engine:
            stop = engine.stop_notify()
            stopped = engine.stopped_notify()
            changes = engine.leader_changed_notify()
            firsts = engine.first_commit_notify()
            await engine.ready_notify().wait()
            assert engine.is_leader() and engine.current_leader() == 1
            assert engine.current_term() >= 2
            info = await changes.receive()
            while info.leader_id is None:
                info = await changes.receive()
            assert info == dengine.LeaderInfo(leader_id=1, term=engine.current_term())
            assert await firsts.receive() > 0
            status = engine.status()
            assert status.role == "leader" and status.leader_id == 1 and status.node_id == 1
            assert [m.node_id for m in status.members] == [1]
            assert not stop.is_set()
        assert stop.is_set() and stopped.is_set()
        # Subscriptions end when the engine stops.
        assert [i async for i in changes] == []


async def test_calls_after_stop_raise_engine_stopped(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(20):
        async with dengine.open_engine(config=single(tmp_path)) as engine:
            await engine.wait_ready(timeout=5)
            kv = engine.client
        with pytest.raises(dengine.EngineStopped):
            await kv.put(b"k", b"v")
        with pytest.raises(dengine.Unavailable):
            await kv.get(b"k")


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda kv: kv.put("k", b"v"), "key must be bytes"),
        (lambda kv: kv.put(b"", b"v"), "empty"),
        (lambda kv: kv.put(b"k" * 5000, b"v"), "key"),
        (lambda kv: kv.put(b"k", b"v" * (2 << 20)), "value"),
        (lambda kv: kv.put(b"k", "v"), "value"),
        (lambda kv: kv.put(b"k", b"v", ttl=0), "ttl"),
        (lambda kv: kv.put(b"k", b"v", ttl=-1), "ttl"),
        (lambda kv: kv.get(b"k", consistency="strong-ish"), "strong-ish"),
        (lambda kv: kv.get(b"k", timeout=-1), "timeout"),
        (lambda kv: kv.get_many(b"k"), "list"),
        (lambda kv: kv.scan_prefix("/config/"), "prefix"),
        (lambda kv: kv.compare_and_swap(b"k", expected="x", new=b"v"), "value"),
    ],
)
async def test_bad_input_raises_invalid_argument(tmp_path: pathlib.Path, call: object, needle: str) -> None:
    with trio.fail_after(20):
        async with dengine.open_engine(config=single(tmp_path)) as engine:
            await engine.wait_ready(timeout=5)
            with pytest.raises(dengine.InvalidArgument) as info:
                await call(engine.client)  # type: ignore[operator]
            assert needle in str(info.value).lower()
            assert info.value.code == dengine.ErrorCode.INVALID_ARGUMENT
            # The engine keeps working.
            assert await engine.client.put(b"ok", b"1") > 0


async def test_second_engine_on_same_dir_is_refused(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(20):
        async with dengine.open_engine(config=single(tmp_path)) as engine:
            await engine.wait_ready(timeout=5)
            with pytest.raises(dengine.StorageError) as info:
                async with dengine.open_engine(config=single(tmp_path)):
                    pass  # pragma: no cover
            assert "lock" in str(info.value).lower()


async def test_run_engine_in_callers_nursery(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            engine = await nursery.start(dengine.run_engine, single(tmp_path))
            assert engine.is_leader()
            assert await engine.client.put(b"a", b"b") > 0
            nursery.cancel_scope.cancel()
        assert engine.stopped_notify().is_set()


class FailingStorage(MemoryStorage):
    """Fails its fsync after a few batches, as a dying disk would."""

    def __init__(self, fail_after: int) -> None:
        super().__init__()
        self.left = fail_after

    def append(self, entries, hard_state=None):  # type: ignore[no-untyped-def]
        self.left -= 1
        if self.left < 0:
            raise dengine.errors.StorageFailed("fsync failed: Input/output error (simulated)")
        return super().append(entries, hard_state)


async def test_a_dying_task_stops_the_engine_with_one_clear_error(tmp_path: pathlib.Path) -> None:
    stop = None
    with trio.fail_after(20):
        with pytest.raises(dengine.errors.StorageFailed) as info:
            async with open_memory_engine(single(tmp_path), storage=FailingStorage(5)) as engine:
                stop = engine.stop_notify()
                await engine.wait_ready(timeout=5)
                for i in range(100):
                    await engine.client.put(b"k%d" % i, b"v")
    assert "fsync failed" in str(info.value)
    assert stop is not None and stop.is_set()
    assert engine.stopped_notify().is_set()


class PreparingStorage(MemoryStorage):
    """Asks for preparation (as FileStorage does for its next WAL segment)
    until prepared, then again after every 20 appends."""

    def __init__(self) -> None:
        super().__init__()
        self.appends = 0
        self.prepared_in: list[int] = []
        self.prepared = threading.Event()
        self._needs = True

    @property
    def needs_preparation(self) -> bool:
        return self._needs

    def prepare(self) -> None:
        self._needs = False
        self.prepared_in.append(threading.get_ident())
        if len(self.prepared_in) >= 2:
            self.prepared.set()

    def append(self, entries, hard_state=None):  # type: ignore[no-untyped-def]
        self.appends += 1
        if self.appends % 20 == 0:
            self._needs = True
        return super().append(entries, hard_state)


async def test_storage_preparation_runs_in_a_worker_thread(tmp_path: pathlib.Path) -> None:
    storage = PreparingStorage()
    with trio.fail_after(20):
        async with open_memory_engine(single(tmp_path), storage=storage) as engine:
            await engine.wait_ready(timeout=5)
            for i in range(30):
                await engine.client.put(b"k%d" % i, b"v")
            # Asked for at start and again after the 20th append.
            assert await trio.to_thread.run_sync(storage.prepared.wait, 10)
            assert threading.get_ident() not in storage.prepared_in
            assert await engine.client.get(b"k29") == b"v"


def _segments_with_zero_tail(data_dir: pathlib.Path) -> int:
    from dengine.storage import wal

    count = 0
    for seg in data_dir.glob("wal-*.log"):
        data = seg.read_bytes()
        count += wal.scan(data, zero_tail=True).end < len(data)
    return count


@pytest.mark.parametrize("preallocate", [True, False])
async def test_the_engine_preallocates_wal_segments_as_configured(tmp_path: pathlib.Path, preallocate: bool) -> None:
    cfg = single(tmp_path)
    cfg = attrs.evolve(cfg, storage=attrs.evolve(cfg.storage, segment_size=32768, preallocate=preallocate))
    data_dir = tmp_path / "data"
    with trio.fail_after(20):
        async with dengine.open_engine(config=cfg) as engine:
            await engine.wait_ready(timeout=5)
            # Write until the WAL has rolled into a prepared segment (the
            # preparer runs beside the writes) -- or, without preallocation,
            # through several segments, none of which ever has a zero tail.
            for i in range(2000):
                await engine.client.put(b"k%d" % i, b"v" * 100)
                if preallocate and _segments_with_zero_tail(data_dir):
                    break
            else:
                assert not preallocate
            assert len(list(data_dir.glob("wal-*.log"))) >= 2
            if not preallocate:
                assert _segments_with_zero_tail(data_dir) == 0
                assert not (data_dir / "wal-next.tmp").exists()
            last = i
        async with dengine.open_engine(config=cfg) as engine:
            await engine.wait_ready(timeout=5)
            assert await engine.client.get(b"k%d" % last) == b"v" * 100


async def test_bad_config_is_refused_with_a_clear_error(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(10):
        with pytest.raises(dengine.ConfigError) as info:
            async with dengine.open_engine(config=str(tmp_path / "missing.toml")):
                pass  # pragma: no cover
        assert "missing.toml" in str(info.value)
        bad = tmp_path / "bad.toml"
        bad.write_text("[raft]\nelection_ticks = 1\nheartbeat_ticks = 1\n")
        with pytest.raises(dengine.ConfigError) as info:
            async with dengine.open_engine(config=str(bad)):
                pass  # pragma: no cover
        assert "election_ticks" in str(info.value)
        with pytest.raises(dengine.InvalidArgument) as info2:
            async with dengine.open_engine(config=42):  # type: ignore[arg-type]
                pass  # pragma: no cover
        assert "config must be" in str(info2.value)


async def test_status_is_a_frozen_value(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(10):
        async with dengine.open_engine(config=single(tmp_path)) as engine:
            await engine.wait_ready(timeout=5)
            status = engine.status()
            with pytest.raises(attrs.exceptions.FrozenInstanceError):
                status.term = 99  # type: ignore[misc]
            assert status.commit_index >= status.applied_index > 0


async def test_get_nowait_reads_the_local_state_machine(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(20):
        async with dengine.open_engine(config=single(tmp_path)) as engine:
            await engine.wait_ready(timeout=5)
            kv = engine.client
            await kv.put(b"a", b"1")
            await kv.put(b"t", b"short-lived", ttl=0.05)
            assert kv.get_nowait(b"a") == b"1"
            assert kv.get_nowait(b"missing") is None
            with pytest.raises(dengine.InvalidArgument):
                kv.get_nowait("a")  # type: ignore[arg-type]
            with pytest.raises(dengine.InvalidArgument):
                kv.get_nowait(b"")
            # An expired key is hidden even before its deletion commits.
            deadline = trio.current_time() + 5
            while kv.get_nowait(b"t") is not None:
                assert trio.current_time() < deadline
                await trio.sleep(0.01)
        with pytest.raises(dengine.EngineStopped):
            kv.get_nowait(b"a")

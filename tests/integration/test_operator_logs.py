"""Logs an operator can act on (docs/operations.md, "Log lines that go with
them"): INFO for membership changes and snapshots; WARNING for a slow
fsync, a slow apply step, a peer silent for an election timeout (once per
episode, with an INFO when it answers again) and a clock that runs behind
the leader's. Leader changes: tests/integration/test_leader_change_logs.py.

Rules: in-memory storage and network where the test needs no disk, data
under tmp_path otherwise, 10 ms ticks, an absolute ``fail_after`` on every
test; waits poll the captured records every 10 ms under that deadline.
"""

from __future__ import annotations

import logging
import pathlib
import re
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import pytest
import trio

import dengine
from dengine import Config
from dengine.config import MetricsSettings
from dengine.raft.messages import Entry, HardState
from dengine.testing import MemoryStorage, open_cluster, open_memory_engine

DEADLINE = 30


def _single(**metrics: Any) -> Config:
    cfg = Config.single_node("/nonexistent-dengine-test")
    cfg = attrs.evolve(cfg, raft=attrs.evolve(cfg.raft, tick_interval_ms=10))
    return attrs.evolve(cfg, metrics=MetricsSettings(**metrics))


def _messages(caplog: pytest.LogCaptureFixture, level: int, contains: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and contains in r.getMessage()]


async def _wait_for(caplog: pytest.LogCaptureFixture, level: int, contains: str) -> str:
    while not (found := _messages(caplog, level, contains)):
        await trio.sleep(0.01)
    return found[0]


class SlowStorage(MemoryStorage):
    """A disk whose every append takes ``delay`` seconds (it measures no
    fsync of its own, so the runtime's timing of the whole append counts)."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def append(self, entries: Sequence[Entry], hard_state: HardState | None = None) -> None:
        time.sleep(self.delay)
        super().append(entries, hard_state)


async def test_a_slow_fsync_is_a_warning_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dengine")
    with trio.fail_after(DEADLINE):
        async with open_memory_engine(_single(slow_fsync_ms=10), storage=SlowStorage(0.03)) as engine:
            await engine.wait_ready(timeout=5)
            await engine.client.put(b"k", b"v")
            stats = engine.statistics()
    line = _messages(caplog, logging.WARNING, "slow fdatasync")[0]
    assert "expected under 0.01 s (metrics.slow_fsync_ms)" in line
    assert stats.slow_fsyncs >= 1
    assert stats.wal_append_seconds is not None and stats.wal_append_seconds.sum >= 0.03
    assert stats.wal_fsync_seconds is not None and stats.wal_fsync_seconds.count == 0  # the storage measured none


async def test_a_real_disk_reports_its_fsync_and_is_not_slow(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dengine")
    cfg = attrs.evolve(_single(), node=attrs.evolve(_single().node, data_dir=str(tmp_path / "data")))
    with trio.fail_after(DEADLINE):
        async with dengine.open_engine(config=cfg) as engine:  # FileStorage: it times its own fdatasync
            await engine.wait_ready(timeout=5)
            for i in range(10):
                await engine.client.put(b"k%d" % i, b"v")
            stats = engine.statistics()
    assert stats.wal_fsync_seconds is not None and stats.wal_fsync_seconds.count >= 10
    assert stats.wal_append_seconds is not None
    assert stats.wal_fsync_seconds.sum <= stats.wal_append_seconds.sum
    assert _messages(caplog, logging.WARNING, "slow fdatasync") == []  # 1 s: far above this disk's


async def test_a_slow_apply_step_is_a_warning_and_counted(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="dengine")
    with trio.fail_after(DEADLINE):
        async with open_memory_engine(_single(slow_apply_ms=5)) as engine:
            await engine.wait_ready(timeout=5)
            node = engine._node
            apply: Callable[[Any], Any] = node._apply_entries

            def slow_apply(entries: Any) -> Any:
                time.sleep(0.02)  # a state machine that takes its time
                return apply(entries)

            monkeypatch.setattr(node, "_apply_entries", slow_apply)
            await engine.client.put(b"k", b"v")
            stats = engine.statistics()
    line = _messages(caplog, logging.WARNING, "committed entries")[0]
    assert "expected under 0.005 s (metrics.slow_apply_ms)" in line
    assert stats.slow_applies >= 1


async def test_a_silent_peer_is_warned_about_once_and_its_return_noted(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dengine.node")
    with trio.fail_after(DEADLINE):
        # 30 ticks of 10 ms: a busy test machine does not move the leader meanwhile.
        async with open_cluster(tmp_path, 3, raft={"election_ticks": 30}) as cluster:
            await cluster.wait_leader()
            cut = cluster.followers()[0].status().node_id
            assert cluster.network is not None
            cluster.network.isolate(cut)
            warning = await _wait_for(caplog, logging.WARNING, f"node {cut} has not answered")
            await trio.sleep(0.9)  # three more election timeouts: no second warning
            cluster.network.heal()
            back = await _wait_for(caplog, logging.INFO, f"node {cut} answers again")
    warnings = _messages(caplog, logging.WARNING, f"node {cut} has not answered")
    by_leader = [line.split(":")[0] for line in warnings]
    assert len(by_leader) == len(set(by_leader)), warnings  # once per episode (per leader, should it change)
    assert "(the election timeout is 0.3 s): it is unreachable or down" in warning
    assert " answers again (it was silent for " in back


async def test_a_clock_behind_the_leaders_stamps_is_a_warning(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="dengine.node")
    with trio.fail_after(DEADLINE):
        async with open_cluster(tmp_path, 3) as cluster:
            leader = await cluster.wait_leader()
            await leader.client.put(b"before", b"1")
            assert _messages(caplog, logging.WARNING, "clock drift") == []
            node = leader._node
            monkeypatch.setattr(node, "now_ms", lambda: int(time.time() * 1000) + 5000)  # 5 s fast
            for i in range(5):
                await leader.client.put(b"k%d" % i, b"v")
            followers = {e.status().node_id for e in cluster.followers()}
            while len({m.split(":")[0] for m in _messages(caplog, logging.WARNING, "clock drift")}) < len(followers):
                await trio.sleep(0.01)
    lines = _messages(caplog, logging.WARNING, "clock drift suspected")
    assert {line.split(":")[0] for line in lines} == {f"node {n}" for n in followers}  # once each, not the leader
    assert all("ahead of this node's clock, more than raft.max_clock_drift of an election timeout (0.01 s)" in line
               for line in lines), lines


async def test_membership_changes_and_snapshots_are_info_lines(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dengine.node")
    with trio.fail_after(DEADLINE):
        # 30 ticks of 10 ms: a busy test machine does not move the leader meanwhile.
        async with open_cluster(tmp_path, 3, raft={"snapshot_threshold": 20, "election_ticks": 30}) as cluster:
            leader = await cluster.wait_leader()
            lid = leader.status().node_id
            for i in range(30):
                await leader.client.put(b"k%d" % i, b"v")
            await _wait_for(caplog, logging.INFO, f"node {lid}: snapshot at index")
            learner = await cluster.add_learner(4)  # the log it needs is compacted: a snapshot
            await _wait_for(caplog, logging.INFO, "node 4: installed the leader's snapshot at index")
            stats = learner.statistics()
            leader_stats = leader.statistics()
    added = _messages(caplog, logging.INFO, f"node {lid}: membership change at revision")
    assert any("node 4 added as a learner; members now 1, 2, 3, 4 (learner)" in line for line in added), added
    saved = _messages(caplog, logging.INFO, f"node {lid}: snapshot at index")[0]
    assert "bytes, encoded and written in" in saved
    assert stats.snapshot_apply_seconds is not None and stats.snapshot_apply_seconds.count == 1
    assert stats.snapshot_apply_bytes is not None and stats.snapshot_apply_bytes.sum > 0
    assert leader_stats.snapshot_save_seconds is not None and leader_stats.snapshot_save_seconds.count >= 1


async def test_a_follower_that_lost_its_data_is_a_warning_naming_the_fix(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A follower restarted under its old id on a wiped data directory lost
    entries it had acknowledged; Raft cannot repair that, so the leader says
    what happened and what to do (once per follower and term)."""
    caplog.set_level(logging.INFO, logger="dengine.node")
    with trio.fail_after(DEADLINE):
        async with open_cluster(tmp_path, 3, raft={"election_ticks": 30}) as cluster:
            leader = await cluster.wait_leader()
            for i in range(20):
                await leader.client.put(b"/k/%d" % i, b"v")
            wiped = cluster.followers()[0].status().node_id
            assert _messages(caplog, logging.WARNING, "lost data") == []  # a healthy cluster: none
            await cluster.stop(wiped)
            shutil.rmtree(tmp_path / f"n{wiped}")
            await cluster.start(wiped)  # bootstraps again: the three initial membership entries only
            # The leader finds out when it next sends that follower entries.
            n = 0
            while not (found := _messages(caplog, logging.WARNING, f"node {wiped} says its log ends at index")):
                await leader.client.put(b"/after/%d" % n, b"v")
                n += 1
            warning = found[0]
            for i in range(3):  # more appends to that follower: no second warning
                await leader.client.put(b"/more/%d" % i, b"v")
    assert "it lost data it had written" in warning and f"`dengine member remove {wiped}`" in warning
    # Its log: the three membership entries it bootstrapped again; it had acknowledged more than those.
    acked = re.search(r"ends at index 3, but it had acknowledged index (\d+):", warning)
    assert acked is not None and int(acked.group(1)) > 3, warning
    assert len(_messages(caplog, logging.WARNING, f"node {wiped} says its log ends")) == 1

"""``/metrics`` (dengine.http.metrics): it parses with prometheus-client's own
parser, holds every documented metric (docs/operations.md, "Metrics") and
no undocumented one, and its figures move with the work done.

Rules: engines and servers on 127.0.0.1 port 0 or the in-memory network,
data under tmp_path, an absolute ``fail_after`` around every test.
"""

from __future__ import annotations

import pathlib
import re
import sys
from typing import Any

import attrs
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

import dengine
from dengine import Config
from dengine.config import MetricsSettings
from dengine.http import metrics
from dengine.http.metrics import METRICS, MetricsUnavailable, exposition, register
from dengine.testing import open_cluster

DEADLINE = 30
OPERATIONS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def _config(tmp_path: pathlib.Path, **metrics_settings: Any) -> Config:
    cfg = Config.single_node(str(tmp_path / "data"), client_address="127.0.0.1:0")
    cfg = attrs.evolve(cfg, raft=attrs.evolve(cfg.raft, tick_interval_ms=10, snapshot_threshold=25))
    return attrs.evolve(cfg, metrics=MetricsSettings(**metrics_settings))


class Scrape:
    """One /metrics body, parsed by prometheus-client's parser."""

    def __init__(self, source: dengine.Engine | dengine.Server) -> None:
        body, content_type = exposition(source)
        assert content_type.startswith("text/plain; version=0.0.4")
        self.families = {f.name: f for f in text_string_to_metric_families(body.decode())}

    def names(self) -> set[str]:
        """dengine's metric names as a query names them (counters with _total)."""
        return {name + ("_total" if f.type == "counter" else "") for name, f in self.families.items()
                if name.startswith("dengine_")}

    def samples(self, name: str) -> list[Sample]:
        """The samples of the metric ``name`` (as documented)."""
        base = name[: -len("_total")] if name.endswith("_total") else name
        return self.families[base].samples

    def value(self, sample: str, **labels: str) -> float:
        """The value of one sample, by its own name (``x_total``, ``x_count``, ``x_bucket`` ...)."""
        found = [s.value for f in self.families.values() for s in f.samples if s.name == sample and s.labels == labels]
        assert len(found) == 1, (sample, labels, found)
        return found[0]

    def count(self, name: str, **labels: str) -> float:
        """A histogram's sample count."""
        return self.value(name + "_count", **labels)


def _documented() -> dict[str, tuple[str, str]]:
    """name -> (type, labels) from the table of docs/operations.md's Metrics section."""
    text = OPERATIONS.read_text()
    section = re.search(r"^## Metrics\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert section is not None
    rows = re.findall(r"^\| `(dengine_[a-z0-9_]+)` \| (\w+) \| ([^|]*) \|", section.group(1), re.M)
    return {name: (type_, labels.strip()) for name, type_, labels in rows}


def _server_only() -> set[str]:
    return {m.name for m in METRICS if m.server_only}


async def _work(kv: Any, *, watch_events: int = 3) -> None:
    """Writes, reads of every consistency, a watch, a lease and a TTL (embedded or remote client)."""
    async with kv.open_watch(b"/w/", prefix=True) as watch:
        for i in range(watch_events):
            await kv.put(b"/w/%d" % i, b"v")
        for _ in range(watch_events):
            await watch.receive()
    for i in range(40):
        await kv.put(b"k%d" % i, b"x" * 100)
    for level in ("linearizable", "lease", "eventual"):
        await kv.get(b"k1", consistency=level)
    lease = await kv.grant_lease(60)
    await kv.put(b"leased", b"1", lease=lease.id)
    await kv.put(b"short", b"1", ttl=0.05)


def test_the_docs_table_and_the_exporter_list_the_same_metrics() -> None:
    documented = _documented()
    assert documented == {m.name: (m.type, ", ".join(f"`{label}`" for label in m.labels) or "—") for m in METRICS}
    assert metrics.METRIC_NAMES == set(documented)
    for m in METRICS:
        assert m.name.startswith("dengine_")
        assert (m.type == "counter") == m.name.endswith("_total"), m.name


async def test_an_engine_exports_every_documented_metric_and_the_figures_move(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(DEADLINE):
        async with dengine.open_engine(config=_config(tmp_path)) as engine:
            await engine.wait_ready(timeout=5)
            before = Scrape(engine)
            assert before.names() == set(_documented()) - _server_only()
            await _work(engine.client)
            while engine.statistics().keys_expired == 0:  # the leader's TTL sweep
                await trio.sleep(0.01)
            while (saved := engine.statistics().snapshot_save_bytes) is None or saved.count == 0:
                await trio.sleep(0.01)  # snapshot_threshold=25: one is being saved
            while engine.statistics().proposals_pending:
                await trio.sleep(0.01)  # the sweep's deletion
            after = Scrape(engine)
    assert after.names() == before.names()
    assert after.value("dengine_server_has_leader") == after.value("dengine_server_is_leader") == 1
    assert after.value("dengine_server_leader_changes_seen_total") == 1
    assert after.value("dengine_server_term") >= 1
    grew = after.value("dengine_server_proposals_committed_total") - before.value("dengine_server_proposals_committed_total")
    assert grew >= 40  # one entry per write here: they were awaited one at a time
    assert after.value("dengine_server_applied_index") >= after.value("dengine_server_proposals_applied_total") >= 40
    assert after.value("dengine_server_commit_index") >= after.value("dengine_server_applied_index")
    assert after.value("dengine_server_proposals_pending") == 0
    for level in ("linearizable", "lease", "eventual"):
        assert after.value("dengine_server_reads_total", consistency=level) >= 1
    assert after.count("dengine_disk_wal_fsync_duration_seconds") > before.count("dengine_disk_wal_fsync_duration_seconds")
    assert after.count("dengine_disk_wal_append_duration_seconds") >= 40
    assert after.value("dengine_disk_wal_fsync_duration_seconds_bucket", le="+Inf") == after.count(
        "dengine_disk_wal_fsync_duration_seconds")
    assert after.value("dengine_disk_storage_bytes", kind="wal") > 0
    assert after.value("dengine_disk_storage_bytes", kind="snapshot") > 0
    assert after.count("dengine_snap_save_duration_seconds") >= 1
    assert after.value("dengine_snap_save_size_bytes_sum") > 0
    assert after.value("dengine_watch_events_total") >= 3
    assert after.value("dengine_watch_watchers") == 0  # the watch was closed
    assert after.value("dengine_ttl_keys_expired_total") >= 1
    assert after.samples("dengine_network_peer_sent_bytes_total") == []  # a single node has no peers
    assert after.samples("dengine_server_follower_match_lag") == []


async def test_a_server_counts_client_requests_by_op_and_error_code(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(DEADLINE):
        async with dengine.open_server(_config(tmp_path)) as server:
            await server.wait_ready(timeout=5)
            async with dengine.open_client([server.client_address], timeout=5) as client:
                await _work(client)
                with pytest.raises(dengine.LeaseNotFound):
                    await client.revoke_lease(987654321)
                await client.status()
            await server.wait_statistics(lambda s: s.connections_open == 0)
            scrape = Scrape(server)
    assert scrape.names() == set(_documented())
    assert scrape.value("dengine_server_client_requests_total", op="put", code="OK") >= 40
    assert scrape.value("dengine_server_client_requests_total", op="lease_revoke", code="LEASE_NOT_FOUND") == 1
    assert scrape.value("dengine_server_client_requests_total", op="watch", code="OK") == 1
    assert scrape.count("dengine_server_client_request_duration_seconds", op="put") >= 40
    assert scrape.value("dengine_server_client_connections") == 0
    assert scrape.value("dengine_server_reads_total", consistency="lease") >= 1


async def test_a_cluster_leader_exports_peer_traffic_round_trips_and_follower_lag(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(DEADLINE):
        async with open_cluster(tmp_path, 3) as cluster:
            leader = await cluster.wait_leader()
            for i in range(20):
                await leader.client.put(b"k%d" % i, b"v")
            while any(s.round_trip.count == 0 for s in leader.statistics().peers.values()):
                await trio.sleep(0.01)  # heartbeats every 10 ms tick
            scrape = Scrape(leader)
            node = cluster.followers()[0]
            follower = Scrape(node)
            # Followers send no heartbeats: while the leader's round trips go
            # on, a follower's do not move (it may have led for a moment
            # while the cluster started, so it may have some from then).
            before = sum(s.round_trip.count for s in leader.statistics().peers.values())
            while sum(s.round_trip.count for s in leader.statistics().peers.values()) < before + 10:
                await trio.sleep(0.01)
            follower_later = Scrape(node)
    me = leader.status().node_id
    others = sorted({"1", "2", "3"} - {str(me)})
    for peer in others:
        assert scrape.value("dengine_network_peer_sent_messages_total", To=peer) > 0
        assert scrape.value("dengine_network_peer_sent_bytes_total", To=peer) > 0
        assert scrape.value("dengine_network_peer_received_messages_total", From=peer) > 0
        assert scrape.value("dengine_network_peer_received_bytes_total", From=peer) > 0
        assert scrape.value("dengine_network_peer_round_trip_time_seconds_count", To=peer) >= 1
        assert scrape.value("dengine_server_follower_match_lag", follower=peer) >= 0
    assert follower.value("dengine_server_is_leader") == 0 and follower.value("dengine_server_has_leader") == 1
    assert follower.samples("dengine_server_follower_match_lag") == []
    assert follower_later.samples("dengine_network_peer_round_trip_time_seconds") == follower.samples(
        "dengine_network_peer_round_trip_time_seconds")
    assert follower.value("dengine_server_applied_index") > 20


async def test_metrics_disabled_exports_the_histograms_without_samples(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(DEADLINE):
        async with dengine.open_server(_config(tmp_path, enabled=False)) as server:
            await server.wait_ready(timeout=5)
            async with dengine.open_client([server.client_address], timeout=5) as client:
                for i in range(5):
                    await client.put(b"k%d" % i, b"v")
            scrape = Scrape(server)
            assert server.engine.statistics().wal_fsync_seconds is None
    assert scrape.names() == set(_documented())
    for m in METRICS:
        if m.type == "histogram" or m.name == "dengine_server_client_requests_total":
            assert scrape.samples(m.name) == [], m.name
    assert scrape.value("dengine_server_proposals_committed_total") >= 5  # read at scrape time either way


async def test_an_application_registers_the_collector_in_its_own_registry(tmp_path: pathlib.Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=True)
    with trio.fail_after(DEADLINE):
        async with dengine.open_engine(config=_config(tmp_path)) as engine:
            await engine.wait_ready(timeout=5)
            collector = register(engine, registry)
            await engine.client.put(b"a", b"b")
            text = generate_latest(registry).decode()
            # prometheus-client's start_http_server scrapes from a thread of its own:
            # the collector reads the engine on the trio thread all the same.
            from_thread = (await trio.to_thread.run_sync(generate_latest, registry)).decode()
            assert "dengine_server_is_leader 1.0" in from_thread
            with pytest.raises(ValueError, match="Duplicated timeseries"):
                register(engine, registry)  # one engine per registry
            registry.unregister(collector)
    names = {f.name for f in text_string_to_metric_families(text)}
    assert "dengine_server_proposals_committed" in names and not any(n.startswith("process_") for n in names)


def test_without_prometheus_client_the_error_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in sys.modules if n == "prometheus_client" or n.startswith("prometheus_client.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # "import prometheus_client" now fails
    with pytest.raises(MetricsUnavailable, match=re.escape("pip install 'dengine[metrics]'")) as info:
        exposition(object())  # type: ignore[arg-type]
    assert isinstance(info.value, ModuleNotFoundError)

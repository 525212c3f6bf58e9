"""``/metrics``: a node's figures in the Prometheus text format, by prometheus-client.

    from dengine.http.metrics import exposition, register

    body, content_type = exposition(engine_or_server)   # what /metrics answers
    register(engine, my_registry)                        # into the application's registry

Rules of this module:

* Nothing here runs on a hot path. The engine records into plain Python
  objects (dengine.stats); :class:`DengineCollector` reads them at scrape
  time -- :meth:`Engine.statistics` and, for a standalone server,
  ``Server.statistics()`` -- and yields metric families. Gauges (term,
  indexes, lag, watchers, bytes on disk) are read at that moment.
* :data:`METRICS` is the one list of what is exported: name (as queried),
  type, labels and meaning. docs/operations.md ("Metrics") lists the same,
  and a test checks that both match what ``/metrics`` really holds. Every
  family in it is always exported (a labelled one may have no sample yet:
  a follower has no lag, a single node no peers); the client-request
  families only for a :class:`~dengine.server.Server`.
* Names follow etcd's where the meaning is the same, under ``dengine_``
  instead of ``etcd_`` (``dengine_server_has_leader``,
  ``dengine_disk_wal_fsync_duration_seconds``,
  ``dengine_network_peer_round_trip_time_seconds`` with etcd's ``To`` /
  ``From`` labels ...).
* prometheus-client is an optional dependency (``pip install
  'dengine[metrics]'``); it is imported when first needed, and its absence
  is one clear :class:`MetricsUnavailable` naming that command.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import attrs
import trio

from dengine.embedded import Engine, EngineStatistics
from dengine.server import Server, ServerStatistics
from dengine.stats import HistogramData

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

__all__ = ["INSTALL", "METRICS", "METRIC_NAMES", "DengineCollector", "MetricSpec", "MetricsUnavailable", "exposition", "register"]

#: The command that installs what this module needs.
INSTALL = "pip install 'dengine[metrics]'"


class MetricsUnavailable(ModuleNotFoundError):
    """prometheus-client is not installed."""

    def __init__(self) -> None:
        super().__init__(
            f"dengine's metrics need the prometheus-client package, which is not installed: {INSTALL}",
            name="prometheus_client",
        )


@attrs.frozen
class MetricSpec:
    """One exported metric: ``name`` as a query names it (a counter's ends in
    ``_total``; a histogram's samples add ``_bucket``, ``_sum``, ``_count``)."""

    name: str
    type: str  # gauge counter histogram
    labels: tuple[str, ...]
    help: str
    server_only: bool = False


def _m(name: str, type_: str, help_: str, *labels: str, server_only: bool = False) -> MetricSpec:
    return MetricSpec(name, type_, labels, help_, server_only)


#: Everything exported, in the order of docs/operations.md.
METRICS: tuple[MetricSpec, ...] = (
    # -- Raft, as this node sees it
    _m("dengine_server_has_leader", "gauge", "1 if this node knows a leader, else 0."),
    _m("dengine_server_is_leader", "gauge", "1 if this node is the leader, else 0."),
    _m("dengine_server_leader_changes_seen_total", "counter",
       "Times this node saw a new leader (a leader other than the last one it knew) since it started."),
    _m("dengine_server_term", "gauge", "The Raft term this node is in."),
    _m("dengine_server_commit_index", "gauge", "The highest log index this node knows to be committed."),
    _m("dengine_server_applied_index", "gauge", "The highest log index applied to this node's state machine."),
    _m("dengine_server_proposals_committed_total", "counter",
       "Raft entries committed since this node started (one entry carries every write of a batch)."),
    _m("dengine_server_proposals_applied_total", "counter",
       "Raft entries applied to the state machine since this node started (a snapshot install counts the "
       "entries it covers)."),
    _m("dengine_server_proposals_pending", "gauge",
       "Writes this node took that are not applied yet (queued, in its log, or committed but not applied)."),
    _m("dengine_server_proposals_failed_total", "counter",
       "Writes this node took that failed (timed out, leader changed, dropped, stopped) or refused for lack "
       "of room (ResourceExhausted)."),
    _m("dengine_server_follower_match_lag", "gauge",
       "On the leader: entries a member's log is behind the leader's last index (last index minus its match "
       "index). Absent on other nodes.", "follower"),
    _m("dengine_server_reads_total", "counter",
       "Reads asked of this node, by consistency (linearizable, lease, eventual).", "consistency"),
    _m("dengine_server_slow_apply_total", "counter",
       "Apply steps that took longer than metrics.slow_apply_ms (each also logged as a WARNING)."),
    # -- disk
    _m("dengine_disk_wal_fsync_duration_seconds", "histogram",
       "Time of the fdatasync of one WAL append (what etcd's wal_fsync_duration_seconds measures)."),
    _m("dengine_disk_wal_append_duration_seconds", "histogram",
       "Time of one WAL append as the runtime sees it: encoding, write and fsync in the worker thread."),
    _m("dengine_disk_wal_slow_fsync_total", "counter",
       "WAL syncs that took longer than metrics.slow_fsync_ms (each also logged as a WARNING)."),
    _m("dengine_disk_storage_bytes", "gauge",
       "Bytes in the data directory, by kind: wal (segments, the preallocated one included) and snapshot.",
       "kind"),
    # -- snapshots
    _m("dengine_snap_save_duration_seconds", "histogram",
       "Time to encode and durably save a snapshot of this node's state machine."),
    _m("dengine_snap_save_size_bytes", "histogram", "Size of each snapshot this node saved."),
    _m("dengine_snap_apply_duration_seconds", "histogram",
       "Time to install a snapshot received from the leader (decode and load the state machine)."),
    _m("dengine_snap_apply_size_bytes", "histogram", "Size of each snapshot installed from the leader."),
    # -- peers
    _m("dengine_network_peer_round_trip_time_seconds", "histogram",
       "On the leader: time from a heartbeat to a peer to its answer, by peer.", "To"),
    _m("dengine_network_peer_sent_bytes_total", "counter", "Bytes sent to a peer, by peer.", "To"),
    _m("dengine_network_peer_received_bytes_total", "counter", "Bytes received from a peer, by peer.", "From"),
    _m("dengine_network_peer_sent_messages_total", "counter", "Raft messages sent to a peer, by peer.", "To"),
    _m("dengine_network_peer_received_messages_total", "counter",
       "Raft messages received from a peer, by peer.", "From"),
    # -- watches
    _m("dengine_watch_watchers", "gauge", "Watches open on this node."),
    _m("dengine_watch_events_total", "counter", "Watch events delivered into watchers' buffers on this node."),
    _m("dengine_watch_pending_events", "gauge", "Events applied but not yet dispatched to watchers."),
    _m("dengine_watch_canceled_total", "counter",
       "Watches this node canceled, by reason: buffer_overflow (a slow watcher), queue_overflow (the "
       "dispatcher fell behind), compacted (history no longer held).", "reason"),
    # -- time to live
    _m("dengine_ttl_keys_expired_total", "counter", "Keys whose TTL passed and whose deletion this node "
       "proposed as leader."),
    _m("dengine_lease_expired_total", "counter", "Leases that expired and whose revoke this node proposed "
       "as leader."),
    # -- client endpoint (standalone server)
    _m("dengine_server_client_connections", "gauge", "Client connections open.", server_only=True),
    _m("dengine_server_client_requests_total", "counter",
       "Client requests answered, by op and outcome (code: OK or the error code's name, e.g. NOT_LEADER; op "
       "invalid for a request that could not be read).", "op", "code", server_only=True),
    _m("dengine_server_client_request_duration_seconds", "histogram",
       "Time to serve a unary client request, by op (streams are counted, not timed).", "op",
       server_only=True),
)

#: The names of :data:`METRICS`, as queries name them.
METRIC_NAMES: frozenset[str] = frozenset(spec.name for spec in METRICS)


def _prometheus() -> Any:
    try:
        import prometheus_client
        import prometheus_client.exposition
        import prometheus_client.metrics_core
    except ModuleNotFoundError as exc:
        if exc.name != "prometheus_client":
            raise
        raise MetricsUnavailable() from None
    return prometheus_client


class DengineCollector:
    """A prometheus-client collector for one engine or server: register it
    in any ``CollectorRegistry`` (:func:`register`); every collection reads
    the node's statistics once. One engine per registry: two would export
    the same names.

    Made inside the engine's trio run (as :func:`register` is), it may be
    collected from any thread -- prometheus-client's ``start_http_server``
    scrapes from its own: the statistics are then read on the trio thread
    (``trio.from_thread``), never beside it. Once that run has ended the
    families have no samples."""

    def __init__(self, source: Engine | Server) -> None:
        _prometheus()
        self.source = source
        try:
            self._token: trio.lowlevel.TrioToken | None = trio.lowlevel.current_trio_token()
        except RuntimeError:
            self._token = None
        self._thread = threading.get_ident()

    def describe(self) -> Iterator[Metric]:
        """The families without samples (registration needs the names only)."""
        yield from self._families(None, None)

    def collect(self) -> Iterator[Metric]:
        if self._token is not None and threading.get_ident() != self._thread:
            try:
                es, ss = trio.from_thread.run_sync(self._read, trio_token=self._token)
            except trio.RunFinishedError:
                es, ss = None, None
        else:
            es, ss = self._read()
        yield from self._families(es, ss)

    def _read(self) -> tuple[EngineStatistics, ServerStatistics | None]:
        source = self.source
        if isinstance(source, Server):
            return source.engine.statistics(), source.statistics()
        return source.statistics(), None

    def _families(self, es: EngineStatistics | None, ss: ServerStatistics | None) -> Iterator[Metric]:
        core = _prometheus().metrics_core
        server = isinstance(self.source, Server)
        samples = dict(_samples(es, ss)) if es is not None else {}
        for spec in METRICS:
            if spec.server_only and not server:
                continue
            family = _family(core, spec)
            for item in samples.get(spec.name, ()):
                labels, value = item
                if isinstance(value, HistogramData):
                    family.add_metric(list(labels), _buckets(value), value.sum)
                else:
                    family.add_metric(list(labels), float(value))
            yield family


def _family(core: Any, spec: MetricSpec) -> Any:
    labels = list(spec.labels)
    if spec.type == "gauge":
        return core.GaugeMetricFamily(spec.name, spec.help, labels=labels)
    if spec.type == "counter":
        return core.CounterMetricFamily(spec.name, spec.help, labels=labels)
    return core.HistogramMetricFamily(spec.name, spec.help, labels=labels)


def _buckets(data: HistogramData) -> list[tuple[str, float]]:
    return [("+Inf" if bound == float("inf") else repr(float(bound)), float(n)) for bound, n in data.cumulative()]


_Sample = tuple[tuple[str, ...], float | int | HistogramData]


def _samples(es: EngineStatistics, ss: ServerStatistics | None) -> Iterator[tuple[str, list[_Sample]]]:
    """(metric name, [(label values, value)]) for every metric with samples."""

    def one(value: float | int) -> list[_Sample]:
        return [((), value)]

    def hist(data: HistogramData | None) -> list[_Sample]:
        return [] if data is None else [((), data)]

    yield "dengine_server_has_leader", one(int(es.leader_id is not None))
    yield "dengine_server_is_leader", one(int(es.is_leader))
    yield "dengine_server_leader_changes_seen_total", one(es.leader_changes)
    yield "dengine_server_term", one(es.term)
    yield "dengine_server_commit_index", one(es.commit_index)
    yield "dengine_server_applied_index", one(es.applied_index)
    yield "dengine_server_proposals_committed_total", one(es.entries_committed)
    yield "dengine_server_proposals_applied_total", one(es.entries_applied)
    yield "dengine_server_proposals_pending", one(es.proposals_pending)
    yield "dengine_server_proposals_failed_total", one(es.proposals_failed)
    yield "dengine_server_follower_match_lag", [((str(p),), lag) for p, lag in sorted(es.follower_lag.items())]
    yield "dengine_server_reads_total", [((level,), n) for level, n in es.reads.items()]
    yield "dengine_server_slow_apply_total", one(es.slow_applies)
    yield "dengine_disk_wal_fsync_duration_seconds", hist(es.wal_fsync_seconds)
    yield "dengine_disk_wal_append_duration_seconds", hist(es.wal_append_seconds)
    yield "dengine_disk_wal_slow_fsync_total", one(es.slow_fsyncs)
    yield "dengine_disk_storage_bytes", [((kind,), n) for kind, n in sorted(es.storage_bytes.items())]
    yield "dengine_snap_save_duration_seconds", hist(es.snapshot_save_seconds)
    yield "dengine_snap_save_size_bytes", hist(es.snapshot_save_bytes)
    yield "dengine_snap_apply_duration_seconds", hist(es.snapshot_apply_seconds)
    yield "dengine_snap_apply_size_bytes", hist(es.snapshot_apply_bytes)
    peers = sorted(es.peers.items())
    if es.timed:
        # Only peers this node has timed (a follower sends no heartbeats).
        yield "dengine_network_peer_round_trip_time_seconds", [
            ((str(p),), s.round_trip) for p, s in peers if s.round_trip.count
        ]
    yield "dengine_network_peer_sent_bytes_total", [((str(p),), s.sent_bytes) for p, s in peers]
    yield "dengine_network_peer_received_bytes_total", [((str(p),), s.received_bytes) for p, s in peers]
    yield "dengine_network_peer_sent_messages_total", [((str(p),), s.sent_messages) for p, s in peers]
    yield "dengine_network_peer_received_messages_total", [((str(p),), s.received_messages) for p, s in peers]
    w = es.watch
    yield "dengine_watch_watchers", one(w.watchers)
    yield "dengine_watch_events_total", one(w.deliveries)
    yield "dengine_watch_pending_events", one(w.queued_events)
    yield "dengine_watch_canceled_total", [
        (("buffer_overflow",), w.canceled_buffer_overflow),
        (("queue_overflow",), w.canceled_queue_overflow),
        (("compacted",), w.canceled_compacted),
    ]
    yield "dengine_ttl_keys_expired_total", one(es.keys_expired)
    yield "dengine_lease_expired_total", one(es.leases_expired)
    if ss is not None:
        yield "dengine_server_client_connections", one(ss.connections_open)
        by_op = ss.by_operation
        if by_op is not None:
            yield "dengine_server_client_requests_total", [((op, code), n) for (op, code), n in sorted(by_op.counts.items())]
            yield "dengine_server_client_request_duration_seconds", [((op,), h) for op, h in sorted(by_op.seconds.items())]


def register(source: Engine | Server, registry: CollectorRegistry | None = None) -> DengineCollector:
    """Register a collector of ``source`` (an engine, or a standalone
    server: it adds the client-request metrics) into ``registry``
    (prometheus-client's global ``REGISTRY`` when None), so an embedding
    application exports dengine's metrics beside its own. Returns the
    collector (``registry.unregister(collector)`` removes it)."""
    prometheus = _prometheus()
    collector = DengineCollector(source)
    (registry if registry is not None else prometheus.REGISTRY).register(collector)
    return collector


# A registry per source, made on its first scrape: dengine's families plus
# prometheus-client's own process and Python runtime ones.
_REGISTRIES: weakref.WeakKeyDictionary[Engine | Server, CollectorRegistry] = weakref.WeakKeyDictionary()


def _registry_for(source: Engine | Server) -> CollectorRegistry:
    registry = _REGISTRIES.get(source)
    if registry is None:
        prometheus = _prometheus()
        registry = prometheus.CollectorRegistry(auto_describe=True)
        registry.register(DengineCollector(source))
        prometheus.ProcessCollector(registry=registry)
        prometheus.PlatformCollector(registry=registry)
        prometheus.GCCollector(registry=registry)
        _REGISTRIES[source] = registry
    return registry


def exposition(source: Engine | Server) -> tuple[bytes, str]:
    """The body and content type of ``/metrics`` for ``source``: dengine's
    metrics (:data:`METRICS`) and prometheus-client's ``process_*`` and
    ``python_*``, in the Prometheus text format. Raises
    :class:`MetricsUnavailable` when prometheus-client is not installed."""
    prometheus = _prometheus()
    body: bytes = prometheus.generate_latest(_registry_for(source))
    # The classic text format (0.0.4) is what generate_latest writes for our
    # names, and what every Prometheus version reads.
    formats = prometheus.exposition
    return body, str(getattr(formats, "CONTENT_TYPE_PLAIN_0_0_4", formats.CONTENT_TYPE_LATEST))

"""The settings: one frozen attrs class per TOML section, one field per setting.

Rules of this module:

* One schema drives everything: each setting is an attrs field made by
  ``_setting``, whose metadata (:class:`Meta`) holds its kind, lower bound
  and meaning. The TOML reader, the environment reader, the validator and
  ``to_dict`` all walk it (:func:`schema_fields`, :func:`schema_leaves`), so
  a setting added here is at once loadable from a file and from
  ``DENGINE_<SECTION>__<KEY>``, checked, written and documented.
* Sections accept anything: converters only normalise what they recognise
  (``100`` -> ``100.0``, ``"lease"`` -> ``ReadConsistency.LEASE``, a member
  string -> a dict) and leave the rest for validation, which the holding
  :class:`~dengine.config.Config` runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any, Final

import attrs

from dengine.api import DEFAULT_MAX_KEY_SIZE, DEFAULT_MAX_TXN_OPS, DEFAULT_MAX_VALUE_SIZE, ReadConsistency
from dengine.config.addresses import parse_members
from dengine.errors import InvalidArgument

__all__ = [
    "DEFAULT_CLIENT_ADDRESS",
    "DEFAULT_CLUSTER_ID",
    "DEFAULT_DATA_DIR",
    "DEFAULT_METRICS_ADDRESS",
    "DEFAULT_PEER_ADDRESS",
    "ENV_PREFIX",
    "INT_MAX",
    "KIND_WORDS",
    "MEMBER_MAPS",
    "OFF",
    "ClusterSettings",
    "Meta",
    "MetricsSettings",
    "NodeSettings",
    "RaftSettings",
    "ServerSettings",
    "StorageSettings",
    "TransportSettings",
    "WatchSettings",
    "dotted_path",
    "env_name",
    "schema_fields",
    "schema_leaves",
    "section_field",
]

#: Data directory used when none is given.
DEFAULT_DATA_DIR: Final = "./dengine-data"
#: Address of the client endpoint used when none is given.
DEFAULT_CLIENT_ADDRESS: Final = "127.0.0.1:9081"
#: Peer address used when none is given and ``cluster.initial`` has none for this node.
DEFAULT_PEER_ADDRESS: Final = "127.0.0.1:7001"
#: Where ``dengine serve`` serves /metrics, /health, /status.json and the
#: cluster page when nothing else is given (``server.metrics_address``).
DEFAULT_METRICS_ADDRESS: Final = "127.0.0.1:9082"
#: The value of an optional listening address that turns the listener off.
OFF: Final = "off"
#: Cluster id used when none is given.
DEFAULT_CLUSTER_ID: Final = "dengine"
#: Prefix of every environment variable read by :meth:`Config.from_env`.
ENV_PREFIX: Final = "DENGINE_"

_MIB = 1024 * 1024
# The largest integer TOML (and msgpack's int64) can carry.
INT_MAX: Final = 2**63 - 1
_META = "dengine.config"
# Settings that map node ids to addresses: TOML tables, yet leaves, not sections.
MEMBER_MAPS: Final = frozenset({"initial", "client_addresses"})


@attrs.frozen
class Meta:
    """What the loaders and validator know about one setting."""

    kind: str  # int float bool str path address listen members consistency section
    doc: str
    minimum: int | None = None
    section: type | None = None


def _to_float(value: object) -> object:
    """Accept ``100`` for a float setting; leave anything else for validate()."""
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _to_consistency(value: object) -> object:
    if isinstance(value, (str, ReadConsistency)):
        try:
            return ReadConsistency.parse(value)
        except InvalidArgument:
            pass
    return value


def _member_order(item: tuple[Any, Any]) -> tuple[int, int, str]:
    key = item[0]
    if isinstance(key, int) and not isinstance(key, bool):
        return (0, key, "")
    return (1, 0, repr(key))


def _to_members(value: object) -> object:
    if isinstance(value, str):
        try:
            return parse_members(value)
        except InvalidArgument:
            return value
    if isinstance(value, Mapping):
        return dict(sorted(value.items(), key=_member_order))
    return value


def _to_listen(value: object) -> object:
    """An optional listening address: ``""`` and ``"OFF"`` both mean ``"off"``."""
    if isinstance(value, str) and value.strip().lower() in ("", OFF):
        return OFF
    return value


def _to_fspath(value: object) -> object:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


_CONVERTERS: dict[str, Any] = {
    "float": _to_float,
    "ratio": _to_float,
    "consistency": _to_consistency,
    "members": _to_members,
    "str": _to_fspath,
    "path": _to_fspath,
    "listen": _to_listen,
}


def _setting(default: Any, kind: str, doc: str, *, minimum: int | None = None) -> Any:
    """An attrs field for one setting of ``kind`` with its meaning ``doc``."""
    meta = {_META: Meta(kind=kind, doc=doc, minimum=minimum)}
    converter = _CONVERTERS.get(kind)
    if kind == "members":
        # A dict is not hashable; leave it out of __hash__ so configs still are.
        return attrs.field(factory=dict, converter=converter, metadata=meta, hash=False)
    if converter is None:
        return attrs.field(default=default, metadata=meta)
    return attrs.field(default=default, converter=converter, metadata=meta)


def section_field(cls: type, doc: str) -> Any:
    return attrs.field(factory=cls, metadata={_META: Meta(kind="section", doc=doc, section=cls)})


@attrs.frozen
class NodeSettings:
    """``[node]``: who this node is and where it listens."""

    id: int = _setting(
        1, "int", "This node's id: a positive integer, unique in the cluster and never reused.", minimum=1
    )
    data_dir: str = _setting(
        DEFAULT_DATA_DIR, "str", "Directory holding the WAL, snapshots and lock file; created if missing."
    )
    peer_address: str | None = _setting(
        None,
        "address",
        "host:port this node listens on for Raft traffic. Unset: `cluster.initial[node.id]`, "
        f"else `{DEFAULT_PEER_ADDRESS}`. A wildcard host (`0.0.0.0`, `[::]`) listens on every interface.",
    )
    advertise_peer_address: str | None = _setting(
        None,
        "address",
        "host:port the other members reach this node at, when it is not `node.peer_address` (a NAT, a "
        "container's published port, a proxy; etcd's `--initial-advertise-peer-urls`). It must be this "
        "node's entry in `cluster.initial`; `node.peer_address` may then differ. Unset: the listen address.",
    )
    client_address: str = _setting(
        DEFAULT_CLIENT_ADDRESS,
        "address",
        "host:port of the client endpoint of a standalone server. Port 0 picks a free port.",
    )


@attrs.frozen
class ClusterSettings:
    """``[cluster]``: which cluster this node belongs to and who started it."""

    id: str = _setting(
        DEFAULT_CLUSTER_ID,
        "str",
        "Cluster name, checked in every peer and client handshake: a node never talks to another cluster.",
    )
    initial: dict[int, str] = _setting(
        None,
        "members",
        "Members of a new cluster, node id -> peer host:port. Empty: a single-node cluster of `node.id`. "
        "Every initial member must be given the same map.",
    )
    join: bool = _setting(
        False,
        "bool",
        "True for a node added to a running cluster by a membership change: it starts with no voters and "
        "learns the membership from the leader; `initial` then only lists peers to contact.",
    )
    client_addresses: dict[int, str] = _setting(
        None,
        "members",
        "Client endpoints of the members of a standalone-server cluster, node id -> client host:port. "
        "A server uses it to tell clients the leader's client address (in NotLeader hints and `members`); "
        "a node missing here is reported without one, and clients fall back to the endpoints they were given.",
    )


@attrs.frozen
class WatchSettings:
    """``[raft.watch]``: the watch dispatcher (the keys of d-engine's ``[raft.watch]`` plus ours)."""

    event_queue_size: int = _setting(
        10240, "int", "Capacity of the event queue between the applier and the watch dispatcher.", minimum=1
    )
    watcher_buffer_size: int = _setting(
        256,
        "int",
        "Events buffered per watcher; a watcher that would overflow it gets a CANCELED event and is removed.",
        minimum=1,
    )
    max_watcher_count: int = _setting(
        INT_MAX, "int", "Hard cap on active watchers (exact + prefix); registering beyond it fails.", minimum=1
    )
    heartbeat_interval_ms: int = _setting(
        0, "int", "Send a PROGRESS event to every watcher this often (±10% jitter); 0 turns it off.", minimum=0
    )
    history_size: int = _setting(
        10000,
        "int",
        "Recent events kept so a watch can start at a past revision; older ones are COMPACTED. 0 keeps none.",
        minimum=0,
    )
    enable_metrics: bool = _setting(False, "bool", "Count and log watcher overflows and event-queue lag.")


@attrs.frozen
class RaftSettings:
    """``[raft]``: consensus timings, limits and batching. Time is in ticks."""

    tick_interval_ms: float = _setting(
        100.0, "float", "Length of one Raft tick in milliseconds; the `*_ticks` settings count these."
    )
    election_ticks: int = _setting(
        10,
        "int",
        "Election timeout in ticks (a follower campaigns after a randomised 1 to 1.5 times this without hearing "
        "from a leader). Must exceed `heartbeat_ticks`.",
        minimum=1,
    )
    heartbeat_ticks: int = _setting(1, "int", "Ticks between leader heartbeats.", minimum=1)
    max_clock_drift: float = _setting(
        0.1,
        "ratio",
        "Most any node's clock may run fast or slow (0.1 = 10 %). The leader lease is derived from it and "
        "`election_ticks`; settings that leave no safe lease are refused.",
    )
    pre_vote: bool = _setting(
        True, "bool", "Ask for votes without raising the term first, so a partitioned node cannot disrupt the cluster."
    )
    check_quorum: bool = _setting(
        True,
        "bool",
        "A leader that has not heard from a majority for an election timeout steps down. Lease reads need it.",
    )
    default_read_consistency: ReadConsistency = _setting(
        ReadConsistency.LINEARIZABLE,
        "consistency",
        "Consistency of a read that does not ask for one: `linearizable`, `lease` or `eventual`.",
    )
    snapshot_threshold: int = _setting(
        10000, "int", "Entries applied between snapshots; the log before a snapshot is purged. Node ids 2, 3 (mod 3) wait 1.25x, 1.5x as long, so members do not all snapshot at once.", minimum=1
    )
    snapshot_threshold_bytes: int = _setting(
        64 * _MIB,
        "int",
        "Bytes of entries applied that also set off a snapshot, whichever of the two thresholds comes first: "
        "the log since the last snapshot is kept in memory.",
        minimum=1,
    )
    max_key_size: int = _setting(DEFAULT_MAX_KEY_SIZE, "int", "Largest key, in bytes.", minimum=1)
    max_value_size: int = _setting(DEFAULT_MAX_VALUE_SIZE, "int", "Largest value, in bytes.", minimum=1)
    max_txn_ops: int = _setting(
        DEFAULT_MAX_TXN_OPS,
        "int",
        "Most compares, and most operations in each branch, of one transaction; more is refused with "
        "InvalidArgument (error 1001).",
        minimum=1,
    )
    max_inflight: int = _setting(
        256, "int", "AppendEntries messages in flight to one follower before the leader waits.", minimum=1
    )
    max_append_entries: int = _setting(1024, "int", "Most entries in one AppendEntries message.", minimum=1)
    max_append_bytes: int = _setting(
        _MIB, "int", "Soft byte limit of one AppendEntries message (one entry is always allowed).", minimum=1
    )
    max_uncommitted_bytes: int = _setting(
        64 * _MIB,
        "int",
        "Bytes of writes a node may hold that are not yet committed, or not yet on its own disk; "
        "a write over it fails at once with ResourceExhausted (error 2005).",
        minimum=1,
    )
    max_apply_bytes: int = _setting(
        4 * _MIB,
        "int",
        "Bytes of committed entries applied in one step of the event loop (one entry is always allowed), "
        "so a long catch-up never stalls timers and clients.",
        minimum=1,
    )
    learner_max_lag: int = _setting(
        1000,
        "int",
        "A learner is promoted to voter only when the leader's log is at most this many entries ahead of it.",
        minimum=0,
    )
    proposal_batch_max: int = _setting(
        1024,
        "int",
        "Most client proposals taken into one raft-loop batch (one WAL write, one fsync).",
        minimum=1,
    )
    request_timeout_ms: int = _setting(
        5000,
        "int",
        "Deadline of a client request that gives none (a write past it may or may not have been applied).",
        minimum=1,
    )
    transfer_leadership_on_stop: bool = _setting(
        True, "bool", "A stopping leader first hands leadership to an up-to-date follower."
    )
    watch: WatchSettings = section_field(WatchSettings, "The watch dispatcher.")


@attrs.frozen
class StorageSettings:
    """``[storage]``: the write-ahead log."""

    segment_size: int = _setting(
        64 * _MIB, "int", "A WAL segment file is closed and a new one started once it holds this many bytes.", minimum=1
    )
    preallocate: bool = _setting(
        True,
        "bool",
        "Zero-fill the next WAL segment in the background, so each fsync flushes data only (about twice "
        "the synced bandwidth on ext4); costs one extra write of every segment.",
    )


@attrs.frozen
class TransportSettings:
    """``[transport]``: framing and connection set-up, for peers and clients."""

    max_frame_size: int = _setting(
        16 * _MIB, "int", "Largest frame sent or accepted, in bytes; a larger one closes the connection.", minimum=1
    )
    max_snapshot_size: int = _setting(
        8 * 1024 * _MIB,
        "int",
        "Largest snapshot a peer may stream to this node, in bytes (it arrives in frame-sized parts); "
        "a larger one closes the connection. Raise it with the data: a million small keys make about 280 MB.",
        minimum=1,
    )
    connect_timeout_ms: int = _setting(5000, "int", "Give up opening a connection after this long.", minimum=1)
    handshake_timeout_ms: int = _setting(
        5000, "int", "Close a connection whose handshake has not finished after this long.", minimum=1
    )


@attrs.frozen
class ServerSettings:
    """``[server]``: the client endpoint of a standalone server, TLS, and its HTTP face."""

    max_connections: int = _setting(
        10000, "int", "Most client connections served at once; more are refused.", minimum=1
    )
    idle_timeout_ms: int = _setting(
        0,
        "int",
        "Close a client connection with no request in flight and no open watch after this long; 0 never.",
        minimum=0,
    )
    tls_cert: str | None = _setting(
        None, "path", "PEM certificate chain; set with `tls_key` to serve clients over TLS."
    )
    tls_key: str | None = _setting(None, "path", "PEM private key of `tls_cert`.")
    tls_ca: str | None = _setting(
        None, "path", "PEM CA bundle; when set, clients (and peers) must present a certificate it signed."
    )
    peer_tls: bool = _setting(
        False, "bool", "Use TLS between peers too (needs `tls_cert`, `tls_key` and `tls_ca`)."
    )
    metrics_address: str = _setting(
        DEFAULT_METRICS_ADDRESS,
        "listen",
        "host:port where `dengine serve` answers HTTP: /metrics, /health, /livez, /readyz, /status.json and "
        "the live cluster page at /. `off` (or an empty string) turns it off; port 0 picks a free port. "
        "The embedded engine serves nothing unless the application calls `dengine.http.open_http_server`.",
    )
    etcd_address: str = _setting(
        OFF,
        "listen",
        "host:port where `dengine serve` answers etcd's v3 gRPC API (etcdctl, Go clientv3, jetcd, aetcd); "
        "needs `pip install 'dengine[etcd]'`. `off` (the default) turns it off; port 0 picks a free port. "
        "See docs/etcd-compatibility.md.",
    )
    etcd_gateway_address: str = _setting(
        OFF,
        "listen",
        "host:port where `dengine serve` answers etcd's JSON gateway (HTTP/1.1 POST /v3/kv/range, /v3/watch, "
        "...: Patroni, etcd3gw, curl); needs the protobuf runtime (`pip install 'dengine[etcd]'`), not h2. "
        "`off` (the default) turns it off; port 0 picks a free port.",
    )


@attrs.frozen
class MetricsSettings:
    """``[metrics]``: what a node measures about itself (docs/operations.md, "Metrics")."""

    enabled: bool = _setting(
        True,
        "bool",
        "Record the histograms (WAL fsync and append, snapshots, peer round trips, client request latency) "
        "and count client requests by operation and code. Off: those metrics are exported without samples; "
        "gauges and the other counters are exported either way, and the slow-operation warnings still fire.",
    )
    slow_fsync_ms: int = _setting(
        1000,
        "int",
        "Log a WARNING when one WAL write and its fdatasync take longer than this (etcd's \"slow fdatasync\" "
        "is at 1 s).",
        minimum=1,
    )
    slow_apply_ms: int = _setting(
        100,
        "int",
        "Log a WARNING (and count `dengine_server_slow_apply_total`) when applying one step of committed entries "
        "to the state machine takes longer than this (etcd warns at 100 ms).",
        minimum=1,
    )


KIND_WORDS = {
    "int": "an integer",
    "float": "a number",
    "ratio": "a number from 0 up to (not including) 1",
    "bool": "true or false",
    "str": "a string",
    "path": "a file path",
    "address": "a 'host:port' string",
    "listen": "a 'host:port' string or 'off'",
    "consistency": "one of 'linearizable', 'lease', 'eventual'",
    "members": "a table of node id = 'host:port' or a string 'id=host:port,...'",
}


def schema_fields(cls: type) -> Iterator[tuple[attrs.Attribute[Any], Meta]]:
    for field in attrs.fields(cls):
        meta = field.metadata.get(_META)
        if meta is not None:
            yield field, meta


def schema_leaves(cls: type, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], attrs.Attribute[Any], Meta]]:
    """Every setting below ``cls`` as ``(path, field, meta)``, in declaration order."""
    for field, meta in schema_fields(cls):
        path = (*prefix, field.name)
        if meta.section is not None:
            yield from schema_leaves(meta.section, path)
        else:
            yield path, field, meta


def env_name(path: tuple[str, ...]) -> str:
    return ENV_PREFIX + "__".join(part.upper() for part in path)


def dotted_path(path: tuple[str, ...]) -> str:
    return ".".join(path)


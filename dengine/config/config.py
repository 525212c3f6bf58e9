"""Config: everything one dengine node needs to know, always valid.

Rules of this module:

* :class:`Config` is frozen and made of frozen sections -- ``node``,
  ``cluster``, ``raft`` (with ``raft.watch``), ``storage``, ``transport``,
  ``server``, ``metrics`` (dengine.config.settings) -- so ``attrs.evolve`` works at every
  level. The common node settings may also be given flat: ``Config(node_id=1,
  data_dir=..., peer_address=..., client_address=..., initial_cluster=...,
  cluster_id=...)``; a flat keyword is applied on top of the section given
  alongside it.
* Its constructor (and so ``attrs.evolve`` and every loader) runs
  :meth:`Config.validate` (dengine.config.validation) and raises
  :class:`~dengine.errors.ConfigError` with its sentences if there are any.
* Reading is dengine.config.loading, writing dengine.config.writing; this
  class only ties them together and offers the views the runtime needs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import attrs

from dengine.config import validation, writing
from dengine.config.loading import build, env_values, merge, read_toml_file, values_from_mapping, values_of
from dengine.config.settings import (
    DEFAULT_DATA_DIR,
    DEFAULT_PEER_ADDRESS,
    OFF,
    ClusterSettings,
    MetricsSettings,
    NodeSettings,
    RaftSettings,
    ServerSettings,
    StorageSettings,
    TransportSettings,
    section_field,
)
from dengine.errors import ConfigError
from dengine.kv.members import encode_member_context
from dengine.raft.core import RaftConfig

__all__ = ["Config"]


@attrs.frozen(init=False)
class Config:
    """Everything one dengine node needs to know, always valid.

    Build it from sections or from the flat node keywords (or both; a flat
    keyword wins over the same setting in a section)::

        Config(node_id=1, data_dir="./n1", peer_address="127.0.0.1:7001",
               initial_cluster={1: "127.0.0.1:7001", 2: "127.0.0.1:7002"},
               cluster_id="prod-a")
        Config(raft=RaftSettings(election_ticks=20))
        Config.single_node("./dengine-data")
        Config.from_toml("node1.toml")           # then DENGINE_* overrides

    Raises :class:`~dengine.errors.ConfigError` (one sentence per bad field)
    if the result is not valid.
    """

    node: NodeSettings = section_field(NodeSettings, "Who this node is and where it listens.")
    cluster: ClusterSettings = section_field(ClusterSettings, "Which cluster this node belongs to.")
    raft: RaftSettings = section_field(RaftSettings, "Consensus timings, limits and batching.")
    storage: StorageSettings = section_field(StorageSettings, "The write-ahead log.")
    transport: TransportSettings = section_field(TransportSettings, "Framing and connection set-up.")
    server: ServerSettings = section_field(ServerSettings, "The client endpoint and TLS.")
    metrics: MetricsSettings = section_field(MetricsSettings, "Metrics recording and slow-operation warnings.")

    def __init__(
        self,
        *,
        node: NodeSettings | None = None,
        cluster: ClusterSettings | None = None,
        raft: RaftSettings | None = None,
        storage: StorageSettings | None = None,
        transport: TransportSettings | None = None,
        server: ServerSettings | None = None,
        metrics: MetricsSettings | None = None,
        node_id: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        peer_address: str | None = None,
        client_address: str | None = None,
        initial_cluster: Mapping[int, str] | str | None = None,
        cluster_id: str | None = None,
    ) -> None:
        node = node if node is not None else NodeSettings()
        cluster = cluster if cluster is not None else ClusterSettings()
        flat_node: dict[str, Any] = {
            "id": node_id,
            "data_dir": data_dir,
            "peer_address": peer_address,
            "client_address": client_address,
        }
        flat_cluster: dict[str, Any] = {"id": cluster_id, "initial": initial_cluster}
        node_changes = {k: v for k, v in flat_node.items() if v is not None}
        cluster_changes = {k: v for k, v in flat_cluster.items() if v is not None}
        if node_changes and isinstance(node, NodeSettings):
            node = attrs.evolve(node, **node_changes)
        if cluster_changes and isinstance(cluster, ClusterSettings):
            cluster = attrs.evolve(cluster, **cluster_changes)
        self.__attrs_init__(
            node=node,
            cluster=cluster,
            raft=raft if raft is not None else RaftSettings(),
            storage=storage if storage is not None else StorageSettings(),
            transport=transport if transport is not None else TransportSettings(),
            server=server if server is not None else ServerSettings(),
            metrics=metrics if metrics is not None else MetricsSettings(),
        )
        problems = self.validate()
        if problems:
            raise ConfigError(problems)

    # -- constructors ----------------------------------------------------

    @classmethod
    def single_node(cls, data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR, **kwargs: Any) -> Config:
        """A one-node cluster (node id 1 unless ``node_id`` is given) storing
        its data in ``data_dir``; other keywords as for :class:`Config`."""
        return cls(data_dir=data_dir, **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "the configuration") -> Config:
        """Build from nested plain data shaped like the TOML file (what
        ``tomllib`` returns, or :meth:`to_dict`). Unknown sections or keys and
        badly typed values raise ConfigError naming ``source``."""
        problems: list[str] = []
        values = values_from_mapping(cls, data, (), source, problems)
        if problems:
            raise ConfigError(problems)
        return build(cls, values)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
        """Load a TOML file, then apply ``DENGINE_*`` overrides from ``env``
        (``os.environ`` when None; pass ``{}`` for none).

        Raises ConfigError naming the file when it cannot be read or is not
        TOML, naming keys and variables that are unknown or do not parse, and
        with :meth:`validate`'s sentences when the result is invalid.
        """
        where = os.fspath(path)
        data = read_toml_file(where)
        problems: list[str] = []
        values = values_from_mapping(cls, data, (), where, problems)
        overrides = env_values(cls, os.environ if env is None else env, problems)
        if problems:
            raise ConfigError(problems)
        return build(cls, merge(values, overrides))

    @classmethod
    def from_env(cls, base: Config | None = None, *, env: Mapping[str, str] | None = None) -> Config:
        """``base`` (defaults when None) with ``DENGINE_*`` overrides from
        ``env`` (``os.environ`` when None) applied on top."""
        problems: list[str] = []
        overrides = env_values(cls, os.environ if env is None else env, problems)
        if problems:
            raise ConfigError(problems)
        start = values_of(base) if base is not None else {}
        return build(cls, merge(start, overrides))

    # -- output ------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Nested plain data in the TOML layout: enums as their names, unset
        optional settings left out, ``cluster.initial`` keyed by strings.
        ``Config.from_dict(c.to_dict()) == c``."""
        return writing.to_dict(self)

    def to_toml(self) -> str:
        """This configuration as TOML text that :meth:`from_toml` reads back."""
        return writing.to_toml(self)

    # -- flat views ------------------------------------------------------------

    @property
    def node_id(self) -> int:
        return self.node.id

    @property
    def data_dir(self) -> str:
        return self.node.data_dir

    @property
    def peer_address(self) -> str:
        """Where this node listens for peers: ``node.peer_address``, else its
        entry in ``cluster.initial``, else ``127.0.0.1:7001``."""
        if self.node.peer_address is not None:
            return self.node.peer_address
        return self.cluster.initial.get(self.node.id, DEFAULT_PEER_ADDRESS)

    @property
    def advertised_peer_address(self) -> str:
        """Where the other members reach this node: ``node.advertise_peer_address``,
        else :attr:`peer_address`."""
        return self.node.advertise_peer_address or self.peer_address

    @property
    def client_address(self) -> str:
        return self.node.client_address

    @property
    def metrics_address(self) -> str | None:
        """Where ``dengine serve`` answers HTTP (``server.metrics_address``),
        or None when it is ``off``."""
        address = self.server.metrics_address
        return None if address == OFF else address

    @property
    def etcd_address(self) -> str | None:
        """Where ``dengine serve`` answers etcd's gRPC API
        (``server.etcd_address``), or None when it is ``off``."""
        address = self.server.etcd_address
        return None if address == OFF else address

    @property
    def etcd_gateway_address(self) -> str | None:
        """Where ``dengine serve`` answers etcd's JSON gateway
        (``server.etcd_gateway_address``), or None when it is ``off``."""
        address = self.server.etcd_gateway_address
        return None if address == OFF else address

    @property
    def cluster_id(self) -> str:
        return self.cluster.id

    @property
    def initial_cluster(self) -> dict[int, str]:
        """A copy of ``cluster.initial``."""
        return dict(self.cluster.initial)

    # -- helpers for the runtime -------------------------------------------------

    @property
    def is_single_node(self) -> bool:
        """True when this node alone makes up a new cluster."""
        if self.cluster.join:
            return False
        return set(self.cluster.initial) <= {self.node.id}

    def peers(self) -> dict[int, str]:
        """The other initial members: node id -> peer address."""
        return {n: a for n, a in self.cluster.initial.items() if n != self.node.id}

    def peer_reconnect_max(self) -> float:
        """The longest wait, in seconds, between two attempts to reach a peer
        that could not be reached: half the minimum election timeout, at most
        2 s. A link that comes back (a partition healed, a peer restarted)
        then carries votes again within an election timeout; with a fixed 2 s
        a failover right after a heal waited for the backoff (issue 11's chaos
        runs). etcd retries a peer's stream every 100 ms. Never below 0.05 s,
        the transport's first wait."""
        r = self.raft
        return max(0.05, min(2.0, r.election_ticks * r.tick_interval_ms / 2000))

    def initial_voters(self) -> frozenset[int]:
        """Voters to bootstrap a brand-new cluster with (empty when joining)."""
        if self.cluster.join:
            return frozenset()
        return frozenset(self.cluster.initial) or frozenset({self.node.id})

    def raft_config(self) -> RaftConfig:
        """The :class:`~dengine.raft.core.RaftConfig` of the pure core."""
        r = self.raft
        voters = self.initial_voters()
        # Each bootstrap entry records its voter's peer address; every
        # initial member derives them from the same `cluster.initial`.
        addresses = dict(self.cluster.initial) or {self.node.id: self.advertised_peer_address}
        return RaftConfig(
            id=self.node.id,
            initial_voters=voters,
            initial_contexts={n: encode_member_context(peer_address=addresses[n]) for n in voters if n in addresses},
            election_tick=r.election_ticks,
            heartbeat_tick=r.heartbeat_ticks,
            max_clock_drift=r.max_clock_drift,
            max_uncommitted_bytes=r.max_uncommitted_bytes,
            max_committed_bytes_per_ready=r.max_apply_bytes,
            learner_max_lag=r.learner_max_lag,
            max_inflight=r.max_inflight,
            max_append_entries=r.max_append_entries,
            max_append_bytes=r.max_append_bytes,
            pre_vote=r.pre_vote,
            check_quorum=r.check_quorum,
        )

    # -- validation --------------------------------------------------------------

    def validate(self) -> list[str]:
        """One plain sentence per bad field, naming it by its TOML path;
        empty when the configuration is valid."""
        return validation.validate(self)

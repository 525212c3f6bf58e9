"""dengine.config: the Config classes, TOML loading and DENGINE_* overrides.

Rules: a Config that exists is valid; every bad value, unknown key or unknown
variable is a ConfigError whose sentences name the field, key, variable or
file; every setting can be set from TOML and from the environment and comes
back unchanged. Tests write files only under tmp_path and never read the
real environment (every loader is given ``env=`` explicitly, except the one
test that checks the os.environ default through monkeypatch).
"""

from __future__ import annotations

import pickle
import tomllib
from pathlib import Path
from typing import Any

import attrs
import pytest

import dengine.config
from dengine.api import DEFAULT_MAX_KEY_SIZE, DEFAULT_MAX_VALUE_SIZE, ReadConsistency
from dengine.config import (
    DEFAULT_CLIENT_ADDRESS,
    DEFAULT_DATA_DIR,
    DEFAULT_METRICS_ADDRESS,
    DEFAULT_PEER_ADDRESS,
    ClusterSettings,
    Config,
    MetricsSettings,
    NodeSettings,
    RaftSettings,
    ServerSettings,
    StorageSettings,
    TransportSettings,
    WatchSettings,
    parse_address,
    parse_members,
)
from dengine.errors import ConfigError, ErrorCode, InvalidArgument
from dengine.kv.members import encode_member_context
from dengine.raft.core import RaftConfig

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
THREE = {1: "127.0.0.1:7001", 2: "127.0.0.1:7002", 3: "127.0.0.1:7003"}


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"raft": {"watch": {"x": 1}}} -> {"raft.watch.x": 1}; cluster.initial stays whole."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key != "initial":
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def env_name(dotted: str) -> str:
    return "DENGINE_" + dotted.replace(".", "__").upper()


def problems_of(excinfo: pytest.ExceptionInfo[ConfigError]) -> str:
    return " ".join(excinfo.value.problems)


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, str]:
    files = {}
    for name in ("cert.pem", "key.pem", "ca.pem"):
        path = tmp_path / name
        path.write_text("-----BEGIN TEST-----\n")
        files[name] = str(path)
    return files


def full_toml(tls: dict[str, str]) -> str:
    """A file that sets every setting to something other than its default."""
    return f"""
[node]
id = 2
data_dir = "/var/lib/dengine/n2"
peer_address = "0.0.0.0:7102"
client_address = "10.0.0.2:9182"

[cluster]
id = "prod-a"
initial = {{ 1 = "10.0.0.1:7101", 2 = "10.0.0.2:7102", 3 = "10.0.0.3:7103" }}
join = true

[raft]
tick_interval_ms = 50.5
election_ticks = 20
heartbeat_ticks = 2
max_clock_drift = 0.2
max_uncommitted_bytes = 1000000
max_apply_bytes = 300000
learner_max_lag = 77
pre_vote = false
check_quorum = false
default_read_consistency = "eventual"
snapshot_threshold = 500
snapshot_threshold_bytes = 1048576
max_key_size = 1024
max_value_size = 65536
max_txn_ops = 16
max_inflight = 64
max_append_entries = 128
max_append_bytes = 262144
proposal_batch_max = 256
request_timeout_ms = 750
transfer_leadership_on_stop = false

[raft.watch]
event_queue_size = 2048
watcher_buffer_size = 64
max_watcher_count = 1000
heartbeat_interval_ms = 5000
history_size = 0
enable_metrics = true

[storage]
segment_size = 1048576
preallocate = false

[transport]
max_frame_size = 4194304
max_snapshot_size = 1073741824
connect_timeout_ms = 1500
handshake_timeout_ms = 2500

[server]
max_connections = 50
idle_timeout_ms = 60000
tls_cert = "{tls["cert.pem"]}"
tls_key = "{tls["key.pem"]}"
tls_ca = "{tls["ca.pem"]}"
peer_tls = true
metrics_address = "10.0.0.2:9183"
etcd_address = "10.0.0.2:2379"
etcd_gateway_address = "10.0.0.2:2378"

[metrics]
enabled = false
slow_fsync_ms = 250
slow_apply_ms = 40
"""


@pytest.fixture
def full(tmp_path: Path, tls_files: dict[str, str]) -> Config:
    path = tmp_path / "full.toml"
    path.write_text(full_toml(tls_files))
    return Config.from_toml(path, env={})


# --- defaults ---------------------------------------------------------------


def test_defaults_are_valid_and_documented_values() -> None:
    config = Config()
    assert config.validate() == []
    assert config.node_id == 1
    assert config.data_dir == DEFAULT_DATA_DIR == "./dengine-data"
    assert config.peer_address == DEFAULT_PEER_ADDRESS == "127.0.0.1:7001"
    assert config.client_address == DEFAULT_CLIENT_ADDRESS == "127.0.0.1:9081"
    assert config.initial_cluster == {}
    assert config.is_single_node
    assert config.peers() == {}
    r = config.raft
    assert (r.tick_interval_ms, r.election_ticks, r.heartbeat_ticks, r.max_clock_drift) == (100.0, 10, 1, 0.1)
    assert r.default_read_consistency is ReadConsistency.LINEARIZABLE
    assert r.snapshot_threshold == 10000
    assert (r.max_key_size, r.max_value_size) == (DEFAULT_MAX_KEY_SIZE, DEFAULT_MAX_VALUE_SIZE)
    assert (r.proposal_batch_max, r.request_timeout_ms) == (1024, 5000)
    assert r.transfer_leadership_on_stop is True
    w = r.watch
    assert (w.event_queue_size, w.watcher_buffer_size, w.heartbeat_interval_ms) == (10240, 256, 0)
    assert (w.history_size, w.enable_metrics) == (10000, False)
    assert w.max_watcher_count >= 2**31
    assert config.transport.max_frame_size == 16 * 1024 * 1024
    assert config.server.max_connections == 10000
    assert (config.server.tls_cert, config.server.peer_tls) == (None, False)
    assert config.server.metrics_address == DEFAULT_METRICS_ADDRESS == "127.0.0.1:9082"
    assert config.metrics_address == "127.0.0.1:9082"


def test_default_raft_config_is_a_valid_single_voter() -> None:
    rc = Config().raft_config()
    assert isinstance(rc, RaftConfig)
    assert rc.validate() == []
    assert (rc.id, rc.initial_voters) == (1, frozenset({1}))
    assert (rc.election_tick, rc.heartbeat_tick, rc.max_clock_drift, rc.lease_ticks()) == (10, 1, 0.1, 7)


def test_sections_alone_are_plain_values() -> None:
    # Sections are not validated alone; the Config holding them is.
    assert RaftSettings(election_ticks=0).election_ticks == 0
    with pytest.raises(ConfigError):
        Config(raft=RaftSettings(election_ticks=0))


# --- flat keywords, single_node, evolve ------------------------------------


def test_flat_keywords_from_the_issue() -> None:
    config = Config(
        node_id=1,
        data_dir="./n1",
        peer_address="127.0.0.1:7001",
        initial_cluster=THREE,
        cluster_id="prod-a",
    )
    assert config.node == NodeSettings(id=1, data_dir="./n1", peer_address="127.0.0.1:7001")
    assert config.cluster == ClusterSettings(id="prod-a", initial=THREE)
    assert config.cluster_id == "prod-a"
    assert config.peers() == {2: "127.0.0.1:7002", 3: "127.0.0.1:7003"}
    assert not config.is_single_node
    rc = config.raft_config()
    assert (rc.id, rc.initial_voters) == (1, frozenset({1, 2, 3}))


def test_flat_keyword_wins_over_the_section_given_with_it() -> None:
    config = Config(node=NodeSettings(id=5, data_dir="./a"), node_id=7)
    assert (config.node_id, config.data_dir) == (7, "./a")


def test_peer_address_comes_from_initial_cluster_when_unset() -> None:
    config = Config(node_id=3, initial_cluster=THREE)
    assert config.node.peer_address is None
    assert config.peer_address == "127.0.0.1:7003"
    # and follows the node id through evolve
    assert attrs.evolve(config, node_id=2).peer_address == "127.0.0.1:7002"


def test_initial_cluster_string_form_and_pathlike_data_dir(tmp_path: Path) -> None:
    config = Config(node_id=2, data_dir=tmp_path, initial_cluster="1=127.0.0.1:7001, 2=127.0.0.1:7002")
    assert config.initial_cluster == {1: "127.0.0.1:7001", 2: "127.0.0.1:7002"}
    assert config.data_dir == str(tmp_path)


def test_single_node() -> None:
    config = Config.single_node("./dengine-data")
    assert (config.node_id, config.data_dir, config.is_single_node) == (1, "./dengine-data", True)
    assert config.raft_config().initial_voters == frozenset({1})
    assert Config.single_node("./x", node_id=4).raft_config().initial_voters == frozenset({4})


def test_a_one_member_initial_cluster_is_single_node() -> None:
    assert Config(node_id=2, initial_cluster={2: "127.0.0.1:7002"}).is_single_node


def test_join_starts_with_no_voters() -> None:
    config = Config(node=NodeSettings(id=4), cluster=ClusterSettings(initial=THREE, join=True))
    assert config.raft_config().initial_voters == frozenset()
    assert not config.is_single_node
    assert config.peers() == THREE
    assert config.peer_address == DEFAULT_PEER_ADDRESS


def test_evolve_at_every_level_revalidates() -> None:
    config = Config()
    slower = attrs.evolve(config, raft=attrs.evolve(config.raft, election_ticks=20))
    assert slower.raft.election_ticks == 20
    watch = attrs.evolve(config.raft.watch, heartbeat_interval_ms=5000)
    assert attrs.evolve(config, raft=attrs.evolve(config.raft, watch=watch)).raft.watch.heartbeat_interval_ms == 5000
    with pytest.raises(ConfigError, match=r"raft\.heartbeat_ticks"):
        attrs.evolve(config, raft=attrs.evolve(config.raft, heartbeat_ticks=0))


def test_config_is_hashable_comparable_and_picklable() -> None:
    a = Config(node_id=1, initial_cluster=THREE)
    b = Config(node_id=1, initial_cluster=dict(reversed(THREE.items())))
    assert a == b and hash(a) == hash(b)
    assert pickle.loads(pickle.dumps(a)) == a
    assert a != Config(node_id=2, initial_cluster=THREE)


def test_initial_cluster_property_is_a_copy() -> None:
    config = Config(node_id=1, initial_cluster=THREE)
    config.initial_cluster[9] = "x:1"
    config.peers()[9] = "x:1"
    assert 9 not in config.cluster.initial


def test_raft_config_carries_every_raft_setting() -> None:
    raft = RaftSettings(
        election_ticks=30,
        heartbeat_ticks=3,
        max_clock_drift=0.25,
        max_uncommitted_bytes=1000,
        max_apply_bytes=2000,
        max_inflight=7,
        max_append_entries=9,
        max_append_bytes=4096,
        pre_vote=False,
        check_quorum=False,
        learner_max_lag=11,
    )
    rc = Config(node_id=2, initial_cluster=THREE, raft=raft).raft_config()
    assert rc == RaftConfig(
        id=2,
        initial_voters=frozenset(THREE),
        # Each bootstrap entry names its voter's peer address, the same on every initial member.
        initial_contexts={n: encode_member_context(peer_address=a) for n, a in THREE.items()},
        learner_max_lag=11,
        election_tick=30,
        heartbeat_tick=3,
        max_clock_drift=0.25,
        max_uncommitted_bytes=1000,
        max_committed_bytes_per_ready=2000,
        max_inflight=7,
        max_append_entries=9,
        max_append_bytes=4096,
        pre_vote=False,
        check_quorum=False,
    )


# --- addresses and member lists ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7001", ("127.0.0.1", 7001)),
        ("node-1.example.com:9081", ("node-1.example.com", 9081)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:7001", ("::1", 7001)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    "text", ["", "localhost", ":7001", "host:", "host:http", "host:65536", "::1:7001", "[::1]7001", " h:1", "a b:1", 7001]
)
def test_parse_address_rejects(text: Any) -> None:
    with pytest.raises(InvalidArgument, match="host:port"):
        parse_address(text)


def test_parse_members() -> None:
    assert parse_members("1=a:1, 2 = b:2,") == {1: "a:1", 2: "b:2"}
    assert parse_members("") == {}
    for bad in ("1", "x=a:1", "0=a:1", "1=a:1,1=b:2", "1="):
        with pytest.raises(InvalidArgument):
            parse_members(bad)


# --- TOML ----------------------------------------------------------------------------


def test_toml_sets_every_setting_in_every_section(full: Config, tls_files: dict[str, str]) -> None:
    assert full.node == NodeSettings(
        id=2, data_dir="/var/lib/dengine/n2", peer_address="0.0.0.0:7102", client_address="10.0.0.2:9182"
    )
    assert full.cluster == ClusterSettings(
        id="prod-a", initial={1: "10.0.0.1:7101", 2: "10.0.0.2:7102", 3: "10.0.0.3:7103"}, join=True
    )
    assert full.raft == RaftSettings(
        tick_interval_ms=50.5,
        election_ticks=20,
        heartbeat_ticks=2,
        max_clock_drift=0.2,
        max_uncommitted_bytes=1000000,
        max_apply_bytes=300000,
        learner_max_lag=77,
        pre_vote=False,
        check_quorum=False,
        default_read_consistency=ReadConsistency.EVENTUAL,
        snapshot_threshold=500,
        snapshot_threshold_bytes=1048576,
        max_key_size=1024,
        max_value_size=65536,
        max_txn_ops=16,
        max_inflight=64,
        max_append_entries=128,
        max_append_bytes=262144,
        proposal_batch_max=256,
        request_timeout_ms=750,
        transfer_leadership_on_stop=False,
        watch=WatchSettings(
            event_queue_size=2048,
            watcher_buffer_size=64,
            max_watcher_count=1000,
            heartbeat_interval_ms=5000,
            history_size=0,
            enable_metrics=True,
        ),
    )
    assert full.storage == StorageSettings(segment_size=1048576, preallocate=False)
    assert full.transport == TransportSettings(max_frame_size=4194304, max_snapshot_size=1 << 30, connect_timeout_ms=1500, handshake_timeout_ms=2500)
    assert full.server == ServerSettings(
        max_connections=50,
        idle_timeout_ms=60000,
        tls_cert=tls_files["cert.pem"],
        tls_key=tls_files["key.pem"],
        tls_ca=tls_files["ca.pem"],
        peer_tls=True,
        metrics_address="10.0.0.2:9183",
        etcd_address="10.0.0.2:2379",
        etcd_gateway_address="10.0.0.2:2378",
    )
    assert full.metrics == MetricsSettings(enabled=False, slow_fsync_ms=250, slow_apply_ms=40)


def test_the_full_file_leaves_no_setting_at_its_default(full: Config) -> None:
    # Keeps the two tests above honest when a setting is added.
    defaults = flatten(Config().to_dict())
    loaded = flatten(full.to_dict())
    assert set(defaults) <= set(loaded)
    assert [k for k in defaults if defaults[k] == loaded[k]] == []


def test_toml_round_trip_of_every_section(full: Config, tmp_path: Path) -> None:
    for config in (Config(), full, Config(node_id=2, initial_cluster=THREE, cluster_id='we"ird\\id\n')):
        path = tmp_path / "out.toml"
        path.write_text(config.to_toml())
        assert Config.from_toml(path, env={}) == config
        assert Config.from_dict(config.to_dict()) == config


def test_to_toml_is_to_dict_written_as_toml(full: Config) -> None:
    with_clients = attrs.evolve(full, cluster=attrs.evolve(full.cluster, client_addresses={3: "[::1]:9083", 1: "h:1"}))
    for config in (Config(), full, with_clients):
        text = config.to_toml()
        assert tomllib.loads(text) == config.to_dict()
        assert text.startswith("[node]\n") and text.endswith("\n")
    # Member maps are written as tables keyed by node id, in id order.
    assert '[cluster.client_addresses]\n1 = "h:1"\n3 = "[::1]:9083"\n' in with_clients.to_toml()


def test_every_public_name_is_importable_from_the_package() -> None:
    assert set(dengine.config.__all__) == {
        "DEFAULT_CLIENT_ADDRESS",
        "DEFAULT_CLUSTER_ID",
        "DEFAULT_DATA_DIR",
        "DEFAULT_METRICS_ADDRESS",
        "DEFAULT_PEER_ADDRESS",
        "ENV_PREFIX",
        "ClusterSettings",
        "Config",
        "MetricsSettings",
        "NodeSettings",
        "RaftSettings",
        "ServerSettings",
        "StorageSettings",
        "TransportSettings",
        "WatchSettings",
        "format_address",
        "parse_address",
        "parse_members",
    }
    for name in dengine.config.__all__:
        assert getattr(dengine.config, name) is not None


def test_toml_partial_file_keeps_defaults_and_takes_initial_as_a_string(tmp_path: Path) -> None:
    path = tmp_path / "node1.toml"
    path.write_text(
        '[node]\nid = 1\n[cluster]\ninitial = "1=127.0.0.1:7001,2=127.0.0.1:7002"\n'
        "[raft.watch]\nheartbeat_interval_ms = 5000\n[raft]\ntick_interval_ms = 20\n"
    )
    config = Config.from_toml(path, env={})
    assert config.initial_cluster == {1: "127.0.0.1:7001", 2: "127.0.0.1:7002"}
    assert config.raft.watch.heartbeat_interval_ms == 5000
    assert config.raft.tick_interval_ms == 20.0 and isinstance(config.raft.tick_interval_ms, float)
    assert config.raft.election_ticks == 10
    assert config.raft.watch.watcher_buffer_size == 256


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[raft]\nelecton_ticks = 20\n", ["raft.electon_ticks", "raft.election_ticks"]),
        ("[nodes]\nid = 1\n", ["[nodes]", "node"]),
        ("[raft.watch]\nbuffer = 1\n", ["raft.watch.buffer"]),
        ("[raft.wach]\nx = 1\n", ["raft.wach"]),
        ("[server]\n[server.tls]\ncert = 'x'\n", ["server.tls"]),
        ("top = 1\n", ["unknown key top outside any section"]),
    ],
)
def test_unknown_toml_key_or_section_is_named(tmp_path: Path, text: str, named: list[str]) -> None:
    path = tmp_path / "node1.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as excinfo:
        Config.from_toml(path, env={})
    message = problems_of(excinfo)
    assert "node1.toml" in message
    for name in named:
        assert name in message


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('[raft]\nelection_ticks = "10"\n', "raft.election_ticks"),
        ("[raft]\nelection_ticks = 10.0\n", "raft.election_ticks"),
        ("[node]\nid = true\n", "node.id"),
        ('[raft]\ntick_interval_ms = "fast"\n', "raft.tick_interval_ms"),
        ('[raft]\npre_vote = "yes"\n', "raft.pre_vote"),
        ("[cluster]\nid = 7\n", "cluster.id"),
        ('[raft]\ndefault_read_consistency = "strong"\n', "raft.default_read_consistency"),
        ('[cluster]\ninitial = { one = "a:1" }\n', "cluster.initial"),
        ("[cluster]\ninitial = { 1 = 7001 }\n", "cluster.initial"),
        ('[cluster]\ninitial = "1=a:1,1=b:2"\n', "cluster.initial"),
        ("[cluster]\ninitial = [1, 2]\n", "cluster.initial"),
        ("raft = 5\n", "raft"),
        ("[raft]\nwatch = 5\n", "raft.watch"),
    ],
)
def test_badly_typed_toml_value_names_field_and_file(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "node1.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as excinfo:
        Config.from_toml(path, env={})
    message = problems_of(excinfo)
    assert field in message and "node1.toml" in message


def test_bad_toml_syntax_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[raft\nelection_ticks = 10\n")
    with pytest.raises(ConfigError, match=r"broken\.toml.*not valid TOML") as excinfo:
        Config.from_toml(path, env={})
    assert excinfo.value.code == ErrorCode.CONFIG_INVALID


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml does not exist"):
        Config.from_toml(tmp_path / "nope.toml", env={})


def test_invalid_values_from_toml_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "node1.toml"
    path.write_text("[raft]\nelection_ticks = 1\nheartbeat_ticks = 1\n")
    with pytest.raises(ConfigError) as excinfo:
        Config.from_toml(path, env={})
    assert excinfo.value.problems == [
        "raft.election_ticks must be greater than raft.heartbeat_ticks (got 1 and 1).",
    ]


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError, match=r"node\.name"):
        Config.from_dict({"node": {"name": "x"}})


def test_a_removed_setting_names_its_replacement() -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_dict({"raft": {"lease_margin_ticks": 2}})
    assert info.value.problems == [
        "the configuration has an unknown key raft.lease_margin_ticks "
        "(it was replaced by raft.max_clock_drift, from which the lease is derived)."
    ]
    with pytest.raises(ConfigError, match="DENGINE_RAFT__LEASE_MARGIN_TICKS is not a dengine setting .it was replaced by raft.max_clock_drift"):
        Config.from_env(env={"DENGINE_RAFT__LEASE_MARGIN_TICKS": "2"})


# --- environment overrides -----------------------------------------------------------


@pytest.mark.parametrize(
    ("var", "text", "read"),
    [
        ("DENGINE_NODE__ID", "2", lambda c: c.node_id == 2),  # int
        ("DENGINE_RAFT__ELECTION_TICKS", " 20 ", lambda c: c.raft.election_ticks == 20),
        ("DENGINE_RAFT__WATCH__HEARTBEAT_INTERVAL_MS", "5000", lambda c: c.raft.watch.heartbeat_interval_ms == 5000),
        ("DENGINE_RAFT__WATCH__ENABLE_METRICS", "true", lambda c: c.raft.watch.enable_metrics is True),  # bool
        ("DENGINE_RAFT__PRE_VOTE", "0", lambda c: c.raft.pre_vote is False),
        ("DENGINE_RAFT__TRANSFER_LEADERSHIP_ON_STOP", "Off", lambda c: c.raft.transfer_leadership_on_stop is False),
        ("DENGINE_CLUSTER__JOIN", "yes", lambda c: c.cluster.join is True),
        ("DENGINE_CLUSTER__ID", "x", lambda c: c.cluster_id == "x"),  # str
        ("DENGINE_NODE__DATA_DIR", "/data/n2", lambda c: c.data_dir == "/data/n2"),
        ("DENGINE_NODE__CLIENT_ADDRESS", "0.0.0.0:9999", lambda c: c.client_address == "0.0.0.0:9999"),  # address
        ("DENGINE_RAFT__TICK_INTERVAL_MS", "12.5", lambda c: c.raft.tick_interval_ms == 12.5),  # float
        ("DENGINE_RAFT__TICK_INTERVAL_MS", "20", lambda c: c.raft.tick_interval_ms == 20.0),
        ("DENGINE_RAFT__DEFAULT_READ_CONSISTENCY", "LEASE", lambda c: c.raft.default_read_consistency is ReadConsistency.LEASE),  # enum
        ("DENGINE_STORAGE__SEGMENT_SIZE", "1_048_576", lambda c: c.storage.segment_size == 1 << 20),
        ("DENGINE_STORAGE__PREALLOCATE", "false", lambda c: c.storage.preallocate is False),
        ("DENGINE_TRANSPORT__MAX_FRAME_SIZE", "8388608", lambda c: c.transport.max_frame_size == 8 << 20),
        ("DENGINE_SERVER__MAX_CONNECTIONS", "10", lambda c: c.server.max_connections == 10),
        ("DENGINE_SERVER__METRICS_ADDRESS", " 0.0.0.0:9100 ", lambda c: c.metrics_address == "0.0.0.0:9100"),  # listen
        ("DENGINE_SERVER__METRICS_ADDRESS", "off", lambda c: c.metrics_address is None),
        ("DENGINE_SERVER__METRICS_ADDRESS", "", lambda c: c.server.metrics_address == "off"),
    ],
)
def test_env_override_of_each_type(var: str, text: str, read: Any) -> None:
    base = Config(node_id=1, initial_cluster=THREE)
    config = Config.from_env(base=base, env={var: text})
    assert read(config)
    assert config.initial_cluster == THREE  # the rest of the base is kept


def test_env_override_of_the_initial_cluster_string() -> None:
    config = Config.from_env(
        env={"DENGINE_NODE__ID": "2", "DENGINE_CLUSTER__INITIAL": "1=10.0.0.1:7001,2=10.0.0.2:7001"}
    )
    assert config.initial_cluster == {1: "10.0.0.1:7001", 2: "10.0.0.2:7001"}
    assert config.peer_address == "10.0.0.2:7001"
    # replaces the base's map rather than merging into it
    base = Config(node_id=1, initial_cluster=THREE)
    assert Config.from_env(base, env={"DENGINE_CLUSTER__INITIAL": "1=127.0.0.1:7001"}).initial_cluster == {
        1: "127.0.0.1:7001"
    }


def test_env_override_of_a_path_and_its_unsetting(tls_files: dict[str, str]) -> None:
    env = {
        "DENGINE_SERVER__TLS_CERT": tls_files["cert.pem"],
        "DENGINE_SERVER__TLS_KEY": tls_files["key.pem"],
    }
    config = Config.from_env(env=env)
    assert (config.server.tls_cert, config.server.tls_key) == (tls_files["cert.pem"], tls_files["key.pem"])
    cleared = Config.from_env(config, env={"DENGINE_SERVER__TLS_CERT": "", "DENGINE_SERVER__TLS_KEY": ""})
    assert (cleared.server.tls_cert, cleared.server.tls_key) == (None, None)


def test_every_setting_can_come_from_the_environment(full: Config) -> None:
    def text(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, dict):
            return ",".join(f"{k}={v}" for k, v in value.items())
        return str(value)

    env = {env_name(k): text(v) for k, v in flatten(full.to_dict()).items()}
    assert Config.from_env(env=env) == full


def test_env_applies_on_top_of_toml(tmp_path: Path) -> None:
    path = tmp_path / "node1.toml"
    path.write_text('[node]\nid = 1\ndata_dir = "./n1"\n[cluster]\nid = "from-file"\n[raft]\nelection_ticks = 15\n')
    config = Config.from_toml(path, env={"DENGINE_CLUSTER__ID": "from-env", "PATH": "/bin", "DENGINE_LOG_LEVEL": "x"})
    assert (config.cluster_id, config.data_dir, config.raft.election_ticks) == ("from-env", "./n1", 15)


def test_from_toml_reads_os_environ_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "node1.toml"
    path.write_text("[raft]\nelection_ticks = 15\n")
    monkeypatch.setenv("DENGINE_RAFT__ELECTION_TICKS", "25")
    assert Config.from_toml(path).raft.election_ticks == 25
    assert Config.from_toml(path, env={}).raft.election_ticks == 15


@pytest.mark.parametrize(
    ("var", "text"),
    [
        ("DENGINE_NODE__ID", "two"),
        ("DENGINE_NODE__ID", "2.0"),
        ("DENGINE_RAFT__WATCH__ENABLE_METRICS", "maybe"),
        ("DENGINE_RAFT__TICK_INTERVAL_MS", "fast"),
        ("DENGINE_RAFT__DEFAULT_READ_CONSISTENCY", "strong"),
        ("DENGINE_CLUSTER__INITIAL", "1=a:1,x=b:2"),
        ("DENGINE_CLUSTER__INITIAL", "127.0.0.1:7001"),
    ],
)
def test_env_value_that_does_not_parse_names_the_variable(var: str, text: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Config.from_env(env={var: text})
    message = problems_of(excinfo)
    assert var in message and repr(text) in message


def test_env_value_that_parses_but_is_invalid_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"raft\.election_ticks must be greater"):
        Config.from_env(env={"DENGINE_RAFT__ELECTION_TICKS": "1"})


@pytest.mark.parametrize(
    ("var", "hint"),
    [
        ("DENGINE_NODE_ID", "DENGINE_NODE__ID"),
        ("DENGINE_RAFT__ELECTON_TICKS", "DENGINE_RAFT__ELECTION_TICKS"),
        ("DENGINE_RAFT__WATCH__HEARTBEAT_INTERVAL", "DENGINE_RAFT__WATCH__HEARTBEAT_INTERVAL_MS"),
        ("DENGINE_RAFT_WATCH__ENABLE_METRICS", "DENGINE_RAFT__WATCH__ENABLE_METRICS"),
        ("DENGINE_NOPE__X", None),
        ("DENGINE_RAFT__WATCH", None),
    ],
)
def test_unknown_setting_like_env_var_is_an_error(var: str, hint: str | None) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Config.from_env(env={var: "1"})
    message = problems_of(excinfo)
    assert f"{var} is not a dengine setting" in message
    if hint is not None:
        assert f"did you mean {hint}?" in message


def test_env_vars_that_are_not_settings_are_ignored() -> None:
    env = {"DENGINE_LOG_LEVEL": "debug", "DENGINE": "x", "HOME": "/root", "XDENGINE_NODE__ID": "0"}
    assert Config.from_env(env=env) == Config()


def test_all_env_problems_are_reported_together() -> None:
    with pytest.raises(ConfigError) as excinfo:
        Config.from_env(env={"DENGINE_NODE__ID": "x", "DENGINE_RAFT__NOPE": "1", "DENGINE_SERVER__PEER_TLS": "2"})
    assert len(excinfo.value.problems) == 3


# --- validation: each kind of bad value names its field ---------------------------------


BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"node_id": 0}, "node.id must be a positive integer"),
    ({"node_id": -3}, "node.id must be a positive integer"),
    ({"node_id": "1"}, "node.id must be an integer"),
    ({"node_id": True}, "node.id must be an integer"),
    ({"node_id": 2**63}, "node.id must be at most"),
    ({"data_dir": ""}, "node.data_dir must not be empty"),
    ({"peer_address": "localhost"}, "node.peer_address must be 'host:port': no port was found"),
    ({"peer_address": "h:70000"}, "node.peer_address must be 'host:port': port 70000 is larger than 65535"),
    ({"client_address": "h:port"}, "node.client_address must be 'host:port'"),
    ({"client_address": ":9081"}, "node.client_address must be 'host:port': no host was given"),
    ({"client_address": "::1:9081"}, "node.client_address must be 'host:port': an IPv6 host"),
    ({"client_address": DEFAULT_PEER_ADDRESS}, "node.client_address and the peer address are both"),
    ({"cluster_id": ""}, "cluster.id must not be empty"),
    ({"cluster_id": 5}, "cluster.id must be a string"),
    ({"initial_cluster": {0: "a:1"}}, "cluster.initial is wrong: 0 is not a positive integer node id"),
    ({"initial_cluster": {1: "a"}}, "cluster.initial is wrong: node 1's address 'a' is not 'host:port'"),
    ({"initial_cluster": {1: "a:0"}}, "cluster.initial is wrong: node 1 must have an address peers can dial"),
    ({"initial_cluster": {1: "0.0.0.0:7001"}}, "cluster.initial is wrong: node 1 must have an address peers can dial"),
    ({"initial_cluster": {1: "a:1", 2: "a:1"}}, "nodes 1 and 2 share the address 'a:1'"),
    ({"initial_cluster": "1=a:1,,x"}, "cluster.initial must map node ids"),
    ({"initial_cluster": [1, 2]}, "cluster.initial must map node ids"),
    ({"node_id": 4, "initial_cluster": THREE}, "node.id 4 is not in cluster.initial (members 1, 2, 3)"),
    ({"cluster": ClusterSettings(join=True)}, "cluster.join needs cluster.initial"),
    ({"cluster": ClusterSettings(join="yes")}, "cluster.join must be true or false"),  # type: ignore[arg-type]
    ({"node_id": 1, "peer_address": "127.0.0.1:7009", "initial_cluster": THREE}, "node.peer_address '127.0.0.1:7009' differs from cluster.initial[1]"),
    ({"raft": RaftSettings(tick_interval_ms=0)}, "raft.tick_interval_ms must be a finite number greater than 0"),
    ({"raft": RaftSettings(tick_interval_ms=float("nan"))}, "raft.tick_interval_ms must be a finite number"),
    ({"raft": RaftSettings(tick_interval_ms="100")}, "raft.tick_interval_ms must be a number"),  # type: ignore[arg-type]
    ({"raft": RaftSettings(heartbeat_ticks=0)}, "raft.heartbeat_ticks must be a positive integer"),
    ({"raft": RaftSettings(election_ticks=3, heartbeat_ticks=3)}, "raft.election_ticks must be greater than raft.heartbeat_ticks (got 3 and 3)."),
    ({"raft": RaftSettings(max_clock_drift=-0.1)}, "raft.max_clock_drift must be a number from 0 up to (not including) 1 (got -0.1)."),
    ({"raft": RaftSettings(max_clock_drift=1)}, "raft.max_clock_drift must be a number from 0 up to (not including) 1 (got 1.0)."),
    ({"raft": RaftSettings(election_ticks=3, max_clock_drift=0.5)}, "raft.max_clock_drift 0.5 leaves no safe leader lease with raft.election_ticks 3: raise raft.election_ticks or lower raft.max_clock_drift."),
    ({"raft": RaftSettings(max_uncommitted_bytes=0)}, "raft.max_uncommitted_bytes must be a positive integer"),
    ({"raft": RaftSettings(max_apply_bytes=0)}, "raft.max_apply_bytes must be a positive integer"),
    ({"raft": RaftSettings(default_read_consistency="fast")}, "raft.default_read_consistency must be one of"),  # type: ignore[arg-type]
    ({"raft": RaftSettings(default_read_consistency="lease", check_quorum=False)}, "raft.default_read_consistency 'lease' needs raft.check_quorum"),  # type: ignore[arg-type]
    ({"raft": RaftSettings(pre_vote=1)}, "raft.pre_vote must be true or false"),  # type: ignore[arg-type]
    ({"raft": RaftSettings(snapshot_threshold=0)}, "raft.snapshot_threshold must be a positive integer"),
    ({"raft": RaftSettings(snapshot_threshold_bytes=0)}, "raft.snapshot_threshold_bytes must be a positive integer"),
    ({"raft": RaftSettings(max_key_size=0)}, "raft.max_key_size must be a positive integer"),
    ({"raft": RaftSettings(max_value_size=-1)}, "raft.max_value_size must be a positive integer"),
    ({"raft": RaftSettings(max_inflight=0)}, "raft.max_inflight must be a positive integer"),
    ({"raft": RaftSettings(max_append_entries=0)}, "raft.max_append_entries must be a positive integer"),
    ({"raft": RaftSettings(max_append_bytes=0)}, "raft.max_append_bytes must be a positive integer"),
    ({"raft": RaftSettings(proposal_batch_max=0)}, "raft.proposal_batch_max must be a positive integer"),
    ({"raft": RaftSettings(request_timeout_ms=0)}, "raft.request_timeout_ms must be a positive integer"),
    ({"raft": RaftSettings(max_value_size=16 << 20)}, "raft.max_key_size + raft.max_value_size must be smaller than transport.max_frame_size"),
    ({"raft": RaftSettings(max_append_bytes=16 << 20)}, "raft.max_append_bytes must be smaller than transport.max_frame_size"),
    ({"raft": RaftSettings(watch=WatchSettings(event_queue_size=0))}, "raft.watch.event_queue_size must be a positive integer"),
    ({"raft": RaftSettings(watch=WatchSettings(watcher_buffer_size=0))}, "raft.watch.watcher_buffer_size must be a positive integer"),
    ({"raft": RaftSettings(watch=WatchSettings(max_watcher_count=0))}, "raft.watch.max_watcher_count must be a positive integer"),
    ({"raft": RaftSettings(watch=WatchSettings(heartbeat_interval_ms=-1))}, "raft.watch.heartbeat_interval_ms must be at least 0"),
    ({"raft": RaftSettings(watch=WatchSettings(history_size=-1))}, "raft.watch.history_size must be at least 0"),
    ({"raft": RaftSettings(watch=WatchSettings(enable_metrics="no"))}, "raft.watch.enable_metrics must be true or false"),  # type: ignore[arg-type]
    ({"raft": RaftSettings(watch=None)}, "raft.watch must be a WatchSettings"),  # type: ignore[arg-type]
    ({"storage": StorageSettings(segment_size=0)}, "storage.segment_size must be a positive integer"),
    ({"transport": TransportSettings(max_frame_size=0)}, "transport.max_frame_size must be a positive integer"),
    ({"transport": TransportSettings(max_snapshot_size=0)}, "transport.max_snapshot_size must be a positive integer"),
    ({"transport": TransportSettings(connect_timeout_ms=0)}, "transport.connect_timeout_ms must be a positive integer"),
    ({"transport": TransportSettings(handshake_timeout_ms=-5)}, "transport.handshake_timeout_ms must be a positive integer"),
    ({"server": ServerSettings(max_connections=0)}, "server.max_connections must be a positive integer"),
    ({"server": ServerSettings(idle_timeout_ms=-1)}, "server.idle_timeout_ms must be at least 0"),
    ({"server": ServerSettings(tls_cert="/no/such/cert.pem", tls_key="/no/such/key.pem")}, "server.tls_cert names a file that does not exist ('/no/such/cert.pem')."),
    ({"server": ServerSettings(tls_ca="")}, "server.tls_ca must be a file path"),
    ({"server": StorageSettings()}, "server must be a ServerSettings"),
    ({"server": ServerSettings(metrics_address="9082")}, "server.metrics_address must be 'host:port' or 'off': no port was found"),
    ({"server": ServerSettings(metrics_address=9082)}, "server.metrics_address must be 'host:port' or 'off'"),  # type: ignore[arg-type]
    ({"server": ServerSettings(metrics_address="127.0.0.1:9081")}, "server.metrics_address and node.client_address are both '127.0.0.1:9081'"),
    ({"server": ServerSettings(metrics_address=DEFAULT_PEER_ADDRESS)}, "server.metrics_address and the peer address are both"),
    ({"client_address": "127.0.0.1:9082"}, "server.metrics_address and node.client_address are both '127.0.0.1:9082'"),
]


def test_metrics_address_off_and_port_zero() -> None:
    assert Config(server=ServerSettings(metrics_address="OFF")).metrics_address is None
    assert Config(client_address="127.0.0.1:9082", server=ServerSettings(metrics_address="off")).metrics_address is None
    both_zero = Config(client_address="127.0.0.1:0", server=ServerSettings(metrics_address="127.0.0.1:0"))
    assert both_zero.metrics_address == "127.0.0.1:0"
    assert 'metrics_address = "off"' in Config(server=ServerSettings(metrics_address="")).to_toml()


@pytest.mark.parametrize(("kwargs", "sentence"), BAD_VALUES)
def test_each_bad_value_is_a_config_error_naming_the_field(kwargs: dict[str, Any], sentence: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Config(**kwargs)
    assert excinfo.value.code == ErrorCode.CONFIG_INVALID
    assert any(sentence in p for p in excinfo.value.problems), excinfo.value.problems
    assert all(p.endswith(".") for p in excinfo.value.problems)


def test_tls_settings_must_go_together(tls_files: dict[str, str]) -> None:
    cert, key, ca = tls_files["cert.pem"], tls_files["key.pem"], tls_files["ca.pem"]
    assert Config(server=ServerSettings(tls_cert=cert, tls_key=key)).server.tls_cert == cert
    cases = [
        (ServerSettings(tls_cert=cert), "server.tls_cert and server.tls_key must be set together (server.tls_cert is set"),
        (ServerSettings(tls_key=key), "server.tls_cert and server.tls_key must be set together (server.tls_key is set"),
        (ServerSettings(tls_ca=ca), "server.tls_ca is set but server.tls_cert is not"),
        (ServerSettings(tls_cert=cert, tls_key=key, peer_tls=True), "server.peer_tls needs server.tls_ca to be set."),
        (ServerSettings(peer_tls=True), "server.peer_tls needs server.tls_cert, server.tls_key, server.tls_ca"),
    ]
    for server, sentence in cases:
        with pytest.raises(ConfigError) as excinfo:
            Config(server=server)
        assert any(sentence in p for p in excinfo.value.problems), excinfo.value.problems


def test_wildcard_peer_address_may_differ_from_initial() -> None:
    config = Config(node_id=1, peer_address="0.0.0.0:7001", initial_cluster=THREE)
    assert config.peer_address == "0.0.0.0:7001"
    assert config.peers() == {2: "127.0.0.1:7002", 3: "127.0.0.1:7003"}


def test_an_advertised_peer_address_lets_the_listen_address_differ() -> None:
    """etcd's listen / advertise split: the node listens on one address and
    the others dial the one cluster.initial lists (a proxy, a NAT)."""
    config = Config.from_dict({"node": {"id": 1, "peer_address": "127.0.0.1:9001",
                                        "advertise_peer_address": "127.0.0.1:7001"},
                               "cluster": {"initial": THREE}})
    assert config.peer_address == "127.0.0.1:9001"
    assert config.advertised_peer_address == "127.0.0.1:7001"
    assert config.peers() == {2: "127.0.0.1:7002", 3: "127.0.0.1:7003"}
    # the bootstrap records what the others dial, not the listen address
    assert config.raft_config().initial_contexts[1] == encode_member_context(peer_address="127.0.0.1:7001")
    assert Config.from_env(env={"DENGINE_NODE__ADVERTISE_PEER_ADDRESS": "127.0.0.1:7001"}).node \
        .advertise_peer_address == "127.0.0.1:7001"
    assert Config().advertised_peer_address == Config().peer_address


def test_an_advertised_peer_address_must_be_the_listed_one() -> None:
    with pytest.raises(ConfigError) as excinfo:
        Config.from_dict({"node": {"id": 1, "peer_address": "127.0.0.1:9001",
                                   "advertise_peer_address": "127.0.0.1:7005"},
                          "cluster": {"initial": THREE}})
    assert problems_of(excinfo) == (
        "node.advertise_peer_address '127.0.0.1:7005' differs from cluster.initial[1] '127.0.0.1:7001'; "
        "the other members dial what cluster.initial lists: make them equal.")
    for undialable in ("0.0.0.0:7001", "127.0.0.1:0"):
        with pytest.raises(ConfigError, match="is not an address others can dial"):
            Config.from_dict({"node": {"advertise_peer_address": undialable}})
    with pytest.raises(ConfigError, match="node.advertise_peer_address must be 'host:port'"):
        Config.from_dict({"node": {"advertise_peer_address": "no-port"}})


def test_a_peer_is_retried_within_half_an_election_timeout() -> None:
    """A healed link must carry votes within an election timeout: the
    reconnect backoff is capped at half the minimum election timeout, and
    never above 2 s."""
    assert Config().peer_reconnect_max() == 0.5  # 10 ticks of 100 ms
    fast = Config.from_env(env={"DENGINE_RAFT__TICK_INTERVAL_MS": "30"})
    assert fast.peer_reconnect_max() == pytest.approx(0.15)
    slow = Config.from_env(env={"DENGINE_RAFT__TICK_INTERVAL_MS": "1000"})
    assert slow.peer_reconnect_max() == 2.0
    tiny = Config.from_env(env={"DENGINE_RAFT__TICK_INTERVAL_MS": "1", "DENGINE_RAFT__ELECTION_TICKS": "10"})
    assert tiny.peer_reconnect_max() == 0.05  # the transport's first wait is the floor


def test_port_zero_is_allowed_for_listening_addresses() -> None:
    config = Config(peer_address="127.0.0.1:0", client_address="127.0.0.1:0")
    assert parse_address(config.client_address) == ("127.0.0.1", 0)


def test_validate_gives_one_sentence_per_bad_field() -> None:
    config = Config()
    # object.__setattr__ gets around frozen to look at validate() alone.
    bad_node = NodeSettings(id=0, data_dir="")
    object.__setattr__(config, "node", bad_node)
    assert config.validate() == [
        "node.id must be a positive integer (got 0).",
        "node.data_dir must not be empty.",
    ]
    with pytest.raises(ConfigError) as excinfo:
        Config(node=bad_node)
    assert str(excinfo.value) == (
        "invalid configuration: node.id must be a positive integer (got 0). node.data_dir must not be empty."
    )


# --- docs -------------------------------------------------------------------------------


def test_docs_list_every_setting_with_its_env_var_and_default() -> None:
    text = DOCS.read_text()
    for dotted, default in flatten(Config().to_dict()).items():
        section, _, key = dotted.rpartition(".")
        assert f"`[{section}]`" in text, section
        row = next((line for line in text.splitlines() if line.startswith(f"| `{key}` ") and env_name(dotted) in line), None)
        assert row is not None, f"no table row for {dotted} with {env_name(dotted)}"
        shown = "`{}`" if not isinstance(default, dict) else "`{{}}`"
        if isinstance(default, bool):
            default = "true" if default else "false"
        elif isinstance(default, str):
            default = f'"{default}"'
        assert shown.format(default) in row or isinstance(default, int) and default > 10**6, (dotted, row)
    for dotted in ("node.peer_address", "server.tls_cert", "server.tls_key", "server.tls_ca"):
        assert env_name(dotted) in text


def test_from_dict_takes_int_member_ids_and_refuses_other_keys_clearly() -> None:
    cfg = Config.from_dict({"cluster": {"initial": {1: "127.0.0.1:7001", 2: "127.0.0.1:7002", 3: "127.0.0.1:7003"}}})
    assert cfg.cluster.initial == {1: "127.0.0.1:7001", 2: "127.0.0.1:7002", 3: "127.0.0.1:7003"}
    for bad in ({0: "a:1"}, {True: "a:1"}, {1.5: "a:1"}):
        with pytest.raises(ConfigError, match="is not a positive node id"):
            Config.from_dict({"cluster": {"initial": bad}})

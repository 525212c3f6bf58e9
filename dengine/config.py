"""Node configuration: attrs classes, a TOML file, ``DENGINE_*`` overrides.

Rules of this module:

* Layer 3: it imports only the standard library, attrs, dengine.errors,
  dengine.api and dengine.raft. It reads files and the environment only when
  asked to (:meth:`Config.from_toml`, :meth:`Config.from_env`).
* :class:`Config` is frozen and made of frozen sections -- ``node``,
  ``cluster``, ``raft`` (with ``raft.watch``), ``storage``, ``transport``,
  ``server`` -- so ``attrs.evolve`` works at every level. The common node
  settings may also be given flat: ``Config(node_id=1, data_dir=...,
  peer_address=..., client_address=..., initial_cluster=..., cluster_id=...)``;
  a flat keyword is applied on top of the section given alongside it.
* Sections accept anything; a :class:`Config` is always valid. Its
  constructor (and so ``attrs.evolve`` and every loader) runs
  :meth:`Config.validate`, which returns one plain sentence per bad field,
  naming the field by its dotted TOML path, and raises
  :class:`~dengine.errors.ConfigError` with those sentences if there are any.
* One schema drives everything: each setting is an attrs field whose metadata
  holds its kind, lower bound and meaning. The TOML reader, the environment
  reader, the type checks and ``to_dict`` all walk it, so a setting added here
  is at once loadable from a file and from ``DENGINE_<SECTION>__<KEY>``.
* Typos never pass silently: an unknown TOML section or key, or a
  ``DENGINE_`` variable that looks like a setting but names none, is a
  ConfigError naming it. A value that does not parse as its setting's type is
  a ConfigError naming the file or the variable.
"""

from __future__ import annotations

import difflib
import math
import os
import tomllib
from collections.abc import Iterator, Mapping
from typing import Any, Final

import attrs

from dengine.api import DEFAULT_MAX_KEY_SIZE, DEFAULT_MAX_VALUE_SIZE, ReadConsistency
from dengine.errors import ConfigError, InvalidArgument
from dengine.raft.core import RaftConfig

__all__ = [
    "DEFAULT_CLIENT_ADDRESS",
    "DEFAULT_CLUSTER_ID",
    "DEFAULT_DATA_DIR",
    "DEFAULT_PEER_ADDRESS",
    "ENV_PREFIX",
    "ClusterSettings",
    "Config",
    "NodeSettings",
    "RaftSettings",
    "ServerSettings",
    "StorageSettings",
    "TransportSettings",
    "WatchSettings",
    "parse_address",
    "parse_members",
]

#: Data directory used when none is given.
DEFAULT_DATA_DIR: Final = "./dengine-data"
#: Address of the client endpoint used when none is given.
DEFAULT_CLIENT_ADDRESS: Final = "127.0.0.1:9081"
#: Peer address used when none is given and ``cluster.initial`` has none for this node.
DEFAULT_PEER_ADDRESS: Final = "127.0.0.1:7001"
#: Cluster id used when none is given.
DEFAULT_CLUSTER_ID: Final = "dengine"
#: Prefix of every environment variable read by :meth:`Config.from_env`.
ENV_PREFIX: Final = "DENGINE_"

_KIB = 1024
_MIB = 1024 * 1024
# The largest integer TOML (and msgpack's int64) can carry.
_INT_MAX = 2**63 - 1
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
_META = "dengine.config"
# Settings that map node ids to addresses: TOML tables, yet leaves, not sections.
_MEMBER_MAPS = frozenset({"initial", "client_addresses"})


# --------------------------------------------------------------------------
# Addresses and member lists
# --------------------------------------------------------------------------


def _split_address(address: object) -> tuple[str, int] | str:
    """``(host, port)`` or a phrase saying what is wrong (for error sentences)."""
    if not isinstance(address, str):
        return f"it is {type(address).__name__}, not a string"
    text = address.strip()
    if not text:
        return "it is empty"
    if text != address:
        return "it has spaces around it"
    if text.startswith("["):  # [IPv6]:port
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            return "an IPv6 host must be written '[host]:port'"
        host, port_text = text[1:close], text[close + 2 :]
        if not host or any(c not in "0123456789abcdefABCDEF:." for c in host):
            return f"{host!r} is not an IPv6 address"
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            return "no port was found"
        if not host:
            return "no host was given"
        if ":" in host:
            return "an IPv6 host must be written '[host]:port'"
        if any(c.isspace() or c in "/@?#[]" for c in host):
            return f"{host!r} is not a valid host name"
    if not port_text.isascii() or not port_text.isdigit():
        return f"port {port_text!r} is not a number"
    port = int(port_text)
    if port > 65535:
        return f"port {port} is larger than 65535"
    return host, port


def parse_address(address: str) -> tuple[str, int]:
    """Split ``"host:port"`` (or ``"[v6 host]:port"``) into ``(host, port)``.

    The port must be 0..65535 (0 asks the OS for a free port when binding).
    Raises :class:`~dengine.errors.InvalidArgument` naming the problem.
    """
    result = _split_address(address)
    if isinstance(result, str):
        raise InvalidArgument(f"address {address!r} must be 'host:port': {result}")
    return result


def _is_wildcard(address: str) -> bool:
    result = _split_address(address)
    return isinstance(result, tuple) and result[0] in _WILDCARD_HOSTS


def parse_members(text: str) -> dict[int, str]:
    """Parse ``"1=127.0.0.1:7001,2=127.0.0.1:7002"`` into ``{1: ..., 2: ...}``.

    Whitespace around items is ignored and an empty string is an empty map.
    Raises :class:`~dengine.errors.InvalidArgument` naming the bad item.
    Addresses are checked later, by :meth:`Config.validate`.
    """
    members: dict[int, str] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        node_text, sep, address = item.partition("=")
        node_text, address = node_text.strip(), address.strip()
        if not sep or not address:
            raise InvalidArgument(f"member {item!r} must be written 'id=host:port'")
        if not (node_text.isascii() and node_text.isdigit()) or int(node_text) <= 0:
            raise InvalidArgument(f"member {item!r} must start with a positive integer node id")
        node_id = int(node_text)
        if node_id in members:
            raise InvalidArgument(f"node id {node_id} is listed twice")
        members[node_id] = address
    return members


# --------------------------------------------------------------------------
# The schema: one attrs field per setting
# --------------------------------------------------------------------------


@attrs.frozen
class _Meta:
    """What the loaders and validator know about one setting."""

    kind: str  # int float bool str path address members consistency section
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
}


def _setting(default: Any, kind: str, doc: str, *, minimum: int | None = None) -> Any:
    """An attrs field for one setting of ``kind`` with its meaning ``doc``."""
    meta = {_META: _Meta(kind=kind, doc=doc, minimum=minimum)}
    converter = _CONVERTERS.get(kind)
    if kind == "members":
        # A dict is not hashable; leave it out of __hash__ so configs still are.
        return attrs.field(factory=dict, converter=converter, metadata=meta, hash=False)
    if converter is None:
        return attrs.field(default=default, metadata=meta)
    return attrs.field(default=default, converter=converter, metadata=meta)


def _section(cls: type, doc: str) -> Any:
    return attrs.field(factory=cls, metadata={_META: _Meta(kind="section", doc=doc, section=cls)})


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
        _INT_MAX, "int", "Hard cap on active watchers (exact + prefix); registering beyond it fails.", minimum=1
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
        "Election timeout in ticks (randomised between this and twice this). Must exceed `heartbeat_ticks`.",
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
        10000, "int", "Entries applied between snapshots; the log before a snapshot is purged.", minimum=1
    )
    max_key_size: int = _setting(DEFAULT_MAX_KEY_SIZE, "int", "Largest key, in bytes.", minimum=1)
    max_value_size: int = _setting(DEFAULT_MAX_VALUE_SIZE, "int", "Largest value, in bytes.", minimum=1)
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
    watch: WatchSettings = _section(WatchSettings, "The watch dispatcher.")


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
    connect_timeout_ms: int = _setting(5000, "int", "Give up opening a connection after this long.", minimum=1)
    handshake_timeout_ms: int = _setting(
        5000, "int", "Close a connection whose handshake has not finished after this long.", minimum=1
    )


@attrs.frozen
class ServerSettings:
    """``[server]``: the client endpoint of a standalone server, and TLS."""

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


_KIND_WORDS = {
    "int": "an integer",
    "float": "a number",
    "ratio": "a number from 0 up to (not including) 1",
    "bool": "true or false",
    "str": "a string",
    "path": "a file path",
    "address": "a 'host:port' string",
    "consistency": "one of 'linearizable', 'lease', 'eventual'",
    "members": "a table of node id = 'host:port' or a string 'id=host:port,...'",
}


def _fields(cls: type) -> Iterator[tuple[attrs.Attribute[Any], _Meta]]:
    for field in attrs.fields(cls):
        meta = field.metadata.get(_META)
        if meta is not None:
            yield field, meta


def _leaves(cls: type, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], attrs.Attribute[Any], _Meta]]:
    """Every setting below ``cls`` as ``(path, field, meta)``, in declaration order."""
    for field, meta in _fields(cls):
        path = (*prefix, field.name)
        if meta.section is not None:
            yield from _leaves(meta.section, path)
        else:
            yield path, field, meta


def _env_name(path: tuple[str, ...]) -> str:
    return ENV_PREFIX + "__".join(part.upper() for part in path)


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path)


# --------------------------------------------------------------------------
# Reading values from TOML and from the environment
# --------------------------------------------------------------------------


def _from_toml_value(meta: _Meta, value: Any) -> Any:
    """The typed value of a TOML value, or raise ValueError (message: what was expected)."""
    kind = meta.kind
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind in ("float", "ratio"):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind in ("str", "path", "address"):
        if isinstance(value, str):
            return value
    elif kind == "consistency":
        if isinstance(value, str):
            try:
                return ReadConsistency.parse(value)
            except InvalidArgument:
                pass
    elif kind == "members":
        if isinstance(value, str):
            try:
                return parse_members(value)
            except InvalidArgument as exc:
                raise ValueError(f"{_KIND_WORDS[kind]} ({exc.message})") from None
        if isinstance(value, dict):
            out: dict[int, str] = {}
            for key, address in value.items():
                if not (key.isascii() and key.isdigit()) or int(key) <= 0:
                    raise ValueError(f"{_KIND_WORDS[kind]} (key {key!r} is not a positive node id)")
                if not isinstance(address, str):
                    raise ValueError(f"{_KIND_WORDS[kind]} (the address of node {key} is not a string)")
                out[int(key)] = address
            return out
    raise ValueError(_KIND_WORDS[kind])


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _from_env_value(meta: _Meta, text: str) -> Any:
    """The typed value of an environment string, or raise ValueError."""
    kind = meta.kind
    stripped = text.strip()
    if kind == "int":
        try:
            return int(stripped, 10)
        except ValueError:
            raise ValueError(_KIND_WORDS[kind]) from None
    if kind in ("float", "ratio"):
        try:
            return float(stripped)
        except ValueError:
            raise ValueError(_KIND_WORDS[kind]) from None
    if kind == "bool":
        if stripped.lower() in _TRUE:
            return True
        if stripped.lower() in _FALSE:
            return False
        raise ValueError("true or false (or 1/0, yes/no, on/off)")
    if kind == "path":
        return stripped or None  # empty unsets the file
    if kind == "address":
        return stripped
    if kind == "str":
        return text
    if kind == "consistency":
        return _from_toml_value(meta, stripped)
    if kind == "members":
        try:
            return parse_members(text)
        except InvalidArgument as exc:
            raise ValueError(f"'id=host:port,...' ({exc.message})") from None
    raise AssertionError(f"unknown setting kind {kind!r}")


def _values_from_mapping(
    cls: type, data: Mapping[str, Any], prefix: tuple[str, ...], where: str, problems: list[str]
) -> dict[str, Any]:
    """Typed nested values of ``data`` (a parsed TOML table) for section ``cls``.

    Unknown keys and badly typed values become sentences in ``problems``
    (naming ``where``) and are left out of the result.
    """
    known = {field.name: meta for field, meta in _fields(cls)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = (*prefix, key)
        meta = known.get(key)
        if meta is None:
            kind_word = "section" if isinstance(value, dict) else "key"
            hint = difflib.get_close_matches(key, list(known), n=1)
            suggested = _dotted((*prefix, hint[0])) if hint and prefix else f"[{hint[0]}]" if hint else ""
            suggestion = _replaced_hint(_dotted(path), f" (did you mean {suggested}?)" if hint else "")
            if prefix:
                problems.append(f"{where} has an unknown {kind_word} {_dotted(path)}{suggestion}.")
            elif kind_word == "section":
                problems.append(f"{where} has an unknown section [{key}]{suggestion}.")
            else:
                problems.append(f"{where} has an unknown key {key} outside any section{suggestion}.")
            continue
        if meta.section is not None:
            if not isinstance(value, dict):
                problems.append(f"{_dotted(path)} in {where} must be a table ([{_dotted(path)}]).")
                continue
            out[key] = _values_from_mapping(meta.section, value, path, where, problems)
            continue
        try:
            out[key] = _from_toml_value(meta, value)
        except ValueError as exc:
            problems.append(f"{_dotted(path)} in {where} must be {exc} (got {value!r}).")
    return out


# Settings that were removed, by dotted path: what to use instead.
_REPLACED = {
    "raft.lease_margin_ticks": "it was replaced by raft.max_clock_drift, from which the lease is derived",
}


def _replaced_hint(path: str, fallback: str) -> str:
    instead = _REPLACED.get(path)
    return f" ({instead})" if instead else fallback


def _env_values(env: Mapping[str, str], problems: list[str]) -> dict[str, Any]:
    """Typed nested values of the ``DENGINE_<SECTION>__<KEY>`` variables in ``env``.

    A ``DENGINE_`` variable *looks like a setting* when its name contains
    ``__`` or starts with ``DENGINE_<SECTION>_`` for a known section; such a
    variable that names no setting is a problem. Other ``DENGINE_`` variables
    (``DENGINE_LOG_LEVEL`` ...) are left to whoever reads them.
    """
    settings = {_env_name(path): (path, meta) for path, _field, meta in _leaves(Config)}
    sections = tuple(ENV_PREFIX + field.name.upper() + "_" for field, _m in _fields(Config))
    out: dict[str, Any] = {}
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX):
            continue
        found = settings.get(name.upper())
        if found is None:
            if "__" in name or name.upper().startswith(sections):
                hint = difflib.get_close_matches(name.upper(), list(settings), n=1, cutoff=0.7)
                suggestion = f" (did you mean {hint[0]}?)" if hint else ""
                dotted = name.upper()[len(ENV_PREFIX) :].lower().replace("__", ".")
                suggestion = _replaced_hint(dotted, suggestion)
                problems.append(f"environment variable {name} is not a dengine setting{suggestion}.")
            continue
        path, meta = found
        try:
            value = _from_env_value(meta, env[name])
        except ValueError as exc:
            problems.append(f"environment variable {name} ({_dotted(path)}) must be {exc} (got {env[name]!r}).")
            continue
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict) and key not in _MEMBER_MAPS:
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _build(cls: type, values: Mapping[str, Any]) -> Any:
    """Instantiate section ``cls`` (or Config) from nested typed ``values``."""
    kwargs: dict[str, Any] = {}
    for field, meta in _fields(cls):
        if field.name not in values:
            continue
        value = values[field.name]
        kwargs[field.name] = _build(meta.section, value) if meta.section is not None else value
    return cls(**kwargs)


def _values_of(obj: Any) -> dict[str, Any]:
    """Nested typed values of a section or Config (the inverse of _build)."""
    out: dict[str, Any] = {}
    for field, meta in _fields(type(obj)):
        value = getattr(obj, field.name)
        out[field.name] = _values_of(value) if meta.section is not None else value
    return out


# --------------------------------------------------------------------------
# TOML output
# --------------------------------------------------------------------------


def _toml_string(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_key(key: str) -> str:
    bare = key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key)
    return key if bare else _toml_string(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _toml_tables(data: Mapping[str, Any], prefix: tuple[str, ...], lines: list[str]) -> None:
    scalars = {k: v for k, v in data.items() if not (isinstance(v, dict) and k not in _MEMBER_MAPS)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict) and k not in _MEMBER_MAPS}
    if prefix:
        if lines:
            lines.append("")
        lines.append(f"[{_dotted(prefix)}]")
    for key, value in scalars.items():
        lines.append(f"{key} = {_toml_value(value)}")
    for key, value in tables.items():
        _toml_tables(value, (*prefix, key), lines)


# --------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------


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

    node: NodeSettings = _section(NodeSettings, "Who this node is and where it listens.")
    cluster: ClusterSettings = _section(ClusterSettings, "Which cluster this node belongs to.")
    raft: RaftSettings = _section(RaftSettings, "Consensus timings, limits and batching.")
    storage: StorageSettings = _section(StorageSettings, "The write-ahead log.")
    transport: TransportSettings = _section(TransportSettings, "Framing and connection set-up.")
    server: ServerSettings = _section(ServerSettings, "The client endpoint and TLS.")

    def __init__(
        self,
        *,
        node: NodeSettings | None = None,
        cluster: ClusterSettings | None = None,
        raft: RaftSettings | None = None,
        storage: StorageSettings | None = None,
        transport: TransportSettings | None = None,
        server: ServerSettings | None = None,
        node_id: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        peer_address: str | None = None,
        client_address: str | None = None,
        initial_cluster: Mapping[int, str] | str | None = None,
        cluster_id: str | None = None,
    ) -> None:
        node = node if node is not None else NodeSettings()
        cluster = cluster if cluster is not None else ClusterSettings()
        flat_node = {
            "id": node_id,
            "data_dir": data_dir,
            "peer_address": peer_address,
            "client_address": client_address,
        }
        flat_cluster = {"id": cluster_id, "initial": initial_cluster}
        node_changes = {k: v for k, v in flat_node.items() if v is not None}
        cluster_changes = {k: v for k, v in flat_cluster.items() if v is not None}
        if node_changes and isinstance(node, NodeSettings):
            node = attrs.evolve(node, **node_changes)
        if cluster_changes and isinstance(cluster, ClusterSettings):
            cluster = attrs.evolve(cluster, **cluster_changes)
        self.__attrs_init__(  # type: ignore[attr-defined]
            node=node,
            cluster=cluster,
            raft=raft if raft is not None else RaftSettings(),
            storage=storage if storage is not None else StorageSettings(),
            transport=transport if transport is not None else TransportSettings(),
            server=server if server is not None else ServerSettings(),
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
        values = _values_from_mapping(cls, data, (), source, problems)
        if problems:
            raise ConfigError(problems)
        return _build(cls, values)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
        """Load a TOML file, then apply ``DENGINE_*`` overrides from ``env``
        (``os.environ`` when None; pass ``{}`` for none).

        Raises ConfigError naming the file when it cannot be read or is not
        TOML, naming keys and variables that are unknown or do not parse, and
        with :meth:`validate`'s sentences when the result is invalid.
        """
        where = os.fspath(path)
        try:
            with open(where, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {where} does not exist.") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {where} is not valid TOML: {exc}.") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {where} cannot be read: {exc}.") from None
        problems: list[str] = []
        values = _values_from_mapping(cls, data, (), where, problems)
        overrides = _env_values(os.environ if env is None else env, problems)
        if problems:
            raise ConfigError(problems)
        return _build(cls, _merge(values, overrides))

    @classmethod
    def from_env(cls, base: Config | None = None, *, env: Mapping[str, str] | None = None) -> Config:
        """``base`` (defaults when None) with ``DENGINE_*`` overrides from
        ``env`` (``os.environ`` when None) applied on top."""
        problems: list[str] = []
        overrides = _env_values(os.environ if env is None else env, problems)
        if problems:
            raise ConfigError(problems)
        start = _values_of(base) if base is not None else {}
        return _build(cls, _merge(start, overrides))

    # -- output ------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Nested plain data in the TOML layout: enums as their names, unset
        optional settings left out, ``cluster.initial`` keyed by strings.
        ``Config.from_dict(c.to_dict()) == c``."""

        def plain(values: Mapping[str, Any]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for key, value in values.items():
                if value is None:
                    continue
                if isinstance(value, ReadConsistency):
                    value = value.value
                elif isinstance(value, dict) and key in _MEMBER_MAPS:
                    value = {str(k): v for k, v in value.items()}
                elif isinstance(value, dict):
                    value = plain(value)
                out[key] = value
            return out

        return plain(_values_of(self))

    def to_toml(self) -> str:
        """This configuration as TOML text that :meth:`from_toml` reads back."""
        lines: list[str] = []
        _toml_tables(self.to_dict(), (), lines)
        return "\n".join(lines) + "\n"

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
    def client_address(self) -> str:
        return self.node.client_address

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

    def initial_voters(self) -> frozenset[int]:
        """Voters to bootstrap a brand-new cluster with (empty when joining)."""
        if self.cluster.join:
            return frozenset()
        return frozenset(self.cluster.initial) or frozenset({self.node.id})

    def raft_config(self) -> RaftConfig:
        """The :class:`~dengine.raft.core.RaftConfig` of the pure core."""
        r = self.raft
        return RaftConfig(
            id=self.node.id,
            initial_voters=self.initial_voters(),
            election_tick=r.election_ticks,
            heartbeat_tick=r.heartbeat_ticks,
            max_clock_drift=r.max_clock_drift,
            max_uncommitted_bytes=r.max_uncommitted_bytes,
            max_committed_bytes_per_ready=r.max_apply_bytes,
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
        problems: list[str] = []
        good: dict[str, Any] = {}  # dotted path -> value, for settings that passed their own check
        _check_section(self, Config, (), problems, good)
        problems.extend(_check_together(good))
        return problems


def _check_section(
    obj: Any, cls: type, prefix: tuple[str, ...], problems: list[str], good: dict[str, Any]
) -> None:
    """Check every setting of ``obj`` (a ``cls``) on its own, recursing into
    sections; record sentences in ``problems`` and good values in ``good``."""
    for field, meta in _fields(cls):
        path = (*prefix, field.name)
        value = getattr(obj, field.name)
        if meta.section is not None:
            if isinstance(value, meta.section):
                _check_section(value, meta.section, path, problems, good)
            else:
                problems.append(f"{_dotted(path)} must be a {meta.section.__name__} (got {value!r}).")
            continue
        problem = _check_leaf(_dotted(path), meta, value)
        if problem is None:
            good[_dotted(path)] = value
        else:
            problems.append(problem)


def _check_leaf(name: str, meta: _Meta, value: Any) -> str | None:
    """The sentence for a setting that is wrong on its own, or None."""
    kind = meta.kind
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{name} must be an integer (got {value!r})."
        if meta.minimum == 1 and value < 1:
            return f"{name} must be a positive integer (got {value!r})."
        if meta.minimum is not None and value < meta.minimum:
            return f"{name} must be at least {meta.minimum} (got {value!r})."
        if value > _INT_MAX:
            return f"{name} must be at most {_INT_MAX} (got {value!r})."
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, float):
            return f"{name} must be a number (got {value!r})."
        if not math.isfinite(value) or value <= 0:
            return f"{name} must be a finite number greater than 0 (got {value!r})."
    elif kind == "ratio":
        if isinstance(value, bool) or not isinstance(value, float):
            return f"{name} must be a number (got {value!r})."
        if not (math.isfinite(value) and 0 <= value < 1):
            return f"{name} must be a number from 0 up to (not including) 1 (got {value!r})."
    elif kind == "bool":
        if not isinstance(value, bool):
            return f"{name} must be true or false (got {value!r})."
    elif kind == "str":
        if not isinstance(value, str):
            return f"{name} must be a string (got {value!r})."
        if not value.strip():
            return f"{name} must not be empty."
    elif kind == "path":
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            return f"{name} must be a file path (got {value!r})."
        if not os.path.isfile(value):
            return f"{name} names a file that does not exist ({value!r})."
    elif kind == "address":
        if value is None and name == "node.peer_address":
            return None
        result = _split_address(value)
        if isinstance(result, str):
            return f"{name} must be 'host:port': {result} (got {value!r})."
    elif kind == "consistency":
        if not isinstance(value, ReadConsistency):
            allowed = ", ".join(repr(m.value) for m in ReadConsistency)
            return f"{name} must be one of {allowed} (got {value!r})."
    elif kind == "members":
        return _check_members(name, value)
    return None


def _check_members(name: str, value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"{name} must map node ids to 'host:port' addresses (got {value!r})."
    bad: list[str] = []
    seen: dict[str, int] = {}
    for node_id, address in value.items():
        if isinstance(node_id, bool) or not isinstance(node_id, int) or node_id <= 0:
            bad.append(f"{node_id!r} is not a positive integer node id")
            continue
        result = _split_address(address)
        if isinstance(result, str):
            bad.append(f"node {node_id}'s address {address!r} is not 'host:port' ({result})")
        elif result[1] == 0 or result[0] in _WILDCARD_HOSTS:
            bad.append(f"node {node_id} must have an address peers can dial, not {address!r}")
        elif address in seen:
            bad.append(f"nodes {seen[address]} and {node_id} share the address {address!r}")
        else:
            seen[address] = node_id
    if bad:
        return f"{name} is wrong: " + "; ".join(bad) + "."
    return None


def _check_together(good: Mapping[str, Any]) -> list[str]:
    """Sentences for settings that are fine alone but wrong together. Only
    settings that passed their own check (those in ``good``) are compared."""
    problems: list[str] = []

    def have(*names: str) -> bool:
        return all(n in good for n in names)

    g = good
    if have("node.id", "cluster.initial", "cluster.join"):
        initial = g["cluster.initial"]
        if g["cluster.join"] and not initial:
            problems.append("cluster.join needs cluster.initial to list at least one running member to contact.")
        elif initial and not g["cluster.join"] and g["node.id"] not in initial:
            members = ", ".join(str(n) for n in initial)
            problems.append(
                f"node.id {g['node.id']} is not in cluster.initial (members {members}); "
                "add it, or set cluster.join = true to join a running cluster."
            )
    if have("node.id", "node.peer_address", "cluster.initial"):
        mine = g["node.peer_address"]
        listed = g["cluster.initial"].get(g["node.id"])
        if mine is not None and listed is not None and mine != listed and not _is_wildcard(mine):
            problems.append(
                f"node.peer_address {mine!r} differs from cluster.initial[{g['node.id']}] {listed!r}; "
                "leave node.peer_address unset, make them equal, or listen on a wildcard host such as 0.0.0.0."
            )
    if have("node.id", "node.peer_address", "cluster.initial", "node.client_address"):
        peer = g["node.peer_address"] or g["cluster.initial"].get(g["node.id"], DEFAULT_PEER_ADDRESS)
        client = g["node.client_address"]
        if peer == client and _split_address(client)[1] != 0:  # type: ignore[index]
            problems.append(f"node.client_address and the peer address are both {client!r}; they must differ.")
    if have("raft.election_ticks", "raft.heartbeat_ticks"):
        if g["raft.election_ticks"] <= g["raft.heartbeat_ticks"]:
            problems.append(
                "raft.election_ticks must be greater than raft.heartbeat_ticks "
                f"(got {g['raft.election_ticks']} and {g['raft.heartbeat_ticks']})."
            )
    if have("raft.max_clock_drift", "raft.election_ticks", "raft.heartbeat_ticks", "raft.check_quorum"):
        lease = RaftConfig(
            id=1, election_tick=g["raft.election_ticks"], max_clock_drift=g["raft.max_clock_drift"]
        ).lease_ticks()
        if g["raft.check_quorum"] and g["raft.election_ticks"] > g["raft.heartbeat_ticks"] and lease < 1:
            problems.append(
                f"raft.max_clock_drift {g['raft.max_clock_drift']:g} leaves no safe leader lease with "
                f"raft.election_ticks {g['raft.election_ticks']}: raise raft.election_ticks or lower "
                "raft.max_clock_drift."
            )
    if have("raft.default_read_consistency", "raft.check_quorum"):
        if g["raft.default_read_consistency"] is ReadConsistency.LEASE and not g["raft.check_quorum"]:
            problems.append(
                "raft.default_read_consistency 'lease' needs raft.check_quorum = true "
                "(without it a deposed leader could still think it holds the lease)."
            )
    if have("raft.max_key_size", "raft.max_value_size", "transport.max_frame_size"):
        entry = g["raft.max_key_size"] + g["raft.max_value_size"]
        if entry >= g["transport.max_frame_size"]:
            problems.append(
                "raft.max_key_size + raft.max_value_size must be smaller than transport.max_frame_size "
                f"(got {entry} and {g['transport.max_frame_size']})."
            )
    if have("raft.max_append_bytes", "transport.max_frame_size"):
        if g["raft.max_append_bytes"] >= g["transport.max_frame_size"]:
            problems.append(
                "raft.max_append_bytes must be smaller than transport.max_frame_size "
                f"(got {g['raft.max_append_bytes']} and {g['transport.max_frame_size']})."
            )
    if have("server.tls_cert", "server.tls_key"):
        cert, key = g["server.tls_cert"], g["server.tls_key"]
        if (cert is None) != (key is None):
            given, missing = ("server.tls_cert", "server.tls_key")
            if cert is None:
                given, missing = missing, given
            problems.append(
                f"server.tls_cert and server.tls_key must be set together ({given} is set, {missing} is not)."
            )
    if have("server.tls_ca", "server.tls_cert"):
        if g["server.tls_ca"] is not None and g["server.tls_cert"] is None:
            problems.append("server.tls_ca is set but server.tls_cert is not; client verification needs TLS.")
    if have("server.peer_tls", "server.tls_cert", "server.tls_key", "server.tls_ca") and g["server.peer_tls"]:
        missing_names = [n for n in ("server.tls_cert", "server.tls_key", "server.tls_ca") if g[n] is None]
        if missing_names:
            problems.append(f"server.peer_tls needs {', '.join(missing_names)} to be set.")
    return problems

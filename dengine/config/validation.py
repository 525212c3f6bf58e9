"""Validation: one plain sentence per bad field, naming it by its TOML path.

Rules of this module (etcd's ``Config.validate()``, STYLE.md 7):

* :func:`validate` never raises; it returns the sentences, empty when the
  configuration is valid. :class:`~dengine.config.Config` raises
  :class:`~dengine.errors.ConfigError` with them.
* First every setting is checked on its own against its kind in the schema
  (``_check_leaf``); then settings that are fine alone but wrong together
  (``_check_together``), comparing only settings that passed their own
  check, so one mistake is reported once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from dengine.api import ReadConsistency
from dengine.config.addresses import WILDCARD_HOSTS, is_wildcard, split_address
from dengine.config.settings import DEFAULT_PEER_ADDRESS, INT_MAX, OFF, Meta, dotted_path, schema_fields
from dengine.raft.core import RaftConfig

__all__ = ["validate"]


def validate(config: Any) -> list[str]:
    """One plain sentence per bad field of ``config`` (a Config), naming it by
    its TOML path; empty when the configuration is valid."""
    problems: list[str] = []
    good: dict[str, Any] = {}  # dotted path -> value, for settings that passed their own check
    _check_section(config, type(config), (), problems, good)
    problems.extend(_check_together(good))
    return problems


def _check_section(
    obj: Any, cls: type, prefix: tuple[str, ...], problems: list[str], good: dict[str, Any]
) -> None:
    """Check every setting of ``obj`` (a ``cls``) on its own, recursing into
    sections; record sentences in ``problems`` and good values in ``good``."""
    for field, meta in schema_fields(cls):
        path = (*prefix, field.name)
        value = getattr(obj, field.name)
        if meta.section is not None:
            if isinstance(value, meta.section):
                _check_section(value, meta.section, path, problems, good)
            else:
                problems.append(f"{dotted_path(path)} must be a {meta.section.__name__} (got {value!r}).")
            continue
        problem = _check_leaf(dotted_path(path), meta, value)
        if problem is None:
            good[dotted_path(path)] = value
        else:
            problems.append(problem)


def _check_leaf(name: str, meta: Meta, value: Any) -> str | None:
    """The sentence for a setting that is wrong on its own, or None."""
    kind = meta.kind
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{name} must be an integer (got {value!r})."
        if meta.minimum == 1 and value < 1:
            return f"{name} must be a positive integer (got {value!r})."
        if meta.minimum is not None and value < meta.minimum:
            return f"{name} must be at least {meta.minimum} (got {value!r})."
        if value > INT_MAX:
            return f"{name} must be at most {INT_MAX} (got {value!r})."
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
        if value is None and name in ("node.peer_address", "node.advertise_peer_address"):
            return None
        result = split_address(value)
        if isinstance(result, str):
            return f"{name} must be 'host:port': {result} (got {value!r})."
    elif kind == "listen":
        if value == OFF:
            return None
        result = split_address(value)
        if isinstance(result, str):
            return f"{name} must be 'host:port' or '{OFF}': {result} (got {value!r})."
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
        result = split_address(address)
        if isinstance(result, str):
            bad.append(f"node {node_id}'s address {address!r} is not 'host:port' ({result})")
        elif result[1] == 0 or result[0] in WILDCARD_HOSTS:
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
    if have("node.id", "node.peer_address", "node.advertise_peer_address", "cluster.initial"):
        mine = g["node.peer_address"]
        advertised = g["node.advertise_peer_address"]
        listed = g["cluster.initial"].get(g["node.id"])
        if advertised is not None and (is_wildcard(advertised) or split_address(advertised)[1] == 0):
            problems.append(
                f"node.advertise_peer_address {advertised!r} is not an address others can dial: "
                "give a host and a port (no wildcard host, no port 0)."
            )
        elif advertised is not None and listed is not None and advertised != listed:
            problems.append(
                f"node.advertise_peer_address {advertised!r} differs from cluster.initial[{g['node.id']}] "
                f"{listed!r}; the other members dial what cluster.initial lists: make them equal."
            )
        elif (advertised is None and mine is not None and listed is not None and mine != listed
              and not is_wildcard(mine)):
            problems.append(
                f"node.peer_address {mine!r} differs from cluster.initial[{g['node.id']}] {listed!r}; "
                "leave node.peer_address unset, make them equal, listen on a wildcard host such as 0.0.0.0, "
                "or set node.advertise_peer_address to the listed address if the others reach this node there."
            )
    if have("node.id", "node.peer_address", "cluster.initial", "node.client_address"):
        peer = g["node.peer_address"] or g["cluster.initial"].get(g["node.id"], DEFAULT_PEER_ADDRESS)
        client = g["node.client_address"]
        if peer == client and split_address(client)[1] != 0:
            problems.append(f"node.client_address and the peer address are both {client!r}; they must differ.")
        taken = [(client, "node.client_address"), (peer, "the peer address")]
        for name in ("server.metrics_address", "server.etcd_address", "server.etcd_gateway_address"):
            if not have(name):
                continue
            address = g[name]
            if address == OFF or split_address(address)[1] == 0:
                continue
            for other, what in taken:
                if address == other:
                    problems.append(f"{name} and {what} are both {address!r}; they must differ "
                                    f"(or set {name} = '{OFF}').")
            taken.append((address, name))
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

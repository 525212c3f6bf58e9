"""Reading settings: TOML files, nested plain data, ``DENGINE_*`` variables.

Rules of this module:

* Everything walks the schema of dengine.config.settings; nothing here
  names a setting except ``_REPLACED`` (settings that were removed).
* Typos never pass silently: an unknown TOML section or key, or a
  ``DENGINE_`` variable that looks like a setting but names none, is a
  sentence naming it (with a "did you mean" when a known name is close, or
  what replaced a removed setting). A value that does not parse as its
  setting's type is a sentence naming the file or the variable.
* Loaders collect sentences in a ``problems`` list; the caller raises one
  :class:`~dengine.errors.ConfigError` holding all of them. Values are
  checked on their own and together only when the Config is built.
* Files and the environment are read only when asked to.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from typing import Any, TypeVar

from dengine.api import ReadConsistency
from dengine.config.addresses import parse_members
from dengine.config.settings import (
    ENV_PREFIX,
    KIND_WORDS,
    MEMBER_MAPS,
    Meta,
    dotted_path,
    env_name,
    schema_fields,
    schema_leaves,
)
from dengine.errors import ConfigError, InvalidArgument

__all__ = ["build", "env_values", "merge", "read_toml_file", "values_from_mapping", "values_of"]


def read_toml_file(where: str) -> dict[str, Any]:
    """The parsed TOML file at ``where``; ConfigError naming the file when it
    does not exist, cannot be read or is not TOML."""
    try:
        with open(where, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {where} does not exist.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {where} is not valid TOML: {exc}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {where} cannot be read: {exc}.") from None


def _from_toml_value(meta: Meta, value: Any) -> Any:
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
    elif kind in ("str", "path", "address", "listen"):
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
                raise ValueError(f"{KIND_WORDS[kind]} ({exc.message})") from None
        if isinstance(value, dict):
            out: dict[int, str] = {}
            for key, address in value.items():
                if isinstance(key, int) and not isinstance(key, bool) and key > 0:
                    key = str(key)  # plain Python data may use int ids
                if not (isinstance(key, str) and key.isascii() and key.isdigit()) or int(key) <= 0:
                    raise ValueError(f"{KIND_WORDS[kind]} (key {key!r} is not a positive node id)")
                if not isinstance(address, str):
                    raise ValueError(f"{KIND_WORDS[kind]} (the address of node {key} is not a string)")
                out[int(key)] = address
            return out
    raise ValueError(KIND_WORDS[kind])


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _from_env_value(meta: Meta, text: str) -> Any:
    """The typed value of an environment string, or raise ValueError."""
    kind = meta.kind
    stripped = text.strip()
    if kind == "int":
        try:
            return int(stripped, 10)
        except ValueError:
            raise ValueError(KIND_WORDS[kind]) from None
    if kind in ("float", "ratio"):
        try:
            return float(stripped)
        except ValueError:
            raise ValueError(KIND_WORDS[kind]) from None
    if kind == "bool":
        if stripped.lower() in _TRUE:
            return True
        if stripped.lower() in _FALSE:
            return False
        raise ValueError("true or false (or 1/0, yes/no, on/off)")
    if kind == "path":
        return stripped or None  # empty unsets the file
    if kind in ("address", "listen"):
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


def values_from_mapping(
    cls: type, data: Mapping[str, Any], prefix: tuple[str, ...], where: str, problems: list[str]
) -> dict[str, Any]:
    """Typed nested values of ``data`` (a parsed TOML table) for section ``cls``.

    Unknown keys and badly typed values become sentences in ``problems``
    (naming ``where``) and are left out of the result.
    """
    known = {field.name: meta for field, meta in schema_fields(cls)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = (*prefix, key)
        meta = known.get(key)
        if meta is None:
            kind_word = "section" if isinstance(value, dict) else "key"
            hint = difflib.get_close_matches(key, list(known), n=1)
            suggested = dotted_path((*prefix, hint[0])) if hint and prefix else f"[{hint[0]}]" if hint else ""
            suggestion = _replaced_hint(dotted_path(path), f" (did you mean {suggested}?)" if hint else "")
            if prefix:
                problems.append(f"{where} has an unknown {kind_word} {dotted_path(path)}{suggestion}.")
            elif kind_word == "section":
                problems.append(f"{where} has an unknown section [{key}]{suggestion}.")
            else:
                problems.append(f"{where} has an unknown key {key} outside any section{suggestion}.")
            continue
        if meta.section is not None:
            if not isinstance(value, dict):
                problems.append(f"{dotted_path(path)} in {where} must be a table ([{dotted_path(path)}]).")
                continue
            out[key] = values_from_mapping(meta.section, value, path, where, problems)
            continue
        try:
            out[key] = _from_toml_value(meta, value)
        except ValueError as exc:
            problems.append(f"{dotted_path(path)} in {where} must be {exc} (got {value!r}).")
    return out


# Settings that were removed, by dotted path: what to use instead.
_REPLACED = {
    "raft.lease_margin_ticks": "it was replaced by raft.max_clock_drift, from which the lease is derived",
}


def _replaced_hint(path: str, fallback: str) -> str:
    instead = _REPLACED.get(path)
    return f" ({instead})" if instead else fallback


def env_values(cls: type, env: Mapping[str, str], problems: list[str]) -> dict[str, Any]:
    """Typed nested values of the ``DENGINE_<SECTION>__<KEY>`` variables in ``env``
    for the settings of ``cls`` (the Config class).

    A ``DENGINE_`` variable *looks like a setting* when its name contains
    ``__`` or starts with ``DENGINE_<SECTION>_`` for a known section; such a
    variable that names no setting is a problem. Other ``DENGINE_`` variables
    (``DENGINE_LOG_LEVEL`` ...) are left to whoever reads them.
    """
    settings = {env_name(path): (path, meta) for path, _field, meta in schema_leaves(cls)}
    sections = tuple(ENV_PREFIX + field.name.upper() + "_" for field, _m in schema_fields(cls))
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
            problems.append(f"environment variable {name} ({dotted_path(path)}) must be {exc} (got {env[name]!r}).")
            continue
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict) and key not in MEMBER_MAPS:
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


_T = TypeVar("_T")


def build(cls: type[_T], values: Mapping[str, Any]) -> _T:
    """Instantiate section ``cls`` (or Config) from nested typed ``values``."""
    kwargs: dict[str, Any] = {}
    for field, meta in schema_fields(cls):
        if field.name not in values:
            continue
        value = values[field.name]
        kwargs[field.name] = build(meta.section, value) if meta.section is not None else value
    return cls(**kwargs)


def values_of(obj: Any) -> dict[str, Any]:
    """Nested typed values of a section or Config (the inverse of build)."""
    out: dict[str, Any] = {}
    for field, meta in schema_fields(type(obj)):
        value = getattr(obj, field.name)
        out[field.name] = values_of(value) if meta.section is not None else value
    return out


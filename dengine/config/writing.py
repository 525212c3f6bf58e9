"""Writing settings: nested plain data in the TOML layout, and TOML text.

Rules of this module:

* :func:`to_dict` gives what ``tomllib`` would return for the same file:
  enums as their names, unset optional settings left out, member maps
  (``cluster.initial``, ``cluster.client_addresses``) keyed by strings.
* :func:`to_toml` writes that with tomli-w (no hand-written TOML). Member
  maps come out as sub-tables (``[cluster.initial]``), which the reader
  takes as it takes an inline table or the ``"id=host:port,..."`` string.
* Both are exact inverses of the readers: ``Config.from_dict(to_dict(c))``
  and ``Config.from_toml`` of ``to_toml(c)`` give back ``c``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tomli_w

from dengine.api import ReadConsistency
from dengine.config.loading import values_of
from dengine.config.settings import MEMBER_MAPS

__all__ = ["to_dict", "to_toml"]


def to_dict(config: Any) -> dict[str, Any]:
    """Nested plain data of ``config`` (a Config or a section) in the TOML layout."""
    return _plain(values_of(config))


def to_toml(config: Any) -> str:
    """``config`` as TOML text that ``Config.from_toml`` reads back unchanged."""
    return tomli_w.dumps(to_dict(config))


def _plain(values: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, ReadConsistency):
            value = value.value
        elif isinstance(value, dict) and key in MEMBER_MAPS:
            value = {str(k): v for k, v in value.items()}
        elif isinstance(value, dict):
            value = _plain(value)
        out[key] = value
    return out

"""Node configuration: attrs classes, a TOML file, ``DENGINE_*`` overrides.

Rules of this package:

* Layer 3 (ARCHITECTURE.md): it imports only the standard library, attrs,
  tomli-w, dengine.errors, dengine.api and dengine.raft. It reads files and
  the environment only when asked to (:meth:`Config.from_toml`,
  :meth:`Config.from_env`).
* A :class:`Config` that exists is valid: its constructor (and so
  ``attrs.evolve`` and every loader) returns only if
  :meth:`Config.validate` found nothing, else it raises
  :class:`~dengine.errors.ConfigError` holding one plain sentence per bad
  field, naming the field by its dotted TOML path.
* One schema drives everything: each setting is an attrs field whose
  metadata holds its kind, lower bound and meaning; reading, writing,
  validating and the docs test all walk it.
* Typos never pass silently: an unknown TOML section or key, or a
  ``DENGINE_`` variable that looks like a setting but names none, is a
  ConfigError naming it.

The modules, in reading order:

* ``addresses`` -- the one ``host:port`` grammar (also used by the
  transports, the server and the client) and ``id=host:port`` member lists;
* ``settings`` -- the sections (``NodeSettings`` ... ``ServerSettings``), one
  field per setting, and the schema helpers;
* ``config`` -- :class:`Config`: constructors, flat views, runtime helpers;
* ``loading`` -- TOML files, plain data and ``DENGINE_<SECTION>__<KEY>``;
* ``validation`` -- one sentence per bad field, alone and together;
* ``writing`` -- ``to_dict`` and ``to_toml`` (with tomli-w).

Import the names below from ``dengine.config``; the modules are how the
package is arranged, not separate APIs.
"""

from __future__ import annotations

from dengine.config.addresses import format_address, parse_address, parse_members
from dengine.config.config import Config
from dengine.config.settings import (
    DEFAULT_CLIENT_ADDRESS,
    DEFAULT_CLUSTER_ID,
    DEFAULT_DATA_DIR,
    DEFAULT_METRICS_ADDRESS,
    DEFAULT_PEER_ADDRESS,
    ENV_PREFIX,
    ClusterSettings,
    MetricsSettings,
    NodeSettings,
    RaftSettings,
    ServerSettings,
    StorageSettings,
    TransportSettings,
    WatchSettings,
)

__all__ = [
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
]

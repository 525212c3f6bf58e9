"""dengine.client: talk to dengine servers over the client protocol.

Two clients over one sans-IO protocol core (:mod:`dengine.client._core`):
:func:`open_client` for trio programs and :func:`connect` (plain blocking
sockets, no trio) for everything else. Never imports the engine
(tests/unit/test_layers.py). Names are imported on first use, so
``from dengine.client import connect`` does not import trio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dengine.client.blocking import BlockingClient, BlockingWatch, connect
    from dengine.client.client import Client, LeaderWatch, RemoteWatch, open_client

__all__ = ["BlockingClient", "BlockingWatch", "Client", "LeaderWatch", "RemoteWatch", "connect", "open_client"]

_HOME = {
    "BlockingClient": "dengine.client.blocking",
    "BlockingWatch": "dengine.client.blocking",
    "connect": "dengine.client.blocking",
    "Client": "dengine.client.client",
    "LeaderWatch": "dengine.client.client",
    "RemoteWatch": "dengine.client.client",
    "open_client": "dengine.client.client",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'dengine.client' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

"""dengine: an embeddable Raft consensus key-value engine for trio.

The public API is re-exported here. The errors are imported at once (they
are plain classes); everything else on first use (PEP 562), so that
``import dengine`` -- and ``dengine.connect`` or a ``dengine get`` -- does
not import trio, the engine or the server unless they are used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dengine.errors import (
    AddressInUse,
    ClusterError,
    ConfigError,
    DataDirLocked,
    DataDirMissing,
    DengineError,
    EngineStopped,
    ErrorCode,
    FrameTooLarge,
    InvalidArgument,
    LeaderChanged,
    LeaseNotFound,
    MalformedMessage,
    MemberRemoved,
    MembershipChangeInProgress,
    MembershipChangeRefused,
    NotLeader,
    ProposalDropped,
    ProtocolError,
    ResourceExhausted,
    SessionLost,
    StorageCorrupted,
    StorageError,
    StorageFailed,
    StorageFull,
    StoragePermissionDenied,
    Timeout,
    Unavailable,
    UnknownOperation,
    UsageError,
    WrongCluster,
    WrongProtocolVersion,
)

if TYPE_CHECKING:
    from dengine.api import (
        Compare,
        KeyValue,
        LeaderInfo,
        Lease,
        LeaseStatus,
        Op,
        TxnResult,
        Member,
        MembershipChange,
        ReadConsistency,
        ScanResult,
        Status,
        WatchEvent,
        WatchEventType,
    )
    from dengine.client import BlockingClient, BlockingWatch, Client, RemoteWatch, connect, open_client
    from dengine.config import Config
    from dengine.embedded import EmbeddedClient, Engine, open_engine, restore_snapshot, run_engine
    from dengine.server import Server, open_server, serve
    from dengine.watch import Watch, WatchStatistics

from dengine._version import __version__

# name -> the module it lives in, imported on first use.
_LAZY: dict[str, str] = {
    **dict.fromkeys(
        ["Compare", "KeyValue", "LeaderInfo", "Lease", "LeaseStatus", "Op", "TxnResult", "Member", "MembershipChange", "ReadConsistency", "ScanResult", "Status", "WatchEvent",
         "WatchEventType"],
        "dengine.api",
    ),
    "Config": "dengine.config",
    **dict.fromkeys(["EmbeddedClient", "Engine", "open_engine", "restore_snapshot", "run_engine"], "dengine.embedded"),
    **dict.fromkeys(["Watch", "WatchStatistics"], "dengine.watch"),
    **dict.fromkeys(["Client", "RemoteWatch", "open_client"], "dengine.client.client"),
    **dict.fromkeys(["BlockingClient", "BlockingWatch", "connect"], "dengine.client.blocking"),
    **dict.fromkeys(["Server", "open_server", "serve"], "dengine.server"),
}

__all__ = [
    "AddressInUse",
    "BlockingClient",
    "BlockingWatch",
    "Client",
    "RemoteWatch",
    "Server",
    "connect",
    "open_client",
    "open_server",
    "serve",
    "Config",
    "EmbeddedClient",
    "Engine",
    "Compare",
    "KeyValue",
    "LeaderInfo",
    "Lease",
    "LeaseStatus",
    "Member",
    "Op",
    "TxnResult",
    "MembershipChange",
    "ReadConsistency",
    "ScanResult",
    "Status",
    "Watch",
    "WatchEvent",
    "WatchEventType",
    "WatchStatistics",
    "open_engine",
    "restore_snapshot",
    "run_engine",
    # errors (docs/errors.md)
    "ClusterError",
    "ConfigError",
    "DataDirLocked",
    "DataDirMissing",
    "DengineError",
    "EngineStopped",
    "ErrorCode",
    "FrameTooLarge",
    "InvalidArgument",
    "LeaderChanged",
    "LeaseNotFound",
    "MalformedMessage",
    "MemberRemoved",
    "MembershipChangeInProgress",
    "MembershipChangeRefused",
    "NotLeader",
    "ProposalDropped",
    "ProtocolError",
    "ResourceExhausted",
    "SessionLost",
    "StorageCorrupted",
    "StorageError",
    "StorageFailed",
    "StorageFull",
    "StoragePermissionDenied",
    "Timeout",
    "Unavailable",
    "UnknownOperation",
    "UsageError",
    "WrongCluster",
    "WrongProtocolVersion",
    "__version__",
]


def __getattr__(name: str) -> Any:
    home = _LAZY.get(name)
    if home is not None:
        value = getattr(importlib.import_module(home), name)
    elif not name.startswith("__"):
        # A submodule used as an attribute (``dengine.config.Config`` after
        # a bare ``import dengine``), as when everything was imported eagerly.
        try:
            value = importlib.import_module(f"dengine.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"dengine.{name}":
                raise
            raise AttributeError(f"module 'dengine' has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module 'dengine' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

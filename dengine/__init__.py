"""dengine: an embeddable Raft consensus key-value engine for trio."""

from dengine.api import (
    KeyValue,
    LeaderInfo,
    Member,
    ReadConsistency,
    ScanResult,
    Status,
    WatchEvent,
    WatchEventType,
)
from dengine.config import Config
from dengine.embedded import EmbeddedClient, Engine, open_engine, run_engine
from dengine.watch import Watch, WatchStatistics
from dengine.client import Client, RemoteWatch, open_client
from dengine.server import Server, open_server, serve
from dengine.errors import (
    ClusterError,
    ConfigError,
    DengineError,
    EngineStopped,
    LeaderChanged,
    ErrorCode,
    InvalidArgument,
    NotLeader,
    ProposalDropped,
    ResourceExhausted,
    StorageCorrupted,
    StorageError,
    Timeout,
    Unavailable,
    UsageError,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "Client",
    "RemoteWatch",
    "Server",
    "open_client",
    "open_server",
    "serve",
    "Config",
    "EmbeddedClient",
    "Engine",
    "KeyValue",
    "LeaderInfo",
    "Member",
    "ProposalDropped",
    "ReadConsistency",
    "ScanResult",
    "Status",
    "Watch",
    "WatchEvent",
    "WatchEventType",
    "WatchStatistics",
    "open_engine",
    "run_engine",
    "ClusterError",
    "ConfigError",
    "DengineError",
    "EngineStopped",
    "LeaderChanged",
    "ErrorCode",
    "InvalidArgument",
    "NotLeader",
    "ResourceExhausted",
    "StorageCorrupted",
    "StorageError",
    "Timeout",
    "Unavailable",
    "UsageError",
    "__version__",
]

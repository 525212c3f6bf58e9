"""dengine: an embeddable Raft consensus key-value engine for trio."""

from dengine.errors import (
    ClusterError,
    ConfigError,
    DengineError,
    EngineStopped,
    ErrorCode,
    InvalidArgument,
    NotLeader,
    ResourceExhausted,
    StorageCorrupted,
    StorageError,
    Timeout,
    Unavailable,
    UsageError,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "ClusterError",
    "ConfigError",
    "DengineError",
    "EngineStopped",
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

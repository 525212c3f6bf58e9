"""dengine.kv: the pure key-value state machine (layer 2).

No trio, no IO, no clock reads: time arrives as the leader's stamp inside each
entry, or as ``now_ms`` passed to reads. See docs/kv.md.
"""

from dengine.kv.commands import (
    Batch,
    Command,
    CompareAndSwap,
    Delete,
    ExpireKeys,
    Put,
    decode_batch,
    decode_command,
    encode_batch,
    encode_command,
)
from dengine.kv.snapshot import decode_image, encode_image, restore, snapshot_bytes
from dengine.kv.store import ApplyResult, CommandError, FrozenImage, KVStore, Result
from dengine.kv.ttl import TTLIndex

__all__ = [
    "ApplyResult",
    "Batch",
    "Command",
    "CommandError",
    "CompareAndSwap",
    "Delete",
    "ExpireKeys",
    "FrozenImage",
    "KVStore",
    "Put",
    "Result",
    "TTLIndex",
    "decode_batch",
    "decode_command",
    "decode_image",
    "encode_batch",
    "encode_command",
    "encode_image",
    "restore",
    "snapshot_bytes",
]

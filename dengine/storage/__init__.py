"""Durable storage for a Raft node: blocking IO, no trio.

* :class:`Storage` -- the interface (see dengine/storage/base.py for the rules);
* :class:`FileStorage` -- the default: segmented WAL + snapshot files;
* :class:`MemoryStorage` -- in memory, with crash simulation for tests;
* :func:`snapshot_to_bytes` / :func:`snapshot_from_bytes` /
  :func:`verify_snapshot_bytes` -- the checksummed snapshot encoding, also for
  snapshot bytes received from a peer.

docs/storage.md describes the on-disk format and the crash guarantees.
"""

from .base import InitialState, Storage
from .file import DEFAULT_SEGMENT_SIZE, FileStorage
from .memory import MemoryStorage
from .snapshot import snapshot_from_bytes, snapshot_to_bytes, verify_snapshot_bytes

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "FileStorage",
    "InitialState",
    "MemoryStorage",
    "Storage",
    "snapshot_from_bytes",
    "snapshot_to_bytes",
    "verify_snapshot_bytes",
]

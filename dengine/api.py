"""Public value types and the argument validators every client shares.

Rules of this module:

* Layer 1: it imports only the standard library, attrs and dengine.errors.
* Every value type is a frozen attrs class; nothing here does IO or reads a
  clock.
* Keys, values and watch prefixes are ``bytes`` -- never ``str``. A missing
  value is ``None``, which is always distinguishable from an empty value
  ``b""``.
* A validator either returns the checked (possibly normalised) argument or
  raises :class:`~dengine.errors.InvalidArgument` whose message names the
  argument and the problem (for sizes: the size found and the limit).
* Time-to-live is given by users in seconds (``int`` or ``float``) and
  carried in commands as whole milliseconds; :func:`validate_ttl` does the
  conversion (rounding up, so a TTL never gets shorter).
"""

from __future__ import annotations

import enum
import math

import attrs

from dengine.errors import InvalidArgument

__all__ = [
    "DEFAULT_MAX_KEY_SIZE",
    "DEFAULT_MAX_VALUE_SIZE",
    "MAX_TTL_SECONDS",
    "KeyValue",
    "LeaderInfo",
    "Member",
    "ReadConsistency",
    "ScanResult",
    "Status",
    "WatchEvent",
    "WatchEventType",
    "validate_key",
    "validate_prefix",
    "validate_scan_prefix",
    "validate_ttl",
    "validate_value",
]

#: Default largest key, in bytes.
DEFAULT_MAX_KEY_SIZE = 4 * 1024
#: Default largest value, in bytes.
DEFAULT_MAX_VALUE_SIZE = 1024 * 1024
#: Largest accepted TTL: 100 years. Keeps ``now_ms + ttl_ms`` far inside int64.
MAX_TTL_SECONDS = 100 * 365 * 24 * 3600


class ReadConsistency(enum.Enum):
    """How fresh a read must be.

    * ``LINEARIZABLE`` -- confirmed with a quorum (ReadIndex); never stale.
    * ``LEASE`` -- served by the leader inside its lease, no round trip;
      linearizable as long as clocks drift less than the lease margin.
    * ``EVENTUAL`` -- the local state machine of any node; may be stale.
    """

    LINEARIZABLE = "linearizable"
    LEASE = "lease"
    EVENTUAL = "eventual"

    @classmethod
    def parse(cls, value: str | ReadConsistency) -> ReadConsistency:
        """Accept a member or its name/value in any case (``"lease"``,
        ``"LEASE"``); raise InvalidArgument naming the bad value otherwise."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls(value.strip().lower())
            except ValueError:
                pass
        allowed = ", ".join(repr(m.value) for m in cls)
        raise InvalidArgument(f"invalid read consistency {value!r}: expected one of {allowed}")


@attrs.frozen(slots=True)
class KeyValue:
    """One key with its value and, as in etcd, its history: ``revision``
    (also ``mod_revision``) is the Raft index of the write that last set the
    value, ``create_revision`` that of the write that created the key (since
    it last did not exist), ``version`` the number of writes since then (1
    after the creating one); ``lease`` is 0 (leases are not built yet). 0
    where unknown."""

    key: bytes
    value: bytes
    revision: int = 0
    create_revision: int = 0
    version: int = 0
    lease: int = 0

    @property
    def mod_revision(self) -> int:
        """etcd's name for ``revision``."""
        return self.revision


@attrs.frozen(slots=True)
class ScanResult:
    """A scan: ``entries`` in key order, read at ``revision`` (the applied
    index of the node that served it). ``count`` is how many keys the range
    holds in all and ``more`` whether ``limit`` left some out (ask again
    from the last key + ``b"\\0"``). With ``keys_only`` the values are
    empty; with ``count_only`` there are no entries."""

    entries: list[tuple[bytes, bytes]]
    revision: int
    more: bool = False
    count: int = 0


class WatchEventType(enum.IntEnum):
    """Kinds of watch events. The numbers are part of the wire protocol."""

    PUT = 0
    DELETE = 1
    CANCELED = 2  # the watcher was terminated (e.g. its buffer overflowed)
    PROGRESS = 3  # heartbeat: carries the current revision, no key or value


@attrs.frozen(slots=True)
class WatchEvent:
    """One change seen by a watcher.

    ``revision`` is the Raft index of the entry that made the change.
    ``value`` is ``b""`` for DELETE, CANCELED and PROGRESS. ``prev_value`` is
    the value before the change, ``None`` when the key did not exist (or the
    watcher did not ask for previous values). ``error`` is an
    :class:`~dengine.errors.ErrorCode` for CANCELED on the wire, else 0.
    """

    type: WatchEventType
    key: bytes
    value: bytes
    prev_value: bytes | None
    revision: int
    error: int = 0


@attrs.frozen(slots=True)
class LeaderInfo:
    """The leader as seen by one node: ``leader_id`` is None when unknown."""

    leader_id: int | None
    term: int


@attrs.frozen(slots=True)
class Member:
    """One cluster member. ``client_address`` is None when the node serves no
    client endpoint (embedded only)."""

    node_id: int
    peer_address: str
    client_address: str | None = None
    is_learner: bool = False


@attrs.frozen(slots=True)
class MembershipChange:
    """One membership change that took effect at ``revision`` (the Raft
    index of its entry): ``kind`` is "added_learner", "added_voter",
    "promoted", "removed" or "updated"; ``members`` is the whole membership
    after it."""

    revision: int
    kind: str
    node_id: int
    members: tuple[Member, ...]


@attrs.frozen(slots=True)
class Status:
    """A snapshot of one node's view of itself and the cluster."""

    node_id: int
    role: str
    term: int
    leader_id: int | None
    commit_index: int
    applied_index: int
    members: tuple[Member, ...]
    last_snapshot_index: int


# --------------------------------------------------------------------------
# Validators
# --------------------------------------------------------------------------


def _type_name(obj: object) -> str:
    return type(obj).__name__


def validate_node_id(value: object) -> int:
    """A member's node id: a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidArgument(f"node_id must be a positive integer, got {value!r}")
    return value


def validate_limit(limit: object) -> int | None:
    """A scan's ``limit``: None (no limit) or a positive integer."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise InvalidArgument(f"limit must be a positive integer or None, got {limit!r}")
    return limit


def validate_range(start: object, end: object, max_key_size: int = DEFAULT_MAX_KEY_SIZE) -> None:
    """A key range: ``start`` bytes (may be empty: from the first key),
    ``end`` bytes or None (to the last key), each at most ``max_key_size``
    bytes, ``start < end``."""
    if not isinstance(start, bytes):
        raise InvalidArgument(f"range start must be bytes, got {_type_name(start)}")
    if end is not None and not isinstance(end, bytes):
        raise InvalidArgument(f"range end must be bytes or None, got {_type_name(end)}")
    for name, key in (("start", start), ("end", end)):
        if key is not None and len(key) > max_key_size:
            raise InvalidArgument(f"range {name} is {len(key)} bytes, larger than the limit of {max_key_size} bytes")
    if end is not None and not start < end:
        raise InvalidArgument(f"range end {end!r:.40} must come after start {start!r:.40}")


def validate_key(key: object, max_key_size: int = DEFAULT_MAX_KEY_SIZE) -> bytes:
    """A key is non-empty ``bytes`` of at most ``max_key_size`` bytes."""
    if not isinstance(key, bytes):
        raise InvalidArgument(f"key must be bytes, got {_type_name(key)}")
    if not key:
        raise InvalidArgument("key must not be empty")
    if len(key) > max_key_size:
        raise InvalidArgument(f"key is {len(key)} bytes, larger than the limit of {max_key_size} bytes")
    return key


def validate_value(value: object, max_value_size: int = DEFAULT_MAX_VALUE_SIZE) -> bytes:
    """A value is ``bytes`` (possibly empty) of at most ``max_value_size`` bytes."""
    if not isinstance(value, bytes):
        raise InvalidArgument(f"value must be bytes, got {_type_name(value)}")
    if len(value) > max_value_size:
        raise InvalidArgument(
            f"value is {len(value)} bytes, larger than the limit of {max_value_size} bytes"
        )
    return value


def validate_ttl(ttl: object) -> int | None:
    """Check a TTL in seconds and return it in whole milliseconds (rounded
    up; at least 1). ``None`` means "no TTL" and is returned unchanged."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise InvalidArgument(f"ttl must be a number of seconds, got {_type_name(ttl)}")
    if isinstance(ttl, float) and math.isnan(ttl):
        raise InvalidArgument("ttl must be a number of seconds, got nan")
    if ttl <= 0:
        raise InvalidArgument(f"ttl must be greater than 0 seconds, got {ttl!r}")
    if ttl > MAX_TTL_SECONDS:
        raise InvalidArgument(f"ttl of {ttl!r} seconds is larger than the limit of {MAX_TTL_SECONDS} seconds")
    return max(1, math.ceil(ttl * 1000))


def validate_prefix(prefix: object, max_key_size: int = DEFAULT_MAX_KEY_SIZE) -> bytes:
    """A watch prefix is ``bytes`` that starts and ends with ``/`` (``b"/"``
    alone watches every slash-rooted key), at most ``max_key_size`` bytes."""
    if not isinstance(prefix, bytes):
        raise InvalidArgument(f"watch prefix must be bytes, got {_type_name(prefix)}")
    if not prefix.startswith(b"/") or not prefix.endswith(b"/"):
        raise InvalidArgument(f"watch prefix must start and end with '/', got {prefix!r}")
    if len(prefix) > max_key_size:
        raise InvalidArgument(
            f"watch prefix is {len(prefix)} bytes, larger than the limit of {max_key_size} bytes"
        )
    return prefix


def validate_scan_prefix(prefix: object, max_key_size: int = DEFAULT_MAX_KEY_SIZE) -> bytes:
    """A scan prefix is any ``bytes`` (``b""`` scans everything) of at most
    ``max_key_size`` bytes."""
    if not isinstance(prefix, bytes):
        raise InvalidArgument(f"scan prefix must be bytes, got {_type_name(prefix)}")
    if len(prefix) > max_key_size:
        raise InvalidArgument(
            f"scan prefix is {len(prefix)} bytes, larger than the limit of {max_key_size} bytes"
        )
    return prefix

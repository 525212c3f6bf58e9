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
from collections.abc import Iterator
from typing import Any, ClassVar, Protocol, overload

import attrs

from dengine.errors import InvalidArgument

__all__ = [
    "DEFAULT_MAX_KEY_SIZE",
    "DEFAULT_MAX_VALUE_SIZE",
    "MAX_TTL_SECONDS",
    "MAX_TXN_DEPTH",
    "Compare",
    "FollowerProgress",
    "Health",
    "KeyValue",
    "LeaderInfo",
    "Lease",
    "LeaseStatus",
    "Op",
    "TxnResult",
    "Member",
    "ReadConsistency",
    "ScanResult",
    "Status",
    "WatchEvent",
    "WatchEventType",
    "prefix_end",
    "validate_key",
    "validate_lease_id",
    "validate_txn",
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
    after the creating one); ``lease`` the id of the lease the key is
    attached to (0: none). 0 where unknown.

    A KeyValue unpacks and indexes as the pair ``(key, value)`` (``for key,
    value in scan.entries``, ``entry[0]``), as scan entries did when they
    were pairs."""

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

    def __iter__(self) -> Iterator[bytes]:
        yield self.key
        yield self.value

    def __getitem__(self, index: int) -> bytes:
        return (self.key, self.value)[index]


@attrs.frozen(slots=True)
class ScanResult:
    """A scan: ``entries`` (:class:`KeyValue`) in key order, read at ``revision`` (the applied
    index of the node that served it). ``count`` is how many keys the range
    holds in all and ``more`` whether ``limit`` left some out (ask again
    from the last key + ``b"\\0"``). With ``keys_only`` the values are
    empty; with ``count_only`` there are no entries."""

    entries: list[KeyValue]
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
    A PUT also carries the key's ``create_revision``, ``version`` and
    ``lease`` after the change, as :class:`KeyValue` does (``revision`` is
    its ``mod_revision``); they are 0 for other events.
    """

    type: WatchEventType
    key: bytes
    value: bytes
    prev_value: bytes | None
    revision: int
    error: int = 0
    create_revision: int = 0
    version: int = 0
    lease: int = 0
    #: With ``prev_value``: the key's create_revision, mod revision, version
    #: and lease before the change (etcd's ``prev_kv``); 0 otherwise. Only
    #: on the node's own watches (the client protocol does not carry them).
    prev_create_revision: int = 0
    prev_revision: int = 0
    prev_version: int = 0
    prev_lease: int = 0

    @property
    def mod_revision(self) -> int:
        """etcd's name for ``revision``."""
        return self.revision


@attrs.frozen(slots=True)
class Lease:
    """A granted lease: its ``id`` and the ``ttl`` (seconds) it was granted
    with -- at least the TTL asked for, maybe more (a lease never lives
    shorter than the cluster's minimum, see docs/coordination.md)."""

    id: int
    ttl: float


@attrs.frozen(slots=True)
class LeaseStatus:
    """What the leader knows of a lease: the ``granted_ttl`` (seconds), the
    ``remaining`` seconds before it expires unless kept alive, and the keys
    attached to it (empty unless asked for)."""

    id: int
    granted_ttl: float
    remaining: float
    keys: tuple[bytes, ...] = ()


# --------------------------------------------------------------------------
# Transactions
# --------------------------------------------------------------------------

#: What a :class:`Compare` looks at, as named on the wire.
COMPARE_TARGETS = ("value", "version", "create_revision", "mod_revision", "lease")
#: How a :class:`Compare` compares, as named on the wire.
COMPARE_OPS = ("==", "!=", "<", ">")


def _check_compare_operand(target: str, operand: object) -> None:
    if target == "value":
        if not isinstance(operand, bytes):
            raise InvalidArgument(f"a compare on the value needs bytes, got {_type_name(operand)}")
    elif isinstance(operand, bool) or not isinstance(operand, int) or operand < 0:
        raise InvalidArgument(f"a compare on the {target} needs a non-negative integer, got {operand!r}")


@attrs.frozen(slots=True)
class Compare:
    """One condition of a transaction: ``target`` of ``key`` ``op``
    ``operand``. Build it the readable way::

        Compare.mod_revision(b"/leader") == 42
        Compare.value(b"/config") != b"old"
        Compare.create_revision(b"/lock/a") == 0   # the key does not exist

    A missing key has version, create_revision, mod_revision and lease 0;
    any compare on the value of a missing key is false (as in etcd). Values
    compare as bytes (lexicographically)."""

    key: bytes
    target: str
    op: str
    operand: bytes | int

    def __attrs_post_init__(self) -> None:
        validate_key(self.key, _NO_SIZE_LIMIT)
        if self.target not in COMPARE_TARGETS:
            raise InvalidArgument(f"unknown compare target {self.target!r}; known: {', '.join(COMPARE_TARGETS)}")
        if self.op not in COMPARE_OPS:
            raise InvalidArgument(f"unknown compare operator {self.op!r}; known: {', '.join(COMPARE_OPS)}")
        _check_compare_operand(self.target, self.operand)

    @staticmethod
    def value(key: bytes) -> _CompareBuilder:
        return _CompareBuilder(key, "value")

    @staticmethod
    def version(key: bytes) -> _CompareBuilder:
        return _CompareBuilder(key, "version")

    @staticmethod
    def create_revision(key: bytes) -> _CompareBuilder:
        return _CompareBuilder(key, "create_revision")

    @staticmethod
    def mod_revision(key: bytes) -> _CompareBuilder:
        return _CompareBuilder(key, "mod_revision")

    @staticmethod
    def lease(key: bytes) -> _CompareBuilder:
        return _CompareBuilder(key, "lease")

    def holds(self, kv: KeyValue | None) -> bool:
        """Whether this condition holds for ``kv`` (None: the key is absent)."""
        if kv is None:
            if self.target == "value":
                return False
            have: bytes | int = 0
        elif self.target == "value":
            have = kv.value
        elif self.target == "version":
            have = kv.version
        elif self.target == "create_revision":
            have = kv.create_revision
        elif self.target == "mod_revision":
            have = kv.revision
        else:
            have = kv.lease
        want = self.operand
        if self.op == "==":
            return have == want
        if self.op == "!=":
            return have != want
        if self.op == "<":
            return have < want  # type: ignore[operator]
        return have > want  # type: ignore[operator]


class _CompareBuilder:
    """``Compare.<target>(key)``: compare it with ``==``, ``!=``, ``<``, ``>``."""

    __slots__ = ("key", "target")
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, key: bytes, target: str) -> None:
        self.key = key
        self.target = target

    def _make(self, op: str, operand: object) -> Compare:
        return Compare(self.key, self.target, op, operand)  # type: ignore[arg-type]

    def __eq__(self, operand: object) -> Compare:  # type: ignore[override]
        return self._make("==", operand)

    def __ne__(self, operand: object) -> Compare:  # type: ignore[override]
        return self._make("!=", operand)

    def __lt__(self, operand: object) -> Compare:
        return self._make("<", operand)

    def __gt__(self, operand: object) -> Compare:
        return self._make(">", operand)

    def __bool__(self) -> bool:
        raise InvalidArgument(f"Compare.{self.target}(key) must be compared with ==, !=, < or >")


#: The kinds of :class:`Op`, as named on the wire. Append only: the Raft
#: log stores a kind as its index here.
OP_KINDS = ("put", "delete", "delete_range", "get", "scan", "txn")

#: Most levels of transactions nested in a transaction (etcd's
#: ``RequestOp.request_txn``): a txn op in a txn op ... at most this deep.
MAX_TXN_DEPTH = 8


class _TxnBuilder(Protocol):
    def __call__(self, compare: Any = (), success: Any = (), failure: Any = ()) -> Op: ...


class _NestedTxn:
    """``Op.txn(compare, success, failure)`` builds a nested transaction op;
    ``op.txn`` is the body of one, ``(compares, success ops, failure ops)``
    (None for the other kinds). One name, as etcd's ``request_txn``: read
    on the class it is the constructor, on an instance the field."""

    __slots__ = ()

    @overload
    def __get__(self, instance: None, owner: type[Op]) -> _TxnBuilder: ...

    @overload
    def __get__(
        self, instance: Op, owner: type[Op] | None = None
    ) -> tuple[tuple[Compare, ...], tuple[Op, ...], tuple[Op, ...]] | None: ...

    def __get__(self, instance: Op | None, owner: type[Op] | None = None) -> Any:
        if instance is None:
            return _build_txn_op
        return instance._txn


def _build_txn_op(compare: Any = (), success: Any = (), failure: Any = ()) -> Op:
    # Types, keys and the write-once rule now; sizes and counts when a
    # client checks the whole transaction. Its body is one level down.
    limits = _Limits(_NO_SIZE_LIMIT, _NO_SIZE_LIMIT, _NO_SIZE_LIMIT, MAX_TXN_DEPTH)
    return Op("txn", b"", txn=_check_txn_body(compare, success, failure, limits, 1, ""))


@attrs.frozen(slots=True)
class Op:
    """One operation of a transaction. Build it with the constructors::

        Op.put(b"/k", b"v", lease=lease.id)
        Op.delete(b"/k")
        Op.delete_prefix(b"/jobs/")
        Op.get(b"/k")
        Op.scan(b"/jobs/", limit=10)        # or Op.scan_range(start, end)
        Op.txn(compare, success, failure)   # a transaction nested in this one

    In a :class:`TxnResult` a put answers its revision, a delete the number
    of keys it removed, a get a :class:`KeyValue` or None, a scan a
    :class:`ScanResult`, a nested txn a :class:`TxnResult` (at the outer
    transaction's revision). ``ttl_ms`` is for puts made by
    ``compare_and_swap(..., ttl=)``. ``op.txn`` is a nested transaction's
    ``(compares, success ops, failure ops)``, None for the other kinds."""

    kind: str
    key: bytes
    value: bytes = b""
    end: bytes | None = None
    lease: int = 0
    limit: int | None = None
    ttl_ms: int | None = None
    # Stored as ``_txn``, built and read as ``txn`` (``Op(..., txn=body)``,
    # ``op.txn``): the class attribute ``txn`` is the constructor.
    _txn: tuple[tuple[Compare, ...], tuple[Op, ...], tuple[Op, ...]] | None = None

    txn: ClassVar[_NestedTxn] = _NestedTxn()

    @staticmethod
    def put(key: bytes, value: bytes, *, lease: int = 0) -> Op:
        validate_key(key, _NO_SIZE_LIMIT)
        validate_value(value, _NO_SIZE_LIMIT)
        return Op("put", key, value, lease=validate_lease_id(lease, allow_zero=True))

    @staticmethod
    def delete(key: bytes) -> Op:
        validate_key(key, _NO_SIZE_LIMIT)
        return Op("delete", key)

    @staticmethod
    def delete_prefix(prefix: bytes) -> Op:
        """Every key starting with ``prefix`` (which must not be empty)."""
        validate_key(prefix, _NO_SIZE_LIMIT)
        return Op("delete_range", prefix, end=prefix_end(prefix))

    @staticmethod
    def delete_range(start: bytes, end: bytes | None = None) -> Op:
        validate_range(start, end, _NO_SIZE_LIMIT)
        return Op("delete_range", start, end=end)

    @staticmethod
    def get(key: bytes) -> Op:
        validate_key(key, _NO_SIZE_LIMIT)
        return Op("get", key)

    @staticmethod
    def scan(prefix: bytes, *, limit: int | None = None) -> Op:
        validate_scan_prefix(prefix, _NO_SIZE_LIMIT)
        return Op("scan", prefix, end=prefix_end(prefix), limit=validate_limit(limit))

    @staticmethod
    def scan_range(start: bytes, end: bytes | None = None, *, limit: int | None = None) -> Op:
        validate_range(start, end, _NO_SIZE_LIMIT)
        return Op("scan", start, end=end, limit=validate_limit(limit))

    @property
    def writes(self) -> bool:
        """Whether running it may change a key (a nested txn: if an op of
        either of its branches may)."""
        if self.kind == "txn":
            body = self._txn
            return body is not None and any(op.writes for op in (*body[1], *body[2]))
        return self.kind in ("put", "delete", "delete_range")


@attrs.frozen(slots=True)
class TxnResult:
    """A transaction's outcome: whether every compare held (``succeeded``:
    the ``success`` ops ran, else the ``failure`` ops), the ``revision`` it
    was applied at (its writes all carry it), and one response per op run,
    in order (see :class:`Op`). A nested txn op's response is a TxnResult
    of its own, with the same ``revision``."""

    succeeded: bool
    revision: int
    responses: list[Any]


#: Default most compares, and most ops in each branch, of one transaction.
DEFAULT_MAX_TXN_OPS = 128


@attrs.frozen(slots=True)
class _Limits:
    max_ops: int
    max_key_size: int
    max_value_size: int
    max_depth: int


def validate_txn(
    compare: object, success: object, failure: object, *, max_ops: int = DEFAULT_MAX_TXN_OPS,
    max_key_size: int = DEFAULT_MAX_KEY_SIZE, max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
) -> tuple[tuple[Compare, ...], tuple[Op, ...], tuple[Op, ...]]:
    """Check a transaction's three lists: each holds at most ``max_ops``
    items of the right type, keys and values are within the limits, and no
    branch writes the same key twice (as etcd refuses). Transactions nested
    in it (``Op.txn``) are checked the same way, each list on its own, at
    most :data:`MAX_TXN_DEPTH` levels deep."""
    return _check_txn_body(compare, success, failure, _Limits(max_ops, max_key_size, max_value_size, MAX_TXN_DEPTH),
                           0, "")


def _check_txn_body(
    compare: object, success: object, failure: object, limits: _Limits, depth: int, where: str,
) -> tuple[tuple[Compare, ...], tuple[Op, ...], tuple[Op, ...]]:
    # ``depth``: how many txn ops enclose this body (0: the transaction
    # itself); ``where``: the path to it in messages ("success[2].").
    max_ops = limits.max_ops
    out: list[tuple[Any, ...]] = []
    for name, items, kind in (("compare", compare, Compare), ("success", success, Op), ("failure", failure, Op)):
        name = where + name
        if items is None:
            items = ()
        if isinstance(items, (bytes, str)) or not isinstance(items, (list, tuple)):
            raise InvalidArgument(f"txn {name} must be a list of {kind.__name__}, got {_type_name(items)}")
        if len(items) > max_ops:
            raise InvalidArgument(
                f"txn {name} holds {len(items)} items, more than the limit of {max_ops} (raft.max_txn_ops)")
        checked: list[Any] = []
        for i, item in enumerate(items):
            if type(item) is not kind:
                raise InvalidArgument(f"txn {name}[{i}] must be a dengine.{kind.__name__}, got {_type_name(item)}")
            if isinstance(item, Op):
                if item.kind == "txn":
                    item = _check_nested_txn(item, limits, depth + 1, f"{name}[{i}].")
                else:
                    _check_op(item, limits.max_key_size, limits.max_value_size)
            else:
                validate_key(item.key, limits.max_key_size)
            checked.append(item)
        if kind is Op:
            written: set[bytes] = set()
            for item in checked:
                if item.kind in ("put", "delete"):
                    if item.key in written:
                        raise InvalidArgument(f"txn {name} writes the key {item.key!r:.60} more than once")
                    written.add(item.key)
        out.append(tuple(checked))
    return out[0], out[1], out[2]


def _check_nested_txn(op: Op, limits: _Limits, depth: int, where: str) -> Op:
    if depth > limits.max_depth:
        raise InvalidArgument(f"txn nesting is deeper than the limit of {limits.max_depth}")
    if op.key or op.value or op.end is not None or op.lease or op.limit is not None or op.ttl_ms is not None:
        raise InvalidArgument(f"txn {where[:-1]} is a nested txn: it takes no key, value, end, lease, limit or ttl")
    body = op.txn
    if not isinstance(body, (tuple, list)) or len(body) != 3:
        raise InvalidArgument(f"txn {where[:-1]} must hold (compare, success, failure), got {_type_name(body)}")
    checked = _check_txn_body(*body, limits, depth, where)
    return op if checked == body else attrs.evolve(op, txn=checked)


def _check_op(op: Op, max_key_size: int, max_value_size: int) -> None:
    if op.kind not in OP_KINDS or op.kind == "txn":
        raise InvalidArgument(f"unknown txn op {op.kind!r}; known: {', '.join(OP_KINDS)}")
    if op.txn is not None:
        raise InvalidArgument(f"a {op.kind} op carries no nested txn")
    if op.kind in ("put", "delete", "get"):
        validate_key(op.key, max_key_size)
    else:
        validate_range(op.key, op.end, max_key_size)
    if op.kind == "put":
        validate_value(op.value, max_value_size)
        validate_lease_id(op.lease, allow_zero=True)
        if op.lease and op.ttl_ms is not None:
            raise InvalidArgument("a put takes a lease or a ttl, not both")
    if op.limit is not None:
        validate_limit(op.limit)


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
    """A snapshot of one node's view of itself and the cluster. ``version``
    is the node's dengine version and ``db_size`` the bytes its data
    directory holds (WAL and snapshots); None where unknown (a server that
    predates them). ``etcd_urls``: where the node serves etcd's API, by
    face (``"grpc"``, ``"gateway"``); None when it serves none."""

    node_id: int
    role: str
    term: int
    leader_id: int | None
    commit_index: int
    applied_index: int
    members: tuple[Member, ...]
    last_snapshot_index: int
    version: str | None = None
    db_size: int | None = None
    etcd_urls: dict[str, list[str]] | None = None


@attrs.frozen(slots=True)
class Health:
    """Whether one node is fit to serve, by etcd's ``/health`` rule: a
    follower (or learner) knows a leader it heard from within an election
    timeout; a leader heard from a quorum of voters within one. ``reason``
    says why not, in plain words (empty when healthy)."""

    healthy: bool
    reason: str = ""


@attrs.frozen(slots=True)
class FollowerProgress:
    """The leader's view of one other member: the last index known to be in
    its log (``match_index``), the next one to send, ``lag`` = the leader's
    last index minus ``match_index``, the replication ``state`` ("probe",
    "replicate" or "snapshot"), and whether the leader heard from it within
    an election timeout (``recently_active``)."""

    node_id: int
    match_index: int
    next_index: int
    lag: int
    state: str
    is_learner: bool
    recently_active: bool


# --------------------------------------------------------------------------
# Validators
# --------------------------------------------------------------------------


def _type_name(obj: object) -> str:
    return type(obj).__name__


_NO_SIZE_LIMIT = 2**62


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix``
    (None when there is none: empty or all-0xff prefix)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def validate_lease_id(value: object, *, allow_zero: bool = False) -> int:
    """A lease id: a positive 63-bit integer (0 = "no lease" where allowed)."""
    if isinstance(value, bool) or not isinstance(value, int) or not (0 if allow_zero else 1) <= value < 2**63:
        what = "a non-negative" if allow_zero else "a positive"
        raise InvalidArgument(f"lease id must be {what} integer below 2**63, got {value!r}")
    return value


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

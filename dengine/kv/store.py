"""KVStore: the replicated key-value state machine.

Rules of this module (every replica applying the same log must end in the
same state and emit the same events, so everything here is a pure function of
the log):

* ``apply(index, payload)`` applies one committed Raft entry. ``index`` must
  be above ``applied_index`` (gaps are fine: configuration entries never reach
  the store). An empty payload is the leader's no-op and only advances
  ``applied_index``. A payload that cannot be decoded raises
  MalformedMessage and changes nothing -- that is corruption or version skew,
  and the caller must stop rather than guess.
* The revision of every change is the Raft index of its entry. Commands of
  one entry apply in order, each with its own result:
  Put -> revision; Delete -> whether a live key was removed;
  CompareAndSwap -> True/False; ExpireKeys -> number of keys removed;
  an invalid command -> :class:`CommandError` (nothing changes).
* Log time: each entry carries the leader's stamp. The store's clock is the
  largest stamp seen so far (so log time never runs backwards across leader
  changes) and is the only time apply uses.
* TTL: a Put/CAS with ``ttl_ms`` sets ``expire_at = log time + ttl_ms``;
  without ``ttl_ms`` it clears any earlier expiry. A key with
  ``expire_at <= log time`` is *logically absent*: CAS compares against
  absence, Delete returns False and leaves it to the sweeper. A write that
  replaces such a key first expires it (a DELETE event with the old value),
  then writes (a PUT event with ``prev_value=None``), so every expiry is seen
  by watchers exactly once. ExpireKeys removes a key only if its current
  expiry equals the stamp in the command and has passed in log time.
* Events: one PUT per successful Put/CAS, one DELETE per removed key, none
  for anything that changed nothing (a failed CAS, a Delete of a missing
  key). ``prev_value`` is None when the key did not (logically) exist.
* Limits: ``max_key_size`` / ``max_value_size`` are checked again at apply
  (clients check first). They are part of the state machine's definition and
  must be the same on every replica.
* Reads take the reader's ``now_ms`` and hide keys whose expiry is at or
  before ``max(now_ms, log time)`` -- so a read never returns a key the log
  already considers gone, nor one the reader's clock says has expired.
* Leases: LeaseGrant creates a lease (id and TTL; the store picks the next
  free id when asked to); a Put with ``lease`` attaches the key to it (a put
  without one detaches it); LeaseRevoke deletes the lease and every key
  attached to it, with one DELETE event each, at that revision. *When* a
  lease expires is the leader's decision (dengine.kv.lessor): it proposes
  the LeaseRevoke, so every replica deletes the same keys at the same
  revision. A write naming a lease that does not exist fails with
  LeaseNotFound and changes nothing. ``lease_observer`` (if set) is told of
  every grant and revoke, for the leader's lessor.
* Transactions: a Txn evaluates its compares against the state before it,
  checks every op of the branch it takes (sizes, leases) -- and of *both*
  branches of every txn nested in it, since which one runs is not known yet
  -- and only then runs them in order, so it changes all or nothing; every
  change carries the entry's revision. A nested txn op evaluates its own
  compares when its turn comes (after the earlier ops of its branch) and
  answers a TxnResult at the same revision.
* Keys are kept in a dict plus a sorted list, so a prefix scan costs
  O(log n + matches); inserting or removing a key shifts the list (a memmove).
"""

from __future__ import annotations

from collections.abc import Callable

from bisect import bisect_left, insort
from typing import Any, Iterable, Union

import attrs

from dengine.api import (
    DEFAULT_MAX_KEY_SIZE,
    DEFAULT_MAX_VALUE_SIZE,
    MAX_TTL_SECONDS,
    MAX_TXN_DEPTH,
    Compare,
    KeyValue,
    Op,
    ScanResult,
    TxnResult,
    WatchEvent,
    WatchEventType,
    prefix_end,
    validate_key,
    validate_range,
    validate_value,
)
from dengine.errors import DengineError, EngineStopped, ErrorCode, InvalidArgument, LeaseNotFound, UsageError, error_for_code
from dengine.kv.commands import (
    Batch,
    Command,
    CompareAndSwap,
    Delete,
    ExpireKeys,
    LeaseGrant,
    LeaseRevoke,
    Put,
    Txn,
    decode_batch,
)
from dengine.kv.members import MemberTable
from dengine.kv.ttl import TTLIndex

__all__ = ["ApplyResult", "CommandError", "FrozenImage", "KVStore", "Result", "prefix_end"]

MAX_TTL_MS = MAX_TTL_SECONDS * 1000

_PUT = WatchEventType.PUT
_DELETE = WatchEventType.DELETE


@attrs.frozen(slots=True)
class CommandError:
    """A command that was rejected at apply (identically on every replica)."""

    code: int
    message: str

    def to_exception(self) -> DengineError:
        """The exception a caller waiting on this command should see."""
        return error_for_code(self.code)(self.message)


Result = Union[int, bool, CommandError, TxnResult]


@attrs.frozen(slots=True)
class ApplyResult:
    """What applying one entry did: one result per command, and the watch
    events it produced, in order."""

    index: int
    results: list[Result]
    events: list[WatchEvent]


@attrs.frozen(slots=True, eq=True)
class FrozenImage:
    """A point-in-time copy of the store at ``applied_index``. Taking it is a
    shallow copy; encoding it (dengine.kv.snapshot) can happen later."""

    applied_index: int
    clock_ms: int
    keys: list[bytes]
    values: dict[bytes, bytes]
    revisions: dict[bytes, int]
    expire_at: dict[bytes, int]
    members: MemberTable = attrs.field(factory=MemberTable)
    created: dict[bytes, int] = attrs.field(factory=dict)
    versions: dict[bytes, int] = attrs.field(factory=dict)
    leases: dict[int, int] = attrs.field(factory=dict)  # lease id -> ttl_ms
    key_lease: dict[bytes, int] = attrs.field(factory=dict)
    next_lease: int = 1


class KVStore:
    """The ordered, TTL-aware key-value state machine."""

    __slots__ = (
        "max_key_size",
        "max_value_size",
        "_applied",
        "_clock",
        "_values",
        "_revisions",
        "_keys",
        "_ttl",
        "_closed",
        "_clock_fn",
        "members",
        "_created",
        "_versions",
        "_leases",
        "_lease_keys",
        "_key_lease",
        "_next_lease",
        "lease_observer",
    )

    def __init__(
        self,
        *,
        max_key_size: int = DEFAULT_MAX_KEY_SIZE,
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
    ) -> None:
        self.max_key_size = max_key_size
        self.max_value_size = max_value_size
        self._applied = 0
        self._clock = 0
        self._values: dict[bytes, bytes] = {}
        self._revisions: dict[bytes, int] = {}
        # Per key: the revision that created it and the writes since (etcd's
        # create_revision and version) -- only for keys written more than once.
        # A key in neither map was created at its revision, version 1: most
        # keys of a large store are written once, and two maps of a million
        # entries are about a third of its memory.
        self._created: dict[bytes, int] = {}
        self._versions: dict[bytes, int] = {}
        self._keys: list[bytes] = []
        # Leases: id -> ttl_ms, id -> attached keys, key -> id.
        self._leases: dict[int, int] = {}
        self._lease_keys: dict[int, set[bytes]] = {}
        self._key_lease: dict[bytes, int] = {}
        self._next_lease = 1
        #: Told ``(lease_id, ttl_ms)`` of every grant and ``(lease_id, None)``
        #: of every revoke as they apply (the leader's lessor listens).
        self.lease_observer: Callable[[int, int | None], None] | None = None
        self._ttl = TTLIndex()
        self._closed = False
        #: What the replicated state records of each member (dengine.kv.members).
        self.members = MemberTable()
        # Wall clock in ms for get_nowait's TTL check (injected: the store
        # never reads a clock of its own).
        self._clock_fn: Callable[[], int] = self._log_clock

    # --- state ------------------------------------------------------------

    @property
    def applied_index(self) -> int:
        """The index of the last entry applied (0 for an empty store)."""
        return self._applied

    @property
    def clock_ms(self) -> int:
        """Log time: the largest leader stamp applied so far."""
        return self._clock

    def key_count(self) -> int:
        """Keys held, including expired ones whose deletion has not committed.
        (Deliberately not ``__len__``: an empty store must not be falsy.)"""
        return len(self._values)

    # --- apply ------------------------------------------------------------

    def apply(self, index: int, payload: bytes, *, emit_events: bool = True) -> ApplyResult:
        """Apply one committed entry (see the module rules)."""
        if index <= self._applied:
            raise ValueError(f"entry {index} is not after the applied index {self._applied}")
        if not payload:
            self._applied = index
            return ApplyResult(index, [], [])
        return self.apply_batch(index, decode_batch(payload), emit_events=emit_events)

    def apply_member(self, index: int, node_id: int, change: str, context: bytes = b"") -> None:
        """Apply a committed membership entry: ``change`` is "record" (a
        member added, or its addresses updated: ``context`` says them),
        "remove", or "none" (it changed nothing here)."""
        if index <= self._applied:
            raise ValueError(f"entry {index} is not after the applied index {self._applied}")
        self._applied = index
        if change == "record":
            self.members.record(node_id, context)
        elif change == "remove":
            self.members.remove(node_id)

    def apply_batch(self, index: int, batch: Batch, *, emit_events: bool = True) -> ApplyResult:
        """Apply an already decoded entry payload."""
        if index <= self._applied:
            raise ValueError(f"entry {index} is not after the applied index {self._applied}")
        self._applied = index
        if batch.now_ms > self._clock:
            self._clock = batch.now_ms
        events: list[WatchEvent] | None = [] if emit_events else None
        results = [self._apply_one(cmd, index, events) for cmd in batch.commands]
        return ApplyResult(index, results, events if events is not None else [])

    def _apply_one(self, cmd: Command, index: int, events: list[WatchEvent] | None) -> Result:
        kind = type(cmd)
        try:
            if kind is Put:
                assert isinstance(cmd, Put)
                return self._put(cmd.key, cmd.value, cmd.ttl_ms, index, events, cmd.lease)
            if kind is Delete:
                assert isinstance(cmd, Delete)
                return self._delete(cmd.key, index, events)
            if kind is CompareAndSwap:
                assert isinstance(cmd, CompareAndSwap)
                return self._cas(cmd, index, events)
            if kind is ExpireKeys:
                assert isinstance(cmd, ExpireKeys)
                return self._expire(cmd.keys, index, events)
            if kind is Txn:
                assert isinstance(cmd, Txn)
                return self._txn(cmd, index, events)
            if kind is LeaseGrant:
                assert isinstance(cmd, LeaseGrant)
                return self._grant(cmd.lease_id, cmd.ttl_ms)
            if kind is LeaseRevoke:
                assert isinstance(cmd, LeaseRevoke)
                return self._revoke(cmd.lease_id, index, events)
        except UsageError as exc:
            return CommandError(exc.code, exc.message)
        return CommandError(ErrorCode.INVALID_ARGUMENT, f"not a KV command: {kind.__name__}")

    def _check_write(self, key: bytes, value: bytes, ttl_ms: int | None, lease: int = 0) -> None:
        validate_key(key, self.max_key_size)
        validate_value(value, self.max_value_size)
        if ttl_ms is not None and not 0 < ttl_ms <= MAX_TTL_MS:
            raise InvalidArgument(f"ttl_ms must be between 1 and {MAX_TTL_MS}, got {ttl_ms}")
        if lease:
            if ttl_ms is not None:
                raise InvalidArgument("a put takes a lease or a ttl, not both")
            if lease not in self._leases:
                raise LeaseNotFound(f"lease {lease} does not exist (it expired, was revoked or never granted)")

    def _put(
        self, key: bytes, value: bytes, ttl_ms: int | None, index: int, events: list[WatchEvent] | None,
        lease: int = 0,
    ) -> int:
        self._check_write(key, value, ttl_ms, lease)
        self._write(key, value, ttl_ms, index, events, lease)
        return index

    def _write(
        self, key: bytes, value: bytes, ttl_ms: int | None, index: int, events: list[WatchEvent] | None,
        lease: int = 0,
    ) -> None:
        ttl = self._ttl
        has_ttl = len(ttl) > 0
        if has_ttl and ttl.is_expired(key, self._clock):
            self._remove(key, index, events)
        values = self._values
        prev = values.get(key)
        if prev is None:
            insort(self._keys, key)
            version = 1
        else:
            # History is kept only for keys written more than once (see __init__).
            version = self._versions.get(key, 1) + 1
            if version == 2:
                self._created[key] = self._revisions[key]
            self._versions[key] = version
            if events is not None:  # what the key was, for watchers that want prev_kv
                prev_rev, prev_lease = self._revisions[key], self._key_lease.get(key, 0)
        values[key] = value
        self._revisions[key] = index
        if ttl_ms is not None:
            ttl.set(key, self._clock + ttl_ms)
        elif has_ttl:
            ttl.clear(key)
        if lease or self._key_lease:
            self._attach(key, lease)
        if events is not None:
            created = self._created.get(key, index)
            if prev is None:
                events.append(WatchEvent(_PUT, key, value, None, index, 0, created, version, lease))
            else:
                events.append(WatchEvent(_PUT, key, value, prev, index, 0, created, version, lease,
                                         created, prev_rev, version - 1, prev_lease))

    def _attach(self, key: bytes, lease: int) -> None:
        old = self._key_lease.get(key, 0)
        if old == lease:
            return
        if old:
            self._lease_keys[old].discard(key)
            del self._key_lease[key]
        if lease:
            self._lease_keys[lease].add(key)
            self._key_lease[key] = lease

    def _remove(self, key: bytes, index: int, events: list[WatchEvent] | None) -> None:
        prev = self._values.pop(key)
        prev_rev = self._revisions.pop(key)
        prev_created = self._created.pop(key, prev_rev)
        prev_version = self._versions.pop(key, 1)
        keys = self._keys
        del keys[bisect_left(keys, key)]
        self._ttl.clear(key)
        lease = 0
        if self._key_lease:
            lease = self._key_lease.pop(key, 0)
            if lease:
                self._lease_keys[lease].discard(key)
        if events is not None:
            events.append(WatchEvent(_DELETE, key, b"", prev, index, 0, 0, 0, 0,
                                     prev_created, prev_rev, prev_version, lease))

    def _live(self, key: bytes) -> bytes | None:
        """The key's value in log time (None if absent or expired)."""
        value = self._values.get(key)
        if value is not None and self._ttl.is_expired(key, self._clock):
            return None
        return value

    def _delete(self, key: bytes, index: int, events: list[WatchEvent] | None) -> bool:
        validate_key(key, self.max_key_size)
        if self._live(key) is None:
            return False
        self._remove(key, index, events)
        return True

    def _cas(self, cmd: CompareAndSwap, index: int, events: list[WatchEvent] | None) -> bool:
        self._check_write(cmd.key, cmd.new, cmd.ttl_ms)
        if self._live(cmd.key) != cmd.expected:
            return False
        self._write(cmd.key, cmd.new, cmd.ttl_ms, index, events)
        return True

    def _expire(self, pairs: Iterable[tuple[bytes, int]], index: int, events: list[WatchEvent] | None) -> int:
        removed = 0
        ttl = self._ttl
        for key, stamp in pairs:
            if stamp <= self._clock and ttl.get(key) == stamp:
                self._remove(key, index, events)
                removed += 1
        return removed

    # --- leases -------------------------------------------------------------

    def _grant(self, lease_id: int, ttl_ms: int) -> int:
        if not 0 < ttl_ms <= MAX_TTL_MS:
            raise InvalidArgument(f"lease ttl_ms must be between 1 and {MAX_TTL_MS}, got {ttl_ms}")
        leases = self._leases
        if lease_id == 0:
            lease_id = self._next_lease
            while lease_id in leases:
                lease_id += 1
        elif lease_id in leases:
            raise InvalidArgument(f"lease {lease_id} already exists")
        if lease_id >= self._next_lease and lease_id < 2**62:
            self._next_lease = lease_id + 1
        leases[lease_id] = ttl_ms
        self._lease_keys[lease_id] = set()
        if self.lease_observer is not None:
            self.lease_observer(lease_id, ttl_ms)
        return lease_id

    def _revoke(self, lease_id: int, index: int, events: list[WatchEvent] | None) -> int:
        if lease_id not in self._leases:
            raise LeaseNotFound(f"lease {lease_id} does not exist (it expired, was revoked or never granted)")
        keys = sorted(self._lease_keys.pop(lease_id))
        del self._leases[lease_id]
        for key in keys:
            del self._key_lease[key]
            self._remove(key, index, events)
        if self.lease_observer is not None:
            self.lease_observer(lease_id, None)
        return len(keys)

    def lease_ttl_ms(self, lease_id: int) -> int | None:
        """The TTL a lease was granted with (None: no such lease)."""
        return self._leases.get(lease_id)

    def lease_keys(self, lease_id: int) -> list[bytes]:
        """The keys attached to a lease, in key order."""
        return sorted(self._lease_keys.get(lease_id, ()))

    def leases(self) -> dict[int, int]:
        """Every lease: id -> ttl_ms (a copy)."""
        return dict(self._leases)

    # --- transactions -------------------------------------------------------

    def _txn(self, cmd: Txn, index: int, events: list[WatchEvent] | None) -> TxnResult:
        succeeded = self._holds(cmd.compare)
        ops = cmd.success if succeeded else cmd.failure
        self._check_ops(ops, 0)  # all or nothing: check every op before running any
        return TxnResult(succeeded, index, [self._run_op(op, index, events) for op in ops])

    def _holds(self, compare: tuple[Compare, ...]) -> bool:
        kv = self._kv_at
        cutoff = self._clock
        return all(c.holds(kv(c.key, cutoff)) for c in compare)

    def _check_ops(self, ops: tuple[Op, ...], depth: int) -> None:
        for op in ops:
            kind = op.kind
            if kind == "put":
                self._check_write(op.key, op.value, op.ttl_ms, op.lease)
            elif kind in ("delete", "get"):
                validate_key(op.key, self.max_key_size)
            elif kind == "txn":
                # Either branch may run: its compares see writes not made yet.
                body = op.txn
                if body is None:
                    raise InvalidArgument("a nested txn op has no body")
                if depth >= MAX_TXN_DEPTH:
                    raise InvalidArgument(f"txn nesting is deeper than the limit of {MAX_TXN_DEPTH}")
                self._check_ops(body[1], depth + 1)
                self._check_ops(body[2], depth + 1)
            else:
                validate_range(op.key, op.end, self.max_key_size)

    def _run_op(self, op: Op, index: int, events: list[WatchEvent] | None) -> object:
        kind = op.kind
        if kind == "put":
            self._write(op.key, op.value, op.ttl_ms, index, events, op.lease)
            return index
        if kind == "delete":
            return int(self._delete(op.key, index, events))
        if kind == "delete_range":
            keys = self._keys
            lo = bisect_left(keys, op.key)
            hi = len(keys) if op.end is None else max(lo, bisect_left(keys, op.end, lo))
            doomed = [k for k in keys[lo:hi] if self._live(k) is not None]
            for key in doomed:
                self._remove(key, index, events)
            return len(doomed)
        if kind == "get":
            return self._kv_at(op.key, self._clock)
        if kind == "txn":
            body = op.txn
            assert body is not None  # _check_ops saw to it
            succeeded = self._holds(body[0])
            ops = body[1] if succeeded else body[2]
            return TxnResult(succeeded, index, [self._run_op(o, index, events) for o in ops])
        entries, count = self.scan_kvs(op.key, op.end, self._clock, op.limit, count=True)
        return ScanResult(entries=entries, revision=index, more=count > len(entries), count=count)

    # --- reads ------------------------------------------------------------

    def _cutoff(self, now_ms: int) -> int:
        return now_ms if now_ms > self._clock else self._clock

    def get(self, key: bytes, now_ms: int) -> bytes | None:
        """The value of ``key``, or None if absent or expired."""
        value = self._values.get(key)
        if value is None or not len(self._ttl):
            return value
        if self._ttl.is_expired(key, self._cutoff(now_ms)):
            return None
        return value

    def get_nowait(self, key: bytes) -> bytes | None:
        """The value of ``key`` now, read locally without awaiting (an
        EVENTUAL read): the hottest read path, one call. Raises
        InvalidArgument for a bad key and EngineStopped once closed."""
        if self._closed or type(key) is not bytes or not 0 < len(key) <= self.max_key_size:
            self._nowait_refused(key)
        value = self._values.get(key)
        if value is None or key not in self._ttl._expire_at:
            return value
        if self._ttl.is_expired(key, self._cutoff(self._clock_fn())):
            return None
        return value

    def _nowait_refused(self, key: object) -> None:
        if self._closed:
            raise EngineStopped("the engine is stopping or has stopped")
        validate_key(key, self.max_key_size)

    def _log_clock(self) -> int:
        return self._clock

    def bind_clock(self, clock_ms: Callable[[], int]) -> None:
        """The wall clock (ms) get_nowait uses to hide expired keys."""
        self._clock_fn = clock_ms

    def close(self) -> None:
        """Refuse get_nowait from now on (the engine stopped)."""
        self._closed = True

    def load_from(self, other: KVStore) -> None:
        """Become ``other`` in place (a snapshot installed), so references to
        this store -- and to its bound get_nowait -- stay valid."""
        self._applied = other._applied
        self._clock = other._clock
        self._values = other._values
        self._revisions = other._revisions
        self._created = other._created
        self._versions = other._versions
        self._keys = other._keys
        self._ttl = other._ttl
        self.members = other.members
        self._leases = other._leases
        self._lease_keys = other._lease_keys
        self._key_lease = other._key_lease
        self._next_lease = other._next_lease

    def get_kv(self, key: bytes, now_ms: int) -> KeyValue | None:
        """Like :meth:`get` with the key's revisions, version and lease."""
        value = self.get(key, now_ms)
        if value is None:
            return None
        return self._kv(key, value)

    def _kv_at(self, key: bytes, cutoff: int) -> KeyValue | None:
        value = self._values.get(key)
        if value is None or self._ttl.is_expired(key, cutoff):
            return None
        return self._kv(key, value)

    def _kv(self, key: bytes, value: bytes) -> KeyValue:
        revision = self._revisions[key]
        return KeyValue(key, value, revision, self._created.get(key, revision), self._versions.get(key, 1),
                        self._key_lease.get(key, 0))

    def scan_kvs(
        self, start: bytes, end: bytes | None, now_ms: int, limit: int | None = None, *, count: bool = False
    ) -> tuple[list[KeyValue], int]:
        """:meth:`scan_range` with each entry as a :class:`KeyValue`."""
        pairs, total = self.scan_range(start, end, now_ms, limit, count=count)
        kv = self._kv
        return [kv(k, v) for k, v in pairs], total

    def get_many(self, keys: Iterable[bytes], now_ms: int) -> list[bytes | None]:
        """:meth:`get` for each key, in order."""
        return [self.get(key, now_ms) for key in keys]

    def scan_prefix(self, prefix: bytes, now_ms: int, limit: int | None = None) -> list[tuple[bytes, bytes]]:
        """Live ``(key, value)`` pairs whose key starts with ``prefix``, in key
        order, at most ``limit`` of them. O(log n + matches)."""
        return self.scan_range(prefix, prefix_end(prefix), now_ms, limit)[0]

    def scan_range(
        self, start: bytes, end: bytes | None, now_ms: int, limit: int | None = None, *, count: bool = False
    ) -> tuple[list[tuple[bytes, bytes]], int]:
        """Live ``(key, value)`` pairs with ``start <= key < end`` (``end``
        None: to the last key), in key order, at most ``limit`` of them; and,
        with ``count``, how many live keys the range holds in all (else the
        number returned). O(log n + matches)."""
        keys = self._keys
        lo = bisect_left(keys, start)
        hi = len(keys) if end is None else max(lo, bisect_left(keys, end, lo))
        values = self._values
        if not len(self._ttl):
            top = hi if limit is None else min(hi, lo + max(limit, 0))
            out = [(k, values[k]) for k in keys[lo:top]]
            return out, (hi - lo) if count else len(out)
        cutoff = self._cutoff(now_ms)
        expired = self._ttl.is_expired
        found: list[tuple[bytes, bytes]] = []
        live = 0
        for i in range(lo, hi):
            k = keys[i]
            if expired(k, cutoff):
                continue
            if limit is None or live < limit:
                found.append((k, values[k]))
            elif not count:
                break
            live += 1
        return found, live if count else len(found)

    # --- TTL sweeping (leader side) ---------------------------------------

    def expired(self, now_ms: int, limit: int) -> list[tuple[bytes, int]]:
        """Keys whose expiry is ``<= now_ms``, with their stamps, for an
        ExpireKeys proposal."""
        return self._ttl.expired(now_ms, limit)

    def next_expiry(self) -> int | None:
        """The earliest expiry stamp held, or None."""
        return self._ttl.next_expiry()

    # --- snapshots --------------------------------------------------------

    def freeze(self) -> FrozenImage:
        """A shallow copy of the whole state, cheap enough for the apply path."""
        return FrozenImage(
            applied_index=self._applied,
            clock_ms=self._clock,
            keys=list(self._keys),
            values=dict(self._values),
            revisions=dict(self._revisions),
            expire_at=self._ttl.copy_map(),
            members=self.members.copy(),
            created=dict(self._created),
            versions=dict(self._versions),
            leases=dict(self._leases),
            key_lease=dict(self._key_lease),
            next_lease=self._next_lease,
        )

    @classmethod
    def from_image(
        cls,
        image: FrozenImage,
        *,
        max_key_size: int = DEFAULT_MAX_KEY_SIZE,
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
        adopt: bool = False,
    ) -> KVStore:
        """A store holding exactly ``image``. The image is copied, not shared,
        unless ``adopt`` says the caller hands it over and never uses it again
        (a freshly decoded snapshot): then its maps become the store's."""
        own: Any = (lambda m: m) if adopt else dict
        store = cls(max_key_size=max_key_size, max_value_size=max_value_size)
        store._applied = image.applied_index
        store._clock = image.clock_ms
        store._keys = sorted(image.values)
        store._values = own(image.values)
        store._revisions = own(image.revisions)
        store._ttl = TTLIndex(image.expire_at)
        store.members = image.members.copy()
        # Only keys whose history is not "created at its last write, version 1"
        # (an image may list every key; images from before per-key history list none).
        revisions = image.revisions
        versions = image.versions
        store._created = {}
        store._versions = {}
        for key, created in image.created.items():
            version = versions.get(key, 1)
            if created != revisions[key] or version != 1:
                store._created[key] = created
                store._versions[key] = version
        store._leases = dict(image.leases)
        store._lease_keys = {lease: set() for lease in image.leases}
        store._key_lease = dict(image.key_lease)
        for key, lease in image.key_lease.items():
            store._lease_keys[lease].add(key)
        store._next_lease = image.next_lease
        return store




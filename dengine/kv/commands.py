"""KV commands and their encoding inside a Raft entry.

Rules of this module:

* One Raft entry carries one :class:`Batch`: the leader's wall-clock stamp
  ``now_ms`` and one or more commands, applied in order, each with its own
  result. The runtime may put many client writes in one entry, or one write
  per entry; both are the same format.
* The stamp is taken by the *leader* when it proposes. It is the only time the
  state machine ever sees: TTL expiry is computed from it, never from a
  replica's clock.
* Payload layout (msgpack, bin type for bytes)::

      [FORMAT_VERSION, now_ms, [command, ...]]
      Put            [0, key, value, ttl_ms | nil]  or  [0, key, value, nil, lease]
      Delete         [1, key]
      CompareAndSwap [2, key, expected | nil, new, ttl_ms | nil]
      ExpireKeys     [3, [key, expire_at_ms, key, expire_at_ms, ...]]
      LeaseGrant     [4, lease_id (0: the store picks), ttl_ms]
      LeaseRevoke    [5, lease_id]
      Txn            [6, [compare, ...], [op, ...], [op, ...]]
        compare      [target, key, operator, operand]   (indexes into
                     dengine.api.COMPARE_TARGETS and COMPARE_OPS)
        op           [kind, key, value, end | nil, lease, limit | nil, ttl_ms | nil]
                     (kind indexes into dengine.api.OP_KINDS)
        nested txn   [kind, key, value, end | nil, lease, limit | nil, ttl_ms | nil,
                      [[compare, ...], [op, ...], [op, ...]]]
                     (kind "txn" only, and only it has the 8th field, so
                     logs written before nested txns decode unchanged; at
                     most dengine.api.MAX_TXN_DEPTH levels deep)

  Tags and the version never change meaning; new commands get new tags.
* Encoding checks *types* (so anything encoded decodes again on every replica
  -- a command that could not be decoded would stop every applier) and raises
  :class:`~dengine.errors.InvalidArgument`. It does not check sizes or empty
  keys: callers validate with dengine.api, and the store re-checks at apply.
* Decoding anything that is not exactly this layout raises
  :class:`~dengine.errors.MalformedMessage`.
"""

from __future__ import annotations

from typing import Any, Iterable, Union

import attrs
import msgpack

from dengine.api import COMPARE_OPS, COMPARE_TARGETS, MAX_TXN_DEPTH, OP_KINDS, Compare, Op
from dengine.errors import InvalidArgument, MalformedMessage

__all__ = [
    "FORMAT_VERSION",
    "Batch",
    "Command",
    "CompareAndSwap",
    "Delete",
    "ExpireKeys",
    "LeaseGrant",
    "LeaseRevoke",
    "Put",
    "Txn",
    "decode_batch",
    "decode_command",
    "encode_batch",
    "encode_command",
]

FORMAT_VERSION = 1

_TAG_PUT = 0
_TAG_DELETE = 1
_TAG_CAS = 2
_TAG_EXPIRE = 3
_TAG_GRANT = 4
_TAG_REVOKE = 5
_TAG_TXN = 6

_INT64_MAX = 2**63 - 1
_KIND_TXN = OP_KINDS.index("txn")


@attrs.frozen(slots=True)
class Put:
    """Set ``key`` to ``value``. With ``ttl_ms`` the key expires at the
    entry's stamp + ``ttl_ms``; without it any earlier TTL is cleared. With
    ``lease`` (not with ``ttl_ms``) the key is attached to that lease."""

    key: bytes
    value: bytes
    ttl_ms: int | None = None
    lease: int = 0


@attrs.frozen(slots=True)
class Delete:
    """Remove ``key``; the result says whether a live key was removed."""

    key: bytes


@attrs.frozen(slots=True)
class CompareAndSwap:
    """Set ``key`` to ``new`` only if its current value is ``expected``
    (``None`` = the key must be absent). The result is True on success; a
    failed CAS changes nothing."""

    key: bytes
    expected: bytes | None
    new: bytes
    ttl_ms: int | None = None


def _stamped_keys(pairs: Iterable[tuple[bytes, int]]) -> tuple[tuple[bytes, int], ...]:
    # A typed converter: with ``converter=tuple`` mypy's attrs plugin types
    # the __init__ argument as an unsolved ``Iterable[_T_co]``.
    return tuple(pairs)


@attrs.frozen(slots=True)
class ExpireKeys:
    """Delete keys whose TTL ran out, proposed by the leader's sweeper.

    ``keys`` pairs each key with the expiry stamp it had when the sweeper saw
    it; a key whose expiry has changed since (rewritten, TTL cleared) is left
    alone. The result is the number of keys deleted."""

    keys: tuple[tuple[bytes, int], ...] = attrs.field(converter=_stamped_keys)


@attrs.frozen(slots=True)
class LeaseGrant:
    """Create lease ``lease_id`` (0: the store picks the next free id) of
    ``ttl_ms``. The result is the lease's id."""

    lease_id: int
    ttl_ms: int


@attrs.frozen(slots=True)
class LeaseRevoke:
    """Delete a lease and every key attached to it (by its holder, or by the
    leader when it expired). The result is the number of keys deleted."""

    lease_id: int


@attrs.frozen(slots=True)
class Txn:
    """If every compare holds, run ``success``, else ``failure``; all at
    the entry's revision. The result is a :class:`~dengine.api.TxnResult`."""

    compare: tuple[Compare, ...]
    success: tuple[Op, ...]
    failure: tuple[Op, ...]


Command = Union[Put, Delete, CompareAndSwap, ExpireKeys, LeaseGrant, LeaseRevoke, Txn]


@attrs.frozen(slots=True)
class Batch:
    """The decoded payload of one Raft entry."""

    now_ms: int
    commands: tuple[Command, ...]


# --------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------


def _check_bytes(what: str, value: object) -> None:
    if not isinstance(value, bytes):
        raise InvalidArgument(f"{what} must be bytes, got {type(value).__name__}")


def _check_int(what: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{what} must be an int, got {type(value).__name__}")
    if not 0 <= value <= _INT64_MAX:
        raise InvalidArgument(f"{what} must be between 0 and 2**63-1, got {value}")


def _wire(cmd: object) -> list[Any]:
    # Exact type checks: a subclass could carry fields we would not encode.
    kind = type(cmd)
    if kind is Put:
        assert isinstance(cmd, Put)
        _check_bytes("put key", cmd.key)
        _check_bytes("put value", cmd.value)
        _check_int("put ttl_ms", cmd.ttl_ms, optional=True)
        if cmd.lease:
            _check_int("put lease", cmd.lease)
            return [_TAG_PUT, cmd.key, cmd.value, cmd.ttl_ms, cmd.lease]
        return [_TAG_PUT, cmd.key, cmd.value, cmd.ttl_ms]
    if kind is Delete:
        assert isinstance(cmd, Delete)
        _check_bytes("delete key", cmd.key)
        return [_TAG_DELETE, cmd.key]
    if kind is CompareAndSwap:
        assert isinstance(cmd, CompareAndSwap)
        _check_bytes("compare-and-swap key", cmd.key)
        if cmd.expected is not None:
            _check_bytes("compare-and-swap expected value", cmd.expected)
        _check_bytes("compare-and-swap new value", cmd.new)
        _check_int("compare-and-swap ttl_ms", cmd.ttl_ms, optional=True)
        return [_TAG_CAS, cmd.key, cmd.expected, cmd.new, cmd.ttl_ms]
    if kind is ExpireKeys:
        assert isinstance(cmd, ExpireKeys)
        flat: list[Any] = []
        for pair in cmd.keys:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise InvalidArgument("expire-keys entries must be (key, expire_at_ms) pairs")
            _check_bytes("expire-keys key", pair[0])
            _check_int("expire-keys expire_at_ms", pair[1])
            flat += pair
        return [_TAG_EXPIRE, flat]
    if kind is LeaseGrant:
        assert isinstance(cmd, LeaseGrant)
        _check_int("lease id", cmd.lease_id)
        _check_int("lease ttl_ms", cmd.ttl_ms)
        return [_TAG_GRANT, cmd.lease_id, cmd.ttl_ms]
    if kind is LeaseRevoke:
        assert isinstance(cmd, LeaseRevoke)
        _check_int("lease id", cmd.lease_id)
        return [_TAG_REVOKE, cmd.lease_id]
    if kind is Txn:
        assert isinstance(cmd, Txn)
        return [_TAG_TXN, *_txn_body_wire(cmd.compare, cmd.success, cmd.failure, 0)]
    raise InvalidArgument(f"not a KV command: {kind.__name__}")


def _compare_wire(c: object) -> list[Any]:
    if type(c) is not Compare:
        raise InvalidArgument(f"a txn compare must be a dengine.Compare, got {type(c).__name__}")
    _check_bytes("compare key", c.key)
    return [COMPARE_TARGETS.index(c.target), c.key, COMPARE_OPS.index(c.op), c.operand]


def _txn_body_wire(compare: object, success: object, failure: object, depth: int) -> list[list[Any]]:
    # ``depth``: how many txn ops enclose this body (0: the Txn command).
    for name, items in (("compares", compare), ("success ops", success), ("failure ops", failure)):
        if type(items) not in (tuple, list):
            raise InvalidArgument(f"txn {name} must be a tuple, got {type(items).__name__}")
    assert isinstance(compare, (tuple, list)) and isinstance(success, (tuple, list))
    assert isinstance(failure, (tuple, list))
    return [[_compare_wire(c) for c in compare], [_op_wire(o, depth) for o in success],
            [_op_wire(o, depth) for o in failure]]


def _op_wire(o: object, depth: int) -> list[Any]:
    if type(o) is not Op:
        raise InvalidArgument(f"a txn op must be a dengine.Op, got {type(o).__name__}")
    if o.kind not in OP_KINDS:
        raise InvalidArgument(f"unknown txn op {o.kind!r}; known: {', '.join(OP_KINDS)}")
    _check_bytes("op key", o.key)
    _check_bytes("op value", o.value)
    if o.end is not None:
        _check_bytes("op end", o.end)
    _check_int("op lease", o.lease)
    _check_int("op limit", o.limit, optional=True)
    _check_int("op ttl_ms", o.ttl_ms, optional=True)
    wire = [OP_KINDS.index(o.kind), o.key, o.value, o.end, o.lease, o.limit, o.ttl_ms]
    body = o.txn
    if o.kind != "txn":
        if body is not None:
            raise InvalidArgument(f"a {o.kind} op carries no nested txn")
        return wire
    if depth >= MAX_TXN_DEPTH:
        raise InvalidArgument(f"txn nesting is deeper than the limit of {MAX_TXN_DEPTH}")
    if not isinstance(body, (tuple, list)) or len(body) != 3:
        raise InvalidArgument("a nested txn op must hold a (compares, success ops, failure ops) tuple")
    wire.append(_txn_body_wire(body[0], body[1], body[2], depth + 1))
    return wire


def command_size(cmd: Command) -> int:
    """Roughly the bytes ``cmd`` adds to the log (flow control)."""
    if isinstance(cmd, Put):
        return len(cmd.key) + len(cmd.value) + 16
    if isinstance(cmd, CompareAndSwap):
        return len(cmd.key) + len(cmd.new) + len(cmd.expected or b"") + 16
    if isinstance(cmd, Delete):
        return len(cmd.key) + 8
    if isinstance(cmd, ExpireKeys):
        return sum(len(k) + 8 for k, _ in cmd.keys)
    if isinstance(cmd, Txn):
        return _txn_size(cmd.compare, cmd.success, cmd.failure)
    return 64


def _txn_size(compare: tuple[Compare, ...], success: tuple[Op, ...], failure: tuple[Op, ...]) -> int:
    size = 16 + sum(len(c.key) + 16 + (len(c.operand) if isinstance(c.operand, bytes) else 0) for c in compare)
    for o in (*success, *failure):
        body = o.txn
        size += len(o.key) + len(o.value) + 16 + (_txn_size(*body) if body is not None else 0)
    return size


def encode_batch(commands: Iterable[Command], now_ms: int) -> bytes:
    """Encode commands stamped with the leader's ``now_ms`` as one entry payload."""
    _check_int("now_ms", now_ms)
    wire = [_wire(cmd) for cmd in commands]
    if not wire:
        raise InvalidArgument("a batch needs at least one command")
    packed: bytes = msgpack.packb([FORMAT_VERSION, now_ms, wire], use_bin_type=True)
    return packed


def encode_command(cmd: Command, now_ms: int) -> bytes:
    """Encode a single command as an entry payload (a batch of one)."""
    return encode_batch((cmd,), now_ms)


# --------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return type(value) is int and 0 <= value <= _INT64_MAX


def _is_opt_int(value: object) -> bool:
    return value is None or _is_int(value)


def _from_wire(raw: object) -> Command:
    if type(raw) is not list or not raw:
        raise MalformedMessage("KV command must be a non-empty array")
    tag, args = raw[0], raw[1:]
    if tag == _TAG_PUT and type(tag) is int and len(args) in (3, 4):
        key, value, ttl = args[:3]
        lease = args[3] if len(args) == 4 else 0
        if type(key) is bytes and type(value) is bytes and _is_opt_int(ttl) and _is_int(lease):
            return Put(key, value, ttl, lease)
    elif tag == _TAG_DELETE and type(tag) is int and len(args) == 1:
        if type(args[0]) is bytes:
            return Delete(args[0])
    elif tag == _TAG_CAS and type(tag) is int and len(args) == 4:
        key, expected, new, ttl = args
        if (
            type(key) is bytes
            and (expected is None or type(expected) is bytes)
            and type(new) is bytes
            and _is_opt_int(ttl)
        ):
            return CompareAndSwap(key, expected, new, ttl)
    elif tag == _TAG_EXPIRE and type(tag) is int and len(args) == 1:
        return _expire_from_wire(args[0])
    elif tag == _TAG_GRANT and type(tag) is int and len(args) == 2:
        if _is_int(args[0]) and _is_int(args[1]):
            return LeaseGrant(args[0], args[1])
    elif tag == _TAG_REVOKE and type(tag) is int and len(args) == 1:
        if _is_int(args[0]):
            return LeaseRevoke(args[0])
    elif tag == _TAG_TXN and type(tag) is int and len(args) == 3:
        return _txn_from_wire(*args)
    else:
        raise MalformedMessage(f"unknown KV command tag {tag!r} with {len(args)} fields")
    raise MalformedMessage(f"KV command with tag {tag!r} has fields of the wrong type")


def _txn_from_wire(compare: object, success: object, failure: object) -> Txn:
    try:
        return Txn(*_txn_body_from_wire(compare, success, failure, 0))
    except (InvalidArgument, TypeError, ValueError) as exc:
        raise MalformedMessage(f"txn has an invalid part: {exc}") from None


def _txn_body_from_wire(
    compare: object, success: object, failure: object, depth: int,
) -> tuple[tuple[Compare, ...], tuple[Op, ...], tuple[Op, ...]]:
    if type(compare) is not list or type(success) is not list or type(failure) is not list:
        raise MalformedMessage("txn body must be three arrays: compares, success ops, failure ops")
    return (tuple(_compare_from_wire(c) for c in compare), tuple(_op_from_wire(o, depth) for o in success),
            tuple(_op_from_wire(o, depth) for o in failure))


def _compare_from_wire(raw: object) -> Compare:
    if type(raw) is not list or len(raw) != 4 or not _is_int(raw[0]) or not _is_int(raw[2]):
        raise MalformedMessage("a txn compare must be [target, key, operator, operand]")
    target, key, op, operand = raw
    if target >= len(COMPARE_TARGETS) or op >= len(COMPARE_OPS) or type(key) is not bytes:
        raise MalformedMessage("a txn compare has an unknown target or operator, or a key that is not bytes")
    return Compare(key, COMPARE_TARGETS[target], COMPARE_OPS[op], operand)


def _op_from_wire(raw: object, depth: int) -> Op:
    if type(raw) is not list or not _is_int(raw[0] if raw else None) or raw[0] >= len(OP_KINDS):
        raise MalformedMessage("a txn op must be [kind, key, value, end, lease, limit, ttl_ms]")
    nested = raw[0] == _KIND_TXN
    if len(raw) != (8 if nested else 7):
        raise MalformedMessage("a txn op must be [kind, key, value, end, lease, limit, ttl_ms], "
                               "and a nested txn op [..., ttl_ms, [compares, success, failure]]")
    key, value, end, lease, limit, ttl = raw[1:7]
    if (type(key) is not bytes or type(value) is not bytes or not (end is None or type(end) is bytes)
            or not _is_int(lease) or not _is_opt_int(limit) or not _is_opt_int(ttl)):
        raise MalformedMessage("a txn op has fields of the wrong type")
    body = None
    if nested:
        if depth >= MAX_TXN_DEPTH:
            raise MalformedMessage(f"txn nesting is deeper than the limit of {MAX_TXN_DEPTH}")
        if type(raw[7]) is not list or len(raw[7]) != 3:
            raise MalformedMessage("a nested txn op's body must be [compares, success ops, failure ops]")
        body = _txn_body_from_wire(raw[7][0], raw[7][1], raw[7][2], depth + 1)
    return Op(OP_KINDS[raw[0]], key, value, end, lease, limit, ttl, txn=body)


def _expire_from_wire(flat: object) -> ExpireKeys:
    if type(flat) is not list or len(flat) % 2:
        raise MalformedMessage("expire-keys body must be an array of key, stamp pairs")
    keys = flat[0::2]
    stamps = flat[1::2]
    if not all(type(k) is bytes for k in keys) or not all(_is_int(s) for s in stamps):
        raise MalformedMessage("expire-keys body has fields of the wrong type")
    return ExpireKeys(tuple(zip(keys, stamps)))


def decode_batch(data: bytes) -> Batch:
    """Decode an entry payload; raise MalformedMessage on anything else."""
    try:
        raw = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise MalformedMessage(f"KV entry payload is not valid msgpack: {exc}") from None
    if type(raw) is not list or len(raw) != 3:
        raise MalformedMessage("KV entry payload must be [version, now_ms, commands]")
    version, now_ms, commands = raw
    if version != FORMAT_VERSION or type(version) is not int:
        raise MalformedMessage(f"unsupported KV entry format version {version!r}")
    if not _is_int(now_ms):
        raise MalformedMessage("KV entry stamp must be a non-negative int")
    if type(commands) is not list or not commands:
        raise MalformedMessage("KV entry must carry a non-empty array of commands")
    return Batch(now_ms, tuple(_from_wire(c) for c in commands))


def decode_command(data: bytes) -> tuple[Command, int]:
    """Decode a payload made by :func:`encode_command`: ``(command, now_ms)``.
    A payload with more than one command raises MalformedMessage."""
    batch = decode_batch(data)
    if len(batch.commands) != 1:
        raise MalformedMessage(f"expected one KV command, found {len(batch.commands)}")
    return batch.commands[0], batch.now_ms

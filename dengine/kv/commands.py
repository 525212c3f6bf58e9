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
      Put            [0, key, value, ttl_ms | nil]
      Delete         [1, key]
      CompareAndSwap [2, key, expected | nil, new, ttl_ms | nil]
      ExpireKeys     [3, [key, expire_at_ms, key, expire_at_ms, ...]]

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

from dengine.errors import InvalidArgument, MalformedMessage

__all__ = [
    "FORMAT_VERSION",
    "Batch",
    "Command",
    "CompareAndSwap",
    "Delete",
    "ExpireKeys",
    "Put",
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

_INT64_MAX = 2**63 - 1


@attrs.frozen(slots=True)
class Put:
    """Set ``key`` to ``value``. With ``ttl_ms`` the key expires at the
    entry's stamp + ``ttl_ms``; without it any earlier TTL is cleared."""

    key: bytes
    value: bytes
    ttl_ms: int | None = None


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


Command = Union[Put, Delete, CompareAndSwap, ExpireKeys]


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
    raise InvalidArgument(f"not a KV command: {kind.__name__}")


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
    return 64


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
    if tag == _TAG_PUT and type(tag) is int and len(args) == 3:
        key, value, ttl = args
        if type(key) is bytes and type(value) is bytes and _is_opt_int(ttl):
            return Put(key, value, ttl)
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
    else:
        raise MalformedMessage(f"unknown KV command tag {tag!r} with {len(args)} fields")
    raise MalformedMessage(f"KV command with tag {tag!r} has fields of the wrong type")


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

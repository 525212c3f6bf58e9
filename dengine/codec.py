"""msgpack <-> Raft values (entries, hard state, snapshots, peer messages).

Rules of the format (version 1):

* A top-level value is a msgpack array ``[version, tag, field1, field2, ...]``:
  ``version`` is :data:`CODEC_VERSION`, ``tag`` a small integer naming the
  class (see :data:`TAGS`), then the class's fields in declaration order.
  Compact arrays, never dicts keyed by strings: a heartbeat costs a dozen
  bytes, not a hundred.
* Nested values (the entries of an AppendEntries, the meta of a snapshot) are
  the same field arrays *without* version and tag: their type is known from
  their position.
* ``bytes`` stay msgpack ``bin`` (``use_bin_type=True``) and decode back to
  ``bytes`` (``raw=False``); ``None`` is nil; enums are their integer value;
  sets are sorted arrays (so an encoding is deterministic).
* The field count is exact. Adding a field is a new version, never a silent
  extension: an old node must not drop a field it does not understand.

Decoding takes untrusted bytes from the network: anything that is not exactly
a value of the expected shape raises :class:`~dengine.errors.MalformedMessage`
naming what was wrong -- never a bare ``ValueError``/``KeyError``/``TypeError``
from deep inside. Nothing here uses pickle or evaluates anything.

The ``*_to_obj`` / ``*_from_obj`` helpers convert to and from the plain
msgpack-ready structures; dengine.storage uses them to embed entries and hard
state in WAL records without encoding twice.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs
import msgpack

from dengine.errors import InvalidArgument, MalformedMessage
from dengine.raft.messages import (
    MESSAGE_TYPES,
    AppendEntries,
    AppendResponse,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    Snapshot,
    SnapshotMeta,
    TimeoutNow,
    TransferLeader,
    VoteResponse,
)

CODEC_VERSION = 1

# Largest unsigned integer msgpack can carry; terms, indexes and ids must fit.
_UINT64_MAX = 2**64 - 1

T = TypeVar("T")

# --------------------------------------------------------------------------
# msgpack boundary
# --------------------------------------------------------------------------


_packers = threading.local()


def pack(obj: Any) -> bytes:
    """msgpack-encode a plain structure with dengine's options. One Packer
    per thread, reused (``msgpack.packb`` builds one per call, which costs
    as much as the packing of a small message); a Packer resets its buffer
    after every call, failed or not."""
    try:
        packer = _packers.packer
    except AttributeError:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    packed: bytes = packer.pack(obj)
    return packed


def unpack(data: bytes | bytearray | memoryview, *, what: str = "message") -> Any:
    """msgpack-decode untrusted bytes; any failure is MalformedMessage."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedMessage(f"{what}: expected bytes, got {type(data).__name__}")
    try:
        # raw=False: str stays str (invalid UTF-8 is an error), bin stays bytes.
        # strict_map_key: only str/bytes map keys (we use no maps at all).
        # unpackb bounds array/map lengths by len(data), so a 5-byte input
        # cannot make us allocate a 4-billion-element list.
        return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises a zoo (ExtraData, FormatError,
        # StackError, ValueError, UnicodeDecodeError, ...); all mean "bad input".
        raise MalformedMessage(f"{what}: not valid msgpack ({type(exc).__name__}: {exc})") from exc


# --------------------------------------------------------------------------
# Field validators: obj -> python value, raising MalformedMessage
# --------------------------------------------------------------------------


def _uint(value: Any, name: str) -> int:
    # bool is an int subclass; a msgpack true is not a term.
    if type(value) is not int or value < 0 or value > _UINT64_MAX:
        raise MalformedMessage(f"field {name!r} must be a non-negative integer, got {_show(value)}")
    return value


def uint_from_obj(value: Any, name: str) -> int:
    """Validate a non-negative integer field (public for dengine.storage)."""
    return _uint(value, name)


def _opt_uint(value: Any, name: str) -> int | None:
    return None if value is None else _uint(value, name)


def _bool(value: Any, name: str) -> bool:
    if type(value) is not bool:
        raise MalformedMessage(f"field {name!r} must be a boolean, got {_show(value)}")
    return value


def _bytes(value: Any, name: str) -> bytes:
    if type(value) is not bytes:
        raise MalformedMessage(f"field {name!r} must be bytes, got {_show(value)}")
    return value


def _array(value: Any, name: str, length: int | None = None) -> list[Any]:
    if type(value) is not list:
        raise MalformedMessage(f"field {name!r} must be an array, got {_show(value)}")
    if length is not None and len(value) != length:
        raise MalformedMessage(f"field {name!r} must have {length} elements, got {len(value)}")
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


# --------------------------------------------------------------------------
# Nested values
# --------------------------------------------------------------------------


def entry_to_obj(entry: Entry) -> list[Any]:
    return [entry.index, entry.term, int(entry.type), entry.data]


def entry_from_obj(obj: Any, name: str = "entry") -> Entry:
    index, term, typ, data = _array(obj, name, 4)
    return Entry(
        _uint(index, f"{name}.index"),
        _uint(term, f"{name}.term"),
        _entry_type(typ, f"{name}.type"),
        _bytes(data, f"{name}.data"),
    )


_ENTRY_TYPES = {int(t): t for t in EntryType}


def entries_to_obj(entries: Sequence[Entry]) -> list[tuple[Any, ...]]:
    # Hot path of every WAL batch and AppendEntries: no int() on the enum
    # (msgpack packs an IntEnum as its integer), tuples pack like lists.
    return [(e.index, e.term, e.type, e.data) for e in entries]


def entries_from_obj(obj: Any, name: str = "entries") -> list[Entry]:
    items = _array(obj, name)
    return [entry_from_obj(item, f"{name}[{i}]") for i, item in enumerate(items)]


def hard_state_to_obj(hs: HardState) -> list[Any]:
    return [hs.term, hs.vote, hs.commit]


def hard_state_from_obj(obj: Any, name: str = "hard_state") -> HardState:
    term, vote, commit = _array(obj, name, 3)
    return HardState(
        term=_uint(term, f"{name}.term"),
        vote=_opt_uint(vote, f"{name}.vote"),
        commit=_uint(commit, f"{name}.commit"),
    )


def conf_state_to_obj(cs: ConfState) -> list[Any]:
    return [sorted(cs.voters), sorted(cs.learners)]


def conf_state_from_obj(obj: Any, name: str = "conf_state") -> ConfState:
    voters, learners = _array(obj, name, 2)
    v = frozenset(_uint(x, f"{name}.voters[]") for x in _array(voters, f"{name}.voters"))
    lr = frozenset(_uint(x, f"{name}.learners[]") for x in _array(learners, f"{name}.learners"))
    if v & lr:
        raise MalformedMessage(f"field {name!r}: voters and learners overlap: {sorted(v & lr)}")
    return ConfState(voters=v, learners=lr)


def snapshot_meta_to_obj(meta: SnapshotMeta) -> list[Any]:
    return [meta.index, meta.term, conf_state_to_obj(meta.conf_state)]


def snapshot_meta_from_obj(obj: Any, name: str = "meta") -> SnapshotMeta:
    index, term, cs = _array(obj, name, 3)
    return SnapshotMeta(
        index=_uint(index, f"{name}.index"),
        term=_uint(term, f"{name}.term"),
        conf_state=conf_state_from_obj(cs, f"{name}.conf_state"),
    )


def snapshot_to_obj(snap: Snapshot) -> list[Any]:
    return [snapshot_meta_to_obj(snap.meta), snap.data]


def snapshot_from_obj(obj: Any, name: str = "snapshot") -> Snapshot:
    meta, data = _array(obj, name, 2)
    return Snapshot(snapshot_meta_from_obj(meta, f"{name}.meta"), _bytes(data, f"{name}.data"))


def _bytes_tuple_to_obj(items: tuple[bytes, ...]) -> list[bytes]:
    return list(items)


def _bytes_tuple_from_obj(obj: Any, name: str) -> tuple[bytes, ...]:
    return tuple(_bytes(x, f"{name}[{i}]") for i, x in enumerate(_array(obj, name)))


def _entries_tuple_from_obj(obj: Any, name: str) -> tuple[Entry, ...]:
    return tuple(entries_from_obj(obj, name))


def _ident(value: Any) -> Any:
    return value


def _entry_type(value: Any, name: str) -> EntryType:
    if type(value) is not int or value not in _ENTRY_TYPES:
        raise MalformedMessage(f"field {name!r} must be one of {sorted(_ENTRY_TYPES)}, got {_show(value)}")
    return _ENTRY_TYPES[value]


def _uint_set(value: Any, name: str) -> frozenset[int]:
    return frozenset(_uint(x, f"{name}[]") for x in _array(value, name))


@attrs.frozen(slots=True, kw_only=True)
class SnapshotPart:
    """One frame of an InstallSnapshot sent over a byte stream.

    Not a Raft message: the TCP transport splits an InstallSnapshot into
    parts no larger than its frame size and the receiving transport joins
    them back before the core sees anything. Every part names the whole
    (``meta``, ``size``) and where it goes (``offset``); the part at offset
    0 starts a snapshot.
    """

    frm: int
    to: int
    term: int
    meta: SnapshotMeta
    size: int
    offset: int
    data: bytes


# --------------------------------------------------------------------------
# Top-level schema: tag -> (class, [(field, to_obj, from_obj)])
# --------------------------------------------------------------------------

_Field = tuple[str, Callable[[Any], Any], Callable[[Any, str], Any]]

_U: tuple[Callable[[Any], Any], Callable[[Any, str], Any]] = (_ident, _uint)
_B: tuple[Callable[[Any], Any], Callable[[Any, str], Any]] = (_ident, _bool)


def _f(name: str, conv: tuple[Callable[[Any], Any], Callable[[Any, str], Any]]) -> _Field:
    return (name, conv[0], conv[1])


_PEER = [_f("frm", _U), _f("to", _U), _f("term", _U)]

_SCHEMAS: dict[int, tuple[type, list[_Field]]] = {
    1: (Entry, [_f("index", _U), _f("term", _U), ("type", int, _entry_type),
                ("data", _ident, _bytes)]),
    2: (HardState, [_f("term", _U), ("vote", _ident, _opt_uint), _f("commit", _U)]),
    3: (ConfState, [("voters", sorted, _uint_set), ("learners", sorted, _uint_set)]),
    4: (SnapshotMeta, [_f("index", _U), _f("term", _U),
                       ("conf_state", conf_state_to_obj, conf_state_from_obj)]),
    5: (Snapshot, [("meta", snapshot_meta_to_obj, snapshot_meta_from_obj), ("data", _ident, _bytes)]),
    10: (AppendEntries, _PEER + [_f("prev_index", _U), _f("prev_term", _U),
                                 ("entries", entries_to_obj, _entries_tuple_from_obj), _f("commit", _U)]),
    11: (AppendResponse, _PEER + [_f("index", _U), _f("reject", _B), _f("reject_hint", _U),
                                  _f("hint_term", _U)]),
    12: (RequestVote, _PEER + [_f("last_index", _U), _f("last_term", _U), _f("pre_vote", _B),
                               _f("force", _B)]),
    13: (VoteResponse, _PEER + [_f("granted", _B), _f("pre_vote", _B)]),
    14: (InstallSnapshot, _PEER + [("snapshot", snapshot_to_obj, snapshot_from_obj)]),
    15: (Heartbeat, _PEER + [_f("commit", _U), _f("round", _U)]),
    16: (HeartbeatResponse, _PEER + [_f("round", _U)]),
    17: (ReadIndexRequest, _PEER + [("ctxs", _bytes_tuple_to_obj, _bytes_tuple_from_obj)]),
    18: (ReadIndexResponse, _PEER + [("ctxs", _bytes_tuple_to_obj, _bytes_tuple_from_obj),
                                     _f("index", _U), _f("reject", _B)]),
    19: (TimeoutNow, _PEER),
    20: (TransferLeader, _PEER + [_f("transferee", _U)]),
    21: (SnapshotPart, _PEER + [("meta", snapshot_meta_to_obj, snapshot_meta_from_obj), _f("size", _U),
                                _f("offset", _U), ("data", _ident, _bytes)]),
}


TAGS: dict[type, int] = {cls: tag for tag, (cls, _) in _SCHEMAS.items()}
"""Class -> wire tag. Tags never change meaning once released."""

assert all(cls in TAGS for cls in MESSAGE_TYPES), "every peer message needs a tag"


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def encode(value: Any) -> bytes:
    """Encode an Entry, HardState, ConfState, SnapshotMeta, Snapshot or peer
    message. Raises InvalidArgument for anything else or for a value that does
    not fit the format (e.g. a negative term)."""
    tag = TAGS.get(type(value))
    if tag is None:
        raise InvalidArgument(f"cannot encode a {type(value).__name__}: not a Raft value")
    _, fields = _SCHEMAS[tag]
    obj = [CODEC_VERSION, tag]
    obj.extend(to_obj(getattr(value, name)) for name, to_obj, _ in fields)
    try:
        return pack(obj)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgument(f"cannot encode {type(value).__name__}: {exc}") from exc


def decode(data: bytes | bytearray | memoryview, expect: type[T] | tuple[type, ...] | None = None) -> T:
    """Decode bytes produced by :func:`encode`.

    ``expect`` (a class or tuple of classes) restricts what is accepted; a
    valid value of another class is malformed *here*. Raises MalformedMessage
    for anything but a well-formed value of the current version.
    """
    obj = unpack(data)
    if type(obj) is not list or len(obj) < 2:
        raise MalformedMessage(f"message must be an array [version, tag, ...], got {_show(obj)}")
    version, tag = obj[0], obj[1]
    if version != CODEC_VERSION or type(version) is not int:
        raise MalformedMessage(f"unsupported codec version {_show(version)} (this node speaks {CODEC_VERSION})")
    schema = _SCHEMAS.get(tag) if type(tag) is int else None
    if schema is None:
        raise MalformedMessage(f"unknown message tag {_show(tag)}")
    cls, fields = schema
    if expect is not None:
        allowed = expect if isinstance(expect, tuple) else (expect,)
        if cls not in allowed:
            names = ", ".join(c.__name__ for c in allowed)
            raise MalformedMessage(f"expected {names}, got a {cls.__name__} (tag {tag})")
    values = obj[2:]
    if len(values) != len(fields):
        raise MalformedMessage(f"{cls.__name__} must have {len(fields)} fields, got {len(values)}")
    kwargs = {name: from_obj(v, name) for (name, _, from_obj), v in zip(fields, values)}
    if cls is ConfState and kwargs["voters"] & kwargs["learners"]:
        raise MalformedMessage(f"ConfState: voters and learners overlap: {sorted(kwargs['voters'] & kwargs['learners'])}")
    try:
        result = cls(**kwargs)
    except (TypeError, ValueError) as exc:  # an attrs validator added later
        raise MalformedMessage(f"invalid {cls.__name__}: {exc}") from exc
    return result  # type: ignore[no-any-return]


def encode_message(msg: Message) -> bytes:
    """Encode a peer message (one of MESSAGE_TYPES)."""
    if type(msg) not in MESSAGE_TYPES:
        raise InvalidArgument(f"{type(msg).__name__} is not a peer message")
    return encode(msg)


def decode_message(data: bytes | bytearray | memoryview) -> Message:
    """Decode a peer message; any other value or malformed bytes raise
    MalformedMessage."""
    return decode(data, MESSAGE_TYPES)


_WIRE_TYPES = (*MESSAGE_TYPES, SnapshotPart)


def decode_wire(data: bytes | bytearray | memoryview) -> Message | SnapshotPart:
    """Decode what a peer connection carries: a peer message or a
    :class:`SnapshotPart`; anything else raises MalformedMessage."""
    return decode(data, _WIRE_TYPES)


def _check_attrs_fields() -> None:
    # The schema must list every attrs field of every class, in order; a field
    # added to messages.py without a codec change would otherwise be dropped.
    for cls, fields in _SCHEMAS.values():
        names = [a.name for a in attrs.fields(cls)]
        assert names == [f[0] for f in fields], f"codec schema out of date for {cls.__name__}"


_check_attrs_fields()

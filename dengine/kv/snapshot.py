"""KV snapshots: the whole state machine at exactly one applied index.

Rules of this module:

* Taking a snapshot is two steps so the apply path only pays for a copy:
  ``image = store.freeze()`` (synchronous, a shallow copy) and, later and
  anywhere (e.g. a worker thread), ``encode_image(image)``.
* Layout (msgpack, bin type for bytes)::

      [SNAPSHOT_VERSION, applied_index, clock_ms,
       [key, value, revision, expire_at_ms | nil, create_revision, version, ...],  # keys ascending
       [max_member_id, [[node_id, peer | nil, client | nil], ...], [removed id, ...]],
       [next_lease_id, [lease_id, ttl_ms, ...], [key, lease_id, ...]]]

  Version 3 (before leases) has no sixth element and restores with none.
  Version 1 (before the member table) has no fifth element and restores
  with an empty table; versions 1 and 2 (before per-key history) have four
  fields per key and restore each key as created at its last write, at
  version 1.
* ``restore`` checks everything it reads (types, ascending unique keys) and
  raises :class:`~dengine.errors.MalformedMessage` on anything else; the
  caller decides whether that means a corrupt file or a misbehaving peer.
* ``restore(snapshot_bytes(s))`` equals ``s``: same applied index, log time,
  keys, values, revisions and expiries.
"""

from __future__ import annotations

import operator
import zlib
from collections.abc import Callable
from itertools import compress, islice
from typing import Any

import msgpack

from dengine.api import DEFAULT_MAX_KEY_SIZE, DEFAULT_MAX_VALUE_SIZE
from dengine.errors import MalformedMessage, StorageCorrupted
from dengine.kv.members import MemberTable
from dengine.kv.store import FrozenImage, KVStore

__all__ = [
    "SNAPSHOT_VERSION",
    "FrozenImage",
    "decode_image",
    "encode_image",
    "encode_snapshot_data",
    "restore",
    "snapshot_bytes",
    "unwrap_snapshot_data",
    "wrap_snapshot_data",
]

SNAPSHOT_VERSION = 4

_FIELDS = 6  # key, value, revision, expire_at, create_revision, version
_FIELDS_V2 = 4  # key, value, revision, expire_at


# Keys packed per msgpack call. msgpack holds the GIL for a whole call, so one
# call over a million keys stalls every other thread (the event loop) for
# about a second; a chunk of this many takes about 2 ms (list + pack) on a
# small VM.
_CHUNK_KEYS = 2048


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _image_parts(image: FrozenImage, pause: Callable[[], object] | None = None) -> list[bytes]:
    """The encoding of ``image`` in pieces whose concatenation is exactly
    ``msgpack.packb`` of the whole layout, packed a chunk of keys at a time;
    ``pause`` (if given) is called after each chunk."""
    packer = msgpack.Packer(use_bin_type=True)
    pack = packer.pack
    values = image.values
    revisions = image.revisions
    expire_at = image.expire_at.get
    created = image.created.get
    versions = image.versions.get
    keys = image.keys
    parts: list[bytes] = [
        _array_header(6), pack(SNAPSHOT_VERSION), pack(image.applied_index), pack(image.clock_ms),
        _array_header(_FIELDS * len(keys)),
    ]
    for start in range(0, len(keys), _CHUNK_KEYS):
        flat: list[Any] = []
        append = flat.append
        for key in keys[start : start + _CHUNK_KEYS]:
            revision = revisions[key]
            append(key)
            append(values[key])
            append(revision)
            append(expire_at(key))
            append(created(key, revision))
            append(versions(key, 1))
        # The chunk packed as an array, without that array's header: its
        # items continue the one big array announced above. A bytes slice
        # (a copy of one chunk), not a memoryview: bytes.join lets go of the
        # GIL while it copies only when every piece is bytes, and the join
        # of a whole image takes ~120 ms at a million keys.
        parts.append(pack(flat)[len(_array_header(len(flat))):])
        if pause is not None:
            pause()
    leases: list[Any] = []
    for lease_id, ttl_ms in sorted(image.leases.items()):
        leases += (lease_id, ttl_ms)
    attached: list[Any] = []
    for key, lease_id in sorted(image.key_lease.items()):
        attached += (key, lease_id)
    parts.append(pack(image.members.to_wire()))
    parts.append(pack([image.next_lease, leases, attached]))
    return parts


def encode_image(image: FrozenImage, pause: Callable[[], object] | None = None) -> bytes:
    """Encode a frozen image (may run off the apply path, in a worker thread:
    it lets go of the GIL between chunks of keys, and calls ``pause`` after
    each, e.g. dengine.runtime.node.pace_encoding)."""
    return b"".join(_image_parts(image, pause))


# A Raft snapshot's data is the KV image wrapped with a CRC32, so a corrupted
# snapshot from a peer (or a disk) is refused before it replaces anything.
def wrap_snapshot_data(image: bytes) -> bytes:
    return zlib.crc32(image).to_bytes(4, "big") + image


def encode_snapshot_data(image: FrozenImage, pause: Callable[[], object] | None = None) -> bytes:
    """``wrap_snapshot_data(encode_image(image))`` with one copy of the bytes,
    not two. In a worker thread, ``pause`` (e.g. a short ``time.sleep``) lets
    the event loop have the GIL between chunks of keys (docs/benchmarks.md,
    "Issue 17: the last round")."""
    parts = _image_parts(image, pause)
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    return b"".join([crc.to_bytes(4, "big"), *parts])


def unwrap_snapshot_data(data: bytes, *, source: str) -> bytes:
    if len(data) < 4:
        raise StorageCorrupted(f"{source}: snapshot data is {len(data)} bytes, too short", path=source, offset=0)
    image = data[4:]
    if zlib.crc32(image).to_bytes(4, "big") != data[:4]:
        raise StorageCorrupted(f"{source}: snapshot checksum mismatch", path=source, offset=0)
    return image


def snapshot_bytes(store: KVStore) -> bytes:
    """Freeze and encode in one step."""
    return encode_image(store.freeze())


def _is_uint(value: object) -> bool:
    return type(value) is int and value >= 0


def _is_not_none(value: object) -> bool:
    return value is not None


def _all_of_type(values: list[Any], cls: type) -> bool:
    return not values or set(map(type, values)) == {cls}


def _all_uints(values: list[Any]) -> bool:
    # type() is exact: a bool is not an int here.
    return _all_of_type(values, int) and (not values or min(values) >= 0)


def decode_image(data: bytes) -> FrozenImage:
    """Parse snapshot bytes into an image; raise MalformedMessage if invalid."""
    try:
        raw = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise MalformedMessage(f"KV snapshot is not valid msgpack: {exc}") from None
    if type(raw) is not list or len(raw) not in (4, 5, 6):
        raise MalformedMessage("KV snapshot must be [version, applied_index, clock_ms, entries, members, leases]")
    version = raw[0]
    fields_of = {1: 4, 2: 5, 3: 5, SNAPSHOT_VERSION: 6}
    if type(version) is not int or fields_of.get(version) != len(raw):
        raise MalformedMessage(f"unsupported KV snapshot version {version!r} (or a layout not of that version)")
    _, applied, clock, flat = raw[:4]
    try:
        members = MemberTable.from_wire(raw[4]) if version >= 2 else MemberTable()
    except ValueError as exc:
        raise MalformedMessage(f"KV snapshot: {exc}") from None
    if not _is_uint(applied) or not _is_uint(clock):
        raise MalformedMessage("KV snapshot index and clock must be non-negative ints")
    fields = _FIELDS if version >= 3 else _FIELDS_V2
    if type(flat) is not list or len(flat) % fields:
        raise MalformedMessage(f"KV snapshot entries must be groups of {fields} fields")
    keys: list[bytes] = flat[0::fields]
    vals = flat[1::fields]
    revs = flat[2::fields]
    exps = flat[3::fields]
    created = flat[4::fields] if version >= 3 else revs
    versions = flat[5::fields] if version >= 3 else [1] * len(keys)
    del flat
    raw[3] = None  # the slices hold the items now
    # Checked a column at a time, in C where possible: a million keys are a
    # few hundred milliseconds, not seconds.
    if not _all_uints(created) or not _all_uints(versions):
        raise MalformedMessage("KV snapshot create revisions and versions must be non-negative ints")
    if not _all_of_type(keys, bytes) or not _all_of_type(vals, bytes):
        raise MalformedMessage("KV snapshot keys and values must be bytes")
    stamps = [e for e in exps if e is not None]
    if not _all_uints(revs) or not _all_uints(stamps):
        raise MalformedMessage("KV snapshot revisions and expiries must be non-negative ints")
    if not all(map(operator.lt, keys, islice(keys, 1, None))):
        raise MalformedMessage("KV snapshot keys must be strictly ascending")
    # The store keeps history only for keys not "created at their revision, version 1".
    history = [i for i, (c, r, v) in enumerate(zip(created, revs, versions)) if v != 1 or c != r]
    next_lease, leases, key_lease = _decode_leases(raw[5]) if version >= 4 else (1, {}, {})
    if not set(key_lease) <= set(keys):
        raise MalformedMessage("KV snapshot attaches a key it does not hold to a lease")
    return FrozenImage(
        applied_index=applied,
        clock_ms=clock,
        keys=keys,
        values=dict(zip(keys, vals)),
        revisions=dict(zip(keys, revs)),
        expire_at=dict(zip(compress(keys, map(_is_not_none, exps)), stamps)),
        members=members,
        created={keys[i]: created[i] for i in history},
        versions={keys[i]: versions[i] for i in history},
        leases=leases,
        key_lease=key_lease,
        next_lease=next_lease,
    )


def _decode_leases(raw: object) -> tuple[int, dict[int, int], dict[bytes, int]]:
    if type(raw) is not list or len(raw) != 3 or not _is_uint(raw[0]):
        raise MalformedMessage("KV snapshot leases must be [next_lease_id, leases, attached keys]")
    next_lease, flat, attached = raw
    if type(flat) is not list or len(flat) % 2 or not all(_is_uint(x) for x in flat):
        raise MalformedMessage("KV snapshot leases must be pairs of non-negative ints")
    leases = dict(zip(flat[0::2], flat[1::2]))
    if type(attached) is not list or len(attached) % 2:
        raise MalformedMessage("KV snapshot lease keys must be key, lease id pairs")
    key_lease = dict(zip(attached[0::2], attached[1::2]))
    if not all(type(k) is bytes for k in key_lease) or not all(v in leases for v in key_lease.values()):
        raise MalformedMessage("KV snapshot attaches a key to a lease it does not hold")
    return next_lease, leases, key_lease


def restore(
    data: bytes,
    *,
    max_key_size: int = DEFAULT_MAX_KEY_SIZE,
    max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
) -> KVStore:
    """A new store holding exactly the snapshot in ``data``."""
    return KVStore.from_image(
        decode_image(data), max_key_size=max_key_size, max_value_size=max_value_size, adopt=True
    )

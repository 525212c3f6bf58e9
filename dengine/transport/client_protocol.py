"""The client protocol: requests, responses and stream items (sans-IO).

Rules of the protocol (version 1; docs/protocol.md is the full text):

* A connection starts with the handshake of :mod:`dengine.transport.handshake`
  with ``kind = "client"``; then both sides send frames (``u32 BE length +
  msgpack body``) of the shapes below, and nothing else.
* A request is ``[request_id, op, args]``: ``request_id`` a non-negative
  integer chosen by the client, unique among that connection's requests
  still in flight; ``op`` a string from :data:`OPS`; ``args`` a map from
  string field names to values (fields not listed for the op are an error;
  optional fields may be left out or nil).
* A response is ``[request_id, status, body]`` with ``status`` one of
  ``"ok"`` (final; ``body`` is the op's result map), ``"error"`` (final;
  ``body`` is an error map) or ``"item"`` (one element of a stream; more
  follow). Unary ops get exactly one final response. Stream ops (``watch``,
  ``watch_leader``) get items, and end with a final response only when the
  server ends the stream; a stream the client cancels (``cancel``) ends
  with the cancel's own ``ok``. Responses to different requests may come
  in any order.
* A request the server can read the id of but not accept (unknown op,
  wrong field types, bad values) is answered with an ``"error"`` for that
  id; the connection stays open. A frame that is not msgpack, or not a
  request at all, is answered with ``[nil, "error", {...}]`` and the
  connection is closed: its framing can no longer be trusted.
* Errors are maps ``{"code": int, "message": str, "leader_id": int|nil,
  "leader_address": str|nil}``; codes are the stable ones of
  :class:`dengine.errors.ErrorCode`. ``leader_address`` is the leader's
  *client* address, when the server knows it.
* Bytes are msgpack ``bin``; text is msgpack ``str``; integers are
  non-negative unless said otherwise.

Decoding never trusts its input: every function that reads a message
raises :class:`~dengine.errors.MalformedMessage` (or
:class:`~dengine.errors.UnknownOperation`) naming the field, and
:class:`RequestError` carries the request id when it is known.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs

from dengine.api import (
    COMPARE_OPS,
    COMPARE_TARGETS,
    MAX_TXN_DEPTH,
    OP_KINDS,
    Compare,
    KeyValue,
    LeaderInfo,
    Lease,
    LeaseStatus,
    Op,
    TxnResult,
    Member,
    MembershipChange,
    ReadConsistency,
    ScanResult,
    Status,
    WatchEvent,
    WatchEventType,
)
from dengine.codec import pack, unpack
from dengine.errors import (
    DengineError,
    ErrorCode,
    InvalidArgument,
    MalformedMessage,
    NotLeader,
    ProtocolError,
    UnknownOperation,
    error_for_code,
)

__all__ = [
    "CANCEL",
    "OPS",
    "STATUS_ERROR",
    "STATUS_ITEM",
    "STATUS_OK",
    "STREAM_OPS",
    "WRITE_OPS",
    "OpSpec",
    "Request",
    "RequestError",
    "Response",
    "decode_error",
    "decode_leader",
    "decode_member",
    "decode_members",
    "decode_membership_change",
    "decode_request",
    "decode_response",
    "decode_status",
    "decode_watch_item",
    "encode_error",
    "encode_leader",
    "encode_member",
    "encode_membership_change",
    "encode_request",
    "encode_response",
    "encode_status",
    "encode_watch_event",
    "error_from_map",
]

STATUS_OK: Final = "ok"
STATUS_ERROR: Final = "error"
STATUS_ITEM: Final = "item"
_STATUSES = (STATUS_OK, STATUS_ERROR, STATUS_ITEM)
_UINT64_MAX = 2**64 - 1


# --------------------------------------------------------------------------
# Field types
# --------------------------------------------------------------------------


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bin(value: Any, name: str) -> bytes:
    if type(value) is not bytes:
        raise MalformedMessage(f"field {name!r} must be bytes (msgpack bin), got {_show(value)}")
    return value


def _bin_or_nil(value: Any, name: str) -> bytes | None:
    return None if value is None else _bin(value, name)


def _uint(value: Any, name: str) -> int:
    if type(value) is not int or not 0 <= value <= _UINT64_MAX:
        raise MalformedMessage(f"field {name!r} must be a non-negative integer, got {_show(value)}")
    return value


def _uint_or_nil(value: Any, name: str) -> int | None:
    return None if value is None else _uint(value, name)


def _bool(value: Any, name: str) -> bool:
    if type(value) is not bool:
        raise MalformedMessage(f"field {name!r} must be true or false, got {_show(value)}")
    return value


def _str(value: Any, name: str) -> str:
    if type(value) is not str:
        raise MalformedMessage(f"field {name!r} must be a string, got {_show(value)}")
    return value


def _str_or_nil(value: Any, name: str) -> str | None:
    return None if value is None else _str(value, name)


def _bin_list(value: Any, name: str) -> list[bytes]:
    if type(value) is not list:
        raise MalformedMessage(f"field {name!r} must be an array of bytes, got {_show(value)}")
    return [_bin(v, f"{name}[{i}]") for i, v in enumerate(value)]


def _list(value: Any, name: str) -> list[Any]:
    if type(value) is not list:
        raise MalformedMessage(f"field {name!r} must be an array, got {_show(value)}")
    return value


def _consistency(value: Any, name: str) -> ReadConsistency | None:
    if value is None:
        return None
    text = _str(value, name)
    try:
        return ReadConsistency(text)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in ReadConsistency)
        raise MalformedMessage(f"field {name!r} must be one of {allowed}, got {_show(value)}") from None


_Check = Callable[[Any, str], Any]


@attrs.frozen
class OpSpec:
    """One operation: its argument fields (name -> (check, required)),
    whether it streams, whether it writes, whether it reads (takes a
    ``consistency``)."""

    name: str
    fields: Mapping[str, tuple[_Check, bool]]
    stream: bool = False
    write: bool = False


_TIMEOUT: dict[str, tuple[_Check, bool]] = {"timeout_ms": (_uint_or_nil, False)}
_READ: dict[str, tuple[_Check, bool]] = {**_TIMEOUT, "consistency": (_consistency, False)}
_SCAN: dict[str, tuple[_Check, bool]] = {
    "limit": (_uint_or_nil, False), "keys_only": (_bool, False), "count_only": (_bool, False),
}

#: The operation table: every op a server accepts, with its argument fields.
OPS: Final[dict[str, OpSpec]] = {
    spec.name: spec
    for spec in (
        OpSpec("put", {"key": (_bin, True), "value": (_bin, True), "ttl_ms": (_uint_or_nil, False),
                       "lease": (_uint_or_nil, False), **_TIMEOUT},
               write=True),
        OpSpec("txn", {"compare": (_list, False), "success": (_list, False), "failure": (_list, False), **_TIMEOUT},
               write=True),
        OpSpec("lease_grant", {"ttl_ms": (_uint, True), "id": (_uint_or_nil, False), **_TIMEOUT}, write=True),
        OpSpec("lease_revoke", {"id": (_uint, True), **_TIMEOUT}, write=True),
        OpSpec("lease_keep_alive", {"id": (_uint, True), **_TIMEOUT}),
        OpSpec("lease_ttl", {"id": (_uint, True), "keys": (_bool, False), **_TIMEOUT}),
        OpSpec("lease_list", {**_TIMEOUT}),
        OpSpec("get", {"key": (_bin, True), **_READ}),
        OpSpec("get_many", {"keys": (_bin_list, True), **_READ}),
        OpSpec("delete", {"key": (_bin, True), **_TIMEOUT}, write=True),
        OpSpec(
            "cas",
            {"key": (_bin, True), "expected": (_bin_or_nil, False), "new": (_bin, True),
             "ttl_ms": (_uint_or_nil, False), **_TIMEOUT},
            write=True,
        ),
        OpSpec("scan_prefix", {"prefix": (_bin, True), **_SCAN, **_READ}),
        OpSpec("scan_range", {"start": (_bin, True), "end": (_bin_or_nil, False), **_SCAN, **_READ}),
        OpSpec(
            "watch",
            {"key": (_bin, True), "prefix": (_bool, False), "prev_kv": (_bool, False),
             "start_revision": (_uint_or_nil, False)},
            stream=True,
        ),
        OpSpec("cancel", {"request_id": (_uint, True)}),
        OpSpec("status", {**_TIMEOUT}),
        OpSpec("members", {**_TIMEOUT}),
        OpSpec("leader", {**_TIMEOUT}),
        OpSpec("watch_leader", {}, stream=True),
        OpSpec(
            "add_member",
            {"peer_address": (_str, True), "client_address": (_str_or_nil, False), "learner": (_bool, False),
             "node_id": (_uint_or_nil, False), **_TIMEOUT},
            write=True,
        ),
        OpSpec("promote_member", {"node_id": (_uint, True), **_TIMEOUT}, write=True),
        OpSpec("remove_member", {"node_id": (_uint, True), **_TIMEOUT}, write=True),
        OpSpec(
            "update_member",
            {"node_id": (_uint, True), "peer_address": (_str_or_nil, False), "client_address": (_str_or_nil, False),
             **_TIMEOUT},
            write=True,
        ),
        OpSpec("watch_members", {}, stream=True),
        OpSpec("snapshot", {**_TIMEOUT}, stream=True),
    )
}
CANCEL: Final = "cancel"
STREAM_OPS: Final = frozenset(n for n, s in OPS.items() if s.stream)
WRITE_OPS: Final = frozenset(n for n, s in OPS.items() if s.write)


# --------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------


@attrs.frozen(slots=True)
class Request:
    """A checked request: ``args`` holds every field of the op (absent
    optional fields as None; ``prefix``/``prev_kv`` default to False)."""

    id: int
    op: str
    args: dict[str, Any]


class RequestError(Exception):
    """A request that cannot be served. ``request_id`` is None when not even
    the id could be read (the connection must then be closed)."""

    def __init__(self, request_id: int | None, error: DengineError) -> None:
        super().__init__(str(error))
        self.request_id = request_id
        self.error = error


def encode_request(request_id: int, op: str, args: Mapping[str, Any]) -> bytes:
    """The body of a request frame. Fields whose value is None are left out."""
    return pack([request_id, op, {k: v for k, v in args.items() if v is not None}])


def decode_request(body: bytes) -> Request:
    """Parse and check one request body; raise RequestError."""
    try:
        obj = unpack(body, what="request")
    except MalformedMessage as exc:
        raise RequestError(None, exc) from None
    if type(obj) is not list or len(obj) != 3:
        raise RequestError(None, MalformedMessage(f"a request is [request_id, op, args], got {_show(obj)}"))
    raw_id, op, args = obj
    if type(raw_id) is not int or not 0 <= raw_id <= _UINT64_MAX:
        raise RequestError(None, MalformedMessage(f"a request id must be a non-negative integer, got {_show(raw_id)}"))
    try:
        if type(op) is not str:
            raise MalformedMessage(f"field 'op' must be a string, got {_show(op)}")
        spec = OPS.get(op)
        if spec is None:
            raise UnknownOperation(f"unknown operation {op!r}; known: {', '.join(sorted(OPS))}")
        if type(args) is not dict:
            raise MalformedMessage(f"the arguments of {op!r} must be a map, got {_show(args)}")
        out: dict[str, Any] = {}
        for name in args:
            if name not in spec.fields:
                raise MalformedMessage(f"{op!r} has no field {name!r}; its fields are {', '.join(spec.fields) or 'none'}")
        for name, (check, required) in spec.fields.items():
            if name not in args or (args[name] is None and check is not _bin_or_nil):
                if required:
                    raise MalformedMessage(f"{op!r} needs the field {name!r}")
                out[name] = None
                continue
            out[name] = check(args[name], name)
        if op == "watch":
            out["prefix"] = bool(out["prefix"])
            out["prev_kv"] = bool(out["prev_kv"])
    except DengineError as exc:
        raise RequestError(raw_id, exc) from None
    return Request(raw_id, op, out)


# --------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------


@attrs.frozen(slots=True)
class Response:
    """One response frame. ``id`` is None only for a connection-level error."""

    id: int | None
    status: str
    body: dict[str, Any]

    @property
    def final(self) -> bool:
        return self.status != STATUS_ITEM


def encode_response(request_id: int | None, status: str, body: Mapping[str, Any]) -> bytes:
    return pack([request_id, status, dict(body)])


def decode_response(body: bytes) -> Response:
    obj = unpack(body, what="response")
    if type(obj) is not list or len(obj) != 3:
        raise MalformedMessage(f"a response is [request_id, status, body], got {_show(obj)}")
    raw_id, status, payload = obj
    if raw_id is not None:
        _uint(raw_id, "request_id")
    if status not in _STATUSES:
        raise MalformedMessage(f"a response status must be one of {', '.join(_STATUSES)}, got {_show(status)}")
    if type(payload) is not dict:
        raise MalformedMessage(f"a response body must be a map, got {_show(payload)}")
    if raw_id is None and status != STATUS_ERROR:
        raise MalformedMessage("only an error response may have a nil request id")
    return Response(raw_id, status, payload)


def _field(body: Mapping[str, Any], name: str, check: _Check) -> Any:
    return check(body.get(name), name)


# -- errors -------------------------------------------------------------------


def encode_error(exc: DengineError, *, leader_address: str | None = None) -> dict[str, Any]:
    """The error map of ``exc``. For NotLeader, ``leader_address`` (the
    leader's client address) replaces the peer address the engine knows."""
    code = exc.code or ErrorCode.PROTOCOL_ERROR
    out: dict[str, Any] = {"code": code, "message": exc.message, "leader_id": None, "leader_address": None}
    if isinstance(exc, NotLeader):
        out["leader_id"] = exc.leader_id
        out["leader_address"] = leader_address
    return out


def decode_error(body: Mapping[str, Any]) -> tuple[int, str, int | None, str | None]:
    code = _field(body, "code", _uint)
    message = _field(body, "message", _str)
    return code, message, _field(body, "leader_id", _uint_or_nil), _field(body, "leader_address", _str_or_nil)


def error_from_map(body: Mapping[str, Any]) -> DengineError:
    """The dengine exception an error map stands for (its class chosen by code)."""
    code, message, leader_id, leader_address = decode_error(body)
    cls = error_for_code(code)
    if cls is NotLeader:
        return NotLeader(message, leader_id=leader_id, leader_address=leader_address)
    try:
        err = cls(message)
    except Exception:  # a class with another constructor: keep the code in the text
        err = ProtocolError(f"{message} (code {code})")
    if cls is DengineError:
        err = ProtocolError(f"{message} (unknown error code {code})")
    return err


# -- results --------------------------------------------------------------------


def encode_watch_event(event: WatchEvent) -> dict[str, Any]:
    body = {
        "type": int(event.type),
        "key": event.key,
        "value": event.value,
        "prev_value": event.prev_value,
        "revision": event.revision,
        "error": event.error,
    }
    if event.version:  # a PUT: the key's history after it
        body["create_revision"] = event.create_revision
        body["version"] = event.version
        body["lease"] = event.lease
    return body


def decode_watch_item(body: Mapping[str, Any]) -> WatchEvent | int:
    """A watch item: a WatchEvent, or (for the first item, ``{"created":
    true, "start_revision": n}``) the first revision the watch can deliver."""
    if body.get("created") is True:
        start_revision: int = _field(body, "start_revision", _uint)
        return start_revision
    raw_type = _field(body, "type", _uint)
    try:
        kind = WatchEventType(raw_type)
    except ValueError:
        raise MalformedMessage(f"unknown watch event type {raw_type}") from None
    return WatchEvent(
        type=kind,
        key=_field(body, "key", _bin),
        value=_field(body, "value", _bin),
        prev_value=_field(body, "prev_value", _bin_or_nil),
        revision=_field(body, "revision", _uint),
        error=_field(body, "error", _uint),
        create_revision=_field(body, "create_revision", _uint_or_nil) or 0,
        version=_field(body, "version", _uint_or_nil) or 0,
        lease=_field(body, "lease", _uint_or_nil) or 0,
    )


def encode_member(member: Member) -> dict[str, Any]:
    return {
        "node_id": member.node_id,
        "peer_address": member.peer_address,
        "client_address": member.client_address,
        "is_learner": member.is_learner,
    }


def _decode_member(obj: Any) -> Member:
    if type(obj) is not dict:
        raise MalformedMessage(f"a member must be a map, got {_show(obj)}")
    return Member(
        node_id=_field(obj, "node_id", _uint),
        peer_address=_field(obj, "peer_address", _str),
        client_address=_field(obj, "client_address", _str_or_nil),
        is_learner=_field(obj, "is_learner", _bool),
    )


def _member_list(body: Mapping[str, Any]) -> tuple[Member, ...]:
    raw = body.get("members")
    if type(raw) is not list:
        raise MalformedMessage(f"field 'members' must be an array, got {_show(raw)}")
    return tuple(_decode_member(m) for m in raw)


def encode_status(status: Status) -> dict[str, Any]:
    return {
        "node_id": status.node_id,
        "role": status.role,
        "term": status.term,
        "leader_id": status.leader_id,
        "commit_index": status.commit_index,
        "applied_index": status.applied_index,
        "last_snapshot_index": status.last_snapshot_index,
        "members": [encode_member(m) for m in status.members],
        "version": status.version,
        "db_size": status.db_size,
        "etcd_urls": status.etcd_urls,
    }


def decode_status(body: Mapping[str, Any]) -> Status:
    return Status(
        node_id=_field(body, "node_id", _uint),
        role=_field(body, "role", _str),
        term=_field(body, "term", _uint),
        leader_id=_field(body, "leader_id", _uint_or_nil),
        commit_index=_field(body, "commit_index", _uint),
        applied_index=_field(body, "applied_index", _uint),
        members=_member_list(body),
        last_snapshot_index=_field(body, "last_snapshot_index", _uint),
        # Absent from a server that predates them.
        version=_field(body, "version", _str_or_nil),
        db_size=_field(body, "db_size", _uint_or_nil),
        etcd_urls=_etcd_urls(body.get("etcd_urls")),
    )


def _etcd_urls(value: Any) -> dict[str, list[str]] | None:
    """A status's ``etcd_urls``: nil (or absent) or a map of face name -> URLs."""
    if value is None:
        return None
    if type(value) is not dict or not all(
        type(k) is str and type(v) is list and all(type(u) is str for u in v) for k, v in value.items()
    ):
        raise MalformedMessage(f"field 'etcd_urls' must be a map of strings to arrays of strings, got {_show(value)}")
    return {k: list(v) for k, v in value.items()}


def decode_members(body: Mapping[str, Any]) -> list[Member]:
    return list(_member_list(body))


def decode_member(body: Mapping[str, Any]) -> Member:
    return _decode_member(body.get("member"))


_CHANGE_KINDS = frozenset({"added_learner", "added_voter", "promoted", "removed", "updated"})


def encode_membership_change(change: MembershipChange) -> dict[str, Any]:
    return {"revision": change.revision, "kind": change.kind, "node_id": change.node_id,
            "members": [encode_member(m) for m in change.members]}


def decode_membership_change(body: Mapping[str, Any]) -> MembershipChange:
    kind = _field(body, "kind", _str)
    if kind not in _CHANGE_KINDS:
        raise MalformedMessage(f"field 'kind' must be one of {', '.join(sorted(_CHANGE_KINDS))}, got {_show(kind)}")
    return MembershipChange(revision=_field(body, "revision", _uint), kind=kind,
                            node_id=_field(body, "node_id", _uint), members=_member_list(body))


def encode_leader(info: LeaderInfo, client_address: str | None) -> dict[str, Any]:
    return {"leader_id": info.leader_id, "term": info.term, "client_address": client_address}


def decode_leader(body: Mapping[str, Any]) -> tuple[LeaderInfo, str | None]:
    info = LeaderInfo(leader_id=_field(body, "leader_id", _uint_or_nil), term=_field(body, "term", _uint))
    return info, _field(body, "client_address", _str_or_nil)


def decode_revision(body: Mapping[str, Any]) -> int:
    return _field(body, "revision", _uint)  # type: ignore[no-any-return]


def decode_flag(body: Mapping[str, Any], name: str) -> bool:
    return _field(body, name, _bool)  # type: ignore[no-any-return]


def decode_kv(key: bytes, body: Mapping[str, Any]) -> KeyValue | None:
    value = _field(body, "value", _bin_or_nil)
    if value is None:
        return None
    # create_revision / version / lease: 0 from a server that predates them.
    return KeyValue(key=key, value=value, revision=_field(body, "revision", _uint),
                    create_revision=_field(body, "create_revision", _uint_or_nil) or 0,
                    version=_field(body, "version", _uint_or_nil) or 0,
                    lease=_field(body, "lease", _uint_or_nil) or 0)


def encode_kv(kv: KeyValue | None) -> dict[str, Any]:
    """A ``get`` answer."""
    if kv is None:
        return {"value": None, "revision": 0}
    return {"value": kv.value, "revision": kv.revision, "create_revision": kv.create_revision,
            "version": kv.version, "lease": kv.lease}


def decode_value(body: Mapping[str, Any]) -> bytes | None:
    """The value of a ``get`` answer (None: no such key)."""
    value: bytes | None = _field(body, "value", _bin_or_nil)
    return value


def decode_values(body: Mapping[str, Any], count: int) -> list[bytes | None]:
    raw = body.get("values")
    if type(raw) is not list or len(raw) != count:
        raise MalformedMessage(f"field 'values' must be an array of {count} values, got {_show(raw)}")
    return [_bin_or_nil(v, f"values[{i}]") for i, v in enumerate(raw)]


def encode_scan(result: ScanResult) -> dict[str, Any]:
    """A scan answer: ``entries`` as ``[key, value]`` pairs and, in the same
    order, ``meta`` as ``[mod_revision, create_revision, version, lease]``."""
    return {"entries": [[kv.key, kv.value] for kv in result.entries],
            "meta": [[kv.revision, kv.create_revision, kv.version, kv.lease] for kv in result.entries],
            "revision": result.revision, "more": result.more, "count": result.count}


def decode_scan(body: Mapping[str, Any]) -> ScanResult:
    raw = body.get("entries")
    if type(raw) is not list:
        raise MalformedMessage(f"field 'entries' must be an array, got {_show(raw)}")
    meta = body.get("meta")
    if meta is not None and (type(meta) is not list or len(meta) != len(raw)):
        raise MalformedMessage(f"field 'meta' must be an array as long as 'entries', got {_show(meta)}")
    entries: list[KeyValue] = []
    for i, item in enumerate(raw):
        if type(item) is not list or len(item) != 2:
            raise MalformedMessage(f"entries[{i}] must be [key, value], got {_show(item)}")
        key, value = _bin(item[0], f"entries[{i}].key"), _bin(item[1], f"entries[{i}].value")
        if meta is None:  # a server that predates it
            entries.append(KeyValue(key, value))
            continue
        m = meta[i]
        if type(m) is not list or len(m) != 4 or not all(type(x) is int and x >= 0 for x in m):
            raise MalformedMessage(f"meta[{i}] must be [mod_revision, create_revision, version, lease], got {_show(m)}")
        entries.append(KeyValue(key, value, *m))
    more = body.get("more", False)
    if type(more) is not bool:
        raise MalformedMessage(f"field 'more' must be true or false, got {_show(more)}")
    # count: the number of entries from a server that predates it.
    count = _field(body, "count", _uint_or_nil)
    return ScanResult(entries=entries, revision=_field(body, "revision", _uint), more=more,
                      count=len(entries) if count is None else count)


# -- transactions and leases ---------------------------------------------------------


def encode_txn_request(compare: Any, success: Any, failure: Any) -> dict[str, Any]:
    """The ``txn`` arguments: compares as ``{"target", "key", "op",
    "value"}``, ops as ``{"op", "key", ...}``, a nested transaction as
    ``{"op": "txn", "compare", "success", "failure"}`` (docs/protocol.md)."""
    def op_map(o: Op) -> dict[str, Any]:
        if o.kind == "txn":
            body = o.txn
            assert body is not None, "a nested txn op without a body"
            return {"op": "txn", **encode_txn_request(*body)}
        out: dict[str, Any] = {"op": o.kind, "key": o.key}
        if o.kind == "put":
            out["value"] = o.value
            if o.lease:
                out["lease"] = o.lease
        if o.kind in ("delete_range", "scan"):
            out["end"] = o.end
        if o.limit is not None:
            out["limit"] = o.limit
        return out
    return {"compare": [{"target": c.target, "key": c.key, "op": c.op, "value": c.operand} for c in compare],
            "success": [op_map(o) for o in success], "failure": [op_map(o) for o in failure]}


def _map(value: Any, name: str) -> Mapping[str, Any]:
    if type(value) is not dict:
        raise MalformedMessage(f"{name} must be a map, got {_show(value)}")
    return value


def _only(body: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> None:
    for field in body:
        if field not in allowed:
            raise MalformedMessage(f"{name} has no field {field!r}; its fields are {', '.join(allowed)}")


def decode_txn_request(args: Mapping[str, Any]) -> tuple[list[Compare], list[Op], list[Op]]:
    """The compares and ops of ``txn`` arguments, checked (MalformedMessage
    for a wrong shape, InvalidArgument for a bad value), nested
    transactions included (at most :data:`~dengine.api.MAX_TXN_DEPTH` deep)."""
    return _decode_txn_body(args, 0, "")


def _decode_txn_body(args: Mapping[str, Any], depth: int, where: str) -> tuple[list[Compare], list[Op], list[Op]]:
    # ``depth``: how many txn ops enclose this body; ``where``: its path ("success[1].").
    lists: list[list[Any]] = []
    for field in ("compare", "success", "failure"):
        raw = args.get(field)
        lists.append([] if raw is None else _list(raw, where + field))
    compares: list[Compare] = []
    for i, raw in enumerate(lists[0]):
        name = f"{where}compare[{i}]"
        c = _map(raw, name)
        _only(c, name, ("target", "key", "op", "value"))
        target = _field(c, "target", _str)
        op = _field(c, "op", _str)
        if target not in COMPARE_TARGETS:
            raise InvalidArgument(f"{name}: unknown target {target!r}; known: {', '.join(COMPARE_TARGETS)}")
        if op not in COMPARE_OPS:
            raise InvalidArgument(f"{name}: unknown operator {op!r}; known: {', '.join(COMPARE_OPS)}")
        operand: Any = c.get("value")
        compares.append(Compare(_field(c, "key", _bin), target, op, operand))
    branches: list[list[Op]] = []
    for branch, items in (("success", lists[1]), ("failure", lists[2])):
        ops: list[Op] = []
        for i, raw in enumerate(items):
            name = f"{where}{branch}[{i}]"
            o = _map(raw, name)
            kind = _field(o, "op", _str)
            if kind == "txn":
                _only(o, name, ("op", "compare", "success", "failure"))
                if depth >= MAX_TXN_DEPTH:
                    raise InvalidArgument(f"txn nesting is deeper than the limit of {MAX_TXN_DEPTH}")
                nested = _decode_txn_body(o, depth + 1, name + ".")
                ops.append(Op("txn", b"", txn=(tuple(nested[0]), tuple(nested[1]), tuple(nested[2]))))
                continue
            _only(o, name, ("op", "key", "value", "end", "lease", "limit"))
            if kind not in OP_KINDS:
                raise InvalidArgument(f"{name}: unknown op {kind!r}; known: {', '.join(OP_KINDS)}")
            ops.append(Op(kind, _field(o, "key", _bin), value=_field(o, "value", _bin_or_nil) or b"",
                          end=_field(o, "end", _bin_or_nil), lease=_field(o, "lease", _uint_or_nil) or 0,
                          limit=_field(o, "limit", _uint_or_nil)))
        branches.append(ops)
    return compares, branches[0], branches[1]


def encode_txn_result(result: TxnResult, ops: Any) -> dict[str, Any]:
    """A ``txn`` answer: one response map per op run (``ops``: the branch
    that ran), in order: a put's ``{"revision"}``, a delete's
    ``{"deleted"}``, a get's answer, a scan's answer, a nested txn's
    answer (this same map, for the branch it ran)."""
    responses: list[dict[str, Any]] = []
    for op, r in zip(ops, result.responses):
        if op.kind == "scan":
            responses.append(encode_scan(r))
        elif op.kind == "get":
            responses.append(encode_kv(r))
        elif op.kind == "put":
            responses.append({"revision": r})
        elif op.kind == "txn":
            body = op.txn
            assert body is not None, "a nested txn op without a body"
            responses.append(encode_txn_result(r, body[1] if r.succeeded else body[2]))
        else:
            responses.append({"deleted": r})
    return {"succeeded": result.succeeded, "revision": result.revision, "responses": responses}


def decode_txn_result(body: Mapping[str, Any], success: Any, failure: Any) -> TxnResult:
    """A ``txn`` answer, read with the ops asked (``success``, ``failure``:
    the answer says which branch ran; a nested txn's answer is read with
    its own branches)."""
    return _decode_txn_result(body, success, failure, "")


def _decode_txn_result(body: Mapping[str, Any], success: Any, failure: Any, where: str) -> TxnResult:
    succeeded = _field(body, "succeeded", _bool)
    ops = list(success if succeeded else failure)
    raw = body.get("responses")
    if type(raw) is not list or len(raw) != len(ops):
        raise MalformedMessage(
            f"field '{where}responses' must be an array of {len(ops)} answers, got {_show(raw)}")
    responses: list[Any] = []
    for i, (op, r) in enumerate(zip(ops, raw)):
        name = f"{where}responses[{i}]"
        r = _map(r, name)
        if op.kind == "scan":
            responses.append(decode_scan(r))
        elif op.kind == "get":
            responses.append(decode_kv(op.key, r))
        elif op.kind == "txn":
            nested = op.txn
            assert nested is not None, "a nested txn op without a body"
            responses.append(_decode_txn_result(r, nested[1], nested[2], name + "."))
        else:
            responses.append(_field(r, "revision" if op.kind == "put" else "deleted", _uint))
    return TxnResult(succeeded, _field(body, "revision", _uint), responses)


def decode_lease(body: Mapping[str, Any]) -> Lease:
    return Lease(_field(body, "id", _uint), _field(body, "ttl_ms", _uint) / 1000)


def decode_remaining(body: Mapping[str, Any]) -> float:
    return _field(body, "ttl_ms", _uint) / 1000  # type: ignore[no-any-return]


def encode_lease_status(status: LeaseStatus) -> dict[str, Any]:
    return {"id": status.id, "granted_ttl_ms": round(status.granted_ttl * 1000),
            "remaining_ms": int(status.remaining * 1000), "keys": list(status.keys)}


def decode_lease_status(body: Mapping[str, Any]) -> LeaseStatus:
    return LeaseStatus(_field(body, "id", _uint), _field(body, "granted_ttl_ms", _uint) / 1000,
                       _field(body, "remaining_ms", _uint) / 1000, tuple(_field(body, "keys", _bin_list)))


def decode_leases(body: Mapping[str, Any]) -> list[Lease]:
    raw = body.get("leases")
    if type(raw) is not list:
        raise MalformedMessage(f"field 'leases' must be an array, got {_show(raw)}")
    out: list[Lease] = []
    for i, item in enumerate(raw):
        if type(item) is not list or len(item) != 2 or not all(type(x) is int and x >= 0 for x in item):
            raise MalformedMessage(f"leases[{i}] must be [id, ttl_ms], got {_show(item)}")
        out.append(Lease(item[0], item[1] / 1000))
    return out

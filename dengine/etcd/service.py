"""etcd's v3 API on a dengine node: the one service both faces call.

The gRPC face (:mod:`dengine.etcd.grpc_server`) and the JSON gateway
(:mod:`dengine.etcd.gateway`) decode a request into etcd's message (see
:mod:`dengine.etcd.schema`), call the method of :class:`EtcdService` that
:data:`RPCS` names for it, and encode what it returns; everything etcd-shaped
is decided here, once, in trio, on the loop that owns the engine.

Rules of this module (docs/etcd-compatibility.md is the user's view):

* Revisions are dengine's: the Raft index of the entry that made a change.
  They only grow, and they have gaps (etcd counts one per write); clients
  that compare revisions or watch from ``revision + 1`` work unchanged. A
  response header's ``revision`` is the revision of the write, or for a read
  the applied index it was served at; ``raft_term`` the node's term;
  ``member_id`` the node id; ``cluster_id`` the first 8 bytes of the SHA-256
  of dengine's cluster id (a string).
* dengine keeps no history of values: a Range at an older ``revision`` than
  the current one is answered (with today's values) only if no key of the
  range changed since, as far as the watch history reaches back; otherwise
  it fails as etcd does for a compacted revision. ``Compact`` checks its
  revision and does nothing else (there is no history to drop).
* Writes and the leader-only lease calls go to the local engine; on a
  follower they are forwarded to the leader through ``forward`` (a dengine
  client of the cluster) when one is given, as etcd forwards proposals.
  Reads and watches are served by this node.
* Every dengine error becomes an :class:`EtcdError`: a gRPC status code and
  the message etcd clients match on (``"etcdserver: requested lease not
  found"``, ``"etcdserver: mvcc: required revision has been compacted"``,
  ...); what dengine does not do is ``UNIMPLEMENTED`` with a sentence
  saying so.
* Watch streams (:meth:`EtcdService.watch`) run every watch of a stream as
  a task of the stream's nursery, and never drop an event: a watch whose
  buffer overflows ends with ``canceled`` and a reason naming the revision
  to start again from. Lease keep-alive streams answer one renewal per
  request, TTL 0 for a lease that is gone (as etcd does).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import attrs
import trio

from dengine.api import MAX_TTL_SECONDS, Compare, KeyValue, Member, Op, ScanResult, TxnResult, WatchEvent, WatchEventType, prefix_end
from dengine.embedded import Engine
from dengine.errors import (
    DengineError,
    EngineStopped,
    ErrorCode,
    InvalidArgument,
    LeaseNotFound,
    MembershipChangeRefused,
    NotLeader,
    ResourceExhausted,
    Timeout,
    Unavailable,
    UsageError,
)
from dengine.etcd.schema import MESSAGES as M

log = logging.getLogger("dengine.etcd")

__all__ = ["RPCS", "EtcdError", "EtcdService", "Rpc", "etcd_error", "ETCD_API_VERSION"]

#: The etcd version dengine answers as (``Status.version``, ``GET /version``):
#: the API level it speaks, not dengine's own version.
ETCD_API_VERSION: Final = "3.5.0"

# gRPC status codes (names as grpc.StatusCode has them; numbers on the wire).
GRPC_CODES: Final = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9,
    "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14,
    "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}

_COMPACTED: Final = "etcdserver: mvcc: required revision has been compacted"
_FUTURE: Final = "etcdserver: mvcc: required revision is a future revision"
_NO_KEY: Final = "etcdserver: key is not provided"
_LEASE_NOT_FOUND: Final = "etcdserver: requested lease not found"
#: Most times a put with ignore_value/ignore_lease retries when the key changes under it.
_MAX_CAS_TRIES: Final = 16
#: A watch response with ``fragment`` asked is split above this many bytes of events.
FRAGMENT_BYTES: Final = 1 << 20
#: Most watches one stream may hold.
MAX_WATCHES_PER_STREAM: Final = 1000


class EtcdError(Exception):
    """An answer for an etcd client: a gRPC status ``code`` (a name of
    :data:`GRPC_CODES`) and the ``message`` etcd would send."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def number(self) -> int:
        return GRPC_CODES[self.code]


def unimplemented(what: str) -> EtcdError:
    return EtcdError("UNIMPLEMENTED", f"dengine: {what} is not supported (docs/etcd-compatibility.md)")


def etcd_error(exc: BaseException) -> EtcdError:
    """The etcd answer for an exception raised while serving a request."""
    if isinstance(exc, EtcdError):
        return exc
    if isinstance(exc, LeaseNotFound):
        return EtcdError("NOT_FOUND", _LEASE_NOT_FOUND)
    if isinstance(exc, NotLeader):
        if exc.leader_id is None:
            return EtcdError("UNAVAILABLE", "etcdserver: no leader")
        return EtcdError("UNAVAILABLE", "etcdserver: not leader")
    if isinstance(exc, Timeout):
        return EtcdError("UNAVAILABLE", "etcdserver: request timed out")
    if isinstance(exc, ResourceExhausted):
        return EtcdError("RESOURCE_EXHAUSTED", "etcdserver: too many requests")
    if isinstance(exc, EngineStopped):
        return EtcdError("UNAVAILABLE", "etcdserver: server stopped")
    if isinstance(exc, Unavailable):
        return EtcdError("UNAVAILABLE", f"etcdserver: {exc}")
    if isinstance(exc, InvalidArgument):
        text = str(exc)
        if "already exists" in text and text.startswith("lease"):
            return EtcdError("FAILED_PRECONDITION", "etcdserver: lease already exists")
        if "twice" in text or "more than once" in text:
            return EtcdError("INVALID_ARGUMENT", "etcdserver: duplicate key given in txn request")
        if "raft.max_txn_ops" in text:
            return EtcdError("INVALID_ARGUMENT", "etcdserver: too many operations in txn request")
        if "larger than the limit" in text:
            return EtcdError("INVALID_ARGUMENT", f"etcdserver: request is too large ({text})")
        return EtcdError("INVALID_ARGUMENT", f"etcdserver: {text}")
    if isinstance(exc, MembershipChangeRefused):
        return EtcdError("FAILED_PRECONDITION", f"etcdserver: {exc}")
    if isinstance(exc, UsageError):
        return EtcdError("INVALID_ARGUMENT", f"etcdserver: {exc}")
    if isinstance(exc, DengineError):
        return EtcdError("UNAVAILABLE", f"etcdserver: {exc}")
    log.exception("etcd request failed unexpectedly", exc_info=exc)
    return EtcdError("INTERNAL", f"dengine: internal error: {type(exc).__name__}")


@attrs.frozen
class Rpc:
    """One etcd RPC: the service method that serves it, its messages, whether
    it is a stream (both ways: Watch, LeaseKeepAlive) and its gateway path."""

    method: str
    request: str
    response: str
    stream: bool = False
    gateway: tuple[str, ...] = ()


#: Every RPC dengine serves, by gRPC path. Any other path of etcd's API is
#: answered UNIMPLEMENTED.
RPCS: Final[dict[str, Rpc]] = {
    "/etcdserverpb.KV/Range": Rpc("range", "RangeRequest", "RangeResponse", gateway=("/kv/range",)),
    "/etcdserverpb.KV/Put": Rpc("put", "PutRequest", "PutResponse", gateway=("/kv/put",)),
    "/etcdserverpb.KV/DeleteRange": Rpc("delete_range", "DeleteRangeRequest", "DeleteRangeResponse",
                                        gateway=("/kv/deleterange",)),
    "/etcdserverpb.KV/Txn": Rpc("txn", "TxnRequest", "TxnResponse", gateway=("/kv/txn",)),
    "/etcdserverpb.KV/Compact": Rpc("compact", "CompactionRequest", "CompactionResponse",
                                    gateway=("/kv/compaction",)),
    "/etcdserverpb.Watch/Watch": Rpc("watch", "WatchRequest", "WatchResponse", stream=True, gateway=("/watch",)),
    "/etcdserverpb.Lease/LeaseGrant": Rpc("lease_grant", "LeaseGrantRequest", "LeaseGrantResponse",
                                          gateway=("/lease/grant",)),
    "/etcdserverpb.Lease/LeaseRevoke": Rpc("lease_revoke", "LeaseRevokeRequest", "LeaseRevokeResponse",
                                           gateway=("/lease/revoke", "/kv/lease/revoke")),
    "/etcdserverpb.Lease/LeaseKeepAlive": Rpc("lease_keep_alive", "LeaseKeepAliveRequest",
                                              "LeaseKeepAliveResponse", stream=True, gateway=("/lease/keepalive",)),
    "/etcdserverpb.Lease/LeaseTimeToLive": Rpc("lease_time_to_live", "LeaseTimeToLiveRequest",
                                               "LeaseTimeToLiveResponse",
                                               gateway=("/lease/timetolive", "/kv/lease/timetolive")),
    "/etcdserverpb.Lease/LeaseLeases": Rpc("lease_leases", "LeaseLeasesRequest", "LeaseLeasesResponse",
                                           gateway=("/lease/leases", "/kv/lease/leases")),
    "/etcdserverpb.Cluster/MemberList": Rpc("member_list", "MemberListRequest", "MemberListResponse",
                                            gateway=("/cluster/member/list",)),
    "/etcdserverpb.Cluster/MemberAdd": Rpc("member_add", "MemberAddRequest", "MemberAddResponse",
                                           gateway=("/cluster/member/add",)),
    "/etcdserverpb.Cluster/MemberRemove": Rpc("member_remove", "MemberRemoveRequest", "MemberRemoveResponse",
                                              gateway=("/cluster/member/remove",)),
    "/etcdserverpb.Cluster/MemberUpdate": Rpc("member_update", "MemberUpdateRequest", "MemberUpdateResponse",
                                              gateway=("/cluster/member/update",)),
    "/etcdserverpb.Cluster/MemberPromote": Rpc("member_promote", "MemberPromoteRequest", "MemberPromoteResponse",
                                               gateway=("/cluster/member/promote",)),
    "/etcdserverpb.Maintenance/Status": Rpc("status", "StatusRequest", "StatusResponse",
                                            gateway=("/maintenance/status",)),
    "/etcdserverpb.Maintenance/Alarm": Rpc("alarm", "AlarmRequest", "AlarmResponse",
                                           gateway=("/maintenance/alarm",)),
    "/etcdserverpb.Maintenance/MoveLeader": Rpc("move_leader", "MoveLeaderRequest", "MoveLeaderResponse",
                                                gateway=("/maintenance/transfer-leadership",)),
}

#: etcd RPCs dengine does not serve, by gRPC path -> what to say (gateway path in brackets).
NOT_SERVED: Final[dict[str, tuple[str, str]]] = {
    "/etcdserverpb.Maintenance/Defragment": ("/maintenance/defragment", "defragment (dengine's storage "
                                             "needs none)"),
    "/etcdserverpb.Maintenance/Hash": ("/maintenance/hash", "hash"),
    "/etcdserverpb.Maintenance/HashKV": ("/maintenance/hashkv", "hashkv"),
    "/etcdserverpb.Maintenance/Snapshot": ("/maintenance/snapshot", "snapshot through the etcd API "
                                           "(use `dengine snapshot save`)"),
    "/etcdserverpb.Maintenance/Downgrade": ("/maintenance/downgrade", "downgrade"),
    "/v3lockpb.Lock/Lock": ("/lock/lock", "the v3lock service (clients' lock recipes over KV, Lease and "
                            "Watch work)"),
    "/v3lockpb.Lock/Unlock": ("/lock/unlock", "the v3lock service"),
    "/v3electionpb.Election/Campaign": ("/election/campaign", "the v3election service (clients' election "
                                        "recipes over KV, Lease and Watch work)"),
    "/v3electionpb.Election/Proclaim": ("/election/proclaim", "the v3election service"),
    "/v3electionpb.Election/Leader": ("/election/leader", "the v3election service"),
    "/v3electionpb.Election/Observe": ("/election/observe", "the v3election service"),
    "/v3electionpb.Election/Resign": ("/election/resign", "the v3election service"),
}


def not_served(path: str) -> EtcdError:
    """The answer for a gRPC path dengine does not serve."""
    entry = NOT_SERVED.get(path)
    if entry is not None:
        return unimplemented(entry[1])
    if path.startswith("/etcdserverpb.Auth/"):
        return unimplemented("authentication (users, roles)")
    return EtcdError("UNIMPLEMENTED", f"dengine: unknown method {path!r}")


# --------------------------------------------------------------------------
# Key ranges
# --------------------------------------------------------------------------


@attrs.frozen
class KeyRange:
    """etcd's ``key``/``range_end`` as dengine sees them: one key
    (``single``), ``[start, end)`` (``end`` None: no end), or nothing."""

    start: bytes
    end: bytes | None
    single: bool
    empty: bool = False


def key_range(key: bytes, range_end: bytes) -> KeyRange:
    if not key:
        raise EtcdError("INVALID_ARGUMENT", _NO_KEY)
    if not range_end:
        return KeyRange(key, None, True)
    if range_end == b"\0":
        return KeyRange(key, None, False)
    return KeyRange(key, range_end, False, empty=range_end <= key)


def _peer_address(urls: Sequence[str]) -> str:
    """The ``host:port`` of a member's one peer URL (``http://host:port``)."""
    if len(urls) != 1:
        raise EtcdError("INVALID_ARGUMENT", f"dengine: a member has exactly one peer URL, got {len(urls)}")
    url = urls[0]
    scheme, sep, rest = url.partition("://")
    address = rest if sep else url
    if sep and scheme not in ("http", "https") or not address or "/" in address.rstrip("/"):
        raise EtcdError("INVALID_ARGUMENT", f"dengine: a peer URL is http://host:port, got {url!r}")
    return address.rstrip("/")


def _member_id(value: int) -> int:
    if value <= 0:
        raise EtcdError("NOT_FOUND", "etcdserver: member not found")
    return value


def _kv(kv: KeyValue, keys_only: bool = False) -> Any:
    return M["KeyValue"](key=kv.key, value=b"" if keys_only else kv.value, create_revision=kv.create_revision,
                         mod_revision=kv.revision, version=kv.version, lease=kv.lease)


_SORT_KEYS: Final[dict[int, Callable[[KeyValue], Any]]] = {
    0: lambda kv: kv.key,
    1: lambda kv: kv.version,
    2: lambda kv: kv.create_revision,
    3: lambda kv: kv.revision,
    4: lambda kv: kv.value,
}


def _wants_all(req: Any) -> bool:
    """Whether a range must read every key before its limit applies (sorting
    other than by key ascending, or filters)."""
    target, order = req.sort_target, req.sort_order
    sorts = not (target == 0 and order in (0, 1))
    return sorts or bool(req.min_mod_revision or req.max_mod_revision or req.min_create_revision
                         or req.max_create_revision)


def range_response(req: Any, entries: Sequence[KeyValue], count: int, header: Any) -> Any:
    """A RangeResponse from every key of the range (or the first ``limit``
    + more) as etcd builds it: filter, sort, limit; ``count`` is the number
    of keys in the range before filters and limit."""
    kvs = list(entries)
    if req.min_mod_revision:
        kvs = [kv for kv in kvs if kv.revision >= req.min_mod_revision]
    if req.max_mod_revision:
        kvs = [kv for kv in kvs if kv.revision <= req.max_mod_revision]
    if req.min_create_revision:
        kvs = [kv for kv in kvs if kv.create_revision >= req.min_create_revision]
    if req.max_create_revision:
        kvs = [kv for kv in kvs if kv.create_revision <= req.max_create_revision]
    order = req.sort_order
    if order == 0 and req.sort_target != 0:
        order = 1  # etcd: a sort target without an order sorts ascending
    if order in (1, 2) and not (order == 1 and req.sort_target == 0):
        kvs.sort(key=_SORT_KEYS[req.sort_target], reverse=order == 2)
    more = False
    if req.limit > 0 and len(kvs) > req.limit:
        kvs = kvs[: req.limit]
        more = True
    if req.count_only:
        kvs = []
    return M["RangeResponse"](header=header, kvs=[_kv(kv, req.keys_only) for kv in kvs], more=more, count=count)


# --------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------

Send = Callable[[Any], Awaitable[None]]


class EtcdService:
    """etcd's KV, Watch, Lease, Cluster and Maintenance services over one
    engine. ``etcd_urls``: where this node serves the etcd API (its
    ``clientURLs``); ``forward``: a dengine client of the whole cluster for
    the calls only the leader can make (None: a follower answers "not
    leader")."""

    def __init__(self, engine: Engine, *, etcd_urls: Sequence[str] = (), forward: Any = None,
                 member_etcd_urls: Callable[[], Awaitable[dict[int, list[str]]]] | None = None) -> None:
        self.engine = engine
        self.etcd_urls = list(etcd_urls)
        self.forward = forward
        self._member_etcd_urls = member_etcd_urls
        self.cluster_id = int.from_bytes(hashlib.sha256(engine.config.cluster_id.encode()).digest()[:8], "big")
        self.member_id = engine.config.node_id

    # -- helpers ---------------------------------------------------------

    def header(self, revision: int | None = None) -> Any:
        if revision is None:
            revision = self.engine.applied_index
        return M["ResponseHeader"](cluster_id=self.cluster_id, member_id=self.member_id, revision=revision,
                                   raft_term=self.engine.current_term())

    async def _leader(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """``engine.client.<name>(...)``, forwarded to the leader when this node is not it."""
        try:
            return await getattr(self.engine.client, name)(*args, **kwargs)
        except NotLeader:
            if self.forward is None:
                raise
        return await getattr(self.forward, name)(*args, **kwargs)

    async def _txn(self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        result: TxnResult = await self._leader("txn", list(compare), list(success), list(failure))
        return result

    # -- KV --------------------------------------------------------------

    async def range(self, req: Any) -> Any:
        r = key_range(req.key, req.range_end)
        if req.revision < 0:
            raise EtcdError("OUT_OF_RANGE", _FUTURE if req.revision > 0 else _COMPACTED)
        consistency = "eventual" if req.serializable else "linearizable"
        client = self.engine.client
        if r.empty:
            scan = ScanResult(entries=[], revision=self.engine.applied_index, count=0)
        else:
            end = r.start + b"\0" if r.single else r.end
            limit = None if (_wants_all(req) or req.limit <= 0) else req.limit + 1  # +1: `more`
            scan = await client.scan_range(r.start, end, limit=limit, keys_only=req.keys_only,
                                           count_only=req.count_only and not _wants_all(req),
                                           consistency=consistency)
        revision = scan.revision
        if req.revision:
            self._check_revision(req.revision, revision, r)
        return range_response(req, scan.entries, scan.count, self.header(revision))

    def _check_revision(self, asked: int, current: int, r: KeyRange) -> None:
        """A read at an older revision is today's answer only if nothing in
        the range changed since (see the module rules)."""
        if asked > current:
            raise EtcdError("OUT_OF_RANGE", _FUTURE)
        if asked == current:
            return
        changes = self.engine._node.watch.changes_since(asked + 1)
        if changes is None:
            raise EtcdError("OUT_OF_RANGE", _COMPACTED)
        end = r.start + b"\0" if r.single else (r.end or b"\0")
        for ev in changes:
            if ev.revision <= current and r.start <= ev.key and (end == b"\0" or ev.key < end):
                raise EtcdError("OUT_OF_RANGE", _COMPACTED)

    async def put(self, req: Any) -> Any:
        if not req.key:
            raise EtcdError("INVALID_ARGUMENT", _NO_KEY)
        if req.ignore_value and req.value:
            raise EtcdError("INVALID_ARGUMENT", "etcdserver: value is provided")
        if req.ignore_lease and req.lease:
            raise EtcdError("INVALID_ARGUMENT", "etcdserver: lease is provided")
        if req.ignore_value or req.ignore_lease:
            return await self._put_keeping(req)
        if not req.prev_kv:
            revision = await self._leader("put", req.key, req.value, lease=req.lease)
            return M["PutResponse"](header=self.header(revision))
        result = await self._txn((), (Op.get(req.key), Op.put(req.key, req.value, lease=req.lease)))
        prev = result.responses[0]
        return M["PutResponse"](header=self.header(result.revision), prev_kv=_kv(prev) if prev else None)

    async def _put_keeping(self, req: Any) -> Any:
        """A put that keeps the key's value or lease: read it, then write it
        if it did not change meanwhile (a transaction), retried."""
        for _ in range(_MAX_CAS_TRIES):
            cur = await self.engine.client.get_kv(req.key)
            if cur is None:
                raise EtcdError("INVALID_ARGUMENT", "etcdserver: key not found")
            value = cur.value if req.ignore_value else req.value
            lease = cur.lease if req.ignore_lease else req.lease
            result = await self._txn((Compare.mod_revision(req.key) == cur.revision,),
                                     (Op.get(req.key), Op.put(req.key, value, lease=lease)))
            if result.succeeded:
                prev = result.responses[0]
                return M["PutResponse"](header=self.header(result.revision),
                                        prev_kv=_kv(prev) if req.prev_kv and prev else None)
        raise EtcdError("ABORTED", f"dengine: the key changed {_MAX_CAS_TRIES} times while a put kept its "
                                   "value or lease; try again")

    async def delete_range(self, req: Any) -> Any:
        r = key_range(req.key, req.range_end)
        if r.empty:
            return M["DeleteRangeResponse"](header=self.header(), deleted=0)
        ops = _delete_ops(r, req.prev_kv)
        result = await self._txn((), ops)
        return _delete_response(r, req.prev_kv, result.responses, self.header(result.revision))

    async def txn(self, req: Any) -> Any:
        compare = [_compare(c) for c in req.compare]
        plans_ok = [_plan(op) for op in req.success]
        plans_fail = [_plan(op) for op in req.failure]
        result = await self._txn(compare, [o for p in plans_ok for o in p.ops],
                                 [o for p in plans_fail for o in p.ops])
        response = _txn_response(result, plans_ok if result.succeeded else plans_fail)
        response.header.CopyFrom(self.header(result.revision))
        return response

    async def compact(self, req: Any) -> Any:
        current = self.engine.applied_index
        if req.revision > current:
            raise EtcdError("OUT_OF_RANGE", _FUTURE)
        return M["CompactionResponse"](header=self.header(current))

    # -- Lease -----------------------------------------------------------

    async def lease_grant(self, req: Any) -> Any:
        if req.TTL > MAX_TTL_SECONDS:
            raise EtcdError("OUT_OF_RANGE", "etcdserver: too large lease TTL")
        if req.ID < 0:
            raise EtcdError("INVALID_ARGUMENT", "etcdserver: lease ID must be positive")
        # As etcd: a TTL below the minimum (0 or less included) gets the minimum.
        ttl = max(float(req.TTL), self.engine.min_lease_ttl_ms / 1000)
        lease = await self._leader("grant_lease", ttl, lease_id=req.ID)
        return M["LeaseGrantResponse"](header=self.header(), ID=lease.id, TTL=math.ceil(lease.ttl))

    async def lease_revoke(self, req: Any) -> Any:
        if req.ID <= 0:
            raise EtcdError("NOT_FOUND", _LEASE_NOT_FOUND)
        await self._leader("revoke_lease", req.ID)
        return M["LeaseRevokeResponse"](header=self.header())

    async def lease_keep_alive_once(self, req: Any) -> Any:
        """One renewal of a keep-alive stream: TTL 0 when the lease is gone."""
        ttl = 0
        if req.ID > 0:
            try:
                ttl = math.ceil(await self._leader("keep_alive", req.ID))
            except LeaseNotFound:
                ttl = 0
        return M["LeaseKeepAliveResponse"](header=self.header(), ID=req.ID, TTL=ttl)

    async def lease_keep_alive(self, requests: trio.MemoryReceiveChannel[Any], send: Send) -> None:
        async for req in requests:
            await send(await self.lease_keep_alive_once(req))

    async def lease_time_to_live(self, req: Any) -> Any:
        if req.ID <= 0:
            return M["LeaseTimeToLiveResponse"](header=self.header(), ID=req.ID, TTL=-1)
        try:
            status = await self._leader("lease_time_to_live", req.ID, keys=req.keys)
        except LeaseNotFound:
            return M["LeaseTimeToLiveResponse"](header=self.header(), ID=req.ID, TTL=-1)
        return M["LeaseTimeToLiveResponse"](header=self.header(), ID=req.ID, TTL=int(status.remaining),
                                            grantedTTL=math.ceil(status.granted_ttl), keys=list(status.keys))

    async def lease_leases(self, req: Any) -> Any:
        leases = await self.engine.client.leases()
        return M["LeaseLeasesResponse"](header=self.header(), leases=[M["LeaseStatus"](ID=le.id) for le in leases])

    # -- Cluster and Maintenance -----------------------------------------------

    async def member_list(self, req: Any) -> Any:
        # etcd's Cluster service fills no revision in its header.
        return M["MemberListResponse"](header=self.header(0), members=await self._members())

    def _member(self, m: Member, others: dict[int, list[str]]) -> Any:
        scheme = "https" if self.engine.config.server.peer_tls else "http"
        urls = list(self.etcd_urls) if m.node_id == self.member_id else others.get(m.node_id, [])
        return M["Member"](ID=m.node_id, name=f"node-{m.node_id}", peerURLs=[f"{scheme}://{m.peer_address}"],
                           clientURLs=urls, isLearner=m.is_learner)

    async def _members(self) -> list[Any]:
        """Every member; ``clientURLs`` of this face's kind (the others' as they announce them)."""
        others = await self._member_etcd_urls() if self._member_etcd_urls is not None else {}
        return [self._member(m, others) for m in self.engine.members()]

    async def member_add(self, req: Any) -> Any:
        added = await self._leader("add_member", _peer_address(req.peerURLs), learner=req.isLearner)
        return M["MemberAddResponse"](header=self.header(), member=self._member(added, {}),
                                      members=await self._members())

    async def member_remove(self, req: Any) -> Any:
        await self._leader("remove_member", _member_id(req.ID))
        return M["MemberRemoveResponse"](header=self.header(), members=await self._members())

    async def member_update(self, req: Any) -> Any:
        await self._leader("update_member", _member_id(req.ID), peer_address=_peer_address(req.peerURLs))
        return M["MemberUpdateResponse"](header=self.header(), members=await self._members())

    async def member_promote(self, req: Any) -> Any:
        await self._leader("promote_member", _member_id(req.ID))
        return M["MemberPromoteResponse"](header=self.header(), members=await self._members())

    async def alarm(self, req: Any) -> Any:
        if req.action != 0:
            raise unimplemented("raising or clearing alarms (dengine raises none)")
        return M["AlarmResponse"](header=self.header())

    async def move_leader(self, req: Any) -> Any:
        if not self.engine.is_leader():
            raise EtcdError("FAILED_PRECONDITION", "etcdserver: not leader")
        await self.engine.transfer_leadership(_member_id(req.targetID))
        return M["MoveLeaderResponse"](header=self.header())

    async def status(self, req: Any) -> Any:
        engine = self.engine
        st = engine.status()
        health = engine.health()
        size = st.db_size or 0
        return M["StatusResponse"](
            header=self.header(st.applied_index), version=ETCD_API_VERSION, dbSize=size, dbSizeInUse=size,
            leader=st.leader_id or 0, raftIndex=st.commit_index, raftTerm=st.term,
            raftAppliedIndex=st.applied_index, errors=[] if health.healthy else [health.reason],
            isLearner=st.role == "learner",
        )

    # -- Watch -----------------------------------------------------------

    async def watch(self, requests: trio.MemoryReceiveChannel[Any], send: Send) -> None:
        """Serve one Watch stream: requests arrive on ``requests``; every
        response goes through ``send`` (which may block: backpressure)."""
        stream = _WatchStream(self, send)
        async with trio.open_nursery() as nursery:
            stream.nursery = nursery
            async for req in requests:
                await stream.handle(req)
            # The client closed its side: its watches go on (as in etcd) until it goes away.
            await trio.sleep_forever()


# --------------------------------------------------------------------------
# Transactions: etcd ops -> dengine ops and back
# --------------------------------------------------------------------------

_CMP_OPS: Final = {0: "==", 1: ">", 2: "<", 3: "!="}
#: etcd's compare targets -> dengine's (which are also the names of etcd's operand fields).
_CMP_TARGETS: Final = {0: "version", 1: "create_revision", 2: "mod_revision", 3: "value", 4: "lease"}


def _compare(c: Any) -> Compare:
    if c.range_end:
        raise unimplemented("a compare over a key range (range_end)")
    if not c.key:
        raise EtcdError("INVALID_ARGUMENT", _NO_KEY)
    target = _CMP_TARGETS.get(c.target)
    op = _CMP_OPS.get(c.result)
    if target is None or op is None:
        raise EtcdError("INVALID_ARGUMENT", f"etcdserver: unknown compare target {c.target} or result {c.result}")
    return Compare(c.key, target, op, getattr(c, target))


@attrs.frozen
class _Plan:
    """The dengine ops one etcd RequestOp becomes, and how to build its ResponseOp from their results."""

    ops: tuple[Op, ...]
    build: Callable[[Sequence[Any], Any], Any]


def _plan(op: Any) -> _Plan:
    kind = op.WhichOneof("request")
    if kind == "request_range":
        req = op.request_range
        r = key_range(req.key, req.range_end)
        if req.revision:
            raise unimplemented("a range at a revision inside a transaction")
        if r.empty:
            def build_empty(res: Sequence[Any], h: Any, req: Any = req) -> Any:
                return M["ResponseOp"](response_range=range_response(req, [], 0, h))
            return _Plan((), build_empty)
        if r.single:
            def build_get(res: Sequence[Any], h: Any, req: Any = req) -> Any:
                kv = res[0]
                kvs = [] if kv is None else [kv]
                return M["ResponseOp"](response_range=range_response(req, kvs, len(kvs), h))
            return _Plan((Op.get(r.start),), build_get)
        limit = None if (_wants_all(req) or req.limit <= 0) else req.limit + 1

        def build_scan(res: Sequence[Any], h: Any, req: Any = req) -> Any:
            scan: ScanResult = res[0]
            return M["ResponseOp"](response_range=range_response(req, scan.entries, scan.count, h))
        return _Plan((Op.scan_range(r.start, r.end, limit=limit),), build_scan)
    if kind == "request_put":
        req = op.request_put
        if not req.key:
            raise EtcdError("INVALID_ARGUMENT", _NO_KEY)
        if req.ignore_value or req.ignore_lease:
            raise unimplemented("ignore_value or ignore_lease inside a transaction")
        put = Op.put(req.key, req.value, lease=req.lease)
        if req.prev_kv:
            return _Plan((Op.get(req.key), put), lambda res, h: M["ResponseOp"](
                response_put=M["PutResponse"](header=h, prev_kv=_kv(res[0]) if res[0] else None)))
        return _Plan((put,), lambda res, h: M["ResponseOp"](response_put=M["PutResponse"](header=h)))
    if kind == "request_delete_range":
        req = op.request_delete_range
        r = key_range(req.key, req.range_end)
        if r.empty:
            return _Plan((), lambda res, h: M["ResponseOp"](
                response_delete_range=M["DeleteRangeResponse"](header=h)))
        def build_delete(res: Sequence[Any], h: Any, r: KeyRange = r, prev: bool = req.prev_kv) -> Any:
            return M["ResponseOp"](response_delete_range=_delete_response(r, prev, res, h))
        return _Plan(_delete_ops(r, req.prev_kv), build_delete)
    if kind == "request_txn":
        inner = op.request_txn
        ok = [_plan(o) for o in inner.success]
        bad = [_plan(o) for o in inner.failure]
        nested = Op.txn([_compare(c) for c in inner.compare], [o for p in ok for o in p.ops],
                        [o for p in bad for o in p.ops])

        def build_txn(res: Sequence[Any], h: Any, ok: list[_Plan] = ok, bad: list[_Plan] = bad) -> Any:
            result: TxnResult = res[0]
            return M["ResponseOp"](response_txn=_txn_response(result, ok if result.succeeded else bad))
        return _Plan((nested,), build_txn)
    raise EtcdError("INVALID_ARGUMENT", "etcdserver: a transaction op with no request")


def _txn_response(result: TxnResult, plans: Sequence[_Plan]) -> Any:
    """etcd's TxnResponse from dengine's result of the branch that ran
    (``plans``: its etcd ops); the op responses' headers carry only the
    revision, as etcd's do."""
    header = M["ResponseHeader"](revision=result.revision)
    responses = []
    at = 0
    for plan in plans:
        part = result.responses[at: at + len(plan.ops)]
        at += len(plan.ops)
        responses.append(plan.build(part, header))
    return M["TxnResponse"](header=header, succeeded=result.succeeded, responses=responses)


def _delete_ops(r: KeyRange, prev_kv: bool) -> tuple[Op, ...]:
    if r.single:
        delete = Op.delete(r.start)
        return (Op.get(r.start), delete) if prev_kv else (delete,)
    delete = Op.delete_range(r.start, r.end)
    return (Op.scan_range(r.start, r.end), delete) if prev_kv else (delete,)


def _delete_response(r: KeyRange, prev_kv: bool, res: Sequence[Any], header: Any) -> Any:
    deleted = int(res[-1])
    prev: list[Any] = []
    if prev_kv:
        first = res[0]
        if r.single:
            prev = [] if first is None else [_kv(first)]
        else:
            prev = [_kv(kv) for kv in first.entries]
    return M["DeleteRangeResponse"](header=header, deleted=deleted, prev_kvs=prev)


# --------------------------------------------------------------------------
# Watch streams
# --------------------------------------------------------------------------

_PUT: Final = 0
_DELETE: Final = 1


class _WatchStream:
    """The watches of one Watch stream (ids, tasks, cancels)."""

    def __init__(self, service: EtcdService, send: Send) -> None:
        self.service = service
        self.send = send
        self.nursery: trio.Nursery | None = None
        self.scopes: dict[int, trio.CancelScope] = {}
        self.next_id = 0

    async def handle(self, req: Any) -> None:
        kind = req.WhichOneof("request_union")
        svc = self.service
        if kind == "create_request":
            await self.create(req.create_request)
        elif kind == "cancel_request":
            wid = req.cancel_request.watch_id
            scope = self.scopes.pop(wid, None)
            if scope is not None:
                scope.cancel()
                await self.send(M["WatchResponse"](header=svc.header(), watch_id=wid, canceled=True))
        elif kind == "progress_request":
            await self.send(M["WatchResponse"](header=svc.header(), watch_id=-1))
        # An empty request is ignored, as etcd does.

    async def create(self, cr: Any) -> None:
        svc = self.service
        wid = cr.watch_id  # 0: pick one (etcd's AutoWatchID)
        if wid < 0 or (wid != 0 and wid in self.scopes):
            await self.send(M["WatchResponse"](header=svc.header(), watch_id=wid, created=True, canceled=True,
                                               cancel_reason="etcdserver: duplicate watch ID"))
            return
        if len(self.scopes) >= MAX_WATCHES_PER_STREAM:
            await self.send(M["WatchResponse"](header=svc.header(), watch_id=wid or -1, created=True, canceled=True,
                                               cancel_reason=f"dengine: at most {MAX_WATCHES_PER_STREAM} watches "
                                                             "per stream"))
            return
        if wid == 0:
            while self.next_id in self.scopes:
                self.next_id += 1
            wid = self.next_id
            self.next_id += 1
        try:
            r = key_range(cr.key, cr.range_end)
        except EtcdError as exc:
            await self.send(M["WatchResponse"](header=svc.header(), watch_id=wid, created=True, canceled=True,
                                               cancel_reason=exc.message))
            return
        scope = trio.CancelScope()
        self.scopes[wid] = scope
        assert self.nursery is not None
        await self.nursery.start(self._run, wid, cr, r, scope)

    async def _run(self, wid: int, cr: Any, r: KeyRange, scope: trio.CancelScope,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        svc = self.service
        client = svc.engine.client
        kwargs: dict[str, Any] = {"prev_kv": cr.prev_kv}
        if cr.start_revision > 0:
            kwargs["start_revision"] = cr.start_revision
        if r.single:
            key = r.start
        elif r.end is not None and r.end == prefix_end(r.start) and r.start.startswith(b"/") \
                and r.start.endswith(b"/"):
            key, kwargs["prefix"] = r.start, True  # dengine's indexed prefix watch
        else:
            key, kwargs["range_end"] = r.start, (r.end if r.end is not None else b"\0")
        no_put = _PUT in cr.filters
        no_delete = _DELETE in cr.filters
        started = False
        with scope:
            try:
                async with client.open_watch(key, **kwargs) as watch:
                    await self.send(M["WatchResponse"](header=svc.header(), watch_id=wid, created=True))
                    task_status.started()
                    started = True
                    await self._forward(wid, watch, cr, no_put, no_delete)
            except DengineError as exc:
                at_create = not started
                if at_create:
                    task_status.started()
                    started = True
                await self.send(M["WatchResponse"](header=svc.header(), watch_id=wid, created=at_create,
                                                   canceled=True, cancel_reason=etcd_error(exc).message))
        if not started:
            task_status.started()
        self.scopes.pop(wid, None)

    async def _forward(self, wid: int, watch: Any, cr: Any, no_put: bool, no_delete: bool) -> None:
        svc = self.service
        last = 0
        while True:
            try:
                first: WatchEvent = await watch.receive()
            except trio.EndOfChannel:
                return
            batch = [first]
            while watch.buffered and len(batch) < 1000:  # what is already there goes in one response
                batch.append(await watch.receive())
            events: list[Any] = []
            for ev in batch:
                if ev.type is WatchEventType.CANCELED:
                    if events:
                        await self._send_events(wid, events, last, cr.fragment)
                    await self._canceled(wid, ev, last)
                    return
                if ev.type is WatchEventType.PROGRESS:
                    if cr.progress_notify:
                        await self.send(M["WatchResponse"](header=svc.header(max(ev.revision, last)), watch_id=wid))
                    continue
                last = ev.revision
                if (ev.type is WatchEventType.PUT and no_put) or (ev.type is WatchEventType.DELETE and no_delete):
                    continue
                events.append(_event(ev, cr.prev_kv))
            if events:
                await self._send_events(wid, events, last, cr.fragment)

    async def _send_events(self, wid: int, events: list[Any], revision: int, fragment: bool) -> None:
        header = self.service.header(max(revision, self.service.engine.applied_index))
        if not fragment:
            await self.send(M["WatchResponse"](header=header, watch_id=wid, events=events))
            return
        chunk: list[Any] = []
        size = 0
        for i, ev in enumerate(events):
            n = ev.ByteSize()
            if chunk and size + n > FRAGMENT_BYTES:
                await self.send(M["WatchResponse"](header=header, watch_id=wid, events=chunk, fragment=True))
                chunk, size = [], 0
            chunk.append(ev)
            size += n
        await self.send(M["WatchResponse"](header=header, watch_id=wid, events=chunk))

    async def _canceled(self, wid: int, ev: WatchEvent, last: int) -> None:
        svc = self.service
        if ev.error == ErrorCode.COMPACTED:
            floor = svc.engine._node.watch.first_retained_revision
            await self.send(M["WatchResponse"](header=svc.header(), watch_id=wid, canceled=True,
                                               compact_revision=floor, cancel_reason=_COMPACTED))
            return
        if ev.error == ErrorCode.WATCH_BUFFER_OVERFLOW:
            reason = (f"dengine: the watcher fell behind and its buffer overflowed; watch again from revision "
                      f"{last + 1}")
        else:
            reason = f"dengine: the watch was canceled (error {ev.error})"
        await self.send(M["WatchResponse"](header=svc.header(), watch_id=wid, canceled=True, cancel_reason=reason))


def _event(ev: WatchEvent, prev_kv: bool) -> Any:
    if ev.type is WatchEventType.PUT:
        kv = M["KeyValue"](key=ev.key, value=ev.value, create_revision=ev.create_revision, mod_revision=ev.revision,
                           version=ev.version, lease=ev.lease)
        out = M["Event"](type=_PUT, kv=kv)
    else:
        out = M["Event"](type=_DELETE, kv=M["KeyValue"](key=ev.key, mod_revision=ev.revision))
    if prev_kv and ev.prev_value is not None:
        out.prev_kv.CopyFrom(M["KeyValue"](key=ev.key, value=ev.prev_value, create_revision=ev.prev_create_revision,
                                           mod_revision=ev.prev_revision, version=ev.prev_version,
                                           lease=ev.prev_lease))
    return out

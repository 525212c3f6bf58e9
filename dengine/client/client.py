"""The remote client: the embedded client's KV and watch interface, over TCP.

    async with dengine.open_client(["127.0.0.1:9081", "127.0.0.1:9082"]) as client:
        await client.put(b"k", b"v")
        async with client.open_watch(b"/services/", prefix=True) as watch:
            async for event in watch: ...

Rules of this client (docs/protocol.md, "Client behaviour"):

* It never imports the engine; it speaks docs/protocol.md to servers. It
  validates arguments with the same :mod:`dengine.api` validators as the
  embedded client (with the default size limits; the server checks its own)
  and raises the same exceptions.
* Every call has a deadline: ``timeout=`` of the call, else the client's.
  Within it the call is retried with capped exponential backoff and jitter,
  moving between endpoints: on connection failures, ``Unavailable``, and
  ``NotLeader`` (whose hint -- the leader's client address, or the endpoint
  the client saw that leader's id at -- is followed at once).
* Writes are retried only when they surely were not applied: the request
  was never written in full (the connection failed before or while it was
  sent), or the server answered ``NotLeader`` / ``ProposalDropped`` (the
  engine rejected it before it entered the log, or it was overwritten in
  the log). A write whose connection breaks after it was sent, or that
  gets ``Unavailable`` / ``Timeout``, raises ``Unavailable`` / ``Timeout``
  saying the outcome is unknown: it is never retried in a way that could
  apply it twice. Reads are retried on any cluster error.
* Writes and linearizable / lease reads go to the leader; eventual reads go
  to whichever server the client is connected to.
* Watches remember the next revision they owe the application (the last
  delivered revision + 1, or the watch's start). When the server of a watch
  goes away, the watch is re-opened on another server from that revision
  (no gap, no duplicate; CANCELED with COMPACTED if the revision is no
  longer retained). With ``auto_resume=False`` the watch ends with
  ``Unavailable`` instead.
* Everything the client opens lives in its nursery and is closed when the
  ``async with`` exits.
"""

from __future__ import annotations

import math
import random
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from dengine.transport.framing import DEFAULT_MAX_FRAME_SIZE
from dengine.api import (
    KeyValue,
    LeaderInfo,
    Member,
    ReadConsistency,
    ScanResult,
    Status,
    WatchEvent,
    WatchEventType,
    validate_key,
    validate_prefix,
    validate_scan_prefix,
    validate_ttl,
    validate_value,
)
from dengine.config import DEFAULT_CLUSTER_ID, parse_address
from dengine.errors import (
    ClusterError,
    DengineError,
    InvalidArgument,
    LeaderChanged,
    NotLeader,
    ProposalDropped,
    ProtocolError,
    Timeout,
    Unavailable,
)
from dengine.client._connection import NETWORK_ERRORS, Connection, ConnectionLost, Expired, Stream
from dengine.transport.base import single_leaf
from dengine.transport.client_protocol import (
    decode_flag,
    decode_kv,
    decode_leader,
    decode_members,
    decode_revision,
    decode_scan,
    decode_status,
    decode_values,
    decode_watch_item,
)

__all__ = ["Client", "LeaderWatch", "RemoteWatch", "open_client"]

_BACKOFF_MIN = 0.01
_BACKOFF_MAX = 0.5
_STREAM_BUFFER = 4096
# Client-side errors that mean "this endpoint cannot serve now; try another".
_RETRYABLE = (Unavailable, NotLeader, ProposalDropped)


def _check_timeout(timeout: object) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0 or math.isnan(timeout):
        raise InvalidArgument(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def _consistency(value: ReadConsistency | str | None) -> str | None:
    return None if value is None else ReadConsistency.parse(value).value


class Client:
    """A connection pool to the servers of one cluster. Obtain it from
    :func:`open_client`."""

    def __init__(
        self,
        endpoints: Sequence[str],
        nursery: trio.Nursery,
        *,
        timeout: float,
        auto_resume: bool,
        cluster_id: str,
        ssl_context: ssl.SSLContext | None,
        rng: random.Random,
    ) -> None:
        self._endpoints: list[str] = list(endpoints)
        self._nursery = nursery
        self.timeout = timeout
        self.auto_resume = auto_resume
        self.cluster_id = cluster_id
        self._ssl_context = ssl_context
        self._rng = rng
        self._conns: dict[str, Connection] = {}
        self._connecting: dict[str, trio.Lock] = {}
        self._node_endpoints: dict[int, str] = {}  # learned from welcomes and hints
        self._leader: str | None = None
        self._next = 0
        # The client cannot know each server's configured limits: it only
        # refuses what no server could take in one frame; the server checks
        # its own max_key_size / max_value_size and answers InvalidArgument.
        self.max_key_size = DEFAULT_MAX_FRAME_SIZE // 2
        self.max_value_size = DEFAULT_MAX_FRAME_SIZE // 2
        self._closed = False

    @property
    def endpoints(self) -> list[str]:
        return list(self._endpoints)

    # -- connections ---------------------------------------------------------

    async def _connection(self, endpoint: str, deadline: float) -> Connection:
        conn = self._conns.get(endpoint)
        if conn is not None and not conn.closed:
            await trio.lowlevel.checkpoint()
            return conn
        lock = self._connecting.setdefault(endpoint, trio.Lock())
        async with lock:
            conn = self._conns.get(endpoint)
            if conn is not None and not conn.closed:
                return conn
            if self._closed:
                raise Unavailable("the client is closed")
            host, port = parse_address(endpoint)
            conn = await Connection.open(
                endpoint,
                host,
                port,
                cluster_id=self.cluster_id,
                ssl_context=self._ssl_context,
                connect_timeout=max(0.001, min(5.0, deadline - trio.current_time())),
            )
            self._conns[endpoint] = conn
            self._node_endpoints[conn.node_id] = endpoint
            self._nursery.start_soon(conn.run, name=f"dengine client connection {endpoint}")
            return conn

    def _drop(self, endpoint: str) -> None:
        conn = self._conns.pop(endpoint, None)
        if conn is not None:
            conn.close()
        if self._leader == endpoint:
            self._leader = None

    def _rotate(self, avoid: str | None = None) -> str:
        for _ in range(len(self._endpoints)):
            endpoint = self._endpoints[self._next % len(self._endpoints)]
            self._next += 1
            if endpoint != avoid or len(self._endpoints) == 1:
                return endpoint
        return self._endpoints[0]

    def _pick(self, to_leader: bool, avoid: str | None) -> str:
        if to_leader and self._leader is not None and self._leader != avoid:
            return self._leader
        if not to_leader:
            for endpoint, conn in self._conns.items():
                if not conn.closed and endpoint != avoid:
                    return endpoint
        return self._rotate(avoid)

    def _follow_hint(self, exc: NotLeader) -> bool:
        """Point at the hinted leader; True if the hint names a server to try."""
        target = exc.leader_address
        if target is None and exc.leader_id is not None:
            target = self._node_endpoints.get(exc.leader_id)
        if target is None:
            self._leader = None
            return False
        if target not in self._endpoints:
            self._endpoints.append(target)
        self._leader = target
        return True

    async def _backoff(self, attempt: int) -> None:
        delay = min(_BACKOFF_MAX, _BACKOFF_MIN * (2 ** min(attempt, 16)))
        await trio.sleep(delay * (0.5 + self._rng.random() / 2))

    async def _backoff_until(self, attempt: int, deadline: float) -> bool:
        """Back off before the next attempt; False if the deadline passed."""
        if trio.current_time() >= deadline:
            await trio.lowlevel.checkpoint()
            return False
        with trio.move_on_at(deadline):
            await self._backoff(attempt)
            return True
        return False

    async def _call(
        self, op: str, args: dict[str, Any], *, timeout: float | None, write: bool, to_leader: bool
    ) -> dict[str, Any]:
        """Run one request within its deadline, retrying as the rules say."""
        limit = self.timeout if timeout is None else _check_timeout(timeout)
        deadline = trio.current_time() + limit
        unknown = False  # a write of ours may have been applied
        last: BaseException | None = None
        avoid: str | None = None
        attempt = 0
        # The deadline: the connection enforces it on the request itself
        # (no cancel scope per call); connecting and backing off run under
        # a scope of their own, only when they happen.
        while True:
            endpoint = self._pick(to_leader, avoid)
            avoid = None
            conn = self._conns.get(endpoint)
            if conn is None or conn.closed:
                conn = None
                with trio.move_on_at(deadline):
                    try:
                        conn = await self._connection(endpoint, deadline)
                    except (*NETWORK_ERRORS, ProtocolError) as exc:
                        self._drop(endpoint)
                        last, avoid = exc, endpoint
                        if isinstance(exc, ProtocolError):
                            raise  # wrong cluster / protocol version: retrying cannot help
                    except DengineError as exc:  # refused (e.g. ResourceExhausted)
                        last, avoid = exc, endpoint
                if conn is None:
                    if not await self._backoff_until(attempt, deadline):
                        break
                    attempt += 1
                    continue
            remaining_ms = max(1, int((deadline - trio.current_time()) * 1000))
            was_unknown, unknown = unknown, unknown or write
            try:
                result = await conn.request(op, {**args, "timeout_ms": remaining_ms}, deadline=deadline)
                if to_leader:
                    self._leader = endpoint
                return result
            except Expired as exc:
                if not exc.sent:
                    unknown = was_unknown  # never written
                if self._leader == endpoint:
                    # A leader that let a whole deadline pass (paused, cut
                    # off) is not trusted for the next call: look again.
                    self._leader = None
                break
            except ConnectionLost as exc:
                self._drop(endpoint)
                last, avoid = exc, endpoint
                if not exc.sent:
                    unknown = was_unknown
                elif write:
                    raise Unavailable(
                        f"the connection to {endpoint} was lost after the write was sent; "
                        "it may or may not have been applied"
                    ) from None
            except NotLeader as exc:
                last, unknown = exc, was_unknown  # rejected before it entered the log
                if self._follow_hint(exc) and self._leader != endpoint:
                    continue  # go straight to the hinted leader
                avoid = endpoint
            except ProposalDropped as exc:
                last, unknown = exc, was_unknown  # not applied: safe to retry
            except (Unavailable, Timeout) as exc:
                if self._leader == endpoint and isinstance(exc, LeaderChanged):
                    self._leader = None  # the next call looks for the new leader
                if write:
                    if isinstance(exc, (Timeout, LeaderChanged)):
                        raise  # already says the outcome is unknown
                    raise Unavailable(f"{exc.message} (the write may or may not have been applied)") from None
                last, avoid = exc, endpoint
                if self._leader == endpoint:
                    self._leader = None
            if not await self._backoff_until(attempt, deadline):
                break
            attempt += 1
        detail = f"; last error: {last}" if last is not None else ""
        if unknown:
            raise Timeout(f"{op} did not complete within {limit:g} s; it may or may not have been applied{detail}")
        raise Timeout(f"{op} did not complete within {limit:g} s{detail}")

    # -- writes ---------------------------------------------------------------------

    async def put(self, key: bytes, value: bytes, *, ttl: float | None = None, timeout: float | None = None) -> int:
        """Set ``key`` to ``value``; returns the revision of the write."""
        validate_key(key, self.max_key_size)
        validate_value(value, self.max_value_size)
        ttl_ms = validate_ttl(ttl)
        body = await self._call("put", {"key": key, "value": value, "ttl_ms": ttl_ms},
                                timeout=timeout, write=True, to_leader=True)
        return decode_revision(body)

    async def delete(self, key: bytes, *, timeout: float | None = None) -> bool:
        """Delete ``key``; True if it existed."""
        validate_key(key, self.max_key_size)
        body = await self._call("delete", {"key": key}, timeout=timeout, write=True, to_leader=True)
        return decode_flag(body, "deleted")

    async def compare_and_swap(
        self,
        key: bytes,
        *,
        expected: bytes | None,
        new: bytes,
        ttl: float | None = None,
        timeout: float | None = None,
    ) -> bool:
        """Set ``key`` to ``new`` only if it holds ``expected`` (None: absent)."""
        validate_key(key, self.max_key_size)
        if expected is not None:
            validate_value(expected, self.max_value_size)
        validate_value(new, self.max_value_size)
        ttl_ms = validate_ttl(ttl)
        args = {"key": key, "expected": expected, "new": new, "ttl_ms": ttl_ms}
        body = await self._call("cas", args, timeout=timeout, write=True, to_leader=True)
        return decode_flag(body, "swapped")

    # -- reads ------------------------------------------------------------------------

    async def _read(self, op: str, args: dict[str, Any], consistency: ReadConsistency | str | None,
                    timeout: float | None) -> dict[str, Any]:
        level = _consistency(consistency)
        to_leader = level != ReadConsistency.EVENTUAL.value
        return await self._call(op, {**args, "consistency": level}, timeout=timeout, write=False, to_leader=to_leader)

    async def get(self, key: bytes, *, consistency: ReadConsistency | str | None = None,
                  timeout: float | None = None) -> bytes | None:
        kv = await self.get_kv(key, consistency=consistency, timeout=timeout)
        return None if kv is None else kv.value

    async def get_kv(self, key: bytes, *, consistency: ReadConsistency | str | None = None,
                     timeout: float | None = None) -> KeyValue | None:
        """Like get, with the revision that last set the key."""
        validate_key(key, self.max_key_size)
        return decode_kv(key, await self._read("get", {"key": key}, consistency, timeout))

    async def get_many(self, keys: Sequence[bytes], *, consistency: ReadConsistency | str | None = None,
                       timeout: float | None = None) -> list[bytes | None]:
        """Several keys read at one consistent point."""
        if isinstance(keys, (bytes, str)):
            raise InvalidArgument("keys must be a list of bytes keys, not a single key")
        keys = list(keys)
        for key in keys:
            validate_key(key, self.max_key_size)
        body = await self._read("get_many", {"keys": keys}, consistency, timeout)
        return decode_values(body, len(keys))

    async def scan_prefix(self, prefix: bytes, *, consistency: ReadConsistency | str | None = ReadConsistency.LINEARIZABLE,
                          timeout: float | None = None) -> ScanResult:
        """Every key starting with ``prefix``, with the revision the scan saw."""
        validate_scan_prefix(prefix, self.max_key_size)
        return decode_scan(await self._read("scan_prefix", {"prefix": prefix}, consistency, timeout))

    # -- cluster ------------------------------------------------------------------------

    async def status(self, *, endpoint: str | None = None, timeout: float | None = None) -> Status:
        """The status of one server (``endpoint``, else any)."""
        return decode_status(await self._on(endpoint, "status", timeout))

    async def members(self, *, timeout: float | None = None) -> list[Member]:
        return decode_members(await self._call("members", {}, timeout=timeout, write=False, to_leader=False))

    async def leader(self, *, timeout: float | None = None) -> LeaderInfo:
        """The leader as the server the client talks to sees it."""
        info, address = decode_leader(await self._call("leader", {}, timeout=timeout, write=False, to_leader=False))
        if address is not None and info.leader_id is not None:
            self._node_endpoints.setdefault(info.leader_id, address)
        return info

    async def _on(self, endpoint: str | None, op: str, timeout: float | None) -> dict[str, Any]:
        if endpoint is None:
            return await self._call(op, {}, timeout=timeout, write=False, to_leader=False)
        limit = self.timeout if timeout is None else _check_timeout(timeout)
        deadline = trio.current_time() + limit
        with trio.move_on_at(deadline):
            try:
                conn = await self._connection(endpoint, deadline)
                return await conn.request(op, {})
            except (*NETWORK_ERRORS, ConnectionLost) as exc:
                self._drop(endpoint)
                raise Unavailable(f"cannot reach {endpoint}: {exc}") from None
        raise Timeout(f"{op} of {endpoint} did not complete within {limit:g} s")

    def watch_leader(self) -> LeaderWatch:
        """``async with client.watch_leader() as leaders: async for info in leaders``:
        LeaderInfo now and on every change (resumed on another server if its
        server goes away, when ``auto_resume``)."""
        return LeaderWatch(self)

    # -- watches ----------------------------------------------------------------------------

    @asynccontextmanager
    async def open_watch(
        self,
        key: bytes,
        *,
        prefix: bool = False,
        prev_kv: bool = False,
        start_revision: int | None = None,
    ) -> AsyncIterator[RemoteWatch]:
        """Watch ``key`` (or every key under a ``/.../`` prefix): the same
        interface as the embedded client's ``open_watch``. The watch is
        registered on a server when the block is entered."""
        if prefix:
            validate_prefix(key, self.max_key_size)
        else:
            validate_key(key, self.max_key_size)
        if start_revision is not None and (
            isinstance(start_revision, bool) or not isinstance(start_revision, int) or start_revision <= 0
        ):
            raise InvalidArgument(f"start_revision must be a positive integer, got {start_revision!r}")
        watch = RemoteWatch(self, key, prefix=bool(prefix), prev_kv=bool(prev_kv), start_revision=start_revision)
        await watch._open(avoid=None)
        try:
            yield watch
        finally:
            with trio.CancelScope(shield=True):
                await watch.aclose()

    async def _open_stream(self, op: str, args: dict[str, Any], *, avoid: str | None) -> Stream:
        """Open a stream on some server within the client's timeout."""
        deadline = trio.current_time() + self.timeout
        last: BaseException | None = None
        attempt = 0
        with trio.move_on_at(deadline):
            while True:
                endpoint = self._pick(False, avoid)
                avoid = None
                try:
                    conn = await self._connection(endpoint, deadline)
                    return await conn.open_stream(op, args, limit=_STREAM_BUFFER)
                except (*NETWORK_ERRORS, ConnectionLost) as exc:
                    self._drop(endpoint)
                    last, avoid = exc, endpoint
                except ClusterError as exc:
                    last, avoid = exc, endpoint
                await self._backoff(attempt)
                attempt += 1
        raise Unavailable(f"no server could open the {op} stream within {self.timeout:g} s; last error: {last}")

    async def aclose(self) -> None:
        self._closed = True
        for endpoint in list(self._conns):
            self._drop(endpoint)
        await trio.lowlevel.checkpoint()


class RemoteWatch:
    """A watch served by some server; iterate it for WatchEvents. Ends after
    a CANCELED event; raises Unavailable if its server goes away and
    ``auto_resume`` is off (or no server can take it over)."""

    def __init__(self, client: Client, key: bytes, *, prefix: bool, prev_kv: bool, start_revision: int | None) -> None:
        self._client = client
        self.key = key
        self.prefix = prefix
        self.prev_kv = prev_kv
        # Where a (re)opened stream starts, and how many events of that
        # revision were delivered already: the commands of one Raft entry
        # share a revision, so a stream can break in the middle of one.
        self._from: int | None = start_revision
        self._delivered_at_from = 0
        self._skip = 0  # replayed events of revision _from still to drop
        self._stream: Stream | None = None
        self._done = False
        self._closed = False
        self.resumes = 0

    @property
    def endpoint(self) -> str | None:
        """The server currently serving this watch."""
        return None if self._stream is None else self._stream.conn.endpoint

    @property
    def next_revision(self) -> int | None:
        """The revision this watch would resume from (events of it already
        delivered are skipped on a resume)."""
        return self._from

    def _resume_hint(self) -> str:
        hint = f"resume with start_revision={self._from}"
        if self._delivered_at_from:
            hint += f" (its first {self._delivered_at_from} events were delivered)"
        return hint

    async def _open(self, avoid: str | None) -> None:
        deadline = trio.current_time() + self._client.timeout
        while True:
            if trio.current_time() >= deadline:
                raise Unavailable(f"no server could take over the watch within {self._client.timeout:g} s")
            self._skip = self._delivered_at_from
            args = {"key": self.key, "prefix": self.prefix, "prev_kv": self.prev_kv, "start_revision": self._from}
            stream = await self._client._open_stream("watch", args, avoid=avoid)
            try:
                first = decode_watch_item(await stream.receive())
            except (ConnectionLost, Unavailable):
                await stream.aclose()
                avoid = stream.conn.endpoint
                await self._client._backoff(1)
                continue
            except BaseException:
                await stream.aclose()
                raise
            if isinstance(first, int):
                if self._from is None:
                    self._from = first
                self._stream = stream
                return
            await stream.aclose()
            raise ProtocolError(f"the server answered a watch with {first!r} before confirming it")

    async def receive(self) -> WatchEvent:
        while True:
            if self._closed:
                raise trio.ClosedResourceError("this watch was closed")
            if self._done or self._stream is None:
                raise trio.EndOfChannel
            stream = self._stream
            try:
                item = decode_watch_item(await stream.receive())
            except trio.EndOfChannel:
                self._done = True
                raise
            except (ConnectionLost, Unavailable) as exc:
                if not self._client.auto_resume:
                    self._done = True
                    raise Unavailable(
                        f"the watch's server {stream.conn.endpoint} went away ({exc}); {self._resume_hint()}"
                    ) from None
                self._stream = None
                self.resumes += 1
                await self._open(avoid=stream.conn.endpoint)
                continue
            if isinstance(item, int):
                continue  # a repeated created marker carries nothing new
            if item.type == WatchEventType.CANCELED:
                self._done = True
                await self._drop_stream()
                return item
            rev = item.revision
            if item.type == WatchEventType.PROGRESS:
                # Everything up to rev was delivered.
                if self._from is None or rev >= self._from:
                    self._from, self._delivered_at_from, self._skip = rev + 1, 0, 0
                return item
            if self._from is not None and rev < self._from:
                continue  # before where this stream was asked to start
            if rev == self._from:
                if self._skip:
                    self._skip -= 1  # delivered before a resume
                    continue
                self._delivered_at_from += 1
            else:
                self._from, self._delivered_at_from, self._skip = rev, 1, 0
            return item

    def __aiter__(self) -> RemoteWatch:
        return self

    async def __anext__(self) -> WatchEvent:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def _drop_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.aclose()

    async def aclose(self) -> None:
        self._closed = True
        await self._drop_stream()


class LeaderWatch:
    """``async with client.watch_leader() as leaders``: LeaderInfo values."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._stream: Stream | None = None
        self._last: LeaderInfo | None = None

    async def __aenter__(self) -> LeaderWatch:
        self._stream = await self._client._open_stream("watch_leader", {}, avoid=None)
        return self

    async def __aexit__(self, *exc: object) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    def __aiter__(self) -> LeaderWatch:
        return self

    async def __anext__(self) -> LeaderInfo:
        while True:
            stream = self._stream
            if stream is None:
                raise StopAsyncIteration
            try:
                info, address = decode_leader(await stream.receive())
            except trio.EndOfChannel:
                raise StopAsyncIteration from None
            except (ConnectionLost, Unavailable) as exc:
                if not self._client.auto_resume:
                    raise Unavailable(f"the leader stream's server {stream.conn.endpoint} went away ({exc})") from None
                self._stream = await self._client._open_stream("watch_leader", {}, avoid=stream.conn.endpoint)
                continue
            if address is not None and info.leader_id is not None:
                self._client._node_endpoints.setdefault(info.leader_id, address)
            if info == self._last:
                continue
            self._last = info
            return info


@asynccontextmanager
async def open_client(
    endpoints: Sequence[str] | str,
    *,
    timeout: float = 5.0,
    auto_resume: bool = True,
    cluster_id: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    rng: random.Random | None = None,
) -> AsyncIterator[Client]:
    """A client of the servers at ``endpoints`` (``"host:port"`` strings, or
    one comma-separated string). ``timeout`` is the default deadline of
    every call, in seconds; ``cluster_id`` must match the servers' (default
    ``"dengine"``); ``ssl_context`` turns on TLS. Connections open lazily."""
    if isinstance(endpoints, str):
        endpoints = [e.strip() for e in endpoints.split(",") if e.strip()]
    endpoints = list(endpoints)
    if not endpoints:
        raise InvalidArgument("open_client needs at least one endpoint 'host:port'")
    for endpoint in endpoints:
        host, port = parse_address(endpoint)
        if port == 0:
            raise InvalidArgument(f"endpoint {endpoint!r} needs a real port, not 0")
    limit = _check_timeout(timeout)
    if cluster_id is not None and (not isinstance(cluster_id, str) or not cluster_id):
        raise InvalidArgument(f"cluster_id must be a non-empty string, got {cluster_id!r}")
    try:
        async with trio.open_nursery() as nursery:
            client = Client(
                endpoints,
                nursery,
                timeout=limit,
                auto_resume=bool(auto_resume),
                cluster_id=cluster_id if cluster_id is not None else DEFAULT_CLUSTER_ID,
                ssl_context=ssl_context,
                rng=rng if rng is not None else random.Random(),
            )
            try:
                yield client
            finally:
                await client.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        leaf = single_leaf(group)
        if leaf is None:
            raise
        raise leaf from None

"""The remote client: the embedded client's KV and watch interface, over TCP.

    async with dengine.open_client(["127.0.0.1:9081", "127.0.0.1:9082"]) as client:
        await client.put(b"k", b"v")
        async with client.open_watch(b"/services/", prefix=True) as watch:
            async for event in watch: ...

Rules of this client (docs/protocol.md, "Client behaviour"):

* It never imports the engine; it speaks docs/protocol.md to servers. What
  it decides -- arguments, requests and their results, matching responses,
  error mapping, where a call goes and whether it is retried, watch resume
  -- is decided by the sans-IO core :mod:`dengine.client._core`, which the
  blocking client (:mod:`dengine.client.blocking`) shares; this module only
  does the trio IO around it. Arguments are checked with the embedded
  client's :mod:`dengine.api` validators; sizes against the limits each
  server announced in its welcome, per connection.
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

import os
import random
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Self

import trio

from dengine.api import (
    Compare,
    KeyValue,
    LeaderInfo,
    Lease,
    LeaseStatus,
    Member,
    MembershipChange,
    Op,
    ReadConsistency,
    ScanResult,
    Status,
    TxnResult,
    WatchEvent,
)
from dengine.backup import BackupWriter
from dengine.keepalive import KeptLease, open_kept_lease
from dengine.client import _core
from dengine.client._connection import NETWORK_ERRORS, Connection, ConnectionLost, Expired, Stream
from dengine.client._core import Attempts, Call, Next, Router, WatchState, calls
from dengine.errors import DengineError, Timeout, Unavailable
from dengine.transport.base import single_leaf

__all__ = ["Client", "LeaderWatch", "MemberWatch", "RemoteWatch", "open_client"]

_STREAM_BUFFER = 4096


class Client:
    """A connection pool to the servers of one cluster. Obtain it from
    :func:`open_client`."""

    def __init__(
        self,
        endpoints: Sequence[_core.Endpoint],
        nursery: trio.Nursery,
        *,
        timeout: float,
        auto_resume: bool,
        cluster_id: str,
        ssl_context: ssl.SSLContext | None,
        rng: random.Random,
        keepalive_timeout: float | None = None,
    ) -> None:
        self._eps = {e.address: e for e in endpoints}
        self._router = Router([e.address for e in endpoints])
        self._nursery = nursery
        self.timeout = timeout
        self.auto_resume = auto_resume
        self.cluster_id = cluster_id
        self._ssl_context = ssl_context
        self._rng = rng
        self.keepalive_timeout = keepalive_timeout
        self._conns: dict[str, Connection] = {}
        self._connecting: dict[str, trio.Lock] = {}
        # Limits checked before any server is reached (None: none); each
        # connection also checks the limits its server announced.
        self.max_key_size: int | None = None
        self.max_value_size: int | None = None
        self._closed = False

    @property
    def endpoints(self) -> list[str]:
        return list(self._router.endpoints)

    def endpoint_of(self, node_id: int) -> str | None:
        """The endpoint at which this client met node ``node_id`` (None if it has not)."""
        return self._router.node_endpoints.get(node_id)

    # -- connections ---------------------------------------------------------

    def _connected(self) -> list[str]:
        return [e for e, c in self._conns.items() if not c.closed]

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
            ep = self._eps.get(endpoint) or _core.parse_endpoint(endpoint)
            conn = await Connection.open(
                endpoint,
                ep.host,
                ep.port,
                cluster_id=self.cluster_id,
                ssl_context=self._ssl_context,
                connect_timeout=_core.connect_timeout(deadline, trio.current_time(), self._router.silence(self.keepalive_timeout)),
                keepalive_timeout=self.keepalive_timeout,
            )
            self._conns[endpoint] = conn
            self._router.welcomed(endpoint, conn.node_id, conn.info)
            self._nursery.start_soon(conn.run, name=f"dengine client connection {endpoint}")
            return conn

    def _drop(self, endpoint: str) -> None:
        conn = self._conns.pop(endpoint, None)
        if conn is not None:
            conn.close()
        self._router.dropped(endpoint)

    async def _backoff(self, attempt: int) -> None:
        await trio.sleep(_core.backoff_delay(attempt, self._rng, self._router.backoff_cap()))

    # Any: a Call's decode gives the result type of the method that built it,
    # which the (non-generic) Call cannot carry, so the public methods below
    # return it under "# type: ignore[no-any-return]".
    async def _run(self, call: Call) -> Any:
        """Run one call within its deadline, as the core's Attempts decide.
        The connection enforces the deadline on the request itself (no cancel
        scope per call); connecting and backing off run under a scope of
        their own, only when they happen."""
        now = trio.current_time()
        att = Attempts(call, self._router, limit=self.timeout if call.timeout is None else call.timeout,
                       now=now, rng=self._rng)
        while True:
            endpoint = att.target(e for e, c in self._conns.items() if not c.closed)
            conn = self._conns.get(endpoint)
            if conn is None or conn.closed:
                conn = None
                with trio.move_on_at(att.request_deadline) as scope:
                    try:
                        conn = await self._connection(endpoint, att.request_deadline)
                    except (*NETWORK_ERRORS, DengineError) as exc:
                        self._drop(endpoint)
                        att.connect_failed(endpoint, exc)
                if conn is None:
                    if scope.cancelled_caught:
                        att.connect_failed(endpoint, TimeoutError(f"connecting to {endpoint} took too long"))
                    if not await self._sleep(att):
                        break
                    continue
                now = trio.current_time()
            att.connected(endpoint, conn.node_id)
            att.sending()
            try:
                body = await conn.request(call.op, att.args(now), deadline=att.request_deadline)
                return att.answered(endpoint, body)
            except (Expired, ConnectionLost, DengineError) as exc:
                if isinstance(exc, ConnectionLost):
                    self._drop(endpoint)
                step = att.failed(endpoint, exc)
            if step is Next.GIVE_UP:
                break
            if step is Next.BACKOFF and not await self._sleep(att):
                break
            now = trio.current_time()
        raise att.timeout_error(await self._diagnose(att))

    async def _sleep(self, att: Attempts) -> bool:
        """Back off before the next attempt; False if no time is left."""
        delay = att.backoff(trio.current_time())
        if delay is None:
            await trio.lowlevel.checkpoint()
            return False
        await trio.sleep(delay)
        return trio.current_time() < att.request_deadline

    async def _diagnose(self, att: Attempts) -> _core.Diagnosis | None:
        """Ask what the core's Diagnosis wants to know, in the time kept for it."""
        diag = att.diagnosis()
        if diag is None:
            return None
        with trio.move_on_at(att.deadline):
            for endpoint in diag.status_targets():
                try:
                    conn = await self._connection(endpoint, att.deadline)
                    diag.saw_status(endpoint, calls.status(timeout=None).decode(
                        await conn.request("status", {}, deadline=att.deadline)))
                except (*NETWORK_ERRORS, Expired, ConnectionLost, DengineError) as exc:
                    diag.status_failed(endpoint, exc)
            for endpoint in diag.probe_targets():
                try:
                    diag.saw_probe(endpoint, (await self._connection(endpoint, att.deadline)).node_id)
                except (*NETWORK_ERRORS, DengineError) as exc:
                    diag.saw_probe(endpoint, exc)
        return diag

    # -- writes ---------------------------------------------------------------------

    async def put(self, key: bytes, value: bytes, *, ttl: float | None = None, lease: int = 0,
                  timeout: float | None = None) -> int:
        """Set ``key`` to ``value``; returns the revision of the write.
        ``ttl`` makes it expire; ``lease`` attaches it to a lease."""
        return await self._run(calls.put(key, value, ttl=ttl, timeout=timeout,  # type: ignore[no-any-return]
                                         max_key_size=self.max_key_size, max_value_size=self.max_value_size,
                                         lease=lease))

    async def txn(self, compare: Sequence[Compare] = (), success: Sequence[Op] = (), failure: Sequence[Op] = (),
                  *, timeout: float | None = None) -> TxnResult:
        """If every compare holds run ``success``, else ``failure``:
        atomically, at one revision (docs/coordination.md)."""
        return await self._run(calls.txn(compare, success, failure, timeout=timeout,  # type: ignore[no-any-return]
                                         max_key_size=self.max_key_size, max_value_size=self.max_value_size))

    # -- leases ---------------------------------------------------------------------

    async def grant_lease(self, ttl: float, *, lease_id: int = 0, timeout: float | None = None) -> Lease:
        """A new lease of ``ttl`` seconds (at least the cluster's minimum)."""
        return await self._run(calls.grant_lease(ttl, lease_id=lease_id, timeout=timeout))  # type: ignore[no-any-return]

    async def keep_alive(self, lease_id: int, *, timeout: float | None = None) -> float:
        """Renew a lease; it lives at least the returned seconds from this call."""
        return await self._run(calls.keep_alive(lease_id, timeout=timeout))  # type: ignore[no-any-return]

    async def revoke_lease(self, lease_id: int, *, timeout: float | None = None) -> None:
        """End a lease now and delete its keys."""
        await self._run(calls.revoke_lease(lease_id, timeout=timeout))

    async def lease_time_to_live(self, lease_id: int, *, keys: bool = False,
                                 timeout: float | None = None) -> LeaseStatus:
        """A lease's granted TTL, seconds left and (with ``keys``) its keys."""
        return await self._run(calls.lease_time_to_live(  # type: ignore[no-any-return]
            lease_id, keys=keys, timeout=timeout))

    async def leases(self, *, timeout: float | None = None) -> list[Lease]:
        """Every lease, by id."""
        return await self._run(calls.leases(timeout=timeout))  # type: ignore[no-any-return]

    def open_lease(self, ttl: float, *, timeout: float | None = None) -> AbstractAsyncContextManager[KeptLease]:
        """``async with client.open_lease(ttl) as lease:`` kept alive for the
        block, revoked after it; ``lease.lost`` is set if it could not be
        renewed in time."""
        return open_kept_lease(self, ttl, timeout=timeout)

    async def delete(self, key: bytes, *, timeout: float | None = None) -> bool:
        """Delete ``key``; True if it existed."""
        return await self._run(calls.delete(key, timeout=timeout, max_key_size=self.max_key_size))  # type: ignore[no-any-return]

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
        return await self._run(calls.compare_and_swap(  # type: ignore[no-any-return]
            key, expected=expected, new=new, ttl=ttl, timeout=timeout,
            max_key_size=self.max_key_size, max_value_size=self.max_value_size))

    # -- reads ------------------------------------------------------------------------

    async def get(self, key: bytes, *, consistency: ReadConsistency | str | None = None,
                  timeout: float | None = None) -> bytes | None:
        return await self._run(calls.get(key, consistency=consistency, timeout=timeout,  # type: ignore[no-any-return]
                                         max_key_size=self.max_key_size))

    async def get_kv(self, key: bytes, *, consistency: ReadConsistency | str | None = None,
                     timeout: float | None = None) -> KeyValue | None:
        """Like get, with the revision that last set the key."""
        return await self._run(calls.get_kv(key, consistency=consistency, timeout=timeout,  # type: ignore[no-any-return]
                                            max_key_size=self.max_key_size))

    async def get_many(self, keys: Sequence[bytes], *, consistency: ReadConsistency | str | None = None,
                       timeout: float | None = None) -> list[bytes | None]:
        """Several keys read at one consistent point."""
        return await self._run(calls.get_many(keys, consistency=consistency, timeout=timeout,  # type: ignore[no-any-return]
                                              max_key_size=self.max_key_size))

    async def scan_prefix(self, prefix: bytes, *, limit: int | None = None, keys_only: bool = False,
                          count_only: bool = False,
                          consistency: ReadConsistency | str | None = ReadConsistency.LINEARIZABLE,
                          timeout: float | None = None) -> ScanResult:
        """Every key starting with ``prefix`` (at most ``limit``), with the
        revision the scan saw, the count and whether more remain."""
        return await self._run(calls.scan_prefix(  # type: ignore[no-any-return]
            prefix, consistency=consistency, timeout=timeout, max_key_size=self.max_key_size, limit=limit,
            keys_only=keys_only, count_only=count_only))

    async def scan_range(self, start: bytes, end: bytes | None = None, *, limit: int | None = None,
                         keys_only: bool = False, count_only: bool = False,
                         consistency: ReadConsistency | str | None = ReadConsistency.LINEARIZABLE,
                         timeout: float | None = None) -> ScanResult:
        """Every key ``k`` with ``start <= k < end`` (``end`` None: to the last key)."""
        return await self._run(calls.scan_range(  # type: ignore[no-any-return]
            start, end, consistency=consistency, timeout=timeout, max_key_size=self.max_key_size, limit=limit,
            keys_only=keys_only, count_only=count_only))

    # -- cluster ------------------------------------------------------------------------

    async def status(self, *, endpoint: str | None = None, timeout: float | None = None) -> Status:
        """The status of one server (``endpoint``, else any)."""
        call = calls.status(timeout=timeout)
        if endpoint is None:
            return await self._run(call)  # type: ignore[no-any-return]
        return call.decode(await self._on(endpoint, call))  # type: ignore[no-any-return]

    async def members(self, *, timeout: float | None = None) -> list[Member]:
        return await self._run(calls.members(timeout=timeout))  # type: ignore[no-any-return]

    async def leader(self, *, timeout: float | None = None) -> LeaderInfo:
        """The leader as the server the client talks to sees it."""
        return await self._run(calls.leader(timeout=timeout))  # type: ignore[no-any-return]

    # -- membership (the same names as dengine.Engine's) ------------------------------

    async def add_member(self, peer_address: str, *, learner: bool = True, node_id: int | None = None,
                         client_address: str | None = None, timeout: float | None = None) -> Member:
        """Add a member (a learner; ``learner=False``: promoted once caught up)."""
        return await self._run(calls.add_member(  # type: ignore[no-any-return]
            peer_address, learner=learner, node_id=node_id, client_address=client_address, timeout=timeout))

    async def promote_member(self, node_id: int, *, timeout: float | None = None) -> Member:
        return await self._run(calls.promote_member(node_id, timeout=timeout))  # type: ignore[no-any-return]

    async def remove_member(self, node_id: int, *, timeout: float | None = None) -> None:
        await self._run(calls.remove_member(node_id, timeout=timeout))

    async def update_member(self, node_id: int, *, peer_address: str | None = None,
                            client_address: str | None = None, timeout: float | None = None) -> Member:
        return await self._run(calls.update_member(  # type: ignore[no-any-return]
            node_id, peer_address=peer_address, client_address=client_address, timeout=timeout))

    async def save_snapshot(self, path: str | os.PathLike[str], *,
                            progress: Callable[[int, int], None] | None = None) -> int:
        """Stream a consistent backup of the whole key-value state from a
        server to ``path`` (written to ``path.part``, checked, renamed);
        returns its revision. ``progress(bytes_done, bytes_total)`` is called
        as pieces arrive. ``dengine.restore_snapshot`` seeds a new cluster
        from it."""
        stream = await self._open_stream("snapshot", {}, avoid=None)
        writer: BackupWriter | None = None
        try:
            header = _core.backup_header(await stream.receive())
            writer = await trio.to_thread.run_sync(BackupWriter, os.fspath(path), header)
            while True:
                try:
                    chunk = _core.backup_chunk(await stream.receive())
                except trio.EndOfChannel:
                    break
                await trio.to_thread.run_sync(writer.write, chunk)
                if progress is not None:
                    progress(writer.written, header.size)
            await trio.to_thread.run_sync(writer.finish)
            writer = None
            return header.revision
        except ConnectionLost as exc:
            raise Unavailable(f"the server sending the backup went away ({_core.describe_error(exc)}); "
                              "nothing was saved") from None
        finally:
            if writer is not None:
                writer.abort()
            with trio.CancelScope(shield=True):
                await stream.aclose()

    def watch_members(self) -> MemberWatch:
        """``async with client.watch_members() as changes: async for change in changes``:
        every membership change from now on. If its server goes away the
        stream ends with Unavailable (changes are not replayed: read
        ``members()`` and open a new one)."""
        return MemberWatch(self)

    async def _on(self, endpoint: str, call: Call) -> dict[str, Any]:
        limit = self.timeout if call.timeout is None else call.timeout
        deadline = trio.current_time() + limit
        with trio.move_on_at(deadline):
            try:
                conn = await self._connection(endpoint, deadline)
                return await conn.request(call.op, {})
            except (*NETWORK_ERRORS, ConnectionLost) as exc:
                self._drop(endpoint)
                raise Unavailable(f"cannot reach {endpoint}: {_core.describe_error(exc)}") from None
        raise Timeout(f"{call.op} of {endpoint} did not complete within {limit:g} s")

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
        state = WatchState(key, prefix=prefix, prev_kv=prev_kv, start_revision=start_revision,
                           max_key_size=self.max_key_size)
        watch = RemoteWatch(self, state)
        await watch._open(avoid=None)
        try:
            yield watch
        finally:
            with trio.CancelScope(shield=True):
                await watch.aclose()

    async def _open_stream(self, op: str, args: dict[str, Any], *, avoid: str | None) -> Stream:
        """Open a stream on some server within the client's timeout."""
        att = Attempts(_core.stream_call(op, args), self._router, limit=self.timeout,
                       now=trio.current_time(), rng=self._rng)
        att.avoid = avoid
        with trio.move_on_at(att.deadline):
            while True:
                endpoint = att.target(self._connected())
                try:
                    conn = await self._connection(endpoint, att.deadline)
                    return await conn.open_stream(op, args, limit=_STREAM_BUFFER)
                except (*NETWORK_ERRORS, ConnectionLost, DengineError) as exc:
                    if not isinstance(exc, DengineError):
                        self._drop(endpoint)
                    att.stream_failed(endpoint, exc)
                if not await self._sleep(att):
                    break
        raise att.stream_error()

    async def aclose(self) -> None:
        self._closed = True
        for endpoint in list(self._conns):
            self._drop(endpoint)
        await trio.lowlevel.checkpoint()


class RemoteWatch:
    """A watch served by some server; iterate it for WatchEvents. Ends after
    a CANCELED event; raises Unavailable if its server goes away and
    ``auto_resume`` is off (or no server can take it over)."""

    def __init__(self, client: Client, state: WatchState) -> None:
        self._client = client
        self._state = state
        self.key = state.key
        self.prefix = state.prefix
        self.prev_kv = state.prev_kv
        self._stream: Stream | None = None
        self._closed = False

    @property
    def endpoint(self) -> str | None:
        """The server currently serving this watch."""
        return None if self._stream is None else self._stream.conn.endpoint

    @property
    def next_revision(self) -> int | None:
        """The revision this watch would resume from (events of it already
        delivered are skipped on a resume)."""
        return self._state.start

    @property
    def resumes(self) -> int:
        return self._state.resumes

    async def _open(self, avoid: str | None) -> None:
        deadline = trio.current_time() + self._client.timeout
        while True:
            if trio.current_time() >= deadline:
                raise Unavailable(f"no server could take over the watch within {self._client.timeout:g} s")
            stream = await self._client._open_stream("watch", self._state.open_args(), avoid=avoid)
            try:
                self._state.opened(await stream.receive())
            except (ConnectionLost, Unavailable):
                await stream.aclose()
                avoid = stream.conn.endpoint
                await self._client._backoff(1)
                continue
            except BaseException:
                await stream.aclose()
                raise
            self._stream = stream
            return

    async def receive(self) -> WatchEvent:
        state = self._state
        while True:
            if self._closed:
                raise trio.ClosedResourceError("this watch was closed")
            if state.done or self._stream is None:
                raise trio.EndOfChannel
            stream = self._stream
            try:
                body = await stream.receive()
            except trio.EndOfChannel:
                state.done = True
                raise
            except (ConnectionLost, Unavailable) as exc:
                state.lost(stream.conn.endpoint, exc, auto_resume=self._client.auto_resume)
                self._stream = None
                await self._open(avoid=stream.conn.endpoint)
                continue
            event = state.item(body)
            if event is None:
                continue
            if state.done:
                await self._drop_stream()
            return event

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


class _ServerStream:
    """An ``async with`` stream of one op from some server (opened on enter,
    cancelled on exit)."""

    _op = ""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._stream: Stream | None = None

    async def __aenter__(self) -> Self:
        self._stream = await self._client._open_stream(self._op, {}, avoid=None)
        return self

    async def __aexit__(self, *exc: object) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    def __aiter__(self) -> Self:
        return self


class LeaderWatch(_ServerStream):
    """``async with client.watch_leader() as leaders``: LeaderInfo values."""

    _op = "watch_leader"

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self._last: LeaderInfo | None = None

    async def __anext__(self) -> LeaderInfo:
        while True:
            stream = self._stream
            if stream is None:
                raise StopAsyncIteration
            try:
                info = _core.leader_item(await stream.receive(), self._client._router)
            except trio.EndOfChannel:
                raise StopAsyncIteration from None
            except (ConnectionLost, Unavailable) as exc:
                if not self._client.auto_resume:
                    raise Unavailable(
                        f"the leader stream's server {stream.conn.endpoint} went away ({_core.describe_error(exc)})"
                    ) from None
                self._stream = await self._client._open_stream("watch_leader", {}, avoid=stream.conn.endpoint)
                continue
            if info == self._last:
                continue
            self._last = info
            return info


class MemberWatch(_ServerStream):
    """``async with client.watch_members() as changes``: MembershipChange values."""

    _op = "watch_members"

    async def __anext__(self) -> MembershipChange:
        stream = self._stream
        if stream is None:
            raise StopAsyncIteration
        try:
            return _core.membership_item(await stream.receive(), self._client._router)
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        except ConnectionLost as exc:
            raise Unavailable(
                f"the membership stream's server {stream.conn.endpoint} went away ({_core.describe_error(exc)}); "
                "changes are not replayed: read members() and open a new one"
            ) from None


@asynccontextmanager
async def open_client(
    endpoints: Sequence[str] | str,
    *,
    timeout: float = 5.0,
    auto_resume: bool = True,
    cluster_id: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    rng: random.Random | None = None,
    keepalive_timeout: float | None = None,
) -> AsyncIterator[Client]:
    """A client of the servers at ``endpoints`` (``"host:port"`` strings, or
    one comma-separated string; ``http://host:port`` and ``https://host:port``
    too, ``https`` meaning TLS). ``timeout`` is the default deadline of every
    call, in seconds; ``cluster_id`` must match the servers' (default
    ``"dengine"``); ``ssl_context`` turns on TLS (an ``https://`` endpoint
    with no ``ssl_context`` uses the system's CAs). Connections open lazily.
    While a call waits, a server silent for ``keepalive_timeout`` seconds
    (default: its election timeout, from its welcome; ``math.inf``: never)
    is given up and the call moves on (docs/protocol.md §7)."""
    eps = _core.parse_endpoints(endpoints)
    keepalive = _core.check_keepalive(keepalive_timeout)
    limit = _core.check_timeout(timeout)
    cluster = _core.check_cluster_id(cluster_id)
    if _core.wants_tls(eps, ssl_context is not None) and ssl_context is None:
        ssl_context = ssl.create_default_context()
    try:
        async with trio.open_nursery() as nursery:
            client = Client(
                eps,
                nursery,
                timeout=limit,
                auto_resume=bool(auto_resume),
                cluster_id=cluster,
                ssl_context=ssl_context,
                rng=rng if rng is not None else random.Random(),
                keepalive_timeout=keepalive,
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

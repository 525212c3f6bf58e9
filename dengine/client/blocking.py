"""The blocking client, for programs that do not run trio.

    import dengine

    with dengine.connect(["127.0.0.1:9081", "127.0.0.1:9082"]) as client:
        client.put(b"/config/timeout", b"30")
        print(client.get(b"/config/timeout"))
        with client.watch(b"/config/", prefix=True) as watch:
            for event in watch:
                print(event.type.name, event.key, event.value, event.revision)

Rules of this client:

* The same methods as the trio client (:func:`dengine.open_client`), without
  ``await``; ``watch`` is a context manager and an iterator. Plain blocking
  sockets (TLS with the standard ``ssl`` module); it never imports trio or
  the engine, so ``import dengine; dengine.connect(...)`` stays cheap.
* It decides nothing of its own: arguments, requests and their results,
  matching responses, error mapping, where each call goes, whether and when
  it is retried, what a timeout says and how a watch resumes all come from
  the sans-IO core :mod:`dengine.client._core`, shared with the trio client.
  This module only moves bytes and waits.
* One connection per endpoint for calls, opened on first use. A call sends
  one frame and reads until its answer, with socket timeouts computed from
  the call's deadline. A frame whose ``sendall`` failed was cut short, so the
  server never decoded it (``sent`` False); a connection that fails is closed
  and forgotten.
* Calls from several threads take turns (one lock per client). A watch has
  a connection of its own, so one thread can iterate a watch while others
  make calls.
* An exception that is not the protocol's (``KeyboardInterrupt`` in the
  middle of a call) closes the connection it interrupted: what was on the
  wire is unknown.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from contextlib import contextmanager
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

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
from dengine.client import _core
from dengine.client._core import (
    Attempts,
    Call,
    ConnectionEnded,
    ConnectionLost,
    ConnectionState,
    Endpoint,
    Expired,
    Liveness,
    Next,
    Router,
    StreamBuffer,
    StreamEnded,
    WatchState,
    calls,
)
from dengine.errors import ClusterError, DengineError, LeaseNotFound, Timeout, Unavailable
from dengine.renewal import RenewedLease

if TYPE_CHECKING:
    import ssl

__all__ = ["BlockingClient", "BlockingKeptLease", "BlockingMemberWatch", "BlockingWatch", "connect"]

log = logging.getLogger("dengine.lease")
# How long the revoke at the end of an open_lease block may take, at most.
_REVOKE_TIMEOUT = 5.0

_RECEIVE_SIZE = 256 * 1024
_WRITE_TIMEOUT = 10.0
_STREAM_BUFFER = 4096


class BlockingKeptLease(RenewedLease):
    """A lease kept alive by :meth:`BlockingClient.open_lease`: ``id``,
    ``ttl``, ``lost`` (a ``threading.Event``), ``deadline`` (a
    ``time.monotonic()`` until which it surely lives) and ``renewals``."""

    def __init__(self, lease: Lease, sent: float) -> None:
        super().__init__(lease.id, lease.ttl, sent)
        self.lost = threading.Event()

    def __repr__(self) -> str:
        return f"BlockingKeptLease(id={self.id}, ttl={self.ttl:g}, {'lost' if self.lost.is_set() else 'kept'})"

    def _keep(self, client: BlockingClient, stop: threading.Event) -> None:
        renewal = self._renewal
        while not stop.wait(max(0.0, renewal.wake_at() - _now())):
            now = _now()
            timeout = renewal.due(now)
            if timeout is None:
                log.warning("lease %d could not be renewed before it would expire; its holder lost it", self.id)
                break
            try:
                remaining = client.keep_alive(self.id, timeout=timeout)
            except LeaseNotFound:
                log.warning("lease %d is gone (expired or revoked); its holder lost it", self.id)
                renewal.gone()
                break
            except ClusterError as exc:
                log.info("lease %d: keep-alive failed (%s); retrying", self.id, exc)
                renewal.failed(_now())
                continue
            renewal.renewed(now, remaining)
        else:
            return  # the block ended
        self.lost.set()


def _now() -> float:
    return time.monotonic()


class _Connection:
    """One socket to one server, and its protocol state."""

    def __init__(self, endpoint: Endpoint, sock: socket.socket, state: ConnectionState,
                 keepalive_timeout: float | None = None) -> None:
        self.endpoint = endpoint.address
        self.node_id: int = state.node_id if state.node_id is not None else 0
        self.info = state.info
        self._sock = sock
        self._state = state
        self._live = Liveness(_core.keepalive_timeout(keepalive_timeout, state.info), _now())
        self.closed: str | None = None

    @classmethod
    def open(cls, endpoint: Endpoint, *, cluster_id: str, ssl_context: ssl.SSLContext | None,
             timeout: float, keepalive_timeout: float | None = None) -> _Connection:
        """Connect and shake hands within ``timeout``; raises OSError for an
        unreachable endpoint, the refusal's DengineError, ProtocolError for
        a server that does not speak the protocol, Timeout for one that
        does not answer the hello."""
        deadline = _now() + timeout
        state = ConnectionState(endpoint.address, cluster_id=cluster_id)
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ssl_context is not None:
                sock.settimeout(max(0.001, deadline - _now()))
                sock = ssl_context.wrap_socket(sock, server_hostname=endpoint.host)
            started = _now()
            sock.settimeout(max(0.001, deadline - _now()))
            sock.sendall(state.hello())
            node_id = None
            while node_id is None:
                sock.settimeout(max(0.001, deadline - _now()))
                try:
                    data = sock.recv(_RECEIVE_SIZE)
                except TimeoutError:
                    raise state.handshake_timed_out(_now() - started) from None
                if not data:
                    raise state.handshake_ended()
                node_id = state.receive_handshake(data)
        except BaseException:
            sock.close()
            raise
        return cls(endpoint, sock, state, keepalive_timeout)

    def close(self, reason: str = "closed") -> None:
        if self.closed is None:
            self.closed = reason
            self._state.close(reason)
            self._sock.close()

    def _lost(self, reason: str, *, sent: bool) -> ConnectionLost:
        self.close(reason)
        return ConnectionLost(self.endpoint, sent=sent, reason=reason)

    def _send(self, data: bytes, deadline: float) -> None:
        """Write one frame; ConnectionLost(sent=False) if it failed (the frame
        was cut short: the server never decoded it)."""
        try:
            self._sock.settimeout(max(0.001, min(_WRITE_TIMEOUT, deadline - _now())))
            self._sock.sendall(data)
        except OSError as exc:
            raise self._lost(_core.describe_error(exc), sent=False) from None

    def _pump(self, deadline: float, *, busy: bool = False) -> list[tuple[int, Any]]:
        """Read once (until ``deadline``: Expired); the answers that came.
        ``busy``: a request waits, so a silent server is pinged and, silent
        too long, given up (ConnectionLost; the core's Liveness decides)."""
        live = self._live
        while True:
            if self.closed is not None:
                raise ConnectionLost(self.endpoint, sent=True, reason=self.closed)
            now = _now()
            if deadline - now <= 0:
                raise Expired(sent=True)
            until = min(deadline, live.next_check()) if busy else deadline
            if busy and until <= now:
                verdict = live.check(now)
                if verdict == Liveness.DEAD:
                    raise self._lost(live.silence(self.endpoint, now), sent=True)
                if verdict == Liveness.PING:
                    self._send(self._state.ping(), now + _WRITE_TIMEOUT)
                continue
            self._sock.settimeout(None if until == float("inf") else until - now)
            try:
                data = self._sock.recv(_RECEIVE_SIZE)
                break
            except TimeoutError:
                continue  # the deadline or the keepalive's next check
            except OSError as exc:
                raise self._lost(_core.describe_error(exc), sent=True) from None
        if not data:
            raise self._lost("the server closed the connection", sent=True)
        live.received(_now())
        try:
            answers = self._state.receive(data)
        except ConnectionEnded as exc:
            raise self._lost(exc.reason, sent=True) from None
        for frame in self._state.outgoing():
            self._send(frame, _now() + _WRITE_TIMEOUT)
        return answers

    def request(self, op: str, args: dict[str, Any], *, deadline: float = float("inf")) -> dict[str, Any]:
        """One unary request: its result map, or raise its DengineError,
        ConnectionLost, or Expired once ``deadline`` (time.monotonic) passes."""
        if self.closed is not None:
            raise ConnectionLost(self.endpoint, sent=False, reason=self.closed)
        rid, frame = self._state.request(op, args)
        self._live.busy(_now())
        try:
            self._send(frame, deadline)
            while True:
                for answered, response in self._pump(deadline, busy=True):
                    if answered == rid:
                        return _core.result_of(response)
        except (Expired, ConnectionLost, DengineError):
            raise
        except BaseException:
            self.close("interrupted")  # what is on the wire is unknown
            raise
        finally:
            self._state.forget(rid)

    def open_stream(self, op: str, args: dict[str, Any], *, deadline: float) -> StreamBuffer:
        buffer, frame = self._state.stream(op, args, limit=_STREAM_BUFFER)
        self._send(frame, deadline)
        return buffer

    def next_item(self, buffer: StreamBuffer, deadline: float = float("inf")) -> dict[str, Any]:
        """The stream's next item (reading as needed); raises its end, or
        Expired once ``deadline`` passes."""
        while True:
            item = buffer.pop()
            if item is not None:
                return item
            try:
                self._pump(deadline)
            except ConnectionLost:
                pass  # the buffer now ends with it
            except Expired:
                raise
            except BaseException:
                self.close("interrupted")
                raise

    def cancel(self, buffer: StreamBuffer) -> None:
        frame = self._state.cancel(buffer)
        if frame is not None and self.closed is None:
            try:
                self._send(frame, _now() + 1.0)
            except ConnectionLost:
                pass


class BlockingClient:
    """A blocking client of the servers of one cluster. Obtain it from
    :func:`connect`; close it (or use ``with``)."""

    def __init__(self, endpoints: Sequence[Endpoint], *, timeout: float, auto_resume: bool, cluster_id: str,
                 ssl_context: ssl.SSLContext | None, rng: random.Random,
                 keepalive_timeout: float | None = None) -> None:
        self._eps = {e.address: e for e in endpoints}
        self._router = Router([e.address for e in endpoints])
        self.timeout = timeout
        self.auto_resume = auto_resume
        self.cluster_id = cluster_id
        self._ssl_context = ssl_context
        self._rng = rng
        self.keepalive_timeout = keepalive_timeout
        self._conns: dict[str, _Connection] = {}
        self._lock = threading.RLock()
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

    # -- connections ------------------------------------------------------------

    def _endpoint(self, address: str) -> Endpoint:
        ep = self._eps.get(address)
        if ep is None:
            ep = self._eps[address] = _core.parse_endpoint(address)
        return ep

    def _open(self, endpoint: str, deadline: float) -> _Connection:
        if self._closed:
            raise Unavailable("the client is closed")
        return _Connection.open(self._endpoint(endpoint), cluster_id=self.cluster_id, ssl_context=self._ssl_context,
                                timeout=_core.connect_timeout(deadline, _now(), self._router.silence(self.keepalive_timeout)),
                                keepalive_timeout=self.keepalive_timeout)

    def _connection(self, endpoint: str, deadline: float) -> _Connection:
        conn = self._conns.get(endpoint)
        if conn is not None and conn.closed is None:
            return conn
        conn = self._conns[endpoint] = self._open(endpoint, deadline)
        self._router.welcomed(endpoint, conn.node_id, conn.info)
        return conn

    def _connected(self) -> list[str]:
        return [e for e, c in self._conns.items() if c.closed is None]

    def _drop(self, endpoint: str) -> None:
        conn = self._conns.pop(endpoint, None)
        if conn is not None:
            conn.close()
        self._router.dropped(endpoint)

    def _sleep(self, att: Attempts) -> bool:
        delay = att.backoff(_now())
        if delay is None:
            return False
        time.sleep(delay)
        return _now() < att.request_deadline

    # -- calls --------------------------------------------------------------------

    def _run(self, call: Call) -> Any:
        with self._lock:
            att = Attempts(call, self._router, limit=self.timeout if call.timeout is None else call.timeout,
                           now=_now(), rng=self._rng)
            while True:
                endpoint = att.target(self._connected())
                try:
                    conn = self._connection(endpoint, att.request_deadline)
                except (OSError, DengineError) as exc:
                    self._drop(endpoint)
                    att.connect_failed(endpoint, exc)
                    if not self._sleep(att):
                        break
                    continue
                att.connected(endpoint, conn.node_id)
                att.sending()
                try:
                    body = conn.request(call.op, att.args(_now()), deadline=att.request_deadline)
                    return att.answered(endpoint, body)
                except (Expired, ConnectionLost, DengineError) as exc:
                    if isinstance(exc, ConnectionLost):
                        self._drop(endpoint)
                    step = att.failed(endpoint, exc)
                if step is Next.GIVE_UP:
                    break
                if step is Next.BACKOFF and not self._sleep(att):
                    break
            raise att.timeout_error(self._diagnose(att))

    def _diagnose(self, att: Attempts) -> _core.Diagnosis | None:
        """Ask what the core's Diagnosis wants to know, in the time kept for it."""
        diag = att.diagnosis()
        if diag is None:
            return None
        for endpoint in diag.status_targets():
            if _now() >= att.deadline:
                return diag
            try:
                conn = self._connection(endpoint, att.deadline)
                diag.saw_status(endpoint, calls.status(timeout=None).decode(
                    conn.request("status", {}, deadline=att.deadline)))
            except (OSError, Expired, ConnectionLost, DengineError) as exc:
                diag.status_failed(endpoint, exc)
        for endpoint in diag.probe_targets():
            if _now() >= att.deadline:
                return diag
            try:
                diag.saw_probe(endpoint, self._connection(endpoint, att.deadline).node_id)
            except (OSError, DengineError) as exc:
                diag.saw_probe(endpoint, exc)
        return diag

    # -- writes ---------------------------------------------------------------------

    def put(self, key: bytes, value: bytes, *, ttl: float | None = None, lease: int = 0,
            timeout: float | None = None) -> int:
        """Set ``key`` to ``value``; returns the revision of the write.
        ``ttl`` makes it expire; ``lease`` attaches it to a lease."""
        return self._run(calls.put(key, value, ttl=ttl, timeout=timeout, max_key_size=self.max_key_size,  # type: ignore[no-any-return]
                                   max_value_size=self.max_value_size, lease=lease))

    def txn(self, compare: Sequence[Compare] = (), success: Sequence[Op] = (), failure: Sequence[Op] = (),
            *, timeout: float | None = None) -> TxnResult:
        """If every compare holds run ``success``, else ``failure``:
        atomically, at one revision (docs/coordination.md)."""
        return self._run(calls.txn(compare, success, failure, timeout=timeout,  # type: ignore[no-any-return]
                                   max_key_size=self.max_key_size, max_value_size=self.max_value_size))

    # -- leases (keep one alive by calling keep_alive about every ttl/3) -------------

    @contextmanager
    def open_lease(self, ttl: float, *, timeout: float | None = None) -> Iterator[BlockingKeptLease]:
        """``with client.open_lease(ttl) as lease:`` a lease kept alive by a
        thread for the block and revoked after it, as the trio client's
        ``open_lease`` (dengine.keepalive); ``lease.lost`` (a
        ``threading.Event``) is set if it could not be renewed in time.
        Renewals take turns with the block's own calls on this client."""
        sent = _now()
        kept = BlockingKeptLease(self.grant_lease(ttl, timeout=timeout), sent)
        stop = threading.Event()
        keeper = threading.Thread(target=kept._keep, args=(self, stop), name=f"dengine-lease-{kept.id}", daemon=True)
        keeper.start()
        try:
            yield kept
        finally:
            stop.set()
            keeper.join()
            try:
                self.revoke_lease(kept.id, timeout=_REVOKE_TIMEOUT)
            except LeaseNotFound:
                pass
            except DengineError as exc:
                log.warning("lease %d: revoke at the end of its block failed (%s); it expires on its own", kept.id, exc)

    def grant_lease(self, ttl: float, *, lease_id: int = 0, timeout: float | None = None) -> Lease:
        """A new lease of ``ttl`` seconds (at least the cluster's minimum)."""
        return self._run(calls.grant_lease(ttl, lease_id=lease_id, timeout=timeout))  # type: ignore[no-any-return]

    def keep_alive(self, lease_id: int, *, timeout: float | None = None) -> float:
        """Renew a lease; it lives at least the returned seconds from this call."""
        return self._run(calls.keep_alive(lease_id, timeout=timeout))  # type: ignore[no-any-return]

    def revoke_lease(self, lease_id: int, *, timeout: float | None = None) -> None:
        """End a lease now and delete its keys."""
        self._run(calls.revoke_lease(lease_id, timeout=timeout))

    def lease_time_to_live(self, lease_id: int, *, keys: bool = False, timeout: float | None = None) -> LeaseStatus:
        """A lease's granted TTL, seconds left and (with ``keys``) its keys."""
        return self._run(calls.lease_time_to_live(lease_id, keys=keys, timeout=timeout))  # type: ignore[no-any-return]

    def leases(self, *, timeout: float | None = None) -> list[Lease]:
        """Every lease, by id."""
        return self._run(calls.leases(timeout=timeout))  # type: ignore[no-any-return]

    def delete(self, key: bytes, *, timeout: float | None = None) -> bool:
        """Delete ``key``; True if it existed."""
        return self._run(calls.delete(key, timeout=timeout, max_key_size=self.max_key_size))  # type: ignore[no-any-return]

    def compare_and_swap(self, key: bytes, *, expected: bytes | None, new: bytes, ttl: float | None = None,
                         timeout: float | None = None) -> bool:
        """Set ``key`` to ``new`` only if it holds ``expected`` (None: absent)."""
        return self._run(calls.compare_and_swap(  # type: ignore[no-any-return]
            key, expected=expected, new=new, ttl=ttl, timeout=timeout,
            max_key_size=self.max_key_size, max_value_size=self.max_value_size))

    # -- reads ------------------------------------------------------------------------

    def get(self, key: bytes, *, consistency: ReadConsistency | str | None = None,
            timeout: float | None = None) -> bytes | None:
        return self._run(calls.get(key, consistency=consistency, timeout=timeout,  # type: ignore[no-any-return]
                                   max_key_size=self.max_key_size))

    def get_kv(self, key: bytes, *, consistency: ReadConsistency | str | None = None,
               timeout: float | None = None) -> KeyValue | None:
        """Like get, with the revision that last set the key."""
        return self._run(calls.get_kv(key, consistency=consistency, timeout=timeout,  # type: ignore[no-any-return]
                                      max_key_size=self.max_key_size))

    def get_many(self, keys: Sequence[bytes], *, consistency: ReadConsistency | str | None = None,
                 timeout: float | None = None) -> list[bytes | None]:
        """Several keys read at one consistent point."""
        return self._run(calls.get_many(keys, consistency=consistency, timeout=timeout,  # type: ignore[no-any-return]
                                        max_key_size=self.max_key_size))

    def scan_prefix(self, prefix: bytes, *, limit: int | None = None, keys_only: bool = False,
                    count_only: bool = False,
                    consistency: ReadConsistency | str | None = ReadConsistency.LINEARIZABLE,
                    timeout: float | None = None) -> ScanResult:
        """Every key starting with ``prefix`` (at most ``limit``), with the
        revision the scan saw, the count and whether more remain."""
        return self._run(calls.scan_prefix(  # type: ignore[no-any-return]
            prefix, consistency=consistency, timeout=timeout, max_key_size=self.max_key_size, limit=limit,
            keys_only=keys_only, count_only=count_only))

    def scan_range(self, start: bytes, end: bytes | None = None, *, limit: int | None = None,
                   keys_only: bool = False, count_only: bool = False,
                   consistency: ReadConsistency | str | None = ReadConsistency.LINEARIZABLE,
                   timeout: float | None = None) -> ScanResult:
        """Every key ``k`` with ``start <= k < end`` (``end`` None: to the last key)."""
        return self._run(calls.scan_range(  # type: ignore[no-any-return]
            start, end, consistency=consistency, timeout=timeout, max_key_size=self.max_key_size, limit=limit,
            keys_only=keys_only, count_only=count_only))

    # -- cluster ------------------------------------------------------------------------

    def status(self, *, endpoint: str | None = None, timeout: float | None = None) -> Status:
        """The status of one server (``endpoint``, else any)."""
        call = calls.status(timeout=timeout)
        if endpoint is None:
            return self._run(call)  # type: ignore[no-any-return]
        limit = self.timeout if call.timeout is None else call.timeout
        deadline = _now() + limit
        with self._lock:
            try:
                conn = self._connection(endpoint, deadline)
                return call.decode(conn.request(call.op, {}, deadline=deadline))  # type: ignore[no-any-return]
            except (OSError, ConnectionLost) as exc:
                self._drop(endpoint)
                raise Unavailable(f"cannot reach {endpoint}: {_core.describe_error(exc)}") from None
            except Expired:
                raise Timeout(f"{call.op} of {endpoint} did not complete within {limit:g} s") from None

    def members(self, *, timeout: float | None = None) -> list[Member]:
        return self._run(calls.members(timeout=timeout))  # type: ignore[no-any-return]

    def leader(self, *, timeout: float | None = None) -> LeaderInfo:
        """The leader as the server the client talks to sees it."""
        return self._run(calls.leader(timeout=timeout))  # type: ignore[no-any-return]

    # -- membership (the same names as dengine.Engine's) ------------------------------

    def add_member(self, peer_address: str, *, learner: bool = True, node_id: int | None = None,
                   client_address: str | None = None, timeout: float | None = None) -> Member:
        """Add a member (a learner; ``learner=False``: promoted once caught up)."""
        return self._run(calls.add_member(  # type: ignore[no-any-return]
            peer_address, learner=learner, node_id=node_id, client_address=client_address, timeout=timeout))

    def promote_member(self, node_id: int, *, timeout: float | None = None) -> Member:
        return self._run(calls.promote_member(node_id, timeout=timeout))  # type: ignore[no-any-return]

    def remove_member(self, node_id: int, *, timeout: float | None = None) -> None:
        self._run(calls.remove_member(node_id, timeout=timeout))

    def update_member(self, node_id: int, *, peer_address: str | None = None, client_address: str | None = None,
                      timeout: float | None = None) -> Member:
        return self._run(calls.update_member(  # type: ignore[no-any-return]
            node_id, peer_address=peer_address, client_address=client_address, timeout=timeout))

    # -- watches ----------------------------------------------------------------------------

    def watch(self, key: bytes, *, prefix: bool = False, prev_kv: bool = False,
              start_revision: int | None = None) -> BlockingWatch:
        """Watch ``key`` (or every key under a ``/.../`` prefix)::

            with client.watch(b"/services/", prefix=True) as watch:
                for event in watch: ...

        The watch is registered on a server when the block is entered (or
        at the first event asked for)."""
        state = WatchState(key, prefix=prefix, prev_kv=prev_kv, start_revision=start_revision,
                           max_key_size=self.max_key_size)
        return BlockingWatch(self, state)

    open_watch = watch

    def _open_stream(self, op: str, args: dict[str, Any], *, avoid: str | None
                     ) -> tuple[_Connection, StreamBuffer]:
        """Open a stream on a connection of its own, on some server, within
        the client's timeout."""
        with self._lock:
            att = Attempts(_core.stream_call(op, args), self._router, limit=self.timeout, now=_now(), rng=self._rng)
        att.avoid = avoid
        while _now() < att.deadline:
            with self._lock:
                endpoint = att.target()
            conn: _Connection | None = None
            try:
                conn = self._open(endpoint, att.deadline)
                with self._lock:
                    self._router.welcomed(endpoint, conn.node_id, conn.info)
                return conn, conn.open_stream(op, args, deadline=att.deadline)
            except (OSError, ConnectionLost, DengineError) as exc:
                if conn is not None:
                    conn.close()
                with self._lock:
                    att.stream_failed(endpoint, exc)
            if not self._sleep(att):
                break
        raise att.stream_error()

    def watch_members(self) -> BlockingMemberWatch:
        """``with client.watch_members() as changes: for change in changes``:
        every membership change from now on. If its server goes away the
        iteration ends with Unavailable (changes are not replayed: read
        ``members()`` and open a new one)."""
        return BlockingMemberWatch(self)

    # -- backup -------------------------------------------------------------------------

    def save_snapshot(self, path: str | os.PathLike[str], *,
                      progress: Callable[[int, int], None] | None = None) -> int:
        """Like ``Client.save_snapshot``: a consistent backup to ``path``; its
        revision."""
        conn, buffer = self._open_stream("snapshot", {}, avoid=None)
        writer: BackupWriter | None = None
        try:
            header = _core.backup_header(conn.next_item(buffer))
            writer = BackupWriter(os.fspath(path), header)
            while True:
                try:
                    chunk = _core.backup_chunk(conn.next_item(buffer))
                except StreamEnded:
                    break
                writer.write(chunk)
                if progress is not None:
                    progress(writer.written, header.size)
            writer.finish()
            writer = None
            return header.revision
        except ConnectionLost as exc:
            raise Unavailable(f"the server sending the backup went away ({_core.describe_error(exc)}); "
                              "nothing was saved") from None
        finally:
            if writer is not None:
                writer.abort()
            conn.close()

    # -- closing ------------------------------------------------------------------------

    def close(self) -> None:
        """Close every connection (watches close their own)."""
        with self._lock:
            self._closed = True
            for endpoint in list(self._conns):
                self._drop(endpoint)

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class BlockingWatch:
    """A watch served by some server over a connection of its own; iterate
    it for WatchEvents. Ends after a CANCELED event; raises Unavailable if
    its server goes away and ``auto_resume`` is off (or no server can take
    it over)."""

    def __init__(self, client: BlockingClient, state: WatchState) -> None:
        self._client = client
        self._state = state
        self.key = state.key
        self.prefix = state.prefix
        self.prev_kv = state.prev_kv
        self._conn: _Connection | None = None
        self._buffer: StreamBuffer | None = None
        self._opened = False
        self._closed = False

    @property
    def endpoint(self) -> str | None:
        """The server currently serving this watch."""
        return None if self._conn is None else self._conn.endpoint

    @property
    def next_revision(self) -> int | None:
        return self._state.start

    @property
    def resumes(self) -> int:
        return self._state.resumes

    def _open(self, avoid: str | None) -> None:
        client = self._client
        deadline = _now() + client.timeout
        while True:
            if _now() >= deadline:
                raise Unavailable(f"no server could take over the watch within {client.timeout:g} s")
            conn, buffer = client._open_stream("watch", self._state.open_args(), avoid=avoid)
            try:
                self._state.opened(conn.next_item(buffer, deadline))
            except (ConnectionLost, Unavailable, Expired):
                conn.close()
                avoid = conn.endpoint
                time.sleep(_core.backoff_delay(1, client._rng, client._router.backoff_cap()))
                continue
            except BaseException:
                conn.close()
                raise
            self._conn, self._buffer, self._opened = conn, buffer, True
            return

    def receive(self, timeout: float | None = None) -> WatchEvent:
        """The next event; raises Timeout if none comes within ``timeout``
        seconds (None: wait as long as it takes), EOFError once the watch
        ended (after its CANCELED event, or when the server ended it)."""
        deadline = float("inf") if timeout is None else _now() + _core.check_timeout(timeout)
        state = self._state
        if not self._opened and not self._closed:
            self._open(avoid=None)
        while True:
            if self._closed:
                raise Unavailable("this watch was closed")
            conn, buffer = self._conn, self._buffer
            if state.done or conn is None or buffer is None:
                raise EOFError("the watch ended")
            try:
                body = conn.next_item(buffer, deadline)
            except _core.StreamEnded:
                state.done = True
                raise EOFError("the server ended the watch") from None
            except Expired:
                raise Timeout(f"no event within {timeout:g} s") from None
            except (ConnectionLost, Unavailable) as exc:
                conn.close()
                state.lost(conn.endpoint, exc, auto_resume=self._client.auto_resume)
                self._conn = self._buffer = None
                self._open(avoid=conn.endpoint)
                continue
            event = state.item(body)
            if event is None:
                continue
            if state.done:
                self._drop()
            return event

    def __iter__(self) -> Iterator[WatchEvent]:
        return self

    def __next__(self) -> WatchEvent:
        try:
            return self.receive()
        except EOFError:
            raise StopIteration from None

    def _drop(self) -> None:
        conn, buffer = self._conn, self._buffer
        self._conn = self._buffer = None
        if conn is not None:
            if buffer is not None:
                conn.cancel(buffer)
            conn.close()

    def close(self) -> None:
        self._closed = True
        self._drop()

    def __enter__(self) -> BlockingWatch:
        if not self._opened:
            self._open(avoid=None)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def connect(
    endpoints: Sequence[str] | str,
    *,
    timeout: float = 5.0,
    auto_resume: bool = True,
    cluster_id: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    rng: random.Random | None = None,
    keepalive_timeout: float | None = None,
) -> BlockingClient:
    """A blocking client of the servers at ``endpoints``: the arguments of
    :func:`dengine.open_client`. Connections open on first use; close the
    client (or use ``with``) when done."""
    eps = _core.parse_endpoints(endpoints)
    limit = _core.check_timeout(timeout)
    keepalive = _core.check_keepalive(keepalive_timeout)
    cluster = _core.check_cluster_id(cluster_id)
    if _core.wants_tls(eps, ssl_context is not None) and ssl_context is None:
        import ssl as ssl_module

        ssl_context = ssl_module.create_default_context()
    return BlockingClient(eps, timeout=limit, auto_resume=bool(auto_resume), cluster_id=cluster,
                          ssl_context=ssl_context, rng=rng if rng is not None else random.Random(),
                          keepalive_timeout=keepalive)


class BlockingMemberWatch:
    """MembershipChange values from one server, over a connection of its own."""

    def __init__(self, client: BlockingClient) -> None:
        self._client = client
        self._conn: _Connection | None = None
        self._buffer: StreamBuffer | None = None

    def __enter__(self) -> BlockingMemberWatch:
        self._conn, self._buffer = self._client._open_stream("watch_members", {}, avoid=None)
        return self

    def __exit__(self, *exc: object) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __iter__(self) -> Iterator[MembershipChange]:
        return self

    def __next__(self) -> MembershipChange:
        conn, buffer = self._conn, self._buffer
        if conn is None or buffer is None:
            raise StopIteration
        try:
            return _core.membership_item(conn.next_item(buffer), self._client._router)
        except StreamEnded:
            raise StopIteration from None
        except ConnectionLost as exc:
            raise Unavailable(
                f"the membership stream's server {conn.endpoint} went away ({_core.describe_error(exc)}); "
                "changes are not replayed: read members() and open a new one"
            ) from None

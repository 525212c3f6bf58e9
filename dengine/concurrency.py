"""Coordination recipes over any client: Session, Lock, Election.

They work on the embedded client (``engine.client``) and the remote trio
client (``dengine.open_client``) alike, using only the public API: leases,
transactions, scans and watches. The layout of their keys is etcd's, so the
same cluster state means the same thing to every process:

* a **Session** is one lease kept alive for an ``async with`` block
  (:meth:`Client.open_lease`); ``session.lost`` is set if it could not be
  renewed in time, and the lease is revoked when the block ends;
* a **Lock** named ``/locks/jobs`` is held by whoever owns the key under
  ``/locks/jobs/`` with the smallest create_revision. Each contender creates
  its own key ``/locks/jobs/<lease id in hex>`` on its session's lease, then
  waits only for the deletion of the key just before its own (no thundering
  herd: one waiter wakes per release). A holder that dies loses its key when
  its lease expires, so the next in line gets the lock. The revision that
  created the key is the lock's **fencing token**: it grows with every
  acquisition, so a storage service that remembers the largest token it saw
  can refuse a stale holder that still believes it holds the lock;
* an **Election** is the same queue, with the leader's value in its key.

Rules: leaving a block (also by cancellation) releases what it holds, with
the release shielded from the cancellation and bounded in time; a
session's loss is reported (``lost``), and with
``lock.hold(cancel_on_loss=True)`` it cancels the guarded block, which then
raises :class:`SessionLost`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Any

import trio

from dengine.api import Compare, KeyValue, Op, WatchEventType
from dengine.errors import DengineError, InvalidArgument, SessionLost
from dengine.keepalive import KeptLease

__all__ = ["Election", "Lock", "Session", "SessionLost"]

log = logging.getLogger("dengine.concurrency")

# How long a release (delete of the own key) may take when a block ends.
_RELEASE_TIMEOUT = 5.0


class Session:
    """One lease kept alive while the ``async with`` block runs::

        async with Session(client, ttl=10) as session:
            async with Lock(session, b"/locks/jobs"):
                ...

    ``ttl`` (seconds) is how long the cluster waits after this process stops
    renewing (it died, or was cut off) before it deletes the session's keys
    and hands its locks to the next in line."""

    def __init__(self, client: Any, *, ttl: float = 60.0) -> None:
        self.client = client
        self.ttl = ttl
        self._stack: AsyncExitStack | None = None
        self._lease: KeptLease | None = None

    @property
    def lease(self) -> KeptLease:
        if self._lease is None:
            raise InvalidArgument("the session is not open: use it as `async with Session(client) as session:`")
        return self._lease

    @property
    def lease_id(self) -> int:
        """The id of the session's lease."""
        return self.lease.id

    @property
    def lost(self) -> trio.Event:
        """Set when the lease could not be renewed in time: what it guards
        is no longer safe."""
        return self.lease.lost

    async def __aenter__(self) -> Session:
        if self._stack is not None:
            raise InvalidArgument("a Session can be entered only once")
        stack = AsyncExitStack()
        self._lease = await stack.enter_async_context(self.client.open_lease(self.ttl))
        self._stack = stack
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        assert self._stack is not None
        return await self._stack.__aexit__(exc_type, exc, tb)


def _queue_prefix(name: bytes, what: str) -> bytes:
    if not isinstance(name, bytes):
        raise InvalidArgument(f"a {what} name must be bytes, got {type(name).__name__}")
    if not name.startswith(b"/") or name.strip(b"/") == b"":
        raise InvalidArgument(f"a {what} name must start with '/' and name something, got {name!r}")
    return name.rstrip(b"/") + b"/"


async def _delete_own(client: Any, key: bytes, revision: int) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(_RELEASE_TIMEOUT) as scope:
        for attempt in range(50):  # bounded by the time too
            try:
                await client.txn([Compare.create_revision(key) == revision], [Op.delete(key)], [])
                return
            except DengineError as exc:
                last = exc
                await trio.sleep(min(0.05 * 2**attempt, 0.5))
        log.warning("%r: release failed (%s); it ends when the session's lease does", key, last)
    if scope.cancelled_caught:
        log.warning("%r: release timed out; it ends when the session's lease does", key)


def _queue_order(kv: KeyValue) -> tuple[int, bytes]:
    # Each enqueue is a transaction, which has a revision of its own; the
    # key breaks a tie anyway (keys written by plain puts may share one).
    return (kv.create_revision, kv.key)


class _Queue:
    """Keys under a prefix, ordered by create_revision: the first is the
    holder; each later one waits for the deletion of the one before it."""

    def __init__(self, session: Session, name: bytes, what: str) -> None:
        self.session = session
        self.client = session.client
        self.prefix = _queue_prefix(name, what)
        self.key: bytes | None = None
        self.revision = 0  # create_revision of our key, once created

    def _own_key(self) -> bytes:
        return self.prefix + b"%016x" % self.session.lease_id

    async def enqueue(self, value: bytes) -> bool:
        """Create our key (True), or find it, made earlier on this session
        (False)."""
        key = self._own_key()
        result = await self.client.txn(
            [Compare.create_revision(key) == 0],
            [Op.put(key, value, lease=self.session.lease_id)],
            [Op.get(key)],
        )
        if result.succeeded:
            self.revision = result.revision
        else:
            kv: KeyValue | None = result.responses[0]
            if kv is None:  # deleted between the compare and now: impossible in one txn
                raise DengineError(f"{key!r}: key vanished inside a transaction")
            self.revision = kv.create_revision
        self.key = key
        return bool(result.succeeded)

    async def wait_turn(self) -> None:
        """Wait until no key older than ours is left under the prefix.
        Raise SessionLost if ours is gone (its lease ended while waiting:
        without it, the keys after ours would not wait for us)."""
        while True:
            scan = await self.client.scan_prefix(self.prefix)
            if not any(kv.key == self.key and kv.create_revision == self.revision for kv in scan.entries):
                raise SessionLost(f"{self.key!r} is gone: the session's lease ended while waiting in the queue")
            mine = (self.revision, self.key)
            older = [kv for kv in scan.entries if (kv.create_revision, kv.key) < mine]
            if not older:
                return
            before = max(older, key=_queue_order)
            await self._wait_deleted(before.key, scan.revision + 1)

    async def _wait_deleted(self, key: bytes, start_revision: int) -> None:
        async with self.client.open_watch(key, start_revision=start_revision) as watch:
            async for event in watch:
                if event.type in (WatchEventType.DELETE, WatchEventType.CANCELED):
                    return  # gone (or the watch ended): look again

    async def leave(self) -> None:
        """Delete our key (shielded, bounded); idempotent. A delete whose
        outcome is unknown (the leader died under it) is sent again -- it
        only deletes the key we created -- until it is answered or the
        time is up."""
        key, self.key = self.key, None
        if key is None:
            return
        await _delete_own(self.client, key, self.revision)

    async def drop_stale(self) -> None:
        """Our key was found left over from an earlier hold (its release
        never got an answer): delete it, so this acquisition queues anew
        with a fresh revision -- a larger fencing token."""
        key, self.key = self.key, None
        if key is not None:
            await _delete_own(self.client, key, self.revision)


class Lock:
    """A distributed mutex on a :class:`Session`::

        lock = Lock(session, b"/locks/jobs")
        async with lock:
            await storage.write(data, fencing_token=lock.fencing_token)

    Cancelling the block (or leaving it) releases the lock. With
    ``async with lock.hold(cancel_on_loss=True):`` the block is also
    cancelled, and :class:`SessionLost` raised, if the session is lost
    while it runs."""

    def __init__(self, session: Session, name: bytes) -> None:
        self._queue = _Queue(session, name, "lock")
        self.session = session
        self.name = name
        self._held = False

    @property
    def key(self) -> bytes | None:
        """This holder's key under the lock's prefix (None when not holding)."""
        return self._queue.key

    @property
    def fencing_token(self) -> int:
        """The revision at which this holder queued: larger than that of
        every earlier holder. 0 when not holding."""
        return self._queue.revision if self._held else 0

    @property
    def held(self) -> bool:
        return self._held

    async def acquire(self) -> None:
        """Wait until the lock is ours."""
        if self._held:
            raise InvalidArgument(f"lock {self.name!r} is already held by this Lock object")
        queue = self._queue
        try:
            if not await queue.enqueue(b""):
                await queue.drop_stale()
                if not await queue.enqueue(b""):
                    raise SessionLost(f"lock {self.name!r}: could not replace this session's stale key")
            await queue.wait_turn()
        except BaseException:
            await queue.leave()
            raise
        if self.session.lost.is_set():
            await queue.leave()
            raise SessionLost(f"lock {self.name!r}: the session's lease was lost while waiting")
        self._held = True

    async def release(self) -> None:
        """Give the lock up (the next in line gets it)."""
        self._held = False
        await self._queue.leave()

    async def __aenter__(self) -> Lock:
        await self.acquire()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.release()

    @asynccontextmanager
    async def hold(self, *, cancel_on_loss: bool = False) -> AsyncIterator[Lock]:
        """Hold the lock for a block; with ``cancel_on_loss`` the block is
        cancelled when the session is lost, and SessionLost raised."""
        async with self:
            if not cancel_on_loss:
                yield self
                return
            kept = self.session.lease
            with trio.CancelScope() as scope:
                kept.guard(scope)
                try:
                    yield self
                finally:
                    kept.unguard(scope)
            if scope.cancelled_caught:
                raise SessionLost(f"lock {self.name!r}: the session's lease was lost; the guarded block was cancelled")


class Election:
    """Leader election on a :class:`Session`::

        election = Election(session, b"/elections/scheduler")
        await election.campaign(b"node-a")     # returns when we lead
        ...
        await election.resign()

    ``leader()`` answers who leads now; ``observe()`` yields the leader's
    value each time it changes (also for observers that never campaign)."""

    def __init__(self, session: Session, name: bytes) -> None:
        self._queue = _Queue(session, name, "election")
        self.session = session
        self.name = name
        self._leading = False

    @property
    def is_leader(self) -> bool:
        """Whether this candidate leads (False once its session is lost)."""
        return self._leading and not self.session.lost.is_set()

    @property
    def key(self) -> bytes | None:
        """This candidate's key (None before campaigning): guard a leader's
        writes with ``Compare.create_revision(election.key) ==
        election.revision`` in a transaction."""
        return self._queue.key

    @property
    def revision(self) -> int:
        """The create_revision of our candidacy (0 before campaigning):
        a fencing token for the term of this leader."""
        return self._queue.revision

    async def campaign(self, value: bytes) -> None:
        """Stand for leader with ``value``; returns once elected. Cancelling
        the wait withdraws the candidacy."""
        queue = self._queue
        try:
            if not await queue.enqueue(value):
                await self._put_own(value)  # campaigning again on this session: the new value
            await queue.wait_turn()
        except BaseException:
            await queue.leave()
            raise
        self._leading = True

    async def _put_own(self, value: bytes) -> bool:
        queue = self._queue
        assert queue.key is not None
        result = await queue.client.txn([Compare.create_revision(queue.key) == queue.revision],
                                        [Op.put(queue.key, value, lease=self.session.lease_id)], [])
        return bool(result.succeeded)

    async def proclaim(self, value: bytes) -> None:
        """Change the leader's value (only while leading). Raises
        InvalidArgument if this candidate does not lead, SessionLost if it
        did but its key is gone (its session's lease ended)."""
        if not self._leading or self._queue.key is None:
            raise InvalidArgument(f"election {self.name!r}: proclaim needs this candidate to be the leader")
        if not await self._put_own(value):
            self._leading = False
            raise SessionLost(f"election {self.name!r}: this leader's key is gone (its session's lease ended)")

    async def resign(self) -> None:
        """Stop leading (or withdraw); the next candidate takes over."""
        self._leading = False
        await self._queue.leave()

    async def leader(self) -> KeyValue | None:
        """The leader's key and value now (None: nobody leads)."""
        scan = await self._queue.client.scan_prefix(self._queue.prefix)
        if not scan.entries:
            return None
        head: KeyValue = min(scan.entries, key=_queue_order)
        return head

    def observe(self) -> AsyncIterator[bytes]:
        """An async iterator of the leader's value: now and after every
        change, forever (until the caller stops iterating; it holds nothing
        open between values, so ``break`` needs no cleanup). Nothing is
        yielded while nobody leads."""
        return _LeaderValues(self._queue.client, self._queue.prefix)


class _LeaderValues:
    """Election.observe(): each step scans the candidates and, if the
    leader's key and value are what was last yielded, waits on a watch of
    the prefix (from the scan's revision on, so no change is missed)."""

    def __init__(self, client: Any, prefix: bytes) -> None:
        self._client = client
        self._prefix = prefix
        self._last: tuple[bytes, bytes, int] | None = None

    def __aiter__(self) -> _LeaderValues:
        return self

    async def __anext__(self) -> bytes:
        client = self._client
        while True:
            scan = await client.scan_prefix(self._prefix)
            if scan.entries:
                head = min(scan.entries, key=_queue_order)
                current = (head.key, head.value, head.revision)
                if current != self._last:
                    self._last = current
                    value: bytes = head.value
                    return value
            async with client.open_watch(self._prefix, prefix=True, start_revision=scan.revision + 1) as watch:
                async for event in watch:
                    if event.type in (WatchEventType.PUT, WatchEventType.DELETE, WatchEventType.CANCELED):
                        break

"""The embedded engine: a Raft node inside your trio application.

    async with dengine.open_engine("./dengine-data") as engine:
        await engine.wait_ready(timeout=5)
        await engine.client.put(b"/config/timeout", b"30")

``open_engine`` owns everything it opens (storage, transport, node tasks) and
closes them when the block exits: ``stop_notify`` first, then a leader hands
its leadership to a caught-up peer (under a deadline), pending calls fail with
``EngineStopped``, storage is synced and closed, and every task is cancelled.
If a task of the engine dies, the block is left with one clear ``dengine``
exception, not a bare ExceptionGroup.
"""

from __future__ import annotations

import logging
import math
import os
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

import attrs
import trio

from dengine.api import (
    Compare,
    FollowerProgress,
    Health,
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
    prefix_end as _prefix_end,
    validate_key,
    validate_lease_id,
    validate_txn,
    validate_node_id,
    validate_prefix,
    validate_limit,
    validate_range,
    validate_scan_prefix,
    validate_ttl,
    validate_value,
)
from dengine._version import __version__
from dengine.config import Config
from dengine.errors import (
    ClusterError,
    DengineError,
    EngineStopped,
    InvalidArgument,
    LeaderChanged,
    LeaseNotFound,
    MembershipChangeInProgress,
    MembershipChangeRefused,
    NotLeader,
    ProposalDropped,
    ResourceExhausted,
    StorageError,
    Timeout,
    Unavailable,
)
from dengine.config.addresses import address_argument
from dengine.keepalive import KeptLease, open_kept_lease
from dengine.kv.commands import Delete, LeaseGrant, LeaseRevoke, Put, Txn
from dengine.kv.members import encode_member_context
from dengine.kv.snapshot import encode_image
from dengine.lifecycle import Subscription
from dengine.raft.messages import ConfChange, ConfChangeType, Role
from dengine.raft.quorum import has_quorum
from dengine.runtime.node import NodeOptions, NullOutbox, Node, open_node, pace_encoding
from dengine.backup import write_backup
from dengine.storage.backup import check_cluster_id
from dengine.stats import HistogramData, PeerStatistics
from dengine.storage.file import FileStorage
from dengine.transport.base import single_leaf
from dengine.watch.dispatcher import DispatcherStatistics, Watch

log = logging.getLogger("dengine.engine")


# Formatted only when a deadline fires, not on every call.
_WRITE_TIMEOUT = "the write did not complete within {:g} s; it may or may not have been applied"
_READ_TIMEOUT = "the read did not complete within {:g} s (no leader could confirm it)"


def node_options(config: Config) -> NodeOptions:
    raft = config.raft
    return NodeOptions(
        raft=config.raft_config(),
        tick_interval=raft.tick_interval_ms / 1000,
        snapshot_threshold=raft.snapshot_threshold,
        snapshot_threshold_bytes=raft.snapshot_threshold_bytes,
        max_key_size=raft.max_key_size,
        max_value_size=raft.max_value_size,
        proposal_batch_max=raft.proposal_batch_max,
        addresses=dict(config.initial_cluster),
        watch=raft.watch,
        metrics=config.metrics.enabled,
        slow_fsync=config.metrics.slow_fsync_ms / 1000,
        slow_apply=config.metrics.slow_apply_ms / 1000,
    )


class EmbeddedClient:
    """The KV interface of an engine, the same one the standalone client offers.

    Every call takes ``timeout=`` (seconds; the engine's default when omitted).
    A write that times out may or may not have been applied (``Timeout`` says
    so). Writes must go to the leader: on a follower they raise ``NotLeader``
    carrying the leader's id and address.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        # An EVENTUAL read without awaiting: the local state machine, now --
        # the fastest read there is (embedded only); like any eventual read it
        # may be behind the leader. ``get_nowait(key) -> bytes | None``.
        self.get_nowait = engine._node.kv.get_nowait

    @property
    def _node(self) -> Node:
        return self._engine._node

    # -- membership and backup: the engine's, under the remote client's names --

    def members(self) -> tuple[Member, ...]:
        return self._engine.members()

    async def add_member(self, peer_address: str, *, learner: bool = True, node_id: int | None = None,
                         client_address: str | None = None, timeout: float | None = None) -> Member:
        return await self._engine.add_member(peer_address, learner=learner, node_id=node_id,
                                             client_address=client_address, timeout=timeout)

    async def promote_member(self, node_id: int, *, timeout: float | None = None) -> Member:
        return await self._engine.promote_member(node_id, timeout=timeout)

    async def remove_member(self, node_id: int, *, timeout: float | None = None) -> None:
        await self._engine.remove_member(node_id, timeout=timeout)

    async def update_member(self, node_id: int, *, peer_address: str | None = None,
                            client_address: str | None = None, timeout: float | None = None) -> Member:
        return await self._engine.update_member(node_id, peer_address=peer_address, client_address=client_address,
                                                timeout=timeout)

    def watch_members(self) -> Subscription[MembershipChange]:
        return self._engine.watch_members()

    async def save_snapshot(self, path: str | os.PathLike[str], *, timeout: float | None = None) -> int:
        return await self._engine.save_snapshot(path, timeout=timeout)

    # -- writes ---------------------------------------------------------

    async def put(self, key: bytes, value: bytes, *, ttl: float | None = None, lease: int = 0,
                  timeout: float | None = None) -> int:
        """Set ``key`` to ``value``; returns the revision (Raft index) of the write.
        ``ttl`` (seconds) makes the key expire; a put without ``ttl`` clears an
        earlier one. ``lease`` attaches the key to a lease (deleted with it);
        a put without one detaches it."""
        cfg = self._engine.config.raft
        validate_key(key, cfg.max_key_size)
        validate_value(value, cfg.max_value_size)
        ttl_ms = validate_ttl(ttl)
        if validate_lease_id(lease, allow_zero=True) and ttl_ms is not None:
            raise InvalidArgument("a put takes a lease or a ttl, not both")
        result = await self._write(Put(key, value, ttl_ms, lease), timeout)
        return int(result)

    async def delete(self, key: bytes, *, timeout: float | None = None) -> bool:
        """Delete ``key``; True if it existed."""
        validate_key(key, self._engine.config.raft.max_key_size)
        return bool(await self._write(Delete(key), timeout))

    async def compare_and_swap(
        self,
        key: bytes,
        *,
        expected: bytes | None,
        new: bytes,
        ttl: float | None = None,
        timeout: float | None = None,
    ) -> bool:
        """Set ``key`` to ``new`` only if it currently holds ``expected``
        (``None``: only if the key is absent). Returns whether it swapped.
        A transaction: ``txn([Compare.value(key) == expected], [Op.put(key,
        new)])`` (or ``Compare.version(key) == 0`` for ``None``)."""
        cfg = self._engine.config.raft
        validate_key(key, cfg.max_key_size)
        if expected is not None:
            validate_value(expected, cfg.max_value_size)
        validate_value(new, cfg.max_value_size)
        ttl_ms = validate_ttl(ttl)
        check = Compare.version(key) == 0 if expected is None else Compare.value(key) == expected
        result = await self._write(Txn((check,), (Op("put", key, new, ttl_ms=ttl_ms),), ()), timeout)
        return bool(result.succeeded)

    async def txn(
        self,
        compare: Sequence[Compare] = (),
        success: Sequence[Op] = (),
        failure: Sequence[Op] = (),
        *,
        timeout: float | None = None,
    ) -> TxnResult:
        """If every :class:`~dengine.Compare` holds, run the ``success`` ops,
        else the ``failure`` ops: atomically, at one revision. See
        docs/coordination.md."""
        cfg = self._engine.config.raft
        checked = validate_txn(compare, success, failure, max_ops=cfg.max_txn_ops, max_key_size=cfg.max_key_size,
                               max_value_size=cfg.max_value_size)
        result: TxnResult = await self._write(Txn(*checked), timeout)
        return result

    # -- leases -----------------------------------------------------------

    async def grant_lease(self, ttl: float, *, lease_id: int = 0, timeout: float | None = None) -> Lease:
        """A new lease of ``ttl`` seconds (at least the cluster's minimum,
        1.5 election timeouts); ``lease_id`` 0 lets the cluster pick the id."""
        ttl_ms = validate_ttl(ttl)
        assert ttl_ms is not None
        ttl_ms = max(ttl_ms, self._engine.min_lease_ttl_ms)
        granted = await self._write(LeaseGrant(validate_lease_id(lease_id, allow_zero=True), ttl_ms), timeout)
        return Lease(int(granted), ttl_ms / 1000)

    async def keep_alive(self, lease_id: int, *, timeout: float | None = None) -> float:
        """Renew a lease: it lives at least the returned number of seconds
        (its TTL) from when this call was made. On the leader only."""
        validate_lease_id(lease_id)
        node = self._node
        since = trio.current_time()
        if node.current_role is not Role.LEADER:
            node.check_open()
            raise node.not_leader()
        await self._read_point(ReadConsistency.LINEARIZABLE, timeout)  # still the leader, and up to date
        if node.kv.lease_ttl_ms(lease_id) is None:
            raise _lease_not_found(lease_id)
        return node.renew_lease(lease_id, since)

    async def revoke_lease(self, lease_id: int, *, timeout: float | None = None) -> None:
        """End a lease now and delete every key attached to it."""
        await self._write(LeaseRevoke(validate_lease_id(lease_id)), timeout)

    async def lease_time_to_live(self, lease_id: int, *, keys: bool = False,
                                 timeout: float | None = None) -> LeaseStatus:
        """A lease's granted TTL, the seconds it has left as the leader
        counts them, and (with ``keys``) the keys attached to it."""
        validate_lease_id(lease_id)
        node = self._node
        if node.current_role is not Role.LEADER:
            node.check_open()
            raise node.not_leader()
        await self._read_point(ReadConsistency.LINEARIZABLE, timeout)
        ttl_ms = node.kv.lease_ttl_ms(lease_id)
        remaining = node.lease_remaining(lease_id)
        if ttl_ms is None or remaining is None:
            raise _lease_not_found(lease_id)
        attached = tuple(node.kv.lease_keys(lease_id)) if keys else ()
        return LeaseStatus(lease_id, ttl_ms / 1000, remaining, attached)

    async def leases(self, *, timeout: float | None = None) -> list[Lease]:
        """Every lease, by id."""
        await self._read_point(ReadConsistency.LINEARIZABLE, timeout)
        return [Lease(i, ttl / 1000) for i, ttl in sorted(self._node.kv.leases().items())]

    def open_lease(self, ttl: float, *, timeout: float | None = None) -> AbstractAsyncContextManager[KeptLease]:
        """``async with client.open_lease(ttl) as lease:`` a lease kept
        alive for the block, revoked when it ends; ``lease.lost`` is set if
        it could not be renewed in time (dengine.keepalive)."""
        return open_kept_lease(self, ttl, timeout=timeout)

    async def _write(self, command: Any, timeout: float | None) -> Any:
        limit = self._engine._timeout(timeout)
        node = self._node
        try:
            waiter = node.propose(command)
        except DengineError as exc:
            if isinstance(exc, ResourceExhausted):
                node.stats.proposals_failed += 1
            # Refused at once (not the leader, stopped, full): still a
            # checkpoint, as every trio call is, so a caller that retries in
            # a loop lets the node run (and learn who leads) in between.
            await trio.lowlevel.checkpoint()
            raise
        node.expire(waiter, trio.current_time() + limit, _WRITE_TIMEOUT, limit)
        try:
            return await waiter.wait()
        except (ClusterError, StorageError):
            # Timed out, leader changed, dropped, stopped: not a command's own
            # refusal (those are UsageErrors, e.g. LeaseNotFound).
            node.stats.proposals_failed += 1
            raise

    # -- reads ----------------------------------------------------------

    async def get(
        self, key: bytes, *, consistency: ReadConsistency | str | None = None, timeout: float | None = None
    ) -> bytes | None:
        validate_key(key, self._engine.config.raft.max_key_size)
        await self._read_point(consistency, timeout)
        return self._node.kv.get(key, self._node.now_ms())

    async def get_kv(
        self, key: bytes, *, consistency: ReadConsistency | str | None = None, timeout: float | None = None
    ) -> KeyValue | None:
        """Like get, with the revision that last set the key."""
        validate_key(key, self._engine.config.raft.max_key_size)
        await self._read_point(consistency, timeout)
        return self._node.kv.get_kv(key, self._node.now_ms())

    async def get_many(
        self,
        keys: Sequence[bytes],
        *,
        consistency: ReadConsistency | str | None = None,
        timeout: float | None = None,
    ) -> list[bytes | None]:
        """Several keys read at one consistent point."""
        if isinstance(keys, (bytes, str)):
            raise InvalidArgument("keys must be a list of bytes keys, not a single key")
        max_key = self._engine.config.raft.max_key_size
        for key in keys:
            validate_key(key, max_key)
        await self._read_point(consistency, timeout)
        return self._node.kv.get_many(keys, self._node.now_ms())

    async def scan_prefix(
        self,
        prefix: bytes,
        *,
        limit: int | None = None,
        keys_only: bool = False,
        count_only: bool = False,
        consistency: ReadConsistency | str | None = ReadConsistency.LINEARIZABLE,
        timeout: float | None = None,
    ) -> ScanResult:
        """Every key starting with ``prefix`` (at most ``limit``), with the
        revision the scan saw (use ``revision + 1`` as a watch's
        ``start_revision``), how many keys it holds and whether more remain."""
        validate_scan_prefix(prefix, self._engine.config.raft.max_key_size)
        return await self._scan(prefix, _prefix_end(prefix), limit, keys_only, count_only, consistency, timeout)

    async def scan_range(
        self,
        start: bytes,
        end: bytes | None = None,
        *,
        limit: int | None = None,
        keys_only: bool = False,
        count_only: bool = False,
        consistency: ReadConsistency | str | None = ReadConsistency.LINEARIZABLE,
        timeout: float | None = None,
    ) -> ScanResult:
        """Every key ``k`` with ``start <= k < end`` (``end`` None: to the last
        key), like :meth:`scan_prefix`."""
        max_key = self._engine.config.raft.max_key_size
        validate_range(start, end, max_key)
        return await self._scan(start, end, limit, keys_only, count_only, consistency, timeout)

    async def _scan(self, start: bytes, end: bytes | None, limit: int | None, keys_only: bool, count_only: bool,
                    consistency: ReadConsistency | str | None, timeout: float | None) -> ScanResult:
        limit = validate_limit(limit)
        await self._read_point(consistency, timeout)
        node = self._node
        entries, count = node.kv.scan_kvs(start, end, node.now_ms(), 0 if count_only else limit, count=True)
        if keys_only:
            entries = [attrs.evolve(kv, value=b"") for kv in entries]
        more = not count_only and count > len(entries)
        return ScanResult(entries=entries, revision=node.kv.applied_index, more=more, count=count)

    # -- watches --------------------------------------------------------

    @asynccontextmanager
    async def open_watch(
        self,
        key: bytes,
        *,
        prefix: bool = False,
        prev_kv: bool = False,
        start_revision: int | None = None,
        range_end: bytes | None = None,
    ) -> AsyncIterator[Watch]:
        """Watch ``key`` (or, with ``prefix=True``, every key under a prefix
        that starts and ends with ``/``; or with ``range_end``, every key
        ``k`` with ``key <= k < range_end``, ``range_end=b"\\0"`` meaning no
        end, as in etcd) on this node; works on any node.

        Yields a :class:`~dengine.watch.Watch`: iterate it for PUT, DELETE,
        PROGRESS and a final CANCELED event. ``prev_kv=True`` fills
        ``prev_value``. ``start_revision=R`` first replays retained changes
        with revision >= R, then continues live with no gap; if R is older
        than the retained history the watch gets CANCELED(COMPACTED). The
        watch is registered when the block is entered and removed when it is
        left. See docs/watch.md."""
        max_key = self._engine.config.raft.max_key_size
        if range_end is not None:
            validate_range(key, None, max_key)  # bytes, size; the registry checks the order
            validate_range(range_end, None, max_key)
        elif prefix:
            validate_prefix(key, max_key)
        else:
            validate_key(key, max_key)
        node = self._node
        node.check_open()
        watch = node.watch.open_watch(key, prefix=prefix, prev_kv=prev_kv, start_revision=start_revision,
                                      end=range_end)
        try:
            yield watch
        finally:
            watch.close()

    async def _read_point(self, consistency: ReadConsistency | str | None, timeout: float | None) -> None:
        engine = self._engine
        level = engine.default_consistency if consistency is None else ReadConsistency.parse(consistency)
        node = self._node
        node.check_open()
        if level is ReadConsistency.EVENTUAL:
            node.stats.reads_eventual += 1
            return
        limit = engine._timeout(timeout)
        deadline = trio.current_time() + limit
        index: int | None = None
        if level is ReadConsistency.LEASE:
            node.stats.reads_lease += 1
            if node.current_role is not Role.LEADER:
                await trio.lowlevel.checkpoint()  # refused at once, still a checkpoint (see _write)
                raise node.not_leader()
            index = node.lease_read_index()
        else:
            node.stats.reads_linearizable += 1
        if index is None:
            # Linearizable, or a lease not (yet) established: ReadIndex.
            index = await engine._read_index_with_retry(deadline, limit)
        waiter = node.applied_waiter(index)
        if waiter is not None:
            node.expire(waiter, deadline, _READ_TIMEOUT, limit)
            await waiter.wait()

@attrs.frozen
class EngineStatistics:
    """One node, now (:meth:`Engine.statistics`; the metric each field
    becomes is in docs/operations.md, "Metrics").

    Positions: ``term``, ``leader_id`` (None: no leader known),
    ``commit_index``, ``applied_index``. Counters since this node started:
    ``entries_committed`` / ``entries_applied`` (Raft entries; one entry
    carries every write of a batch), ``proposals_failed`` (writes this node
    took that did not apply, or refused for lack of room), ``leader_changes``,
    ``reads`` by consistency, ``keys_expired`` / ``leases_expired`` (TTL
    deletions and lease revokes this node proposed as leader),
    ``slow_applies`` / ``slow_fsyncs`` (the WARNINGs). ``proposals_pending``:
    writes waiting here. ``follower_lag``: on the leader, entries each other
    member is behind (empty elsewhere). The histograms are None when
    ``[metrics] enabled`` is off (``timed`` False). ``peers``: traffic by
    peer id; ``storage_bytes``: bytes on disk by kind (empty on a backend
    with no files)."""

    node_id: int
    term: int
    leader_id: int | None
    is_leader: bool
    commit_index: int
    applied_index: int
    entries_committed: int
    entries_applied: int
    proposals_pending: int
    proposals_failed: int
    leader_changes: int
    follower_lag: dict[int, int]
    reads: dict[str, int]
    keys_expired: int
    leases_expired: int
    slow_applies: int
    slow_fsyncs: int
    timed: bool
    wal_fsync_seconds: HistogramData | None
    wal_append_seconds: HistogramData | None
    snapshot_save_seconds: HistogramData | None
    snapshot_apply_seconds: HistogramData | None
    snapshot_save_bytes: HistogramData | None
    snapshot_apply_bytes: HistogramData | None
    peers: dict[int, PeerStatistics]
    watch: DispatcherStatistics
    storage_bytes: dict[str, int]


def _lease_not_found(lease_id: int) -> LeaseNotFound:
    return LeaseNotFound(f"lease {lease_id} does not exist (it expired, was revoked or never granted)")


class Engine:
    """A running engine. Obtain it from :func:`open_engine` or :func:`run_engine`."""

    def __init__(self, config: Config, node: Node) -> None:
        self.config = config
        self._node = node
        self.client = EmbeddedClient(self)
        self.default_consistency = ReadConsistency.parse(config.raft.default_read_consistency)
        # Client addresses the other members announced (live; empty without TCP peers).
        self.peer_client_addresses: dict[int, str] = {}
        #: Where this node serves clients (``dengine serve`` sets it), if anywhere.
        self.client_address: str | None = None
        #: Where this node serves etcd's API, by face ("grpc", "gateway"): URLs (dengine.etcd sets it).
        self.etcd_urls: dict[str, list[str]] = {}
        self._add_lock = trio.Lock()
        raft = config.raft
        #: The shortest lease granted: 1.5 election timeouts, as in etcd.
        self.min_lease_ttl_ms = math.ceil(1.5 * raft.election_ticks * raft.tick_interval_ms)
        # The peer transport (None for a single node without one): per-peer traffic for statistics().
        self._transport: Any = None

    def _timeout(self, timeout: float | None) -> float:
        if timeout is None:
            return self.config.raft.request_timeout_ms / 1000
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0 or math.isnan(timeout):
            raise InvalidArgument(f"timeout must be a positive number of seconds, got {timeout!r}")
        return float(timeout)

    async def _read_index_with_retry(self, deadline: float, limit: float) -> int:
        """ReadIndex, retried while the cluster has no leader (elections)."""
        node = self._node
        delay = 0.005
        while True:
            waiter = node.request_read_index()
            node.expire(waiter, deadline, _READ_TIMEOUT, limit)
            try:
                index: int = await waiter.wait()
                return index
            except (NotLeader, Unavailable) as exc:
                if isinstance(exc, EngineStopped):
                    raise
                # No leader right now (or it lost leadership): wait a little.
                left = deadline - trio.current_time()
                if left <= 0:
                    raise Timeout(_READ_TIMEOUT.format(limit)) from exc
                await trio.sleep(min(delay, left))
                delay = min(delay * 2, 0.1)

    # -- lifecycle (the LifecycleNotifier request) -----------------------------

    def ready_notify(self) -> trio.Event:
        """Set once this node can serve linearizable requests."""
        return self._node.lifecycle.ready

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait for ready_notify; raises dengine.Timeout after ``timeout`` seconds."""
        if timeout is None:
            await self._node.lifecycle.ready.wait()
            return
        with trio.move_on_after(self._timeout(timeout)):
            await self._node.lifecycle.ready.wait()
            return
        raise Timeout(f"the engine was not ready within {timeout:g} s (is a quorum of the cluster up?)")

    def removed_notify(self) -> trio.Event:
        """Set when this node applies its own removal from the cluster: from
        then on it serves no requests (MemberRemoved) and takes part in no
        election."""
        return self._node.lifecycle.removed

    def stop_notify(self) -> trio.Event:
        """Set when shutdown begins, before any task is cancelled."""
        return self._node.lifecycle.stopping

    def stopped_notify(self) -> trio.Event:
        return self._node.lifecycle.stopped

    def leader_changed_notify(self) -> Subscription[LeaderInfo]:
        """A new subscription yielding LeaderInfo on every change, starting with
        the current value; a slow reader gets the latest (older coalesced)."""
        return self._node.lifecycle.leader_changes()

    def first_commit_notify(self) -> Subscription[int]:
        """Yields the commit index each time this node, as leader, commits the
        first entry of a new term."""
        return self._node.lifecycle.first_commits()

    def current_leader(self) -> int | None:
        return self._node.current_leader

    def current_term(self) -> int:
        return self._node.current_term

    @property
    def applied_index(self) -> int:
        """The revision of this node's state machine now (its applied index);
        cheap, unlike :meth:`status`."""
        return self._node.kv.applied_index

    def is_leader(self) -> bool:
        return self._node.current_role is Role.LEADER

    def watch_statistics(self) -> DispatcherStatistics:
        """Counters of this node's watch dispatcher: events, lag, cancellations."""
        return self._node.watch.statistics()

    def statistics(self) -> EngineStatistics:
        """What this node counts and times, now (what ``/metrics`` exports:
        see docs/operations.md, "Metrics"). Cheap enough for every scrape;
        it lists the data directory once for the bytes on disk."""
        node = self._node
        core = node.raw.core
        stats = node.stats
        timed = stats.timed
        pending = node.driver.pending()
        transport = self._transport
        peers = transport.peer_statistics() if transport is not None else {}
        return EngineStatistics(
            node_id=node.raw.id,
            term=core.term,
            leader_id=core.lead,
            is_leader=core.role is Role.LEADER,
            commit_index=core.log.committed,
            applied_index=node.kv.applied_index,
            entries_committed=max(0, core.log.committed - node.started_commit),
            entries_applied=max(0, node.kv.applied_index - node.started_applied),
            proposals_pending=pending["proposals"] + pending["proposal_waiters"],
            proposals_failed=stats.proposals_failed,
            leader_changes=stats.leader_changes,
            follower_lag={p.node_id: p.lag for p in self.follower_progress()},
            reads=stats.reads(),
            keys_expired=stats.keys_expired,
            leases_expired=stats.leases_expired,
            slow_applies=stats.slow_applies,
            slow_fsyncs=stats.slow_fsyncs,
            timed=timed,
            wal_fsync_seconds=stats.wal_fsync.snapshot() if timed else None,
            wal_append_seconds=stats.wal_append.snapshot() if timed else None,
            snapshot_save_seconds=stats.snapshot_save_seconds.snapshot() if timed else None,
            snapshot_apply_seconds=stats.snapshot_apply_seconds.snapshot() if timed else None,
            snapshot_save_bytes=stats.snapshot_save_bytes.snapshot() if timed else None,
            snapshot_apply_bytes=stats.snapshot_apply_bytes.snapshot() if timed else None,
            peers=peers,
            watch=node.watch.statistics(),
            storage_bytes=node.storage.size_on_disk(),
        )

    # -- membership -----------------------------------------------------------

    def members(self) -> tuple[Member, ...]:
        """The members as this node's applied state records them: roles,
        peer addresses, and client addresses (announced in handshakes or
        configured when the state has none)."""
        return tuple(
            m if m.client_address is not None else attrs.evolve(m, client_address=self._client_address_of(m.node_id))
            for m in self._node.member_list()
        )

    def _client_address_of(self, node_id: int) -> str | None:
        if node_id == self.config.node_id and self.client_address is not None:
            return self.client_address
        return self.peer_client_addresses.get(node_id) or self.config.cluster.client_addresses.get(node_id)

    def _member(self, node_id: int) -> Member:
        for m in self.members():
            if m.node_id == node_id:
                return m
        raise Unavailable(f"node {node_id} is not a member (the change did not take effect)")

    def watch_members(self) -> Subscription[MembershipChange]:
        """Every membership change from now on, with the revision at which it
        took effect and the whole membership after it: ``with
        engine.watch_members() as changes: async for change in changes``. A
        reader more than 64 changes behind is ended with ResourceExhausted
        (none is dropped silently)."""
        return self._node.lifecycle.membership_changes()

    async def add_member(
        self,
        peer_address: str,
        *,
        learner: bool = True,
        node_id: int | None = None,
        client_address: str | None = None,
        timeout: float | None = None,
    ) -> Member:
        """Add a member that will listen for peers at ``peer_address`` (and
        serve clients at ``client_address``, if given; a node announces its
        own when it starts). It joins as a learner; with ``learner=False``
        it is promoted to voter once it has caught up, within the timeout.
        ``node_id`` defaults to one never used in this cluster. Leader only."""
        limit = self._timeout(timeout)
        deadline = trio.current_time() + limit
        peer_address = address_argument(peer_address, "peer_address")
        if client_address is not None:
            client_address = address_argument(client_address, "client_address")
        node = self._node
        if node.current_role is not Role.LEADER:
            raise node.not_leader()
        # One add at a time: the checks and the id below read the applied
        # membership, which a concurrent add would change under them (two
        # joins at once picked the same id).
        with trio.move_on_at(deadline) as waited:
            await self._add_lock.acquire()
        if waited.cancelled_caught:
            raise Timeout(f"another member was being added for all of {limit:g} s; try again")
        try:
            members = self.members()
            for m in members:
                if m.peer_address == peer_address:
                    raise InvalidArgument(f"peer address {peer_address} is already node {m.node_id}'s")
            used = max([node.kv.members.max_id, *(m.node_id for m in members), *self.config.cluster.initial])
            if node_id is None:
                node_id = used + 1
            else:
                node_id = validate_node_id(node_id)
                if any(m.node_id == node_id for m in members):
                    raise InvalidArgument(f"node {node_id} is already a member")
                if node_id <= node.kv.members.max_id:
                    raise InvalidArgument(f"node id {node_id} belonged to a removed member; ids are never reused")
            context = encode_member_context(peer_address, client_address)
            await self._change(ConfChange(ConfChangeType.ADD_LEARNER, node_id, context), deadline, limit)
        finally:
            self._add_lock.release()
        if not learner:
            await self._promote_when_caught_up(node_id, deadline, limit)
        return self._member(node_id)

    async def promote_member(self, node_id: int, *, timeout: float | None = None) -> Member:
        """Make learner ``node_id`` a voter; refused (MembershipChangeRefused)
        unless it is within ``raft.learner_max_lag`` entries of the leader.
        Leader only."""
        limit = self._timeout(timeout)
        change = ConfChange(ConfChangeType.PROMOTE, validate_node_id(node_id))
        await self._change(change, trio.current_time() + limit, limit)
        return self._member(node_id)

    async def remove_member(self, node_id: int, *, timeout: float | None = None) -> None:
        """Remove member ``node_id`` (voter or learner). Refused if it would
        leave no reachable majority. Leader only. Removing the leader
        itself hands leadership to the most caught-up voter first and then
        raises NotLeader naming it: ask the new leader (the remote client
        does so by itself)."""
        limit = self._timeout(timeout)
        node_id = validate_node_id(node_id)
        node = self._node
        core = node.raw.core
        if (node_id == core.id and node.current_role is Role.LEADER
                and any(p != core.id for p in core.conf.voters)):
            raft = self.config.raft
            election = raft.election_ticks * raft.tick_interval_ms / 1000
            handover_until = trio.current_time() + min(limit, max(2.0, 5 * election))
            try:
                while True:  # bounded by handover_until: a TimeoutNow to a peer not yet connected may be lost
                    left = handover_until - trio.current_time()
                    try:
                        new_leader = await self.transfer_leadership(timeout=max(0.01, min(left, 2 * election)))
                        break
                    except NotLeader:
                        # An earlier attempt took effect after its wait: learn who leads now.
                        new_leader = await self._known_leader(handover_until)
                        break
                    except Timeout:
                        if trio.current_time() >= handover_until:
                            raise
            except (Timeout, InvalidArgument) as exc:
                # No voter took over in time: remove this node as it leads; once the
                # removal commits it steps down and hands over (TimeoutNow) all the same.
                log.info("node %d: leadership handover before its removal did not complete (%s); removing it as "
                         "leader", core.id, exc)
                await self._change(ConfChange(ConfChangeType.REMOVE, node_id), trio.current_time() + limit, limit)
                return
            raise NotLeader(
                f"node {core.id} handed leadership to node {new_leader} before its own removal; ask node "
                f"{new_leader} to remove it",
                leader_id=new_leader,
                leader_address=self._client_address_of(new_leader),
            )
        await self._change(ConfChange(ConfChangeType.REMOVE, node_id), trio.current_time() + limit, limit)

    async def _known_leader(self, until: float) -> int:
        """The leader once this node knows one (Timeout at ``until``)."""
        with trio.move_on_at(until):
            with self.leader_changed_notify() as changes:
                async for info in changes:
                    if info.leader_id is not None and info.leader_id != self.config.node_id:
                        return info.leader_id
        raise Timeout("no new leader became known after the handover")

    async def update_member(
        self,
        node_id: int,
        *,
        peer_address: str | None = None,
        client_address: str | None = None,
        timeout: float | None = None,
    ) -> Member:
        """Record new addresses for member ``node_id`` (what is not given stays).
        Leader only."""
        limit = self._timeout(timeout)
        if peer_address is None and client_address is None:
            raise InvalidArgument("update_member needs a peer_address or a client_address")
        if peer_address is not None:
            peer_address = address_argument(peer_address, "peer_address")
            for m in self.members():
                if m.peer_address == peer_address and m.node_id != node_id:
                    raise InvalidArgument(f"peer address {peer_address} is already node {m.node_id}'s")
        if client_address is not None:
            client_address = address_argument(client_address, "client_address")
        context = encode_member_context(peer_address, client_address)
        await self._change(ConfChange(ConfChangeType.UPDATE, validate_node_id(node_id), context),
                           trio.current_time() + limit, limit)
        return self._member(node_id)

    async def _promote_when_caught_up(self, node_id: int, deadline: float, limit: float) -> None:
        """Promote a new learner as soon as the leader allows it (it caught up)."""
        delay = 0.01
        while True:
            try:
                await self._change(ConfChange(ConfChangeType.PROMOTE, node_id), deadline, limit)
                return
            except (MembershipChangeRefused, MembershipChangeInProgress) as exc:
                left = deadline - trio.current_time()
                if left <= 0:
                    raise Timeout(f"node {node_id} was added as a learner but not promoted within {limit:g} s: "
                                  f"{exc}") from None
                await trio.sleep(min(delay, left))
                delay = min(delay * 2, 0.2)

    async def _change(self, change: ConfChange, deadline: float, limit: float) -> None:
        """Propose one membership change and wait until this node applied it."""
        node = self._node
        delay = 0.005
        while True:
            if node.current_role is not Role.LEADER:
                raise node.not_leader()
            try:
                index, term = node.propose_conf_change(change)
                break
            except ProposalDropped as exc:
                # A new leader's first entry is not committed yet, or another
                # change is in flight: nothing was proposed; retry in time.
                left = deadline - trio.current_time()
                if left <= 0:
                    raise Timeout(f"the membership change could not be proposed within {limit:g} s: {exc}") from None
                await trio.sleep(min(delay, left))
                delay = min(delay * 2, 0.1)
        waiter = node.applied_waiter(index)
        if waiter is not None:
            node.expire(waiter, deadline, "the membership change did not take effect within {:g} s; "
                        "it may or may not be applied", limit)
            await waiter.wait()
        if node.raw.core.log.term(index) not in (term, None):
            raise LeaderChanged(
                "the leader changed before the membership change committed; it was not applied"
            )

    # -- backup ---------------------------------------------------------------

    async def backup_image(self, *, timeout: float | None = None) -> tuple[int, bytes]:
        """A consistent image of the key-value state (dengine.kv.snapshot
        layout) at a linearizable read point, and its revision."""
        await self.client._read_point(ReadConsistency.LINEARIZABLE, timeout)
        image = self._node.kv.freeze()  # on the event loop: exactly one applied index
        data = await trio.to_thread.run_sync(encode_image, image, pace_encoding)  # paced: the node keeps serving
        return image.applied_index, data

    async def save_snapshot(self, path: str | os.PathLike[str], *, timeout: float | None = None) -> int:
        """Write a backup of the whole key-value state to ``path`` (see
        docs/operations.md); returns its revision. ``dengine.restore_snapshot``
        seeds a new cluster from it."""
        revision, data = await self.backup_image(timeout=timeout)
        await trio.to_thread.run_sync(write_backup, os.fspath(path), revision, self.config.cluster_id, data)
        return revision

    def status(self) -> Status:
        node = self._node
        core = node.raw.core
        members = self.members()
        return Status(
            node_id=node.raw.id,
            role=core.role.value,
            term=core.term,
            leader_id=core.lead,
            commit_index=core.log.committed,
            applied_index=node.kv.applied_index,
            members=members,
            last_snapshot_index=node.last_snapshot_index,
            version=__version__,
            db_size=sum(node.storage.size_on_disk().values()),
            etcd_urls={kind: list(urls) for kind, urls in self.etcd_urls.items()} or None,
        )

    def health(self) -> Health:
        """This node's health by etcd's ``/health`` rule (see
        :class:`~dengine.api.Health`); what ``/health`` of
        :mod:`dengine.http` answers."""
        node = self._node
        if node.lifecycle.removed.is_set():
            return Health(False, "this node was removed from the cluster")
        if node.lifecycle.stopping.is_set():
            return Health(False, "this node is stopping")
        core = node.raw.core
        timeout = core.config.election_tick * self.config.raft.tick_interval_ms / 1000
        if core.role is Role.LEADER:
            voters = core.conf.voters
            heard = core.recently_active() & voters
            if not has_quorum(voters, heard):
                return Health(False, f"leader without a quorum: heard from {len(heard)} of {len(voters)} voters "
                                     f"in the last {timeout:g} s")
            return Health(True)
        if core.lead is None:
            return Health(False, f"no leader (this node is a {core.role.value})")
        if core.election_elapsed >= core.config.election_tick:
            return Health(False, f"no word from leader {core.lead} in the last {timeout:g} s")
        return Health(True)

    def follower_progress(self) -> tuple[FollowerProgress, ...]:
        """On the leader, its view of every other member, by node id; empty
        on any other node."""
        core = self._node.raw.core
        if core.role is not Role.LEADER:
            return ()
        last = core.log.last_index()
        active = core.recently_active()
        return tuple(
            FollowerProgress(
                node_id=peer,
                match_index=pr.match,
                next_index=pr.next,
                lag=max(0, last - pr.match),
                state=pr.state.value,
                is_learner=pr.is_learner,
                recently_active=peer in active,
            )
            for peer, pr in sorted(core.prs.items())
            if peer != core.id
        )

    async def transfer_leadership(self, target: int | None = None, *, timeout: float | None = None) -> int:
        """Hand leadership to ``target`` (default: the most caught-up voter);
        returns the new leader's id."""
        node = self._node
        if node.current_role is not Role.LEADER:
            raise node.not_leader()
        core = node.raw.core
        if target is None:
            candidates = [p for p in core.conf.voters if p != core.id and p in core.prs]
            if not candidates:
                raise InvalidArgument("there is no other voter to transfer leadership to")
            target = max(candidates, key=lambda p: core.prs[p].match)
        node.transfer_leadership(target)
        limit = self._timeout(timeout)
        with trio.move_on_after(limit):
            with node.lifecycle.leader_changes() as changes:
                async for info in changes:
                    if info.leader_id is not None and info.leader_id != core.id:
                        return info.leader_id
        raise Timeout(f"leadership did not move to node {target} within {limit:g} s")


async def _follow_members(node: Node, transport: Any, own_id: int, configured: dict[int, str]) -> None:
    """Keep the transport's peer set equal to the members the applied state
    records: a member added is dialled and accepted, a removed one dropped,
    a moved one re-dialled. Until the state records any member (a node
    joining, or one whose cluster predates the member table), the
    configured peers stay."""

    def sync(members: Sequence[Member], keep_configured: bool) -> None:
        wanted = dict(configured) if keep_configured else {}
        for m in members:
            address = m.peer_address or configured.get(m.node_id)
            if m.node_id != own_id and address:
                wanted[m.node_id] = address
        if not keep_configured:
            for m in members:  # a member the table has no address for keeps its configured one
                if m.node_id in configured and m.node_id not in wanted and m.node_id != own_id:
                    wanted[m.node_id] = configured[m.node_id]
        if wanted != last:
            transport.update_peers(wanted)
            last.clear()
            last.update(wanted)

    def sync_removed() -> None:
        removed_peers = getattr(transport, "removed_peers", None)
        if removed_peers is not None:
            removed_peers.update(node.kv.members.removed)

    last: dict[int, str] = dict(configured)
    with node.lifecycle.membership_changes() as changes:
        sync(node.member_list(), keep_configured=True)  # after subscribing: no change is missed
        sync_removed()
        async for change in changes:
            sync(change.members, keep_configured=False)
            sync_removed()


async def _removed_by_peers(node: Node, removed: trio.Event) -> None:
    """A peer refused this node as removed: it was removed while it could not
    hear of it (down, or cut off); it stops serving as if it had applied it."""
    await removed.wait()
    node.mark_removed(None)


def _find_dengine_error(exc: BaseException) -> DengineError | None:
    if isinstance(exc, DengineError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find_dengine_error(inner)
            if found is not None:
                return found
    return None


def _resolve_config(data_dir: str | os.PathLike[str] | None, config: Config | str | os.PathLike[str] | None) -> Config:
    if config is None:
        return Config.single_node(os.fspath(data_dir)) if data_dir is not None else Config.single_node()
    if isinstance(config, (str, os.PathLike)):
        loaded = Config.from_toml(os.fspath(config))
    elif isinstance(config, Config):
        loaded = config
    else:
        raise InvalidArgument(f"config must be a dengine.Config or a path to a TOML file, got {type(config).__name__}")
    if data_dir is not None:
        loaded = attrs.evolve(loaded, data_dir=os.fspath(data_dir))
    return loaded


@asynccontextmanager
async def open_engine(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    config: Config | str | os.PathLike[str] | None = None,
    network: Any = None,
    storage: Any = None,
    client_address: str | None = None,
) -> AsyncIterator[Engine]:
    """Start an engine and stop it when the block exits.

    ``data_dir`` alone gives a single node. ``config`` is a ``dengine.Config``
    or the path of a TOML file. ``client_address`` is where this node serves
    clients (``dengine serve`` passes the address it bound): it is announced
    to the other members, so leader hints carry addresses. ``network`` and
    ``storage`` replace TCP and the file backend; tests use them through
    :mod:`dengine.testing`
    (``open_memory_engine``, ``open_cluster``).
    """
    cfg = _resolve_config(data_dir, config)
    engine: Engine | None = None
    try:
        async with AsyncExitStack() as stack:
            outbox: Any = NullOutbox()
            inbound = None
            transport: Any = None
            learned: dict[int, str] = {}
            peers = cfg.peers()
            if network is not None:
                transport = await stack.enter_async_context(network.open_transport(cfg.node_id))
                outbox, inbound = transport, transport.inbound
            elif peers or cfg.node.peer_address is not None:
                # A node with peers, or one given a peer address (``dengine
                # serve`` always is): it listens, so members can be added.
                from dengine.transport.peer import open_peer_transport

                transport = await stack.enter_async_context(
                    open_peer_transport(
                        cfg.node_id,
                        cfg.peer_address,
                        peers,
                        cfg.cluster_id,
                        max_frame_size=cfg.transport.max_frame_size,
                        max_snapshot_size=cfg.transport.max_snapshot_size,
                        ssl_context=_peer_ssl_context(cfg, server_side=True),
                        client_ssl_context=_peer_ssl_context(cfg, server_side=False),
                        client_address=client_address,
                        backoff_max=cfg.peer_reconnect_max(),
                    )
                )
                outbox, inbound = transport, transport.inbound
                learned = transport.client_addresses
            # After the listeners bound: an address in use is reported before
            # the data directory is created.
            store = storage if storage is not None else await trio.to_thread.run_sync(
                lambda: FileStorage(
                    cfg.data_dir, segment_size=cfg.storage.segment_size, preallocate=cfg.storage.preallocate
                )
            )
            stack.callback(store.close)
            if storage is None:
                # A data directory belongs to one cluster (a restored one gets a new id).
                await trio.to_thread.run_sync(check_cluster_id, cfg.data_dir, cfg.cluster_id)
            # Tasks that follow the node (membership -> transport); cancelled
            # first when the engine stops (LIFO), then the node stops.
            followers = await stack.enter_async_context(trio.open_nursery())
            node = await stack.enter_async_context(open_node(node_options(cfg), store, outbox, inbound))
            stack.callback(followers.cancel_scope.cancel)
            engine = Engine(cfg, node)
            engine._transport = transport
            engine.peer_client_addresses = learned
            engine.client_address = client_address
            if transport is not None:
                followers.start_soon(_follow_members, node, transport, cfg.node_id, peers,
                                     name="dengine membership follower")
                if isinstance(getattr(transport, "removed", None), trio.Event):
                    followers.start_soon(_removed_by_peers, node, transport.removed, name="dengine removal notice")
            log.info("dengine node %d started (data dir %s)", cfg.node_id, cfg.data_dir)
            try:
                yield engine
            finally:
                node.lifecycle.begin_stop()
                with trio.CancelScope(shield=True):
                    await _graceful_handover(engine)
    except BaseExceptionGroup as group:
        # The engine's tasks and the caller's block share one nursery; give the
        # caller one clear exception, not a bare ExceptionGroup (STYLE.md, 9).
        leaf = single_leaf(group)
        if leaf is not None:
            raise leaf from None
        err = _find_dengine_error(group)
        if err is not None:
            raise err from group
        raise


def _peer_ssl_context(cfg: Config, *, server_side: bool) -> ssl.SSLContext | None:
    """Mutual TLS between peers when ``server.peer_tls``: each side presents
    ``server.tls_cert`` and accepts only certificates ``server.tls_ca`` signed."""
    s = cfg.server
    if not s.peer_tls or s.tls_cert is None or s.tls_key is None or s.tls_ca is None:
        return None
    purpose = ssl.Purpose.CLIENT_AUTH if server_side else ssl.Purpose.SERVER_AUTH
    ctx = ssl.create_default_context(purpose, cafile=s.tls_ca)
    ctx.load_cert_chain(s.tls_cert, s.tls_key)
    if server_side:
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def _graceful_handover(engine: Engine) -> None:
    """A leader with voting peers hands leadership over before it stops."""
    node = engine._node
    if not engine.config.raft.transfer_leadership_on_stop:
        return
    core = node.raw.core
    if node.current_role is not Role.LEADER or len(core.conf.voters) < 2:
        return
    if node._nursery is None or node._nursery.cancel_scope.cancel_called:
        return  # the node's tasks are gone (it failed): nothing can hand over
    with trio.move_on_after(engine.config.raft.election_ticks * engine.config.raft.tick_interval_ms / 1000):
        try:
            await engine.transfer_leadership()
        except DengineError as exc:
            log.info("leadership handover on stop did not complete: %s", exc)


async def run_engine(config: Config | str, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """For applications that manage their own nursery:
    ``engine = await nursery.start(dengine.run_engine, config)``. Runs until
    the nursery is cancelled."""
    async with open_engine(config=config) as engine:
        await engine.wait_ready()
        task_status.started(engine)
        await trio.sleep_forever()


__all__ = ["EmbeddedClient", "Engine", "EngineStatistics", "open_engine", "restore_snapshot", "run_engine"]


def restore_snapshot(
    path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    *,
    node_id: int,
    initial_cluster: dict[int, str],
    cluster_id: str | None = None,
) -> tuple[int, str]:
    """Seed ``data_dir`` (new or empty) for member ``node_id`` of a new
    cluster of ``initial_cluster`` (node id -> peer address) from the backup
    at ``path``; run it for every member with the same file and members.
    Returns the backup's revision and the new cluster's id (``cluster_id``,
    else ``<old id>-restored-<revision>``): start every member with it."""
    from dengine.storage.backup import restore_backup

    return restore_backup(os.fspath(path), os.fspath(data_dir), node_id=node_id,
                          initial_cluster=initial_cluster, cluster_id=cluster_id)

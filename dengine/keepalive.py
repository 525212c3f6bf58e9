"""A lease kept alive for the length of an ``async with`` block.

``client.open_lease(ttl)`` on the embedded and the remote client is
:func:`open_kept_lease` over that client's ``grant_lease`` / ``keep_alive``
/ ``revoke_lease``. Rules:

* The lease is granted when the block is entered and revoked when it is
  left (however it is left: the revoke is shielded from cancellation and
  bounded in time; a failed revoke is logged, and the lease then expires on
  its own).
* A task in the block's own nursery renews it at about a third of its TTL.
  After each renewal the holder knows the lease lives at least until
  ``sent + remaining`` (``sent``: when the keep-alive left, before the
  leader counted its TTL). :attr:`KeptLease.deadline` is that, less
  :data:`DRIFT_MARGIN` of the TTL, for clocks that run at different rates
  (the cluster's ``raft.max_clock_drift`` is 10 % by default).
* A renewal that fails for a reason that may pass (no leader, a timeout) is
  retried, sooner, until the deadline. If the deadline comes first, or the
  leader says the lease is gone, :attr:`KeptLease.lost` is set and renewing
  stops: from then on nothing guarded by the lease is safe, and the block's
  code should stop (watch the event, or use
  ``Lock.hold(cancel_on_loss=True)``). The keeper wakes at the deadline at
  the latest, so ``lost`` is set on time, not at its next renewal.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

import trio

from dengine.api import Lease
from dengine.errors import ClusterError, DengineError, LeaseNotFound

__all__ = ["KeptLease", "LeaseClient", "open_kept_lease"]

log = logging.getLogger("dengine.lease")

# How long the revoke at the end of a block may take, at most.
_REVOKE_TIMEOUT = 5.0
# Shortest pause between two renewal attempts after a failure.
_RETRY_MIN = 0.05
#: The part of a lease's TTL a holder gives up for clock-rate drift.
DRIFT_MARGIN = 0.1


class LeaseClient(Protocol):
    async def grant_lease(self, ttl: float, *, timeout: float | None = None) -> Lease: ...

    async def keep_alive(self, lease_id: int, *, timeout: float | None = None) -> float: ...

    async def revoke_lease(self, lease_id: int, *, timeout: float | None = None) -> None: ...


class KeptLease:
    """A lease kept alive by :func:`open_kept_lease`."""

    def __init__(self, lease: Lease, deadline: float) -> None:
        #: The lease's id: pass it as ``put(..., lease=lease.id)``.
        self.id = lease.id
        #: The TTL it was granted with, in seconds.
        self.ttl = lease.ttl
        #: Set when the lease could not be renewed in time (or is gone).
        self.lost = trio.Event()
        #: trio time until which the lease surely lives (as last renewed).
        self.deadline = deadline
        #: Renewals that succeeded.
        self.renewals = 0
        # Cancel scopes to cancel when the lease is lost (Lock.hold(cancel_on_loss=True)).
        self._guards: set[trio.CancelScope] = set()

    def guard(self, scope: trio.CancelScope) -> None:
        """Cancel ``scope`` when the lease is lost (at once if it is)."""
        if self.lost.is_set():
            scope.cancel()
        self._guards.add(scope)

    def unguard(self, scope: trio.CancelScope) -> None:
        self._guards.discard(scope)

    def __repr__(self) -> str:
        state = "lost" if self.lost.is_set() else "kept"
        return f"KeptLease(id={self.id}, ttl={self.ttl:g}, {state})"

    async def _keep(self, client: LeaseClient) -> None:
        interval = self.ttl / 3
        next_at = trio.current_time() + interval
        while True:
            await trio.sleep_until(min(next_at, self.deadline))
            now = trio.current_time()
            if now >= self.deadline:
                break
            try:
                with trio.fail_after(self.deadline - now):
                    remaining = await client.keep_alive(self.id, timeout=max(self.deadline - now, 0.001))
            except LeaseNotFound:
                log.warning("lease %d is gone (expired or revoked); its holder lost it", self.id)
                break
            except (ClusterError, trio.TooSlowError) as exc:
                # May pass (an election, a slow server): try again, sooner.
                log.info("lease %d: keep-alive failed (%s); retrying", self.id, exc)
                next_at = trio.current_time() + max(_RETRY_MIN, min(interval, (self.deadline - now) / 4))
                continue
            self.deadline = max(self.deadline, now + remaining * (1 - DRIFT_MARGIN))
            self.renewals += 1
            next_at = now + remaining / 3
        if trio.current_time() >= self.deadline:
            log.warning("lease %d could not be renewed before it would expire; its holder lost it", self.id)
        self.lost.set()
        for scope in self._guards:
            scope.cancel()


@asynccontextmanager
async def open_kept_lease(client: Any, ttl: float, *, timeout: float | None = None) -> AsyncIterator[KeptLease]:
    """Grant a lease of ``ttl`` seconds, keep it alive while the block runs,
    revoke it when the block is left (see the module rules)."""
    sent = trio.current_time()
    lease = await client.grant_lease(ttl, timeout=timeout)
    kept = KeptLease(lease, sent + lease.ttl * (1 - DRIFT_MARGIN))
    # The block's own exception leaves the nursery unwrapped (not as an
    # ExceptionGroup), so ``except SomeError`` around the block works.
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(kept._keep, client)
            try:
                yield kept
            except BaseException as exc:
                body_error = exc
            finally:
                nursery.cancel_scope.cancel()
        if body_error is not None:
            raise body_error
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(_REVOKE_TIMEOUT):
            try:
                await client.revoke_lease(kept.id, timeout=_REVOKE_TIMEOUT)
            except LeaseNotFound:
                pass
            except DengineError as exc:
                log.warning("lease %d: revoke at the end of its block failed (%s); it expires on its own", kept.id, exc)

"""A lease kept alive for the length of an ``async with`` block.

``client.open_lease(ttl)`` on the embedded and the remote client is
:func:`open_kept_lease` over that client's ``grant_lease`` / ``keep_alive``
/ ``revoke_lease``. Rules:

* The lease is granted when the block is entered and revoked when it is
  left (however it is left: the revoke is shielded from cancellation and
  bounded in time; a failed revoke is logged, and the lease then expires on
  its own).
* A task in the block's own nursery renews it, on the schedule of
  :class:`dengine.renewal.Renewal` (about every third of its TTL; sooner
  after a failure that may pass). :attr:`KeptLease.deadline` is until when
  the lease surely lives, as far as the holder knows.
* If the deadline comes before a renewal succeeds, or the leader says the
  lease is gone, :attr:`KeptLease.lost` is set (at the deadline, not at the
  next renewal) and renewing stops: from then on nothing guarded by the
  lease is safe, and the block's code should stop (watch the event, or use
  ``Lock.hold(cancel_on_loss=True)``, which a lost lease cancels).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

import trio

from dengine.api import Lease
from dengine.errors import ClusterError, DengineError, LeaseNotFound
from dengine.renewal import DRIFT_MARGIN, RenewedLease

__all__ = ["DRIFT_MARGIN", "KeptLease", "LeaseClient", "open_kept_lease"]

log = logging.getLogger("dengine.lease")

# How long the revoke at the end of a block may take, at most.
_REVOKE_TIMEOUT = 5.0


class LeaseClient(Protocol):
    async def grant_lease(self, ttl: float, *, timeout: float | None = None) -> Lease: ...

    async def keep_alive(self, lease_id: int, *, timeout: float | None = None) -> float: ...

    async def revoke_lease(self, lease_id: int, *, timeout: float | None = None) -> None: ...


class KeptLease(RenewedLease):
    """A lease kept alive by :func:`open_kept_lease`."""

    def __init__(self, lease: Lease, sent: float) -> None:
        super().__init__(lease.id, lease.ttl, sent)
        #: Set when the lease could not be renewed in time (or is gone).
        self.lost = trio.Event()
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
        renewal = self._renewal
        while True:
            await trio.sleep_until(renewal.wake_at())
            now = trio.current_time()
            timeout = renewal.due(now)
            if timeout is None:
                log.warning("lease %d could not be renewed before it would expire; its holder lost it", self.id)
                break
            try:
                with trio.fail_after(timeout):
                    remaining = await client.keep_alive(self.id, timeout=timeout)
            except LeaseNotFound:
                log.warning("lease %d is gone (expired or revoked); its holder lost it", self.id)
                renewal.gone()
                break
            except (ClusterError, trio.TooSlowError) as exc:
                log.info("lease %d: keep-alive failed (%s); retrying", self.id, exc)
                renewal.failed(trio.current_time())
                continue
            renewal.renewed(now, remaining)
        self.lost.set()
        for scope in self._guards:
            scope.cancel()


@asynccontextmanager
async def open_kept_lease(client: Any, ttl: float, *, timeout: float | None = None) -> AsyncIterator[KeptLease]:
    """Grant a lease of ``ttl`` seconds, keep it alive while the block runs,
    revoke it when the block is left (see the module rules)."""
    sent = trio.current_time()
    lease = await client.grant_lease(ttl, timeout=timeout)
    kept = KeptLease(lease, sent)
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

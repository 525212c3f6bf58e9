"""The leader's clock of leases: when each lease expires unless kept alive.

Rules of this module (pure: time is passed in, in seconds of any monotonic
clock -- the runtime uses trio's, the simulator its own):

* Which leases exist, and their TTLs, is replicated state (the KV store).
  *When* a lease expires is known only to the leader, as in etcd: a lease
  is not a log write per keep-alive. The leader's lessor holds a deadline per
  lease; a keep-alive moves it to ``now + ttl``; when it passes, the leader
  proposes a LeaseRevoke, and the lease ends -- on every replica, at that
  entry's revision -- only when the revoke commits.
* A new leader does not know its predecessor's deadlines, so
  :meth:`Lessor.promote` gives every lease its full TTL again, counted from
  the moment it became leader (etcd's rule). A lease granted by an entry
  the new leader applies later gets its full TTL from then. So a holder who
  was told "``remaining`` seconds from when you asked" is never cut short by
  a leader change.
* A keep-alive of a lease whose deadline has passed fails (the lease is
  being revoked); so does one of a lease this leader does not hold.
* A keep-alive only ever moves a deadline later: its ``since`` (taken
  before leadership was confirmed) may be older than a promotion or another
  keep-alive answered meanwhile, whose promise must still hold (the lease
  simulation found this: tests/sim/test_leases.py, seed 1062).
* :meth:`Lessor.expired` does not forget anything: the revoke is only
  *proposed*; if the proposal is lost (:meth:`Lessor.revoke_failed`) the
  next sweep proposes it again. A lease is forgotten when its revoke
  applies (:meth:`Lessor.observe` with ``ttl_ms`` None).
* The deadlines live in a dict; a heap of (deadline, id) is only an
  accelerator whose stale entries are skipped, rebuilt when mostly stale.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping

from dengine.errors import LeaseNotFound

__all__ = ["Lessor"]


class Lessor:
    """Deadlines of leases on the leader (see the module rules)."""

    __slots__ = ("primary", "_deadline", "_ttl", "_heap", "_revoking")

    def __init__(self) -> None:
        #: Whether this node keeps the deadlines (it is the leader).
        self.primary = False
        self._deadline: dict[int, float] = {}
        self._ttl: dict[int, float] = {}
        self._heap: list[tuple[float, int]] = []
        self._revoking: set[int] = set()

    def __len__(self) -> int:
        return len(self._deadline)

    # --- leadership ---------------------------------------------------------

    def promote(self, leases: Mapping[int, int], now: float) -> None:
        """Become the keeper: every lease in ``leases`` (id -> ttl_ms, as
        applied) gets its full TTL from ``now``."""
        self.primary = True
        self._deadline.clear()
        self._ttl.clear()
        self._revoking.clear()
        for lease_id, ttl_ms in leases.items():
            self._ttl[lease_id] = ttl_ms / 1000
            self._deadline[lease_id] = now + ttl_ms / 1000
        self._heap = [(at, lease_id) for lease_id, at in self._deadline.items()]
        heapq.heapify(self._heap)

    def demote(self) -> None:
        """Stop keeping deadlines (no longer the leader)."""
        self.primary = False
        self._deadline.clear()
        self._ttl.clear()
        self._heap.clear()
        self._revoking.clear()

    # --- what apply says ------------------------------------------------------

    def observe(self, lease_id: int, ttl_ms: int | None, now: float) -> None:
        """A grant (``ttl_ms``) or revoke (None) applied at ``now``."""
        if ttl_ms is None:
            self._ttl.pop(lease_id, None)
            self._deadline.pop(lease_id, None)
            self._revoking.discard(lease_id)
            self._maybe_rebuild()
        elif self.primary:
            self._set(lease_id, ttl_ms / 1000, now)

    def _set(self, lease_id: int, ttl: float, now: float) -> None:
        self._ttl[lease_id] = ttl
        self._deadline[lease_id] = now + ttl
        heapq.heappush(self._heap, (now + ttl, lease_id))
        self._maybe_rebuild()

    # --- what callers ask -----------------------------------------------------

    def renew(self, lease_id: int, since: float, now: float | None = None) -> float:
        """Keep a lease alive from ``since`` (when the keep-alive arrived,
        before leadership was confirmed): its deadline becomes at least
        ``since + ttl``, never earlier than it was; returns the TTL in
        seconds. Raises LeaseNotFound for a lease this leader does not hold
        or whose deadline has passed by ``now`` (default ``since``). Call
        only when primary."""
        at = self._deadline.get(lease_id)
        if at is None or at <= (since if now is None else now) or lease_id in self._revoking:
            raise LeaseNotFound(f"lease {lease_id} does not exist (it expired, was revoked or never granted)")
        ttl = self._ttl[lease_id]
        if since + ttl > at:
            self._set(lease_id, ttl, since)
        return ttl

    def remaining(self, lease_id: int, now: float) -> float | None:
        """Seconds before the lease expires (0 if it has; None if unknown)."""
        at = self._deadline.get(lease_id)
        return None if at is None else max(0.0, at - now)

    def expired(self, now: float, limit: int) -> list[int]:
        """Up to ``limit`` leases whose deadline is ``<= now`` and whose
        revoke is not already proposed, earliest first. They count as being
        revoked until :meth:`revoke_failed` or the revoke applies."""
        out: list[int] = []
        heap = self._heap
        while heap and len(out) < limit and heap[0][0] <= now:
            at, lease_id = heapq.heappop(heap)
            if self._deadline.get(lease_id) != at or lease_id in self._revoking:
                continue  # stale: renewed since, or already on its way out
            self._revoking.add(lease_id)
            out.append(lease_id)
        return out

    def revoke_failed(self, lease_id: int) -> None:
        """A revoke proposed by :meth:`expired` did not commit here: propose
        it again at the next sweep."""
        if lease_id in self._revoking and lease_id in self._deadline:
            self._revoking.discard(lease_id)
            heapq.heappush(self._heap, (self._deadline[lease_id], lease_id))

    def next_deadline(self) -> float | None:
        """The earliest live deadline (lets a sweeper sleep until then)."""
        heap = self._heap
        while heap and (self._deadline.get(heap[0][1]) != heap[0][0] or heap[0][1] in self._revoking):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _maybe_rebuild(self) -> None:
        if len(self._heap) > 2 * len(self._deadline) + 64:
            self._heap = [(at, i) for i, at in self._deadline.items() if i not in self._revoking]
            heapq.heapify(self._heap)

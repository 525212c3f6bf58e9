"""When a lease holder renews its lease, and when it must count it lost.

A pure rule (no trio, no threads, no clock: times are passed in, in
seconds of one monotonic clock), driven by the trio keeper of
:mod:`dengine.keepalive` and by the blocking client's keeper thread alike:

* After a renewal sent at ``sent`` answered ``remaining``, the lease
  surely lives until ``sent + remaining`` -- less :data:`DRIFT_MARGIN` of
  it, for clocks that run at different rates (the cluster's
  ``raft.max_clock_drift`` is 10 % by default). That is the
  :attr:`Renewal.deadline`; the grant counts as the first renewal.
* The next renewal is due a third of ``remaining`` after ``sent``. One
  that fails for a reason that may pass is retried sooner: after a quarter
  of the time left, at least :data:`RETRY_MIN`, at most a third of the TTL.
* The keeper wakes at :meth:`Renewal.wake_at`: the next renewal or the
  deadline, whichever comes first, so the lease is counted lost on time.
  At or after the deadline, or once the leader said the lease is gone, it
  is lost for good.
"""

from __future__ import annotations

__all__ = ["DRIFT_MARGIN", "RETRY_MIN", "Renewal", "RenewedLease"]

#: The part of a lease's TTL a holder gives up for clock-rate drift.
DRIFT_MARGIN = 0.1
#: Shortest pause between two renewal attempts after a failure (seconds).
RETRY_MIN = 0.05


class Renewal:
    """The renewal schedule of one lease (see the module rules)."""

    __slots__ = ("ttl", "deadline", "next_at", "lost", "renewals")

    def __init__(self, ttl: float, sent: float) -> None:
        self.ttl = ttl
        #: Until when the lease surely lives, as far as the holder knows.
        self.deadline = sent + ttl * (1 - DRIFT_MARGIN)
        self.next_at = sent + ttl / 3
        #: Whether the holder must count the lease lost (for good).
        self.lost = False
        #: Renewals that succeeded.
        self.renewals = 0

    def wake_at(self) -> float:
        """When the keeper must act next."""
        return min(self.next_at, self.deadline)

    def due(self, now: float) -> float | None:
        """At a wake-up: the timeout of the keep-alive to send now, or None
        if the lease is lost (its deadline has passed)."""
        if self.lost or now >= self.deadline:
            self.lost = True
            return None
        return self.deadline - now

    def renewed(self, sent: float, remaining: float) -> None:
        """A keep-alive sent at ``sent`` answered ``remaining`` seconds."""
        self.deadline = max(self.deadline, sent + remaining * (1 - DRIFT_MARGIN))
        self.next_at = sent + remaining / 3
        self.renewals += 1

    def failed(self, now: float) -> None:
        """A keep-alive failed at ``now`` for a reason that may pass."""
        self.next_at = now + max(RETRY_MIN, min(self.ttl / 3, (self.deadline - now) / 4))

    def gone(self) -> None:
        """The leader said the lease does not exist any more."""
        self.lost = True


class RenewedLease:
    """What a kept lease shows its holder, whichever keeper renews it (the
    trio task of dengine.keepalive or the blocking client's thread): ``id``,
    ``ttl``, ``deadline`` and ``renewals``. Subclasses add ``lost``."""

    def __init__(self, lease_id: int, ttl: float, sent: float) -> None:
        #: The lease's id: pass it as ``put(..., lease=lease.id)``.
        self.id = lease_id
        #: The TTL it was granted with, in seconds.
        self.ttl = ttl
        self._renewal = Renewal(ttl, sent)

    @property
    def deadline(self) -> float:
        """Until when the lease surely lives (as last renewed), on the
        keeper's clock (trio's, or ``time.monotonic()``)."""
        return self._renewal.deadline

    @property
    def renewals(self) -> int:
        """Renewals that succeeded."""
        return self._renewal.renewals

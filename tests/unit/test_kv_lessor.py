"""dengine.kv.lessor: the leader's clock of leases.

Rules pinned here: a new leader gives every lease its full TTL from its
promotion; a keep-alive moves the deadline to now + ttl and fails once the
deadline has passed (or for an unknown lease); expired() proposes each
lease once until its revoke fails or applies; a demoted lessor forgets
everything; a grant applied on the leader starts its clock then."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dengine.errors import LeaseNotFound
from dengine.kv.lessor import Lessor


def test_promotion_gives_every_lease_its_full_ttl_from_then() -> None:
    lessor = Lessor()
    lessor.promote({1: 3000, 2: 10_000}, now=100.0)
    assert lessor.primary
    assert lessor.remaining(1, 100.0) == 3.0
    assert lessor.remaining(2, 105.0) == 5.0
    assert lessor.expired(102.9, 10) == []
    assert lessor.expired(103.0, 10) == [1]  # the boundary is expired
    assert lessor.next_deadline() == 110.0


def test_keep_alive_moves_the_deadline_and_fails_after_it_passed() -> None:
    lessor = Lessor()
    lessor.promote({7: 2000}, now=0.0)
    assert lessor.renew(7, 1.5) == 2.0
    assert lessor.expired(3.0, 10) == []  # renewed at 1.5: lives until 3.5
    assert lessor.remaining(7, 3.0) == pytest.approx(0.5)
    with pytest.raises(LeaseNotFound, match="lease 7"):
        lessor.renew(7, 3.5)
    with pytest.raises(LeaseNotFound, match="lease 8"):
        lessor.renew(8, 0.0)


def test_an_expired_lease_is_proposed_once_until_its_revoke_fails() -> None:
    lessor = Lessor()
    lessor.promote({1: 1000, 2: 1000}, now=0.0)
    assert sorted(lessor.expired(5.0, 10)) == [1, 2]
    assert lessor.expired(6.0, 10) == []  # both on their way out
    with pytest.raises(LeaseNotFound):
        lessor.renew(1, 6.0)  # being revoked: no resurrection
    lessor.revoke_failed(1)
    assert lessor.expired(7.0, 10) == [1]
    lessor.observe(1, None, 7.5)  # the revoke applied
    lessor.observe(2, None, 7.5)
    assert len(lessor) == 0 and lessor.next_deadline() is None


def test_expired_respects_its_limit_earliest_first() -> None:
    lessor = Lessor()
    lessor.promote({i: i * 1000 for i in range(1, 6)}, now=0.0)
    assert lessor.expired(10.0, 2) == [1, 2]
    assert lessor.expired(10.0, 2) == [3, 4]
    assert lessor.expired(10.0, 2) == [5]


def test_a_grant_applied_on_the_leader_starts_then_a_follower_ignores_it() -> None:
    follower = Lessor()
    follower.observe(3, 5000, now=1.0)
    assert follower.remaining(3, 1.0) is None and follower.expired(100.0, 10) == []
    leader = Lessor()
    leader.promote({}, now=0.0)
    leader.observe(3, 5000, now=1.0)
    assert leader.remaining(3, 2.0) == 4.0
    assert leader.expired(6.0, 10) == [3]


def test_demotion_forgets_every_deadline() -> None:
    lessor = Lessor()
    lessor.promote({1: 1000}, now=0.0)
    lessor.demote()
    assert not lessor.primary and lessor.remaining(1, 0.0) is None and lessor.expired(99.0, 10) == []
    # A later promotion starts everything afresh: the full TTL again.
    lessor.promote({1: 1000}, now=50.0)
    assert lessor.remaining(1, 50.0) == 1.0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["renew", "tick", "fail"]), st.integers(1, 4),
                          st.floats(0, 2, allow_nan=False)), max_size=60))
def test_a_lease_is_never_proposed_for_revoke_before_its_renewed_deadline(steps: list[tuple[str, int, float]]) -> None:
    """Whatever the order of renewals, sweeps and lost revokes: a lease is
    handed out by expired() only at or after now >= its last renewal + ttl
    (or promotion + ttl), and is never handed out twice while pending."""
    ttl = 1.0
    lessor = Lessor()
    lessor.promote({i: 1000 for i in range(1, 5)}, now=0.0)
    alive_until = {i: ttl for i in range(1, 5)}
    pending: set[int] = set()
    gone: set[int] = set()
    now = 0.0
    for action, lease, dt in steps:
        now += dt
        if action == "renew" and lease not in gone:
            try:
                lessor.renew(lease, now)
            except LeaseNotFound:
                assert now >= alive_until[lease] or lease in pending
            else:
                assert lease not in pending
                alive_until[lease] = now + ttl
        elif action == "tick":
            for out in lessor.expired(now, 10):
                assert now >= alive_until[out] and out not in pending and out not in gone
                pending.add(out)
        elif action == "fail" and lease in pending:
            lessor.revoke_failed(lease)
            pending.discard(lease)
        if lease in pending and action == "fail":
            continue
    for lease in list(pending):
        lessor.observe(lease, None, now)
        gone.add(lease)

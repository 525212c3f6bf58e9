"""dengine.keepalive: the rules of a lease kept alive for a block, on trio's
mock clock with a scripted lease client (the real clients are covered by
tests/conformance/test_coordination.py).

Rules pinned here: renewals come about every third of the TTL; the holder's
deadline is sent + remaining less the drift margin; failures that may pass
are retried sooner; ``lost`` is set AT the deadline when renewals keep
failing (not at the next renewal), and at once when the lease is gone; the
lease is revoked when the block ends, even when it ends by cancellation; the
block's own exception comes out as itself."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from dengine.api import Lease
from dengine.errors import LeaseNotFound, Unavailable
from dengine.keepalive import DRIFT_MARGIN, open_kept_lease


class ScriptedClient:
    def __init__(self, ttl: float = 3.0) -> None:
        self.ttl = ttl
        self.renewals: list[float] = []
        self.revoked: list[int] = []
        self.failing: type[Exception] | None = None

    async def grant_lease(self, ttl: float, *, timeout: float | None = None) -> Lease:
        return Lease(7, max(ttl, self.ttl))

    async def keep_alive(self, lease_id: int, *, timeout: float | None = None) -> float:
        await trio.sleep(0.01)  # a round trip
        if self.failing is not None:
            raise self.failing(f"scripted failure of lease {lease_id}")
        self.renewals.append(trio.current_time())
        return self.ttl

    async def revoke_lease(self, lease_id: int, *, timeout: float | None = None) -> None:
        self.revoked.append(lease_id)


async def test_renews_every_third_of_the_ttl_and_revokes_after_the_block(autojump_clock: trio.testing.MockClock) -> None:
    client = ScriptedClient()
    start = trio.current_time()
    async with open_kept_lease(client, 3.0) as kept:
        assert kept.id == 7 and kept.ttl == 3.0
        await trio.sleep(10)
        assert not kept.lost.is_set()
        assert 9 <= len(client.renewals) <= 11
        gaps = [b - a for a, b in zip(client.renewals, client.renewals[1:])]
        assert all(0.9 < g < 1.1 for g in gaps), gaps
        last = client.renewals[-1]
        assert kept.deadline == pytest.approx(last - 0.01 + 3.0 * (1 - DRIFT_MARGIN), abs=1e-6)
    assert client.revoked == [7] and trio.current_time() - start < 10.1


async def test_lost_is_set_at_the_deadline_when_renewals_keep_failing(autojump_clock: trio.testing.MockClock) -> None:
    client = ScriptedClient()
    client.failing = Unavailable
    start = trio.current_time()
    async with open_kept_lease(client, 3.0) as kept:
        await kept.lost.wait()
        lost_at = trio.current_time() - start
    assert lost_at == pytest.approx(3.0 * (1 - DRIFT_MARGIN), abs=0.02)
    assert client.renewals == [] and client.revoked == [7]


async def test_lost_is_set_at_once_when_the_lease_is_gone(autojump_clock: trio.testing.MockClock) -> None:
    client = ScriptedClient()
    async with open_kept_lease(client, 3.0) as kept:
        await trio.sleep(2.5)
        client.failing = LeaseNotFound
        await kept.lost.wait()
        assert trio.current_time() - kept.deadline < 0  # well before the deadline: at the next renewal


async def test_a_cancelled_block_still_revokes_and_errors_come_out_as_themselves(
        autojump_clock: trio.testing.MockClock) -> None:
    client = ScriptedClient()
    with trio.move_on_after(1.5):
        async with open_kept_lease(client, 3.0):
            await trio.sleep(100)
    assert client.revoked == [7]
    with pytest.raises(KeyError, match="mine"):
        async with open_kept_lease(client, 3.0):
            raise KeyError("mine")
    assert client.revoked == [7, 7]

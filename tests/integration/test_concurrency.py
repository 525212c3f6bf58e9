"""dengine.concurrency: Session, Lock and Election over both clients.

Every test runs against the embedded client and the remote trio client
(the ``kv`` fixture of the conformance suite: one node ticking every 10 ms,
so leases may be as short as 150 ms) under an absolute deadline."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from dengine import InvalidArgument, SessionLost
from dengine.concurrency import Election, Lock, Session
from tests.conformance.test_kv import DEADLINE, kv  # noqa: F401 - the fixture

TTL = 0.3


async def test_a_lock_admits_one_holder_at_a_time_in_queue_order_with_growing_tokens(kv: Any) -> None:
    holders: list[int] = []
    history: list[tuple[str, int]] = []
    inside = 0
    most = 0

    async def contender(n: int, queued: trio.Event) -> None:
        nonlocal inside, most
        async with Session(kv, ttl=5) as session:
            lock = Lock(session, b"/locks/job")
            async with lock:
                inside += 1
                most = max(most, inside)
                holders.append(n)
                history.append(("in", lock.fencing_token))
                await trio.sleep(0.02)  # hold it a while: others must wait
                history.append(("out", lock.fencing_token))
                inside -= 1
            assert lock.fencing_token == 0 and lock.key is None

    with trio.fail_after(DEADLINE):
        async with Session(kv, ttl=5) as first_session:
            first = Lock(first_session, b"/locks/job")
            await first.acquire()  # everyone else queues behind this holder, in start order
            async with trio.open_nursery() as nursery:
                for n in range(4):
                    queued = trio.Event()
                    nursery.start_soon(contender, n, queued)
                    # Wait until contender n's key is in the queue before starting the next.
                    for _ in range(200):
                        if (await kv.scan_prefix(b"/locks/job/", count_only=True)).count == n + 2:
                            break
                        await trio.sleep(0.01)
                    else:
                        raise AssertionError(f"contender {n} never queued")
                first_token = first.fencing_token
                await first.release()
    assert most == 1, "two holders at once"
    assert holders == [0, 1, 2, 3], "the lock was not handed over in queue order"
    tokens = [t for kind, t in history if kind == "in"]
    assert tokens == sorted(tokens) and len(set(tokens)) == 4 and tokens[0] > first_token
    assert [kind for kind, _ in history] == ["in", "out"] * 4
    assert (await kv.scan_prefix(b"/locks/job/")).count == 0


async def test_a_waiter_cancelled_leaves_the_queue_and_a_holder_cancelled_releases(kv: Any) -> None:
    with trio.fail_after(DEADLINE):
        async with Session(kv, ttl=5) as a, Session(kv, ttl=5) as b:
            holder = Lock(a, b"/locks/c")
            await holder.acquire()
            with trio.move_on_after(0.2):
                await Lock(b, b"/locks/c").acquire()
                raise AssertionError("acquired a held lock")
            assert [kv_.key for kv_ in (await kv.scan_prefix(b"/locks/c/")).entries] == [holder.key]
            await holder.release()
            with trio.CancelScope() as scope:
                async with holder.hold():
                    scope.cancel()
                    await trio.sleep(1)
            assert (await kv.scan_prefix(b"/locks/c/")).count == 0  # released by the cancellation
            lock_b = Lock(b, b"/locks/c")
            async with lock_b:
                assert lock_b.held and lock_b.fencing_token > 0


async def test_a_dead_holder_loses_the_lock_when_its_lease_ends(kv: Any) -> None:
    with trio.fail_after(DEADLINE):
        async with Session(kv, ttl=5) as live:
            # The lease's clock starts at the grant, so the wait is measured from
            # before it: a slow put must not eat into the TTL the check expects.
            start = trio.current_time()
            dead_lease = await kv.grant_lease(TTL)  # a holder that stops renewing: its session died
            dead_key = b"/locks/d/%016x" % dead_lease.id
            dead_rev = await kv.put(dead_key, b"", lease=dead_lease.id)
            waiter = Lock(live, b"/locks/d")
            await waiter.acquire()  # waits on the dead holder's key, then gets it when the lease expires
            assert trio.current_time() - start >= TTL * 0.9
            assert await kv.get(dead_key) is None
            assert waiter.fencing_token > dead_rev  # queued after the dead holder: a larger token
            await waiter.release()


async def test_losing_the_session_cancels_a_block_that_asked_for_it(kv: Any) -> None:
    with trio.fail_after(DEADLINE):
        with pytest.raises(SessionLost, match="lost"):
            async with Session(kv, ttl=TTL) as session:
                lock = Lock(session, b"/locks/lost")
                async with lock.hold(cancel_on_loss=True):
                    await kv.revoke_lease(session.lease_id)  # as if it expired while we were cut off
                    await trio.sleep(30)  # cancelled once the keeper sees the lease is gone
                    raise AssertionError("the guarded block was not cancelled")
        assert (await kv.scan_prefix(b"/locks/lost/")).count == 0


async def test_election_campaign_proclaim_resign_leader_and_observe(kv: Any) -> None:
    seen: list[bytes] = []
    enough = trio.Event()

    async def observer() -> None:
        async for value in Election(session_o, b"/election/svc").observe():
            seen.append(value)
            if value == b"b-1":
                enough.set()
                return

    with trio.fail_after(DEADLINE):
        async with Session(kv, ttl=5) as session_a, Session(kv, ttl=5) as session_b, Session(kv, ttl=5) as session_o:
            a, b = Election(session_a, b"/election/svc"), Election(session_b, b"/election/svc")
            assert await a.leader() is None
            await a.campaign(b"a-1")
            assert a.is_leader and (await a.leader()).value == b"a-1"
            async with trio.open_nursery() as nursery:
                nursery.start_soon(observer)
                campaigning = trio.Event()

                async def campaign_b() -> None:
                    campaigning.set()
                    await b.campaign(b"b-1")

                nursery.start_soon(campaign_b)
                await campaigning.wait()
                for _ in range(200):  # b's candidacy is queued behind a
                    if (await kv.scan_prefix(b"/election/svc/", count_only=True)).count == 2:
                        break
                    await trio.sleep(0.01)
                assert not b.is_leader
                await a.proclaim(b"a-2")
                assert (await b.leader()).value == b"a-2"
                with pytest.raises(InvalidArgument, match="needs this candidate to be the leader"):
                    await b.proclaim(b"nope")
                await a.resign()
                await enough.wait()
            assert b.is_leader and (await a.leader()).value == b"b-1"
            assert seen[0] in (b"a-1", b"a-2") and seen[-2:] == [b"a-2", b"b-1"]
            await b.resign()
            assert await b.leader() is None


async def test_recipe_arguments_are_checked(kv: Any) -> None:
    with trio.fail_after(DEADLINE):
        async with Session(kv, ttl=5) as session:
            for bad in (b"locks", b"/", "/str"):
                with pytest.raises(InvalidArgument, match="name"):
                    Lock(session, bad)  # type: ignore[arg-type]
            lock = Lock(session, b"/locks/twice")
            async with lock:
                with pytest.raises(InvalidArgument, match="already held"):
                    await lock.acquire()
        with pytest.raises(InvalidArgument, match="not open"):
            Session(kv).lease_id


async def test_a_waiter_whose_key_vanished_gets_session_lost_not_the_lock(kv: Any) -> None:
    """Without its key the queue behind it would not wait for it: it must not
    believe it holds the lock."""
    with trio.fail_after(DEADLINE):
        async with Session(kv, ttl=5) as a, Session(kv, ttl=5) as b:
            holder = Lock(a, b"/locks/v")
            await holder.acquire()
            waiter = Lock(b, b"/locks/v")
            async with trio.open_nursery() as nursery:
                outcome: list[BaseException] = []

                async def wait() -> None:
                    try:
                        await waiter.acquire()
                    except SessionLost as exc:
                        outcome.append(exc)

                nursery.start_soon(wait)
                for _ in range(200):
                    if (await kv.scan_prefix(b"/locks/v/", count_only=True)).count == 2:
                        break
                    await trio.sleep(0.01)
                await kv.delete(b"/locks/v/%016x" % b.lease_id)  # as its lease's end would
                await holder.release()
            assert outcome and "gone" in str(outcome[0]) and not waiter.held


async def test_a_key_left_by_an_unanswered_release_is_replaced_with_a_larger_token(kv: Any) -> None:
    """A release whose delete got no answer leaves the holder's key; the next
    acquisition on that session must not inherit the old token."""
    with trio.fail_after(DEADLINE):
        async with Session(kv, ttl=5) as session:
            stale = b"/locks/s/%016x" % session.lease_id
            stale_rev = await kv.put(stale, b"", lease=session.lease_id)
            lock = Lock(session, b"/locks/s")
            async with lock:
                assert lock.key == stale and lock.fencing_token > stale_rev
                assert (await kv.get_kv(stale)).create_revision == lock.fencing_token

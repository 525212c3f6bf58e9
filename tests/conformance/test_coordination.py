"""Leases, transactions and key metadata: ONE suite over both clients.

Runs against the embedded client and the remote client (the ``kv``
fixture of test_kv.py); both must give the same answers and raise the same
exceptions. The engine ticks every 10 ms (election timeout 100-200 ms), so
the shortest lease is 150 ms."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import dengine
from dengine import Compare, InvalidArgument, KeyValue, LeaseNotFound, Op, ScanResult, TxnResult, WatchEventType
from tests.conformance.test_kv import DEADLINE, kv  # noqa: F401 - the fixture

MIN_LEASE = 0.15  # 1.5 election timeouts of 10 ticks of 10 ms


# --- key metadata -----------------------------------------------------------------------


async def test_keys_carry_create_revision_version_and_lease_everywhere(kv: Any) -> None:
    with trio.fail_after(DEADLINE):
        lease = await kv.grant_lease(30)
        r1 = await kv.put(b"/m/a", b"1")
        r2 = await kv.put(b"/m/a", b"2", lease=lease.id)
        async with kv.open_watch(b"/m/", prefix=True, start_revision=r1) as watch:
            events = []
            async for event in watch:
                events.append(event)
                if len(events) == 2:
                    break
        assert [(e.revision, e.create_revision, e.version, e.lease) for e in events] == [
            (r1, r1, 1, 0), (r2, r1, 2, lease.id)]
        expected = KeyValue(b"/m/a", b"2", r2, create_revision=r1, version=2, lease=lease.id)
        assert await kv.get_kv(b"/m/a") == expected
        scan = await kv.scan_prefix(b"/m/")
        assert scan.entries == [expected]
        key, value = scan.entries[0]
        assert (key, value, scan.entries[0][0], scan.entries[0].mod_revision) == (b"/m/a", b"2", b"/m/a", r2)
        keys_only = await kv.scan_range(b"/m/", b"/m0", keys_only=True)
        assert keys_only.entries == [KeyValue(b"/m/a", b"", r2, create_revision=r1, version=2, lease=lease.id)]
        # A put without a lease detaches the key.
        r3 = await kv.put(b"/m/a", b"3")
        assert await kv.get_kv(b"/m/a") == KeyValue(b"/m/a", b"3", r3, create_revision=r1, version=3, lease=0)


# --- leases ----------------------------------------------------------------------------


async def test_lease_grant_ttl_list_keep_alive_and_revoke(kv: Any) -> None:
    with trio.fail_after(DEADLINE):
        lease = await kv.grant_lease(30)
        assert lease.id > 0 and lease.ttl == 30
        small = await kv.grant_lease(0.001)
        assert small.ttl == MIN_LEASE  # raised to the cluster's minimum
        chosen = await kv.grant_lease(30, lease_id=4242)
        assert chosen == dengine.Lease(4242, 30)
        with pytest.raises(InvalidArgument, match="lease 4242 already exists"):
            await kv.grant_lease(30, lease_id=4242)
        # (the small lease lives only the cluster's minimum: on a busy machine it may be gone by now)
        assert {lease.id, 4242} <= {x.id for x in await kv.leases()}
        await kv.put(b"/l/1", b"a", lease=lease.id)
        await kv.put(b"/l/2", b"b", lease=lease.id)
        status = await kv.lease_time_to_live(lease.id, keys=True)
        assert status.id == lease.id and status.granted_ttl == 30 and 29 < status.remaining <= 30
        assert status.keys == (b"/l/1", b"/l/2")
        assert (await kv.lease_time_to_live(lease.id)).keys == ()
        assert await kv.keep_alive(lease.id) == 30
        rev = (await kv.get_kv(b"/l/2")).revision
        async with kv.open_watch(b"/l/", prefix=True, start_revision=rev + 1) as watch:
            await kv.revoke_lease(lease.id)
            deletes = []
            async for event in watch:
                deletes.append(event)
                if len(deletes) == 2:
                    break
        assert [e.type for e in deletes] == [WatchEventType.DELETE] * 2
        assert [e.key for e in deletes] == [b"/l/1", b"/l/2"]
        assert deletes[0].revision == deletes[1].revision  # one revoke, one revision
        assert await kv.get(b"/l/1") is None and await kv.get(b"/l/2") is None
        for call in (kv.keep_alive(lease.id), kv.revoke_lease(lease.id), kv.lease_time_to_live(lease.id),
                     kv.put(b"/l/3", b"c", lease=lease.id)):
            with pytest.raises(LeaseNotFound, match=f"lease {lease.id}"):
                await call
        assert await kv.get(b"/l/3") is None  # the refused put changed nothing


async def test_a_lease_not_kept_alive_expires_with_its_keys(kv: Any) -> None:
    with trio.fail_after(DEADLINE):
        lease = await kv.grant_lease(MIN_LEASE)
        rev = await kv.put(b"/exp/a", b"1", lease=lease.id)
        await kv.put(b"/exp/b", b"2", lease=lease.id)
        async with kv.open_watch(b"/exp/", prefix=True, start_revision=rev) as watch:
            seen = []
            async for event in watch:
                seen.append(event)
                if event.type == WatchEventType.DELETE and len([e for e in seen if e.type == WatchEventType.DELETE]) == 2:
                    break
        deletes = [e for e in seen if e.type == WatchEventType.DELETE]
        assert {e.key for e in deletes} == {b"/exp/a", b"/exp/b"} and deletes[0].revision == deletes[1].revision
        assert await kv.get(b"/exp/a") is None
        with pytest.raises(LeaseNotFound):
            await kv.keep_alive(lease.id)
        assert lease.id not in {x.id for x in await kv.leases()}


async def test_a_kept_lease_outlives_its_ttl_and_is_revoked_after_the_block(kv: Any) -> None:
    with trio.fail_after(DEADLINE):
        async with kv.open_lease(MIN_LEASE) as kept:
            await kv.put(b"/kept", b"v", lease=kept.id)
            start = trio.current_time()
            while trio.current_time() - start < 5 * MIN_LEASE:  # bounded: about 5 TTLs
                await trio.sleep(MIN_LEASE / 2)
                assert await kv.get(b"/kept") == b"v", "a kept lease expired"
            assert not kept.lost.is_set() and kept.renewals >= 5
            assert kept.deadline > trio.current_time()
        assert await kv.get(b"/kept") is None  # revoked when the block ended
        with pytest.raises(LeaseNotFound):
            await kv.lease_time_to_live(kept.id)


async def test_a_lease_revoked_under_its_keeper_is_reported_lost(kv: Any) -> None:
    with trio.fail_after(DEADLINE):
        async with kv.open_lease(MIN_LEASE) as kept:
            await kv.revoke_lease(kept.id)
            await kept.lost.wait()  # the next renewal is refused
        assert kept.lost.is_set()


async def test_lease_arguments_are_checked(kv: Any) -> None:
    with trio.fail_after(DEADLINE):
        for bad in (0, -1, "1", True, 2**63):
            with pytest.raises(InvalidArgument, match="lease id"):
                await kv.keep_alive(bad)
        with pytest.raises(InvalidArgument, match="ttl"):
            await kv.grant_lease(0)
        with pytest.raises(InvalidArgument, match="lease or a ttl, not both"):
            await kv.put(b"/x", b"v", ttl=5, lease=1)
        with pytest.raises(LeaseNotFound):
            await kv.put(b"/x", b"v", lease=987654)


# --- transactions ------------------------------------------------------------------------


async def test_txn_runs_one_branch_atomically_at_one_revision(kv: Any) -> None:
    with trio.fail_after(DEADLINE):
        r0 = await kv.put(b"/t/a", b"1")
        ok = await kv.txn(
            [Compare.mod_revision(b"/t/a") == r0, Compare.value(b"/t/a") == b"1", Compare.version(b"/t/b") == 0],
            [Op.put(b"/t/b", b"2"), Op.put(b"/t/a", b"x"), Op.get(b"/t/a"), Op.scan(b"/t/"), Op.delete(b"/t/z")],
            [Op.get(b"/t/a")],
        )
        assert isinstance(ok, TxnResult) and ok.succeeded
        rev = ok.revision
        assert ok.responses[:2] == [rev, rev]
        assert ok.responses[2] == KeyValue(b"/t/a", b"x", rev, create_revision=r0, version=2)
        assert isinstance(ok.responses[3], ScanResult)
        assert [tuple(e) for e in ok.responses[3].entries] == [(b"/t/a", b"x"), (b"/t/b", b"2")]
        assert ok.responses[4] == 0
        # The same compares fail now: the failure branch runs, nothing else changes.
        failed = await kv.txn([Compare.mod_revision(b"/t/a") == r0], [Op.delete(b"/t/a")],
                              [Op.get(b"/t/a"), Op.get(b"/t/missing")])
        assert not failed.succeeded and failed.revision > rev
        assert failed.responses == [KeyValue(b"/t/a", b"x", rev, create_revision=r0, version=2), None]
        assert await kv.get(b"/t/a") == b"x"
        # Every write of one txn reaches watchers at that one revision.
        async with kv.open_watch(b"/t/", prefix=True, start_revision=failed.revision) as watch:
            both = await kv.txn([], [Op.delete_prefix(b"/t/"), Op.put(b"/t/c", b"3")])
            events = []
            async for event in watch:
                events.append(event)
                if len(events) == 3:
                    break
        assert both.succeeded and both.responses == [2, both.revision]
        assert [(e.type, e.key, e.revision) for e in events] == [
            (WatchEventType.DELETE, b"/t/a", both.revision), (WatchEventType.DELETE, b"/t/b", both.revision),
            (WatchEventType.PUT, b"/t/c", both.revision)]


async def test_txn_compares_on_every_target_and_operator(kv: Any) -> None:
    with trio.fail_after(DEADLINE):
        lease = await kv.grant_lease(30)
        rev = await kv.put(b"/c/k", b"m", lease=lease.id)
        cases = [
            (Compare.value(b"/c/k") == b"m", True), (Compare.value(b"/c/k") != b"m", False),
            (Compare.value(b"/c/k") < b"n", True), (Compare.value(b"/c/k") > b"n", False),
            (Compare.version(b"/c/k") == 1, True), (Compare.version(b"/c/k") > 1, False),
            (Compare.create_revision(b"/c/k") == rev, True), (Compare.create_revision(b"/c/k") < rev, False),
            (Compare.mod_revision(b"/c/k") != rev, False), (Compare.mod_revision(b"/c/k") > rev - 1, True),
            (Compare.lease(b"/c/k") == lease.id, True), (Compare.lease(b"/c/k") == 0, False),
            # A missing key: version, revisions and lease are 0; any compare on its value is false.
            (Compare.version(b"/c/none") == 0, True), (Compare.create_revision(b"/c/none") == 0, True),
            (Compare.lease(b"/c/none") == 0, True), (Compare.value(b"/c/none") != b"x", False),
        ]
        for compare, expected in cases:
            result = await kv.txn([compare], [Op.get(b"/c/k")], [])
            assert result.succeeded is expected, compare


async def test_compare_and_swap_is_a_transaction(kv: Any) -> None:
    with trio.fail_after(DEADLINE):
        assert await kv.compare_and_swap(b"/cas", expected=None, new=b"a")
        assert not await kv.compare_and_swap(b"/cas", expected=None, new=b"b")
        assert not await kv.compare_and_swap(b"/cas", expected=b"zzz", new=b"b")
        assert await kv.compare_and_swap(b"/cas", expected=b"a", new=b"b")
        got = await kv.get_kv(b"/cas")
        assert (got.value, got.version) == (b"b", 2)


async def test_txn_is_all_or_nothing_when_an_op_is_refused(kv: Any) -> None:
    with trio.fail_after(DEADLINE):
        await kv.put(b"/aon/a", b"1")
        with pytest.raises(LeaseNotFound):
            await kv.txn([], [Op.put(b"/aon/a", b"2"), Op.put(b"/aon/b", b"2", lease=555555)])
        assert await kv.get(b"/aon/a") == b"1" and await kv.get(b"/aon/b") is None


async def test_txn_arguments_are_checked(kv: Any) -> None:
    with trio.fail_after(DEADLINE):
        with pytest.raises(InvalidArgument, match="more than the limit of 128"):
            await kv.txn([], [Op.get(b"/k%d" % i) for i in range(129)])
        with pytest.raises(InvalidArgument, match="more than once"):
            await kv.txn([], [Op.put(b"/d", b"1"), Op.delete(b"/d")])
        with pytest.raises(InvalidArgument, match="must be a dengine.Op"):
            await kv.txn([], [("put", b"/k", b"v")])
        with pytest.raises(InvalidArgument, match="must be a list"):
            await kv.txn(Compare.version(b"/k") == 0)
        with pytest.raises(InvalidArgument, match="key must not be empty"):
            await kv.txn([], [Op("get", b"")])
        assert (await kv.txn([], [Op.get(b"/k%d" % i) for i in range(128)])).succeeded  # the limit itself is fine


async def test_nested_txn_updates_ours_or_creates_if_absent(kv: Any) -> None:
    """Patroni's leader write, in one round trip: update the key if it holds
    our value, else create it if it is absent, else say who holds it."""
    key = b"/nested/leader"

    def update_or_create(value: bytes) -> tuple[list[Compare], list[Op], list[Op]]:
        create = Op.txn([Compare.create_revision(key) == 0], [Op.put(key, value), Op.get(key)], [Op.get(key)])
        return [Compare.value(key) == b"me"], [Op.put(key, value)], [create]

    with trio.fail_after(DEADLINE):
        made = await kv.txn(*update_or_create(b"me"))  # absent: the nested txn creates it
        assert isinstance(made, TxnResult) and not made.succeeded and len(made.responses) == 1
        nested = made.responses[0]
        assert isinstance(nested, TxnResult) and nested.succeeded and nested.revision == made.revision
        # The nested get sees the nested put, at the outer transaction's revision.
        assert nested.responses == [made.revision, KeyValue(key, b"me", made.revision, made.revision, 1)]
        updated = await kv.txn(*update_or_create(b"me"))  # ours: the outer branch updates it
        assert updated == TxnResult(True, updated.revision, [updated.revision])
        theirs = await kv.put(key, b"other")
        refused = await kv.txn(*update_or_create(b"me"))  # theirs: both compares fail, nothing changes
        assert not refused.succeeded
        assert refused.responses == [TxnResult(False, refused.revision, [
            KeyValue(key, b"other", theirs, create_revision=made.revision, version=3)])]
        assert await kv.get(key) == b"other"
        # A bad op in a nested branch that would not even run refuses the whole transaction.
        with pytest.raises(LeaseNotFound):
            await kv.txn([], [Op.delete(key), Op.txn([], [Op.get(key)], [Op.put(b"/nested/x", b"1", lease=777777)])])
        assert await kv.get(key) == b"other" and await kv.get(b"/nested/x") is None
        # Nesting is bounded.
        deep = Op.get(key)
        for _ in range(8):
            deep = Op("txn", b"", txn=((), (deep,), ()))
        assert (await kv.txn([], [deep])).succeeded
        with pytest.raises(InvalidArgument, match="txn nesting is deeper than the limit of 8"):
            await kv.txn([], [Op("txn", b"", txn=((), (deep,), ()))])


def test_builders_refuse_nonsense() -> None:
    with pytest.raises(InvalidArgument, match="needs bytes"):
        Compare.value(b"/k") == 3  # noqa: B015
    with pytest.raises(InvalidArgument, match="non-negative integer"):
        Compare.version(b"/k") == b"1"  # noqa: B015
    with pytest.raises(InvalidArgument, match="must be compared"):
        bool(Compare.version(b"/k"))
    with pytest.raises(InvalidArgument, match="unknown compare operator"):
        Compare(b"/k", "version", "<=", 1)
    with pytest.raises(InvalidArgument, match="key must not be empty"):
        Op.delete_prefix(b"")
    assert Op.delete_prefix(b"/a/") == Op("delete_range", b"/a/", end=b"/a0")
    assert Op.scan(b"").end is None


async def test_concurrent_transactions_each_get_a_revision_of_their_own(kv: Any) -> None:
    """Writes of one pass share an entry, but a transaction's revision is a
    token callers rely on (a lock's fencing token): each has its own."""
    revisions: list[int] = []
    puts: list[int] = []

    async def one_txn(n: int) -> None:
        result = await kv.txn([Compare.create_revision(b"/own/%d" % n) == 0], [Op.put(b"/own/%d" % n, b"x")])
        assert result.succeeded and result.responses == [result.revision]
        revisions.append(result.revision)

    async def one_put(n: int) -> None:
        puts.append(await kv.put(b"/shared/%d" % n, b"y"))

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(one_txn, n)
                nursery.start_soon(one_put, n)
    assert len(set(revisions)) == 20, sorted(revisions)
    for n, rev in enumerate(sorted(revisions)):
        kv_ = await kv.get_kv(b"/own/%d" % n)
        assert kv_ is not None and kv_.create_revision in revisions
    assert not set(puts) & set(revisions)

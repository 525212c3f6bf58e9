"""The member table and the pure membership rules: contexts on membership
entries, the table in the KV state machine and its snapshots (old snapshots
without it still restore), the strict reconfiguration checks, and the
membership subscription that ends rather than drop a change."""

from __future__ import annotations

import msgpack
import pytest
import trio

from dengine.api import MembershipChange
from dengine.errors import InvalidArgument, MalformedMessage, MembershipChangeRefused, ResourceExhausted
from dengine.kv.members import MemberAddresses, MemberTable, decode_member_context, encode_member_context
from dengine.kv.snapshot import decode_image, encode_image, restore, snapshot_bytes
from dengine.kv.store import KVStore
from dengine.lifecycle import Lifecycle
from dengine.raft import membership
from dengine.raft.core import bootstrap_entries
from dengine.raft.messages import MAX_CONF_CONTEXT, ConfChange, ConfChangeType, ConfState


def test_a_conf_change_carries_its_context_and_old_entries_still_decode() -> None:
    ctx = encode_member_context("10.0.0.4:7001", "10.0.0.4:9081")
    change = ConfChange(ConfChangeType.ADD_LEARNER, 4, ctx)
    assert ConfChange.decode(change.encode()) == change
    old = bytes([0]) + (4).to_bytes(8, "big")  # written before contexts existed
    assert ConfChange.decode(old) == ConfChange(ConfChangeType.ADD_LEARNER, 4, b"")
    with pytest.raises(ValueError, match="9 to"):
        ConfChange.decode(old + b"x" * (MAX_CONF_CONTEXT + 1))
    with pytest.raises(ValueError):
        ConfChange.decode(b"\x00\x00")


def test_bootstrap_entries_carry_the_same_contexts_on_every_member() -> None:
    contexts = {n: encode_member_context(f"h{n}:7001") for n in (1, 2, 3)}
    a = bootstrap_entries(frozenset({1, 2, 3}), contexts)
    b = bootstrap_entries(frozenset({3, 2, 1}), dict(reversed(list(contexts.items()))))
    assert a == b
    assert [ConfChange.decode(e.data).context for e in a] == [contexts[1], contexts[2], contexts[3]]


@pytest.mark.parametrize("data", [b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"peer": 5}),
                                  msgpack.packb({"peer": "x" * 400})])
def test_a_context_that_cannot_be_read_says_nothing(data: bytes) -> None:
    assert decode_member_context(data) == MemberAddresses()


def test_the_table_merges_addresses_and_never_forgets_the_highest_id() -> None:
    table = MemberTable()
    table.record(4, encode_member_context("h:7004"))
    table.record(4, encode_member_context(client_address="h:9004"))  # an update keeps the peer address
    assert table.get(4) == MemberAddresses("h:7004", "h:9004")
    table.remove(4)
    assert table.get(4) is None and table.max_id == 4
    again = MemberTable.from_wire(msgpack.unpackb(msgpack.packb(table.to_wire())))
    assert again == table
    for bad in ([1], [-1, []], [0, [[0, None, None]]], [0, [[1, 5, None]]], "x"):
        with pytest.raises(ValueError):
            MemberTable.from_wire(bad)


def test_kv_snapshots_carry_the_table_and_a_version_1_snapshot_restores_without_one() -> None:
    store = KVStore()
    store.apply_member(1, 1, "record", encode_member_context("h:7001"))
    store.apply_member(2, 2, "record", encode_member_context("h:7002", "h:9002"))
    store.apply_member(3, 2, "remove")
    store.apply_member(4, 0, "none")
    assert store.applied_index == 4
    restored = restore(snapshot_bytes(store))
    assert restored.members == store.members and restored.members.max_id == 2
    v1 = msgpack.packb([1, 7, 0, [b"k", b"v", 7, None]], use_bin_type=True)
    image = decode_image(v1)
    assert image.applied_index == 7 and len(image.members) == 0
    with pytest.raises(MalformedMessage):
        decode_image(msgpack.packb([2, 7, 0, []], use_bin_type=True))  # version 2 needs the table
    with pytest.raises(MalformedMessage, match="member"):
        decode_image(msgpack.packb([2, 7, 0, [], [0, [[1, 5, None]]]], use_bin_type=True))
    assert decode_image(encode_image(store.freeze())).members == store.members


def test_update_needs_a_member_and_changes_no_role() -> None:
    conf = ConfState(voters={1, 2, 3})
    with pytest.raises(InvalidArgument, match="node 9 is not a member"):
        membership.validate(conf, ConfChange(ConfChangeType.UPDATE, 9))
    assert membership.apply(conf, ConfChange(ConfChangeType.UPDATE, 2, b"x")) == conf


def test_promotion_needs_a_learner_that_answered_and_caught_up() -> None:
    conf = ConfState(voters={1, 2, 3}, learners={4})
    promote = ConfChange(ConfChangeType.PROMOTE, 4)
    with pytest.raises(MembershipChangeRefused, match="node 4 has not answered"):
        membership.check_safe(conf, promote, active={1, 2, 3}, learner_lag=0, max_lag=10)
    with pytest.raises(MembershipChangeRefused, match="node 4 has not answered"):
        membership.check_safe(conf, promote, active={1, 2, 3, 4}, learner_lag=None, max_lag=10)
    with pytest.raises(MembershipChangeRefused, match="node 4 is 11 entries behind the leader"):
        membership.check_safe(conf, promote, active={1, 2, 3, 4}, learner_lag=11, max_lag=10)
    membership.check_safe(conf, promote, active={1, 2, 3, 4}, learner_lag=10, max_lag=10)


def test_a_change_that_leaves_no_reachable_majority_is_refused() -> None:
    conf = ConfState(voters={1, 2, 3})
    remove3 = ConfChange(ConfChangeType.REMOVE, 3)
    membership.check_safe(conf, remove3, active={1, 2}, learner_lag=None, max_lag=10)  # {1, 2}: both reachable
    with pytest.raises(MembershipChangeRefused, match="removing node 3 would leave 1 of 2 voters reachable"):
        membership.check_safe(conf, remove3, active={1}, learner_lag=None, max_lag=10)
    # Promoting into a cluster that then needs 3 of 4 when only 2 voters answer.
    conf4 = ConfState(voters={1, 2, 3}, learners={4})
    with pytest.raises(MembershipChangeRefused, match="promoting node 4 would leave 2 of 4"):
        membership.check_safe(conf4, ConfChange(ConfChangeType.PROMOTE, 4), active={1, 4}, learner_lag=0,
                              max_lag=10)
    # Adding a learner or updating addresses never changes the quorum.
    membership.check_safe(conf, ConfChange(ConfChangeType.ADD_LEARNER, 5), active={1}, learner_lag=None, max_lag=0)


async def test_a_membership_subscription_ends_instead_of_dropping_a_change() -> None:
    life = Lifecycle()
    slow = life.membership_changes()
    fast = life.membership_changes()
    for i in range(1, 66):
        life.membership_changed(MembershipChange(revision=i, kind="updated", node_id=1, members=()))
        if i <= 64:
            assert fast.receive_nowait().revision == i
    assert fast.receive_nowait().revision == 65  # a reader that keeps up sees every change
    got = [(await slow.receive()).revision for _ in range(64)]
    assert got == list(range(1, 65))
    with pytest.raises(ResourceExhausted, match="fell more than 64 values behind"):
        await slow.receive()
    life.finish_stop()
    with pytest.raises(trio.EndOfChannel):
        await fast.receive()

"""Membership through the engine's operator API, on the in-memory network:
members with addresses in the replicated state (also across a snapshot and
a restart), add / promote / update / remove, the safety checks, and the
membership watch.

Rules: every test under an absolute fail_after; waiting is on the engine's
own calls (bounded by their timeouts) and notifications, never on sleeps.
"""

from __future__ import annotations

import pathlib

import pytest
import trio

import dengine
from dengine.testing import open_cluster

DEADLINE = 60


async def test_initial_members_carry_their_peer_addresses_from_the_log(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(DEADLINE):
        async with open_cluster(tmp_path, 3) as cluster:
            leader = await cluster.wait_leader()
            members = leader.members()
            assert [(m.node_id, m.peer_address, m.is_learner) for m in members] == [
                (n, cluster.addresses[n], False) for n in (1, 2, 3)
            ]
            assert leader._node.kv.members.get(2).peer_address == cluster.addresses[2]  # from the bootstrap entry


async def test_add_promote_update_remove_and_the_watch_sees_each_once(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(DEADLINE):
        async with open_cluster(tmp_path, 3) as cluster:
            leader = await cluster.wait_leader()
            await leader.client.put(b"/k", b"v")
            with leader.watch_members() as changes:
                added = await leader.add_member("127.0.0.1:7104", client_address="127.0.0.1:9104")
                assert (added.node_id, added.peer_address, added.client_address, added.is_learner) == (
                    4, "127.0.0.1:7104", "127.0.0.1:9104", True)
                cluster.addresses[4] = added.peer_address
                await cluster.start(4)
                # Promotion waits until the learner caught up (the helper retries
                # while the leader refuses it as behind).
                voter = await _promote(leader, 4)
                assert not voter.is_learner
                moved = await leader.update_member(4, client_address="127.0.0.1:9204")
                assert (moved.peer_address, moved.client_address) == ("127.0.0.1:7104", "127.0.0.1:9204")
                await leader.remove_member(4)
                assert [m.node_id for m in leader.members()] == [1, 2, 3]
                seen = [await changes.receive() for _ in range(4)]
            assert [(c.kind, c.node_id) for c in seen] == [
                ("added_learner", 4), ("promoted", 4), ("updated", 4), ("removed", 4)]
            revisions = [c.revision for c in seen]
            assert revisions == sorted(revisions) and len(set(revisions)) == 4
            assert [m.node_id for m in seen[0].members] == [1, 2, 3, 4] and seen[0].members[3].is_learner
            assert 4 not in [m.node_id for m in seen[3].members]
            # Every member applied the same table.
            for engine in cluster.engines.values():
                if engine.config.node_id != 4:
                    with trio.fail_after(10):
                        waiter = engine._node.applied_waiter(seen[3].revision)
                        if waiter is not None:
                            await waiter.wait()
                    assert engine._node.kv.members == leader._node.kv.members
            # A removed member's id is never given out again.
            fresh = await leader.client.add_member("127.0.0.1:7105")  # the EmbeddedClient has the same names
            assert fresh.node_id == 5 and fresh in leader.client.members()
            with pytest.raises(dengine.InvalidArgument, match="ids are never reused"):
                await leader.add_member("127.0.0.1:7106", node_id=4)


async def _promote(leader: dengine.Engine, node_id: int) -> dengine.Member:
    for _ in range(200):  # bounded: about 10 s of 50 ms retries
        try:
            return await leader.promote_member(node_id)
        except dengine.MembershipChangeRefused as exc:
            assert "entries behind the leader" in str(exc) or "has not answered" in str(exc)
            with trio.move_on_after(0.05):
                await trio.sleep_forever()
    raise AssertionError(f"node {node_id} never caught up")


async def test_bad_membership_requests_name_what_is_wrong(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(DEADLINE):
        async with open_cluster(tmp_path, 3) as cluster:
            leader = await cluster.wait_leader()
            follower = cluster.followers()[0]
            with pytest.raises(dengine.NotLeader):
                await follower.add_member("127.0.0.1:7200")
            with pytest.raises(dengine.InvalidArgument, match="already node 2's"):
                await leader.add_member(cluster.addresses[2])
            with pytest.raises(dengine.InvalidArgument, match="address 'nonsense' must be 'host:port'"):
                await leader.add_member("nonsense")
            with pytest.raises(dengine.InvalidArgument, match="already a member"):
                await leader.add_member("127.0.0.1:7200", node_id=3)
            with pytest.raises(dengine.InvalidArgument, match="not a learner"):
                await leader.promote_member(2)
            with pytest.raises(dengine.InvalidArgument, match="node 9 is not a member"):
                await leader.remove_member(9)
            with pytest.raises(dengine.InvalidArgument, match="needs a peer_address or a client_address"):
                await leader.update_member(2)
            added = await leader.add_member("127.0.0.1:7200")  # a learner that never starts
            with pytest.raises(dengine.MembershipChangeRefused, match=f"node {added.node_id} has not answered"):
                await leader.promote_member(added.node_id)
            # With one voter of three stopped, removing one more would leave no majority reachable.
            # A slow disk can move leadership between the two that remain; ask whichever leads.
            stopped = next(n for n in (1, 2, 3) if n != leader.config.node_id)
            await cluster.stop(stopped)
            for _attempt in range(5):  # bounded: each round waits for the leader's own view, then asks once
                leader = await cluster.wait_leader()
                core = leader._node.raw.core
                for _ in range(500):  # the leader stops counting it within an election timeout (10 ticks)
                    if stopped not in core.recently_active():
                        break
                    await trio.sleep(0.01)  # no event marks "not heard from": poll the leader's view, bounded
                assert stopped not in core.recently_active()
                other = next(n for n in (1, 2, 3) if n not in (stopped, leader.config.node_id))
                try:
                    with pytest.raises(dengine.MembershipChangeRefused, match="would leave 1 of 2 voters reachable"):
                        await leader.remove_member(other)
                    break
                except dengine.NotLeader:
                    continue
            else:
                raise AssertionError("leadership never settled long enough to ask")


async def test_the_table_survives_a_snapshot_and_a_restart(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(DEADLINE):
        async with open_cluster(tmp_path, 3, raft={"snapshot_threshold": 20}) as cluster:
            leader = await cluster.wait_leader()
            added = await leader.add_member("127.0.0.1:7304", client_address="127.0.0.1:9304")
            for i in range(60):  # past three snapshot thresholds: the membership entries are compacted
                await leader.client.put(b"/s/%d" % i, b"x")
            follower = cluster.followers()[0]
            fid = follower.config.node_id
            await cluster.stop(fid)
            restarted = await cluster.start(fid)
            assert restarted._node.last_snapshot_index > 0 or restarted._node.kv.applied_index > 0
            # Loaded into the store; the bytes stay on disk.
            assert restarted._node.raw.core.snapshot is not None and restarted._node.raw.core.snapshot.data == b""
            with trio.fail_after(10):
                await restarted.client.get(b"/s/59")  # linearizable: caught up
            member = next(m for m in restarted.members() if m.node_id == added.node_id)
            assert (member.peer_address, member.client_address, member.is_learner) == (
                "127.0.0.1:7304", "127.0.0.1:9304", True)


async def test_removing_the_leader_hands_leadership_over_first(tmp_path: pathlib.Path) -> None:
    """On loopback TCP: the removed node also learns of its removal from the
    peers that refuse its connections as removed."""
    with trio.fail_after(DEADLINE):
        async with open_cluster(tmp_path, 3, tcp=True) as cluster:
            leader = await cluster.wait_leader()
            old = leader.config.node_id
            await leader.client.put(b"/k", b"v")
            with pytest.raises(dengine.NotLeader) as info:
                await leader.remove_member(old)
            new = info.value.leader_id
            assert new is not None and new != old and not leader.is_leader()
            assert f"handed leadership to node {new} before its own removal" in str(info.value)
            assert old in [m.node_id for m in leader.members()]  # nothing was removed yet
            # The old leader answers once it has handed over; the successor may
            # still be winning its election then: wait for it to lead.
            successor = await cluster.wait_leader(exclude={old})
            await successor.remove_member(old)
            assert [m.node_id for m in successor.members()] == sorted({1, 2, 3} - {old})
            with trio.fail_after(10):
                await leader.removed_notify().wait()
            with pytest.raises(dengine.MemberRemoved, match=f"node {old} was removed from the cluster"):
                await leader.client.get(b"/k", consistency="eventual")


async def test_remote_clients_change_and_watch_membership(tmp_path: pathlib.Path) -> None:
    """Through a real server: the trio client and the blocking client add,
    update and remove a learner, and both membership watches see it."""
    import attrs

    from dengine.testing import free_ports

    peer, other = free_ports(2)
    cfg = dengine.Config.single_node(str(tmp_path / "d"), client_address="127.0.0.1:0")
    cfg = attrs.evolve(cfg, node=attrs.evolve(cfg.node, peer_address=f"127.0.0.1:{peer}"),
                       raft=attrs.evolve(cfg.raft, tick_interval_ms=10))
    with trio.fail_after(DEADLINE):
        async with dengine.open_server(cfg) as server:
            await server.wait_ready(timeout=10)
            endpoint = server.client_address

            def blocking_side() -> list[dengine.MembershipChange]:
                with dengine.connect([endpoint], timeout=10) as client:
                    with client.watch_members() as changes:
                        added = client.add_member(f"127.0.0.1:{other}", client_address="127.0.0.1:9999")
                        client.update_member(added.node_id, client_address="127.0.0.1:9998")
                        client.remove_member(added.node_id)
                        return [next(changes) for _ in range(3)]

            async with dengine.open_client([endpoint], timeout=10) as client:
                async with client.watch_members() as changes:
                    seen_blocking = await trio.to_thread.run_sync(blocking_side)
                    seen_trio = [await changes.__anext__() for _ in range(3)]
                assert [m.node_id for m in await client.members()] == [1]
            for seen in (seen_blocking, seen_trio):
                assert [(c.kind, c.node_id) for c in seen] == [("added_learner", 2), ("updated", 2), ("removed", 2)]
                assert seen[1].members[1].client_address == "127.0.0.1:9998"


async def test_concurrent_adds_get_distinct_ids(tmp_path: pathlib.Path) -> None:
    """Two joins at once: each add reads the membership only after the other
    applied, so the second does not pick the first one's id (it used to, and
    was refused with 'node 4 is already a learner')."""
    with trio.fail_after(30):
        async with open_cluster(tmp_path, 3) as cluster:
            leader = await cluster.wait_leader()
            added: list[dengine.Member] = []

            async def add(port: int) -> None:
                added.append(await leader.add_member(f"127.0.0.1:{port}"))

            async with trio.open_nursery() as nursery:
                for port in (7301, 7302, 7303):
                    nursery.start_soon(add, port)
            assert sorted(m.node_id for m in added) == [4, 5, 6]
            assert {m.peer_address for m in added} == {"127.0.0.1:7301", "127.0.0.1:7302", "127.0.0.1:7303"}

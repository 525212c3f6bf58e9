"""In-process 3-node clusters, on the memory transport and on loopback TCP."""

from __future__ import annotations

import pathlib
from contextlib import AsyncExitStack

import pytest
import trio
import trio.testing

import dengine
from dengine.api import WatchEventType
from dengine.testing import open_cluster, snapshots_installed, wait_snapshot_past

TRANSPORTS = [pytest.param(False, id="memory"), pytest.param(True, id="tcp")]


@pytest.mark.parametrize("tcp", TRANSPORTS)
async def test_writes_through_leader_reads_everywhere(tmp_path: pathlib.Path, tcp: bool) -> None:
    with trio.fail_after(30):
        async with open_cluster(tmp_path, tcp=tcp) as cluster:
            leader = await cluster.wait_leader()
            rev = await leader.client.put(b"/config/a", b"1")
            for follower in cluster.followers():
                await follower.wait_ready(timeout=10)
                # Linearizable reads on a follower see the write at once.
                assert await follower.client.get(b"/config/a") == b"1"
                scan = await follower.client.scan_prefix(b"/config/")
                assert [tuple(e) for e in scan.entries] == [(b"/config/a", b"1")] and scan.revision >= rev
                with pytest.raises(dengine.NotLeader) as info:
                    await follower.client.put(b"/x", b"y")
                assert info.value.leader_id == leader.status().node_id
                assert info.value.leader_address == cluster.addresses[info.value.leader_id]
                with pytest.raises(dengine.NotLeader):
                    await follower.client.get(b"/config/a", consistency="lease")
            assert await leader.client.get(b"/config/a", consistency="lease") == b"1"


@pytest.mark.parametrize("tcp", TRANSPORTS)
async def test_killing_the_leader_elects_a_new_one(tmp_path: pathlib.Path, tcp: bool) -> None:
    with trio.fail_after(40):
        # 30 ticks of 10 ms: a busy test machine does not move the leader before the kill.
        async with open_cluster(tmp_path, tcp=tcp, raft={"transfer_leadership_on_stop": False,
                                                        "election_ticks": 30}) as cluster:
            leader = await cluster.wait_leader()
            old_id, old_term = leader.status().node_id, leader.current_term()
            for i in range(20):
                await leader.client.put(b"/k/%d" % i, b"%d" % i)
            subs = {nid: e.leader_changed_notify() for nid, e in cluster.engines.items() if nid != old_id}
            await cluster.stop(old_id)
            new = await cluster.wait_leader()
            new_id = new.status().node_id
            assert new_id != old_id and new.current_term() > old_term
            # Every surviving node saw the change, in order: ends on the new leader.
            for nid, sub in subs.items():
                seen = []
                while not seen or seen[-1].leader_id != new_id:
                    seen.append(await sub.receive())
                terms = [s.term for s in seen]
                assert terms == sorted(terms)
                sub.close()
            scan = await new.client.scan_prefix(b"/k/")
            assert len(scan.entries) == 20
            await new.client.put(b"/after", b"kill")
            # The old leader comes back as a follower and catches up.
            back = await cluster.start(old_id)
            await back.wait_ready(timeout=10)
            assert await back.client.get(b"/after") == b"kill"
            assert not back.is_leader()


async def test_graceful_stop_hands_leadership_over(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(30):
        async with open_cluster(tmp_path) as cluster:
            leader = await cluster.wait_leader()
            old_id = leader.status().node_id
            await leader.client.put(b"a", b"1")
            survivor = next(e for nid, e in cluster.engines.items() if nid != old_id)
            with survivor.leader_changed_notify() as changes:
                await cluster.stop(old_id)
                # Handover: a new leader is known without waiting for an election timeout.
                info = await changes.receive()
                while info.leader_id in (None, old_id):
                    info = await changes.receive()
            assert info.leader_id != old_id


async def test_ttl_expiry_identical_on_every_node(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(30):
        async with open_cluster(tmp_path) as cluster:
            leader = await cluster.wait_leader()
            async with AsyncExitStack() as stack:
                watches = {
                    nid: await stack.enter_async_context(engine.client.open_watch(b"/session/", prefix=True))
                    for nid, engine in cluster.engines.items()
                }
                await leader.client.put(b"/session/s1", b"alive", ttl=0.3)
                deleted_at: dict[int, int] = {}
                for nid, watch in watches.items():
                    put = await watch.receive()
                    assert (put.type, put.key) == (WatchEventType.PUT, b"/session/s1")
                    deleted = await watch.receive()
                    assert (deleted.type, deleted.key) == (WatchEventType.DELETE, b"/session/s1")
                    deleted_at[nid] = deleted.revision
                assert len(set(deleted_at.values())) == 1, deleted_at
                # Expired once: the next event every node sees is a later write, not a second DELETE.
                marker = await leader.client.put(b"/session/marker", b"m")
                for watch in watches.values():
                    event = await watch.receive()
                    assert (event.key, event.revision) == (b"/session/marker", marker)
            for engine in cluster.engines.values():
                assert await engine.client.get(b"/session/s1") is None


async def test_follower_restarted_after_compaction_catches_up_by_snapshot(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(40):
        async with open_cluster(tmp_path, raft={"snapshot_threshold": 20}) as cluster:
            leader = await cluster.wait_leader()
            lagging = next(nid for nid in cluster.engines if nid != leader.status().node_id)
            await cluster.stop(lagging)
            for i in range(100):
                for _ in range(20):  # bounded: a leader change on a loaded machine moves the writes along
                    try:
                        await leader.client.put(b"/k/%03d" % i, b"v")
                        break
                    except dengine.NotLeader:  # refused before it was proposed: safe to retry
                        leader = await cluster.wait_leader()
            await wait_snapshot_past(leader, 20)
            # The leader keeps the snapshot's meta only: the bytes are read from disk for a follower.
            assert leader._node.raw.core.snapshot.data == b""
            back = await cluster.start(lagging)
            await back.wait_ready(timeout=10)
            # A linearizable read waits until the follower applied the leader's commit.
            scan = await back.client.scan_prefix(b"/k/")
            assert len(scan.entries) == 100
            # It got there by installing the leader's snapshot: the log it missed was compacted.
            assert snapshots_installed(back) >= 1
            assert back._node.raw.core.snapshot.data == b""  # installed, then only on disk
            # The local read bound before the install reads the installed state.
            assert back.client.get_nowait(b"/k/000") == b"v"


async def test_a_snapshot_many_frames_long_reaches_a_follower_over_tcp(tmp_path: pathlib.Path) -> None:
    # 64 KiB frames and about 400 KB of data: the snapshot crosses the wire in parts.
    raft = {"snapshot_threshold": 50, "max_key_size": 1024, "max_value_size": 8192, "max_append_bytes": 32768}
    with trio.fail_after(60):
        async with open_cluster(tmp_path, tcp=True, raft=raft, transport={"max_frame_size": 65536}) as cluster:
            leader = await cluster.wait_leader()
            lagging = next(nid for nid in cluster.engines if nid != leader.status().node_id)
            await cluster.stop(lagging)
            value = bytes(range(256)) * 8  # 2 KiB
            for i in range(200):
                for _ in range(20):  # bounded: a leader change on a loaded machine moves the writes along
                    try:
                        await leader.client.put(b"/big/%03d" % i, value)
                        break
                    except dengine.NotLeader:  # refused before it was proposed: safe to retry
                        leader = await cluster.wait_leader()
            await wait_snapshot_past(leader, 50)
            back = await cluster.start(lagging)
            await back.wait_ready(timeout=20)
            scan = await back.client.scan_prefix(b"/big/")
            assert len(scan.entries) == 200 and all(v == value for _, v in scan.entries)
            assert snapshots_installed(back) >= 1
            sent = leader._transport.statistics()
            assert sent.dropped_too_large == 0


async def test_cluster_starts_with_a_quorum_of_initial_members(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(30):
        async with open_cluster(tmp_path, n=3) as cluster:
            await cluster.stop(3)  # node 3 never comes back: 2 of 3 is a quorum
            leader = await cluster.wait_leader()
            assert await leader.client.put(b"k", b"v") > 0
            for engine in cluster.engines.values():
                assert await engine.client.get(b"k") == b"v"


async def test_ttl_expiry_survives_a_leader_change(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(30):
        async with open_cluster(tmp_path, raft={"transfer_leadership_on_stop": False}) as cluster:
            leader = await cluster.wait_leader()
            old_id = leader.status().node_id
            async with AsyncExitStack() as stack:
                watches = {
                    nid: await stack.enter_async_context(engine.client.open_watch(b"/lease/x"))
                    for nid, engine in cluster.engines.items()
                    if nid != old_id
                }
                await leader.client.put(b"/lease/x", b"held", ttl=0.5)
                await cluster.stop(old_id)  # the leader that stamped the TTL dies
                new = await cluster.wait_leader()
                assert await new.client.get(b"/lease/x") in (b"held", None)
                for watch in watches.values():
                    event = await watch.receive()
                    if event.type is WatchEventType.PUT:
                        event = await watch.receive()
                    assert event.type is WatchEventType.DELETE  # the new leader proposed the expiry
            for engine in cluster.engines.values():
                assert await engine.client.get(b"/lease/x") is None


async def test_deadlines_without_a_quorum(tmp_path: pathlib.Path) -> None:
    """No quorum: a write times out saying its outcome is unknown, a
    linearizable read times out, an eventual read still answers."""
    with trio.fail_after(30):
        async with open_cluster(tmp_path, raft={"transfer_leadership_on_stop": False}) as cluster:
            leader = await cluster.wait_leader()
            await leader.client.put(b"k", b"v")
            for nid in [n for n in list(cluster.engines) if n != leader.status().node_id]:
                await cluster.stop(nid)
            # The outcome is unknown: the deadline passes, or (sooner) the
            # leader steps down by check-quorum and says so at once. On a
            # loaded machine it may have stepped down before the write: then
            # NotLeader, and nothing was proposed.
            with pytest.raises((dengine.Timeout, dengine.LeaderChanged, dengine.NotLeader)) as info:
                await leader.client.put(b"k", b"w", timeout=0.3)
            if not isinstance(info.value, dengine.NotLeader):
                assert "may or may not have been applied" in str(info.value)
            with pytest.raises((dengine.Timeout, dengine.NotLeader, dengine.Unavailable)):
                await leader.client.get(b"k", timeout=0.3)
            assert await leader.client.get(b"k", consistency="eventual") == b"v"


async def test_a_write_or_lease_read_refused_on_a_follower_is_still_a_checkpoint(tmp_path: pathlib.Path) -> None:
    # A caller retrying a refused write in a loop must let the engines run between tries (trio's rule:
    # every async call is a checkpoint); without it, a node that had just stepped down never got to
    # say so, and the retry loop spun on the stale leader (a flaky test found it).
    with trio.fail_after(30):
        async with open_cluster(tmp_path) as cluster:
            await cluster.wait_leader()
            follower = cluster.followers()[0]
            with trio.testing.assert_checkpoints():
                with pytest.raises(dengine.NotLeader):
                    await follower.client.put(b"k", b"v")
            with trio.testing.assert_checkpoints():
                with pytest.raises(dengine.NotLeader):
                    await follower.client.get(b"k", consistency="lease")
            with trio.testing.assert_checkpoints():
                await cluster.wait_leader()  # even when a leader is there already

"""The remote client against three in-process servers on loopback TCP:
leader discovery and NotLeader hints, failover when the leader's server
stops, watch resume with no gap and no duplicate, auto_resume=False,
watch_leader, status / members, and nothing left open afterwards.

Rules: 127.0.0.1, free ports; every test under an absolute fail_after; we
wait on events (leader changes, acknowledgements), never on sleeps.
"""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import trio

import dengine
from dengine import Config, WatchEventType
from dengine.server import Server
from tests.integration.cluster_helpers import free_ports

DEADLINE = 60


class ServerCluster:
    def __init__(self, nursery: trio.Nursery, tmp: pathlib.Path, n: int) -> None:
        self.nursery = nursery
        self.tmp = tmp
        ports = free_ports(2 * n)
        self.peers = {i: f"127.0.0.1:{ports[i - 1]}" for i in range(1, n + 1)}
        self.clients = {i: f"127.0.0.1:{ports[n + i - 1]}" for i in range(1, n + 1)}
        self.servers: dict[int, Server] = {}
        self.scopes: dict[int, trio.CancelScope] = {}
        self.done: dict[int, trio.Event] = {}

    def config(self, node_id: int) -> Config:
        cfg = Config(node_id=node_id, data_dir=str(self.tmp / f"n{node_id}"), peer_address=self.peers[node_id],
                     client_address=self.clients[node_id], initial_cluster=self.peers, cluster_id="test")
        cfg = attrs.evolve(cfg, cluster=attrs.evolve(cfg.cluster, client_addresses=self.clients))
        # 10 ms ticks, 20-tick elections: three servers in one busy test
        # process must not lose their leader to a 100 ms stall.
        return attrs.evolve(cfg, raft=attrs.evolve(cfg.raft, tick_interval_ms=10, election_ticks=20))

    async def start(self, node_id: int) -> None:
        done = self.done[node_id] = trio.Event()

        async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with trio.CancelScope() as scope:
                self.scopes[node_id] = scope
                try:
                    async with dengine.open_server(self.config(node_id)) as server:
                        self.servers[node_id] = server
                        task_status.started()
                        await trio.sleep_forever()
                finally:
                    self.servers.pop(node_id, None)
                    done.set()

        await self.nursery.start(run)

    async def stop(self, node_id: int) -> None:
        self.scopes[node_id].cancel()
        await self.done[node_id].wait()

    async def leader(self) -> Server:
        while True:
            for server in self.servers.values():
                if server.is_leader() and server.ready_notify().is_set():
                    return server
            any_server = next(iter(self.servers.values()))
            with any_server.leader_changed_notify() as changes:
                with trio.move_on_after(0.05):
                    await changes.receive()
                    await changes.receive()

    def endpoints(self) -> list[str]:
        return [self.clients[i] for i in sorted(self.clients)]


@pytest.fixture
async def cluster(tmp_path: pathlib.Path) -> AsyncIterator[ServerCluster]:
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            c = ServerCluster(nursery, tmp_path, 3)
            for i in (1, 2, 3):
                await c.start(i)
            await c.leader()
            try:
                yield c
            finally:
                nursery.cancel_scope.cancel()


async def test_follows_not_leader_hint_to_the_leader(cluster: ServerCluster) -> None:
    with trio.fail_after(DEADLINE):
        leader = await cluster.leader()
        follower = next(i for i in cluster.servers if i != leader.node_id)
        # Only a follower's endpoint: the hint names the leader's client address.
        async with dengine.open_client([cluster.clients[follower]], cluster_id="test") as client:
            rev = await client.put(b"k", b"v")
            assert rev > 0
            assert await client.get(b"k") == b"v"
            assert await client.get(b"k", consistency="lease") == b"v"
            assert cluster.clients[leader.node_id] in client.endpoints
            members = await client.members()
            assert [(m.node_id, m.client_address) for m in members] == sorted(cluster.clients.items())
            st = await client.status(endpoint=cluster.clients[follower])
            assert st.node_id == follower and st.role == "follower" and st.leader_id == leader.node_id
            assert (await client.leader()).leader_id == leader.node_id


async def test_failover_and_watch_resume_without_gap_or_duplicate(cluster: ServerCluster) -> None:
    with trio.fail_after(DEADLINE):
        leader = await cluster.leader()
        async with dengine.open_client(cluster.endpoints(), cluster_id="test", timeout=10) as client:
            await client.put(b"/w/0", b"0")
            acked: dict[bytes, bytes] = {b"/w/0": b"0"}
            # Open the watch on the leader, so stopping it forces a resume.
            client._leader = cluster.clients[leader.node_id]
            async with client.open_watch(b"/w/", prefix=True, start_revision=1) as watch:
                assert watch.endpoint is not None
                watch_node = next(i for i, a in cluster.clients.items() if a == watch.endpoint)
                for i in range(1, 6):
                    await client.put(b"/w/%d" % i, b"%d" % i)
                    acked[b"/w/%d" % i] = b"%d" % i
                await cluster.stop(watch_node)
                await cluster.leader()
                for i in range(6, 12):
                    try:
                        await client.put(b"/w/%d" % i, b"%d" % i)
                    except (dengine.Unavailable, dengine.Timeout):
                        continue  # outcome unknown: not counted as acknowledged
                    acked[b"/w/%d" % i] = b"%d" % i
                await client.put(b"/w/end", b"end")
                seen: list[tuple[bytes, int]] = []
                async for event in watch:
                    assert event.type == WatchEventType.PUT
                    seen.append((event.key, event.revision))
                    if event.key == b"/w/end":
                        break
                assert watch.resumes >= 1
            revisions = [r for _, r in seen]
            assert revisions == sorted(set(revisions)), "no duplicate, in order"
            keys = {k for k, _ in seen}
            assert set(acked) <= keys, "no gap: every acknowledged write was seen"
            for key, value in acked.items():
                assert await client.get(key) == value


async def test_auto_resume_off_ends_the_watch_with_unavailable(cluster: ServerCluster) -> None:
    with trio.fail_after(DEADLINE):
        async with dengine.open_client(cluster.endpoints(), cluster_id="test", auto_resume=False) as client:
            async with client.open_watch(b"key") as watch:
                node = next(i for i, a in cluster.clients.items() if a == watch.endpoint)
                await cluster.stop(node)
                with pytest.raises(dengine.Unavailable, match="resume with start_revision"):
                    await watch.receive()


async def test_watch_leader_streams_changes(cluster: ServerCluster) -> None:
    with trio.fail_after(DEADLINE):
        leader = await cluster.leader()
        other = next(i for i in cluster.servers if i != leader.node_id)
        async with dengine.open_client([cluster.clients[other]], cluster_id="test") as client:
            async with client.watch_leader() as leaders:
                first = await leaders.__anext__()
                for _ in range(20):  # bounded: a young cluster on a loaded machine may elect again meanwhile
                    leader = await cluster.leader()
                    target = next(i for i in cluster.servers if i != leader.node_id)
                    try:
                        await leader.transfer_leadership(target)
                        break
                    except (dengine.NotLeader, dengine.Timeout):
                        continue
                # The stream shows the change: a later term with a leader (values
                # coalesce, so a leader that lasted an instant may be skipped).
                async for info in leaders:
                    if info.leader_id is not None and info.term > first.term:
                        break
                assert info.leader_id in cluster.servers


async def test_write_to_a_stopped_cluster_times_out_saying_outcome_unknown(cluster: ServerCluster) -> None:
    with trio.fail_after(DEADLINE):
        async with dengine.open_client(cluster.endpoints(), cluster_id="test", timeout=1) as client:
            await client.put(b"a", b"1")
            for i in (1, 2, 3):
                await cluster.stop(i)
            with pytest.raises(dengine.Timeout) as info:
                await client.put(b"b", b"2")
            assert "put did not complete within 1 s" in str(info.value)
            with pytest.raises(dengine.Timeout):
                await client.get(b"a", consistency="eventual")

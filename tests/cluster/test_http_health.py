"""The HTTP face of three real `dengine serve` processes: /health, /livez,
/readyz, /status.json and /metrics on every member; then a member cut off
from its peers (the other two killed) answers /health with 503 and the
reason, as etcd does, while /livez still says it is alive.

Rules: free ports on 127.0.0.1; every process is stopped by its PID in a
finally; every wait is bounded; the whole test runs under an absolute
fail_after. No browser needed (tests/cluster/test_status_page.py has it).
"""

from __future__ import annotations

import json
import pathlib

import trio

from tests.cluster.http_helpers import CLUSTER_ID, HttpCluster, http_get, running_cluster

DEADLINE = 50


async def _health(cluster: HttpCluster, node_id: int) -> tuple[int, dict[str, str]]:
    code, headers, body = await http_get(cluster.http[node_id], "/health")
    assert headers["content-type"] == "application/json"
    return code, json.loads(body)


async def test_every_member_reports_and_a_cut_off_member_is_unhealthy(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(DEADLINE):
        async with running_cluster(tmp_path) as cluster:
            healthy = (200, {"health": "true", "reason": ""})
            await cluster.wait_for_leader()
            with trio.move_on_after(10):  # an election on a busy machine may pass first
                while [await _health(cluster, node) for node in (1, 2, 3)] != [healthy] * 3:
                    await trio.sleep(0.1)
            leader = await cluster.wait_for_leader()
            for node in (1, 2, 3):
                assert await _health(cluster, node) == healthy
                for path in ("/livez", "/readyz"):
                    code, _, body = await http_get(cluster.http[node], path)
                    assert (code, body) == (200, b"ok\n"), (node, path)
                code, headers, body = await http_get(cluster.http[node], "/metrics")
                assert code == 200 and headers["content-type"].startswith("text/plain"), body[:200]
                assert b"dengine_" in body

            doc = await cluster.status(leader)
            assert doc is not None
            assert (doc["node_id"], doc["role"], doc["leader_id"], doc["cluster_id"]) == (
                leader, "leader", leader, CLUSTER_ID)
            assert sorted(m["node_id"] for m in doc["members"]) == [1, 2, 3]
            assert not any(m["is_learner"] for m in doc["members"])
            # The leader's view of each follower: match index and lag.
            assert sorted(f["node_id"] for f in doc["followers"]) == sorted({1, 2, 3} - {leader})
            assert all(f["match_index"] > 0 and f["lag"] >= 0 and f["recently_active"] for f in doc["followers"])
            assert [r["node_id"] for r in doc["cluster"]] == [1, 2, 3]
            assert all(r["reachable"] and r["leader_id"] == leader for r in doc["cluster"])
            assert set(doc["history"]) >= {"writes_per_second", "requests_per_second", "fsync_p99_ms"}

            # Cut the leader off: its two peers die. Within a few election
            # timeouts (0.5 s each here) it must say it is unhealthy.
            for node in sorted(set(cluster.http) - {leader}):
                await cluster.stop(node)
            with trio.move_on_after(10):
                while (health := await _health(cluster, leader))[0] == 200:
                    await trio.sleep(0.05)
            code, body = health
            assert code == 503, body
            assert body["health"] == "false" and body["reason"], body
            print(f"node {leader} cut off: /health 503 {body['reason']!r}")
            code, _, text = await http_get(cluster.http[leader], "/readyz")
            assert code == 503 and text.strip(), text
            code, _, text = await http_get(cluster.http[leader], "/livez")
            assert (code, text) == (200, b"ok\n")
            # Its page marks the others unreachable (answers are shared for 0.5 s).
            with trio.move_on_after(5):
                while True:
                    doc = await cluster.status(leader)
                    assert doc is not None and doc["health"]["health"] == "false"
                    if not any(r["reachable"] for r in doc["cluster"] if not r["self"]):
                        break
                    await trio.sleep(0.1)
            assert [(r["reachable"], r["health"]) for r in doc["cluster"] if not r["self"]] == [
                (False, "unreachable"), (False, "unreachable")], doc["cluster"]

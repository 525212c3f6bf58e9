"""The live cluster page in a real browser: three `dengine serve` processes,
the page of any member loaded in headless Chromium, checked from the
rendered DOM; the leader is killed and the page (left open: its own script
polls status.json) must show the new one within a few seconds.

Rules: Chromium is Debian's `chromium` (the test skips, naming the install
command, when it is missing; .ci/run installs it); it is driven over the
DevTools protocol on a pipe, with the standard library only. Free ports on
127.0.0.1; every process is stopped by its PID in a finally; every wait is
bounded; the whole test runs under an absolute fail_after.

``python -m tests.cluster.test_status_page docs/status-page.png`` saves a
screenshot of the page of a live cluster under a light write load (the one
in the README).
"""

from __future__ import annotations

import pathlib
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pytest
import trio

import dengine
from tests.cluster.http_helpers import CHROMIUM, CLUSTER_ID, INSTALL_CHROMIUM, open_browser, running_cluster

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=INSTALL_CHROMIUM)

DEADLINE = 60
# What the page shows, read from its DOM.
VIEW = """(() => {
  const leader = document.getElementById("leader");
  if (leader === null) return null;  // not loaded yet
  return {
    leader: leader.dataset.leaderId,
    leaderText: leader.textContent,
    servedBy: document.getElementById("served-by").textContent,
    rows: [...document.querySelectorAll("#members tbody tr")].map((tr) => ({
      id: tr.dataset.nodeId, role: tr.dataset.role, health: tr.dataset.health,
    })),
  };
})()"""


def _row(view: dict[str, Any], node_id: int) -> dict[str, str]:
    return next((r for r in view["rows"] if r["id"] == str(node_id)), {})


def _shows(leader: int, members: int = 3) -> Callable[[dict[str, Any] | None], bool]:
    """The page lists ``members`` healthy members and names ``leader`` as the leader."""

    def check(view: dict[str, Any] | None) -> bool:
        return view is not None and len(view["rows"]) == members and view["leader"] == str(leader) and (
            _row(view, leader).get("role") == "leader" and all(r["health"] == "healthy" for r in view["rows"])
        )

    return check


async def test_the_page_shows_the_cluster_and_follows_a_leader_change(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(DEADLINE):
        async with running_cluster(tmp_path) as cluster, open_browser(tmp_path) as browser:
            leader = await cluster.wait_for_leader()
            follower = min(i for i in cluster.http if i != leader)
            # Any member serves the page: the leader's, then a follower's.
            for node in (leader, follower):
                await browser.open(f"http://{cluster.http[node]}/")
                view = await browser.wait_for(VIEW, _shows(leader), timeout=10)
                assert view["leaderText"] == f"node {leader}"
                assert view["servedBy"] == f"node {node}"
                assert sorted(int(r["id"]) for r in view["rows"]) == [1, 2, 3]

            # The follower's page stays open; its script keeps polling.
            started = time.monotonic()
            await cluster.stop(leader)
            view = await browser.wait_for(
                VIEW,
                lambda v: v is not None and v["leader"] not in ("", str(leader))
                and _row(v, leader).get("health") == "unreachable",
                timeout=8,
            )
            new_leader = int(view["leader"])
            assert new_leader in set(cluster.http) - {leader}
            assert _row(view, new_leader)["role"] == "leader"
            print(f"the page showed node {new_leader} as leader {time.monotonic() - started:.1f} s after the kill")


# -- the README's screenshot ------------------------------------------------------------


async def save_screenshot(path: pathlib.Path, seconds: float = 40) -> None:
    """A live 3-node cluster under a light write load, its page captured
    after ``seconds`` (so the charts have a history)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        async with running_cluster(work) as cluster, open_browser(work) as browser:
            leader = await cluster.wait_for_leader()
            async with dengine.open_client(list(cluster.clients.values()), cluster_id=CLUSTER_ID) as client:
                await browser.open(f"http://{cluster.http[leader]}/")  # the clients' requests go there
                deadline = trio.current_time() + seconds
                k = 0
                while trio.current_time() < deadline:
                    burst = 20 + int(15 * (1 + ((k // 40) % 3)))
                    async with trio.open_nursery() as nursery:
                        for j in range(burst // 10):
                            nursery.start_soon(client.put, f"/demo/{k}-{j}".encode(), b"x" * 64)
                    k += 1
                    await trio.sleep(0.1)
                await browser.wait_for(VIEW, _shows(leader), timeout=10)
                await browser.screenshot(path)


if __name__ == "__main__":  # pragma: no cover - a tool, run by hand
    target = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "docs/status-page.png")
    trio.run(save_screenshot, target.resolve())
    print(f"saved {target}")

"""One INFO line per leader change, naming the leader and the term (issue 12,
item 10), and no repeated line while the leader stays the same."""

from __future__ import annotations

import logging
import pathlib

import pytest
import trio

from dengine.testing import open_cluster


async def test_each_node_logs_the_leader_once_per_change(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dengine.node")
    with trio.fail_after(30):
        async with open_cluster(tmp_path, 3, raft={"transfer_leadership_on_stop": False}) as cluster:
            leader = await cluster.wait_leader()
            lid, term = leader.status().node_id, leader.current_term()
            for _ in range(20):
                await leader.client.put(b"k", b"v")
            await cluster.stop(lid)
            new = await cluster.wait_leader()
            nid, new_term = new.status().node_id, new.current_term()
            await new.client.put(b"k", b"w")
    lines = [r.getMessage() for r in caplog.records if r.name == "dengine.node"]
    assert f"node {lid}: became the leader in term {term}" in lines
    for other in {1, 2, 3} - {lid}:
        assert lines.count(f"node {other}: the leader is node {lid} in term {term}") == 1, lines
    assert f"node {nid}: became the leader in term {new_term}" in lines


async def test_votes_are_logged_at_debug_level_only(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    # Elections step by step, for an operator (or a chaos run) that needs to
    # know why one took long: each vote request and answer, both sides.
    caplog.set_level(logging.DEBUG, logger="dengine.node")
    with trio.fail_after(30):
        async with open_cluster(tmp_path, 3) as cluster:
            leader = await cluster.wait_leader()
            lid, term = leader.status().node_id, leader.current_term()
    lines = [r.getMessage() for r in caplog.records if r.name == "dengine.node" and r.levelno == logging.DEBUG]
    asked = [line for line in lines if line.startswith(f"node {lid}: sends vote request to node ")]
    assert any(f"for term {term} " in line for line in asked), lines
    answers = [line for line in lines
               if line.startswith(f"node {lid}: receives vote grant from node ") and line.endswith(f"(term {term})")]
    assert answers, lines
    voter = int(answers[0].split("from node ")[1].split()[0])
    assert f"node {voter}: sends vote grant to node {lid} (term {term})" in lines
    assert f"node {voter}: receives vote request from node {lid} for term {term} " in " ".join(lines) + " "


async def test_votes_are_not_logged_at_info_level(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dengine.node")
    with trio.fail_after(30):
        async with open_cluster(tmp_path, 3) as cluster:
            await cluster.wait_leader()
    votes = [r for r in caplog.records if r.name == "dengine.node" and ("vote request" in r.getMessage()
             or "vote grant" in r.getMessage() or "vote refusal" in r.getMessage())]
    assert not votes

"""examples/leader_election.py: one leader at a time, leadership passes on
resignation and on a lost lease, and a deposed leader writes nothing more
that the storage accepts (cancelled by its session, or refused by fencing).
Each run is bounded by fail_after."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from typing import Any

import pytest
import trio

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "leader_election.py"


def load_example():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("leader_election_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def check_one_leader_at_a_time(result: dict[str, Any], replicas: int) -> None:
    terms = result["terms"]
    tokens = [token for _, token in terms]
    assert sorted(name for name, _ in terms) == [f"replica-{i + 1}" for i in range(replicas)]  # each led once
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens), f"two leaders shared a token: {terms}"
    # The storage saw the leaders one after the other, never interleaved.
    writers = [(w.replica, w.token) for w in result["accepted"]]
    assert [pair for i, pair in enumerate(writers) if i == 0 or writers[i - 1] != pair] == terms
    assert [w.token for w in result["accepted"]] == sorted(w.token for w in result["accepted"])


async def test_leadership_passes_and_a_deposed_leader_writes_nothing_more(tmp_path: pathlib.Path) -> None:
    example = load_example()
    with trio.fail_after(60):
        result = await example.demo(str(tmp_path / "data"), replicas=3, jobs=5)
    check_one_leader_at_a_time(result, 3)
    assert [name for name, _ in result["terms"]] == ["replica-1", "replica-2", "replica-3"]
    by_replica = {name: [w.job for w in result["accepted"] if w.replica == name] for name, _ in result["terms"]}
    assert by_replica["replica-1"] == by_replica["replica-3"] == [0, 1, 2, 3, 4]
    assert by_replica["replica-2"] == [0, 1]  # it lost its lease while it stalled after two jobs
    third = dict(result["terms"])["replica-3"]
    assert all(w.replica == "replica-2" and w.token < third for w in result["refused"])
    assert result["observed"] == [b"replica-1", b"replica-2", b"replica-3"]


def test_replicas_started_at_the_same_moment_elect_one_leader(tmp_path: pathlib.Path) -> None:
    example = load_example()

    async def run() -> dict[str, Any]:
        with trio.fail_after(60):
            result: dict[str, Any] = await example.demo(str(tmp_path / "data"), replicas=3, stagger=0, jobs=3,
                                                        stall_after=None)
            return result

    result = trio.run(run)  # outside pytest-trio, so a failed check is a bare AssertionError
    check_one_leader_at_a_time(result, 3)

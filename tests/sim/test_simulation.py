"""The seeded simulator over many seeds, and proof that its checkers bite.

The default run covers 300 seeds (150 on 3 nodes, 150 on 5 nodes); a longer
sweep is `python -m tests.sim --seeds 5000 --nodes 3` (and 5), or the `slow`
test below.
"""

from __future__ import annotations

import pytest

import dengine.raft.core as core_mod
import dengine.raft.log as log_mod
from tests.sim import __main__ as sim_main
from tests.sim.checkers import Violation
from tests.sim.harness import SimConfig, Simulation

CHUNK = 25


def run_range(nodes: int, start: int, count: int) -> tuple[list[str], int]:
    failures: list[str] = []
    steps = 0
    for seed in range(start, start + count):
        sim = Simulation(seed, SimConfig(nodes=nodes))
        violation = sim.run()
        steps += sim.step_count
        if violation is not None:
            failures.append(
                f"seed={seed} nodes={nodes}: {violation}\n" + "\n".join(sim.trace)
                + f"\nreplay: python -m tests.sim --nodes {nodes} --seed {seed} --trace"
            )
    return failures, steps


@pytest.mark.parametrize("nodes", [3, 5])
@pytest.mark.parametrize("start", range(0, 150, CHUNK))
def test_seeds_hold_every_safety_property(nodes: int, start: int) -> None:
    failures, steps = run_range(nodes, start, CHUNK)
    assert failures == []
    assert steps >= CHUNK * SimConfig().steps


@pytest.mark.slow
@pytest.mark.parametrize("nodes", [3, 5])
def test_seeds_long_sweep(nodes: int) -> None:
    failures, _ = run_range(nodes, 10_000, 2000)
    assert failures == []


def test_simulation_is_deterministic() -> None:
    a = Simulation(7, SimConfig(nodes=5))
    b = Simulation(7, SimConfig(nodes=5))
    assert a.run() is None and b.run() is None
    assert list(a.trace) == list(b.trace)
    assert a.checker.applied == b.checker.applied
    assert a.checker.applied, "the run must commit something"


def test_faults_are_exercised() -> None:
    """A run that never elects twice or never reads would prove nothing."""
    totals = {"terms": 0, "reads": 0, "lease": 0, "snapshots": 0, "commits": 0}
    for seed in range(10):
        sim = Simulation(seed, SimConfig(nodes=3))
        assert sim.run() is None
        totals["terms"] += len(sim.checker.leader_of_term)
        totals["reads"] += sim.checker.reads_released
        totals["lease"] += sim.checker.lease_reads
        totals["commits"] += len(sim.checker.applied)
        totals["snapshots"] += sum(1 for line in sim.trace if "compact" in line)
    assert totals["terms"] > 30
    assert totals["reads"] > 100
    assert totals["lease"] > 10
    assert totals["commits"] > 500
    assert totals["snapshots"] > 0


# --- the checkers catch broken cores ------------------------------------------------


def first_violation(nodes: int, seeds: int) -> Violation | None:
    for seed in range(seeds):
        v = Simulation(seed, SimConfig(nodes=nodes)).run()
        if v is not None:
            return v
    return None


def test_catches_votes_for_stale_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log_mod.RaftLog, "is_up_to_date", lambda self, i, t: True)
    v = first_violation(3, 60)
    assert v is not None


def test_catches_read_index_before_own_term_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core_mod.RaftCore, "committed_in_term", lambda self: True)
    v = first_violation(3, 200)
    assert v is not None and "read" in str(v)


def test_catches_lease_without_quorum(monkeypatch: pytest.MonkeyPatch) -> None:
    def lease_read_index(self: core_mod.RaftCore) -> int | None:
        return self.log.committed if self.role is core_mod.Role.LEADER else None

    monkeypatch.setattr(core_mod.RaftCore, "lease_read_index", lease_read_index)
    v = first_violation(3, 200)
    assert v is not None and "lease" in str(v)


def test_catches_acks_sent_before_persist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core_mod, "needs_durability", lambda m: False)
    v = first_violation(5, 400)
    assert v is not None


def test_cli_prints_summary_and_fails_on_violation(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sim_main.main(["--seeds", "2", "--nodes", "3", "--steps", "200"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("seeds=2 violations=0 steps=")
    monkeypatch.setattr(Simulation, "run", lambda self: Violation("injected"))
    assert sim_main.main(["--seeds", "2", "--nodes", "5", "--steps", "10"]) == 1
    out = capsys.readouterr().out
    assert "VIOLATION seed=0 nodes=5: injected" in out
    assert out.strip().splitlines()[-1].startswith("seeds=2 violations=2 ")

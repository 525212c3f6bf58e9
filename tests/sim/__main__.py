"""python -m tests.sim --seeds N --nodes 3|5 [--start S] [--steps K] [--seed X --trace] [--leases]

Runs N seeded simulations (with ``--leases``: the lease simulation of
tests/sim/leases.py, KV store and lessor on every node) and prints, as its last line,
``seeds=N violations=V steps=S``; exits non-zero when V > 0. A violation
prints its seed and the trace of the steps before it; replay it with
``--seed X --trace``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from tests.sim.harness import SimConfig, Simulation
from tests.sim.leases import LeaseSimConfig, LeaseSimulation


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.sim", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=100, help="how many seeds to run (default 100)")
    p.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--nodes", type=int, default=3, choices=(3, 5), help="cluster size")
    p.add_argument("--steps", type=int, default=SimConfig().steps, help="steps of faults per seed")
    p.add_argument("--seed", type=int, default=None, help="run one seed")
    p.add_argument("--trace", action="store_true", help="print the trace of every run")
    p.add_argument("--leases", action="store_true", help="run the lease simulation (tests/sim/leases.py)")
    args = p.parse_args(argv)
    # Nodes log each peer that sends nonsense once; the simulator sends plenty.
    quiet = logging.getLogger("dengine")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        return _run(args)
    finally:
        quiet.setLevel(level)


def _run(args: argparse.Namespace) -> int:
    seeds = [args.seed] if args.seed is not None else range(args.start, args.start + args.seeds)
    violations = 0
    steps = 0
    t0 = time.monotonic()
    for k, seed in enumerate(seeds):
        if args.leases:
            sim: Simulation = LeaseSimulation(seed, LeaseSimConfig(nodes=args.nodes, steps=args.steps))
        else:
            sim = Simulation(seed, SimConfig(nodes=args.nodes, steps=args.steps))
        violation = sim.run()
        steps += sim.step_count
        if violation is not None:
            violations += 1
            print(f"VIOLATION seed={seed} nodes={args.nodes}: {violation}", flush=True)
            print("\n".join(sim.trace), flush=True)
            leases = "--leases " if args.leases else ""
            print(f"replay: python -m tests.sim {leases}--nodes {args.nodes} --steps {args.steps} --seed {seed} --trace")
        elif args.trace:
            print("\n".join(sim.trace))
        if (k + 1) % 250 == 0:
            print(f"... {k + 1} seeds, {violations} violations, {time.monotonic() - t0:.0f}s", file=sys.stderr, flush=True)
    print(f"seeds={len(seeds)} violations={violations} steps={steps}")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())

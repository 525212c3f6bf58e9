"""Dispatch ``python -m benchmarks <scenario> [args...]``.

To add a scenario: write ``benchmarks/<name>.py`` with ``main(argv) -> int``
and add it to SCENARIOS."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line description); modules are imported only when run.
SCENARIOS: dict[str, tuple[str, str]] = {
    "storage": ("benchmarks.storage", "WAL append throughput vs raw disk, and recovery time"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="dengine benchmarks")
    parser.add_argument("scenario", choices=sorted(SCENARIOS), help="; ".join(f"{k}: {v[1]}" for k, v in SCENARIOS.items()))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="options for the scenario (see <scenario> --help)")
    ns = parser.parse_args(argv)
    module = importlib.import_module(SCENARIOS[ns.scenario][0])
    return int(module.main(ns.args) or 0)


if __name__ == "__main__":
    sys.exit(main())

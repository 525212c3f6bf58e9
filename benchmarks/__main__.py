"""Dispatch ``python -m benchmarks [<scenario>] [args...]``.

Without a scenario name (``python -m benchmarks [--quick] ...``) the whole
suite runs: dengine beside etcd and PySyncObj (benchmarks/suite.py).

To add a scenario: write ``benchmarks/<name>.py`` with ``main(argv) -> int``
and add it to SCENARIOS."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line description); modules are imported only when run.
SCENARIOS: dict[str, tuple[str, str]] = {
    "suite": ("benchmarks.suite", "the whole suite, dengine beside etcd and PySyncObj (the default)"),
    "storage": ("benchmarks.storage", "WAL append throughput vs raw disk, and recovery time"),
    "watch": ("benchmarks.watch", "watch latency, delivered events/s, write overhead of idle watchers"),
    "cli": ("benchmarks.cli_startup", "CLI start-up: `dengine get k` beside `python3 -c pass`"),
    "metrics": ("benchmarks.metrics", "the cost of metrics: write-100 on emb-3, [metrics] enabled on vs off"),
    "critical-path": ("benchmarks.critical_path", "where one write's time goes: each step of a put, 1 or 3 nodes"),
    "profile": ("benchmarks.profile", "py-spy over one suite run: CPU per process and function"),
    "growth": ("benchmarks.growth", "how cost grows with data: memory/key, snapshots, restart, catch-up at N keys"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        from benchmarks.suite import main as suite_main

        return suite_main(argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="dengine benchmarks")
    parser.add_argument("scenario", choices=sorted(SCENARIOS), help="; ".join(f"{k}: {v[1]}" for k, v in SCENARIOS.items()))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="options for the scenario (see <scenario> --help)")
    ns = parser.parse_args(argv)
    module = importlib.import_module(SCENARIOS[ns.scenario][0])
    return int(module.main(ns.args) or 0)


if __name__ == "__main__":
    sys.exit(main())

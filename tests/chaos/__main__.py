"""python -m tests.chaos --seconds S --seed K [--nodes 3|5] [--plant-bug stale-reads]

Starts 3 (or 5) `dengine serve` processes whose every peer link crosses a
fault-injecting proxy, runs clients (put / get / cas / delete, recorded as a
history) and prefix watchers for S seconds of faults chosen from the seed
(partitions, one-way loss, flapping, delay, duplication and reordering,
kill -9 and restart, SIGSTOP/SIGCONT of the leader, killing every node, a TTL
check across a leader change), heals everything, waits until every node
converges, checks the history for linearizability key by key, checks the
watches and looks for lost acknowledged writes.

The last line is ``ops=N unknown=U faults=F anomalies=A lost=L``; the exit
code is 1 when A or L > 0, 3 when the checker gave up on a key, else 0.

``--plant-bug stale-reads`` records local (eventual) reads of any node as if
they were linearizable: the checker must then find anomalies.
"""

from __future__ import annotations

import argparse
import sys

import trio

from tests.chaos.runner import Options, run_chaos


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0, help="seconds of faults (default 60)")
    p.add_argument("--seed", type=int, default=0, help="chooses the faults and the workload (default 0)")
    p.add_argument("--nodes", type=int, default=3, choices=(3, 5), help="cluster size")
    p.add_argument("--plant-bug", choices=("stale-reads",), default=None,
                   help="record eventual reads as linearizable: the checker must find anomalies")
    p.add_argument("--tick-ms", type=float, default=Options.tick_ms,
                   help="DENGINE_RAFT__TICK_INTERVAL_MS of the nodes (default %(default)s)")
    p.add_argument("--clients", type=int, default=Options.clients, help="client tasks (default %(default)s)")
    p.add_argument("--keys", type=int, default=Options.keys, help="keys (default %(default)s)")
    p.add_argument("--op-timeout", type=float, default=Options.op_timeout,
                   help="deadline of each operation in seconds (default %(default)s)")
    p.add_argument("--workdir", default=None, help="data and logs here (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.clients < 1 or args.keys < 1 or args.op_timeout <= 0:
        p.error("--seconds, --clients, --keys and --op-timeout must be positive")
    opts = Options(seconds=args.seconds, seed=args.seed, nodes=args.nodes, plant_bug=args.plant_bug,
                   tick_ms=args.tick_ms, clients=args.clients, keys=args.keys, op_timeout=args.op_timeout,
                   workdir=args.workdir, keep=args.keep)
    res = trio.run(run_chaos, opts, lambda line: print(line, flush=True))
    return res.exit_code


if __name__ == "__main__":
    sys.exit(main())

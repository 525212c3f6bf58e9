"""One dengine engine in its own OS process, driven by the suite over stdin/stdout.

    python -m benchmarks.node_proc --id 1 --dir DIR [--cluster 1=127.0.0.1:7001,2=...] [--metrics on|off]

The process opens an embedded engine (a single node without ``--cluster``),
waits until it is ready and prints one JSON line ``{"event": "ready", ...}``.
Then it reads one JSON command per line on stdin and answers each with one
JSON line on stdout:

* ``{"cmd": "status"}`` -> ``{"leader": bool, "leader_id": ...}``
* ``{"cmd": "run", "scenario": NAME, "seconds": S, "max_ops": N}`` -> the
  scenario's result (only the leader is asked to run: the load is generated
  in the leader's process, as an application embedding dengine would);
  with ``"scrape": T`` the process also renders ``/metrics``
  (dengine.http.metrics.exposition) every T seconds while the load runs,
  and the result says how many scrapes it made and their mean duration
* ``{"cmd": "dict-get", "seconds": S}`` -> a bare dict.get loop, same process
* ``{"cmd": "local-get", "seconds": S}`` -> the same loop over ``client.get_nowait``
* ``{"cmd": "fsync", "seconds": S}`` -> raw write+fsync latency in the data dir
* ``{"cmd": "stop"}`` (or end of stdin) -> the engine is closed and the process exits.

Logs go to stderr. Every command is bounded by its own deadline.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

import attrs
import trio

import dengine
from benchmarks.workload import PREFILL, SCENARIOS, KeyPlan, dict_get_baseline, drive_trio, local_get_loop


class EngineKV:
    """The workload's kv adapter over an EmbeddedClient (no extra awaits)."""

    def __init__(self, client: Any) -> None:
        self.put = client.put
        get = client.get
        self.get = lambda k, level: get(k, consistency=level)


def build_config(args: argparse.Namespace) -> dengine.Config:
    if not args.cluster:
        cfg = dengine.Config.single_node(args.dir)
    else:
        members = dengine.config.parse_members(args.cluster)
        cfg = dengine.Config(
            node_id=args.id,
            data_dir=args.dir,
            peer_address=members[args.id],
            initial_cluster=members,
            cluster_id="dengine-bench",
        )
    if args.tick_ms:
        cfg = attrs.evolve(cfg, raft=attrs.evolve(cfg.raft, tick_interval_ms=float(args.tick_ms)))
    if args.metrics == "off":
        cfg = attrs.evolve(cfg, metrics=attrs.evolve(cfg.metrics, enabled=False))
    return cfg


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def serve(args: argparse.Namespace) -> None:
    cfg = build_config(args)
    async with dengine.open_engine(config=cfg) as engine:
        await engine.wait_ready(timeout=60)
        emit({"event": "ready", "id": cfg.node_id, "leader": engine.is_leader()})
        kv = EngineKV(engine.client)
        plan = KeyPlan()
        while True:
            line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            if not line:
                return
            cmd = json.loads(line)
            what = cmd.get("cmd")
            if what == "stop":
                emit({"event": "stopping"})
                return
            if what == "status":
                emit({"leader": engine.is_leader(), "leader_id": engine.current_leader()})
            elif what == "fsync":
                from benchmarks.suite import fsync_latency

                emit(fsync_latency(args.dir, float(cmd["seconds"])))
            elif what == "dict-get":
                emit(dict_get_baseline(max(plan.written, PREFILL), float(cmd["seconds"])))
            elif what == "local-get":
                emit(local_get_loop(engine.client.get_nowait, max(plan.written, PREFILL), float(cmd["seconds"])))
            elif what == "run":
                emit(await run_scenario(engine, kv, plan, cmd))
            else:
                emit({"error": f"unknown command {what!r}"})


async def run_scenario(engine: Any, kv: EngineKV, plan: KeyPlan, cmd: dict[str, Any]) -> dict[str, Any]:
    scenario = SCENARIOS[cmd["scenario"]]
    if not engine.is_leader():
        return {"scenario": scenario.name, "error": "this node is not the leader"}
    if scenario.kind == "watch":
        return {"scenario": scenario.name, "unsupported": "watch scenarios run through benchmarks/watch.py"}
    if scenario.kind != "write" and plan.written == 0:
        # Reads need keys: write some first (not measured).
        prefill = SCENARIOS["write-100"]
        plan.after(prefill, await drive_trio(plan.make_op(prefill, kv), 100, 30.0, PREFILL))
    op = plan.make_op(scenario, kv)
    every = float(cmd.get("scrape") or 0.0)
    if not every:
        run = await drive_trio(op, scenario.concurrency, float(cmd["seconds"]), int(cmd["max_ops"]))
        plan.after(scenario, run)
        return run.result(scenario, keys=plan.written)
    scrapes: list[float] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(scrape_metrics, engine, every, scrapes)
        run = await drive_trio(op, scenario.concurrency, float(cmd["seconds"]), int(cmd["max_ops"]))
        nursery.cancel_scope.cancel()
    plan.after(scenario, run)
    mean = sum(scrapes) / len(scrapes) if scrapes else 0.0
    return run.result(scenario, keys=plan.written, scrapes=len(scrapes), scrape_ms=mean * 1000)


async def scrape_metrics(engine: Any, every: float, took: list[float]) -> None:
    """Render /metrics every ``every`` seconds, as a Prometheus scrape would."""
    from dengine.http.metrics import exposition

    while True:
        await trio.sleep(every)
        started = time.perf_counter()
        exposition(engine)
        took.append(time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.node_proc")
    parser.add_argument("--id", type=int, default=1)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--cluster", default="", help="id=host:port,... (empty: single node)")
    parser.add_argument("--tick-ms", type=float, default=0.0)
    parser.add_argument("--metrics", choices=("on", "off"), default="on", help="[metrics] enabled")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    trio.run(serve, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

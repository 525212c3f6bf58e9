"""Load generator for a standalone dengine cluster (``dengine serve``), in its
own process: the workload's ops over ``dengine.open_client``, answering the
suite's JSON commands like ``benchmarks/node_proc.py``.

    python -m benchmarks.standalone_load --endpoints H:P,H:P,H:P [--connections N]

``--connections N`` opens N clients (each its own connection to the leader);
callers are spread over them round-robin.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from contextlib import AsyncExitStack
from typing import Any

import trio

from benchmarks.workload import PREFILL, SCENARIOS, KeyPlan, drive_trio


class ClientKV:
    def __init__(self, clients: list[Any]) -> None:
        if len(clients) == 1:
            c = clients[0]
            self.put = c.put
            self.get = lambda k, level: c.get(k, consistency=level)
        else:
            nxt = itertools.cycle(clients).__next__
            self.put = lambda k, v: nxt().put(k, v)
            self.get = lambda k, level: nxt().get(k, consistency=level)


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def serve(args: argparse.Namespace) -> None:
    import dengine

    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(dengine.open_client(args.endpoints, timeout=30))
                   for _ in range(args.connections)]
        with trio.fail_after(60):
            while True:
                try:
                    for c in clients:
                        await c.put(b"bench-hello", b"1")
                    break
                except dengine.DengineError:
                    await trio.sleep(0.1)
        emit({"event": "ready"})
        kv = ClientKV(clients)
        plan = KeyPlan()
        while True:
            line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            if not line:
                return
            cmd = json.loads(line)
            if cmd.get("cmd") == "stop":
                emit({"event": "stopping"})
                return
            if cmd.get("cmd") != "run":
                emit({"error": f"unknown command {cmd.get('cmd')!r}"})
                continue
            scenario = SCENARIOS[cmd["scenario"]]
            if scenario.kind == "watch":
                emit({"scenario": scenario.name, "unsupported": "watch runs embedded (benchmarks/watch.py)"})
                continue
            if scenario.kind != "write" and plan.written == 0:
                pre = SCENARIOS["write-100"]
                plan.after(pre, await drive_trio(plan.make_op(pre, kv), 100, 30.0, PREFILL))
            run = await drive_trio(plan.make_op(scenario, kv), scenario.concurrency,
                                   float(cmd["seconds"]), int(cmd["max_ops"]))
            plan.after(scenario, run)
            emit(run.result(scenario, keys=plan.written, connections=args.connections))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.standalone_load")
    parser.add_argument("--endpoints", required=True)
    parser.add_argument("--connections", type=int, default=1)
    trio.run(serve, parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())

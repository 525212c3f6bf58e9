"""Load generator for etcd, in its own process: the workload's ops over the
``aetcd`` asyncio gRPC client (etcd's v3 API), answering the suite's JSON
commands on stdin/stdout like ``benchmarks/node_proc.py``.

    python -m benchmarks.peers.etcd_load --endpoint 127.0.0.1:2379 [--connections N]

Linearizable reads are etcd's default gets (ReadIndex on the leader);
eventual reads are ``serializable=True`` gets (the local member's state).
etcd offers clients no lease read, so ``read-lease`` answers "unsupported".
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
from typing import Any

from benchmarks.workload import PREFILL, SCENARIOS, KeyPlan, drive_asyncio


class EtcdKV:
    def __init__(self, clients: list[Any]) -> None:
        self._next = itertools.cycle(clients).__next__

    async def put(self, k: bytes, v: bytes) -> None:
        await self._next().put(k, v)

    async def get(self, k: bytes, level: str) -> bytes | None:
        r = await self._next().get(k, serializable=level == "eventual")
        return None if r is None else r.value


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def serve(args: argparse.Namespace) -> None:
    import aetcd

    host, port = args.endpoint.rsplit(":", 1)
    # A local subchannel pool per client: N clients really are N connections.
    clients = [
        aetcd.Client(host=host, port=int(port), timeout=30, options={"grpc.use_local_subchannel_pool": 1})
        for _ in range(args.connections)
    ]
    try:
        for c in clients:
            await c.connect()
        await clients[0].put(b"bench-hello", b"1")
        emit({"event": "ready"})
        kv = EtcdKV(clients)
        plan = KeyPlan()
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
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
            if scenario.kind == "watch" or scenario.level == "lease":
                emit({"scenario": scenario.name, "unsupported": "etcd offers clients no lease read"
                      if scenario.level == "lease" else "not measured for etcd"})
                continue
            if scenario.kind != "write" and plan.written == 0:
                pre = SCENARIOS["write-100"]
                plan.after(pre, await drive_asyncio(plan.make_op(pre, kv), 100, 30.0, PREFILL))
            run = await drive_asyncio(plan.make_op(scenario, kv), scenario.concurrency,
                                      float(cmd["seconds"]), int(cmd["max_ops"]))
            plan.after(scenario, run)
            emit(run.result(scenario, keys=plan.written, connections=args.connections))
    finally:
        for c in clients:
            await c.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers.etcd_load")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--connections", type=int, default=1)
    asyncio.run(serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One PySyncObj node (a replicated dict) in its own OS process, answering the
suite's JSON commands like ``benchmarks/node_proc.py``; the leader runs the load.

    python -m benchmarks.peers.syncobj_node --self 127.0.0.1:P1 --partners 127.0.0.1:P2,127.0.0.1:P3 \
        [--journal DIR]

With ``--journal`` the dict uses PySyncObj's journal file (an mmap'd file:
PySyncObj never fsyncs it while running) and its full-dump file; without it,
its in-memory journal. Writes are PySyncObj's sync writes: a single caller
uses ``set(..., sync=True)``; N concurrent callers each keep one write in
flight through ``set(..., callback=...)``, which resolves at the same point
(committed and applied), without N threads. Reads are PySyncObj's only kind,
a local ``get`` (not linearizable): they run as ``read-eventual``; the
linearizable, lease and hot-key read scenarios answer "unsupported".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

from benchmarks.histogram import Histogram
from benchmarks.workload import PREFILL, SCENARIOS, VALUE, Run, Scenario, key


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Driver:
    def __init__(self, d: Any) -> None:
        self.d = d
        self.written = 0

    def run(self, scenario: Scenario, seconds: float, max_ops: int) -> Run:
        if scenario.kind == "read":
            return self._local_reads(seconds, max_ops)
        if scenario.kind == "write" and scenario.concurrency == 1:
            return self._sync_writes(seconds, max_ops)
        return self._callbacks(scenario, seconds, max_ops)

    def _sync_writes(self, seconds: float, max_ops: int) -> Run:
        from pysyncobj import SyncObjException

        run = Run(Histogram())
        clock = time.perf_counter
        start = clock()
        base = self.written
        while run.ops < max_ops and clock() - start < seconds:
            t0 = clock()
            i = run.ops
            run.ops += 1
            try:
                self.d.set(key(base + i), VALUE, sync=True, timeout=30)
            except SyncObjException as exc:
                run.error(exc)
            else:
                run.hist.record_ns(int((clock() - t0) * 1e9))
        run.elapsed = clock() - start
        self.written += run.ops - run.errors
        return run

    def _local_reads(self, seconds: float, max_ops: int) -> Run:
        run = Run(Histogram())
        clock = time.perf_counter
        n = max(self.written, 1)
        get = self.d.get
        start = clock()
        while run.ops < max_ops:
            t0 = clock()
            if t0 - start >= seconds:
                break
            i = run.ops
            run.ops += 1
            if get(key(i % n)) is None:
                run.error(LookupError(f"key {key(i % n)!r} was written but read as absent"))
            else:
                run.hist.record_ns(int((clock() - t0) * 1e9))
        run.elapsed = clock() - start
        return run

    def _callbacks(self, scenario: Scenario, seconds: float, max_ops: int) -> Run:
        """``concurrency`` callers, each with one op in flight; callbacks run
        on PySyncObj's own thread and issue the caller's next op."""
        from pysyncobj import FAIL_REASON

        run = Run(Histogram())
        clock = time.perf_counter
        lock = threading.RLock()
        done = threading.Event()
        active = scenario.concurrency
        base = self.written
        n = max(self.written, 1)
        write_all = scenario.kind == "write"
        start = clock()
        deadline = start + seconds

        def finish_caller() -> None:
            nonlocal active
            active -= 1
            if active == 0:
                done.set()

        def issue() -> None:
            # Called with the lock held: start this caller's next write (local
            # reads of a mixed run are done inline until the next write).
            while True:
                if run.ops >= max_ops or clock() >= deadline:
                    finish_caller()
                    return
                i = run.ops
                run.ops += 1
                if write_all:
                    k = key(base + i)
                elif i % 10 == 9:
                    k = key(i % n)
                else:
                    t0 = clock()
                    if self.d.get(key(i % n)) is None:
                        run.error(LookupError("written key read as absent"))
                    else:
                        run.hist.record_ns(int((clock() - t0) * 1e9))
                    continue
                t0 = clock()

                def cb(result: Any, err: Any, t0: float = t0) -> None:
                    with lock:
                        if err == FAIL_REASON.SUCCESS:
                            run.hist.record_ns(int((clock() - t0) * 1e9))
                        else:
                            run.error(RuntimeError(f"PySyncObj write failed: reason {err}"))
                        issue()

                self.d.set(k, VALUE, callback=cb)
                return

        with lock:
            for _ in range(scenario.concurrency):
                issue()
        done.wait(seconds + 60)
        with lock:
            run.elapsed = clock() - start
            if not done.is_set():
                run.error(TimeoutError(f"{active} callers still waiting for callbacks"))
        if write_all:
            self.written += run.ops - run.errors
        return run


def main(argv: list[str] | None = None) -> int:
    from pysyncobj import SyncObj, SyncObjConf
    from pysyncobj.batteries import ReplDict

    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers.syncobj_node")
    parser.add_argument("--self", required=True)
    parser.add_argument("--partners", required=True)
    parser.add_argument("--journal", default="")
    parser.add_argument("--append-period", type=float, default=0.0)
    args = parser.parse_args(argv)
    conf = SyncObjConf(dynamicMembershipChange=False)
    if args.append_period:
        # Its timings must keep raftMinTimeout > 3 x appendEntriesPeriod.
        conf.appendEntriesPeriod = args.append_period
        conf.autoTickPeriod = min(conf.autoTickPeriod, args.append_period)
        conf.raftMinTimeout = max(conf.raftMinTimeout, 4 * args.append_period)
        conf.raftMaxTimeout = max(conf.raftMaxTimeout, 2 * conf.raftMinTimeout)
        conf.leaderFallbackTimeout = max(conf.leaderFallbackTimeout, 2 * args.append_period)
    if args.journal:
        os.makedirs(args.journal, exist_ok=True)
        conf.journalFile = os.path.join(args.journal, "journal.bin")
        conf.fullDumpFile = os.path.join(args.journal, "dump.bin")
    d = ReplDict()
    obj = SyncObj(args.self, args.partners.split(","), consumers=[d], conf=conf)
    try:
        deadline = time.monotonic() + 60
        while not (obj.isReady() and obj._getLeader() is not None) and time.monotonic() < deadline:
            time.sleep(0.05)
        emit({"event": "ready", "leader": obj._isLeader()})
        driver = Driver(d)
        for line in sys.stdin:
            cmd = json.loads(line)
            what = cmd.get("cmd")
            if what == "stop":
                emit({"event": "stopping"})
                break
            if what == "status":
                emit({"leader": obj._isLeader()})
                continue
            if what != "run":
                emit({"error": f"unknown command {what!r}"})
                continue
            scenario = SCENARIOS[cmd["scenario"]]
            if scenario.kind in ("hot", "watch") or (scenario.kind == "read" and scenario.level != "eventual"):
                emit({"scenario": scenario.name, "unsupported": "PySyncObj has only local (non-linearizable) reads"
                      if scenario.kind != "watch" else "not measured for PySyncObj"})
                continue
            if scenario.kind != "write" and driver.written == 0:
                driver.run(SCENARIOS["write-100"], 30.0, PREFILL)
            run = driver.run(scenario, float(cmd["seconds"]), int(cmd["max_ops"]))
            extra: dict[str, Any] = {"keys": driver.written}
            if scenario.kind == "mixed":
                extra["note"] = "reads are local gets (PySyncObj has no linearizable read)"
            emit(run.result(scenario, **extra))
    finally:
        obj.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())

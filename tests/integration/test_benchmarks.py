"""The benchmark suite: its histogram against a sorted-list oracle, and a
``--quick`` run of one scenario (embedded single node, no peers) that must
produce a report. No speed is asserted here."""

from __future__ import annotations

import json
import math
import pathlib
import random
import shutil
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.histogram import Histogram
from benchmarks.profile import parse, role, summary
from benchmarks.report import parse_watch_output

ROOT = pathlib.Path(__file__).resolve().parents[2]


def exact_percentile(values: list[int], p: float) -> int:
    ordered = sorted(values)
    rank = max(1, math.ceil(len(ordered) * p / 100))
    return ordered[rank - 1]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10**11), min_size=1, max_size=300),
       st.sampled_from([0, 1, 50, 90, 99, 99.9, 100]))
def test_percentile_within_relative_error_of_the_exact_one(values: list[int], p: float) -> None:
    h = Histogram(precision_bits=7)
    for v in values:
        h.record_ns(v)
    exact = exact_percentile(values, p)
    got = h.percentile(p) * 1e9
    assert abs(got - exact) <= max(1.0, exact / 128), (got, exact)
    assert min(values) <= round(got) <= max(values)


def test_mean_count_min_max_are_exact_and_merge_adds() -> None:
    rng = random.Random(7)
    a, b, whole = Histogram(), Histogram(), Histogram()
    values = [rng.randrange(1, 10**9) for _ in range(5000)]
    for i, v in enumerate(values):
        (a if i % 2 else b).record_ns(v)
        whole.record_ns(v)
    a.merge(b)
    assert a.count == whole.count == 5000
    assert a.mean() == whole.mean() == pytest.approx(sum(values) / 5000 / 1e9)
    assert (a.min_ns, a.max_ns) == (min(values), max(values))
    assert a.counts == whole.counts
    for p in (50, 99, 99.9):
        assert a.percentile(p) == whole.percentile(p)


def test_round_trips_through_a_dict_and_rejects_mixed_precision() -> None:
    h = Histogram()
    for v in (0, 5, 127, 128, 129, 10**6, 3 * 10**9):
        h.record(v / 1e9)
    again = Histogram.from_dict(json.loads(json.dumps(h.to_dict())))
    assert again.counts == h.counts and again.summary() == h.summary()
    with pytest.raises(ValueError):
        h.merge(Histogram(precision_bits=4))
    assert Histogram().percentile(99) == 0.0 and Histogram().mean() == 0.0


def test_buckets_are_monotonic_and_cover_their_values() -> None:
    h = Histogram(precision_bits=3)
    last = -1
    for ns in list(range(0, 5000)) + [2**40 + 12345]:
        b = h._bucket(ns)
        low, high = h._bounds(b)
        assert low <= ns < high
        assert b >= last
        last = b


def test_watch_output_tables_are_read_back() -> None:
    text = """machine: 2 CPUs
latency, apply -> watcher receipt (one write at a time)
  watchers    p50 µs    p99 µs
         1        60        90
       100       400       900

delivered events/s (32 concurrent writers, prefix watches, one reader task each)
  watchers    events   deliveries/s  canceled
         1    19,968         50,000         0
    10,000       192      1,234,567         0
"""
    parsed = parse_watch_output(text)
    assert parsed["latency"] == [[1, 60, 90], [100, 400, 900]]
    assert parsed["fanout"][1] == [10000, 192, 1234567, 0]


def test_quick_run_of_one_scenario_writes_a_report(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--no-peers", "--systems", "dengine-embedded-1",
         "--scenarios", "write-100", "--seconds", "0.3", "--dir", str(tmp_path), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dengine-embedded-1: write-100" in proc.stderr  # progress lines
    report = (out / "suite-quick.md").read_text()
    assert "### write-100" in report and "| dengine-embedded-1 |" in report
    assert "fsync on the data disk" in report and "Command: `python -m benchmarks --quick" in report
    data = json.loads((out / "suite-quick.json").read_text())
    res = data["systems"]["dengine-embedded-1"]["results"]["write-100"]
    assert res["ops"] > 0 and res["errors"] == 0 and res["throughput"] > 0
    assert Histogram.from_dict(res["histogram"]).count == res["ops"]
    assert data["machine"]["cpus"] >= 1 and data["machine"]["fsync"]["p50_ms"] > 0
    assert not list(tmp_path.glob("dengine-suite-*"))  # its data directories are gone


@pytest.mark.slow  # ~30 s: one node, restarts, a 3-node cluster and a joining member
def test_growth_quick_run_reports_memory_and_restart_figures(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "growth", "--quick", "--keys", "2000", "--seconds", "0.3",
         "--snapshot-threshold", "1000", "--dir", str(tmp_path), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 node: loading 2,000 keys" in proc.stderr  # progress lines
    report = (out / "growth-quick.md").read_text()
    assert "Command: `python -m benchmarks growth --quick --keys 2000" in report

    def row(label: str, columns: int) -> list[float]:
        """The first ``columns`` figures of the table row starting with ``label``."""
        line = next(x for x in report.splitlines() if x.startswith(f"| {label}"))
        cells = line.strip("|").split("|")[1 : 1 + columns]
        return [float(c.strip().rstrip("x").replace(",", "")) for c in cells]

    for label in ("bare dict", "1-node engine, just loaded", "1-node engine restarted from the snapshot"):
        _, _, per_key, ratio = row(label, 4)  # RSS before, after (MB), bytes / key, / bare dict
        assert per_key > 0 and ratio > 0
    for label in ("whole load as WAL tail", "snapshot + short WAL tail"):
        _, ready_s, served_s, process_s = row(label, 4)  # entries replayed, seconds...
        assert 0 < ready_s <= served_s < process_s
    data = json.loads((out / "growth-quick.json").read_text())
    assert data["keys"] == 2000 and data["restart_snapshot"]["keys"] == 2000 and not data["errors"]
    assert data["cluster"]["catch_up"]["installed"] >= 1  # the new member caught up by snapshot
    for run in ("write_plain", "write_snapshot", "write_install"):
        assert data["cluster"][run]["ops"] > 0 and data["cluster"][run]["errors"] == 0
    assert not list(tmp_path.glob("dengine-growth-*"))  # its data directories are gone


def test_critical_path_places_every_step_of_a_put_on_three_processes(tmp_path: pathlib.Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "critical-path", "--nodes", "3", "--writes", "40", "--json",
         "--dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["puts"] == 40 and result["unplaced"] < 40
    steps = result["steps"]
    assert [(s["side"], s["step"]) for s in steps][:4] == [
        ("L", "put>"), ("L", "poll>"), ("L", "send>"), ("F", "recv AppendEntries")]
    offsets = [s["at_us"] for s in steps]
    assert offsets[0] == 0 and offsets == sorted(offsets) and offsets[-1] > 0
    # the steps' gaps add up to the put's whole time
    assert abs(sum(s["gap_us"] for s in steps) - offsets[-1]) < offsets[-1]
    assert not list(tmp_path.iterdir())  # its work directory is gone


RAW_PROFILE = """\
process 10:"";thread (10): MainThread;main (/w/benchmarks/suite.py:5);fsync_latency (/w/benchmarks/suite.py:9) 30
process 10:"";process 20:"python -m benchmarks.node_proc";thread (20): MainThread;<module> (/w/benchmarks/node_proc.py:1);run (/usr/lib/python3.11/site-packages/trio/_core/_run.py:2);op (/w/benchmarks/workload.py:3);EmbeddedClient.put (/w/dengine/embedded.py:40) 70
process 10:"";process 20:"python -m benchmarks.node_proc";thread (20): MainThread;<module> (/w/benchmarks/node_proc.py:1);run (/usr/lib/python3.11/site-packages/trio/_core/_run.py:2);Node.receiver (/w/dengine/runtime/node.py:7);KVStore.apply (/w/dengine/kv/store.py:8) 20
process 10:"";process 20:"python -m benchmarks.node_proc";thread (21): dengine WAL writer;WorkerThread._serve (/w/dengine/runtime/worker.py:9);fsync_file (/w/dengine/storage/osutil.py:3) 10
process 10:"";process 20:"python -m benchmarks.node_proc";thread (20): MainThread;_find_and_load (<frozen importlib._bootstrap>:1176);<module> (/w/dengine/api.py:1) 500
process 10:"";process 30:"dengine serve";thread (30): MainThread;main (/w/dengine/cli.py:1);_Connection._serve (/w/dengine/server/service.py:2) 4
"""


def test_profile_summary_splits_cpu_by_process_thread_and_function(tmp_path: pathlib.Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(RAW_PROFILE)
    procs = parse(str(raw))
    assert set(procs) == {"10", "20", "30"}  # the innermost process of each chain
    node = procs["20"]
    assert node["samples"] == 100  # import-time stacks are left out
    assert node["threads"] == {"MainThread": 90, "dengine WAL writer": 10}
    assert role(node) == "embedded engine running the load"
    assert role(procs["10"]) == "suite orchestrator" and role(procs["30"]) == "dengine serve, serving the clients"
    assert node["incl"]["run (trio/_core/_run.py)"] == 90  # paths shortened, line numbers dropped
    assert node["self"]["EmbeddedClient.put (dengine/embedded.py)"] == 70
    text = summary(procs, 100, 5, "title")
    assert "## pid 20: embedded engine running the load — 1.00 CPU s" in text
    assert "MainThread 0.90, dengine WAL writer 0.10" in text
    # a frame on >= 80 % of the stacks is left out of the inclusive column, not out of self
    assert "| `<module> (benchmarks/node_proc.py)` |" not in text
    assert "| `op (benchmarks/workload.py)` | 0.70 | 70% |" in text
    assert "pid 30" not in text  # under 50 ms of CPU: not a participant


@pytest.mark.skipif(shutil.which("py-spy") is None, reason="needs py-spy: pip install py-spy")
def test_profile_of_one_scenario_names_the_engine_process(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "profiles"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "profile", "--systems", "dengine-embedded-1", "--scenarios",
         "write-100", "--seconds", "1", "--top", "200", "--dir", str(tmp_path), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (out / "profile-dengine-embedded-1-write-100.md").read_text()
    assert "embedded engine running the load" in text and "EmbeddedClient.put (dengine/embedded.py)" in text
    assert "| dengine-embedded-1 |" in text  # the suite's own figures for the run
    assert (out / "profile-dengine-embedded-1-write-100.txt.gz").stat().st_size > 0
    assert not list(tmp_path.glob("dengine-profile-*"))  # its work directory is gone


def test_profile_rejects_bad_options() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "profile", "--systems", "x", "--scenarios", "y",
                           "--seconds", "0"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--seconds, --rate and --top must be positive" in proc.stderr


def test_a_child_reply_read_with_the_line_before_it_is_not_missed(tmp_path: pathlib.Path) -> None:
    # Both lines reach the parent in one read: the reply must come from what was read, not wait for
    # more data in the pipe (the growth run once waited for its 1,120 s timeout that way).
    from benchmarks.procs import Child

    script = "import sys, time; sys.stdout.write('progress\\n{\"answer\": 42}\\n'); sys.stdout.flush(); time.sleep(60)"
    child = Child([sys.executable, "-c", script], str(tmp_path / "child.log"))
    try:
        assert child.recv(20) == {"answer": 42}
    finally:
        child.stop(1)

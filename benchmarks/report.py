"""Reports of the suite: a Markdown page, the JSON results, a PNG chart."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from benchmarks.workload import SCENARIOS

DENGINE_3 = ("dengine-embedded-3", "dengine-standalone-3")
PEERS_3 = ("etcd-3", "pysyncobj-journal-3", "pysyncobj-memory-3")


def one_line(res: dict[str, Any]) -> str:
    if "unsupported" in res:
        return f"unsupported ({res['unsupported']})"
    if "error" in res:
        return f"error: {res['error']}"
    return (f"{res['throughput']:>11,.0f} ops/s  p50 {res['p50_ms']:.3f} ms  p99 {res['p99_ms']:.3f} ms  "
            f"errors {res['errors']}")


def _result(data: dict[str, Any], system: str, scenario: str) -> dict[str, Any] | None:
    res = data["systems"].get(system, {}).get("results", {}).get(scenario)
    if res is None or "throughput" not in res:
        return None
    return res  # type: ignore[no-any-return]


def ratio(data: dict[str, Any], a: str, b: str, scenario: str) -> float | None:
    ra, rb = _result(data, a, scenario), _result(data, b, scenario)
    if ra is None or rb is None or rb["throughput"] <= 0 or ra["errors"] or rb["errors"]:
        return None
    return ra["throughput"] / rb["throughput"]  # type: ignore[no-any-return]


def fsync_p50(data: dict[str, Any]) -> float | None:
    """Raw write+fsync p50 (ms): the mean of the probes taken right before and
    after embedded write-1, else the machine-facts probe."""
    adj = data["systems"].get("dengine-embedded-1", {}).get("fsync_adjacent")
    if adj:
        return sum(f["p50_ms"] for f in adj) / len(adj)  # type: ignore[no-any-return]
    fs = data.get("machine", {}).get("fsync")
    return fs["p50_ms"] if fs and fs["p50_ms"] > 0 else None


def goals(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals, each with what this run measured."""
    out: list[dict[str, Any]] = []

    def add(text: str, value: float | None, target: float, unit: str = "x", le: bool = False) -> None:
        met = None if value is None else (value <= target if le else value >= target)
        out.append({"goal": text, "value": value, "target": target, "unit": unit, "le": le, "met": met})

    for sc in ("write-100", "write-1000"):
        add(f"{sc}, 3 nodes: standalone / etcd", ratio(data, "dengine-standalone-3", "etcd-3", sc), 1.5)
        add(f"{sc}, 3 nodes: standalone / PySyncObj (journal)",
            ratio(data, "dengine-standalone-3", "pysyncobj-journal-3", sc), 3)
        add(f"{sc}, 3 nodes: embedded / etcd", ratio(data, "dengine-embedded-3", "etcd-3", sc), 2)
        add(f"{sc}, 3 nodes: embedded / PySyncObj (journal)",
            ratio(data, "dengine-embedded-3", "pysyncobj-journal-3", sc), 5)
    add("read-linearizable, 3 nodes: standalone / etcd",
        ratio(data, "dengine-standalone-3", "etcd-3", "read-linearizable"), 1.5)
    add("read-linearizable, 3 nodes: embedded / etcd",
        ratio(data, "dengine-embedded-3", "etcd-3", "read-linearizable"), 3)
    ev = _result(data, "dengine-embedded-1", "read-eventual")
    dg = data["systems"].get("dengine-embedded-1", {}).get("dict_get")
    lg = data["systems"].get("dengine-embedded-1", {}).get("local_get")
    add("read-eventual (client.get_nowait in the dict.get loop), embedded 1 node / bare dict.get loop",
        lg["throughput"] / dg["throughput"] if lg and dg else None, 0.25, "%")
    add("read-eventual (awaited get through the load driver), embedded 1 node / bare dict.get loop",
        ev["throughput"] / dg["throughput"] if ev and dg else None, 0.25, "%")
    w1 = _result(data, "dengine-embedded-1", "write-1")
    fs_p50 = fsync_p50(data)
    add("write-1, embedded 1 node: p50 / raw write+fsync p50",
        w1["p50_ms"] / fs_p50 if w1 and fs_p50 else None, 2, "x", le=True)
    return out


def _fmt_ratio(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}x"


def _fmt_goal(g: dict[str, Any]) -> tuple[str, str, str]:
    if g["unit"] == "%":
        value = "—" if g["value"] is None else f"{g['value']:.1%}"
        target = f"≥ {g['target']:.0%}"
    else:
        value = _fmt_ratio(g["value"])
        target = f"{'≤' if g['le'] else '≥'} {g['target']:g}x"
    met = "n/a (not measured)" if g["met"] is None else ("**met**" if g["met"] else "NOT met")
    return value, target, met


def _adjacent_fsync(data: dict[str, Any]) -> str:
    adj = data["systems"].get("dengine-embedded-1", {}).get("fsync_adjacent")
    if not adj:
        return ""
    return "; right before / after embedded write-1: p50 " + " / ".join(f"{f['p50_ms']:.3f}" for f in adj) + " ms"


def markdown(data: dict[str, Any]) -> str:
    m = data.get("machine", {})
    fs = m.get("fsync", {})
    lines = [
        "# dengine benchmark suite" + (" (quick smoke run)" if data.get("quick") else ""),
        "",
        f"Command: `{data['command']}`  ",
        f"Started: {data.get('started', '?')}; wall time {data.get('wall_seconds', 0):.0f} s; "
        f"{data.get('seconds_per_scenario', 0):g} s per scenario.",
        "",
        "## Machine",
        "",
        f"* CPUs: {m.get('cpus')}; Python {m.get('python')} ({m.get('implementation')}); {m.get('platform')}",
        f"* data disk: {m.get('filesystem', '?')} ({m.get('data_dir', '?')})",
        f"* raw write (256 B) + fsync on the data disk: p50 {fs.get('p50_ms', 0):.3f} ms, "
        f"p99 {fs.get('p99_ms', 0):.3f} ms, avg {fs.get('avg_ms', 0):.3f} ms "
        f"({fs.get('throughput', 0):,.0f} ops/s) at the start of the run"
        + _adjacent_fsync(data),
        "",
        "Key 8 bytes, value 256 bytes, sequential keys; reads re-read the keys the write runs wrote. "
        "Closed loop: each caller issues its next operation when the previous one returns. "
        "Latencies in milliseconds (log-bucketed histogram, < 1 % error). "
        "Errors are failed operations (and reads that found a written key absent), counted, never skipped.",
        "",
    ]
    systems = list(data["systems"])
    lines += ["## Results", ""]
    for sc in SCENARIOS:
        rows = [(s, data["systems"][s].get("results", {}).get(sc)) for s in systems]
        rows = [(s, r) for s, r in rows if r is not None]
        if not rows:
            continue
        lines += [f"### {sc} — {SCENARIOS[sc].doc}", "",
                  "| system | ops/s | avg | p50 | p99 | p99.9 | errors |", "|---|---:|---:|---:|---:|---:|---:|"]
        for s, r in rows:
            if "throughput" not in r:
                lines.append(f"| {s} | {r.get('unsupported') or r.get('error')} | | | | | |")
                continue
            note = f" ({r['note']})" if r.get("note") else ""
            lines.append(
                f"| {s}{note} | {r['throughput']:,.0f} | {r['avg_ms']:.3f} | {r['p50_ms']:.3f} | "
                f"{r['p99_ms']:.3f} | {r['p999_ms']:.3f} | {r['errors']:,} of {r['ops']:,} |"
            )
        lines.append("")
    dg = data["systems"].get("dengine-embedded-1", {}).get("dict_get")
    if dg:
        lines += [f"Bare `dict.get` loop over the same keys, same process: {dg['throughput']:,.0f} ops/s.", ""]
    lg = data["systems"].get("dengine-embedded-1", {}).get("local_get")
    if lg:
        lines += [f"The same loop over `client.get_nowait` (local eventual read): {lg['throughput']:,.0f} ops/s"
                  f" ({lg.get('errors', 0):,} misses).", ""]

    # Ratios: every dengine 3-node system over every 3-node peer.
    pairs = [(a, b) for a in DENGINE_3 if a in data["systems"] for b in PEERS_3 if b in data["systems"]]
    if pairs:
        lines += ["## Ratios (throughput, dengine / peer; — where a side is missing, unsupported or had errors)", "",
                  "| scenario | " + " | ".join(f"{a.removeprefix('dengine-')} / {b}" for a, b in pairs) + " |",
                  "|---|" + "---:|" * len(pairs)]
        for sc in SCENARIOS:
            vals = [ratio(data, a, b, sc) for a, b in pairs]
            if any(v is not None for v in vals):
                lines.append(f"| {sc} | " + " | ".join(_fmt_ratio(v) for v in vals) + " |")
        lines.append("")

    lines += ["## Goals", "", "| goal | measured | target | |", "|---|---:|---:|---|"]
    for g in goals(data):
        value, target, met = _fmt_goal(g)
        lines.append(f"| {g['goal']} | {value} | {target} | {met} |")
    lines.append("")

    w = data.get("watch")
    if w:
        lines += ["## Watch (from `benchmarks/watch.py`)", ""]
        if "error" in w:
            lines += [f"Not measured: {w['error']}", ""]
        else:
            lines += [f"Command: `{w['command']}` — one embedded node on in-memory storage.", "",
                      "```", w.get("output", "").strip(), "```", ""]

    peers_info = [(s, data["systems"][s].get("info", {})) for s in systems if s in PEERS_3]
    if peers_info:
        lines += ["## Peers", ""]
        for s, info in peers_info:
            shown = {k: v for k, v in info.items() if k not in ("endpoints", "leader")}
            lines.append(f"* {s}: " + "; ".join(f"{k}: {v}" for k, v in shown.items()))
        cp = data["systems"].get("etcd-3", {}).get("check_perf")
        if cp:
            lines += ["", f"etcd's own tool, `{cp.get('command', 'etcdctl check perf')}`:", "", "```",
                      *(cp.get("lines") or [str(cp)]), "```"]
        lines.append("")
    if data.get("skipped"):
        lines += ["## Skipped", ""]
        lines += [f"* {s}: {why}" for s, why in data["skipped"].items()]
        lines.append("")
    failed = [(s, v["error"]) for s, v in data["systems"].items() if "error" in v]
    samples = [(s, sc, r["error_samples"]) for s, v in data["systems"].items()
               for sc, r in v.get("results", {}).items() if r.get("error_samples")]
    if failed or samples:
        lines += ["## Errors", ""]
        lines += [f"* {s}: system failed: {e.splitlines()[0]}" for s, e in failed]
        lines += [f"* {s} / {sc}: {'; '.join(e)}" for s, sc, e in samples]
        lines.append("")
    return "\n".join(lines)


def parse_watch_output(text: str) -> dict[str, Any]:
    """Read the tables of ``python -m benchmarks watch`` (numbers per row)."""
    out: dict[str, Any] = {"latency": [], "fanout": []}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("latency"):
            section = "latency"
        elif line.startswith("delivered"):
            section = "fanout"
        elif not line or not re.match(r"^[\d,]+\s", line):
            if not line:
                section = None
            continue
        elif section:
            nums = [float(x.replace(",", "")) for x in line.split()]
            out[section].append(nums)
    return out


def chart(data: dict[str, Any], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    systems = list(data["systems"])
    scenarios = [sc for sc in SCENARIOS if any(_result(data, s, sc) for s in systems)]
    if not scenarios:
        return False
    fig, ax = plt.subplots(figsize=(11, 0.55 * len(scenarios) * max(len(systems), 1) / 2 + 2))
    height = 0.8 / max(len(systems), 1)
    for j, s in enumerate(systems):
        ys, xs = [], []
        for i, sc in enumerate(scenarios):
            r = _result(data, s, sc)
            if r:
                ys.append(i + j * height)
                xs.append(r["throughput"])
        ax.barh(ys, xs, height=height, label=s)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(scenarios))], scenarios)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("operations / s (log scale)")
    ax.set_title(f"dengine vs peers — {data['command']}", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_all(data: dict[str, Any], out_dir: str, stem: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    data["goals"] = goals(data)
    jpath = os.path.join(out_dir, f"{stem}.json")
    with open(jpath, "w") as f:
        json.dump(data, f, indent=1, default=str)
    paths.append(jpath)
    mpath = os.path.join(out_dir, f"{stem}.md")
    png = os.path.join(out_dir, f"{stem}.png")
    has_chart = chart(data, png)
    text = markdown(data)
    if has_chart:
        text += f"\n![throughput per scenario]({stem}.png)\n"
    with open(mpath, "w") as f:
        f.write(text)
    paths.append(mpath)
    if has_chart:
        paths.append(png)
    return paths

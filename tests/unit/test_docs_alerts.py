"""The alerting material of docs/operations.md ("Alerts") stays true:

* docs/prometheus-alerts.yml is a Prometheus rules file (groups of rules,
  each alert with an expression, a duration, a severity and a summary) and
  has every alert the "Alerts" section names, and no other;
* docs/grafana-dashboard.json is a dashboard Grafana imports (JSON, panels
  with queries, a Prometheus data source variable);
* every dengine metric either file queries is one the "Metrics" section of
  docs/operations.md documents (and, where the exporter lists its metrics,
  one it exports): a renamed metric breaks this test, not an operator's
  pager at 3 a.m.

PyYAML is used when it is installed; without it the rules file gets a
small structural parse (it is not a dependency). promtool checks the file
when it is on the PATH.
"""

from __future__ import annotations

import importlib
import json
import pathlib
import re
import shutil
import subprocess
from typing import Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
ALERTS = DOCS / "prometheus-alerts.yml"
DASHBOARD = DOCS / "grafana-dashboard.json"
OPERATIONS = DOCS / "operations.md"

METRIC = re.compile(r"\bdengine_[a-z0-9_]+\b")
# The series Prometheus derives from a histogram or a summary.
SUFFIXES = ("_bucket", "_sum", "_count")
# Metrics the rules use that dengine does not export, and where they come from.
FOREIGN = {
    "up": "Prometheus itself: 1 when the last scrape of a target succeeded",
    "node_filesystem_avail_bytes": "node_exporter: free space of a filesystem (dengine does not export it)",
    "node_filesystem_size_bytes": "node_exporter: size of a filesystem",
}


def _section(markdown: str, title: str) -> str:
    """The text of the level-2 section ``title`` (up to the next one)."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    assert match, f"docs/operations.md has no '## {title}' section"
    return match.group(1)


def _documented_metrics() -> set[str]:
    """The names in the table of the Metrics section (one row per metric)."""
    return set(re.findall(r"^\| `(dengine_[a-z0-9_]+)` \|", _section(OPERATIONS.read_text(), "Metrics"), re.M))


def _base(name: str, documented: set[str]) -> str:
    if name in documented:
        return name
    for suffix in SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in documented:
            return name[: -len(suffix)]
    return name


# -- the rules file ----------------------------------------------------------------------------------


def _load_rules() -> dict[str, Any]:
    text = ALERTS.read_text()
    try:
        yaml = importlib.import_module("yaml")  # PyYAML, if installed (not a dependency)
    except ImportError:
        return _parse_rules(text)
    data = yaml.safe_load(text)
    assert data == _parse_rules(text), "the small parser below reads the file differently from PyYAML"
    return data  # type: ignore[no-any-return]


def _parse_rules(text: str) -> dict[str, Any]:
    """A rules file in the one shape docs/prometheus-alerts.yml is written
    in: ``groups:``, ``- name:`` / ``rules:``, ``- alert:`` with ``expr: |``
    blocks or plain values, ``for:``, ``labels:`` and ``annotations:`` maps
    of plain (or double-quoted) strings. Anything else is an error."""
    groups: list[dict[str, Any]] = []
    rule: dict[str, Any] | None = None
    mapping: dict[str, Any] | None = None
    block: tuple[str, int, list[str]] | None = None  # key, indent, lines
    lines = text.splitlines()

    def scalar(value: str) -> Any:
        value = value.strip()
        if value.startswith('"'):
            return json.loads(value)
        if re.fullmatch(r"-?\d+", value):
            return int(value)
        return value

    for number, line in enumerate(lines, 1):
        if block is not None:
            key, indent, body = block
            if not line.strip() or len(line) - len(line.lstrip()) >= indent:
                body.append(line[indent:])
                continue
            assert rule is not None
            rule[key] = "\n".join(body).rstrip("\n") + "\n"
            block = None
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        where = f"docs/prometheus-alerts.yml line {number}: {line!r}"
        if indent == 0:
            assert stripped == "groups:", where
        elif stripped.startswith("- name:"):
            groups.append({"name": scalar(stripped[len("- name:"):]), "rules": []})
        elif stripped == "rules:":
            assert groups, where
        elif stripped.startswith("- alert:"):
            rule = {"alert": scalar(stripped[len("- alert:"):])}
            groups[-1]["rules"].append(rule)
            mapping = None
        elif stripped in ("labels:", "annotations:"):
            assert rule is not None, where
            mapping = rule[stripped[:-1]] = {}
        else:
            key, sep, value = stripped.partition(":")
            assert sep and rule is not None, where
            if key in ("expr", "for"):
                mapping = None
                if value.strip() == "|":
                    nxt = next(x for x in lines[number:] if x.strip())
                    block = (key, len(nxt) - len(nxt.lstrip()), [])
                else:
                    rule[key] = scalar(value)
            else:
                assert mapping is not None, where
                mapping[key] = scalar(value)
    if block is not None:
        assert rule is not None
        rule[block[0]] = "\n".join(block[2]).rstrip("\n") + "\n"
    return {"groups": groups}


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _load_rules()["groups"] for rule in group["rules"]]


def test_the_rules_file_is_a_prometheus_rules_file() -> None:
    data = _load_rules()
    assert set(data) == {"groups"} and data["groups"]
    for group in data["groups"]:
        assert set(group) == {"name", "rules"} and group["rules"], group
    names = [rule["alert"] for rule in _rules()]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in _rules():
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"Dengine[A-Z][A-Za-z0-9]+", rule["alert"]), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", str(rule["for"])), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description", "runbook"}, rule["alert"]
        assert rule["annotations"]["runbook"].startswith("docs/operations.md#"), rule["alert"]
        expr = rule["expr"]
        for open_, close in ("()", "[]", "{}"):
            assert expr.count(open_) == expr.count(close), f"{rule['alert']}: unbalanced {open_}{close}"


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool is not installed: apt-get install -y prometheus (.ci/run does)")
def test_promtool_accepts_the_rules_file() -> None:  # pragma: no cover - only where promtool is
    run = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_alerts_section_names_every_alert_of_the_file() -> None:
    section = _section(OPERATIONS.read_text(), "Alerts")
    named = set(re.findall(r"`(Dengine[A-Za-z0-9]+)`", section))
    assert named == {rule["alert"] for rule in _rules()}
    # Its table says each alert's severity and duration as the file does.
    table = {m[0]: (m[1], m[2]) for m in re.findall(r"^\| `(Dengine\w+)` \| (\w+) \|.*\| (\w+) \|$", section, re.M)}
    assert table == {r["alert"]: (r["labels"]["severity"], r["for"]) for r in _rules()}


def test_every_runbook_link_names_a_heading_of_operations_md() -> None:
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", OPERATIONS.read_text(), re.M)}
    for rule in _rules():
        assert rule["annotations"]["runbook"].split("#", 1)[1] in anchors, rule["alert"]


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


# -- the dashboard -------------------------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # inside a collapsed row
    return out


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    dashboard = _dashboard()
    assert {"title", "uid", "panels", "schemaVersion", "templating"} <= set(dashboard)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    graphs = [p for p in _panels(dashboard) if p["type"] != "row"]
    assert graphs
    for panel in graphs:
        assert panel["title"] and panel["targets"], panel.get("title")
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"], panel["title"]


# -- the metric names ------------------------------------------------------------------------------------


def _queries(*, variables: bool = True) -> dict[str, str]:
    """Every query of both files, named by where it is; ``variables``: the
    dashboard's variable and annotation queries too."""
    dashboard = _dashboard()
    out = {f"alert {r['alert']}": r["expr"] for r in _rules()}
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            out[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    if variables:
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                out[f"variable {variable['name']}"] = variable["query"]
        for annotation in dashboard["annotations"]["list"]:
            out[f"annotation {annotation['name']!r}"] = annotation["expr"]
    return out


def test_every_metric_queried_is_documented_in_the_metrics_section() -> None:
    documented = _documented_metrics()
    assert documented, "the Metrics section names no dengine_ metric"
    missing = {f"{where}: {name}" for where, expr in _queries().items() for name in METRIC.findall(expr)
               if _base(name, documented) not in documented}
    assert not missing, sorted(missing)


def test_every_metric_queried_is_exported() -> None:
    from dengine.http import metrics

    exported = set(metrics.METRIC_NAMES)
    assert exported, "the exporter lists no metric names"
    missing = {f"{where}: {name}" for where, expr in _queries().items() for name in METRIC.findall(expr)
               if _base(name, exported) not in exported}
    assert not missing, sorted(missing)


def test_only_known_foreign_metrics_are_queried() -> None:
    """Every series a rule or panel queries that is not dengine's is in
    FOREIGN, which says where it comes from (the words left once strings,
    label matchers, groupings, ranges and PromQL's own words are taken out)."""
    functions = {"sum", "rate", "increase", "irate", "max", "min", "avg", "count", "histogram_quantile",
                 "predict_linear", "delta", "deriv", "changes", "resets", "abs", "clamp_min", "clamp_max",
                 "label_replace", "absent", "vector", "scalar", "time", "topk", "bottomk", "max_over_time",
                 "min_over_time", "avg_over_time", "sum_over_time", "count_over_time", "by", "without", "on",
                 "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "le"}
    for where, expr in _queries(variables=False).items():
        without_strings = re.sub(r'"[^"]*"', '""', expr)
        without_labels = re.sub(r"\{[^}]*\}", "{}", without_strings)
        without_groupings = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", without_labels)
        without_ranges = re.sub(r"\[[^\]]*\]", "[]", without_groupings)
        words = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", without_ranges))
        words -= functions
        words = {w for w in words if not w.startswith("dengine_") and not w.startswith("$")}
        assert words <= set(FOREIGN), f"{where}: {sorted(words - set(FOREIGN))}"

"""`dengine status --cluster`, `dengine health` and `--log-format json`,
without a server: the JSON log formatter, the rows of members that cannot
be asked (a fake client), and the flags. The commands against real servers
are in tests/integration/test_cli_operability.py."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys

import pytest

import dengine
from dengine.cli import _build_parser, _cluster_status, _health, _JsonFormatter, _Out, _rfc3339, main
from dengine.errors import Unavailable

LOG_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def _record(msg: str, *args: object, exc_info: object = None, **extra: object) -> logging.LogRecord:
    return logging.getLogger("dengine.test").makeRecord(
        "dengine.test", logging.WARNING, __file__, 1, msg, args,
        exc_info, extra=extra or None)  # type: ignore[arg-type]


def test_json_formatter_writes_one_object_per_line_with_the_documented_keys() -> None:
    line = _JsonFormatter().format(_record("slow fsync: %d ms\nsecond line", 120))
    assert "\n" not in line
    obj = json.loads(line)
    assert set(obj) == {"time", "level", "logger", "message"}
    assert (obj["level"], obj["logger"]) == ("WARNING", "dengine.test")
    assert obj["message"] == "slow fsync: 120 ms\nsecond line"
    assert LOG_TIME.fullmatch(obj["time"])


def test_json_formatter_adds_the_exception_text_and_extra_fields() -> None:
    try:
        1 / 0
    except ZeroDivisionError:
        exc_info = sys.exc_info()
    obj = json.loads(_JsonFormatter().format(_record("failed", exc_info=exc_info, node_id=3, peer=object())))
    assert obj["exception"].startswith("Traceback (most recent call last):")
    assert obj["exception"].rstrip().endswith("ZeroDivisionError: division by zero")
    assert obj["node_id"] == 3 and obj["peer"].startswith("<object object")  # not JSON: its str()


def test_rfc3339_is_utc_with_milliseconds() -> None:
    assert _rfc3339(0.5) == "1970-01-01T00:00:00.500Z"
    assert _rfc3339(1714564800.123456) == "2024-05-01T12:00:00.123Z"


def test_log_format_is_a_common_flag_before_or_after_the_command() -> None:
    parser = _build_parser()
    for argv in (["--log-format", "json", "serve"], ["serve", "--log-format", "json"],
                 ["--log-format", "json", "health"], ["status", "--cluster", "--log-format", "json"]):
        assert parser.parse_args(argv).log_format == "json"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--log-format", "xml"])


def test_status_all_and_cluster_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["status", "--all", "--cluster"])
    assert info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_a_bad_dengine_log_format_variable_is_bad_usage(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DENGINE_LOG_FORMAT", "yaml")
    assert main(["serve", "--data-dir", "/nonexistent/never-created"]) == 2
    assert "DENGINE_LOG_FORMAT must be one of text, json, got 'yaml'" in capsys.readouterr().err


class _Cluster:
    """members() and status(endpoint=) of a cluster whose member 1 answers,
    member 2 has no client address, member 3 is down, and member 4's address
    now belongs to node 9."""

    members_ = [dengine.Member(node_id=1, peer_address="p1", client_address="c1"),
                dengine.Member(node_id=2, peer_address="p2", client_address=None),
                dengine.Member(node_id=3, peer_address="p3", client_address="c3", is_learner=True),
                dengine.Member(node_id=4, peer_address="p4", client_address="c4")]

    def members(self) -> list[dengine.Member]:
        return list(self.members_)

    def status(self, *, endpoint: str) -> dengine.Status:
        if endpoint == "c3":
            raise Unavailable("cannot reach c3: connection refused")
        node_id = {"c1": 1, "c4": 9}[endpoint]
        return dengine.Status(node_id=node_id, role="leader" if node_id == 1 else "follower", term=7, leader_id=1,
                              commit_index=20, applied_index=19, members=tuple(self.members_),
                              last_snapshot_index=0)


def test_status_cluster_rows_say_why_a_member_could_not_be_asked(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(cluster=True, all=False)
    assert _cluster_status(_Cluster(), args, _Out("simple", False)) == 1  # type: ignore[arg-type]
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        "c1, 1, -, -, leader, 1, false, 7, 20, 19, ",
        "-, 2, -, -, , , false, , , , no client address is recorded for member 2 "
        "(dengine member update 2 --client-address H:P)",
        "c3, 3, -, -, , , true, , , , cannot reach c3: connection refused",
        "c4, 4, -, -, , , false, , , , c4 answered as node 9, not as member 4",
    ]
    assert captured.err == "dengine: 3 of 4 members did not answer\n"
    assert _cluster_status(_Cluster(), args, _Out("json", False)) == 1  # type: ignore[arg-type]
    objs = json.loads(capsys.readouterr().out)
    assert [(o["node_id"], o["role"], len(o["errors"])) for o in objs] == [
        (1, "leader", 0), (2, None, 1), (3, None, 1), (4, None, 1)]


def test_health_cluster_counts_a_member_without_client_address_unhealthy(
        capsys: pytest.CaptureFixture[str]) -> None:
    class NoAddresses:
        def members(self) -> list[dengine.Member]:
            return [dengine.Member(node_id=5, peer_address="p5", client_address=None)]

    args = argparse.Namespace(cluster=True, endpoints="127.0.0.1:1", timeout=0.3, cluster_id=None, cacert=None,
                              cert=None, keyfile=None)
    assert _health(NoAddresses(), args, _Out("json", False)) == 1  # type: ignore[arg-type]
    captured = capsys.readouterr()
    assert [(r["endpoint"], r["health"]) for r in json.loads(captured.out)] == [("member 5", False)]
    assert "unhealthy cluster: 1 of 1 members unhealthy" in captured.err


def test_health_of_an_endpoint_nobody_serves(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["health", "--endpoints", "127.0.0.1:1", "--timeout", "0.3"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("127.0.0.1:1 is unhealthy: failed to serve a linearizable read: ")
    assert "connection refused" in captured.err


def test_a_client_command_with_json_logs_keeps_its_own_messages_plain(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        assert main(["get", "k", "--endpoints", "127.0.0.1:1", "--timeout", "0.2", "--log-format", "json"]) == 1
    finally:  # what main() set up in this process
        for handler in root.handlers[:]:
            if handler not in before:
                root.removeHandler(handler)
        logging.captureWarnings(False)
    assert capsys.readouterr().err.startswith("dengine: error 2003: ")

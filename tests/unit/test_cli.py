"""The `dengine` command: parser, help for every command, exit codes, output
formats, and `serve` flag handling. Client commands run as real
subprocesses against an in-process server on 127.0.0.1 (port 0), each
under an absolute fail_after."""

from __future__ import annotations

import json
import os
import pathlib
import sys

import attrs
import pytest
import trio

import dengine
from dengine import Config
from dengine.cli import _build_parser, _serve_config, main

COMMANDS = ["run", "serve", "get", "put", "del", "cas", "scan", "watch", "members", "status", "leader"]
DEADLINE = 60


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert f"dengine {command}" in capsys.readouterr().out


def test_no_command_and_bad_usage_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    with pytest.raises(SystemExit) as info:
        main(["cas", "k", "v"])  # needs --expected or --absent
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["get", "k", "-w", "yaml"])
    assert info.value.code == 2
    assert main(["put", "k", "zz", "--hex", "--endpoints", "127.0.0.1:1"]) == 2
    assert "is not hex" in capsys.readouterr().err


def test_serve_flags_build_the_config(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.setenv("DENGINE_RAFT__TICK_INTERVAL_MS", "25")
    args = _build_parser().parse_args([
        "serve", "--id", "2", "--data-dir", str(tmp_path / "n2"), "--peer-address", "127.0.0.1:7002",
        "--client-address", "127.0.0.1:9082", "--metrics-address", "127.0.0.1:9182", "--cluster-id", "prod",
        "--initial-cluster", "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003",
        "--client-addresses", "1=127.0.0.1:9081,2=127.0.0.1:9082,3=127.0.0.1:9083",
    ])
    cfg = _serve_config(args)
    assert (cfg.node_id, cfg.peer_address, cfg.client_address, cfg.cluster_id) == (
        2, "127.0.0.1:7002", "127.0.0.1:9082", "prod")
    assert cfg.initial_cluster[3] == "127.0.0.1:7003"
    assert cfg.cluster.client_addresses[1] == "127.0.0.1:9081"
    assert cfg.raft.tick_interval_ms == 25.0
    assert cfg.metrics_address == "127.0.0.1:9182"
    defaults = _serve_config(_build_parser().parse_args(["serve"]))
    assert (defaults.client_address, defaults.data_dir) == ("127.0.0.1:9081", "./dengine-data")
    assert defaults.metrics_address == "127.0.0.1:9082"
    assert _serve_config(_build_parser().parse_args(["serve", "--metrics-address", "off"])).metrics_address is None


def test_serve_bad_flags_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--initial-cluster", "1=a:1,oops"]) == 2
    assert "must be written 'id=host:port'" in capsys.readouterr().err


async def _cli(*argv: str, endpoint: str) -> tuple[int, str, str]:
    env = {**os.environ, "DENGINE_ENDPOINTS": endpoint}
    result = await trio.run_process(
        [sys.executable, "-m", "dengine", "--log-level", "warning", *argv],
        capture_stdout=True, capture_stderr=True, check=False, env=env,
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_client_commands_against_a_server(tmp_path: pathlib.Path) -> None:
    cfg = Config.single_node(str(tmp_path / "data"), client_address="127.0.0.1:0")
    cfg = attrs.evolve(cfg, raft=attrs.evolve(cfg.raft, tick_interval_ms=10))
    with trio.fail_after(DEADLINE):
        async with dengine.open_server(cfg) as server:
            await server.wait_ready(timeout=5)
            ep = server.client_address
            assert await _cli("put", "/app/a", "héllo", endpoint=ep) == (0, "OK revision 3\n", "")
            assert (await _cli("get", "/app/a", endpoint=ep))[:2] == (0, "héllo\n")
            code, out, err = await _cli("get", "/app/missing", endpoint=ep)
            assert code == 3 and out == "" and "not found" in err
            code, out, _ = await _cli("get", "/app/a", "-w", "json", "--consistency", "eventual", endpoint=ep)
            assert code == 0 and json.loads(out)["value"] == "héllo"
            assert (await _cli("put", "6b", "ff00", "--hex", endpoint=ep))[0] == 0
            assert (await _cli("get", "6b", "--hex", endpoint=ep))[:2] == (0, "ff00\n")
            assert (await _cli("cas", "/app/a", "x", "--expected", "nope", endpoint=ep))[:2] == (3, "false\n")
            assert (await _cli("cas", "/app/a", "x", "--expected", "héllo", endpoint=ep))[:2] == (0, "true\n")
            assert (await _cli("cas", "/app/b", "1", "--absent", "--ttl", "30", endpoint=ep))[:2] == (0, "true\n")
            code, out, _ = await _cli("scan", "/app/", "-w", "json", endpoint=ep)
            assert [e["key"] for e in json.loads(out)["entries"]] == ["/app/a", "/app/b"]
            code, out, _ = await _cli("get", "/app/", "--prefix", endpoint=ep)
            assert out == "/app/a\nx\n/app/b\n1\n"
            assert (await _cli("del", "/app/b", endpoint=ep))[:2] == (0, "1\n")
            assert (await _cli("del", "/app/b", endpoint=ep))[:2] == (3, "0\n")
            code, out, _ = await _cli("members", "-w", "table", endpoint=ep)
            assert code == 0 and ep in out and "leader" in out
            code, out, _ = await _cli("status", "-w", "json", endpoint=ep)
            assert code == 0 and json.loads(out)["role"] == "leader"
            code, out, _ = await _cli("leader", endpoint=ep)
            assert code == 0 and out == f"node 1 term {server.current_term()} at {ep}\n"
            code, out, _ = await _cli("watch", "/app/", "--prefix", "--start-revision", "1", "--count", "2",
                                      "-w", "json", endpoint=ep)
            events = [json.loads(line) for line in out.splitlines()]
            assert code == 0 and [(e["type"], e["key"]) for e in events] == [("PUT", "/app/a"), ("PUT", "/app/a")]
            code, _, err = await _cli("put", "k", "v", "--ttl", "-1", endpoint=ep)
            assert code == 2 and "ttl must be greater than 0" in err
    code, _, err = await _cli("get", "k", "--timeout", "0.3", endpoint="127.0.0.1:1")
    assert code == 1 and "did not complete within 0.3 s" in err and "Traceback" not in err


class _FakeClient:
    """Answers members() and leader() like a cluster whose member 2 has no
    client address and whose peer addresses are unknown to node 3."""

    def members(self) -> list[dengine.Member]:
        return [dengine.Member(node_id=1, peer_address="127.0.0.1:7001", client_address="127.0.0.1:9081"),
                dengine.Member(node_id=2, peer_address="127.0.0.1:7002", client_address=None),
                dengine.Member(node_id=3, peer_address="", client_address="127.0.0.1:9083", is_learner=True)]

    def leader(self) -> dengine.LeaderInfo:
        return dengine.LeaderInfo(leader_id=1, term=4)


def test_members_keep_empty_fields_as_empty_columns(capsys: pytest.CaptureFixture[str]) -> None:
    from dengine.cli import _members, _Out

    args = _build_parser().parse_args(["members"])
    assert _members(_FakeClient(), args, _Out("simple", False)) == 0  # type: ignore[arg-type]
    assert capsys.readouterr().out.splitlines() == [
        "1, 127.0.0.1:7001, 127.0.0.1:9081, voter, true",
        "2, 127.0.0.1:7002, , voter, false",
        "3, , 127.0.0.1:9083, learner, false",
    ]
    assert _members(_FakeClient(), args, _Out("table", False)) == 0  # type: ignore[arg-type]
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 2 ")]
    assert [c.strip() for c in rows[0].strip("|").split("|")] == ["2", "127.0.0.1:7002", "", "voter", "false"]


def test_common_flags_parse_before_or_after_the_command() -> None:
    parser = _build_parser()
    before = parser.parse_args(["--endpoints", "a:1", "-w", "json", "--timeout", "2", "get", "k"])
    after = parser.parse_args(["get", "k", "--endpoints", "a:1", "-w", "json", "--timeout", "2"])
    for args in (before, after):
        assert (args.endpoints, args.write_out, args.timeout) == ("a:1", "json", 2.0)
    both = parser.parse_args(["-w", "json", "get", "k", "-w", "table"])
    assert both.write_out == "table"  # the one after the command wins
    serve = parser.parse_args(["--cluster-id", "x", "serve", "--log-level", "debug"])
    assert (serve.cluster_id, serve.log_level) == ("x", "debug")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib import metadata

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"dengine {metadata.version('dengine')}\n"

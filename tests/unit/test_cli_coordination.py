"""The coordination commands' parsing, without a server: help, lease ids,
the `txn` input syntax of docs/cli.md (and its errors, naming the line),
`lock NAME COMMAND...` argument splitting, and usage errors (exit 2)
found before anything is sent."""

from __future__ import annotations

import io
import sys

import pytest

from dengine.api import Compare, Op
from dengine.cli import _build_parser, _lease_id, _parse, _read_txn, main

NOWHERE = ("--endpoints", "127.0.0.1:1", "--timeout", "0.5")  # never reached: the error comes first


@pytest.mark.parametrize("argv", [["lease"], ["lease", "grant"], ["lease", "keep-alive"], ["lease", "revoke"],
                                  ["lease", "ttl"], ["lease", "list"], ["txn"], ["lock"], ["elect"]])
def test_every_new_command_has_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    assert f"dengine {' '.join(argv)}" in capsys.readouterr().out


def test_lease_ids_are_hex() -> None:
    assert _lease_id("1a") == 26 and _lease_id("0x1A") == 26 and _lease_id("000000000000001a") == 26
    for bad in ("zz", "", "0", "-1", "8000000000000000"):
        with pytest.raises(Exception, match="lease id"):
            _lease_id(bad)


def _txn(text: str, hex_: bool = False) -> tuple[list[Compare], list[tuple[Op, str]], list[tuple[Op, str]]]:
    return _read_txn(io.BytesIO(text.encode()), hex_)


def test_txn_syntax_of_docs_cli_md() -> None:
    compares, success, failure = _txn(
        'mod("key1") > "0"\n'
        '  value("k") = "a \\"quoted\\" \\x00 value"  \n'
        'val("k") != "x"\n'
        'version("k") < 3\n'
        'ver("k") == "1"\n'
        'create("k") = "0"\n'
        'c("k") > "1"\n'
        'm("k") < "9"\n'
        'lease("k") = "1a"\n'
        "\n"
        'put key1 "overwrote key1" --lease=1a\n'
        "put 'k 2' v --lease 1b\n"
        "get k\n"
        "get k --prefix\n"
        "get a b\n"
        "del k\n"
        "del /p/ --prefix\n"
        "del a b\n"
        "\n"
        'put key1 "created-key1"\n'
        "\n\n"
    )
    assert compares == [
        Compare.mod_revision(b"key1") > 0,
        Compare.value(b"k") == b'a "quoted" \x00 value',
        Compare.value(b"k") != b"x",
        Compare.version(b"k") < 3,
        Compare.version(b"k") == 1,
        Compare.create_revision(b"k") == 0,
        Compare.create_revision(b"k") > 1,
        Compare.mod_revision(b"k") < 9,
        Compare.lease(b"k") == 26,
    ]
    assert success == [
        (Op.put(b"key1", b"overwrote key1", lease=26), "put"), (Op.put(b"k 2", b"v", lease=27), "put"),
        (Op.get(b"k"), "get"), (Op.scan(b"k"), "get"), (Op.scan_range(b"a", b"b"), "get"),
        (Op.delete(b"k"), "del"), (Op.delete_prefix(b"/p/"), "del"), (Op.delete_range(b"a", b"b"), "del"),
    ]
    assert failure == [(Op.put(b"key1", b"created-key1"), "put")]


def test_txn_sections_may_be_empty_or_cut_by_the_end_of_input() -> None:
    assert _txn("") == ([], [], [])
    assert _txn("\nput k v") == ([], [(Op.put(b"k", b"v"), "put")], [])
    assert _txn('value("k") = "v"\n') == ([Compare.value(b"k") == b"v"], [], [])


def test_txn_hex_keys_and_values() -> None:
    compares, success, _ = _txn('value("6b") = "ff00"\n\nput 6b "0001"\n', hex_=True)
    assert compares == [Compare.value(b"k") == b"\xff\x00"] and success == [(Op.put(b"k", b"\x00\x01"), "put")]
    with pytest.raises(Exception, match="line 3 .*is not hex"):
        _txn('value("6b") = "ff00"\n\nput k v\n', hex_=True)


@pytest.mark.parametrize(("text", "said"), [
    ('mod("k") >> "0"\n', 'line 1 `mod("k") >> "0"`: malformed comparison'),
    ("put k v\n", "line 1 `put k v`: malformed comparison: expected TARGET(\"KEY\") OP \"OPERAND\" with OP one of "
     "=, !=, <, > (the compares come first; a transaction without compares starts with a blank line)"),
    ('size("k") = "1"\n', "line 1 `size(\"k\") = \"1\"`: unknown compare target 'size'"),
    ('mod(k) > "0"\n', "line 1 `mod(k) > \"0\"`: malformed comparison"),
    ('ver("k") = "x"\n', "ver() compares with a non-negative whole number"),
    ('lease("k") = "zz"\n', "lease id 'zz' is not a hex number"),
    ('value("k") = "\\q"\n', "line 1 `value(\"k\") = \"\\q\"`: unknown escape \\q"),
    ('\nput k\n', "line 2 `put k`: put needs KEY and VALUE"),
    ('\nput "k v\n', "line 2 `put \"k v`: unterminated quote"),
    ('\nget k --lease 1\n', "line 2 `get k --lease 1`: get takes no --lease (only --prefix)"),
    ('\nget a b --prefix\n', "get takes a range END or --prefix, not both"),
    ('\nscan k\n', "line 2 `scan k`: unknown op: one of put KEY VALUE [--lease=ID], get KEY [END] [--prefix], "
     "del KEY [END] [--prefix]"),
    ('\nput k v --lease\n', "--lease needs a lease id"),
    ('\n\nput k v\n\nput x y\n', "line 5 `put x y`: text after the failure ops"),
])
def test_txn_syntax_errors_name_the_line(text: str, said: str) -> None:
    with pytest.raises(Exception) as info:
        _txn(text)
    assert f"txn: {said}" in str(info.value) if said.startswith("line") else said in str(info.value)


def test_txn_syntax_error_exits_2_before_connecting(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'\nput k v\nget\n')))
    assert main(["txn", *NOWHERE]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "dengine: txn: line 3 `get`: get needs KEY" in captured.err


def test_txn_interactive_prompts_go_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    assert _read_txn(io.BytesIO(b"\nput k v\n\n"), False, interactive=True) == ([], [(Op.put(b"k", b"v"), "put")], [])
    assert capsys.readouterr().err.splitlines() == [
        "compares:", "success requests (get, put, del):", "failure requests (get, put, del):"]


def test_lock_command_words_are_kept_as_they_are() -> None:
    parser = _build_parser()
    for argv, command, ttl in [
        (["lock", "/l", "--ttl", "3", "--", "sh", "-c", "echo -n x"], ["sh", "-c", "echo -n x"], 3.0),
        (["lock", "/l", "--", "a", "--", "b"], ["a", "--", "b"], 60.0),
        (["lock", "/l", "echo", "hi", "--ttl", "3"], ["echo", "hi"], 3.0),
        (["lock", "/l", "--ttl", "3", "echo", "hi"], ["echo", "hi"], 3.0),
        (["-w", "json", "--endpoints", "a:1", "lock", "/l"], [], 60.0),
        (["--endpoints", "a:1", "get", "--", "-k"], None, None),
    ]:
        args = _parse(parser, argv)
        if command is None:
            assert args.command == "get" and args.key == "-k"
        else:
            assert (args.name, args.command_argv, args.ttl) == ("/l", command, ttl)


def test_lock_and_elect_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lock", "locks/a", *NOWHERE]) == 2
    assert "a lock name is a key prefix that starts with '/'" in capsys.readouterr().err
    assert main(["lock", "/a", "--ttl", "0", *NOWHERE]) == 2
    assert "--ttl must be a positive number" in capsys.readouterr().err
    assert main(["elect", "/e", *NOWHERE]) == 2
    assert "give the VALUE to campaign with, or --listen" in capsys.readouterr().err
    assert main(["elect", "/e", "v", "--listen", *NOWHERE]) == 2
    assert "takes no VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["lock", "/a", "--bogus"])
    assert info.value.code == 2
    assert "put `--` before a COMMAND that has flags of its own" in capsys.readouterr().err
    assert main(["lease", "revoke", "zz", *NOWHERE]) == 2
    assert "lease id 'zz' is not a hex number" in capsys.readouterr().err

"""mypy --strict over the package and over a user's script (issue 12).

The package is checked as this repository's source, with pyproject.toml's
``[tool.mypy]`` settings. The user script is checked as a user would: without
our configuration, and with dengine found as an *installed* package (a
``sys.path`` entry, not the current directory), so mypy reads its types only
because ``dengine/py.typed`` is there. A deliberately wrong script shows the
check can fail.

mypy runs in-process through ``mypy.api`` with its cache under ``tmp_path``,
so nothing is written into the repository. Each test is a cold run of about
5 s (the package) and 3-4 s (a script) on a busy 2-core machine.
"""

from __future__ import annotations

import gc
import pathlib
import sys

import pytest

api = pytest.importorskip("mypy.api")

ROOT = pathlib.Path(__file__).resolve().parents[2]
USER_SCRIPT = ROOT / "tests" / "typing" / "user_script.py"


def _mypy(args: list[str]) -> tuple[str, int]:
    # mypy tunes the process for itself (fewer garbage collections, a deeper
    # recursion limit); put both back for the tests that run after.
    threshold, limit = gc.get_threshold(), sys.getrecursionlimit()
    try:
        stdout, stderr, status = api.run(args)
    finally:
        gc.set_threshold(*threshold)
        sys.setrecursionlimit(limit)
    return stdout + stderr, status


@pytest.fixture(autouse=True)
def _root_on_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # mypy reads sys.path entries like site-packages (a package there is
    # checked only if it has py.typed) and caches them for the process at
    # its first run, so every run here sees the same list: with the
    # repository root appended (mypy skips sys.path[0]). The editable
    # install's import hook is invisible to mypy.
    monkeypatch.setattr(sys, "path", [*sys.path, str(ROOT)])


def _check_as_user(script: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, int]:
    # mypy treats the directory it runs in as the user's own code (checked
    # without py.typed): run elsewhere, so dengine is found as installed.
    monkeypatch.chdir(tmp_path)
    return _mypy(["--strict", "--config-file", "", "--cache-dir", str(tmp_path / "mypy-cache"),
                  "--python-version", "3.11", str(script)])


def test_the_package_passes_mypy_strict(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    report, status = _mypy(["--config-file", str(ROOT / "pyproject.toml"), "--strict",
                            "--cache-dir", str(tmp_path / "mypy-cache"), "dengine"])
    assert status == 0, report


def test_a_typed_user_script_passes_mypy_strict(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A copy: in place, mypy would take tests/ for a package and the
    # repository root for the user's own code.
    script = tmp_path / USER_SCRIPT.name
    script.write_text(USER_SCRIPT.read_text())
    report, status = _check_as_user(script, tmp_path, monkeypatch)
    assert status == 0, report


def test_a_wrongly_typed_user_script_is_reported(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "wrong_script.py"
    script.write_text(
        "import dengine\n"
        "\n"
        "\n"
        "async def store(kv: dengine.EmbeddedClient) -> int:\n"
        "    return await kv.put('a str key', b'value')\n"
        "\n"
        "\n"
        "def leader(exc: dengine.NotLeader) -> str:\n"
        "    return exc.leader_id\n"
    )
    report, status = _check_as_user(script, tmp_path, monkeypatch)
    assert status == 1, report
    assert 'Argument 1 to "put" of "EmbeddedClient" has incompatible type "str"; expected "bytes"' in report
    assert 'Incompatible return value type (got "int | None", expected "str")' in report
    assert "Found 2 errors in 1 file" in report

"""One test per transcript script in tests/sim/scripts (see docs/transcripts.md).

Each script is run from scratch and its whole text, with the actual outputs
in place of the expected ones, must equal the file. ``REWRITE=1 pytest
tests/sim/test_transcripts.py`` stores the actual outputs instead; read the
diff before committing it -- a transcript is a specification.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.sim.transcript import SCRIPTS, Env, ScriptError, check_file, parse, run_script

SCRIPT_FILES = sorted(SCRIPTS.glob("*.txt"))


def test_there_are_scripts() -> None:
    assert len(SCRIPT_FILES) >= 10


@pytest.mark.parametrize("path", SCRIPT_FILES, ids=[p.stem for p in SCRIPT_FILES])
def test_transcript(path: Path) -> None:
    diff = check_file(path, rewrite=os.environ.get("REWRITE") == "1")
    assert diff is None, f"transcript {path.name} differs (REWRITE=1 to accept, after reading it):\n{diff}"


def test_a_wrong_expectation_fails() -> None:
    text = "add-nodes 1\n----\n1: leader term=9\n"
    actual, results = run_script(text)
    assert actual != text
    assert results[0][1] == ["1: follower term=1 commit=1 applied=1 voters=(1)"]


def test_parse_keeps_comments_and_rejects_unterminated_blocks() -> None:
    blocks, trailing = parse("# c\n\nstatus 1\n----\nx\n\n# end\n")
    assert blocks[0].comments == ["# c", ""]
    assert blocks[0].commands == ["status 1"]
    assert blocks[0].expected == ["x"]
    assert trailing == ["", "# end"]
    with pytest.raises(ScriptError):
        parse("status 1\n")


def test_unknown_command_is_a_script_error() -> None:
    with pytest.raises(ScriptError):
        Env().run("frobnicate 1")

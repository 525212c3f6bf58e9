"""Every ```python block of docs/embedding.md runs as it stands."""

from __future__ import annotations

import pathlib
import re
import socket

import pytest

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "embedding.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def _ports_free(ports: list[int]) -> bool:
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def test_the_page_has_examples() -> None:
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_example_runs(index: int, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = BLOCKS[index]
    ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", source)]
    assert _ports_free(ports), f"example {index} needs ports {ports}"
    monkeypatch.chdir(tmp_path)
    exec(compile(source, f"{DOC.name}[{index}]", "exec"), {"__name__": "__main__"})

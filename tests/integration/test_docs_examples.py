"""Every ```python block of docs/embedding.md runs as it stands (ports it
names are swapped for free ones, so runs never collide)."""

from __future__ import annotations

import pathlib
import re

import pytest

from tests.integration.cluster_helpers import free_ports

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "embedding.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_page_has_examples() -> None:
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_example_runs(index: int, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = BLOCKS[index]
    named = sorted(set(re.findall(r"127\.0\.0\.1:(\d+)", source)))
    for old, new in zip(named, free_ports(len(named))):
        source = source.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
    monkeypatch.chdir(tmp_path)
    exec(compile(source, f"{DOC.name}[{index}]", "exec"), {"__name__": "__main__"})

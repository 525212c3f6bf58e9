"""Every ```python block of the pages below runs as it stands (ports it
names are swapped for free ones, so runs never collide; each block runs in
its own empty directory)."""

from __future__ import annotations

import pathlib
import re

import pytest

from tests.integration.cluster_helpers import free_ports

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"
PAGES = {"embedding.md": 4, "coordination.md": 6}  # page -> fewest blocks it must have
BLOCKS = [
    (page, index, source)
    for page in PAGES
    for index, source in enumerate(re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S))
]


@pytest.mark.parametrize("page", PAGES)
def test_the_page_has_examples(page: str) -> None:
    assert sum(1 for p, _, _ in BLOCKS if p == page) >= PAGES[page]


@pytest.mark.parametrize(("page", "index", "source"), BLOCKS, ids=[f"{p}[{i}]" for p, i, _ in BLOCKS])
def test_example_runs(page: str, index: int, source: str, tmp_path: pathlib.Path,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    named = sorted(set(re.findall(r"127\.0\.0\.1:(\d+)", source)))
    for old, new in zip(named, free_ports(len(named))):
        source = source.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
    monkeypatch.chdir(tmp_path)
    exec(compile(source, f"{page}[{index}]", "exec"), {"__name__": "__main__"})

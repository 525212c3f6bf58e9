"""What `pip show dengine` and type checkers see (issue 12, items 2 and 12):
the wheel ships py.typed, and the metadata carries authors and classifiers."""

from __future__ import annotations

import importlib.metadata
import pathlib
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_the_wheel_ships_py_typed(tmp_path: pathlib.Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("dengine-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "dengine/py.typed" in names
    # The cluster page of dengine.http is served from the package.
    for page in ("index.html", "page.js", "page.css"):
        assert f"dengine/http/page/{page}" in names
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("/METADATA"))).decode()
    assert "Author: The dengine developers" in meta or "Author-email" in meta or "The dengine developers" in meta
    assert "Classifier: Typing :: Typed" in meta
    assert "Classifier: Framework :: Trio" in meta


def test_the_installed_metadata_matches_pyproject() -> None:
    meta = importlib.metadata.metadata("dengine")
    assert "Typing :: Typed" in (meta.get_all("Classifier") or [])
    assert "dengine developers" in str(meta.get("Author") or meta.get("Author-email") or "")

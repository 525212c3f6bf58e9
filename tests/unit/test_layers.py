"""The one rule about imports (ARCHITECTURE.md, "Layers"): imports point down.

Each dengine module gets a rank; a module may import modules of a lower rank,
or of its own rank only inside its own package (or inside the layer-4 group of
runtime / watch.dispatcher / lifecycle, which work together). The pure layer
(raft, kv, watch.registry) also must not import trio, sockets, clocks,
threads, os, or use the global ``random`` functions.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PKG = ROOT / "dengine"

# (prefix, rank, group). Longest prefix wins.
RANKS: list[tuple[str, int, str]] = [
    ("dengine.errors", 0, "errors"),
    ("dengine._version", 0, "version"),
    ("dengine.api", 1, "api"),
    # Counters and fixed-bucket histograms the engine records into: pure, beside the value types.
    ("dengine.stats", 1, "stats"),
    ("dengine.raft", 2, "raft"),
    ("dengine.kv", 2, "kv"),
    ("dengine.watch.registry", 2, "watch.registry"),
    # When a lease holder renews and counts its lease lost: pure, for every client.
    ("dengine.renewal", 2, "renewal"),
    ("dengine.codec", 3, "codec"),
    # The backup file format: beside the codec, used by the engine, storage and clients.
    ("dengine.backup", 3, "codec"),
    ("dengine.config", 4, "config"),
    ("dengine.storage", 5, "storage"),
    ("dengine.transport", 5, "transport"),
    ("dengine.runtime", 6, "layer4"),
    ("dengine.watch.dispatcher", 6, "layer4"),
    ("dengine.watch", 6, "layer4"),
    ("dengine.lifecycle", 6, "layer4"),
    # A lease kept alive for a block: trio over any client's lease calls, used by every client.
    ("dengine.keepalive", 6, "keepalive"),
    ("dengine.client", 7, "client"),
    ("dengine.embedded", 7, "embedded"),
    ("dengine.server", 8, "server"),
    # Helpers for tests of applications (open_cluster, ...): above the engine, like trio.testing.
    ("dengine.testing", 8, "testing"),
    # Session / Lock / Election: recipes over any client.
    ("dengine.concurrency", 9, "concurrency"),
    # Faces of a server: /metrics, /health, /status.json and the live page.
    ("dengine.http", 9, "http"),
    # The strict HTTP/1.1 parsing both HTTP faces share: sans-IO, beside the codec.
    ("dengine.http.protocol", 3, "http.protocol"),
    # etcd's v3 API (gRPC and the JSON gateway): a face of a server, over the engine and a client.
    ("dengine.etcd", 9, "etcd"),
    ("dengine.cli", 10, "cli"),
    ("dengine.__main__", 10, "cli"),
]

PURE_PREFIXES = ("dengine.raft", "dengine.kv", "dengine.watch.registry", "dengine.renewal", "dengine.stats")
FORBIDDEN_IN_PURE = {"trio", "socket", "time", "threading", "os", "asyncio", "selectors", "subprocess", "datetime"}
# The client talks to a server over the wire; it never imports the engine.
CLIENT_FORBIDDEN = ("dengine.runtime", "dengine.embedded", "dengine.server", "dengine.lifecycle", "dengine.storage")


def rank_of(module: str) -> tuple[int, str] | None:
    best: tuple[str, int, str] | None = None
    for prefix, rank, group in RANKS:
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, rank, group)
    return None if best is None else (best[1], best[2])


def module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_submodule(dotted: str) -> bool:
    if not dotted.startswith("dengine."):
        return False
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports_of(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, int, list[str]]]:
    """(imported module, line, names imported from it)."""
    out: list[tuple[str, int, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append((alias.name, node.lineno, []))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            submodules = [n for n in names if _is_submodule(f"{target}.{n}")]
            if submodules:
                # `from dengine import codec` imports the module dengine.codec.
                out.extend((f"{target}.{n}", node.lineno, []) for n in submodules)
                names = [n for n in names if n not in submodules]
                if not names:
                    continue
            out.append((target, node.lineno, names))
    return out


def violations_in(source: str, module: str, is_package: bool = False) -> list[str]:
    tree = ast.parse(source)
    problems: list[str] = []
    mine = rank_of(module)
    pure = module.startswith(PURE_PREFIXES)
    for target, line, names in imports_of(tree, module, is_package):
        top = target.split(".")[0]
        if pure and top in FORBIDDEN_IN_PURE:
            problems.append(f"{module}:{line} imports {target}, which the pure layer must not use")
        if pure and top == "random" and any(n != "Random" for n in names):
            problems.append(f"{module}:{line} imports global random functions {names}")
        if module.startswith("dengine.client") and target.startswith(CLIENT_FORBIDDEN):
            problems.append(f"{module}:{line} imports {target}: the client never imports the engine")
        if not target.startswith("dengine") or mine is None or module == "dengine":
            continue
        theirs = rank_of(target)
        if target == "dengine":
            problems.append(f"{module}:{line} imports the dengine facade; import the module itself")
            continue
        if theirs is None:
            continue
        (my_rank, my_group), (their_rank, their_group) = mine, theirs
        if their_rank > my_rank or (their_rank == my_rank and their_group != my_group):
            problems.append(f"{module}:{line} imports {target} (layer rank {their_rank}) from rank {my_rank}")
    if pure:
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "random"
                and node.attr != "Random"
            ):
                problems.append(f"{module}:{node.lineno} uses random.{node.attr}; inject a random.Random instead")
    return problems


def all_modules() -> list[pathlib.Path]:
    return sorted(PKG.rglob("*.py"))


def test_every_module_has_a_rank() -> None:
    missing = [module_name(p) for p in all_modules() if module_name(p) != "dengine" and rank_of(module_name(p)) is None]
    assert missing == []


@pytest.mark.parametrize("path", all_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path: pathlib.Path) -> None:
    problems = violations_in(path.read_text(), module_name(path), is_package=path.name == "__init__.py")
    assert problems == []


# The checker itself must be able to fail.


@pytest.mark.parametrize(
    ("source", "module", "needle"),
    [
        ("import trio\n", "dengine.raft.core", "pure layer"),
        ("import time\n", "dengine.kv.store", "pure layer"),
        ("from os import path\n", "dengine.watch.registry", "pure layer"),
        ("import random\nx = random.random()\n", "dengine.raft.core", "random.random"),
        ("from random import randint\n", "dengine.raft.core", "global random"),
        ("from dengine.runtime import node\n", "dengine.raft.core", "rank 6"),
        ("from dengine.storage import base\n", "dengine.codec", "rank 5"),
        ("from dengine.kv import store\n", "dengine.raft.core", "rank 2"),
        ("from dengine.embedded import Engine\n", "dengine.client.client", "never imports the engine"),
        ("from ..runtime import node\n", "dengine.raft.core", "rank 6"),
        ("from dengine import storage\n", "dengine.codec", "rank 5"),
        ("from dengine import open_engine\n", "dengine.storage.wal", "facade"),
    ],
)
def test_checker_catches(source: str, module: str, needle: str) -> None:
    problems = violations_in(source, module)
    assert any(needle in p for p in problems), problems


def test_checker_allows_downward_and_same_package() -> None:
    src = "import random\nfrom dengine.errors import InvalidArgument\nfrom dengine.raft.log import RaftLog\nr = random.Random(1)\n"
    assert violations_in(src, "dengine.raft.core") == []

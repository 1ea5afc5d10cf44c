"""The package's import graph: no cycles, and nothing imports upward (ARCHITECTURE.md's floors).

Every import counts: module level, inside functions, and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import lakecurate

PKG = Path(lakecurate.__file__).parent

# The floors, bottom up. A module may import its own floor's modules (except stages: no stage
# imports another) and any floor below, never one above.
FLOORS = {
    "ground": {"errors", "_version", "schema", "options", "progress", "sqlcheck", "store", "columns", "names",
               "images", "engines", "runner", "graph", "drops"},
    "algo": {"neardup", "verify", "stream"},
    "models": {"encoders", "offline", "captioners"},
    "stages": {"ingest", "embed", "signals", "faces", "imagetext", "recaption", "dedup", "curate", "concepts", "features", "export", "plant", "review"},
    "views": {"search", "compare", "evaluate", "report", "loader"},
    "top": {"lake", "pipeline", "serve", "cli", "program", "__init__"},
}
ORDER = list(FLOORS)


def module_names() -> set[str]:
    return {p.stem for p in PKG.glob("*.py")}


def imports(name: str) -> set[str]:
    """The package modules ``name`` imports, wherever the import statement is."""
    tree = ast.parse((PKG / f"{name}.py").read_text())
    mods = module_names()
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "lakecurate":
                    out.add(parts[1] if len(parts) > 1 else "__init__")
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .x import y
                base = node.module.split(".")[0] if node.module else None
            elif node.module and node.module.split(".")[0] == "lakecurate":
                rest = node.module.split(".")[1:]
                base = rest[0] if rest else None
            else:
                continue
            if base is not None:
                out.add(base)
            else:  # from lakecurate import x: a module, or a name the package face hands on
                out |= {a.name if a.name in mods else "__init__" for a in node.names}
    out.discard(name)
    return out & (mods | {"__init__"})


def graph() -> dict[str, set[str]]:
    return {name: imports(name) for name in module_names()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def floor(name: str) -> str:
    return next(f for f, members in FLOORS.items() if name in members)


def test_the_graph_finds_every_kind_of_import(tmp_path, monkeypatch):
    """The checker itself: module-level, in-function, TYPE_CHECKING and package-face imports count."""
    fake = tmp_path / "pkg"
    fake.mkdir()
    (fake / "a.py").write_text("from lakecurate import b\n")
    (fake / "b.py").write_text("def f():\n    from lakecurate.c import x\n")
    (fake / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import lakecurate.a\n")
    (fake / "d.py").write_text("from lakecurate import __version__\nimport os\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", fake)
    g = graph()
    assert g == {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"__init__"}}
    assert cycles(g) == [["a", "b", "c"]]


def test_every_module_has_a_floor():
    unplaced = sorted(n for n in module_names() if not any(n in m for m in FLOORS.values()))
    assert not unplaced, f"add {unplaced} to a floor in FLOORS (and to ARCHITECTURE.md)"


def test_no_import_cycles():
    assert cycles(graph()) == []


@pytest.mark.parametrize("name", sorted(module_names() - FLOORS["top"]))
def test_nothing_imports_upward(name: str):
    mine = ORDER.index(floor(name))
    upward = sorted(m for m in imports(name) if ORDER.index(floor(m)) > mine)
    assert not upward, f"{name} ({floor(name)}) imports {upward} from a floor above"
    if floor(name) == "stages":
        others = sorted(m for m in imports(name) if floor(m) == "stages")
        assert not others, f"stage {name} imports stage(s) {others}; ask for their columns instead"

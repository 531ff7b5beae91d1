"""The package's structure: imports go one way through the layers, and no module imports another
that imports it back (docs/architecture.md, "Project layout").

Every import is read from the source: module-level, inside functions, under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import spcl

# Lowest first. A module may import its own unit and the units of lower layers, nothing else.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("spcl.utils", "spcl.config"),  # values and run-time helpers
    ("spcl.data", "spcl.neighbors"),  # datasets; nearest neighbours and k-reciprocal encoding
    ("spcl.models",),
    ("spcl.memory", "spcl.pseudo_labels"),
    ("spcl.evaluation",),
    # training and using a trained model side by side: neither imports the other (the model tools
    # read checkpoints through spcl.models, so they never load the trainer)
    ("spcl.training", "spcl.inference"),
    ("spcl.demo",),  # the CPU demo
    ("spcl.cli",),  # the command line
    ("spcl.__main__", "spcl"),  # ``python -m spcl``; ``spcl`` itself is the package's facade
)


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    line: int


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file of every module of the package rooted at ``root``."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join([package, *parts])] = path
    return names


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Edge]:
    """The package-internal modules that ``name`` imports, resolved to the most specific module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    root = next(iter(modules)).split(".")[0]
    edges = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # "from pkg import sub" imports the submodule when there is one
            targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in modules else stem for a in node.names]
        for target in targets:
            if target.split(".")[0] != root:
                continue
            while target not in modules and "." in target:  # "import spcl.data.base.Item" style
                target = target.rpartition(".")[0]
            if target != name:
                edges.append(Edge(name, target, node.lineno))
    return edges


def unit_of(module: str, layers: tuple[tuple[str, ...], ...]) -> tuple[str, int] | None:
    """The layered unit a module belongs to (the longest matching prefix) and its layer."""
    best = None
    for rank, units in enumerate(layers):
        for unit in units:
            if (module == unit or module.startswith(unit + ".")) and (best is None or len(unit) > len(best[0])):
                best = (unit, rank)
    return best


def layering_violations(edges: list[Edge], modules: dict[str, Path], layers) -> list[str]:
    problems = [f"{m} belongs to no layer: add its package to LAYERS" for m in modules if unit_of(m, layers) is None]
    for e in edges:
        (a, ra), (b, rb) = unit_of(e.importer, layers) or ("?", -1), unit_of(e.imported, layers) or ("?", -1)
        if a != b and rb >= ra:
            problems.append(
                f"{e.importer} imports {e.imported} (line {e.line}): {a} (layer {ra}) may not import "
                f"{b} (layer {rb})"
            )
    return problems


def import_cycles(edges: list[Edge], modules: dict[str, Path]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for e in edges:
        graph[e.importer].add(e.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def _package(root: Path, package: str) -> tuple[dict[str, Path], list[Edge]]:
    modules = module_names(root, package)
    return modules, [e for name, path in modules.items() for e in imports_of(name, path, modules)]


SPCL_MODULES, SPCL_EDGES = _package(Path(spcl.__file__).parent, "spcl")


def test_imports_follow_the_layers() -> None:
    problems = layering_violations(SPCL_EDGES, SPCL_MODULES, LAYERS)
    assert not problems, "imports against the layering:\n" + "\n".join(problems)


def test_no_import_cycle() -> None:
    cycles = import_cycles(SPCL_EDGES, SPCL_MODULES)
    assert not cycles, "modules that import each other: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_checks_find_what_they_look_for(tmp_path: Path) -> None:
    # a tiny package with an upward import (inside a function, relative) and a cycle
    root = tmp_path / "toy"
    (root / "low").mkdir(parents=True)
    (root / "high").mkdir()
    (root / "__init__.py").write_text("")
    (root / "low" / "__init__.py").write_text("")
    (root / "low" / "a.py").write_text("def f():\n    from ..high.b import g\n    return g\n")
    (root / "high" / "__init__.py").write_text("")
    (root / "high" / "b.py").write_text("from toy.high import c\n")
    (root / "high" / "c.py").write_text("from . import b\nimport toy.low\n")
    modules, edges = _package(root, "toy")
    layers = (("toy.low",), ("toy.high", "toy"))
    problems = layering_violations(edges, modules, layers)
    assert problems == ["toy.low.a imports toy.high.b (line 2): toy.low (layer 0) may not import toy.high (layer 1)"]
    assert import_cycles(edges, modules) == [["toy.high.b", "toy.high.c"]]
    assert layering_violations(edges, {**modules, "toy2.x": Path()}, layers)[0].startswith("toy2.x belongs to no layer")


@pytest.mark.parametrize(
    "module,expected",
    [
        ("spcl.pseudo_labels.jaccard", {"spcl.neighbors.kreciprocal", "spcl.neighbors.search"}),
        ("spcl.evaluation.reranking", {"spcl.neighbors.kreciprocal", "spcl.neighbors.search"}),
    ],
)
def test_k_reciprocal_machinery_has_one_neutral_home(module: str, expected: set[str]) -> None:
    imported = {e.imported for e in SPCL_EDGES if e.importer == module}
    assert expected <= imported
    assert not any(m.startswith("spcl.pseudo_labels") for m in imported if module.startswith("spcl.evaluation"))

"""Imports run one way. Every module of src/finetunekit (lazy imports inside functions included)
may import only modules of a lower layer below; a package's own modules may import each other
(the registries' ``@register`` modules do). A new module must be given a layer here.

Layers, lowest first (data flows cli -> recipe -> data/model -> engine -> trainer -> artifacts;
helpers that several layers need, such as the machine's precision, sit below all of them, and
loading a run directory sits above the model it builds):
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "finetunekit"

LAYERS: list[set[str]] = [
    {"errors", "version", "stats", "timing", "answers"},  # stats: bootstrap intervals and paired tests, plain numpy; timing: phase timers; answers: what predict prints, plain numpy
    {"registry", "runtime", "hf_modeling", "trackers", "safe_yaml", "outputs"},
    {"data"},  # readers (folders, tables, audio files), Examples, splits, transforms and batching
    # which parameters train (works on any nn.Module), and what is predicted and judged (heads,
    # targets, losses, metrics, and a task type's own data formats: detection's and segmentation's
    # readers build Examples); the recipe reads each task type's options and validates names
    # against both registries
    {"strategies", "tasks"},
    {"recipe", "artifacts"},  # the typed configuration; the run directory's files (atomic writes, formats)
    {"backbones"},  # backbones.whisper_ct2: Whisper from CTranslate2 files
    # what an input is: finding examples (with data's readers), preprocessing, what it needs from a backbone
    {"modalities"},
    {"defaults"},  # the recipe's unset fields: the modality's, the task's
    {"model", "engine"},
    {"plan"},  # the resolve step: recipe + data -> one plan (types, options, defaults, fitted task)
    {"autoconfig"},  # autoconfig: a recipe chosen from the data
    {"checkpoint", "features", "card", "report", "loading", "fast"},  # fast: predict with a run's ONNX model, without torch
    {"predict"},
    {"explain"},  # Grad-CAM / integrated gradients for a loaded predictor; the report's explained errors
    # image-text retrieval: a dual encoder's own recipe, trainer (reading the feature cache), run
    # directory, index and search; load() and the service dispatch to it
    {"retrieval"},
    {"trainer", "export", "serving"},  # serving: the HTTP service and batch prediction
    {"demo", "tune", "selection"},  # tune: trials are training runs; selection scores backbones from features computed like the trainer's
    {"cli", "__init__"},  # the public surface: finetunekit.train / load / evaluate / Recipe
    {"__main__"},
]
# the lifecycle packages group modules without being layers themselves: a module inside one is its own unit
GROUPS = ['choose', 'core', 'run', 'use']
RANK = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def _unit(path: Path) -> str:
    """The layer unit of a source file: its top-level module or package under finetunekit/."""
    rel = path.relative_to(SRC)
    if rel.parts[0] in GROUPS and len(rel.parts) > 1:
        rel = Path(*rel.parts[1:])
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _is_module(parts: list[str]) -> bool:
    return (SRC.joinpath(*parts) / "__init__.py").is_file() or SRC.joinpath(*parts[:-1], f"{parts[-1]}.py").is_file()


def _imported_units(path: Path) -> set[tuple[str, int]]:
    """(unit, line) for every finetunekit import in ``path``, relative or absolute, wherever it is."""
    rel = path.relative_to(SRC)
    package = list(rel.parts[:-1])  # the package the file is in, relative to finetunekit/
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[list[str]] = []
        if isinstance(node, ast.Import):
            targets = [a.name.split(".")[1:] for a in node.names if a.name.split(".")[0] == "finetunekit"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                module = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "finetunekit":
                module = node.module.split(".")[1:]
            else:
                continue
            # ``from . import x`` imports the module x when there is one, else a name of the package
            targets = [module + [a.name] if _is_module(module + [a.name]) else module for a in node.names]
        for target in targets:
            if target and target[0] in GROUPS:
                target = target[1:]
            found.add((target[0] if target else "__init__", node.lineno))
    return found


def _edges() -> list[tuple[str, str, str]]:
    """(importer unit, imported unit, "file:line") across units."""
    edges = []
    for path in sorted(SRC.rglob("*.py")):
        unit = _unit(path)
        if unit == "__init__" and path.parent != SRC:
            continue
        for imported, line in _imported_units(path):
            if imported != unit:
                edges.append((unit, imported, f"{path.relative_to(SRC.parent)}:{line}"))
    return edges


def test_every_module_has_a_layer():
    units = {_unit(p) for p in SRC.rglob("*.py")} | {_unit(p) for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists() and p.name not in GROUPS}
    missing = sorted(units - RANK.keys())
    assert not missing, f"give these modules a layer in tests/test_layering.py LAYERS: {missing}"


def test_imports_only_go_down():
    upward = [
        f"{where}: {importer} (layer {RANK[importer]}) imports {imported} (layer {RANK[imported]})"
        for importer, imported, where in _edges()
        if importer in RANK and imported in RANK and RANK[imported] >= RANK[importer]
    ]
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph: dict[str, set[str]] = {}
    for importer, imported, _ in _edges():
        graph.setdefault(importer, set()).add(imported)
    # depth-first search for a back edge; report the cycle it closes
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_the_check_sees_lazy_and_relative_imports():
    # the two circles this layering broke were lazy imports inside functions; the walk must see them
    edges = {(a, b) for a, b, _ in _edges()}
    assert ("trainer", "runtime") in edges and ("loading", "model") in edges
    assert ("backbones", "artifacts") in edges  # from ..artifacts import ... inside a function

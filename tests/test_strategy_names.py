"""Outside ``strategies/`` no code compares a strategy by name: what differs between strategies is a
method or a declared property of the strategy (``Strategy.sets_linear_head``, ``Strategy.supports_layer_decay``,
``Strategy.restore``, ...), so a new strategy is one module, not a hunt for ``== "lora"``.

The check walks the syntax tree of every module (like tests/test_layering.py) and finds comparisons
(``==``, ``!=``, ``in``, ``not in``, ``match`` cases) of anything with a registered strategy's name.
Choosing a strategy (``{"name": "linear_probe"}``) and tables keyed by strategy name are not
comparisons and are allowed.
"""

from __future__ import annotations

import ast
from pathlib import Path

from finetunekit.strategies import STRATEGIES

SRC = Path(__file__).resolve().parents[1] / "src" / "finetunekit"

# Documented exceptions, as "path relative to src/finetunekit: the name compared" -> why.
ALLOWED: dict[str, str] = {}


def _names_in(node: ast.AST, names: set[str]) -> set[str]:
    """Strategy names that ``node`` is, or holds as a literal tuple, list or set."""
    if isinstance(node, ast.Constant) and node.value in names:
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return {e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in names}
    return set()


def name_comparisons(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, name) of each comparison with a strategy name in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and all(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops):
            for operand in (node.left, *node.comparators):
                found += [(node.lineno, name) for name in _names_in(operand, names)]
        elif isinstance(node, ast.MatchValue):
            found += [(node.lineno, name) for name in _names_in(node.value, names)]
    return found


def test_no_code_outside_strategies_compares_a_strategy_by_name():
    names = set(STRATEGIES.names())
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("strategies/"):
            continue
        for line, name in name_comparisons(path.read_text(encoding="utf-8"), names):
            if f"{rel}: {name}" not in ALLOWED:
                found.append(f"{rel}:{line}: compares with strategy name {name!r}")
    assert not found, ("ask the strategy (a method or a declared property of finetunekit.strategies.Strategy) "
                       "instead of comparing its name:\n" + "\n".join(found))


def test_the_check_sees_comparisons():
    names = {"lora", "prototype", "setfit"}
    source = (
        'if spec.name == "lora": pass\n'
        'if s.name in ("prototype", "setfit"): pass\n'
        'if "lora" != name: pass\n'
        'match spec.name:\n    case "lora": pass\n'
        'choice = {"name": "lora"}\n'  # choosing a strategy is not comparing
        'rate = TABLE["lora"]\n'
    )
    assert sorted(name_comparisons(source, names)) == [(1, "lora"), (2, "prototype"), (2, "setfit"), (3, "lora"), (5, "lora")]

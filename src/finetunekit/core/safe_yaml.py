"""YAML for recipes: ``yaml.safe_load`` with the limits a careless or hostile file cannot get past.

* a repeated key is refused, naming the key and both lines (plain YAML keeps the last value);
* the file is at most :data:`MAX_BYTES`, nested at most :data:`MAX_DEPTH` levels, and expands to at
  most :data:`MAX_VALUES` values when every alias is counted as the copy it stands for (an alias
  bomb, ``a: &a [x, x]  b: &b [*a, *a] ...``, is a few hundred bytes that expand to more values than
  memory holds); a recursive alias is refused;
* text that is not UTF-8 is reported with its line and column.

Example::

    raw = load_yaml(Path("recipe.yaml").read_bytes(), "recipe.yaml")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import RecipeError, os_reason, shown, utf8_position

MAX_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_VALUES = 100_000
_MERGE = "tag:yaml.org,2002:merge"


class _NotYaml(RecipeError):
    """The text is not valid YAML (``--set`` values then stay strings)."""


class _Loader(yaml.SafeLoader):
    """SafeLoader whose composer counts its nesting (the composer recurses once per level)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise RecipeError(f"nested more than {MAX_DEPTH} levels deep at line {mark.line + 1}")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def read_yaml_file(path: Path) -> Any:
    """The recipe in ``path`` (see :func:`load_yaml`); reads at most MAX_BYTES + 1 bytes."""
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the recipe ({os_reason(exc)})") from None
    if len(data) > MAX_BYTES:
        raise RecipeError(f"{path}: {path.stat().st_size:,} bytes; a recipe is limited to {MAX_BYTES:,} bytes")
    return load_yaml(data, str(path))


def parse_override_value(value: str, where: str) -> Any:
    """A ``--set`` value read as YAML (``3e-4``, ``[a, b]``, ``null``), the same limits applying;
    text that is not valid YAML is taken as the string it is."""
    try:
        return load_yaml(value, where)
    except _NotYaml:
        return value


def load_yaml(source: bytes | str, where: str) -> Any:
    """The YAML document in ``source``, checked as the module doc says; errors are RecipeErrors
    prefixed with ``where`` (a file name, or ``override 'x=y'``)."""
    data = source.encode("utf-8") if isinstance(source, str) else source
    if len(data) > MAX_BYTES:
        raise RecipeError(f"{where}: {len(data):,} bytes; a recipe is limited to {MAX_BYTES:,} bytes")
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark (Windows editors write one) is not a key
    except UnicodeDecodeError:
        raise RecipeError(f"{where}: not UTF-8 text at {utf8_position(data)}") from None
    loader = None
    try:
        loader = _Loader(text)  # checks that every character is printable
        node = loader.get_single_node()
        if node is None:
            return None
        _check(node, "", set(), {})
        return loader.construct_document(node)
    except RecipeError as exc:
        raise RecipeError(f"{where}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise _NotYaml(f"{where}: not valid YAML{at}: {_clip(str(getattr(exc, 'problem', None) or exc))}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _check(node: Node, path: str, active: set[int], sizes: dict[int, int]) -> int:
    """The number of values ``node`` expands to (aliases counted each time they are used);
    raises on a repeated key, a recursive alias or more than MAX_VALUES values. Each node is
    visited once (``sizes`` remembers shared ones), so the check costs the size of the file."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in active:
        raise RecipeError(f"a recursive alias at line {node.start_mark.line + 1} (a value that contains itself)")
    active.add(id(node))
    total = 1
    if isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            total += _check(item, f"{path}[{i}]", active, sizes)
    elif isinstance(node, MappingNode):
        seen: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            name = f"{path}.{key.value}" if path else key.value if isinstance(key, ScalarNode) else f"{path}.?"
            if isinstance(key, ScalarNode) and key.tag != _MERGE:
                line = key.start_mark.line + 1
                if (key.tag, key.value) in seen:
                    lines = f"lines {seen[key.tag, key.value]} and {line}" if seen[key.tag, key.value] != line else f"line {line}"
                    raise RecipeError(f"key {shown(name, 120)} is given twice, at {lines}; keep one")
                seen[key.tag, key.value] = line
            total += _check(key, path, active, sizes) + _check(value, name, active, sizes)
    active.discard(id(node))
    if total > MAX_VALUES:
        raise RecipeError(
            f"expands to more than {MAX_VALUES:,} values (aliases counted each time they are used, at line "
            f"{node.start_mark.line + 1}); a recipe is limited to {MAX_VALUES:,}"
        )
    sizes[id(node)] = total
    return total



def _clip(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""Label cells as text, one spelling per value.

A JSON Lines column can hold the same label as ``0``, ``"0"`` and ``0.0``; read as ``str(cell)``
they would become the classes ``0`` and ``0.0``, and a model would be trained on a split class
without a word. JSON numbers and booleans are therefore written the one way a person would write
them (``0.0`` -> ``0``, ``true``), and the reader reports which spellings it merged. Text cells that
still name one number several ways (``1`` and ``1.0`` in a CSV) are refused by the label map
(finetunekit.tasks.classification.number_spellings).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any


def label_text(cell: Any) -> Any:
    """The label's text: JSON numbers and booleans in their plain spelling; other cells unchanged."""
    if isinstance(cell, bool):
        return "true" if cell else "false"
    if isinstance(cell, int):
        return str(cell)
    if isinstance(cell, float) and math.isfinite(cell):
        return str(int(cell)) if cell.is_integer() else repr(cell)
    return cell


class SpellingLog:
    """Collects how each label was written, to say which spellings became one label."""

    def __init__(self) -> None:
        self.seen: dict[str, set[str]] = defaultdict(set)

    def add(self, cell: Any, text: str) -> None:
        if isinstance(cell, (bool, int, float, str)):
            self.seen[text].add(json.dumps(cell))

    def note(self, where: str, column: str) -> str | None:
        merged = {text: sorted(ways) for text, ways in self.seen.items() if len(ways) > 1}
        if not merged:
            return None
        shown = "; ".join(f"{', '.join(ways)} as {text!r}" for text, ways in sorted(merged.items())[:5])
        return f"{where}: column {column!r} writes a label several ways; read {shown}"

"""Label maps: class names <-> indices, saved as labels.json in the run directory."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import DataError


def _sort_key(label: str) -> tuple[int, float | str]:
    # Integer-looking labels sort numerically so that label "2" gets index 2 in 0..N-1 datasets.
    try:
        return (0, float(label))
    except ValueError:
        return (1, label)


@dataclass(frozen=True)
class LabelMap:
    classes: tuple[str, ...]

    @classmethod
    def from_labels(cls, labels: Iterable[str], where: str = "training data") -> LabelMap:
        """The classes of ``labels``; refuses one number written several ways ('1' and '1.0'),
        which would otherwise split one class in two."""
        from .label_values import number_spellings

        found = set(labels)
        clash = number_spellings(list(found))
        if clash:
            raise DataError(
                f"{where}: labels {', '.join(map(repr, clash))} are one value written {len(clash)} ways; "
                "write each class one way"
            )
        return cls(tuple(sorted(found, key=_sort_key)))

    def __len__(self) -> int:
        return len(self.classes)

    def encode(self, labels: Sequence[str], where: str = "data") -> list[int]:
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = sorted({lab for lab in labels if lab not in index}, key=_sort_key)
        if unknown:
            shown = ", ".join(map(repr, unknown[:5])) + (" ..." if len(unknown) > 5 else "")
            raise DataError(f"{where}: labels {shown} do not occur in the training data (classes: {', '.join(self.classes)})")
        return [index[lab] for lab in labels]

    def decode(self, indices: Iterable[int]) -> list[str]:
        return [self.classes[i] for i in indices]

    def to_json(self) -> dict:
        return {"classes": list(self.classes)}

    @classmethod
    def from_json(cls, raw: dict) -> LabelMap:
        return cls(tuple(str(c) for c in raw["classes"]))

"""Modalities: what an input is, one module per kind (image, text), found by name.

A modality owns finding examples in folders and tables, preprocessing and collation, checking
predict's inputs, what an HTTP request carries, its explanation method, how the report and the card
show an input, its training defaults and search space, and its export formats (see
:class:`~finetunekit.modalities.base.Modality`). Adding one is a module here that registers itself,
plus its import below.

Example::

    from finetunekit.modalities import MODALITIES, modality_of, read_examples
    MODALITIES.names()                          # ['image', 'text']
    modality_of("text").request_field           # 'texts'
    read_examples("photos/train", "image").labels[:2]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.memory import held, hf_table, is_hf, is_memory, is_token, memory_table
from ..data.readers import RECIPE_COLUMN_OPTIONS, Examples
from ..core.errors import DataError
from ..core.registry import Registry

MODALITIES: Registry = Registry("modality")

from .base import InputSchema, Modality  # noqa: E402
from . import audio, image, image_text, text  # noqa: E402, F401  (registers the modalities)

__all__ = ["MODALITIES", "InputSchema", "Modality", "build_dataset", "detect", "modality_of", "read_examples"]

_INSTANCES: dict[str, Modality] = {}


def modality_of(name: str | Modality) -> Modality:
    """The registered modality called ``name`` (a run's, a backbone's or an Examples' modality)."""
    if isinstance(name, Modality):
        return name
    if name not in _INSTANCES:
        _INSTANCES[name] = MODALITIES.get(name)()
    return _INSTANCES[name]


def detect(path: Path) -> str:
    """The modality whose data sits at ``path``: a folder of images, a table, an image file..."""
    for name in MODALITIES.names():
        if modality_of(name).claims(path):
            return name
    raise DataError(f"{path}: not an image folder nor a .csv/.tsv/.jsonl/.txt/.parquet file")


def read_examples(
    path: Any,
    modality: str | Modality,
    text_column: str | None = None,
    label_column: str | list[str] = "label",
    require_labels: bool = True,
    text_columns: list[str] | None = None,
    image_column: str | None = None,
    options: tuple[str, str] = RECIPE_COLUMN_OPTIONS,
    image_root: str | Path | None = None,
) -> Examples:
    """Read a labelled data set for ``modality``: an ImageFolder-style directory, a table of image
    files (relative to ``image_root``, default the table's folder), or a table of texts
    (``text_columns``: two columns read as sentence pairs). ``label_column``: one column, or a list
    (a tuple of cells per row). ``options`` name the settings of the text and label columns in
    error messages. ``path`` may also be a DataFrame, a pyarrow Table, a ``datasets.Dataset``, or
    the token of one held by ``finetunekit.data.memory.holding`` (read as a table: see that module)."""
    kind = modality_of(modality)
    found: Any = None
    if is_memory(path) or is_token(path) or is_hf(path):  # a DataFrame, Arrow table or datasets.Dataset, read as a table
        path, found = held(path) if is_token(path) else hf_table(path) if is_hf(path) else memory_table(path), kind.name
    else:
        path = Path(path)
        if not path.exists():
            raise DataError(f"data path not found: {path}")
    return kind.find_examples(
        path, found or detect(path), text_column=text_column, label_column=label_column, require_labels=require_labels,
        text_columns=text_columns, image_column=image_column, options=options, image_root=image_root,
    )


def build_dataset(examples: Examples, label_ids: Any, backbone: Any, preprocessing: dict, train: bool, augment: str,
                  max_length: int, task: Any = None, crop_scale: float = 0.25) -> Any:
    """The examples as a Dataset, made by the backbone's modality (see ``Modality.build_dataset``)."""
    return modality_of(backbone.modality).build_dataset(examples, label_ids, backbone, preprocessing, train, augment, max_length,
                                                        task, crop_scale)

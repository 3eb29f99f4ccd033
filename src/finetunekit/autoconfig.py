"""Zero-config runs: ``finetunekit train DATA_PATH`` with no recipe.

The data path alone decides the recipe: an image folder (class sub-folders, with train/ and val/
when present) or a table of image files is image classification with the bundled EfficientNet-Lite0,
a table of texts (.csv/.tsv/.jsonl/.parquet) text classification with the bundled MiniLM-L6; the
label column and the text (or pair, or image file) columns are recognised by name. The strategy and
the number of epochs follow from the amount of training data per class, by rules measured with
benchmarks/zero_config.py (docs/automation.md). Every choice is returned with its reason::

    inferred = infer_recipe("photos/")
    print("\\n".join(inferred.reasons))
    train(inferred.recipe, output="runs/photos")
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .data.readers import IMAGE_EXTENSIONS, detect_modality, is_table
from .errors import DataError
from .recipe import Recipe

# Epochs: enough for about TARGET_STEPS optimizer steps at the default batch size, within
# [MIN_EPOCHS, MAX_EPOCHS]. A 5-epoch default gives 16 images 5 steps, far too few; the linear
# probe's epochs on cached features cost milliseconds, so small sets can afford many.
TARGET_STEPS = 100
MIN_EPOCHS, MAX_EPOCHS = 5, 50
BATCH_SIZE = 16

LABEL_GUESSES = ("label", "labels", "class", "category", "target", "sentiment", "y")
PAIR_GUESSES = (("sentence1", "sentence2"), ("question", "sentence"), ("premise", "hypothesis"), ("text_a", "text_b"))
BACKBONES = {"image": "bundled:efficientnet_lite0", "text": "bundled:minilm_l6"}


def epochs_for(n_train: int, batch_size: int = BATCH_SIZE, target_steps: int = TARGET_STEPS) -> int:
    """Epochs that give about ``target_steps`` optimizer steps, within [MIN_EPOCHS, MAX_EPOCHS]."""
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    return max(MIN_EPOCHS, min(MAX_EPOCHS, math.ceil(target_steps / steps_per_epoch)))


@dataclass
class Inferred:
    recipe: Recipe
    reasons: list[str]  # one line per choice, printed before training


def infer_recipe(path: str | Path) -> Inferred:
    """A full recipe for the data at ``path``, and why each field was chosen."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path not found: {path}")
    modality = detect_modality(path)
    data: dict = {"train": str(path)}
    reasons: list[str] = []
    if is_table(path):
        columns = _columns(path)
        label = next((c for c in LABEL_GUESSES if c in columns), None)
        if label is None:
            raise DataError(f"{path}: no label column found among {', '.join(columns)} (looked for {', '.join(LABEL_GUESSES)}); "
                            "write a recipe with data.label_column")
        data["label_column"] = label
        image_column = _image_column(path, columns, label)
        if image_column is not None:
            modality = "image"
            data["image_column"] = image_column
            reasons.append(f"modality: image (column {image_column!r} holds image files), labels in column {label!r}")
        else:
            pair = next((p for p in PAIR_GUESSES if all(c in columns for c in p)), None)
            if pair:
                data["text_columns"] = list(pair)
                reasons.append(f"modality: text pairs (columns {pair[0]!r} and {pair[1]!r}), labels in column {label!r}")
            else:
                reasons.append(f"modality: text (a {path.suffix} table), labels in column {label!r}")
    else:
        layout = "train/ and val/ sub-folders" if (path / "train").is_dir() else "class sub-folders"
        reasons.append(f"modality: image (a folder with {layout})")
    recipe = Recipe.from_dict({"model": {"backbone": BACKBONES[modality]}, "data": data})
    examples = _training_examples(recipe, modality)
    counts = Counter(examples.labels or [])
    if len(counts) < 2:
        raise DataError(f"{path}: needs at least two classes to train a classifier, found {len(counts)}")
    smallest = min(counts.values())
    reasons.append(f"task: single-label classification, {len(counts)} classes, {len(examples)} training examples "
                   f"({smallest} to {max(counts.values())} per class)")
    reasons.append(f"backbone: {BACKBONES[modality]} (bundled, no download)")
    strategy, why = _strategy(modality, smallest)
    reasons.append(f"strategy: {strategy} ({why})")
    train: dict = {"batch_size": BATCH_SIZE}
    if modality == "image":
        train["epochs"] = epochs = epochs_for(len(examples))
        reasons.append(
            f"epochs: {epochs} (about {TARGET_STEPS} optimizer steps at batch {BATCH_SIZE}: "
            f"{math.ceil(len(examples) / BATCH_SIZE)} steps per epoch, within {MIN_EPOCHS}..{MAX_EPOCHS})"
        )
    else:
        reasons.append("epochs: 3 (the text default, measured on SST-2 with 2,000 rows; not measured by size)")
    recipe = recipe.replace(strategy={"name": strategy}, train=train)
    return Inferred(recipe, reasons)


def _strategy(modality: str, per_class: int) -> tuple[str, str]:
    if modality == "image":
        return "linear_probe", (
            f"{per_class} images in the smallest class; on ants/bees the linear probe did at least as well as full "
            "fine-tuning at 8 and 32 images per class (benchmarks/zero_config.py) and at all 124 (docs/strategies.md)"
        )
    return "full", "the text default, chosen on SST-2 with 2,000 rows (docs/strategies.md); not measured by size"


def _columns(path: Path) -> list[str]:
    from .data.readers import _table

    return _table(path)[1]


def _image_column(path: Path, columns: list[str], label: str) -> str | None:
    """The column whose first row names an image file, if any."""
    from .data.readers import _table

    first = _table(path)[0][0][1]
    return next((c for c in columns if c != label and Path(str(first.get(c, "")).strip()).suffix.lower() in IMAGE_EXTENSIONS), None)


def _training_examples(recipe: Recipe, modality: str):
    from .data import resolve_splits

    d = recipe.data
    train, _ = resolve_splits(
        d.train, d.val, modality, d.val_fraction, recipe.train.seed, d.text_column, d.label_column, d.text_columns, d.image_column
    )
    return train


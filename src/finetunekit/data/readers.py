"""Readers turn a path into Examples: inputs (image paths or texts) and their string labels."""

from __future__ import annotations

import csv
import json
import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
TEXT_EXTENSIONS = {".csv", ".tsv", ".jsonl", ".txt"}
TEXT_COLUMN_GUESSES = ("text", "sentence", "sentence1", "review", "content", "question", "document")


@dataclass
class Examples:
    inputs: list[str]
    labels: list[str] | None
    source: str
    modality: str
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.inputs)

    def subset(self, indices: list[int], source: str | None = None) -> Examples:
        return Examples(
            [self.inputs[i] for i in indices],
            None if self.labels is None else [self.labels[i] for i in indices],
            source or self.source,
            self.modality,
        )


def detect_modality(path: Path) -> str:
    if path.is_dir():
        return "image"
    if path.suffix.lower() in TEXT_EXTENSIONS:
        return "text"
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return "image"
    raise DataError(f"{path}: not an image folder nor a .csv/.tsv/.jsonl/.txt file")


def read_examples(
    path: str | Path,
    modality: str,
    text_column: str | None = None,
    label_column: str = "label",
    require_labels: bool = True,
) -> Examples:
    """Read a labelled data set (an ImageFolder-style directory, or a text table)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path not found: {path}")
    found = detect_modality(path)
    if found != modality:
        raise DataError(f"{path}: is {found} data, but the model's backbone takes {modality}")
    if modality == "image":
        return _read_image_folder(path)
    return _read_text_table(path, text_column, label_column, require_labels)


def _read_image_folder(root: Path) -> Examples:
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders (expected {root}/<class name>/<image files>)")
    inputs: list[str] = []
    labels: list[str] = []
    for folder in classes:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        others = [p for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
        if others:
            shown = ", ".join(str(p) for p in others[:3]) + (" ..." if len(others) > 3 else "")
            raise DataError(f"{folder}: {len(others)} non-image file(s) among the images: {shown}")
        images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
        if not images:
            raise DataError(f"{folder}: class folder {folder.name!r} has no images")
        inputs.extend(str(p) for p in images)
        labels.extend([folder.name] * len(images))
    return Examples(inputs, labels, str(root), "image")


def _image_problem(path: str) -> str | None:
    """Why ``path`` cannot be used as an image, or None. PIL's ``verify`` checks the header (and for
    PNG every chunk's checksum) without decoding; JPEG has no checksums, so it is decoded at 1/8
    scale, which still reads the whole stream and so catches truncation."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
            else:
                image.verify()
    except UnidentifiedImageError:
        return "not an image PIL can read"
    except (OSError, SyntaxError, ValueError) as exc:
        return str(exc) or type(exc).__name__
    return None


def check_images(examples: Examples, policy: str = "fail") -> Examples:
    """Check every image file before training (see :func:`_image_problem`).

    ``policy="fail"`` raises one error listing the unreadable files; ``"skip"`` drops them and
    records the count in ``notes`` (a class left without images is still an error).
    """
    bad = [(i, path, why) for i, path in enumerate(examples.inputs) if (why := _image_problem(path))]
    if not bad:
        return examples
    shown = "; ".join(f"{path} ({why})" for _, path, why in bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
    if policy == "fail":
        raise DataError(f"{examples.source}: {len(bad)} unreadable image file(s): {shown}; remove them or set data.bad_images=skip")
    dropped = {i for i, _, _ in bad}
    kept = examples.subset([i for i in range(len(examples)) if i not in dropped])
    emptied = sorted(set(examples.labels or []) - set(kept.labels or []))
    if emptied:
        raise DataError(f"{examples.source}: class {emptied[0]!r} has no readable images (skipped: {shown})")
    kept.notes = [*examples.notes, f"skipped {len(bad)} unreadable image file(s): {shown}"]
    return kept


def _read_text_table(path: Path, text_column: str | None, label_column: str, require_labels: bool) -> Examples:
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    rows = list(_iter_rows(path))
    if not rows:
        raise DataError(f"{path}: no data rows")
    columns = list(rows[0][1].keys())
    if text_column is None:
        text_column = next((c for c in TEXT_COLUMN_GUESSES if c in columns), None)
        if text_column is None:
            text_column = next((c for c in columns if c != label_column), None)
    if text_column not in columns:
        raise DataError(f"{path}: no text column {text_column!r} (columns: {', '.join(columns)}); set data.text_column")
    has_labels = label_column in columns
    if require_labels and not has_labels:
        raise DataError(f"{path}: no label column {label_column!r} (columns: {', '.join(columns)}); set data.label_column")
    inputs: list[str] = []
    labels: list[str] = []
    for line, row in rows:
        text = row.get(text_column)
        if text is None or (isinstance(text, float) and math.isnan(text)) or not str(text).strip():
            raise DataError(f"{path}:{line}: empty text in column {text_column!r}")
        inputs.append(str(text).strip())
        if has_labels:
            label = row.get(label_column)
            if label is None or (isinstance(label, float) and math.isnan(label)) or str(label).strip() == "":
                raise DataError(f"{path}:{line}: missing label in column {label_column!r}")
            labels.append(str(label).strip())
    return Examples(inputs, labels if has_labels else None, str(path), "text")


def _iter_rows(path: Path):
    """Yield (line number, row dict) for CSV, TSV or JSONL files."""
    suffix = path.suffix.lower()
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            if suffix == ".jsonl":
                for number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
                    if not isinstance(row, dict):
                        raise DataError(f"{path}:{number}: expected a JSON object per line")
                    yield number, row
                return
            # TSV files like GLUE's contain bare quotes inside sentences: no quoting for tabs.
            if suffix in (".tsv", ".txt"):
                reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            else:
                reader = csv.DictReader(handle)
            if not reader.fieldnames:
                raise DataError(f"{path}: no header row")
            for row in reader:
                if None in row:
                    raise DataError(f"{path}:{reader.line_num}: more fields than the header's {len(reader.fieldnames)}")
                if all(v is None or not str(v).strip() for v in row.values()):
                    continue
                yield reader.line_num, row
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def stratified_split(labels: list[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split keeping each class's share; every class keeps at least one training example."""
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(by_class):
        items = by_class[label]
        rng.shuffle(items)
        n_val = min(len(items) - 1, round(len(items) * fraction))
        val.extend(items[:n_val])
        train.extend(items[n_val:])
    return sorted(train), sorted(val)


def resolve_splits(
    train_path: str,
    val_path: str | None,
    modality: str,
    val_fraction: float,
    seed: int,
    text_column: str | None = None,
    label_column: str = "label",
) -> tuple[Examples, Examples]:
    """(train, val) examples: an explicit val set, an image root's train/ and val/, or a seeded split."""
    root = Path(train_path)
    if val_path is None and modality == "image" and (root / "train").is_dir():
        for name in ("val", "valid", "validation", "test"):
            if (root / name).is_dir():
                train_path, val_path = str(root / "train"), str(root / name)
                break
    train = read_examples(train_path, modality, text_column, label_column)
    if val_path is not None:
        val = read_examples(val_path, modality, text_column, label_column)
    else:
        train_idx, val_idx = stratified_split(train.labels or [], val_fraction, seed)
        if not val_idx:
            raise DataError(f"{train_path}: too few examples to hold out a validation split; give data.val")
        train, val = (
            train.subset(train_idx, f"{train.source} (train split)"),
            train.subset(val_idx, f"{train.source} ({val_fraction:.0%} held out, seed {seed})"),
        )
    classes = set(train.labels or [])
    if len(classes) < 2:
        raise DataError(f"{train.source}: only one class ({', '.join(classes) or 'none'}); classification needs at least two")
    return train, val

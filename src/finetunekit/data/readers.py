"""Readers turn a path into Examples: inputs (image paths, texts or sentence pairs) and their raw
label cells (strings, "" when empty; a JSON list stays a list; several label columns give a tuple
per row). The task (finetunekit.tasks) encodes them and decides which cells are valid.

Images come from class folders (``root/<class>/<image>``) or from a table; texts from a table.
A table is a .csv, .tsv (or .txt), .jsonl or .parquet file with a header; Parquet is read through
pyarrow (imported only for Parquet files). In an image table a file column names each image,
relative to the table's folder (absolute paths are kept).

Example::

    _read_text_table(Path("train.tsv"), None, "label", True, ["sentence1", "sentence2"]).inputs[0]
    # ('A man is playing a guitar.', 'Someone plays an instrument.')

Which reader a path gets, and the column guesses, belong to its modality (finetunekit.modalities:
``read_examples(path, "image")``).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import DataError, did_you_mean, utf8_position
from .label_values import SpellingLog, label_text
from .tables import check_header, check_label_kinds, csv_rows, json_object

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
TABLE_EXTENSIONS = {".csv", ".tsv", ".jsonl", ".txt", ".parquet"}
TEXT_EXTENSIONS = TABLE_EXTENSIONS  # texts come in tables
# The columns tried, in order, when none is named: the one list each, which the modalities
# (Modality.column_guesses) and the tasks' own image tables use, training and batch predict alike.
TEXT_COLUMN_GUESSES = ("text", "sentence", "sentence1", "review", "content", "question", "document")
IMAGE_COLUMN_GUESSES = ("file", "image", "path", "filename", "file_name", "image_path", "filepath")
# How the user sets the text and label columns, named in error messages: recipe fields when
# training, command-line flags for evaluate and predict.
RECIPE_COLUMN_OPTIONS = ("data.text_column", "data.label_column")
FLAG_COLUMN_OPTIONS = ("--text-column", "--label-column")

# An input: an image path, a text, or a sentence pair (first, second).
Input = str | tuple[str, str]


@dataclass
class Examples:
    inputs: list[Input]
    labels: list[Any] | None  # raw cells: str, a list of str (JSON lists), a tuple (several columns)
    source: str
    modality: str
    notes: list[str] = field(default_factory=list)
    places: list[str] | None = None  # each table row's "file:line" (error messages)
    label_columns: list[str] | None = None  # the label column(s) read, for tables

    def __len__(self) -> int:
        return len(self.inputs)

    def subset(self, indices: list[int], source: str | None = None) -> Examples:
        return Examples(
            [self.inputs[i] for i in indices],
            None if self.labels is None else [self.labels[i] for i in indices],
            source or self.source,
            self.modality,
            list(self.notes),
            places=None if self.places is None else [self.places[i] for i in indices],
            label_columns=self.label_columns,
        )

    def where(self, i: int, column: str | None = None) -> str:
        """Example ``i`` in an error message: its table row (and the column), or its file."""
        place = self.places[i] if self.places is not None else str(self.inputs[i])
        return f"{place}: column {column!r}" if column else place


def is_table(path: Path) -> bool:
    """A table file, or an in-memory table (``finetunekit.data.memory.MemoryTable``)."""
    return hasattr(path, "table_rows") or (path.is_file() and path.suffix.lower() in TABLE_EXTENSIONS)


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


# files found readable in this process, by (path, size, mtime, pixel bound): several runs in one
# process (the trials of `finetunekit tune`) check the same images once; a changed file is checked again
_READABLE: set[tuple[str, int, int, int | None]] = set()


def _image_problem(path: str, max_pixels: int | None = None) -> str | None:
    """Why ``path`` cannot be used as an image, or None (remembered while the file is unchanged)."""
    try:
        stat = os.stat(path)
    except OSError as exc:
        return str(exc)
    key = (path, stat.st_size, stat.st_mtime_ns, max_pixels)
    if key in _READABLE:
        return None
    problem = _read_problem(path, max_pixels)
    if problem is None:
        _READABLE.add(key)
    return problem


def _read_problem(path: str, max_pixels: int | None) -> str | None:
    """PIL's ``verify`` checks the header (and for PNG every chunk's checksum) without decoding;
    JPEG has no checksums, so it is decoded at 1/8 scale, which still reads the whole stream and so
    catches truncation. An image of more than ``max_pixels`` pixels is refused from its header (see
    finetunekit.data.images)."""
    from PIL import UnidentifiedImageError

    from .images import ImageTooLarge, open_bounded

    try:
        with open_bounded(path, max_pixels) as image:
            if image.format == "JPEG":
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
            else:
                image.verify()
    except ImageTooLarge as exc:
        return exc.reason
    except UnidentifiedImageError:
        return "not an image PIL can read"
    except (OSError, SyntaxError, ValueError) as exc:
        return str(exc) or type(exc).__name__
    return None


def check_images(examples: Examples, policy: str = "fail", max_pixels: int | None = None) -> Examples:
    """Check every image file before training (see :func:`_image_problem`).

    ``policy="fail"`` raises one error listing the unreadable files; ``"skip"`` drops them and
    records the count in ``notes`` (a class left without images is still an error).
    """
    bad = [(i, path, why) for i, path in enumerate(examples.inputs) if (why := _image_problem(path, max_pixels))]
    if not bad:
        return examples
    shown = "; ".join(f"{path} ({why})" for _, path, why in bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
    if policy == "fail":
        raise DataError(f"{examples.source}: {len(bad)} unreadable image file(s): {shown}; remove them or set data.bad_images=skip")
    dropped = {i for i, _, _ in bad}
    kept = examples.subset([i for i in range(len(examples)) if i not in dropped])
    # class folders: a class left without images is an error (table rows carry any kind of target)
    emptied = [] if examples.places is not None else sorted(set(examples.labels or []) - set(kept.labels or []))
    if emptied:
        raise DataError(f"{examples.source}: class {emptied[0]!r} has no readable images (skipped: {shown})")
    kept.notes = [*examples.notes, f"skipped {len(bad)} unreadable image file(s): {shown}"]
    return kept


def _read_text_table(
    path: Path, text_column: str | None, label_column: str | list[str], require_labels: bool, text_columns: list[str] | None = None,
    options: tuple[str, str] = RECIPE_COLUMN_OPTIONS, guesses: tuple[str, ...] = (),
) -> Examples:
    """A table of texts (or, with ``text_columns``, sentence pairs); without a text column named,
    the first of ``guesses`` (the modality's) the table has, else its first non-label column."""
    rows, columns = _table(path)
    listed = ", ".join(map(_column_name, columns))
    if text_columns:
        for column in text_columns:
            if column not in columns:
                raise DataError(f"{path}: no pair column {column!r} (columns: {listed}); set data.text_columns")
        wanted = list(text_columns)
    else:
        if text_column is None:
            text_column = next((c for c in guesses if c in columns), None)
            if text_column is None:
                text_column = next((c for c in columns if c not in _columns(label_column)), None)
        if text_column not in columns:
            raise DataError(
                f"{path}: no text column {text_column!r}{did_you_mean(str(text_column), columns)} (columns: {listed}); set {options[0]}"
            )
        wanted = [text_column]
    has_labels = _check_label_column(path, columns, label_column, require_labels, options)
    both = [c for c in _columns(label_column) if c in wanted]
    if has_labels and both:
        setting = options[0] if len(wanted) == 1 else "data.text_columns"
        raise DataError(
            f"{path}: the text column and the label column are both {both[0]!r}: the model would read its own "
            f"label; set {setting} to the column holding the inputs"
        )
    spellings = SpellingLog()
    inputs: list[Input] = []
    labels: list[Any] = []
    places: list[str] = []
    for where, row in rows:
        places.append(where)
        texts = []
        for column in wanted:
            text = row.get(column)
            if _blank(text):
                raise DataError(f"{where}: empty text in column {column!r}")
            texts.append(str(text).strip())
        inputs.append(texts[0] if len(texts) == 1 else (texts[0], texts[1]))
        if has_labels:
            labels.append(_label(row, label_column, where))
            if isinstance(label_column, str):
                spellings.add(row.get(label_column), labels[-1])
    if has_labels:
        check_label_kinds(labels, places, _columns(label_column))  # one odd row never turns the task multi-label
    note = spellings.note(str(path), label_column) if isinstance(label_column, str) else None
    return Examples(inputs, labels if has_labels else None, str(path), "text", [note] if note else [],
                    places=places, label_columns=_columns(label_column))


def _column_name(name: str) -> str:
    """A column name as a message shows it: quoted, escapes visible, when it holds invisible characters."""
    return name if name.isprintable() and name == name.strip() else repr(name)


def _read_image_table(
    path: Path, image_column: str | None, label_column: str | list[str], require_labels: bool,
    options: tuple[str, str] = RECIPE_COLUMN_OPTIONS, image_root: str | Path | None = None, guesses: tuple[str, ...] = (),
) -> Examples:
    """A table with one image file per row; relative paths are relative to ``image_root``
    (data.image_root), by default the table's folder; the file column is the first of ``guesses``
    (the modality's) the table has unless named."""
    in_memory = hasattr(path, "table_rows")  # a DataFrame's relative paths: relative to the working directory
    base = Path(image_root) if image_root is not None else Path.cwd() if in_memory else path.parent
    relative_to = (f"data.image_root {base}" if image_root is not None else
                   f"the working directory {base}" if in_memory else "the table's folder")
    if image_root is not None and not base.is_dir():
        raise DataError(f"data.image_root: {base} is not a folder")
    rows, columns = _table(path)
    if image_column is None:
        image_column = next((c for c in guesses if c in columns), None)
        if image_column is None:
            image_column = next((c for c in columns if c not in _columns(label_column)), None)
            first = str(rows[0][1].get(image_column, "")).strip()
            if Path(first).suffix.lower() not in IMAGE_EXTENSIONS:  # a table of texts, not of image files
                raise DataError(f"{path}: is text data, but the model's backbone takes image")
    if image_column not in columns:
        raise DataError(f"{path}: no image file column {image_column!r} (columns: {', '.join(columns)}); set data.image_column")
    has_labels = _check_label_column(path, columns, label_column, require_labels, options)
    inputs: list[Input] = []
    labels: list[Any] = []
    places: list[str] = []
    for where, row in rows:
        places.append(where)
        name = row.get(image_column)
        if _blank(name):
            raise DataError(f"{where}: empty image path in column {image_column!r}")
        file = base / str(name).strip()
        if not file.is_file():
            raise DataError(f"{where}: image file not found: {file} (column {image_column!r}; paths are relative to {relative_to})")
        if file.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(f"{where}: {file} is not an image file ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        inputs.append(str(file))
        if has_labels:
            labels.append(_label(row, label_column, where))
    if has_labels:
        check_label_kinds(labels, places, _columns(label_column))
    return Examples(inputs, labels if has_labels else None, str(path), "image", places=places, label_columns=_columns(label_column))


def _table(path: Path) -> tuple[list[tuple[str, dict]], list[str]]:
    """(rows as (location, row dict), column names) of a non-empty table (or of an in-memory one)."""
    if hasattr(path, "table_rows"):
        return path.table_rows()
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    rows = list(_iter_rows(path))
    if not rows:
        raise DataError(f"{path}: no data rows")
    return rows, list(rows[0][1].keys())


def _columns(label_column: str | list[str]) -> list[str]:
    return [label_column] if isinstance(label_column, str) else list(label_column)


def _check_label_column(
    path: Path, columns: list[str], label_column: str | list[str], require_labels: bool, options: tuple[str, str] = RECIPE_COLUMN_OPTIONS
) -> bool:
    missing = [c for c in _columns(label_column) if c not in columns]
    if require_labels and missing:
        listed = ", ".join(map(_column_name, columns))
        raise DataError(
            f"{path}: no label column {missing[0]!r}{did_you_mean(missing[0], columns)} (columns: {listed}); set {options[1]}"
        )
    return not missing


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip()


def _label(row: dict, label_column: str | list[str], where: str) -> Any:
    """The row's label cell(s): a string ("" when empty: the task decides whether that is allowed),
    a JSON list as a list of strings (multi-label), a tuple of them for several columns."""
    cells = tuple(_cell(row.get(c)) for c in _columns(label_column))
    return cells[0] if isinstance(label_column, str) else cells


def _cell(label: Any) -> Any:
    if isinstance(label, dict):
        return label  # refused by check_label_kinds, naming the row
    if isinstance(label, list):
        return [str(label_text(x)).strip() for x in label]
    if hasattr(label, "tolist") and not isinstance(label, str):  # a list cell from Parquet (numpy array)
        return [str(label_text(x)).strip() for x in label.tolist()]
    label = label_text(label)  # JSON 0.0 and 0 are the label '0' (data.label_values)
    if label is None or (isinstance(label, float) and math.isnan(label)):
        return ""
    return str(label).strip()


def _iter_rows(path: Path):
    """Yield (location, row dict) for CSV, TSV, JSONL or Parquet files; the location names the
    file and the line (``train.csv:12``), or the data row for Parquet (``train.parquet: row 12``)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _parquet_rows(path)
        return
    try:
        # utf-8-sig: a byte-order mark (Excel writes one) is not part of the first column's name
        with path.open(encoding="utf-8-sig", newline="") as handle:
            if suffix == ".jsonl":
                for number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json_object(line, f"{path}:{number}")  # a key named twice is refused
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
                    if not isinstance(row, dict):
                        raise DataError(f"{path}:{number}: expected a JSON object per line")
                    yield f"{path}:{number}", row
                return
            # TSV files like GLUE's contain bare quotes inside sentences: no quoting for tabs.
            if suffix in (".tsv", ".txt"):
                yield from csv_rows(path, handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            else:
                yield from csv_rows(path, handle)  # strict: repeated columns, unclosed quotes, ragged rows
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text at {utf8_position(path.read_bytes())}") from None


def _parquet_rows(path: Path):
    """Rows of a Parquet file as dicts of Python values, through pyarrow (imported here only)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs the package 'pyarrow' (pip install pyarrow)") from None
    def unreadable(exc: Exception) -> DataError:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = first.split(f"{path}': ", 1)[-1][:200]  # pyarrow repeats the path: it is named once already
        return DataError(f"{path}: not a readable Parquet file ({first})")

    try:
        names = pq.read_schema(path).names
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for files it cannot read
        raise unreadable(exc) from None
    check_header(path, names, f"{path}: the schema")  # before pyarrow's own, obscure refusal
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise unreadable(exc) from None
    for number, row in enumerate(table.to_pylist(), start=1):
        if all(_blank(v) for v in row.values()):
            continue
        yield f"{path}: row {number}", row


def stratified_split(labels: list[Any], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split keeping each class's share; every class keeps at least one training example."""
    by_class: dict[Any, list[int]] = defaultdict(list)
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


def sample_per_class(labels: list[str], shots: int, seed: int) -> list[int]:
    """Indices of ``shots`` examples per class (all of a smaller class), drawn with ``seed``:
    each class's examples are shuffled by their own generator (seed and class name), so a class's
    draw does not depend on the other classes, and K draws are the first K of the K' > K draws."""
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    keep: list[int] = []
    for label in sorted(by_class):
        items = by_class[label][:]
        random.Random(f"{seed}:{label}").shuffle(items)
        keep.extend(items[:shots])
    return sorted(keep)


def resolve_splits(
    train_path: str,
    val_path: str | None,
    modality: Any,
    val_fraction: float,
    seed: int,
    text_column: str | None = None,
    label_column: str | list[str] = "label",
    text_columns: list[str] | None = None,
    image_column: str | None = None,
    strata: Callable[[Examples], list[Any] | None] | None = None,
    image_root: str | None = None,
    reader: Callable[[str], Examples] | None = None,
    lists: tuple[str | None, str | None] = (None, None),
) -> tuple[Examples, Examples]:
    """(train, val) examples: an explicit val set, an image root's train/ and val/, or a seeded split,
    stratified on the keys ``strata(train examples)`` gives (the task's choice, which may also reject
    bad label cells first; default: the label cells), or random when it gives None. ``reader``
    (a task's own formats, ``Task.reader()``) reads each path instead of the generic readers.
    ``lists``: text files naming the training and the validation images (:func:`select_listed`);
    with a validation list and no ``val_path``, both splits come from ``train_path``. ``modality``:
    the examples' (a ``finetunekit.modalities.Modality``), which reads each path and may find a
    data root split already (an image root's train/ and val/)."""
    if reader is None and val_path is None:
        train_path, val_path = modality.split_folders(Path(train_path)) or (train_path, val_path)
    columns = {"text_column": text_column, "label_column": label_column, "text_columns": text_columns, "image_column": image_column,
               "image_root": image_root}
    if reader is None:
        def reader(path: str) -> Examples:
            return modality.read(path, **columns)
    train = full = reader(train_path)
    train_list, val_list = lists
    if train_list:
        train = select_listed(full, train_list)
    if val_path is None and val_list:  # both splits listed out of one annotation file
        val = select_listed(full, val_list)
    elif val_path is not None:
        val = reader(val_path)
        if val_list:
            val = select_listed(val, val_list)
    else:
        keys = strata(train) if strata is not None else [str(x) for x in train.labels or []]
        if keys is None:
            train_idx, val_idx = random_split(len(train), val_fraction, seed)
        else:
            train_idx, val_idx = stratified_split(keys, val_fraction, seed)
        if not val_idx:
            raise DataError(f"{train_path}: too few examples to hold out a validation split; give data.val")
        train, val = (
            train.subset(train_idx, f"{train.source} (train split)"),
            train.subset(val_idx, f"{train.source} ({val_fraction:.0%} held out, seed {seed})"),
        )
    return train, val


def random_split(size: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded random split (targets with no classes to stratify on); at least one training row."""
    order = list(range(size))
    random.Random(seed).shuffle(order)
    n_val = min(size - 1, round(size * fraction))
    return sorted(order[n_val:]), sorted(order[:n_val])


def select_listed(examples: Examples, list_file: str | Path) -> Examples:
    """The examples whose image a text file names, one file name a line (data.train_list /
    data.val_list; Penn-Fudan's train.txt), in its order; a name the examples lack is an error."""
    list_file = Path(list_file)
    try:
        lines = list_file.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{list_file}: cannot read the image list ({exc.__class__.__name__}: {exc})") from None
    index: dict[str, int] = {}
    for i, path in enumerate(examples.inputs):
        p = Path(str(path))
        index.setdefault(p.name, i)
        index.setdefault(p.stem, i)
    keep: list[int] = []
    for number, line in enumerate(lines, start=1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        key = Path(name).name
        if key not in index and Path(name).stem not in index:
            raise DataError(f"{list_file}:{number}: image {name!r} is not in {examples.source}")
        i = index.get(key, index.get(Path(name).stem))
        if i not in keep:
            keep.append(i)  # type: ignore[arg-type]
    if not keep:
        raise DataError(f"{list_file}: names no image")
    return examples.subset(keep, f"{examples.source} ({list_file.name})")

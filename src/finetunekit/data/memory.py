"""Data held in memory: a pandas DataFrame, a pyarrow Table or a Hugging Face ``datasets.Dataset``
(or ``DatasetDict``) read as a table, through the same readers and checks as a file.

The one conversion point is :func:`memory_table`: it turns a container into a :class:`MemoryTable`,
rows of plain Python values that ``finetunekit.data.readers`` reads exactly as it reads the rows of
a CSV or Parquet file (the same column guesses, label cells, one-line errors), with each row named
by its index (``DataFrame train (memory:pandas:1f2e3d4c5b6a): row 7``) where a file names its line.

Conventions:

* text columns hold strings; sentence pairs are two columns (``data.text_columns``);
* an image column holds file paths (relative ones to ``data.image_root``, else the working
  directory), encoded image bytes, ``PIL.Image`` objects, or dicts ``{"bytes", "path"}`` as the
  ``datasets`` ``Image`` feature stores them; images given as bytes or pictures are written once,
  named by the SHA-256 of their bytes, under ``$FINETUNEKIT_CACHE_DIR/images`` (default
  ``~/.cache/finetunekit/images``), so the rest of the toolkit reads files as usual and a run's
  report and predictions can show them later;
* an audio column holds file paths (relative ones as for images), encoded audio bytes (WAV, FLAC,
  OGG Vorbis/Opus, MP3; told by their first bytes), dicts ``{"path", "bytes"}`` as the ``datasets``
  ``Audio`` feature stores them, or decoded clips ``{"array", "sampling_rate"}`` (a ``"path"`` key
  beside them is ignored): ``array`` holds float samples in [-1, 1], 1-D (mono) or 2-D (frames x
  channels, or channels x frames when it has at most 8 rows and more columns), mixed to mono when
  read. Clips given as bytes are written as they are, with the suffix of their format; arrays as
  float32 WAV named by the SHA-256 of their samples and rate; both once, under
  ``$FINETUNEKIT_CACHE_DIR/audio`` (default ``~/.cache/finetunekit/audio``);
* label columns hold names, integers, lists of names (multi-label) or numbers (regression); an
  integer column of a ``datasets`` ``ClassLabel`` feature holds the index of a name, and reads as
  that name (``-1``, the feature's "no label", as an empty cell); so does a ClassLabel inside a
  column of dicts (``objects.category`` of an object-detection set);
* detection boxes and segmentation masks are read by their task types' readers
  (``finetunekit.tasks.detection_data``, ``segmentation_data``) from the rows given here; a mask
  given as an array of class indices becomes a PNG file (:func:`mask_file`).

Each table is identified by its content: ``table.token`` is ``memory:<kind>:<sha256>``, the hash of
its column names and of every cell in order (an image by its bytes). ``finetunekit.train`` records
the token as ``data.train`` / ``data.val`` in the run's recipe.yaml, so resuming with other rows is
refused as resuming with an edited file is.

A recipe may name a Hugging Face dataset instead of a file: ``data.train: hf:NAME?config=C&split=S``
(NAME: a Hub dataset, loaded by ``datasets.load_dataset``, from its local cache when offline; or a
folder written by ``save_to_disk``). The resolved recipe pins it: the split (default ``train``
for data.train, ``validation`` for data.val) and the SHA-256 of its rows are added
(``hf:nyu-mll/glue?config=sst2&split=train&sha256=...``), and a pinned dataset whose rows changed
is refused.

Example::

    table = memory_table(pandas.DataFrame({"sentence": ["good", "bad"], "label": ["pos", "neg"]}), "train")
    table.token            # 'memory:pandas:5b0c...'
    with holding(table):   # readers find it by its token while it is held
        read_examples(table.token, "text").labels   # ['pos', 'neg']
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import DataError
from .tables import check_header

PREFIX = "memory:"
# what each container is called in messages and on the model card
NAMES = {"pandas": "DataFrame", "arrow": "pyarrow Table", "datasets": "datasets.Dataset"}
# DatasetDict splits, and the role each plays
SPLITS = {"train": ("train",), "val": ("validation", "valid", "val", "dev"), "test": ("test",)}


def container_kind(obj: Any) -> str | None:
    """``"pandas"``, ``"arrow"``, ``"datasets"``, ``"datasetdict"`` for a container this module reads,
    else None; told by the type's module, so none of those packages is imported to ask."""
    kind = type(obj)
    module, name = kind.__module__.split(".")[0], kind.__name__
    if module == "pandas" and name == "DataFrame":
        return "pandas"
    if module == "pyarrow" and name == "Table":
        return "arrow"
    if module == "datasets" and name in ("Dataset", "IterableDataset"):
        return "datasets"
    if module == "datasets" and name in ("DatasetDict", "IterableDatasetDict"):
        return "datasetdict"
    return None


def is_memory(obj: Any) -> bool:
    """Whether ``obj`` is an in-memory table (or an already converted :class:`MemoryTable`)."""
    return isinstance(obj, MemoryTable) or container_kind(obj) is not None


def is_token(path: Any) -> bool:
    return isinstance(path, str) and path.startswith(PREFIX)


@dataclass
class MemoryTable:
    """An in-memory table as rows of Python values; ``str(table)`` names it in messages."""

    kind: str  # pandas, arrow, datasets
    role: str  # train, val, test, data: which argument it came from
    columns: list[str]
    rows: list[dict[str, Any]]
    index: list[Any]  # each row's index label (a DataFrame's index; else its position)
    class_names: dict[str, list[str]] = field(default_factory=dict)  # ClassLabel names per column
    sha256: str = ""
    name: str | None = None  # where it came from, when it has a name (an hf: dataset)

    @property
    def token(self) -> str:
        return f"{PREFIX}{self.kind}:{self.sha256}"

    def __str__(self) -> str:
        if self.name:
            return f"{self.name} (sha256 {self.sha256[:12]})"
        return f"{NAMES[self.kind]} {self.role} ({PREFIX}{self.kind}:{self.sha256[:12]})"

    def __len__(self) -> int:
        return len(self.rows)

    def describe(self) -> dict[str, Any]:
        """What the run records about the table: its token, row count and columns."""
        return {"source": self.token, "rows": len(self.rows), "columns": list(self.columns), "container": NAMES[self.kind]}

    def table_rows(self) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
        """(rows as (place, row dict), columns), as ``readers._table`` gives a file's; image cells
        held as bytes or pictures become the paths of files written for them."""
        if not self.rows:
            raise DataError(f"{self}: no rows")
        out = []
        for i, row in zip(self.index, self.rows, strict=True):
            where = f"{self}: row {i}"
            out.append((where, {c: _media_cell(v, where, c) for c, v in row.items()}))
        return out, list(self.columns)


def memory_table(obj: Any, role: str = "data") -> MemoryTable:
    """The :class:`MemoryTable` of a DataFrame, a pyarrow Table or a ``datasets.Dataset`` (a
    ``DatasetDict``: pick its split first, :func:`split_of`)."""
    if isinstance(obj, MemoryTable):
        return obj
    kind = container_kind(obj)
    if kind == "pandas":
        columns = [str(c) for c in obj.columns]
        check_header(f"{NAMES[kind]} {role}", columns, f"{NAMES[kind]} {role}: the columns")
        rows = [dict(zip(columns, values, strict=True)) for values in obj.itertuples(index=False, name=None)]
        table = MemoryTable(kind, role, columns, [{c: _plain(v) for c, v in r.items()} for r in rows], list(obj.index))
    elif kind == "arrow":
        columns = list(obj.column_names)
        check_header(f"{NAMES[kind]} {role}", columns, f"{NAMES[kind]} {role}: the columns")
        table = MemoryTable(kind, role, columns, obj.to_pylist(), list(range(obj.num_rows)))
    elif kind == "datasets":
        if type(obj).__name__ == "IterableDataset":
            raise DataError(f"{NAMES[kind]} {role}: a streaming (iterable) dataset; load it without streaming=True, "
                            "or take the rows you need with Dataset.from_list(list(dataset.take(n)))")
        arrow = obj.with_format("arrow")[:]  # the rows after any select/shuffle; images stay {bytes, path}
        columns = list(arrow.column_names)
        names = class_label_names(obj)
        rows = arrow.to_pylist()
        where = f"{NAMES[kind]} {role}"
        for column, classes in names.items():  # "objects.category": a ClassLabel inside a column of dicts
            top, *inner = column.split(".")
            for i, row in enumerate(rows):
                name = functools.partial(_class_name, classes=classes, where=f"{where}: row {i}", column=column)
                row[top] = _map_inner(row.get(top), inner, name)
        table = MemoryTable(kind, role, columns, rows, list(range(len(rows))), names)
    elif kind == "datasetdict":
        raise DataError(f"{role}: a DatasetDict holds several splits ({', '.join(obj)}); give one split, "
                        "or give the DatasetDict as train= to use its train / validation splits")
    else:
        raise DataError(f"{role}: expected a path, a pandas DataFrame, a pyarrow Table or a datasets.Dataset, "
                        f"got {type(obj).__name__}")
    table.sha256 = _content_sha256(table)
    return table


def class_label_names(dataset: Any) -> dict[str, list[str]]:
    """The names of each ``ClassLabel`` column of a ``datasets.Dataset`` (a list of ClassLabels,
    multi-label, too), and of each ClassLabel inside a column of dicts, by its dotted place
    (``objects.category``: an object-detection set's ``objects: {bbox, category}``)."""
    found: dict[str, list[str]] = {}

    def walk(feature: Any, place: str) -> None:
        while hasattr(feature, "feature") and not isinstance(feature, dict):  # Sequence / List of ...
            feature = feature.feature
        if type(feature).__name__ == "ClassLabel":
            found[place] = list(feature.names)
        elif isinstance(feature, dict):
            for key, inner in feature.items():
                walk(inner, f"{place}.{key}")

    for column, feature in (getattr(dataset, "features", None) or {}).items():
        walk(feature, column)
    return found


def _map_inner(value: Any, keys: list[str], convert: Any) -> Any:
    """``value`` with ``convert`` applied at ``keys`` inside it, through lists (a list of dicts or
    a dict of lists, as ``datasets`` stores a sequence of dicts)."""
    if not keys:
        return convert(value)
    if isinstance(value, dict):
        return {**value, keys[0]: _map_inner(value.get(keys[0]), keys[1:], convert)} if keys[0] in value else value
    if isinstance(value, list):
        return [_map_inner(v, keys, convert) for v in value]
    return value


def split_of(obj: Any, role: str) -> Any | None:
    """A DatasetDict's split for ``role`` (train, val, test), or None when it has none."""
    return next((obj[name] for name in SPLITS[role] if name in obj), None)


def check_same_classes(train: MemoryTable, val: MemoryTable) -> None:
    """Refuse validation data whose ``ClassLabel`` names differ from the training data's: the same
    integer would mean another class in each."""
    for column, names in train.class_names.items():
        other = val.class_names.get(column)
        if other is not None and other != names:
            raise DataError(
                f"{val}: column {column!r}: its ClassLabel names {other} differ from those of {train} ({names}): "
                "the same integer would name another class in each; cast both to one ClassLabel "
                "(dataset.cast_column(column, train.features[column]))"
            )


# -- tables held while a run reads them ---------------------------------------------------------

_HELD: dict[str, MemoryTable] = {}


@contextmanager
def holding(*tables: MemoryTable | None) -> Iterator[None]:
    """Let the readers find ``tables`` by their tokens (``data.train: memory:...``) while inside."""
    added = [t for t in tables if t is not None and t.token not in _HELD]
    for table in added:
        _HELD[table.token] = table
    try:
        yield
    finally:
        for table in added:
            _HELD.pop(table.token, None)


def held(token: str) -> MemoryTable:
    """The table held for ``token``; a recipe naming in-memory data that is not given is refused."""
    table = _HELD.get(token)
    if table is None:
        raise DataError(
            f"{token}: in-memory data (a DataFrame, Arrow table or datasets.Dataset) that was not given: pass it again, "
            "finetunekit.train(recipe, train=..., val=...), with the same rows"
        )
    return table


# -- cells --------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A pandas cell as a plain Python value (numpy scalars and arrays included)."""
    if value is None or isinstance(value, (str, int, float, bytes)):
        return value
    if type(value).__name__ in ("NAType", "NaTType"):  # pandas' missing values of nullable columns: an empty cell
        return None
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def _class_name(value: Any, classes: list[str], where: str, column: str) -> Any:
    if value is None or value == -1:  # the datasets convention for an unlabelled row (GLUE's test splits)
        return ""
    if isinstance(value, list):
        return [_class_name(v, classes, where, column) for v in value]
    if not isinstance(value, int) or not 0 <= value < len(classes):
        raise DataError(f"{where}: column {column!r}: {value!r} is not a class of its ClassLabel ({len(classes)} names)")
    return classes[value]


def _media_cell(value: Any, where: str, column: str) -> Any:
    """A cell as the readers take it: an in-memory clip or image becomes the path of its file."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if _audio_like(value):
        return _audio_file(value, where, column)
    if _image_like(value):
        return _image_file(value, where, column)
    return value


def _image_like(value: Any) -> bool:
    if isinstance(value, (bytes, bytearray)):
        return True
    if isinstance(value, dict) and set(value) <= {"bytes", "path"} and value:
        return True
    return type(value).__module__.split(".")[0] == "PIL"


def image_dir() -> Path:
    """Where images given as bytes or pictures are written (see the module doc)."""
    root = os.environ.get("FINETUNEKIT_CACHE_DIR")
    base = Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "finetunekit"
    return base / "images"


def _image_bytes(value: Any, where: str, column: str) -> tuple[bytes, str] | str:
    """(encoded bytes, suffix) of an in-memory image, or the path a cell names."""
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return _image_bytes(value["bytes"], where, column)
        if value.get("path"):
            return str(value["path"])
        raise DataError(f"{where}: column {column!r}: an image dict with neither bytes nor a path")
    if isinstance(value, (bytes, bytearray)):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(value)) as image:
                suffix = "." + (image.format or "png").lower().replace("jpeg", "jpg")
        except (UnidentifiedImageError, OSError):
            raise DataError(f"{where}: column {column!r}: {len(value)} bytes that are not an image PIL can read, "
                            "nor audio (WAV, FLAC, OGG, MP3)") from None
        return bytes(value), suffix
    buffer = io.BytesIO()  # a PIL image: written losslessly
    try:
        value.save(buffer, format="PNG")
    except (OSError, ValueError) as exc:
        raise DataError(f"{where}: column {column!r}: cannot write this picture as PNG ({exc})") from None
    return buffer.getvalue(), ".png"


def _image_file(value: Any, where: str, column: str) -> str:
    """The path of a file holding an in-memory image (written once, named by its content)."""
    found = _image_bytes(value, where, column)
    if isinstance(found, str):
        return found
    data, suffix = found
    return _write_once(image_dir(), data, suffix)


def mask_file(value: Any, where: str, column: str) -> str:
    """The path of a PNG holding an index mask given as an array (a 2-D numpy array or nested lists
    of class indices; an (H, W, 1) array too), written once under the images folder, named by its
    content; 8-bit when every value fits, else 16-bit. A cell that is a picture, bytes or a path
    is already a file (``MemoryTable.table_rows``)."""
    import numpy as np
    from PIL import Image

    what = f"{where}: column {column!r}: a mask array"
    try:
        mask = np.asarray(value)
    except ValueError:  # ragged lists
        raise DataError(f"{what} whose rows differ in length") from None
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2 or mask.size == 0:
        raise DataError(f"{what} of shape {mask.shape}; expected (height, width) class indices")
    if mask.dtype.kind == "f" and np.isfinite(mask).all() and (mask == np.round(mask)).all():
        mask = mask.astype(np.int64)
    if mask.dtype.kind not in "iub":
        raise DataError(f"{what} of {mask.dtype} values; expected integer class indices")
    if mask.size and (mask.min() < 0 or mask.max() > 65535):
        raise DataError(f"{what} with values {int(mask.min())}..{int(mask.max())}; expected class indices 0-65535")
    picture = Image.fromarray(mask.astype(np.uint8)) if mask.max() <= 255 else Image.fromarray(mask.astype(np.uint16))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return _write_once(image_dir(), buffer.getvalue(), ".png")


def source_table(obj: Any) -> MemoryTable | None:
    """The :class:`MemoryTable` of in-memory data, of a held token (``memory:...``) or of an ``hf:``
    source; None for a path. A task's own reader (detection, segmentation) reads tables through it."""
    if is_token(obj):
        return held(obj)
    if is_hf(obj):
        return hf_table(obj)
    if is_memory(obj):
        return memory_table(evaluation_split(obj))
    return None


# -- audio cells --------------------------------------------------------------------------------

_ARRAY_KEYS = {"array", "sampling_rate"}
# a 2-D array with at most this many rows (and more columns) is read as channels x frames, as
# torchaudio and datasets' decoders give it; otherwise as frames x channels, as soundfile does
MAX_CHANNELS = 8


def audio_dir() -> Path:
    """Where clips given as bytes or arrays are written (see the module doc)."""
    return image_dir().parent / "audio"


def _audio_suffix(data: bytes) -> str | None:
    """The suffix of encoded audio told by its first bytes, or None when they are not audio."""
    head = bytes(data[:64])
    if head[:4] in (b"RIFF", b"RIFX", b"RF64") and head[8:12] == b"WAVE":
        return ".wav"
    if head[:4] == b"fLaC":
        return ".flac"
    if head[:4] == b"OggS":
        return ".opus" if b"OpusHead" in head else ".ogg"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return ".mp3"
    return None


def _audio_like(value: Any) -> bool:
    if isinstance(value, (bytes, bytearray)):
        return _audio_suffix(value) is not None
    if not isinstance(value, dict) or not value:
        return False
    if value.keys() & _ARRAY_KEYS and set(value) <= _ARRAY_KEYS | {"path", "bytes"}:
        return True
    if set(value) <= {"bytes", "path"}:
        if isinstance(value.get("bytes"), (bytes, bytearray)):
            return _audio_suffix(value["bytes"]) is not None
        from .audio import AUDIO_EXTENSIONS

        return value.get("bytes") is None and Path(str(value.get("path") or "")).suffix.lower() in AUDIO_EXTENSIONS
    return False


def _audio_file(value: Any, where: str, column: str) -> str:
    """The path of a file holding an in-memory clip (written once, named by its content); a dict
    naming a path and holding nothing else gives that path."""
    if isinstance(value, (bytes, bytearray)):
        return _write_once(audio_dir(), bytes(value), str(_audio_suffix(value)))
    if value.get("array") is None and "sampling_rate" not in value:  # {"bytes", "path"}
        if value.get("bytes") is not None:
            return _audio_file(value["bytes"], where, column)
        return str(value["path"])
    wave, rate = _audio_array(value, where, column)
    import soundfile

    name = hashlib.sha256(wave.tobytes() + f"|{wave.shape}|{rate}".encode()).hexdigest()
    path = audio_dir() / f"{name}.wav"
    if not path.is_file():
        buffer = io.BytesIO()
        soundfile.write(buffer, wave, rate, format="WAV", subtype="FLOAT")
        _write_once(audio_dir(), buffer.getvalue(), ".wav", name)
    return str(path)


def _audio_array(value: dict, where: str, column: str) -> tuple[Any, int]:
    """(float32 samples as frames or frames x channels, rate) of a ``{"array", "sampling_rate"}``
    cell, checked: a missing rate or array, a shape other than 1-D or 2-D, no samples, NaN."""
    import numpy as np

    from .audio import MIN_SAMPLE_RATE

    what = f"{where}: column {column!r}: an audio array"
    rate = value.get("sampling_rate")
    if value.get("array") is None:
        raise DataError(f"{what} cell without its 'array' (keys: {', '.join(sorted(value))})")
    if rate is None:
        raise DataError(f"{what} without a 'sampling_rate' (give {{'array': samples, 'sampling_rate': hertz}})")
    try:
        hertz = float(rate) if not isinstance(rate, (bool, str, bytes)) else math.nan
    except (TypeError, ValueError):
        hertz = math.nan
    if not math.isfinite(hertz) or hertz != int(hertz):
        raise DataError(f"{what}: sampling_rate {rate!r} is not a whole number of hertz")
    rate = int(hertz)
    if rate < MIN_SAMPLE_RATE:
        raise DataError(f"{what}: sampling_rate {rate} Hz is below {MIN_SAMPLE_RATE} Hz")
    try:
        wave = np.asarray(value["array"])
    except ValueError:  # ragged lists
        raise DataError(f"{what} whose rows differ in length") from None
    if wave.dtype.kind not in "fiu":
        raise DataError(f"{what} of {wave.dtype} values; expected float samples")
    if wave.ndim not in (1, 2):
        raise DataError(f"{what} of shape {wave.shape}; expected 1-D (mono) or 2-D (frames x channels)")
    if wave.ndim == 2 and wave.shape[0] <= MAX_CHANNELS and wave.shape[1] > wave.shape[0]:
        wave = wave.T
    if wave.size == 0:
        raise DataError(f"{what} with no samples")
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    if not np.isfinite(wave).all():
        bad = int((~np.isfinite(wave)).sum())
        raise DataError(f"{what} with {bad} NaN or infinite sample(s)")
    return wave, int(rate)


def _write_once(folder: Path, data: bytes, suffix: str, name: str | None = None) -> str:
    """``folder/<name or sha256 of data><suffix>`` holding ``data``, written atomically unless there."""
    path = folder / f"{name or hashlib.sha256(data).hexdigest()}{suffix}"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(tmp, path)  # atomic: a file under its name is always whole
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return str(path)


def _content_sha256(table: MemoryTable) -> str:
    """SHA-256 of the column names and every cell in order (one JSON document: [columns, rows]);
    an image by its bytes."""
    columns = table.columns
    document = json.dumps([columns, [[row.get(c) for c in columns] for row in table.rows]], default=_json_default)
    return hashlib.sha256(document.encode()).hexdigest()


def _json_default(value: Any) -> Any:
    """What JSON cannot write: bytes and pictures by the hash of their content, others as text."""
    if isinstance(value, (bytes, bytearray)):
        return "bytes sha256:" + hashlib.sha256(value).hexdigest()
    if type(value).__module__.split(".")[0] == "PIL":
        return f"PIL {value.mode} {value.size} sha256:" + hashlib.sha256(value.tobytes()).hexdigest()
    if type(value).__name__ == "ndarray":  # an audio array in a DataFrame cell: str() would elide its middle
        return f"ndarray {value.dtype} {value.shape} sha256:" + hashlib.sha256(value.tobytes()).hexdigest()
    return f"{type(value).__name__} {value}"


# -- the splits of finetunekit.train, evaluate and predict ------------------------------------------


def memory_splits(train: Any, val: Any = None) -> tuple[MemoryTable | None, MemoryTable | None]:
    """(train, val) tables of ``finetunekit.train``'s ``train=`` and ``val=`` (None where a path or
    nothing was given): a DatasetDict gives its ``train`` split, and its ``validation`` split
    unless ``val`` is given; ClassLabel names must agree between the two."""
    if container_kind(train) == "datasetdict":
        whole = train
        train = split_of(whole, "train")
        if train is None:
            raise DataError(f"train: the DatasetDict has no train split (splits: {', '.join(whole)})")
        if val is None:
            val = split_of(whole, "val")
    if container_kind(val) == "datasetdict":
        whole, val = val, split_of(val, "val")
        if val is None:
            raise DataError(f"val: the DatasetDict has no validation split (splits: {', '.join(whole)})")
    train_t = memory_table(train, "train") if is_memory(train) else None
    val_t = memory_table(val, "val") if is_memory(val) else None
    if train_t is not None and val_t is not None:
        check_same_classes(train_t, val_t)
    return train_t, val_t


def evaluation_split(data: Any) -> Any:
    """The split ``evaluate`` and ``predict`` read from a DatasetDict: ``test``, else ``validation``."""
    if container_kind(data) != "datasetdict":
        return data
    found = split_of(data, "test")
    if found is None or _unlabelled(found):
        found = split_of(data, "val") or found
    if found is None:
        raise DataError(f"the DatasetDict has no test or validation split (splits: {', '.join(data)})")
    return found


def _unlabelled(dataset: Any) -> bool:
    """A split whose ClassLabel columns are all -1 (GLUE's test splits hide their labels)."""
    names = class_label_names(dataset)
    return bool(names) and all(set(dataset[c]) <= {-1} for c in names if not isinstance(dataset[c][0], list))


# -- Hugging Face datasets named in a recipe: data.train: hf:NAME?config=C&split=S ------------------

HF = "hf:"
DEFAULT_SPLITS = {"train": "train", "val": "validation"}
_LOADED: dict[tuple[str, str], MemoryTable] = {}  # by (spec without sha256, datasets' fingerprint)


def is_hf(path: Any) -> bool:
    return isinstance(path, str) and path.startswith(HF)


def parse_hf(spec: str) -> tuple[str, str | None, str | None, str | None]:
    """(name or path, config, split, sha256) of ``hf:NAME?config=C&split=S&sha256=H`` (all but the
    name optional)."""
    from urllib.parse import parse_qs

    name, _, query = spec[len(HF):].partition("?")
    fields = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = sorted(set(fields) - {"config", "split", "sha256"})
    if not name or unknown:
        raise DataError(f"{spec}: expected hf:NAME?config=CONFIG&split=SPLIT (NAME: a Hub dataset or a folder written by "
                        f"save_to_disk; config and split optional){f'; unknown field {unknown[0]!r}' if unknown else ''}")
    return name, fields.get("config") or None, fields.get("split") or None, fields.get("sha256") or None


def _spec(name: str, config: str | None, split: str | None, sha256: str | None = None) -> str:
    from urllib.parse import urlencode

    fields = {k: v for k, v in (("config", config), ("split", split), ("sha256", sha256)) if v}
    return f"{HF}{name}" + (f"?{urlencode(fields)}" if fields else "")


def pin_hf(spec: str | None, role: str) -> str | None:
    """``spec`` with its split (default: ``train`` for data.train, ``validation`` for data.val) and
    the SHA-256 of the rows loaded, as the run's recipe.yaml records it; a spec pinned already is
    checked against the rows loaded now (a changed dataset is refused). Other paths unchanged."""
    if not is_hf(spec):
        return spec
    name, config, split, _ = parse_hf(spec)
    table = hf_table(spec, DEFAULT_SPLITS.get(role, "train"))
    return _spec(name, config, split or DEFAULT_SPLITS.get(role, "train"), table.sha256)


def pin_hf_sources(train: str, val: str | None) -> dict[str, str | None]:
    """``{"train": ..., "val": ...}`` with each ``hf:`` source pinned (:func:`pin_hf`); two hf:
    splits must agree on their ClassLabel names."""
    pinned = {"train": pin_hf(train, "train"), "val": pin_hf(val, "val")}
    if is_hf(pinned["train"]) and is_hf(pinned["val"]):
        check_same_classes(hf_table(str(pinned["train"])), hf_table(str(pinned["val"])))
    return pinned


def hf_table(spec: str, default_split: str = "train") -> MemoryTable:
    """The rows of a Hugging Face dataset named by ``spec``: a folder written by ``save_to_disk``
    (read with ``load_from_disk``), else ``datasets.load_dataset(NAME, CONFIG, split=SPLIT)``,
    which reads the local cache when ``HF_DATASETS_OFFLINE=1`` (nothing is downloaded then)."""
    name, config, split, sha = parse_hf(spec)
    split = split or default_split
    key = _spec(name, config, split)
    try:
        import datasets
    except ImportError:
        raise DataError(f"{spec}: reading Hugging Face datasets needs the package 'datasets' (pip install datasets)") from None
    folder = Path(name).expanduser()
    try:
        if folder.is_dir() and any((folder / f).is_file() for f in ("dataset_dict.json", "state.json")):
            found = datasets.load_from_disk(str(folder))
            if container_kind(found) == "datasetdict":
                if split not in found:
                    raise DataError(f"{spec}: no split {split!r} (splits: {', '.join(found)}); add ?split=NAME")
                found = found[split]
        else:
            found = datasets.load_dataset(name, config, split=split)
    except DataError:
        raise
    except Exception as exc:  # datasets raises many kinds: not found, offline and not cached, bad config
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise DataError(f"{spec}: cannot load the dataset ({type(exc).__name__}: {first})") from None
    # loading is memory-mapped and cheap; the rows are converted once per version of the files
    # (datasets' fingerprint changes with them)
    version = (key, str(getattr(found, "_fingerprint", "")))
    table = _LOADED.get(version)
    if table is None:
        table = memory_table(found, "train" if split == "train" else "val")
        table.name = key
        _LOADED[version] = table
    if sha is not None and sha != table.sha256:
        raise DataError(
            f"{spec}: the dataset's rows changed since the run recorded them (sha256 {sha[:12]}... then, "
            f"{table.sha256[:12]}... now); resume needs the data the run started with"
        )
    return table

"""Batch prediction: ``finetunekit predict RUN_DIR --input FOLDER_OR_TABLE --output predictions.csv``.

Inputs stream from disk (an image folder is walked directory by directory, a table is read row
by row) in batches of ``batch_size``; rows stream to ``.<name>.partial`` beside the output, which
is renamed into place when every input is done, so ``predictions.csv`` is either absent or
complete. Memory does not grow with the number of inputs. Texts are read ``SORT_WINDOW`` batches
at a time and batched by length within that window (less padding; the rows keep input order);
images are decoded and preprocessed in threads, the next batch while the model runs on this one.

After a crash or Ctrl-C, the same command resumes: a small ``.<name>.partial.json`` records, after
each batch is on disk (fsync), how many rows and bytes the partial file holds and the last input
it covers; a rerun with the same run, input and columns cuts the partial file back to that point,
checks the last input is the same, and carries on from the next one (``--restart`` starts over).

Columns: ``input`` (for a sentence-pair model, its two text columns), then the task's answer
cells (``Task.table_row``): for classification ``label, score, score_<class>...`` (one per class,
labels.json order); for multi-label ``labels`` (``|``-separated) and ``probabilities_<label>...``;
for regression ``value`` (or ``values_<target>...``); for several tasks each task's cells with its
name in front. Last comes ``error``: an input that cannot be used, such as an unreadable image or
an empty text, gets its error here and no answer; the other inputs are predicted as usual.
An existing output file is replaced only with ``overwrite``.
"""

from __future__ import annotations

import csv
import gc
import io
import json
import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ...data.readers import TEXT_EXTENSIONS, _iter_rows
from ...core.errors import DataError, FinetuneError
from ...modalities import modality_of
# Texts: batches of similar length are formed within windows of this many batches (SST-2 dev at
# batch 64: 25,136 token positions instead of 44,448 in input order); a crash loses at most one
# window's work.
SORT_WINDOW = 8
# A forward pass of a transformers model leaves reference cycles (its output objects) that live
# long enough to reach the oldest GC generation, which Python collects rarely when torch's many
# objects are loaded; a full collection every GC_EVERY batches keeps memory flat.
GC_EVERY = 16


def iter_inputs(
    source: Path, modality: str, column: str | None = None, pair_columns: list[str] | None = None
) -> Iterator[tuple[Any, str | None]]:
    """Yield (input, problem) in a stable order: image paths from a folder (sorted, recursively),
    or one column of a .csv/.tsv/.jsonl/.txt/.parquet table (texts, or image paths relative to the
    table); with ``pair_columns`` (a sentence-pair model), (first, second) tuples from those two."""
    if pair_columns:
        yield from _iter_pairs(source, pair_columns)
        return
    if not source.exists():
        raise DataError(f"--input: not found: {source}")
    kind = modality_of(modality)
    if source.is_dir():
        if not kind.file_extensions:  # inputs that are table cells (texts) cannot come from a folder
            raise DataError(f"--input {source}: a folder of images, but this run's model takes {kind.name} (give a table)")
        yield from ((p, None) for p in _walk_files(source, kind.file_extensions))
        return
    if source.suffix.lower() not in TEXT_EXTENSIONS:
        raise DataError(f"--input {source}: expected an image folder or a .csv/.tsv/.jsonl/.txt table")
    if source.stat().st_size == 0:
        raise DataError(f"{source}: file is empty")
    guesses = kind.column_guesses
    for where, row in _iter_rows(source):
        if column is None:
            column = next((c for c in guesses if c in row), None)
            if column is None:
                if kind.file_extensions:  # a file column is never guessed from its position
                    raise DataError(f"{source}: no {kind.name} path column ({', '.join(guesses)}); name it with --column")
                column = next(iter(row))
        if column not in row:
            raise DataError(f"{where}: no column {column!r} (columns: {', '.join(row)}); name it with --column")
        value = row.get(column)
        text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value).strip()
        if kind.file_extensions and text:  # file paths are relative to the table
            text = str((source.parent / text) if not Path(text).is_absolute() else Path(text))
        yield text, (f"{where}: empty {column!r}" if not text else None)


def _cell(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value).strip()


def _iter_pairs(source: Path, columns: list[str]) -> Iterator[tuple[Any, str | None]]:
    """(first, second) text pairs from a table's two columns (a sentence-pair model's inputs)."""
    if not source.exists():
        raise DataError(f"--input: not found: {source}")
    if source.is_dir() or source.suffix.lower() not in TEXT_EXTENSIONS:
        raise DataError(f"--input {source}: this model takes sentence pairs; give a table with columns {columns[0]!r} and {columns[1]!r}")
    if source.stat().st_size == 0:
        raise DataError(f"{source}: file is empty")
    for where, row in _iter_rows(source):
        missing = [c for c in columns if c not in row]
        if missing:
            raise DataError(f"{where}: no column {missing[0]!r} (columns: {', '.join(row)}); this model reads pairs from {columns[0]!r} and {columns[1]!r}")
        first, second = (_cell(row.get(c)) for c in columns)
        empty = [c for c, text in zip(columns, (first, second), strict=True) if not text]
        yield (first, second), (f"{where}: empty {empty[0]!r}" if empty else None)


def _walk_files(root: Path, extensions: frozenset[str]) -> Iterator[str]:
    """Files with one of ``extensions`` (the modality's: images) under ``root``, depth first, each
    directory's entries sorted; only one directory listing is held at a time."""
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            yield from _walk_files(Path(entry.path), extensions)
        elif Path(entry.name).suffix.lower() in extensions:
            yield entry.path


def _count(source: Path, modality: str, column: str | None, pair_columns: list[str] | None) -> int:
    return sum(1 for _ in iter_inputs(source, modality, column, pair_columns))


class _Progress:
    """The resume record: rows and bytes in the partial file, and the last input it covers."""

    def __init__(self, path: Path, identity: dict[str, Any]) -> None:
        self.path = path
        self.identity = identity

    def load(self) -> dict[str, Any] | None:
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return record if all(record.get(k) == v for k, v in self.identity.items()) else None

    def save(self, rows: int, offset: int, last: str | None) -> None:
        from ...run.artifacts import atomic_write_json

        atomic_write_json(self.path, {**self.identity, "rows": rows, "offset": offset, "last_input": last})


def predict_to_csv(
    run_dir: str | Path, source: str | Path, output: str | Path, batch_size: int = 64, column: str | None = None,
    restart: bool = False, quiet: bool = False, predictor=None, overwrite: bool = False,
    pair_columns: list[str] | None = None,
) -> dict[str, Any]:
    """Predict every input of ``source`` into the CSV ``output``; returns counts for the summary.
    An existing ``output`` is refused unless ``overwrite``. A sentence-pair model reads its pairs
    from ``pair_columns`` (default: the run's data.text_columns)."""
    from tqdm.auto import tqdm

    from ...core.outputs import check_output
    from ...data.pipeline import reader_threads
    from ..predict import load

    source, output = Path(source), Path(output)
    if output.is_dir():
        raise FinetuneError(f"--output {output} is a directory; give a file name such as {output / 'predictions.csv'}")
    check_output(output, [run_dir, source])  # never the table it reads, nor a run's weights
    if output.exists() and not overwrite:
        raise FinetuneError(f"--output {output} exists; pass --overwrite to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    predictor = predictor or load(run_dir)
    pairs = list(pair_columns or predictor.text_columns or []) or None
    inputs_header = list(pairs) if pairs else ["input"]
    answer_columns = list(predictor.task.table_row(predictor.answers(np.zeros((1, predictor.task.output_size), np.float32))[0]))
    header = [*inputs_header, *answer_columns, "error"]
    partial = output.with_name(f".{output.name}.partial")
    progress = _Progress(output.with_name(f".{output.name}.partial.json"),
                         {"run_dir": str(Path(run_dir).resolve()), "input": str(source.resolve()), "header": header})
    total = _count(source, predictor.modality, column, pairs)
    state = None if restart else progress.load()
    if state is not None and partial.is_file() and partial.stat().st_size >= state["offset"]:
        handle = partial.open("r+b")
        handle.truncate(state["offset"])  # anything after the last recorded batch is a torn write
        handle.seek(0, os.SEEK_END)
        done, last = int(state["rows"]), state["last_input"]
    else:
        handle = partial.open("wb")
        handle.write(_csv_row(header))
        done, last = 0, None
    inputs = iter_inputs(source, predictor.modality, column, pairs)
    for number in range(done):
        item = next(inputs, None)
        if item is None or (number == done - 1 and _key(item[0]) != last):
            handle.close()
            raise FinetuneError(f"cannot resume {partial}: the input changed since it was written; rerun with --restart")
    counts = {"total": total, "resumed": done, "predicted": 0, "errors": 0}
    bar = tqdm(total=total, initial=done, unit=predictor.modality, desc="predict", disable=quiet, dynamic_ncols=True)
    # files (images) are read and decoded in threads ahead of the model; texts are batched by length
    pool = ThreadPoolExecutor(max_workers=reader_threads()) if predictor.kind.threaded_images else None
    window = batch_size * (SORT_WINDOW if pool is None else 1)
    batches = 0

    def read() -> tuple[list[tuple[Any, str | None]], list[Any] | None]:
        """The next window of inputs; images: their reading already started in the pool."""
        chunk = [item for _, item in zip(range(window), inputs, strict=False)]
        return chunk, None if pool is None else [pool.submit(_load, predictor, text if problem is None else None) for text, problem in chunk]

    try:
        chunk, loading = read()
        while chunk:
            upcoming = read()  # images: the next batch decodes while this one runs
            lines = _predict_chunk(predictor, chunk, loading, answer_columns, batch_size)
            handle.write(b"".join(_csv_row(row) for row in lines))
            handle.flush()
            os.fsync(handle.fileno())
            done += len(chunk)
            counts["predicted"] += len(chunk)
            counts["errors"] += sum(1 for row in lines if row[-1])
            progress.save(done, handle.tell(), _key(chunk[-1][0]))
            bar.update(len(chunk))
            before, batches = batches, batches + -(-len(chunk) // batch_size)
            if batches // GC_EVERY != before // GC_EVERY:
                gc.collect()
            chunk, loading = upcoming
    finally:
        bar.close()
        handle.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    os.replace(partial, output)
    progress.path.unlink(missing_ok=True)
    return {**counts, "output": str(output)}


def _key(item: Any) -> Any:
    """An input as the resume record keeps it (JSON: a pair becomes a list)."""
    return list(item) if isinstance(item, tuple) else item


def _predict_chunk(
    predictor, chunk: list[tuple[Any, str | None]], loading: list[Any] | None, columns: list[str], batch_size: int
) -> list[list[Any]]:
    """CSV rows for one window of inputs; ``loading``: images, the futures of :func:`_load`."""
    from ...data import Examples

    problems = [problem for _, problem in chunk]
    if loading is not None:
        loaded = [future.result() for future in loading]
        problems = [problem or error for problem, (_, _, error) in zip(problems, loaded, strict=True)]
        good = [i for i, problem in enumerate(problems) if problem is None]
        scores = predictor.predict_pixels([loaded[i][0] for i in good], [loaded[i][1] for i in good])
    else:  # texts (or pairs), already checked: batched by length over the window; audio files
        good = [i for i, problem in enumerate(problems) if problem is None]
        try:
            scores = predictor.predict_proba(Examples([chunk[i][0] for i in good], None, "inputs", predictor.modality),
                                             batch_size=batch_size)
        except DataError:  # an unreadable file: find it, one input at a time, and predict the others
            for i in good:
                try:
                    predictor.kind.load_item(chunk[i][0])
                except DataError as exc:
                    problems[i] = str(exc)
            good = [i for i, problem in enumerate(problems) if problem is None]
            scores = predictor.predict_proba(Examples([chunk[i][0] for i in good], None, "inputs", predictor.modality),
                                             batch_size=batch_size)
    answers = dict(zip(good, predictor.answers(scores), strict=True))
    rows = []
    for i, (item, _) in enumerate(chunk):
        shown = list(item) if isinstance(item, tuple) else [item]
        answer = answers.get(i)
        if answer is None:
            rows.append([*shown, *[""] * len(columns), problems[i]])
        else:
            cells = predictor.task.table_row(answer)
            rows.append([*shown, *[_format(cells[c]) for c in columns], ""])
    return rows


def _format(value: Any) -> Any:
    return f"{value:.6f}" if isinstance(value, float) else value


def _load(predictor, path: str | None) -> tuple[Any, tuple[int, int] | None, str | None]:
    """(pixels, the image's own size, None), or (None, None, why not) for an unreadable image; runs in
    the pool's threads (decoding and resizing release the GIL)."""
    from ...data.pipeline import open_image

    if path is None:
        return None, None, None
    try:
        image = open_image(path)
    except DataError as exc:
        return None, None, str(exc)
    return predictor.image_tensor(image), image.size, None


def _csv_row(values: list[Any]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue().encode("utf-8")

"""Tables read as written, or refused: the structure a reader relies on, checked row by row.

A table is refused, with one line naming the file, the row and the column, when

* its header names a column twice (``label,sentence,label``): which one is the label would be a
  guess; a JSONL object with a repeated key, or a Parquet file with a repeated column, likewise;
* a CSV quote is never closed, or is closed in the middle of a cell (``"good film,pos`` followed by
  more rows): the csv module's strict mode reports both, and the row named is the one where the
  cell began; a quoted cell that runs over several lines, one of which holds a whole row's worth of
  separators (``"good film,pos`` / ``bad film",neg``), reads as rows swallowed by an unclosed quote and is refused too (a text that truly
  spans lines and has that many commas is written unambiguously as JSONL);
* a row has more or fewer fields than the header;
* a cell is longer than the csv module's field limit (131,072 characters). It is refused rather
  than read: no tokenizer keeps more than a few thousand tokens of a text, and a cell that long
  is nearly always an unclosed quote that ran on, or a binary file named .csv. JSONL, which has no
  quoting ambiguity, reads any length;
* a label column mixes lists (multi-label cells, JSONL ``[1, 3]``) with single values: the task
  is never switched to multi-label by one odd row, and the row named is the odd one out;
* an image name in an annotation table leaves the image folder (``../../etc/hostname``, an
  absolute path): images are looked for under their root only.

Example::

    for where, row in csv_rows(path, handle, delimiter=","):
        ...  # where: 'train.csv:12' (the line the row begins on); row: {column: cell}
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from ..core.errors import DataError, shown

FIELD_LIMIT = csv.field_size_limit()


def check_header(path: Path | str, columns: Sequence[str], where: str | None = None) -> None:
    """Refuse a header naming a column twice, naming both positions."""
    seen: dict[str, int] = {}
    for i, name in enumerate(columns, start=1):
        key = str(name).strip()
        if key in seen:
            raise DataError(
                f"{where or f'{path}:1'}: column {key!r} appears twice in the header (columns {seen[key]} and {i}): "
                "which one to read would be a guess; rename or remove one"
            )
        seen[key] = i


def csv_rows(path: Path, handle: TextIO, delimiter: str = ",", quoting: int = csv.QUOTE_MINIMAL) -> Iterator[tuple[str, dict[str, str]]]:
    """(``file:line``, row) for each non-blank row of a CSV/TSV ``handle``, strictly (see the module
    doc); the header is checked first. ``quoting=csv.QUOTE_NONE`` for TSV files whose texts hold
    bare quotes (GLUE's)."""
    quoted = quoting != csv.QUOTE_NONE
    reader = csv.reader(handle, delimiter=delimiter, quoting=quoting, strict=quoted)
    start = 1
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: no header row") from None
    except csv.Error as exc:
        raise _csv_error(path, exc, start, [], delimiter, quoted) from None
    if not header:
        raise DataError(f"{path}: no header row")
    check_header(path, header)
    width = len(header)
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise _csv_error(path, exc, start, header, delimiter, quoted) from None
        where = f"{path}:{start}"
        if not cells or all(not c.strip() for c in cells):
            continue
        if len(cells) > width:
            raise DataError(f"{where}: more fields than the header's {width}")
        if len(cells) < width:
            raise DataError(
                f"{where}: {len(cells)} field(s) where the header has {width}: column {header[len(cells)]!r} is missing"
            )
        if quoted and reader.line_num > start:
            _check_multiline(where, header, cells, delimiter)
        yield where, dict(zip(header, cells, strict=True))


def _check_multiline(where: str, header: list[str], cells: list[str], delimiter: str) -> None:
    for column, cell in zip(header, cells, strict=True):
        lines = cell.splitlines()
        for number, line in enumerate(lines if len(lines) > 1 else [], start=1):
            if len(line.split(delimiter)) >= len(header):
                raise DataError(
                    f"{where}: column {column!r}: a quoted cell runs over several lines and its line {number} "
                    f"({shown(line, 60)}) reads as a whole row: an unclosed quote swallowing the rows after it? "
                    "Close the quote; a text that truly spans lines is written unambiguously as JSONL"
                )


def _csv_error(path: Path, exc: csv.Error, start: int, header: list[str], delimiter: str, quoted: bool) -> DataError:
    where = f"{path}:{start}"
    message = str(exc)
    if "field larger than field limit" in message:
        column = _long_column(path, start, header, delimiter, quoted)
        return DataError(
            f"{where}: {column}a cell longer than {FIELD_LIMIT} characters: an unclosed quote running on, or not a "
            "table; no text that long is read in full by a model (write such data as JSONL if it is meant)"
        )
    if "unexpected end of data" in message or "EOF" in message:
        column = _long_column(path, start, header, delimiter, quoted, find_open_quote=True)
        return DataError(f"{where}: {column}a quote opened here is never closed: the rest of the file would be one cell")
    if "expected after" in message:
        column = _long_column(path, start, header, delimiter, quoted, find_open_quote=True)
        return DataError(
            f"{where}: {column}a quoted cell is closed in the middle of a cell ({message}): an unclosed quote swallowing "
            "the rows after it, or a quote inside a cell not doubled (\"\")"
        )
    return DataError(f"{where}: not a readable table ({message})")


def _long_column(path: Path, start: int, header: list[str], delimiter: str, quoted: bool, find_open_quote: bool = False) -> str:
    """'column NAME: ' for the cell of the record starting on line ``start`` that runs past the
    field limit (or, ``find_open_quote``, the cell whose quote was opened and not closed where a
    cell ends), found by scanning the record with the csv quoting rules; '' when it cannot be told."""

    def name(index: int) -> str:
        return f"column {header[index]!r}: " if index < len(header) else f"field {index + 1}: "

    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            for _ in range(start - 1):
                if not handle.readline():
                    return ""
            state, index, length, opened, scanned = "start", 0, 0, None, 0
            while (char := handle.read(1)) and scanned < 4 * FIELD_LIMIT:
                scanned += 1
                if state == "quoted":
                    state = "quote" if char == '"' else "quoted"
                elif state == "quote" and char == '"':  # a doubled quote: one quote character in the cell
                    state = "quoted"
                elif char == delimiter:
                    state, index, length = "start", index + 1, 0
                    continue
                elif char in "\r\n":
                    return ""
                elif state == "quote":  # a quote closed in the middle of a cell
                    return name(opened) if find_open_quote and opened is not None else ""
                elif state == "start" and char == '"' and quoted:
                    state, opened = "quoted", index
                    continue
                else:
                    state = "plain"
                length += 1
                if not find_open_quote and length > FIELD_LIMIT:
                    return name(index)
            if find_open_quote and state == "quoted" and opened is not None:
                return name(opened)
    except (OSError, UnicodeDecodeError):
        pass
    return ""


def json_object(line: str, where: str) -> Any:
    """One JSONL line, refusing an object that names a key twice (JSON keeps the last silently)."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in items:
            if key in seen:
                raise DataError(f"{where}: key {key!r} appears twice in the object: which one to read would be a guess")
            seen[key] = value
        return seen

    try:
        return json.loads(line, object_pairs_hook=pairs)
    except RecursionError:
        raise DataError(f"{where}: not valid JSON (nested too deeply)") from None


def check_label_kinds(labels: Sequence[Any], places: Sequence[str], columns: Sequence[str]) -> None:
    """Refuse a label column mixing lists (multi-label cells) with single values, or holding an
    object: the odd row out is named, with its column. Empty cells ('' or an empty list) go with
    either kind. ``labels``: one cell per row, or a tuple of cells per row for several columns."""
    several = len(columns) > 1
    for c, column in enumerate(columns):
        lists: list[int] = []
        singles: list[int] = []
        for i, label in enumerate(labels):
            cell = label[c] if several else label
            if isinstance(cell, dict):
                raise DataError(f"{places[i]}: column {column!r}: {shown(cell, 60)} is an object, not a label or a list of labels")
            if isinstance(cell, list):
                if cell:
                    lists.append(i)
            elif cell not in ("", None):
                singles.append(i)
        if lists and singles:
            odd, usual = (lists, "single labels") if len(lists) <= len(singles) else (singles, "lists of labels")
            cell = labels[odd[0]][c] if several else labels[odd[0]]
            kind = "a list" if isinstance(cell, list) else "a single label"
            raise DataError(
                f"{places[odd[0]]}: column {column!r}: {shown(cell, 40)} is {kind}, but {max(len(lists), len(singles))} other "
                f"rows hold {usual} ({len(odd)} row(s) like this one): one column holds one kind; a multi-label column "
                "writes every cell as a list"
            )


def inside_root(root: Path, name: str, where: str) -> Path:
    """``root / name`` when ``name`` stays inside ``root`` (no absolute path, no ``..`` climbing
    out); else a DataError naming the row: an annotation must not decide where images are looked for."""
    if os.path.isabs(name) or Path(name).drive:
        raise DataError(f"{where}: {name!r} is an absolute path; image names are relative to the image folder {root}")
    if os.path.normpath(name).split(os.sep)[0] == os.pardir:
        raise DataError(
            f"{where}: {name!r} leaves the image folder {root}; set data.image_root to a folder holding every image"
        )
    return root / name

"""User-facing errors.

Anything a user can cause by their input (a path, a recipe field, a data row) raises
:class:`FinetuneError`. The CLI prints its message as one line and exits with code 2;
everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FinetuneError(Exception):
    """An error caused by user input, reported as one clear line."""


class RecipeError(FinetuneError, ValueError):
    """A recipe field is unknown, mistyped or out of range."""


class DataError(FinetuneError):
    """A data file, folder or row cannot be used."""


class DivergenceError(FinetuneError):
    """The loss, the gradients or the weights stopped being finite."""


def warn(message: str) -> None:
    """A warning the user must see even with --quiet: one line on stderr."""
    import sys

    print(f"finetunekit: warning: {message}", file=sys.stderr, flush=True)


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean X?)' when a close match exists, else ''."""
    if len(name) > 200:  # nothing that long is a near miss; difflib's cost grows with the length
        return ""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to at most ``limit`` characters, without ever walking more than a few
    items of a container: an error message must stay one short line whatever a user wrote (a YAML
    alias bomb expands to more items than memory holds; ``repr`` of it never returns)."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxset = 3, 6, 6, 6, 6
    r.maxstring = r.maxother = r.maxlong = limit
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def utf8_position(data: bytes) -> str:
    """Where ``data`` stops being UTF-8, as 'line L, column C (byte 0xNN)': the line and column of
    an editor (1-based, columns in characters), found in the whole of ``data`` (an exception from a
    streaming decoder counts bytes from the start of its chunk, not of the file)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = exc.start
    else:
        return "nowhere"
    line_start = data.rfind(b"\n", 0, start) + 1
    column = len(data[line_start:start].decode("utf-8", errors="replace")) + 1
    line = data.count(b"\n", 0, start) + 1
    return f"line {line}, column {column} (byte 0x{data[start]:02x})"


def os_reason(exc: OSError) -> str:
    """The operating system's words for an OSError ('No space left on device')."""
    return exc.strerror or str(exc) or type(exc).__name__


def check_range(name: str, value: float, low: float, high: float, low_open: bool = False, high_open: bool = False) -> None:
    """Raise a RecipeError naming ``name`` unless ``low <= value <= high`` (open ends excluded);
    for the options dataclasses of components below the recipe (strategies), which cannot import it.

    Example::

        check_range("strategy.last_n", 2, 0, 10_000)  # passes; -1 raises "strategy.last_n: -1 is out of range [0, 10000]"
    """
    import math

    if isinstance(value, float) and not math.isfinite(value):
        raise RecipeError(f"{name}: must be a finite number, got {value}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        raise RecipeError(f"{name}: {value} is out of range {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}")

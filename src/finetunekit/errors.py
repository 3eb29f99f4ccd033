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
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""

"""Checking a request before anything reaches the model: every problem is a 4xx with one line.

* :func:`json_body`: the body parsed as JSON, refused with 400 when it is not JSON, when it nests
  deeper than any request of this service does (a 200,000-deep array would otherwise exhaust the
  parser's recursion: a ``RecursionError`` and a 500), or when a string in it holds a lone
  surrogate (``"\\ud800"`` is valid JSON but not Unicode text: no tokenizer, log line or answer can
  encode it);
* :func:`open_image`: an uploaded image opened from its header only, with Pillow's own bomb guard
  lifted so that the service's pixel limit (``max_image_pixels``, 413) is the one a client meets,
  not Pillow's exception (which read as a corrupt image).

Example::

    fields = json_body(b'{"texts": ["a gripping film"]}')   # {'texts': ['a gripping film']}
    json_body(b'{"texts": ["\\\\ud800 bad"]}')                # RequestError 400: texts[0]: ... lone surrogate
"""

from __future__ import annotations

import io
import json
from typing import Any

# The deepest a request goes is {"texts": [["first", "second"]]}: 3 levels; a few more leave room
# for a future field without letting a client make the checks below walk a deep structure.
MAX_DEPTH = 8
# Past Pillow's own limit too: the service compares the header's size with its own limit first.
_NO_PIXEL_BOUND = 1 << 62


class RequestError(Exception):
    """An answer other than 200: its status and one line saying why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_body(body: bytes) -> Any:
    """``body`` parsed as JSON, every string in it valid Unicode and no deeper than MAX_DEPTH."""
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"body is not valid JSON ({getattr(exc, 'msg', type(exc).__name__)})") from None
    except RecursionError:
        raise RequestError(400, f"body nests deeper than the {MAX_DEPTH} levels a request has") from None
    check_json(value)
    return value


def check_json(value: Any) -> None:
    """Walk ``value`` (iteratively: its depth is the client's choice) for a nesting deeper than
    MAX_DEPTH or a string that is not Unicode text; the error names where, as ``texts[0]``."""
    stack: list[tuple[Any, str, int]] = [(value, "body", 0)]
    while stack:
        item, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise RequestError(400, f"body nests deeper than the {MAX_DEPTH} levels a request has (at {where})")
        if isinstance(item, str):
            _check_text(item, where)
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_text(key, f"a field name in {where}")
                stack.append((child, key if where == "body" else f"{where}.{key}", depth + 1))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]", depth + 1) for i, child in enumerate(item))


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        raise RequestError(
            400, f"{where}: character {exc.start} is a lone surrogate (\\u{code:04x}), not Unicode text; "
            "send the character it stands for, or a surrogate pair"
        ) from None


def open_image(data: bytes) -> Any:
    """``PIL.Image.open`` on the bytes, lazily (only the header read), without Pillow's own
    decompression-bomb exception: the caller compares the size with the service's limit."""
    from ...data.images import open_bounded

    return open_bounded(io.BytesIO(data), _NO_PIXEL_BOUND)  # type: ignore[arg-type]

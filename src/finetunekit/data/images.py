"""Opening image files with a bound on their size in pixels.

A PNG of 20000 x 20000 one-bit pixels is a few kilobytes on disk and 1.2 GB once decoded to RGB
(a "decompression bomb"). Every image is opened through :func:`open_bounded`, which reads the header
only, compares width x height with the limit (``data.max_image_pixels``; saved in the run's
``preprocessing.json``, so predict and evaluate apply the run's own limit) and refuses the file
before anything is decoded, with a one-line error naming it. Pillow's own check, which raises an
exception of its own past twice its built-in limit, is replaced by this one.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any

from ..core.errors import DataError

# Pillow's own refusal threshold (twice Image.MAX_IMAGE_PIXELS): images it opened before the limit
# existed still open.
DEFAULT_MAX_PIXELS = 178_956_970
_PIL_LIMIT = threading.Lock()


class ImageTooLarge(DataError):
    """An image file whose header promises more pixels than the limit."""

    def __init__(self, path: str, width: int, height: int, limit: int) -> None:
        self.reason = (
            f"{width}x{height} = {width * height:,} pixels, more than data.max_image_pixels = {limit:,} "
            "(a decompression bomb? raise the limit if the image is real)"
        )
        super().__init__(f"{path}: {self.reason}")


def open_bounded(path: str, max_pixels: int | None = None) -> Any:
    """``PIL.Image.open(path)`` (lazy: nothing decoded yet) after checking its size in pixels."""
    from PIL import Image

    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    with _PIL_LIMIT:  # Pillow's limit is a module global: lift it for the header read only
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            image = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    if image.width * image.height > limit:
        image.close()
        raise ImageTooLarge(str(path), image.width, image.height, limit)
    return image


def image_size(path: str, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) from an image file's header (nothing decoded)."""
    with open_bounded(str(path), max_pixels) as image:
        return image.size


_DIGESTS: dict[tuple[str, int, int], bytes] = {}


def file_sha256(path: str) -> bytes:
    """SHA-256 of a file's bytes, remembered per process while the file is unchanged (same size and
    modification time): the feature cache's key and the resume fingerprint both hash the image
    files, and a run reads them for that once."""
    stat = os.stat(path)
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    found = _DIGESTS.get(key)
    if found is None:
        one = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                one.update(chunk)
        found = _DIGESTS[key] = one.digest()
    return found

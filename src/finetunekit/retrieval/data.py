"""Image-caption pairs: a table with an image column and a caption column, one row per caption
(several captions of one image are several rows), read strictly.

Images are identified by their resolved path; the rows of one image form a group, and retrieval
metrics are computed over the unique images (an image is found when any of its captions is).

Example::

    pairs = read_pairs("flickr8k/test.tsv")
    len(pairs), len(pairs.images)      # (5000, 1000): captions, unique images
    pairs.captions[0], pairs.images[pairs.image_of[0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import DataError
from ..data.memory import is_memory, memory_table
from ..data.readers import IMAGE_EXTENSIONS, _table
from ..data.tables import inside_root


@dataclass
class Pairs:
    """Captions (one per row) and the unique images they describe."""

    captions: list[str]
    image_of: list[int]  # for each caption, the index of its image in ``images``
    images: list[str]  # unique image paths, in order of first appearance
    source: str

    def __len__(self) -> int:
        return len(self.captions)

    def captions_of(self) -> list[list[int]]:
        """For each image, the indices of its captions."""
        groups: list[list[int]] = [[] for _ in self.images]
        for caption, image in enumerate(self.image_of):
            groups[image].append(caption)
        return groups

    def subset_images(self, keep: Sequence[int]) -> Pairs:
        """Only the images ``keep`` (indices into ``images``) and all their captions."""
        new = {old: i for i, old in enumerate(keep)}
        rows = [r for r, image in enumerate(self.image_of) if image in new]
        return Pairs([self.captions[r] for r in rows], [new[self.image_of[r]] for r in rows],
                     [self.images[i] for i in keep], f"{self.source} ({len(keep)} images)")


def read_pairs(source: Any, image_column: str = "image", caption_column: str = "caption", image_root: str | Path | None = None,
               check_files: bool = True) -> Pairs:
    """The pairs of a .csv/.tsv/.jsonl/.parquet table, or of a DataFrame / Arrow table /
    ``datasets.Dataset`` (image cells may then hold bytes or pictures: see
    ``finetunekit.data.memory``). Errors are one line naming the file, the row and the column."""
    if is_memory(source):
        table = memory_table(source, "data")
        rows, columns = table.table_rows()
        root = Path(image_root) if image_root else Path.cwd()
        name = str(table)
    else:
        path = Path(source)
        if not path.is_file():
            raise DataError(f"data path not found: {path}" if not path.exists() else f"{path}: expected a table of image and caption columns")
        rows, columns = _table(path)
        root = Path(image_root) if image_root else path.parent
        name = str(path)
    for column, option in ((image_column, "data.image_column"), (caption_column, "data.caption_column")):
        if column not in columns:
            raise DataError(f"{name}: no column {column!r} ({option}); the columns are: {', '.join(map(str, columns))}")
    captions: list[str] = []
    image_of: list[int] = []
    images: list[str] = []
    seen: dict[str, int] = {}
    for where, row in rows:
        cell, caption = row.get(image_column), row.get(caption_column)
        if cell is None or not str(cell).strip():
            raise DataError(f"{where}: empty {image_column!r} cell (every caption needs its image)")
        if caption is None or not str(caption).strip():
            raise DataError(f"{where}: empty {caption_column!r} cell (a caption is needed for every image row)")
        cell = str(cell)
        file = Path(cell) if Path(cell).is_absolute() and is_memory(source) else inside_root(root, cell, where)
        if Path(cell).suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(f"{where}: {cell!r} in column {image_column!r} is not an image file ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        key = str(file.resolve())
        if key not in seen:
            if check_files and not file.is_file():
                raise DataError(f"{where}: image not found: {file}")
            seen[key] = len(images)
            images.append(str(file))
        captions.append(" ".join(str(caption).split()))
        image_of.append(seen[key])
    if not captions:
        raise DataError(f"{name}: no data rows")
    return Pairs(captions, image_of, images, name)


def check_distinct_images(pairs: Pairs) -> None:
    """Refuse one picture listed under two paths (the same bytes twice): it would be its own
    negative in training and a second correct answer the metrics do not know about."""
    from ..data.images import file_sha256

    seen: dict[str, str] = {}
    for path in pairs.images:
        digest = file_sha256(path)
        if digest in seen:
            raise DataError(f"{pairs.source}: {path} and {seen[digest]} are the same image under two paths; list it once")
        seen[digest] = path

"""Reading segmentation data: image/mask pairs from a list file or from ``images/`` and ``masks/``.

The segmentation task reads its data through here (``SegmentationTask.reader``); each example's
input is an image path and its label the path of its index mask, which the task checks and its
joint transform reads.

In memory (a pandas DataFrame, a pyarrow Table, a ``datasets.Dataset``; ``finetunekit.data.memory``),
one row per image: an image column and a mask column, each holding paths, encoded bytes, pictures
or ``{"bytes", "path"}`` dicts (``datasets`` ``Image`` features); a mask may also be an array of
class indices, ``(height, width)``, written once as a PNG. A mask of another size than its image,
a colour mask or an empty cell is refused naming the row and the column.

Example::

    train = read_segmentation("camvid/train.txt")     # lines "train/0001.png trainannot/0001.png"
    train.inputs[0], train.labels[0]
    read_segmentation(pandas.DataFrame({"image": [...], "mask": [numpy_mask, ...]}))
"""

from __future__ import annotations

from pathlib import Path

from typing import Any

from ..data.memory import MemoryTable, mask_file, source_table
from ..data.readers import IMAGE_COLUMN_GUESSES, IMAGE_EXTENSIONS, Examples
from ..core.errors import DataError

# in-memory columns tried in order: the file tables' image names and those of datasets' sets
# (scene_parse_150: image / annotation; sidewalk-semantic: pixel_values / label)
IMAGE_COLUMNS = (*IMAGE_COLUMN_GUESSES, "img", "pixel_values")
MASK_COLUMNS = ("mask", "annotation", "label", "segmentation", "semantic_mask", "seg_mask", "gt")


def read_segmentation(path: Any, image_root: str | Path | None = None, image_column: str | None = None,
                      mask_column: str | None = None) -> Examples:
    """Examples (inputs: image paths, labels: mask paths) from a list file of ``image mask`` lines
    (paths relative to the list file; ``#`` starts a comment), a folder with ``images/`` and
    ``masks/`` matched by file stem, or an in-memory table (``image_column`` / ``mask_column``:
    data.image_column and data.label_column, default the first of the usual names; relative paths in it are relative to ``image_root``,
    default the working directory)."""
    table = source_table(path)
    if table is not None:
        return read_segmentation_table(table, image_root, image_column, mask_column)
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path not found: {path}")
    if path.is_dir():
        return _read_folders(path)
    inputs, masks, places = [], [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the list of image/mask pairs ({exc.__class__.__name__}: {exc})") from None
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        fields = text.split()
        place = f"{path}:{number}"
        if len(fields) != 2:
            raise DataError(f"{place}: expected 'IMAGE MASK' (two paths separated by white space), got {len(fields)} field(s)")
        image, mask = ((path.parent / f) if not Path(f).is_absolute() else Path(f) for f in fields)
        for kind, file in (("image", image), ("mask", mask)):
            if not file.is_file():
                raise DataError(f"{place}: {kind} not found: {file}")
        inputs.append(str(image))
        masks.append(str(mask))
        places.append(place)
    if not inputs:
        raise DataError(f"{path}: no 'IMAGE MASK' lines")
    return Examples(inputs, masks, str(path), "image", places=places)


def _read_folders(root: Path) -> Examples:
    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise DataError(f"{root}: expected the folders images/ and masks/ (masks matched by file stem), or a list file of 'IMAGE MASK' lines")
    masks_by_stem: dict[str, Path] = {}
    for mask in sorted(masks_dir.iterdir()):
        if mask.is_file() and not mask.name.startswith("."):
            # a .png mask wins over another file with the same stem
            if mask.stem not in masks_by_stem or mask.suffix.lower() == ".png":
                masks_by_stem[mask.stem] = mask
    inputs, labels = [], []
    for image in sorted(images_dir.iterdir()):
        if not image.is_file() or image.suffix.lower() not in IMAGE_EXTENSIONS or image.name.startswith("."):
            continue
        mask = masks_by_stem.get(image.stem)
        if mask is None:
            raise DataError(f"{image}: no mask named {image.stem}.png in {masks_dir}")
        inputs.append(str(image))
        labels.append(str(mask))
    if not inputs:
        raise DataError(f"{images_dir}: no images")
    return Examples(inputs, labels, str(root), "image")


def read_segmentation_table(table: MemoryTable, image_root: str | Path | None = None, image_column: str | None = None,
                            mask_column: str | None = None) -> Examples:
    """Image/mask pairs from an in-memory table; each mask is checked here against its image (a
    single-channel index image of the same size), naming the row and the column."""
    from PIL import Image, UnidentifiedImageError

    from .segmentation import MASK_MODES

    rows, columns = table.table_rows()
    listed = ", ".join(columns)
    found = {}
    for role, named, guesses, setting in (("image", image_column, IMAGE_COLUMNS, "data.image_column"),
                                          ("mask", mask_column, MASK_COLUMNS, "data.label_column")):
        column = named or next((c for c in guesses if c in columns and c not in found.values()), None)
        if column is None or column not in columns:
            shown = f" {column!r}" if column else f" (one of {', '.join(guesses)})"
            raise DataError(f"{table}: no {role} column{shown} (columns: {listed}); set {setting}")
        found[role] = column
    base = Path(image_root) if image_root is not None else Path.cwd()
    inputs, masks, places = [], [], []
    for where, row in rows:
        files = {}
        for role, column in found.items():
            cell = row.get(column)
            if cell is None or (isinstance(cell, str) and not cell.strip()):
                raise DataError(f"{where}: empty {role} in column {column!r} (expected a path, bytes, a picture"
                                f"{' or an array of class indices' if role == 'mask' else ''})")
            if isinstance(cell, list):
                if role == "image":
                    raise DataError(f"{where}: column {column!r}: an array; give images as paths, bytes or pictures")
                cell = mask_file(cell, where, column)
            file = base / str(cell).strip()
            if not file.is_file():
                raise DataError(f"{where}: column {column!r}: {role} file not found: {file}")
            try:
                with Image.open(file) as picture:  # the header only
                    files[role] = (file, picture.size, picture.mode)
            except (UnidentifiedImageError, OSError, SyntaxError) as exc:
                raise DataError(f"{where}: column {column!r}: cannot read the {role} {file} ({type(exc).__name__})") from None
        (image, size, _), (mask, mask_size, mode) = files["image"], files["mask"]
        if mode not in MASK_MODES:
            raise DataError(f"{where}: column {found['mask']!r}: a mask must be a single-channel index image (a class index "
                            f"per pixel), got mode {mode}")
        if mask_size != size:
            raise DataError(f"{where}: column {found['mask']!r}: the mask is {mask_size[0]}x{mask_size[1]} but its image "
                            f"(column {found['image']!r}) is {size[0]}x{size[1]}")
        inputs.append(str(image))
        masks.append(str(mask))
        places.append(where)
    return Examples(inputs, masks, str(table), "image", places=places)


def memory_layout(table: MemoryTable) -> str | None:
    """Zero-config: why an in-memory table holds image/mask pairs (an image column beside a mask
    column whose first cell is a picture or an array), or None."""
    image = next((c for c in IMAGE_COLUMNS if c in table.columns), None)
    if image is None or not table.rows:
        return None
    for mask in (c for c in MASK_COLUMNS if c in table.columns and c != image):
        cell = table.rows[0].get(mask)  # as given: nothing is written to find the layout
        # a 2-D array (a list of names is a multi-label image table), a picture, bytes or an image path
        if ((isinstance(cell, list) and cell and isinstance(cell[0], list)) or isinstance(cell, (bytes, bytearray, dict))
                or type(cell).__module__.split(".")[0] == "PIL" or Path(str(cell)).suffix.lower() in IMAGE_EXTENSIONS):
            return f"column {image!r} holds images and column {mask!r} their masks"
    return None

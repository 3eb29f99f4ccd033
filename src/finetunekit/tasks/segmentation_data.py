"""Reading segmentation data: image/mask pairs from a list file or from ``images/`` and ``masks/``.

The segmentation task reads its data through here (``SegmentationTask.reader``); each example's
input is an image path and its label the path of its index mask, which the task checks and its
joint transform reads.

Example::

    train = read_segmentation("camvid/train.txt")     # lines "train/0001.png trainannot/0001.png"
    train.inputs[0], train.labels[0]
"""

from __future__ import annotations

from pathlib import Path

from ..data.readers import IMAGE_EXTENSIONS, Examples
from ..core.errors import DataError


def read_segmentation(path: str | Path) -> Examples:
    """Examples (inputs: image paths, labels: mask paths) from a list file of ``image mask`` lines
    (paths relative to the list file; ``#`` starts a comment) or a folder with ``images/`` and
    ``masks/`` matched by file stem."""
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

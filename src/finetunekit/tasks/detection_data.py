"""Reading object-detection annotations: COCO JSON, Pascal VOC XML folders and box tables.

Every reader gives :class:`~finetunekit.data.readers.Examples` whose inputs are image paths and
whose label cell per image is a list of boxes ``(x1, y1, x2, y2, class name, where)`` in the
image's pixel coordinates (``where`` names the file and row or object, for error messages). An
image with no boxes has an empty list: it is a valid example (it teaches the detector what is not
an object). Boxes are checked against the image's real size (read from the file's header): a box
outside the image, a box with no area, an unreadable annotation file or a missing image is a
:class:`~finetunekit.core.errors.DataError` naming the file, the row and the field.

Formats (chosen from the path):

* a ``.json`` file: COCO (``images``, ``annotations`` with ``bbox = [x, y, width, height]``,
  ``categories``); crowd annotations (``iscrowd: 1``) are left out, as COCO's evaluation ignores them;
* a folder: Pascal VOC, one ``.xml`` per image, in ``Annotations/`` (or ``annotations/``, or the
  folder itself), images in ``JPEGImages/`` (or ``images/``, or next to the XML files);
* a ``.csv`` / ``.tsv`` table, one row per box: an image column (``file``, ``filename``, ``image``,
  ...), the corners ``x1, y1, x2, y2`` (or ``xmin, ymin, xmax, ymax``) and a label column
  (``label`` or ``class``); a row whose box cells are empty lists an image without boxes. A table
  without a label column is single-class: the class is the one ``classes`` names.

``image_list``: a text file of image file names, one a line (Penn-Fudan's ``train.txt``); only the
images it names are kept, in its order, and a name that the annotations do not have is an error.

Example::

    train = read_detection("raccoon/labels_csv/train_labels.csv", image_root="raccoon/images")
    train.inputs[0], train.labels[0]   # 'raccoon/images/raccoon-17.jpg', [(95.0, 60.0, 167.0, 118.0, 'raccoon', '...csv:2')]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..data.readers import IMAGE_COLUMN_GUESSES, IMAGE_EXTENSIONS, Examples, select_listed
from ..data.tables import csv_rows, inside_root
from ..core.errors import DataError

BOX_COLUMNS = (("x1", "y1", "x2", "y2"), ("xmin", "ymin", "xmax", "ymax"))
LABEL_COLUMN_GUESSES = ("label", "class", "category", "class_name", "name")

# (x1, y1, x2, y2, class name, where)
Box = tuple[float, float, float, float, str, str]


def box_columns(path: Path) -> tuple[str, ...] | None:
    """The corner columns of a table of boxes (``xmin, ymin, xmax, ymax``...), or None."""
    from ..data.readers import _table

    columns = _table(path)[1]
    return next((names for names in BOX_COLUMNS if all(n in columns for n in names)), None)


def is_detection_source(path: str | Path) -> bool:
    """Whether ``path`` looks like detection annotations this module reads."""
    p = Path(path)
    return p.suffix.lower() in (".json", ".csv", ".tsv") or p.is_dir()


def read_detection(
    path: str | Path,
    image_root: str | Path | None = None,
    image_list: str | Path | None = None,
    classes: list[str] | None = None,
    require_labels: bool = True,
) -> Examples:
    """Images and their boxes from ``path`` (see the module docstring for the formats).

    ``image_root``: the folder image file names are relative to (default: the annotation file's
    folder, a COCO file's ``images/`` sibling when its names are not found there, a VOC folder's
    image folder). ``classes``: the class of a table without a label column (exactly one).
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"data path not found: {p}")
    root = Path(image_root) if image_root is not None else None
    if root is not None and not root.is_dir():
        raise DataError(f"data.image_root: {root} is not a folder")
    if p.is_dir():
        examples = _read_voc(p, root)
    elif p.suffix.lower() == ".json":
        examples = _read_coco(p, root)
    elif p.suffix.lower() in (".csv", ".tsv", ".txt"):
        examples = _read_box_table(p, root, classes, require_labels)
    else:
        raise DataError(f"{p}: not detection annotations (a COCO .json file, a Pascal VOC folder or a .csv of boxes)")
    if image_list is not None:
        examples = select_listed(examples, image_list)
    if not len(examples):
        raise DataError(f"{p}: no images")
    return examples


# -- boxes and images ------------------------------------------------------------------------------


def _image_size(file: Path, where: str) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    if not file.is_file():
        raise DataError(f"{where}: image file not found: {file}")
    if file.suffix.lower() not in IMAGE_EXTENSIONS:
        raise DataError(f"{where}: {file} is not an image file ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    try:
        with Image.open(file) as image:  # the header only: nothing is decoded
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{where}: cannot read image {file} ({exc.__class__.__name__}: {exc})") from None


def _number(value: Any, where: str, field: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: field {field!r}: {value!r} is not a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise DataError(f"{where}: field {field!r}: {value!r} is not a finite number")
    return number


def check_box(box: Box, size: tuple[int, int], fields: tuple[str, str, str, str], file: Path) -> Box:
    """``box`` if it lies inside an image of ``size`` (width, height) and has an area; else a
    DataError naming the field."""
    x1, y1, x2, y2, label, where = box
    width, height = size
    for value, field, limit in ((x1, fields[0], width), (y1, fields[1], height), (x2, fields[2], width), (y2, fields[3], height)):
        if value < 0 or value > limit:
            side = "width" if field == fields[0] or field == fields[2] else "height"
            raise DataError(f"{where}: field {field!r}: {value:g} is outside the image {file.name} ({side} {limit})")
    if x2 <= x1 or y2 <= y1:
        raise DataError(f"{where}: fields {fields[0]!r}..{fields[3]!r}: box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) has no area (needs x1 < x2 and y1 < y2)")
    if not str(label).strip():
        raise DataError(f"{where}: empty class name")
    return (x1, y1, x2, y2, str(label).strip(), where)


# -- COCO ------------------------------------------------------------------------------------------


def _read_coco(path: Path, root: Path | None) -> Examples:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read COCO annotations ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: not COCO annotations (expected an object with 'images', 'annotations' and 'categories')")
    categories: dict[Any, str] = {}
    for i, cat in enumerate(data.get("categories") or []):
        if not isinstance(cat, dict) or "id" not in cat or not str(cat.get("name", "")).strip():
            raise DataError(f"{path}: categories[{i}]: needs 'id' and 'name'")
        categories[cat["id"]] = str(cat["name"]).strip()
    base = root if root is not None else path.parent
    images: dict[Any, tuple[Path, str, tuple[int, int]]] = {}
    order: list[Any] = []
    for i, image in enumerate(data["images"]):
        where = f"{path}: images[{i}]"
        if not isinstance(image, dict) or "id" not in image or not str(image.get("file_name", "")).strip():
            raise DataError(f"{where}: needs 'id' and 'file_name'")
        file = inside_root(base, str(image["file_name"]), f"{where} (file_name)")
        if root is None and not file.is_file() and (path.parent / "images" / str(image["file_name"])).is_file():
            file = path.parent / "images" / str(image["file_name"])
        size = _image_size(file, f"{where} (file_name)")
        stated = (image.get("width"), image.get("height"))
        if None not in stated and (int(stated[0]), int(stated[1])) != size:
            raise DataError(f"{where}: width x height {stated[0]}x{stated[1]} differs from the image file's {size[0]}x{size[1]} ({file})")
        if image["id"] in images:
            raise DataError(f"{where}: image id {image['id']!r} is used twice")
        images[image["id"]] = (file, where, size)
        order.append(image["id"])
    boxes: dict[Any, list[Box]] = {k: [] for k in order}
    for i, ann in enumerate(data.get("annotations") or []):
        where = f"{path}: annotations[{i}]"
        if not isinstance(ann, dict):
            raise DataError(f"{where}: expected an object")
        if ann.get("iscrowd"):
            continue
        if ann.get("image_id") not in images:
            raise DataError(f"{where}: field 'image_id': {ann.get('image_id')!r} is not an id of 'images'")
        if ann.get("category_id") not in categories:
            raise DataError(f"{where}: field 'category_id': {ann.get('category_id')!r} is not an id of 'categories'")
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise DataError(f"{where}: field 'bbox': expected [x, y, width, height], got {bbox!r}")
        x, y, w, h = (_number(v, where, "bbox") for v in bbox)
        file, _, size = images[ann["image_id"]]
        boxes[ann["image_id"]].append(check_box((x, y, x + w, y + h, categories[ann["category_id"]], where), size, ("bbox",) * 4, file))
    return Examples(
        [str(images[k][0]) for k in order], [boxes[k] for k in order], str(path), "image",
        places=[images[k][1] for k in order],
    )


# -- Pascal VOC ------------------------------------------------------------------------------------


def _read_voc(folder: Path, root: Path | None) -> Examples:
    notes = folder / "Annotations" if (folder / "Annotations").is_dir() else folder / "annotations"
    if not notes.is_dir():
        notes = folder
    files = sorted(notes.glob("*.xml"), key=_natural)
    if not files:
        raise DataError(f"{folder}: no Pascal VOC .xml files (in Annotations/, annotations/ or the folder itself)")
    if root is None:
        root = next((folder / n for n in ("JPEGImages", "images", "Images") if (folder / n).is_dir()), notes)
    inputs: list[str] = []
    labels: list[list[Box]] = []
    for xml in files:
        file, boxes = _read_voc_file(xml, root)
        inputs.append(str(file))
        labels.append(boxes)
    return Examples(inputs, labels, str(folder), "image", places=[str(x) for x in files])


def _read_voc_file(xml: Path, root: Path) -> tuple[Path, list[Box]]:
    import xml.etree.ElementTree as ET

    try:
        tree = ET.parse(xml)
    except (OSError, ET.ParseError) as exc:
        raise DataError(f"{xml}: cannot read the annotation file ({exc.__class__.__name__}: {exc})") from None
    node = tree.getroot()
    name = (node.findtext("filename") or "").strip()
    if not name:
        raise DataError(f"{xml}: field 'filename': missing or empty")
    file = inside_root(root, name, f"{xml}: field 'filename'")
    if not file.is_file() and not Path(name).suffix:  # some tools leave the extension out
        file = next((root / f"{name}{ext}" for ext in (".jpg", ".jpeg", ".png") if (root / f"{name}{ext}").is_file()), file)
    size = _image_size(file, f"{xml}: field 'filename'")
    stated = (node.findtext("size/width"), node.findtext("size/height"))
    if all(s and s.strip() for s in stated) and (int(float(stated[0])), int(float(stated[1]))) != size:
        raise DataError(f"{xml}: field 'size': {stated[0]}x{stated[1]} differs from the image file's {size[0]}x{size[1]} ({file})")
    boxes: list[Box] = []
    for k, obj in enumerate(node.findall("object"), start=1):
        where = f"{xml}: object {k}"
        label = (obj.findtext("name") or "").strip()
        if not label:
            raise DataError(f"{where}: field 'name': missing or empty")
        coords = []
        for field in ("xmin", "ymin", "xmax", "ymax"):
            text = obj.findtext(f"bndbox/{field}")
            if text is None:
                raise DataError(f"{where}: field 'bndbox/{field}': missing")
            coords.append(_number(text.strip(), where, f"bndbox/{field}"))
        boxes.append(check_box((*coords, label, where), size, ("bndbox/xmin", "bndbox/ymin", "bndbox/xmax", "bndbox/ymax"), file))  # type: ignore[arg-type]
    return file, boxes


def _natural(path: Path) -> list[Any]:
    """raccoon-2 before raccoon-10."""
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


# -- box tables ------------------------------------------------------------------------------------


def _read_box_table(path: Path, root: Path | None, classes: list[str] | None, require_labels: bool) -> Examples:
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            rows = list(csv_rows(path, handle, delimiter="\t" if path.suffix.lower() in (".tsv", ".txt") else ","))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the box table ({exc.__class__.__name__}: {exc})") from None
    if not rows:
        raise DataError(f"{path}: no data rows")
    columns = list(rows[0][1])
    image_column = next((c for c in IMAGE_COLUMN_GUESSES if c in columns), None)
    if image_column is None:
        raise DataError(f"{path}: no image column (one of {', '.join(IMAGE_COLUMN_GUESSES)}; columns: {', '.join(columns)})")
    box_columns = next((names for names in BOX_COLUMNS if all(n in columns for n in names)), None)
    if box_columns is None:
        raise DataError(f"{path}: no box columns (x1, y1, x2, y2 or xmin, ymin, xmax, ymax; columns: {', '.join(columns)})")
    label_column = next((c for c in LABEL_COLUMN_GUESSES if c in columns), None)
    single = None
    if label_column is None:
        if classes and len(classes) == 1:
            single = classes[0]
        elif require_labels:
            raise DataError(
                f"{path}: no label column (one of {', '.join(LABEL_COLUMN_GUESSES)}; columns: {', '.join(columns)}); "
                "for a single-class table name its class in task.classes, e.g. [pedestrian]"
            )
    base = root if root is not None else path.parent
    for where, row in rows:  # before the image folder is chosen: a row must not choose it by climbing out
        inside_root(base, str(row.get(image_column) or "").strip(), f"{where}: field {image_column!r}")
    if root is None and not any((base / str(row.get(image_column, "")).strip()).is_file() for _, row in rows[:5]):
        for name in ("images", "PNGImages", "JPEGImages"):  # raccoon: labels_csv/ next to images/
            for candidate in (path.parent / name, path.parent.parent / name):
                if candidate.is_dir() and any((candidate / str(r.get(image_column, "")).strip()).is_file() for _, r in rows[:5]):
                    base = candidate
                    break
            if base != path.parent:
                break
    order: list[str] = []
    found: dict[str, tuple[Path, str, list[Box]]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for where, row in rows:
        name = str(row.get(image_column) or "").strip()
        if not name:
            raise DataError(f"{where}: field {image_column!r}: empty image name")
        if name not in found:
            file = base / name
            sizes[name] = _image_size(file, f"{where}: field {image_column!r}")
            found[name] = (file, where, [])
            order.append(name)
        cells = [str(row.get(c) or "").strip() for c in box_columns]
        if not any(cells):  # an image listed without a box
            continue
        coords = [_number(v, where, c) for v, c in zip(cells, box_columns, strict=True)]
        label = single if single is not None else (str(row.get(label_column) or "").strip() if label_column else "")
        if not label and label_column is not None:
            raise DataError(f"{where}: field {label_column!r}: empty class name")
        file = found[name][0]
        stated = (row.get("width"), row.get("height"))
        if all(s and str(s).strip() for s in stated) and (int(float(stated[0])), int(float(stated[1]))) != sizes[name]:  # type: ignore[arg-type]
            raise DataError(f"{where}: fields 'width', 'height': {stated[0]}x{stated[1]} differs from the image file's {sizes[name][0]}x{sizes[name][1]} ({file})")
        found[name][2].append(check_box((*coords, label, where), sizes[name], box_columns, file))  # type: ignore[arg-type]
    if not order:
        raise DataError(f"{path}: no data rows")
    return Examples(
        [str(found[n][0]) for n in order], [found[n][2] for n in order], str(path), "image",
        places=[found[n][1] for n in order],
    )

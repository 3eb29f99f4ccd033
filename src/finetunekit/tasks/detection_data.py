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

* in memory (a pandas DataFrame, a pyarrow Table, a ``datasets.Dataset``; see
  ``finetunekit.data.memory``), one row per image: an image column (paths, bytes, pictures or
  ``{"bytes", "path"}`` dicts) and the boxes as ``datasets`` object-detection sets hold them, a
  column ``objects`` of ``{"bbox": [[...], ...], "category": [...]}`` (or a list of
  ``{"bbox", "category"}`` dicts), or two columns ``bbox`` and ``category`` of per-row lists. A box
  is four numbers, ``[x, y, width, height]`` (COCO's convention, ``box_format="xywh"``, the default)
  or ``[x1, y1, x2, y2]`` (``box_format="xyxy"``); a category is a name, an integer (a ``ClassLabel``
  reads as its name). A box that does not fit its image under the convention given, while the
  other convention fits every box of its row, says so.

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

from ..data.memory import MemoryTable, source_table
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
    box_format: str | None = None,
    image_column: str | None = None,
) -> Examples:
    """Images and their boxes from ``path`` (see the module docstring for the formats).

    ``image_root``: the folder image file names are relative to (default: the annotation file's
    folder, a COCO file's ``images/`` sibling when its names are not found there, a VOC folder's
    image folder; for in-memory data, the working directory). ``classes``: the class of a table
    without a label column (exactly one). ``box_format`` (``xywh``, the default, or ``xyxy``) and
    ``image_column`` (default: the first of the usual names) apply to in-memory data.
    """
    table = source_table(path)
    if table is not None:
        examples = read_detection_table(table, image_root, box_format or "xywh", image_column)
        return select_listed(examples, image_list) if image_list is not None else examples
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


# -- in memory: a DataFrame, Arrow table or datasets.Dataset, one row per image ---------------------

# in-memory image columns: the file tables' names, and the names datasets' image sets use
MEMORY_IMAGE_COLUMNS = (*IMAGE_COLUMN_GUESSES, "img", "pixel_values")
OBJECT_COLUMNS = ("objects", "annotations")  # "annotation" is a segmentation set's mask (scene_parse_150)
BOX_KEYS = ("bbox", "bboxes", "boxes", "box")
CATEGORY_KEYS = ("category", "categories", "label", "labels", "class", "classes", "category_id")
BOX_FORMATS = {"xywh": "[x, y, width, height]", "xyxy": "[x1, y1, x2, y2]"}
# float32 boxes (a datasets Value("float32")) may overshoot an edge by a rounding error
EDGE_SLACK = 1e-3


def read_detection_table(table: MemoryTable, image_root: str | Path | None = None, box_format: str = "xywh",
                         image_column: str | None = None) -> Examples:
    """Images and their boxes from an in-memory table (see the module docstring); every error names
    the table, the row index and the column."""
    if box_format not in BOX_FORMATS:
        raise DataError(f"task.box_format: {box_format!r} is not one of {', '.join(BOX_FORMATS)}")
    rows, columns = table.table_rows()
    listed = ", ".join(columns)
    image_column = image_column or next((c for c in MEMORY_IMAGE_COLUMNS if c in columns), None)
    if image_column is None or image_column not in columns:
        named = f" {image_column!r}" if image_column else f" (one of {', '.join(MEMORY_IMAGE_COLUMNS)})"
        raise DataError(f"{table}: no image column{named} (columns: {listed}); set data.image_column")
    objects = next((c for c in OBJECT_COLUMNS if c in columns), None)
    flat = (next((c for c in BOX_KEYS if c in columns), None), next((c for c in CATEGORY_KEYS if c in columns), None))
    if objects is None and None in flat:
        raise DataError(
            f"{table}: no boxes: expected a column 'objects' holding {{'bbox': [[x, y, w, h], ...], 'category': [...]}} "
            f"per row, or a column 'bbox' of per-row box lists beside a column 'category' (columns: {listed})"
        )
    base = Path(image_root) if image_root is not None else Path.cwd()
    if image_root is not None and not base.is_dir():
        raise DataError(f"data.image_root: {base} is not a folder")
    inputs, labels, places = [], [], []
    for where, row in rows:
        cell = row.get(image_column)
        if cell is None or not str(cell).strip():
            raise DataError(f"{where}: empty image in column {image_column!r} (expected a path, bytes or a picture)")
        file = base / str(cell).strip()
        size = _image_size(file, f"{where}: column {image_column!r}")
        if objects is not None:
            column = objects
            boxes, categories = _objects_cell(row.get(objects), f"{where}: column {objects!r}")
        else:
            column = f"{flat[0]}' / '{flat[1]}"
            boxes, categories = row.get(flat[0]), row.get(flat[1])
            boxes, categories = ([] if boxes is None else _as_list(boxes)), ([] if categories is None else _as_list(categories))
            if len(boxes) != len(categories):
                raise DataError(f"{where}: columns {flat[0]!r} and {flat[1]!r}: {len(boxes)} boxes but {len(categories)} categories")
        inputs.append(str(file))
        labels.append(_row_boxes(boxes, categories, size, box_format, f"{where}: column '{column}'", file))
        places.append(where)
    return Examples(inputs, labels, str(table), "image", places=places)


def memory_layout(table: MemoryTable) -> str | None:
    """Zero-config: why an in-memory table holds boxes (an ``objects`` column, or ``bbox`` beside
    ``category``), or None."""
    columns = table.columns
    first = table.rows[0] if table.rows else {}
    # a column of dicts or of lists (of dicts, or of boxes): nothing else holds boxes
    objects = next((c for c in OBJECT_COLUMNS if c in columns and isinstance(first.get(c), (dict, list))), None)
    if objects is None and any(c in columns for c in CATEGORY_KEYS):
        objects = next((c for c in BOX_KEYS if c in columns and isinstance(first.get(c), list)), None)
    return f"column {objects!r} holds boxes" if objects is not None else None


def _as_list(value: Any) -> list[Any]:
    return value.tolist() if hasattr(value, "tolist") else list(value) if isinstance(value, (list, tuple)) else [value]


def _objects_cell(cell: Any, where: str) -> tuple[list[Any], list[Any]]:
    """(boxes, categories) of an ``objects`` cell: a dict of lists, or a list of dicts."""
    if cell is None:
        return [], []
    if isinstance(cell, dict):
        box_key = next((k for k in BOX_KEYS if k in cell), None)
        category_key = next((k for k in CATEGORY_KEYS if k in cell), None)
        if box_key is None or category_key is None:
            raise DataError(f"{where}: expected {{'bbox': [...], 'category': [...]}}, got the keys {', '.join(map(str, cell)) or 'none'}")
        boxes, categories = _as_list(cell[box_key] if cell[box_key] is not None else []), _as_list(cell[category_key] if cell[category_key] is not None else [])
        if len(boxes) != len(categories):
            raise DataError(f"{where}: {len(boxes)} boxes ({box_key!r}) but {len(categories)} categories ({category_key!r})")
        return boxes, categories
    if isinstance(cell, (list, tuple)) or hasattr(cell, "tolist"):
        boxes, categories = [], []
        for k, item in enumerate(_as_list(cell), start=1):
            if not isinstance(item, dict):
                raise DataError(f"{where}: object {k}: expected a dict {{'bbox': [...], 'category': ...}}, got {type(item).__name__}")
            box_key = next((key for key in BOX_KEYS if key in item), None)
            category_key = next((key for key in CATEGORY_KEYS if key in item), None)
            if box_key is None or category_key is None:
                raise DataError(f"{where}: object {k}: expected the keys 'bbox' and 'category', got {', '.join(map(str, item))}")
            boxes.append(item[box_key])
            categories.append(item[category_key])
        return boxes, categories
    raise DataError(f"{where}: expected {{'bbox': [...], 'category': [...]}} or a list of such dicts, got {type(cell).__name__}")


def _corners(box: list[float], box_format: str) -> tuple[float, float, float, float]:
    if box_format == "xywh":
        return box[0], box[1], box[0] + box[2], box[1] + box[3]
    return box[0], box[1], box[2], box[3]


def _fits(corners: tuple[float, float, float, float], size: tuple[int, int]) -> bool:
    x1, y1, x2, y2 = corners
    return -EDGE_SLACK <= x1 < x2 <= size[0] + EDGE_SLACK and -EDGE_SLACK <= y1 < y2 <= size[1] + EDGE_SLACK


def _row_boxes(boxes: list[Any], categories: list[Any], size: tuple[int, int], box_format: str, where: str, file: Path) -> list[Box]:
    """The row's boxes as corners in pixels, each checked against the image's ``size``."""
    numbers = []
    for k, box in enumerate(boxes, start=1):
        values = _as_list(box) if box is not None else []
        if len(values) != 4:
            raise DataError(f"{where}: box {k}: expected 4 numbers {BOX_FORMATS[box_format]}, got {box!r}")
        numbers.append([_number(v, f"{where}: box {k}", "bbox") for v in values])
    other = "xyxy" if box_format == "xywh" else "xywh"
    out: list[Box] = []
    for k, (values, category) in enumerate(zip(numbers, categories, strict=True), start=1):
        corners = _corners(values, box_format)
        if not _fits(corners, size):
            x1, y1, x2, y2 = corners
            why = ("has no area (needs a positive width and height)" if x2 <= x1 or y2 <= y1 else
                   f"reaches ({x1:g}, {y1:g})-({x2:g}, {y2:g}), outside the image {file.name} ({size[0]}x{size[1]})")
            hint = (f"; as {BOX_FORMATS[other]} every box of this row fits: set task.box_format: {other}"
                    if all(_fits(_corners(v, other), size) for v in numbers) else "")
            shown = "[" + ", ".join(f"{v:g}" for v in values) + "]"
            raise DataError(f"{where}: box {k} {shown} read as {BOX_FORMATS[box_format]} "
                            f"(task.box_format: {box_format}) {why}{hint}")
        name = "" if category is None else str(category).strip()
        if not name:
            raise DataError(f"{where}: box {k}: empty category")
        x1, y1, x2, y2 = corners
        out.append((max(0.0, x1), max(0.0, y1), min(float(size[0]), x2), min(float(size[1]), y2), name, f"{where}: box {k}"))
    return out

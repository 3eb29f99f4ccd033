"""Detection and segmentation targets in memory (a DataFrame, a pyarrow Table, a datasets.Dataset):
boxes as ``datasets`` object-detection sets hold them (``objects: {bbox, category}``, COCO's
[x, y, width, height] unless ``task.box_format: xyxy``), masks as paths, bytes, pictures or
arrays; read as the file readers read the same annotations, bad cells refused in one line naming
the column and the row, and a run from memory matching the run from the equivalent files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from finetunekit.core.errors import DataError
from finetunekit.tasks import task_reader
from test_detection import det_recipe, make_boxes_set, write_coco, write_csv
from test_segmentation import make_seg_set, seg_recipe

pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")
datasets = pytest.importorskip("datasets")

CLASSES = ["blue", "red"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNEKIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _png_bytes(path: Path) -> bytes:
    return path.read_bytes()


def _xywh(annotation):
    return [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2, _ in annotation["boxes"]]


def _boxes_frame(root: Path, annotations, embed: bool = False):
    """One row per image: the image (a path, or its PNG bytes) and ``objects`` as a dict of lists."""
    return pd.DataFrame({
        "image": [_png_bytes(root / a["file"]) if embed else str(root / a["file"]) for a in annotations],
        "objects": [{"bbox": _xywh(a), "category": [b[4] for b in a["boxes"]]} for a in annotations],
    })


def _boxes_dataset(root: Path, annotations, names=CLASSES):
    """As an object-detection set on the Hub: an Image column, ``objects`` with a ClassLabel category."""
    features = datasets.Features({
        "image": datasets.Image(),
        "objects": {"bbox": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
                    "category": datasets.List(datasets.ClassLabel(names=list(names)))},
    })
    return datasets.Dataset.from_dict({
        "image": [{"bytes": _png_bytes(root / a["file"]), "path": None} for a in annotations],
        "objects": [{"bbox": _xywh(a), "category": [list(names).index(b[4]) for b in a["boxes"]]} for a in annotations],
    }, features=features)


def _boxes(examples):
    """Per image its boxes (corners and class), in order, and its pixels' digest."""
    from PIL import Image

    return [(Image.open(p).tobytes(), sorted((*(round(v, 3) for v in b[:4]), b[4]) for b in boxes))
            for p, boxes in zip(examples.inputs, examples.labels, strict=True)]


@pytest.fixture(scope="module")
def boxes(tmp_path_factory):
    root = tmp_path_factory.mktemp("mem-boxes")
    return root, make_boxes_set(root / "images", n=6)


# -- detection: reading ---------------------------------------------------------------------------


def test_detection_containers_read_like_the_coco_file(boxes):
    root, annotations = boxes
    read = task_reader("detection", image_root=str(root / "images"))
    from_file = _boxes(read(str(write_coco(root / "coco.json", annotations))))
    frame = _boxes_frame(root / "images", annotations, embed=True)
    assert _boxes(read(frame)) == from_file
    assert _boxes(read(_boxes_dataset(root / "images", annotations))) == from_file
    # corners in two flat columns of per-row lists, told by task.box_format: xyxy; relative paths under data.image_root
    table = pa.table({"file": [a["file"] for a in annotations],
                      "bbox": [[list(b[:4]) for b in a["boxes"]] for a in annotations],
                      "category": [[b[4] for b in a["boxes"]] for a in annotations]})
    examples = task_reader("detection", image_root=str(root / "images"), box_format="xyxy")(table)
    assert _boxes(examples) == from_file and examples.places[2].endswith(": row 2")
    # a list of {"bbox", "category"} dicts per row
    listed = pd.DataFrame({"image": frame["image"], "objects": [
        [{"bbox": box, "category": b[4]} for box, b in zip(_xywh(a), a["boxes"], strict=True)] for a in annotations]})
    assert _boxes(read(listed)) == from_file
    # the same as a dataset whose objects are a list of dicts with a ClassLabel inside
    features = datasets.Features({"image": datasets.Image(), "objects": datasets.List({
        "bbox": datasets.List(datasets.Value("float32"), length=4), "category": datasets.ClassLabel(names=CLASSES), "area": datasets.Value("int32")})})
    objects = [[{"bbox": box, "category": CLASSES.index(b[4]), "area": int(box[2] * box[3])} for box, b in zip(_xywh(a), a["boxes"], strict=True)]
               for a in annotations]
    ds = datasets.Dataset.from_dict({"image": [{"bytes": c, "path": None} for c in frame["image"]], "objects": objects}, features=features)
    assert _boxes(read(ds)) == from_file


@pytest.mark.parametrize("change, pattern", [
    (lambda f: f.drop(columns=["objects"]), r"DataFrame data \(memory:pandas:[0-9a-f]{12}\): no boxes: expected a column 'objects'.*"
                                           r"\(columns: image\)"),
    (lambda f: f.rename(columns={"image": "picture"}), r"no image column \(one of file, image, .*\(columns: picture, objects\); set data.image_column"),
    (lambda f: f.assign(image=[None] * len(f)), r"row 10: empty image in column 'image'"),
    (lambda f: f.assign(objects=[{"bbox": [[10, 20, 60, 50]], "category": ["red"]}] * len(f)),
     r"row 10: column 'objects': box 1 \[10, 20, 60, 50\] read as \[x, y, width, height\] \(task.box_format: xywh\) reaches "
     r"\(10, 20\)-\(70, 70\), outside the image img_0.png \(80x64\); as \[x1, y1, x2, y2\] every box of this row fits: set task.box_format: xyxy"),
    (lambda f: f.assign(objects=[{"bbox": [[1, 2, 3]], "category": ["red"]}] * len(f)), r"row 10: column 'objects': box 1: expected 4 numbers"),
    (lambda f: f.assign(objects=[{"bbox": [[1, 2, 3, 4], [1, 2, 3, 4]], "category": ["red"]}] * len(f)),
     r"row 10: column 'objects': 2 boxes \('bbox'\) but 1 categories"),
])
def test_bad_detection_rows_name_the_column_and_the_row(boxes, change, pattern):
    root, annotations = boxes
    frame = _boxes_frame(root / "images", annotations)
    frame.index = range(10, 10 + len(frame))
    with pytest.raises(DataError, match=pattern) as caught:
        task_reader("detection")(change(frame))
    assert "\n" not in str(caught.value)


def test_classlabel_names_inside_objects_must_agree_between_splits(boxes):
    from finetunekit.data.memory import memory_splits

    root, annotations = boxes
    train = _boxes_dataset(root / "images", annotations)
    assert memory_splits(train, _boxes_dataset(root / "images", annotations[:2]))[1].class_names == {"objects.category": CLASSES}
    with pytest.raises(DataError, match=r"datasets.Dataset val .*: column 'objects.category': its ClassLabel names \['red', 'blue'\] differ"):
        memory_splits(train, _boxes_dataset(root / "images", annotations[:2], names=["red", "blue"]))


# -- segmentation: reading ------------------------------------------------------------------------


def _masks(examples):
    from PIL import Image

    return [(Image.open(i).tobytes(), np.asarray(Image.open(m)).tolist()) for i, m in zip(examples.inputs, examples.labels, strict=True)]


def _seg_rows(root: Path):
    lines = (root / "list.txt").read_text().split("\n")
    return [tuple(root / part for part in line.split()) for line in lines if line.strip()]


def _seg_frame(root: Path, mask_as: str = "array"):
    from PIL import Image

    pairs = _seg_rows(root)
    cells = {"array": lambda m: np.asarray(Image.open(m)), "picture": lambda m: Image.open(m), "bytes": _png_bytes, "path": str}
    return pd.DataFrame({"image": [_png_bytes(i) for i, _ in pairs], "mask": [cells[mask_as](m) for _, m in pairs]})


def _seg_dataset(root: Path):
    pairs = _seg_rows(root)
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    return datasets.Dataset.from_dict({"image": [{"bytes": _png_bytes(i), "path": None} for i, _ in pairs],
                                       "annotation": [{"bytes": _png_bytes(m), "path": None} for _, m in pairs]}, features=features)


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    root = tmp_path_factory.mktemp("mem-seg")
    make_seg_set(root / "train", 8, 0)
    make_seg_set(root / "val", 4, 1)
    return root


@pytest.mark.parametrize("mask_as", ["array", "picture", "bytes", "path"])
def test_segmentation_mask_cells_read_like_the_list_file(seg, mask_as):
    read = task_reader("segmentation")
    from_file = _masks(read(str(seg / "train" / "list.txt")))
    assert _masks(read(_seg_frame(seg / "train", mask_as))) == from_file


def test_segmentation_from_a_dataset_and_an_arrow_table(seg):
    read = task_reader("segmentation")
    from_file = _masks(read(str(seg / "train" / "list.txt")))
    assert _masks(read(_seg_dataset(seg / "train"))) == from_file
    frame = _seg_frame(seg / "train")
    table = pa.table({"image": pa.array(list(frame["image"]), pa.binary()), "mask": [m.tolist() for m in frame["mask"]]})
    assert _masks(read(table)) == from_file


def test_bad_segmentation_rows_name_the_column_and_the_row(seg):
    from PIL import Image

    read = task_reader("segmentation")
    frame = _seg_frame(seg / "train")
    small = frame.copy()
    small.at[3, "mask"] = np.zeros((10, 12), np.uint8)
    with pytest.raises(DataError, match=r"row 3: column 'mask': the mask is 12x10 but its image \(column 'image'\) is 64x48$"):
        read(small)
    coloured = frame.copy()
    coloured.at[1, "mask"] = Image.new("RGB", (64, 48))
    with pytest.raises(DataError, match=r"row 1: column 'mask': a mask must be a single-channel index image .* got mode RGB"):
        read(coloured)
    floats = frame.copy()
    floats.at[2, "mask"] = np.full((48, 64), 0.5)
    with pytest.raises(DataError, match=r"row 2: column 'mask': a mask array of float64 values; expected integer class indices"):
        read(floats)
    with pytest.raises(DataError, match=r"row 0: empty mask in column 'mask'"):
        read(frame.assign(mask=[None] * len(frame)))
    with pytest.raises(DataError, match=r"DataFrame data \(memory:pandas:[0-9a-f]{12}\): row 0: empty image in column 'image'"):
        read(frame.assign(image=[None] * len(frame)))
    with pytest.raises(DataError, match=r"no mask column \(one of mask, annotation, .*\(columns: image\); set data.label_column"):
        read(frame.drop(columns=["mask"]))


# -- runs: the same rows give the same metrics from files, a DataFrame and a datasets.Dataset -----------


def test_detection_run_from_memory_matches_the_box_table(tmp_path):
    import finetunekit

    root = tmp_path / "det"
    train_ann = make_boxes_set(root / "images", n=8, seed=0)
    val_ann = make_boxes_set(root / "images", n=4, seed=1, prefix="val_")
    write_csv(root / "train.csv", train_ann)
    write_csv(root / "val.csv", val_ann)
    recipe = det_recipe(root, train={"epochs": 1}, data={"augment": "none"})
    from_file = finetunekit.train(recipe, output=tmp_path / "file", quiet=True, report=False)
    from_frame = finetunekit.train(recipe, output=tmp_path / "frame", quiet=True, report=False,
                                   train=_boxes_frame(root / "images", train_ann), val=_boxes_frame(root / "images", val_ann))
    from_ds = finetunekit.train(recipe, output=tmp_path / "ds", quiet=True, report=False,
                                train=_boxes_dataset(root / "images", train_ann), val=_boxes_dataset(root / "images", val_ann))
    # the same images, boxes and order: the same losses step by step, the same weights
    assert from_frame.history[0]["train_loss"] == pytest.approx(from_file.history[0]["train_loss"], abs=1e-6)
    assert from_ds.history[0]["train_loss"] == pytest.approx(from_file.history[0]["train_loss"], abs=1e-6)
    for name in ("map_50", "map", "mar_100"):
        assert from_frame.metrics[name] == from_file.metrics[name] == from_ds.metrics[name]
    # evaluate and predict take the table too; a run trained from memory reloads as any other
    model = finetunekit.load(tmp_path / "ds").set_options(score_threshold=0.0)
    evaluated = model.evaluate(_boxes_dataset(root / "images", val_ann))
    assert evaluated["map_50"] == pytest.approx(from_file.metrics["map_50"], abs=1e-6)
    assert evaluated["eval_set"].startswith("datasets.Dataset data (memory:datasets:")
    on_files = finetunekit.load(tmp_path / "file").set_options(score_threshold=0.0).predict([str(root / "images" / a["file"]) for a in val_ann])
    assert model.predict(_boxes_frame(root / "images", val_ann)) == on_files and any(on_files)
    assert json.loads((tmp_path / "ds" / "data_sources.json").read_text())["train"]["columns"] == ["image", "objects"]


def test_segmentation_run_from_memory_matches_the_list_file(seg, tmp_path):
    import finetunekit

    recipe = seg_recipe(seg, train={"epochs": 1}, data={"train": str(seg / "train" / "list.txt")})
    from_file = finetunekit.train(recipe, output=tmp_path / "file", quiet=True, report=False)
    from_frame = finetunekit.train(recipe, output=tmp_path / "frame", quiet=True, report=False,
                                   train=_seg_frame(seg / "train"), val=_seg_frame(seg / "val", "picture"))
    whole = datasets.DatasetDict({"train": _seg_dataset(seg / "train"), "validation": _seg_dataset(seg / "val")})
    from_ds = finetunekit.train(recipe, output=tmp_path / "ds", quiet=True, report=False, train=whole)
    for name in ("mean_iou", "pixel_accuracy"):
        assert from_frame.metrics[name] == pytest.approx(from_file.metrics[name], abs=1e-6)
        assert from_ds.metrics[name] == pytest.approx(from_file.metrics[name], abs=1e-6)
    assert from_frame.history[0]["train_loss"] == pytest.approx(from_file.history[0]["train_loss"], abs=1e-6)
    assert from_ds.history[0]["train_loss"] == pytest.approx(from_file.history[0]["train_loss"], abs=1e-6)
    evaluated = finetunekit.evaluate(str(tmp_path / "frame"), whole)
    assert evaluated["mean_iou"] == pytest.approx(from_file.metrics["mean_iou"], abs=1e-6)

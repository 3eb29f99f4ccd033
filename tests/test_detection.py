"""Object detection: readers (COCO, VOC, box tables), box-aware augmentation, head, loss, metrics.

Synthetic sets (coloured rectangles on noise, written as COCO JSON, a VOC folder and a CSV) keep
most tests to a second or two; the real raccoon and Penn-Fudan sets back a few checks and skip
when ../shared/data is absent.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA

DETECTION = SHARED_DATA / "detection"
RACCOON, PENNFUDAN = DETECTION / "raccoon", DETECTION / "pennfudan"
needs_detection_data = pytest.mark.skipif(
    not RACCOON.is_dir() or not PENNFUDAN.is_dir(), reason=f"detection data sets not found at {DETECTION}"
)
COLOURS = {"red": (220, 40, 40), "blue": (40, 60, 220)}


def make_boxes_set(root: Path, n: int = 8, seed: int = 0, sizes=((80, 64), (64, 80), (72, 72))) -> list[dict]:
    """``n`` images with 0-2 filled rectangles (red or blue) each; image 0 has none. Returns the
    annotations: ``[{"file", "width", "height", "boxes": [(x1, y1, x2, y2, label), ...]}]``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        width, height = sizes[i % len(sizes)]
        pixels = rng.integers(0, 70, size=(height, width, 3)).astype(np.uint8)
        boxes = []
        for k in range(0 if i == 0 else 1 + i % 2):
            w, h = int(rng.integers(16, 30)), int(rng.integers(16, 30))
            x1 = int(rng.integers(0, width - w)) if k == 0 else max(0, width - w - 2)
            y1 = int(rng.integers(0, height - h)) if k == 0 else max(0, height - h - 2)
            label = "red" if (i + k) % 2 == 0 else "blue"
            pixels[y1 : y1 + h, x1 : x1 + w] = COLOURS[label]
            boxes.append((x1, y1, x1 + w, y1 + h, label))
        name = f"img_{i}.png"
        Image.fromarray(pixels).save(root / name)
        out.append({"file": name, "width": width, "height": height, "boxes": boxes})
    return out


def write_csv(path: Path, annotations: list[dict], columns=("file", "x1", "y1", "x2", "y2", "label")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for a in annotations:
            for x1, y1, x2, y2, label in a["boxes"] or [("", "", "", "", "")]:
                row = {"file": a["file"], "filename": a["file"], "x1": x1, "y1": y1, "x2": x2, "y2": y2, "label": label,
                       "xmin": x1, "ymin": y1, "xmax": x2, "ymax": y2, "class": label, "width": a["width"], "height": a["height"]}
                writer.writerow([row[c] for c in columns])
    return path


def write_coco(path: Path, annotations: list[dict]) -> Path:
    categories = [{"id": 7, "name": "red"}, {"id": 9, "name": "blue"}]
    ids = {c["name"]: c["id"] for c in categories}
    images, anns = [], []
    for i, a in enumerate(annotations):
        images.append({"id": 100 + i, "file_name": a["file"], "width": a["width"], "height": a["height"]})
        for x1, y1, x2, y2, label in a["boxes"]:
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": ids[label], "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0})
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}), encoding="utf-8")
    return path


def write_voc(folder: Path, annotations: list[dict]) -> Path:
    (folder / "Annotations").mkdir(parents=True, exist_ok=True)
    for a in annotations:
        objects = "".join(
            f"<object><name>{label}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
            for x1, y1, x2, y2, label in a["boxes"]
        )
        xml = f"<annotation><filename>{a['file']}</filename><size><width>{a['width']}</width><height>{a['height']}</height><depth>3</depth></size>{objects}</annotation>"
        (folder / "Annotations" / a["file"].replace(".png", ".xml")).write_text(xml, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def boxes_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("boxes")
    annotations = make_boxes_set(root / "images")
    return root, annotations


def _plain(examples):
    return {Path(p).name: sorted(tuple(float(v) for v in b[:4]) + (b[4],) for b in boxes) for p, boxes in zip(examples.inputs, examples.labels, strict=True)}


# -- readers ---------------------------------------------------------------------------------------


def test_coco_voc_and_csv_readers_give_the_same_boxes(boxes_set, tmp_path):
    from finetunekit.data.detection import read_detection

    root, annotations = boxes_set
    images = root / "images"
    coco = read_detection(write_coco(tmp_path / "train.json", annotations), image_root=images)
    voc_folder = write_voc(tmp_path / "voc", annotations)
    voc = read_detection(voc_folder, image_root=images)
    table = read_detection(write_csv(tmp_path / "boxes.csv", annotations), image_root=images)
    raccoon_style = read_detection(
        write_csv(tmp_path / "raccoon.csv", annotations, ("filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax")), image_root=images
    )
    expected = {a["file"]: sorted(tuple(float(v) for v in b[:4]) + (b[4],) for b in a["boxes"]) for a in annotations}
    for examples in (coco, voc, table, raccoon_style):
        assert _plain(examples) == expected
    assert expected["img_0.png"] == []  # an image with no boxes is a valid example


def test_image_list_selects_a_split_in_its_order(boxes_set, tmp_path):
    from finetunekit.data.detection import read_detection
    from finetunekit.errors import DataError

    root, annotations = boxes_set
    table = write_csv(tmp_path / "boxes.csv", annotations)
    (tmp_path / "val.txt").write_text("img_3.png\nimg_1.png\n\n", encoding="utf-8")
    val = read_detection(table, image_root=root / "images", image_list=tmp_path / "val.txt")
    assert [Path(p).name for p in val.inputs] == ["img_3.png", "img_1.png"]
    (tmp_path / "bad.txt").write_text("img_1.png\nnope.png\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.txt:2: image 'nope\.png' is not in"):
        read_detection(table, image_root=root / "images", image_list=tmp_path / "bad.txt")


def test_single_class_table_takes_its_class_from_task_classes(boxes_set, tmp_path):
    from finetunekit.data.detection import read_detection
    from finetunekit.errors import DataError

    root, annotations = boxes_set
    table = write_csv(tmp_path / "nolabel.csv", annotations, ("file", "x1", "y1", "x2", "y2"))
    with pytest.raises(DataError, match="no label column.*task.classes"):
        read_detection(table, image_root=root / "images")
    examples = read_detection(table, image_root=root / "images", classes=["thing"])
    assert {b[4] for boxes in examples.labels for b in boxes} == {"thing"}


@pytest.mark.parametrize(
    ("fmt", "pattern"),
    [
        ("csv", r"boxes\.csv:3: field 'x2': 999 is outside the image img_1\.png \(width 64\)"),
        ("coco", r"train\.json: annotations\[0\]: field 'bbox': 999 is outside the image img_1\.png \(width 64\)"),
        ("voc", r"img_1\.xml: object 1: field 'bndbox/xmax': 999 is outside the image img_1\.png \(width 64\)"),
    ],
)
def test_box_outside_the_image_names_file_row_and_field(boxes_set, tmp_path, fmt, pattern):
    from finetunekit.data.detection import read_detection
    from finetunekit.errors import DataError

    root, annotations = boxes_set
    bad = [dict(a) for a in annotations]
    x1, y1, _, y2, label = bad[1]["boxes"][0]
    bad[1]["boxes"] = [(x1, y1, 999, y2, label)] + bad[1]["boxes"][1:]
    path = {"csv": lambda: write_csv(tmp_path / "boxes.csv", bad), "coco": lambda: write_coco(tmp_path / "train.json", bad),
            "voc": lambda: write_voc(tmp_path / "voc", bad)}[fmt]()
    with pytest.raises(DataError, match=pattern):
        read_detection(path, image_root=root / "images")


def test_unreadable_annotation_files_are_named(tmp_path, boxes_set):
    from finetunekit.data.detection import read_detection
    from finetunekit.errors import DataError

    root, annotations = boxes_set
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.json: cannot read COCO annotations"):
        read_detection(tmp_path / "broken.json")
    voc = write_voc(tmp_path / "voc", annotations[:2])
    (voc / "Annotations" / "img_1.xml").write_text("<annotation><filename>img_1.png", encoding="utf-8")
    with pytest.raises(DataError, match=r"img_1\.xml: cannot read the annotation file"):
        read_detection(voc, image_root=root / "images")


def test_unknown_class_in_validation_names_its_row(boxes_set, tmp_path):
    from finetunekit.data.detection import read_detection
    from finetunekit.errors import DataError
    from finetunekit.tasks.detection import DetectionTask

    root, annotations = boxes_set
    train = read_detection(write_csv(tmp_path / "train.csv", annotations), image_root=root / "images")
    task = DetectionTask.from_data({"type": "detection"}, train)
    assert task.classes == ["blue", "red"]
    odd = [dict(a) for a in annotations[:3]]
    odd[2]["boxes"] = [(*odd[2]["boxes"][0][:4], "green")]
    val = read_detection(write_csv(tmp_path / "val.csv", odd), image_root=root / "images")
    with pytest.raises(DataError, match=r"val\.csv:5: unknown class 'green' \(classes: blue, red\)"):
        task.encode(val)


@needs_detection_data
def test_raccoon_voc_folder_and_csv_agree():
    from finetunekit.data.detection import read_detection

    voc = _plain(read_detection(RACCOON))
    for name in ("train_labels.csv", "test_labels.csv"):
        table = _plain(read_detection(RACCOON / "labels_csv" / name))
        assert table and all(voc[k] == v for k, v in table.items())
    assert sum(map(len, voc.values())) == 217


# -- augmentation ----------------------------------------------------------------------------------


@needs_detection_data
@pytest.mark.parametrize("augment", ["none", "light", "strong"])
def test_augmentation_keeps_boxes_on_their_objects(augment):
    """Each Penn-Fudan pedestrian's box and its instance mask go through the same random draws;
    a kept box must hold its pedestrian's visible pixels, fit them tightly unless the crop cut
    it, and every pedestrian left clearly visible must keep its box."""
    from PIL import Image
    from torchvision import tv_tensors
    from torchvision.ops import masks_to_boxes

    from finetunekit.tasks.detection import DetectionTransform

    size = 128
    rows = list(csv.DictReader((PENNFUDAN / "boxes.csv").open(encoding="utf-8")))
    names = sorted({r["image"] for r in rows})[:6]
    transform = DetectionTransform(size, [0.5] * 3, [0.5] * 3, augment != "none", augment, 100)
    checked = 0
    for name in names:
        image = Image.open(PENNFUDAN / "PNGImages" / name).convert("RGB")
        instances = np.array(Image.open(PENNFUDAN / "PedMasks" / name.replace(".png", "_mask.png")))
        mine = [r for r in rows if r["image"] == name]
        ids = torch.tensor([int(r["instance_id"]) for r in mine])
        # boxes.csv holds inclusive pixel extents; +1 makes them edges, as the transform's boxes are
        boxes = torch.tensor([[float(r["x1"]), float(r["y1"]), float(r["x2"]) + 1, float(r["y2"]) + 1] for r in mine])
        masks = torch.from_numpy(np.stack([instances == i for i in ids.tolist()])).to(torch.uint8)
        for seed in range(4):
            torch.manual_seed(seed)
            out = transform.apply({"image": image, "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(image.height, image.width)),
                                   "labels": ids.clone(), "masks": tv_tensors.Mask(masks)})
            assert out["image"].size == (size, size)
            kept = {int(i): k for k, i in enumerate(out["labels"])}
            every = None
            if augment != "strong":  # the same draws again (they do not depend on the boxes), every instance's mask kept
                torch.manual_seed(seed)
                every = transform.apply({"image": image, "boxes": tv_tensors.BoundingBoxes(torch.tensor([[0.0, 0.0, image.width, image.height]]), format="XYXY",
                                         canvas_size=(image.height, image.width)), "labels": torch.tensor([0]), "all": tv_tensors.Mask(torch.from_numpy(instances)[None])})
            for instance in ids.tolist():
                if instance not in kept:
                    # dropped: only a sliver of it is left in the crop (strong: or its centre left the IoU crop, SSD's rule)
                    visible = every["all"][0] == instance if every is not None else None
                    if visible is not None and visible.any():
                        seen = masks_to_boxes(visible[None])[0]
                        assert min(seen[2] - seen[0], seen[3] - seen[1]) < 4, (name, seed, instance, seen)
                    continue
                k = kept[instance]
                box, visible = out["boxes"][k], out["masks"][k].bool()
                if every is not None:
                    assert torch.equal(visible, every["all"][0] == instance)
                if not visible.any():
                    continue
                seen = masks_to_boxes(visible[None])[0] + torch.tensor([0, 0, 1, 1])
                # the box holds the visible pixels (2 px of resampling slack) ...
                assert (seen[:2] >= box[:2] - 2).all() and (seen[2:] <= box[2:] + 2).all(), (name, seed, box, seen)
                # ... and fits them when the crop did not cut the pedestrian
                if (box[:2] > 1).all() and (box[2:] < size - 1).all():
                    assert (seen - box).abs().max() <= 3, (name, seed, box, seen)
                checked += 1
    assert checked > 20


def test_evaluation_letterbox_is_deterministic_and_pads_right_and_below():
    from PIL import Image

    from finetunekit.tasks.detection import DetectionTransform

    image = Image.new("RGB", (200, 100), (255, 0, 0))
    transform = DetectionTransform(64, [0.5] * 3, [0.5] * 3, False, "none", 4)
    pixels, target = transform(image, torch.tensor([[20.0, 10.0, 120.0, 90.0, 1.0]]))
    assert pixels.shape == (3, 64, 64)
    assert torch.allclose(target[0], torch.tensor([6.4, 3.2, 38.4, 28.8, 1.0]), atol=1e-4)
    assert (target[1:] == -1).all()
    assert pixels[:, 40:, :].abs().max() < 0.01  # padding: the mean colour (to 1/255), 0 once normalised
    again, _ = transform(image, None)
    assert torch.equal(pixels, again)


# -- head, loss, decoding, metrics -------------------------------------------------------------------


def test_metrics_are_torchmetrics_coco_map():
    from finetunekit.tasks.detection import detection_metrics

    targets = np.full((2, 3, 5), -1.0, dtype=np.float32)
    targets[0, 0] = [10, 10, 50, 50, 0]
    targets[1, 0] = [5, 5, 30, 40, 1]
    targets[1, 1] = [40, 40, 60, 60, 0]
    perfect = np.full((2, 4, 6), -1.0, dtype=np.float32)
    perfect[0, 0] = [10, 10, 50, 50, 0.9, 0]
    perfect[1, 0] = [5, 5, 30, 40, 0.8, 1]
    perfect[1, 1] = [40, 40, 60, 60, 0.7, 0]
    m = detection_metrics(perfect, targets, ["a", "b"])
    assert m["map"] == pytest.approx(1.0) and m["map_50"] == pytest.approx(1.0) and m["num_boxes"] == 3
    assert m["per_class"]["b"] == {"ap": pytest.approx(1.0), "ap_50": pytest.approx(1.0), "recall": pytest.approx(1.0), "boxes": 1}
    shifted = perfect.copy()
    shifted[1, 1, :4] = [44, 44, 64, 64]  # IoU 0.47 with its true box: a miss at 0.5 and above
    m = detection_metrics(shifted, targets, ["a", "b"])
    assert m["per_class"]["a"]["ap_50"] == pytest.approx(0.5, abs=0.01) and m["per_class"]["b"]["ap_50"] == pytest.approx(1.0)
    assert m["map_50"] == pytest.approx(0.75, abs=0.01)


@pytest.mark.parametrize("kind", ["fcos", "retinanet"])
def test_head_outputs_one_raw_tensor_and_torchvision_loss_and_decoding_run_on_it(kind):
    from finetunekit.tasks.detection_head import DetectionHead, DetectionRules

    torch.manual_seed(0)
    info = [{"channels": c, "stride": s} for c, s in ((8, 4), (16, 8), (24, 16), (32, 32))]
    head = DetectionHead(info, 2, kind, channels=32)
    rules = DetectionRules(kind, 2, 64)
    maps = [torch.randn(2, i["channels"], 64 // i["stride"], 64 // i["stride"]) for i in info]
    raw = head(maps)
    assert raw.shape == (2, rules.num_anchors, rules.output_width)
    targets = [{"boxes": torch.tensor([[4.0, 8.0, 40.0, 50.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.long)}]  # an image without boxes
    parts = rules.loss(raw, targets)
    assert list(parts) == rules.loss_names() and all(torch.isfinite(v) for v in parts.values())
    sum(parts.values()).backward()
    assert all(p.grad is not None for p in head.parameters())
    found = rules.detections(raw.detach(), 0.0, 0.5, 10)
    assert found.shape == (2, 10, 6)
    real = found[..., 4] >= 0
    assert real.any() and ((found[..., :4] >= 0) & (found[..., :4] <= 64))[real].all()
    scores = found[0, :, 4][real[0]]
    assert (scores[:-1] >= scores[1:]).all()  # by falling score

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


def make_boxes_set(root: Path, n: int = 8, seed: int = 0, sizes=((80, 64), (64, 80), (72, 72)), prefix: str = "") -> list[dict]:
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
        name = f"{prefix}img_{i}.png"
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
    from finetunekit.tasks.detection_data import read_detection

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
    from finetunekit.tasks.detection_data import read_detection
    from finetunekit.core.errors import DataError

    root, annotations = boxes_set
    table = write_csv(tmp_path / "boxes.csv", annotations)
    (tmp_path / "val.txt").write_text("img_3.png\nimg_1.png\n\n", encoding="utf-8")
    val = read_detection(table, image_root=root / "images", image_list=tmp_path / "val.txt")
    assert [Path(p).name for p in val.inputs] == ["img_3.png", "img_1.png"]
    (tmp_path / "bad.txt").write_text("img_1.png\nnope.png\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.txt:2: image 'nope\.png' is not in"):
        read_detection(table, image_root=root / "images", image_list=tmp_path / "bad.txt")


def test_single_class_table_takes_its_class_from_task_classes(boxes_set, tmp_path):
    from finetunekit.tasks.detection_data import read_detection
    from finetunekit.core.errors import DataError

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
    from finetunekit.tasks.detection_data import read_detection
    from finetunekit.core.errors import DataError

    root, annotations = boxes_set
    bad = [dict(a) for a in annotations]
    x1, y1, _, y2, label = bad[1]["boxes"][0]
    bad[1]["boxes"] = [(x1, y1, 999, y2, label)] + bad[1]["boxes"][1:]
    path = {"csv": lambda: write_csv(tmp_path / "boxes.csv", bad), "coco": lambda: write_coco(tmp_path / "train.json", bad),
            "voc": lambda: write_voc(tmp_path / "voc", bad)}[fmt]()
    with pytest.raises(DataError, match=pattern):
        read_detection(path, image_root=root / "images")


def test_unreadable_annotation_files_are_named(tmp_path, boxes_set):
    from finetunekit.tasks.detection_data import read_detection
    from finetunekit.core.errors import DataError

    root, annotations = boxes_set
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.json: cannot read COCO annotations"):
        read_detection(tmp_path / "broken.json")
    voc = write_voc(tmp_path / "voc", annotations[:2])
    (voc / "Annotations" / "img_1.xml").write_text("<annotation><filename>img_1.png", encoding="utf-8")
    with pytest.raises(DataError, match=r"img_1\.xml: cannot read the annotation file"):
        read_detection(voc, image_root=root / "images")


def test_unknown_class_in_validation_names_its_row(boxes_set, tmp_path):
    from finetunekit.tasks.detection_data import read_detection
    from finetunekit.core.errors import DataError
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
    from finetunekit.tasks.detection_data import read_detection

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
    head = DetectionHead(info, 2, kind, channels=64)
    rules = DetectionRules(kind, 2, 64)
    maps = [torch.randn(2, i["channels"], 64 // i["stride"], 64 // i["stride"]) for i in info]
    raw = head(maps)
    assert raw.shape == (2, rules.output_width, rules.num_anchors)
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


# -- training, resume, reload, predict, export ------------------------------------------------------


@pytest.fixture(scope="module")
def det_data(tmp_path_factory):
    """8 training and 6 validation images of red and blue rectangles, as box tables."""
    root = tmp_path_factory.mktemp("det")
    write_csv(root / "train.csv", make_boxes_set(root / "images", n=8, seed=0))
    write_csv(root / "val.csv", make_boxes_set(root / "images", n=6, seed=1, prefix="val_"))
    return root


def det_recipe(root: Path, **sections):
    from finetunekit import Recipe

    raw = {
        "model": {"backbone": "timm:test_efficientnet", "pretrained": False, "image_size": 96},
        "data": {"train": str(root / "train.csv"), "val": str(root / "val.csv"), "image_root": str(root / "images"), "augment": "light"},
        "task": {"type": "detection", "fpn_channels": 64},
        "strategy": {"name": "full"},
        "train": {"epochs": 2, "batch_size": 4, "lr": 1e-3, "head_lr": 1e-3, "seed": 0},
    }
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return Recipe.from_dict(raw)


@pytest.fixture(scope="module")
def det_run(det_data, tmp_path_factory):
    from finetunekit import train

    torch.set_num_threads(1)
    # every detection from the 0.05 floor up is reported, so the records below compare boxes, not empty lists
    return train(det_recipe(det_data, task={"score_threshold": 0.05}), output=tmp_path_factory.mktemp("det-run") / "run", quiet=True)


def test_run_directory_report_card_and_reload_predict_identically(det_run, det_data):
    import finetunekit

    run = det_run.run_dir
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) >= {"map", "map_50", "map_75", "mar_100", "per_class", "best_epoch"}
    report = (run / "report.html").read_text(encoding="utf-8")
    assert "Per-class average precision" in report and "Worst validation images" in report
    worst = json.loads((run / "worst_val.json").read_text())
    assert worst and all((run / row["file"]).is_file() for row in worst)
    card = (run / "README.md").read_text(encoding="utf-8")
    assert "object-detection" in card and "| class | AP | AP@0.5 |" in card
    # reloaded from the run directory alone: the same metrics and the same detections, box for box
    model = finetunekit.load(run)
    again = model.evaluate(str(det_data / "val.csv"), image_root=str(det_data / "images"))
    assert {k: again[k] for k in ("map", "map_50", "per_class")} == {k: metrics[k] for k in ("map", "map_50", "per_class")}
    saved = [json.loads(line) for line in (run / "val_predictions.jsonl").read_text().splitlines()]
    from finetunekit.tasks import task_reader

    val = task_reader("detection", image_root=det_data / "images")(det_data / "val.csv")
    scores, targets = model._scores(val, model.task.encode(val))
    assert (scores[..., 4] >= 0.05).any()
    # the saved records are in each image's own pixels, as predict gives them
    sizes = [__import__("PIL.Image", fromlist=["Image"]).open(p).size for p in val.inputs]
    mapped = model.task.prediction_records(model.task.to_input_frame(scores, sizes), model.task.to_input_frame(targets, sizes))
    assert [{k: r[k] for k in ("label", "predicted")} for r in saved] == mapped
    assert [r["predicted"] for r in mapped] == model.predict(val.inputs)
    model.model = det_run.model  # the trained model still in memory: the same detections
    # (the same to float rounding: the two copies of the weights may sit differently in memory)
    assert np.allclose(model._scores(val, None)[0], scores, rtol=0, atol=1e-5)


def test_predictions_in_image_pixels_files_and_options(det_run, det_data, tmp_path, capsys):
    from finetunekit.cli import main

    images = [str(det_data / "images" / f"val_img_{i}.png") for i in (1, 2)]
    assert main(["predict", str(det_run.run_dir), *images, "--json", "--score-threshold", "0", "--save-dir", str(tmp_path / "out")]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and all(r["detections"] for r in rows)
    for row in rows:  # boxes in the image's own pixels (72 x 72 or 64 x 80 here), not the 96 px input
        width, height = __import__("PIL.Image", fromlist=["Image"]).open(row["input"]).size
        assert all(0 <= d["box"][0] <= d["box"][2] <= width and 0 <= d["box"][1] <= d["box"][3] <= height for d in row["detections"])
    coco = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert {r["image_id"] for r in coco} == {1, 2} and all(set(r) >= {"bbox", "score", "category_id"} for r in coco)
    assert (tmp_path / "out" / "val_img_1_boxes.png").is_file() and (tmp_path / "out" / "val_img_2_boxes.png").is_file()
    assert main(["predict", str(det_run.run_dir), *images, "--json", "--score-threshold", "1"]) == 0
    assert all(json.loads(line)["detections"] == [] for line in capsys.readouterr().out.splitlines())


def test_onnx_export_matches_the_raw_head_outputs(det_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from finetunekit.use.export import export

    exported = export(det_run.run_dir, "onnx", tmp_path / "onnx")
    assert exported.max_abs_diff <= 1e-4


def test_resume_mid_epoch_is_exact(det_data, tmp_path, monkeypatch):
    from finetunekit import train
    from finetunekit.run.checkpoint import read_checkpoint
    from run_outputs import comparable, differences
    from test_resume import interrupted

    recipe = det_recipe(det_data, train={"checkpoint_every_steps": 1, "scheduler": "cosine", "warmup_ratio": 0.3})
    train(recipe, output=tmp_path / "reference", quiet=True)
    written = interrupted(monkeypatch, recipe, tmp_path / "run", 3)
    assert read_checkpoint(written[-1]).state["position"] == {"epoch": 1, "batch": 1, "step": 3}  # part-way through epoch 2
    result = train(recipe, output=tmp_path / "run", quiet=True, resume=True)
    assert differences(comparable(result.run_dir), comparable(tmp_path / "reference")) == []


@pytest.mark.parametrize(
    "strategy",
    [{"name": "linear_probe"}, {"name": "freeze_then_unfreeze", "freeze_epochs": 1}, {"name": "lora", "lora_rank": 2},
     {"name": "full", "layer_decay": 0.7}, {"name": None}],
)
def test_strategies_apply_unchanged(det_data, tmp_path, strategy):
    """Each strategy as for classification (None: detection's default, the backbone's first
    stages frozen); the last one with the RetinaNet head."""
    import finetunekit
    from finetunekit import train

    task = {"head": "retinanet"} if strategy["name"] is None else {}
    result = train(det_recipe(det_data, strategy=strategy, task=task), output=tmp_path / "run", quiet=True)
    if strategy["name"] is None:
        assert result.recipe.strategy.name == "last_n" and result.recipe.strategy.last_n == 5
        assert 0 < result.trainable_params < result.total_params
    assert 0.0 <= result.metrics["map_50"] <= 1.0
    again = finetunekit.load(result.run_dir).evaluate(str(det_data / "val.csv"), image_root=str(det_data / "images"))
    assert again["map_50"] == pytest.approx(result.metrics["map_50"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train": {"mixup_alpha": 0.2}}, "train.mixup_alpha: mixup and cutmix blend whole images"),
        ({"data": {"sampler": "balanced"}}, "data.sampler: balanced sampling"),
        ({"task": {"fpn_channels": 96 + 16}}, "task.fpn_channels: 112 must be a multiple of 32"),
    ],
)
def test_settings_detection_cannot_honour_are_refused(det_data, tmp_path, change, message):
    from finetunekit import train
    from finetunekit.core.errors import RecipeError

    with pytest.raises(RecipeError, match=message):
        train(det_recipe(det_data, **change), output=tmp_path / "run", quiet=True)


def test_bad_annotations_stop_the_cli_with_one_line_and_status_2(det_data, tmp_path, capsys):
    from finetunekit.cli import main

    bad = tmp_path / "bad.csv"
    lines = (det_data / "train.csv").read_text().splitlines()
    fields = lines[2].split(",")
    fields[3] = "500"  # x2 beyond the image's width
    bad.write_text("\n".join([*lines[:2], ",".join(fields), *lines[3:]]) + "\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(det_recipe(det_data, data={"train": str(bad)}).to_yaml())
    assert main(["train", str(recipe), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.csv:3: field 'x2': 500 is outside the image img_1.png" in err[0]


@needs_detection_data
def test_detector_overfits_a_handful_of_raccoon_images(tmp_path):
    """Four raccoon images, trained and validated on: mAP@0.5 close to 1. The pretrained
    backbone's BatchNorm statistics stay as they were (frozen by default)."""
    from finetunekit import Recipe, train

    rows = (RACCOON / "labels_csv" / "train_labels.csv").read_text().splitlines()
    (tmp_path / "four.csv").write_text("\n".join(rows[:5]) + "\n")
    recipe = Recipe.from_dict({
        "model": {"backbone": "bundled:efficientnet_lite0", "image_size": 160},
        "data": {"train": str(tmp_path / "four.csv"), "val": str(tmp_path / "four.csv"), "image_root": str(RACCOON / "images"), "augment": "none"},
        "task": {"type": "detection", "fpn_channels": 64},
        "strategy": {"name": "full"},
        "train": {"epochs": 12, "batch_size": 4, "lr": 3e-4, "head_lr": 3e-3, "warmup_ratio": 0.0, "scheduler": "constant", "seed": 0},
    })
    from finetunekit.backbones import create_backbone

    before = {k: v.clone() for k, v in create_backbone("bundled:efficientnet_lite0", True, image_size=160).state_dict().items() if "running" in k}
    result = train(recipe, output=tmp_path / "run", quiet=True)
    assert result.metrics["map_50"] >= 0.95
    after = {k.removeprefix("backbone."): v for k, v in result.model.state_dict().items() if "running" in k}
    assert before and set(before) == set(after) and all(torch.equal(before[k], after[k]) for k in before)

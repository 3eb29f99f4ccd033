"""Semantic segmentation end to end on tiny synthetic sets (a tiny timm model built from its config),
and the dense-task seam it rests on: feature maps, the joint transform with per-example seeding,
the guards for dense tasks, resume, reloading, prediction files, bad-input errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from finetunekit import Recipe, train
from finetunekit.cli import main
from finetunekit.core.errors import DataError, RecipeError

from conftest import SHARED_DATA
from run_outputs import comparable, differences

COLOURS = np.array([(30, 30, 30), (220, 40, 40), (40, 200, 60)], np.uint8)
CAMVID = SHARED_DATA / "segmentation" / "camvid"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_seg_set(root: Path, n: int, seed: int, h: int = 48, w: int = 64) -> Path:
    """root/images, root/masks (matched by stem) and root/list.txt: a dark background (class 0),
    a red rectangle (1) and a green one (2) at random places, noise, and an ignored top row (255)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        mask = np.zeros((h, w), np.uint8)
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        mask[y : y + h // 2, x : x + w // 2] = 1
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        mask[y : y + h // 3, x : x + w // 3] = 2
        image = COLOURS[mask] + rng.integers(0, 40, (h, w, 3)).astype(np.uint8)
        mask[0, :] = 255
        Image.fromarray(image).save(root / "images" / f"im{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"im{i}.png")
        lines.append(f"images/im{i}.png masks/im{i}.png")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("seg")
    make_seg_set(root / "train", 16, 0)
    make_seg_set(root / "val", 6, 1)
    return root


def seg_recipe(root: Path, **sections) -> Recipe:
    raw = {
        "model": {"backbone": "timm:test_efficientnet", "pretrained": False},
        "data": {"train": str(root / "train"), "val": str(root / "val" / "list.txt")},
        "task": {"type": "segmentation", "input_size": [48, 64], "classes": ["background", "red", "green"]},
        "strategy": {"name": "full"},
        "train": {"epochs": 3, "batch_size": 4, "lr": 1e-2, "head_lr": 1e-2, "seed": 0, "precision": "fp32"},
    }
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return Recipe.from_dict(raw)


@pytest.fixture(scope="module")
def seg_run(seg_data, tmp_path_factory):
    return train(seg_recipe(seg_data), output=tmp_path_factory.mktemp("segrun") / "run", quiet=True)


def test_feature_maps_of_the_bundled_backbone_match_their_info():
    from finetunekit.backbones import create_backbone

    backbone = create_backbone("bundled:efficientnet_lite0", pretrained=True)
    info = backbone.feature_info()
    maps = backbone.feature_maps({"pixel_values": torch.zeros(1, 3, 64, 96)})
    assert [i["stride"] for i in info] == [2, 4, 8, 16, 32]
    assert [m.shape[1] for m in maps] == [i["channels"] for i in info]
    assert [tuple(m.shape[-2:]) for m in maps] == [(64 // s, 96 // s) for s in (2, 4, 8, 16, 32)]


@pytest.mark.parametrize(("decoder", "stride"), [("lraspp", 8), ("fpn", 4)])
def test_each_decoder_gives_logits_at_its_stride(decoder, stride):
    from finetunekit.backbones import create_backbone
    from finetunekit.run.model import FineTuneModel
    from finetunekit.tasks.segmentation import SegmentationTask

    backbone = create_backbone("timm:test_efficientnet", pretrained=False)
    task = SegmentationTask(["a", "b", "c"], 255, (64, 96), decoder)
    model = FineTuneModel(backbone, task.head_for(backbone)).eval()
    logits = model({"pixel_values": torch.zeros(2, 3, 64, 96)})
    assert model.head.describe()["stride"] == stride and logits.shape == (2, 3, 64 // stride, 96 // stride)
    assert task.scores(logits).shape == (2, 64, 96)


def test_training_learns_the_masks_and_writes_the_run(seg_run):
    m = seg_run.metrics
    assert m["mean_iou"] > 0.6 and m["pixel_accuracy"] > 0.85  # chance: about 0.33 / 0.68
    assert set(m["per_class"]) == {"background", "red", "green"}
    run = seg_run.run_dir
    worst = json.loads((run / "worst_val.json").read_text())
    assert len(worst) == 6 and worst[0]["mean_iou"] <= worst[-1]["mean_iou"]
    report = (run / "report.html").read_text()
    assert "Per-class IoU" in report and "Worst validation images" in report and report.count("data:image/png;base64") >= 6
    card = (run / "README.md").read_text()
    assert "pipeline_tag: image-segmentation" in card and "mean IoU" in card


def test_a_reloaded_run_predicts_identically_and_writes_masks(seg_run, seg_data, tmp_path):
    from PIL import Image

    import finetunekit

    predictor = finetunekit.load(seg_run.run_dir)
    images = [str(p) for p in sorted((seg_data / "val" / "images").iterdir())]
    metrics = predictor.evaluate(seg_data / "val" / "list.txt")
    assert metrics["mean_iou"] == pytest.approx(seg_run.metrics["mean_iou"], abs=1e-9)
    model = seg_run.model.eval()
    batch = predictor.encode([Image.open(p).convert("RGB") for p in images])
    with torch.no_grad():
        assert torch.equal(model(batch), predictor.model(batch))
    assert main(["predict", str(seg_run.run_dir), *images[:2], "--save-dir", str(tmp_path / "out"), "--json"]) == 0
    mask = Image.open(tmp_path / "out" / "im0.png")
    assert mask.mode == "P" and mask.size == (64, 48)
    assert set(np.unique(np.asarray(mask))) <= {0, 1, 2}
    assert (tmp_path / "out" / "im0_overlay.png").is_file()


def test_the_folder_and_list_readers_agree(seg_data):
    from finetunekit.tasks.segmentation_data import read_segmentation

    folders = read_segmentation(seg_data / "val")
    listed = read_segmentation(seg_data / "val" / "list.txt")
    assert [Path(p).resolve() for p in folders.inputs] == [Path(p).resolve() for p in listed.inputs]
    assert [Path(p).resolve() for p in folders.labels] == [Path(p).resolve() for p in listed.labels]
    assert listed.places[0].endswith("list.txt:1")


def test_the_joint_transform_moves_the_mask_with_the_pixels(seg_data):
    """Random crops and flips: each pixel's colour still says the class its mask gives (a few
    boundary pixels aside, where bicubic resampling mixes colours), and a seed repeats the draw."""
    from PIL import Image

    from finetunekit.tasks.segmentation import SegmentationTransform

    pre = {"mean": [0.0] * 3, "std": [1.0] * 3, "interpolation": "bilinear"}
    transform = SegmentationTransform((40, 56), pre, train=True, augment="light")
    root = seg_data / "train"
    aligned, flipped = [], []
    for i in range(6):
        image = Image.open(root / "images" / f"im{i}.png").convert("RGB")
        torch.manual_seed(i)
        pixels, mask = transform(image, str(root / "masks" / f"im{i}.png"))
        torch.manual_seed(i)
        again, mask_again = transform(image, str(root / "masks" / f"im{i}.png"))
        assert torch.equal(pixels, again) and torch.equal(mask, mask_again)
        rgb = (pixels.permute(1, 2, 0).numpy() * 255)
        nearest = np.abs(rgb[:, :, None, :] - (COLOURS.astype(np.float32) + 20)[None, None]).sum(-1).argmin(-1)
        labelled = mask.numpy() != 255
        aligned.append((nearest[labelled] == mask.numpy()[labelled]).mean())
        mirror = mask.flip(-1).numpy()
        both = labelled & (mirror != 255)
        flipped.append((nearest[both] == mirror[both]).mean())
    # a mask left behind by a crop or a flip would agree about as well as the mirrored one does
    assert min(aligned) > 0.9 and np.mean(aligned) > np.mean(flipped) + 0.15, (aligned, flipped)


def test_resume_mid_epoch_is_exact(seg_data, tmp_path, monkeypatch):
    from test_resume import interrupted

    recipe = seg_recipe(seg_data, data={"augment": "strong"}, train={"epochs": 2, "checkpoint_every_steps": 1})
    train(recipe, output=tmp_path / "reference", quiet=True)
    written = interrupted(monkeypatch, recipe, tmp_path / "run", 2)
    assert json.loads((written[-1] / "state.json").read_text())["position"]["batch"] == 2  # part-way through epoch 1
    train(recipe, output=tmp_path / "run", quiet=True, resume=True)
    assert differences(comparable(tmp_path / "run"), comparable(tmp_path / "reference")) == []


@pytest.mark.parametrize(
    ("sections", "field"),
    [
        ({"train": {"mixup_alpha": 0.2}}, "train.mixup_alpha"),
        ({"data": {"sampler": "balanced"}}, "data.sampler"),
        ({"strategy": {"name": "prototype"}}, "strategy.name"),
    ],
)
def test_settings_a_dense_task_cannot_honour_are_refused(seg_data, tmp_path, sections, field):
    with pytest.raises(RecipeError, match=field.replace(".", r"\.")):
        train(seg_recipe(seg_data, **sections), output=tmp_path / "run", quiet=True)


def test_a_text_backbone_is_refused(tiny_bert, seg_data, tmp_path):
    with pytest.raises(RecipeError, match="segmentation needs an image backbone"):
        train(seg_recipe(seg_data, model={"backbone": f"hf:{tiny_bert}"}), output=tmp_path / "run", quiet=True)


def test_the_feature_cache_is_not_used_for_a_frozen_backbone(seg_data, tmp_path):
    result = train(seg_recipe(seg_data, strategy={"name": "linear_probe"}, train={"epochs": 1}), output=tmp_path / "run", quiet=True)
    assert result.feature_cache is None
    assert result.trainable_params < result.total_params


def _bad_copy(seg_data: Path, tmp_path: Path, damage) -> Path:
    root = tmp_path / "bad"
    shutil.copytree(seg_data / "train", root)
    damage(root)
    return root


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: __import__("PIL.Image").Image.fromarray(np.zeros((10, 10), np.uint8)).save(r / "masks" / "im3.png"),
         "im3.png: mask is 10x10 but its image"),
        (lambda r: (r / "masks" / "im3.png").write_bytes(b"not a png"), "im3.png: cannot read mask"),
        (lambda r: __import__("PIL.Image").Image.fromarray(np.full((48, 64), 7, np.uint8)).save(r / "masks" / "im3.png"),
         "im3.png: mask value 7 is beyond the 3 classes"),
    ],
    ids=["size", "unreadable", "value"],
)
def test_bad_masks_are_one_line_errors_naming_the_file(seg_data, tmp_path, capsys, damage, message):
    root = _bad_copy(seg_data, tmp_path, damage)
    recipe = seg_recipe(seg_data, data={"train": str(root)}).to_dict()
    path = tmp_path / "recipe.yaml"
    import yaml

    path.write_text(yaml.safe_dump(recipe))
    assert main(["train", str(path), "--output", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_a_list_line_without_two_paths_names_the_line(tmp_path):
    from finetunekit.tasks.segmentation_data import read_segmentation

    (tmp_path / "list.txt").write_text("a.png\n")
    with pytest.raises(DataError, match=r"list\.txt:1: expected 'IMAGE MASK'"):
        read_segmentation(tmp_path / "list.txt")


@pytest.mark.skipif(not CAMVID.is_dir(), reason=f"CamVid not found at {CAMVID}")
def test_camvid_slice_trains_with_the_bundled_backbone(tmp_path):
    """Eight CamVid training pairs at 120x160 for two epochs: the list-file reader, the ignore value
    11 and the bundled EfficientNet-Lite0's feature maps on real data (a smoke test, not the benchmark)."""
    lines = (CAMVID / "train.txt").read_text().splitlines()[:8]
    listing = tmp_path / "train.txt"
    listing.write_text("".join(" ".join(str(CAMVID / p) for p in line.split()) + "\n" for line in lines))
    recipe = Recipe.from_dict({
        "model": {"backbone": "bundled:efficientnet_lite0"},
        "data": {"train": str(listing), "val": str(listing)},
        "task": {"type": "segmentation", "ignore_index": 11, "input_size": [120, 160]},
        "strategy": {"name": "full"},
        "train": {"epochs": 2, "batch_size": 4, "lr": 1e-3, "head_lr": 1e-2, "seed": 0},
    })
    result = train(recipe, output=tmp_path / "run", quiet=True)
    assert len(result.metrics["per_class"]) == 11
    assert result.metrics["pixel_accuracy"] > 0.5


def test_onnx_export_matches_the_raw_head_outputs(seg_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from finetunekit.use.export import export

    result = export(seg_run.run_dir, "onnx", output=tmp_path / "onnx")
    assert result.max_abs_diff < 1e-4 and result.details["label_mismatches"] == 0
    # the raw decoder logits at its stride (4 for the FPN decoder, the default), not upsampled masks
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"pixel_values": np.zeros((1, 3, 48, 64), np.float32)})
    assert logits.shape == (1, 3, 12, 16)
    with pytest.raises(Exception, match="export it with --format onnx"):
        export(seg_run.run_dir, "timm", output=tmp_path / "timm")

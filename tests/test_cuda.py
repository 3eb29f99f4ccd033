"""The CUDA paths: training in each precision, the feature cache, the dense tasks, exact resume, and
a reloaded run answering on the GPU as it does on the CPU.

Skipped where no CUDA device is present (CI has none); run on a GPU machine with
``python -m pytest -q tests/test_cuda.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_image_recipe, tiny_text_recipe
from finetunekit import load, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def trained_on_gpu(recipe, output: Path):
    torch.cuda.reset_peak_memory_stats()
    result = train(recipe, output=output, quiet=True)
    assert torch.cuda.max_memory_allocated() > 0, "the run did not use the GPU"
    assert all(math.isfinite(h["train_loss"]) for h in result.history)
    return result


def val_images(image_data: Path) -> list[str]:
    return sorted(str(p) for p in (image_data / "val").rglob("*.png"))


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_image_training_in_each_precision_and_the_reloaded_run_answers_as_on_the_cpu(image_data, tmp_path, precision):
    recipe = tiny_image_recipe(image_data, strategy={"name": "full"}, train={"epochs": 3, "precision": precision})
    result = trained_on_gpu(recipe, tmp_path / "run")
    assert result.metrics["accuracy"] >= 0.5
    images = val_images(image_data)
    gpu = load(result.run_dir, device="cuda", precision="fp32").predict_proba(images)
    cpu = load(result.run_dir, device="cpu", precision="fp32").predict_proba(images)
    np.testing.assert_allclose(gpu, cpu, atol=1e-3)
    # in the run's own precision the GPU answers the same classes as full precision does
    own = load(result.run_dir, device="cuda").predict_proba(images)
    assert (own.argmax(1) == cpu.argmax(1)).mean() >= 0.9


def test_text_training_in_bf16_and_the_reloaded_run_answers_as_on_the_cpu(text_data, tiny_bert, tmp_path):
    result = trained_on_gpu(tiny_text_recipe(text_data, tiny_bert, train={"epochs": 3, "precision": "bf16"}), tmp_path / "run")
    texts = [line.split("\t")[0] for line in text_data[1].read_text().splitlines()[1:]]
    gpu = load(result.run_dir, device="cuda", precision="fp32").predict_proba(texts)
    cpu = load(result.run_dir, device="cpu", precision="fp32").predict_proba(texts)
    np.testing.assert_allclose(gpu, cpu, atol=1e-3)


def test_the_feature_cache_on_the_gpu(image_data, tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNEKIT_CACHE_DIR", str(tmp_path / "cache"))
    recipe = tiny_image_recipe(image_data, strategy={"name": "linear_probe"}, train={"epochs": 4})
    cold = trained_on_gpu(recipe, tmp_path / "cold")
    warm = trained_on_gpu(recipe, tmp_path / "warm")
    assert any((tmp_path / "cache").rglob("*")), "no features were cached"
    assert warm.metrics["accuracy"] == pytest.approx(cold.metrics["accuracy"])


def test_text_resume_mid_epoch_on_the_gpu_matches_the_uninterrupted_run(text_data, tiny_bert, tmp_path, monkeypatch):
    from run_outputs import comparable, differences
    from test_resume import interrupted

    recipe = tiny_text_recipe(text_data, tiny_bert, train={"epochs": 2, "scheduler": "linear", "warmup_ratio": 0.3,
                                                          "checkpoint_every_steps": 1, "precision": "fp32"})
    train(recipe, output=tmp_path / "reference", quiet=True)
    interrupted(monkeypatch, recipe, tmp_path / "run", 3)
    result = train(recipe, output=tmp_path / "run", quiet=True, resume=True)
    assert differences(comparable(result.run_dir), comparable(tmp_path / "reference")) == []


def test_segmentation_trains_on_the_gpu(tmp_path):
    from test_segmentation import make_seg_set, seg_recipe

    make_seg_set(tmp_path / "train", 16, 0)
    make_seg_set(tmp_path / "val", 6, 1)
    result = trained_on_gpu(seg_recipe(tmp_path, train={"precision": "bf16"}), tmp_path / "run")
    assert 0.0 <= result.metrics["mean_iou"] <= 1.0


def test_detection_trains_and_predicts_on_the_gpu(tmp_path):
    from test_detection import det_recipe, make_boxes_set, write_csv

    write_csv(tmp_path / "train.csv", make_boxes_set(tmp_path / "images", n=8, seed=0))
    write_csv(tmp_path / "val.csv", make_boxes_set(tmp_path / "images", n=6, seed=1, prefix="val_"))
    result = trained_on_gpu(det_recipe(tmp_path, train={"precision": "bf16"}), tmp_path / "run")
    assert "map_50" in result.metrics
    images = sorted(str(p) for p in (tmp_path / "images").glob("val_*"))
    answers = load(result.run_dir, device="cuda").predict(images)
    assert len(answers) == len(images)

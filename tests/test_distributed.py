"""Multi-process training through torchrun: two CPU processes (gloo) shard the data, sync gradients,
end with identical weights, write one run directory, and match a single-process run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_image_folder

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _recipe(data: Path, batch_size: int) -> dict:
    # BatchNorm statistics frozen: per-process batches would otherwise see different statistics,
    # which is a real (and documented) difference between 1 and N processes, not a sync bug.
    return {
        "model": {"backbone": "timm:test_efficientnet", "pretrained": False, "image_size": 32},
        "data": {"train": str(data / "train"), "val": str(data / "val"), "augment": "none"},
        # head-only first (cached features, computed by the main process), then everything: the
        # processes must re-sync the newly trainable parameters
        "strategy": {"name": "freeze_then_unfreeze", "freeze_epochs": 1, "batchnorm": "frozen"},
        "train": {"epochs": 3, "batch_size": batch_size, "lr": 1e-2, "head_lr": 1e-2, "optimizer": "sgd", "seed": 0,
                  "precision": "fp32", "restore_best": False},
    }


def _run(cmd: list[str], env: dict) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=HERE)
    assert proc.returncode == 0, f"{' '.join(cmd[:6])} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"


def two_processes_and_one(recipe, per_process: int, tmp_path: Path) -> tuple[Path, Path]:
    """dist_train.py under torchrun with two processes at ``recipe(per_process)`` and alone at
    ``recipe(2 * per_process)`` (the same global batch); checks both ranks ended with the same
    weights and those match the single process's. Returns the two output folders (each run in ``run/``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    env.pop("WORLD_SIZE", None)
    two, one = tmp_path / "two", tmp_path / "one"
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
          str(HERE / "dist_train.py"), recipe(per_process), str(two)], env)
    _run([sys.executable, str(HERE / "dist_train.py"), recipe(2 * per_process), str(one)], env)
    assert json.loads((two / "rank0.json").read_text())["world"] == 2
    rank0, rank1, single = (load_file(str(p)) for p in (two / "rank0.safetensors", two / "rank1.safetensors", one / "rank0.safetensors"))
    assert rank0.keys() == rank1.keys() == single.keys()
    for k in rank0:
        assert torch.equal(rank0[k], rank1[k]), f"ranks disagree on {k}"
        assert torch.allclose(rank0[k], single[k], atol=1e-5, rtol=1e-4), f"{k}: 2 processes vs 1 differ by {(rank0[k] - single[k]).abs().max():g}"
    return two, one


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="torch.distributed with gloo is not available")
def test_two_processes_match_one(tmp_path):
    data = tmp_path / "data"
    make_image_folder(data / "train", per_class=8, classes=("circle", "square"))  # 16 images: 2 full steps of 2 x 4
    make_image_folder(data / "val", per_class=3, classes=("circle", "square"), seed=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    env.pop("WORLD_SIZE", None)
    two = tmp_path / "two"
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
          str(HERE / "dist_train.py"), json.dumps(_recipe(data, 4)), str(two)], env)
    one = tmp_path / "one"
    _run([sys.executable, str(HERE / "dist_train.py"), json.dumps(_recipe(data, 8)), str(one)], env)  # same global batch

    assert json.loads((two / "rank0.json").read_text())["world"] == 2
    rank0, rank1 = load_file(str(two / "rank0.safetensors")), load_file(str(two / "rank1.safetensors"))
    assert rank0.keys() == rank1.keys()
    for k in rank0:
        assert torch.equal(rank0[k], rank1[k]), f"ranks disagree on {k}"
    single = load_file(str(one / "rank0.safetensors"))
    # each process alone on all the data at batch 4 would not match one process at batch 8: the
    # match shows the data was sharded and the gradients averaged
    for k in single:
        assert torch.allclose(rank0[k], single[k], atol=1e-5, rtol=1e-4), f"{k}: 2 processes vs 1 differ by {(rank0[k] - single[k]).abs().max():g}"
    # one run directory, written once, with metrics over the whole validation set
    run = two / "run"
    assert (run / "model.safetensors").is_file() and (run / "metrics.json").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    lines = (run / "val_predictions.jsonl").read_text().splitlines()
    assert len(lines) == 6 and metrics["accuracy"] == json.loads((one / "run" / "metrics.json").read_text())["accuracy"]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="torch.distributed with gloo is not available")
def test_two_processes_train_a_detector(tmp_path):
    """A dense head leaves the backbone's last layers without gradients; the processes still sync
    (DistributedDataParallel told to look for unused parameters) and end with the same weights and
    one run directory whose metrics cover the whole validation set."""
    from test_detection import make_boxes_set, write_csv

    write_csv(tmp_path / "boxes.csv", make_boxes_set(tmp_path / "images", n=8))
    recipe = {
        "model": {"backbone": "timm:test_efficientnet", "pretrained": False, "image_size": 96},
        "data": {"train": str(tmp_path / "boxes.csv"), "val": str(tmp_path / "boxes.csv"), "image_root": str(tmp_path / "images"), "augment": "none"},
        "task": {"type": "detection"},
        "strategy": {"name": "full", "batchnorm": "frozen"},
        "train": {"epochs": 2, "batch_size": 2, "lr": 1e-3, "head_lr": 1e-3, "seed": 0, "precision": "fp32"},
    }
    # the children import finetunekit from where this process does
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    env.pop("WORLD_SIZE", None)
    two = tmp_path / "two"
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
          str(HERE / "dist_train.py"), json.dumps(recipe), str(two)], env)
    rank0, rank1 = load_file(str(two / "rank0.safetensors")), load_file(str(two / "rank1.safetensors"))
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert json.loads((two / "run" / "metrics.json").read_text())["num_examples"] == 8

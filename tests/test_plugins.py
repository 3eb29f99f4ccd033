"""A modality written outside the package: rows of numbers, read by a small MLP backbone registered
as a backbone source. With no edit to src/, it trains, resumes, evaluates, predicts, serves one HTTP
request, exports to ONNX with the parity check, and writes a report.

This is what adding ``modalities/audio.py`` looks like: a Modality subclass registered by name,
a backbone that says which modality it serves, and nothing else.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from finetunekit import Recipe, train
from finetunekit.backbones import BACKBONE_KINDS, SOURCES
from finetunekit.backbones.base import Backbone
from finetunekit.data import Examples
from finetunekit.core.errors import DataError
from finetunekit.modalities import MODALITIES, InputSchema, Modality

WIDTH = 4  # numbers per row


class RowsDataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[tuple[float, ...]], labels: Any) -> None:
        self.values = torch.tensor([list(r) for r in rows], dtype=torch.float32).reshape(len(rows), WIDTH)
        self.labels = None if labels is None else torch.as_tensor(labels)

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        i = key[0] if isinstance(key, tuple) else key  # training keys carry an augmentation seed: no augmentation here
        item = {"values": self.values[i], "index": i}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item

    @staticmethod
    def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {"values": torch.stack([it["values"] for it in items]), "index": torch.tensor([it["index"] for it in items])}
        if "labels" in items[0]:
            batch["labels"] = torch.stack([it["labels"] for it in items])
        return batch


def _row(where: str, cells: list[Any]) -> tuple[float, ...]:
    try:
        values = tuple(float(c) for c in cells)
    except (TypeError, ValueError):
        raise DataError(f"{where}: expected {WIDTH} numbers, got {str(cells)[:80]}") from None
    if len(values) != WIDTH:
        raise DataError(f"{where}: expected {WIDTH} numbers, got {len(values)}")
    return values


@MODALITIES.register("numbers")
class Numbers(Modality):
    name = "numbers"
    column_guesses = tuple(f"x{i}" for i in range(WIDTH))
    request_field = "rows"
    default_strategy = "full"
    train_defaults = {"epochs": 3, "batch_size": 8, "lr": 1e-2, "head_lr": 1e-2, "weight_decay": 0.0, "scheduler": "cosine",
                      "warmup_ratio": 0.0, "progressive_resize": 1.0}
    search_space = {"train.lr": {"log_uniform": [1e-3, 1e-1]}}
    zero_config_backbone = "mlp:4"
    onnx_axes = {"values": {0: "batch"}}

    def find_examples(self, path: Path, found: str, label_column: Any = "label", require_labels: bool = True, **_: Any) -> Examples:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        inputs = [_row(f"{path}:{n}", [r[c] for c in self.column_guesses]) for n, r in enumerate(rows, start=2)]
        labels = [r[label_column] for r in rows] if label_column in (rows[0] if rows else {}) else None
        return Examples(inputs, labels, str(path), self.name, places=[f"{path}:{n}" for n in range(2, len(rows) + 2)])

    def build_dataset(self, examples, label_ids, backbone, preprocessing, train, augment, max_length, task=None, crop_scale=0.25):
        return RowsDataset(examples.inputs, label_ids)

    def encode(self, predictor, items):
        return {"values": torch.tensor([list(r) for r in items], dtype=torch.float32)}

    def examples_digest(self, h, inputs, encodings):
        h.update(json.dumps([list(r) for r in inputs]).encode())

    def check_inputs(self, inputs, schema: InputSchema):
        return [_row(f"input {n}", list(item)) for n, item in enumerate(inputs, start=1)]

    def decode_request(self, where, value):
        return _row(where, value if isinstance(value, list) else [value])

    def export_samples(self, saved, schema, limit):
        return [tuple(r) for r in saved[:limit]]


class MLPBackbone(Backbone):
    modality = "numbers"
    kind = "mlp"

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(WIDTH, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.num_features = width

    def forward_features(self, batch):
        return self.net(batch["values"].float())

    def layer_groups(self):
        return [["net.0.weight", "net.0.bias"], ["net.2.weight", "net.2.bias"]]

    def preprocessing(self):
        return {"modality": "numbers", "width": WIDTH}

    def describe(self):
        return {"kind": self.kind, "width": self.num_features}

    @classmethod
    def from_description(cls, description, assets):
        return cls(int(description["width"]))


@SOURCES.register("mlp")
def _mlp(name: str, pretrained: bool, pooling: str, image_size: int | None) -> Backbone:
    torch.manual_seed(0)
    return MLPBackbone(int(name))


BACKBONE_KINDS["mlp"] = MLPBackbone  # rebuilds the backbone from a run directory (finetunekit.json's backbone.kind)


def _write_rows(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow([*Numbers.column_guesses, "label"])
        for _ in range(n):
            values = [round(rng.uniform(-1, 1), 4) for _ in range(WIDTH)]
            out.writerow([*values, "up" if values[0] + values[1] > 0 else "down"])
    return path


@pytest.fixture
def rows(tmp_path):
    return _write_rows(tmp_path / "train.csv", 64, 0), _write_rows(tmp_path / "val.csv", 32, 1)


def _recipe(rows, **train_fields) -> Recipe:
    return Recipe.from_dict({
        "model": {"backbone": "mlp:16"},
        "data": {"train": str(rows[0]), "val": str(rows[1])},
        "train": {"epochs": 4, "batch_size": 8, "seed": 0, **train_fields},
    })


def test_a_modality_from_outside_the_package_trains_resumes_predicts_serves_exports_and_reports(rows, tmp_path, monkeypatch):
    from finetunekit import evaluate
    from finetunekit.use.export import export
    from finetunekit.use.predict import load
    from finetunekit.report import write_report

    recipe = _recipe(rows, checkpoint_every_steps=4)
    reference = train(recipe, output=tmp_path / "reference", quiet=True)
    assert reference.metrics["accuracy"] >= 0.75  # x0 + x1 > 0 is learnable by the MLP in 4 epochs

    # resume: stopped after its third checkpoint, continued, it ends where the uninterrupted run ended
    from test_resume import interrupted

    interrupted(monkeypatch, recipe, tmp_path / "run", 3)
    resumed = train(recipe, output=tmp_path / "run", quiet=True, resume=True)
    assert resumed.metrics["accuracy"] == pytest.approx(reference.metrics["accuracy"])
    run_dir = resumed.run_dir
    assert json.loads((run_dir / "finetunekit.json").read_text())["modality"] == "numbers"

    metrics = evaluate(str(run_dir), str(rows[1]))
    assert metrics["accuracy"] == pytest.approx(resumed.metrics["accuracy"])

    predictor = load(run_dir)
    assert predictor.predict([(0.9, 0.8, 0.0, 0.0), (-0.9, -0.8, 0.0, 0.0)]) == ["up", "down"]
    with pytest.raises(DataError, match="input 1: expected 4 numbers, got 2"):
        predictor.predict([(1.0, 2.0)])

    pytest.importorskip("fastapi")
    from service_client import post_json, running

    with running(predictor) as (url, _):
        status, body = post_json(url, {"rows": [[0.9, 0.8, 0.0, 0.0]]})
        assert status == 200, body
        (answer,) = body["predictions"]
        assert answer["label"] == "up"
        status, body = post_json(url, {"rows": [["a", 1, 2, 3]]})
        assert status == 422 and "rows[0]: expected 4 numbers" in json.dumps(body)

    pytest.importorskip("onnxruntime")
    result = export(run_dir, "onnx", tmp_path / "onnx")
    assert result.max_abs_diff < 1e-4 and result.examples > 0 and (tmp_path / "onnx" / "model.onnx").is_file()

    page = write_report(run_dir, tmp_path / "report.html").read_text()
    assert "numbers" in page and "Worst errors" in page

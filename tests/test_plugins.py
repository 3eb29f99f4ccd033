"""A modality and a task type written outside the package, each registered by name.

The modality: rows of numbers, read by a small MLP backbone registered as a backbone source. The
task type: counts (Poisson regression): a head with one output, the log of the expected count, a
Poisson negative log-likelihood, MAE and mean Poisson deviance (both lower is better), and
predictions as whole counts. With no edit to src/, each trains, resumes, evaluates, predicts,
serves one HTTP request, exports to ONNX with the parity check, and writes a report; the count
task also ranks the trials of ``finetunekit tune`` on its own lower-is-better metric.

This is what adding ``modalities/audio.py`` or ``tasks/count.py`` looks like: a Modality or Task
subclass registered by name (a backbone that says which modality it serves), and nothing else.
"""

from __future__ import annotations

import csv
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from finetunekit import Recipe, train
from finetunekit.backbones import BACKBONE_KINDS, SOURCES
from finetunekit.backbones.base import Backbone
from finetunekit.core.errors import DataError, FinetuneError, check_range
from finetunekit.data import Examples
from finetunekit.modalities import MODALITIES, InputSchema, Modality
from finetunekit.report import SECTIONS as REPORT_SECTIONS
from finetunekit.tasks import TASKS
from finetunekit.tasks.base import ReportView, Task
from finetunekit.tasks.options import TaskOptions

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
        return Examples(inputs, labels, str(path), self.name, places=[f"{path}:{n}" for n in range(2, len(rows) + 2)],
                        label_columns=[label_column] if labels is not None else None)

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
    from finetunekit.report import write_report
    from finetunekit.use.export import export
    from finetunekit.use.predict import load

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


# -- a task type: counts (Poisson regression) ---------------------------------------------------------


@dataclass
class CountOptions(TaskOptions):
    """``task:`` options of counts: ``max_count``, the largest count a label may hold (a column of ids
    or amounts read as counts is refused by the row that breaks it)."""

    max_count: int | None = None

    def __post_init__(self) -> None:
        if self.max_count is not None:
            check_range("task.max_count", self.max_count, 1, 10**9)


def poisson_deviance(rate: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per example ``2 (y log(y / mu) - (y - mu))``, with ``y log y = 0`` at ``y = 0``."""
    rate, counts = np.maximum(np.asarray(rate, dtype=np.float64), 1e-12), np.asarray(counts, dtype=np.float64)
    ratio = np.where(counts > 0, counts * np.log(np.where(counts > 0, counts, 1.0) / rate), 0.0)
    return 2.0 * (ratio - (counts - rate))


def read_counts(examples: Any, column: str, max_count: int) -> np.ndarray:
    """The label cells as counts; a cell that is no whole number in [0, max_count] names its row."""
    out = []
    for i, cell in enumerate(examples.labels or []):
        try:
            value = float(cell)
        except (TypeError, ValueError):
            value = math.nan
        if not (math.isfinite(value) and value.is_integer() and 0 <= value <= max_count):
            raise DataError(f"{examples.where(i, column)}: count {cell!r} is not a whole number in [0, {max_count}]")
        out.append(value)
    return np.array(out, dtype=np.float64)


def poisson_median(rate: np.ndarray) -> np.ndarray:
    """The median count of Poisson(rate): the smallest k with P(X <= k) >= 1/2. It lies in
    [rate - ln 2, rate + 1/3) (Choi, 1994), so at most two candidates are tested, each with
    P(X <= k) = Q(k + 1, rate), the regularised upper incomplete gamma function."""
    rate = torch.as_tensor(np.maximum(rate, 1e-12), dtype=torch.float64)
    low = torch.clamp(torch.ceil(rate - math.log(2.0)), min=0.0)
    return torch.where(torch.special.gammaincc(low + 1.0, rate) >= 0.5, low, low + 1.0).numpy()


@TASKS.register("count")
class CountTask(Task):
    """One count per example. The head outputs the log of the expected count, offset by the log of
    the training set's mean count (kept in the run) so that training starts at the mean; the loss is
    the Poisson negative log-likelihood. Predictions are whole counts (the median of the predicted
    Poisson distribution, which minimises the absolute error) beside the expected count."""

    type = "count"
    Options = CountOptions
    primary_metric = "deviance"
    lower_is_better = frozenset({"loss", "deviance", "mae"})
    epoch_metrics = ("deviance", "mae")
    export_note = "the output is the expected count (the rate of a Poisson distribution), one column"
    head_folds_outputs = False  # the rate is the exp of the head's output: ONNX only
    report = ReportView(
        noun="counts of {names}",
        cards=(("deviance", "deviance"), ("MAE", "mae"), ("loss", "loss")),
        curves=(("val_deviance", "Poisson deviance"), ("val_mae", "MAE")),
        sections=("predicted_vs_true", "count_histogram", "largest_errors"),
        compared=("deviance", "mae", "loss"),
        bounded=False,
    )

    def __init__(self, name: str, mean: float, max_count: int) -> None:
        self.name, self.mean, self.max_count = name, float(mean), int(max_count)
        self.offset = math.log(max(self.mean, 1e-6))

    @classmethod
    def check_options(cls, options: dict[str, Any], where: str) -> dict[str, Any]:
        return {**options, "max_count": int(options.get("max_count") or 10**6)}

    @classmethod
    def from_data(cls, options: dict[str, Any], train: Any, recipe: Any = None) -> CountTask:
        options = cls.check_options(options, "task")
        name = train.label_columns[0] if train.label_columns else "count"
        return cls(name, float(read_counts(train, name, options["max_count"]).mean()), options["max_count"])

    @classmethod
    def from_state(cls, state: dict[str, Any], read: Any = None) -> CountTask:
        return cls(state["targets"][0], state["mean"], state["max_count"])

    def state(self) -> dict[str, Any]:
        return {"type": self.type, "targets": [self.name], "mean": self.mean, "max_count": self.max_count}

    def describe(self) -> str:
        return f"counts of {self.name} (training mean {self.mean:.3g})"

    # -- targets and model
    def encode(self, examples: Any) -> torch.Tensor:
        return torch.tensor(read_counts(examples, self.name, self.max_count), dtype=torch.float32).view(-1, 1)

    @property
    def output_size(self) -> int:
        return 1

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = outputs.float() + self.offset
        return {"task": F.poisson_nll_loss(outputs, targets.float().view_as(outputs), log_input=True)}

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        """The expected count per example, shape (N, 1)."""
        return torch.exp(outputs.float() + self.offset)

    # -- judging
    def eval_loss(self, scores: np.ndarray, targets: np.ndarray) -> float | None:
        if not len(targets):
            return None
        log_rate = torch.log(torch.as_tensor(np.maximum(np.asarray(scores, dtype=np.float64), 1e-12)))
        return float(F.poisson_nll_loss(log_rate, torch.as_tensor(np.asarray(targets, dtype=np.float64)).view_as(log_rate)))

    def metrics(self, scores: np.ndarray, targets: np.ndarray, loss: float | None = None) -> dict[str, Any]:
        rate, counts = np.asarray(scores, dtype=np.float64).reshape(-1), np.asarray(targets, dtype=np.float64).reshape(-1)
        predicted = np.array(self.decode(scores), dtype=np.float64)
        result: dict[str, Any] = {
            "deviance": float(poisson_deviance(rate, counts).mean()) if len(counts) else 0.0,
            "mae": float(np.abs(predicted - counts).mean()) if len(counts) else 0.0,
            "mean_count": float(counts.mean()) if len(counts) else 0.0,
            "mean_rate": float(rate.mean()) if len(rate) else 0.0,
            "num_examples": int(len(counts)),
        }
        if loss is not None:
            result["loss"] = float(loss)
        return result

    def metric_names(self) -> list[str]:
        return ["loss", "deviance", "mae"]

    def format_metrics(self, metrics: dict[str, Any], title: str = "") -> str:
        line = f"deviance {metrics['deviance']:.4f}  MAE {metrics['mae']:.4f}"
        line += f"  loss {metrics['loss']:.4f}" if "loss" in metrics else ""
        return "\n".join([*([title] if title else []), f"{line}  (n={metrics['num_examples']})"])

    # -- predictions
    def decode(self, scores: np.ndarray) -> list[Any]:
        return [int(v) for v in poisson_median(np.asarray(scores, dtype=np.float64).reshape(-1))]

    def target_values(self, targets: np.ndarray) -> list[Any]:
        return [int(v) for v in np.asarray(targets).reshape(-1)]

    def prediction_records(self, scores: np.ndarray, targets: np.ndarray | None) -> list[dict[str, Any]]:
        """``{"label", "predicted", "rate"}``: true and predicted counts, the expected count."""
        rate = np.asarray(scores, dtype=np.float64).reshape(-1)
        true = self.target_values(targets) if targets is not None else [None] * len(rate)
        return [{"label": t, "predicted": p, "rate": round(float(r), 6)} for t, p, r in zip(true, self.decode(scores), rate, strict=True)]

    def output_records(self, scores: np.ndarray) -> list[dict[str, Any]]:
        rate = np.asarray(scores, dtype=np.float64).reshape(-1)
        return [{"json": {"count": k, "rate": float(r)}, "line": f"{k}\t{r:.4f}"} for k, r in zip(self.decode(scores), rate, strict=True)]

    def example_values(self, records: list[dict[str, Any]]) -> list[tuple[str, np.ndarray, bool]]:
        return [("mae", np.array([abs(r["predicted"] - r["label"]) for r in records], dtype=np.float64), False)]

    def output_names(self) -> list[str]:
        return [self.name]

    def explain_targets(self, scores: np.ndarray) -> list[int]:
        return [0] * len(scores)

    def card(self, modality: str, metrics: dict[str, Any], train: Any) -> dict[str, Any]:
        return {
            "pipeline_tag": "tabular-regression",
            "metric_names": ["poisson_deviance", "mae"],
            "metrics": [{"type": "poisson_deviance", "value": round(metrics["deviance"], 4), "name": "Mean Poisson deviance"},
                        {"type": "mae", "value": round(metrics["mae"], 4), "name": "MAE of the predicted counts"}],
            "title": f"{modality} count model ({self.name})",
            "summary": f"Predicts the count `{self.name}` from {modality} inputs, as a Poisson rate and a whole count.",
            "use": f"Estimating `{self.name}` for inputs like the {len(train)} it was fine-tuned on.",
            "data": f"(mean count {self.mean:.4g})",
            "table": "| metric | value |\n| --- | --- |\n" + "\n".join(
                f"| {k} | {metrics[k]:.4f} |" for k in ("deviance", "mae", "loss") if k in metrics),
            "report": "Curves, predicted against true counts, their histograms and the largest errors: `report.html`.",
        }

    # the export outputs the expected count; the parity check turns it back into the model's output
    def export_outputs(self, outputs: torch.Tensor) -> torch.Tensor:
        return self.scores(outputs)

    def import_outputs(self, exported: torch.Tensor) -> torch.Tensor:
        return torch.log(exported.float()) - self.offset

    def export_config(self) -> dict[str, Any]:
        return {"id2label": {0: self.name}, "label2id": {self.name: 0}, "problem_type": "regression"}


def _count_histogram(run: Any, explanations: dict[int, str]) -> str:
    """A report section of the task's own: how often each count is true and predicted."""
    from finetunekit.report import html

    rows = [r for r in run.predictions if r.get("label") is not None]
    top = max([0, *(r["label"] for r in rows), *(r["predicted"] for r in rows)])
    table = [[k, sum(r["label"] == k for r in rows), sum(r["predicted"] == k for r in rows)] for k in range(top + 1)]
    return html.section("count-histogram", "Counts, true and predicted", html.table(["count", "true", "predicted"], table))


REPORT_SECTIONS["count_histogram"] = _count_histogram


def _write_counts(path: Path, n: int, seed: int) -> Path:
    """Rows whose count is drawn from a Poisson distribution of rate exp(0.3 + 1.2 x0 - 0.8 x1)."""
    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow([*Numbers.column_guesses, "visits"])
        for _ in range(n):
            values = np.round(rng.uniform(-1, 1, WIDTH), 4)
            out.writerow([*values.tolist(), int(rng.poisson(math.exp(0.3 + 1.2 * values[0] - 0.8 * values[1])))])
    return path


@pytest.fixture
def counts(tmp_path):
    return _write_counts(tmp_path / "train.csv", 96, 0), _write_counts(tmp_path / "val.csv", 48, 1)


def _count_recipe(counts, **train_fields) -> dict[str, Any]:
    return {
        "model": {"backbone": "mlp:16"},
        "data": {"train": str(counts[0]), "val": str(counts[1]), "label_column": "visits"},
        "task": {"type": "count", "max_count": 50},
        "train": {"epochs": 4, "batch_size": 16, "seed": 0, "lr": 2e-2, "head_lr": 2e-2, **train_fields},
    }


def test_a_task_type_from_outside_the_package_trains_resumes_predicts_serves_exports_reports_and_tunes(counts, tmp_path, monkeypatch):
    from finetunekit import evaluate
    from finetunekit.report import write_report
    from finetunekit.use.export import export
    from finetunekit.use.predict import load

    recipe = Recipe.from_dict(_count_recipe(counts, checkpoint_every_steps=3))
    reference = train(recipe, output=tmp_path / "reference", quiet=True)
    # the model beats the constant rate at the training mean (its starting point) on validation
    train_mean, val_counts = (np.array([float(r["visits"]) for r in csv.DictReader(p.open())]) for p in counts)
    constant = poisson_deviance(np.full_like(val_counts, train_mean.mean()), val_counts).mean()
    assert reference.metrics["deviance"] < 0.9 * constant, (reference.metrics, constant)
    epochs = [json.loads(line) for line in (reference.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert reference.metrics["deviance"] == pytest.approx(min(e["val_deviance"] for e in epochs))  # the best epoch is the lowest

    # resume: stopped after its third checkpoint, continued, it ends where the uninterrupted run ended
    from test_resume import interrupted

    interrupted(monkeypatch, recipe, tmp_path / "run", 3)
    resumed = train(recipe, output=tmp_path / "run", quiet=True, resume=True)
    assert resumed.metrics["deviance"] == pytest.approx(reference.metrics["deviance"])
    run_dir = resumed.run_dir
    info = json.loads((run_dir / "finetunekit.json").read_text())
    assert info["task"]["type"] == "count" and info["task"]["max_count"] == 50

    metrics = evaluate(str(run_dir), str(counts[1]))
    assert metrics["deviance"] == pytest.approx(resumed.metrics["deviance"], rel=1e-5)
    assert metrics["mae"] == pytest.approx(resumed.metrics["mae"])

    predictor = load(run_dir)
    high, low = predictor.predict([(0.9, -0.9, 0.0, 0.0), (-0.9, 0.9, 0.0, 0.0)])
    assert isinstance(high, int) and isinstance(low, int) and high > low  # rate exp(0.3 + 1.8) against exp(0.3 - 1.8)

    bad = tmp_path / "bad.csv"
    bad.write_text(counts[1].read_text().replace("\n", "\n0.1,0.2,0.3,0.4,2.5\n", 1))
    with pytest.raises(DataError, match=r"bad.csv:2: column 'visits': count '2.5' is not a whole number in \[0, 50\]"):
        evaluate(str(run_dir), str(bad))

    pytest.importorskip("fastapi")
    from service_client import post_json, running

    with running(predictor) as (url, _):
        status, body = post_json(url, {"rows": [[0.9, -0.9, 0.0, 0.0]]})
        assert status == 200, body
        (answer,) = body["predictions"]
        assert answer["count"] == high and answer["rate"] > 1.0

    pytest.importorskip("onnxruntime")
    result = export(run_dir, "onnx", tmp_path / "onnx")
    assert result.max_abs_diff < 1e-4 and result.examples > 0  # and no predicted count differs (else it raises)
    assert "expected count" in (tmp_path / "onnx" / "README.md").read_text()

    page = write_report(run_dir, tmp_path / "report.html").read_text()
    assert "counts of visits" in page and "Counts, true and predicted" in page and "Largest errors" in page

    # tune: no metric named, so trials rank on the task's primary metric, deviance, minimised
    pytest.importorskip("optuna")
    import optuna
    import yaml

    from finetunekit.cli import main

    path = tmp_path / "count.yaml"
    path.write_text(yaml.safe_dump({**_count_recipe(counts, epochs=1), "search": {"space": {"train.lr": {"log_uniform": [1e-3, 1e-1]}}}}))
    assert main(["tune", str(path), "--trials", "2", "--output", str(tmp_path / "study"), "--quiet"]) == 0
    study = optuna.load_study(study_name="finetunekit", storage=f"sqlite:///{tmp_path / 'study' / 'study.db'}")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    values = [t.value for t in study.trials]
    assert len(values) == 2 and len(set(values)) == 2 and study.best_value == min(values)
    summary = json.loads((tmp_path / "study" / "summary.json").read_text())
    assert summary["metric"] == "deviance" and summary["best_score"] == pytest.approx(min(values))


def _count_texts(path: Path, n: int, seed: int) -> Path:
    """Sentences of filler words with 0 to 3 glad words among them; the count is how many."""
    from conftest import FILLER, WORDS, write_tsv

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        k = i % 4
        words = [str(w) for w in rng.choice(FILLER, size=6 - k)] + [str(w) for w in rng.choice(WORDS["pos"], size=k)]
        rows.append((" ".join(rng.permutation(words)), str(k)))
    return write_tsv(path, rows, ("sentence", "glad"))


def test_the_count_task_runs_on_a_text_backbone_too(tiny_bert, tmp_path, capsys):
    """The task knows nothing of its inputs: on the tiny BERT it trains, predicts from the CLI,
    exports to ONNX with the parity check and writes its model card."""
    from conftest import tiny_text_recipe
    from finetunekit.cli import main
    from finetunekit.use.export import export

    data = (_count_texts(tmp_path / "train.tsv", 64, 0), _count_texts(tmp_path / "dev.tsv", 32, 1))
    recipe = tiny_text_recipe(data, tiny_bert, data={"label_column": "glad"}, task={"type": "count"},
                              strategy={"name": "full"}, train={"epochs": 3, "lr": 3e-3, "head_lr": 3e-3})
    result = train(recipe, output=tmp_path / "run", quiet=True)
    counts = np.array([float(line.split("\t")[1]) for line in data[1].read_text().splitlines()[1:]])
    constant = poisson_deviance(np.full_like(counts, 1.5), counts).mean()  # the training mean, 1.5
    assert result.metrics["deviance"] < 0.95 * constant, (result.metrics, constant)  # it learnt something of the count

    capsys.readouterr()
    assert main(["predict", str(result.run_dir), "good great happy film was it", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert isinstance(answer["count"], int) and answer["rate"] > 0

    pytest.importorskip("onnxruntime")
    exported = export(result.run_dir, "onnx", tmp_path / "onnx")
    assert exported.max_abs_diff < 1e-4 and exported.examples > 0
    # a transformers export keeps the head's linear layer alone, which cannot hold the exp of the rate
    with pytest.raises(FinetuneError, match="export hf: .* is a count run, whose outputs are no linear layer's; export it with --format onnx"):
        export(result.run_dir, "hf", tmp_path / "hf")
    card = (result.run_dir / "README.md").read_text()
    assert "Mean Poisson deviance" in card and "count model (glad)" in card

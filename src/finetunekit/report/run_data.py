"""Everything a report shows, read from a run directory's files (no model, no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..run import artifacts
from ..core.errors import FinetuneError


@dataclass
class RunData:
    run_dir: Path
    info: dict[str, Any]  # finetunekit.json
    recipe: dict[str, Any]  # recipe.yaml (resolved)
    classes: list[str]  # classification: labels.json; multi-label: the label names; regression: the targets
    metrics: dict[str, Any]  # metrics.json: final validation metrics
    epochs: list[dict[str, Any]]  # metrics.jsonl
    steps: list[dict[str, Any]]  # steps.jsonl (absent in runs made before it existed)
    predictions: list[dict[str, Any]] = field(default_factory=list)  # val_predictions.jsonl

    @property
    def name(self) -> str:
        return self.run_dir.resolve().name

    @property
    def task(self) -> dict[str, Any]:
        """The stored task (finetunekit.json), {"type": ...}; old runs stored only the string."""
        task = self.info.get("task", "classification")
        return {"type": task} if isinstance(task, str) else dict(task)

    @property
    def task_type(self) -> str:
        return str(self.task.get("type", "classification"))

    @property
    def modality(self) -> str:
        return str(self.info.get("modality", "image"))

    @property
    def backbone(self) -> str:
        return str(self.recipe.get("model", {}).get("backbone", "?"))

    @property
    def strategy(self) -> str:
        return str(self.recipe.get("strategy", {}).get("name", "?"))

    def probabilities(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(probs (N, K), true label ids (N,)) from the saved predictions, or None without them."""
        rows = [r for r in self.predictions if r.get("label") is not None]
        if not rows:
            return None
        index = {name: i for i, name in enumerate(self.classes)}
        probs = np.array([r["probabilities"] for r in rows], dtype=np.float64)
        labels = np.array([index[r["label"]] for r in rows], dtype=np.int64)
        return probs, labels


def load_run(run_dir: str | Path) -> RunData:
    """Read a finished run directory; errors name the missing or corrupt file."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FinetuneError(f"run directory not found: {run_dir}")
    if not (run_dir / "metrics.json").is_file():
        raise FinetuneError(f"{run_dir / 'metrics.json'} is missing: {run_dir} is not a finished finetunekit run")
    recipe_path = run_dir / "recipe.yaml"
    try:
        recipe = yaml.safe_load(recipe_path.read_text(encoding="utf-8")) if recipe_path.is_file() else {}
    except yaml.YAMLError as exc:
        raise FinetuneError(f"{recipe_path}: not valid YAML ({exc})") from None
    predictions = artifacts.read_jsonl(run_dir / artifacts.PREDICTIONS_FILE)
    info = artifacts.read_json(run_dir / artifacts.MARKER)
    task = info.get("task", "classification")
    if isinstance(task, str) or task.get("type") == "classification":
        classes = artifacts.read_json(run_dir / "labels.json")["classes"]
        for number, row in enumerate(predictions, start=1):
            if len(row.get("probabilities", [])) != len(classes) or row.get("label") not in (None, *classes):
                raise FinetuneError(f"{run_dir / artifacts.PREDICTIONS_FILE}:{number}: does not match labels.json's {len(classes)} classes")
    else:
        classes = [str(c) for c in task.get("labels", task.get("targets", task.get("classes", [])))]
        for number, row in enumerate(predictions, start=1):
            if "predicted" not in row:
                raise FinetuneError(f"{run_dir / artifacts.PREDICTIONS_FILE}:{number}: has no predicted value")
    return RunData(
        run_dir=run_dir,
        info=info,
        recipe=recipe or {},
        classes=list(classes),
        metrics=artifacts.read_json(run_dir / "metrics.json"),
        epochs=artifacts.read_jsonl(run_dir / "metrics.jsonl"),
        steps=artifacts.read_jsonl(run_dir / "steps.jsonl"),
        predictions=predictions,
    )


def worst_errors(run: RunData, limit: int) -> list[dict[str, Any]]:
    """Misclassified validation examples, the most confidently wrong first."""
    wrong = [r for r in run.predictions if r.get("label") is not None and r["predicted"] != r["label"]]
    return sorted(wrong, key=lambda r: -float(r["confidence"]))[:limit]


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> list[dict[str, float]]:
    """Per equal-width confidence bin: count, mean confidence and accuracy (the same bins as
    :func:`finetunekit.tasks.classification.expected_calibration_error`)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows = []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > low) & (confidence <= high)
        count = int(in_bin.sum())
        rows.append({
            "low": float(low), "high": float(high), "count": count,
            "confidence": float(confidence[in_bin].mean()) if count else float("nan"),
            "accuracy": float(correct[in_bin].mean()) if count else float("nan"),
        })
    return rows

"""What two runs must agree on to count as the same training: weights, metrics and logs, with the
wall-clock fields left out (a resumed run spends its time differently)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TIMING_KEYS = {"train_seconds", "train_samples_per_second"}


def _without_timing(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in TIMING_KEYS}


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if path.name == "steps.jsonl" and not path.exists():
        return []  # a run without optimizer steps (prototype) logs none
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def comparable(run_dir: Path) -> dict[str, Any]:
    """The outputs of a finished run that an interrupted-and-resumed run must reproduce exactly."""
    run_dir = Path(run_dir)
    return {
        "model.safetensors": (run_dir / "model.safetensors").read_bytes(),
        "metrics.json": _without_timing(json.loads((run_dir / "metrics.json").read_text())),
        "metrics.jsonl": [_without_timing(r) for r in _jsonl(run_dir / "metrics.jsonl")],
        "steps.jsonl": _jsonl(run_dir / "steps.jsonl"),
        "val_predictions.jsonl": _jsonl(run_dir / "val_predictions.jsonl"),
    }


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Names of the outputs that differ (readable assertion messages instead of megabyte diffs)."""
    return sorted(k for k in a if a[k] != b.get(k))

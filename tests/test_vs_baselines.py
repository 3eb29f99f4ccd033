"""benchmarks/vs_baselines.py's bookkeeping of the inference rows: agreement with finetunekit's
batch predict, ratios against the fastest baseline, and where --write puts each table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "vs_baselines.py"


@pytest.fixture()
def bench():
    spec = importlib.util.spec_from_file_location("vs_baselines", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(name, role, seconds, predictions, task="text inference", device_type="cpu"):
    return {"task": task, "name": name, "role": role, "train_seconds": seconds, "samples_per_second": 4 / seconds,
            "accuracy": 0.75, "inputs": 4, "settings": f"{name} settings", "predictions": predictions,
            "peak_memory_mib": 100.0, "device": "test CPU", "device_type": device_type}


def test_inference_rows_get_agreement_ratios_and_their_own_table(bench, tmp_path, monkeypatch):
    rows = [
        _row(bench.OURS_PREDICT, "ours", 1.0, ["a", "b", "a", "a"]),
        _row("transformers pipeline", "baseline", 4.0, ["a", "b", "b", "a"]),
        _row("plain transformers loop", "baseline", 2.0, ["a", "b", "a", "a"]),
        {"task": "text", "name": "finetunekit bf16", "role": "ours", "train_seconds": 10.0, "samples_per_second": 5.0,
         "accuracy": 0.8, "peak_memory_mib": 1.0, "device": "test CPU", "settings": "training"},
    ]
    bench.add_agreement(rows)
    assert [r.get("agrees") for r in rows] == ["4/4", "3/4", "4/4", None]
    assert not any("predictions" in r for r in rows)
    ratios, inference_ratios = bench.split_ratios(rows)
    assert ratios == []  # no training baseline in these rows
    # against the fastest baseline (the plain loop, 2 samples/s), not the pipeline
    assert inference_ratios == [f"text inference: {bench.OURS_PREDICT} vs plain transformers loop (fastest baseline): 2.00x "
                                "(accuracy 0.7500 vs 0.7500)"]
    doc = tmp_path / "docs" / "performance.md"
    doc.parent.mkdir()
    doc.write_text("<!-- results:begin -->\nold\n<!-- results:end -->\n"
                   "<!-- results-inference-cpu:begin -->\nold\n<!-- results-inference-cpu:end -->\n"
                   "<!-- results-inference-cuda:begin -->\nkept\n<!-- results-inference-cuda:end -->\n")
    monkeypatch.setattr(bench, "REPO", tmp_path)
    bench.write_tables(rows, ratios, inference_ratios, "")
    text = doc.read_text()
    cpu = text.split("<!-- results-inference-cpu:begin -->")[1].split("<!-- results-inference-cpu:end -->")[0]
    assert "| text inference | transformers pipeline | 4 | 4.00 | 1.0 | 0.7500 | 3/4 | 100 |" in cpu
    assert "- text inference, plain transformers loop: plain transformers loop settings" in cpu
    assert "2.00x" in cpu and "finetunekit bf16" not in cpu
    main_table = text.split("<!-- results:begin -->")[1].split("<!-- results:end -->")[0]
    assert "| text | finetunekit bf16 |" in main_table and "inference" not in main_table
    assert "kept" in text  # the GPU table is left alone by rows that ran on the CPU

"""benchmarks/end_to_end.py's bookkeeping: time to quality from a run's history and timings, the
phase shares, the ratios and the markdown it prints (no command is run here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "end_to_end.py"


@pytest.fixture()
def bench():
    spec = importlib.util.spec_from_file_location("end_to_end", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["end_to_end"] = module  # its dataclass looks its module up while being defined
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("end_to_end", None)


def _ours(bench, tmp_path):
    c = bench.Contestant("text", "finetunekit", "ours", [], tmp_path, "ours settings", 2)
    timing = {"seconds": {"start-up (interpreter and imports)": 4.0, "epoch 1 train": 10.0, "epoch 1 validate": 2.0,
                          "epoch 1 checkpoint": 1.0, "epoch 2 train": 10.0, "epoch 2 validate": 2.0, "report": 1.0},
              "total_seconds": 32.0}
    for wall, history in ((40.0, [0.80, 0.86]), (30.0, [0.84, 0.85])):
        c.walls.append(wall)
        c.cpus.append(wall * 1.5)
        c.accuracies.append(max(history))
        c.histories.append(history)
        c.timings.append(timing)
    return c


def test_time_to_quality_is_the_first_epoch_reaching_the_baseline(bench, tmp_path):
    ours = _ours(bench, tmp_path)
    # the median of two runs is the slower one (index 1 of the sorted walls): history [0.80, 0.86]
    assert bench.time_to_quality(ours, 0.85).startswith("epoch 2 of 2 (val accuracy 0.8600), 29.0 s into the 32.0 s run")
    assert bench.time_to_quality(ours, 0.80).startswith("epoch 1 of 2 (val accuracy 0.8000), 16.0 s into")
    assert bench.time_to_quality(ours, 0.9) == "never within 2 epochs (best 0.8600)"


def test_phase_shares_sum_the_epochs_by_kind(bench, tmp_path):
    shares = {name: (seconds, share) for name, seconds, share in bench.phase_shares(_ours(bench, tmp_path))}
    assert shares["epochs: train"] == (20.0, pytest.approx(20 / 32))
    assert shares["epochs: validate"][0] == 4.0 and shares["report"][0] == 1.0


def test_report_prints_ratios_against_finetunekit_and_a_markdown_table(bench, tmp_path, monkeypatch, capsys):
    ours = _ours(bench, tmp_path)
    base = bench.Contestant("text", "Trainer script", "baseline", [], tmp_path / "b", "baseline settings", 2)
    base.walls, base.cpus, base.accuracies = [70.0, 80.0], [100.0, 110.0], [0.85, 0.85]
    monkeypatch.setattr(bench, "check_reloadable", lambda c: "reloaded")
    monkeypatch.setattr(bench, "device", lambda: "test CPU")
    markdown = bench.report({"text": [ours, base]}, ["--rows", "text"])
    # medians: ours 35 s, the baseline 75 s
    assert "| text | Trainer script | 2 | 70.0 / 75.0 | 105.0 | 0.8500 | 2.14x |" in markdown
    assert "text: Trainer script takes 2.14x finetunekit's time end to end (median wall)" in markdown
    assert "- text, Trainer script: baseline settings" in markdown and "test CPU" in markdown
    assert "epochs: train" in capsys.readouterr().out


@pytest.mark.parametrize("recipe_epochs, baseline_epochs", [(3, [3]), (1, [3, 1]), (5, [5, 3])])
def test_text_row_runs_the_trainer_at_its_own_epochs_and_at_the_recipes(bench, tmp_path, monkeypatch, recipe_epochs, baseline_epochs):
    monkeypatch.setattr(bench, "sst2_subset", lambda work, rows: work / f"sst2_{rows}.tsv")
    monkeypatch.setattr(bench, "recipe_epochs", lambda recipe: recipe_epochs)
    contestants = bench.text_contestants(tmp_path, repeats=1)
    assert [c.role for c in contestants] == ["ours", *["baseline"] * len(baseline_epochs)]
    assert [int(c.argv[c.argv.index("--epochs") + 1]) for c in contestants[1:]] == baseline_epochs
    assert len({c.out for c in contestants}) == len(contestants)  # each writes its own folder
    assert all(f"{e} epoch(s)" in c.name for e, c in zip(baseline_epochs, contestants[1:]))


def test_recipe_epochs_reads_the_example(bench):
    import yaml

    text = (bench.REPO / "examples" / "sst2.yaml").read_text()
    assert bench.recipe_epochs("sst2.yaml") == yaml.safe_load(text)["train"]["epochs"]

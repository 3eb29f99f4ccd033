"""`finetunekit tune`: the search finds a known optimum, pruning stops a bad trial, a killed study
resumes and completes, the best trial's run directory reloads and predicts, the study page renders,
and head-only trials read the feature cache."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import tiny_image_recipe
from finetunekit import Recipe, load
from finetunekit.cli import main
from finetunekit.core.errors import RecipeError
from finetunekit.run.recipe import SearchSpec

optuna = pytest.importorskip("optuna", reason="optuna not installed (pip install -e '.[test]')")

from finetunekit.choose import tune as tune_mod  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}

# Run in place of `python -m finetunekit`: every training epoch starts 0.4 s late, so a kill lands
# inside a trial; timing only, never the numbers.
SLOW_EPOCHS = """
import sys, time
import finetunekit.run.trainer as trainer
epoch = trainer.train_one_epoch
def slow(*args, **kwargs):
    time.sleep(0.4)
    return epoch(*args, **kwargs)
trainer.train_one_epoch = slow
from finetunekit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_search_finds_the_known_best_point_of_a_synthetic_objective(tmp_path):
    space = {
        "train.epochs": {"int": [1, 12]},
        "strategy.name": {"choice": ["full", "linear_probe", "lp_ft"]},
        "train.lr": {"log_uniform": [1e-5, 1e-1]},
    }

    def objective(trial):
        p = tune_mod.suggest(trial, space)
        trial.set_user_attr("worker", tune_mod._worker_tag(trial.number))
        return -((p["train.epochs"] - 7) ** 2) - (0 if p["strategy.name"] == "lp_ft" else 4) - (math.log10(p["train.lr"]) + 3) ** 2

    study = tune_mod.create_study(optuna.storages.InMemoryStorage(), "maximize", SearchSpec(pruner="none", sampler_seed=0))
    tune_mod.run_workers(study, objective, trials=50)
    best = study.best_params
    assert len(study.trials) == 50
    assert best["train.epochs"] == 7 and best["strategy.name"] == "lp_ft"
    assert abs(math.log10(best["train.lr"]) + 3) < 0.3, best
    assert study.best_value > -0.1


def test_search_space_is_validated_field_by_field(image_data, tmp_path):
    with pytest.raises(RecipeError, match=r"search.space.train.hed_lr: unknown field 'hed_lr' of train \(did you mean 'head_lr'\?\)"):
        Recipe.from_dict({"search": {"space": {"train.hed_lr": {"log_uniform": [1e-3, 1e-1]}}}})
    with pytest.raises(RecipeError, match=r"search.space.train.lr.log_uniform: a log scale needs low > 0"):
        Recipe.from_dict({"search": {"space": {"train.lr": {"log_uniform": [0, 1e-1]}}}})
    # a range whose end makes an invalid recipe is refused before any trial runs
    recipe = tiny_image_recipe(image_data, search={"space": {"train.label_smoothing": {"uniform": [0.0, 1.5]}}})
    (tmp_path / "r.yaml").write_text(recipe.to_yaml())
    assert main(["tune", str(tmp_path / "r.yaml"), "--trials", "2", "--output", str(tmp_path / "s")]) == 2
    assert not (tmp_path / "s" / "trials").exists()


def _trial_recipe(image_data, **search):
    return tiny_image_recipe(
        image_data,
        strategy={"name": "linear_probe"},
        train={"epochs": 4, "lr": 3e-2, "head_lr": 3e-2},
        search={"space": {"train.head_lr": {"choice": [3e-2, 1e-9]}}, "prune_startup_trials": 2, "prune_warmup_epochs": 1, **search},
    )


def test_pruning_stops_a_clearly_worse_trial(image_data, tmp_path):
    recipe = _trial_recipe(image_data)
    space = tune_mod.search_space(recipe, "image")
    storage = tune_mod.open_storage(None, tmp_path)
    study = tune_mod.create_study(storage, "maximize", recipe.search)
    for lr in (3e-2, 3e-2, 1e-9):  # two good trials set the median; the third learns nothing
        study.enqueue_trial({"train.head_lr": lr})
    tune_mod.run_workers(study, tune_mod._TrainObjective(recipe, space, tmp_path, "accuracy", True), trials=3)
    good, also_good, bad = study.trials
    assert good.state.name == also_good.state.name == "COMPLETE"
    assert bad.state.name == "PRUNED"
    # stopped at the first epoch the pruner may act on (the second), not trained to the end
    assert sorted(bad.intermediate_values) == [0, 1]
    assert bad.intermediate_values[1] < good.intermediate_values[1]
    lines = (tmp_path / "trials" / "0002" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and not (tmp_path / "trials" / "0002" / "checkpoints").exists()
    # a trial is scored on its best epoch, which is the epoch the trainer restored and saved
    history = [json.loads(line) for line in (tmp_path / "trials" / "0000" / "metrics.jsonl").read_text().splitlines()]
    assert good.value == max(h["val_accuracy"] for h in history)
    assert good.value == json.loads((tmp_path / "trials" / "0000" / "metrics.json").read_text())["accuracy"]


@pytest.fixture(scope="module")
def study(image_data, tmp_path_factory):
    """A finished 4-trial study of a tiny linear probe, run through the command line."""
    root = tmp_path_factory.mktemp("study")
    recipe = tiny_image_recipe(
        image_data, strategy={"name": "linear_probe"}, train={"epochs": 3},
        search={"space": {"train.head_lr": {"log_uniform": [1e-3, 1e-1]}, "train.weight_decay": {"uniform": [0.0, 0.1]}}},
    )
    (root / "recipe.yaml").write_text(recipe.to_yaml())
    # module-scoped fixtures run before the per-test empty cache is set: give the study its own
    before = os.environ["FINETUNEKIT_CACHE_DIR"]
    os.environ["FINETUNEKIT_CACHE_DIR"] = str(root / "feature-cache")
    try:
        assert main(["tune", str(root / "recipe.yaml"), "--trials", "4", "--output", str(root / "study"), "--quiet"]) == 0
    finally:
        os.environ["FINETUNEKIT_CACHE_DIR"] = before
    return root


def test_the_best_trial_is_kept_reloads_and_predicts(study, image_data):
    study_dir = study / "study"
    summary = json.loads((study_dir / "summary.json").read_text())
    assert summary["counts"]["complete"] + summary["counts"]["pruned"] == 4
    best = study_dir / "best"
    marker = json.loads((best / "trial.json").read_text())
    assert marker["number"] == summary["best_trial"] and marker["value"] == summary["best_score"]
    assert json.loads((best / "metrics.json").read_text())["accuracy"] == summary["best_score"]
    model = load(best)  # rebuilt from the directory alone
    rows = [json.loads(line) for line in (best / "val_predictions.jsonl").read_text().splitlines()]
    assert model.predict([r["input"] for r in rows]) == [r["predicted"] for r in rows]
    # the other trials keep their metrics and recipe, not their weights
    for trial in sorted((study_dir / "trials").iterdir()):
        assert (trial / "recipe.yaml").is_file() and (trial / "metrics.jsonl").is_file()
        assert (trial / "model.safetensors").exists() == (trial.name == f"{marker['number']:04d}")
    # the first trial runs the recipe's own values; the best can only be as good or better
    first = yaml.safe_load((study_dir / "trials" / "0000" / "recipe.yaml").read_text())
    assert first["train"]["head_lr"] == 1e-2 and first["train"]["weight_decay"] == 0.01


def test_head_only_trials_read_the_feature_cache(study):
    db = optuna.load_study(study_name="finetunekit", storage=f"sqlite:///{study / 'study' / 'study.db'}")
    caches = [t.user_attrs["feature_cache"] for t in sorted(db.trials, key=lambda t: t.number) if t.state.name == "COMPLETE"]
    assert caches[0]["hits"] == 0  # the first trial computes the features (an empty cache per test)
    assert all(c["hits"] == c["total"] > 0 for c in caches[1:]), caches


def test_study_page_has_every_section(study):
    page = (study / "study" / "study.html").read_text()
    for section_id in ("trials", "history", "slices", "importances", "best-recipe"):
        assert f'<section id="{section_id}">' in page
    assert page.count('<img class="plot"') == 3
    best_yaml = page.split('<pre id="best-yaml"', 1)[1].split(">", 1)[1].split("</pre>", 1)[0]
    import html

    recipe = Recipe.from_dict(yaml.safe_load(html.unescape(best_yaml)))  # copy-pasteable
    summary = json.loads((study / "study" / "summary.json").read_text())
    assert recipe.train.head_lr == pytest.approx(summary["best_params"]["train.head_lr"])


def test_resuming_with_another_recipe_or_into_a_foreign_folder_is_refused(study, tmp_path, capsys):
    other = yaml.safe_load((study / "recipe.yaml").read_text())
    other["train"]["epochs"] = 4
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    assert main(["tune", str(tmp_path / "other.yaml"), "--trials", "6", "--output", str(study / "study")]) == 2
    assert "the study was started with another recipe (differs in train.epochs)" in capsys.readouterr().err
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    assert main(["tune", str(study / "recipe.yaml"), "--trials", "1", "--output", str(tmp_path / "foreign")]) == 2
    assert "is not empty and holds no study.json" in capsys.readouterr().err


def test_a_sigkilled_tune_resumes_and_completes_its_study(image_data, tmp_path):
    recipe = tiny_image_recipe(
        image_data, strategy={"name": "linear_probe"}, train={"epochs": 3},
        search={"space": {"train.head_lr": {"log_uniform": [1e-3, 1e-1]}}, "pruner": "none"},
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe.to_yaml())
    study_dir = tmp_path / "study"
    command = [sys.executable, "-c", SLOW_EPOCHS, "tune", str(path), "--trials", "3", "--output", str(study_dir), "--quiet"]
    proc = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = study_dir / "trials" / "0001" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (second.is_file() and second.read_text().strip()):  # trial 1 is part-way
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "trial 1 never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (study_dir / "trials" / "0001" / "metrics.json").exists(), "killed after the trial had finished"

    again = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    db = optuna.load_study(study_name="finetunekit", storage=f"sqlite:///{study_dir / 'study.db'}")
    by_state = {s: [t for t in db.trials if t.state.name == s] for s in ("COMPLETE", "FAIL", "RUNNING", "WAITING")}
    assert len(by_state["COMPLETE"]) == 3 and not by_state["RUNNING"] and not by_state["WAITING"]
    (killed,) = by_state["FAIL"]
    assert killed.number == 1
    (retry,) = [t for t in db.trials if t.system_attrs.get("failed_trial") == 1]
    assert retry.state.name == "COMPLETE" and retry.params == killed.params  # the same point, run once more
    assert (study_dir / "best" / "metrics.json").is_file()


# -- which way is better: the task decides -------------------------------------------------------------


def _task_recipe(tmp_path, kind, **train_fields):
    """A tiny image recipe of task type ``kind`` (tests/test_tasks.py's data), one epoch, a one-point space."""
    from test_tasks import image_task_data

    data = image_task_data(tmp_path, kind)
    task = data.pop("task", None)
    sections = {"data": data, "train": {"epochs": 1, **train_fields}, "strategy": {"name": "full"},
                "search": {"space": {"train.head_lr": {"choice": [1e-2]}}, "pruner": "none"}}
    if task is not None:
        sections["task"] = task
    recipe = tiny_image_recipe(Path(data["train"]), **sections)
    if kind == "multitask":
        recipe = Recipe.from_dict({**recipe.to_dict(), "tasks": [{"name": "shape", "label_column": "label"},
                                                                  {"name": "size", "label_column": "score", "weight": 0.5}]})
    path = tmp_path / f"{kind}.yaml"
    path.write_text(recipe.to_yaml())
    return path


@pytest.mark.parametrize("kind", ["classification", "multilabel", "regression", "segmentation", "detection", "multitask"])
def test_a_study_without_a_metric_runs_on_the_task_primary_metric(kind, tmp_path, capsys):
    from finetunekit.tasks import TASKS

    recipe_path = _task_recipe(tmp_path, kind)
    assert Recipe.from_yaml(recipe_path).train.metric is None
    assert main(["tune", str(recipe_path), "--trials", "1", "--output", str(tmp_path / "study")]) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "study" / "summary.json").read_text())
    primary = {"multitask": "shape/accuracy"}.get(kind, TASKS.get(kind).primary_metric)
    assert summary["metric"] == primary and summary["counts"]["complete"] == 1
    history = [json.loads(line) for line in (tmp_path / "study" / "trials" / "0000" / "metrics.jsonl").read_text().splitlines()]
    assert summary["best_score"] == pytest.approx(history[0][f"val_{primary}"])
    db = optuna.load_study(study_name="finetunekit", storage=f"sqlite:///{tmp_path / 'study' / 'study.db'}")
    # regression's RMSE goes down; every other primary metric here goes up
    direction = "minimize" if kind == "regression" else "maximize"
    assert db.direction.name == direction.upper()
    assert f"{direction} val {primary}" in capsys.readouterr().out


def test_a_lower_is_better_metric_is_minimised(tmp_path, capsys):
    """RMSE: the study minimises it, crowns the trial with the lowest value and keeps that run."""
    recipe_path = _task_recipe(tmp_path, "regression", metric="rmse")
    raw = yaml.safe_load(recipe_path.read_text())
    raw["search"]["space"] = {"train.head_lr": {"choice": [3e-2, 1e-9]}}  # 1e-9: the head never moves, a worse RMSE
    recipe_path.write_text(yaml.safe_dump(raw))
    assert main(["tune", str(recipe_path), "--trials", "3", "--output", str(tmp_path / "study")]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "minimize val rmse" in out
    db = optuna.load_study(study_name="finetunekit", storage=f"sqlite:///{tmp_path / 'study' / 'study.db'}")
    assert db.direction.name == "MINIMIZE"
    values = {t.number: t.value for t in db.trials if t.state.name == "COMPLETE"}
    assert len(set(values.values())) > 1, values  # the two rates give different RMSEs
    summary = json.loads((tmp_path / "study" / "summary.json").read_text())
    assert summary["best_score"] == min(values.values()) and values[summary["best_trial"]] == min(values.values())
    assert json.loads((tmp_path / "study" / "best" / "metrics.json").read_text())["rmse"] == summary["best_score"]
    # each trial's score is its lowest-RMSE epoch; the study page says which way it went
    assert "minimising validation rmse" in (tmp_path / "study" / "study.html").read_text()


def test_a_refused_study_leaves_nothing_behind(tmp_path, capsys):
    """A metric the task does not have is refused before the study's folder or storage exist."""
    recipe_path = _task_recipe(tmp_path, "detection", metric="accuracy")
    assert main(["tune", str(recipe_path), "--trials", "1", "--output", str(tmp_path / "study")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.metric: 'accuracy' is not a metric of a detection task" in err
    assert not (tmp_path / "study").exists()

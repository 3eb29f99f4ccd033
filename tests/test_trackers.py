"""train.report_to: TensorBoard event files written through Accelerate's trackers, readable, and
holding the same numbers as metrics.jsonl / steps.jsonl; a missing tracker package is a one-line
error naming the field."""

import json

import pytest

from conftest import tiny_image_recipe
from finetunekit import Recipe, train
from finetunekit.core.errors import FinetuneError, RecipeError


def _scalars(log_dir):
    pytest.importorskip("tensorboard", reason="tensorboard not installed (pip install 'finetunekit[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted(log_dir.rglob("events.out.tfevents.*"))
    assert events, f"no event files under {log_dir}"
    values = {}
    for path in events:
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            values.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return values


def test_tensorboard_events_hold_the_run_metrics(image_data, tmp_path):
    recipe = tiny_image_recipe(image_data, train={"epochs": 2, "report_to": ["tensorboard"]})
    run_dir = train(recipe, output=tmp_path / "run", quiet=True).run_dir
    scalars = _scalars(run_dir / "tensorboard")
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    for tag, key in [("val/accuracy", "val_accuracy"), ("val/loss", "val_loss"), ("train/loss", "train_loss"), ("val/macro_f1", "val_macro_f1")]:
        assert [s for s, _ in scalars[tag]] == [e["step"] for e in epochs]
        assert [v for _, v in scalars[tag]] == pytest.approx([e[key] for e in epochs], rel=1e-5)
    assert [s for s, _ in scalars["train/loss_step"]] == [s["step"] for s in steps]
    for group in steps[0]["lr"]:
        assert [v for _, v in scalars[f"lr/{group}"]] == pytest.approx([s["lr"][group] for s in steps])
    # the resolved recipe is logged as hyper-parameters
    assert list((run_dir / "tensorboard").rglob("hparams.yml"))


def test_mlflow_run_holds_the_run_metrics(image_data, tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="mlflow not installed (pip install 'finetunekit[mlflow]')")
    import mlflow

    store = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a throwaway local store; no database needed
    recipe = tiny_image_recipe(image_data, train={"epochs": 2, "report_to": ["mlflow"]})
    run_dir = train(recipe, output=tmp_path / "ml-run", quiet=True).run_dir
    client = mlflow.tracking.MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("ml-run").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "2" and run.data.params["model.backbone"] == "timm:test_efficientnet"
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    history = client.get_metric_history(run.info.run_id, "val/accuracy")
    assert [(m.step, m.value) for m in history] == [(e["step"], pytest.approx(e["val_accuracy"])) for e in epochs]


def test_no_tracker_writes_no_tracker_files(image_run):
    assert not (image_run / "tensorboard").exists()
    assert (image_run / "metrics.jsonl").is_file()


def test_missing_tracker_package_is_named_before_training(image_data, tmp_path, monkeypatch):
    import importlib.util

    from finetunekit.run import trackers

    real = importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    recipe = tiny_image_recipe(image_data, train={"report_to": ["mlflow"]})
    with pytest.raises(FinetuneError, match=r"train.report_to: 'mlflow' needs the package 'mlflow' \(pip install mlflow"):
        train(recipe, output=tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value, message", [
    ("tensorboard", "train.report_to: expected a list"),
    (["wandb"], "train.report_to[0]: 'wandb' is not one of 'tensorboard', 'mlflow'"),
    (["tensorboard", "tensorboard"], "names a tracker twice"),
])
def test_report_to_is_validated(value, message):
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        Recipe.from_dict({"train": {"report_to": value}})
    assert Recipe.from_dict({"train": {"report_to": ["tensorboard", "mlflow"]}}).train.report_to == ["tensorboard", "mlflow"]

"""The task seam (finetunekit.tasks): every registered task type trains, evaluates, saves, reloads,
predicts and reports on every modality with tiny models; each type's own numbers (metrics,
thresholds, standardisation) and bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FILLER, WORDS, make_image_folder, tiny_image_recipe, tiny_text_recipe, write_tsv

from finetunekit import load, train
from finetunekit.cli import main
from finetunekit.data import Examples
from finetunekit.tasks import TASKS, infer_type
from finetunekit.tasks.multilabel import best_thresholds, multilabel_metrics
from finetunekit.tasks.regression import regression_metrics

# -- data per task type and modality ---------------------------------------------------------------


def _text_rows(n: int, seed: int, kind: str) -> list[tuple[str, str]]:
    """Texts whose target follows their words: a class, a label set (some rows empty) or a score."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        pos, neg = i % 2 == 0, i % 3 == 0
        words = list(rng.choice(FILLER, size=4))
        words += [str(rng.choice(WORDS["pos"]))] if pos else []
        words += [str(rng.choice(WORDS["neg"]))] if neg else []
        if kind == "classification":
            label = "pos" if pos else "neg"
        elif kind == "multilabel":
            label = "|".join(n for n, on in (("pos", pos), ("neg", neg)) if on)
        else:
            label = f"{1.5 * pos - 0.75 * neg + 0.1 * (i % 5):.2f}"
        rows.append((" ".join(words), label))
    return rows


def text_task_data(root: Path, kind: str) -> dict:
    if kind == "multitask":  # a class and a score per text, one head each
        for split, n, seed in (("train", 48, 0), ("dev", 16, 1)):
            rows = zip(_text_rows(n, seed, "classification"), _text_rows(n, seed, "regression"), strict=True)
            lines = ["sentence\tlabel\tscore", *(f"{t}\t{c}\t{y}" for (t, c), (_, y) in rows)]
            (root / f"multi_{split}.tsv").write_text("\n".join(lines) + "\n")
        return {"train": str(root / "multi_train.tsv"), "val": str(root / "multi_dev.tsv")}
    header = ("sentence", "labels" if kind == "multilabel" else "score" if kind == "regression" else "label")
    train_path = write_tsv(root / f"{kind}_train.tsv", _text_rows(48, 0, kind), header)
    val_path = write_tsv(root / f"{kind}_dev.tsv", _text_rows(16, 1, kind), header)
    return {"train": str(train_path), "val": str(val_path), "label_column": header[1]}


def image_task_data(root: Path, kind: str) -> dict:
    """Class folders whose names carry the target: class names, ``a|b`` sets, or numbers."""
    if kind == "multitask":  # an image table: file, a class and a score per image
        names, scores = ("circle", "square", "stripe"), {"circle": "0.5", "square": "1.5", "stripe": "2.25"}
        for split, seed, n in (("train", 0, 8), ("val", 1, 4)):
            folder = make_image_folder(root / kind / split, per_class=n, classes=names, seed=seed)
            rows = [f"{f.relative_to(root / kind)},{f.parent.name},{scores[f.parent.name]}" for f in sorted(folder.rglob("*.png"))]
            (root / kind / f"{split}.csv").write_text("file,label,score\n" + "\n".join(rows) + "\n")
        return {"train": str(root / kind / "train.csv"), "val": str(root / kind / "val.csv")}
    if kind in DENSE_DATA:  # dense tasks: their own formats and recipe options
        return DENSE_DATA[kind](root / kind)
    names = {"classification": ("circle", "square", "stripe"), "multilabel": ("round", "round|striped", "striped"),
             "regression": ("0.5", "1.5", "2.25")}[kind]
    make_image_folder(root / kind / "train", per_class=8, classes=names, seed=0)
    make_image_folder(root / kind / "val", per_class=4, classes=names, seed=1)
    return {"train": str(root / kind)}


def segmentation_task_data(root: Path) -> dict:
    from test_segmentation import make_seg_set

    make_seg_set(root / "train", 8, 0, h=32, w=32)
    make_seg_set(root / "val", 12, 1, h=32, w=32)
    return {"train": str(root / "train" / "list.txt"), "val": str(root / "val"),
            "task": {"type": "segmentation", "input_size": [32, 32]}}


def detection_task_data(root: Path) -> dict:
    """Rectangles of two colours (tests/test_detection.py): 8 training and 12 validation images,
    each table next to its images."""
    from test_detection import make_boxes_set, write_csv

    write_csv(root / "train" / "boxes.csv", make_boxes_set(root / "train", 8, 0))
    write_csv(root / "val" / "boxes.csv", make_boxes_set(root / "val", 12, 1))
    return {"train": str(root / "train" / "boxes.csv"), "val": str(root / "val" / "boxes.csv"),
            "task": {"type": "detection", "fpn_channels": 64}}


# dense task type -> folder -> the data section (and "task": the recipe's task section)
DENSE_DATA = {"segmentation": segmentation_task_data, "detection": detection_task_data}
DATA = {"text": text_task_data, "image": image_task_data}
# the package's own task types (each with sample data above); a test may register its own
# (tests/test_plugins.py's count task, which runs its own lifecycle on its own data)
# task types that write text train encoder-decoders: tests/test_seq2seq.py covers them with tiny ones
# a task type with a recipe of its own (retrieval: a dual encoder) is tested with its package (tests/test_retrieval.py)
PACKAGE = [n for n in TASKS.names() if TASKS.get(n).__module__.startswith("finetunekit.") and not TASKS.get(n).needs_decoder
           and not TASKS.get(n).own_recipe]


MULTI = [{"name": "sentiment", "label_column": "label"}, {"name": "score", "label_column": "score", "weight": 0.5}]


def _recipe(modality, root, kind, tiny_bert, **sections):
    if kind in DENSE_DATA and modality == "text":
        data = {**text_task_data(root, "classification"), "label_column": "label"}
        sections["task"] = {"type": kind}
    else:
        data = {**DATA[modality](root, kind), **sections.pop("data", {})}
    if "task" in data:
        sections["task"] = data.pop("task")
    if kind == "multitask":
        sections["tasks"] = MULTI
    if modality == "text":
        recipe = tiny_text_recipe((Path(data["train"]), Path(data["val"])), tiny_bert, data=data, **{k: v for k, v in sections.items() if k != "tasks"})
    else:
        recipe = tiny_image_recipe(Path(data["train"]), data=data, **{k: v for k, v in sections.items() if k != "tasks"})
    if "tasks" in sections:
        from finetunekit import Recipe

        recipe = Recipe.from_dict({**recipe.to_dict(), "tasks": sections["tasks"]})
    return recipe


@pytest.mark.parametrize("modality", ["image", "text"])
@pytest.mark.parametrize("kind", PACKAGE)
def test_every_task_trains_saves_reloads_predicts_and_reports(kind, modality, tiny_bert, tmp_path, capsys):
    recipe = _recipe(modality, tmp_path, kind, tiny_bert, strategy={"name": "full"})
    if TASKS.get(kind).dense and modality == "text":  # feature maps come from image backbones only
        from finetunekit.core.errors import RecipeError

        with pytest.raises(RecipeError, match=f"{kind} needs an image backbone"):
            train(recipe, output=tmp_path / "run", quiet=True)
        return
    result = train(recipe, output=tmp_path / "run", quiet=True)
    run_dir = result.run_dir
    import yaml

    saved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    if kind == "multitask":  # each task's type inferred from its own column
        assert [t["type"] for t in result.recipe.to_dict()["tasks"]] == ["classification", "regression"]
        assert [t["type"] for t in saved["tasks"]] == ["classification", "regression"]
    else:  # inferred from the labels, and kept in the run's recipe
        assert result.recipe.task.type == kind and saved["task"]["type"] == kind
    info = json.loads((run_dir / "finetunekit.json").read_text())
    assert info["task"]["type"] == kind
    task = load(run_dir).task
    assert result.recipe.train.metric == task.primary_metric
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["num_examples"] == (16 if modality == "text" else 12)
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(f"val_{m}" in epochs[0] for m in task.epoch_metrics)
    # the reloaded model reproduces the run's own validation predictions exactly
    saved = [json.loads(line) for line in (run_dir / "val_predictions.jsonl").read_text().splitlines()]
    model = load(run_dir)
    again_records = task.prediction_records(model.predict_proba([r["input"] for r in saved]), None)
    assert _same([r["predicted"] for r in again_records], [r["predicted"] for r in saved])
    if not task.dense:  # a dense task's predict() gives masks or boxes, summarised in the records
        predicted = model.predict([r["input"] for r in saved])
        assert _same(predicted, [r["predicted"] for r in saved])
    # evaluation from the run directory gives the training run's final numbers
    val = recipe.data.val or str(Path(recipe.data.train) / "val")
    again = model.evaluate(val)
    for key in task.epoch_metrics:
        assert again[key] == pytest.approx(metrics[key], abs=1e-4)
    html = (run_dir / "report.html").read_text()
    assert "Training curves" in html
    card = (run_dir / "README.md").read_text()
    assert "## Evaluation" in card
    # CLI predict prints one line per input
    capsys.readouterr()
    assert main(["predict", str(run_dir), saved[0]["input"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[0])["input"] == saved[0]["input"]
    # batch predict to a CSV: one row per input, the task's answer cells, the same answers
    table = tmp_path / "inputs.csv"
    table.write_text("input\n" + "".join(f"{r['input']}\n" if modality == "image" else json.dumps(r["input"]) + "\n" for r in saved))
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(run_dir), "--input", str(table), "--output", str(out), "--column", "input", "--quiet"]) == 0
    import csv

    rows = list(csv.DictReader(out.open(newline="")))
    assert [r["input"] for r in rows] == [r["input"] for r in saved] and all(r["error"] == "" for r in rows)
    expected = [task.table_row(a) for a in model.answers(model.predict_proba([r["input"] for r in saved]))]
    assert list(rows[0]) == ["input", *expected[0], "error"]
    for row, cells in zip(rows, expected, strict=True):
        for key, value in cells.items():
            assert row[key] == (f"{value:.6f}" if isinstance(value, float) else str(value)), key
    # explanations: of the output the task chooses (Task.explain_targets), for every task
    from finetunekit.use.explain import write_explanations

    write_explanations(run_dir, [r["input"] for r in saved[:2]], tmp_path / "explained")
    records = [json.loads(line) for line in (tmp_path / "explained" / "explanations.jsonl").read_text().splitlines()]
    chosen = task.explain_targets(model.predict_proba([r["input"] for r in saved[:2]]))
    assert [r["explanation"]["target"] for r in records] == [task.output_names()[i] for i in chosen]
    key = "grid" if modality == "image" else "attributions"
    assert all(np.isfinite(np.asarray(r["explanation"][key], dtype=float)).all() for r in records)


def _same(a, b) -> bool:
    """Equal predictions: names and label lists exactly, numbers to the 6 decimals saved."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return abs(a - b) <= 1e-5 * max(1.0, abs(a))
    return a == b


# -- inference of the type -------------------------------------------------------------------------


@pytest.mark.parametrize("labels, expected", [
    (["pos", "neg"], "classification"),
    (["0", "1", "2"], "classification"),
    (["a|b", "c"], "multilabel"),
    ([["a", "b"], []], "multilabel"),
    (["0.5", "3", "4.25"], "regression"),
    (["1", "2.0"], "classification"),
])
def test_task_type_inferred_from_labels(labels, expected):
    assert infer_type(labels)[0] == expected


def test_inferred_task_type_is_printed(tmp_path, tiny_bert, capsys):
    train(_recipe("text", tmp_path, "regression", tiny_bert, train={"epochs": 1}), output=tmp_path / "run")
    assert "task: regression (the labels are numbers, not all integers; set task.type to choose)" in capsys.readouterr().out


def test_task_type_and_options_are_validated_field_by_field():
    from finetunekit import Recipe
    from finetunekit.core.errors import RecipeError

    with pytest.raises(RecipeError, match=r"^task\.type: unknown task type 'regresion' \(did you mean 'regression'\?\)"):
        Recipe.from_dict({"task": {"type": "regresion"}})
    with pytest.raises(RecipeError, match=r"^task\.loss: 'mae' is not one of"):
        Recipe.from_dict({"task": {"type": "regression", "loss": "mae"}})
    with pytest.raises(RecipeError, match=r"^task\.separator: applies to multilabel tasks only, and this task is regression"):
        Recipe.from_dict({"task": {"type": "regression", "separator": ";"}})
    with pytest.raises(RecipeError, match=r"^task\.threshold: 1\.5 is out of range"):
        Recipe.from_dict({"task": {"threshold": 1.5}})


def test_train_metric_must_be_one_of_the_tasks(tmp_path, tiny_bert):
    from finetunekit.core.errors import RecipeError

    recipe = _recipe("text", tmp_path, "regression", tiny_bert, train={"metric": "accuracy"})
    with pytest.raises(RecipeError, match=r"^train\.metric: 'accuracy' is not a metric of a regression task"):
        train(recipe, output=tmp_path / "run", quiet=True)


# -- regression ------------------------------------------------------------------------------------


def test_regression_metrics_by_hand():
    true = np.array([[1.0], [2.0], [3.0], [4.0]])
    pred = np.array([[1.5], [2.0], [2.5], [5.0]])
    m = regression_metrics(pred, true, ["y"])
    assert m["mae"] == pytest.approx((0.5 + 0 + 0.5 + 1) / 4)
    assert m["rmse"] == pytest.approx(np.sqrt((0.25 + 0 + 0.25 + 1) / 4))
    assert m["r2"] == pytest.approx(1 - 1.5 / 5.0)
    assert m["spearman"] == pytest.approx(1.0)


def test_regression_targets_are_standardised_and_predictions_come_back_in_units(tmp_path, tiny_bert):
    recipe = _recipe("text", tmp_path, "regression", tiny_bert, task={"type": "regression", "loss": "huber"})
    result = train(recipe, output=tmp_path / "run", quiet=True)
    state = json.loads((result.run_dir / "finetunekit.json").read_text())["task"]
    values = [float(r[1]) for r in _text_rows(48, 0, "regression")]
    assert state["mean"][0] == pytest.approx(np.mean(values), rel=1e-6)
    assert state["std"][0] == pytest.approx(np.std(values), rel=1e-6)
    assert state["loss"] == "huber"
    task = load(result.run_dir).task
    encoded = task.encode(Examples(["a text"], ["2.0"], "x", "text", label_columns=["score"]))
    assert float(encoded[0, 0]) == pytest.approx((2.0 - np.mean(values)) / np.std(values), rel=1e-5)
    assert float(task.scores(encoded)[0, 0]) == pytest.approx(2.0, abs=1e-5)


def test_regression_with_several_target_columns(tmp_path, tiny_bert):
    rows = _text_rows(40, 0, "regression")
    lines = ["sentence\ta\tb"] + [f"{t}\t{y}\t{-2 * float(y) + 1:.3f}" for t, y in rows]
    path = tmp_path / "two.tsv"
    path.write_text("\n".join(lines) + "\n")
    recipe = tiny_text_recipe((path, path), tiny_bert, data={"train": str(path), "val": None, "label_column": ["a", "b"]},
                              task={"type": "regression"})
    result = train(recipe, output=tmp_path / "run", quiet=True)
    assert set(result.metrics["per_target"]) == {"a", "b"}
    out = load(result.run_dir).predict([rows[0][0]])
    assert len(out[0]) == 2


# -- multi-label -----------------------------------------------------------------------------------


def test_multilabel_metrics_and_thresholds_by_hand():
    probs = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.4], [0.3, 0.1]])
    y = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    m = multilabel_metrics(probs, y, ["a", "b"], [0.5, 0.5])
    # a: tp 2 fp 0 fn 0; b: tp 1 fp 0 fn 1
    assert m["per_label"]["a"]["f1"] == pytest.approx(1.0)
    assert m["per_label"]["b"]["f1"] == pytest.approx(2 / 3)
    assert m["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 0 + 1))
    assert m["subset_accuracy"] == pytest.approx(3 / 4)  # row 3 misses b; row 4 (no label) is right
    assert m["hamming_loss"] == pytest.approx(1 / 8)
    assert m["examples_without_labels"] == 1
    # b's best threshold admits 0.4 (row 3) without admitting row 4's 0.1
    assert best_thresholds(probs, y)[1] == pytest.approx(0.4, abs=0.051)
    assert multilabel_metrics(probs, y, ["a", "b"], best_thresholds(probs, y))["per_label"]["b"]["f1"] == pytest.approx(1.0)


def test_multilabel_thresholds_are_stored_and_used_at_prediction(tmp_path, tiny_bert):
    result = train(_recipe("text", tmp_path, "multilabel", tiny_bert), output=tmp_path / "run", quiet=True)
    state = json.loads((result.run_dir / "finetunekit.json").read_text())["task"]
    assert state["labels"] == ["neg", "pos"] and len(state["thresholds"]) == 2
    model = load(result.run_dir)
    probs = model.predict_proba(["good great"])
    expected = [name for name, p, t in zip(state["labels"], probs[0], state["thresholds"], strict=True) if p >= t]
    assert model.predict(["good great"]) == [expected]


def test_multilabel_jsonl_lists_and_rows_without_labels(tmp_path, tiny_bert):
    rows = _text_rows(40, 0, "multilabel")
    path = tmp_path / "ml.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": [x for x in lab.split("|") if x]}) + "\n" for t, lab in rows))
    recipe = tiny_text_recipe((path, path), tiny_bert, data={"train": str(path), "val": None})
    result = train(recipe, output=tmp_path / "run", quiet=True)
    assert result.recipe.task.type == "multilabel"
    assert "examples_without_labels" in result.metrics


# -- bad input: one line naming file, row and column, exit 2 --------------------------------------


def _cli_error(args, capsys) -> str:
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    return err


def test_non_numeric_regression_target_names_file_row_and_column(tmp_path, tiny_bert, capsys):
    path = tmp_path / "bad.tsv"
    path.write_text("sentence\tscore\ngood film\t1.5\nbad film\tabout three\nfine film\t2.5\n")
    recipe = tiny_text_recipe((path, path), tiny_bert, data={"train": str(path), "val": str(path), "label_column": "score"},
                              task={"type": "regression"})
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(recipe.to_yaml())
    err = _cli_error(["train", str(recipe_path), "--output", str(tmp_path / "run")], capsys)
    assert f"{path}:3: column 'score': regression target 'about three' is not a finite number" in err


def test_multilabel_cell_with_another_separator_names_file_row_and_column(tmp_path, tiny_bert, capsys):
    path = tmp_path / "bad.tsv"
    path.write_text("sentence\tlabels\ngood film\tpos|neg\nbad film\tpos;neg\n")
    recipe = tiny_text_recipe((path, path), tiny_bert, data={"train": str(path), "val": str(path), "label_column": "labels"})
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(recipe.to_yaml())
    err = _cli_error(["train", str(recipe_path), "--output", str(tmp_path / "run")], capsys)
    assert f"{path}:3: column 'labels': multi-label cell 'pos;neg' is separated by ';', but labels are separated by '|'" in err


def test_balanced_sampler_needs_a_single_label_task(tmp_path, tiny_bert):
    from finetunekit.core.errors import FinetuneError

    recipe = _recipe("text", tmp_path, "regression", tiny_bert, data={"sampler": "balanced"})
    with pytest.raises(FinetuneError, match="data.sampler: balanced sampling needs one class per example"):
        train(recipe, output=tmp_path / "run", quiet=True)


def test_old_run_directories_without_a_stored_task_still_load(image_run, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(image_run, old)
    info = json.loads((old / "finetunekit.json").read_text())
    info["task"] = "classification"
    (old / "finetunekit.json").write_text(json.dumps(info))
    saved = [json.loads(line) for line in (old / "val_predictions.jsonl").read_text().splitlines()]
    assert load(old).predict([saved[0]["input"]]) == [saved[0]["predicted"]]


# -- several tasks ---------------------------------------------------------------------------------


def test_multitask_loss_is_the_weighted_sum_and_each_part_is_logged(tmp_path, tiny_bert):
    result = train(_recipe("text", tmp_path, "multitask", tiny_bert, train={"metric": "score/rmse"}), output=tmp_path / "run", quiet=True)
    epochs = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    for e in epochs:
        assert e["train_loss"] == pytest.approx(e["train_loss_task_sentiment"] + e["train_loss_task_score"], rel=1e-5)
    m = result.metrics
    assert m["loss"] == pytest.approx(m["sentiment/loss"] + 0.5 * m["score/loss"], rel=1e-5)
    assert set(m["tasks"]) == {"sentiment", "score"}
    assert m["sentiment/accuracy"] == m["tasks"]["sentiment"]["accuracy"]
    # the best epoch is the one with the lowest score RMSE (lower is better for rmse)
    best = min(epochs, key=lambda e: e["val_score/rmse"])
    assert m["best_epoch"] == best["epoch"]
    prediction = load(result.run_dir).predict(["good great film"])[0]
    assert set(prediction) == {"sentiment", "score"} and prediction["sentiment"] in ("pos", "neg")


def test_multitask_recipe_is_validated(tmp_path):
    from finetunekit import Recipe
    from finetunekit.core.errors import RecipeError

    with pytest.raises(RecipeError, match=r"^tasks\[1\]\.name: 'a' is used by another task"):
        Recipe.from_dict({"tasks": [{"name": "a", "label_column": "x"}, {"name": "a", "label_column": "y"}]})
    with pytest.raises(RecipeError, match=r"^tasks\[0\]\.label_column: task 'a' needs its label column"):
        Recipe.from_dict({"tasks": [{"name": "a"}]})
    with pytest.raises(RecipeError, match=r"^task\.name: only entries of `tasks:`"):
        Recipe.from_dict({"task": {"name": "a"}})
    # each entry's own checks name it by its place in the list, not as the single `task:` section
    two = [{"name": "a", "label_column": "x"}, {"name": "b", "label_column": "y"}]
    for field, value, message in [
        ("type", "regresion", r"^tasks\[1\]\.type: unknown task type 'regresion' \(did you mean 'regression'\?\)"),
        ("weight", -1, r"^tasks\[1\]\.weight: -1\.0 is out of range"),
        ("threshold", 2, r"^tasks\[1\]\.threshold: 2\.0 is out of range"),
        ("loss", "mae", r"^tasks\[1\]\.loss: 'mae' is not one of"),
    ]:
        with pytest.raises(RecipeError, match=message):
            Recipe.from_dict({"tasks": [two[0], {**two[1], field: value}]})
    with pytest.raises(RecipeError, match=r"^tasks\[1\]\.separator: applies to multilabel tasks only, and this task is regression"):
        Recipe.from_dict({"tasks": [two[0], {**two[1], "type": "regression", "separator": ";"}]})
    with pytest.raises(RecipeError, match=r"^task\.separator: applies to multilabel tasks only"):
        Recipe.from_dict({"task": {"type": "regression", "separator": ";"}})


def test_an_option_of_another_type_is_named_by_its_place_once_the_type_is_inferred(tmp_path, tiny_bert):
    from finetunekit.core.errors import RecipeError

    recipe = _recipe("text", tmp_path, "multitask", tiny_bert)
    raw = recipe.to_dict()
    raw["tasks"][1]["separator"] = ";"  # the score column is inferred to be regression
    from finetunekit import Recipe

    with pytest.raises(RecipeError, match=r"^tasks\[1\]\.separator: applies to multilabel tasks only, and this task is regression"):
        train(Recipe.from_dict(raw), output=tmp_path / "run", quiet=True)


def test_a_label_column_missing_for_one_task_of_several(tmp_path, tiny_bert, capsys):
    recipe = _recipe("text", tmp_path, "multitask", tiny_bert)
    raw = recipe.to_dict()
    raw["tasks"][1]["label_column"] = "rating"
    path = tmp_path / "r.yaml"
    import yaml

    path.write_text(yaml.safe_dump(raw))
    err = _cli_error(["train", str(path), "--output", str(tmp_path / "run")], capsys)
    assert f"{tmp_path / 'multi_train.tsv'}: no label column 'rating' (columns: sentence, label, score)" in err


def test_compare_regression_and_multitask_runs_example_by_example(tmp_path, tiny_bert, capsys):
    """compare pairs runs of any task: regression on MAE, several tasks task by task."""
    runs = {}
    for kind in ("regression", "multitask"):
        for name, epochs in (("short", 1), ("long", 4)):
            (tmp_path / f"{kind}-data").mkdir(exist_ok=True)
            recipe = _recipe("text", tmp_path / f"{kind}-data", kind, tiny_bert, train={"epochs": epochs}, strategy={"name": "full"})
            runs[kind, name] = train(recipe, output=tmp_path / f"{kind}-{name}", quiet=True).run_dir
    capsys.readouterr()
    assert main(["compare", str(runs["regression", "short"]), str(runs["regression", "long"]), "-o", str(tmp_path / "r.html")]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert len(lines) == 1 and lines[0].startswith("mae: regression-long ") and "where regression-long is better" in lines[0]
    saved = [json.loads(x) for x in (runs["regression", "long"] / "val_predictions.jsonl").read_text().splitlines()]
    mae = float(np.mean([abs(r["predicted"] - r["label"]) for r in saved]))
    assert f"regression-long {mae:.4f}" in lines[0]
    assert "Is the difference real?" in (tmp_path / "r.html").read_text()
    assert main(["compare", str(runs["multitask", "short"]), str(runs["multitask", "long"]), "-o", str(tmp_path / "m.html")]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [line.split(":")[0] for line in lines] == ["sentiment/accuracy", "score/mae"]
    assert main(["compare", str(runs["regression", "short"]), str(runs["multitask", "long"]), "-o", str(tmp_path / "x.html")]) == 0
    assert "is a multitask run and" in capsys.readouterr().out


# -- exports ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, problem_type", [("regression", "regression"), ("multilabel", "multi_label_classification")])
def test_text_export_loads_in_plain_transformers_with_its_problem_type(kind, problem_type, tmp_path, tiny_bert):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from finetunekit.use.export import export

    result = train(_recipe("text", tmp_path, kind, tiny_bert), output=tmp_path / "run", quiet=True)
    exported = export(result.run_dir, "hf", tmp_path / "hf")
    model = AutoModelForSequenceClassification.from_pretrained(str(exported.path), trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(exported.path), trust_remote_code=True)
    assert model.config.problem_type == problem_type
    texts = ["good great film", "bad awful plot"]
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, truncation=True, return_tensors="pt")).logits.numpy()
    ours = load(result.run_dir, precision="fp32")
    if kind == "regression":  # values in target units, as finetunekit predicts them
        assert np.allclose(logits[:, 0], ours.predict(texts), atol=1e-4)
    else:  # logits whose sigmoid is finetunekit's probabilities; thresholds travel in the config
        assert np.allclose(1 / (1 + np.exp(-logits)), ours.predict_proba(texts), atol=1e-4)
        assert model.config.thresholds == ours.task.thresholds


@pytest.mark.parametrize("kind", ["regression", "multitask"])
def test_onnx_export_parity(kind, tmp_path, tiny_bert):
    pytest.importorskip("onnxruntime")
    from finetunekit.use.export import export

    result = train(_recipe("image", tmp_path, kind, tiny_bert), output=tmp_path / "run", quiet=True)
    exported = export(result.run_dir, "onnx", tmp_path / "onnx")
    assert exported.max_abs_diff <= 1e-4 and json.loads((exported.path / "task.json").read_text())["type"] == kind


def test_multitask_transformers_export_is_refused_with_a_one_line_error(tmp_path, tiny_bert, capsys):
    result = train(_recipe("text", tmp_path, "multitask", tiny_bert), output=tmp_path / "run", quiet=True)
    err = _cli_error(["export", str(result.run_dir), "--format", "hf"], capsys)
    assert "has one head per task (tasks:); export it with --format onnx" in err

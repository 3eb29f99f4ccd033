"""Zero-config runs: `finetunekit train DATA_PATH` chooses modality, columns, task, strategy and
epochs from the data, says why, and keeps the resolved recipe."""

from __future__ import annotations

import yaml

from conftest import make_text_rows, write_tsv
from finetunekit.autoconfig import epochs_for, infer_recipe
from finetunekit.cli import main


def test_epochs_give_about_a_hundred_steps_within_bounds():
    assert epochs_for(16) == 50  # one step per epoch: capped
    assert epochs_for(64) == 25  # 4 steps per epoch
    assert epochs_for(245) == 7  # 16 steps per epoch
    assert epochs_for(10_000) == 5  # at least the default


def test_image_folder(image_data):
    inferred = infer_recipe(image_data)
    r = inferred.recipe
    assert r.model.backbone == "bundled:efficientnet_lite0" and r.strategy.name == "linear_probe"
    assert r.train.epochs == epochs_for(24) and r.train.batch_size == 16
    text = "\n".join(inferred.reasons)
    assert "modality: image (a folder with train/ and val/ sub-folders)" in text
    assert "3 classes, 24 training examples (8 to 8 per class)" in text


def test_text_table_columns_are_recognised(tmp_path):
    rows = make_text_rows(40)
    path = write_tsv(tmp_path / "reviews.tsv", rows, header=("review", "sentiment"))
    inferred = infer_recipe(path)
    assert inferred.recipe.data.label_column == "sentiment"
    assert inferred.recipe.model.backbone == "bundled:minilm_l6" and inferred.recipe.strategy.name == "full"
    assert inferred.recipe.train.epochs is None  # the text default
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("sentence1\tsentence2\tlabel\n" + "".join(f"{t}\t{t}\t{lab}\n" for t, lab in rows), encoding="utf-8")
    assert infer_recipe(pairs).recipe.data.text_columns == ["sentence1", "sentence2"]


def test_image_table(image_data, tmp_path):
    files = sorted((image_data / "train").rglob("*.png"))
    table = tmp_path / "images.csv"
    table.write_text("file,class\n" + "".join(f"{f},{f.parent.name}\n" for f in files), encoding="utf-8")
    inferred = infer_recipe(table)
    assert inferred.recipe.data.image_column == "file" and inferred.recipe.data.label_column == "class"
    assert inferred.recipe.strategy.name == "linear_probe"


def test_train_data_path_prints_the_choices_and_keeps_the_recipe(image_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(image_data), "--output", str(out), "--set", "train.epochs=1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "no recipe: chose from the data" in printed and "strategy: linear_probe" in printed
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved["strategy"]["name"] == "linear_probe" and saved["data"]["train"] == str(image_data)
    assert saved["train"]["epochs"] == 1 and saved["train"]["head_lr"] == 1e-2  # resolved, not null
    assert "epochs:" in (out / "autoconfig.txt").read_text()


def test_a_table_without_a_label_column_is_a_one_line_error(tmp_path, capsys):
    path = write_tsv(tmp_path / "x.tsv", make_text_rows(10), header=("text", "mood"))
    assert main(["train", str(path), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no label column found among text, mood" in err

"""Zero-config runs: `finetunekit train DATA_PATH` chooses modality, columns, task, strategy and
epochs from the data, says why, and keeps the resolved recipe."""

from __future__ import annotations

import re

import yaml

from conftest import make_text_rows, write_tsv
from finetunekit.choose.autoconfig import epochs_for, infer_recipe, infer_task
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
    rows = make_text_rows(60)  # 48 training rows after the held-out 20%: more than 16 per class
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


# -- the task, not only single-label classification ------------------------------------------------


def test_the_task_rule_reads_the_label_cells():
    assert infer_task(["cat", "dog"])[0] == "classification"
    assert infer_task(["0.5", "1", "2.25"])[0] == "regression"
    assert infer_task(["a|b", "c"])[0] == "multilabel"
    assert infer_task([str(v % 5) for v in range(40)])[0] == "classification"  # few integers: classes
    assert infer_task([str(v) for v in range(30)])[0] == "classification"  # 0..29: class codes
    assert infer_task([str(v) for v in range(1, 31)])[0] == "classification"  # 1..30: class codes
    kind, why = infer_task([str(18 + 2 * v) for v in range(30)])  # ages 18..76, every other year
    assert kind == "regression" and "30 distinct integers from 18 to 76" in why


def test_text_pairs_with_a_score_are_regression_validated_on_the_dev_table_beside(tmp_path):
    rows = "".join(f"a man plays {i}\tsomeone plays {i}\t{i % 5 + 0.25 * (i % 4)}\n" for i in range(30))
    (tmp_path / "train.tsv").write_text("sentence1\tsentence2\tscore\n" + rows, encoding="utf-8")
    (tmp_path / "dev.tsv").write_text("sentence1\tsentence2\tscore\n" + "".join(rows.splitlines(keepends=True)[:10]), encoding="utf-8")
    inferred = infer_recipe(tmp_path / "train.tsv")
    r, text = inferred.recipe, "\n".join(inferred.reasons)
    assert r.task.type == "regression" and r.data.label_column == "score"
    assert r.data.text_columns == ["sentence1", "sentence2"] and r.data.val == str(tmp_path / "dev.tsv")
    assert "task: regression (the labels are numbers, not all integers), 1 target (score)" in text
    assert f"validation: {tmp_path / 'dev.tsv'}" in text


def test_label_cells_with_several_labels_are_multilabel_and_counted_per_label(tmp_path, tiny_bert, capsys):
    cells = ["joy", "joy|surprise", "anger", "anger|sadness", "sadness", "surprise"]
    rows = [(t, cells[i % len(cells)]) for i, (t, _) in enumerate(make_text_rows(36))]
    path = write_tsv(tmp_path / "comments.tsv", rows, header=("text", "labels"))
    inferred = infer_recipe(path)
    assert inferred.recipe.task.type == "multilabel"
    counted = re.search(r"4 labels, (\d+) training examples \((\d+) to (\d+) per label\)", "\n".join(inferred.reasons))
    assert counted and 24 <= int(counted[1]) < 36 and 1 <= int(counted[2]) <= int(counted[3]) <= 12  # some held out
    out = tmp_path / "run"
    assert main(["train", str(path), "--output", str(out), "--set", f"model.backbone=hf:{tiny_bert}", "--set", "train.epochs=1",
                 "--set", "data.max_length=32", "--quiet"]) == 0
    assert "task: multi-label classification" in capsys.readouterr().out
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved["task"]["type"] == "multilabel" and saved["task"]["separator"] == "|"
    assert "multi-label" in (out / "autoconfig.txt").read_text()


def test_an_image_table_of_ages_is_regression_with_images_found_beside_it(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "images").mkdir()
    lines = []
    for i in range(40):  # 32 distinct ages in the training 80%
        Image.new("RGB", (32, 32), (6 * i, 100, 200 - 4 * i)).save(tmp_path / "images" / f"face{i}.png")
        lines.append(f"face{i}.png,{20 + 3 * i},{i % 2}\n")
    table = tmp_path / "train.csv"
    table.write_text("file,age,gender\n" + "".join(lines), encoding="utf-8")
    inferred = infer_recipe(table, ["data.label_column=age"])
    r, text = inferred.recipe, "\n".join(inferred.reasons)
    assert r.task.type == "regression" and r.data.image_root == str(tmp_path / "images") and r.data.image_column == "file"
    assert "found in images/ beside the table" in text and "task: regression (" in text and "a quantity" in text
    assert r.strategy.name == "linear_probe"
    assert infer_recipe(table, ["data.label_column=gender"]).recipe.task.type == "classification"
    out = tmp_path / "run"
    assert main(["train", str(table), "--output", str(out), "--set", "data.label_column=age", "--set", "model.backbone=timm:test_efficientnet",
                 "--set", "model.pretrained=false", "--set", "model.image_size=32", "--set", "train.epochs=1", "--quiet"]) == 0
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved["task"]["type"] == "regression" and saved["data"]["label_column"] == "age"
    assert "mae" in yaml.safe_load((out / "metrics.json").read_text())


def test_a_label_column_that_is_not_there_is_a_one_line_error(tmp_path, capsys):
    path = write_tsv(tmp_path / "x.tsv", make_text_rows(10), header=("text", "mood"))
    assert main(["train", str(path), "--output", str(tmp_path / "run"), "--set", "data.label_column=feeling"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no label column 'feeling' (columns: text, mood)" in err


def test_segmentation_and_detection_folders_are_recognised(tmp_path):
    from PIL import Image

    seg = tmp_path / "seg"
    for sub in ("images", "masks"):
        (seg / sub).mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (16, 16)).save(seg / "images" / f"im{i}.png")
        Image.new("L", (16, 16), i % 2).save(seg / "masks" / f"im{i}.png")
    inferred = infer_recipe(seg)
    assert inferred.recipe.task.type == "segmentation"
    assert "modality: image (a folder with images/ and masks/)" in inferred.reasons[0] and "task: segmentation, 3 images" in inferred.reasons[1]
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("filename,xmin,ymin,xmax,ymax,class\n" + "".join(f"im{i}.png,1,1,8,8,cat\n" for i in range(3)), encoding="utf-8")
    (tmp_path / "images").mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16)).save(tmp_path / "images" / f"im{i}.png")
    inferred = infer_recipe(boxes)
    assert inferred.recipe.task.type == "detection" and "a table of boxes (columns xmin, ymin, xmax, ymax)" in inferred.reasons[0]
    assert any(line.startswith("strategy: last_n") for line in inferred.reasons)  # the detection task's defaults


def test_a_dense_task_type_on_class_folders_names_what_zero_config_reads(image_data, capsys):
    assert main(["train", str(image_data / "train"), "--set", "task.type=segmentation"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "task.type segmentation: zero-config reads class folders, images/ + masks/ folders" in err


def test_few_texts_per_class_take_the_setfit_head_more_take_full_fine_tuning(tmp_path):
    train = write_tsv(tmp_path / "train.tsv", make_text_rows(32))  # 16 per class, dev.tsv beside it validates
    write_tsv(tmp_path / "dev.tsv", make_text_rows(8, 1))
    inferred = infer_recipe(train)
    strategy = inferred.recipe.strategy
    assert (strategy.name, strategy.setfit_iterations, inferred.recipe.train.epochs) == ("setfit", 0, None)  # SetFit's 1
    assert "strategy: setfit, setfit_iterations 0 (16 examples in the smallest class, at most 16" in "\n".join(inferred.reasons)
    write_tsv(train, make_text_rows(34))  # 17 per class
    assert infer_recipe(train).recipe.strategy.name == "full"
    pairs = tmp_path / "pairs.tsv"  # the rule was measured on single texts: pairs keep full fine-tuning
    pairs.write_text("sentence1\tsentence2\tlabel\n" + "".join(f"{t}\t{t}\t{lab}\n" for t, lab in make_text_rows(10)), encoding="utf-8")
    assert infer_recipe(pairs).recipe.strategy.name == "full"

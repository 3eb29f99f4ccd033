"""Every user mistake in docs/errors.md: one line on stderr with the exact message, exit code 2, no
traceback, and nothing already on disk lost or overwritten (the whole test directory, data and
earlier runs included, is byte-for-byte the same afterwards; no output directory appears).

Each case builds its files under a fresh directory and returns the command line and the message.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from conftest import make_image_folder, make_text_rows, tiny_image_recipe, write_tsv
from finetunekit import train
from finetunekit.run.checkpoint import Checkpointer, list_checkpoints
from finetunekit.cli import main
from finetunekit.run.recipe import TrainSpec

CASES: dict[str, Callable] = {}


def case(fn: Callable) -> Callable:
    CASES[fn.__name__] = fn
    return fn



class Killed(BaseException):
    pass


class Env:
    """Runs built once per module (copied into a case's directory when it needs them)."""

    def __init__(self, root: Path, tiny_bert: Path) -> None:
        self.tiny_bert = tiny_bert
        data = root / "data"
        make_image_folder(data / "train", per_class=4, classes=("a", "b"), size=16)
        make_image_folder(data / "val", per_class=2, classes=("a", "b"), size=16, seed=1)
        self.image_run = root / "image_run"
        train(tiny_image_recipe(data, train={"epochs": 1}), output=self.image_run, quiet=True)
        write_tsv(root / "train.tsv", make_text_rows(16, 0))
        self.text_run = root / "text_run"
        train(text_recipe_obj(root / "train.tsv", root / "train.tsv", tiny_bert), output=self.text_run, quiet=True)
        rows = "".join(f"{t}\t{t}\t{label}\n" for t, label in make_text_rows(16, 0))
        (root / "pairs.tsv").write_text("sentence1\tsentence2\tlabel\n" + rows, encoding="utf-8")
        self.pair_run = root / "pair_run"
        pairs = text_recipe_obj(root / "pairs.tsv", root / "pairs.tsv", tiny_bert, data={"text_columns": ["sentence1", "sentence2"]})
        train(pairs, output=self.pair_run, quiet=True)


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_bert) -> Env:
    return Env(tmp_path_factory.mktemp("error_env"), tiny_bert)


def text_recipe_obj(train_path: Path, val_path: Path | None, tiny_bert: Path, **sections):
    from finetunekit import Recipe

    raw = {"model": {"backbone": f"hf:{tiny_bert}"}, "data": {"train": str(train_path), "val": val_path and str(val_path), "max_length": 16},
           "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3}}
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return Recipe.from_dict(raw)


def image_recipe(root: Path, train_path: Path | None = None, **sections) -> Path:
    raw = {"model": {"backbone": "timm:test_efficientnet", "pretrained": False, "image_size": 32},
           "data": {"train": str(train_path or root / "images"), "augment": "none"},
           "train": {"epochs": 1, "batch_size": 4, "lr": 0.01, "head_lr": 0.01}}
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def text_recipe(root: Path, env: Env, train_path: Path, val_path: Path | None = None, **sections) -> Path:
    path = root / "recipe.yaml"
    path.write_text(text_recipe_obj(train_path, val_path, env.tiny_bert, **sections).to_yaml(), encoding="utf-8")
    return path


def images(root: Path, *classes: str, split: bool = True, per_class: int = 3) -> Path:
    """root/images/{train,val}/<class>/ (or root/images/<class>/ without split)."""
    base = root / "images"
    if split:
        make_image_folder(base / "train", per_class=per_class, classes=classes, size=16)
        make_image_folder(base / "val", per_class=1, classes=classes, size=16, seed=1)
    else:
        make_image_folder(base, per_class=per_class, classes=classes, size=16)
    return base


def tsv(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.write_text(text, encoding="utf-8")
    return path


GOOD_ROWS = "sentence\tlabel\ngood film\tpos\nbad film\tneg\ngreat plot\tpos\ndull plot\tneg\n"


# -- recipes and the command line ------------------------------------------------------------------


@case
def recipe_file_missing(root, env):
    return ["train", str(root / "nope.yaml")], f"recipe file not found: {root}/nope.yaml"


@case
def recipe_not_valid_yaml(root, env):
    path = tsv(root, "r.yaml", "train:\n  lr: [1,\n")
    return ["train", str(path)], f"{path}: not valid YAML at line 3: expected the node content, but found '<stream end>'"


@case
def recipe_not_a_mapping(root, env):
    path = tsv(root, "r.yaml", "- model\n- data\n")
    return ["train", str(path)], f"{path}: recipe: expected a mapping of sections, got list"


@case
def recipe_section_not_a_mapping(root, env):
    path = tsv(root, "r.yaml", "train: 3\n")
    return ["train", str(path)], f"{path}: train: expected a mapping of fields, got int"


@case
def recipe_unknown_section(root, env):
    path = tsv(root, "r.yaml", "trian:\n  lr: 0.1\n")
    return ["train", str(path)], f"{path}: unknown field 'trian' (did you mean 'train'?); known: model, data, task, tasks, strategy, train, search"


@case
def recipe_misspelled_field(root, env):
    path = tsv(root, "r.yaml", "train:\n  lrr: 0.1\n")
    known = ", ".join(f.name for f in fields(TrainSpec))
    return ["train", str(path)], f"{path}: unknown field 'train.lrr' (did you mean 'lr'?); known: {known}"


@case
def override_misspelled_field(root, env):
    known = ", ".join(f.name for f in fields(TrainSpec))
    return ["train", str(image_recipe(root)), "--set", "train.epoch=3"], f"unknown field 'train.epoch' (did you mean 'epochs'?); known: {known}"


@case
def override_unknown_section(root, env):
    return ["train", "--set", "trian.lr=1"], "override 'trian.lr=1': unknown section 'trian' (did you mean 'train'?)"


@case
def override_without_section(root, env):
    return ["train", "--set", "lr=1"], "override 'lr=1': expected section.field=value, e.g. train.lr=3e-4"


@case
def field_out_of_range(root, env):
    return ["train", str(image_recipe(root)), "--set", "train.lr=-1"], "train.lr: -1.0 is out of range (0.0, 10.0]"


@case
def fraction_out_of_range(root, env):
    return ["train", str(image_recipe(root)), "--set", "data.val_fraction=1.5"], "data.val_fraction: 1.5 is out of range (0.0, 1.0)"


@case
def field_wrong_type(root, env):
    return ["train", str(image_recipe(root)), "--set", "train.epochs=abc"], "train.epochs: expected an integer, got 'abc'"


@case
def field_not_a_choice(root, env):
    return (["train", str(image_recipe(root)), "--set", "train.optimizer=adamx"],
            "train.optimizer: 'adamx' is not one of 'sgd', 'adam', 'adamw' (did you mean 'adam'?)")


@case
def bad_images_policy_unknown(root, env):
    return ["train", str(image_recipe(root)), "--set", "data.bad_images=ignore"], "data.bad_images: 'ignore' is not one of 'fail', 'skip'"


@case
def checkpoint_every_steps_zero(root, env):
    return (["train", str(image_recipe(root)), "--set", "train.checkpoint_every_steps=0"],
            "train.checkpoint_every_steps: 0 is out of range [1, 1000000000]")


@case
def keep_checkpoints_zero(root, env):
    return ["train", str(image_recipe(root)), "--set", "train.keep_checkpoints=0"], "train.keep_checkpoints: 0 is out of range [1, 10000]"


@case
def unknown_strategy(root, env):
    return (["train", str(image_recipe(root)), "--set", "strategy.name=linear_prob"],
            "strategy.name: unknown strategy 'linear_prob' (did you mean 'linear_probe'?); "
            "choose one of: freeze_then_unfreeze, frozen_encoder, full, gradual_unfreeze, last_n, linear_probe, lora, lp_ft, prototype, setfit")


@case
def lora_target_matches_nothing(root, env):
    images(root, "a", "b")
    recipe = image_recipe(root, strategy={"name": "lora", "lora_targets": ["conv_pwll"]})
    return (["train", str(recipe), "--output", str(root / "run")],
            "strategy.lora_targets: 'conv_pwll' matches no layer of the backbone (did you mean 'conv_pwl'?); adaptable "
            "layers include conv, conv_exp, conv_expand, conv_head, conv_pw, conv_pwl, conv_reduce, conv_stem "
            "(e.g. conv_stem, blocks.0.0.conv, blocks.1.0.conv_exp); give a layer name or a dotted suffix of one")


# -- backbones -----------------------------------------------------------------------------------


def _sources() -> str:
    """The registered backbone sources as the errors list them (a plug-in test may add its own)."""
    from finetunekit.backbones import SOURCES

    return ", ".join(SOURCES.names())


def _bundled() -> list[str]:
    from finetunekit.backbones import BUNDLED

    return BUNDLED.names()


@case
def unknown_backbone_source(root, env):
    images(root, "a", "b")
    return (["train", str(image_recipe(root)), "--set", "model.backbone=timmm:resnet18"],
            f"unknown backbone source 'timmm' (did you mean 'timm'?); choose one of: {_sources()}")


@case
def unknown_timm_architecture(root, env):
    images(root, "a", "b")
    return (["train", str(image_recipe(root)), "--set", "model.backbone=timm:test_efficientnetx"],
            "unknown timm architecture 'test_efficientnetx' (did you mean 'test_efficientnet'?)")


@case
def unknown_bundled_backbone(root, env):
    images(root, "a", "b")
    return (["train", str(image_recipe(root)), "--set", "model.backbone=bundled:efficientnet_lite3"],
            "unknown bundled backbone 'efficientnet_lite3' (did you mean 'efficientnet_lite2'?); choose one of: "
            + ", ".join(_bundled()))


@case
def backbone_not_source_and_name(root, env):
    return (["train", str(image_recipe(root)), "--set", "model.backbone=resnet50"],
            f"model.backbone: 'resnet50' is not 'source:name' (sources: {_sources()}), nor a finetunekit run directory")


# -- data: paths and image folders ----------------------------------------------------------------


@case
def no_training_data(root, env):
    return ["train", str(image_recipe(root)), "--set", "data.train="], "data.train: expected a string, got None"


@case
def training_data_not_given(root, env):
    path = tsv(root, "r.yaml", "model:\n  backbone: timm:test_efficientnet\n  pretrained: false\n")
    return ["train", str(path)], "data.train: no training data given (a folder of images or a .csv/.tsv/.jsonl file)"


@case
def training_path_missing(root, env):
    return ["train", str(image_recipe(root, root / "missing"))], f"data path not found: {root}/missing"


@case
def validation_path_missing(root, env):
    images(root, "a", "b", split=False)
    return ["train", str(image_recipe(root, data={"val": str(root / "nowhere")}))], f"data path not found: {root}/nowhere"


@case
def image_folder_without_class_folders(root, env):
    (root / "images").mkdir()
    (root / "images" / "x.png").write_bytes(b"")
    return ["train", str(image_recipe(root))], f"{root}/images: no class folders (expected {root}/images/<class name>/<image files>)"


@case
def class_folder_without_images(root, env):
    images(root, "a", "b", split=False)
    (root / "images" / "c").mkdir()
    return ["train", str(image_recipe(root))], f"{root}/images/c: class folder 'c' has no images"


@case
def non_image_file_among_images(root, env):
    images(root, "a", "b", split=False)
    (root / "images" / "a" / "notes.txt").write_text("labels checked by hand")
    return ["train", str(image_recipe(root))], f"{root}/images/a: 1 non-image file(s) among the images: {root}/images/a/notes.txt"


@case
def corrupt_image_fails_with_the_list(root, env):
    base = images(root, "a", "b")
    (base / "train" / "a" / "x_bad.png").write_bytes(b"this is not a png")
    png = (base / "train" / "b" / "b_0.png").read_bytes()
    (base / "train" / "b" / "y_cut.png").write_bytes(png[: len(png) // 2])
    return ["train", str(image_recipe(root))], (
        f"{base}/train: 2 unreadable image file(s): {base}/train/a/x_bad.png (not an image PIL can read); "
        f"{base}/train/b/y_cut.png (Truncated File Read); remove them or set data.bad_images=skip"
    )


@case
def truncated_jpeg_in_validation_set(root, env):
    from PIL import Image

    base = images(root, "a", "b")
    path = base / "val" / "a" / "z.jpg"
    Image.open(base / "val" / "a" / "a_0.png").convert("RGB").resize((256, 256)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return ["train", str(image_recipe(root))], (
        f"{base}/val: 1 unreadable image file(s): {path} ({_pil_complaint(path)}); remove them or set data.bad_images=skip"
    )


def _pil_complaint(path: Path) -> str:
    """PIL's own words for a truncated JPEG (they include a byte count that depends on the file)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.draft("RGB", (image.width // 8, image.height // 8))
            image.load()
    except OSError as exc:
        assert str(exc).startswith("image file is truncated")
        return str(exc)
    raise AssertionError("the truncated JPEG decoded")


@case
def skipping_bad_images_empties_a_class(root, env):
    base = images(root, "a", "b", per_class=1)
    (base / "train" / "b" / "b_0.png").write_bytes(b"GIF89a broken")
    return ["train", str(image_recipe(root, data={"bad_images": "skip"}))], (
        f"{base}/train: class 'b' has no readable images (skipped: {base}/train/b/b_0.png (not an image PIL can read))"
    )


@case
def single_class_image_folder(root, env):
    base = images(root, "a")
    return ["train", str(image_recipe(root))], f"{base}/train: only one class (a); classification needs at least two"


@case
def unsupported_data_file(root, env):
    path = tsv(root, "data.xlsx", "not a table")
    return ["train", str(image_recipe(root, path))], f"{path}: not an image folder nor a .csv/.tsv/.jsonl/.txt/.parquet file"


@case
def text_data_for_an_image_backbone(root, env):
    path = tsv(root, "train.tsv", GOOD_ROWS)
    return ["train", str(image_recipe(root, path))], f"{path}: is text data, but the model's backbone takes image"


@case
def image_folder_for_a_text_backbone(root, env):
    base = images(root, "a", "b", split=False)
    return ["train", str(text_recipe(root, env, base))], f"{base}: is image data, but the model's backbone takes text"


# -- data: text tables -------------------------------------------------------------------------


@case
def empty_text_file(root, env):
    path = tsv(root, "train.tsv", "")
    return ["train", str(text_recipe(root, env, path))], f"{path}: file is empty"


@case
def text_file_with_header_only(root, env):
    path = tsv(root, "train.tsv", "sentence\tlabel\n")
    return ["train", str(text_recipe(root, env, path))], f"{path}: no data rows"


@case
def text_column_missing(root, env):
    path = tsv(root, "train.tsv", GOOD_ROWS)
    return (["train", str(text_recipe(root, env, path, data={"text_column": "review"}))],
            f"{path}: no text column 'review' (columns: sentence, label); set data.text_column")


@case
def label_column_missing(root, env):
    path = tsv(root, "train.tsv", GOOD_ROWS)
    return (["train", str(text_recipe(root, env, path, data={"label_column": "target"}))],
            f"{path}: no label column 'target' (columns: sentence, label); set data.label_column")


@case
def empty_text_in_a_row(root, env):
    path = tsv(root, "train.tsv", "sentence\tlabel\ngood film\tpos\n  \tneg\n")
    return ["train", str(text_recipe(root, env, path))], f"{path}:3: empty text in column 'sentence'"


@case
def nan_text_in_jsonl(root, env):
    path = tsv(root, "train.jsonl", '{"text": "good film", "label": "pos"}\n{"text": NaN, "label": "neg"}\n')
    return ["train", str(text_recipe(root, env, path))], f"{path}:2: empty text in column 'text'"


@case
def null_text_in_jsonl(root, env):
    path = tsv(root, "train.jsonl", '{"text": "good film", "label": "pos"}\n{"text": null, "label": "neg"}\n')
    return ["train", str(text_recipe(root, env, path))], f"{path}:2: empty text in column 'text'"


@case
def missing_label_in_a_row(root, env):
    path = tsv(root, "train.tsv", "sentence\tlabel\ngood film\tpos\nbad film\tneg\nfine plot\t\n")
    return ["train", str(text_recipe(root, env, path))], f"{path}:4: missing label in column 'label'"


@case
def validation_label_not_in_training(root, env):
    train_path = tsv(root, "train.tsv", GOOD_ROWS)
    val = tsv(root, "dev.tsv", "sentence\tlabel\ngood\tpos\nso so\tmeh\n")
    return (["train", str(text_recipe(root, env, train_path, val))],
            f"{val}: labels 'meh' do not occur in the training data (classes: neg, pos)")


@case
def single_class_text(root, env):
    path = tsv(root, "train.tsv", "sentence\tlabel\ngood film\tpos\ngreat plot\tpos\n")
    return ["train", str(text_recipe(root, env, path, path))], f"{path}: only one class (pos); classification needs at least two"


@case
def invalid_json_line(root, env):
    path = tsv(root, "train.jsonl", '{"text": "good", "label": "pos"}\n{"text": "bad", "label": \n')
    return ["train", str(text_recipe(root, env, path))], f"{path}:2: not valid JSON (Expecting value)"


@case
def json_line_not_an_object(root, env):
    path = tsv(root, "train.jsonl", '{"text": "good", "label": "pos"}\n["bad", "neg"]\n')
    return ["train", str(text_recipe(root, env, path))], f"{path}:2: expected a JSON object per line"


@case
def text_file_not_utf8(root, env):
    path = root / "train.tsv"
    path.write_bytes("sentence\tlabel\ncaf\u00e9\tpos\n".encode("latin-1"))
    return ["train", str(text_recipe(root, env, path))], f"{path}: not UTF-8 text at line 2, column 4 (byte 0xe9)"


@case
def csv_row_with_extra_fields(root, env):
    path = tsv(root, "train.csv", "sentence,label\ngood,pos\nbad,neg,extra\n")
    return ["train", str(text_recipe(root, env, path))], f"{path}:3: more fields than the header's 2"


@case
def too_few_rows_to_hold_out_validation(root, env):
    path = tsv(root, "train.tsv", "sentence\tlabel\ngood film\tpos\nbad film\tneg\n")
    return ["train", str(text_recipe(root, env, path))], f"{path}: too few examples to hold out a validation split; give data.val"


# -- data: sentence pairs and image tables ---------------------------------------------------------

PAIR_ROWS = "sentence1\tsentence2\tlabel\ngood film\tfine plot\tpos\nbad film\tdull plot\tneg\n"


@case
def pair_column_missing(root, env):
    path = tsv(root, "train.tsv", PAIR_ROWS)
    return (["train", str(text_recipe(root, env, path, data={"text_columns": ["sentence1", "hypothesis"]}))],
            f"{path}: no pair column 'hypothesis' (columns: sentence1, sentence2, label); set data.text_columns")


@case
def pair_column_missing_in_validation(root, env):
    train_path = tsv(root, "train.tsv", PAIR_ROWS)
    val = tsv(root, "dev.tsv", "sentence1\tlabel\ngood film\tpos\n")
    return (["train", str(text_recipe(root, env, train_path, val, data={"text_columns": ["sentence1", "sentence2"]}))],
            f"{val}: no pair column 'sentence2' (columns: sentence1, label); set data.text_columns")


@case
def pair_with_an_empty_second_text(root, env):
    path = tsv(root, "train.tsv", "sentence1\tsentence2\tlabel\ngood film\tfine\tpos\nbad film\t \tneg\n")
    return (["train", str(text_recipe(root, env, path, data={"text_columns": ["sentence1", "sentence2"]}))],
            f"{path}:3: empty text in column 'sentence2'")


@case
def text_columns_not_two(root, env):
    path = tsv(root, "train.tsv", PAIR_ROWS)
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"backbone": f"hf:{env.tiny_bert}"},
                                      "data": {"train": str(path), "text_columns": ["sentence1"]}}), encoding="utf-8")
    return (["train", str(recipe)],
            f"{recipe}: data.text_columns: give two column names (first and second text of each pair), got ['sentence1']")


def _image_table(root: Path, text: str, name: str = "train.csv") -> Path:
    make_image_folder(root / "photos", per_class=2, classes=("a", "b"), size=16)
    return tsv(root, name, text)


@case
def image_table_file_missing(root, env):
    table = _image_table(root, "file,label\nphotos/a/a_0.png,a\nphotos/a/gone.png,a\nphotos/b/b_0.png,b\n")
    return (["train", str(image_recipe(root, table))],
            f"{table}:3: image file not found: {root}/photos/a/gone.png (column 'file'; paths are relative to the table's folder)")


@case
def image_table_column_missing(root, env):
    table = _image_table(root, "file,label\nphotos/a/a_0.png,a\nphotos/b/b_0.png,b\n")
    return (["train", str(image_recipe(root, table, data={"image_column": "image"}))],
            f"{table}: no image file column 'image' (columns: file, label); set data.image_column")


@case
def image_table_row_not_an_image(root, env):
    tsv(root, "notes.txt", "x")
    table = _image_table(root, "file,label\nphotos/a/a_0.png,a\nnotes.txt,b\n")
    return (["train", str(image_recipe(root, table))],
            f"{table}:3: {root}/notes.txt is not an image file (.bmp, .gif, .jpeg, .jpg, .pgm, .png, .ppm, .tif, .tiff, .webp)")


@case
def parquet_file_unreadable(root, env):
    path = tsv(root, "train.parquet", "not parquet at all")
    return (["train", str(text_recipe(root, env, path))],
            f"{path}: not a readable Parquet file (Parquet magic bytes not found in footer. Either the file is corrupted or this is not a parquet file.)")


@case
def predict_single_text_with_a_pair_model(root, env):
    shutil.copytree(env.pair_run, root / "run")
    return (["predict", str(root / "run"), "good film"],
            "this model takes sentence pairs: give each as --pair FIRST SECOND (repeatable), or a table with --file")


@case
def predict_pair_with_a_single_text_model(root, env):
    shutil.copytree(env.text_run, root / "run")
    return (["predict", str(root / "run"), "--pair", "good", "film"],
            "--pair: this model takes single texts, not pairs (it was not trained with data.text_columns)")


# -- run directories -------------------------------------------------------------------------------


@case
def output_exists_and_is_not_empty(root, env):
    images(root, "a", "b")
    (root / "out").mkdir()
    (root / "out" / "notes.md").write_text("mine")
    return (["train", str(image_recipe(root)), "--output", str(root / "out")],
            f"run directory {root}/out already exists and is not empty; pass --overwrite or choose another --output")


@case
def output_is_a_finished_run(root, env):
    images(root, "a", "b")
    shutil.copytree(env.image_run, root / "run")
    return (["train", str(image_recipe(root)), "--output", str(root / "run")],
            f"run directory {root}/run already exists and is not empty; pass --overwrite or choose another --output")


@case
def overwrite_refused_for_a_foreign_folder(root, env):
    images(root, "a", "b")
    (root / "photos").mkdir()
    (root / "photos" / "holiday.txt").write_text("keep me")
    return (["train", str(image_recipe(root)), "--output", str(root / "photos"), "--overwrite"],
            f"refusing to overwrite {root}/photos: it is not a finetunekit run directory")


@case
def output_is_a_file(root, env):
    (root / "out").write_text("a file")
    return ["train", str(image_recipe(root)), "--output", str(root / "out")], f"output {root}/out exists and is not a directory"


@case
def resume_without_output(root, env):
    return ["train", str(image_recipe(root)), "--resume"], "--resume needs --output RUN_DIR: the run directory to continue"


@case
def resume_and_overwrite_together(root, env):
    return (["train", str(image_recipe(root)), "--output", str(root / "run"), "--resume", "--overwrite"],
            "--resume and --overwrite exclude each other: resume keeps the run directory, overwrite replaces it")


@case
def resume_a_finished_run(root, env):
    shutil.copytree(env.image_run, root / "run")
    return ["resume", str(root / "run")], f"run directory {root}/run has finished training (metrics.json is written); nothing to resume"


@case
def resume_a_missing_run(root, env):
    return ["resume", str(root / "run")], f"run directory not found: {root}/run"


@case
def resume_a_folder_without_recipe(root, env):
    (root / "run").mkdir()
    (root / "run" / "notes.md").write_text("mine")
    return ["resume", str(root / "run")], f"{root}/run/recipe.yaml is missing: {root}/run is not a finetunekit run directory"


def stopped_run(root: Path, monkeypatch, **train_fields) -> tuple[Path, Path]:
    """A run stopped right after its first checkpoint: (recipe file, run directory)."""
    images(root, "a", "b", per_class=4)
    recipe = image_recipe(root, train={"checkpoint_every_steps": 1, **train_fields})
    original = Checkpointer.save

    def save(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise Killed

    monkeypatch.setattr(Checkpointer, "save", save)
    with pytest.raises(Killed):
        main(["train", str(recipe), "--output", str(root / "run"), "--quiet"])
    monkeypatch.undo()
    return recipe, root / "run"


@case
def resume_with_other_classes(root, env, monkeypatch):
    _, run = stopped_run(root, monkeypatch)
    make_image_folder(root / "images" / "train", per_class=2, classes=("c",), size=16)
    ckpt = list_checkpoints(run)[-1]
    return ["resume", str(run)], (
        f"{root}/images/train: classes a, b, c do not match those of checkpoint {ckpt} (a, b); "
        "resume needs the data the run started with"
    )


@case
def resume_with_changed_examples(root, env, monkeypatch):
    _, run = stopped_run(root, monkeypatch)
    shutil.copy(root / "images" / "train" / "a" / "a_0.png", root / "images" / "train" / "a" / "a_9.png")
    ckpt = list_checkpoints(run)[-1]
    return ["resume", str(run)], (
        f"{root}/images/train: the training examples differ from those of checkpoint {ckpt} (8 then, 9 now); "
        "resume needs the data the run started with"
    )


@case
def resume_with_another_recipe(root, env, monkeypatch):
    recipe, run = stopped_run(root, monkeypatch)
    return ["train", str(recipe), "--output", str(run), "--resume", "--set", "train.lr=0.001"], (
        f"cannot resume {run}: the recipe differs from its recipe.yaml (train.lr is 0.01 in the run, 0.001 now); "
        f"resume with the same recipe (finetunekit resume {run}) or start a new run"
    )


# -- predict and evaluate --------------------------------------------------------------------------


@case
def predict_text_with_an_image_model(root, env):
    shutil.copytree(env.image_run, root / "run")
    return ["predict", str(root / "run"), "a lovely film"], "image not found: a lovely film (this model takes image files, not text)"


@case
def predict_long_text_with_an_image_model(root, env):
    shutil.copytree(env.image_run, root / "run")
    text = "a lovely film " * 40
    return ["predict", str(root / "run"), text], f"image not found: {text[:80]!r}... (this model takes image files, not text)"


@case
def predict_image_with_a_text_model(root, env):
    shutil.copytree(env.text_run, root / "run")
    base = images(root, "a", "b", split=False)
    return ["predict", str(root / "run"), str(base / "a" / "a_0.png")], f"{base}/a/a_0.png: is an image file, but this model takes text"


@case
def predict_image_folder_with_a_text_model(root, env):
    shutil.copytree(env.text_run, root / "run")
    base = images(root, "a", "b", split=False)
    return ["predict", str(root / "run"), "--file", str(base)], f"{base}: is image data, but the model's backbone takes text"


@case
def predict_unreadable_image(root, env):
    shutil.copytree(env.image_run, root / "run")
    (root / "x.png").write_bytes(b"not an image")
    return (["predict", str(root / "run"), str(root / "x.png")],
            f"{root}/x.png: cannot read image (UnidentifiedImageError: cannot identify image file '{root}/x.png')")


@case
def predict_nothing(root, env):
    shutil.copytree(env.text_run, root / "run")
    return ["predict", str(root / "run")], "predict: give inputs (image paths or texts) or --file"


@case
def predict_missing_run(root, env):
    return ["predict", str(root / "run"), "x"], f"run directory not found: {root}/run"


@case
def predict_truncated_weights(root, env):
    shutil.copytree(env.image_run, root / "run")
    weights = root / "run" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return (["predict", str(root / "run"), "x.png"],
            f"{weights}: corrupt or truncated weights (Error while deserializing header: invalid header length)")


@case
def evaluate_labels_the_model_never_saw(root, env):
    shutil.copytree(env.text_run, root / "run")
    path = tsv(root, "test.tsv", "sentence\tlabel\ngood\tpos\nso so\tmeh\n")
    return ["evaluate", str(root / "run"), str(path)], f"{path}: labels 'meh' do not occur in the training data (classes: neg, pos)"


# -- the test --------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under root with its SHA-256: equal snapshots mean nothing changed."""
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize("name", sorted(CASES))
def test_user_error_is_one_exact_line_and_changes_nothing(name, env, tmp_path, capsys, monkeypatch):
    fn = CASES[name]
    args, message = fn(tmp_path, env, monkeypatch) if "monkeypatch" in fn.__code__.co_varnames else fn(tmp_path, env)
    before = snapshot(tmp_path)
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"finetunekit {args[0]}: error: {message}\n"
    assert snapshot(tmp_path) == before


def test_there_are_at_least_thirty_cases():
    assert len(CASES) >= 30


def test_all_checkpoints_corrupt_is_reported_and_nothing_deleted(tmp_path, env, monkeypatch, capsys):
    _, run = stopped_run(tmp_path, monkeypatch)
    (only,) = list_checkpoints(run)
    (only / "model.safetensors").write_bytes(b"")
    files = {p.name for p in only.iterdir()}
    capsys.readouterr()
    assert main(["resume", str(run)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"finetunekit: warning: checkpoint {only} is unusable (model.safetensors is truncated or altered "
        f"(0 bytes, expected {json.loads((only.with_name(only.name + '.corrupt') / 'manifest.json').read_text())['files']['model.safetensors']['bytes']})); "
        f"set aside as {only.name}.corrupt, using the previous one",
        f"finetunekit resume: error: no intact checkpoint left in {run}/checkpoints (the corrupt ones were set aside as "
        "*.corrupt); pass --overwrite to start the run again",
    ]
    assert {p.name for p in only.with_name(only.name + ".corrupt").iterdir()} == files
    # Asking again gives the same answer rather than silently starting over.
    assert main(["resume", str(run)]) == 2
    assert "no intact checkpoint left" in capsys.readouterr().err


def test_user_errors_from_a_real_process_have_no_traceback(tmp_path):
    import subprocess
    import sys

    path = tsv(tmp_path, "train.tsv", "sentence\tlabel\ngood film\tpos\n  \tneg\n")
    recipe = image_recipe(tmp_path, path)
    proc = subprocess.run([sys.executable, "-m", "finetunekit", "train", str(recipe), "--set", "train.lrr=1"],
                          capture_output=True, text=True, timeout=120)
    known = ", ".join(f.name for f in fields(TrainSpec))
    assert proc.returncode == 2
    assert proc.stderr == f"finetunekit train: error: unknown field 'train.lrr' (did you mean 'lr'?); known: {known}\n"

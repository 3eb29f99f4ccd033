"""In-memory data through the other entry points: zero-config (``finetunekit.train`` with no
recipe) picks the modality and task from a table's columns as it does for a file, ``tune`` and
``select`` take DataFrames and datasets as ``train`` does (``tune`` from a DataFrame:
tests/test_audio_workflows.py)."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import make_image_folder, make_text_rows, write_tsv

pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")

import finetunekit  # noqa: E402
from finetunekit.choose.autoconfig import infer_recipe  # noqa: E402
from finetunekit.core.errors import FinetuneError  # noqa: E402
from finetunekit.data.memory import holding, memory_table  # noqa: E402


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNEKIT_CACHE_DIR", str(tmp_path / "cache"))


def _frame(rows):
    return pd.DataFrame({"sentence": [t for t, _ in rows], "label": [lab for _, lab in rows]})


def _infer(data):
    table = memory_table(data, "train")
    with holding(table):
        return infer_recipe(table)


def test_zero_config_reads_a_table_in_memory_as_the_same_file(tmp_path):
    rows = make_text_rows(40)
    from_file = infer_recipe(write_tsv(tmp_path / "reviews.tsv", rows))
    in_memory = _infer(_frame(rows))
    assert in_memory.recipe.data.train.startswith("memory:pandas:")
    assert in_memory.reasons[0] == "modality: text (an in-memory table), labels in column 'label'"
    assert in_memory.reasons[1:] == from_file.reasons[1:]  # task, validation, backbone, strategy, epochs: the same choices
    for section in ("task", "strategy", "train", "model"):
        assert in_memory.recipe.to_dict()[section] == from_file.recipe.to_dict()[section]


def test_zero_config_tells_images_boxes_masks_and_audio_apart(tmp_path, audio_data):
    import numpy as np
    from PIL import Image

    root = make_image_folder(tmp_path / "imgs", per_class=3, classes=("circle", "square"))
    files = sorted(root.rglob("*.png"))
    images = _infer(pd.DataFrame({"image": [p.read_bytes() for p in files], "label": [p.parent.name for p in files]}))
    assert images.recipe.model.backbone == "bundled:efficientnet_lite0" and images.recipe.task.type == "classification"
    assert images.reasons[0] == "modality: image (column 'image' holds image files), labels in column 'label'"
    boxes = _infer(pd.DataFrame({"image": [str(p) for p in files],
                                 "objects": [{"bbox": [[2, 2, 10, 10]], "category": ["thing"]}] * len(files)}))
    assert boxes.recipe.task.type == "detection" and boxes.reasons[:2] == ["modality: image (column 'objects' holds boxes)", f"task: detection, {len(files)} images"]
    size = Image.open(files[0]).size
    masks = _infer(pd.DataFrame({"image": [str(p) for p in files], "mask": [np.eye(size[1], size[0], dtype=np.uint8)] * len(files)}))
    assert masks.recipe.task.type == "segmentation"
    pictures = _infer(pd.DataFrame({"image": [str(p) for p in files], "annotation": [Image.new("L", size)] * len(files)}))
    assert pictures.recipe.task.type == "segmentation"
    # a label column of lists beside images is a multi-label image table, not masks
    tags = _infer(pd.DataFrame({"image": [str(p) for p in files], "label": [[p.parent.name, "shape"] for p in files]}))
    assert tags.recipe.task.type == "multilabel"
    clips = sorted((audio_data / "train").rglob("*.wav"))
    audio = _infer(pa.table({"audio": [str(p) for p in clips], "label": [p.parent.name for p in clips]}))
    assert audio.reasons[0] == "modality: audio (column 'audio' holds audio clips), labels in column 'label'"
    assert audio.recipe.model.backbone == "bundled:whisper_tiny_en" and audio.recipe.data.image_column == "audio"


def test_train_with_no_recipe_chooses_from_a_dataframe(tiny_bert, tmp_path, capsys):
    train_rows, val_rows = make_text_rows(40, 0), make_text_rows(12, 1)
    # the bundled backbone's weights are not needed here: the override names the tiny one, as --set would
    result = finetunekit.train(train=_frame(train_rows), val=_frame(val_rows), output=tmp_path / "run", report=False,
                               overrides=[f"model.backbone=hf:{tiny_bert}", "train.epochs=1", "data.max_length=32"])
    assert "no recipe: chose from the data" in capsys.readouterr().out
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert saved["task"]["type"] == "classification" and saved["data"]["train"].startswith("memory:pandas:")
    assert saved["data"]["val"].startswith("memory:pandas:") and saved["model"]["backbone"] == f"hf:{tiny_bert}"
    assert (tmp_path / "run" / "autoconfig.txt").read_text().startswith("modality: text (an in-memory table)")
    assert json.loads((tmp_path / "run" / "data_sources.json").read_text())["val"]["rows"] == 12
    assert 0 <= result.metrics["accuracy"] <= 1
    with pytest.raises(FinetuneError, match="no recipe and no training data"):
        finetunekit.train(output=tmp_path / "none")


def test_select_scores_a_dataframe_as_its_file(tiny_bert, tmp_path):
    rows = make_text_rows(24)
    candidates = [f"hf:{tiny_bert}", f"hf:{tiny_bert}?pretrained=false"]
    on_file = finetunekit.select(str(write_tsv(tmp_path / "t.tsv", rows)), candidates, k=3, cache_dir=str(tmp_path / "f1"))
    on_frame = finetunekit.select(_frame(rows), candidates, k=3, cache_dir=str(tmp_path / "f2"))
    assert [(r.candidate.label, r.num_examples, r.scores) for r in on_frame] == [(r.candidate.label, r.num_examples, r.scores) for r in on_file]

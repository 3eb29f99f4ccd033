"""Data held in memory (pandas DataFrame, pyarrow Table, datasets.Dataset / DatasetDict): read by
the same readers as files, recorded by content, and giving the same run as the equivalent file."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import make_image_folder, make_text_rows, tiny_image_recipe, tiny_text_recipe, write_tsv

pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")

from finetunekit.core.errors import DataError  # noqa: E402
from finetunekit.data.memory import memory_splits, memory_table  # noqa: E402
from finetunekit.modalities import read_examples  # noqa: E402


def _frame(rows):
    return pd.DataFrame({"sentence": [t for t, _ in rows], "label": [lab for _, lab in rows]})


def _dataset(rows, class_names=("neg", "pos")):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=list(class_names))})
    return datasets.Dataset.from_dict(
        {"sentence": [t for t, _ in rows], "label": [list(class_names).index(lab) for _, lab in rows]}, features=features
    )


# -- reading: every container gives the Examples a file gives ----------------------------------------


@pytest.mark.parametrize("container", ["pandas", "arrow", "datasets"])
def test_text_containers_read_like_the_tsv(tmp_path, container):
    rows = make_text_rows(12)
    from_file = read_examples(write_tsv(tmp_path / "t.tsv", rows), "text")
    frame = _frame(rows)
    data = {"pandas": frame, "arrow": pa.Table.from_pandas(frame, preserve_index=False), "datasets": None}[container]
    if data is None:
        data = _dataset(rows)
    examples = read_examples(data, "text")
    assert examples.inputs == from_file.inputs
    assert examples.labels == from_file.labels
    assert examples.places[3].endswith(": row 3")


def test_label_kinds_lists_numbers_and_pairs():
    multi = read_examples(pd.DataFrame({"text": ["a b", "c"], "label": [["x", "y"], ["y"]]}), "text")
    assert multi.labels == [["x", "y"], ["y"]]
    numbers = read_examples(pa.table({"text": ["a", "b"], "score": [0.5, 2]}), "text", label_column="score")
    assert numbers.labels == ["0.5", "2"]
    ints = read_examples(pd.DataFrame({"text": ["a", "b"], "label": [0, 1]}), "text")
    assert ints.labels == ["0", "1"]
    nullable = read_examples(pd.DataFrame({"text": ["a", "b"], "label": pd.array([3, None], dtype="Int64")}), "text")
    assert nullable.labels == ["3", ""]  # pandas' <NA> is an empty cell, as a blank one in a file
    with pytest.raises(DataError, match="row 1: empty text in column 'text'"):
        read_examples(pd.DataFrame({"text": pd.array(["a", None], dtype="string"), "label": ["x", "y"]}), "text")
    pairs = read_examples(pd.DataFrame({"s1": ["a", "b"], "s2": ["c", "d"], "label": ["y", "n"]}), "text", text_columns=["s1", "s2"])
    assert pairs.inputs == [("a", "c"), ("b", "d")]


def test_datasets_classlabel_lists_map_to_names():
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.Sequence(datasets.ClassLabel(names=["a", "b", "c"]))})
    ds = datasets.Dataset.from_dict({"text": ["x", "y"], "label": [[0, 2], [1]]}, features=features)
    assert read_examples(ds, "text").labels == [["a", "c"], ["b"]]


def test_bad_inputs_name_the_column_and_the_row_index():
    frame = pd.DataFrame({"text": ["a", "b", "c"], "y": ["p", "n", "p"]}, index=[10, 11, 12])
    with pytest.raises(DataError, match=r"DataFrame data \(memory:pandas:[0-9a-f]{12}\): no label column 'label'.*columns: text, y"):
        read_examples(frame, "text")
    with pytest.raises(DataError, match=r"row 10: empty text in column 'text'"):
        read_examples(pd.DataFrame({"text": [None, None], "label": ["a", "b"]}, index=[10, 11]), "text")
    with pytest.raises(DataError, match=r"row 1: column 'label': 'b' is a single label, but 2 other rows hold lists"):
        read_examples(pd.DataFrame({"text": ["a", "b", "c"], "label": [["x"], "b", ["y"]]}), "text")
    with pytest.raises(DataError, match=r"pyarrow Table data \(memory:arrow:[0-9a-f]{12}\): row 0: empty image path in column 'image'"):
        read_examples(pa.table({"image": pa.array([None, None], pa.string()), "label": ["a", "b"]}), "image")
    with pytest.raises(DataError, match="column 'label' appears twice"):
        read_examples(pd.DataFrame([["a", "x", "y"]], columns=["text", "label", "label"]), "text")
    with pytest.raises(DataError, match=r"row 1: column 'image': 5 bytes that are not an image"):
        read_examples(pd.DataFrame({"image": [_png(), b"hello"], "label": ["a", "b"]}), "image")


def test_classlabel_names_must_agree_between_train_and_validation():
    rows = make_text_rows(6)
    with pytest.raises(DataError, match=r"column 'label': its ClassLabel names \['pos', 'neg'\] differ from those of"):
        memory_splits(_dataset(rows), _dataset(rows, ("pos", "neg")))


def test_datasetdict_splits_are_used_as_such():
    datasets = pytest.importorskip("datasets")
    whole = datasets.DatasetDict({"train": _dataset(make_text_rows(6)), "validation": _dataset(make_text_rows(4, 1))})
    train, val = memory_splits(whole)
    assert (len(train), len(val), train.role, val.role) == (6, 4, "train", "val")


def _png(color=(200, 20, 20)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_cells_paths_bytes_pictures_and_dicts_are_files_named_by_content(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (8, 8), (0, 0, 200)).save(tmp_path / "blue.png")
    picture = Image.new("RGB", (8, 8), (0, 200, 0))
    frame = pd.DataFrame({"image": ["blue.png", _png(), picture, {"bytes": _png((1, 2, 3)), "path": None}], "label": list("abab")})
    examples = read_examples(frame, "image")
    assert examples.inputs[0] == str(tmp_path / "blue.png")
    for path in examples.inputs[1:]:
        assert Path(path).is_file() and re.fullmatch(r"[0-9a-f]{64}\.png", Path(path).name)
    assert Image.open(examples.inputs[2]).getpixel((0, 0)) == (0, 200, 0)
    # the same pixels give the same token; another picture another
    assert memory_table(frame).token == memory_table(frame.copy()).token
    other = frame.copy()
    other.loc[2, "image"] = Image.new("RGB", (8, 8), (0, 201, 0))
    assert memory_table(other).token != memory_table(frame).token


# -- runs: train, reload, predict, evaluate, resume -------------------------------------------------


def test_same_rows_same_metrics_from_tsv_dataframe_dataset_and_arrow(text_data, tiny_bert, tmp_path):
    import finetunekit

    train_rows, val_rows = make_text_rows(48, 0), make_text_rows(16, 1)
    recipe = tiny_text_recipe(text_data, tiny_bert)
    from_file = finetunekit.train(recipe, output=tmp_path / "file", quiet=True, report=False)
    from_frame = finetunekit.train(recipe, output=tmp_path / "frame", quiet=True, report=False,
                                   train=_frame(train_rows), val=_frame(val_rows))
    from_dataset = finetunekit.train(recipe, output=tmp_path / "ds", quiet=True, report=False,
                                     train=_dataset(train_rows), val=_dataset(val_rows))
    from_arrow = finetunekit.train(recipe, output=tmp_path / "arrow", quiet=True, report=False,
                                   train=pa.Table.from_pandas(_frame(train_rows), preserve_index=False),
                                   val=pa.Table.from_pandas(_frame(val_rows), preserve_index=False))
    assert from_frame.metrics["accuracy"] == from_file.metrics["accuracy"] == from_dataset.metrics["accuracy"] == from_arrow.metrics["accuracy"]
    for run in (from_frame, from_dataset, from_arrow):
        assert run.metrics["loss"] == pytest.approx(from_file.metrics["loss"], abs=1e-6)

    saved = yaml.safe_load((tmp_path / "frame" / "recipe.yaml").read_text())["data"]
    assert re.fullmatch(r"memory:pandas:[0-9a-f]{64}", saved["train"]) and saved["val"].startswith("memory:pandas:")
    assert yaml.safe_load((tmp_path / "ds" / "recipe.yaml").read_text())["data"]["train"].startswith("memory:datasets:")
    sources = json.loads((tmp_path / "frame" / "data_sources.json").read_text())
    assert sources["train"] == {"source": saved["train"], "rows": 48, "columns": ["sentence", "label"], "container": "DataFrame"}
    assert sources["val"]["source"] == saved["val"] and sources["val"]["rows"] == 16

    model = finetunekit.load(tmp_path / "frame")
    assert model.predict(_frame(val_rows)) == finetunekit.load(tmp_path / "file").predict([t for t, _ in val_rows])
    evaluated = finetunekit.evaluate(str(tmp_path / "frame"), pa.Table.from_pandas(_frame(val_rows), preserve_index=False))
    assert evaluated["accuracy"] == from_file.metrics["accuracy"]
    assert evaluated["eval_set"].startswith("pyarrow Table data (memory:arrow:")


def test_same_images_same_metrics_from_csv_dataframe_arrow_and_dataset(image_data, tmp_path):
    """An image table on disk and the same images in memory, as bytes (DataFrame, Arrow) and as a
    datasets Image feature: the same training, step for step."""
    datasets = pytest.importorskip("datasets")
    import finetunekit

    def rows(split):
        files = sorted((image_data / split).rglob("*.png"))
        return [str(p) for p in files], [p.parent.name for p in files]

    (train_files, train_labels), (val_files, val_labels) = rows("train"), rows("val")
    pd.DataFrame({"file": train_files, "label": train_labels}).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame({"file": val_files, "label": val_labels}).to_csv(tmp_path / "val.csv", index=False)
    recipe = tiny_image_recipe(image_data, train={"epochs": 1},
                               data={"train": str(tmp_path / "train.csv"), "val": str(tmp_path / "val.csv")})
    from_file = finetunekit.train(recipe, output=tmp_path / "file", quiet=True, report=False)

    def frame(files, labels):
        return pd.DataFrame({"image": [Path(p).read_bytes() for p in files], "label": labels})

    def dataset(files, labels):
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=sorted(set(labels)))})
        return datasets.Dataset.from_dict({"image": files, "label": [sorted(set(labels)).index(x) for x in labels]}, features=features)

    runs = {
        "frame": {"train": frame(train_files, train_labels), "val": frame(val_files, val_labels)},
        "arrow": {"train": pa.Table.from_pandas(frame(train_files, train_labels)), "val": pa.Table.from_pandas(frame(val_files, val_labels))},
        "ds": {"train": datasets.DatasetDict({"train": dataset(train_files, train_labels), "validation": dataset(val_files, val_labels)})},
    }
    for name, data in runs.items():
        result = finetunekit.train(recipe, output=tmp_path / name, quiet=True, report=False, **data)
        assert result.metrics["accuracy"] == from_file.metrics["accuracy"], name
        assert result.metrics["loss"] == pytest.approx(from_file.metrics["loss"], abs=1e-6), name
        assert result.history[0]["train_loss"] == pytest.approx(from_file.history[0]["train_loss"], abs=1e-6), name
    model = finetunekit.load(tmp_path / "arrow")
    assert model.predict(runs["ds"]["train"]["validation"]) == finetunekit.load(tmp_path / "file").predict(val_files)


class _Killed(BaseException):
    """Stands for the process being killed mid-run."""


def test_resume_refuses_other_rows_and_a_recipe_naming_data_not_given(text_data, tiny_bert, tmp_path, monkeypatch):
    import finetunekit
    from finetunekit.core.errors import FinetuneError
    from finetunekit.run.checkpoint import Checkpointer

    recipe = tiny_text_recipe(text_data, tiny_bert, train={"epochs": 2, "checkpoint_every_steps": 1})
    rows, val = make_text_rows(24), _frame(make_text_rows(8, 1))
    original, written = Checkpointer.save, []

    def save(self, *args, **kwargs):
        written.append(original(self, *args, **kwargs))
        if len(written) == 2:
            raise _Killed
        return written[-1]

    monkeypatch.setattr(Checkpointer, "save", save)
    with pytest.raises(_Killed):
        finetunekit.train(recipe, output=tmp_path / "run", quiet=True, report=False, train=_frame(rows), val=val)
    monkeypatch.undo()
    changed = _frame(rows)
    changed.loc[0, "label"] = "neg" if changed.loc[0, "label"] == "pos" else "pos"
    with pytest.raises(FinetuneError, match=r"data.train is 'memory:pandas:[0-9a-f]+' in the run, 'memory:pandas:[0-9a-f]+' now"):
        finetunekit.train(recipe, output=tmp_path / "run", quiet=True, resume=True, train=changed, val=val)
    saved = finetunekit.Recipe.from_yaml(tmp_path / "run" / "recipe.yaml")
    with pytest.raises(DataError, match="in-memory data .* that was not given: pass it again"):
        finetunekit.train(saved, output=tmp_path / "again", quiet=True)
    resumed = finetunekit.train(recipe, output=tmp_path / "run", quiet=True, resume=True, report=False, train=_frame(rows), val=val)
    assert 0 <= resumed.metrics["accuracy"] <= 1


def test_image_run_from_a_datasets_image_column(tmp_path):
    datasets = pytest.importorskip("datasets")
    import finetunekit

    root = make_image_folder(tmp_path / "imgs", per_class=6, classes=("circle", "square"))
    files = sorted(root.rglob("*.png"))
    classes = ["circle", "square"]
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    ds = datasets.Dataset.from_dict(
        {"img": [str(p) for p in files], "label": [classes.index(p.parent.name) for p in files]}, features=features
    ).cast_column("img", datasets.Image(decode=True))
    ds = ds.map(lambda row: {"img": row["img"]}, features=features)  # the images embedded as bytes, as a downloaded set holds them
    whole = datasets.DatasetDict({"train": ds, "test": ds.select(range(0, 12, 3))})
    recipe = tiny_image_recipe(tmp_path, train={"epochs": 1}, data={"image_column": "img", "val_fraction": 0.25})
    result = finetunekit.train(recipe, output=tmp_path / "run", quiet=True, train=whole)
    assert (tmp_path / "run" / "report.html").is_file()
    model = finetunekit.load(tmp_path / "run")
    assert set(model.predict(whole["test"])) <= set(classes)
    metrics = model.evaluate(whole)
    assert metrics["eval_set"].startswith("datasets.Dataset data (memory:datasets:") and 0 <= metrics["accuracy"] <= 1
    # the card and the report name the source, and recipe.yaml the content it was trained on
    assert "`datasets.Dataset train (memory:datasets:" in (tmp_path / "run" / "README.md").read_text()
    assert "datasets.Dataset train (memory:datasets:" in (tmp_path / "run" / "report.html").read_text()
    assert result.metrics["eval_set"].startswith("datasets.Dataset train (memory:datasets:")
    token = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())["data"]["train"]
    assert token.startswith("memory:datasets:") and token[len("memory:datasets:"):12 + len("memory:datasets:")] in result.metrics["eval_set"]


# -- recipes naming a Hugging Face dataset: data.train: hf:NAME?config=C&split=S ------------------


def test_hf_source_from_a_saved_dataset_is_pinned_and_refused_when_changed(text_data, tiny_bert, tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    import finetunekit

    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": _dataset(make_text_rows(24)), "validation": _dataset(make_text_rows(8, 1))}).save_to_disk(str(folder))
    recipe = tiny_text_recipe(text_data, tiny_bert, train={"epochs": 1}, data={"train": f"hf:{folder}", "val": f"hf:{folder}"})
    result = finetunekit.train(recipe, output=tmp_path / "run", quiet=True, report=False)
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())["data"]
    assert re.fullmatch(rf"hf:{re.escape(str(folder))}\?split=train&sha256=[0-9a-f]{{64}}", saved["train"])
    assert re.fullmatch(rf"hf:{re.escape(str(folder))}\?split=validation&sha256=[0-9a-f]{{64}}", saved["val"])
    assert result.metrics["eval_set"].startswith(f"hf:{folder}?split=validation (sha256 ")
    assert finetunekit.load(tmp_path / "run").evaluate(saved["val"])["accuracy"] == result.metrics["accuracy"]
    from finetunekit.cli import main

    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run"), f"hf:{folder}?split=validation", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == result.metrics["accuracy"]

    # other rows under the same name: the pinned recipe (recipe.yaml, resume) refuses them
    datasets.DatasetDict({"train": _dataset(make_text_rows(24, 5)), "validation": _dataset(make_text_rows(8, 1))}).save_to_disk(str(folder))
    with pytest.raises(DataError, match=r"split=train&sha256=.*: the dataset's rows changed since the run recorded them"):
        finetunekit.train(finetunekit.Recipe.from_yaml(tmp_path / "run" / "recipe.yaml"), output=tmp_path / "again", quiet=True)


def test_hf_source_loaded_by_name_or_path_offline(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    from finetunekit.data.memory import hf_table, pin_hf_sources

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    folder = tmp_path / "parquet"
    folder.mkdir()
    _frame(make_text_rows(10)).to_parquet(folder / "train.parquet")
    _frame(make_text_rows(4, 1)).to_parquet(folder / "validation.parquet")
    table = hf_table(f"hf:{folder}?split=validation")
    assert len(table) == 4 and table.columns == ["sentence", "label"]
    examples = read_examples(f"hf:{folder}", "text")  # split: train by default
    assert examples.inputs == [t for t, _ in make_text_rows(10)]
    with pytest.raises(DataError, match=r"hf:nowhere/none: cannot load the dataset \(ConnectionError: .*OfflineModeIsEnabled"):
        pin_hf_sources("hf:nowhere/none", None)
    with pytest.raises(DataError, match="unknown field 'splt'"):
        hf_table(f"hf:{folder}?splt=train")
    with pytest.raises(DataError, match="ClassLabel names"):
        saved = tmp_path / "saved"
        datasets.DatasetDict({"train": _dataset(make_text_rows(4)), "validation": _dataset(make_text_rows(4), ("pos", "neg"))}).save_to_disk(str(saved))
        pin_hf_sources(f"hf:{saved}", f"hf:{saved}")


@pytest.mark.parametrize("container", ["pandas", "arrow", "datasets"])
def test_image_bytes_column_per_container(tmp_path, container):
    cells = [_png((200, 0, 0)), _png((0, 0, 200))]
    if container == "pandas":
        data = pd.DataFrame({"image": cells, "label": ["red", "blue"]})
    elif container == "arrow":
        data = pa.table({"image": pa.array(cells, pa.binary()), "label": ["red", "blue"]})
    else:
        datasets = pytest.importorskip("datasets")
        data = datasets.Dataset.from_dict({"image": [{"bytes": c, "path": None} for c in cells], "label": ["red", "blue"]},
                                          features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")}))
    examples = read_examples(data, "image")
    assert examples.labels == ["red", "blue"] and all(Path(p).suffix == ".png" and Path(p).is_file() for p in examples.inputs)


def test_pair_regression_run_from_an_arrow_table(tiny_bert, tmp_path):
    import finetunekit

    rows = make_text_rows(32)
    table = pa.table({"s1": [t for t, _ in rows], "s2": [t[::-1] for t, _ in rows], "score": [(i % 5) * 0.7 + 0.1 for i in range(32)]})
    recipe = tiny_text_recipe((tmp_path / "unused.tsv", None), tiny_bert, train={"epochs": 1},
                              data={"text_columns": ["s1", "s2"], "label_column": "score", "val": None})
    result = finetunekit.train(recipe, output=tmp_path / "run", quiet=True, report=False, train=table)
    assert yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())["task"]["type"] == "regression"
    model = finetunekit.load(tmp_path / "run")
    assert len(model.predict(table.slice(0, 3))) == 3 and "rmse" in result.metrics


def test_multilabel_run_from_a_dataset_of_classlabel_lists(tiny_bert, tmp_path):
    datasets = pytest.importorskip("datasets")
    import finetunekit

    rows = make_text_rows(32)
    names = ["pos", "neg", "long"]
    labels = [[names.index(lab)] + ([2] if len(t) > 30 else []) for t, lab in rows]
    features = datasets.Features({"text": datasets.Value("string"), "tags": datasets.Sequence(datasets.ClassLabel(names=names))})
    ds = datasets.Dataset.from_dict({"text": [t for t, _ in rows], "tags": labels}, features=features)
    recipe = tiny_text_recipe((tmp_path / "unused.tsv", None), tiny_bert, train={"epochs": 1},
                              data={"label_column": "tags", "val": None})
    finetunekit.train(recipe, output=tmp_path / "run", quiet=True, report=False, train=ds)
    model = finetunekit.load(tmp_path / "run")
    assert model.task.type == "multilabel" and sorted(model.classes) == sorted(names)
    assert all(set(p) <= set(names) for p in model.predict(ds.select(range(4))))

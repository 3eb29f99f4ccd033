"""The input side: sentence pairs (data.text_columns) and tables of images, in every format, from
reading through training, evaluation, prediction and export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FILLER, WORDS, make_image_folder, tiny_image_recipe, tiny_text_recipe
from finetunekit import train
from finetunekit.backbones import create_backbone
from finetunekit.cli import main
from finetunekit.modalities import read_examples
from finetunekit.core.errors import DataError, RecipeError
from finetunekit.use.predict import load
from finetunekit.run.recipe import DataSpec

# -- helpers -----------------------------------------------------------------------------------------


def pair_rows(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """(sentence1, sentence2, label): 'same' when both carry a word of the same polarity. The
    label depends on both sentences, so a model that saw one side only could not learn it."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        a = "pos" if rng.random() < 0.5 else "neg"
        same = i % 2 == 0
        b = a if same else ("neg" if a == "pos" else "pos")
        first = " ".join([*rng.choice(FILLER, size=3), str(rng.choice(WORDS[a]))])
        second = " ".join([str(rng.choice(WORDS[b])), *rng.choice(FILLER, size=int(rng.integers(1, 6)))])
        rows.append((first, second, "same" if same else "diff"))
    return rows


def write_pairs(path: Path, rows, header=("sentence1", "sentence2", "label")) -> Path:
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pair_data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pairs")
    return write_pairs(root / "train.tsv", pair_rows(48, 0)), write_pairs(root / "dev.tsv", pair_rows(16, 1))


@pytest.fixture(scope="module")
def pair_run(pair_data, tiny_bert, tmp_path_factory) -> Path:
    recipe = tiny_text_recipe(pair_data, tiny_bert, data={"text_columns": ["sentence1", "sentence2"]}, train={"epochs": 1})
    return train(recipe, output=tmp_path_factory.mktemp("pair_run") / "run", quiet=True).run_dir


def write_table(path: Path, rows: list[dict]) -> Path:
    """rows as .csv, .tsv, .jsonl or .parquet, by the suffix."""
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        sep = "\t" if suffix == ".tsv" else ","
        columns = list(rows[0])
        path.write_text(sep.join(columns) + "\n" + "".join(sep.join(str(r[c]) for c in columns) + "\n" for r in rows), encoding="utf-8")
    return path


def image_table(folder: Path, suffix: str, name: str = "train") -> Path:
    """A table next to ``folder`` (class sub-folders) listing every image relative to the table."""
    rows = [{"file": str(p.relative_to(folder.parent)), "label": p.parent.name}
            for p in sorted(folder.rglob("*.png"))]
    return write_table(folder.parent / f"{name}{suffix}", rows)


# -- sentence pairs --------------------------------------------------------------------------------


def test_pairs_are_read_as_tuples_and_encoded_as_the_tokenizer_encodes_pairs(pair_data, tiny_bert):
    examples = read_examples(pair_data[0], "text", text_columns=["sentence1", "sentence2"])
    first, second, _ = pair_data[0].read_text().splitlines()[1].split("\t")
    assert examples.inputs[0] == (first, second)
    backbone = create_backbone(f"hf:{tiny_bert}")
    encoded = backbone.tokenize(examples.inputs[:4], 32)
    reference = backbone.tokenizer([a for a, _ in examples.inputs[:4]], [b for _, b in examples.inputs[:4]], truncation="longest_first", max_length=32)
    assert encoded["input_ids"] == reference["input_ids"]
    assert encoded["token_type_ids"] == reference["token_type_ids"]
    assert all(set(row) == {0, 1} for row in encoded["token_type_ids"])  # segment ids mark the second text


def test_pair_truncation_cuts_the_longer_text_first(tiny_bert):
    backbone = create_backbone(f"hf:{tiny_bert}")
    long, short = " ".join(["good"] * 20), "bad film"
    (ids,) = backbone.tokenize([(long, short)], 12)["input_ids"]
    (types,) = backbone.tokenize([(long, short)], 12)["token_type_ids"]
    assert len(ids) == 12
    assert types.count(1) == 3  # "bad film [SEP]" kept whole; the long first text lost its tail


def test_text_columns_are_validated():
    assert DataSpec(text_columns=["a", "b"]).text_columns == ["a", "b"]
    with pytest.raises(RecipeError, match=r"data.text_columns: give two column names"):
        DataSpec(text_columns=["a"])
    with pytest.raises(RecipeError, match=r"data.text_columns: .* twice"):
        DataSpec(text_columns=["a", "a"])
    with pytest.raises(RecipeError, match=r"data.text_columns: .*label column"):
        DataSpec(text_columns=["a", "label"])
    with pytest.raises(RecipeError, match=r"data.text_column: excludes data.text_columns"):
        DataSpec(text_column="a", text_columns=["a", "b"])


def test_pair_run_trains_predicts_and_evaluates_on_pairs(pair_run, pair_data):
    info = json.loads((pair_run / "preprocessing.json").read_text())
    assert info["text_columns"] == ["sentence1", "sentence2"]
    predictor = load(pair_run)
    pairs = read_examples(pair_data[1], "text", text_columns=["sentence1", "sentence2"]).inputs
    probs = predictor.predict_proba(pairs)
    assert probs.shape == (len(pairs), 2)
    # a list [first, second] (as JSON gives it) is the same pair as a tuple
    assert np.allclose(predictor.predict_proba([list(p) for p in pairs[:3]]), probs[:3])
    # the second text matters: swapping in another second text changes the output
    swapped = [(a, pairs[(i + 1) % len(pairs)][1]) for i, (a, _) in enumerate(pairs)]
    assert not np.allclose(predictor.predict_proba(swapped), probs)
    # evaluate reads the run's own pair columns
    metrics = predictor.evaluate(pair_data[1])
    saved = json.loads((pair_run / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(saved["accuracy"])
    # the validation predictions keep both texts
    first = json.loads((pair_run / "val_predictions.jsonl").read_text().splitlines()[0])
    assert first["input"] == list(pairs[0])
    card = (pair_run / "README.md").read_text()
    assert "sentence pairs (`sentence1`, `sentence2`)" in card and "--pair FIRST SECOND" in card


def test_pair_model_refuses_single_texts_and_the_reverse(pair_run, text_run):
    with pytest.raises(DataError, match=r"this model takes sentence pairs"):
        load(pair_run).predict(["just one text"])
    with pytest.raises(DataError, match=r"this model takes single texts"):
        load(text_run).predict([("one", "two")])


def test_cli_predicts_pairs(pair_run, pair_data, capsys):
    capsys.readouterr()
    assert main(["predict", str(pair_run), "--pair", "the film good", "bad plot", "--pair", "a story great", "fine", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["input"] for r in lines] == [["the film good", "bad plot"], ["a story great", "fine"]]
    expected = load(pair_run).predict([("the film good", "bad plot"), ("a story great", "fine")])
    assert [r["label"] for r in lines] == expected
    assert main(["predict", str(pair_run), "--file", str(pair_data[1])]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 16
    assert main(["predict", str(pair_run), "one text"]) == 2
    assert "this model takes sentence pairs" in capsys.readouterr().err


def test_missing_pair_column_is_one_line_naming_file_and_column(pair_data, tiny_bert, tmp_path, capsys):
    recipe = tiny_text_recipe(pair_data, tiny_bert, data={"text_columns": ["sentence1", "hypothesis"]})
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe.to_yaml(), encoding="utf-8")
    assert main(["train", str(path), "--output", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == (f"finetunekit train: error: {pair_data[0]}: no pair column 'hypothesis' "
                   "(columns: sentence1, sentence2, label); set data.text_columns\n")


def test_feature_cache_key_sees_the_segments(tiny_bert):
    from finetunekit.run.features import examples_digest

    backbone = create_backbone(f"hf:{tiny_bert}")
    pair = backbone.tokenize([("good film", "bad plot")], 32)
    joined = backbone.tokenize(["good film [SEP] bad plot"], 32)
    assert pair["input_ids"] == joined["input_ids"]  # same tokens, only the segment ids differ
    assert examples_digest([], "text", pair) != examples_digest([], "text", joined)


@pytest.mark.parametrize("fmt", ["hf", "onnx"])
def test_pair_exports_match_and_carry_segment_ids(pair_run, fmt, tmp_path):
    from finetunekit.use.export import export

    result = export(pair_run, fmt, output=tmp_path / fmt)
    assert result.max_abs_diff <= 1e-4
    if fmt == "onnx":
        assert "token_type_ids" in result.details["inputs"]
        return
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(result.path), trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(result.path))
    pairs = [("the film good", "bad plot"), ("a story great", "fine and warm")]
    batch = tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(**batch).logits.softmax(-1).numpy()
    assert np.allclose(probs, load(pair_run, precision="fp32").predict_proba(pairs), atol=1e-5)


# -- tables ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_image_tables_read_like_class_folders(suffix, tmp_path):
    folder = make_image_folder(tmp_path / "photos", per_class=2, classes=("a", "b"), size=8)
    table = image_table(folder, suffix)
    examples = read_examples(table, "image")
    folders = read_examples(folder, "image")
    assert sorted(zip(examples.inputs, examples.labels, strict=True)) == sorted(zip(folders.inputs, folders.labels, strict=True))


def test_parquet_text_tables_read_like_csv(tmp_path):
    rows = [{"sentence": "good film", "label": 1}, {"sentence": "bad plot", "label": 0}, {"sentence": "warm story", "label": 1}]
    a = read_examples(write_table(tmp_path / "t.parquet", rows), "text")
    b = read_examples(write_table(tmp_path / "t.csv", rows), "text")
    assert (a.inputs, a.labels) == (b.inputs, b.labels) == (["good film", "bad plot", "warm story"], ["1", "0", "1"])


def test_image_table_trains_evaluates_and_predicts(tmp_path, capsys):
    train_table = image_table(make_image_folder(tmp_path / "train", per_class=6, seed=0), ".csv", "train")
    val_table = image_table(make_image_folder(tmp_path / "val", per_class=3, seed=1), ".parquet", "val")
    recipe = tiny_image_recipe(tmp_path, data={"train": str(train_table), "val": str(val_table)}, train={"epochs": 1})
    result = train(recipe, output=tmp_path / "run", quiet=True)
    predictor = load(result.run_dir)
    metrics = predictor.evaluate(val_table)
    assert metrics["accuracy"] == pytest.approx(result.metrics["accuracy"])
    capsys.readouterr()
    assert main(["evaluate", str(result.run_dir), str(val_table), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(result.metrics["accuracy"])
    assert main(["predict", str(result.run_dir), "--file", str(val_table)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 9


def test_multilabel_image_table_of_file_and_labels(tmp_path):
    """An image CSV of ``file,labels`` with ``a|b`` cells (and rows with no label at all) is a
    multi-label task: inferred, trained, reloaded and evaluated from the table."""
    shapes = {"circle": "round", "square": "", "stripe": "striped|long"}
    tables = {}
    for split, n, seed in (("train", 6, 0), ("val", 3, 1)):
        folder = make_image_folder(tmp_path / split, per_class=n, seed=seed)
        rows = [f"{f.relative_to(tmp_path)},{shapes[f.parent.name]}" for f in sorted(folder.rglob("*.png"))]
        tables[split] = tmp_path / f"{split}.csv"
        tables[split].write_text("file,labels\n" + "\n".join(rows) + "\n")
    recipe = tiny_image_recipe(tmp_path, data={"train": str(tables["train"]), "val": str(tables["val"]), "label_column": "labels"},
                               train={"epochs": 2})
    result = train(recipe, output=tmp_path / "run", quiet=True)
    assert result.recipe.task.type == "multilabel"
    predictor = load(result.run_dir)
    assert sorted(predictor.task.labels) == ["long", "round", "striped"]
    again = predictor.evaluate(tables["val"])
    assert again["micro_f1"] == pytest.approx(result.metrics["micro_f1"], abs=1e-6)
    predicted = predictor.predict([str(p) for p in sorted((tmp_path / "val").rglob("*.png"))])
    assert all(isinstance(labels, list) and set(labels) <= {"long", "round", "striped"} for labels in predicted)


def test_image_table_missing_file_names_table_row_and_path(tmp_path, capsys):
    folder = make_image_folder(tmp_path / "photos", per_class=2, classes=("a", "b"), size=8)
    table = image_table(folder, ".csv")
    lines = table.read_text().splitlines()
    lines[2] = "photos/a/gone.png,a"
    table.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        read_examples(table, "image")
    assert str(info.value) == (f"{table}:3: image file not found: {tmp_path}/photos/a/gone.png "
                               "(column 'file'; paths are relative to the table's folder)")
    parquet = write_table(tmp_path / "t.parquet", [{"image": "photos/a/a_0.png", "label": "a"}, {"image": "nope.png", "label": "b"}])
    with pytest.raises(DataError, match=rf"^{parquet}: row 2: image file not found: {tmp_path}/nope.png"):
        read_examples(parquet, "image")


def test_report_shows_both_texts_of_a_pair(pair_run, tmp_path):
    from finetunekit.report import write_report

    mistakes = [json.loads(x) for x in (pair_run / "val_predictions.jsonl").read_text().splitlines()]
    wrong = [r for r in mistakes if r["predicted"] != r["label"]]
    assert wrong, "the tiny pair run should make some validation mistakes for the report to show"
    page = write_report(pair_run, tmp_path / "report.html").read_text()
    first, second = wrong[0]["input"]
    assert f"{first} ‖ {second}" in page

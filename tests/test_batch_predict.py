"""`finetunekit predict RUN_DIR --input FOLDER_OR_TABLE --output predictions.csv`: the same answers
as the predictor, bad inputs in the error column, atomic output, resume after a crash, and memory
that does not grow with the number of inputs."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from conftest import make_text_rows, write_tsv

from finetunekit.cli import main
from finetunekit.use.predict import load
from finetunekit.use.serving import bulk
from test_inputs import pair_data, pair_run  # noqa: E402,F401  (fixtures)


def _read(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_text_table_to_csv(text_run, tmp_path, capsys):
    rows = make_text_rows(50, seed=5)
    table = write_tsv(tmp_path / "in.tsv", rows)
    out = tmp_path / "out" / "predictions.csv"
    assert main(["predict", str(text_run), "--input", str(table), "--output", str(out), "--batch-size", "16"]) == 0
    assert f"predictions: {out}: 50 inputs" in capsys.readouterr().out
    got = _read(out)
    predictor = load(text_run)
    expected = predictor.predict_proba([t for t, _ in rows])
    assert [r["input"] for r in got] == [t for t, _ in rows]
    assert [r["label"] for r in got] == predictor.labels.decode(expected.argmax(1).tolist())
    scores = np.array([[float(r[f"score_{c}"]) for c in predictor.classes] for r in got])
    np.testing.assert_allclose(scores, expected, atol=2e-6)
    assert all(r["error"] == "" for r in got)
    assert sorted(p.name for p in out.parent.iterdir()) == ["predictions.csv"]  # no partial files left


def test_image_folder_with_a_bad_file(image_run, image_data, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(image_data / "val", folder)
    (folder / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("skipped: not an image file")
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(image_run), "--input", str(folder), "--output", str(out), "--batch-size", "5", "--quiet"]) == 0
    got = _read(out)
    paths = sorted(str(p) for p in folder.rglob("*.png"))
    assert sorted(r["input"] for r in got) == paths and len(got) == 13
    bad = [r for r in got if r["error"]]
    assert len(bad) == 1 and bad[0]["input"].endswith("broken.png") and "cannot read image" in bad[0]["error"] and bad[0]["label"] == ""
    predictor = load(image_run)
    good = [r for r in got if not r["error"]]
    assert [r["label"] for r in good] == predictor.predict([r["input"] for r in good])


def test_bad_arguments_exit_2(text_run, tmp_path, capsys):
    table = write_tsv(tmp_path / "in.tsv", make_text_rows(4))
    assert main(["predict", str(text_run), "--input", str(tmp_path / "nope.tsv"), "--output", str(tmp_path / "o.csv")]) == 2
    assert "--input: not found" in capsys.readouterr().err
    assert main(["predict", str(text_run), "--input", str(table)]) == 2
    assert "--input FOLDER_OR_TABLE and --output FILE.csv go together" in capsys.readouterr().err
    assert main(["predict", str(text_run), "--input", str(tmp_path), "--output", str(tmp_path / "o.csv")]) == 2
    assert "takes text (give a table)" in capsys.readouterr().err
    assert main(["predict", str(text_run), "--input", str(table), "--output", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_crash_leaves_no_output_and_rerun_resumes(text_run, tmp_path, monkeypatch):
    rows = make_text_rows(40, seed=9)
    table = write_tsv(tmp_path / "in.tsv", rows)
    clean = tmp_path / "clean.csv"
    bulk.predict_to_csv(text_run, table, clean, batch_size=8, quiet=True)

    out = tmp_path / "predictions.csv"
    predictor = load(text_run)
    original = predictor.predict_proba
    seen = []

    def crash_on_third_batch(items, batch_size=None):
        seen.append(len(items))
        if len(seen) == 3:
            raise KeyboardInterrupt
        return original(items, batch_size)

    monkeypatch.setattr(bulk, "SORT_WINDOW", 1)  # one batch per window, so the crash comes after 16 rows
    monkeypatch.setattr(predictor, "predict_proba", crash_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        bulk.predict_to_csv(text_run, table, out, batch_size=8, quiet=True, predictor=predictor)
    assert not out.exists()  # atomic: no half-written predictions.csv
    partial = tmp_path / ".predictions.csv.partial"
    with partial.open("ab") as handle:
        handle.write(b"torn half line,without newl")  # a write cut short by the crash
    monkeypatch.setattr(predictor, "predict_proba", original)
    result = bulk.predict_to_csv(text_run, table, out, batch_size=8, quiet=True, predictor=predictor)
    assert result["resumed"] == 16 and result["predicted"] == 24
    assert out.read_bytes() == clean.read_bytes()
    assert not partial.exists() and not (tmp_path / ".predictions.csv.partial.json").exists()


def test_resume_refuses_a_changed_input(text_run, tmp_path, monkeypatch):
    table = write_tsv(tmp_path / "in.tsv", make_text_rows(24, seed=1))
    out = tmp_path / "p.csv"
    predictor = load(text_run)
    original = predictor.predict_proba
    monkeypatch.setattr(bulk, "SORT_WINDOW", 1)
    monkeypatch.setattr(predictor, "predict_proba", lambda items, batch_size=None: (_ for _ in ()).throw(KeyboardInterrupt) if calls.append(1) or len(calls) > 1 else original(items, batch_size))
    calls: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        bulk.predict_to_csv(text_run, table, out, batch_size=8, quiet=True, predictor=predictor)
    write_tsv(table, make_text_rows(24, seed=2))  # the input file changed meanwhile
    monkeypatch.setattr(predictor, "predict_proba", original)
    with pytest.raises(Exception, match="the input changed since it was written; rerun with --restart"):
        bulk.predict_to_csv(text_run, table, out, batch_size=8, quiet=True, predictor=predictor)
    result = bulk.predict_to_csv(text_run, table, out, batch_size=8, quiet=True, predictor=predictor, restart=True)
    assert result["resumed"] == 0 and len(_read(out)) == 24


def test_text_batches_are_grouped_by_length_and_rows_keep_input_order(text_run, tmp_path):
    """Short and long texts alternate in the table: within a window the forward passes get batches
    of similar length (half of them short), and the CSV still lists the inputs in their order."""
    short, long = "good", " ".join(["a long and rather tedious film"] * 6)
    texts = [short if i % 2 == 0 else f"{long} {i}" for i in range(16)]
    table = write_tsv(tmp_path / "in.tsv", [(t, "pos") for t in texts])
    predictor = load(text_run)
    widths: list[int] = []
    hook = predictor.model.register_forward_pre_hook(lambda module, args: widths.append(args[0]["input_ids"].shape[1]))
    try:
        bulk.predict_to_csv(text_run, table, tmp_path / "p.csv", batch_size=2, quiet=True, predictor=predictor)
    finally:
        hook.remove()
    assert len(widths) == 8 and sum(w == min(widths) for w in widths) == 4, widths  # input order: every batch as wide as a long text
    got = _read(tmp_path / "p.csv")
    assert [r["input"] for r in got] == texts
    assert [r["label"] for r in got] == predictor.predict(texts)


def test_memory_does_not_grow_with_input_count(text_run, tmp_path):
    """Peak Python allocations for 1500 inputs stay close to those for 300 (streamed, not listed)."""
    import gc
    import tracemalloc

    predictor = load(text_run)
    peaks = {}
    # a first pass warms torch's and the tokenizer's per-shape caches, which are bounded by the
    # number of distinct batch shapes, not by the number of inputs
    warm = write_tsv(tmp_path / "warm.tsv", make_text_rows(500, seed=1))
    bulk.predict_to_csv(text_run, warm, tmp_path / "warm.csv", batch_size=16, quiet=True, predictor=predictor)
    for n in (300, 1500):
        table = write_tsv(tmp_path / f"in{n}.tsv", make_text_rows(n, seed=1))
        gc.collect()
        tracemalloc.start()
        bulk.predict_to_csv(text_run, table, tmp_path / f"out{n}.csv", batch_size=16, quiet=True, predictor=predictor)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert len(_read(tmp_path / f"out{n}.csv")) == n
    # holding the inputs in a list would add more than 90 bytes per input (a 40-character str and
    # its slot); streamed, the peak moves by a few tens of KB whatever the count (the garbage of
    # the batches between two periodic collections)
    assert peaks[1500] - peaks[300] < 50 * 1200, peaks


def test_existing_output_needs_overwrite(text_run, tmp_path, capsys):
    table = write_tsv(tmp_path / "in.tsv", make_text_rows(6, seed=3))
    out = tmp_path / "p.csv"
    out.write_text("someone's earlier predictions\n")
    assert main(["predict", str(text_run), "--input", str(table), "--output", str(out)]) == 2
    assert f"--output {out} exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert out.read_text() == "someone's earlier predictions\n"  # nothing lost
    assert main(["predict", str(text_run), "--input", str(table), "--output", str(out), "--overwrite", "--quiet"]) == 0
    assert len(_read(out)) == 6


def test_sentence_pair_table(pair_run, tmp_path, capsys):
    from test_inputs import pair_rows, write_pairs

    rows = pair_rows(10, 4)
    table = write_pairs(tmp_path / "pairs.tsv", rows)
    with table.open("a") as handle:
        handle.write("\tonly the second side\tpos\n")  # an empty first sentence: its own error, the rest go on
    out = tmp_path / "pairs.csv"
    assert main(["predict", str(pair_run), "--input", str(table), "--output", str(out), "--quiet"]) == 0
    got = _read(out)
    assert list(got[0])[:2] == ["sentence1", "sentence2"] and len(got) == 11
    predictor = load(pair_run)
    pairs = [(r["sentence1"], r["sentence2"]) for r in got[:10]]
    expected = predictor.predict_proba(pairs)
    scores = np.array([[float(r[f"score_{c}"]) for c in predictor.classes] for r in got[:10]])
    np.testing.assert_allclose(scores, expected, atol=2e-6)
    assert got[10]["label"] == "" and "empty 'sentence1'" in got[10]["error"] and f"{table}:12" in got[10]["error"]
    single = write_tsv(tmp_path / "single.tsv", make_text_rows(3))
    assert main(["predict", str(pair_run), "--input", str(single), "--output", str(tmp_path / "x.csv")]) == 2
    assert "no column 'sentence1'" in capsys.readouterr().err

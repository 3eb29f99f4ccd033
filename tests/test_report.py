"""The run report (report.html), the comparison page, and the files they read: val_predictions.jsonl
and steps.jsonl. The same pages in a real browser: test_report_browser.py."""

import base64
import io
import json
import re
import shutil
from html import escape

import numpy as np
import pytest
from PIL import Image

from finetunekit import load
from finetunekit.cli import main
from finetunekit.core.errors import FinetuneError
from finetunekit.report import load_run, write_comparison, write_report

SECTIONS = ["curves", "confusion-matrix", "per-class", "calibration", "errors"]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _data_uri_images(html: str, kind: str = "png") -> list[Image.Image]:
    found = re.findall(rf'src="data:image/{kind};base64,([A-Za-z0-9+/=]+)"', html)
    return [Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB") for b in found]


def _section(html: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}">(.*?)</section>', html, re.S)
    assert match, f"section {section_id} missing"
    return match.group(1)


def test_training_writes_predictions_matching_the_model(image_run):
    metrics = json.loads((image_run / "metrics.json").read_text())
    rows = _rows(image_run / "val_predictions.jsonl")
    assert len(rows) == metrics["num_examples"]
    classes = json.loads((image_run / "labels.json").read_text())["classes"]
    for row in rows:
        assert row["predicted"] == classes[int(np.argmax(row["probabilities"]))]
        assert row["confidence"] == pytest.approx(max(row["probabilities"]))
        assert sum(row["probabilities"]) == pytest.approx(1.0, abs=1e-4)
    assert np.mean([r["predicted"] == r["label"] for r in rows]) == pytest.approx(metrics["accuracy"])
    # The saved predictions are the final (restored) model's: the run directory reproduces them.
    probs = load(image_run).predict_proba([r["input"] for r in rows])
    assert np.allclose(probs, [r["probabilities"] for r in rows], atol=1e-5)


def test_steps_log_every_optimizer_step(image_run):
    steps = _rows(image_run / "steps.jsonl")
    epochs = _rows(image_run / "metrics.jsonl")
    assert [s["step"] for s in steps] == list(range(1, epochs[-1]["step"] + 1))
    assert {s["epoch"] for s in steps} == {e["epoch"] for e in epochs}
    for epoch in epochs:  # the epoch's mean loss is the mean of its steps (equal batch sizes aside)
        losses = [s["loss"] for s in steps if s["epoch"] == epoch["epoch"]]
        assert min(losses) <= epoch["train_loss"] <= max(losses)
        assert set(steps[0]["lr"]) == set(epoch["lr"])


def test_report_has_every_section_and_real_plots(image_run):
    html = (image_run / "report.html").read_text()
    for section_id in SECTIONS:
        _section(html, section_id)
    # Self-contained: nothing is fetched, nothing runs.
    assert not re.search(r'(src|href)="(?!data:)', html)
    assert "<script" not in html
    plots = _data_uri_images(html, "png")
    assert len(plots) == 5  # loss, metrics, learning rate, confusion matrix, reliability diagram
    for plot in plots:
        assert plot.width >= 300 and plot.height >= 250
        pixels = np.asarray(plot)
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, "a blank or nearly blank plot"
    run = load_run(image_run)
    table = _section(html, "per-class")
    for name, row in run.metrics["per_class"].items():
        assert f"<td>{name}</td><td>{row['precision']:.4f}</td><td>{row['recall']:.4f}</td>" in table


def test_error_gallery_shows_the_most_confident_mistakes(image_run):
    rows = _rows(image_run / "val_predictions.jsonl")
    wrong = sorted((r for r in rows if r["predicted"] != r["label"]), key=lambda r: -r["confidence"])
    assert wrong, "the under-trained fixture run should misclassify some validation images"
    gallery = _section((image_run / "report.html").read_text(), "errors")
    thumbnails = _data_uri_images(gallery, "jpeg")  # each error's image and its Grad-CAM overlay
    assert len(thumbnails) == 2 * min(len(wrong), 24) and gallery.count('class="cam"') == min(len(wrong), 24)
    assert all(max(t.size) <= 192 for t in thumbnails)
    assert f"{len(wrong)} of {len(rows)} validation examples are misclassified" in gallery
    first = gallery.index('class="tile"')
    tile = gallery[first : gallery.find('class="tile"', first + 1)]
    assert f'<span class="true">{wrong[0]["label"]}</span>' in tile
    assert f"({wrong[0]['confidence']:.1%})" in tile and 'class="cam"' in tile


def test_text_report_tables_misclassified_texts_escaped(text_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(text_run, run_dir)
    rows = _rows(run_dir / "val_predictions.jsonl")
    # A text with markup must show as text, not become markup.
    rows[0].update(input="<b>bold</b> & \"quoted\"", label="pos", predicted="neg", confidence=0.99, probabilities=[0.99, 0.01])
    (run_dir / "val_predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    html = write_report(run_dir).read_text()
    errors = _section(html, "errors")
    assert escape('<b>bold</b> & "quoted"') in errors and "<b>bold</b>" not in html
    wrong = [r for r in rows if r["predicted"] != r["label"]]
    assert errors.count('<td class="text">') == min(len(wrong), 50)
    assert not _data_uri_images(errors, "jpeg")


def test_report_of_a_run_without_predictions_or_steps(image_run, tmp_path):
    run_dir = tmp_path / "old"
    shutil.copytree(image_run, run_dir)
    (run_dir / "val_predictions.jsonl").unlink()
    (run_dir / "steps.jsonl").unlink()
    html = write_report(run_dir).read_text()
    assert "no val_predictions.jsonl" in _section(html, "calibration")
    assert len(_data_uri_images(html)) == 4  # curves from metrics.jsonl, and the confusion matrix


def test_corrupt_predictions_name_the_file_and_line(image_run, tmp_path):
    run_dir = tmp_path / "bad"
    shutil.copytree(image_run, run_dir)
    with (run_dir / "val_predictions.jsonl").open("a") as handle:
        handle.write("{not json\n")
    count = len((run_dir / "val_predictions.jsonl").read_text().splitlines())
    with pytest.raises(FinetuneError, match=rf"val_predictions.jsonl:{count}: corrupt JSON line"):
        write_report(run_dir)


def test_cli_report_and_compare(image_run, tmp_path, capsys):
    out = tmp_path / "again.html"
    assert main(["report", str(image_run), "--output", str(out)]) == 0
    assert f"report: {out}" in capsys.readouterr().out
    assert _section(out.read_text(), "curves")

    other = tmp_path / "other-run"
    shutil.copytree(image_run, other)
    page = tmp_path / "compare.html"
    assert main(["compare", str(image_run), str(other), "-o", str(page)]) == 0
    html = page.read_text()
    table = _section(html, "metrics")
    metrics = json.loads((image_run / "metrics.json").read_text())
    for run_dir in (image_run, other):
        assert f"<th>{run_dir.name}</th>" in table
    assert table.count(f'<td class="best">{metrics["macro_f1"]:.4f}</td>') == 2  # a tie: both are best
    (curves,) = _data_uri_images(_section(html, "curves"))
    assert curves.width >= 800


def test_compare_marks_the_better_run(image_run, tmp_path):
    better = tmp_path / "better"
    shutil.copytree(image_run, better)
    metrics = json.loads((better / "metrics.json").read_text())
    metrics["accuracy"] = min(1.0, metrics["accuracy"] + 0.1)
    (better / "metrics.json").write_text(json.dumps(metrics))
    html = write_comparison([image_run, better], tmp_path / "c.html").read_text()
    row = re.search(r"<tr><td>accuracy \(higher is better\)</td>(.*?)</tr>", html).group(1)
    assert row.index('class="best"') > row.index(f"<td>{json.loads((image_run / 'metrics.json').read_text())['accuracy']:.4f}</td>")


@pytest.mark.parametrize("args, message", [
    (["compare", "only_one"], "compare: give at least two run directories"),
    (["report", "/no/such/run"], "run directory not found: /no/such/run"),
])
def test_cli_report_errors_are_one_line(args, message, capsys):
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == f"finetunekit {args[0]}: error: {message}"


def test_a_failing_report_does_not_fail_the_finished_run(image_run, tmp_path, monkeypatch, capsys):
    import finetunekit.report as report

    run_dir = tmp_path / "run"
    shutil.copytree(image_run, run_dir)
    (run_dir / "report.html").unlink()

    def broken(*args, **kwargs):
        raise RuntimeError("plotting broke")

    monkeypatch.setattr(report, "write_report", broken)
    with pytest.warns(UserWarning, match=rf"report.html not written \(RuntimeError: plotting broke\); retry with: finetunekit report {run_dir}"):
        report.write_report_after_training(run_dir, quiet=False)
    assert not (run_dir / "report.html").exists()
    monkeypatch.undo()
    report.write_report_after_training(run_dir, quiet=False)
    assert f"report: {run_dir / 'report.html'}" in capsys.readouterr().out

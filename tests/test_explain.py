"""Explanations: Grad-CAM overlays for image runs, integrated gradients for text runs, from the
command line, the report's worst errors, and the properties that make them trustworthy."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("captum", reason="captum is not installed (pip install -e '.[serve]')")

from finetunekit.cli import main  # noqa: E402
from finetunekit.data.pipeline import open_image  # noqa: E402
from finetunekit.use.explain import Explainer, explanation_method  # noqa: E402
from finetunekit.use.predict import load  # noqa: E402


def test_explain_images_command(image_run, image_data, tmp_path, capsys):
    from PIL import Image

    paths = [str(p) for p in sorted((image_data / "val").rglob("*.png"))[:3]]
    out = tmp_path / "why"
    assert main(["explain", str(image_run), *paths, "--output", str(out)]) == 0
    assert f"explanations: {out / 'index.html'}" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "explanations.jsonl").read_text().splitlines()]
    predictor = load(image_run)
    assert [r["input"] for r in records] == paths and [r["label"] for r in records] == predictor.predict(paths)
    for r in records:
        assert r["explanation"]["method"] == "grad-cam" and r["explanation"]["target"] == r["label"]
        overlay = Image.open(out / r["explanation"]["overlay_file"])
        assert overlay.size == (32, 32) and np.asarray(overlay).std() > 1
    page = (out / "index.html").read_text()
    assert page.count("<img ") == 3 and "Grad-CAM" in page


def test_explain_texts_command(text_run, tmp_path):
    out = tmp_path / "why"
    assert main(["explain", str(text_run), "the film was good and warm", "a dull and awful plot", "--output", str(out)]) == 0
    records = [json.loads(line) for line in (out / "explanations.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for r in records:
        e = r["explanation"]
        assert e["method"] == "integrated-gradients" and len(e["tokens"]) == len(e["attributions"])
    page = (out / "index.html").read_text()
    assert page.count('class="attr"') == 11 and ">good</span>" in page and ">awful</span>" in page


def test_explain_bad_inputs_exit_2(image_run, text_run, tmp_path, capsys):
    assert main(["explain", str(image_run), str(tmp_path / "missing.jpg"), "--output", str(tmp_path / "o")]) == 2
    assert "image not found" in capsys.readouterr().err
    assert main(["explain", str(text_run), "--output", str(tmp_path / "o")]) == 2
    assert "give inputs" in capsys.readouterr().err


def test_integrated_gradients_are_complete(text_run):
    """Attributions sum to logit(input) - logit(baseline) (the completeness axiom), up to the
    integration error of 32 steps."""
    predictor = load(text_run, precision="fp32")
    explainer = Explainer(predictor, ig_steps=64)
    batch = predictor.encode(["the film was good and warm", "a dull and awful plot"])
    targets = [0, 1]
    raw = explainer.attributions(batch, targets).sum(1)
    ids = batch["input_ids"]
    baseline = torch.where(explainer.special_mask(ids), ids, torch.full_like(ids, predictor.model.backbone.pad_token_id))
    with torch.no_grad():
        logits = predictor.model(batch)
        base = predictor.model({**batch, "input_ids": baseline})
    expected = (logits - base)[torch.arange(2), torch.tensor(targets)]
    np.testing.assert_allclose(raw.numpy(), expected.numpy(), rtol=0.05, atol=1e-3)


def test_gradcam_works_on_a_frozen_backbone(image_run, image_data):
    """A linear probe's backbone has no weight gradients; Grad-CAM needs only the feature map's,
    so freezing every weight gives the same maps."""
    predictor = load(image_run, precision="fp32")
    images = [open_image(str(p)) for p in sorted((image_data / "val").rglob("*.png"))[:4]]
    explainer = Explainer(predictor)
    batch = predictor.encode(images)
    targets = predictor.forward_proba(batch).argmax(1).tolist()
    trained = explainer.attributions(batch, targets)
    for p in predictor.model.parameters():
        p.requires_grad_(False)
    frozen = explainer.attributions(batch, targets)
    assert trained.shape[0] == 4 and trained.shape[1] * trained.shape[2] > 1  # a grid, not one cell
    assert float(frozen.max()) == pytest.approx(1.0) and torch.allclose(trained, frozen, atol=1e-6)
    assert explanation_method(predictor)["method"] == "grad-cam"


def test_report_worst_errors_show_explanations(image_run, text_run, tmp_path):
    rows = [json.loads(line) for line in (image_run / "val_predictions.jsonl").read_text().splitlines()]
    wrong = sum(r["predicted"] != r["label"] for r in rows)
    page = (image_run / "report.html").read_text()
    assert wrong and page.count('class="cam"') == min(wrong, 24) and "Grad-CAM of the predicted class" in page
    rows = [json.loads(line) for line in (text_run / "val_predictions.jsonl").read_text().splitlines()]
    wrong = sum(r["predicted"] != r["label"] for r in rows)
    # integrated gradients (32 passes per text) are left out of the report training writes, which
    # says how to add them; `finetunekit report` does
    page = (text_run / "report.html").read_text()
    assert wrong and 'class="attr"' not in page and f"finetunekit report {text_run}" in page
    run_dir = tmp_path / "text_run"
    shutil.copytree(text_run, run_dir)
    assert main(["report", str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text()
    assert 'class="attr"' in page and "integrated gradients of the predicted class" in page
    assert "finetunekit report" not in page.split('id="errors"', 1)[1]

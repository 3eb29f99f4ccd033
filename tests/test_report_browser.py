"""The report pages in headless Chromium: they load without console errors, every section is
there, and every plot is a non-blank image of sensible size, as drawn by the browser.

Chromium comes from Debian's ``chromium`` package (.ci/run installs it); without it these tests skip.
"""

import io
import json

import numpy as np
import pytest
from PIL import Image

from browser import INSPECT_SCRIPT, Browser, find_chromium
from finetunekit.report import write_comparison

CHROMIUM = find_chromium()
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium; .ci/run does)"),
]
websocket = pytest.importorskip("websocket", reason="websocket-client not installed (pip install -e '.[test]')")

SECTIONS = {
    "curves": "Training curves",
    "confusion-matrix": "Confusion matrix",
    "per-class": "Per-class precision, recall and F1",
    "calibration": "Calibration",
    "errors": "Worst errors",
}


@pytest.fixture(scope="module")
def browser():
    with Browser(CHROMIUM, width=1280, height=900) as b:
        yield b


def _check_plot(image: dict) -> None:
    assert image["complete"], image
    assert image["naturalWidth"] >= 300 and image["naturalHeight"] >= 250, image
    assert image["width"] >= 250 and image["height"] >= 150, image  # as laid out on the page
    assert image["colours"] > 8, f"blank plot: {image}"


def _check_screenshot(png: bytes, path) -> Image.Image:
    path.write_bytes(png)
    shot = Image.open(io.BytesIO(png)).convert("RGB")
    assert shot.width == 1280 and shot.height > 1500
    assert np.asarray(shot).std() > 10  # not a blank page
    return shot


def test_report_renders_in_chromium(browser, image_run, tmp_path):
    result = browser.open(image_run / "report.html", INSPECT_SCRIPT)
    assert result.console_errors == []
    page = result.evaluation
    assert page["title"] == f"finetunekit report: {image_run.name}"
    assert {s["id"]: s["heading"] for s in page["sections"]} == SECTIONS
    plots = [i for i in page["images"] if i["cls"] == "plot"]
    assert [p["section"] for p in plots] == ["curves"] * 3 + ["confusion-matrix", "calibration"]
    for plot in plots:
        _check_plot(plot)
    rows = [json.loads(line) for line in (image_run / "val_predictions.jsonl").read_text().splitlines()]
    wrong = sum(r["predicted"] != r["label"] for r in rows)
    thumbnails = [i for i in page["images"] if i["section"] == "errors" and i["cls"] != "cam"]
    cams = [i for i in page["images"] if i["section"] == "errors" and i["cls"] == "cam"]  # Grad-CAM overlays
    assert wrong and len(thumbnails) == len(cams) == min(wrong, 24)
    for thumb in thumbnails + cams:
        assert thumb["complete"] and thumb["naturalWidth"] > 0 and thumb["colours"] > 1
    classes = json.loads((image_run / "labels.json").read_text())["classes"]
    assert {"section": "per-class", "rows": len(classes) + 2} in page["tables"]  # header, classes, macro average
    assert "accuracy" in page["text"] and "ECE" in page["text"]
    _check_screenshot(result.screenshot, tmp_path / "report.png")


def test_comparison_renders_in_chromium(browser, image_run, text_run, tmp_path):
    page_path = write_comparison([image_run, text_run], tmp_path / "compare.html")
    result = browser.open(page_path, INSPECT_SCRIPT)
    assert result.console_errors == []
    page = result.evaluation
    assert [s["id"] for s in page["sections"]] == ["metrics", "significance", "curves", "setup"]
    (plot,) = page["images"]
    _check_plot(plot)
    assert plot["naturalWidth"] >= 800
    assert "different sets" in page["text"]  # an image run and a text run were not evaluated on one set


@pytest.fixture(scope="module")
def study_dir(image_data, tmp_path_factory):
    pytest.importorskip("optuna", reason="optuna not installed (pip install -e '.[test]')")
    from conftest import tiny_image_recipe
    from finetunekit.choose.tune import tune

    recipe = tiny_image_recipe(
        image_data, strategy={"name": "linear_probe"}, train={"epochs": 2},
        search={"space": {"train.head_lr": {"log_uniform": [1e-3, 1e-1]}, "train.batch_size": {"choice": [4, 8]}}},
    )
    return tune(recipe, tmp_path_factory.mktemp("study") / "s", trials=3, quiet=True).study_dir


def test_study_page_renders_in_chromium(browser, study_dir, tmp_path):
    result = browser.open(study_dir / "study.html", INSPECT_SCRIPT)
    assert result.console_errors == []
    page = result.evaluation
    assert page["title"] == f"finetunekit study: {study_dir.name}"
    assert [s["id"] for s in page["sections"]] == ["trials", "history", "slices", "importances", "best-recipe"]
    plots = [i for i in page["images"] if i["cls"] == "plot"]
    assert [p["section"] for p in plots] == ["history", "slices", "importances"]
    for plot in plots:
        _check_plot(plot)
    assert {"section": "trials", "rows": 4} in page["tables"]  # header + 3 trials
    assert "train.head_lr" in page["text"] and "model:" in page["text"]  # the best recipe's YAML

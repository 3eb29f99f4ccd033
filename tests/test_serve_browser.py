"""The service's web page in headless Chromium: type a text (or pick an image), press the button,
and check what a person would see: a score bar per label, the predicted one first, and the
explanation drawn on the input. The page loads nothing from outside the machine.

Chromium comes from Debian's ``chromium`` package (.ci/run installs it); without it these tests skip.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e '.[serve]')")
pytest.importorskip("websocket", reason="websocket-client not installed (pip install -e '.[test]')")

from browser import Browser, find_chromium  # noqa: E402
from service_client import running  # noqa: E402

from finetunekit.use.predict import load  # noqa: E402

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium; .ci/run does)")

WAIT_FOR_RESULT = """
new Promise((resolve, reject) => {
  const started = Date.now();
  const poll = () => {
    const rows = [...document.querySelectorAll('#scores .row')];
    const failed = document.getElementById('error').textContent;
    if (failed) return reject(new Error(failed));
    if (!document.getElementById('result').hidden && rows.length && (%s)) {
      return resolve({
        rows: rows.map(r => ({label: r.dataset.label, width: parseFloat(r.querySelector('.bar > div').style.width),
                               top: r.classList.contains('top'), shown: r.querySelector('.num').textContent})),
        method: document.getElementById('method').textContent,
        words: [...document.querySelectorAll('#explanation .attr')].map(s => ({word: s.textContent, colour: s.style.background})),
        overlay: (() => { const img = document.getElementById('overlay');
                          return img ? {w: img.naturalWidth, h: img.naturalHeight, complete: img.complete} : null; })(),
        meta: document.getElementById('meta').textContent,
      });
    }
    if (Date.now() - started > 20000) return reject(new Error('no result after 20 s'));
    setTimeout(poll, 50);
  };
  poll();
})
"""


@pytest.fixture(scope="module")
def browser():
    with Browser(CHROMIUM, width=1100, height=800) as b:
        for domain in ("Page", "Runtime", "Log", "Network", "DOM"):
            b.call(f"{domain}.enable", session=True)
        yield b


def _open(browser, url):
    browser.events.clear()
    browser.call("Page.navigate", session=True, url=url + "/")
    browser.wait_for("Page.loadEventFired")
    browser.evaluate("new Promise(r => { const t = () => document.getElementById('meta').textContent.includes('labels') ? r() : setTimeout(t, 30); t(); })")


def test_page_predicts_and_explains_a_typed_text(browser, text_run, tmp_path):
    predictor = load(text_run)
    text = "the film was good and lovely"
    with running(predictor) as (url, _):
        _open(browser, url)
        assert browser.evaluate("document.getElementById('text-input').hidden") is False
        assert browser.evaluate("document.getElementById('image-input').hidden") is True
        browser.evaluate(f"document.getElementById('text').value = {text!r}; document.getElementById('predict-text').click(); true")
        page = browser.evaluate(WAIT_FOR_RESULT % "document.querySelectorAll('#explanation .attr').length")
        shot = browser.screenshot()
        errors = browser.console_errors()
    assert errors == []
    probs = predictor.predict_proba([text])[0]
    order = np.argsort(-probs)
    assert [r["label"] for r in page["rows"]] == [predictor.classes[i] for i in order]
    assert page["rows"][0]["top"] and not any(r["top"] for r in page["rows"][1:])
    np.testing.assert_allclose([r["width"] for r in page["rows"]], 100 * probs[order], atol=0.06)
    assert page["method"].startswith("integrated-gradients for")
    assert [w["word"] for w in page["words"]] == text.split()
    assert all(w["colour"].startswith("rgba(") for w in page["words"])
    assert "text" in page["meta"] and "labels" in page["meta"]
    _check_screenshot(shot, tmp_path / "text.png")


def test_page_predicts_and_explains_a_chosen_image(browser, image_run, image_data, tmp_path):
    predictor = load(image_run)
    path = sorted((image_data / "val").rglob("*.png"))[0]
    with running(predictor) as (url, _):
        _open(browser, url)
        assert browser.evaluate("document.getElementById('image-input').hidden") is False
        browser.set_file("#file", path)
        page = browser.evaluate(WAIT_FOR_RESULT % "document.getElementById('overlay') && document.getElementById('overlay').complete")
        errors = browser.console_errors()
    assert errors == []
    probs = predictor.predict_proba([str(path)])[0]
    assert page["rows"][0]["label"] == predictor.classes[int(probs.argmax())] and page["rows"][0]["top"]
    assert page["method"].startswith("grad-cam for")
    size = predictor.preprocessing["input_size"]
    assert page["overlay"] == {"w": size, "h": size, "complete": True}


def _check_screenshot(png: bytes, path) -> None:
    from PIL import Image

    path.write_bytes(png)
    shot = Image.open(io.BytesIO(png)).convert("RGB")
    assert shot.width == 1100 and np.asarray(shot).std() > 10

"""The HTTP service on a free loopback port: every endpoint, every bad input, a model error, and
concurrent requests checked against ``finetunekit predict``."""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e '.[serve]')")

from conftest import make_text_rows  # noqa: E402
from test_inputs import pair_data, pair_run  # noqa: E402,F401  (fixtures)
from service_client import call, post_form, post_json, running  # noqa: E402

from finetunekit.cli import main  # noqa: E402
from finetunekit.use.predict import load  # noqa: E402
from finetunekit.use.serving.app import ServeOptions  # noqa: E402


@pytest.fixture(scope="module")
def text_service(text_run):
    predictor = load(text_run)
    options = ServeOptions(max_batch_size=8, max_wait_ms=20, max_body_bytes=64 * 1024, max_inputs=16, max_text_chars=2000)
    with running(predictor, options) as (url, app):
        yield url, app, predictor


@pytest.fixture(scope="module")
def image_service(image_run):
    predictor = load(image_run)
    with running(predictor, ServeOptions(max_batch_size=4, max_image_pixels=512 * 512)) as (url, app):
        yield url, app, predictor


def _png(path) -> bytes:
    return open(path, "rb").read()


def _jpeg(size=(40, 30), seed=0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_health_metadata_openapi_page(text_service, text_run):
    url, _, predictor = text_service
    status, health = call(url, "GET", "/health")
    assert status == 200 and health["status"] == "ok"
    status, meta = call(url, "GET", "/metadata")
    assert status == 200
    assert meta["task"] == "classification" and meta["tasks"] == ["classification"]
    assert meta["labels"] == predictor.classes and meta["modality"] == "text" and meta["input_field"] == "texts"
    assert meta["precision"] == predictor.precision and meta["backbone"]["kind"] == "hf"
    saved = json.loads((text_run / "metrics.json").read_text())
    assert meta["validation_metrics"]["accuracy"] == saved["accuracy"]
    assert meta["explanations"]["method"] == "integrated-gradients"
    assert meta["batching"] == {"max_batch_size": 8, "max_wait_ms": 20}
    status, spec = call(url, "GET", "/openapi.json")
    assert status == 200 and {"/predict", "/health", "/metadata"} <= set(spec["paths"])
    assert set(spec["paths"]["/predict"]["post"]["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    status, page = call(url, "GET", "/")
    assert status == 200 and "<html" in page.lower() and 'fetch("predict"' in page
    assert "http://" not in page and "https://" not in page  # self-contained: nothing fetched from elsewhere
    status, missing = call(url, "GET", "/docs")  # swagger UI would load scripts from a CDN: not served
    assert status == 404 and missing == {"error": "no such endpoint: /docs"}


def test_predict_texts(text_service):
    url, _, predictor = text_service
    texts = [t for t, _ in make_text_rows(5, seed=7)]
    status, answer = post_json(url, {"texts": texts})
    assert status == 200 and answer["task"] == "classification"
    expected = predictor.predict_proba(texts)
    assert [p["label"] for p in answer["predictions"]] == predictor.labels.decode(expected.argmax(1).tolist())
    for row, p in zip(expected, answer["predictions"], strict=True):
        assert set(p["scores"]) == set(predictor.classes)
        np.testing.assert_allclose([p["scores"][c] for c in predictor.classes], row, atol=1e-5)
        assert p["score"] == max(p["scores"].values())


BAD_TEXT_REQUESTS = [
    # (body, content type, status, words the error must contain)
    (b'{"texts": ["fine"', "application/json", 400, "not valid JSON"),
    (b"\xff\xfe garbage", "application/json", 400, "not valid JSON"),
    (b'["a film"]', "application/json", 422, "expected a JSON object"),
    (b'{"text": ["a film"]}', "application/json", 422, "unknown field 'text' (did you mean 'texts'?)"),
    (b'{"texts": "a film"}', "application/json", 422, "texts: expected a list"),
    (b'{"texts": []}', "application/json", 422, "texts: empty list"),
    (b'{"texts": ["good", "  "]}', "application/json", 422, "texts[1]: empty text"),
    (b'{"texts": ["good", 3]}', "application/json", 422, "texts[1]: expected a string, got int"),
    (json.dumps({"texts": ["long " * 1000]}).encode(), "application/json", 413, "texts[0]: 5000 characters"),
    (json.dumps({"texts": ["a"] * 17}).encode(), "application/json", 413, "17 inputs, more than the 16"),
    (b'{"images": ["aGVsbG8="]}', "application/json", 422, "takes text ('texts'), not images"),
    (b'{}', "application/json", 422, "no inputs: send 'texts'"),
    (b'{"texts": ["a film"], "task": "regression"}', "application/json", 422, "task 'regression': this run has only classification"),
    (b'{"texts": ["a film"], "explain": "maybe"}', "application/json", 422, "explain: expected true or false"),
    (b"texts=a+film", "application/x-www-form-urlencoded", 415, "content type 'application/x-www-form-urlencoded' not accepted"),
    (b"a film", "", 415, "content type '(none)' not accepted"),
    (b"--x\r\nbroken", "multipart/form-data; boundary=x", 422, "no inputs: send 'texts'"),
]


@pytest.mark.parametrize(("body", "kind", "status", "words"), BAD_TEXT_REQUESTS, ids=[w[:30] for *_, w in BAD_TEXT_REQUESTS])
def test_bad_text_requests_get_one_line_4xx(text_service, body, kind, status, words):
    url, _, _ = text_service
    got, answer = call(url, "POST", "/predict", body, {"content-type": kind} if kind else {})
    assert got == status, answer
    assert set(answer) == {"error"} and "\n" not in answer["error"] and words in answer["error"], answer
    assert post_json(url, {"texts": ["the film was good"]})[0] == 200  # the next request is answered normally


def test_oversized_bodies_get_413(text_service):
    url, _, _ = text_service
    huge = json.dumps({"texts": ["x" * 100_000]}).encode()
    status, answer = post_json(url, huge)
    assert status == 413 and "larger than the 65536 bytes" in answer["error"]
    # chunked upload: no Content-Length, the limit is counted as the bytes arrive
    status, answer = call(url, "POST", "/predict", huge, {"content-type": "application/json"}, chunked=True)
    assert status == 413 and "larger than the 65536 bytes" in answer["error"]
    status, answer = post_form(url, [("texts", "x" * 100_000)])
    assert status == 413
    assert call(url, "GET", "/nope")[0] == 404 and call(url, "GET", "/predict")[0] == 405
    assert post_json(url, {"texts": ["the film was good"]})[0] == 200


def test_texts_as_form_fields(text_service):
    url, _, predictor = text_service
    status, answer = post_form(url, [("texts", "the film was good"), ("texts", "awful and dull")])
    assert status == 200
    assert [p["label"] for p in answer["predictions"]] == predictor.predict(["the film was good", "awful and dull"])
    status, answer = post_form(url, [("text", "the film")])
    assert status == 422 and "unknown form field 'text' (did you mean 'texts'?)" in answer["error"]


def test_model_error_is_500_with_logged_id(text_service, caplog, monkeypatch):
    url, _, predictor = text_service
    original = predictor.predict_items
    calls = []

    def failing(items):
        calls.append(len(items))
        if len(calls) == 1:
            raise RuntimeError("simulated kernel failure")
        return original(items)

    monkeypatch.setattr(predictor, "predict_items", failing)
    service = text_service[1].state.service
    monkeypatch.setattr(service.batcher, "run_batch", failing)
    with caplog.at_level(logging.ERROR, logger="finetunekit.serve"):
        status, answer = post_json(url, {"texts": ["the film was good"]})
    assert status == 500
    error_id = answer["error"].split("error id ")[1].split(";")[0]
    assert len(error_id) == 12
    assert any(error_id in r.getMessage() and r.exc_info and "simulated kernel failure" in str(r.exc_info[1]) for r in caplog.records)
    assert post_json(url, {"texts": ["the film was good"]})[0] == 200


def test_concurrent_requests_match_cli_predict(text_service, text_run, capsys):
    """200 requests of 1-3 texts from 16 threads; every answer equals `finetunekit predict --json`."""
    url, app, _ = text_service
    rows = [t for t, _ in make_text_rows(60, seed=3)]
    rng = np.random.default_rng(0)
    requests = [[rows[i] for i in rng.choice(len(rows), size=int(rng.integers(1, 4)), replace=False)] for _ in range(200)]
    before = app.state.service.batcher.stats.batches
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda texts: post_json(url, {"texts": texts}), requests))
    batches = app.state.service.batcher.stats.batches - before
    assert main(["predict", str(text_run), *rows, "--json"]) == 0
    expected = {r["input"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    for texts, (status, answer) in zip(requests, answers, strict=True):
        assert status == 200, answer
        for text, got in zip(texts, answer["predictions"], strict=True):
            assert got["label"] == expected[text]["label"]
            for name, p in expected[text]["probabilities"].items():
                assert got["scores"][name] == pytest.approx(p, abs=1e-5)
    # gathered: fewer forward passes than requests, and none larger than the limit
    assert batches < len(requests) and app.state.service.batcher.stats.largest <= 8


def test_explain_text(text_service):
    url, _, predictor = text_service
    status, answer = post_json(url, {"texts": ["the film was good and lovely"], "explain": True})
    assert status == 200
    [p] = answer["predictions"]
    e = p["explanation"]
    assert e["method"] == "integrated-gradients" and e["target"] == p["label"]
    assert e["tokens"][0] == "[CLS]" and e["tokens"][-1] == "[SEP]" and "good" in e["tokens"]
    assert len(e["attributions"]) == len(e["tokens"]) and max(abs(a) for a in e["attributions"]) == pytest.approx(1.0)
    status, answer = post_json(url, {"texts": ["good"] * 9, "explain": True})
    assert status == 413 and "explain: at most 8" in answer["error"]


def test_predict_images(image_service, image_data):
    url, _, predictor = image_service
    paths = sorted((image_data / "val").rglob("*.png"))[:5]
    expected = predictor.predict_proba([str(p) for p in paths])
    status, answer = post_form(url, [("files", (p.name, _png(p), "image/png")) for p in paths])
    assert status == 200, answer
    got = np.array([[p["scores"][c] for c in predictor.classes] for p in answer["predictions"]])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    status, answer = post_json(url, {"images": [base64.b64encode(_png(p)).decode() for p in paths[:2]]})
    assert status == 200 and [p["label"] for p in answer["predictions"]] == predictor.labels.decode(expected[:2].argmax(1).tolist())
    data_url = "data:image/png;base64," + base64.b64encode(_png(paths[0])).decode()
    assert post_json(url, {"images": [data_url]})[0] == 200
    assert post_form(url, [("files", ("photo.jpg", _jpeg(), "image/jpeg"))])[0] == 200


def test_bad_image_requests(image_service, image_data):
    url, _, _ = image_service
    good = _jpeg()
    cases = [
        (post_form, [("files", ("notes.txt", b"just some text, not a picture", "text/plain"))], 422, "files[0] (notes.txt): not an image"),
        (post_form, [("files", ("cut.jpg", good[: len(good) // 2], "image/jpeg"))], 422, "files[0] (cut.jpg): corrupt or truncated image"),
        (post_form, [("files", ("empty.png", b"", "image/png"))], 422, "files[0] (empty.png): empty file"),
        (post_form, [("files", ("big.jpg", _jpeg((1024, 1024)), "image/jpeg"))], 413, "1024x1024 pixels, more than the 262144"),
        (post_form, [("files", "not a file")], 422, "files[0]: expected an uploaded file"),
        (post_form, [("image", ("a.jpg", good, "image/jpeg"))], 422, "unknown form field 'image'"),
        (post_json, {"images": ["%%% not base64"]}, 422, "images[0]: not valid base64"),
        (post_json, {"images": [12]}, 422, "images[0]: expected a base64 string, got int"),
        (post_json, {"images": [base64.b64encode(b"GIF89a trailing junk").decode()]}, 422, "images[0]: "),
        (post_json, {"texts": ["a photo of an ant"]}, 422, "takes image ('images'), not texts"),
        (post_form, [("texts", "a photo of an ant")], 422, "takes image ('images'), not texts"),
    ]
    for send, payload, status, words in cases:
        got, answer = send(url, payload)
        assert got == status and set(answer) == {"error"} and words in answer["error"] and "\n" not in answer["error"], (words, answer)
    assert post_form(url, [("files", ("ok.jpg", good, "image/jpeg"))])[0] == 200


def test_explain_image(image_service, image_data):
    from PIL import Image

    url, _, predictor = image_service
    path = sorted((image_data / "val").rglob("*.png"))[0]
    status, answer = post_form(url, [("files", (path.name, _png(path), "image/png")), ("explain", "true")])
    assert status == 200, answer
    e = answer["predictions"][0]["explanation"]
    assert e["method"] == "grad-cam" and e["target"] == answer["predictions"][0]["label"]
    grid = np.array(e["grid"])
    assert grid.ndim == 2 and grid.min() >= 0 and grid.max() == pytest.approx(1.0)
    overlay = Image.open(io.BytesIO(base64.b64decode(e["overlay"].split(",", 1)[1])))
    size = predictor.preprocessing["input_size"]
    assert overlay.size == (size, size) and np.asarray(overlay).std() > 1


def test_serve_command_starts_and_stops(text_run):
    """`finetunekit serve` as a user runs it: a free port, a line with the address, SIGTERM ends it."""
    import os
    import signal
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "finetunekit", "serve", str(text_run), "--port", "0", "--threads", "1",
                                "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline()
        assert "serving" in line and "http://127.0.0.1:" in line, (line, process.stderr.read() if process.poll() is not None else "")
        url = line.split("on ", 1)[1].strip().rstrip("/")
        assert call(url, "GET", "/health")[0] == 200
        status, answer = post_json(url, {"texts": ["the film was good"]})
        assert status == 200 and answer["predictions"][0]["label"] in ("neg", "pos")
    finally:
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down, then re-raises the signal it caught, so the exit status says "terminated"
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)


def test_serve_command_bad_arguments(text_run, tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "run directory not found" in capsys.readouterr().err
    assert main(["serve", str(text_run), "--max-batch-size", "0"]) == 2
    assert "max-batch-size: expected at least 1" in capsys.readouterr().err
    busy = threading.Event()
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy.set()
        assert main(["serve", str(text_run), "--port", str(taken.getsockname()[1]), "--threads", "1"]) == 2
    assert "cannot listen on 127.0.0.1:" in capsys.readouterr().err


def test_sentence_pair_model(pair_run):
    predictor = load(pair_run)
    with running(predictor) as (url, _):
        pairs = [["A man plays a guitar.", "Someone makes music."], ["The cat sleeps.", "A dog runs outside."]]
        status, answer = post_json(url, {"texts": pairs})
        assert status == 200, answer
        expected = predictor.predict_proba([tuple(p) for p in pairs])
        got = np.array([[p["scores"][c] for c in predictor.classes] for p in answer["predictions"]])
        np.testing.assert_allclose(got, expected, atol=1e-5)
        status, answer = post_json(url, {"texts": ["a single text"]})
        assert status == 422 and "texts[0]: this model takes sentence pairs: expected [first, second]" in answer["error"]
        status, answer = post_json(url, {"texts": [["fine", ""]]})
        assert status == 422 and "texts[0][1]: empty text" in answer["error"]
        assert call(url, "GET", "/metadata")[1]["text_columns"] == predictor.text_columns

"""The fast predict path (finetunekit.use.fast): the run's model as ONNX with numpy/PIL/tokenizers
preprocessing answers as the torch path does (same labels, scores within 1e-4, the same printed
lines and JSON), is used only for the run it was made from, and never imports torch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_image_folder, tiny_image_recipe
from finetunekit import train
from finetunekit.cli import main
from finetunekit.use import fast
from finetunekit.use.export import write_fast_model
from finetunekit.use.predict import load

pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
pytest.importorskip("tokenizers", reason="tokenizers not installed")

TOLERANCE = 1e-4
# each modality's preprocessing, and each task type's scores and answers (preprocessing does not
# depend on the task, nor the task's part on the modality)
COVERED = [("image", "classification"), ("image", "regression"), ("text", "classification"), ("text", "multilabel")]
SRC = str(Path(fast.__file__).resolve().parents[2])


def _val_inputs(run_dir: Path) -> list:
    return [r["input"] for r in map(json.loads, (run_dir / "val_predictions.jsonl").read_text().splitlines())]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert):
    """Tiny image and text runs of the task types the fast path answers (COVERED), each with its fast
    model written (as ``finetunekit train --fast-predict`` or the first predict writes it)."""
    from test_tasks import _recipe

    made = {}
    for modality, kind in COVERED:
        root = tmp_path_factory.mktemp(f"{modality}_{kind}")
        sections = {"train": {"epochs": 1}} if kind == "classification" else {"train": {"epochs": 1}, "task": {"type": kind}}
        run_dir = train(_recipe(modality, root, kind, tiny_bert, **sections), output=root / "run", quiet=True).run_dir
        result = write_fast_model(run_dir)
        assert result.path == run_dir / "fast", result.reason
        made[(modality, kind)] = run_dir
    return made


@pytest.mark.parametrize("modality, kind", COVERED)
def test_fast_model_answers_as_torch_on_the_validation_inputs(runs, modality, kind):
    run_dir = runs[(modality, kind)]
    spec = json.loads((run_dir / "fast" / "fast.json").read_text())
    assert spec["parity"]["max_abs_diff"] <= TOLERANCE and spec["parity"]["examples"] >= 3
    inputs = _val_inputs(run_dir)
    predictor = load(run_dir, device="cpu")
    model = fast.FastModel.open(run_dir)
    assert model is not None
    expected, got = predictor.predict_proba(inputs), model.scores(inputs, batch_size=5)  # batches padded differently too
    assert expected.shape == got.shape and np.abs(expected - got).max() <= TOLERANCE
    torch_records, fast_records = predictor.records(inputs), model.records(inputs)
    if kind == "classification":
        assert [r["json"]["label"] for r in torch_records] == [r["json"]["label"] for r in fast_records]
    elif kind == "multilabel":
        assert [r["json"]["labels"] for r in torch_records] == [r["json"]["labels"] for r in fast_records]
    assert [set(r["json"]) for r in torch_records] == [set(r["json"]) for r in fast_records]


def test_image_preprocessing_is_torchvisions_eval_transform(tmp_path):
    """PIL + numpy give the torchvision transform's tensor, for images of several shapes and sizes
    (smaller than the crop: padded), crop fractions and filters."""
    from PIL import Image

    from finetunekit.data.pipeline import image_transform

    rng = np.random.default_rng(0)
    paths = []
    for k, (w, h) in enumerate([(64, 48), (31, 77), (40, 40), (9, 13), (300, 120)]):
        paths.append(tmp_path / f"{k}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    Image.fromarray(rng.integers(0, 256, (50, 60), dtype=np.uint8)).save(tmp_path / "grey.png")  # converted to RGB
    paths.append(tmp_path / "grey.png")
    for crop_pct, interpolation in ((0.875, "bilinear"), (1.0, "bicubic"), (0.95, "nearest"), (1.2, "bilinear")):
        pre = {"input_size": 32, "crop_pct": crop_pct, "interpolation": interpolation, "mean": [0.485, 0.456, 0.406],
               "std": [0.229, 0.224, 0.225]}
        transform = image_transform(pre, train=False)
        model = object.__new__(fast.FastModel)
        model.spec = {"image": pre}
        for path in paths:
            with Image.open(path) as image:
                expected = transform(image.convert("RGB")).numpy()
            np.testing.assert_array_equal(model.image_array(str(path)), expected)


def _cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("modality", ["image", "text"])
def test_cli_prints_the_same_lines_and_json_either_way(runs, modality, capsys):
    run_dir = runs[(modality, "classification")]
    inputs = _val_inputs(run_dir)[:4]
    for flags in ([], ["--json"]):
        code, torch_out, _ = _cli(["predict", str(run_dir), *inputs, *flags, "--torch"], capsys)
        assert code == 0
        code, fast_out, err = _cli(["predict", str(run_dir), *inputs, *flags, "--verbose"], capsys)
        assert code == 0 and "fast path (ONNX) cold start" in err
        if flags:
            a, b = [json.loads(x) for x in torch_out.splitlines()], [json.loads(x) for x in fast_out.splitlines()]
            assert [(x["input"], x["label"], list(x["probabilities"])) for x in a] == [(x["input"], x["label"], list(x["probabilities"])) for x in b]
            assert max(abs(x["probabilities"][c] - y["probabilities"][c]) for x, y in zip(a, b) for c in x["probabilities"]) <= TOLERANCE
        else:
            rows = [(line.split("\t"), other.split("\t")) for line, other in zip(torch_out.splitlines(), fast_out.splitlines(), strict=True)]
            assert all(a[0] == b[0] and a[2:] == b[2:] and abs(float(a[1]) - float(b[1])) <= 1e-4 for a, b in rows)


def test_cli_bad_inputs_are_the_same_one_line_errors(runs, capsys):
    image_run, text_run = runs[("image", "classification")], runs[("text", "classification")]
    for args in ([str(image_run), "missing.png"], [str(text_run), "  "], [str(text_run), "--pair", "a", "b"]):
        code, _, torch_err = _cli(["predict", *args, "--torch"], capsys)
        assert code == 2
        code, _, fast_err = _cli(["predict", *args], capsys)
        assert code == 2 and fast_err == torch_err and len(fast_err.strip().splitlines()) == 1


def test_fast_model_is_only_used_for_its_own_run(runs, tmp_path, capsys):
    """Other weights (a retrained run), another finetunekit version or a missing ONNX file: the
    torch path answers, and the first predict writes a fast model again for the weights."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(runs[("image", "classification")], run_dir)
    assert fast.status(run_dir)[0] is not None
    spec_path = run_dir / "fast" / "fast.json"
    spec = json.loads(spec_path.read_text())
    for changed in ({"weights_sha256": "0" * 64}, {"finetunekit": "0.0.0"}, {"onnx_bytes": 1}):
        spec_path.write_text(json.dumps({**spec, **changed}))
        found, why, stale = fast.status(run_dir)
        assert found is None and stale and fast.FastModel.open(run_dir) is None
    spec_path.write_text(json.dumps({**spec, "weights_sha256": "0" * 64}))
    image = _val_inputs(run_dir)[0]
    code, out, err = _cli(["predict", str(run_dir), image, "--verbose"], capsys)
    assert code == 0 and "torch path: the fast-predict model was made from other weights" in err
    assert "fast-predict model: " in err and "predict uses it from now on" in err  # rewritten for these weights
    assert fast.status(run_dir)[0] is not None
    code, again, err = _cli(["predict", str(run_dir), image, "--verbose"], capsys)
    assert code == 0 and "fast path (ONNX)" in err and again.split("\t")[0] == out.split("\t")[0]


def test_failed_parity_is_recorded_and_not_retried(runs, tmp_path, monkeypatch):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(runs[("text", "classification")], run_dir)
    shutil.rmtree(run_dir / "fast")
    monkeypatch.setattr(fast.FastModel, "scores", lambda self, inputs, batch_size=64: np.zeros((len(inputs), 2), np.float32))
    result = write_fast_model(run_dir)
    assert result.path is None and "differ from torch's" in result.reason
    found, why, stale = fast.status(run_dir)
    assert found is None and not stale and "differ from torch's" in why
    assert not (run_dir / "fast" / "model.onnx").exists()


def test_runs_the_fast_path_does_not_cover_get_no_fast_model(tmp_path, image_data):
    assert "audio runs" in fast.why_not({"modality": "audio"}, {"type": "classification"}, {}, "one_class")
    assert "detection runs" in fast.why_not({"modality": "image"}, {"type": "detection"}, {"input_size": 32}, None)
    assert "bf16" in fast.why_not({"modality": "image", "precision": "bf16"}, {"type": "classification"}, {"input_size": 32}, "one_class")
    assert fast.why_not({"modality": "text", "precision": "fp32"}, {"type": "regression"}, {}, "values") is None


def test_fast_predict_never_imports_torch(runs, tmp_path):
    """A new interpreter answering with the fast model has not imported torch, transformers or timm."""
    for modality in ("image", "text"):
        run_dir = runs[(modality, "classification")]
        script = (
            "import sys\nfrom finetunekit.cli import main\n"
            f"code = main(['predict', {str(run_dir)!r}, {_val_inputs(run_dir)[0]!r}, '--verbose'])\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'timm', 'torchvision') if m in sys.modules)\n"
            "print('HEAVY', heavy, code)\n"
        )
        env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
        assert "fast path (ONNX)" in done.stderr, done.stderr
        assert done.stdout.strip().splitlines()[-1] == "HEAVY [] 0", done.stdout + done.stderr


def test_train_cli_writes_the_fast_model_when_asked(image_data, tmp_path, capsys):
    recipe = tiny_image_recipe(image_data, train={"epochs": 1})
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(recipe.to_dict()))
    assert main(["train", str(path), "--output", str(tmp_path / "run"), "--quiet"]) == 0
    assert fast.status(tmp_path / "run")[0] is None  # by default the first predict writes it
    assert main(["train", str(path), "--output", str(tmp_path / "run2"), "--quiet", "--fast-predict"]) == 0
    assert fast.status(tmp_path / "run2")[0] is not None


def test_tokenization_is_the_runs_own(runs):
    """The tokenizers library from the fast model's tokenizer.json gives the ids the run's
    transformers tokenizer gives: special tokens, truncation to the run's length (the longer text
    of a pair first), segment ids of pairs, unknown words."""
    run_dir = runs[("text", "classification")]
    predictor, model = load(run_dir, device="cpu"), fast.FastModel.open(run_dir)
    max_length = int(predictor.preprocessing["max_length"])
    texts = ["good", "Zebra QUOKKA, unknown words!", " ".join(["good film"] * 40), "bad " * 3]
    pairs = [("good", "bad"), (" ".join(["good"] * 50), "bad film"), ("bad", " ".join(["film good"] * 30))]
    for items in (texts, pairs):
        expected = predictor.model.backbone.tokenize(items, max_length)
        got = model.encode_texts(items)
        assert [e.ids for e in got] == expected["input_ids"]
        assert [e.attention_mask for e in got] == expected["attention_mask"]
        if "token_type_ids" in expected:
            assert [e.type_ids for e in got] == expected["token_type_ids"]
    assert max(len(ids) for ids in expected["input_ids"]) == max_length


def test_without_the_onnx_packages_predict_takes_the_torch_path(runs, tmp_path, monkeypatch, capsys):
    import importlib.util
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(runs[("image", "classification")], run_dir)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert fast.status(run_dir)[0] is None and fast.FastModel.open(run_dir) is None
    code, out, err = _cli(["predict", str(run_dir), _val_inputs(run_dir)[0], "--verbose"], capsys)
    assert code == 0 and "torch path: onnxruntime or tokenizers is not installed" in err and out.strip()

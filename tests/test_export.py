"""Exports give the same predictions as finetunekit: the transformers directory
(AutoModelForSequenceClassification + AutoTokenizer), the timm directory, and ONNX through
onnxruntime (logits within 1e-4, dynamic batch and sequence length)."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import tiny_text_recipe
from finetunekit import load, train
from finetunekit.cli import main
from finetunekit.modalities import read_examples
from finetunekit.core.errors import FinetuneError
from finetunekit.use.export import export

onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'finetunekit[export]')")

ONNX_TOLERANCE = 1e-4


def _val_images(image_data):
    return [str(p) for p in sorted((image_data / "val").rglob("*.png"))]


def _logits(predictor, inputs):
    """finetunekit's own logits for ``inputs`` (log-probabilities differ from logits by a per-row constant)."""
    import torch

    from finetunekit.data import Examples
    from finetunekit.data.pipeline import build_loader
    from finetunekit.modalities import build_dataset

    examples = Examples(list(inputs), None, "test", predictor.modality)
    max_length = int(predictor.preprocessing.get("max_length", 512))
    dataset = build_dataset(examples, None, predictor.model.backbone, predictor.preprocessing, False, "none", max_length)
    (batch,) = list(build_loader(dataset, predictor.model.backbone, len(inputs), False, 0))
    order = torch.argsort(batch.pop("index"))
    with torch.no_grad():
        logits = predictor.model(batch).numpy()[order.numpy()]
    return logits, {k: v[order].numpy() for k, v in batch.items()}


@pytest.fixture(scope="module")
def cls_text_run(text_data, tiny_bert, tmp_path_factory):
    recipe = tiny_text_recipe(text_data, tiny_bert, model={"pooling": "cls"}, train={"epochs": 1})
    return train(recipe, output=tmp_path_factory.mktemp("cls") / "run", quiet=True).run_dir


@pytest.fixture(scope="module")
def exports(image_run, text_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {
        "hf": export(text_run, "hf", root / "hf"),
        "timm": export(image_run, "timm", root / "timm"),
        "onnx_image": export(image_run, "onnx", root / "onnx_image"),
        "onnx_text": export(text_run, "onnx", root / "onnx_text"),
    }


def test_exports_record_their_parity_check(exports):
    for result in exports.values():
        record = json.loads((result.path / "export.json").read_text())
        assert record["max_abs_diff"] == result.max_abs_diff <= ONNX_TOLERANCE
        assert record["label_mismatches"] == 0 and record["examples"] >= 8
        card = (result.path / "README.md").read_text()
        library = {"hf": "transformers", "timm": "timm", "onnx": "onnx"}[result.format]
        assert card.startswith(f"---\nlibrary_name: {library}\n") and f"{result.path}" in card.split("## How to load")[1]
        assert json.loads((result.path / "labels.json").read_text())["classes"]


def test_hf_export_loads_with_transformers_alone(exports, text_run, text_data):
    """A fresh interpreter in which finetunekit cannot be imported loads the directory with the
    Auto classes and predicts the labels finetunekit predicts."""
    texts = read_examples(text_data[1], "text").inputs
    script = textwrap.dedent("""
        import json, sys
        sys.modules["finetunekit"] = None  # any import of finetunekit now fails
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        path, texts = sys.argv[1], json.loads(sys.stdin.read())
        model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
        batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**batch).logits
        print(json.dumps({"labels": [model.config.id2label[i] for i in logits.argmax(-1).tolist()],
                          "probs": logits.softmax(-1).tolist()}))
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(exports["hf"].path)], input=json.dumps(texts),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    predictor = load(text_run, precision="fp32")  # exports are fp32 models
    assert got["labels"] == predictor.predict(texts)
    assert np.allclose(got["probs"], predictor.predict_proba(texts), atol=1e-5)


def test_hf_export_loads_in_bfloat16(exports, text_run, text_data):
    """from_pretrained(dtype=torch.bfloat16) casts the encoder and the head alike (as the transformers
    pipeline's dtype does), and predicts the labels finetunekit predicts in bf16 autocast."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = exports["hf"].path
    model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True, dtype=torch.bfloat16).eval()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    texts = list(read_examples(text_data[1], "text").inputs)[:8]
    with torch.inference_mode():
        logits = model(**tokenizer(texts, padding=True, truncation=True, return_tensors="pt")).logits
    expected = load(text_run, precision="bf16").predict_proba(texts)
    assert logits.dtype == torch.bfloat16
    np.testing.assert_allclose(logits.float().softmax(-1).numpy(), expected, atol=0.05)


def test_hf_export_refuses_to_load_without_remote_code(exports):
    from transformers import AutoModelForSequenceClassification

    # A stock class would read a pooler this model does not have and predict something else.
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForSequenceClassification.from_pretrained(str(exports["hf"].path), trust_remote_code=False)


def test_hf_export_of_cls_pooling(cls_text_run, text_data, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    result = export(cls_text_run, "hf", tmp_path / "hf")
    model = AutoModelForSequenceClassification.from_pretrained(str(result.path), trust_remote_code=True).eval()
    assert model.config.pooling == "cls"
    tokenizer = AutoTokenizer.from_pretrained(str(result.path), trust_remote_code=True)
    texts = read_examples(text_data[1], "text").inputs
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, truncation=True, return_tensors="pt")).logits.numpy()
    expected, _ = _logits(load(cls_text_run, precision="fp32"), texts)
    assert np.abs(logits - expected).max() < 1e-5


def test_timm_export_loads_by_directory_and_by_overlay(exports, image_run, image_data):
    import timm
    import torch

    predictor = load(image_run, precision="fp32")
    images = _val_images(image_data)
    expected, batch = _logits(predictor, images)
    config = json.loads((exports["timm"].path / "config.json").read_text())
    by_dir = timm.create_model(f"local-dir:{exports['timm'].path}", pretrained=True).eval()
    by_overlay = timm.create_model(
        config["architecture"], pretrained=True, num_classes=len(predictor.classes),
        # num_classes in the overlay too: otherwise timm drops the classifier as a mismatched ImageNet head.
        pretrained_cfg_overlay={"file": str(exports["timm"].path / "model.safetensors"), "num_classes": len(predictor.classes)},
    ).eval()
    for model in (by_dir, by_overlay):
        with torch.no_grad():
            logits = model(torch.from_numpy(batch["pixel_values"])).numpy()
        assert np.abs(logits - expected).max() < 1e-5
        assert [predictor.classes[i] for i in logits.argmax(1)] == predictor.predict(images)
    assert config["label_names"] == predictor.classes
    assert config["pretrained_cfg"]["input_size"][-1] == predictor.preprocessing["input_size"]
    assert config["pretrained_cfg"]["mean"] == predictor.preprocessing["mean"]


@pytest.mark.parametrize("kind", ["image", "text"])
def test_onnx_matches_pytorch_on_other_batch_sizes_and_lengths(kind, exports, image_run, text_run, image_data, text_data):
    run, result = (image_run, exports["onnx_image"]) if kind == "image" else (text_run, exports["onnx_text"])
    predictor = load(run, precision="fp32")
    # All validation inputs at once: a batch size (and, for text, a padded length) the export never saw.
    if kind == "image":
        inputs = _val_images(image_data)
    else:
        texts = read_examples(text_data[1], "text").inputs
        inputs = [*texts, " ".join(texts[:3])]  # one longer row: a padded length the export never saw
    expected, batch = _logits(predictor, inputs)
    session = onnxruntime.InferenceSession(str(result.path / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    shapes = {i.name: i.shape for i in session.get_inputs()}
    assert all(isinstance(shapes[n][0], str) for n in names)  # dynamic batch
    if kind == "text":
        assert all(isinstance(shapes[n][1], str) for n in names)  # dynamic sequence length
        assert batch["input_ids"].shape[1] not in [s["input_ids"][1] for s in result.details["input_shapes"]]
    (logits,) = session.run(["logits"], {n: batch[n] for n in names})
    assert len(logits) not in [s[names[0]][0] for s in result.details["input_shapes"]]
    assert np.abs(logits - expected).max() <= ONNX_TOLERANCE
    assert [predictor.classes[i] for i in logits.argmax(1)] == predictor.predict(inputs)


def test_failed_parity_check_writes_nothing(image_run, tmp_path):
    target = tmp_path / "onnx"
    with pytest.raises(FinetuneError, match="parity check failed"):
        export(image_run, "onnx", target, tolerance=0.0)
    assert not target.exists()


def test_export_user_errors(image_run, text_run, exports, capsys):
    with pytest.raises(FinetuneError, match="is an image run; export it with --format timm or onnx"):
        export(image_run, "hf")
    with pytest.raises(FinetuneError, match="is a text run; export it with --format hf or onnx"):
        export(text_run, "timm")
    assert main(["export", str(text_run), "--format", "hf", "--output", str(exports["hf"].path)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err


def test_cli_export_default_location(image_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(image_run, run)
    assert main(["export", str(run), "--format", "timm"]) == 0
    out = capsys.readouterr().out
    assert f"exported timm to {run / 'export' / 'timm'}" in out and "all predicted labels equal" in out
    assert (run / "export" / "timm" / "model.safetensors").is_file()

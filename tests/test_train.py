"""End to end on tiny models: train -> run dir -> load -> predict / evaluate, via Python and CLI."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import make_image_folder, tiny_image_recipe, tiny_text_recipe, write_tsv
from finetunekit import evaluate, load, train
from finetunekit.cli import main

RUN_FILES = {"finetunekit.json", "recipe.yaml", "labels.json", "preprocessing.json", "model.safetensors", "metrics.json", "metrics.jsonl", "README.md"}


def test_image_run_dir_and_predict_match_evaluation(image_data, tmp_path):
    result = train(tiny_image_recipe(image_data, train={"epochs": 3}), output=tmp_path / "run", quiet=True)
    assert RUN_FILES <= {p.name for p in result.run_dir.iterdir()}
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "macro_precision", "macro_recall", "confusion_matrix", "per_class"):
        assert key in metrics
    assert len((result.run_dir / "metrics.jsonl").read_text().splitlines()) == 3
    # The run directory alone suffices: move it away from everything else.
    moved = shutil.move(str(result.run_dir), tmp_path / "elsewhere")
    model = load(moved)
    files = sorted((image_data / "val").rglob("*.png"))
    probs = model.predict_proba([str(f) for f in files])
    again = evaluate(moved, str(image_data / "val"))
    assert again["accuracy"] == pytest.approx(metrics["accuracy"])
    assert again["confusion_matrix"] == metrics["confusion_matrix"]
    labels = model.predict([str(f) for f in files])
    assert labels == [model.classes[i] for i in probs.argmax(1)]
    assert np.allclose(probs.sum(1), 1, atol=1e-5)


def test_text_run_learns_and_predicts(text_data, tiny_bert, tmp_path):
    # The tiny BERT's weights are random, its word-embedding table too: unlike a pretrained one, it
    # carries nothing until it trains, so this run trains it (the default leaves it frozen).
    recipe = tiny_text_recipe(text_data, tiny_bert, train={"epochs": 4}, strategy={"train_token_embeddings": True})
    result = train(recipe, output=tmp_path / "run", quiet=True)
    assert result.metrics["accuracy"] >= 0.75, result.history
    model = load(result.run_dir)
    from finetunekit.modalities import read_examples

    dev = read_examples(text_data[1], "text")
    predicted = model.predict(dev.inputs)
    assert np.mean([p == t for p, t in zip(predicted, dev.labels)]) == pytest.approx(result.metrics["accuracy"])
    assert (result.run_dir / "backbone" / "tokenizer_config.json").is_file()
    assert evaluate(result.run_dir, str(text_data[1]))["accuracy"] == pytest.approx(result.metrics["accuracy"])


def test_integer_labels_and_jsonl(tiny_bert, tmp_path):
    rows = [("good great fine", 1), ("bad awful poor", 0)] * 8 + [("happy warm", 2), ("sad cold", 2)] * 4
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows))
    recipe = tiny_text_recipe((path, path), tiny_bert, train={"epochs": 1})
    result = train(recipe, output=tmp_path / "run", quiet=True)
    assert json.loads((result.run_dir / "labels.json").read_text())["classes"] == ["0", "1", "2"]


def test_continue_from_run_dir(image_data, tmp_path):
    first = train(tiny_image_recipe(image_data, train={"epochs": 1}), output=tmp_path / "a", quiet=True)
    second = train(tiny_image_recipe(image_data, model={"backbone": f"run:{first.run_dir}"}, train={"epochs": 1}), output=tmp_path / "b", quiet=True)
    assert second.metrics["num_examples"] == first.metrics["num_examples"]
    # A bare path to a run directory works as a backbone too.
    train(tiny_image_recipe(image_data, model={"backbone": str(first.run_dir)}, train={"epochs": 1}), output=tmp_path / "c", quiet=True)


def test_early_stopping_restores_best(image_data, tmp_path):
    recipe = tiny_image_recipe(image_data, train={"epochs": 6, "early_stopping_patience": 1, "metric": "loss", "lr": 5.0, "head_lr": 5.0, "optimizer": "sgd"})
    result = train(recipe, output=tmp_path / "run", quiet=True)
    losses = [h["val_loss"] for h in result.history]
    assert result.metrics["best_epoch"] == int(np.argmin(losses)) + 1
    assert result.metrics["loss"] == pytest.approx(min(losses), rel=1e-4)


@pytest.mark.parametrize("options", [
    {"optimizer": "sgd", "scheduler": "linear", "warmup_ratio": 0.2},
    {"optimizer": "adam", "scheduler": "constant", "label_smoothing": 0.1, "grad_accum_steps": 2},
    {"precision": "bf16"},
])
def test_training_options_run(image_data, tmp_path, options):
    result = train(tiny_image_recipe(image_data, train={"epochs": 1, **options}), output=tmp_path / "run", quiet=True)
    assert 0.0 <= result.metrics["accuracy"] <= 1.0


def test_seeded_runs_are_reproducible(image_data, tmp_path):
    recipe = tiny_image_recipe(image_data, data={"augment": "light"})
    a = train(recipe, output=tmp_path / "a", quiet=True)
    b = train(recipe, output=tmp_path / "b", quiet=True)
    assert (a.run_dir / "model.safetensors").read_bytes() == (b.run_dir / "model.safetensors").read_bytes()


def test_split_when_no_val(tmp_path, tiny_bert):
    root = make_image_folder(tmp_path / "flat", per_class=10)
    result = train(tiny_image_recipe(root, data={"train": str(root), "val_fraction": 0.3}, train={"epochs": 1}), output=tmp_path / "run", quiet=True)
    assert result.metrics["num_examples"] == 9
    assert "30% held out" in result.metrics["eval_set"]


# -- CLI -----------------------------------------------------------------------------------------


def test_cli_train_predict_evaluate(image_data, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny_image_recipe(image_data).to_yaml())
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--set", "train.epochs=1", "--output", str(run), "--quiet"]) == 0
    assert "validation metrics" in capsys.readouterr().out
    files = sorted((image_data / "val" / "circle").glob("*.png"))[:2]
    assert main(["predict", str(run), *map(str, files)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    expected = load(run).predict([str(f) for f in files])
    assert [line.split("\t")[0] for line in lines] == expected
    assert main(["evaluate", str(run), str(image_data / "val"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_examples"] == 12


def test_cli_text_predict_file(text_data, tiny_bert, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_text_recipe(text_data, tiny_bert, train={"epochs": 1}), output=run, quiet=True)
    capsys.readouterr()  # the training summary
    assert main(["predict", str(run), "--file", str(text_data[1]), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 16 and set(rows[0]["probabilities"]) == {"neg", "pos"}


def test_cli_predict_says_where_its_cold_start_went(text_run, capsys):
    # the torch path's line (tests/test_predict_fast.py: the fast path's)
    assert main(["predict", str(text_run), "a fine film", "--verbose", "--torch"]) == 0
    out, err = capsys.readouterr()
    assert out.count("\t") == 2 and out.strip().endswith("a fine film")  # the answer alone on stdout
    line = err.strip().splitlines()[-1]
    assert line.startswith("cold start ") and "import torch and the predict path" in line, err
    for phase in ("import the backbone library, build the architecture", "read, check and load the weights", "predict 1 input(s)"):
        assert phase in line, line
    total = float(line.split()[2])
    parts = [float(part.rsplit(" ", 2)[1]) for part in line.split(": ", 1)[1].split("; ")]
    assert total == pytest.approx(sum(parts), abs=0.02 * len(parts))


def test_loading_for_prediction_skips_the_random_init_but_not_the_weights(text_run):
    """A run rebuilt for prediction draws no random initial weights (every one is replaced), and
    answers exactly as the model rebuilt with the draws and then loaded."""
    import torch

    from finetunekit.backbones import rebuild_backbone
    from finetunekit.backbones.base import weights_follow
    from finetunekit.run.artifacts import load_weights, read_run_info, read_weights
    from finetunekit.run.model import FineTuneModel
    from finetunekit.use.loading import load_model

    info = read_run_info(text_run)
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    with weights_follow():  # as load_model rebuilds it
        rebuild_backbone(info["backbone"], text_run / "backbone")
    assert torch.equal(torch.random.get_rng_state(), before)  # nothing drawn
    backbone = rebuild_backbone(info["backbone"], text_run / "backbone")  # outside: drawn, as training from a run needs
    assert not torch.equal(torch.random.get_rng_state(), before)
    seconds: dict[str, float] = {}
    fast, _ = load_model(text_run, seconds)
    assert list(seconds) == ["read the run's files", "import the backbone library, build the architecture",
                             "read, check and load the weights"]
    predictor = load(text_run)
    drawn = FineTuneModel(backbone, predictor.task.head_for(backbone, float(info["head"].get("dropout", 0.0))))
    load_weights(drawn, read_weights(text_run, verify=False), text_run / "model.safetensors")
    drawn.eval()
    batch = predictor.encode(["a fine film", "the plot was dull and the acting bad, far too long"])
    with torch.inference_mode():
        assert torch.equal(fast(batch), drawn(batch))
        assert torch.equal(predictor.model(batch), drawn(batch))


@pytest.mark.parametrize("args, message", [
    (["train", "--set", "data.train=/no/such/dir", "--set", "model.backbone=timm:test_efficientnet", "--set", "model.pretrained=false"], "data path not found: /no/such/dir"),
    (["train", "--set", "model.backbone=bundled:effnet"], "unknown bundled backbone 'effnet'"),
    (["train", "--set", "train.lrr=1"], "unknown field 'train.lrr' (did you mean 'lr'?)"),
    (["train", "missing.yaml"], "recipe file not found: missing.yaml"),
    (["predict", "/no/run", "x"], "run directory not found: /no/run"),
])
def test_cli_user_errors_are_one_line(args, message):
    proc = subprocess.run([sys.executable, "-m", "finetunekit", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr, proc.stderr


def test_existing_run_dir_is_refused(image_data, tmp_path):
    from finetunekit.core.errors import FinetuneError

    run = tmp_path / "run"
    train(tiny_image_recipe(image_data, train={"epochs": 1}), output=run, quiet=True)
    before = (run / "model.safetensors").read_bytes()
    with pytest.raises(FinetuneError, match="already exists"):
        train(tiny_image_recipe(image_data, train={"epochs": 1}), output=run, quiet=True)
    assert (run / "model.safetensors").read_bytes() == before


def test_wrong_modality_data(tiny_bert, image_data, tmp_path):
    from finetunekit.core.errors import DataError

    tsv = write_tsv(tmp_path / "t.tsv", [("good", "a"), ("bad", "b")])
    with pytest.raises(DataError, match="is text data, but the model's backbone takes image"):
        train(tiny_image_recipe(image_data, data={"train": str(tsv)}), output=tmp_path / "run", quiet=True)

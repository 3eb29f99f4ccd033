"""The model card (RUN_DIR/README.md) in the Hugging Face layout: YAML metadata whose model-index
names the evaluation set with each metric, then the sections a card needs."""

import json

import pytest
import yaml

from finetunekit.run.card import hub_base_model


def _card(run_dir):
    text = (run_dir / "README.md").read_text()
    assert text.startswith("---\n")
    _, meta, body = text.split("---\n", 2)
    return yaml.safe_load(meta), body


@pytest.mark.parametrize("fixture", ["image_run", "text_run"])
def test_card_metadata_names_the_evaluation_set(fixture, request):
    run_dir = request.getfixturevalue(fixture)
    meta, body = _card(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    modality = json.loads((run_dir / "finetunekit.json").read_text())["modality"]
    assert meta["library_name"] == "finetunekit"
    assert meta["pipeline_tag"] == f"{modality}-classification"
    (result,) = meta["model-index"][0]["results"]
    assert result["dataset"]["name"] == metrics["eval_set"]
    assert result["task"]["type"] == meta["pipeline_tag"]
    values = {m["type"]: m["value"] for m in result["metrics"]}
    for key, name in [("accuracy", "accuracy"), ("f1", "macro_f1"), ("precision", "macro_precision"), ("recall", "macro_recall"), ("ece", "ece")]:
        assert values[key] == pytest.approx(metrics[name], abs=1e-4)
    # a local test model is not a Hub model: no base_model claim in the metadata
    assert "base_model" not in meta
    for heading in ["## Model details", "## Intended uses and limitations", "## Training data", "## Evaluation",
                    "## Training procedure", "## How to load"]:
        assert heading in body
    assert f"On `{metrics['eval_set']}` ({metrics['num_examples']} examples)" in body
    for name, row in metrics["per_class"].items():
        assert f"| {name} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | {row['support']} |" in body
    assert f'finetunekit.load("{run_dir}")' in body
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert f"`{recipe['model']['backbone']}`" in body


def test_text_card_states_the_pooling_used(text_run):
    _, body = _card(text_run)
    pooling = json.loads((text_run / "preprocessing.json").read_text())["pooling"]
    assert f"{pooling}-pooled token states" in body


@pytest.mark.parametrize("backbone, expected", [
    ("bundled:minilm_l6", "sentence-transformers/all-MiniLM-L6-v2"),
    ("hf:bert-base-uncased", "bert-base-uncased"),
    ("hf:google/electra-small-discriminator", "google/electra-small-discriminator"),
    ("hf:./my_model", None),
    ("bundled:efficientnet_lite0", None),  # TF-Lite weights: no Hub model holds exactly these
    ("timm:resnet50", None),
    ("run:runs/ants", None),
])
def test_base_model_only_for_hub_models(backbone, expected):
    assert hub_base_model(backbone) == expected

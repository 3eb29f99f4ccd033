"""The setfit strategy: pair generation, the pair loss, and a tiny end-to-end run that reloads."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import tiny_text_recipe
from finetunekit import load, train
from finetunekit.core.errors import FinetuneError
from finetunekit.strategies.setfit import cosine_pair_loss, generate_pairs


def test_pairs_are_balanced_and_seeded():
    labels = [0, 0, 0, 1, 1, 2, 2, 2]
    pairs = generate_pairs(labels, iterations=3, seed=0)
    assert len(pairs) == 2 * 3 * len(labels)
    assert Counter(y for _, _, y in pairs) == {1.0: 24, 0.0: 24}
    for i, j, y in pairs:
        assert (labels[i] == labels[j]) == (y == 1.0)
        assert i != j  # every class here has a second example to pair with
    assert pairs == generate_pairs(labels, 3, seed=0) and pairs != generate_pairs(labels, 3, seed=1)
    with pytest.raises(FinetuneError, match="at least two classes"):
        generate_pairs([0, 0], 1, 0)


def test_cosine_pair_loss():
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    v = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # cosines 1 and 0
    assert cosine_pair_loss(u, v, torch.tensor([1.0, 0.0])).item() == 0.0
    assert cosine_pair_loss(u, v, torch.tensor([0.0, 1.0])).item() == pytest.approx(1.0)


def test_setfit_run_fine_tunes_the_encoder_then_fits_the_head(text_data, tiny_bert, tmp_path):
    recipe = tiny_text_recipe(text_data, tiny_bert, strategy={"name": "setfit", "setfit_iterations": 2},
                              data={"shots_per_class": 8}, train={"epochs": None, "lr": None, "head_lr": None, "batch_size": None})
    result = train(recipe, output=tmp_path / "run", quiet=True)
    t = result.recipe.train
    assert (t.epochs, t.lr, t.batch_size) == (1, 2e-5, 16)
    # 16 examples x 2 rounds x 2 pairs = 64 pairs = 4 steps of 16
    assert result.history[0]["step"] == 4
    steps = [json.loads(line) for line in (tmp_path / "run" / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    predictor = load(tmp_path / "run", precision="fp32")
    dev = text_data[1]
    metrics = predictor.evaluate(dev)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(saved["accuracy"])
    probs = predictor.predict_proba(["the film was good", "the film was awful"])
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_setfit_refuses_images(image_data, tmp_path):
    from conftest import tiny_image_recipe

    recipe = tiny_image_recipe(image_data, strategy={"name": "setfit"}, train={"epochs": 1})
    with pytest.raises(FinetuneError, match="setfit: is for text backbones"):
        train(recipe, output=tmp_path / "run", quiet=True)


def test_setfit_without_pair_rounds_fits_only_the_head(text_data, tiny_bert, tmp_path):
    """setfit_iterations 0: the encoder keeps its pretrained weights; the head is the logistic
    regression on its embeddings, and the run saves and reloads like any other."""
    from finetunekit.backbones import create_backbone

    recipe = tiny_text_recipe(text_data, tiny_bert, strategy={"name": "setfit", "setfit_iterations": 0},
                              data={"shots_per_class": 8}, train={"epochs": None, "lr": None, "head_lr": None, "batch_size": None})
    result = train(recipe, output=tmp_path / "run", quiet=True)
    assert result.history[0]["step"] == 0
    pretrained = create_backbone(recipe.model.backbone).state_dict()
    tuned = result.model.backbone.state_dict()
    assert set(pretrained) == set(tuned) and all(torch.equal(pretrained[k], tuned[k]) for k in pretrained)
    fc = result.model.head.fc
    assert fc.weight.abs().sum() > 0 and torch.allclose(fc.weight[0], -fc.weight[1])  # binary: rows -w/2, w/2
    predictor = load(tmp_path / "run", precision="fp32")
    assert predictor.evaluate(text_data[1])["accuracy"] == pytest.approx(json.loads((tmp_path / "run" / "metrics.json").read_text())["accuracy"])

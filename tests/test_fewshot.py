"""Few-shot: data.shots_per_class sampling, the prototype strategy (and setfit in test_setfit.py)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import tiny_image_recipe
from finetunekit import Recipe, load, train
from finetunekit.data.readers import sample_per_class
from finetunekit.core.errors import RecipeError
from finetunekit.strategies.prototype import prototypes


def test_shots_are_stratified_and_seeded():
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 5
    picked = sample_per_class(labels, 8, seed=0)
    assert Counter(labels[i] for i in picked) == {"a": 8, "b": 8, "c": 5}  # a small class keeps all it has
    assert picked == sample_per_class(labels, 8, seed=0)  # seeded
    assert picked != sample_per_class(labels, 8, seed=1)
    assert set(sample_per_class(labels, 4, seed=0)) <= set(sample_per_class(labels, 16, seed=0))  # nested draws
    # a class's draw does not depend on the others
    only_a = [label for label in labels if label == "a"]
    assert [labels[i] for i in picked if labels[i] == "a"] == [only_a[i] for i in sample_per_class(only_a, 8, 0)]
    assert [i for i in picked if labels[i] == "a"] == sample_per_class(only_a, 8, 0)


def test_shots_per_class_is_validated():
    with pytest.raises(RecipeError, match=r"data.shots_per_class: 0 is out of range"):
        Recipe.from_dict({"data": {"shots_per_class": 0}})


def test_prototypes_are_normalised_class_means():
    feats = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 5.0], [2.0, 2.0]])
    labels = torch.tensor([0, 0, 1, 1])
    p = prototypes(feats, labels, 3)
    # class 0: mean of (1, 0) and (0, 1) -> (0.5, 0.5) -> normalised (0.707, 0.707)
    assert torch.allclose(p[0], torch.tensor([2**-0.5, 2**-0.5]))
    # class 1: mean of (0, 1) and (0.707, 0.707) normalised
    expected = torch.nn.functional.normalize(torch.tensor([2**-0.5, 1 + 2**-0.5]), dim=0)
    assert torch.allclose(p[1], expected)
    assert torch.equal(p[2], torch.zeros(2))


def _features(predictor, paths):
    from finetunekit.data import Examples
    from finetunekit.data.pipeline import build_loader
    from finetunekit.modalities import build_dataset

    model = predictor.model.eval()
    ds = build_dataset(Examples(paths, None, "x", "image"), None, model.backbone, predictor.preprocessing, False, "none", 0)
    with torch.no_grad():
        return torch.cat([model.features(b) for b in build_loader(ds, model.backbone, 64, False, 0)])


def test_prototype_run_is_nearest_class_mean_and_reloads(image_data, tmp_path):
    from finetunekit.modalities import read_examples

    recipe = tiny_image_recipe(image_data, strategy={"name": "prototype"}, data={"shots_per_class": 3}, train={"epochs": None})
    result = train(recipe, output=tmp_path / "run", quiet=True)
    assert result.recipe.train.epochs == 1  # the prototype default
    assert result.history[0]["step"] == 0  # no optimizer step
    assert "prototype" in (tmp_path / "run" / "README.md").read_text()

    # recompute the classifier from scratch: the 3 sampled training images per class, their
    # normalised features, the class means, the most cosine-similar mean for each val image
    predictor = load(tmp_path / "run", precision="fp32")
    train_ex = read_examples(image_data / "train", "image")
    shots = [train_ex.inputs[i] for i in sample_per_class(train_ex.labels, 3, seed=0)]
    shot_labels = [predictor.classes.index(train_ex.labels[train_ex.inputs.index(p)]) for p in shots]
    protos = prototypes(_features(predictor, shots), torch.tensor(shot_labels), 3)
    val = read_examples(image_data / "val", "image")
    cos = torch.nn.functional.normalize(_features(predictor, val.inputs), dim=1) @ protos.T
    assert predictor.predict(val) == [predictor.classes[i] for i in cos.argmax(1).tolist()]
    probs = predictor.predict_proba(val)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(np.mean([p == t for p, t in zip(predictor.predict(val), val.labels)]))

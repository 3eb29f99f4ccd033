"""Backbone selection without fine-tuning: LogME, k-NN accuracy, ``finetunekit select``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import HYMENOPTERA, needs_shared_data
from finetunekit.cli import main
from finetunekit.choose.selection import knn_accuracy, log_evidence, logme, logme_fits, parse_candidates


def test_log_evidence_by_hand():
    # F = [[1], [1]], y = [1, 1], alpha = beta = 1: A = 1 + 2 = 3, m = 2/3, ||y - F m||^2 = 2/9,
    # m^2 = 4/9, so log p = -log(2 pi) - 1/9 - 2/9 - log(3)/2, divided by N = 2.
    by_hand = (-math.log(2 * math.pi) - 1 / 9 - 2 / 9 - math.log(3) / 2) / 2
    assert log_evidence(np.array([[1.0], [1.0]]), np.array([1.0, 1.0]), 1.0, 1.0) == pytest.approx(by_hand)


def test_logme_by_hand_on_one_feature():
    # F = [1, 1, 1, 1]^T, labels [0, 0, 1, 1]. Class 0's column y = [1, 1, 0, 0]: sigma = ||f||^2 = 4,
    # x = f.y / ||f|| = 1, and ||y||^2 - x^2 = 1 lies outside F's span. With t = alpha / beta:
    # gamma = 4 / (4 + t), ||m||^2 = 4 / (4 + t)^2, ||y - F m||^2 = t^2 / (4 + t)^2 + 1, so
    # alpha = gamma / ||m||^2 = 4 + t and beta = (4 - gamma) / ||y - F m||^2; t = alpha / beta gives
    # t^2 + 2t - 8 = 0, t = 2: alpha = 6, beta = 3, gamma = 2/3, ||m||^2 = 1/9, residual 10/9,
    # log|A| = log(6 + 3 * 4) = log 18. log p = 1/2 log 6 + 2 log 3 - 3/2 * 10/9 - 6/2 * 1/9
    # - 1/2 log 18 - 2 log(2 pi) = 3/2 log 3 - 2 - 2 log(2 pi); per example / 4. Class 1 is the
    # mirror image (same numbers), so that is the LogME score too.
    f = np.ones((4, 1))
    labels = np.array([0, 0, 1, 1])
    by_hand = (1.5 * math.log(3) - 2 - 2 * math.log(2 * math.pi)) / 4
    fits = logme_fits(f, labels)
    for fit in fits:
        assert (fit.alpha, fit.beta) == (pytest.approx(6.0, rel=1e-5), pytest.approx(3.0, rel=1e-5))
    assert logme(f, labels) == pytest.approx(by_hand, rel=1e-6)


def test_logme_is_the_evidence_at_its_fixed_point():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(40, 6))
    labels = (f[:, 0] + 0.5 * rng.normal(size=40) > 0).astype(int)
    fits = logme_fits(f, labels)
    assert logme(f, labels) == pytest.approx(np.mean([fit.evidence for fit in fits]))
    for c, fit in enumerate(fits):
        y = (labels == c).astype(float)
        # the SVD fast path equals the evidence computed from its definition with matrices
        assert fit.evidence == pytest.approx(log_evidence(f, y, fit.alpha, fit.beta), rel=1e-9, abs=1e-9)
        # the fixed point: alpha = gamma / m^T m and beta = (N - gamma) / ||y - F m||^2
        a = fit.alpha * np.eye(6) + fit.beta * f.T @ f
        m = fit.beta * np.linalg.solve(a, f.T @ y)
        eig = np.linalg.eigvalsh(f.T @ f)
        gamma = (fit.beta * eig / (fit.alpha + fit.beta * eig)).sum()
        assert fit.alpha == pytest.approx(gamma / (m @ m), rel=1e-4)
        assert fit.beta == pytest.approx((40 - gamma) / ((y - f @ m) ** 2).sum(), rel=1e-4)
        # and a maximum of the evidence over (alpha, beta)
        for da, db in ((1.3, 1), (1 / 1.3, 1), (1, 1.3), (1, 1 / 1.3)):
            assert log_evidence(f, y, fit.alpha * da, fit.beta * db) < fit.evidence


def test_logme_prefers_informative_features_and_handles_wide_ones():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], 30)
    good = np.eye(3)[labels] * 3 + rng.normal(size=(90, 3))
    noise = rng.normal(size=(90, 3))
    assert logme(np.hstack([good, noise]), labels) > logme(np.hstack([noise, rng.normal(size=(90, 3))]), labels)
    wide = np.hstack([good, rng.normal(size=(90, 500))])  # D > N: the SVD path with zero eigenvalues
    assert math.isfinite(logme(wide, labels))


def test_knn_is_perfect_on_separable_features_and_chance_on_shuffled_labels():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(4), 50)
    centres = rng.normal(size=(4, 16)) * 10
    features = centres[labels] + rng.normal(size=(200, 16))
    assert knn_accuracy(features, labels) == 1.0
    shuffled = rng.permutation(labels)
    assert abs(knn_accuracy(features, shuffled) - 0.25) < 0.1
    # blocks give the same answer as one pass
    assert knn_accuracy(features, shuffled, block=7) == knn_accuracy(features, shuffled)


def test_knn_leaves_the_example_itself_out():
    # two identical points of different classes: with itself counted each would be right
    features = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert knn_accuracy(features, np.array([0, 1]), k=1) == 0.0


def test_parse_candidates():
    cands = parse_candidates("timm:a, bundled:b?pretrained=false")
    assert [(c.name, c.pretrained) for c in cands] == [("timm:a", True), ("bundled:b", False)]
    assert parse_candidates("timm:a", control=True)[-1].pretrained is False
    with pytest.raises(Exception, match="the only option is"):
        parse_candidates("timm:a?frozen=1")


def test_select_cli_on_a_tiny_image_set(image_data, capsys):
    code = main(["select", str(image_data), "--candidates", "timm:test_efficientnet?pretrained=false,timm:no_such_model_xyz",
                 "--json"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["candidate"] == "timm:test_efficientnet" and rows[0]["num_examples"] == 24
    assert set(rows[0]["seconds"]) == {"load", "features", "logme", "knn"}
    assert rows[1]["error"] and "no_such_model_xyz" in rows[1]["error"]


def test_select_reuses_the_feature_cache_of_a_linear_probe(image_data, tmp_path, capsys):
    from conftest import tiny_image_recipe
    from finetunekit import train

    # model.pretrained false gives random weights seeded by train.seed, like select's --seed
    assert main(["select", str(image_data), "--candidates", "timm:test_efficientnet?pretrained=false"]) == 0
    first = capsys.readouterr().out
    assert "(cache)" not in first and "LogME" in first
    assert main(["select", str(image_data), "--candidates", "timm:test_efficientnet?pretrained=false"]) == 0
    assert "(cache)" in capsys.readouterr().out
    cache = Path(os.environ["FINETUNEKIT_CACHE_DIR"])
    assert len(list(cache.glob("*.safetensors"))) == 1  # the training images' features
    recipe = tiny_image_recipe(image_data, model={"image_size": None}, strategy={"name": "linear_probe"}, train={"epochs": 1})
    train(recipe, output=tmp_path / "run", quiet=True)
    assert len(list(cache.glob("*.safetensors"))) == 2  # only the validation features were new


@needs_shared_data
def test_untrained_control_ranks_last_on_ants_and_bees(capsys):
    assert main(["select", str(HYMENOPTERA), "--candidates", "bundled:efficientnet_lite0", "--control", "--max-samples", "80",
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["pretrained"] for r in rows] == [True, False]  # sorted by LogME: the control last
    pretrained, control = rows
    assert pretrained["scores"]["knn"] > control["scores"]["knn"]
    assert pretrained["scores"]["knn"] >= 0.85 and control["scores"]["knn"] <= 0.75

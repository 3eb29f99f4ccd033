"""Bootstrap confidence intervals and paired significance tests (finetunekit.core.stats), and where they
show: metrics.json, the CLI table, the report and ``finetunekit compare``."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from finetunekit.cli import main
from finetunekit.tasks.classification import classification_metrics
from finetunekit.core.stats import bootstrap_ci, compare_predictions, mcnemar_exact, metric_replicates


def test_ci_of_a_perfect_classifier_is_one_one():
    labels = np.array([0, 1, 2] * 20)
    assert bootstrap_ci(labels, labels, "accuracy") == (1.0, 1.0)
    assert bootstrap_ci(labels, labels, "macro_f1") == (1.0, 1.0)


def test_ci_widens_as_the_set_shrinks():
    rng = np.random.default_rng(0)
    widths = []
    for n in (2000, 500, 100, 25):
        labels = rng.integers(0, 2, n)
        preds = np.where(rng.random(n) < 0.8, labels, 1 - labels)  # about 80% right
        low, high = bootstrap_ci(labels, preds, "accuracy")
        assert low <= (preds == labels).mean() <= high
        widths.append(high - low)
    assert widths == sorted(widths)
    # the normal approximation's width 2 * 1.96 * sqrt(p(1-p)/n) at n = 2000 is 0.035
    assert widths[0] == pytest.approx(2 * 1.96 * math.sqrt(0.8 * 0.2 / 2000), rel=0.2)


def test_ci_covers_the_truth_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    covered = 0
    for trial in range(200):
        labels = rng.integers(0, 2, 150)
        preds = np.where(rng.random(150) < 0.9, labels, 1 - labels)  # the true accuracy is 0.9
        low, high = bootstrap_ci(labels, preds, "accuracy", resamples=500, seed=trial)
        covered += low <= 0.9 <= high
    assert 0.88 <= covered / 200 <= 0.99


def test_vectorised_macro_f1_matches_the_metrics_module():
    rng = np.random.default_rng(2)
    labels, preds = rng.integers(0, 4, 60), rng.integers(0, 4, 60)
    index = rng.integers(0, 60, size=(20, 60))
    fast = metric_replicates(labels, preds, "macro_f1", index, 4)
    for row, value in zip(index, fast, strict=True):
        probs = np.eye(4)[preds[row]]
        assert value == pytest.approx(classification_metrics(probs, labels[row], ["a", "b", "c", "d"])["macro_f1"])


def test_mcnemar_exact_by_hand():
    # 10 discordant examples split 9 to 1: P(X <= 1) for Binomial(10, 1/2) is 11/1024, two-sided 22/1024
    assert mcnemar_exact(9, 1) == pytest.approx(22 / 1024)
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024)
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 0) == 1.0


def test_paired_comparison_tells_a_real_difference_from_noise():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 400)
    good = np.where(rng.random(400) < 0.95, labels, 1 - labels)
    bad = np.where(rng.random(400) < 0.75, labels, 1 - labels)
    real = compare_predictions(labels, good, bad)
    assert real.significant and real.difference > 0.1 and real.ci[0] > 0 and real.p_bootstrap < 0.01
    # two runs that differ on 2 of 400 examples
    near = good.copy()
    near[:2] = 1 - near[:2]
    noise = compare_predictions(labels, good, near)
    assert not noise.significant and noise.ci[0] <= 0 <= noise.ci[1]
    assert "not significant" in noise.summary("a", "b")
    assert compare_predictions(labels, good, good).p_value == 1.0


def test_metrics_json_and_report_carry_the_interval(image_run):
    metrics = json.loads((image_run / "metrics.json").read_text())
    low, high = metrics["accuracy_ci"]
    assert low <= metrics["accuracy"] <= high
    assert metrics["macro_f1_ci"][0] <= metrics["macro_f1"] <= metrics["macro_f1_ci"][1]
    assert metrics["ci"]["confidence"] == 0.95
    assert "accuracy (95% CI [" in (image_run / "report.html").read_text()


def test_evaluate_prints_the_interval(image_run, image_data, capsys):
    assert main(["evaluate", str(image_run), str(image_data / "val")]) == 0
    out = capsys.readouterr().out
    assert "95% bootstrap confidence interval" in out
    assert f"accuracy {json.loads((image_run / 'metrics.json').read_text())['accuracy']:.4f} [" in out


def test_compare_says_whether_the_difference_is_significant(image_run, tmp_path, capsys):
    same = tmp_path / "same"
    shutil.copytree(image_run, same)
    assert main(["compare", str(image_run), str(same), "-o", str(tmp_path / "c.html")]) == 0
    out = capsys.readouterr().out
    assert "difference +0.0000" in out and "not significant" in out and "McNemar exact p = 1" in out
    assert "Is the difference real?" in (tmp_path / "c.html").read_text()

    # a run whose predictions are all right against one whose predictions are all wrong
    right, wrong = tmp_path / "right", tmp_path / "wrong"
    for target in (right, wrong):
        shutil.copytree(image_run, target)
    rows = [json.loads(line) for line in (image_run / "val_predictions.jsonl").read_text().splitlines()]
    classes = json.loads((image_run / "labels.json").read_text())["classes"]
    for target, flip in ((right, False), (wrong, True)):
        fixed = [{**r, "predicted": next(c for c in classes if c != r["label"]) if flip else r["label"]} for r in rows]
        (target / "val_predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in fixed))
    assert main(["compare", str(wrong), str(right), "-o", str(tmp_path / "d.html")]) == 0
    out = capsys.readouterr().out
    assert f"{len(rows)} examples only right gets right" in out and ": significant at 0.05" in out


def test_compare_refuses_to_pair_different_examples(image_run, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(image_run, other)
    rows = (other / "val_predictions.jsonl").read_text().splitlines()
    (other / "val_predictions.jsonl").write_text("\n".join(rows[:-1]) + "\n")
    assert main(["compare", str(image_run), str(other), "-o", str(tmp_path / "c.html")]) == 0
    assert "not evaluated on the same examples" in capsys.readouterr().out


def test_compare_values_for_graded_metrics():
    """Per-example values (absolute errors: lower is better): the paired bootstrap of the mean
    difference, and the sign test on the examples where one run is strictly better."""
    from finetunekit.core.stats import compare_values

    rng = np.random.default_rng(0)
    errors_a = rng.uniform(0, 1, 200)
    better = compare_values(errors_a * 0.5, errors_a, "mae", higher_is_better=False)
    assert better.difference == pytest.approx(-0.5 * errors_a.mean())
    assert better.significant and better.only_a == 200 and better.only_b == 0
    assert better.ci[1] < 0 and "200 examples where A is better, 0 where B is (lower is better)" in better.summary()
    noise = compare_values(errors_a + rng.normal(0, 0.01, 200), errors_a, "mae", higher_is_better=False)
    assert not noise.significant and noise.ci[0] < 0 < noise.ci[1]
    same = compare_values(errors_a, errors_a, "mae", higher_is_better=False)
    assert same.p_value == 1.0 and same.only_a == same.only_b == 0

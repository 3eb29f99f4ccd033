import numpy as np
import pytest

from finetunekit.tasks.classification import classification_metrics, confusion_matrix, expected_calibration_error, format_metrics


def test_hand_computed_case():
    labels = np.array([0, 0, 0, 1, 1, 2])
    preds = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[preds] * 0.7 + 0.1
    m = classification_metrics(probs, labels, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    # a: P=2/2 R=2/3; b: P=1/2 R=1/2; c: P=1/2 R=1/1
    assert m["per_class"]["a"]["precision"] == pytest.approx(1.0)
    assert m["per_class"]["a"]["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["c"]["f1"] == pytest.approx(2 * 0.5 * 1 / 1.5)
    f1s = [2 * 1 * (2 / 3) / (1 + 2 / 3), 0.5, 2 / 3]
    assert m["macro_f1"] == pytest.approx(np.mean(f1s))
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert "accuracy 0.6667" in format_metrics(m)


def test_confusion_matrix_counts():
    assert confusion_matrix(np.array([1, 1]), np.array([0, 1]), 2).tolist() == [[0, 0], [1, 1]]


def test_ece_perfectly_calibrated_is_zero_and_overconfident_is_not():
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(probs, np.array([0, 1])) == pytest.approx(0.0)
    assert expected_calibration_error(probs, np.array([1, 0])) == pytest.approx(1.0)

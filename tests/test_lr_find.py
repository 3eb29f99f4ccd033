"""The learning-rate range test: the rules on a known curve, `finetunekit lr-find`, and
`train.lr: auto` / `train.head_lr: auto` in a run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from conftest import tiny_image_recipe
from finetunekit import train
from finetunekit.cli import main
from finetunekit.engine.lr_find import suggest


def test_rules_on_a_known_curve():
    lrs = list(np.logspace(-6, 0, 121))
    x = np.log10(lrs)
    # flat, a descent centred at 1e-3, a minimum at 1e-2, then divergence
    loss = 1.0 - 0.8 / (1 + np.exp(-3 * (x + 3))) + np.where(x > -2, 4 * (x + 2) ** 2, 0.0)
    found = suggest(lrs, list(loss))
    low = lrs[int(np.argmin(loss))]
    assert found["min/10"] == pytest.approx(low / 10)
    assert 10 ** -3.1 < found["steepest"] < 10 ** -2.9  # the sigmoid's steepest point


def test_head_lr_auto_runs_the_range_test_first(image_data, tmp_path, capsys):
    recipe = tiny_image_recipe(image_data, strategy={"name": "linear_probe"}, train={"lr": None, "head_lr": "auto", "epochs": 1})
    result = train(recipe, output=tmp_path / "run", quiet=True)
    found = json.loads((tmp_path / "run" / "lr_find.json").read_text())
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert found["rule"] == "min/10" and found["swept"] == "head_lr"
    assert saved["train"]["head_lr"] == found["rates"]["head_lr"] == result.recipe.train.head_lr
    assert saved["train"]["head_lr"] == pytest.approx(found["suggestion"], rel=1e-2)
    assert len(found["lrs"]) >= 20 and found["lrs"] == sorted(found["lrs"])
    assert (tmp_path / "run" / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "lr-find: train.head_lr = " in capsys.readouterr().out


def test_lr_find_command_and_its_errors(image_data, tmp_path, capsys):
    recipe = tiny_image_recipe(image_data, strategy={"name": "full"})
    (tmp_path / "r.yaml").write_text(recipe.to_yaml())
    assert main(["lr-find", str(tmp_path / "r.yaml"), "--output", str(tmp_path / "out"), "--steps", "40"]) == 0
    out = capsys.readouterr().out
    found = json.loads((tmp_path / "out" / "lr_find.json").read_text())
    assert found["swept"] == "lr" and set(found["rates"]) == {"lr", "head_lr"}
    assert "other rules: steepest" in out
    assert main(["lr-find", str(tmp_path / "r.yaml"), "--start", "1", "--end", "0.1"]) == 2
    # the backbone's rate cannot be found for a strategy that never trains the backbone
    assert main(["lr-find", str(tmp_path / "r.yaml"), "--set", "strategy.name=linear_probe", "--set", "train.lr=auto",
                 "--set", "train.head_lr=0.01"]) == 2
    assert "never trains the backbone" in capsys.readouterr().err

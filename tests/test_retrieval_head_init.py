"""A classification run whose head starts from an image-text run's zero-shot classifier
(``model.head_init: zero_shot:RUN_DIR``): before any training step it predicts what zero-shot
prediction of the same run predicts, and a run that cannot give such a head is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from finetunekit import Recipe, train
from finetunekit.cli import main
from finetunekit.core.errors import RecipeError
from test_retrieval import COLOURS, lit_run, pairs_data  # noqa: F401  (module fixtures: a tiny LiT run)


class _Stop(Exception):
    pass


def _folders(root: Path) -> Path:
    """Class folders of noisy colour pictures named by colour words the tiny run was trained on."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(3)
    for split, count in (("train", 3), ("val", 4)):
        for word in ("warm", "cold", "bright"):
            folder = root / split / word
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(np.array(COLOURS[word]) + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def _recipe(data: Path, backbone: str, head_init: str, seed: int = 0) -> Recipe:
    return Recipe.from_dict({
        "model": {"backbone": backbone, "pretrained": False, "image_size": 32, "head_init": head_init},
        "data": {"train": str(data / "train"), "val": str(data / "val")},
        "task": {"type": "classification"}, "strategy": {"name": "linear_probe"},
        "train": {"epochs": 1, "batch_size": 4, "seed": seed},
    })


def test_the_head_predicts_as_zero_shot_before_the_first_step(lit_run, tmp_path, monkeypatch):  # noqa: F811
    from finetunekit.retrieval.api import RetrievalModel
    from finetunekit.run import trainer

    data = _folders(tmp_path / "data")
    built = {}

    def stop(run, start, quiet):  # the run as built: the head set, no optimizer step taken
        built["run"] = run
        raise _Stop

    monkeypatch.setattr(trainer, "_fit", stop)
    with pytest.raises(_Stop):
        train(_recipe(data, f"run:{lit_run}", f"zero_shot:{lit_run}"), output=tmp_path / "run", quiet=True)
    run = built["run"]
    classes = list(run.task.output_names())
    assert sorted(classes) == ["bright", "cold", "warm"]
    model = run.accelerator.unwrap_model(run.model).eval()
    paths, predicted = [], []
    with torch.no_grad():
        for batch in run.val_loader:
            index = batch.pop("index")
            paths += [run.val_ex.inputs[int(i)] for i in index]
            predicted += [classes[int(i)] for i in model(batch).argmax(dim=1)]
    assert len(paths) == 12
    zero_shot = [a["label"] for a in RetrievalModel(lit_run).classify(paths, classes)]
    assert predicted == zero_shot


def test_a_head_that_cannot_be_zero_shot_is_refused(lit_run, tmp_path, capsys):  # noqa: F811
    data = _folders(tmp_path / "data")
    with pytest.raises(RecipeError, match=r"^model.head_init: expected 'zero_shot:RUN_DIR'"):
        _recipe(data, f"run:{lit_run}", str(lit_run))
    # another image tower: the same architecture with other weights (random, from another seed than the run's)
    with pytest.raises(RecipeError, match=r"^model.head_init: .*image tower .* has other weights than model.backbone"):
        train(_recipe(data, "timm:test_efficientnet", f"zero_shot:{lit_run}", seed=1), output=tmp_path / "a", quiet=True)
    # another architecture
    with pytest.raises(RecipeError, match=r"^model.head_init: .*image tower .* is not model.backbone"):
        train(_recipe(data, "timm:test_resnet", f"zero_shot:{lit_run}"), output=tmp_path / "a2", quiet=True)
    # a run that is not an image-text run, and a folder that is no run at all
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "finetunekit.json").write_text('{"format_version": 1, "kind": "classifier"}')
    with pytest.raises(RecipeError, match=r"^model.head_init: .*plain is not an image-text retrieval run"):
        train(_recipe(data, f"run:{lit_run}", f"zero_shot:{tmp_path / 'plain'}"), output=tmp_path / "b", quiet=True)
    # from the command line: one line, status 2
    recipe = _recipe(data, f"run:{lit_run}", f"zero_shot:{tmp_path / 'nothing'}")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe.to_dict()))
    assert main(["train", str(tmp_path / "r.yaml"), "--output", str(tmp_path / "c"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "model.head_init:" in err and "is not a finetunekit run directory" in err and "\n" not in err, err


def test_a_run_with_another_crop_names_it_and_its_own_tower_is_accepted(pairs_data, tiny_bert, tmp_path, monkeypatch):  # noqa: F811
    from test_retrieval import tiny_recipe

    from finetunekit.retrieval.train import train as train_retrieval
    from finetunekit.run import trainer

    run = train_retrieval(tiny_recipe(pairs_data, tiny_bert, model={"image_crop_pct": 1.0}, train={"epochs": 1}),
                          output=tmp_path / "whole", quiet=True).run_dir
    data = _folders(tmp_path / "data")
    # the same weights (seed 0, random) read with the backbone's own crop: refused, naming the crop
    with pytest.raises(RecipeError, match=r"^model.head_init: .*other preprocessing than model.backbone \(crop_pct: 1.0 against "
                                          r"0.9\d*\); use model.backbone: run:"):
        train(_recipe(data, "timm:test_efficientnet", f"zero_shot:{run}"), output=tmp_path / "a", quiet=True)

    def stop(built, start, quiet):
        raise _Stop

    monkeypatch.setattr(trainer, "_fit", stop)
    with pytest.raises(_Stop):  # the run's own tower, with its crop: the head is set and training would start
        train(_recipe(data, f"run:{run}", f"zero_shot:{run}"), output=tmp_path / "b", quiet=True)

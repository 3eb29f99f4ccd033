from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from finetunekit import Recipe
from finetunekit.errors import RecipeError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_and_roundtrip():
    recipe = Recipe.from_dict({"data": {"train": "x"}, "train": {"lr": "3e-4", "epochs": 2}})
    assert recipe.train.lr == pytest.approx(3e-4)
    assert recipe.train.epochs == 2
    again = Recipe.from_dict(yaml.safe_load(recipe.to_yaml()))
    assert again == recipe


def test_overrides_parse_values_and_leave_original_untouched():
    recipe = Recipe.from_dict({"data": {"train": "x"}})
    new = recipe.with_overrides(["train.lr=1e-3", "strategy.name=linear_probe", "train.early_stopping_patience=2", "data.val=null"])
    assert new.train.lr == pytest.approx(1e-3)
    assert new.strategy.name == "linear_probe"
    assert new.train.early_stopping_patience == 2
    assert recipe.train.lr is None and recipe.strategy.name is None


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"train": {"lrr": 1e-3}}, "unknown field 'train.lrr' (did you mean 'lr'?)"),
        ({"trian": {}}, "unknown field 'trian' (did you mean 'train'?)"),
        ({"train": {"lr": -1}}, "train.lr: -1.0 is out of range (0.0, 10.0]"),
        ({"train": {"epochs": 2.5}}, "train.epochs: expected an integer, got 2.5"),
        ({"train": {"optimizer": "adamx"}}, "train.optimizer: 'adamx' is not one of 'sgd', 'adam', 'adamw' (did you mean 'adam'?)"),
        ({"strategy": {"name": "linear_prob"}}, "unknown strategy 'linear_prob' (did you mean 'linear_probe'?)"),
        ({"model": {"pretrained": "yes"}}, "model.pretrained: expected true or false, got 'yes'"),
        ({"data": {"val_fraction": 1.5}}, "data.val_fraction: 1.5 is out of range (0.0, 1.0)"),
        ({"train": 3}, "train: expected a mapping of fields, got int"),
        ({"model": {"head_dropout": float("nan")}}, "model.head_dropout: must be a finite number, got nan"),
    ],
)
def test_errors_name_the_field(raw, message):
    with pytest.raises(RecipeError) as info:
        Recipe.from_dict(raw)
    assert str(info.value).startswith(message) or message in str(info.value)


def test_bad_override_syntax():
    with pytest.raises(RecipeError, match="expected section.field=value"):
        Recipe().with_overrides(["lr=1"])
    with pytest.raises(RecipeError, match="unknown section 'trian'"):
        Recipe().with_overrides(["trian.lr=1"])


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1,\n", encoding="utf-8")
    with pytest.raises(RecipeError, match=r"bad.yaml: not valid YAML at line"):
        Recipe.from_yaml(bad)
    with pytest.raises(RecipeError, match="recipe file not found"):
        Recipe.from_yaml(tmp_path / "missing.yaml")


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    recipe = Recipe.from_yaml(path)
    assert recipe.data.train, f"{path} names no training data"
    from finetunekit.backbones import SOURCES

    assert recipe.model.backbone.split(":", 1)[0] in SOURCES


def test_examples_exist():
    assert len(list((REPO / "examples").glob("*.yaml"))) >= 2


scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True), st.text(max_size=12))
fields = st.sampled_from(["lr", "epochs", "batch_size", "optimizer", "precision", "name", "backbone", "train", "val", "pooling", "bogus", "last_n", "seed"])
sections = st.sampled_from(["model", "data", "strategy", "train", "other"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(sections, st.one_of(scalars, st.dictionaries(fields, scalars, max_size=4)), max_size=4))
def test_random_recipes_validate_or_name_a_field(raw):
    """Random recipes either build or raise RecipeError/FinetuneError; never another exception."""
    from finetunekit.errors import FinetuneError

    try:
        Recipe.from_dict(raw)
    except FinetuneError as exc:
        assert str(exc)

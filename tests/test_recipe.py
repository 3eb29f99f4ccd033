from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from finetunekit import Recipe
from finetunekit.core.errors import RecipeError

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
        ({"strategy": {"setfit_iterations": -1}}, "strategy.setfit_iterations: -1 is out of range [0, 100000]"),
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
    from finetunekit.backbones import SOURCES
    from finetunekit.retrieval import RetrievalRecipe, is_retrieval_recipe

    if is_retrieval_recipe(path):  # a dual encoder: its own recipe type, two towers
        recipe = RetrievalRecipe.from_yaml(path)
        assert recipe.data.train, f"{path} names no training data"
        for tower in (recipe.model.image_backbone, recipe.model.text_backbone):
            assert tower.split(":", 1)[0] in SOURCES
        return
    recipe = Recipe.from_yaml(path)
    assert recipe.data.train, f"{path} names no training data"
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
    from finetunekit.core.errors import FinetuneError

    try:
        Recipe.from_dict(raw)
    except FinetuneError as exc:
        assert str(exc)


# -- the parser, property-based: every recipe builds, or fails naming a field whose removal fixes it --

import ast  # noqa: E402
import dataclasses  # noqa: E402
import re  # noqa: E402
import typing  # noqa: E402

from finetunekit.run.recipe import DataSpec, ModelSpec, StrategySpec, TrainSpec  # noqa: E402

SPECS = {"model": ModelSpec, "data": DataSpec, "strategy": StrategySpec, "train": TrainSpec}


def _plausible_values(hint) -> list:
    """Values a user might write for a field of this type: its choices, edges, and near misses."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return [*args, *(str(a).upper() for a in args), str(args[0])[:-1]]
    if origin is list:
        return [[], *[[v] for v in _plausible_values(args[0])[:3]], _plausible_values(args[0])[:1] * 2]
    if args:  # Optional[...] / unions
        return [v for a in args for v in ([None] if a is type(None) else _plausible_values(a))]
    if hint is bool:
        return [True, False, "yes", 0]
    if hint is int:
        return [0, 1, 2, 7, -1, 10**9, 10**13, 2.0, 2.5, "3"]
    if hint is float:
        return [0.0, 1e-4, 0.5, 1.0, 3.0, -0.1, 11.0, "3e-4", float("inf"), float("nan")]
    return ["", "x", "runs/a", "timm:resnet18", "bundled:efficientnet_lite0", 3]


FIELD_VALUES = {
    (section, f.name): _plausible_values(typing.get_type_hints(spec)[f.name])
    for section, spec in SPECS.items() for f in dataclasses.fields(spec)
}
junk = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8), st.lists(st.integers(), max_size=2),
                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@st.composite
def recipe_dicts(draw):
    raw: dict = {}
    for section in draw(st.lists(st.sampled_from([*SPECS, "trian", "optim", "Model"]), max_size=5, unique=True)):
        if section not in SPECS or draw(st.integers(0, 9)) == 0:
            raw[section] = draw(st.one_of(junk, st.dictionaries(st.sampled_from(["lr", "x"]), junk, max_size=2)))
            continue
        names = [f.name for f in dataclasses.fields(SPECS[section])]
        body = {}
        for name in draw(st.lists(st.sampled_from(names + [names[0] + "s", names[-1][:-1], "bogus"]), max_size=6, unique=True)):
            known = (section, name) in FIELD_VALUES
            body[name] = draw(st.sampled_from(FIELD_VALUES[(section, name)]) if known and draw(st.booleans()) else junk)
        raw[section] = body
    return raw


def _named_path(message: str) -> str:
    """The recipe path an error message names first ('train.lr', 'trian', ...)."""
    unknown = re.match(r"unknown field ('.*?'|\".*?\")(?: \(did you mean|; known)", message)
    if unknown:
        return ast.literal_eval(unknown.group(1))
    return re.sub(r"\[\d+\]$", "", message.split(": ")[0])


def _remove(raw: dict, path: str) -> dict:
    section, _, name = path.partition(".")
    key = next(k for k in raw if str(k) == section)
    if not name:
        return {k: v for k, v in raw.items() if k != key}
    assert isinstance(raw[key], dict) and name in raw[key], f"{path!r} is not in the recipe"
    return {**raw, key: {k: v for k, v in raw[key].items() if k != name}}


@settings(max_examples=400, deadline=None)
@given(recipe_dicts())
def test_errors_name_a_field_whose_removal_fixes_them(raw):
    """Random recipes (known, misspelled and unknown sections and fields; choices, edges, junk
    values) either build, and then survive a YAML round trip unchanged, or raise RecipeError naming
    a field that is in the recipe; removing it makes that error go away. Repeating this always ends
    in a valid recipe, and no other exception ever escapes."""
    from finetunekit.core.errors import RecipeError

    seen = []
    while True:
        try:
            recipe = Recipe.from_dict(raw)
        except RecipeError as exc:
            path = _named_path(str(exc))
            assert path not in seen, f"{exc} names {path!r} again after it was removed"
            seen.append(path)
            raw = _remove(raw, path)
            continue
        assert Recipe.from_dict(yaml.safe_load(recipe.to_yaml())) == recipe
        return


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=30), st.builds(
    lambda s, f, v: f"{s}.{f}={v}", st.sampled_from([*SPECS, "trian"]),
    st.sampled_from([f for _, f in FIELD_VALUES] + ["lrr"]), st.text(max_size=10))), max_size=4))
def test_random_overrides_apply_or_name_the_override(overrides):
    from finetunekit.core.errors import RecipeError

    try:
        Recipe().with_overrides(overrides)
    except RecipeError as exc:
        message = str(exc)
        assert "\n" not in message
        assert message.startswith("override ") or _named_path(message).split(".")[0] in SPECS


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_random_yaml_text_builds_or_fails_naming_the_file(tmp_path_factory, text):
    from finetunekit.core.errors import RecipeError

    path = tmp_path_factory.mktemp("yaml") / "r.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        Recipe.from_yaml(path)
    except RecipeError as exc:
        assert str(exc).startswith(f"{path}: ")

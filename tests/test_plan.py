"""The resolve step (finetunekit.run.plan): types, options, defaults, checks and the metric are fixed
once, from the recipe and its data, in that order; recipe.yaml files of older runs still load."""

from __future__ import annotations

import pytest
from conftest import write_tsv

from finetunekit import Recipe
from finetunekit.core.errors import RecipeError
from finetunekit.run.plan import resolve
from finetunekit.tasks import TASKS


def _scores(tmp_path):
    rows = [(f"text number {i}", f"{0.25 + 0.5 * (i % 7):.2f}") for i in range(24)]
    return write_tsv(tmp_path / "scores.tsv", rows, ("sentence", "score"))


def test_an_inferred_type_gets_its_options_defaults_metric_and_direction(tmp_path, capsys):
    recipe = Recipe.from_dict({"model": {"backbone": "bundled:minilm_l6"},
                               "data": {"train": str(_scores(tmp_path)), "label_column": "score"}, "task": {"loss": "huber"}})
    assert recipe.task.type is None and recipe.task.option("loss") == "huber"
    plan = resolve(recipe, "text", say=print)
    assert "task: regression (the labels are numbers, not all integers" in capsys.readouterr().out
    task = plan.recipe.task
    assert task.type == "regression" and type(task.options) is TASKS.get("regression").Options
    assert (task.option("loss"), task.option("huber_delta"), task.option("standardize")) == ("huber", 1.0, True)
    assert plan.recipe.train.epochs == 3 and plan.recipe.strategy.name == "full"  # the modality's defaults
    assert (plan.metric, plan.direction, plan.higher_is_better) == ("rmse", "minimize", False)
    assert len(plan.train) + len(plan.val) == 24 and plan.task.type == "regression"
    # the plan's recipe is what the run saves, and resolving it again changes nothing
    again = resolve(Recipe.from_dict(plan.recipe.to_dict()), "text")
    assert again.recipe == plan.recipe


def test_an_option_of_another_type_is_refused_once_the_type_is_inferred(tmp_path):
    recipe = Recipe.from_dict({"data": {"train": str(_scores(tmp_path)), "label_column": "score"}, "task": {"separator": ";"}})
    with pytest.raises(RecipeError, match=r"^task\.separator: applies to multilabel tasks only, and this task is regression"):
        resolve(recipe, "text")


def test_a_task_type_brings_its_own_defaults():
    from finetunekit.run.defaults import resolve as fill_defaults

    detection = fill_defaults(Recipe.from_dict({"task": {"type": "detection"}}), "image")
    cls = TASKS.get("detection")
    assert detection.strategy.name == cls.strategy_defaults["name"] and detection.strategy.last_n == cls.strategy_defaults["last_n"]
    assert {k: getattr(detection.train, k) for k in cls.train_defaults} == cls.train_defaults
    assert fill_defaults(Recipe.from_dict({}), "image").strategy.name == "linear_probe"


def test_recipe_files_of_older_runs_load_and_the_new_ones_list_the_type_own_options():
    every = ["loss", "huber_delta", "standardize", "separator", "pos_weight", "threshold", "classes", "ignore_index",
             "input_size", "decoder", "dice_weight", "head", "score_threshold", "nms_iou", "max_detections", "max_boxes", "fpn_channels"]
    old = {"type": "regression", "name": None, "label_column": None, "weight": None, **dict.fromkeys(every),
           "loss": "mse", "huber_delta": 1.0, "standardize": True}
    recipe = Recipe.from_dict({"task": old})
    assert recipe.to_dict()["task"] == {"type": "regression", "name": None, "label_column": None, "weight": None,
                                        "loss": "mse", "huber_delta": 1.0, "standardize": True}
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    # an older run's tasks: entries too
    entries = [{**old, "name": "score", "label_column": "score", "weight": 1.0}]
    assert Recipe.from_dict({"tasks": entries}).tasks[0].option("loss") == "mse"
    with pytest.raises(RecipeError, match=r"^task\.separator: applies to multilabel tasks only"):
        Recipe.from_dict({"task": {**old, "separator": "|"}})
    with pytest.raises(RecipeError, match=r"^unknown field 'task\.losss' \(did you mean 'loss'\?\); known: type, name, label_column, weight, loss"):
        Recipe.from_dict({"task": {"type": "regression", "losss": "mse"}})

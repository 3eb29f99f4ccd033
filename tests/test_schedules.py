"""Fine-tuning schedules and per-layer rates: gradual unfreezing, LP-FT, layer-wise LR decay.

Each training test reads the weights an epoch left behind from the run's own epoch-end checkpoints
(``train.keep_checkpoints_when_done``) and the learning rates each optimizer step used from
``steps.jsonl``, so it checks what actually trained, not what the strategy says it would.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_image_recipe
from finetunekit import Recipe, report, train
from finetunekit.run.artifacts import read_jsonl
from finetunekit.backbones import create_backbone
from finetunekit.run.checkpoint import Checkpointer, list_checkpoints, read_checkpoint
from finetunekit.run.defaults import resolve
from finetunekit.engine import LRSchedule, build_optimizer
from finetunekit.engine.optim import format_param_groups, param_group_rows
from finetunekit.core.errors import RecipeError
from finetunekit.tasks.heads import LinearHead
from finetunekit.run.model import FineTuneModel
from finetunekit.run.recipe import StrategySpec, TrainSpec
from finetunekit.strategies import STRATEGIES
from run_outputs import comparable, differences

LR, HEAD_LR, DECAY = 1e-3, 1e-2, 0.5
STEPS_PER_EPOCH = 3  # 24 training images, batches of 8
KEEP = {"checkpoint_every_steps": 1, "keep_checkpoints": 50, "keep_checkpoints_when_done": True, "restore_best": False}


@pytest.fixture(autouse=True)
def no_html_report(monkeypatch):
    """The end-of-training report (matplotlib) would take most of each tiny run's time; the one
    plot that depends on the parameter groups is tested on its own below."""
    monkeypatch.setattr(report, "write_report_after_training", lambda run_dir, quiet, **_: None)


def recipe_for(image_data: Path, strategy: dict, **train_fields) -> Recipe:
    train_spec = {"lr": LR, "head_lr": HEAD_LR, "scheduler": "cosine", "warmup_ratio": 0.0, **KEEP, **train_fields}
    return tiny_image_recipe(image_data, strategy=strategy, train=train_spec)


# -- reading what a run did ------------------------------------------------------------------------


def initial_weights(recipe: Recipe) -> dict[str, torch.Tensor]:
    """The backbone exactly as train() builds it before the first step (seeded, then created)."""
    seed = recipe.train.seed
    random.seed(seed); np.random.seed(seed); torch.manual_seed(seed)  # noqa: E702
    m = recipe.model
    backbone = create_backbone(m.backbone, m.pretrained, m.pooling, m.image_size)
    return {f"backbone.{k}": v for k, v in backbone.state_dict().items()}


def epoch_weights(run_dir: Path) -> list[dict[str, torch.Tensor]]:
    """Weights at the end of each epoch, from the epoch-end checkpoints (batch 0 of the next epoch)."""
    loaded = [read_checkpoint(p) for p in list_checkpoints(run_dir)]
    return [c.tensors["model"] for c in loaded if c.position.batch == 0]


def layer_groups(recipe: Recipe) -> list[list[str]]:
    m = recipe.model
    return create_backbone(m.backbone, False, m.pooling, m.image_size).layer_groups()


def changed_groups(before: dict, after: dict, groups: list[list[str]]) -> tuple[set[int], set[str]]:
    """(layer groups any of whose parameters or BatchNorm statistics changed, other changed keys)."""
    module_group = {f"backbone.{name.rsplit('.', 1)[0]}": i for i, group in enumerate(groups) for name in group}
    changed = {k for k in before if k.startswith("backbone.") and not torch.equal(before[k], after[k])}
    found = {module_group[k.rsplit(".", 1)[0]] for k in changed if k.rsplit(".", 1)[0] in module_group}
    return found, {k for k in changed if k.rsplit(".", 1)[0] not in module_group}


def head_changed(before: dict, after: dict) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before if k.startswith("head."))


def assert_trained_per_epoch(recipe: Recipe, run_dir: Path, scheduled: list[set[int]]) -> None:
    """Epoch e changed exactly the layer groups ``scheduled[e]`` (parameters or BatchNorm
    statistics; every other group bitwise unchanged), and the head."""
    groups = layer_groups(recipe)
    ends = epoch_weights(run_dir)
    assert len(ends) == len(scheduled)
    before = {**initial_weights(recipe), **{k: v for k, v in ends[0].items() if k.startswith("head.")}}
    for epoch, (after, expected) in enumerate(zip(ends, scheduled, strict=True)):
        found, unknown = changed_groups(before, after, groups)
        assert (found, unknown) == (expected, set()), f"epoch {epoch + 1}"
        if epoch:
            assert head_changed(before, after), f"epoch {epoch + 1}: the head did not train"
        before = after


def lr_trace(run_dir: Path) -> list[dict]:
    return read_jsonl(run_dir / "steps.jsonl")


# -- gradual unfreezing and layer-wise decay (one run, also the resume reference) -------------------

GRADUAL = {"name": "gradual_unfreeze", "layer_decay": DECAY}


@pytest.fixture(scope="module")
def gradual_run(image_data, tmp_path_factory):
    recipe = recipe_for(image_data, GRADUAL, epochs=3)
    mp = pytest.MonkeyPatch()
    mp.setattr(report, "write_report_after_training", lambda run_dir, quiet, **_: None)
    result = train(recipe, output=tmp_path_factory.mktemp("gradual") / "run", quiet=True)
    mp.undo()
    return recipe, result


def test_gradual_unfreeze_trains_one_more_group_per_epoch(gradual_run):
    recipe, result = gradual_run
    n = len(layer_groups(recipe))
    assert_trained_per_epoch(recipe, result.run_dir, [set(), {n - 1}, {n - 2, n - 1}])


def test_layer_decay_rates_in_the_trace(gradual_run):
    """Backbone group i of n at lr * d**(n-1-i), the head at head_lr, both times the schedule's
    multiplier; one cosine schedule over the whole run (gradual unfreezing never restarts it)."""
    recipe, result = gradual_run
    n = len(layer_groups(recipe))
    trace = lr_trace(result.run_dir)
    assert len(trace) == 3 * STEPS_PER_EPOCH
    schedule = LRSchedule("cosine", len(trace), 0.0)
    for record in trace:
        m = schedule.multiplier(record["step"] - 1)  # a record's step is counted after the step
        expected = {f"backbone.{i}": LR * DECAY ** (n - 1 - i) * m for i in range(n)} | {"head": HEAD_LR * m}
        assert record["lr"] == pytest.approx(expected, rel=1e-12, abs=0.0)
    assert [r["name"] for r in result.param_groups] == [*(f"backbone.{i}" for i in range(n)), "head"]
    # the rows were taken as training started: only the head trains in the first epoch
    assert [r["trainable"] > 0 for r in result.param_groups] == [False] * n + [True]


def test_gradual_unfreeze_milestones_and_log(image_data, tmp_path, capsys):
    recipe = recipe_for(image_data, {"name": "gradual_unfreeze", "unfreeze_milestones": [2, 3]}, epochs=4,
                        checkpoint_every_steps=None)
    result = train(recipe, output=tmp_path / "run", quiet=False)
    n = len(layer_groups(recipe))
    assert_trained_per_epoch(recipe, result.run_dir, [set(), set(), {n - 1}, {n - 2, n - 1}])
    out = capsys.readouterr().out
    assert f"epoch 3: unfroze backbone group {n - 1} (0 is the input end); 1 of {n} backbone groups train now" in out
    assert f"epoch 4: unfroze backbone group {n - 2} (0 is the input end); 2 of {n} backbone groups train now" in out
    assert "epoch 2: unfroze" not in out
    # the parameter-group table: without layer_decay one backbone group, as before
    table = re.search(r"param group +params +trainable +base lr\n(.*\n){2}", out)
    assert table, out
    rows = [line.split() for line in table.group(0).splitlines()[1:]]
    assert [(r[0], r[2], float(r[3])) for r in rows] == [("backbone", "0", LR), ("head", "771", HEAD_LR)]


# -- LP-FT -----------------------------------------------------------------------------------------


def test_lp_ft_probes_then_fine_tunes_everything_at_the_backbone_rate(image_data, tmp_path):
    recipe = recipe_for(image_data, {"name": "lp_ft", "lp_epochs": 1}, epochs=3, warmup_ratio=0.3,
                        checkpoint_every_steps=None)
    result = train(recipe, output=tmp_path / "run", quiet=True)
    groups = layer_groups(recipe)
    ends = epoch_weights(result.run_dir)
    start = initial_weights(recipe)
    # linear probe: the backbone, BatchNorm statistics included, bitwise unchanged
    assert changed_groups(start, ends[0], groups) == (set(), set())
    # then everything trains: every layer group moves in each fine-tuning epoch, and the head
    for before, after in zip(ends, ends[1:], strict=False):
        assert changed_groups(before, after, groups)[0] == set(range(len(groups)))
        assert head_changed(before, after)
    # rates: phase 1 head at head_lr; phase 2 restarts the schedule (warmup again), head at lr too
    trace = lr_trace(result.run_dir)
    phase1, phase2 = LRSchedule("cosine", STEPS_PER_EPOCH, 0.3), LRSchedule("cosine", STEPS_PER_EPOCH, 0.3)
    phase2.restart(STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH)
    for record in trace:
        step = record["step"] - 1
        if step < STEPS_PER_EPOCH:
            expected = {"backbone": LR * phase1.multiplier(step), "head": HEAD_LR * phase1.multiplier(step)}
        else:
            expected = {"backbone": LR * phase2.multiplier(step), "head": LR * phase2.multiplier(step)}
        assert record["lr"] == pytest.approx(expected, rel=1e-12, abs=0.0)
    backbone, head = [r["lr"]["backbone"] for r in trace], [r["lr"]["head"] for r in trace]
    assert backbone[STEPS_PER_EPOCH] > backbone[STEPS_PER_EPOCH - 1]  # the restart: the rate rises again
    assert max(head[STEPS_PER_EPOCH:]) == pytest.approx(LR)  # phase 2 peaks at train.lr, not head_lr


def _tiny_model():
    torch.manual_seed(0)
    backbone = create_backbone("timm:test_efficientnet", pretrained=False, image_size=32)
    return FineTuneModel(backbone, LinearHead(backbone.num_features, 3))


def _set_up(spec: StrategySpec, model=None):
    model = model or _tiny_model()
    strategy = STRATEGIES.get(spec.name)(spec)
    optimizer = build_optimizer(TrainSpec(lr=LR, weight_decay=0.01), strategy.setup(model, lr=LR, head_lr=HEAD_LR))
    return model, strategy, optimizer


def _rates(optimizer) -> dict[str, float]:
    return {g["name"]: g["base_lr"] for g in optimizer.param_groups}


def test_lp_ft_and_freeze_then_unfreeze_differ_only_in_the_heads_rate():
    for name, head_after in [("lp_ft", LR), ("freeze_then_unfreeze", HEAD_LR)]:
        model, strategy, optimizer = _set_up(StrategySpec(name=name, lp_epochs=2, freeze_epochs=2))
        assert [strategy.backbone_frozen_at(e) for e in range(4)] == [True, True, False, False]
        assert strategy.on_epoch_start(1, model, optimizer) is None
        message = strategy.on_epoch_start(2, model, optimizer)
        assert message and "schedule restarted" in message and strategy.restarts_schedule(2)
        assert all(p.requires_grad for p in model.parameters())
        assert _rates(optimizer) == {"backbone": LR, "head": head_after}, name


# -- resume mid-schedule ---------------------------------------------------------------------------


class Killed(BaseException):
    """Stands for the process being killed: nothing in finetunekit catches it."""


def test_resume_mid_schedule_restores_the_unfrozen_groups(gradual_run, tmp_path, monkeypatch):
    """Stopped after step 4 (epoch 2, batch 1 of 3: group n-1 just unfrozen) and resumed: the
    resumed process has group n-1 trainable before its first batch, and ends bitwise identical to
    the uninterrupted run. A resume that re-froze (epoch 0's phase) would leave group n-1 untouched
    for the rest of epoch 2."""
    recipe, reference = gradual_run
    n = len(layer_groups(recipe))
    save = Checkpointer.save

    def save_then_die(self, position, extra, is_best=False):
        path = save(self, position, extra, is_best)
        if position.step == STEPS_PER_EPOCH + 1:
            raise Killed
        return path

    monkeypatch.setattr(Checkpointer, "save", save_then_die)
    with pytest.raises(Killed):
        train(recipe, output=tmp_path / "run", quiet=True)
    monkeypatch.setattr(Checkpointer, "save", save)

    after_restore = {}
    restore = Checkpointer.restore

    def restore_and_look(self, loaded):
        state = restore(self, loaded)
        model = self.parts.accelerator.unwrap_model(self.parts.model)
        after_restore["trainable"] = {i for i, g in enumerate(model.backbone.layer_groups())
                                      if all(dict(model.backbone.named_parameters())[p].requires_grad for p in g)}
        after_restore["frozen"] = {i for i, g in enumerate(model.backbone.layer_groups())
                                   if not any(dict(model.backbone.named_parameters())[p].requires_grad for p in g)}
        after_restore["rates"] = {g["name"]: g["base_lr"] for g in self.parts.optimizer.param_groups}
        return state

    monkeypatch.setattr(Checkpointer, "restore", restore_and_look)
    resumed = train(recipe, output=tmp_path / "run", quiet=True, resume=True)
    assert after_restore["trainable"] == {n - 1} and after_restore["frozen"] == set(range(n - 1))
    assert after_restore["rates"] == {f"backbone.{i}": LR * DECAY ** (n - 1 - i) for i in range(n)} | {"head": HEAD_LR}
    assert [r["trainable"] > 0 for r in resumed.param_groups] == [False] * (n - 1) + [True, True]  # the resumed phase
    assert differences(comparable(resumed.run_dir), comparable(reference.run_dir)) == []


def test_strategy_state_round_trip_restores_flags_and_rates():
    """Unit level, for each phased strategy: a fresh set-up (epoch 0's phase) loading a later
    epoch's strategy and optimizer state is in that epoch's phase."""
    specs = [StrategySpec(name="gradual_unfreeze", unfreeze_every=2, layer_decay=0.8),
             StrategySpec(name="lp_ft", lp_epochs=1), StrategySpec(name="freeze_then_unfreeze", layer_decay=0.9)]
    for spec in specs:
        model, strategy, optimizer = _set_up(spec)
        for epoch in range(5):
            strategy.on_epoch_start(epoch, model, optimizer)
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        model2, strategy2, optimizer2 = _set_up(spec)
        optimizer2.load_state_dict(optimizer.state_dict())
        for group in optimizer2.param_groups:  # as if the optimizer state had lost the rates
            group["base_lr"] = 0.0
        strategy2.load_state_dict(strategy.state_dict(), model2, optimizer2)
        assert {n: p.requires_grad for n, p in model2.named_parameters()} == flags, spec.name
        assert _rates(optimizer2) == _rates(optimizer), spec.name


# -- the pieces ------------------------------------------------------------------------------------


def test_parameter_groups_with_and_without_layer_decay():
    model, _, optimizer = _set_up(StrategySpec(name="full"))
    assert _rates(optimizer) == {"backbone": LR, "head": HEAD_LR}  # the names as before layer_decay
    model, _, optimizer = _set_up(StrategySpec(name="last_n", last_n=2, layer_decay=0.5), model)
    n = len(model.backbone.layer_groups())
    rows = param_group_rows(optimizer)
    assert [r["name"] for r in rows] == [*(f"backbone.{i}" for i in range(n)), "head"]
    assert [r["lr"] for r in rows] == pytest.approx([LR * 0.5 ** (n - 1 - i) for i in range(n)] + [HEAD_LR])
    assert sum(r["params"] for r in rows) == sum(p.numel() for p in model.parameters())  # frozen ones too
    assert [r["trainable"] == r["params"] for r in rows] == [False] * (n - 2) + [True] * 3
    lines = format_param_groups(rows).splitlines()
    assert lines[0].split() == ["param", "group", "params", "trainable", "base", "lr"] and len(lines) == n + 2


def test_gradual_unfreeze_frozen_epochs_and_too_many_milestones():
    every = STRATEGIES.get("gradual_unfreeze")(StrategySpec(name="gradual_unfreeze", unfreeze_every=2))
    assert [every.backbone_frozen_at(e) for e in range(4)] == [True, True, False, False]
    late = STRATEGIES.get("gradual_unfreeze")(StrategySpec(name="gradual_unfreeze", unfreeze_milestones=[3, 5]))
    assert [late.backbone_frozen_at(e) for e in range(5)] == [True, True, True, False, False]
    with pytest.raises(RecipeError, match=r"^strategy.unfreeze_milestones: 7 milestones for a backbone with 6 layer groups"):
        _set_up(StrategySpec(name="gradual_unfreeze", unfreeze_milestones=list(range(1, 8))))


@pytest.mark.parametrize("strategy, train_fields, message", [
    ({"unfreeze_milestones": [2, 2]}, {}, "strategy.unfreeze_milestones: [2, 2] must be strictly increasing"),
    ({"unfreeze_milestones": [0, 2]}, {}, "strategy.unfreeze_milestones[0]: 0 is out of range [1, 100000]"),
    ({"unfreeze_milestones": []}, {}, "strategy.unfreeze_milestones: give at least one epoch count"),
    ({"unfreeze_every": 0}, {}, "strategy.unfreeze_every: 0 is out of range [1, 10000]"),
    ({"layer_decay": 0.0}, {}, "strategy.layer_decay: 0.0 is out of range (0.0, 1.0]"),
    ({"layer_decay": 1.5}, {}, "strategy.layer_decay: 1.5 is out of range (0.0, 1.0]"),
    ({"name": "lora", "layer_decay": 0.5}, {}, "strategy.layer_decay: has no effect with strategy lora"),
    ({"lp_epochs": 0, "name": "lp_ft"}, {}, "strategy.lp_epochs: 0 is out of range [1, 10000]"),
    ({"name": "lp_ft", "lp_epochs": 3}, {"epochs": 3}, "train.epochs: 3 leaves no fine-tuning epoch after strategy.lp_epochs=3"),
    ({"unfreeze_milestones": [1, 4]}, {"epochs": 4}, "train.epochs: 4 epochs end before strategy.unfreeze_milestones = 4"),
    ({"unfreeze_every": 2}, {"epochs": 2}, "train.epochs: 2 epochs end before strategy.unfreeze_every = 2"),
])
def test_recipe_errors_name_the_field(strategy, train_fields, message):
    raw = {"strategy": {"name": "gradual_unfreeze", **strategy}, "train": train_fields}
    with pytest.raises(RecipeError) as info:
        Recipe.from_dict(raw)
    assert str(info.value).startswith(message), str(info.value)


def test_lp_epochs_checked_against_the_default_epochs_at_resolve_time():
    recipe = Recipe.from_dict({"strategy": {"name": "lp_ft", "lp_epochs": 5}})  # epochs unknown yet: fine
    with pytest.raises(RecipeError, match=r"^train.epochs: 5 leaves no fine-tuning epoch"):
        resolve(recipe, "image")  # images default to 5 epochs
    assert resolve(recipe.with_overrides(["train.epochs=6"]), "image").train.epochs == 6


def test_lr_plot_shades_per_layer_groups(gradual_run, tmp_path):
    from finetunekit.report import plots
    from finetunekit.report.run_data import load_run

    _, result = gradual_run
    run_dir = tmp_path / "run"
    shutil.copytree(result.run_dir, run_dir, ignore=shutil.ignore_patterns("checkpoints"))
    plot = plots.lr_curves(load_run(run_dir))
    assert plot.png.startswith(b"\x89PNG")
    colors = plots._group_colors(["backbone.0", "backbone.1", "backbone.2", "head"])
    assert len(set(map(str, colors.values()))) == 4 and colors["head"] != plots.COLORS[0]

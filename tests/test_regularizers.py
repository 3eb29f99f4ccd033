"""Regularisation towards the pretrained model (L2-SP, feature distillation) and the overfitting
controls (mixup/cutmix, weight averaging, class weights, balanced sampling, strong augmentation):
exact values on hand-built cases, the loss parts in the logs, and exact resume."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import make_image_folder, tiny_image_recipe, tiny_text_recipe
from finetunekit import train
from finetunekit.backbones.base import Backbone
from finetunekit.run.checkpoint import Checkpointer, list_checkpoints, read_checkpoint
from finetunekit.data.pipeline import BalancedBatchSampler, ImageDataset, augment_seed, image_transform
from finetunekit.engine import build_optimizer
from finetunekit.engine.ema import ModelEMA
from finetunekit.engine.objective import Mixer, Objective
from finetunekit.tasks.heads import LinearHead
from finetunekit.tasks.classification import ClassificationTask, LabelMap, balanced_class_weights
from finetunekit.core.errors import RecipeError
from finetunekit.run.model import FineTuneModel
from finetunekit.run.recipe import Recipe, StrategySpec, TrainSpec
from finetunekit.strategies import STRATEGIES
from finetunekit.strategies.regularizers import (
    L2SP,
    FeatureDistillation,
    build_regularizers,
    without_backbone_decay,
)
from run_outputs import comparable, differences


class TinyBackbone(Backbone):
    """features = W x + b on a 2-vector input: small enough to compute the terms by hand."""

    modality = "image"
    kind = "tiny"

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(2, 2)
        self.num_features = 2

    def forward_features(self, batch):
        return self.proj(batch["pixel_values"])

    def layer_groups(self):
        return [["proj.weight", "proj.bias"]]


def tiny_model() -> FineTuneModel:
    backbone = TinyBackbone()
    model = FineTuneModel(backbone, LinearHead(backbone.num_features, 2))
    with torch.no_grad():
        model.backbone.proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        model.backbone.proj.bias.zero_()
    return model


def cpu_accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


# -- L2-SP -----------------------------------------------------------------------------------------


def test_l2sp_penalty_is_the_formula_over_trained_backbone_parameters_and_the_head_weights():
    model = tiny_model()
    term = L2SP(model, alpha=0.5, beta=0.2)  # w0 = the weights now
    with torch.no_grad():
        model.backbone.proj.weight.add_(torch.tensor([[1.0, -1.0], [2.0, 0.0]]))  # ||w - w0||^2 = 6
        model.backbone.proj.bias.add_(5.0)  # frozen below: contributes nothing
        model.head.fc.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 0.0]]))  # ||W_head||^2 = 14
        model.head.fc.bias.fill_(10.0)  # a bias is not penalised (as weight decay)
    model.backbone.proj.bias.requires_grad_(False)
    value = term({}, None)
    assert value.item() == pytest.approx(0.5 / 2 * 6 + 0.2 / 2 * 14, abs=1e-6)  # 1.5 + 1.4
    value.backward()
    # d/dw alpha/2 ||w - w0||^2 = alpha (w - w0)
    assert torch.allclose(model.backbone.proj.weight.grad, 0.5 * torch.tensor([[1.0, -1.0], [2.0, 0.0]]))
    model.backbone.proj.weight.requires_grad_(False)  # a fully frozen backbone: the head term alone
    assert term({}, None).item() == pytest.approx(1.4, abs=1e-6)


def test_l2sp_turns_weight_decay_off_for_the_backbone_groups_only():
    model = tiny_model()
    groups = [
        {"name": "backbone.0", "params": [model.backbone.proj.weight], "base_lr": 1e-3},
        {"name": "head", "params": list(model.head.parameters()), "base_lr": 1e-2},
    ]
    optimizer = build_optimizer(TrainSpec(lr=1e-3, weight_decay=0.05), without_backbone_decay(groups))
    decay = {(g["name"], len(g["params"][0].shape)): g["weight_decay"] for g in optimizer.param_groups}
    assert decay == {("backbone.0", 2): 0.0, ("head", 2): 0.05, ("head", 1): 0.0}


# -- distillation ----------------------------------------------------------------------------------


def test_distillation_is_zero_at_the_start_positive_after_the_backbone_moved_and_skipped_when_frozen():
    model = tiny_model()
    term = FeatureDistillation(model, weight=2.0, accelerator=cpu_accelerator())
    batch = {"pixel_values": torch.tensor([[1.0, 2.0], [3.0, -1.0]])}
    _, features = model(batch, return_features=True)
    assert term(batch, features).item() == 0.0
    with torch.no_grad():
        model.backbone.proj.bias.add_(torch.tensor([1.0, 3.0]))  # every feature moves by (1, 3)
    _, features = model(batch, return_features=True)
    assert term(batch, features).item() == pytest.approx(2.0 * (1 + 9) / 2)  # weight x mean of squares
    assert not term.teacher.training and not any(p.requires_grad for p in term.teacher.parameters())

    def must_not_run(batch):
        raise AssertionError("the frozen copy ran")

    term.teacher.forward_features = must_not_run
    cached = {**batch, "features": features.detach()}  # a batch from the feature cache
    assert term(cached, features).item() == 0.0
    model.backbone.requires_grad_(False)
    assert term(batch, model(batch, return_features=True)[1]).item() == 0.0


def test_no_frozen_copy_is_built_when_the_backbone_never_trains(capsys):
    model = tiny_model()
    spec = StrategySpec(name="linear_probe", l2sp_alpha=0.1, l2sp_beta=0.01, distill_weight=1.0)
    terms = STRATEGIES.get("linear_probe")(spec).loss_terms(model, cpu_accelerator(), epochs=3)
    assert [t.name for t in terms] == ["l2sp"] and terms[0].alpha == 0.0 and terms[0].beta == 0.01
    assert "strategy.l2sp_alpha and strategy.distill_weight have no effect" in capsys.readouterr().err
    assert build_regularizers(StrategySpec(name="full"), model, cpu_accelerator()) == []


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_loss_parts_are_logged_per_step_and_per_epoch_and_add_up_to_the_total(image_data, tmp_path):
    recipe = tiny_image_recipe(
        image_data,
        # frozen BatchNorm statistics and no dropout: the backbone equals its frozen copy at step 0
        strategy={"name": "full", "batchnorm": "frozen", "l2sp_alpha": 1.0, "l2sp_beta": 0.1, "distill_weight": 10.0},
        train={"lr": 1e-2, "label_smoothing": 0.1},
    )
    result = train(recipe, output=tmp_path / "run", quiet=True)
    steps = _jsonl(result.run_dir / "steps.jsonl")
    assert len(steps) == 6
    for record in steps:
        parts = record["loss_task"] + record["loss_l2sp"] + record["loss_distill"]
        assert record["loss"] == pytest.approx(parts, rel=1e-6)
    first, later = steps[0], steps[1:]
    assert first["loss_distill"] == 0.0  # before the first update the backbone is the pretrained one
    assert first["loss_l2sp"] == pytest.approx(0.1 / 2 * float((result_head_weight_at_start(recipe) ** 2).sum()), rel=1e-5)
    assert all(r["loss_distill"] > 0 for r in later)
    epochs = _jsonl(result.run_dir / "metrics.jsonl")
    for record, in_epoch in zip(epochs, (steps[:3], steps[3:]), strict=True):
        total = record["train_loss_task"] + record["train_loss_l2sp"] + record["train_loss_distill"]
        assert record["train_loss"] == pytest.approx(total, rel=1e-6)
        # 3 steps of 8 examples each: the epoch's parts are the means of its steps'
        assert record["train_loss_distill"] == pytest.approx(sum(r["loss_distill"] for r in in_epoch) / 3, rel=1e-6)


def result_head_weight_at_start(recipe) -> torch.Tensor:
    """The head's initial weight as train() draws it (seed, then backbone, then head)."""
    import random

    import numpy as np

    from finetunekit.backbones import create_backbone

    random.seed(0); np.random.seed(0); torch.manual_seed(0)  # noqa: E702
    spec = recipe.model
    backbone = create_backbone(spec.backbone, spec.pretrained, spec.pooling, spec.image_size)
    return FineTuneModel(backbone, LinearHead(backbone.num_features, 3)).head.fc.weight.detach()


def test_a_run_without_extra_terms_logs_no_breakdown(image_data, tmp_path):
    result = train(tiny_image_recipe(image_data, train={"epochs": 1}), output=tmp_path / "run", quiet=True)
    assert set(_jsonl(result.run_dir / "steps.jsonl")[0]) == {"epoch", "step", "loss", "lr"}
    assert not any(k.startswith("train_loss_") for k in _jsonl(result.run_dir / "metrics.jsonl")[0])


# -- mixup / cutmix --------------------------------------------------------------------------------


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixing_gives_soft_targets_that_sum_to_one(mixup, cutmix):
    torch.manual_seed(0)
    mixer = Mixer(ClassificationTask(LabelMap(("a", "b", "c"))), mixup_alpha=mixup, cutmix_alpha=cutmix)
    labels = torch.tensor([0, 1, 2, 1, 0, 2])
    pixels = torch.arange(6.0).view(6, 1, 1, 1).expand(6, 3, 8, 8).contiguous()  # image i is all i
    for _ in range(5):
        mixed, targets = mixer({"pixel_values": pixels, "labels": labels})
        assert targets.shape == (6, 3)
        assert torch.allclose(targets.sum(1), torch.ones(6))
        assert (targets >= 0).all() and (targets <= 1).all()
        # each row's own label keeps weight lam, its partner's 1 - lam; the pixels say the same
        own = targets[torch.arange(6), labels]
        x = mixed["pixel_values"]
        if not torch.allclose(x.amax((1, 2, 3)), x.amin((1, 2, 3))):  # cutmix: a box pasted
            kept = (x == pixels).float().mean((1, 2, 3))
            partner_same_label = own == 1  # paired with an image of its own class
            assert torch.allclose(own[~partner_same_label], kept[~partner_same_label])
    assert torch.equal(labels, torch.tensor([0, 1, 2, 1, 0, 2]))  # the batch itself is not modified


def test_soft_target_cross_entropy_with_class_weights():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    weights = balanced_class_weights([0, 0, 0, 1], 2)
    assert torch.allclose(weights, torch.tensor([4 / (2 * 3), 4 / (2 * 1)]))
    objective = Objective(ClassificationTask(LabelMap(("a", "b")), class_weights=weights))
    model = lambda batch: logits  # noqa: E731
    loss, parts = objective(model, {"labels": torch.tensor([0, 1])})
    logp = logits.log_softmax(-1)
    expected = (weights[0] * -logp[0, 0] + weights[1] * -logp[1, 1]) / (weights[0] + weights[1])
    assert loss.item() == pytest.approx(expected.item()) and set(parts) == {"task"}


def test_mixup_on_a_text_backbone_is_a_recipe_error(text_data, tiny_bert, tmp_path):
    with pytest.raises(RecipeError, match=r"^train\.mixup_alpha: mixup and cutmix blend images"):
        train(tiny_text_recipe(text_data, tiny_bert, train={"mixup_alpha": 0.2}), output=tmp_path / "run", quiet=True)
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.parametrize("raw, field", [
    ({"train": {"mixup_alpha": -0.1}}, "train.mixup_alpha"),
    ({"train": {"cutmix_alpha": "lots"}}, "train.cutmix_alpha"),
    ({"train": {"ema_decay": 1.0}}, "train.ema_decay"),
    ({"train": {"class_weights": "inverse"}}, "train.class_weights"),
    ({"strategy": {"l2sp_alpha": -1}}, "strategy.l2sp_alpha"),
    ({"strategy": {"distill_weight": float("nan")}}, "strategy.distill_weight"),
    ({"data": {"sampler": "weighted"}}, "data.sampler"),
    ({"data": {"augment": "heavy"}}, "data.augment"),
])
def test_bad_values_name_the_field(raw, field):
    with pytest.raises(RecipeError, match="^" + re.escape(field) + ": "):
        Recipe.from_dict(raw)


# -- weight averaging ------------------------------------------------------------------------------


def test_ema_update_follows_the_formula_and_leaves_unchanged_weights_bitwise_equal():
    model = tiny_model()
    ema = ModelEMA(model, decay=0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.head.fc.weight.add_(1.0)
    ema.update(model)  # update 1: decay min(0.9, 2/11)
    d = 2 / 11
    assert torch.allclose(ema.shadow["head.fc.weight"], d * start["head.fc.weight"] + (1 - d) * model.head.fc.weight)
    assert torch.equal(ema.shadow["backbone.proj.weight"], start["backbone.proj.weight"])
    for _ in range(200):
        ema.update(model)
    assert ema.current_decay() == 0.9
    raw = model.head.fc.weight.detach().clone()
    with ema.applied(model):
        assert torch.equal(model.head.fc.weight, ema.shadow["head.fc.weight"])
    assert torch.equal(model.head.fc.weight, raw)


def test_the_saved_model_is_the_average_not_the_raw_weights(image_data, tmp_path):
    recipe = tiny_image_recipe(image_data, strategy={"name": "full"}, train={
        "ema_decay": 0.8, "restore_best": False, "keep_checkpoints_when_done": True,
    })
    result = train(recipe, output=tmp_path / "run", quiet=True)
    from safetensors.torch import load_file

    saved = load_file(result.run_dir / "model.safetensors")
    last = read_checkpoint(list_checkpoints(result.run_dir)[-1])
    raw, averaged = last.tensors["model"], last.tensors["ema"]
    assert last.state["ema"]["updates"] == 6
    assert saved.keys() == averaged.keys()
    assert all(torch.equal(saved[k], averaged[k]) for k in saved)
    assert not torch.equal(saved["head.fc.weight"], raw["head.fc.weight"])


# -- exact resume with every control on ---------------------------------------------------------------


class Killed(BaseException):
    pass


def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(image_data, tmp_path, monkeypatch):
    """EMA, L2-SP's reference, the frozen copy, mixup/cutmix draws, balanced batches and strong
    augmentation all continue exactly after a stop in the middle of the second epoch."""
    recipe = tiny_image_recipe(
        image_data,
        data={"augment": "strong", "sampler": "balanced"},
        strategy={"name": "full", "l2sp_alpha": 0.5, "l2sp_beta": 0.01, "distill_weight": 1.0},
        train={"ema_decay": 0.9, "mixup_alpha": 0.4, "cutmix_alpha": 1.0, "class_weights": "balanced",
               "checkpoint_every_steps": 1, "lr": 3e-3, "head_lr": 3e-3},
    )
    train(recipe, output=tmp_path / "reference", quiet=True)
    original, written = Checkpointer.save, []

    def save(self, position, extra, is_best=False):
        written.append(original(self, position, extra, is_best))
        if len(written) == 5:  # step 5: epoch 2, batch 2 of 3
            raise Killed

    monkeypatch.setattr(Checkpointer, "save", save)
    with pytest.raises(Killed):
        train(recipe, output=tmp_path / "run", quiet=True)
    monkeypatch.undo()
    assert read_checkpoint(written[-1]).state["position"] == {"epoch": 1, "batch": 2, "step": 5}
    train(recipe, output=tmp_path / "run", quiet=True, resume=True)
    expected = comparable(tmp_path / "reference")
    assert differences(comparable(tmp_path / "run"), expected) == []
    assert {"loss_task", "loss_l2sp", "loss_distill"} <= set(expected["steps.jsonl"][-1])


# -- balanced sampling -----------------------------------------------------------------------------


def test_balanced_sampler_balances_classes_and_is_a_function_of_seed_and_epoch():
    labels = [0] * 90 + [1] * 10
    sampler = BalancedBatchSampler(labels, batch_size=10, seed=3, item_seeds=True)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert len(epoch1) == len(sampler) == 10 and all(len(b) == 10 for b in epoch1)
    drawn = [i for batch in epoch1 for i, _ in batch]
    assert 35 <= sum(labels[i] for i in drawn) <= 65  # about half from the 10% class
    assert all(seed == augment_seed(3, 1, i) for batch in epoch1 for i, seed in batch)
    again = BalancedBatchSampler(labels, 10, seed=3, item_seeds=True)
    again.set_epoch(1)
    assert list(again) == epoch1
    again.set_epoch(2)
    assert list(again) != epoch1
    again.set_epoch(1)
    again.resume_at(1, 4)  # a run resumed after 4 batches of epoch 1 gets exactly the rest
    assert len(again) == 6 and list(again) == epoch1[4:]
    other_seed = BalancedBatchSampler(labels, 10, seed=4, item_seeds=True)
    other_seed.set_epoch(1)
    assert list(other_seed) != epoch1


def test_balanced_sampler_in_a_run_on_imbalanced_data(tmp_path):
    root = tmp_path / "data"
    make_image_folder(root / "train", per_class=2, classes=("circle",), seed=0)
    make_image_folder(root / "train", per_class=14, classes=("square",), seed=1)
    make_image_folder(root / "val", per_class=2, classes=("circle", "square"), seed=2)
    recipe = tiny_image_recipe(root, data={"sampler": "balanced"}, strategy={"name": "full"},
                               train={"epochs": 1, "class_weights": "balanced"})
    seen = []
    original = ImageDataset.__getitem__
    ImageDataset.__getitem__ = lambda self, key: seen.append(key) or original(self, key)
    try:
        train(recipe, output=tmp_path / "run", quiet=True)
    finally:
        ImageDataset.__getitem__ = original
    drawn = [k[0] for k in seen if isinstance(k, tuple)]  # training keys carry their augmentation seed
    assert len(drawn) == 16
    assert sum(i < 2 for i in drawn) >= 4  # "circle" (2 of 16 images) is drawn about half the time


# -- strong augmentation ---------------------------------------------------------------------------


def test_strong_augmentation_is_a_function_of_seed_epoch_and_index(image_data):
    preprocessing = {"input_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0}
    transform = image_transform(preprocessing, train=True, augment="strong")
    names = [type(t).__name__ for t in transform.transforms]
    assert "TrivialAugmentWide" in names and names[-1] == "RandomErasing"
    paths = sorted(str(p) for p in (image_data / "train").rglob("*.png"))[:3]
    dataset = ImageDataset(paths, [0, 1, 2], transform)
    key = (1, augment_seed(0, 2, 1))
    first = dataset[key]["pixel_values"]
    torch.manual_seed(123)  # the global generator does not matter
    assert torch.equal(dataset[key]["pixel_values"], first)
    views = {dataset[(1, augment_seed(0, epoch, 1))]["pixel_values"].sum().item() for epoch in range(6)}
    assert len(views) > 1, "every epoch drew the same view"
    assert first.shape == (3, 32, 32)


def test_balanced_sampler_and_class_weights_train_text(text_data, tiny_bert, tmp_path):
    recipe = tiny_text_recipe(text_data, tiny_bert, data={"sampler": "balanced"}, train={"epochs": 1, "class_weights": "balanced"})
    result = train(recipe, output=tmp_path / "run", quiet=True)
    assert len(_jsonl(result.run_dir / "steps.jsonl")) == 6  # 48 rows drawn in batches of 8

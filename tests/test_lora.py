"""LoRA (strategy ``lora``, through peft): only the adapters and the new head train; a run directory
reloads and predicts bitwise like the model in memory, with the adapters merged or kept separate;
a resumed LoRA run ends exactly as an uninterrupted one."""

from __future__ import annotations

import json
import random
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_image_recipe, tiny_text_recipe
from finetunekit import load, train
from finetunekit.use.loading import load_model
from finetunekit.backbones import check_layer_groups, create_backbone
from finetunekit.run.checkpoint import Checkpointer
from finetunekit.core.errors import RecipeError
from finetunekit.tasks.heads import LinearHead
from finetunekit.run.model import FineTuneModel
from finetunekit.run.recipe import Recipe
from finetunekit.strategies import STRATEGIES
from finetunekit.strategies.lora import default_targets, is_adapter_parameter
from run_outputs import comparable, differences


def _recipe(modality, image_data, text_data, tiny_bert, **strategy):
    strategy = {"name": "lora", "lora_rank": 4, **strategy}
    if modality == "image":
        return tiny_image_recipe(image_data, strategy=strategy, train={"restore_best": False})
    return tiny_text_recipe(text_data, tiny_bert, strategy=strategy, train={"restore_best": False})


def _fresh_model(recipe, classes: int = 3) -> FineTuneModel:
    """The untrained starting point, seeded as train() seeds it (seed, then backbone)."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(recipe.train.seed)
    spec = recipe.model
    backbone = create_backbone(spec.backbone, spec.pretrained, spec.pooling, spec.image_size)
    return FineTuneModel(backbone, LinearHead(backbone.num_features, classes))


def _lora_setup(recipe, classes: int = 3) -> tuple[FineTuneModel, list[dict]]:
    model = _fresh_model(recipe, classes)
    groups = STRATEGIES.get("lora")(recipe.strategy).setup(model, 1e-3, 1e-2, pretrained=recipe.model.pretrained)
    return model, groups


@pytest.fixture(scope="module")
def lora_runs(image_data, text_data, tiny_bert, tmp_path_factory):
    """Finished LoRA runs by (modality, merge), each with its model as training left it in memory."""
    cache: dict = {}

    def get(modality: str, merge: bool):
        if (modality, merge) not in cache:
            recipe = _recipe(modality, image_data, text_data, tiny_bert, lora_merge_on_save=merge)
            result = train(recipe, output=tmp_path_factory.mktemp("lora") / f"{modality}-{merge}", quiet=True)
            cache[modality, merge] = (recipe, result, result.model)
        return cache[modality, merge]

    return get


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "separate"])
@pytest.mark.parametrize("modality", ["image", "text"])
def test_reloaded_run_predicts_exactly_like_the_trained_model(lora_runs, modality, merge, monkeypatch):
    recipe, result, in_memory = lora_runs(modality, merge)
    info = json.loads((result.run_dir / "finetunekit.json").read_text())
    assert ("adapter" in info) is (not merge)
    assert (result.run_dir / "adapter").is_dir() is (not merge)
    if merge:  # a plain model: loads with peft unavailable
        monkeypatch.setitem(sys.modules, "peft", None)
    predictor = load(result.run_dir)
    inputs = [json.loads(line)["input"] for line in (result.run_dir / "val_predictions.jsonl").read_text().splitlines()]
    loaded = predictor.predict_proba(inputs)
    predictor.model = in_memory
    assert np.array_equal(loaded, predictor.predict_proba(inputs))
    assert torch.equal(torch.tensor(loaded).argmax(1), torch.tensor(predictor.predict_proba(inputs)).argmax(1))
    saved = [json.loads(line)["probabilities"] for line in (result.run_dir / "val_predictions.jsonl").read_text().splitlines()]
    assert np.allclose(loaded, saved, atol=2e-6)  # the run's own final predictions are the saved model's


@pytest.mark.parametrize("modality", ["image", "text"])
def test_only_adapters_and_head_train(lora_runs, modality):
    recipe, result, _ = lora_runs(modality, False)
    model, _ = load_model(result.run_dir)
    fresh = _fresh_model(recipe).backbone.state_dict()
    after = {k.replace(".base_layer.", "."): v for k, v in model.backbone.state_dict().items() if not is_adapter_parameter(k)}
    assert sorted(after) == sorted(fresh)
    changed = sorted(k for k in fresh if not torch.equal(fresh[k], after[k]))
    assert changed == [], f"original backbone tensors changed (BatchNorm statistics included): {changed[:5]}"
    adapters = {k: v for k, v in model.backbone.state_dict().items() if ".lora_B." in k}
    assert adapters and all(v.abs().sum() > 0 for v in adapters.values()), "an adapter did not train (B is still zero)"
    # trainable = adapters + head: what the log line and the model card report
    setup_model, groups = _lora_setup(recipe, len(json.loads((result.run_dir / "labels.json").read_text())["classes"]))
    adapter_count = sum(p.numel() for n, p in setup_model.backbone.named_parameters() if is_adapter_parameter(n))
    head_count = sum(p.numel() for p in setup_model.head.parameters())
    assert result.trainable_params == adapter_count + head_count
    assert result.total_params == sum(p.numel() for p in setup_model.parameters())
    assert [g["name"] for g in groups] == ["lora", "head"] and sum(p.numel() for p in groups[0]["params"]) == adapter_count
    card = (result.run_dir / "README.md").read_text()
    assert f"{result.trainable_params:,} of {result.total_params:,} parameters trained" in card
    assert "LoRA adapters: rank 4, alpha 16, dropout 0, on every Linear and 1x1 convolution layer" in card
    assert "kept separate (`adapter/`" in card


@pytest.mark.parametrize("modality", ["image", "text"])
def test_merged_run_equals_the_separate_run_merged(lora_runs, modality):
    """Both runs train identically, and merging changes only the adapted layers' weights."""
    _, merged_result, _ = lora_runs(modality, True)
    recipe, separate_result, _ = lora_runs(modality, False)
    merged = load_file(str(merged_result.run_dir / "model.safetensors"))
    separate, _ = load_model(separate_result.run_dir)
    from finetunekit.strategies.lora import merge_adapters

    targets = set(separate.adapter["targets"])
    assert merge_adapters(separate) and separate.adapter is None
    plain = separate.state_dict()
    assert sorted(plain) == sorted(merged)
    fresh = {f"backbone.{k}": v for k, v in _fresh_model(recipe).backbone.state_dict().items()}
    for key, value in merged.items():
        assert torch.equal(value, plain[key]), key
        layer = key.removeprefix("backbone.model.").rsplit(".", 1)[0]
        if key in fresh and layer not in targets:
            assert torch.equal(value, fresh[key]), f"{key} is no LoRA target but changed"


def test_peft_adapter_directory_loads_with_peft(lora_runs, tiny_bert):
    """adapter/ is a standard peft adapter of the pretrained encoder; with head.safetensors it
    reproduces the run's predictions outside finetunekit."""
    from peft import PeftModel
    from transformers import BertModel

    _, result, _ = lora_runs("text", False)
    predictor = load(result.run_dir)
    adapter_dir = result.run_dir / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "head.safetensors"} <= {p.name for p in adapter_dir.iterdir()}
    base = BertModel.from_pretrained(str(tiny_bert), add_pooling_layer=False)
    peft_model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    head = load_file(str(adapter_dir / "head.safetensors"))
    batch = predictor.model.backbone.tokenizer(["the film was good", "a dull and sad plot"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = peft_model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        logits = ((hidden * mask).sum(1) / mask.sum(1)) @ head["fc.weight"].T + head["fc.bias"]
        expected = predictor.model(dict(batch))
    assert torch.allclose(logits, expected, atol=1e-5)


def test_exports_and_run_backbone_of_a_separate_adapter_run(lora_runs, tmp_path):
    """An unmerged run exports plain weights (merged on the way) and serves as a run: backbone."""
    from finetunekit.use.export import export

    _, result, _ = lora_runs("image", False)
    predictor = load(result.run_dir)
    exported = export(result.run_dir, "timm", output=tmp_path / "timm")
    assert exported.max_abs_diff <= 1e-4
    import timm

    plain = timm.create_model(f"local-dir:{exported.path}", pretrained=True).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # against the unmerged model, not the merged one export compared with
        assert torch.allclose(plain(pixels), predictor.model({"pixel_values": pixels}), atol=1e-5)
    backbone = create_backbone(f"run:{result.run_dir}")
    assert not any(is_adapter_parameter(n) for n, _ in backbone.named_parameters())
    with torch.no_grad():
        assert torch.allclose(backbone.eval().forward_features({"pixel_values": pixels}),
                              predictor.model.backbone.forward_features({"pixel_values": pixels}), atol=1e-5)


# -- targets ---------------------------------------------------------------------------------------


def test_default_targets_per_architecture(image_data, text_data, tiny_bert):
    import timm

    bert, _ = _lora_setup(_recipe("text", image_data, text_data, tiny_bert))
    assert [t.split(".", 3)[-1] for t in bert.adapter["targets"][:6]] == [
        "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense", "intermediate.dense", "output.dense",
    ]
    assert len(bert.adapter["targets"]) == 12  # 2 layers x 6
    conv, _ = _lora_setup(_recipe("image", image_data, text_data, tiny_bert, lora_rank=8))
    targets = conv.adapter["targets"]
    # pointwise convolutions only: not the stem, depthwise or 3x3 convs; and only those wider than
    # the rank (block 3's SE squeezes to 8 channels, block 4's to 12)
    assert {t.rsplit(".", 1)[-1] for t in targets} == {"conv_pw", "conv_pwl", "conv_head", "conv_reduce", "conv_expand"}
    assert "blocks.4.0.se.conv_reduce" in targets and "blocks.3.0.se.conv_reduce" not in targets
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, depth=2, img_size=32)
    assert {t.split(".", 2)[-1] for t in default_targets(vit, 8)} == {"attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"}
    for model in (bert, conv):  # peft's renamed parameters still fall in exactly one layer group
        check_layer_groups(model.backbone)


def test_explicit_targets_and_their_errors(image_data, text_data, tiny_bert):
    text = _recipe("text", image_data, text_data, tiny_bert, lora_targets=["query", "attention.self.value"])
    model, _ = _lora_setup(text)
    assert [t.rsplit(".", 1)[-1] for t in model.adapter["targets"]] == ["query", "value", "query", "value"]
    with pytest.raises(RecipeError, match=r"^strategy\.lora_targets: 'qury' matches no layer of the backbone \(did you mean 'query'\?\); adaptable layers include .*dense.*query"):
        _lora_setup(_recipe("text", image_data, text_data, tiny_bert, lora_targets=["value", "qury"]))
    with pytest.raises(RecipeError, match=r"^strategy\.lora_targets: 'LayerNorm' matches only layers LoRA cannot adapt"):
        _lora_setup(_recipe("text", image_data, text_data, tiny_bert, lora_targets=["LayerNorm"]))
    with pytest.raises(RecipeError, match=r"'conv_dw' matches only layers LoRA cannot adapt \(blocks\.3\.0\.conv_dw: DepthwiseConv2d with groups=128\)"):
        _lora_setup(_recipe("image", image_data, text_data, tiny_bert, lora_targets=["conv_dw"]))


def test_missing_peft_is_one_clear_error(image_data, text_data, tiny_bert, monkeypatch):
    from finetunekit.core.errors import FinetuneError

    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now raises ImportError
    with pytest.raises(FinetuneError, match=r"^strategy lora needs the package 'peft' \(pip install 'finetunekit\[peft\]'\)$"):
        _lora_setup(_recipe("image", image_data, text_data, tiny_bert))


@pytest.mark.parametrize("field, value, message", [
    ("lora_rank", 0, r"^strategy\.lora_rank: 0 is out of range"),
    ("lora_alpha", 0, r"^strategy\.lora_alpha: 0\.0 is out of range"),
    ("lora_dropout", 1.0, r"^strategy\.lora_dropout: 1\.0 is out of range"),
    ("lora_targets", [], r"^strategy\.lora_targets: give at least one layer name"),
    ("lora_targets", ["query", ""], r"^strategy\.lora_targets\[1\]: '' is not a layer name"),
    ("lora_targets", "query", r"^strategy\.lora_targets: expected a list"),
    ("lora_merge_on_save", "yes", r"^strategy\.lora_merge_on_save: expected true or false"),
])
def test_recipe_fields_are_validated(field, value, message):
    with pytest.raises(RecipeError, match=message):
        Recipe.from_dict({"strategy": {"name": "lora", field: value}})


def test_lora_learning_rate_defaults():
    from finetunekit.run.defaults import resolve

    text = resolve(Recipe.from_dict({"strategy": {"name": "lora"}}), "text").train
    image = resolve(Recipe.from_dict({"strategy": {"name": "lora"}}), "image").train
    assert (text.lr, text.head_lr, image.lr, image.head_lr) == (1e-3, 1e-3, 1e-3, 1e-2)
    assert resolve(Recipe.from_dict({"strategy": {"name": "full"}}), "text").train.lr == 1e-4
    assert resolve(Recipe.from_dict({"strategy": {"name": "lora"}, "train": {"lr": 3e-4}}), "text").train.head_lr == 3e-4


def test_batchnorm_statistics_stay_frozen_in_training_mode(image_data, text_data, tiny_bert):
    model, _ = _lora_setup(_recipe("image", image_data, text_data, tiny_bert))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model({"pixel_values": torch.randn(4, 3, 32, 32)}).sum().backward()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all(is_adapter_parameter(n) or n.startswith("head.") for n in grads)


# -- resume ----------------------------------------------------------------------------------------


class Killed(BaseException):
    """Stands for the process being killed (see tests/test_resume.py)."""


def test_resumed_lora_run_ends_exactly_like_an_uninterrupted_one(text_data, tiny_bert, tmp_path, monkeypatch):
    recipe = tiny_text_recipe(text_data, tiny_bert, strategy={"name": "lora", "lora_rank": 4, "lora_dropout": 0.1}, train={
        "epochs": 2, "scheduler": "linear", "warmup_ratio": 0.3, "checkpoint_every_steps": 2,
    })
    train(recipe, output=tmp_path / "reference", quiet=True)
    original, written = Checkpointer.save, []

    def save(self, position, extra, is_best=False):
        written.append(original(self, position, extra, is_best))
        if len(written) == 2:
            raise Killed

    monkeypatch.setattr(Checkpointer, "save", save)
    with pytest.raises(Killed):
        train(recipe, output=tmp_path / "run", quiet=True)
    monkeypatch.undo()
    assert written[-1].name == "step-00000004"  # 48 rows in batches of 8: step 4 is part-way through epoch 1
    result = train(recipe, output=tmp_path / "run", quiet=True, resume=True)
    assert differences(comparable(result.run_dir), comparable(tmp_path / "reference")) == []

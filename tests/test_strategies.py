"""Each strategy trains exactly the parameters it claims; frozen ones stay bitwise unchanged.

``test_strategy_contract`` takes every strategy from the registry, so a newly registered one gets
it with no new test code; the tests below it check the claims of particular strategies.
"""

import copy
import dataclasses
import json
import types
import typing

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import tiny_image_recipe, tiny_text_recipe
from finetunekit import load, train
from finetunekit.use.loading import load_model
from finetunekit.backbones import create_backbone
from finetunekit.tasks.heads import LinearHead
from finetunekit.run.model import FineTuneModel
from finetunekit.core.errors import RecipeError
from finetunekit.run.recipe import Recipe, StrategySpec
from finetunekit.strategies import STRATEGIES, merge_added


# -- the contract every registered strategy keeps ------------------------------------------------------


def _tiny_model(modality: str, tiny_bert) -> tuple[FineTuneModel, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    if modality == "image":
        backbone = create_backbone("timm:test_efficientnet", pretrained=False, image_size=32)
        batch = {"pixel_values": torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))}
    else:
        backbone = create_backbone(f"hf:{tiny_bert}")
        enc = backbone.tokenize(["good film", "bad plot and story", ("a warm story", "dull"), "fine"], 16)
        width = max(map(len, enc["input_ids"]))
        batch = {k: torch.tensor([row + [0] * (width - len(row)) for row in v]) for k, v in enc.items()}
    batch["labels"] = torch.tensor([0, 1, 2, 0])
    return FineTuneModel(backbone, LinearHead(backbone.num_features, 3)), batch


def _phase(model: FineTuneModel, optimizer) -> tuple[set[str], dict[str, float]]:
    return ({n for n, p in model.named_parameters() if p.requires_grad},
            {g["name"]: g["base_lr"] for g in optimizer.param_groups})


@pytest.mark.parametrize("modality", ["image", "text"])
# strategies of encoder-decoders (needs_decoder) run on a tiny Whisper in tests/test_seq2seq.py
@pytest.mark.parametrize("name", [n for n in STRATEGIES.names() if not STRATEGIES.get(n).needs_decoder])
def test_strategy_contract(name, modality, tiny_bert):
    """No parameter in two optimizer groups, every trainable one in one; the head always trains; frozen parameters stay
    bitwise unchanged through a step; ``backbone_frozen_at`` tells the truth (the feature cache relies
    on it); a fresh strategy loaded from ``state_dict`` re-enters the same phase (resume); finalize
    keeps the model's function and leaves weights a plain model loads (the run directory)."""
    model, batch = _tiny_model(modality, tiny_bert)
    pristine = copy.deepcopy(model)
    spec = StrategySpec(name=name, last_n=1, freeze_epochs=1, lp_epochs=1, unfreeze_every=1)
    strategy = STRATEGIES.get(name)(spec)
    groups = strategy.setup(model, 1e-2, 1e-2)
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped)) and set(grouped) <= {id(p) for p in model.parameters()}
    assert all(g["base_lr"] > 0 and g["name"] for g in groups)
    optimizer = torch.optim.SGD(groups, lr=1e-2)
    epochs = 3
    for epoch in range(epochs):
        strategy.on_epoch_start(epoch, model, optimizer)
        assert all(p.requires_grad for p in model.head.parameters())
        assert {id(p) for p in model.parameters() if p.requires_grad} <= set(grouped), "a parameter trains outside the optimizer"
        backbone_trains = any(p.requires_grad for p in model.backbone.parameters())
        assert strategy.backbone_frozen_at(epoch) == (not backbone_trains), f"backbone_frozen_at({epoch}) is wrong"
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        model.train()
        F.cross_entropy(model(batch), batch["labels"]).backward()
        optimizer.step()
        optimizer.zero_grad()
        changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
        assert not changed & frozen, f"epoch {epoch}: frozen parameters changed: {sorted(changed & frozen)[:3]}"
        assert changed, f"epoch {epoch}: nothing trained"
        # resume: a freshly set-up strategy loaded with this state is in the same phase
        fresh_model = copy.deepcopy(pristine)
        fresh = STRATEGIES.get(name)(spec)
        fresh_optimizer = torch.optim.SGD(fresh.setup(fresh_model, 1e-2, 1e-2), lr=1e-2)
        fresh.load_state_dict(copy.deepcopy(strategy.state_dict()), fresh_model, fresh_optimizer)
        assert _phase(fresh_model, fresh_optimizer) == _phase(model, optimizer), f"epoch {epoch}: resume enters another phase"
    model.eval()
    with torch.no_grad():
        outputs = model(batch)
        strategy.finalize(model)
        torch.testing.assert_close(model(batch), outputs, atol=1e-4, rtol=1e-4)
    if getattr(model, "adapter", None) is None:  # a plain model: the saved weights load without the strategy
        plain = copy.deepcopy(pristine)
        plain.load_state_dict(model.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(plain.eval()(batch), outputs, atol=1e-4, rtol=1e-4)


def _plain(hint):
    """``X`` of ``X | None``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1 else hint


def _out_of_range(hint):
    """A value no option of this type accepts (None: no such value for the type)."""
    hint = _plain(hint)
    if hint is bool:
        return None
    if hint in (int, float):
        return 10**13
    if typing.get_origin(hint) is list:
        return []
    if typing.get_origin(hint) is typing.Literal:
        return "not-a-choice"
    return None


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_strategy_options_contract(name):
    """A strategy's own options (``Strategy.Options``, a dataclass in its module) are fields of the
    recipe's ``strategy:`` section with the same defaults; each is checked, and a bad value is named
    by its field; a recipe with the strategy round-trips through its saved form (recipe.yaml)."""
    recipe = Recipe.from_dict({"strategy": {"name": name}, "train": {"epochs": 3}})
    assert Recipe.from_dict(yaml.safe_load(recipe.to_yaml())) == recipe
    assert recipe.strategy.strategy_class is STRATEGIES.get(name)
    options = STRATEGIES.get(name).Options
    if options is None:
        return
    assert dataclasses.is_dataclass(options), f"{name}.Options must be a dataclass"
    section = {f.name: f for f in dataclasses.fields(StrategySpec)}
    defaults = options()
    hints = typing.get_type_hints(options)
    for f in dataclasses.fields(options):
        assert f.name in section, f"strategy.{f.name} is not a field of the strategy: section"
        assert typing.get_type_hints(StrategySpec)[f.name] == hints[f.name]
        assert getattr(recipe.strategy, f.name) == getattr(defaults, f.name), f"strategy.{f.name}: another default in the recipe"
        bad = _out_of_range(hints[f.name])
        if bad is not None:
            with pytest.raises(RecipeError, match=rf"^strategy\.{f.name}\b"):
                Recipe.from_dict({"strategy": {"name": name, f.name: bad}, "train": {"epochs": 3}})


def _option_variants(name: str) -> list[dict]:
    """The defaults, and each boolean option of the strategy's own with its other value (LoRA's
    adapters merged on save, or kept separate)."""
    options = STRATEGIES.get(name).Options
    if options is None:
        return [{}]
    hints = typing.get_type_hints(options)
    return [{}, *({f.name: not f.default} for f in dataclasses.fields(options) if hints[f.name] is bool)]


# strategies of encoder-decoders (needs_decoder) round-trip on a tiny Whisper in tests/test_seq2seq.py
ROUND_TRIPS = [(name, variant) for name in STRATEGIES.names() if not STRATEGIES.get(name).needs_decoder
               for variant in _option_variants(name)]


@pytest.mark.parametrize(("name", "options"), ROUND_TRIPS, ids=[n + "".join(f"-{k}={v}" for k, v in o.items()) for n, o in ROUND_TRIPS])
def test_strategy_round_trip(name, options, text_data, tiny_bert, tmp_path):
    """Train -> run directory -> reload: the reloaded model predicts exactly like the model training
    left in memory (whatever the strategy added, restored through ``Strategy.restore``), the run's
    saved validation predictions are the reloaded model's, and the run used as a backbone
    (``run:`` source, additions merged) holds the same backbone weights as the reloaded one merged."""
    strategy = {"name": name, "last_n": 1, "freeze_epochs": 1, "lp_epochs": 1, "unfreeze_every": 1,
                "setfit_iterations": 1, "lora_rank": 4, **options}
    recipe = tiny_text_recipe(text_data, tiny_bert, strategy=strategy, train={"restore_best": False})
    result = train(recipe, output=tmp_path / "run", quiet=True)
    info = json.loads((result.run_dir / "finetunekit.json").read_text())
    predictor = load(result.run_dir)
    assert predictor.model.adapter == info.get("adapter") == result.model.adapter
    lines = [json.loads(line) for line in (result.run_dir / "val_predictions.jsonl").read_text().splitlines()]
    inputs = [line["input"] for line in lines]
    loaded = predictor.predict_proba(inputs)
    assert np.allclose(loaded, [line["probabilities"] for line in lines], atol=2e-6)
    in_memory = predictor.model
    predictor.model = result.model
    assert np.array_equal(loaded, predictor.predict_proba(inputs))
    merge_added(in_memory)
    as_backbone = create_backbone(str(result.run_dir))
    merged, rebuilt = in_memory.backbone.state_dict(), as_backbone.state_dict()
    assert sorted(merged) == sorted(rebuilt)
    for key, value in merged.items():
        torch.testing.assert_close(rebuilt[key], value, atol=1e-6, rtol=0)


def test_a_strategy_registered_after_the_recipe_module_names_the_problem(monkeypatch):
    """The recipe's strategy: section is built from the strategies registered when finetunekit.run.recipe
    is imported; a strategy with options registered later is refused with the reason, and leaves
    every other recipe alone."""
    from finetunekit.strategies import Strategy

    @dataclasses.dataclass
    class LateOptions:
        width: int = 3

    class Late(Strategy):
        """A plug-in registered late."""

        Options = LateOptions

    monkeypatch.setitem(STRATEGIES._items, "late_plugin", Late)
    assert Recipe.from_dict({"strategy": {"name": "full"}}).strategy.name == "full"
    with pytest.raises(RecipeError, match=r"^strategy.name: strategy 'late_plugin' was registered after finetunekit.run.recipe"):
        Recipe.from_dict({"strategy": {"name": "late_plugin"}})


# -- particular strategies' claims ---------------------------------------------------------------------


def _initial_state(recipe):
    """The model exactly as train() builds it before the first step (same seed, same weights)."""
    torch.manual_seed(recipe.train.seed)
    spec = recipe.model
    return create_backbone(spec.backbone, spec.pretrained, spec.pooling, spec.image_size)


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


@pytest.mark.parametrize("modality", ["image", "text"])
@pytest.mark.parametrize("name", ["linear_probe", "last_n", "full", "freeze_then_unfreeze", "lp_ft", "gradual_unfreeze"])
def test_strategy_trains_what_it_claims(name, modality, image_data, text_data, tiny_bert, tmp_path):
    # Two epochs: gradual_unfreeze trains the head, then the last group too (as last_n with 1).
    strategy = {"name": name, "last_n": 1, "freeze_epochs": 1, "lp_epochs": 1}
    if modality == "image":
        recipe = tiny_image_recipe(image_data, strategy=strategy, train={"restore_best": False})
    else:
        recipe = tiny_text_recipe(text_data, tiny_bert, strategy=strategy, train={"restore_best": False})
    torch.manual_seed(0)
    result = train(recipe, output=tmp_path / "run", quiet=True)
    model, _ = load_model(result.run_dir)
    # Rebuild the untrained starting point: same seeding as train() (seed, then backbone).
    import random

    import numpy as np

    random.seed(0); np.random.seed(0); torch.manual_seed(0)
    start = _initial_state(recipe)
    before = {f"backbone.{k}": v for k, v in start.state_dict().items()}
    after = model.state_dict()
    changed = _changed(before, after)
    groups = start.layer_groups()
    params = {f"backbone.{n}" for g in groups for n in g}
    buffers = set(before) - params
    if name == "linear_probe":
        assert changed == set(), f"frozen backbone changed: {sorted(changed)[:5]}"
    elif name in ("last_n", "gradual_unfreeze"):
        last = {f"backbone.{n}" for n in groups[-1]}
        assert changed & params <= last
        assert changed & last, "the last group did not train"
        # BatchNorm statistics of frozen groups stay frozen; only the trained group's may move.
        trained_modules = {p.rsplit(".", 1)[0] for p in last}
        assert {b for b in changed & buffers if b.rsplit(".", 1)[0] not in trained_modules} == set()
    else:
        assert len(changed & params) > 0.5 * len(params)


def test_linear_probe_keeps_batchnorm_statistics_in_train_mode():
    backbone = create_backbone("timm:test_efficientnet", pretrained=False, image_size=32)
    model = FineTuneModel(backbone, LinearHead(backbone.num_features, 3))
    strategy = STRATEGIES.get("linear_probe")(StrategySpec(name="linear_probe"))
    strategy.setup(model, 1e-3, None)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model({"pixel_values": torch.randn(4, 3, 32, 32)})
    assert not _changed(before, model.state_dict())
    assert model.head.training


def test_freeze_then_unfreeze_switches_at_the_scheduled_epoch():
    backbone = create_backbone("timm:test_efficientnet", pretrained=False, image_size=32)
    model = FineTuneModel(backbone, LinearHead(backbone.num_features, 3))
    strategy = STRATEGIES.get("freeze_then_unfreeze")(StrategySpec(name="freeze_then_unfreeze", freeze_epochs=2))
    groups = strategy.setup(model, lr=1e-4, head_lr=1e-2)
    optimizer = torch.optim.AdamW(groups)
    trainable = lambda: sum(p.requires_grad for p in model.backbone.parameters())  # noqa: E731
    assert trainable() == 0
    assert strategy.on_epoch_start(0, model, optimizer) is None
    assert strategy.on_epoch_start(1, model, optimizer) is None and trainable() == 0
    assert "unfrozen" in strategy.on_epoch_start(2, model, optimizer)
    assert trainable() == len(list(model.backbone.parameters()))
    # Discriminative rates: the head keeps its own (lp_ft is the variant that slows it down).
    assert [g["base_lr"] for g in optimizer.param_groups] == [1e-4, 1e-2]
    assert strategy.restarts_schedule(2) and not strategy.restarts_schedule(1)


def test_strategy_state_round_trips_mid_schedule():
    """A resumed run after the unfreeze epoch must not silently re-freeze the backbone."""
    def fresh():
        backbone = create_backbone("timm:test_efficientnet", pretrained=False, image_size=32)
        model = FineTuneModel(backbone, LinearHead(backbone.num_features, 3))
        strategy = STRATEGIES.get("freeze_then_unfreeze")(StrategySpec(name="freeze_then_unfreeze", freeze_epochs=1))
        optimizer = torch.optim.AdamW(strategy.setup(model, lr=1e-4, head_lr=1e-2))
        return model, strategy, optimizer

    model, strategy, optimizer = fresh()
    strategy.on_epoch_start(1, model, optimizer)
    saved_strategy, saved_opt = strategy.state_dict(), optimizer.state_dict()
    model2, strategy2, optimizer2 = fresh()
    optimizer2.load_state_dict(saved_opt)
    strategy2.load_state_dict(saved_strategy, model2, optimizer2)
    assert all(p.requires_grad for p in model2.backbone.parameters())
    assert [g["base_lr"] for g in optimizer2.param_groups] == [1e-4, 1e-2]


def test_pretrained_token_embeddings_are_frozen_unless_asked(tiny_bert):
    """The word-embedding table of a pretrained text backbone stays frozen by default (its dense
    update every step is costly and bought no accuracy); strategy.train_token_embeddings trains it,
    and a backbone trained from scratch always trains it."""
    for spec, pretrained, trains in ((StrategySpec(name="full"), True, False),
                                     (StrategySpec(name="full", train_token_embeddings=True), True, True),
                                     (StrategySpec(name="full"), False, True)):
        model, batch = _tiny_model("text", tiny_bert)
        table = model.backbone.model.get_input_embeddings().weight
        before = table.detach().clone()
        strategy = STRATEGIES.get("full")(spec)
        optimizer = torch.optim.SGD(strategy.setup(model, 1e-1, 1e-1, pretrained=pretrained), lr=1e-1)
        assert model.backbone.token_embedding_names() == ["model.embeddings.word_embeddings.weight"]
        F.cross_entropy(model(batch), batch["labels"]).backward()
        optimizer.step()
        assert table.requires_grad is trains and (not torch.equal(before, table)) is trains
        # the rest of the embeddings module (positions, norm) trains either way
        assert model.backbone.model.embeddings.LayerNorm.weight.requires_grad

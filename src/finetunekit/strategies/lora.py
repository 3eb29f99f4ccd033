"""LoRA through peft: low-rank adapters on a frozen backbone; only the adapters and the new head train.

Every original backbone weight stays frozen (BatchNorm statistics included). Each target layer
``W`` gets a parallel update ``(alpha / rank) * B @ A`` with ``A`` (rank x in) random and ``B``
(out x rank) zero, so training starts from exactly the pretrained function.

Default targets (``strategy.lora_targets: null``), found by layer type so one rule covers every
backbone: every ``nn.Linear`` and every 1x1 ungrouped ``nn.Conv2d`` whose smaller side is wider
than the rank. That is query/key/value/dense in BERT-family encoders, qkv/proj/fc1/fc2 in timm
ViTs, and the pointwise (expand, project, head) convolutions of EfficientNet and other conv nets;
depthwise and spatial convolutions, embeddings and norms stay as they are. An encoder-decoder
(``finetunekit.backbones.seq2seq.Seq2SeqBackbone``) defaults to its attention projections
(``attention_projections()``: Whisper's q/k/v/out projections of self- and cross-attention), not
every Linear, which would include the vocabulary-wide output layer. A target list names
modules by their name or a dotted suffix of it (``query``, ``attn.qkv``,
``blocks.6.0.conv_pwl``), relative to the timm / transformers model.

At the end of training the adapters are merged into the weights (``strategy.lora_merge_on_save:
true``, the default): the run directory holds a plain model that loads without peft, and the
final metrics are measured on that merged model. With ``false`` they stay separate: the run
directory's ``finetunekit.json`` describes them (the loader re-applies them before loading
``model.safetensors``), and ``adapter/`` is a standard peft adapter directory
(``adapter_config.json``, ``adapter_model.safetensors``) plus ``head.safetensors`` with the new head.

This module is the one place that imports peft.

Example::

    spec = StrategySpec(name="lora", lora_rank=8, lora_targets=["query", "value"])
    groups = STRATEGIES.get("lora")(spec).setup(model, lr=1e-3, head_lr=1e-3)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..core.errors import FinetuneError, RecipeError, check_range, did_you_mean, shown, warn
from . import STRATEGIES, Strategy, merge_added, restore_added

ADAPTER_DIR = "adapter"
# LoRA parameters are named <layer>.lora_A.<adapter>.weight (lora_embedding_A for embeddings).
_ADAPTER_PARAM = re.compile(r"(^|\.)lora_")
_LORA_TYPES = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise FinetuneError("strategy lora needs the package 'peft' (pip install 'finetunekit[peft]')") from None
    return peft


def adapted_root(backbone: nn.Module) -> nn.Module:
    """The timm / transformers model inside a backbone: target names and the peft adapter
    directory are relative to it, as they are for peft users of that library."""
    return getattr(backbone, "model", backbone)


def is_adapter_parameter(name: str) -> bool:
    return bool(_ADAPTER_PARAM.search(name))


# -- which layers ------------------------------------------------------------------------------------


def _unsupported(module: nn.Module) -> str | None:
    """Why LoRA cannot adapt ``module`` (None when it can)."""
    if not isinstance(module, _LORA_TYPES):
        return type(module).__name__
    if isinstance(module, nn.modules.conv._ConvNd) and module.groups != 1:
        # peft cannot merge an adapter into a grouped (depthwise) convolution.
        return f"{type(module).__name__} with groups={module.groups}"
    return None


def default_targets(root: nn.Module, rank: int) -> list[str]:
    targets = []
    for name, module in root.named_modules():
        if isinstance(module, nn.Linear):
            narrow = min(module.in_features, module.out_features)
        elif isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1:
            narrow = min(module.in_channels, module.out_channels)
        else:
            continue
        # A rank as wide as the layer is no low-rank update (narrow squeeze layers of SE blocks).
        if narrow > rank:
            targets.append(name)
    return targets


def resolve_targets(root: nn.Module, wanted: list[str] | None, rank: int) -> list[str]:
    """Full module names for ``strategy.lora_targets`` (``None``: the default rule)."""
    if wanted is None:
        found = default_targets(root, rank)
        if not found:
            raise RecipeError(
                "strategy.lora_targets: the backbone has no Linear or 1x1 convolution layer wider than "
                "strategy.lora_rank for the default rule; name the layers to adapt"
            )
        return found
    modules = [(n, m) for n, m in root.named_modules() if n]
    adaptable = [n for n, m in modules if _unsupported(m) is None]
    targets: set[str] = set()
    for entry in wanted:
        matched = [(n, m) for n, m in modules if n == entry or n.endswith("." + entry)]
        usable = [n for n, m in matched if _unsupported(m) is None]
        if usable:
            targets.update(usable)
            continue
        if matched:
            name, module = matched[0]
            raise RecipeError(
                f"strategy.lora_targets: {entry!r} matches only layers LoRA cannot adapt ({name}: {_unsupported(module)}); "
                "LoRA adapts Linear, Embedding and ungrouped Conv1d/Conv2d/Conv3d layers"
            )
        leaves = sorted({n.rsplit(".", 1)[-1] for n in adaptable})
        raise RecipeError(
            f"strategy.lora_targets: {entry!r} matches no layer of the backbone{did_you_mean(entry, leaves)}; "
            f"adaptable layers include {', '.join(leaves[:12])} (e.g. {', '.join(adaptable[:3])}); "
            "give a layer name or a dotted suffix of one"
        )
    order = {n: i for i, (n, _) in enumerate(modules)}
    return sorted(targets, key=order.__getitem__)


def plan(backbone: nn.Module, spec: Any) -> dict[str, Any]:
    """The adapter description saved in ``finetunekit.json``: everything that rebuilds it."""
    wanted = spec.lora_targets
    if wanted is None and hasattr(backbone, "attention_projections"):
        # an encoder-decoder's default: its attention projections (every Linear would include
        # the vocabulary-wide output layer)
        wanted = backbone.attention_projections()
    targets = resolve_targets(adapted_root(backbone), wanted, spec.lora_rank)
    return {"kind": "lora", "targets": targets, "rank": int(spec.lora_rank), "alpha": float(spec.lora_alpha),
            "dropout": float(spec.lora_dropout), "directory": ADAPTER_DIR}


# -- applying, merging, saving ---------------------------------------------------------------------


def lora_config(description: dict[str, Any]) -> Any:
    peft = _peft()
    return peft.LoraConfig(
        r=int(description["rank"]), lora_alpha=description["alpha"], lora_dropout=float(description["dropout"]),
        target_modules=list(description["targets"]),
    )


def inject_adapter(backbone: nn.Module, description: dict[str, Any]) -> None:
    """Insert the described LoRA layers into ``backbone`` (in place; names gain ``.base_layer``
    and ``.lora_A.default`` / ``.lora_B.default``)."""
    if description.get("kind") != "lora":
        raise FinetuneError(f"unknown adapter kind {description.get('kind')!r} in the run directory")
    peft = _peft()
    peft.inject_adapter_in_model(lora_config(description), adapted_root(backbone))


def merge_into_backbone(backbone: nn.Module) -> None:
    """Fold every adapter layer of ``backbone`` into its weights and put the plain layer back
    (peft's merge_and_unload, for adapters injected in place)."""
    _peft()
    from peft.tuners.tuners_utils import BaseTunerLayer

    root = adapted_root(backbone)
    for name, module in list(root.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(root.get_submodule(parent) if parent else root, child, module.get_base_layer())
    if hasattr(root, "peft_config"):
        del root.peft_config


def merge_adapters(model: nn.Module) -> bool:
    """Merge the model's adapters into its backbone. Returns whether anything was merged."""
    return merge_added(model)


def save_adapter(model: nn.Module, directory: Path) -> None:
    """A standard peft adapter directory, for ``PeftModel.from_pretrained(<the backbone's timm or
    transformers model with its pretrained weights>, directory)``, plus the new head."""
    from safetensors.torch import save_file

    peft = _peft()
    root = adapted_root(model.backbone)
    directory.mkdir(parents=True, exist_ok=True)
    lora_config(model.adapter).save_pretrained(str(directory))
    # PeftModel wraps the base model as base_model.model; its saved keys carry that prefix.
    state = {f"base_model.model.{k}": v for k, v in peft.get_peft_model_state_dict(root).items()}
    clean = lambda tensors: {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}  # noqa: E731
    save_file(clean(state), str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    save_file(clean(model.head.state_dict()), str(directory / "head.safetensors"), metadata={"format": "pt"})


# -- the strategy ----------------------------------------------------------------------------------


@dataclass
class LoraOptions:
    """``strategy:`` options of lora: rank-``lora_rank`` adapters scaled by alpha/rank on the
    ``lora_targets`` layers (names or dotted suffixes; null: every Linear and 1x1 convolution);
    ``lora_merge_on_save`` folds them into the saved weights (a plain model), false keeps them
    separate (and writes a peft adapter directory)."""

    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: list[str] | None = None
    lora_merge_on_save: bool = True

    def __post_init__(self) -> None:
        check_range("strategy.lora_rank", self.lora_rank, 1, 4096)
        check_range("strategy.lora_alpha", self.lora_alpha, 0.0, 1e6, low_open=True)
        check_range("strategy.lora_dropout", self.lora_dropout, 0.0, 1.0, high_open=True)
        if self.lora_targets is not None:
            if not self.lora_targets:
                raise RecipeError("strategy.lora_targets: give at least one layer name, or null for the default layers")
            for i, target in enumerate(self.lora_targets):
                if not target.strip() or target != target.strip() or target.startswith(".") or target.endswith("."):
                    raise RecipeError(f"strategy.lora_targets[{i}]: {shown(target)} is not a layer name (e.g. 'query' or 'attn.qkv')")


@STRATEGIES.register("lora")
class Lora(Strategy):
    """LoRA adapters (``strategy.lora_*``) and the head train; the original backbone is frozen.

    Two optimizer groups: ``lora`` at ``train.lr`` and ``head`` at ``train.head_lr``. Adapters
    start as a zero update and need a larger rate than full fine-tuning; the per-strategy defaults
    are in finetunekit.run.defaults.
    """

    Options = LoraOptions
    supports_layer_decay = False  # the adapters train as one group; the original layers are frozen

    @classmethod
    def card_lines(cls, spec: Any) -> list[str]:
        layers = ", ".join(f"`{t}`" for t in spec.lora_targets) if spec.lora_targets else "every Linear and 1x1 convolution layer"
        saved = ("merged into the saved weights (a plain model)" if spec.lora_merge_on_save
                 else f"kept separate (`{ADAPTER_DIR}/` is a peft adapter directory, with the head in `head.safetensors`)")
        return [f"- LoRA adapters: rank {spec.lora_rank}, alpha {spec.lora_alpha:g}, dropout {spec.lora_dropout:g}, "
                f"on {layers} of the frozen backbone; {saved}"]

    # -- the adapters in the run directory (kept unmerged: strategy.lora_merge_on_save false) ------
    @classmethod
    def save_extra(cls, model: nn.Module) -> dict[str, Callable[[Path], None]]:
        return {model.adapter.get("directory", ADAPTER_DIR): lambda tmp: save_adapter(model, tmp)}

    @classmethod
    def restore(cls, backbone: nn.Module, description: dict[str, Any]) -> None:
        inject_adapter(backbone, description)

    @classmethod
    def merge(cls, backbone: nn.Module) -> None:
        merge_into_backbone(backbone)

    # One phase for the whole run: what trains and the group rates never change with the epoch.
    def trainable_groups(self, model: nn.Module) -> set[int]:
        return set()  # no original backbone layer group trains; the adapters do

    def group_lrs(self, num_groups: int, epoch: int) -> dict[str, float]:
        return {"lora": self.lr, "head": self.head_lr}

    def _apply_trainable(self, model: nn.Module, trainable: set[int]) -> None:
        # Layer groups list the adapters' parameters too (they live inside the backbone); whatever
        # the groups say, exactly the adapters and the head train.
        for name, param in model.backbone.named_parameters():
            param.requires_grad_(is_adapter_parameter(name))
        for param in model.head.parameters():
            param.requires_grad_(True)

    def setup(self, model: nn.Module, lr: float, head_lr: float | None, pretrained: bool = True) -> list[dict[str, Any]]:
        description = plan(model.backbone, self.spec)  # a bad target list fails before any warning
        if not pretrained:
            warn("strategy lora on a backbone with model.pretrained=false: only low-rank updates of random weights will train")
        self.lr, self.head_lr = lr, head_lr or lr
        restore_added(model, description)  # records the description as model.adapter
        self._apply_trainable(model, set())
        # The backbone's BatchNorm layers are frozen layers, so FineTuneModel.train() keeps them in
        # eval mode: the pretrained running statistics normalise the adapted activations in training
        # and at inference alike, and merging stays an exact weight edit.
        model.freeze_batchnorm_stats = True
        adapters = [p for n, p in model.backbone.named_parameters() if is_adapter_parameter(n)]
        return [
            {"name": "lora", "params": adapters, "base_lr": self.lr, "lr": self.lr},
            {"name": "head", "params": list(model.head.parameters()), "base_lr": self.head_lr, "lr": self.head_lr},
        ]

    def finalize(self, model: nn.Module) -> bool:
        if self.spec.lora_merge_on_save:
            return merge_added(model)
        return False

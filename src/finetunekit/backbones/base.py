"""The backbone contract every source implements.

A backbone turns a batch (a dict of tensors made by its own preprocessing) into one feature vector
per example; image backbones also give their multi-scale feature maps (``feature_maps``, with
``feature_info``: channels and stride of each) for dense tasks (segmentation, detection). It also knows how to rebuild its architecture without the pretrained weights (so a run
directory can be loaded offline from its own files), and how its parameters split into ordered layer
groups, input side first, which freezing strategies and per-layer learning rates use.

A backbone serves one modality (``modality``, a name in ``finetunekit.modalities.MODALITIES``),
and provides what that modality needs of it (``Modality.backbone_needs``): text needs
:meth:`Backbone.tokenize` and :attr:`Backbone.pad_token_id`, which the base class declares and
refuses; ``Modality.check_backbone`` says when a backbone lacks one.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..core.errors import FinetuneError

_WEIGHTS_FOLLOW: contextvars.ContextVar[bool] = contextvars.ContextVar("finetunekit_weights_follow", default=False)


@contextlib.contextmanager
def weights_follow() -> Iterator[None]:
    """Within it, a backbone rebuilt from its description may skip drawing random initial weights
    (every one of them is about to be replaced by the run's saved weights, every key checked):
    loading a run for prediction. Training from a run keeps the draws, so its random stream, and
    with it the new head and the run, stay what they were."""
    token = _WEIGHTS_FOLLOW.set(True)
    try:
        yield
    finally:
        _WEIGHTS_FOLLOW.reset(token)


def weights_follow_now() -> bool:
    """Whether the backbone being built gets its weights from a run right after (:func:`weights_follow`)."""
    return _WEIGHTS_FOLLOW.get()


class Backbone(nn.Module):
    modality: ClassVar[str]  # the modality it serves (finetunekit.modalities)
    kind: ClassVar[str]  # the key that rebuilds it: BACKBONE_KINDS[kind].from_description(...)
    saves_assets: ClassVar[bool] = False  # True: save_assets writes files a run directory keeps (backbone/)
    num_features: int

    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # (B, num_features)
        raise NotImplementedError

    def feature_maps(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Multi-scale feature maps ``(B, C_i, H_i, W_i)``, input side first (dense tasks); see
        :meth:`feature_info` for each one's channels and stride."""
        raise FinetuneError(f"a {self.modality} backbone ({self.kind}) gives no feature maps")

    def feature_info(self) -> list[dict[str, int]]:
        """``[{"channels": C_i, "stride": S_i}, ...]`` for :meth:`feature_maps`, input side first."""
        raise FinetuneError(f"a {self.modality} backbone ({self.kind}) gives no feature maps")

    def layer_groups(self) -> list[list[str]]:
        """Parameter names (relative to this module), grouped and ordered from input to output."""
        raise NotImplementedError

    def tokenize(self, texts: list[Any], max_length: int) -> dict[str, list[list[int]]]:
        """Text modalities: token ids (``input_ids``, ``attention_mask``...) of texts or pairs."""
        raise FinetuneError(f"a {self.modality} backbone ({self.kind}) does not tokenize")

    @property
    def pad_token_id(self) -> int:
        """Text modalities: the id that pads token batches."""
        raise FinetuneError(f"a {self.modality} backbone ({self.kind}) has no padding token")

    def token_embedding_names(self) -> list[str]:
        """Names (relative to this module) of the input token-embedding tables: text backbones only.
        They are frozen by default when fine-tuning a pretrained model (``strategy.train_token_embeddings``)."""
        return []

    def as_seq2seq(self) -> Backbone:
        """The encoder-decoder form of this backbone, for tasks that generate text
        (:class:`finetunekit.backbones.seq2seq.Seq2SeqBackbone`); an encoder alone has none."""
        raise FinetuneError(
            f"model.backbone: a {self.modality} {self.kind} backbone is an encoder without a decoder; generating text "
            "needs an encoder-decoder (bundled:whisper_tiny_en, bundled:whisper_base, whisper:<folder> for speech)"
        )

    def preprocessing(self) -> dict[str, Any]:
        """JSON-serialisable description of the input pipeline (image sizes and norms, text length)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description that rebuilds the architecture with random weights."""
        raise NotImplementedError

    def save_assets(self, directory: Path) -> None:
        """Write what :meth:`from_description` needs besides the description (tokenizer, config)."""

    @classmethod
    def from_description(cls, description: dict[str, Any], assets: Path) -> Backbone:
        raise NotImplementedError


def check_layer_groups(backbone: Backbone) -> None:
    """Every trainable parameter belongs to exactly one group (used by tests and at build time)."""
    names = [n for n, _ in backbone.named_parameters()]
    grouped = [n for group in backbone.layer_groups() for n in group]
    if sorted(names) != sorted(grouped):
        missing = sorted(set(names) - set(grouped))[:5]
        extra = sorted(set(grouped) - set(names))[:5]
        raise AssertionError(f"layer groups of {type(backbone).__name__} do not cover parameters: missing {missing}, unknown {extra}")

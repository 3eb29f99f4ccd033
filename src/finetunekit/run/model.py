"""FineTuneModel: a pretrained backbone plus a new head (built by the task, finetunekit.tasks).

Example::

    task = TASKS.get("classification").from_data({}, train_examples)
    model = FineTuneModel(backbone, task.head_for(backbone, dropout=0.1))

The model owns the head-swap contract (``reset_head``) and the rule that frozen parts keep their
BatchNorm statistics: ``model.train()`` puts every normalisation layer whose parameters are all
frozen back into eval mode, so a linear probe never drifts the running means.
"""

from __future__ import annotations

import torch
from torch import nn

from ..backbones import Backbone


class FineTuneModel(nn.Module):
    def __init__(self, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.freeze_batchnorm_stats = False  # set by the strategy (StrategySpec.batchnorm)
        # set while layers a strategy added (adapters) sit inside the backbone: their description,
        # {"kind": <strategy name>, ...}, saved in the run directory so the loader can re-insert
        # them (finetunekit.strategies: restore_added, merge_added)
        self.adapter: dict | None = None
        self.head = head

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """Pooled backbone features (a batch from the frozen-feature cache carries them already),
        or the backbone's feature maps for a head of a dense task (``head.takes_feature_maps``)."""
        if "features" in batch:
            return batch["features"]
        if getattr(self.head, "takes_feature_maps", False):
            return self.backbone.feature_maps(batch)
        return self.backbone.forward_features(batch)

    def forward(self, batch: dict[str, torch.Tensor], return_features: bool = False):
        """The head's outputs; with ``return_features``, ``(logits, features)`` for losses on the features
        (distillation) from the same pass, through the wrapper a distributed run syncs on."""
        if getattr(self.head, "takes_batch", False):
            # a head that drives the backbone itself (a seq2seq task's decoder: teacher forcing
            # from the batch's targets, or generation); it has no pooled features to give
            outputs = self.head(self.backbone, batch)
            return (outputs, None) if return_features else outputs
        features = self.features(batch)
        logits = self.head(features)
        return (logits, features) if return_features else logits

    def reset_head(self, head: nn.Module) -> None:
        """Put a new head on the backbone (built by a task from ``backbone.num_features``)."""
        self.head = head

    def train(self, mode: bool = True) -> FineTuneModel:
        super().train(mode)
        if mode:
            for module in self.backbone.modules():
                params = list(module.parameters(recurse=False))
                if not isinstance(module, nn.modules.batchnorm._BatchNorm):
                    continue
                if self.freeze_batchnorm_stats or (params and not any(p.requires_grad for p in params)):
                    module.eval()
            # A fully frozen backbone also drops its dropout: it is a fixed feature extractor.
            if not any(p.requires_grad for p in self.backbone.parameters()):
                self.backbone.eval()
        return self

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total) parameter counts."""
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, total

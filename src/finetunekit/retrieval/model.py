"""The dual encoder: two backbones, a linear projection on each into one shared space, and a
learned temperature; the symmetric InfoNCE loss over in-batch negatives.

Example::

    model = DualEncoder(image_backbone, text_backbone, embed_dim=256)
    img = model.encode_image({"pixel_values": pixels})           # (B, 256), unit length
    txt = model.encode_text(token_batch)                          # (B, 256), unit length
    loss = contrastive_loss(img, txt, model.logit_scale.exp())
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# CLIP clamps the learned logit scale at 100 (a temperature of 0.01) so that it cannot blow up
MAX_LOGIT_SCALE = math.log(100.0)


class DualEncoder(nn.Module):
    """``image`` and ``text`` are finetunekit backbones (``forward_features`` gives one pooled vector
    per example). A batch may carry the towers' features already (``image_features`` /
    ``text_features``, from the feature cache): the tower is then not run at all."""

    def __init__(self, image: nn.Module, text: nn.Module, embed_dim: int, init_temperature: float = 0.07,
                 image_projection_hidden: int = 0, image_projection_dropout: float = 0.0) -> None:
        super().__init__()
        self.image = image
        self.text = text
        # the image side: linear (image_projection_hidden 0), or a two-layer MLP (Linear, GELU, Linear);
        # in training, dropout on the image features that enter it (image_projection_dropout): with the
        # image tower locked, each image's features are the same every epoch, and the projection
        # otherwise learns them by heart within a few epochs
        if image_projection_hidden:
            self.image_proj: nn.Module = nn.Sequential(
                nn.Linear(image.num_features, image_projection_hidden), nn.GELU(), nn.Linear(image_projection_hidden, embed_dim, bias=False))
        else:
            self.image_proj = nn.Linear(image.num_features, embed_dim, bias=False)
        self.image_dropout = nn.Dropout(image_projection_dropout)
        self.image_projection = {"hidden": image_projection_hidden, "dropout": image_projection_dropout}
        self.text_proj = nn.Linear(text.num_features, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.embed_dim = embed_dim
        self.unlocked_text_layers = 0  # how many top text layers run on cached token states (set by the trainer)

    def image_features(self, batch: dict[str, Any]) -> torch.Tensor:
        if "image_features" in batch:
            return batch["image_features"]
        return self.image.forward_features({"pixel_values": batch["pixel_values"]})

    def text_features(self, batch: dict[str, Any]) -> torch.Tensor:
        if "text_features" in batch:
            return batch["text_features"]
        if "text_states" in batch:
            return self.text_from_states(batch["text_states"], batch["attention_mask"])
        return self.text.forward_features({k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")})

    def text_from_states(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The text tower's pooled features from token states cached below its top
        ``self.unlocked_text_layers`` layers (``strategy.unlocked_text_layers``): those layers run on
        the states, then the tower's own pooling, as its ``forward_features`` would."""
        from transformers.masking_utils import create_bidirectional_mask

        from .encode import text_layers

        model = self.text.model
        mask = create_bidirectional_mask(config=model.config, inputs_embeds=states, attention_mask=attention_mask)
        for layer in text_layers(self.text)[len(text_layers(self.text)) - self.unlocked_text_layers:]:
            states = layer(states, mask)
            states = states[0] if isinstance(states, tuple) else states
        if self.text.pooling == "cls":
            return states[:, 0]
        weights = attention_mask.unsqueeze(-1).to(states.dtype)
        return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def encode_image(self, batch: dict[str, Any]) -> torch.Tensor:
        return F.normalize(self.image_proj(self.image_dropout(self.image_features(batch).float())), dim=-1)

    def encode_text(self, batch: dict[str, Any]) -> torch.Tensor:
        return F.normalize(self.text_proj(self.text_features(batch).float()), dim=-1)

    def clamp_logit_scale(self) -> None:
        """After each optimizer step, as CLIP does: 0 <= log scale <= log 100."""
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)

    def head_parameters(self) -> list[nn.Parameter]:
        return [*self.image_proj.parameters(), self.text_proj.weight, self.logit_scale]

    def describe(self) -> dict[str, Any]:
        out = {"image_backbone": self.image.describe(), "text_backbone": self.text.describe(), "embed_dim": self.embed_dim}
        if self.image_projection["hidden"] or self.image_projection["dropout"]:
            out["image_projection"] = dict(self.image_projection)
        return out


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP): row i of each side is the other's positive, every other row of the
    batch a negative; the mean of the image->text and text->image cross-entropies. ``label_smoothing``
    (``train.label_smoothing``) moves that share of each target onto the batch's other rows."""
    logits = logit_scale * image_emb @ text_emb.T
    targets = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
            + F.cross_entropy(logits.T, targets, label_smoothing=label_smoothing)) / 2

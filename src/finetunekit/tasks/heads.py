"""Heads that sit on the backbone's pooled features; tasks build them (finetunekit.tasks)."""

from __future__ import annotations

import torch
from torch import nn


class LinearHead(nn.Module):
    """Dropout + one linear layer: ``out_features`` logits or values."""

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, out_features)
        self.in_features = in_features
        self.out_features = out_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features))

    def describe(self) -> dict:
        return {"kind": "linear", "in_features": self.in_features, "out_features": self.out_features, "dropout": self.dropout.p}

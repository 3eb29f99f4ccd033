"""The generation-backbone contract (placeholder until the generation task's own version is merged)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from .base import Backbone


class Seq2SeqBackbone(Backbone):
    is_seq2seq: ClassVar[bool] = True
    decoder_start_token_id: int
    eos_token_id: int
    vocab_size: int
    max_target_positions: int

    def target_tokenize(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def decode_text(self, ids: list[int]) -> str:
        raise NotImplementedError

    def forward_seq2seq(self, batch: dict[str, torch.Tensor], decoder_input_ids: torch.Tensor,
                        decoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def generate(self, batch: dict[str, torch.Tensor], *, num_beams: int = 1, max_new_tokens: int = 64,
                 length_penalty: float = 1.0) -> list[list[int]]:
        raise NotImplementedError

    def lora_target_names(self) -> list[str]:
        return []

    def encoder_module_names(self) -> list[str]:
        return []

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

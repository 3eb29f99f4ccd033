"""The generation-backbone contract: encoder-decoders that write text (speech recognition, translation).

A :class:`Seq2SeqBackbone` is a :class:`~finetunekit.backbones.base.Backbone` (its encoder's
mean-pooled states are still ``forward_features``) that also owns a decoder and its tokenizer.
The ``seq2seq`` task (:mod:`finetunekit.tasks.seq2seq`) trains and decodes through these members
only, so any encoder-decoder that provides them trains, evaluates, predicts and exports alike:

=============================  ==========================================================================
member                         meaning
=============================  ==========================================================================
``modality``                   the input modality: ``"audio"`` (Whisper) or ``"text"`` (translation)
``is_seq2seq``                 ``True`` (an encoder-only backbone has no such attribute)
``text_metric``                how its outputs are judged: ``"wer"`` (words heard) or ``"bleu"`` (translations)
``model``                      the transformers encoder-decoder (``PreTrainedModel``); LoRA target names
                               and peft's adapter directory are relative to it
``decoder_start_token_id``     the first decoder token
``decoder_prompt``             the tokens every decoding starts from (default ``[decoder_start_token_id]``;
                               Whisper: ``<|startoftranscript|><|notimestamps|>``); never scored
``eos_token_id``               ends a target and a generation
``pad_token_id``               pads decoder inputs (positions masked by ``decoder_attention_mask``)
``vocab_size``                 width of the logits
``max_target_positions``       the decoder's positions: prompt + target must fit
``target_tokenize(texts)``     ``list[list[int]]``: target ids ending in ``eos``, without the prompt
``decode_text(ids)``           ``str``: ids (prompt and special tokens dropped) back to text
``encode(batch)``              ``(hidden (B, S, D), mask (B, S) bool)``: the encoder over the batch's inputs
``forward_seq2seq(batch, decoder_input_ids, decoder_attention_mask)``
                               logits ``(B, T, vocab_size)``, teacher-forced: position t predicts the
                               token after ``decoder_input_ids[:, t]``
``generate(batch, *, num_beams, max_new_tokens, length_penalty)``
                               ``list[list[int]]``: per example the generated ids, prompt and ``eos``
                               removed; batched greedy (``num_beams=1``) or beam search, with the
                               decoder's key/value cache (transformers' ``GenerationMixin.generate``)
``attention_projections()``    module names (relative to ``model``) of the attention projections:
                               LoRA's default targets for this backbone
``encoder_groups()``           how many of ``layer_groups()`` (input side first) are the encoder's: the
                               ``frozen_encoder`` strategy freezes those
``layer_groups()``             encoder groups first, then the decoder's, output side last (layer-wise
                               learning rates decay from the decoder's end)
``pipeline_task``,             ``finetunekit export --format hf``: write a directory the transformers
``save_transformers(dir, ...)``,  pipeline loads, and give it inputs; the export checks that the
``pipeline_inputs(inputs)``    pipeline writes the same texts
``describe()`` /               rebuild the architecture from a run directory (``BACKBONE_KINDS``)
``from_description()`` /
``save_assets()``
=============================  ==========================================================================

The base class implements ``forward_seq2seq`` and ``generate`` for any transformers encoder-decoder
whose ``forward`` takes ``encoder_outputs``, ``attention_mask`` (the encoder's padding, used by the
cross-attention), ``decoder_input_ids`` and ``decoder_attention_mask`` (Marian, T5, BART,
``EncoderDecoderModel``); a subclass provides ``encode`` and the tokenizer members. A model whose
cross-attention takes no encoder mask (transformers' Whisper) overrides :meth:`cross_attention_mask`.

Example::

    from finetunekit.backbones import create_backbone
    backbone = create_backbone("bundled:whisper_tiny_en").as_seq2seq()
    batch = backbone.featurize([waveform_16k])
    ids = backbone.generate(batch, num_beams=4, max_new_tokens=40, length_penalty=1.0)
    backbone.decode_text(ids[0])                    # 'Enter 2981.'
    targets = backbone.target_tokenize(["ENTER TWO NINE EIGHT ONE"])
    prompt = torch.tensor([backbone.decoder_prompt])
    logits = backbone.forward_seq2seq(batch, torch.cat([prompt, torch.tensor([targets[0][:-1]])], 1), None)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import nn

from ..core.errors import FinetuneError
from .base import Backbone


class Seq2SeqBackbone(Backbone):
    """An encoder-decoder that writes text; see the module docstring for the contract."""

    is_seq2seq: ClassVar[bool] = True
    text_metric: ClassVar[str] = "bleu"
    model: Any
    decoder_start_token_id: int
    eos_token_id: int
    vocab_size: int
    max_target_positions: int

    @property
    def decoder_prompt(self) -> list[int]:
        return [int(self.decoder_start_token_id)]

    @property
    def pad_token_id(self) -> int:
        return int(self._pad_token_id)

    # -- tokens ---------------------------------------------------------------------------------
    def target_tokenize(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def decode_text(self, ids: list[int]) -> str:
        raise NotImplementedError

    # -- the forward ----------------------------------------------------------------------------
    def encode(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(hidden (B, S, D), mask (B, S) bool)`` of the encoder over the batch's inputs."""
        raise NotImplementedError

    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden, mask = self.encode(batch)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    @contextlib.contextmanager
    def cross_attention_mask(self, mask: torch.Tensor) -> Iterator[dict[str, Any]]:
        """The keyword arguments that give the decoder's cross-attention the encoder's padding
        ``mask`` (B, S): transformers' encoder-decoders take it as ``attention_mask``."""
        yield {"attention_mask": mask.long()}

    def forward_seq2seq(self, batch: dict[str, torch.Tensor], decoder_input_ids: torch.Tensor,
                        decoder_attention_mask: torch.Tensor | None) -> torch.Tensor:
        from transformers.modeling_outputs import BaseModelOutput

        hidden, mask = self.encode(batch)
        with self.cross_attention_mask(mask) as extra:
            out = self.model(encoder_outputs=BaseModelOutput(last_hidden_state=hidden), decoder_input_ids=decoder_input_ids,
                             decoder_attention_mask=decoder_attention_mask, use_cache=False, **extra)
        return out.logits

    def generation_options(self) -> dict[str, Any]:
        """Extra ``GenerationConfig`` fields of this model (Whisper: its suppressed tokens)."""
        return {}

    @torch.no_grad()
    def generate(self, batch: dict[str, torch.Tensor], *, num_beams: int = 1, max_new_tokens: int = 64,
                 length_penalty: float = 1.0) -> list[list[int]]:
        from transformers import GenerationConfig
        from transformers.generation.utils import GenerationMixin
        from transformers.modeling_outputs import BaseModelOutput

        hidden, mask = self.encode(batch)
        prompt = torch.tensor([self.decoder_prompt] * hidden.shape[0], dtype=torch.long, device=hidden.device)
        room = int(self.max_target_positions) - prompt.shape[1]
        if room < 1:
            raise FinetuneError(f"the decoder's {self.max_target_positions} positions leave no room after its prompt")
        config = GenerationConfig(
            max_new_tokens=min(int(max_new_tokens), room), num_beams=int(num_beams), length_penalty=float(length_penalty),
            do_sample=False, early_stopping=True if num_beams > 1 else False, eos_token_id=int(self.eos_token_id),
            pad_token_id=int(self.pad_token_id), decoder_start_token_id=int(self.decoder_start_token_id), use_cache=True,
            **self.generation_options(),
        )
        with self.cross_attention_mask(mask) as extra:
            # the generic generate, not a model's own override (Whisper's adds long-form and
            # language logic that would re-run its encoder on 30-second windows)
            out = GenerationMixin.generate(self.model, encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
                                           decoder_input_ids=prompt, decoder_attention_mask=torch.ones_like(prompt),
                                           generation_config=config, **extra)
        results = []
        eos = int(self.eos_token_id)
        for row in out[:, prompt.shape[1]:].tolist():
            results.append(row[: row.index(eos)] if eos in row else row)
        return results

    # -- export ---------------------------------------------------------------------------------
    pipeline_task: ClassVar[str] = "text2text-generation"  # the transformers pipeline an export serves

    def save_transformers(self, directory: Any, num_beams: int, length_penalty: float, max_new_tokens: int) -> None:
        """Write a directory ``transformers.pipeline(self.pipeline_task)`` loads, decoding as
        :meth:`generate` does with these settings (``finetunekit export --format hf``)."""
        raise NotImplementedError

    def pipeline_inputs(self, inputs: list[Any]) -> list[Any]:
        """Inputs (as predict takes them) in the form the pipeline takes them; texts: unchanged."""
        return list(inputs)

    # -- what strategies need -------------------------------------------------------------------
    def attention_projections(self) -> list[str]:
        raise NotImplementedError

    def encoder_groups(self) -> int:
        raise NotImplementedError

    def as_seq2seq(self) -> Seq2SeqBackbone:
        return self


class CrossAttentionMask:
    """Forward pre-hooks that give ``attention_mask`` to cross-attention modules whose caller passes
    none (transformers' Whisper decoder): an additive mask ``(B, 1, 1, S)``, 0 on the encoder's
    own positions and the dtype's minimum on padding. Under beam search the decoder runs
    ``num_beams`` rows per example (examples repeated in place), and the mask is repeated alike.

    Example::

        with CrossAttentionMask([layer.encoder_attn for layer in decoder.layers], mask):
            model(encoder_outputs=..., decoder_input_ids=...)
    """

    def __init__(self, modules: list[nn.Module], mask: torch.Tensor) -> None:
        self.modules, self.mask, self.handles = modules, mask.bool(), []

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        hidden = args[0] if args else kwargs["hidden_states"]
        mask = self.mask
        if hidden.shape[0] != mask.shape[0]:
            mask = mask.repeat_interleave(hidden.shape[0] // mask.shape[0], dim=0)
        additive = torch.zeros(mask.shape, dtype=hidden.dtype, device=hidden.device)
        additive = additive.masked_fill(~mask.to(hidden.device), torch.finfo(hidden.dtype).min)
        return args, {**kwargs, "attention_mask": additive[:, None, None, :]}

    def __enter__(self) -> CrossAttentionMask:
        if not bool(self.mask.all()):  # nothing padded: nothing to mask
            self.handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True) for m in self.modules]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

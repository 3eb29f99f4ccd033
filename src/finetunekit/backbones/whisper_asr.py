"""Whisper as a speech-recognition backbone: the whole encoder-decoder, its tokenizer and decoding
settings, behind the :class:`~finetunekit.backbones.seq2seq.Seq2SeqBackbone` contract.

The encoder runs on a clip's own frames, as the audio classification backbone does
(:func:`~finetunekit.backbones.whisper_ct2.encode_own_frames`: positional embeddings sliced to the
clip, padded frames masked), and the decoder's cross-attention is masked to each clip's own
positions (:class:`~finetunekit.backbones.seq2seq.CrossAttentionMask`), so a clip is transcribed
the same alone or in any batch. ``frames="window"`` pads every clip to Whisper's 30-second window
instead, as OpenAI's decoding does (docs/seq2seq.md measures both).

Example::

    from finetunekit.backbones import create_backbone
    asr = create_backbone("bundled:whisper_tiny_en").as_seq2seq()
    ids = asr.generate(asr.featurize([wave]), num_beams=1, max_new_tokens=40)
    asr.decode_text(ids[0])     # 'Enter 2981.'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..core.errors import FinetuneError
from .seq2seq import CrossAttentionMask, Seq2SeqBackbone
from .whisper_ct2 import HOP_LENGTH, WhisperEncoderBackbone, encode_own_frames

DECODING_FILE = "decoding.json"


class WhisperSeq2SeqBackbone(Seq2SeqBackbone):
    """transformers' ``WhisperForConditionalGeneration`` with its tokenizer and feature extractor."""

    modality = "audio"
    kind = "whisper_seq2seq"
    saves_assets = True
    text_metric: ClassVar[str] = "wer"

    def __init__(self, model: Any, feature_extractor: Any, tokenizer: Any, decoding: dict[str, Any], frames: str = "own") -> None:
        super().__init__()
        if frames not in ("own", "window"):
            raise FinetuneError(f"Whisper frames: expected 'own' or 'window', got {frames!r}")
        self.model = model
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer
        self.decoding = decoding
        self.frames = frames
        config = model.config
        self.config = config
        self.num_features = int(config.d_model)
        self.max_frames = int(config.max_source_positions) * 2  # conv2 has stride 2
        self.decoder_start_token_id = int(config.decoder_start_token_id)
        self.eos_token_id = int(config.eos_token_id)
        self._pad_token_id = int(config.pad_token_id if config.pad_token_id is not None else config.eos_token_id)
        self.vocab_size = int(config.vocab_size)
        self.max_target_positions = int(config.max_target_positions)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_converted(cls, directory: Path, pretrained: bool = True, frames: str = "own") -> WhisperSeq2SeqBackbone:
        """From a transformers Whisper directory: a converted bundled model, ``whisper:<folder>``,
        or a run directory's ``backbone/`` (``pretrained=False``: the architecture only)."""
        from transformers import (
            AutoTokenizer,
            WhisperConfig,
            WhisperFeatureExtractor,
            WhisperForConditionalGeneration,
        )

        from .hf_backbone import _load_quietly

        directory = Path(directory)
        config = WhisperConfig.from_pretrained(directory)
        model = _load_quietly(WhisperForConditionalGeneration, config)
        if pretrained:
            from safetensors.torch import load_file

            state = load_file(str(directory / "model.safetensors"))
            model.load_state_dict({k: t.float() for k, t in state.items()}, strict=False)
            model.tie_weights()
        try:
            tokenizer = _load_quietly(AutoTokenizer.from_pretrained, str(directory))
        except (OSError, ValueError, TypeError) as exc:
            raise FinetuneError(f"{directory}: no tokenizer a speech recognition model can write with ({exc})") from None
        decoding_path = directory / DECODING_FILE
        if decoding_path.is_file():
            decoding = json.loads(decoding_path.read_text(encoding="utf-8"))
        else:  # a Whisper saved by transformers: its prompt from the tokenizer, suppressions from the config
            notimestamps = tokenizer.convert_tokens_to_ids("<|notimestamps|>")
            unk = tokenizer.unk_token_id
            prompt = [int(config.decoder_start_token_id)] + ([int(notimestamps)] if notimestamps not in (None, unk) else [])
            decoding = {"prompt": prompt, "suppress_ids": list(config.suppress_tokens or []),
                        "suppress_ids_begin": list(config.begin_suppress_tokens or [])}
        return cls(model.eval(), WhisperFeatureExtractor.from_pretrained(directory), tokenizer, decoding, frames)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "frames": self.frames}

    def save_assets(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(directory)
        self.feature_extractor.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        keep = {k: self.decoding[k] for k in ("prompt", "suppress_ids", "suppress_ids_begin") if k in self.decoding}
        (directory / DECODING_FILE).write_text(json.dumps(keep, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_description(cls, description: dict[str, Any], assets: Path) -> WhisperSeq2SeqBackbone:
        return cls.from_converted(assets, pretrained=False, frames=str(description.get("frames", "own")))

    # -- inputs ---------------------------------------------------------------------------------
    sampling_rate = WhisperEncoderBackbone.sampling_rate

    def featurize(self, waveforms: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """As :meth:`WhisperEncoderBackbone.featurize` (each clip on its own frames); with
        ``frames="window"`` every clip padded to the 30-second window, all frames attended."""
        batch = WhisperEncoderBackbone.featurize(self, waveforms)  # type: ignore[arg-type]  (checks the length)
        if self.frames == "window":  # the feature extractor's own padding: log-mel of silence
            out = self.feature_extractor([np.asarray(w, dtype=np.float32) for w in waveforms], sampling_rate=self.sampling_rate,
                                         padding="max_length", max_length=self.max_frames * HOP_LENGTH, return_tensors="np")
            features = torch.from_numpy(out["input_features"])
            return {"input_features": features, "frame_mask": torch.ones(features.shape[0], features.shape[-1], dtype=torch.long)}
        return batch

    def preprocessing(self) -> dict[str, Any]:
        """The encoder backbone's (rate, mel bins, hop, window) and which frames the encoder reads."""
        return {**WhisperEncoderBackbone.preprocessing(self), "frames": self.frames}  # type: ignore[arg-type]

    def use_window(self, window: bool) -> None:
        """Encode every clip padded to Whisper's 30-second window (True) or on its own frames."""
        self.frames = "window" if window else "own"

    # -- export ---------------------------------------------------------------------------------
    pipeline_task: ClassVar[str] = "automatic-speech-recognition"

    def pipeline_inputs(self, inputs: list[Any]) -> list[Any]:
        """Audio files as the pipeline takes them without ffmpeg: decoded, at the model's rate."""
        from ..data.audio import read_audio

        return [{"raw": read_audio(p, self.sampling_rate), "sampling_rate": self.sampling_rate} for p in inputs]

    def save_transformers(self, directory: Path, num_beams: int, length_penalty: float, max_new_tokens: int) -> None:
        """A directory ``transformers.pipeline("automatic-speech-recognition")`` loads: the model,
        its tokenizer and feature extractor (its window the model's), and a generation config that
        decodes as this backbone does (prompt, suppressed tokens, beams, length)."""
        from transformers import GenerationConfig, WhisperFeatureExtractor

        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        seconds = self.max_frames * HOP_LENGTH // self.sampling_rate
        WhisperFeatureExtractor(feature_size=int(self.config.num_mel_bins), sampling_rate=self.sampling_rate,
                                chunk_length=int(seconds)).save_pretrained(directory)
        prompt = self.decoder_prompt
        tokens = self.tokenizer.convert_ids_to_tokens(prompt)
        config = GenerationConfig(
            decoder_start_token_id=self.decoder_start_token_id, eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id,
            bos_token_id=self.eos_token_id, max_new_tokens=int(max_new_tokens), num_beams=int(num_beams),
            length_penalty=float(length_penalty), early_stopping=num_beams > 1, **self.generation_options(),
        )
        if "<|notimestamps|>" in tokens:
            config.no_timestamps_token_id = int(prompt[tokens.index("<|notimestamps|>")])
        config.is_multilingual = len(prompt) > 2
        if config.is_multilingual:  # <|startoftranscript|><|xx|><|transcribe|><|notimestamps|>
            config.lang_to_id = {tokens[1]: int(prompt[1])}
            config.task_to_id = {"transcribe": int(prompt[2])}
            config.language, config.task = tokens[1], "transcribe"
        config.save_pretrained(directory)

    # -- tokens ---------------------------------------------------------------------------------
    @property
    def decoder_prompt(self) -> list[int]:
        return [int(i) for i in self.decoding["prompt"]]

    def target_tokenize(self, texts: list[str]) -> list[list[int]]:
        # Whisper writes a space before the first word after its prompt ("<|notimestamps|> Enter"),
        # so targets are tokenized the same way
        ids = self.tokenizer([" " + t.strip() for t in texts], add_special_tokens=False)["input_ids"]
        return [list(map(int, row)) + [self.eos_token_id] for row in ids]

    def decode_text(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)).strip()

    # -- the forward ----------------------------------------------------------------------------
    def encode(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.frames == "window" and batch["input_features"].shape[-1] != self.max_frames:
            batch = window_batch(batch, self.max_frames)
        return encode_own_frames(self.model.model.encoder, batch, self.max_frames, self.training)

    def cross_attention_mask(self, mask: torch.Tensor):  # type: ignore[override]
        """transformers' Whisper decoder passes no mask to its cross-attention: hooks add it."""
        return _Yielding(CrossAttentionMask([layer.encoder_attn for layer in self.model.model.decoder.layers], mask))

    def generation_options(self) -> dict[str, Any]:
        vocab = self.vocab_size
        options: dict[str, Any] = {}
        suppress = [int(i) for i in self.decoding.get("suppress_ids", []) if 0 <= int(i) < vocab]
        begin = [int(i) for i in self.decoding.get("suppress_ids_begin", []) if 0 <= int(i) < vocab]
        if suppress:
            options["suppress_tokens"] = suppress
        if begin:
            options["begin_suppress_tokens"] = begin
        return options

    # -- the contract ---------------------------------------------------------------------------
    def layer_groups(self) -> list[list[str]]:
        enc, dec = len(self.model.model.encoder.layers), len(self.model.model.decoder.layers)
        # encoder: stem (convolutions, positions), layers, final norm; decoder: embeddings, layers, final norm
        groups: list[list[str]] = [[] for _ in range(enc + 2 + dec + 2)]
        for name, _ in self.named_parameters():
            part = name.split(".")
            if part[2] == "encoder":
                index = 1 + int(part[4]) if part[3] == "layers" else enc + 1 if part[3] == "layer_norm" else 0
            elif part[2] == "decoder":
                base = enc + 2
                index = base + 1 + int(part[4]) if part[3] == "layers" else base + dec + 1 if part[3] == "layer_norm" else base
            else:  # an untied output projection
                index = len(groups) - 1
            groups[index].append(name)
        return [g for g in groups if g]

    def encoder_groups(self) -> int:
        return len(self.model.model.encoder.layers) + 2

    def token_embedding_names(self) -> list[str]:
        # tied to the output projection: frozen by default it keeps the pretrained vocabulary's
        # geometry and saves the dense update of a 51,864-row table every step
        return ["model.model.decoder.embed_tokens.weight"]

    def attention_projections(self) -> list[str]:
        return [name for name, _ in self.model.named_modules()
                if name.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj", "out_proj")]


class _Yielding:
    """A context manager around :class:`CrossAttentionMask` that yields no extra keyword arguments."""

    def __init__(self, hooks: CrossAttentionMask) -> None:
        self.hooks = hooks

    def __enter__(self) -> dict[str, Any]:
        self.hooks.__enter__()
        return {}

    def __exit__(self, *exc: Any) -> None:
        self.hooks.__exit__(*exc)


def window_batch(batch: dict[str, torch.Tensor], frames: int) -> dict[str, torch.Tensor]:
    """A batch of own-frame features padded with zeros to ``frames``, every frame in the mask
    (:meth:`WhisperSeq2SeqBackbone.featurize` pads the waveform instead, as Whisper does)."""
    features = batch["input_features"]
    if features.shape[-1] < frames:
        pad = features.new_zeros(*features.shape[:-1], frames - features.shape[-1])
        features = torch.cat([features, pad], -1)
    return {**batch, "input_features": features, "frame_mask": torch.ones(features.shape[0], features.shape[-1], dtype=torch.long)}

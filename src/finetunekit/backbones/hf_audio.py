"""Audio encoders from Hugging Face transformers (``AutoModel`` + ``AutoFeatureExtractor``):
wav2vec 2.0, HuBERT, WavLM (the raw waveform in) and the Audio Spectrogram Transformer (a
128-band filter bank in). ``hf:<id or folder>`` picks this class when the config's model type is
one of :data:`AUDIO_MODEL_TYPES`; Whisper goes to its own encoder backbone (own frames, no
30-second pad).

Example::

    from finetunekit.backbones import create_backbone
    backbone = create_backbone("hf:facebook/wav2vec2-base")        # online, or a saved folder
    batch = backbone.featurize([waveform_16k])                      # input_values, attention_mask
    backbone.forward_features(batch).shape                          # (1, 768): mean over the clip's frames
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.errors import FinetuneError
from .base import Backbone
from .hf_backbone import _load_quietly, hf_layer_groups, load_hf_checkpoint

# transformers model types whose AutoModel is an audio encoder this backbone drives
AUDIO_MODEL_TYPES = frozenset({"wav2vec2", "hubert", "wavlm", "data2vec-audio", "audio-spectrogram-transformer"})


class HFAudioBackbone(Backbone):
    """An audio encoder and its feature extractor; the features are the mean of the last hidden
    states over the clip's own frames (wav2vec 2.0, HuBERT: the attention mask mapped onto the
    convolutional frames), or the model's pooled output where it has one (AST: the mean of its CLS
    and distillation tokens)."""

    modality = "audio"
    kind = "hf_audio"
    saves_assets = True  # the config and the feature extractor's settings: the run directory's backbone/

    def __init__(self, model: nn.Module, feature_extractor: Any) -> None:
        super().__init__()
        self.model = model
        self.feature_extractor = feature_extractor
        self.num_features = int(model.config.hidden_size)
        # AST takes a fixed number of filter-bank frames; wav2vec 2.0 and HuBERT take samples
        self.input_form = "fbank" if model.config.model_type == "audio-spectrogram-transformer" else "waveform"

    @classmethod
    def from_pretrained(cls, name_or_path: str, pretrained: bool = True) -> HFAudioBackbone:
        from transformers import AutoFeatureExtractor, AutoModel

        extractor, model = load_hf_checkpoint(AutoFeatureExtractor, AutoModel, name_or_path, pretrained, "audio model")
        return cls(model, extractor)

    @property
    def sampling_rate(self) -> int:
        return int(self.feature_extractor.sampling_rate)

    def featurize(self, waveforms: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """The feature extractor's inputs for mono waveforms at :attr:`sampling_rate`, padded to the
        longest (wav2vec 2.0 / HuBERT: ``input_values`` and ``attention_mask``; AST: ``input_values``
        of its fixed number of frames)."""
        waves = [np.asarray(w, dtype=np.float32) for w in waveforms]
        if self.input_form == "waveform":
            out = self.feature_extractor(waves, sampling_rate=self.sampling_rate, padding=True, return_attention_mask=True,
                                         return_tensors="pt")
        else:
            out = self.feature_extractor(waves, sampling_rate=self.sampling_rate, return_tensors="pt")
        return {k: v for k, v in out.items() if k in ("input_values", "attention_mask")}

    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = batch.get("attention_mask")
        inputs = {"input_values": batch["input_values"].to(next(self.model.parameters()).dtype)}
        if mask is not None:
            inputs["attention_mask"] = mask
        out = self.model(**inputs)
        pooled = getattr(out, "pooler_output", None)
        if pooled is not None:
            return pooled
        hidden = out.last_hidden_state
        if mask is None or not hasattr(self.model, "_get_feature_vector_attention_mask"):
            return hidden.mean(1)
        frames = self.model._get_feature_vector_attention_mask(hidden.shape[1], mask).unsqueeze(-1).to(hidden.dtype)
        return (hidden * frames).sum(1) / frames.sum(1).clamp(min=1.0)

    def layer_groups(self) -> list[list[str]]:
        return hf_layer_groups(self)

    def preprocessing(self) -> dict[str, Any]:
        fe = self.feature_extractor
        # AST's window is its fixed frame count (10 ms each); a waveform model takes any length, capped like Whisper's
        seconds = int(fe.max_length) * 0.01 if self.input_form == "fbank" else 30.0
        return {"modality": "audio", "sampling_rate": self.sampling_rate, "max_seconds": seconds}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def save_assets(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.model.config.save_pretrained(directory)
        self.feature_extractor.save_pretrained(directory)

    @classmethod
    def from_description(cls, description: dict[str, Any], assets: Path) -> HFAudioBackbone:
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

        model = _load_quietly(AutoModel.from_config, AutoConfig.from_pretrained(assets))
        return cls(model, _load_quietly(AutoFeatureExtractor.from_pretrained, assets))


def audio_model_type(name_or_path: str) -> str | None:
    """The config's model type when ``name_or_path`` is an audio model (Whisper or one of
    :data:`AUDIO_MODEL_TYPES`), else None; None too when the config cannot be read (the text
    loader then says why)."""
    from transformers import AutoConfig

    try:
        config = _load_quietly(AutoConfig.from_pretrained, name_or_path)
    except (OSError, ValueError):
        return None
    kind = getattr(config, "model_type", None)
    return kind if kind == "whisper" or kind in AUDIO_MODEL_TYPES else None

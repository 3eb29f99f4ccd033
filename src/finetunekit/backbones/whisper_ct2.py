"""Whisper from CTranslate2 ``model.bin`` files, read without the ctranslate2 runtime.

A CTranslate2 model file is a flat list of named tensors (layout in :func:`read_ct2`). For Whisper
the names map one to one onto transformers' ``WhisperForConditionalGeneration``, with three facts
to know: self-attention ``linear_0`` is q, k and v fused along the output dimension (in that
order); cross-attention (``attention/``) has ``linear_0`` = q and ``linear_1`` = k and v fused;
the output projection is tied to ``decoder/embeddings/weight``. CTranslate2 keeps a key bias
(zeros in the converted OpenAI weights) that transformers' Whisper has not; dropping it is exact
whatever it holds, since a key bias adds ``q . b`` to every score of a query alike, which softmax
ignores.

The conversion runs once per source file; the result (``model.safetensors`` in the published
fp16, ``config.json``, the tokenizer and the feature extractor's settings) is cached under
``$FINETUNEKIT_CACHE_DIR/whisper`` (else ``~/.cache/finetunekit/whisper``), written atomically.

Example::

    from finetunekit.backbones.whisper_ct2 import load_whisper, greedy_transcribe
    whisper = load_whisper("whisper_tiny_en")            # the bundled tiny.en, converted and cached
    features = whisper.log_mel([waveform_16k])           # (1, 80, 3000): the 30-second window
    greedy_transcribe(whisper, features)                 # ['Enter 2981.']

    from finetunekit.backbones import create_backbone
    backbone = create_backbone("bundled:whisper_tiny_en")  # the encoder, as a feature extractor
    batch = backbone.featurize([waveform_16k])           # the clip's own frames, no 30-second pad
    backbone.forward_features(batch).shape               # (1, 384): mean over the clip's frames
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.errors import FinetuneError
from .base import Backbone

# CTranslate2's DataType enum, as stored in the file
CT2_DTYPES: dict[int, Any] = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
CT2_BFLOAT16 = 5
SAMPLING_RATE = 16_000
HOP_LENGTH = 160  # samples per mel frame (10 ms at 16 kHz)
# bump when the conversion's output changes, so older cache entries are not reused
CONVERTER_VERSION = 1


# -- the file format -----------------------------------------------------------------------------


@dataclass
class Ct2Model:
    """The contents of a CTranslate2 ``model.bin``: spec name, revision, named arrays, aliases."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)


class _Cursor:
    def __init__(self, data: bytes, where: str) -> None:
        self.data, self.offset, self.where = memoryview(data), 0, where

    def take(self, size: int) -> memoryview:
        if self.offset + size > len(self.data):
            raise FinetuneError(
                f"{self.where}: not a complete CTranslate2 model file (it ends at byte {len(self.data)}, "
                f"byte {self.offset + size} was expected; truncated, or a part missing?)"
            )
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def string(self) -> str:
        (length,) = self.unpack("H")
        raw = bytes(self.take(length))
        try:
            return raw.rstrip(b"\0").decode("utf-8")
        except UnicodeDecodeError:
            raise FinetuneError(f"{self.where}: not a CTranslate2 model file (a name at byte {self.offset - length} is not text)") from None


def read_ct2(paths: Path | str | list[Path]) -> Ct2Model:
    """Parse a CTranslate2 model file (format version 6), given as one path or as parts to join in order.

    Layout, little-endian: uint32 version; uint16-length spec name; uint32 revision; uint32 variable
    count; per variable: uint16-length name, uint8 rank, uint32 dims, uint8 dtype, uint32 byte count,
    raw data; then uint32 alias count and (alias, target) name pairs. bfloat16 variables come back
    as float32 arrays (numpy has no bfloat16).
    """
    parts = [Path(p) for p in paths] if isinstance(paths, list) else [Path(paths)]
    where = " + ".join(str(p) for p in parts)
    try:
        data = b"".join(p.read_bytes() for p in parts)
    except OSError as exc:
        raise FinetuneError(f"{where}: cannot read the model file ({exc.strerror or exc})") from None
    cursor = _Cursor(data, where)
    (version,) = cursor.unpack("I")
    if version != 6:
        raise FinetuneError(f"{where}: not a CTranslate2 model file of format version 6 (found version {version})")
    spec = cursor.string()
    (revision,) = cursor.unpack("I")
    (count,) = cursor.unpack("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = cursor.string()
        (rank,) = cursor.unpack("B")
        dims = cursor.unpack("I" * rank)
        (dtype_id,) = cursor.unpack("B")
        (nbytes,) = cursor.unpack("I")
        raw = cursor.take(nbytes)
        if dtype_id == CT2_BFLOAT16:
            bits = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            array = bits.view(np.float32)
        elif dtype_id in CT2_DTYPES:
            array = np.frombuffer(raw, dtype=CT2_DTYPES[dtype_id])
        else:
            raise FinetuneError(f"{where}: variable {name!r} has an unknown data type id {dtype_id}")
        expected = int(np.prod(dims)) if dims else 1
        if array.size != expected:
            raise FinetuneError(f"{where}: variable {name!r} holds {array.size} values, its shape {dims} needs {expected}")
        variables[name] = array.reshape(dims)
    aliases: dict[str, str] = {}
    (alias_count,) = cursor.unpack("I")
    for _ in range(alias_count):
        alias = cursor.string()
        aliases[alias] = cursor.string()
    if cursor.offset != len(data):
        raise FinetuneError(f"{where}: {len(data) - cursor.offset} bytes follow the end of the CTranslate2 model")
    return Ct2Model(spec, revision, variables, aliases)


# -- the mapping onto transformers ---------------------------------------------------------------


def _layer_count(variables: dict[str, np.ndarray], side: str) -> int:
    indices = {int(n.split("/")[1][len("layer_") :]) for n in variables if re.match(rf"{side}/layer_\d+/", n)}
    if indices != set(range(len(indices))):
        raise FinetuneError(f"the {side} layers of the CTranslate2 file are not numbered 0..n-1: {sorted(indices)}")
    return len(indices)


def _scalar(variables: dict[str, np.ndarray], name: str) -> int:
    if name not in variables:
        raise FinetuneError(f"the CTranslate2 Whisper file has no {name!r}")
    return int(variables[name].reshape(-1)[0])


def whisper_config_from_ct2(ct2: Ct2Model, special_tokens: dict[str, int] | None = None) -> Any:
    """A ``WhisperConfig`` read off the tensors' shapes (and the stored head counts)."""
    from transformers import WhisperConfig

    if ct2.spec != "WhisperSpec":
        raise FinetuneError(f"the CTranslate2 file holds a {ct2.spec!r}, not a WhisperSpec")
    v = ct2.variables
    for flag, expected in (("decoder/scale_embeddings", 0), ("decoder/pre_norm", 1), ("decoder/alibi", 0)):
        if flag in v and int(v[flag].reshape(-1)[0]) != expected:
            raise FinetuneError(f"the CTranslate2 Whisper file sets {flag}={int(v[flag].reshape(-1)[0])}; Whisper has {expected}")
    vocab, d_model = v["decoder/embeddings/weight"].shape
    tokens = special_tokens or default_special_tokens(vocab)
    return WhisperConfig(
        vocab_size=int(vocab),
        num_mel_bins=int(v["encoder/conv1/weight"].shape[1]),
        d_model=int(d_model),
        encoder_layers=_layer_count(v, "encoder"),
        decoder_layers=_layer_count(v, "decoder"),
        encoder_attention_heads=_scalar(v, "encoder/num_heads"),
        decoder_attention_heads=_scalar(v, "decoder/num_heads"),
        encoder_ffn_dim=int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(v["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(v["decoder/position_encodings/encodings"].shape[0]),
        tie_word_embeddings=True,
        suppress_tokens=None,
        begin_suppress_tokens=None,
        **tokens,
    )


def default_special_tokens(vocab_size: int) -> dict[str, int]:
    """Whisper's token ids: the English-only vocabulary (51864) has no language tokens, so its
    ``<|startoftranscript|>`` is 50257 where the multilingual one has 50258."""
    start = 50257 if vocab_size == 51864 else 50258
    return {"bos_token_id": 50256, "eos_token_id": 50256, "pad_token_id": 50256, "decoder_start_token_id": start}


def _linear(out: dict[str, torch.Tensor], v: dict[str, np.ndarray], src: str, dst: str, bias: bool = True) -> None:
    out[f"{dst}.weight"] = torch.from_numpy(np.array(v[f"{src}/weight"]))
    if bias:
        out[f"{dst}.bias"] = torch.from_numpy(np.array(v[f"{src}/bias"]))


def _norm(out: dict[str, torch.Tensor], v: dict[str, np.ndarray], src: str, dst: str) -> None:
    out[f"{dst}.weight"] = torch.from_numpy(np.array(v[f"{src}/gamma"]))
    out[f"{dst}.bias"] = torch.from_numpy(np.array(v[f"{src}/beta"]))


def _fused(out: dict[str, torch.Tensor], v: dict[str, np.ndarray], src: str, dsts: list[str]) -> None:
    """Split a fused projection along its output dimension; a ``k_proj`` gets no bias (see the module doc)."""
    weights = np.split(v[f"{src}/weight"], len(dsts), axis=0)
    biases = np.split(v[f"{src}/bias"], len(dsts), axis=0)
    for dst, w, b in zip(dsts, weights, biases, strict=True):
        out[f"{dst}.weight"] = torch.from_numpy(np.array(w))
        if not dst.endswith("k_proj"):
            out[f"{dst}.bias"] = torch.from_numpy(np.array(b))


def ct2_to_hf_state_dict(ct2: Ct2Model) -> dict[str, torch.Tensor]:
    """The state dict of ``WhisperForConditionalGeneration`` (``proj_out`` left to the tying), in the file's dtype."""
    v = ct2.variables
    out: dict[str, torch.Tensor] = {}
    _linear(out, v, "encoder/conv1", "model.encoder.conv1")
    _linear(out, v, "encoder/conv2", "model.encoder.conv2")
    out["model.encoder.embed_positions.weight"] = torch.from_numpy(np.array(v["encoder/position_encodings/encodings"]))
    _norm(out, v, "encoder/layer_norm", "model.encoder.layer_norm")
    for i in range(_layer_count(v, "encoder")):
        src, dst = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        _norm(out, v, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        _fused(out, v, f"{src}/self_attention/linear_0", [f"{dst}.self_attn.{p}_proj" for p in "qkv"])
        _linear(out, v, f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")
        _norm(out, v, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
        _linear(out, v, f"{src}/ffn/linear_0", f"{dst}.fc1")
        _linear(out, v, f"{src}/ffn/linear_1", f"{dst}.fc2")
    out["model.decoder.embed_tokens.weight"] = torch.from_numpy(np.array(v["decoder/embeddings/weight"]))
    out["model.decoder.embed_positions.weight"] = torch.from_numpy(np.array(v["decoder/position_encodings/encodings"]))
    _norm(out, v, "decoder/layer_norm", "model.decoder.layer_norm")
    for i in range(_layer_count(v, "decoder")):
        src, dst = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        _norm(out, v, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        _fused(out, v, f"{src}/self_attention/linear_0", [f"{dst}.self_attn.{p}_proj" for p in "qkv"])
        _linear(out, v, f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")
        _norm(out, v, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
        _linear(out, v, f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj")
        _fused(out, v, f"{src}/attention/linear_1", [f"{dst}.encoder_attn.{p}_proj" for p in "kv"])
        _linear(out, v, f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj")
        _norm(out, v, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
        _linear(out, v, f"{src}/ffn/linear_0", f"{dst}.fc1")
        _linear(out, v, f"{src}/ffn/linear_1", f"{dst}.fc2")
    projection = ct2.aliases.get("decoder/projection/weight")
    if projection != "decoder/embeddings/weight" and "decoder/projection/weight" in v:
        if not np.array_equal(v["decoder/projection/weight"], v["decoder/embeddings/weight"]):
            raise FinetuneError("the CTranslate2 Whisper file has an output projection not tied to the token embeddings")
    return out


def convert_ct2_whisper(ct2: Ct2Model, special_tokens: dict[str, int] | None = None, dtype: torch.dtype = torch.float32) -> Any:
    """``WhisperForConditionalGeneration`` holding the file's weights (every key mapped, none left over)."""
    from transformers import WhisperForConditionalGeneration

    from .hf_backbone import _load_quietly

    config = whisper_config_from_ct2(ct2, special_tokens)
    with torch.device("meta"):
        model = _load_quietly(WhisperForConditionalGeneration, config)
    state = ct2_to_hf_state_dict(ct2)
    expected = {k for k in model.state_dict() if k != "proj_out.weight"}
    if set(state) != expected:
        raise FinetuneError(
            f"the CTranslate2 Whisper file does not fill transformers' Whisper: missing {sorted(expected - set(state))[:4]}, "
            f"unexpected {sorted(set(state) - expected)[:4]}"
        )
    model.load_state_dict({k: t.to(dtype) for k, t in state.items()}, strict=False, assign=True)
    model.tie_weights()
    return model.eval()


# -- converted once, cached ----------------------------------------------------------------------


@dataclass(frozen=True)
class WhisperSource:
    """Where a CTranslate2 Whisper lives: the model file (or its parts, joined in order), its
    ``tokenizer.json`` and CTranslate2's ``config.json`` (suppressed tokens)."""

    name: str
    parts: tuple[Path, ...]
    tokenizer: Path
    config: Path
    english_only: bool


def whisper_cache_dir() -> Path:
    """``$FINETUNEKIT_CACHE_DIR/whisper``, else ``$XDG_CACHE_HOME/finetunekit/whisper`` (``~/.cache/...``)."""
    if os.environ.get("FINETUNEKIT_CACHE_DIR"):
        return Path(os.environ["FINETUNEKIT_CACHE_DIR"]) / "whisper"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "finetunekit" / "whisper"


def _source_key(source: WhisperSource) -> str:
    """Keyed by the source files (path, size, modification time): a reinstalled package converts again."""
    h = hashlib.sha256(f"v{CONVERTER_VERSION}".encode())
    for path in (*source.parts, source.tokenizer, source.config):
        st = path.stat()
        h.update(f"|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def prompt_ids(tokenizer: Any, english_only: bool) -> list[int]:
    """The decoder prompt of plain transcription without timestamps (English for the multilingual model)."""
    tokens = ["<|startoftranscript|>"] + ([] if english_only else ["<|en|>", "<|transcribe|>"]) + ["<|notimestamps|>"]
    return [int(i) for i in tokenizer.convert_tokens_to_ids(tokens)]


def converted_whisper_dir(source: WhisperSource) -> Path:
    """The cached transformers directory of a CTranslate2 Whisper, converting it on first use."""
    from ..run.artifacts import atomic_replace_dir

    target = whisper_cache_dir() / f"{source.name}-{_source_key(source)}"
    if (target / "model.safetensors").is_file():
        return target

    def fill(tmp: Path) -> None:
        from safetensors.torch import save_file
        from transformers import WhisperFeatureExtractor, WhisperTokenizerFast

        tokenizer = WhisperTokenizerFast(tokenizer_file=str(source.tokenizer))
        special = {
            "bos_token_id": tokenizer.eos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.eos_token_id,
            "decoder_start_token_id": tokenizer.convert_tokens_to_ids("<|startoftranscript|>"),
        }
        ct2 = read_ct2(list(source.parts))
        config = whisper_config_from_ct2(ct2, special)
        state = ct2_to_hf_state_dict(ct2)  # the published fp16, upcast at load
        save_file({k: t.contiguous() for k, t in state.items()}, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(tmp)
        ct2_config = json.loads(source.config.read_text(encoding="utf-8"))
        decoding = {
            "prompt": prompt_ids(tokenizer, source.english_only),
            "suppress_ids": [int(i) for i in ct2_config.get("suppress_ids", [])],
            "suppress_ids_begin": [int(i) for i in ct2_config.get("suppress_ids_begin", [])],
            "source": [str(p) for p in source.parts],
        }
        (tmp / "decoding.json").write_text(json.dumps(decoding, indent=2) + "\n", encoding="utf-8")

    atomic_replace_dir(target, fill)
    return target


@dataclass
class Whisper:
    """A converted Whisper: the seq2seq model, its tokenizer, feature extractor and decoding settings."""

    model: Any  # WhisperForConditionalGeneration
    tokenizer: Any
    feature_extractor: Any
    prompt: list[int]
    suppress_ids: list[int]
    suppress_ids_begin: list[int]

    def log_mel(self, waveforms: list[np.ndarray]) -> torch.Tensor:
        """``(B, n_mels, 3000)``: Whisper's own input, each clip padded to the 30-second window."""
        out = self.feature_extractor(waveforms, sampling_rate=SAMPLING_RATE, return_tensors="np")
        return torch.from_numpy(out["input_features"])


def load_converted(directory: Path, dtype: torch.dtype = torch.float32) -> Whisper:
    from safetensors.torch import load_file
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizerFast,
    )

    from .hf_backbone import _load_quietly

    config = WhisperConfig.from_pretrained(directory)
    with torch.device("meta"):
        model = _load_quietly(WhisperForConditionalGeneration, config)
    state = load_file(str(directory / "model.safetensors"))
    model.load_state_dict({k: t.to(dtype) for k, t in state.items()}, strict=False, assign=True)
    model.tie_weights()
    decoding = json.loads((directory / "decoding.json").read_text(encoding="utf-8"))
    return Whisper(
        model.eval(),
        _load_quietly(WhisperTokenizerFast.from_pretrained, directory),
        WhisperFeatureExtractor.from_pretrained(directory),
        decoding["prompt"],
        decoding["suppress_ids"],
        decoding["suppress_ids_begin"],
    )


def load_whisper(name: str, dtype: torch.dtype = torch.float32) -> Whisper:
    """A bundled Whisper (``whisper_tiny_en``, ``whisper_base``), converted on first use."""
    from .bundled import whisper_source

    return load_converted(converted_whisper_dir(whisper_source(name)), dtype)


@torch.no_grad()
def greedy_transcribe(whisper: Whisper, features: torch.Tensor, max_length: int | None = None) -> list[str]:
    """Greedy decoding as CTranslate2 does it: the prompt, then the most likely token each step with
    ``suppress_ids`` masked throughout and ``suppress_ids_begin`` at the first step; ``max_length``
    counts the prompt (default: the decoder's positions). Batched, with the key/value cache."""
    model, eos = whisper.model, int(whisper.model.config.eos_token_id)
    max_length = max_length or int(model.config.max_target_positions)
    device = next(model.parameters()).device
    features = features.to(device=device, dtype=next(model.parameters()).dtype)
    encoder_out = model.model.encoder(features)
    batch = features.shape[0]
    tokens = torch.tensor([whisper.prompt] * batch, device=device)
    suppress = torch.zeros(model.config.vocab_size, dtype=torch.bool, device=device)
    suppress[[i for i in whisper.suppress_ids if i < model.config.vocab_size]] = True
    begin = suppress.clone()
    begin[whisper.suppress_ids_begin] = True
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    generated: list[torch.Tensor] = []
    # transformers 5 renamed past_key_values to cache
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    past, step_input = None, tokens
    for step in range(max_length - tokens.shape[1]):
        out = model(encoder_outputs=encoder_out, decoder_input_ids=step_input, use_cache=True, **{cache_arg: past})
        past = getattr(out, cache_arg)
        logits = out.logits[:, -1].float()
        logits[:, begin if step == 0 else suppress] = float("-inf")
        nxt = torch.where(done, torch.full_like(done, eos, dtype=torch.long), logits.argmax(-1))
        generated.append(nxt)
        done |= nxt == eos
        if bool(done.all()):
            break
        step_input = nxt[:, None]
    ids = torch.stack(generated, 1).tolist() if generated else [[] for _ in range(batch)]
    texts = []
    for row in ids:
        row = row[: row.index(eos)] if eos in row else row
        texts.append(whisper.tokenizer.decode(row, skip_special_tokens=True).strip())
    return texts


# -- the encoder as a backbone -------------------------------------------------------------------


class WhisperEncoderBackbone(Backbone):
    """Whisper's encoder on a clip's own frames, mean-pooled over them.

    Whisper was trained on 30-second windows (3000 mel frames, 1500 positions). Here the
    positional embeddings are sliced to the clip's length instead, so a 1-second command costs 50
    positions rather than 1500. Clips of a batch are padded to the longest; padded positions are
    masked out of attention and of the mean, so a clip's features do not depend on its batch.
    """

    modality = "audio"
    kind = "whisper"
    input_form = "log-mel"  # input_features (B, n_mels, T): what the audio explainer attributes over
    saves_assets = True  # the config and the feature extractor's settings: the run directory's backbone/

    def __init__(self, encoder: nn.Module, feature_extractor: Any, config: Any) -> None:
        super().__init__()
        self.encoder = encoder
        self.feature_extractor = feature_extractor
        self.config = config
        self.num_features = int(config.d_model)
        self.max_frames = int(config.max_source_positions) * 2  # conv2 has stride 2

    @classmethod
    def from_converted(cls, directory: Path, pretrained: bool = True) -> WhisperEncoderBackbone:
        from transformers import WhisperConfig, WhisperFeatureExtractor

        config = WhisperConfig.from_pretrained(directory)
        backbone = cls(_encoder(config), WhisperFeatureExtractor.from_pretrained(directory), config)
        backbone.source = (Path(directory), pretrained)
        if pretrained:
            from safetensors import safe_open

            prefix = "model.encoder."
            with safe_open(str(directory / "model.safetensors"), framework="pt") as f:
                state = {k[len(prefix) :]: f.get_tensor(k).float() for k in f.keys() if k.startswith(prefix)}
            backbone.encoder.load_state_dict(state)
        return backbone

    def as_seq2seq(self) -> Backbone:
        """The whole Whisper (encoder and decoder) this encoder came from, for speech recognition."""
        from .whisper_asr import WhisperSeq2SeqBackbone

        source = getattr(self, "source", None)
        if source is None or not (source[0] / "model.safetensors").is_file() and source[1]:
            raise FinetuneError("this Whisper encoder was rebuilt from a run directory without its decoder; "
                                "start speech recognition from bundled:whisper_tiny_en, bundled:whisper_base or whisper:<folder>")
        return WhisperSeq2SeqBackbone.from_converted(*source)

    # inputs ------------------------------------------------------------------------------------

    @property
    def sampling_rate(self) -> int:
        return int(self.feature_extractor.sampling_rate)

    def featurize(self, waveforms: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """Log-mel features of mono waveforms at :attr:`sampling_rate`, each on its own frames:
        ``input_features`` (B, n_mels, T) zero-padded to the longest clip,
        and ``frame_mask`` (B, T), 1 on a clip's own frames."""
        mels = []
        for wave in waveforms:
            frames = max(1, len(wave) // HOP_LENGTH)
            if frames > self.max_frames:
                raise FinetuneError(
                    f"an audio clip of {len(wave) / self.sampling_rate:.1f} s is longer than Whisper's "
                    f"{self.max_frames * HOP_LENGTH / self.sampling_rate:g} s window; cut long files into windows first"
                )
            out = self.feature_extractor(
                np.asarray(wave, dtype=np.float32), sampling_rate=self.sampling_rate, padding="do_not_pad", return_tensors="np"
            )
            mels.append(out["input_features"][0][:, :frames])
        longest = max(m.shape[1] for m in mels)
        features = np.empty((len(mels), mels[0].shape[0], longest), dtype=np.float32)
        mask = np.zeros((len(mels), longest), dtype=np.int64)
        for i, mel in enumerate(mels):
            # zeros, as the convolutions' own padding sees past a clip's end when it is alone
            features[i] = 0.0
            features[i, :, : mel.shape[1]] = mel
            mask[i, : mel.shape[1]] = 1
        return {"input_features": torch.from_numpy(features), "frame_mask": torch.from_numpy(mask)}

    # the forward -------------------------------------------------------------------------------

    def encode(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states ``(B, P, d_model)`` over the clips' own positions (``P = ceil(T / 2)``) and
        the position mask ``(B, P)``."""
        return encode_own_frames(self.encoder, batch, self.max_frames, self.training)

    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden, mask = self.encode(batch)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    # the contract ------------------------------------------------------------------------------

    def layer_groups(self) -> list[list[str]]:
        names = [n for n, _ in self.named_parameters()]
        count = len(self.encoder.layers)
        groups: list[list[str]] = [[] for _ in range(count + 2)]  # convolutions + positions, layers..., final norm
        for name in names:
            if name.startswith("encoder.layers."):
                groups[int(name.split(".")[2]) + 1].append(name)
            elif name.startswith("encoder.layer_norm."):
                groups[-1].append(name)
            else:
                groups[0].append(name)
        return [g for g in groups if g]

    def preprocessing(self) -> dict[str, Any]:
        return {
            "modality": "audio",
            "sampling_rate": self.sampling_rate,
            "n_mels": int(self.config.num_mel_bins),
            "hop_length": HOP_LENGTH,
            "max_seconds": self.max_frames * HOP_LENGTH / self.sampling_rate,
        }

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def save_assets(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(directory)
        self.feature_extractor.save_pretrained(directory)

    @classmethod
    def from_description(cls, description: dict[str, Any], assets: Path) -> WhisperEncoderBackbone:
        return cls.from_converted(assets, pretrained=False)


def encode_own_frames(enc: nn.Module, batch: dict[str, torch.Tensor], max_frames: int, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states ``(B, P, d_model)`` over the clips' own positions (``P = ceil(T / 2)``) and
    the position mask ``(B, P)``: Whisper's encoder ``enc`` on the clips' own frames (see
    :class:`WhisperEncoderBackbone`)."""
    x = batch["input_features"].to(enc.conv1.weight.dtype)
    if x.shape[-1] > max_frames:
        raise FinetuneError(f"{x.shape[-1]} mel frames exceed Whisper's {max_frames}")
    x = nn.functional.gelu(enc.conv1(x))
    frame_mask = batch.get("frame_mask")
    if frame_mask is not None:
        # zero the first convolution's output past each clip's end, so the strided second one
        # sees there what it sees at the end of the clip alone: features do not depend on the batch
        x = x * frame_mask[:, None, :].to(x.dtype)
    x = nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
    positions = x.shape[1]
    hidden = x + enc.embed_positions.weight[:positions]
    hidden = nn.functional.dropout(hidden, p=enc.dropout, training=training)
    if frame_mask is None:
        mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
    else:
        mask = frame_mask[:, ::2].to(device=hidden.device, dtype=torch.bool)[:, :positions]
    attn = None
    if not bool(mask.all()):
        attn = torch.zeros(mask.shape, dtype=hidden.dtype, device=hidden.device)
        attn = attn.masked_fill(~mask, torch.finfo(hidden.dtype).min)[:, None, None, :]
    # transformers 4.x encoder layers also take a (required) head mask and return a tuple
    extra = {"layer_head_mask": None} if "layer_head_mask" in inspect.signature(enc.layers[0].forward).parameters else {}
    for layer in enc.layers:
        hidden = layer(hidden, attn, **extra)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    return enc.layer_norm(hidden), mask


def _encoder(config: Any) -> nn.Module:
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from .hf_backbone import _load_quietly

    return _load_quietly(WhisperEncoder, config)


def whisper_encoder_backbone(name: str, pretrained: bool = True) -> WhisperEncoderBackbone:
    """The bundled Whisper ``name``'s encoder as a backbone (``bundled:whisper_tiny_en``)."""
    from .bundled import whisper_source

    return WhisperEncoderBackbone.from_converted(converted_whisper_dir(whisper_source(name)), pretrained=pretrained)

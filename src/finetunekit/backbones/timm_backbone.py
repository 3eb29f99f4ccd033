"""Vision backbones from timm (and bundled weights mapped onto timm architectures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import FinetuneError
from ..core.runtime import cpu_has_amx
from .base import Backbone


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise convolution that trains in fp32 under bf16 autocast on CPUs without AMX.

    There, oneDNN's bf16 depthwise backward is the slow part of a training step: on EfficientNet-Lite0
    (batch 16, 224 px, 2 threads, AVX512-BF16) the depthwise layers took 84% of the convolution
    backward time, and the backward pass about six times the forward. Run in fp32 (the rest of the
    network stays in bf16), a training step took 585-623 ms instead of 814-867 ms. Inference, frozen
    layers and every other device keep bf16. The module is an ``nn.Conv2d`` with the same
    parameters, so state dicts, exports and adapters see no difference.
    """

    # True on a frozen copy that must compute its features as the trained copy does (the teacher of
    # feature distillation runs without gradients)
    fp32_without_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        training = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        if x.device.type == "cpu" and (training or self.fp32_without_grad) and _cpu_bf16_autocast():
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


def _cpu_bf16_autocast() -> bool:
    try:
        enabled, dtype = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")
    except (TypeError, AttributeError):  # torch < 2.4
        enabled, dtype = torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
    return enabled and dtype == torch.bfloat16 and not cpu_has_amx()


def use_fp32_depthwise_training(model: nn.Module) -> int:
    """Turn the plain depthwise ``nn.Conv2d`` layers of ``model`` into :class:`DepthwiseConv2d`
    (in place, parameters untouched); returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is nn.Conv2d and module.groups > 1 and module.groups == module.in_channels:
            module.__class__ = DepthwiseConv2d
            count += 1
    return count


class TimmBackbone(Backbone):
    modality = "image"
    kind = "timm"

    def __init__(
        self,
        arch: str,
        pretrained: bool = False,
        bn_eps: float | None = None,
        preprocessing_overrides: dict[str, Any] | None = None,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        import timm

        if arch not in timm.list_models():
            from ..core.errors import did_you_mean

            raise FinetuneError(f"unknown timm architecture {arch!r}{did_you_mean(arch, timm.list_models())}")
        try:
            self.model = timm.create_model(arch, pretrained=pretrained, num_classes=0)
        except Exception as exc:  # hub download failures surface as many exception types
            raise FinetuneError(
                f"could not load pretrained weights for timm:{arch} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                "offline, use model.pretrained=false or a bundled backbone"
            ) from None
        self.arch = arch
        self.bn_eps = bn_eps
        if bn_eps is not None:
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eps = bn_eps
        use_fp32_depthwise_training(self.model)
        self.num_features = int(self.model.num_features)
        cfg = dict(self.model.pretrained_cfg)
        size = int(cfg.get("input_size", (3, 224, 224))[-1])
        self._preprocessing: dict[str, Any] = {
            "modality": "image",
            "input_size": size,
            "crop_pct": float(cfg.get("crop_pct", 0.875)),
            "interpolation": str(cfg.get("interpolation", "bilinear")),
            "mean": [float(x) for x in cfg.get("mean", (0.485, 0.456, 0.406))],
            "std": [float(x) for x in cfg.get("std", (0.229, 0.224, 0.225))],
        }
        self._preprocessing.update(preprocessing_overrides or {})
        if image_size is not None:
            self._preprocessing["input_size"] = int(image_size)

    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # channels_last input: oneDNN (CPU) and cuDNN then run every convolution in NHWC, which on
        # this kind of network is 1.7x (training) to 2x (inference) faster than NCHW on a CPU. The
        # weights keep their layout, so checkpoints and safetensors files are unaffected.
        pixels = batch["pixel_values"]
        if pixels.dim() == 4:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return self.model(pixels)

    def feature_info(self) -> list[dict[str, int]]:
        """Channels and stride of each of :meth:`feature_maps` (timm's ``feature_info``)."""
        return [{"channels": int(i["num_chs"]), "stride": int(i["reduction"])} for i in self.model.feature_info]

    def feature_maps(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The stages' outputs, input side first (timm's ``forward_intermediates`` on the same
        ``self.model``: state-dict names, bundled weights, layer groups and adapters are those of
        :meth:`forward_features`)."""
        pixels = batch["pixel_values"].contiguous(memory_format=torch.channels_last)
        try:
            maps = self.model.forward_intermediates(pixels, intermediates_only=True)
        except (AttributeError, NotImplementedError) as exc:
            raise FinetuneError(f"timm:{self.arch} gives no feature maps ({exc})") from None
        return list(maps)

    def layer_groups(self) -> list[list[str]]:
        from timm.models import group_parameters

        try:
            groups = group_parameters(self.model, self.model.group_matcher(coarse=True))
        except (AttributeError, NotImplementedError):
            return [[f"model.{n}" for n, _ in self.model.named_parameters()]]
        return [[f"model.{n}" for n in names] for _, names in sorted(groups.items())]

    def preprocessing(self) -> dict[str, Any]:
        return dict(self._preprocessing)

    def set_crop_pct(self, crop_pct: float) -> None:
        """The evaluation transform's centre crop (the share of the resized image it keeps; 1.0: the
        whole image): part of the preprocessing, so of the description saved with a run."""
        self._preprocessing["crop_pct"] = float(crop_pct)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "arch": self.arch,
            "bn_eps": self.bn_eps,
            "preprocessing": self._preprocessing,
        }

    @classmethod
    def from_description(cls, description: dict[str, Any], assets: Path) -> TimmBackbone:
        return cls(
            description["arch"],
            pretrained=False,
            bn_eps=description.get("bn_eps"),
            preprocessing_overrides=description.get("preprocessing"),
        )

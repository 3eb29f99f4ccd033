"""Detection heads on a backbone's feature maps: a feature pyramid and torchvision's FCOS or
RetinaNet head, with torchvision's own losses, anchors and post-processing.

The head module returns ONE raw tensor per batch, ``(N, K, anchors)`` (channels first, as
single-stage detectors export): per anchor the class logits, then the box regression (4), then
(FCOS) the centre-ness logit. That is what the loss, the exporters and ONNX parity checks see; :class:`DetectionRules` turns it back into torchvision's
``head_outputs`` dict to call ``FCOS.compute_loss`` / ``RetinaNet.compute_loss`` (matching,
focal loss, GIoU) and ``postprocess_detections`` (box decoding, score threshold, top-k,
``batched_nms``) unchanged, on anchors made by torchvision's ``AnchorGenerator`` for the run's
fixed input size.

Example::

    head = DetectionHead(backbone.feature_info(), num_classes=1, kind="fcos")
    raw = head(backbone.feature_maps(batch))                  # (N, 1 + 4 + 1, A)
    rules = DetectionRules("fcos", num_classes=1, image_size=320)
    rules.loss(raw, [{"boxes": ..., "labels": ...}, ...])     # {"classification": ..., ...}
    rules.detections(raw, score_threshold=0.05, nms_iou=0.6, max_detections=100)
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial
from typing import Any

import torch
from torch import nn

HEADS = ("fcos", "retinanet")
# the pyramid: backbone maps at strides 8, 16 and 32, then P6 and P7 computed from P5
BACKBONE_STRIDES = (8, 16, 32)
STRIDES = (8, 16, 32, 64, 128)


def pick_levels(feature_info: list[dict[str, int]]) -> list[int]:
    """Indices of the backbone's feature maps at strides 8, 16 and 32 (the last of each stride)."""
    picked = []
    for stride in BACKBONE_STRIDES:
        found = [i for i, info in enumerate(feature_info) if int(info["stride"]) == stride]
        if not found:
            from ..core.errors import RecipeError

            have = ", ".join(str(i["stride"]) for i in feature_info)
            raise RecipeError(f"task.type: detection needs backbone feature maps at strides 8, 16 and 32; this backbone gives strides {have}")
        picked.append(found[-1])
    return picked


def _full_precision_p6p7() -> type:
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    class FullPrecisionP6P7(LastLevelP6P7):
        """torchvision's P6/P7 block, run in float32 under autocast: on maps of one or two pixels
        (small inputs) the CPU's bfloat16 convolution backward returned NaN weight gradients; the
        maps are tiny, so float32 costs nothing measurable. Same parameters and names."""

        def forward(self, p: list[torch.Tensor], c: list[torch.Tensor], names: list[str]) -> tuple[list[torch.Tensor], list[str]]:
            with torch.autocast(p[-1].device.type, enabled=False):
                return super().forward([t.float() for t in p], [t.float() for t in c], names)

    return FullPrecisionP6P7


def _FullPrecisionP6P7(in_channels: int, out_channels: int) -> nn.Module:  # noqa: N802  (a class made lazily: torchvision loads on first use)
    return _full_precision_p6p7()(in_channels, out_channels)


class DetectionHead(nn.Module):
    """FPN (P3-P5 from the backbone, P6/P7 from P5) + a torchvision FCOS or RetinaNet head."""

    takes_feature_maps = True  # FineTuneModel feeds backbone.feature_maps(batch), not pooled features

    def __init__(self, feature_info: list[dict[str, int]], num_classes: int, kind: str = "fcos", channels: int = 64, convs: int = 2) -> None:
        super().__init__()
        from torchvision.models.detection.fcos import FCOSHead
        from torchvision.models.detection.retinanet import RetinaNetHead
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork

        self.kind = kind
        self.levels = pick_levels(feature_info)
        self.in_channels = [int(feature_info[i]["channels"]) for i in self.levels]
        self.num_classes = int(num_classes)
        self.channels = int(channels)
        self.convs = int(convs)
        self.fpn = FeaturePyramidNetwork(self.in_channels, self.channels, extra_blocks=_FullPrecisionP6P7(self.channels, self.channels))
        if kind == "fcos":
            self.head = FCOSHead(self.channels, 1, self.num_classes, num_convs=self.convs)
        else:
            # torchvision's RetinaNet v2 head (GroupNorm in the towers); 9 anchors per place
            self.head = RetinaNetHead(self.channels, 9, self.num_classes, norm_layer=partial(nn.GroupNorm, 32))

    def forward(self, feature_maps: list[torch.Tensor]) -> torch.Tensor:
        maps = OrderedDict((str(k), feature_maps[i]) for k, i in enumerate(self.levels))
        pyramid = list(self.fpn(maps).values())
        out = self.head(pyramid)
        parts = [out["cls_logits"], out["bbox_regression"]]
        if "bbox_ctrness" in out:
            parts.append(out["bbox_ctrness"])
        # (N, K, A): one row per output channel, so a per-output mean over the anchors (what
        # Grad-CAM explains for dense heads) is a class's evidence over the whole image
        return torch.cat(parts, dim=-1).transpose(1, 2)

    def describe(self) -> dict[str, Any]:
        return {"kind": f"detection-{self.kind}", "levels": self.levels, "in_channels": self.in_channels,
                "channels": self.channels, "convs": self.convs, "num_classes": self.num_classes}


# -- torchvision's rules, without its modules -------------------------------------------------------
# torchvision keeps matching, losses and post-processing as methods of the detector modules; these
# small classes carry exactly the attributes those methods read, so the methods run unchanged
# without a second copy of the head's parameters.


def _fcos_rules() -> Any:
    from torchvision.models.detection import _utils as det_utils
    from torchvision.models.detection.fcos import FCOS, FCOSHead

    class HeadRules:
        compute_loss = FCOSHead.compute_loss

        def __init__(self) -> None:
            self.box_coder = det_utils.BoxLinearCoder(normalize_by_size=True)

    class Rules:
        compute_loss = FCOS.compute_loss
        postprocess_detections = FCOS.postprocess_detections

        def __init__(self) -> None:
            self.head = HeadRules()
            self.box_coder = self.head.box_coder
            self.center_sampling_radius = 1.5

    return Rules()


def _retinanet_rules() -> Any:
    from torchvision.models.detection import _utils as det_utils
    from torchvision.models.detection.retinanet import (
        RetinaNet,
        RetinaNetClassificationHead,
        RetinaNetHead,
        RetinaNetRegressionHead,
    )

    class ClassificationRules:
        compute_loss = RetinaNetClassificationHead.compute_loss
        BETWEEN_THRESHOLDS = det_utils.Matcher.BETWEEN_THRESHOLDS

    class RegressionRules:
        compute_loss = RetinaNetRegressionHead.compute_loss

        def __init__(self, box_coder: Any) -> None:
            self.box_coder = box_coder
            self._loss_type = "giou"  # as torchvision's retinanet_resnet50_fpn_v2

    class HeadRules:
        compute_loss = RetinaNetHead.compute_loss

        def __init__(self, box_coder: Any) -> None:
            self.classification_head = ClassificationRules()
            self.regression_head = RegressionRules(box_coder)

    class Rules:
        compute_loss = RetinaNet.compute_loss
        postprocess_detections = RetinaNet.postprocess_detections

        def __init__(self) -> None:
            self.box_coder = det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
            self.proposal_matcher = det_utils.Matcher(0.5, 0.4, allow_low_quality_matches=True)
            self.head = HeadRules(self.box_coder)

    return Rules()


def anchor_generator(kind: str) -> Any:
    """torchvision's AnchorGenerator for the pyramid: FCOS one point per place (its size, the
    stride, sets the level's object size range); RetinaNet 3 sizes x 3 aspect ratios per place,
    sized 2x the stride and up (16 to 406 px), which spans the objects of a 256-640 px input
    (torchvision's 32-812 px suit its 800-1333 px inputs)."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    if kind == "fcos":
        return AnchorGenerator(tuple((s,) for s in STRIDES), ((1.0,),) * len(STRIDES))
    sizes = tuple((2 * s, int(2 * s * 2 ** (1 / 3)), int(2 * s * 2 ** (2 / 3))) for s in STRIDES)
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(STRIDES))


class DetectionRules:
    """Anchors, loss and post-processing of one head kind at one square input size."""

    def __init__(self, kind: str, num_classes: int, image_size: int) -> None:
        self.kind = kind
        self.num_classes = int(num_classes)
        self.image_size = int(image_size)
        self.rules = _fcos_rules() if kind == "fcos" else _retinanet_rules()
        self.generator = anchor_generator(kind)
        per_place = self.generator.num_anchors_per_location()
        # feature map sides: each stride-2 convolution (kernel 3, padding 1) gives ceil(side / 2)
        self.grid_sizes = [math.ceil(self.image_size / s) for s in STRIDES]
        self.num_anchors_per_level = [g * g * a for g, a in zip(self.grid_sizes, per_place, strict=True)]
        self.num_anchors = sum(self.num_anchors_per_level)
        self._anchors: dict[Any, torch.Tensor] = {}

    @property
    def output_width(self) -> int:
        return self.num_classes + 4 + (1 if self.kind == "fcos" else 0)

    def anchors(self, device: torch.device) -> torch.Tensor:
        """(A, 4) anchors in input pixels, level by level as the head's outputs are."""
        key = str(device)
        if key not in self._anchors:
            self.generator.set_cell_anchors(torch.float32, device)
            size = self.image_size
            strides = [[torch.tensor(size // g, dtype=torch.int64, device=device)] * 2 for g in self.grid_sizes]
            levels = self.generator.grid_anchors([[g, g] for g in self.grid_sizes], strides)
            self._anchors[key] = torch.cat(levels)
        return self._anchors[key]

    def split(self, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        """The raw ``(N, K, A)`` tensor back as torchvision's head_outputs (``(N, A, ...)`` each)."""
        if raw.dim() != 3 or raw.shape[2] != self.num_anchors or raw.shape[1] != self.output_width:
            raise ValueError(
                f"detection head output {tuple(raw.shape)} does not match {self.output_width} x {self.num_anchors} anchors "
                f"for a {self.image_size} px input (feature map sides {self.grid_sizes})"
            )
        raw = raw.transpose(1, 2)
        c = self.num_classes
        out = {"cls_logits": raw[..., :c], "bbox_regression": raw[..., c : c + 4]}
        if self.kind == "fcos":
            out["bbox_ctrness"] = raw[..., c + 4 :]
        return out

    def loss(self, raw: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        head_outputs = self.split(raw.float())
        anchors = [self.anchors(raw.device)] * raw.shape[0]
        if self.kind == "fcos":
            return self.rules.compute_loss(targets, head_outputs, anchors, self.num_anchors_per_level)
        return self.rules.compute_loss(targets, head_outputs, anchors)

    def loss_names(self) -> list[str]:
        return ["classification", "bbox_regression", *(["bbox_ctrness"] if self.kind == "fcos" else [])]

    @torch.no_grad()
    def detections(self, raw: torch.Tensor, score_threshold: float, nms_iou: float, max_detections: int) -> torch.Tensor:
        """(N, max_detections, 6) rows ``[x1, y1, x2, y2, score, class]`` by falling score,
        padding rows score -1 and class -1: torchvision's postprocess_detections."""
        rules = self.rules
        rules.score_thresh, rules.nms_thresh = float(score_threshold), float(nms_iou)
        rules.detections_per_img, rules.topk_candidates = int(max_detections), 1000
        head_outputs = {k: list(v.float().split(self.num_anchors_per_level, dim=1)) for k, v in self.split(raw).items()}
        levels = list(self.anchors(raw.device).split(self.num_anchors_per_level))
        n = raw.shape[0]
        found = rules.postprocess_detections(head_outputs, [levels] * n, [(self.image_size, self.image_size)] * n)
        out = torch.full((n, max_detections, 6), -1.0, device=raw.device)
        for i, det in enumerate(found):
            k = len(det["scores"])
            out[i, :k, :4] = det["boxes"]
            out[i, :k, 4] = det["scores"]
            out[i, :k, 5] = det["labels"].float()
        return out

"""Semantic segmentation: one class per pixel.

Data: index masks (PNG, one class index per pixel; ``task.ignore_index`` marks pixels that count
nowhere), either listed as ``image mask`` pairs in a text file (CamVid's ``train.txt``; paths
relative to the list file) or as two folders ``ROOT/images`` and ``ROOT/masks`` matched by file
stem. Every mask is checked before training: it opens, has its image's size, and holds only class
indices or the ignore value (errors name the file).

Model: a light decoder on the backbone's feature maps (``task.decoder``): ``fpn`` (the default: a
semantic FPN, torchvision's ``FeaturePyramidNetwork`` over strides 4-32, each level upsampled to
stride 4 and summed) or ``lraspp`` (the Lite R-ASPP head of MobileNetV3, torchvision's
``LRASPPHead``, on the stride-8 and deepest maps). On CamVid (320x240, 10 epochs, the same recipe
otherwise) FPN reached val mean IoU 0.54 against LR-ASPP's 0.48 at the same training speed
(docs/detection-segmentation.md). The head's logits come out at its own stride; the loss and the
scores upsample them (bilinear) to the run's input size (``task.input_size``, [height, width]).

Loss: cross-entropy over the labelled pixels, plus ``task.dice_weight`` x soft Dice.
Metrics (torchmetrics): mean IoU over the classes (the primary metric), per-class IoU, pixel
accuracy; computed at the input size, masks resized with nearest neighbour.

Example::

    task = SegmentationTask.from_data({"ignore_index": 11, "input_size": [360, 480]}, train_examples)
    head = task.head_for(backbone)                  # on backbone.feature_maps(batch)
    pixels, mask = task.transform(preprocessing, train=True, augment="light")(image, "mask.png")
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import DataError, RecipeError
from . import TASKS
from .base import ReportView
from .dense import DenseTask, open_rgb
from .options import TaskOptions

DECODERS = ("lraspp", "fpn")
DEFAULT_DECODER = "fpn"
DEFAULT_IGNORE = 255
MASK_MODES = ("L", "P", "I", "I;16", "1")


# -- masks -----------------------------------------------------------------------------------------


def read_mask(path: str | Path) -> np.ndarray:
    """An index mask as an ``(H, W)`` integer array; a colour (RGB) image or an unreadable file is
    a DataError naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as mask:
            if mask.mode not in MASK_MODES:
                raise DataError(f"{path}: a mask must be a single-channel index image (class index per pixel), got mode {mask.mode}")
            return np.asarray(mask, dtype=np.int64) if mask.mode != "1" else np.asarray(mask, dtype=np.int64)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot read mask ({exc.__class__.__name__}: {exc})") from None


def _image_size(path: str) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except Exception as exc:  # check_images reports unreadable images with more context first
        raise DataError(f"{path}: cannot read image ({exc.__class__.__name__}: {exc})") from None


# -- the joint transform ---------------------------------------------------------------------------


class SegmentationTransform:
    """``(PIL image, mask path or None) -> (pixels (3, H, W) float, mask (H, W) long or None)``.

    Training with ``augment`` "light": a random resized crop of 30-100% of the area at about the
    input's aspect ratio, and a horizontal flip; "strong" adds colour jitter. The mask moves with
    the pixels (torchvision transforms v2 on a ``tv_tensors.Mask``: nearest-neighbour resampling,
    so indices stay indices). Evaluation resizes to the input size. All draws come from torch's
    generator (seeded per example by the dataset).
    """

    def __init__(self, size: Sequence[int], preprocessing: dict[str, Any], train: bool, augment: str) -> None:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import v2

        height, width = int(size[0]), int(size[1])
        interpolation = InterpolationMode(preprocessing.get("interpolation", "bilinear"))
        if train and augment in ("light", "strong"):
            aspect = width / height
            steps: list[Any] = [
                v2.RandomResizedCrop((height, width), scale=(0.3, 1.0), ratio=(aspect * 3 / 4, aspect * 4 / 3), interpolation=interpolation),
                v2.RandomHorizontalFlip(),
            ]
            if augment == "strong":
                steps.append(v2.ColorJitter(0.3, 0.3, 0.3, 0.05))
        else:
            steps = [v2.Resize((height, width), interpolation=interpolation)]
        self.geometry = v2.Compose(steps)
        self.to_tensor = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(preprocessing["mean"], preprocessing["std"])])

    def __call__(self, image: Any, target: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        from torchvision import tv_tensors

        if target is None:
            return self.to_tensor(self.geometry(image)), None
        mask = tv_tensors.Mask(torch.from_numpy(read_mask(target))[None])
        image, mask = self.geometry(image, mask)
        return self.to_tensor(image), mask[0].as_subclass(torch.Tensor).long()


# -- heads -----------------------------------------------------------------------------------------


def _pick(info: list[dict[str, int]], stride: int) -> int:
    """The index of the feature map nearest to ``stride`` (the finest one at or above it, else the deepest)."""
    for i, entry in enumerate(info):
        if entry["stride"] >= stride:
            return i
    return len(info) - 1


class LRASPPSegHead(nn.Module):
    """Lite R-ASPP (Howard et al. 2019, MobileNetV3) on the stride-8 map and the deepest one
    (torchvision's ``LRASPPHead``); logits at stride 8."""

    takes_feature_maps = True

    def __init__(self, info: list[dict[str, int]], num_classes: int, inter_channels: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        from torchvision.models.segmentation.lraspp import LRASPPHead

        self.low_index, self.high_index = _pick(info, 8), len(info) - 1
        self.head = LRASPPHead(info[self.low_index]["channels"], info[self.high_index]["channels"], num_classes, inter_channels)
        self.dropout = nn.Dropout2d(dropout) if dropout else nn.Identity()
        self.num_classes, self.inter_channels, self.p = num_classes, inter_channels, dropout
        self.stride = info[self.low_index]["stride"]

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self.head({"low": maps[self.low_index], "high": self.dropout(maps[self.high_index])})

    def describe(self) -> dict[str, Any]:
        return {"kind": "lraspp", "num_classes": self.num_classes, "inter_channels": self.inter_channels, "stride": self.stride, "dropout": self.p}


class FPNSegHead(nn.Module):
    """Semantic FPN (Kirillov et al. 2019, simplified): torchvision's ``FeaturePyramidNetwork``
    over the maps of stride 4 and coarser, one 3x3 conv per level, all upsampled to the finest
    level and summed, then a 1x1 classifier; logits at stride 4."""

    takes_feature_maps = True

    def __init__(self, info: list[dict[str, int]], num_classes: int, channels: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork

        self.first = _pick(info, 4)
        in_channels = [entry["channels"] for entry in info[self.first :]]
        self.fpn = FeaturePyramidNetwork(in_channels, channels)
        self.levels = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
            for _ in in_channels
        )
        self.dropout = nn.Dropout2d(dropout) if dropout else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.num_classes, self.channels, self.p = num_classes, channels, dropout
        self.stride = info[self.first]["stride"]

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        from collections import OrderedDict

        pyramid = self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps[self.first :])))
        levels = [conv(x) for conv, x in zip(self.levels, pyramid.values(), strict=True)]
        size = levels[0].shape[-2:]
        fused = levels[0]
        for level in levels[1:]:
            fused = fused + F.interpolate(level, size=size, mode="bilinear", align_corners=False)
        return self.classifier(self.dropout(fused))

    def describe(self) -> dict[str, Any]:
        return {"kind": "fpn", "num_classes": self.num_classes, "channels": self.channels, "stride": self.stride, "dropout": self.p}


# -- metrics ---------------------------------------------------------------------------------------


def segmentation_metrics(preds: np.ndarray, targets: np.ndarray, classes: Sequence[str], ignore_index: int) -> dict[str, Any]:
    """Mean IoU (over the classes present in the targets or the predictions), per-class IoU and
    pixel accuracy over the labelled pixels, with torchmetrics."""
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_jaccard_index

    k = len(classes)
    p = torch.as_tensor(np.asarray(preds)).long().reshape(-1)
    t = torch.as_tensor(np.asarray(targets)).long().reshape(-1)
    labelled = t != ignore_index
    if not bool(labelled.any()):
        return {"mean_iou": 0.0, "pixel_accuracy": 0.0, "num_examples": int(len(preds)), "per_class": {}}
    iou = multiclass_jaccard_index(p, t, k, average=None, ignore_index=ignore_index, validate_args=False)
    accuracy = multiclass_accuracy(p, t, k, average="micro", ignore_index=ignore_index, validate_args=False)
    support = torch.bincount(t[labelled], minlength=k)[:k]
    predicted = torch.bincount(p[labelled], minlength=k)[:k]
    present = (support > 0) | (predicted > 0)  # a class in neither has no IoU to speak of
    total = int(labelled.sum())
    per_class = {
        name: {"iou": float(iou[i]) if present[i] else None, "pixels": int(support[i]), "share": round(int(support[i]) / total, 6)}
        for i, name in enumerate(classes)
    }
    return {
        "mean_iou": float(iou[present].mean()),
        "pixel_accuracy": float(accuracy),
        "num_examples": int(len(preds)),
        "per_class": per_class,
    }


def image_scores(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int) -> tuple[float, float]:
    """(mean IoU, pixel accuracy) of one image, over the classes in its target or prediction."""
    labelled = target != ignore_index
    t, p = target[labelled].astype(np.int64), pred[labelled].astype(np.int64)
    if not len(t):
        return float("nan"), float("nan")
    matrix = np.bincount(t * num_classes + np.clip(p, 0, num_classes - 1), minlength=num_classes**2).reshape(num_classes, num_classes)
    tp = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - tp
    return float((tp[union > 0] / union[union > 0]).mean()), float(tp.sum() / len(t))


def palette(num_classes: int) -> np.ndarray:
    """Distinct colours per class index (the Pascal VOC bit-interleaving palette)."""
    colours = np.zeros((max(num_classes, 1), 3), dtype=np.uint8)
    for i in range(num_classes):
        c, r, g, b = i + 1, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours[i] = (r, g, b)
    return colours


# -- the task --------------------------------------------------------------------------------------


@dataclass
class SegmentationOptions(TaskOptions):
    """``task:`` options of segmentation: class names in mask-index order (null: 0..K-1 from the
    training masks), the mask value that counts nowhere, the network's input size [height, width]
    (null: model.image_size, else the first training image's size), the decoder on the feature maps
    (lraspp, fpn) and the weight of a soft Dice term added to cross-entropy."""

    classes: list[str] | None = None
    ignore_index: int | None = None
    input_size: int | list[int] | None = None
    decoder: str | None = None
    dice_weight: float | None = None


@TASKS.register("segmentation")
class SegmentationTask(DenseTask):
    """One class per pixel: see the module docstring. Options (the recipe's task section):
    ``classes`` (names in index order; default: ``0..K-1`` with K from the training masks),
    ``ignore_index`` (default 255), ``input_size`` ([height, width], or one number for a square;
    default: model.image_size as a square, else the first training image's size), ``decoder``
    (lraspp, fpn) and ``dice_weight`` (0: cross-entropy alone)."""

    type = "segmentation"
    Options = SegmentationOptions
    primary_metric = "mean_iou"
    lower_is_better = frozenset({"loss"})
    epoch_metrics = ("mean_iou", "pixel_accuracy")
    # what an export's outputs mean (its README's loading notes)
    export_note = (
        "the outputs are the decoder's raw logits, (N, classes, H/s, W/s) at its stride s; upsample them "
        "bilinearly to `task.json`'s `input_size` [height, width] and take the argmax over the classes "
        "(`task.json`'s `classes` order); inputs are resized to that size first"
    )
    report = ReportView(
        noun="segmentation, {count} classes",
        cards=(("mean IoU", "mean_iou"), ("pixel accuracy", "pixel_accuracy")),
        curves=(("val_mean_iou", "mean IoU"), ("val_pixel_accuracy", "pixel accuracy")),
        sections=("per_class_iou", "worst_images"),
        compared=("mean_iou", "pixel_accuracy"),
    )

    def __init__(
        self, classes: Sequence[str], ignore_index: int = DEFAULT_IGNORE, input_size: Sequence[int] = (256, 256),
        decoder: str = DEFAULT_DECODER, dice_weight: float = 0.0,
    ) -> None:
        self.classes = tuple(str(c) for c in classes)
        self.ignore_index = int(ignore_index)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.decoder = decoder
        self.dice_weight = float(dice_weight)
        self.pixel_counts: dict[str, int] = {}  # training pixels per class (model card)
        self._checked: set[str] = set()

    # -- construction
    @classmethod
    def reader(cls, options: dict[str, Any], image_root: str | None = None) -> Any:
        """A list file of ``IMAGE MASK`` lines or a folder with images/ and masks/, or in-memory
        data with an image and a mask column (finetunekit.tasks.segmentation_data)."""
        import functools

        from .segmentation_data import read_segmentation

        return functools.partial(read_segmentation, image_root=image_root, image_column=options.get("image_column"),
                                 mask_column=options.get("mask_column"))

    @classmethod
    def find_layout(cls, path: Any) -> str | None:
        if hasattr(path, "table_rows"):  # an in-memory table (finetunekit.data.memory.MemoryTable)
            from .segmentation_data import memory_layout

            return memory_layout(path)
        if path.is_dir() and (path / "images").is_dir() and (path / "masks").is_dir():
            return "a folder with images/ and masks/"
        return None

    @classmethod
    def check_options(cls, options: dict[str, Any], where: str) -> dict[str, Any]:
        out = dict(options)
        classes = out.get("classes")
        if classes is not None:
            if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) and c.strip() for c in classes):
                raise RecipeError(f"{where}.classes: give the class names in mask-index order (at least two), e.g. [sky, road]")
            if len(set(classes)) != len(classes):
                raise RecipeError(f"{where}.classes: {next(c for c in classes if classes.count(c) > 1)!r} is listed twice")
        ignore = DEFAULT_IGNORE if out.get("ignore_index") is None else out["ignore_index"]
        if isinstance(ignore, bool) or not isinstance(ignore, int) or not 0 <= ignore <= 65535:
            raise RecipeError(f"{where}.ignore_index: expected a mask value 0-65535, got {ignore!r}")
        if classes is not None and ignore < len(classes):
            raise RecipeError(f"{where}.ignore_index: {ignore} is the index of class {classes[ignore]!r}; use a value of {len(classes)} or more")
        out["ignore_index"] = ignore
        size = out.get("input_size")
        if size is not None:
            size = [size, size] if isinstance(size, int) and not isinstance(size, bool) else size
            if not isinstance(size, list) or len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and 16 <= s <= 4096 for s in size):
                raise RecipeError(f"{where}.input_size: expected [height, width] (16-4096 pixels each) or one number, got {out.get('input_size')!r}")
            out["input_size"] = size
        decoder = out.get("decoder") or DEFAULT_DECODER
        if decoder not in DECODERS:
            from ..core.errors import did_you_mean

            raise RecipeError(f"{where}.decoder: unknown decoder {decoder!r}{did_you_mean(str(decoder), DECODERS)}; choose one of: {', '.join(DECODERS)}")
        out["decoder"] = decoder
        dice = 0.0 if out.get("dice_weight") is None else out["dice_weight"]
        if isinstance(dice, bool) or not isinstance(dice, (int, float)) or not 0 <= dice <= 100:
            raise RecipeError(f"{where}.dice_weight: expected a number from 0 to 100, got {dice!r}")
        out["dice_weight"] = float(dice)
        return out

    @classmethod
    def from_data(cls, options: dict[str, Any], train: Any, recipe: Any = None) -> SegmentationTask:
        options = cls.check_options(options, "task")
        ignore = options["ignore_index"]
        size = options.get("input_size")
        if size is None:
            image_size = getattr(getattr(recipe, "model", None), "image_size", None)
            size = [image_size, image_size] if image_size else list(reversed(_image_size(train.inputs[0])))
        names = options.get("classes")
        task = cls(names or ["0", "1"], ignore, size, options["decoder"], options["dice_weight"])
        counts = task._scan(train, None if names is None else len(names))
        if names is None:
            found = [i for i, n in enumerate(counts) if n > 0]
            if not found:
                raise DataError(f"{train.source}: every mask pixel is the ignore value {ignore}; nothing to learn")
            k = max(found) + 1
            if k < 2:
                raise DataError(f"{train.source}: the masks hold one class (0); segmentation needs at least two (set task.classes)")
            task.classes = tuple(str(i) for i in range(k))
            counts = counts[:k]
        task.pixel_counts = {name: int(counts[i]) if i < len(counts) else 0 for i, name in enumerate(task.classes)}
        task._checked = set()
        return task

    def _scan(self, examples: Any, num_classes: int | None) -> np.ndarray:
        """Check every mask (readable, its image's size, values in range) and count pixels per value."""
        counts = np.zeros(0, dtype=np.int64)
        for i, (image, mask_path) in enumerate(zip(examples.inputs, examples.labels or [], strict=True)):
            mask = read_mask(mask_path)
            width, height = _image_size(image)
            if mask.shape != (height, width):
                raise DataError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {image} is {width}x{height}")
            values = mask[mask != self.ignore_index]
            if len(values) and values.min() < 0:
                raise DataError(f"{mask_path}: negative mask value {int(values.min())}")
            if num_classes is not None and len(values) and values.max() >= num_classes:
                raise DataError(
                    f"{mask_path}: mask value {int(values.max())} is beyond the {num_classes} classes (0-{num_classes - 1}) "
                    f"and is not the ignore value {self.ignore_index} (task.ignore_index)"
                )
            found = np.bincount(values.reshape(-1), minlength=len(counts)) if len(values) else np.zeros(len(counts), dtype=np.int64)
            if len(found) > len(counts):
                counts = np.pad(counts, (0, len(found) - len(counts)))
            counts[: len(found)] += found
        return counts

    @classmethod
    def from_state(cls, state: dict[str, Any], read: Any = None) -> SegmentationTask:
        return cls(state["classes"], state["ignore_index"], state["input_size"], state.get("decoder", DEFAULT_DECODER), state.get("dice_weight", 0.0))

    def state(self) -> dict[str, Any]:
        return {"type": self.type, "classes": list(self.classes), "ignore_index": self.ignore_index, "input_size": list(self.input_size),
                "decoder": self.decoder, "dice_weight": self.dice_weight}

    def identity(self) -> Any:
        return self.state()

    def describe(self) -> str:
        return f"{len(self.classes)} classes, {self.decoder} decoder at {self.input_size[1]}x{self.input_size[0]}, ignore value {self.ignore_index}"

    # -- targets
    def encode(self, examples: Any) -> list[Any]:
        """The mask paths, each checked once (readable, its image's size, values in range)."""
        unchecked = [i for i, m in enumerate(examples.labels or []) if m not in self._checked]
        if unchecked:
            self._scan(examples.subset(unchecked), len(self.classes))
            self._checked.update(examples.labels[i] for i in unchecked)
        return list(examples.labels or [])

    def transform(self, preprocessing: dict[str, Any], train: bool, augment: str) -> SegmentationTransform:
        return SegmentationTransform(self.input_size, preprocessing, train, augment)

    # -- model
    @property
    def output_size(self) -> int:
        return len(self.classes)

    def head_for(self, backbone: Any, dropout: float = 0.0) -> nn.Module:
        info = backbone.feature_info()  # text backbones were refused by check_recipe
        head = {"lraspp": LRASPPSegHead, "fpn": FPNSegHead}[self.decoder]
        return head(info, len(self.classes), dropout=dropout)

    def _upsampled(self, outputs: torch.Tensor) -> torch.Tensor:
        return F.interpolate(outputs.float(), size=self.input_size, mode="bilinear", align_corners=False)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = F.interpolate(outputs.float(), size=targets.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, targets, ignore_index=self.ignore_index)
        if not torch.isfinite(loss):  # every pixel of the batch ignored: nothing to learn from it
            loss = logits.sum() * 0.0
        if self.dice_weight:
            loss = loss + self.dice_weight * soft_dice_loss(logits, targets, self.ignore_index)
        return {"task": loss}

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        """Per-pixel class indices at the input size (uint8 up to 255 classes)."""
        ids = self._upsampled(outputs).argmax(1)
        return ids.to(torch.uint8) if len(self.classes) <= 255 else ids.int()

    # -- judging
    def metrics(self, scores: np.ndarray, targets: np.ndarray, loss: float | None = None) -> dict[str, Any]:
        result = segmentation_metrics(scores, targets, self.classes, self.ignore_index)
        if loss is not None:
            result["loss"] = float(loss)
        return result

    def metric_names(self) -> list[str]:
        return list(self.epoch_metrics)

    def format_metrics(self, metrics: dict[str, Any], title: str = "") -> str:
        lines = [title] if title else []
        lines.append(f"mean IoU {metrics['mean_iou']:.4f}  pixel accuracy {metrics['pixel_accuracy']:.4f}  (n={metrics['num_examples']} images)")
        per_class = metrics.get("per_class", {})
        if per_class:
            width = max(8, *(len(c) for c in per_class))
            lines.append(f"  {'class':<{width}} {'IoU':>7} {'pixels':>8}")
            for name, row in per_class.items():
                iou = "-" if row["iou"] is None else f"{row['iou']:.4f}"
                lines.append(f"  {name:<{width}} {iou:>7} {row['share']:>8.2%}")
        return "\n".join(lines)

    # -- predictions
    def decode(self, scores: np.ndarray) -> list[Any]:
        """Per input its mask of class indices at the input size (``(H, W)`` array)."""
        return [np.asarray(s).astype(np.int64) for s in scores]

    def _shares(self, mask: np.ndarray) -> dict[str, float]:
        counts = np.bincount(np.asarray(mask, dtype=np.int64).reshape(-1), minlength=len(self.classes))
        total = max(int(counts.sum()), 1)
        return {name: round(int(counts[i]) / total, 6) for i, name in enumerate(self.classes) if counts[i]}

    def prediction_records(self, scores: np.ndarray, targets: np.ndarray | None) -> list[dict[str, Any]]:
        """Per image: its mean IoU and pixel accuracy (with targets) and, as ``predicted``, the
        predicted classes' shares of its pixels."""
        records = []
        for i, mask in enumerate(scores):
            record: dict[str, Any] = {}
            if targets is not None:
                miou, accuracy = image_scores(np.asarray(mask), np.asarray(targets[i]), len(self.classes), self.ignore_index)
                record.update({"mean_iou": None if math.isnan(miou) else round(miou, 6),
                               "pixel_accuracy": None if math.isnan(accuracy) else round(accuracy, 6)})
            record["predicted"] = self._shares(mask)
            records.append(record)
        return records

    def output_records(self, scores: np.ndarray) -> list[dict[str, Any]]:
        """Per image: every class's share of the predicted pixels (``shares``, in class order) and
        the mask's size; the line lists the classes present, largest first."""
        records = []
        for mask in scores:
            shares = self._shares(mask)
            line = " ".join(f"{name}:{share:.3f}" for name, share in sorted(shares.items(), key=lambda kv: -kv[1]))
            every = {name: shares.get(name, 0.0) for name in self.classes}  # fixed keys: the columns of predict --output
            records.append({"json": {"shares": every, "size": [int(n) for n in np.shape(mask)]}, "line": line})
        return records

    def output_names(self) -> list[str]:
        return list(self.classes)

    def explain_targets(self, scores: np.ndarray) -> list[int]:
        """The class covering most of each predicted mask."""
        return [int(np.bincount(np.asarray(m, dtype=np.int64).reshape(-1), minlength=len(self.classes)).argmax()) for m in scores]

    def run_files(self, inputs: Sequence[Any], scores: np.ndarray, targets: np.ndarray | None, limit: int = 6) -> dict[str, bytes]:
        """``worst_val/NN_STEM.png`` for the ``limit`` validation images with the lowest mean IoU
        (image | ground truth | prediction at the input size) and ``worst_val.json`` listing them."""
        import json

        from PIL import Image

        if targets is None or not len(scores):
            return {}
        ranked = []
        for i in range(len(scores)):
            miou, accuracy = image_scores(np.asarray(scores[i]), np.asarray(targets[i]), len(self.classes), self.ignore_index)
            if not math.isnan(miou):
                ranked.append((miou, accuracy, i))
        ranked.sort()
        colours = np.concatenate([palette(len(self.classes)), np.zeros((1, 3), np.uint8)])  # ignored pixels: black
        h, w = self.input_size
        files, rows = {}, []
        for rank, (miou, accuracy, i) in enumerate(ranked[:limit], start=1):
            image = open_rgb(inputs[i]).resize((w, h), Image.BILINEAR)
            truth = np.asarray(targets[i]).astype(np.int64)
            truth = np.where(truth == self.ignore_index, len(self.classes), np.clip(truth, 0, len(self.classes)))
            gap = np.full((h, 4, 3), 255, np.uint8)
            strip = np.concatenate([np.asarray(image), gap, colours[truth], gap, colours[np.asarray(scores[i]).astype(np.int64)]], axis=1)
            name = f"worst_val/{rank:02d}_{Path(str(inputs[i])).stem}.png"
            files[name] = _png(Image.fromarray(strip))
            rows.append({"input": str(inputs[i]), "mean_iou": round(miou, 6), "pixel_accuracy": round(accuracy, 6), "file": name})
        files["worst_val.json"] = json.dumps(rows, indent=1).encode("utf-8")
        return files

    def prediction_files(self, inputs: Sequence[Any], scores: np.ndarray) -> list[dict[str, bytes]]:
        """Per input ``STEM.png`` (an index PNG at the image's own size, with a colour palette) and
        ``STEM_overlay.png`` (the colours blended over the image)."""
        from PIL import Image

        colours = palette(len(self.classes))
        flat = colours.reshape(-1).tolist() + [0] * (768 - colours.size)
        files, seen = [], set()
        for item, ids in zip(inputs, scores, strict=True):
            image = open_rgb(item)
            stem = Path(str(item)).stem
            name, n = stem, 1
            while name in seen:  # two inputs with one file name (from different folders)
                n += 1
                name = f"{stem}_{n}"
            seen.add(name)
            mask = Image.fromarray(np.asarray(ids, dtype=np.uint8)).resize(image.size, Image.NEAREST)
            mask.putpalette(flat)
            overlay = Image.blend(image, mask.convert("RGB"), 0.5)
            files.append({f"{name}.png": _png(mask), f"{name}_overlay.png": _png(overlay)})
        return files

    def card(self, modality: str, metrics: dict[str, Any], train: Any) -> dict[str, Any]:
        values = [
            {"type": "mean_iou", "value": round(float(metrics["mean_iou"]), 4), "name": "Mean IoU"},
            {"type": "accuracy", "value": round(float(metrics["pixel_accuracy"]), 4), "name": "Pixel accuracy"},
        ]
        rows = ["| metric | value |", "| --- | --- |", f"| mean IoU | {metrics['mean_iou']:.4f} |",
                f"| pixel accuracy | {metrics['pixel_accuracy']:.4f} |", "", "| class | IoU | share of pixels |", "| --- | --- | --- |"]
        for name, r in metrics.get("per_class", {}).items():
            iou = "-" if r["iou"] is None else f"{r['iou']:.4f}"
            rows.append(f"| {name} | {iou} | {r['share']:.2%} |")
        total = max(sum(self.pixel_counts.values()), 1)
        h, w = self.input_size
        return {
            "pipeline_tag": "image-segmentation",
            "metric_names": ["mean_iou", "accuracy"],
            "metrics": values,
            "title": f"semantic segmentation ({len(self.classes)} classes)",
            "summary": (f"Labels every pixel of an image with one of {len(self.classes)} classes: "
                        f"{', '.join(f'`{c}`' for c in self.classes)} ({self.decoder} decoder, input {w}x{h})."),
            "use": (
                f"Segmenting images like those in the training data. It was fine-tuned on {len(train)} images at {w}x{h}, so expect "
                "lower IoU on other scenes, cameras or resolutions, and check each class's IoU below: small, rare classes "
                "are the weakest. Every pixel gets a class, also pixels that belong to none of them."
            ),
            "data": "(share of labelled training pixels: " + ", ".join(f"{c} {self.pixel_counts.get(c, 0) / total:.1%}" for c in self.classes) + ")",
            "table": "\n".join(rows),
            "report": "Curves, per-class IoU and the worst validation images (ground truth beside prediction): `report.html`.",
        }

    def export_config(self) -> dict[str, Any]:
        raise RecipeError("segmentation models export to ONNX (finetunekit export --format onnx)")


def soft_dice_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """1 - mean over classes of the soft Dice coefficient on the labelled pixels."""
    k = logits.shape[1]
    labelled = (targets != ignore_index).unsqueeze(1).float()
    probs = logits.softmax(1) * labelled
    onehot = F.one_hot(targets.clamp(0, k - 1) * (targets != ignore_index), k).permute(0, 3, 1, 2).float() * labelled
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    return 1.0 - ((2 * intersection + 1.0) / (denominator + 1.0)).mean()


def _png(image: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()

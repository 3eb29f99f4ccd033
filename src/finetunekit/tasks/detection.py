"""Object detection: boxes and their classes, from a feature pyramid on the backbone's feature maps.

The head is torchvision's FCOS (default) or RetinaNet head on an FPN over the backbone's maps at
strides 8-32 (finetunekit.tasks.detection_head); its loss and post-processing are torchvision's.
Every image is letterboxed to the run's square input size (``model.image_size``: the long side
scaled to it, padding right and below), so batches stack and one set of anchors serves the run.

Targets travel as padded ``(max_boxes, 5)`` rows ``[x1, y1, x2, y2, class]`` in the network-input
frame (padding rows -1); scores as ``(max_detections, 6)`` rows ``[x1, y1, x2, y2, score, class]``
by falling score (padding -1). Detections scoring under 0.05 are never kept (torchvision
RetinaNet's own floor); ``task.score_threshold`` decides which are reported as predictions, and
``task.nms_iou`` the overlap at which non-maximum suppression drops the weaker of two boxes of one
class. Both can be changed when predicting.

Metrics (torchmetrics ``MeanAveragePrecision``, pycocotools backend): COCO mAP (IoU 0.50:0.95),
mAP@0.5, mAP@0.75, mean average recall (100 detections per image), and per class AP, AP@0.5 and
recall. The primary metric is mAP@0.5: the bars people report for small single-class sets (and
this project's) are VOC-style AP@0.5, and on a few dozen validation images it is the steadier of
the two for choosing an epoch; COCO mAP is reported beside it.

Example::

    task = DetectionTask.from_data({"type": "detection"}, train_examples)   # classes from the boxes
    head = task.head_for(backbone)                                          # FPN + FCOS head
    transform = task.transform(backbone.preprocessing(), train=True, augment="light")
    pixels, target = transform(pil_image, task.encode(train_examples)[0])   # (3, S, S), (100, 5)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..core.errors import DataError, RecipeError, check_range
from . import TASKS
from .base import ReportView
from .dense import DenseTask, open_rgb
from .options import TaskOptions

# the score below which no detection is kept, whatever task.score_threshold says (mAP needs the
# low-scoring ones: they add recall at the end of the precision-recall curve)
SCORE_FLOOR = 0.05
METRICS = ("map", "map_50", "map_75", "mar_100")
METRIC_LABELS = {"map": "mAP@[.5:.95]", "map_50": "mAP@0.5", "map_75": "mAP@0.75", "mar_100": "mAR@100"}


def letterbox_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) of an image scaled so that its long side is ``size``."""
    scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


class DetectionTransform:
    """An image and its boxes, moved together (torchvision.transforms.v2 with tv_tensors).

    Evaluation: letterbox to ``size`` x ``size`` (scale the long side to ``size``, pad right and
    below with the mean colour). Training, ``augment="light"``: horizontal flip, scale jitter
    (the long side becomes 0.7-1.3 x ``size``), then a random ``size`` crop or placement: boxes cut
    by the crop are clipped to it, and boxes left under 2 px wide or high are dropped
    (SanitizeBoundingBoxes). ``"strong"`` adds a photometric distortion and, half the time, an
    SSD-style IoU crop first. All draws come from torch's generator (the dataset seeds it per
    example and epoch).

    ``(PIL image, (n, 5) boxes in image pixels or None) -> (pixels, (max_boxes, 5) target or None)``.
    """

    def __init__(self, size: int, mean: list[float], std: list[float], train: bool, augment: str, max_boxes: int) -> None:
        self.size = int(size)
        self.mean, self.std = list(mean), list(std)
        self.train = train and augment in ("light", "strong")
        self.augment = augment
        self.max_boxes = int(max_boxes)
        self.fill = tuple(int(round(255 * m)) for m in self.mean)
        self._random = self._random_steps() if self.train else None

    def _fills(self) -> dict[Any, Any]:
        """Padding: the mean colour for the image (0 after normalisation), 0 for anything else (masks)."""
        from PIL import Image
        from torchvision import tv_tensors

        return {Image.Image: self.fill, tv_tensors.Image: self.fill, "others": 0}

    def _random_steps(self) -> Any:
        from torchvision.transforms import v2

        steps: list[Any] = []
        if self.augment == "strong":
            steps += [v2.RandomPhotometricDistort(p=0.5), v2.RandomApply([v2.RandomIoUCrop()], p=0.5), v2.SanitizeBoundingBoxes(min_size=2)]
        steps += [
            v2.RandomHorizontalFlip(),
            v2.ScaleJitter((self.size, self.size), scale_range=(0.7, 1.3), antialias=True),
            v2.RandomCrop((self.size, self.size), pad_if_needed=True, fill=self._fills()),
            v2.SanitizeBoundingBoxes(min_size=2),
        ]
        return v2.Compose(steps)

    def apply(self, sample: dict[str, Any]) -> dict[str, Any]:
        """The geometric (and, training, photometric) steps on ``{"image", "boxes", "labels", ...}``
        (any other tv_tensors, such as instance masks, move with them), before normalisation."""
        from torchvision.transforms import v2

        if self._random is not None:
            return self._random(sample)
        height, width = sample["boxes"].canvas_size
        w, h = letterbox_size(width, height, self.size)
        return v2.Compose([
            v2.Resize((h, w), antialias=True),
            v2.Pad([0, 0, self.size - w, self.size - h], fill=self._fills()),
        ])(sample)

    def __call__(self, image: Any, target: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as F

        width, height = image.size
        raw = torch.zeros((0, 5)) if target is None else torch.as_tensor(target, dtype=torch.float32).reshape(-1, 5)
        sample = {
            "image": image,
            "boxes": tv_tensors.BoundingBoxes(raw[:, :4], format="XYXY", canvas_size=(height, width)),
            "labels": raw[:, 4].long(),
        }
        sample = self.apply(sample)
        pixels = F.to_dtype(F.to_image(sample["image"]), torch.float32, scale=True)
        pixels = F.normalize(pixels, self.mean, self.std)
        if target is None:
            return pixels, None
        boxes, labels = sample["boxes"].as_subclass(torch.Tensor), sample["labels"]
        out = torch.full((self.max_boxes, 5), -1.0)
        k = min(len(labels), self.max_boxes)
        out[:k, :4] = boxes[:k]
        out[:k, 4] = labels[:k].float()
        return pixels, out


def targets_as_dicts(targets: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Padded ``(N, max_boxes, 5)`` rows -> torchvision's per-image ``{"boxes", "labels"}``."""
    out = []
    for rows in targets:
        keep = rows[:, 4] >= 0
        out.append({"boxes": rows[keep, :4].float(), "labels": rows[keep, 4].long()})
    return out


def detection_metrics(scores: np.ndarray, targets: np.ndarray, classes: list[str], loss: float | None = None) -> dict[str, Any]:
    """COCO-style metrics of padded detections against padded targets (torchmetrics
    MeanAveragePrecision, pycocotools backend); per class AP, AP@0.5 and recall."""
    from torchmetrics.detection import MeanAveragePrecision

    preds, gts = [], []
    for det, tgt in zip(np.asarray(scores), np.asarray(targets), strict=True):
        d = torch.as_tensor(det[det[:, 4] >= 0], dtype=torch.float32)
        t = torch.as_tensor(tgt[tgt[:, 4] >= 0], dtype=torch.float32)
        preds.append({"boxes": d[:, :4], "scores": d[:, 4], "labels": d[:, 5].long()})
        gts.append({"boxes": t[:, :4], "labels": t[:, 4].long()})
    coco = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True, backend="pycocotools")
    at_50 = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", iou_thresholds=[0.5], class_metrics=True, backend="pycocotools")
    coco.update(preds, gts)
    at_50.update(preds, gts)
    full, half = coco.compute(), at_50.compute()
    result: dict[str, Any] = {k: _value(full[k]) for k in METRICS}
    result["num_examples"] = len(gts)
    result["num_boxes"] = int(sum(len(g["labels"]) for g in gts))
    if loss is not None:
        result["loss"] = float(loss)
    counts = Counter(int(c) for g in gts for c in g["labels"].tolist())
    ids = [int(c) for c in torch.atleast_1d(full["classes"]).tolist()]
    ap, rec = torch.atleast_1d(full["map_per_class"]).tolist(), torch.atleast_1d(full["mar_100_per_class"]).tolist()
    ids50 = [int(c) for c in torch.atleast_1d(half["classes"]).tolist()]
    ap50 = dict(zip(ids50, torch.atleast_1d(half["map_per_class"]).tolist(), strict=True))
    per_class = {}
    for k, name in enumerate(classes):
        row = {"ap": -1.0, "ap_50": -1.0, "recall": -1.0, "boxes": counts.get(k, 0)}
        if k in ids:
            j = ids.index(k)
            row.update(ap=float(ap[j]), recall=float(rec[j]), ap_50=float(ap50.get(k, -1.0)))
        per_class[name] = row
    result["per_class"] = per_class
    return result


def _value(x: Any) -> float:
    return float(torch.as_tensor(x).item())


@dataclass
class DetectionOptions(TaskOptions):
    """``task:`` options of detection (docs/detection-segmentation.md): the head on the feature
    pyramid (fcos or retinanet, torchvision's); classes: the class names in order (null: the training
    boxes' names, sorted; a box table without a label column is single-class and needs its one name
    here); detections scoring under score_threshold are not reported (metrics use every detection
    from 0.05 up); non-maximum suppression drops the weaker of two boxes of one class overlapping more
    than nms_iou; at most max_detections per image; images may hold at most max_boxes true boxes;
    fpn_channels: the width of the pyramid and the head (a multiple of 32, at least 64); box_format:
    how a box of four numbers in in-memory data reads, xywh (COCO's [x, y, width, height], the
    default) or xyxy ([x1, y1, x2, y2])."""

    head: Literal["fcos", "retinanet"] | None = None
    classes: list[str] | None = None
    score_threshold: float | None = None
    nms_iou: float | None = None
    max_detections: int | None = None
    max_boxes: int | None = None
    fpn_channels: int | None = None
    # how in-memory boxes of four numbers read: [x, y, width, height] (COCO's, datasets') or corners
    box_format: Literal["xywh", "xyxy"] | None = None

    def __post_init__(self) -> None:
        if self.score_threshold is not None:
            check_range("task.score_threshold", self.score_threshold, 0.0, 1.0)
        if self.nms_iou is not None:
            check_range("task.nms_iou", self.nms_iou, 0.0, 1.0, low_open=True)
        if self.max_detections is not None:
            check_range("task.max_detections", self.max_detections, 1, 10_000)
        if self.max_boxes is not None:
            check_range("task.max_boxes", self.max_boxes, 1, 10_000)
        if self.fpn_channels is not None:
            check_range("task.fpn_channels", self.fpn_channels, 64, 1024)


@TASKS.register("detection")
class DetectionTask(DenseTask):
    """Boxes with classes; options (recipe ``task:``): ``head`` fcos | retinanet, ``classes``
    (their order; null: the training boxes' names, sorted), ``score_threshold``, ``nms_iou``,
    ``max_detections``, ``max_boxes``, ``fpn_channels``."""

    type = "detection"
    Options = DetectionOptions
    primary_metric = "map_50"
    epoch_metrics = METRICS
    report = ReportView(
        noun="object detection, {count} class{plural}",
        cards=(("mAP@0.5", "map_50"), ("mAP@[.5:.95]", "map"), ("mAP@0.75", "map_75"), ("mAR@100", "mar_100")),
        curves=(("val_map_50", "mAP@0.5"), ("val_map", "mAP@[.5:.95]"), ("val_mar_100", "mAR@100")),
        sections=("per_class_ap", "worst_detections"),
        compared=("map_50", "map", "map_75", "mar_100"),
    )
    # The new pyramid and head start from random weights and the pretrained features were made for
    # whole-image classes, so the backbone trains too, except its three highest-resolution stages
    # (stem to stride 4: as torchvision's detection fine-tuning keeps the first stages of its
    # backbones frozen; the most expensive layers to run backwards, and the most generic features),
    # BatchNorm statistics frozen (batches of 8); the head 10x faster than the backbone, after a
    # warmup (focal-loss heads diverge from a cold start at full rate).
    # docs/detection-segmentation.md has the measurements.
    strategy_defaults = {"name": "last_n", "last_n": 5}
    train_defaults = {"epochs": 6, "batch_size": 8, "lr": 2e-4, "head_lr": 2e-3, "weight_decay": 1e-4, "scheduler": "cosine", "warmup_ratio": 0.1}

    def __init__(
        self, classes: list[str], head: str = "fcos", score_threshold: float = 0.3, nms_iou: float = 0.6,
        max_detections: int = 100, max_boxes: int = 100, fpn_channels: int = 64, counts: dict[str, int] | None = None,
        image_size: int | None = None,
    ) -> None:
        self.classes = list(classes)
        self.head_kind = head
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        self.max_detections = int(max_detections)
        self.max_boxes = int(max_boxes)
        self.fpn_channels = int(fpn_channels)
        self.counts = dict(counts or {})
        self.image_size = image_size
        self._rules: Any = None

    # -- construction
    @classmethod
    def reader(cls, options: dict[str, Any], image_root: str | None = None) -> Any:
        """COCO JSON, a Pascal VOC folder or a box table (finetunekit.tasks.detection_data), images
        under ``image_root``; a single-class table's class is ``options["classes"]``."""
        import functools

        from .detection_data import read_detection

        return functools.partial(read_detection, image_root=image_root, classes=options.get("classes"),
                                 box_format=options.get("box_format"), image_column=options.get("image_column"))

    @classmethod
    def find_layout(cls, path: Any) -> str | None:
        from .detection_data import box_columns, memory_layout

        if hasattr(path, "table_rows"):  # an in-memory table (finetunekit.data.memory.MemoryTable)
            return memory_layout(path)

        if path.is_dir() and any((path / n).is_dir() for n in ("Annotations", "annotations")):
            return "a Pascal VOC folder (Annotations/)"
        if path.is_file() and path.suffix.lower() == ".json":
            return "a .json file, read as COCO annotations"
        box = box_columns(path) if path.is_file() and path.suffix.lower() in (".csv", ".tsv") else None
        return f"a table of boxes (columns {', '.join(box)})" if box else None

    @classmethod
    def check_options(cls, options: dict[str, Any], where: str) -> dict[str, Any]:
        filled = dict(options)
        head = options.get("head") or "fcos"
        if head not in ("fcos", "retinanet"):
            raise RecipeError(f"{where}.head: {head!r} is not one of 'fcos', 'retinanet'")
        filled["head"] = head
        filled["score_threshold"] = 0.3 if options.get("score_threshold") is None else float(options["score_threshold"])
        filled["nms_iou"] = 0.6 if options.get("nms_iou") is None else float(options["nms_iou"])
        filled["max_detections"] = 100 if options.get("max_detections") is None else int(options["max_detections"])
        filled["max_boxes"] = 100 if options.get("max_boxes") is None else int(options["max_boxes"])
        filled["fpn_channels"] = 64 if options.get("fpn_channels") is None else int(options["fpn_channels"])
        if filled["fpn_channels"] % 32 or filled["fpn_channels"] < 64:
            # the heads' GroupNorm has 32 groups; 32 channels would leave one value per group on the
            # one-pixel P7 map of a small input, which GroupNorm refuses
            raise RecipeError(f"{where}.fpn_channels: {filled['fpn_channels']} must be a multiple of 32, at least 64 (the heads' GroupNorm has 32 groups)")
        classes = options.get("classes")
        if classes is not None and (not classes or len(set(classes)) != len(classes) or not all(str(c).strip() for c in classes)):
            raise RecipeError(f"{where}.classes: {classes!r} must list distinct, non-empty class names")
        return filled

    @classmethod
    def from_data(cls, options: dict[str, Any], train: Any, recipe: Any = None) -> DetectionTask:
        options = cls.check_options(options, "task")
        counts = Counter(box[4] for boxes in train.labels or [] for box in boxes)
        if options.get("classes"):
            classes = [str(c) for c in options["classes"]]
        else:
            classes = sorted(counts)
        if not classes:
            raise DataError(f"{train.source}: no boxes in the training images, so no classes to learn; give task.classes")
        task = cls(classes, options["head"], options["score_threshold"], options["nms_iou"], options["max_detections"],
                   options["max_boxes"], options["fpn_channels"], {c: counts.get(c, 0) for c in classes})
        task.encode(train)  # unknown classes and overfull images: named before any training
        return task

    @classmethod
    def from_state(cls, state: dict[str, Any], read: Any = None) -> DetectionTask:
        return cls(state["classes"], state.get("head", "fcos"), state.get("score_threshold", 0.3), state.get("nms_iou", 0.6),
                   state.get("max_detections", 100), state.get("max_boxes", 100), state.get("fpn_channels", 64),
                   state.get("counts"), state.get("image_size"))

    def state(self) -> dict[str, Any]:
        return {"type": self.type, "classes": self.classes, "head": self.head_kind, "score_threshold": self.score_threshold,
                "nms_iou": self.nms_iou, "max_detections": self.max_detections, "max_boxes": self.max_boxes,
                "fpn_channels": self.fpn_channels, "counts": self.counts, "image_size": self.image_size}

    def identity(self) -> Any:
        return {"type": self.type, "classes": self.classes, "head": self.head_kind, "fpn_channels": self.fpn_channels}

    def describe(self) -> str:
        n = len(self.classes)
        return f"{n} class{'es' if n != 1 else ''} ({', '.join(self.classes[:5])}{', ...' if n > 5 else ''}), {self.head_kind} head"

    # -- targets
    def encode(self, examples: Any) -> list[torch.Tensor]:
        """Per image an ``(n, 5)`` tensor of its boxes in image pixels and their class ids."""
        index = {c: i for i, c in enumerate(self.classes)}
        out = []
        for i, boxes in enumerate(examples.labels or []):
            if len(boxes) > self.max_boxes:
                raise DataError(f"{examples.where(i)}: {len(boxes)} boxes in one image, more than task.max_boxes = {self.max_boxes}; raise it")
            rows = []
            for x1, y1, x2, y2, name, where in boxes:
                if name not in index:
                    from ..core.errors import did_you_mean

                    raise DataError(f"{where}: unknown class {name!r}{did_you_mean(name, self.classes)} (classes: {', '.join(self.classes)})")
                rows.append([x1, y1, x2, y2, float(index[name])])
            out.append(torch.tensor(rows, dtype=torch.float32).reshape(-1, 5))
        return out

    def collate(self, values: Any) -> torch.Tensor:
        return torch.stack(list(values))

    def sampling_classes(self, targets: Any) -> torch.Tensor:
        raise RecipeError("data.sampler: balanced sampling draws one class per image, and a detection image has many boxes; use shuffle")

    # -- model
    @property
    def output_size(self) -> int:
        return len(self.classes)

    def rules(self) -> Any:
        if self._rules is None:
            from .detection_head import DetectionRules

            if self.image_size is None:
                raise RuntimeError("the detection task's input size is set when its head is built (head_for)")
            self._rules = DetectionRules(self.head_kind, len(self.classes), self.image_size)
        return self._rules

    def head_for(self, backbone: Any, dropout: float = 0.0) -> nn.Module:
        from .detection_head import DetectionHead

        size = int(backbone.preprocessing()["input_size"])
        if self.image_size != size:
            self.image_size, self._rules = size, None
        try:
            info = backbone.feature_info()
        except NotImplementedError as exc:
            raise RecipeError(f"task.type: detection needs an image backbone with feature maps ({exc})") from None
        return DetectionHead(info, len(self.classes), self.head_kind, self.fpn_channels)

    def build_head(self, in_features: int, dropout: float = 0.0) -> nn.Module:
        raise RecipeError("task.type: detection puts its head on the backbone's feature maps (head_for), not on pooled features")

    def transform(self, preprocessing: dict[str, Any], train: bool, augment: str) -> DetectionTransform:
        size = int(preprocessing["input_size"])
        if self.image_size != size:
            self.image_size, self._rules = size, None
        return DetectionTransform(size, preprocessing["mean"], preprocessing["std"], train, augment, self.max_boxes)

    def loss_names(self) -> list[str]:
        return ["classification", "bbox_regression", *(["bbox_ctrness"] if self.head_kind == "fcos" else [])]

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.rules().loss(outputs, targets_as_dicts(targets))

    def mixable(self, targets: torch.Tensor) -> torch.Tensor:
        raise RecipeError("train.mixup_alpha / train.cutmix_alpha: mixing blends whole images, not boxes; set both to 0")

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        """Detections ``(N, max_detections, 6)``: boxes in the network-input frame, score, class."""
        return self.rules().detections(outputs, SCORE_FLOOR, self.nms_iou, self.max_detections)

    # -- judging
    def metrics(self, scores: np.ndarray, targets: np.ndarray, loss: float | None = None) -> dict[str, Any]:
        return detection_metrics(scores, targets, self.classes, loss)

    def metric_names(self) -> list[str]:
        return ["loss", *METRICS]

    def format_epoch(self, metrics: dict[str, Any]) -> str:
        return "  ".join(f"val_{k} {metrics[k]:.4f}" for k in self.epoch_metrics if metrics.get(k) is not None)

    def format_metrics(self, metrics: dict[str, Any], title: str = "") -> str:
        lines = [title] if title else []
        lines.append("  ".join(f"{METRIC_LABELS[k]} {metrics[k]:.4f}" for k in METRICS if k in metrics)
                     + f"  (n={metrics.get('num_examples', 0)} images, {metrics.get('num_boxes', 0)} boxes)")
        per_class = metrics.get("per_class", {})
        if per_class:
            width = max(8, *(len(c) for c in per_class))
            lines.append(f"  {'class':<{width}} {'AP':>8} {'AP@0.5':>8} {'recall':>8} {'boxes':>6}")
            for name, r in per_class.items():
                lines.append(f"  {name:<{width}} {r['ap']:>8.4f} {r['ap_50']:>8.4f} {r['recall']:>8.4f} {r['boxes']:>6}")
        return "\n".join(lines)

    # -- predictions
    def detections(self, scores: np.ndarray, threshold: float | None = None) -> list[list[dict[str, Any]]]:
        """Per image the detections at or above ``threshold`` (default ``task.score_threshold``):
        ``{"label", "score", "box": [x1, y1, x2, y2]}``, in the frame the scores are in."""
        threshold = self.score_threshold if threshold is None else float(threshold)
        scores = np.asarray(scores)
        if scores.ndim != 3:  # not detection rows (batch prediction's header probe): nothing found
            scores = np.zeros((len(scores), 0, 6), np.float32)
        out = []
        for rows in scores:
            out.append([
                {"label": self.classes[int(r[5])], "score": round(float(r[4]), 4), "box": [round(float(v), 1) for v in r[:4]]}
                for r in rows if r[4] >= 0 and r[4] >= threshold
            ])
        return out

    def decode(self, scores: np.ndarray) -> list[Any]:
        return self.detections(scores)

    def target_values(self, targets: np.ndarray) -> list[Any]:
        return [
            [{"label": self.classes[int(r[4])], "box": [round(float(v), 1) for v in r[:4]]} for r in rows if r[4] >= 0]
            for rows in np.asarray(targets)
        ]

    def to_image_frame(self, scores: np.ndarray, sizes: list[tuple[int, int]]) -> np.ndarray:
        """Detections (or padded targets: rows whose column 4 is -1 are padding either way) moved
        from the letterboxed network input back to each image's own pixels (``sizes``: (width,
        height) per image)."""
        out = np.array(scores, dtype=np.float32, copy=True)
        for i, (width, height) in enumerate(sizes):
            w, h = letterbox_size(width, height, int(self.image_size or 0))
            keep = out[i, :, 4] >= 0
            boxes = out[i, keep, :4]
            boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]] * (width / w), 0, width)
            boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]] * (height / h), 0, height)
            out[i, keep, :4] = boxes
        return out

    def prediction_records(self, scores: np.ndarray, targets: np.ndarray | None) -> list[dict[str, Any]]:
        """``{"label": true boxes, "predicted": detections}`` in the frame of ``scores`` and
        ``targets`` (the trainer and the predictor give them in each image's pixels)."""
        predicted = self.detections(scores)
        true = self.target_values(targets) if targets is not None else [None] * len(predicted)
        return [{"label": t, "predicted": p} for t, p in zip(true, predicted, strict=True)]

    def output_records(self, scores: np.ndarray) -> list[dict[str, Any]]:
        records = []
        for found in self.detections(scores):
            line = "; ".join(f"{d['label']} {d['score']:.2f} [{', '.join(f'{v:.0f}' for v in d['box'])}]" for d in found)
            records.append({"json": {"detections": found}, "line": line or "(no detections)"})
        return records

    def set_prediction_options(self, score_threshold: float | None = None, nms_iou: float | None = None) -> None:
        """Change the reporting threshold and the NMS overlap for the next predictions."""
        if score_threshold is not None:
            if not 0.0 <= float(score_threshold) <= 1.0:
                raise RecipeError(f"--score-threshold: {score_threshold} is out of range [0, 1]")
            self.score_threshold = float(score_threshold)
        if nms_iou is not None:
            if not 0.0 < float(nms_iou) <= 1.0:
                raise RecipeError(f"--nms-iou: {nms_iou} is out of range (0, 1]")
            self.nms_iou = float(nms_iou)

    def output_names(self) -> list[str]:
        """The raw output's rows: the class logits, the box regression, the centre-ness (FCOS)."""
        return [*self.classes, "box_left", "box_top", "box_right", "box_bottom", *(["centerness"] if self.head_kind == "fcos" else [])]

    def explain_targets(self, scores: np.ndarray) -> list[int]:
        """The class of each image's best detection (class 0 when there is none)."""
        return [int(rows[0, 5]) if rows[0, 4] >= 0 else 0 for rows in np.asarray(scores)]

    def table_row(self, answer: dict[str, Any]) -> dict[str, Any]:
        """``predict --output`` cells: the number of detections and all of them as JSON."""
        import json

        found = answer.get("detections", [])
        return {"count": len(found), "detections": json.dumps(found, separators=(",", ":"))}

    def run_files(self, inputs: Any, scores: np.ndarray, targets: np.ndarray | None, limit: int = 6) -> dict[str, bytes]:
        """``worst_val/NN_STEM.png`` for the ``limit`` validation images with the most errors at IoU
        0.5 (true boxes missed + detections at or above the score threshold matching no true box;
        ties: the lower mean IoU of the matches), the true boxes left and the detections right,
        and ``worst_val.json`` listing them."""
        import json

        if targets is None or not len(scores):
            return {}
        ranked = []
        for i in range(len(scores)):
            missed, false, mean_iou = image_errors(scores[i], targets[i], self.score_threshold)
            if missed + false:
                ranked.append((-(missed + false), mean_iou, i, missed, false))
        ranked.sort()
        files: dict[str, bytes] = {}
        rows = []
        for rank, (_, mean_iou, i, missed, false) in enumerate(ranked[:limit], start=1):
            image = _letterboxed(inputs[i], int(self.image_size or 0))
            truth = [(r[:4], self.classes[int(r[4])], None) for r in np.asarray(targets[i]) if r[4] >= 0]
            found = [(r[:4], self.classes[int(r[5])], float(r[4])) for r in np.asarray(scores[i]) if r[4] >= self.score_threshold]
            strip = _side_by_side(draw_boxes(image, truth, self.classes), draw_boxes(image, found, self.classes))
            name = f"worst_val/{rank:02d}_{Path(str(inputs[i])).stem}.png"
            files[name] = _png(strip)
            rows.append({"input": str(inputs[i]), "file": name, "missed": missed, "false_detections": false,
                         "caption": f"{missed} true box{'es' if missed != 1 else ''} missed, {false} false detection{'s' if false != 1 else ''}"})
        files["worst_val.json"] = json.dumps(rows, indent=1).encode("utf-8")
        return files

    def to_input_frame(self, scores: np.ndarray, sizes: list[tuple[int, int]]) -> np.ndarray:
        return self.to_image_frame(scores, sizes)

    def prediction_files(self, inputs: Any, scores: np.ndarray) -> list[dict[str, bytes]]:
        """Per input ``STEM_boxes.png``: the image with its detections (at or above the score
        threshold) drawn; with the first input, ``detections.json``: every input's detections as
        COCO results (``image_id``: the input's position from 1, ``category_id``: the class's
        position in ``classes`` from 1, ``bbox``: [x, y, width, height] in the image's pixels,
        ``score``; ``file_name`` names the image). ``scores`` are in the images' own pixels
        (:meth:`to_input_frame`)."""
        import json

        results, files, seen = [], [], set()
        for n, (item, rows) in enumerate(zip(inputs, np.asarray(scores), strict=True), start=1):
            kept = [r for r in rows if r[4] >= 0 and r[4] >= self.score_threshold]
            for r in kept:
                results.append({"image_id": n, "file_name": str(item), "category_id": int(r[5]) + 1, "category": self.classes[int(r[5])],
                                "bbox": [round(float(r[0]), 2), round(float(r[1]), 2), round(float(r[2] - r[0]), 2), round(float(r[3] - r[1]), 2)],
                                "score": round(float(r[4]), 5)})
            stem = Path(str(item)).stem
            name = f"{stem}_boxes.png" if stem not in seen else f"{stem}_{n}_boxes.png"
            seen.add(stem)
            drawn = draw_boxes(open_rgb(item), [(r[:4], self.classes[int(r[5])], float(r[4])) for r in kept], self.classes)
            files.append({name: _png(drawn)})
        if files:
            files[0]["detections.json"] = json.dumps(results, indent=1).encode("utf-8")
        return files

    def card(self, modality: str, metrics: dict[str, Any], train: Any) -> dict[str, Any]:
        values = [{"type": k, "value": round(float(metrics[k]), 4), "name": METRIC_LABELS[k]} for k in METRICS if k in metrics]
        rows = ["| metric | value |", "| --- | --- |"]
        rows += [f"| {METRIC_LABELS[k]} | {metrics[k]:.4f} |" for k in METRICS if k in metrics]
        rows += ["", "| class | AP | AP@0.5 | recall (AR@100) | boxes |", "| --- | --- | --- | --- | --- |"]
        for name, r in metrics.get("per_class", {}).items():
            rows.append(f"| {name} | {r['ap']:.4f} | {r['ap_50']:.4f} | {r['recall']:.4f} | {r['boxes']} |")
        n = len(self.classes)
        return {
            "pipeline_tag": "object-detection",
            "metric_names": list(METRICS),
            "metrics": values,
            "title": f"object detector ({n} class{'es' if n != 1 else ''}, {self.head_kind.upper()} head)",
            "summary": f"Finds {', '.join(f'`{c}`' for c in self.classes)} in images and draws a box around each.",
            "use": (
                f"Locating {', '.join(self.classes)} in photos like those in the training data, at a "
                f"{self.image_size} px input (the long side of each image is scaled to it, so small objects in large "
                f"images may be missed). It was fine-tuned on {len(train)} images: expect misses and false alarms on "
                f"other scenes; detections under score {self.score_threshold} are not reported (set it when predicting)."
            ),
            "data": "(" + ", ".join(f"{c} {self.counts.get(c, 0)} boxes" for c in self.classes) + ")",
            "table": "\n".join(rows),
            "report": "Curves, the per-class table and the worst validation images with true and predicted boxes: `report.html`.",
        }

    def export_config(self) -> dict[str, Any]:
        return {"id2label": dict(enumerate(self.classes)), "label2id": {c: i for i, c in enumerate(self.classes)},
                "problem_type": "object_detection"}


# -- per-image errors and pictures ----------------------------------------------------------------


def image_errors(detections: np.ndarray, targets: np.ndarray, threshold: float, iou: float = 0.5) -> tuple[int, int, float]:
    """(true boxes missed, detections matching no true box, mean IoU of the matches) for one image:
    detections at or above ``threshold`` matched greedily by falling score to the unmatched true
    box of their class they overlap most, if by ``iou`` or more."""
    from torchvision.ops import box_iou

    det = np.asarray(detections)
    det = det[(det[:, 4] >= 0) & (det[:, 4] >= threshold)]
    truth = np.asarray(targets)
    truth = truth[truth[:, 4] >= 0]
    if not len(det) or not len(truth):
        return len(truth), len(det), 0.0
    overlaps = box_iou(torch.as_tensor(det[:, :4], dtype=torch.float32), torch.as_tensor(truth[:, :4], dtype=torch.float32)).numpy()
    overlaps[det[:, 5][:, None] != truth[:, 4][None, :]] = 0.0  # only boxes of the same class match
    taken: set[int] = set()
    matched = []
    for d in np.argsort(-det[:, 4], kind="stable"):
        free = [t for t in np.argsort(-overlaps[d]) if t not in taken and overlaps[d, t] >= iou]
        if free:
            taken.add(int(free[0]))
            matched.append(float(overlaps[d, free[0]]))
    return len(truth) - len(taken), len(det) - len(matched), float(np.mean(matched)) if matched else 0.0


def class_colour(k: int) -> tuple[int, int, int]:
    """Distinct, saturated colours per class id (golden-ratio hues)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((0.13 + 0.618034 * k) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_boxes(image: Any, boxes: list[tuple[Any, str, float | None]], classes: list[str]) -> Any:
    """A copy of the PIL ``image`` with ``(box, class name, score or None)`` drawn, each class in its colour."""
    from PIL import ImageDraw

    out = image.copy()
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 240))
    for box, name, score in boxes:
        colour = class_colour(classes.index(name) if name in classes else 0)
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        text = name if score is None else f"{name} {score:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text)
        ty = y1 - (bottom - top) - 2 if y1 - (bottom - top) - 2 >= 0 else y1
        draw.rectangle([x1, ty, x1 + (right - left) + 4, ty + (bottom - top) + 2], fill=colour)
        draw.text((x1 + 2, ty), text, fill=(0, 0, 0))
    return out


def _letterboxed(path: Any, size: int) -> Any:
    """The image as the network saw it (long side ``size``), without the padding."""
    from PIL import Image

    image = open_rgb(path)
    return image.resize(letterbox_size(image.width, image.height, size), Image.BILINEAR)


def _side_by_side(left: Any, right: Any, gap: int = 6) -> Any:
    from PIL import Image

    out = Image.new("RGB", (left.width + gap + right.width, max(left.height, right.height)), (255, 255, 255))
    out.paste(left, (0, 0))
    out.paste(right, (left.width + gap, 0))
    return out


def _png(image: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()

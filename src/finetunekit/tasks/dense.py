"""What dense tasks (segmentation, detection) share: a head on the backbone's feature maps, raw
per-image targets that a joint transform turns into tensors, and the recipe settings they refuse.

A dense task keeps the one training loop: its targets become tensors of one shape per run
(segmentation: an ``(H, W)`` mask at the network's input size; detection: padded box rows), so
batching, ``gather_for_metrics`` and checkpoints work unchanged. What differs:

* ``encode(examples)`` gives the examples' raw targets (a mask path, a list of boxes), which
  :class:`finetunekit.data.pipeline.ImageDataset` passes with each image through
  ``task.transform(preprocessing, train, augment)``, seeded per (seed, epoch, example);
* ``head_for(backbone)`` builds the head from ``backbone.feature_info()``; the head has
  ``takes_feature_maps = True``, so :class:`finetunekit.run.model.FineTuneModel` feeds it
  ``backbone.feature_maps(batch)``;
* ``check_recipe`` refuses the frozen-feature cache's mixing companions (mixup, cutmix),
  class-balanced sampling, few-shot sampling by class, strategies that compute a linear head
  from pooled features themselves (``Strategy.sets_linear_head``: prototype, SetFit),
  feature distillation and text backbones, each naming the field. The trainer trains dense tasks
  on the images, never on cached features.

Example::

    class MyDenseTask(DenseTask):
        type = "mine"
        def head_for(self, backbone, dropout=0.0):
            return MyHead(backbone.feature_info(), self.num_classes)
        def transform(self, preprocessing, train, augment):
            return MyJointTransform(...)
"""

from __future__ import annotations

from typing import Any

from ..core.errors import RecipeError
from .base import Task


class DenseTask(Task):
    dense = True

    @classmethod
    def check_recipe(cls, recipe: Any, modality: str) -> None:
        kind = cls.type  # a modality without feature maps is refused by finetunekit.run.plan.check_combination
        t, d, s = recipe.train, recipe.data, recipe.strategy
        for name in ("mixup_alpha", "cutmix_alpha"):
            if getattr(t, name):
                raise RecipeError(f"train.{name}: mixup and cutmix blend whole images, not {kind} targets; set train.{name}=0")
        if d.sampler == "balanced":
            raise RecipeError(f"data.sampler: balanced sampling draws one class per image, and a {kind} image has many; use shuffle")
        if getattr(s.strategy_class, "sets_linear_head", False):
            raise RecipeError(f"strategy.name: {s.name} builds a classifier on pooled features; a {kind} task needs a trained head")
        if s.distill_weight:
            raise RecipeError(f"strategy.distill_weight: distillation compares pooled features; a {kind} head reads feature maps; set it to 0")

    # targets: raw per example; the joint transform makes the tensors
    def encode(self, examples: Any) -> list[Any]:
        return list(examples.labels or [])


def open_rgb(path: Any) -> Any:
    """An input image as RGB, for the pictures dense tasks draw (prediction files, worst images)."""
    from PIL import Image

    from ..core.errors import DataError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as exc:  # unreadable files were refused before prediction; say which one if not
        raise DataError(f"{path}: cannot read image ({exc.__class__.__name__}: {exc})") from None

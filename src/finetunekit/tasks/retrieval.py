"""The image-text retrieval task type: find the images that match a caption, and the captions that
describe an image, with a dual encoder (two towers, a projection each into one shared space).

Its model is not ``FineTuneModel(backbone, head)``: it has two backbones, its loss needs both
towers' outputs and the batch's pairing, and it trains with strategies of its own (which tower is
locked). So this entry declares what the registries need to place it (its input form, image-caption
pairs; its strategies), and :mod:`finetunekit.retrieval` reads its recipe, trains, judges and
stores it (docs/retrieval.md).

Example::

    from finetunekit.tasks import TASKS
    TASKS.get("retrieval").own_strategies      # ('lit', 'full', 'lora_text', 'projections')
"""

from __future__ import annotations

from typing import Any, ClassVar

from . import TASKS
from .base import ReportView, Task


@TASKS.register("retrieval")
class RetrievalTask(Task):
    type = "retrieval"
    input_form = "image_text_pairs"
    # lit: the image tower locked (its features cached), the text tower trained; full: both trained;
    # lora_text: LoRA adapters on the text tower; projections: both towers locked
    own_strategies: ClassVar[tuple[str, ...]] = ("lit", "full", "lora_text", "projections")
    own_recipe = "a dual encoder of an image and a text backbone (finetunekit.retrieval, docs/retrieval.md)"
    primary_metric = "mean_recall"
    lower_is_better = frozenset({"loss", "i2t_median_rank", "t2i_median_rank"})
    epoch_metrics = ("i2t_r1", "t2i_r1", "mean_recall")
    report = ReportView(noun="image-text retrieval", cards=(("text->image R@1", "t2i_r1"), ("image->text R@1", "i2t_r1")),
                        compared=("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"))

    @classmethod
    def from_data(cls, options: dict[str, Any], train: Any, recipe: Any = None) -> Task:
        from ..core.errors import RecipeError

        raise RecipeError(f"task.type: retrieval trains {cls.own_recipe}; its recipe names model.image_backbone and "
                          "model.text_backbone, and `finetunekit train` runs it")

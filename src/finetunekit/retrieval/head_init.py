"""A classification head started from an image-text run's text embeddings of the class names
(``model.head_init: zero_shot:RUN_DIR`` in a classification recipe).

Each class name is put into the prompt templates of zero-shot prediction and the prompts'
embeddings averaged and normalised (:meth:`RetrievalModel.class_embeddings`, as ``predict
--classes`` does). The retrieval run scores an image ``f`` (the image tower's pooled features) for
class ``c`` as ``scale * t_c . normalize(P f)``, with ``P`` the image projection; the head's linear
layer is set to ``W = scale * T P`` with no bias, so that its logits are those scores times the
image's ``|P f|``: a positive number per image, so each image's predicted class is the zero-shot
one before the first training step (the probabilities are sharper or flatter by that factor).

That holds only when the classification backbone is the run's image tower: the same weights and the
same preprocessing. It is refused otherwise (use ``model.backbone: run:RUN_DIR``, the run's own image
tower, or the same pretrained backbone when the run kept its image tower locked).

Example::

    model:  {backbone: bundled:efficientnet_lite0, head_init: "zero_shot:runs/f8k"}
    task:   {type: classification}
    strategy: {name: linear_probe}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.errors import RecipeError

PREFIX = "zero_shot:"


def run_dir_of(head_init: str) -> Path:
    """The retrieval run a ``model.head_init`` value names (the field's format is checked by the recipe)."""
    return Path(head_init[len(PREFIX):])


def zero_shot_head(head_init: str, model: Any, task: Any, backbone: Any, strategy: Any) -> str:
    """Set ``model.head``'s linear layer from the run's class-name embeddings (see the module);
    returns a line saying what was done. Raises RecipeError naming ``model.head_init``."""
    from .api import RetrievalModel
    from .run_dir import is_retrieval_run

    run_dir = run_dir_of(head_init)
    field = "model.head_init"
    if not (run_dir / "finetunekit.json").is_file():
        raise RecipeError(f"{field}: {run_dir} is not a finetunekit run directory (no finetunekit.json)")
    if not is_retrieval_run(run_dir):
        raise RecipeError(f"{field}: {run_dir} is not an image-text retrieval run; zero-shot heads come from a run trained "
                          "with task.type: retrieval")
    if not task.single_class or task.dense or task.composite:
        raise RecipeError(f"{field}: a zero-shot head scores one class per image, and a {task.type} task is not single-label "
                          "classification")
    if strategy.sets_linear_head:
        raise RecipeError(f"{field}: strategy {strategy.__name__.lower()} computes the head itself; choose another strategy")
    fc = getattr(model.head, "fc", None)
    if not isinstance(fc, torch.nn.Linear) or fc.in_features != backbone.num_features:
        raise RecipeError(f"{field}: the {task.type} head is not one linear layer on the pooled features")
    retrieval = RetrievalModel(run_dir, device="cpu")
    _check_same_tower(run_dir, retrieval, backbone)
    classes = [str(c) for c in task.output_names()]
    text = torch.from_numpy(retrieval.class_embeddings(classes))  # (classes, embed_dim), unit rows
    projection = retrieval.model.image_proj.weight.detach().float().cpu()  # (embed_dim, features)
    scale = float(retrieval.model.logit_scale.detach().exp())
    with torch.no_grad():
        fc.weight.copy_((scale * text @ projection).to(fc.weight))
        fc.bias.zero_()
    return (f"head: from {run_dir}'s text embeddings of the {len(classes)} class names ({', '.join(classes[:6])}"
            f"{', ...' if len(classes) > 6 else ''}), prompt templates averaged: zero-shot predictions before the first step")


def _check_same_tower(run_dir: Path, retrieval: Any, backbone: Any) -> None:
    """The classification backbone computes the run's image features: the same weights, the same
    preprocessing; else one line saying what differs."""
    tower = retrieval.model.image
    name = retrieval.info["image_backbone"].get("name") or retrieval.info["image_backbone"].get("kind", "its image tower")
    where = f"model.head_init: {run_dir}'s image tower ({name})"
    ours = {k: v.detach().cpu() for k, v in backbone.state_dict().items()}
    theirs = {k: v.detach().cpu() for k, v in tower.state_dict().items()}
    if (type(tower) is not type(backbone) or tower.num_features != backbone.num_features or ours.keys() != theirs.keys()
            or any(ours[k].shape != theirs[k].shape for k in theirs)):
        raise RecipeError(f"{where} is not model.backbone (another architecture: {type(backbone).__name__}, "
                          f"{backbone.num_features} features); use model.backbone: run:{run_dir}")
    differs = sorted(k for k in theirs if not torch.equal(ours[k].to(theirs[k].dtype), theirs[k]))
    if differs:
        raise RecipeError(f"{where} has other weights than model.backbone ({len(differs)} of {len(theirs)} tensors differ, e.g. "
                          f"{differs[0]}); use model.backbone: run:{run_dir}")
    run_pre, ours_pre = retrieval.preprocessing["image_tower"], backbone.preprocessing()
    changed = sorted(k for k in set(run_pre) | set(ours_pre) if run_pre.get(k) != ours_pre.get(k))
    if changed:
        raise RecipeError(f"{where} reads images with other preprocessing than model.backbone ({', '.join(changed)}: "
                          f"{run_pre.get(changed[0])!r} against {ours_pre.get(changed[0])!r}); "
                          + ("set model.image_size to match, or " if changed == ["input_size"] else "")
                          + f"use model.backbone: run:{run_dir} (the run's image tower with its preprocessing)")

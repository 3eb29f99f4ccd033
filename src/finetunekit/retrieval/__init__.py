"""Image-text retrieval: a dual encoder joined from two pretrained towers by a contrastive loss.

A retrieval run puts a projection head on an image backbone and on a text backbone, into one shared
space, and trains them with the symmetric InfoNCE loss (CLIP's) over in-batch negatives. By default
the image tower is locked (LiT, Zhai et al. 2022): its features come from the feature cache, so an
epoch runs only the text side. A finished run embeds texts and images, builds and searches an index
(``finetunekit index`` / ``finetunekit search``), and classifies images from class names alone.

Example::

    from finetunekit.retrieval import RetrievalRecipe, train_retrieval
    recipe = RetrievalRecipe.from_yaml("examples/flickr8k.yaml")
    result = train_retrieval(recipe, output="runs/flickr8k")
    result.metrics["t2i_r1"], result.metrics["i2t_r1"]

    import finetunekit
    model = finetunekit.load("runs/flickr8k")
    model.embed_text(["a dog running on the beach"]).shape   # (1, 256)

The recipe has its own shape (``model.image_backbone`` / ``model.text_backbone``, see
:mod:`finetunekit.retrieval.recipe`): ``finetunekit train`` reads a recipe whose ``task.type`` is
``retrieval`` with it, and every other recipe as before.
"""

from __future__ import annotations

from .recipe import RetrievalRecipe, is_retrieval_recipe

__all__ = ["RetrievalRecipe", "is_retrieval_recipe", "train_retrieval"]


def train_retrieval(*args, **kwargs):
    """``finetunekit.retrieval.train.train`` (imported on first use: it needs torch)."""
    from .train import train

    return train(*args, **kwargs)

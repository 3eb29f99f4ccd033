"""finetunekit: fine-tune pretrained image and text models on small labelled datasets.

Example::

    import finetunekit
    recipe = finetunekit.Recipe.from_yaml("examples/hymenoptera.yaml")
    result = finetunekit.train(recipe, output="runs/ants")
    model = finetunekit.load("runs/ants")
    model.predict(["ant.jpg"])
    finetunekit.load("runs/flickr8k").embed_text(["a dog on a beach"])   # an image-text retrieval run

Heavy modules (torch, timm, transformers) load on first use, so ``import finetunekit`` is fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .version import __version__

__all__ = ["Recipe", "__version__", "evaluate", "load", "train"]

if TYPE_CHECKING:
    from .retrieval.api import load
    from .run.recipe import Recipe
    from .run.trainer import train


def evaluate(
    run_dir: str,
    data: Any,
    text_column: str | None = None,
    label_column: str | list[str] | None = None,
    text_columns: list[str] | None = None,
    image_column: str | None = None,
    image_root: str | None = None,
) -> dict[str, Any]:
    """Metrics of a run directory's model on a labelled data set: a path, or a pandas DataFrame, a
    pyarrow Table, a ``datasets.Dataset`` or ``DatasetDict`` (see ``Predictor.evaluate``;
    ``label_column`` None: the run's own label column(s))."""
    from .use.predict import load

    return load(run_dir).evaluate(
        data, text_column, label_column, text_columns=text_columns, image_column=image_column, image_root=image_root
    )


def __getattr__(name: str) -> Any:
    if name == "Recipe":
        from .run.recipe import Recipe

        return Recipe
    if name == "train":
        from .run.trainer import train

        return train
    if name == "load":  # a predictor, or for an image-text retrieval run its RetrievalModel
        from .retrieval.api import load

        return load
    raise AttributeError(f"module 'finetunekit' has no attribute {name!r}")

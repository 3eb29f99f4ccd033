"""finetunekit: fine-tune pretrained image and text models on small labelled datasets.

Example::

    import finetunekit
    recipe = finetunekit.Recipe.from_yaml("examples/hymenoptera.yaml")
    result = finetunekit.train(recipe, output="runs/ants")
    model = finetunekit.load("runs/ants")
    model.predict(["ant.jpg"])
    finetunekit.load("runs/flickr8k").embed_text(["a dog on a beach"])   # an image-text retrieval run

Every entry point takes data as paths or as the tables users hold (a pandas DataFrame, a pyarrow
Table, a ``datasets.Dataset`` / ``DatasetDict``), with the same names::

    finetunekit.train(recipe, train=train_df, val=val_df, output="runs/x")   # recipe=None: chosen from the data
    finetunekit.tune(recipe, train=train_df, val=val_df, output="studies/x", trials=20)
    finetunekit.select(train_df, ["bundled:minilm_l6", "hf:bert-base-uncased"])
    finetunekit.evaluate("runs/x", test_df)
    finetunekit.load("runs/x").predict(test_df)

Heavy modules (torch, timm, transformers) load on first use, so ``import finetunekit`` is fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .version import __version__

__all__ = ["Recipe", "__version__", "evaluate", "load", "select", "train", "tune"]

if TYPE_CHECKING:
    from .choose.selection import select
    from .choose.tune import tune
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
    ``label_column`` None: the run's own label column(s)). An image-text retrieval run gives its
    recall on a table of images (``image_column``) and captions (``text_column``)."""
    from .retrieval.run_dir import is_retrieval_run
    from .use.predict import load

    if is_retrieval_run(run_dir):
        from .retrieval.api import RetrievalModel

        return RetrievalModel(run_dir).evaluate(data, image_column or "image", text_column or "caption", image_root)
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
    if name == "tune":
        from .choose.tune import tune

        return tune
    if name == "select":
        from .choose.selection import select

        return select
    raise AttributeError(f"module 'finetunekit' has no attribute {name!r}")

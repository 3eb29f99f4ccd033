"""Reading labelled examples (image folders, CSV/TSV/JSONL texts) and splits.

Example::

    from finetunekit.data import resolve_splits
    from finetunekit.modalities import modality_of
    train, val = resolve_splits("photos", None, modality_of("image"), 0.2, seed=0)
    train.inputs[:2], train.labels[:2]

Which reader a path gets is its modality's choice (``finetunekit.modalities.read_examples``).
"""

from .readers import Examples, resolve_splits, stratified_split

__all__ = ["Examples", "resolve_splits", "stratified_split"]

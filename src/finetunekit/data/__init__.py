"""Reading labelled examples (image folders, CSV/TSV/JSONL texts) and splits.

Example::

    from finetunekit.data import read_examples
    train = read_examples("photos/train", modality="image")
    train.inputs[:2], train.labels[:2]
"""

from .readers import Examples, read_examples, resolve_splits, stratified_split

__all__ = ["Examples", "read_examples", "resolve_splits", "stratified_split"]

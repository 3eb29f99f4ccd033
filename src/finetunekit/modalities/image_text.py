"""Image-text pairs: a table with an image column and a caption column, one row per caption (an
image with five captions is five rows), read by a dual encoder (the retrieval task type).

The examples are pairs, not labelled inputs: they feed only a task type of the same input form
(``Task.input_form``, image-caption pairs), and that task type's package
(:mod:`finetunekit.retrieval`) reads, trains, predicts, serves and exports them with two backbones.
This entry declares the input form and owns the column guesses that zero-config and the retrieval
recipe use to recognise such a table.

Example::

    from finetunekit.modalities import modality_of
    pairs = modality_of("image_text")
    pairs.pair_columns(["image", "caption"])       # ('image', 'caption')
    pairs.supported_tasks()                        # ['retrieval']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import MODALITIES
from .base import Modality

# tried in order for each role when the recipe names no column
IMAGE_COLUMNS = ("image", "image_path", "path", "file", "filepath", "filename")
CAPTION_COLUMNS = ("caption", "captions", "sentence_caption")


@MODALITIES.register("image_text")
class ImageText(Modality):
    name = "image_text"
    input_form = "image_text_pairs"
    single_backbone = False
    column_guesses = IMAGE_COLUMNS + CAPTION_COLUMNS
    file_extensions = frozenset()
    # the search service's request carries a text (or a base64 image): POST /search {"text": ...}
    request_field = "text"
    # LiT (Zhai et al. 2022): the pretrained image tower locked, the text tower trained
    default_strategy = "lit"
    # the retrieval recipe's sections hold its defaults (finetunekit.retrieval.recipe); `tune` does not run it
    train_defaults: dict[str, Any] = {}
    search_space: dict[str, dict[str, list[Any]]] = {}
    export_formats = ("hf", "onnx")  # the text tower for transformers, the image tower as ONNX
    onnx_axes = {"pixel_values": {0: "batch"}}
    zero_config_backbone = "bundled:efficientnet_lite0 + bundled:minilm_l6"
    zero_config_reason = "LiT: a locked pretrained image tower, the text tower trained (docs/retrieval.md)"
    input_view = "gallery"
    input_noun = "image and caption"
    card_dataset_type = "image-text"
    card_example = '{"text": "a dog running on the beach"}'

    def pair_columns(self, columns: Sequence[str]) -> tuple[str, str] | None:
        """(image column, caption column) of a table with these columns, by the guesses above; None
        when either is missing or a ``label`` column says it is a labelled table instead."""
        image = next((c for c in IMAGE_COLUMNS if c in columns), None)
        caption = next((c for c in CAPTION_COLUMNS if c in columns), None)
        if image is None or caption is None or "label" in columns:
            return None
        return image, caption

"""Texts and sentence pairs: one or two columns of a table; token ids from the backbone's
tokenizer, batched by length; integrated-gradients explanations over the token embeddings; a text
table in the report.

A pair model (``data.text_columns``) has a two-part input schema: predict takes ``(first, second)``.

Example::

    from finetunekit.modalities import read_examples
    read_examples("train.tsv", "text", text_columns=["sentence1", "sentence2"]).inputs[0]
    # ('A man is playing a guitar.', 'Someone plays an instrument.')
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data.readers import IMAGE_EXTENSIONS, RECIPE_COLUMN_OPTIONS, TEXT_COLUMN_GUESSES, TEXT_EXTENSIONS, _read_text_table
from ..core.errors import DataError
from . import MODALITIES
from .base import InputSchema, Modality, is_file, shown, singles

# Inputs of the export parity check when the run's validation inputs are gone
SAMPLE_TEXTS = [
    "a gripping, beautifully made film",
    "dull",
    "the plot never comes together, and the acting is flat from start to finish",
    "not bad at all",
]
SAMPLE_PAIRS = [
    ("A man is playing a guitar on stage.", "Someone is making music."),
    ("The cat sleeps.", "A dog is running through a field of tall grass near the river."),
    ("Prices rose sharply last year, according to the report released on Monday.", "Prices fell."),
    ("She won.", "She lost."),
]


@MODALITIES.register("text")
class Text(Modality):
    name = "text"
    seq2seq_backbones = True  # encoder-decoders (translation) read text: the seq2seq task trains them
    column_guesses = TEXT_COLUMN_GUESSES
    request_field = "texts"
    backbone_needs = ("tokenize", "pad_token_id")
    # Fine-tunes everything at lr 1e-4 with the new head at 1e-3, batch 16, warmup then linear
    # decay: those three values were chosen on held-out SST-2 *training* rows (never dev); the
    # strategy itself (full, against layer-wise decay, L2-SP, LP-FT, gradual unfreezing, LoRA) by
    # benchmarks/strategies.py over three seeds on dev (docs/strategies.md).
    default_strategy = "full"
    train_defaults = {"epochs": 3, "batch_size": 16, "lr": 1e-4, "head_lr": 1e-3, "weight_decay": 0.01, "scheduler": "linear",
                      "warmup_ratio": 0.1, "progressive_resize": 1.0}
    strategy_train_defaults = {
        # LoRA adapters start as a zero update scaled by alpha/rank and need a larger rate than full
        # fine-tuning (the LoRA paper: RoBERTa-base on GLUE at 4e-4 to 5e-4 for 30-80 epochs; these
        # defaults run 3 to 5). SST-2 at 1e-3: 0.831 dev accuracy vs 0.834 for full fine-tuning.
        "lora": {"lr": 1e-3, "head_lr": 1e-3},
        "prototype": {"epochs": 1},  # class means are computed once: a second epoch would compute the same ones
        "setfit": {"epochs": 1, "lr": 2e-5, "batch_size": 16},  # the SetFit paper: one epoch over 2 x 20 x N pairs at 2e-5, batch 16
    }
    # the rates and length of the default full fine-tuning
    search_space = {
        "train.lr": {"log_uniform": [1e-5, 3e-4]},
        "train.head_lr": {"log_uniform": [1e-4, 1e-2]},
        "train.epochs": {"int": [2, 5]},
        "train.batch_size": {"choice": [16, 32]},
        "train.warmup_ratio": {"uniform": [0.0, 0.2]},
    }
    export_formats = ("hf", "onnx")
    onnx_axes = {name: {0: "batch", 1: "sequence"} for name in ("input_ids", "attention_mask", "token_type_ids")}
    fast_input = "tokens"
    zero_config_backbone = "bundled:minilm_l6"
    zero_config_writer = "warm-started on both sides as an encoder-decoder, its decoder writes the text"
    zero_config_seq2seq_example = ("examples/multi30k.yaml trains Multi30k with it, the new cross-attention of the "
                                   "encoder-decoder included")
    report_errors = 50
    explained_errors = 20  # integrated gradients costs 32 passes per text
    # 20 texts x 32 passes took a fifth of a 3-epoch SST-2 run (docs/performance.md): on demand
    explain_after_training = False
    input_view = "table"
    explanation_note = ('<p class="note">Words coloured by integrated gradients of the predicted class: green pushed towards '
                        "it, red away from it (hover for the value).</p>")
    card_dataset_type = "text-table"
    card_example = '["a sentence to classify"]'

    def claims(self, path: Path) -> bool:
        return not path.is_dir() and path.suffix.lower() in TEXT_EXTENSIONS

    def find_examples(self, path: Path, found: str, text_column: str | None = None, label_column: str | list[str] = "label",
                      require_labels: bool = True, text_columns: list[str] | None = None, image_column: str | None = None,
                      options: tuple[str, str] = RECIPE_COLUMN_OPTIONS, image_root: str | Path | None = None) -> Any:
        if found != self.name:
            raise self.mismatch(path, found)
        return _read_text_table(path, text_column, label_column, require_labels, text_columns, options, self.column_guesses)

    def run_preprocessing(self, backbone: Any, data: Any) -> dict[str, Any]:
        preprocessing = backbone.preprocessing()
        preprocessing["max_length"] = data.max_length
        if data.text_columns:  # a pair model: predict and evaluate take pairs, read from these columns
            preprocessing["text_columns"] = list(data.text_columns)
        return preprocessing

    def schema(self, preprocessing: dict[str, Any]) -> InputSchema:
        columns = preprocessing.get("text_columns")
        return InputSchema(2, tuple(columns)) if columns else InputSchema()

    def build_dataset(self, examples: Any, label_ids: Any, backbone: Any, preprocessing: dict, train: bool, augment: str,
                      max_length: int, task: Any = None, crop_scale: float = 0.25) -> Any:
        from ..data.pipeline import TextDataset

        return TextDataset(backbone.tokenize(examples.inputs, max_length), label_ids)

    def encode(self, predictor: Any, items: Sequence[Any]) -> dict[str, Any]:
        from ..data.pipeline import TextCollator

        max_length = int(predictor.preprocessing.get("max_length", 512))
        encoded = predictor.model.backbone.tokenize(list(items), max_length)
        rows = [{**{k: v[i] for k, v in encoded.items()}, "index": i} for i in range(len(items))]
        batch = TextCollator(predictor.model.backbone.pad_token_id)(rows)
        batch.pop("index")
        return batch

    def examples_digest(self, h: Any, inputs: Sequence[Any], encodings: Any) -> None:
        h.update(json.dumps(encodings, separators=(",", ":")).encode())

    def check_inputs(self, inputs: list[Any], schema: InputSchema) -> list[Any]:
        if schema.is_pair:
            return [_pair(item) for item in inputs]
        inputs = singles(inputs)
        for number, item in enumerate(inputs, start=1):
            if not item.strip():  # as training refuses an empty text
                raise DataError(f"input {number}: empty text")
            if is_file(item) and Path(item).suffix.lower() in IMAGE_EXTENSIONS:
                raise DataError(f"{item}: is an image file, but this model takes text")
        return inputs

    def explanation(self, backbone: Any) -> dict[str, Any]:
        if getattr(backbone, "is_seq2seq", False):  # a translation has no one class score to follow the gradient of
            return {"method": None, "reason": "an encoder-decoder writes text; integrated gradients explain a class score"}
        return {"method": "integrated-gradients", "over": "token embeddings"}

    def card_input(self, recipe: Any) -> str:
        if recipe.data.text_columns:
            first, second = recipe.data.text_columns
            return (f"sentence pairs (`{first}`, `{second}`), tokenized together with segment ids and truncated to "
                    f"{recipe.data.max_length} tokens, the longer text first (`preprocessing.json`)")
        return f"texts, tokenized and truncated to {recipe.data.max_length} tokens (`preprocessing.json`)"

    def card_head(self, pooling: str) -> str:
        return pooling + "-pooled token states"

    def export_samples(self, saved: list[Any], schema: InputSchema, limit: int) -> list[Any] | None:
        if schema.is_pair:  # pairs are saved as [first, second]
            return [tuple(p) for p in saved[:limit]] + SAMPLE_PAIRS
        return (saved[:limit] + SAMPLE_TEXTS) if saved else list(SAMPLE_TEXTS)

    def onnx_inputs(self, predictor: Any) -> str:
        names = predictor.model.backbone.tokenizer.model_input_names
        return ("input_ids, attention_mask" + (", token_type_ids" if "token_type_ids" in names else "")
                + " (N, L) int64, from the tokenizer in tokenizer/"
                + (" called on both texts of each pair, tokenizer(firsts, seconds, padding=True, truncation=True)"
                   if predictor.schema.is_pair else ""))


def _pair(item: Any) -> tuple[str, str]:
    """One input of a pair model: a (first, second) tuple, or a two-item list (as JSON gives it)."""
    if isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item):
        return str(item[0]), str(item[1])
    raise DataError(f"this model takes sentence pairs (first, second), not {shown(str(item))}")

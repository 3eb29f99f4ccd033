"""Use a run directory: ``finetunekit.load(RUN_DIR).predict([...])``.

Everything (architecture, weights, the task with its labels or target statistics, preprocessing,
tokenizer) comes from the run directory.

Example::

    model = finetunekit.load("runs/ants")
    model.predict(["val/ants/1.jpg"])          # ['ants']
    model.predict_proba(["val/ants/1.jpg"])    # array([[0.98, 0.02]]) (the task's scores)
    model.evaluate("hymenoptera_data/val")     # metrics dict
    pairs = finetunekit.load("runs/rte")       # trained with data.text_columns: takes (first, second)
    pairs.predict([("A man plays a guitar.", "Someone makes music.")])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import Examples
from ..data.images import image_size
from ..data.memory import evaluation_split, is_memory
from ..data.pipeline import ImageDataset, build_loader, image_transform, reader_threads, threaded_batches
from ..data.readers import FLAG_COLUMN_OPTIONS, select_listed
from ..core.errors import DataError
from .loading import load_model
from ..modalities import modality_of, read_examples
from ..tasks import task_reader


class Predictor:
    def __init__(self, run_dir: str | Path, device: str | None = None, batch_size: int = 64, precision: str | None = None) -> None:
        """``precision``: None runs in the precision the run validated in (its ``finetunekit.json``),
        so predictions reproduce the run's own; "fp32" forces full precision."""
        self.run_dir = Path(run_dir)
        self.load_seconds: dict[str, float] = {}  # where loading went (``finetunekit predict``'s cold-start line)
        self.model, info = load_model(self.run_dir, self.load_seconds)
        self.task = info["task"]
        self.preprocessing: dict[str, Any] = info["preprocessing"]
        self.modality: str = info["modality"]
        self.kind = modality_of(self.modality)  # what differs between kinds of input
        # what one input is: a sentence-pair model (data.text_columns) takes (first, second) pairs
        self.schema = self.kind.schema(self.preprocessing)
        self.text_columns: list[str] | None = list(self.schema.columns) if self.schema.columns else None
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)
        self.batch_size = batch_size
        self.precision = precision or info.get("precision", "fp32")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision: expected fp32, bf16 or fp16, got {self.precision!r}")

    @property
    def labels(self) -> Any:
        """Classification: the label map (``labels.decode(ids)``); other tasks: their label names."""
        return getattr(self.task, "labels", None)

    @property
    def classes(self) -> list[str]:
        """Class (or label) names in score-column order; empty for regression."""
        return list(getattr(self.task, "classes", ()))

    def _examples(self, inputs: Any) -> Examples:
        if isinstance(inputs, Examples):
            return inputs
        if is_memory(inputs):  # a DataFrame, Arrow table or datasets.Dataset: its input column(s), as the run read them
            data = self._recipe_data()
            return read_examples(
                evaluation_split(inputs), self.kind, data.get("text_column"), self.label_column, require_labels=False,
                text_columns=self.text_columns, image_column=data.get("image_column"), options=FLAG_COLUMN_OPTIONS,
            )
        return Examples(self.kind.check_inputs(list(inputs), self.schema), None, "inputs", self.modality)

    @torch.inference_mode()
    def predict_proba(self, inputs: list[Any] | Examples, batch_size: int | None = None) -> np.ndarray:
        """The task's scores, one row per input: class probabilities (columns in ``self.classes``
        order) for classification and multi-label, predicted values in target units for regression.
        ``inputs``: image paths, texts, or for a pair model ``(first, second)`` pairs; or a DataFrame,
        pyarrow Table or ``datasets.Dataset`` whose input column(s) the run read. Texts are
        batched by length (less padding), images read in threads ahead of the model; the rows come
        back in input order. ``batch_size``: inputs per forward pass (default ``self.batch_size``)."""
        examples = self._examples(inputs)
        if len(examples) == 0:
            return np.zeros((0, self.task.output_size), dtype=np.float32)
        if self.task.whole_inputs:  # a long recording: window by window, the answers joined
            long = self.kind.long_inputs(examples.inputs, float(self.preprocessing.get("max_seconds") or 0))
            if long:
                return self._with_windows(len(examples), long, lambda rows: self._scores(examples.subset(rows), None, batch_size)[0],
                                          batch_size)
        scores = self._scores_and_windows(examples, batch_size)[0]
        if self.task.dense:  # detection: boxes back in each image's own pixels
            scores = self.task.to_input_frame(scores, [image_size(p, self.preprocessing.get("max_image_pixels")) for p in examples.inputs])
        return scores

    def _scores_and_windows(self, examples: Examples, batch_size: int | None = None) -> tuple[np.ndarray, list[list[dict]] | None]:
        """The scores of ``examples``; an input the modality cuts into parts (a long audio file:
        windows) scores as the mean of its parts' scores, and each part's own answer and span come
        back too (None when nothing was cut)."""
        # a task that reads each input whole (a transcript) windows it its own way (_with_windows)
        plan = None if self.task.whole_inputs else self.kind.windows(self.preprocessing, examples)
        if plan is None:
            return self._scores(examples, None, batch_size)[0], None
        parts, owner, spans = plan
        part_scores = self._scores(parts, None, batch_size)[0]
        scores = np.stack([part_scores[owner == i].mean(0) for i in range(len(examples))])
        answers = self.task.answers(part_scores)
        windows: list[list[dict]] = [[] for _ in range(len(examples))]
        for i, (start, end), answer in zip(owner, spans, answers, strict=True):
            windows[int(i)].append({"start": round(start, 3), "end": round(end, 3), **answer})
        return scores, windows

    def _with_windows(self, count: int, long: dict[int, list[Any]], short_scores: Any, batch_size: int | None) -> np.ndarray:
        """Scores of ``count`` inputs of which those in ``long`` (by index) are cut into windows:
        those predicted window by window and joined by the task, the others by ``short_scores(indices)``
        as usual; rows padded to one width. Files (:meth:`predict_proba`) and clips in memory
        (:meth:`predict_items`, the service's uploads) both come through here."""
        short = [i for i in range(count) if i not in long]
        rows: dict[int, np.ndarray] = {}
        if short:
            scores = short_scores(short)
            rows.update({i: scores[k] for k, i in enumerate(short)})
        size = batch_size or self.batch_size
        for i, pieces in long.items():
            parts = [self.predict_items(pieces[k : k + size]) for k in range(0, len(pieces), size)]
            rows[i] = self.task.join_windows(np.concatenate(parts))
        width = max(len(r) for r in rows.values())
        out = np.full((count, width), -1.0, dtype=np.float32)
        for i, row in rows.items():
            out[i, : len(row)] = row
        return out

    def set_options(self, score_threshold: float | None = None, nms_iou: float | None = None) -> Predictor:
        """Detection: report detections scoring ``score_threshold`` or more, and let non-maximum
        suppression drop the weaker of two boxes of one class overlapping by more than ``nms_iou``
        (defaults: the run's task.score_threshold and task.nms_iou). Returns the predictor."""
        self.task.set_prediction_options(score_threshold=score_threshold, nms_iou=nms_iou)
        return self

    @torch.inference_mode()
    def _scores(self, examples: Examples, targets: Any, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """The task's scores for ``examples`` and, given their encoded ``targets``, those targets as
        the model sees them (a dense task's mask at the input size), in input order, in one pass."""
        if len(examples) == 0:
            return np.zeros((0, self.task.output_size), dtype=np.float32), None if targets is None else np.asarray(targets)
        max_length = int(self.preprocessing.get("max_length", 512))
        dataset = self.kind.build_dataset(examples, targets, self.model.backbone, self.preprocessing, False, "none", max_length, self.task)
        loader = build_loader(dataset, self.model.backbone, batch_size or self.batch_size, False, 0)
        batches: Any = loader
        if isinstance(dataset, ImageDataset):  # decode and resize the next batches while the model runs
            batches = threaded_batches(dataset, loader.batch_sampler, loader.collate_fn, reader_threads())
        self.model.eval()
        probs: np.ndarray | None = None
        seen: list[tuple[np.ndarray, np.ndarray]] = []
        for batch in batches:
            index = batch.pop("index").numpy()
            labels = batch.pop("labels", None)
            if labels is not None:
                seen.append((index, labels.numpy()))
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with self._autocast():
                logits = self.model(batch)
            scores = self.task.scores(logits).cpu().numpy()
            if probs is None:  # one row per input, of the task's score shape (a vector, a mask...)
                probs = np.zeros((len(examples), *scores.shape[1:]), dtype=np.float32 if scores.dtype.kind == "f" else scores.dtype)
            probs[index] = scores
        assert probs is not None
        labels_out = None
        if seen:
            labels_out = np.zeros((len(examples), *seen[0][1].shape[1:]), dtype=seen[0][1].dtype)
            for index, values in seen:
                labels_out[index] = values
        return probs, labels_out

    def encode(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        """One model batch from inputs already in memory: texts, or decoded RGB ``PIL.Image``s.
        The same preprocessing as :meth:`predict_proba` (the run's tokenizer and length, or its
        resize, crop and normalisation), so the same input gets the same answer either way."""
        return self.kind.encode(self, items)

    def image_tensor(self, image: Any) -> torch.Tensor:
        """One decoded RGB ``PIL.Image`` preprocessed as the model takes it (the run's resize, crop
        and normalisation; a dense task's own resize). Draws no random numbers: safe in threads."""
        if not hasattr(self, "_transform"):
            joint = self.task.transform(self.preprocessing, False, "none")  # dense tasks: their own resize
            self._transform = image_transform(self.preprocessing, train=False) if joint is None else (lambda image: joint(image, None)[0])
        return self._transform(image)

    def predict_pixels(self, pixels: Sequence[torch.Tensor], sizes: Sequence[tuple[int, int]]) -> np.ndarray:
        """:meth:`predict_items` for images already preprocessed by :meth:`image_tensor` (``sizes``:
        each image's own (width, height), where a dense task's outputs go back to)."""
        if len(pixels) == 0:
            return np.zeros((0, self.task.output_size), dtype=np.float32)
        scores = self.forward_proba({"pixel_values": torch.stack(list(pixels))})
        if self.task.dense:
            scores = self.task.to_input_frame(scores, list(sizes))
        return scores

    def forward_proba(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        """The task's scores (class probabilities...) of one encoded batch, in the run's precision,
        without autograd."""
        self.model.eval()
        with torch.inference_mode(), self._autocast():
            logits = self.model({k: v.to(self.device) for k, v in batch.items()})
        return self.task.scores(logits).cpu().numpy()

    def predict_items(self, items: Sequence[Any]) -> np.ndarray:
        """:meth:`predict_proba` for in-memory inputs (texts, PIL images, ``(samples, rate)`` clips),
        one forward pass; a clip longer than the backbone's window, for a task that reads inputs
        whole (a transcript), is cut into windows and the answers joined, as for files."""
        if len(items) == 0:
            return np.zeros((0, self.task.output_size), dtype=np.float32)
        if self.task.whole_inputs:
            long = self.kind.long_inputs(items, float(self.preprocessing.get("max_seconds") or 0))
            if long:
                return self._with_windows(len(items), long, lambda rows: self.predict_items([items[i] for i in rows]), None)
        scores = self.forward_proba(self.encode(items))
        if self.task.dense:  # detection: boxes back in each image's own pixels
            scores = self.task.to_input_frame(scores, self.kind.item_sizes(items))
        return scores

    def answers(self, probs: np.ndarray) -> list[dict[str, Any]]:
        """The answer for each input, from the model's outputs: the predicted label, its score and
        every class's score. The service, ``predict --output`` and ``explain`` all answer through
        this one function, so each answers in the same form."""
        return self.task.answers(probs)

    def _autocast(self):
        if self.precision == "fp32" or (self.precision == "fp16" and self.device.type == "cpu"):
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)

    def predict(self, inputs: list[Any] | Examples) -> list[Any]:
        """Predictions: class names (classification), lists of labels (multi-label), numbers or
        lists of numbers (regression with one or several targets), a dict per task for several."""
        return self.task.decode(self.predict_proba(inputs))

    def records(self, inputs: list[Any] | Examples) -> list[dict[str, Any]]:
        """Per input ``{"json": ..., "line": ...}``: the prediction and its scores as ``predict --json``
        prints them, and as its plain-text line (without the input)."""
        if self.task.dense or self.task.whole_inputs:  # boxes and masks in each image's own pixels; transcripts
            return self.task.output_records(self.predict_proba(inputs))
        examples = self._examples(inputs)
        if len(examples) == 0:
            return []
        scores, windows = self._scores_and_windows(examples)
        records = self.task.output_records(scores)
        for record, parts in zip(records, windows or [], strict=False):
            if len(parts) > 1:  # a long audio file: each window's own answer, and the line says how many were averaged
                record["json"]["windows"] = parts
                record["line"] += f"\t(mean of {len(parts)} windows)"
        return records

    def write_predictions(self, inputs: list[Any] | Examples, folder: str | Path) -> list[dict[str, str]]:
        """Write the task's prediction files for ``inputs`` into ``folder`` (segmentation: an index
        PNG at each image's size and a colour overlay), atomically; returns per input the paths
        written, by file name."""
        return self.records_and_files(inputs, folder)[1]

    def records_and_files(self, inputs: list[Any] | Examples, folder: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """:meth:`records` and :meth:`write_predictions` from one forward pass."""
        from ..run.artifacts import atomic_write_bytes

        examples = self._examples(inputs)
        scores = self.predict_proba(examples)
        written = []
        for files in self.task.prediction_files(examples.inputs, scores):
            for name, data in files.items():
                atomic_write_bytes(Path(folder) / name, data)
            written.append({name: str(Path(folder) / name) for name in files})
        return self.task.output_records(scores), written

    def evaluate(
        self,
        data: Any,
        text_column: str | None = None,
        label_column: str | list[str] | None = None,
        text_columns: list[str] | None = None,
        image_column: str | None = None,
        image_root: str | None = None,
        image_list: str | None = None,
    ) -> dict[str, Any]:
        """Metrics on a labelled set (an image folder or table, or a text table; or a DataFrame, a
        pyarrow Table, a ``datasets.Dataset`` or a ``DatasetDict``'s test split), with this run's
        preprocessing; a pair model reads its pairs from the run's ``text_columns`` unless given,
        and the labels from the run's own label column(s) unless given. ``image_list``: a text
        file naming the images to keep (one file name a line, as data.val_list)."""
        if label_column is None:
            label_column = self.label_column
        columns = text_columns or self.text_columns
        if is_memory(data):  # a DataFrame, Arrow table or datasets.Dataset (a DatasetDict: its test split)
            data = evaluation_split(data)
            recorded = self._recipe_data()
            text_column = text_column or recorded.get("text_column")
            image_column = image_column or recorded.get("image_column")
        # a task's own formats (segmentation's image/mask lists; detection's COCO, VOC, box tables,
        # a single-class table's class being the run's one class)
        single = self.classes if len(self.classes) == 1 else None
        recorded = self._recipe_data()
        mask_column = label_column if isinstance(label_column, str) and label_column != "label" else None
        reader = task_reader(self.task.type, image_root=image_root, classes=single, box_format=self._recipe_task().get("box_format"),
                             image_column=image_column or recorded.get("image_column"), mask_column=mask_column)
        if reader is not None:
            examples = reader(data if is_memory(data) else str(data))
        else:
            examples = read_examples(
                data, self.kind, text_column, label_column, text_columns=columns, image_column=image_column,
                options=FLAG_COLUMN_OPTIONS, image_root=image_root,
            )
        if image_list is not None:
            examples = select_listed(examples, image_list)
        scores, targets = self._scores(examples, self.task.encode(examples))
        loss = self.task.eval_loss(scores, targets)
        return {**self.task.metrics(scores, targets, loss), **self.task.confidence_intervals(scores, targets), "eval_set": examples.source}

    @property
    def label_column(self) -> str | list[str]:
        """The run's label column(s) (its recipe's data.label_column; every task's for several)."""
        return self.task.label_columns(self._recipe_data().get("label_column") or "label")

    def _recipe_data(self) -> dict[str, Any]:
        """The data section of the run's recipe.yaml ({} without one)."""
        return self._recipe_section("data")

    def _recipe_task(self) -> dict[str, Any]:
        """The task section of the run's recipe.yaml ({} without one)."""
        return self._recipe_section("task")

    def _recipe_section(self, name: str) -> dict[str, Any]:
        import yaml

        recipe = self.run_dir / "recipe.yaml"
        if not recipe.is_file():
            return {}
        return (yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}).get(name) or {}


def load(run_dir: str | Path, device: str | None = None, precision: str | None = None) -> Predictor:
    """Rebuild a fine-tuned model from its run directory alone (``precision``: see Predictor)."""
    return Predictor(run_dir, device, precision=precision)


def _modality(run_dir: str | Path) -> str:
    """The run's modality, from its finetunekit.json (without loading the model)."""
    from ..run.artifacts import MARKER, read_json

    path = Path(run_dir)
    if not path.is_dir():
        raise DataError(f"run directory not found: {path}")
    return str(read_json(path / MARKER).get("modality", "image"))

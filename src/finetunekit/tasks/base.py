"""The task contract: what is predicted and how it is judged.

A :class:`Task` owns everything that differs between, say, classification and regression: it
turns the data's target cells into tensors, builds the head from the backbone's output size, gives
the loss, turns outputs into scores and predictions, computes the metrics (and names the primary
one and its direction), says what the run directory stores to rebuild it, and formats its numbers.
The loop, the trainer, the predictor and the exporters call these methods and never ask which task
they hold.

Example::

    task = TASKS.get("classification").from_data({}, train_examples)
    targets = task.encode(train_examples)          # a tensor, one row per example
    head = task.build_head(backbone.num_features, dropout=0.1)
    parts = task.loss(head(features), targets)     # {"task": tensor}
    scores = task.scores(head(features))           # probabilities, values in target units...
    task.metrics(scores.numpy(), targets.numpy())  # {"accuracy": ..., ...}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .options import TaskOptions


@dataclass(frozen=True)
class ReportView:
    """How ``report.html`` shows a task, as data that :mod:`finetunekit.report` renders.

    ``noun`` is a template of the page's subtitle, filled with ``{count}`` (classes, labels or
    targets), ``{names}`` (their names, joined), ``{plural}`` ("es" unless there is one class) and
    ``{tasks}`` / ``{task_names}`` for several tasks; ``cards`` are (label, metric) pairs shown as
    headline numbers; ``curves`` (metrics.jsonl key, label) pairs plotted per epoch; ``sections`` name
    the report's section renderers (``finetunekit.report.SECTIONS``) in order; ``compared`` the
    metrics ``finetunekit compare`` puts side by side (their directions come from the task);
    ``bounded``: every compared metric lies in [0, 1]."""

    noun: str = "{count} outputs"
    cards: tuple[tuple[str, str], ...] = (("loss", "loss"),)
    curves: tuple[tuple[str, str], ...] = ()
    sections: tuple[str, ...] = ()
    compared: tuple[str, ...] = ("loss",)
    bounded: bool = True


class Task:
    """Base class; subclasses are registered in :data:`finetunekit.tasks.TASKS` by type name."""

    type: ClassVar[str] = ""
    # the metric that chooses the best epoch unless train.metric names another
    primary_metric: ClassVar[str] = "loss"
    # metrics where lower is better; every other metric is better higher
    lower_is_better: ClassVar[frozenset[str]] = frozenset({"loss"})
    # metrics shown in the epoch log line and stored per epoch as val_<name>
    epoch_metrics: ClassVar[tuple[str, ...]] = ()
    # dense tasks (segmentation, detection) put their head on the backbone's feature maps, read
    # their own data formats (``Task.reader``) and transform each image together with its
    # target (:meth:`transform`); see finetunekit.tasks.dense
    dense: ClassVar[bool] = False
    # one class per example, decoded as its name: runs compare by right/wrong per example
    # (McNemar's test in ``finetunekit compare``)
    single_class: ClassVar[bool] = False
    # how finetunekit.core.answers prints this task's answers from its scores without torch (the
    # fast predict path): a key of core.answers.FORMS, or None where only the task object answers
    answer_form: ClassVar[str | None] = None
    # built from the recipe's `tasks:` list (several tasks on one backbone), never named by task.type
    composite: ClassVar[bool] = False
    # the task type's own fields of the recipe's `task:` section (finetunekit.tasks.options)
    Options: ClassVar[type[TaskOptions]] = TaskOptions
    # where this task type trains differently from its modality (finetunekit.run.defaults.resolve):
    # strategy settings used when the recipe names no strategy, and train fields
    strategy_defaults: ClassVar[dict[str, Any]] = {}
    train_defaults: ClassVar[dict[str, Any]] = {}
    # how report.html shows it (a :class:`ReportView`; several tasks build theirs from the parts)
    report: ClassVar[ReportView] = ReportView()
    # zero-config's name of the task type ("single-label classification"); None: zero-config
    # infers it from no table or class folder (it is found by :meth:`find_layout`, or never)
    title: ClassVar[str | None] = None
    # what an exported model's outputs mean, for the export's README (None: a generic note)
    export_note: ClassVar[str | None] = None
    # :meth:`export_outputs` is an affine map of the head's outputs that :meth:`export_head` folds
    # into the head's linear layer, which is all the library formats (hf, timm) keep; a task whose
    # exported outputs need more (the exp of a Poisson rate) sets False and exports to ONNX only,
    # which traces export_outputs itself
    head_folds_outputs: ClassVar[bool] = True
    # each input is read whole, never cropped or padded to one length (a transcript covers the
    # whole clip); modalities that fit inputs to one size ask this
    whole_inputs: ClassVar[bool] = False
    # the model writes text: it trains an encoder-decoder backbone (Backbone.as_seq2seq), on a
    # modality that has them (Modality.seq2seq_backbones); its contract tests need tiny
    # encoder-decoders (tests/test_seq2seq.py), not the encoders of the generic task tests
    needs_decoder: ClassVar[bool] = False
    # what one example is: ``"single"`` (one input, an image, a text or a clip, with its target) or
    # ``"image_text_pairs"`` (an image and its caption, matched against the rest of the batch); a
    # modality feeds a task whose input form it declares (Modality.input_form)
    input_form: ClassVar[str] = "single"
    # the strategies of a task type whose model is not ``FineTuneModel(backbone, head)`` (the dual
    # encoder of retrieval): its recipe's ``strategy.name`` values. None: the strategies registry's
    # (finetunekit.strategies.STRATEGIES), as each strategy's declarations allow
    own_strategies: ClassVar[tuple[str, ...] | None] = None
    # what trains such a task type and reads its recipe (a few words for errors and `finetunekit list`)
    own_recipe: ClassVar[str | None] = None

    @classmethod
    def strategy_refusal(cls, strategy: str) -> str | None:
        """Why this task type cannot train with ``strategy`` (a one-line reason after
        ``strategy.name: ``), from what it declares, or None. A task type with strategies of its own
        takes only those; the registry's strategies are further judged by their own declarations
        (``Strategy.task_refusal``)."""
        if cls.own_strategies is not None and strategy not in cls.own_strategies:
            return (f"{strategy}: a {cls.type} task trains {cls.own_recipe or 'a model of its own'}, with strategies of its own: "
                    f"{', '.join(cls.own_strategies)}")
        return None

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def check_options(cls, options: dict[str, Any], where: str) -> dict[str, Any]:
        """Validate the recipe's task options field by field; returns them with defaults filled."""
        return dict(options)

    @classmethod
    def from_data(cls, options: dict[str, Any], train: Any, recipe: Any = None) -> Task:
        """A task fitted to the training examples (label map, target statistics)."""
        raise NotImplementedError

    @classmethod
    def from_state(cls, state: dict[str, Any], read: Any = None) -> Task:
        """The task a run directory stored (see :meth:`state`); ``read(name)`` reads one of the run
        directory's JSON files (runs from before tasks were stored keep classes in labels.json)."""
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """JSON the run directory keeps (in finetunekit.json) to rebuild this task."""
        raise NotImplementedError

    def check_run_files(self, run_dir: Any, info: dict[str, Any], read: Any) -> None:
        """Refuse a run directory whose task files (:meth:`files`) do not belong to its model;
        ``info`` is finetunekit.json, ``read(name)`` reads one of the run's JSON files."""

    def files(self) -> dict[str, Any]:
        """Extra JSON files a run directory keeps for this task, by name (classification's
        labels.json, which exports copy too)."""
        return {}

    def label_columns(self, default: str | list[str]) -> str | list[str]:
        """The label column(s) an evaluation table must have (``default``: the run's data.label_column)."""
        return default

    def identity(self) -> Any:
        """What must not change between a checkpoint and the run resuming from it."""
        return self.state()

    def describe(self) -> str:
        """A few words for the start-of-run log line, e.g. "2 classes"."""
        return self.type

    @classmethod
    def check_recipe(cls, recipe: Any, modality: str) -> None:
        """Refuse recipe settings this task type cannot honour (raise RecipeError naming the field);
        :func:`finetunekit.run.defaults.resolve` calls it once the type and every default are fixed."""

    @classmethod
    def reader(cls, options: dict[str, Any], image_root: str | None = None) -> Callable[[str | Path], Any] | None:
        """The reader of this task type's own data formats (``path -> Examples``; detection's COCO,
        VOC and box tables, segmentation's image/mask lists), or None when the generic readers
        (class folders, tables) apply. ``options``: the task section's options."""
        return None

    @classmethod
    def find_layout(cls, path: Path) -> str | None:
        """Zero-config: why the data at ``path`` is this task type's own format ("a folder with
        images/ and masks/"), or None when it is not."""
        return None

    @classmethod
    def view(cls, state: dict[str, Any]) -> ReportView:
        """The report view of a stored task (``state``: finetunekit.json's ``task``)."""
        return cls.report

    def direction(self, metric: str) -> str:
        """``"maximize"`` or ``"minimize"``: which way ``metric`` gets better (Optuna's words)."""
        return "maximize" if self.higher_is_better(metric) else "minimize"

    # -- targets --------------------------------------------------------------------------------
    def encode(self, examples: Any) -> torch.Tensor:
        """The examples' targets as one tensor (first dimension: examples); errors name the row."""
        raise NotImplementedError

    def collate(self, values: Sequence[torch.Tensor]) -> torch.Tensor:
        """A batch of encoded targets."""
        return torch.stack(list(values))

    @classmethod
    def strata_for(cls, examples: Any, spec: Any = None) -> list[Any] | None:
        """Keys a held-out validation split keeps the shares of, one per example (None: a plain
        seeded random split); may reject bad label cells first."""
        return None

    def examples_per_class(self, examples: Any) -> dict[str, int] | None:
        """How many of ``examples`` carry each class (multi-label: each label), for rules that go by
        the amount of data per class (finetunekit.choose.autoconfig); None: a task without classes."""
        return None

    def sampling_classes(self, targets: torch.Tensor) -> torch.Tensor:
        """Class ids for class-balanced sampling (data.sampler: balanced)."""
        from ..core.errors import RecipeError

        raise RecipeError(f"data.sampler: balanced sampling needs one class per example; task {self.type} has none")

    # -- model ----------------------------------------------------------------------------------
    @property
    def output_size(self) -> int:
        raise NotImplementedError

    def build_head(self, in_features: int, dropout: float = 0.0) -> nn.Module:
        """The head on the backbone's pooled features."""
        from .heads import LinearHead

        return LinearHead(in_features, self.output_size, dropout)

    def backbone_for(self, backbone: Any) -> Any:
        """The form of ``backbone`` this task trains (the trainer asks once the task is known):
        itself here; a task that writes text asks for its encoder-decoder (``as_seq2seq``)."""
        return backbone

    def head_for(self, backbone: Any, dropout: float = 0.0) -> nn.Module:
        """The head for ``backbone`` (trainer and loader build it through this): on its pooled
        features here; dense tasks build theirs from ``backbone.feature_info()``."""
        return self.build_head(backbone.num_features, dropout)

    def transform(self, preprocessing: dict[str, Any], train: bool, augment: str) -> Any:
        """A joint transform ``(PIL image, raw target or None) -> (pixels, target tensor or None)``
        for tasks whose targets move with the pixels (masks, boxes); None: the image transform of
        the backbone's preprocessing applies to the image alone. Its random draws come from
        torch's generator, which the dataset seeds per (seed, epoch, example)."""
        return None

    def loss_names(self) -> list[str]:
        """The names of :meth:`loss`'s parts, in order."""
        return ["task"]

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss parts by name (one, ``task``, for a single task); the objective sums them."""
        raise NotImplementedError

    def mixable(self, targets: torch.Tensor) -> torch.Tensor:
        """Targets as float vectors that mixup/cutmix can blend linearly (and :meth:`loss` accepts)."""
        return targets.float()

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        """Model outputs -> per-example scores (probabilities, or values in target units)."""
        raise NotImplementedError

    def calibrate(self, scores: np.ndarray, targets: np.ndarray) -> None:
        """Fit decision rules on validation scores (multi-label thresholds); default: nothing."""

    # -- judging --------------------------------------------------------------------------------
    def eval_loss(self, scores: np.ndarray, targets: np.ndarray) -> float | None:
        """The validation loss, computed from the scores the evaluation collected."""
        return None

    def metrics(self, scores: np.ndarray, targets: np.ndarray, loss: float | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def confidence_intervals(self, scores: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        """Bootstrap intervals of the final metrics (``{"<metric>_ci": [low, high], ...}``, added to
        metrics.json and printed by :meth:`format_metrics`); default: none."""
        return {}

    def metric_names(self) -> list[str]:
        """Metrics train.metric may name (each a number in :meth:`metrics`)."""
        return ["loss", *self.epoch_metrics]

    def higher_is_better(self, metric: str) -> bool:
        return metric not in self.lower_is_better

    def epoch_record(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """The per-epoch validation numbers (metrics.jsonl), keyed val_<metric>."""
        return {"val_loss": metrics.get("loss"), **{f"val_{k}": metrics.get(k) for k in self.epoch_metrics}}

    def format_epoch(self, metrics: dict[str, Any]) -> str:
        return "  ".join(f"val_{k} {metrics[k]:.4f}" for k in self.epoch_metrics if metrics.get(k) is not None)

    def format_metrics(self, metrics: dict[str, Any], title: str = "") -> str:
        """A plain-text table of the final metrics."""
        raise NotImplementedError

    # -- predictions ----------------------------------------------------------------------------
    def decode(self, scores: np.ndarray) -> list[Any]:
        """Predictions as plain values (class names, label lists, numbers)."""
        raise NotImplementedError

    def target_values(self, targets: np.ndarray) -> list[Any]:
        """Encoded targets back as plain values (as :meth:`decode` gives predictions)."""
        return self.decode(targets)

    def prediction_records(self, scores: np.ndarray, targets: np.ndarray | None) -> list[dict[str, Any]]:
        """One JSON record per example for val_predictions.jsonl and ``predict --json``."""
        raise NotImplementedError

    def output_records(self, scores: np.ndarray) -> list[dict[str, Any]]:
        """Per example ``{"json": {...}, "line": str}``: what ``finetunekit predict`` prints."""
        raise NotImplementedError

    def answers(self, scores: np.ndarray) -> list[dict[str, Any]]:
        """The answer for each input as the service, ``predict --output`` and ``explain`` give it
        (default: what ``predict --json`` prints)."""
        return [r["json"] for r in self.output_records(scores)]

    def example_values(self, records: list[dict[str, Any]]) -> list[tuple[str, np.ndarray, bool]]:
        """For paired comparisons of two runs (``finetunekit compare``): from the labelled records of
        :meth:`prediction_records`, ``(metric, one value per example whose mean is the metric,
        higher is better)`` for each metric compared."""
        return []

    def output_names(self) -> list[str]:
        """A name for each of the model's raw outputs, in order (classes, labels, targets)."""
        raise NotImplementedError

    def explain_targets(self, scores: np.ndarray) -> list[int]:
        """For each input, the raw output an explanation follows the gradient of (default: the
        highest-scoring one, as classification explains its predicted class)."""
        return [int(i) for i in np.asarray(scores).reshape(len(scores), -1).argmax(axis=1)]

    def table_row(self, answer: dict[str, Any]) -> dict[str, Any]:
        """One answer (:meth:`answers`) as flat CSV cells for ``predict --output``: nested keys
        joined with ``_`` (``probabilities_joy``), lists joined with ``|``. The columns must not
        depend on the values, so the header can be written before the first prediction."""
        return flatten_answer(answer)

    def run_files(self, inputs: Sequence[Any], scores: np.ndarray, targets: np.ndarray | None) -> dict[str, bytes]:
        """Extra files the finished run keeps from its final validation, by path relative to the
        run directory (dense tasks: pictures of the worst validation images, ground truth beside
        prediction, which the report shows); the trainer writes them atomically."""
        return {}

    def join_windows(self, rows: np.ndarray) -> np.ndarray:
        """One input's scores from those of its consecutive windows (:attr:`whole_inputs` tasks:
        a long recording predicted window by window)."""
        raise NotImplementedError(f"a {self.type} task does not join windows")

    def to_input_frame(self, scores: np.ndarray, sizes: Sequence[tuple[int, int]]) -> np.ndarray:
        """Scores moved from the network's input to each input's own frame (``sizes``: (width,
        height) per image): detection's boxes back to the image's pixels. Default: unchanged."""
        return scores

    def set_prediction_options(self, score_threshold: float | None = None, nms_iou: float | None = None) -> None:
        """Options of the next predictions (``predict --score-threshold / --nms-iou``); tasks
        without them refuse any being set."""
        given = [name for name, value in (("--score-threshold", score_threshold), ("--nms-iou", nms_iou)) if value is not None]
        if given:
            from ..core.errors import FinetuneError

            raise FinetuneError(f"{given[0]}: applies to detection models; this one is a {self.type} model")

    def prediction_files(self, inputs: Sequence[Any], scores: np.ndarray) -> list[dict[str, bytes]]:
        """Per input, the prediction files to write (``predict --save-dir``), by file name
        (dense tasks: masks, overlays, drawn boxes); names are unique across the inputs."""
        from ..core.errors import FinetuneError

        raise FinetuneError(f"a {self.type} model writes no prediction files; print its predictions instead")

    def card(self, modality: str, metrics: dict[str, Any], train: Any) -> dict[str, Any]:
        """Model card facts: pipeline_tag, metric_names, metrics (model-index entries), title,
        summary, use (intended uses and limitations), data (training data counts), table (metrics
        in Markdown), report (what report.html shows)."""
        raise NotImplementedError

    def export_head(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The head's linear layer (``weight``, ``bias``) as exports store it, so that an exported
        model outputs :meth:`export_outputs` of this model's outputs."""
        return state

    def export_outputs(self, outputs: torch.Tensor) -> torch.Tensor:
        """What an exported model outputs for these model outputs (logits; values in target units)."""
        return outputs

    def import_outputs(self, exported: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`export_outputs`: parity checks compare model outputs."""
        return exported

    def export_config(self) -> dict[str, Any]:
        """transformers config fields of an exported text model (num_labels, problem_type, labels)."""
        raise NotImplementedError


def flatten_answer(answer: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": ["x", "y"]}`` -> ``{"a_b": 1, "c": "x|y"}`` (see :meth:`Task.table_row`)."""
    cells: dict[str, Any] = {}
    for key, value in answer.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            cells.update(flatten_answer(value, f"{name}_"))
        elif isinstance(value, (list, tuple)):
            cells[name] = "|".join(str(v) for v in value)
        else:
            cells[name] = value
    return cells

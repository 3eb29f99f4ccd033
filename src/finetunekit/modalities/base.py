"""The modality contract: what a kind of input is, and everything that differs between kinds.

A modality is stateless; :func:`finetunekit.modalities.modality_of` gives the registered one for a
name (``Examples.modality``, ``backbone.modality``, a run's ``finetunekit.json``). Code outside
``modalities/`` asks the modality (its attributes and methods) instead of comparing its name.

Example::

    from finetunekit.modalities import MODALITIES, Modality

    @MODALITIES.register("audio")
    class Audio(Modality):
        name = "audio"
        column_guesses = ("audio", "file", "path")
        file_extensions = frozenset({".wav", ".flac"})
        request_field = "audio"
        backbone_needs = ("feature_extractor",)
        ...
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..core.errors import DataError, FinetuneError, RecipeError


@dataclass(frozen=True)
class InputSchema:
    """What one input of a run is: a single value, or several parts read together (a sentence
    pair: two texts from ``columns``). ``predict`` checks each input against it."""

    parts: int = 1
    columns: tuple[str, ...] | None = None  # the table columns each part is read from (pairs)

    @property
    def is_pair(self) -> bool:
        return self.parts == 2


class Modality:
    """One kind of input. Subclasses fill the class attributes and override what differs."""

    name: ClassVar[str]
    # table columns that hold the inputs, tried in order when the recipe names none
    column_guesses: ClassVar[tuple[str, ...]] = ()
    # suffixes of the files that each hold one input (images); empty: the inputs are table cells
    file_extensions: ClassVar[frozenset[str]] = frozenset()
    # the JSON field of an HTTP request that carries this modality's inputs
    request_field: ClassVar[str]
    # what the backbone must provide besides the Backbone contract (checked by check_backbone)
    backbone_needs: ClassVar[tuple[str, ...]] = ()
    # capabilities the recipe's image-only fields ask for
    augments: ClassVar[bool] = False  # random augmentation presets (data.augment, cached views)
    blends: ClassVar[bool] = False  # mixup and cutmix
    mixes_noise: ClassVar[bool] = False  # data.augment "noise" (background noise from data.noise_dir)
    resizes: ClassVar[bool] = False  # progressive resizing
    # its backbones give spatial feature maps (``backbone.feature_info()``), which the heads of
    # dense task types (Task.dense: segmentation, detection) read; the resolve step refuses a dense
    # task on a modality without them
    feature_maps: ClassVar[bool] = False
    # encoder-decoder backbones read it (Whisper for audio, translation models for text): task
    # types that write text (Task.needs_decoder) can train on it
    seq2seq_backbones: ClassVar[bool] = False
    # what one example is (Task.input_form): "single" inputs, or "image_text_pairs" (an image and
    # its caption); a modality feeds only task types of its input form
    input_form: ClassVar[str] = "single"
    # a single-backbone recipe's model.backbone is of this modality (image, text, audio); False:
    # its examples feed a task type with a recipe and trainer of its own (Task.own_recipe), and the
    # single-backbone contract (datasets, predict, the service, export) is that task's package's
    single_backbone: ClassVar[bool] = True
    # batch prediction decodes its inputs in threads ahead of the model (Predictor.image_tensor)
    threaded_images: ClassVar[bool] = False
    # training defaults for the recipe fields left as None (finetunekit.run.defaults), the default
    # strategy, and per-strategy changes to those defaults
    default_strategy: ClassVar[str]
    train_defaults: ClassVar[dict[str, Any]]
    strategy_train_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    # the search space of `finetunekit tune` without a search.space
    search_space: ClassVar[dict[str, dict[str, list[Any]]]]
    # `finetunekit export` formats, the native one (the card's how-to-load) first; onnx is generic
    export_formats: ClassVar[tuple[str, ...]] = ("onnx",)
    # the model's input tensors in an ONNX export, in order, with their dynamic axes
    onnx_axes: ClassVar[dict[str, dict[int, str]]] = {}
    # how predict's fast path (finetunekit.use.fast: the run's ONNX model, no torch) prepares this
    # modality's inputs: "pixels" (image files through PIL and numpy, as the eval transform does),
    # "tokens" (texts through the tokenizers library); None: such runs are predicted with torch
    fast_input: ClassVar[str | None] = None
    # the backbone `finetunekit init` (zero-config) picks
    zero_config_backbone: ClassVar[str]
    # set: zero-config trains default_strategy for every data size, for this reason (else autoconfig's rules)
    zero_config_reason: ClassVar[str] = ""
    # zero-config of a task that writes text from this input: what writes it, and the example recipe
    # that measured the choice (both shown in the reasons; empty where no such task is fed)
    zero_config_writer: ClassVar[str] = ""
    zero_config_seq2seq_example: ClassVar[str] = ""
    # the report: at most this many errors shown, as a picture gallery or a text table
    report_errors: ClassVar[int] = 50
    explained_errors: ClassVar[int] = 50
    # whether the report written at the end of training explains the errors; False where that costs
    # many model passes per example, which the user would wait for (`finetunekit report` adds them)
    explain_after_training: ClassVar[bool] = True
    input_view: ClassVar[str] = "table"  # "gallery" (report/html.image_tile) or "table"
    input_noun: ClassVar[str] = "text"  # the report's column of inputs
    explanation_note: ClassVar[str] = ""
    # the model card's Hugging Face dataset type and its example input
    card_dataset_type: ClassVar[str] = "table"
    card_example: ClassVar[str] = '["an input"]'
    card_native_export: ClassVar[str] = ""  # said of the native export format in the card, after "directory"

    # -- which task types it feeds -------------------------------------------------------------

    def task_refusal(self, task: Any, backbone: str = "the backbone") -> str | None:
        """Why this modality's examples cannot train a task of type ``task`` (its class), from both
        sides' declarations, as a one-line reason (after ``task.type: ``); None when they can."""
        from . import MODALITIES, modality_of

        def tasks_of_form(form: str) -> list[str]:
            from ..tasks import TASKS

            return [n for n in TASKS.names() if TASKS.get(n).input_form == form]

        if task.input_form != self.input_form:
            able = [n for n in MODALITIES.names() if modality_of(n).input_form == task.input_form]
            if task.own_recipe:
                return f"{task.type} trains {task.own_recipe} on {' or '.join(able)} data; {backbone} is {_a(self.name)} backbone"
            takers = [n for n in tasks_of_form(self.input_form)]
            return (f"{task.type} trains on one input per example ({' or '.join(able)} data); {self.name} examples are "
                    f"{self.input_form.replace('_', ' ')}, which {' or '.join(takers) or 'no task type'} trains on")
        if task.dense and not self.feature_maps:
            able = [n for n in MODALITIES.names() if modality_of(n).feature_maps]
            return (f"{task.type} needs {' or '.join(_a(n) for n in able) or 'a'} "
                    f"backbone with feature maps; {backbone} is a {self.name} backbone")
        if task.needs_decoder and not self.seq2seq_backbones:
            able = [n for n in MODALITIES.names() if modality_of(n).seq2seq_backbones]
            return (f"{task.type} writes text with an encoder-decoder, which {' and '.join(able)} backbones have; "
                    f"{backbone} is a {self.name} backbone")
        return None

    def supported_tasks(self) -> list[str]:
        """The registered task types this modality's examples train (:meth:`task_refusal`)."""
        from ..tasks import TASKS

        return [n for n in TASKS.names() if self.task_refusal(TASKS.get(n)) is None]

    # -- finding examples ---------------------------------------------------------------------

    def claims(self, path: Path) -> bool:
        """Whether ``path`` (a folder or a file) holds this modality's data (see :func:`detect`)."""
        return False

    def find_examples(self, path: Path, found: str, **columns: Any) -> Any:
        """The labelled examples at ``path`` (``found``: the modality :func:`detect` saw there);
        ``columns``: text_column, label_column, require_labels, text_columns, image_column,
        options, image_root as ``finetunekit.modalities.read_examples`` takes them."""
        raise NotImplementedError

    def read(self, path: str | Path, **columns: Any) -> Any:
        """``finetunekit.modalities.read_examples(path, self, **columns)``."""
        from . import read_examples

        return read_examples(path, self, **columns)

    def mismatch(self, path: Path, found: str) -> DataError:
        return DataError(f"{path}: is {found} data, but the model's backbone takes {self.name}")

    def split_folders(self, root: Path) -> tuple[str, str] | None:
        """(train, val) sub-folders of a data root that is split already, or None."""
        return None

    def check_examples(self, examples: Any, data: Any) -> Any:
        """The examples checked before training (``data``: the recipe's DataSpec); images are opened."""
        return examples

    # -- preprocessing ------------------------------------------------------------------------

    def run_preprocessing(self, backbone: Any, data: Any) -> dict[str, Any]:
        """The run's preprocessing.json: the backbone's, with what predict needs from ``data``."""
        return backbone.preprocessing()

    def schema(self, preprocessing: dict[str, Any]) -> InputSchema:
        """The input schema a run's preprocessing describes."""
        return InputSchema()

    def build_dataset(self, examples: Any, label_ids: Any, backbone: Any, preprocessing: dict, train: bool, augment: str,
                      max_length: int, task: Any = None, crop_scale: float = 0.25) -> Any:
        raise NotImplementedError

    def encode(self, predictor: Any, items: Sequence[Any]) -> dict[str, Any]:
        """One model batch from in-memory inputs (``Predictor.encode``)."""
        raise NotImplementedError

    def windows(self, preprocessing: dict[str, Any], examples: Any) -> tuple[Any, Any, list[tuple[float, float]]] | None:
        """Inputs too long for one pass cut into parts that predict scores apart and averages:
        ``(parts as Examples, the input index of each part, each part's (start, end))``; None: one
        pass over the inputs as they are (audio cuts long files into windows)."""
        return None

    def item_sizes(self, items: Sequence[Any]) -> list[Any] | None:
        """Each in-memory input's own size, where a dense task's outputs go back to (images)."""
        return None

    def long_inputs(self, inputs: Sequence[Any], max_seconds: float) -> dict[int, list[Any]]:
        """Inputs too long for the backbone's window, cut into windows (as :meth:`encode` takes
        them), by input index: a task that reads each input whole (``Task.whole_inputs``)
        predicts each window and joins the answers. Default: none is too long."""
        return {}

    def load_item(self, item: Any) -> Any:
        """An input as predict takes it (a path, a text) -> as :meth:`encode` takes it (a PIL image)."""
        return item

    def examples_digest(self, h: Any, inputs: Sequence[Any], encodings: Any) -> None:
        """Feed what identifies the examples' content (the feature cache's key) into the hash ``h``;
        ``encodings``: the dataset's token ids, where it has them."""
        raise NotImplementedError

    def content_digest(self, inputs: Sequence[Any]) -> str | None:
        """A hash of the files the inputs name (resume refuses changed data), or None."""
        return None

    # -- checks ---------------------------------------------------------------------------------

    def check_recipe(self, recipe: Any) -> None:
        """Recipe fields this modality cannot honour, raised once the backbone's modality is known."""
        t = recipe.train
        if (recipe.data.augment == "noise" or recipe.data.noise_dir) and not self.mixes_noise:
            raise RecipeError(f"data.augment: 'noise' and data.noise_dir mix background noise into audio clips, and "
                              f"{recipe.model.backbone} is a {self.name} backbone; use none, light or strong")
        if not self.blends:
            for field in ("mixup_alpha", "cutmix_alpha"):
                if getattr(t, field):
                    raise RecipeError(
                        f"train.{field}: mixup and cutmix blend images, and {recipe.model.backbone} is a {self.name} "
                        f"backbone; set train.{field}=0"
                    )
        if not self.resizes and t.progressive_resize not in (None, 1.0):
            raise RecipeError(
                f"train.progressive_resize: resizes images, and {recipe.model.backbone} is a {self.name} backbone; "
                "set train.progressive_resize=1"
            )

    def check_backbone(self, backbone: Any) -> None:
        """The backbone serves this modality and provides what it needs (``backbone_needs``)."""
        if backbone.modality != self.name:
            raise FinetuneError(f"a {backbone.modality} backbone ({backbone.kind}) cannot take {self.name} inputs")
        missing = [n for n in self.backbone_needs if not _provides(backbone, n)]
        if missing:
            raise FinetuneError(f"a {self.name} backbone must provide {', '.join(missing)}; {type(backbone).__name__} does not")

    def check_inputs(self, inputs: list[Any], schema: InputSchema) -> list[Any]:
        """``predict``'s inputs checked (one clear error for the first bad one) and normalised."""
        return singles(inputs)

    def decode_request(self, where: str, value: Any) -> Any:
        """One input as a JSON request carries it in ``request_field`` -> as :meth:`encode` takes it;
        a DataError naming ``where`` for a bad one. (Texts and images are decoded by the service,
        under its own size limits.)"""
        raise DataError(f"{where}: this service cannot decode {self.name} inputs")

    # -- showing an input -----------------------------------------------------------------------

    def explanation(self, backbone: Any) -> dict[str, Any]:
        """Which method explains this modality's predictions on ``backbone``, or why none does."""
        return {"method": None, "reason": f"no explanation method for {self.name} inputs"}

    def report_cell(self, value: Any, explanation: str | None) -> str | None:
        """The report's worst-errors cell for an input (HTML), given its explanation as
        ``finetunekit.use.explain.error_explanations`` made it; None: the report's own (the text,
        or the highlighted text)."""
        return None

    def card_input(self, recipe: Any) -> str:
        """The model card's Input line."""
        return f"{self.name} inputs (`preprocessing.json`)"

    def card_head(self, pooling: str) -> str:
        """What the new head reads, in the model card."""
        return "pooled features"

    def export_samples(self, saved: list[Any], schema: InputSchema, limit: int) -> list[Any] | None:
        """Inputs for the export parity check: the run's saved validation inputs, else built-in
        examples; None: synthetic tensors (``finetunekit.use.export``)."""
        return saved[:limit] or None

    def onnx_inputs(self, predictor: Any) -> str:
        """The ONNX model's inputs, described for its README."""
        return "the tensors of a batch made as preprocessing.json describes"


class FileInputs:
    """For a modality whose inputs are files (images, audio clips): the feature cache and resume
    identify the examples by each file's SHA-256, the same per-file hashes the resume fingerprint
    uses. ``digest_tag`` keeps one modality's cache keys apart from another's."""

    digest_tag: ClassVar[bytes] = b"sha256 of each file\0"
    file_noun: ClassVar[str] = "file"  # predict's "<noun> not found: ..."
    file_kind: ClassVar[str] = ""  # "this model takes <kind> files, not text"
    refuse_other_suffixes: ClassVar[bool] = False  # refuse an existing file of another suffix up front

    def check_inputs(self, inputs: list[Any], schema: InputSchema) -> list[Any]:
        """Each input names an existing file of this modality (a text given instead is said)."""
        inputs = singles(inputs)
        extensions = self.file_extensions  # type: ignore[attr-defined]
        for item in inputs:
            ours = Path(item).suffix.lower() in extensions
            if not is_file(item):
                hint = "" if ours else f" (this model takes {self.file_kind} files, not text)"
                raise DataError(f"{self.file_noun} not found: {shown(item)}{hint}")
            if self.refuse_other_suffixes and not ours:
                raise DataError(f"{shown(item)}: not an {self.file_noun} ({', '.join(sorted(extensions))})")
        return inputs

    def examples_digest(self, h: Any, inputs: Sequence[Any], encodings: Any) -> None:
        from ..data.images import file_sha256

        h.update(self.digest_tag)
        for path in inputs:
            h.update(file_sha256(str(path)))

    def content_digest(self, inputs: Sequence[Any]) -> str | None:
        import hashlib

        from ..data.images import file_sha256

        content = hashlib.sha256()
        for path in inputs:
            content.update(file_sha256(str(path)))
        return content.hexdigest()


def singles(inputs: Sequence[Any]) -> list[str]:
    """Inputs of a one-part schema as strings; a pair given to such a model is an error."""
    for item in inputs:
        if isinstance(item, (tuple, list)):
            raise DataError(f"this model takes single texts, not pairs (it was not trained with data.text_columns): {shown(str(item))}")
    return [str(x) for x in inputs]


def is_file(item: str) -> bool:
    try:
        return Path(item).is_file()
    except (OSError, ValueError):  # a long text or one with NUL bytes is no path at all
        return False


def _a(word: str) -> str:
    """``word`` with its indefinite article: "an image", "a text"."""
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def shown(item: str) -> str:
    """An input as it fits in a one-line error message."""
    return item if len(item) <= 200 and item.isprintable() else repr(item[:80]) + "..."


def _provides(backbone: Any, name: str) -> bool:
    """Whether the backbone's class overrides ``name`` of the Backbone contract (or adds it)."""
    from ..backbones.base import Backbone

    attr = getattr(type(backbone), name, None)
    return attr is not None and attr is not getattr(Backbone, name, None)

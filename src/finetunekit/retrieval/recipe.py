"""The retrieval recipe: one typed dataclass per section, checked field by field.

Example (``examples/flickr8k.yaml``)::

    task:  {type: retrieval, embed_dim: 256}
    model: {image_backbone: bundled:efficientnet_lite0, text_backbone: bundled:minilm_l6}
    data:  {train: flickr8k/train.tsv, val: flickr8k/val.tsv, test: flickr8k/test.tsv}
    strategy: {name: lit}
    train: {epochs: 5, batch_size: 128}

Why a recipe of its own: a dual encoder has two backbones, which the single-backbone
``model.backbone`` of the classification recipe cannot name, and none of that recipe's task,
augmentation and strategy fields apply to it. ``finetunekit train`` tells the two apart by
``task.type: retrieval`` (:func:`is_retrieval_recipe`).

Strategies (``strategy.name``):

* ``lit``: the image tower locked (its features read from the feature cache), the text tower and
  both projections trained (the default); ``strategy.unlocked_text_layers: N`` trains only the text
  tower's top N transformer layers (its embeddings and lower layers locked, their token states
  computed once per caption through the feature cache);
* ``full``: both towers trained;
* ``lora_text``: the image tower locked, LoRA adapters on the text tower (merged when saved);
* ``projections``: both towers locked (both read from the cache); only the projections and the
  temperature train.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

from ..core.errors import RecipeError, did_you_mean

# the task type and the modality of these recipes in the registries (finetunekit.tasks.retrieval,
# finetunekit.modalities.image_text): they declare its strategies and its input form
TASK_TYPE = "retrieval"
PAIRS = "image_text"
StrategyName = Literal["lit", "full", "lora_text", "projections"]
STRATEGY_NAMES: tuple[str, ...] = get_args(StrategyName)
# what each strategy declares: (image tower locked, text tower locked, LoRA adapters on the text tower)
DECLARED: dict[str, tuple[bool, bool, bool]] = {
    "lit": (True, False, False), "full": (False, False, False), "lora_text": (True, True, True), "projections": (True, True, False),
}


def _known(section: str, cls: type, raw: dict[str, Any]) -> None:
    names = [f.name for f in fields(cls)]
    for key in raw:
        if key not in names:
            raise RecipeError(f"{section}.{key}: not a field of a retrieval recipe's {section} section{did_you_mean(key, names)}")


def _positive(where: str, value: Any, kind: type = int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or value <= 0:
        raise RecipeError(f"{where}: expected a positive {'number' if kind is float else 'integer'}, got {value!r}")


@dataclass(frozen=True)
class TaskSection:
    type: str = TASK_TYPE
    embed_dim: int = 256  # the shared space's dimension
    init_temperature: float = 0.07  # CLIP's starting temperature; learned (logit scale clamped at 100)
    image_projection_hidden: int = 0  # 0: a linear image projection; N: an MLP (Linear to N, GELU, dropout, Linear)
    image_projection_dropout: float = 0.0  # dropout on the image features entering the projection (training only)

    def __post_init__(self) -> None:
        if not own_recipe(self.type):
            raise RecipeError(f"task.type: a retrieval recipe has type 'retrieval', got {self.type!r}")
        _positive("task.embed_dim", self.embed_dim)
        _positive("task.init_temperature", self.init_temperature, float)
        if isinstance(self.image_projection_hidden, bool) or not isinstance(self.image_projection_hidden, int) or self.image_projection_hidden < 0:
            raise RecipeError(f"task.image_projection_hidden: expected an integer >= 0 (0: linear), got {self.image_projection_hidden!r}")
        if isinstance(self.image_projection_dropout, bool) or not isinstance(self.image_projection_dropout, (int, float)) \
                or not 0 <= self.image_projection_dropout < 1:
            raise RecipeError(f"task.image_projection_dropout: expected a number in [0, 1), got {self.image_projection_dropout!r}")


@dataclass(frozen=True)
class ModelSection:
    image_backbone: str = "bundled:efficientnet_lite0"
    text_backbone: str = "bundled:minilm_l6"
    pretrained: bool = True  # false: both towers from random weights (the from-scratch baseline)
    image_size: int | None = 224  # Flickr8k's photos are 224 px; None: the backbone's own size
    # the share of the resized photo the centre crop keeps (the photo is resized to image_size / image_crop_pct,
    # then cropped to image_size); 1.0: the whole photo, no crop; None: the backbone's own (0.875 for EfficientNet)
    image_crop_pct: float | None = None
    pooling: str = "auto"  # the text tower's pooling (mean for MiniLM)

    def __post_init__(self) -> None:
        for name in ("image_backbone", "text_backbone"):
            if not isinstance(getattr(self, name), str) or ":" not in getattr(self, name):
                raise RecipeError(f"model.{name}: expected 'source:name' (e.g. bundled:minilm_l6), got {getattr(self, name)!r}")
        if not isinstance(self.pretrained, bool):
            raise RecipeError(f"model.pretrained: expected true or false, got {self.pretrained!r}")
        if self.image_size is not None:
            _positive("model.image_size", self.image_size)
        if self.image_crop_pct is not None and (isinstance(self.image_crop_pct, bool) or not isinstance(self.image_crop_pct, (int, float))
                                                or not 0 < self.image_crop_pct <= 1):
            raise RecipeError(f"model.image_crop_pct: expected a number in (0, 1], got {self.image_crop_pct!r}")


@dataclass(frozen=True)
class DataSection:
    train: str | None = None
    val: str | None = None
    test: str | None = None  # evaluated once at the end, its metrics stored as test_*
    image_column: str = "image"
    caption_column: str = "caption"
    image_root: str | None = None  # image paths are relative to it (default: each table's folder)
    max_length: int = 64
    cache_dir: str | None = None  # the feature cache (default: $FINETUNEKIT_CACHE_DIR, else ~/.cache)
    max_train_images: int | None = None  # a seeded subset of the training images (all their captions)

    def __post_init__(self) -> None:
        _positive("data.max_length", self.max_length)
        if self.max_train_images is not None:
            _positive("data.max_train_images", self.max_train_images)


@dataclass(frozen=True)
class StrategySection:
    name: StrategyName = "lit"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: list[str] | None = None  # None: query, key, value and dense layers of the text tower
    # the first head_epochs of train.epochs train the projections alone, on both towers' cached
    # features (seconds each), before the text tower trains (LP-FT, Kumar et al. 2022: the tower
    # then starts from a head that already fits, not from random projections)
    head_epochs: int = 0
    # lit only. None: the whole text tower trains. N: only its top N transformer layers train (with
    # the pooling over their output and the projections); the token embeddings and the layers below
    # stay locked, and the token states they give each caption are computed once (feature cache),
    # so an epoch runs N layers on cached states instead of the whole tower
    unlocked_text_layers: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.head_epochs, bool) or not isinstance(self.head_epochs, int) or self.head_epochs < 0:
            raise RecipeError(f"strategy.head_epochs: expected an integer >= 0, got {self.head_epochs!r}")
        if self.name not in STRATEGY_NAMES:
            raise RecipeError(f"strategy.name: {self.name!r} is not a retrieval strategy{did_you_mean(str(self.name), STRATEGY_NAMES)}; "
                              f"choose one of: {', '.join(STRATEGY_NAMES)}")
        _positive("strategy.lora_rank", self.lora_rank)
        if self.unlocked_text_layers is not None:
            _positive("strategy.unlocked_text_layers", self.unlocked_text_layers)
            if self.name != "lit":
                raise RecipeError(f"strategy.unlocked_text_layers: applies to lit (a trained text tower with the image tower locked), "
                                  f"not {self.name}")

    @property
    def image_locked(self) -> bool:
        return DECLARED[self.name][0]

    @property
    def text_locked(self) -> bool:
        """The text tower's own weights stay as they are (LoRA trains adapters beside them)."""
        return DECLARED[self.name][1]

    @property
    def text_lora(self) -> bool:
        return DECLARED[self.name][2]

    @property
    def caches_text(self) -> bool:
        """Nothing in the text tower trains: its features come from the feature cache."""
        return self.text_locked and not self.text_lora


@dataclass(frozen=True)
class TrainSection:
    epochs: int = 8
    batch_size: int = 128  # in-batch negatives: batch_size - 1 per query
    lr: float = 1e-4  # the towers' rate
    head_lr: float = 1e-3  # the projections' and the temperature's rate
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    max_grad_norm: float | None = 1.0
    seed: int = 0
    checkpoint_every_steps: int | None = None  # also checkpoint inside an epoch (exact resume from there)
    label_smoothing: float = 0.0  # InfoNCE's targets: this share spread over the batch's other rows, both directions

    def __post_init__(self) -> None:
        _positive("train.epochs", self.epochs)
        _positive("train.batch_size", self.batch_size)
        if self.batch_size < 2:
            raise RecipeError("train.batch_size: in-batch negatives need at least 2 examples a batch")
        _positive("train.lr", self.lr, float)
        _positive("train.head_lr", self.head_lr, float)
        if isinstance(self.label_smoothing, bool) or not isinstance(self.label_smoothing, (int, float)) or not 0 <= self.label_smoothing < 1:
            raise RecipeError(f"train.label_smoothing: expected a number in [0, 1), got {self.label_smoothing!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise RecipeError(f"train.warmup_ratio: expected a number in [0, 1), got {self.warmup_ratio!r}")


FLOAT_FIELDS = {"task.init_temperature", "task.image_projection_dropout", "strategy.lora_alpha", "strategy.lora_dropout", "train.lr", "train.head_lr",
                "train.weight_decay", "train.warmup_ratio", "train.label_smoothing", "train.max_grad_norm"}


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``5e-4`` (no dot) as a string: a rate written so is still the number it means."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


SECTIONS = {"task": TaskSection, "model": ModelSection, "data": DataSection, "strategy": StrategySection, "train": TrainSection}


@dataclass(frozen=True)
class RetrievalRecipe:
    task: TaskSection = field(default_factory=TaskSection)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    strategy: StrategySection = field(default_factory=StrategySection)
    train: TrainSection = field(default_factory=TrainSection)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RetrievalRecipe:
        if not isinstance(raw, dict):
            raise RecipeError("a retrieval recipe is a mapping of sections (task, model, data, strategy, train)")
        for key in raw:
            if key not in SECTIONS:
                raise RecipeError(f"{key}: not a section of a retrieval recipe{did_you_mean(key, SECTIONS)}; "
                                  f"sections: {', '.join(SECTIONS)}")
        parts = {}
        for name, section in SECTIONS.items():
            values = raw.get(name) or {}
            if not isinstance(values, dict):
                raise RecipeError(f"{name}: expected a mapping of fields, got {values!r}")
            _known(name, section, values)
            values = {k: _number(v) if f"{name}.{k}" in FLOAT_FIELDS else v for k, v in values.items()}
            try:
                parts[name] = section(**values)
            except TypeError as exc:
                raise RecipeError(f"{name}: {exc}") from None
        recipe = cls(**parts)
        if recipe.strategy.head_epochs >= recipe.train.epochs:
            raise RecipeError(f"strategy.head_epochs: {recipe.strategy.head_epochs} of train.epochs {recipe.train.epochs}; "
                              "leave at least one epoch for the towers")
        if recipe.strategy.head_epochs and not (recipe.strategy.image_locked and not recipe.strategy.caches_text):
            raise RecipeError(f"strategy.head_epochs: applies to lit and lora_text (a locked image tower, a trained text side), "
                              f"not {recipe.strategy.name}")
        return recipe

    @classmethod
    def from_yaml(cls, path: str | Path) -> RetrievalRecipe:
        from ..core.safe_yaml import read_yaml_file

        return cls.from_dict(read_yaml_file(Path(path)) or {})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, **sections: dict[str, Any]) -> RetrievalRecipe:
        raw = self.to_dict()
        for name, values in sections.items():
            raw[name].update(values)
        return RetrievalRecipe.from_dict(raw)

    def with_overrides(self, overrides: list[str]) -> RetrievalRecipe:
        """``section.field=value`` strings (values read as YAML), as ``--set`` gives them."""
        from ..core.safe_yaml import parse_override_value

        raw = self.to_dict()
        for item in overrides:
            key, sep, value = item.partition("=")
            section, dot, name = key.partition(".")
            if not sep or not dot:
                raise RecipeError(f"override {item!r}: expected section.field=value")
            if section not in raw:
                raise RecipeError(f"override {item!r}: {section} is not a section of a retrieval recipe{did_you_mean(section, raw)}")
            raw[section][name] = parse_override_value(value, f"override {item!r}")
        return RetrievalRecipe.from_dict(raw)


def is_retrieval_recipe(path: str | Path) -> bool:
    """Whether the YAML recipe at ``path`` is a retrieval recipe (``task.type: retrieval``)."""
    from ..core.safe_yaml import read_yaml_file

    raw = read_yaml_file(Path(path))
    return isinstance(raw, dict) and isinstance(raw.get("task"), dict) and own_recipe(raw["task"].get("type"))


def own_recipe(task_type: Any) -> bool:
    """Whether recipes of ``task_type`` are read by this package: the task registry's entry trains
    a dual encoder of two towers, with strategies of its own (``Task.own_strategies``)."""
    from ..tasks import TASKS  # (imported on first use: the task registry needs torch)

    return isinstance(task_type, str) and task_type in TASKS and TASKS.get(task_type).own_recipe is not None




def zero_config(path: str | Path) -> tuple[RetrievalRecipe, list[str]] | None:
    """``finetunekit train captions.tsv``: a table with an image column and a caption column (and
    no label column) is an image-text retrieval data set; the default recipe (LiT) with the
    reasons, or None for any other data."""
    from ..core.errors import FinetuneError
    from ..data.readers import _table, is_table

    path = Path(path)
    if not path.is_file() or not is_table(path):
        return None
    try:
        _, columns = _table(path)
    except FinetuneError:  # a broken table: zero-config's own reader names the problem
        return None
    from ..modalities import modality_of

    found = modality_of(PAIRS).pair_columns(columns)
    if found is None:
        return None
    image, caption = found
    recipe = RetrievalRecipe.from_dict({"task": {"type": TASK_TYPE},
                                        "data": {"train": str(path), "image_column": image, "caption_column": caption}})
    reasons = [f"{path}: an image column ({image!r}) and a caption column ({caption!r}): image-text retrieval",
               "strategy lit: the pretrained image tower locked (features cached once), the text tower trained "
               "(LiT beat training both towers, Zhai et al. 2022; docs/retrieval.md)",
               f"towers {recipe.model.image_backbone} + {recipe.model.text_backbone}, {recipe.task.embed_dim}-d shared space, "
               f"batch {recipe.train.batch_size}, {recipe.train.epochs} epochs; a tenth of the images held out for validation"]
    return recipe, reasons

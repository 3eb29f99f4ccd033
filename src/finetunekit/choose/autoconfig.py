"""Zero-config runs: ``finetunekit train DATA_PATH`` with no recipe.

The data path alone decides the recipe, and every choice is returned with its reason:

* **modality and columns**: an image folder (class sub-folders, with train/ and val/ when present)
  or a table of image files is an image task on the bundled EfficientNet-Lite0, a table of texts
  (.csv/.tsv/.jsonl/.parquet, one text column or a sentence pair) a text task on the bundled
  MiniLM-L6; the label, text, pair and image columns are recognised by name;
* **task** (a table's label cells, :func:`infer_task`): lists or ``a|b`` cells are multi-label;
  numbers with a non-integer among them, or more than ``MAX_INTEGER_CLASSES`` distinct integers
  that are not class codes (0..K-1 or 1..K), are regression; anything else single-label
  classification. A folder with ``images/`` and ``masks/`` is semantic segmentation; a COCO
  ``.json``, a Pascal VOC folder (``Annotations/``) or a table of boxes is object detection;
* **strategy and epochs** from the amount of training data per class, by rules measured with
  benchmarks/zero_config.py (docs/automation.md);
* **validation**: a ``dev``/``val``/``validation`` table beside a ``train`` table, else the readers'
  seeded held-out split.

The user's ``--set`` overrides of the fields that steer the inference (``data.label_column``,
``task.type``, ...) are taken into account before anything is guessed::

    inferred = infer_recipe("faces.csv", ["data.label_column=age"])
    print("\\n".join(inferred.reasons))
    train(inferred.recipe, output="runs/faces")
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.audio import AUDIO_EXTENSIONS as AUDIO_SUFFIXES
from ..data.memory import MemoryTable
from ..data.readers import IMAGE_EXTENSIONS, is_table
from ..modalities import detect, modality_of
from ..core.errors import DataError
from ..run.recipe import Recipe

# Epochs: enough for about TARGET_STEPS optimizer steps at the default batch size, within
# [MIN_EPOCHS, MAX_EPOCHS]. A 5-epoch default gives 16 images 5 steps, far too few; the linear
# probe's epochs on cached features cost milliseconds, so small sets can afford many.
TARGET_STEPS = 100
MIN_EPOCHS, MAX_EPOCHS = 5, 50
BATCH_SIZE = 16
# Integer labels: up to this many distinct values are classes; more are a quantity (ages, counts,
# scores) unless they are exactly the codes 0..K-1 or 1..K, the way class indices are written.
MAX_INTEGER_CLASSES = 20
# Text classification: SetFit's logistic-regression head on the pretrained encoder (setfit with
# setfit_iterations 0) while the smallest class has at most this many training examples (measured at
# 8, 16 and 64 per class on SST-2 and TREC-6, five seeds at 8 and 16: benchmarks/fewshot.py,
# docs/automation.md); above it the text default (full fine-tuning, 3 epochs).
FEW_SHOT_UP_TO = 16

# label cells read as texts to write (task seq2seq) rather than classes: at least this many rows,
# this share of them distinct, and this many words per cell on average
SENTENCE_ROWS, SENTENCE_DISTINCT, SENTENCE_WORDS = 8, 0.5, 3.0
LABEL_GUESSES = ("label", "labels", "class", "category", "target", "score", "sentiment", "y")
PAIR_GUESSES = (("sentence1", "sentence2"), ("question", "sentence"), ("premise", "hypothesis"), ("text_a", "text_b"))
# two text columns and no label column: names that say which text is written from which
SOURCE_TARGET_GUESSES = (("source", "target"), ("src", "tgt"), ("input", "output"))
VAL_NAMES = ("dev", "val", "valid", "validation")
# the --set fields that steer the inference itself (the others apply to the recipe afterwards)
HINTS = ("data.label_column", "data.text_column", "data.text_columns", "data.image_column", "data.image_root", "data.val", "task.type")
COVERED = ("zero-config reads class folders, images/ + masks/ folders (segmentation), COCO or Pascal VOC "
           "annotations and box tables (detection), and tables for classification, multi-label, regression and "
           "seq2seq (transcripts, translations)")


def epochs_for(n_train: int, batch_size: int = BATCH_SIZE, target_steps: int = TARGET_STEPS) -> int:
    """Epochs that give about ``target_steps`` optimizer steps, within [MIN_EPOCHS, MAX_EPOCHS]."""
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    return max(MIN_EPOCHS, min(MAX_EPOCHS, math.ceil(target_steps / steps_per_epoch)))


def infer_task(labels: Sequence[Any]) -> tuple[str, str]:
    """(task type, why) from a label column: the recipe's inference (finetunekit.tasks.infer_type),
    and integers with more than MAX_INTEGER_CLASSES distinct values that are not class codes read
    as a quantity (a recipe leaves those to ``task.type``)."""
    from ..tasks import infer_type

    kind, why = infer_type(labels)
    if kind != "classification":
        return kind, why
    try:
        values = sorted({float(str(x)) for x in labels})
    except ValueError:
        return _sentences(labels) or (kind, why)  # names, or texts to write
    if len(values) <= MAX_INTEGER_CLASSES:
        return kind, f"{len(values)} distinct integers, at most {MAX_INTEGER_CLASSES}: classes"
    ints = [int(v) for v in values]
    if ints in (list(range(len(ints))), list(range(1, len(ints) + 1))):
        return kind, f"{len(ints)} distinct integers, exactly {ints[0]}..{ints[-1]}: class codes"
    return "regression", (f"{len(ints)} distinct integers from {ints[0]} to {ints[-1]}, more than {MAX_INTEGER_CLASSES} "
                          "and not class codes 0..K-1 or 1..K: a quantity")


def _sentences(labels: Sequence[Any]) -> tuple[str, str] | None:
    """("seq2seq", why) when the label cells are texts to write rather than class names: most of
    them distinct and several words long on average (translations, transcripts); else None."""
    cells, distinct, words = _cell_counts(labels)
    if len(cells) < SENTENCE_ROWS or distinct / len(cells) < SENTENCE_DISTINCT or words < SENTENCE_WORDS:
        return None
    return "seq2seq", (f"the labels are sentences, {distinct} distinct in {len(cells)} rows, {words:.1f} words on average: "
                       "the model writes them (set task.type to choose)")


def _cell_counts(labels: Sequence[Any]) -> tuple[list[str], int, float]:
    """(the non-blank cells as strings, how many distinct, words per cell on average)."""
    cells = [str(x) for x in labels if str(x).strip()]
    return cells, len(set(cells)), sum(len(c.split()) for c in cells) / max(1, len(cells))


@dataclass
class Inferred:
    recipe: Recipe
    reasons: list[str]  # one line per choice, printed before training


def infer_recipe(path: Any, overrides: Sequence[str] = (), val: Any = None) -> Inferred:
    """A full recipe for the data at ``path``, and why each field was chosen. ``overrides``
    (``section.field=value``) that name a field in HINTS are used instead of guessing it.

    ``path`` may also be an in-memory table (``finetunekit.data.memory.MemoryTable``, held while
    the recipe is inferred and trained): its columns decide as a table file's do, and the recipe
    names it by its token; ``val``: the validation data (a path or a held table's token)."""
    table = path if isinstance(path, MemoryTable) else None
    path = table if table is not None else Path(path)
    if table is None and not path.exists():
        raise DataError(f"data path not found: {path}")
    given = Recipe().with_overrides(list(overrides))  # validated here, applied again by the caller
    keys = {o.partition("=")[0].strip() for o in overrides}
    hints = {k: getattr(getattr(given, k.split(".")[0]), k.split(".")[1]) for k in HINTS if k in keys}
    if val is not None:
        hints["data.val"] = val.token if isinstance(val, MemoryTable) else str(val)
    dense = _dense_layout(path, hints.get("task.type"))
    if dense is not None:
        return _dense_recipe(path, *dense, hints)
    modality = detect(path) if table is None else "text"
    data: dict = {"train": table.token if table is not None else str(path)}
    data.update({k.split(".")[1]: v for k, v in hints.items() if k.startswith("data.")})
    reasons: list[str] = []
    if is_table(path):
        modality, why = _table_columns(path, data)
        reasons.append(why)
        val = data.get("val") or (_sibling_val(path) if table is None else None)
        if val is not None:
            data["val"] = str(val)
    else:
        layout = "train/ and val/ sub-folders" if (path / "train").is_dir() else "class sub-folders"
        reasons.append(f"modality: {modality} (a folder with {layout})")
    backbone = modality_of(modality).zero_config_backbone
    recipe = Recipe.from_dict({"model": {"backbone": backbone}, "data": data})
    examples, kind, why = _training_examples(recipe, modality, hints.get("task.type"))
    source = recipe.data.image_column or recipe.data.text_column
    from ..tasks import TASKS

    if TASKS.get(kind).needs_decoder and source:
        why += f"; written from column {source!r}"
    task = _fit_task(kind, examples, recipe)
    per_class = task.examples_per_class(examples)
    if per_class is not None:
        counts = f"{min(per_class.values())} to {max(per_class.values())} per {'label' if kind == 'multilabel' else 'class'}"
        reasons.append(f"task: {_title(kind)} ({why}), {task.describe()}, {len(examples)} training examples ({counts})")
    else:
        reasons.append(f"task: {_title(kind)} ({why}), {task.describe()}, {len(examples)} training examples")
    reasons.append(f"validation: {data['val']}" if data.get("val") else
                   "validation: " + ("the val/ folder" if not is_table(path) and (path / "val").is_dir()
                                     else f"{recipe.data.val_fraction:.0%} of the training data, held out with the seed"))
    reasons.append(f"backbone: {backbone} (bundled, no download{_writer(modality, kind)})")
    strategy, epochs, why_strategy, why_epochs = _strategy(modality, kind, per_class, len(examples), bool(recipe.data.text_columns))
    shown_fields = ", ".join(f"{k} {v}" for k, v in strategy.items() if k != "name")
    reasons.append(f"strategy: {strategy['name']}{', ' + shown_fields if shown_fields else ''} ({why_strategy})")
    reasons.append(f"epochs: {epochs if epochs is not None else 'the default'} ({why_epochs})")
    train: dict = {"batch_size": BATCH_SIZE}
    if epochs is not None:
        train["epochs"] = epochs
    recipe = recipe.replace(strategy=strategy, train=train, task={"type": kind})
    return Inferred(recipe, reasons)


def _strategy(modality: str, kind: str, per_class: dict[str, int] | None, n_train: int,
              pairs: bool = False) -> tuple[dict[str, Any], int | None, str, str]:
    """(strategy fields, epochs or None for the default, why the strategy, why the epochs)."""
    from ..tasks import TASKS

    smallest = min(per_class.values()) if per_class else n_train
    if TASKS.get(kind).needs_decoder:  # the encoder-decoder's decoder (and new cross-attention) must train: no frozen backbone
        example = modality_of(modality).zero_config_seq2seq_example
        return {"name": "full"}, None, f"every weight trains; {example} (docs/seq2seq.md)", \
            f"the {kind} default, {TASKS.get(kind).train_defaults.get('epochs', 'as the text default')}"
    if modality == "image":
        epochs = epochs_for(n_train)
        why_epochs = (f"about {TARGET_STEPS} optimizer steps at batch {BATCH_SIZE}: {math.ceil(n_train / BATCH_SIZE)} steps "
                      f"per epoch, within {MIN_EPOCHS}..{MAX_EPOCHS}")
        if kind == "classification":
            return {"name": "linear_probe"}, epochs, (
                f"{smallest} images in the smallest class; on ants/bees the linear probe did at least as well as full "
                "fine-tuning at 8 and 32 images per class (benchmarks/zero_config.py) and at all 124 (docs/strategies.md)"
            ), why_epochs
        return {"name": "linear_probe"}, epochs, (
            f"the image default, measured for classification; for {kind} not measured by size (on UTKFace age, full "
            "fine-tuning reached a test MAE of 7.35 (three seeds) against the probe's 10.0: examples/utkface.yaml)"
        ), why_epochs
    own = modality_of(modality)
    if own.zero_config_reason:  # a modality that states its own measured rule (audio)
        return {"name": own.default_strategy}, None, own.zero_config_reason, f"the {modality} default, {own.train_defaults['epochs']}"
    if kind == "classification":
        if smallest <= FEW_SHOT_UP_TO and not pairs:
            return {"name": "setfit", "setfit_iterations": 0}, None, (
                f"{smallest} examples in the smallest class, at most {FEW_SHOT_UP_TO}: SetFit's head alone, without its pair "
                "stage, on the pretrained MiniLM-L6; at 8 and 16 per class on SST-2 and TREC-6 (5 seeds) it beat full "
                "fine-tuning by 4 to 14 points and came within 1.7 points of full SetFit, in seconds instead of minutes "
                "(docs/automation.md)"
            ), "1, SetFit's default (a logistic regression on the embeddings)"
        why = ("sentence pairs: the few-shot rule was measured on single texts only" if pairs else
               f"{smallest} examples in the smallest class, more than {FEW_SHOT_UP_TO}")
        return {"name": "full"}, None, (f"{why}; the text default, chosen on SST-2 with 2,000 rows (docs/strategies.md)"), \
            "the text default, 3, measured on SST-2 with 2,000 rows"
    example = {"regression": "examples/stsb.yaml trains STS-B with it to dev Spearman 0.857",
               "multilabel": "examples/goemotions.yaml trains GoEmotions with it to test macro F1 0.412"}[kind]
    return {"name": "full"}, None, f"the text default; {example} (docs/tasks.md); not measured by size", "3, the text default, as in that example"


def _table_columns(path: Path, data: dict) -> tuple[str, str]:
    """Fill ``data``'s columns for a table; (modality, the reason line)."""
    columns = _columns(path)
    label = data.get("label_column") or next((c for c in LABEL_GUESSES if c in columns), None)
    found = ""  # how a label column no name gave away was found
    if label is None and not data.get("image_column"):
        audio = _media_column(path, columns, [], AUDIO_SUFFIXES)
        others = [c for c in columns if c != audio]
        if audio is not None and len(others) == 1:  # a clip and one more column: what is said, or its class
            label, found = others[0], " (the only column beside the audio)"
            _check_targets(path, others[0], "audio clips")
    if label is None and not data.get("text_column") and not data.get("text_columns"):
        named = next((p for p in SOURCE_TARGET_GUESSES if all(c in columns for c in p)), None)
        if named is not None:  # src/tgt: the names say which text is written
            data["text_column"], label = named
            found = f" (columns {named[0]!r} and {named[1]!r}: the second is written from the first)"
    if label is None:
        # two text columns and no label column: a translation table (Multi30k's de/en/fr) as often
        # as anything, in either direction; say exactly what to set
        pair = (f"; to write one text from another (translation), set the task and which side is written: --set task.type=seq2seq "
                f"--set data.text_column={columns[0]} --set data.label_column={columns[1]} (or the other way round)"
                if len(columns) >= 2 else "")
        raise DataError(f"{path}: no label column found among {', '.join(columns)} (looked for {', '.join(LABEL_GUESSES)}); "
                        f"name it with --set data.label_column=COLUMN{pair}")
    if isinstance(label, str) and label not in columns:
        raise DataError(f"{path}: no label column {label!r} (columns: {', '.join(columns)}); set data.label_column")
    data["label_column"] = label
    audio_column = _media_column(path, columns, label, AUDIO_SUFFIXES) if not data.get("image_column") else None
    if audio_column is not None:
        data["image_column"] = audio_column  # the audio readers take their file column from data.image_column
        return "audio", f"modality: audio (column {audio_column!r} holds audio clips), labels in column {label!r}{found}"
    image_column = data.get("image_column") or _image_column(path, columns, label)
    if image_column is not None:
        data["image_column"] = image_column
        where = ""
        if not data.get("image_root") and isinstance(path, Path):
            root = _image_root(path, image_column)
            if root is not None:
                data["image_root"] = str(root)
                where = f", found in {root.name}/ beside the table"
        return "image", f"modality: image (column {image_column!r} holds image files{where}), labels in column {label!r}"
    if found:
        return "text", f"modality: text, column {data['text_column']!r}, labels in column {label!r}{found}"
    if data.get("text_columns") or data.get("text_column"):
        return "text", f"modality: text (columns as set), labels in column {label!r}"
    pair = next((p for p in PAIR_GUESSES if all(c in columns for c in p)), None)
    if pair:
        data["text_columns"] = list(pair)
        return "text", f"modality: text pairs (columns {pair[0]!r} and {pair[1]!r}), labels in column {label!r}"
    what = f"a {path.suffix} table" if isinstance(path, Path) else "an in-memory table"
    return "text", f"modality: text ({what}), labels in column {label!r}"


def _check_targets(path: Any, column: str, inputs: str) -> None:
    """A column picked because it is the only one left: its cells must read clearly as class names
    (few distinct values) or as texts to write (sentences, :func:`_sentences`); almost every row
    distinct but only a word or two long could be either, so stop and say what to set."""
    from ..data.readers import _table

    cells, distinct, words = _cell_counts([row.get(column, "") for _, row in _table(path)[0]])
    if len(cells) < SENTENCE_ROWS or distinct / len(cells) < SENTENCE_DISTINCT or words >= SENTENCE_WORDS:
        return
    try:
        [float(c) for c in cells]
        return  # numbers: a quantity or class codes, read as a recipe reads them
    except ValueError:
        pass
    raise DataError(f"{path}: column {column!r} beside the {inputs}: {distinct} distinct values in {len(cells)} rows, {words:.1f} words "
                    f"on average, so neither clearly classes nor texts to write; to write them: --set task.type=seq2seq "
                    f"--set data.label_column={column}; to classify: --set task.type=classification --set data.label_column={column}")


def _sibling_val(path: Path) -> Path | None:
    """``dev.tsv`` (or val / valid / validation) beside ``train.tsv`` (``train_x.csv``: ``dev_x.csv``...)."""
    if "train" not in path.stem.lower():
        return None
    at = path.stem.lower().index("train")
    for name in VAL_NAMES:
        candidate = path.with_name(path.stem[:at] + name + path.stem[at + len("train"):] + path.suffix)
        if candidate.is_file():
            return candidate
    return None


def _dense_layout(path: Any, task_type: str | None) -> tuple[str, str] | None:
    """(task type, why) for data in a task type's own format (``Task.find_layout``: segmentation's
    images/ + masks/, detection's COCO, VOC and box tables; in memory, an ``objects`` column or an
    image column beside a mask column), else None."""
    from ..tasks import TASKS

    kinds = [task_type] if task_type is not None else TASKS.names()
    if task_type is not None and task_type not in TASKS:
        return None  # the recipe's own check names an unknown type
    for kind in kinds:
        why = TASKS.get(kind).find_layout(path)
        if why is not None:
            return kind, why
    if task_type is not None and TASKS.get(task_type).title is None:
        raise DataError(f"{path}: task.type {task_type}: {COVERED}; write a recipe (docs/detection-segmentation.md)")
    return None


def _dense_recipe(path: Any, kind: str, why: str, hints: dict) -> Inferred:
    from ..run.defaults import resolve
    from ..tasks import task_reader

    source = path.token if isinstance(path, MemoryTable) else str(path)
    data = {"train": source, **{k.split(".")[1]: v for k, v in hints.items() if k.startswith("data.")}}
    val = data.get("val") or (_sibling_val(path) if isinstance(path, Path) and path.is_file() else None)
    if val is not None:
        data["val"] = str(val)
    backbone = modality_of("image").zero_config_backbone  # detection and segmentation layouts are of images
    recipe = Recipe.from_dict({"model": {"backbone": backbone}, "data": data, "task": {"type": kind}})
    reader = task_reader(kind, image_root=recipe.data.image_root)
    examples = reader(path)  # type: ignore[misc]
    reasons = [f"modality: image ({why})", f"task: {kind}, {len(examples)} images"]
    reasons.append(f"validation: {data['val']}" if data.get("val") else
                   f"validation: {recipe.data.val_fraction:.0%} of the images, held out with the seed")
    reasons.append(f"backbone: {backbone} (bundled, no download)")
    resolved = resolve(recipe, "image")
    reasons.append(f"strategy: {resolved.strategy.name} (the {kind} task's defaults, as a recipe with only task.type: "
                   f"{kind}; not measured by size)")
    reasons.append(f"epochs: {resolved.train.epochs} (the {kind} task's default)")
    return Inferred(recipe, reasons)


def _fit_task(kind: str, examples: Any, recipe: Recipe) -> Any:
    from ..tasks import TASKS, build_task

    return build_task(TASKS.get(kind).check_options({"type": kind}, "task"), examples, recipe)


def _writer(modality: str, kind: str) -> str:
    """For a task that writes text: what writes it, as the backbone's reason says."""
    from ..tasks import TASKS

    if not TASKS.get(kind).needs_decoder:
        return ""
    return "; " + modality_of(modality).zero_config_writer


def _title(kind: str) -> str:
    """The task type's name in zero-config's reasons ("single-label classification")."""
    from ..tasks import TASKS

    return str(TASKS.get(kind).title)


def _check_kind(kind: str) -> None:
    from ..tasks import TASKS

    if kind not in TASKS or TASKS.get(kind).title is None:
        raise DataError(f"task.type {kind}: {COVERED}; this data is a table or class folders, so write a recipe for {kind}")


def _columns(path: Path) -> list[str]:
    from ..data.readers import _table

    return _table(path)[1]


def _image_column(path: Path, columns: list[str], label: str | list[str]) -> str | None:
    """The column whose first row names an image file, if any."""
    return _media_column(path, columns, label, tuple(IMAGE_EXTENSIONS))


def _media_column(path: Any, columns: list[str], label: str | list[str], suffixes: tuple[str, ...]) -> str | None:
    """The column whose first row names a file with one of ``suffixes`` (in-memory images and
    clips are files by then), if any."""
    from ..data.readers import _table

    first = _table(path)[0][0][1]
    return next((c for c in columns if c != label and Path(str(first.get(c, "")).strip()).suffix.lower() in suffixes), None)


def _image_root(path: Path, column: str) -> Path | None:
    """``images/`` beside the table when the first row's file is there and not beside the table."""
    from ..data.readers import _table

    name = str(_table(path)[0][0][1].get(column, "")).strip()
    if (path.parent / name).is_file() or Path(name).is_absolute():
        return None
    candidate = path.parent / "images"
    return candidate if (candidate / name).is_file() else None


def _training_examples(recipe: Recipe, modality: str, kind: str | None) -> tuple[Any, str, str]:
    """(training examples, task type, why): the type decides how a validation split is held out
    (classes stratified, other tasks at random), as in the trainer."""
    from ..data import resolve_splits
    from ..tasks import TASKS

    chosen: dict[str, str] = {}

    def choose(examples: Any) -> None:
        if not chosen:
            chosen["kind"], chosen["why"] = (kind, "set with --set task.type") if kind else infer_task(examples.labels or [])
            _check_kind(chosen["kind"])

    def strata(examples: Any) -> list[Any] | None:
        choose(examples)
        return TASKS.get(chosen["kind"]).strata_for(examples, None)

    d = recipe.data
    train, _ = resolve_splits(
        d.train, d.val, modality_of(modality), d.val_fraction, recipe.train.seed, d.text_column, d.label_column, d.text_columns, d.image_column,
        strata, d.image_root,
    )
    choose(train)  # an explicit validation set: no split, the training labels decide
    return train, chosen["kind"], chosen["why"]

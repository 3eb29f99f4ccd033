"""The model card: README.md in the run directory (Hugging Face model-card layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .artifacts import atomic_write_text
from .metrics import format_metrics


def write_model_card(run_dir: Path, recipe, metrics: dict[str, Any], train_ex, val_ex, trainable: int, total: int) -> None:
    classes = list(metrics.get("per_class", {}))
    modality = train_ex.modality
    example_input = '["path/to/image.jpg"]' if modality == "image" else '["a sentence to classify"]'
    lines = [
        "---",
        "library_name: finetunekit",
        f"base_model: {recipe.model.backbone}",
        "pipeline_tag: " + ("image-classification" if modality == "image" else "text-classification"),
        "tags: [finetunekit, fine-tuned]",
        "---",
        "",
        f"# Fine-tuned {recipe.model.backbone} ({len(classes)} classes)",
        "",
        "## Model",
        f"- Base model: `{recipe.model.backbone}` ({'pretrained' if recipe.model.pretrained else 'randomly initialised'})",
        f"- Strategy: `{recipe.strategy.name}`; trainable parameters {trainable:,} of {total:,}",
        f"- Classes: {', '.join(classes)}",
        "",
        "## Data",
        f"- Training: {train_ex.source} ({len(train_ex)} examples)",
        f"- Evaluation: {val_ex.source} ({len(val_ex)} examples)",
        "",
        "## Training recipe",
        f"- {recipe.train.epochs} epochs, batch {recipe.train.batch_size}, optimizer {recipe.train.optimizer}, "
        f"lr {recipe.train.lr:g} (head {recipe.train.head_lr:g}), schedule {recipe.train.scheduler}, "
        f"weight decay {recipe.train.weight_decay:g}, precision {recipe.train.precision}, seed {recipe.train.seed}",
        "- Full resolved recipe: `recipe.yaml`",
        "",
        "## Results",
        f"Evaluated on {metrics.get('eval_set', val_ex.source)} (best epoch {metrics.get('best_epoch')}):",
        "",
        "```",
        format_metrics(metrics),
        "```",
        "",
        "## Intended use and limitations",
        f"Classifies {modality} inputs into the classes above. It was trained on {len(train_ex)} examples; "
        "expect lower accuracy on inputs unlike the training data, and check the per-class numbers before relying on a class.",
        "",
        "## How to load",
        "```python",
        "import finetunekit",
        f'model = finetunekit.load("{run_dir}")',
        f"model.predict({example_input})",
        "```",
        f"or `finetunekit predict {run_dir} INPUTS...`.",
        "",
    ]
    atomic_write_text(run_dir / "README.md", "\n".join(lines))

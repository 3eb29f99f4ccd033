"""``finetunekit.train``: recipe in, run directory out.

Example::

    from finetunekit import Recipe, train
    recipe = Recipe.from_dict({"model": {"backbone": "bundled:efficientnet_lite0"},
                               "data": {"train": "hymenoptera_data"}})
    result = train(recipe, output="runs/ants")
    result.metrics["accuracy"], result.run_dir
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import artifacts, trackers
from .backbones import create_backbone
from .data import LabelMap, resolve_splits
from .data.pipeline import build_dataset, build_loader
from .defaults import resolve
from .engine import EarlyStopping, LRSchedule, build_optimizer, evaluate_loader, train_one_epoch
from .metrics import classification_metrics, format_metrics
from .model import FineTuneModel
from .recipe import Recipe
from .strategies import STRATEGIES


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]  # final validation metrics (of the restored best epoch)
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    trainable_params: int = 0
    total_params: int = 0
    recipe: Recipe | None = None


def make_accelerator(precision: str, grad_accum_steps: int, log_with: list[str] | None = None, run_dir: Path | None = None):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import ProjectConfiguration

    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[resolve_precision(precision)]
    # Accelerate keeps process-wide singletons; several runs in one process (the demo, tests,
    # hyper-parameter trials) each need their own precision and accumulation settings.
    if not AcceleratorState._shared_state.get("_cpu_launched_distributed") and not _distributed():
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
    # Trackers (train.report_to) write under the run directory: RUN_DIR/tensorboard/<run name>/.
    project = ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard")) if run_dir else None
    return Accelerator(
        mixed_precision=mixed, gradient_accumulation_steps=grad_accum_steps, log_with=log_with, project_config=project
    )


def _distributed() -> bool:
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def resolve_precision(precision: str) -> str:
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def _log(accelerator, quiet: bool, message: str) -> None:
    if accelerator.is_main_process and not quiet:
        print(message, flush=True)


def train(recipe: Recipe, output: str | Path | None = None, overwrite: bool = False, quiet: bool = False) -> RunResult:
    """Fine-tune according to ``recipe``; write the run directory; return its final metrics."""
    started = time.perf_counter()
    run_dir = Path(output) if output is not None else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    log_with = trackers.check_trackers(recipe.train.report_to)
    accelerator = make_accelerator(recipe.train.precision, recipe.train.grad_accum_steps, log_with, run_dir)
    if accelerator.is_main_process:
        artifacts.prepare_run_dir(run_dir, overwrite)
    _seed_everything(recipe.train.seed)

    spec = recipe.model
    backbone = create_backbone(spec.backbone, spec.pretrained, spec.pooling, spec.image_size)
    recipe = resolve(recipe, backbone.modality)
    t = recipe.train
    if not recipe.data.train:
        from .errors import RecipeError

        raise RecipeError("data.train: no training data given (a folder of images or a .csv/.tsv/.jsonl file)")
    train_ex, val_ex = resolve_splits(
        recipe.data.train, recipe.data.val, backbone.modality, recipe.data.val_fraction, t.seed,
        recipe.data.text_column, recipe.data.label_column,
    )
    if recipe.data.max_train_samples is not None and recipe.data.max_train_samples < len(train_ex):
        keep = list(range(len(train_ex)))
        random.Random(t.seed).shuffle(keep)
        train_ex = train_ex.subset(sorted(keep[: recipe.data.max_train_samples]))
    label_map = LabelMap.from_labels(train_ex.labels or [])
    train_ids = label_map.encode(train_ex.labels or [], train_ex.source)
    val_ids = label_map.encode(val_ex.labels or [], val_ex.source)

    model = FineTuneModel(backbone, len(label_map), spec.head_dropout)
    preprocessing = backbone.preprocessing()
    if backbone.modality == "text":
        preprocessing["max_length"] = recipe.data.max_length
    strategy = STRATEGIES.get(recipe.strategy.name)(recipe.strategy)
    groups = strategy.setup(model, t.lr, t.head_lr, pretrained=spec.pretrained)
    optimizer = build_optimizer(t, groups)

    train_ds = build_dataset(train_ex, train_ids, backbone, preprocessing, True, recipe.data.augment, recipe.data.max_length)
    val_ds = build_dataset(val_ex, val_ids, backbone, preprocessing, False, "none", recipe.data.max_length)
    train_loader = build_loader(train_ds, backbone, t.batch_size, True, t.seed, recipe.data.num_workers)
    val_loader = build_loader(val_ds, backbone, t.batch_size * 2, False, t.seed, recipe.data.num_workers)
    train_sampler = train_loader.batch_sampler
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    steps_per_epoch = max(1, len(train_loader) // t.grad_accum_steps)
    schedule = LRSchedule(t.scheduler, _phase_steps(strategy, 0, t.epochs, steps_per_epoch), t.warmup_ratio)

    trainable, total = accelerator.unwrap_model(model).parameter_counts()
    if accelerator.is_main_process:
        artifacts.save_recipe(run_dir, recipe.to_dict())
    if log_with:
        accelerator.init_trackers(run_dir.resolve().name, config=trackers.tracker_config(recipe.to_dict()))
    _log(accelerator, quiet, f"run dir: {run_dir}")
    _log(accelerator, quiet, (
        f"backbone {spec.backbone} ({backbone.modality}), {len(label_map)} classes, "
        f"{len(train_ex)} train / {len(val_ex)} val examples, strategy {recipe.strategy.name}, "
        f"trainable params {trainable:,} / {total:,} ({100 * trainable / total:.1f}%), device {accelerator.device}, "
        f"precision {resolve_precision(t.precision)}"
    ))

    stopper = EarlyStopping(t.metric, t.early_stopping_patience)
    history: list[dict[str, Any]] = []
    step = 0
    for epoch in range(t.epochs):
        message = strategy.on_epoch_start(epoch, accelerator.unwrap_model(model), optimizer)
        if message:
            _log(accelerator, quiet, message)
        if strategy.restarts_schedule(epoch):
            schedule.restart(step, _phase_steps(strategy, epoch, t.epochs, steps_per_epoch))
        train_sampler.set_epoch(epoch)
        _seed_everything(t.seed * 1000 + epoch)  # augmentation and dropout: a function of the epoch
        stats, step = train_one_epoch(
            accelerator, model, train_loader, optimizer, schedule, step,
            label_smoothing=t.label_smoothing, max_grad_norm=t.max_grad_norm,
            description=f"epoch {epoch + 1}/{t.epochs}", quiet=quiet,
        )
        preds = evaluate_loader(accelerator, model, val_loader, len(val_ds), description="validate", quiet=quiet)
        metrics = classification_metrics(preds.probs, preds.labels, label_map.classes, preds.loss)
        record = {
            "epoch": epoch + 1, "step": step, "train_loss": stats.loss,
            "val_loss": metrics.get("loss"), "val_accuracy": metrics["accuracy"], "val_macro_f1": metrics["macro_f1"],
            "lr": {g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)},
            "train_seconds": round(stats.seconds, 3), "train_samples_per_second": round(stats.samples_per_second, 2),
        }
        history.append(record)
        if accelerator.is_main_process:
            artifacts.append_jsonl(run_dir / "metrics.jsonl", record)
            artifacts.append_jsonl_many(run_dir / "steps.jsonl", [{"epoch": epoch + 1, **item} for item in stats.trace])
        trackers.log_epoch(accelerator, record, stats.trace)
        _log(accelerator, quiet, (
            f"epoch {epoch + 1}/{t.epochs}  train_loss {stats.loss:.4f}  val_loss {metrics.get('loss', float('nan')):.4f}  "
            f"val_accuracy {metrics['accuracy']:.4f}  val_macro_f1 {metrics['macro_f1']:.4f}  "
            f"({stats.seconds:.1f}s, {stats.samples_per_second:.1f} samples/s)"
        ))
        value = metrics["loss"] if t.metric == "loss" else metrics[t.metric]
        if stopper.update(value, epoch, accelerator.unwrap_model(model), metrics.get("loss")):
            _log(accelerator, quiet, f"early stopping: no {t.metric} improvement for {stopper.patience} epochs")
            break

    unwrapped = accelerator.unwrap_model(model)
    if t.restore_best and stopper.best_state is not None and stopper.best_epoch != len(history) - 1:
        unwrapped.load_state_dict(stopper.best_state)
        _log(accelerator, quiet, f"restored the best epoch ({stopper.best_epoch + 1}, val {t.metric} {stopper.best:.4f})")
        preds = evaluate_loader(accelerator, model, val_loader, len(val_ds), description="validate", quiet=True)
        metrics = classification_metrics(preds.probs, preds.labels, label_map.classes, preds.loss)
    seconds = time.perf_counter() - started
    final = {**metrics, "best_epoch": stopper.best_epoch + 1, "epochs_run": len(history), "train_seconds": round(seconds, 2),
             "eval_set": val_ex.source}
    if accelerator.is_main_process:
        artifacts.save_model(run_dir, unwrapped, list(label_map.classes), preprocessing)
        artifacts.atomic_write_json(run_dir / "metrics.json", final)
        from .card import write_model_card

        write_model_card(run_dir, recipe, final, train_ex, val_ex, trainable, total)
        artifacts.save_predictions(run_dir, val_ex.inputs, preds.labels, preds.probs, list(label_map.classes))
        from .report import write_report_after_training

        write_report_after_training(run_dir, quiet)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    # The final table prints even when quiet: it is the result, not progress.
    _log(accelerator, False, format_metrics(final, title=f"validation metrics ({val_ex.source}):"))
    _log(accelerator, False, f"saved to {run_dir} in {seconds:.1f}s")
    return RunResult(run_dir, final, history, seconds, trainable, total, recipe)


def _phase_steps(strategy, epoch: int, epochs: int, steps_per_epoch: int) -> int:
    """Optimizer steps until the next schedule restart (or the end of training)."""
    end = next((e for e in range(epoch + 1, epochs) if strategy.restarts_schedule(e)), epochs)
    return (end - epoch) * steps_per_epoch


def _seed_everything(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

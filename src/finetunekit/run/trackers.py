"""Experiment trackers (``train.report_to``) through Accelerate's tracking API.

TensorBoard and MLflow are optional dependencies; this is the one place that checks for them, so a
missing package is a one-line error naming the recipe field before training starts, not a
traceback after the first epoch. ``metrics.jsonl`` and ``steps.jsonl`` are written whatever the
trackers are.

Example::

    finetunekit train recipe.yaml --set "train.report_to=[tensorboard]" --output runs/x
    tensorboard --logdir runs/x/tensorboard

Where each tracker writes:

* ``tensorboard``: ``RUN_DIR/tensorboard/<run name>/`` (event files, plus ``hparams.yml``).
* ``mlflow``: wherever MLflow is configured to write (``MLFLOW_TRACKING_URI``; MLflow's own
  default otherwise), in an experiment named after the run directory (``MLFLOW_EXPERIMENT_NAME``
  overrides it).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from ..core.errors import FinetuneError

# tracker -> (module that must import, pip package to install)
REQUIREMENTS = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow"),
}


def check_trackers(report_to: list[str]) -> list[str] | None:
    """The ``log_with`` list for ``Accelerator``; raises naming the field when a package is missing."""
    for name in report_to:
        module, package = REQUIREMENTS[name]
        if importlib.util.find_spec(module) is None:
            raise FinetuneError(
                f"train.report_to: {name!r} needs the package {package!r} "
                f"(pip install {package}, or pip install 'finetunekit[{name}]')"
            )
    return list(report_to) or None


def tracker_config(recipe_dict: dict[str, Any]) -> dict[str, Any]:
    """The resolved recipe flattened to ``section.field`` scalars: TensorBoard's hparams and
    MLflow's params accept numbers, strings and booleans only."""
    flat: dict[str, Any] = {}
    for section, fields in recipe_dict.items():
        if not isinstance(fields, dict):  # tasks: a list of task sections, or None
            if fields is not None:
                flat[section] = str(fields)
            continue
        for key, value in fields.items():
            if isinstance(value, (bool, int, float, str)):
                flat[f"{section}.{key}"] = value
            else:  # None, lists
                flat[f"{section}.{key}"] = str(value)
    return flat


def log_epoch(accelerator: Any, record: dict[str, Any], trace: list[dict[str, Any]]) -> None:
    """Send one epoch to the trackers: per-step training loss and learning rates, then the epoch's
    validation numbers at its last step. A no-op when no tracker is configured."""
    if not accelerator.trackers:
        return
    for item in trace:
        values = {"train/loss_step": item["loss"]}
        values.update({f"train/{k}_step": v for k, v in item.items() if k.startswith("loss_")})  # loss parts
        values.update({f"lr/{name}": lr for name, lr in item["lr"].items()})
        accelerator.log(values, step=item["step"])
    epoch_values = {
        "train/loss": record.get("train_loss"),
        # the task's validation numbers (val_loss, val_accuracy, val_age/mae...) as val/<name>
        **{f"val/{k.removeprefix('val_')}": v for k, v in record.items() if k.startswith("val_")},
        "epoch": record.get("epoch"),
        **{f"train/{k.removeprefix('train_')}": v for k, v in record.items() if k.startswith("train_loss_")},
    }
    accelerator.log({k: v for k, v in epoch_values.items() if v is not None}, step=record["step"])

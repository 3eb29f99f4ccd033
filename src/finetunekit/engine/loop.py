"""One training epoch and one evaluation pass, written against an ``accelerate.Accelerator`` so
device placement, mixed precision, gradient accumulation and multi-process sync come from it."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import DivergenceError
from .optim import LRSchedule


def _interactive() -> bool:
    # Progress bars only on a terminal: in CI logs and pipes they are thousands of lines of noise;
    # the per-epoch summary line carries the same numbers.
    import sys

    return sys.stderr.isatty()


@dataclass
class EpochStats:
    loss: float
    samples: int
    seconds: float
    steps: int
    # one record per optimizer step: {"step", "loss", "lr": {group name: learning rate used}}
    trace: list[dict[str, Any]] = field(default_factory=list)

    @property
    def samples_per_second(self) -> float:
        return self.samples / max(self.seconds, 1e-9)


@dataclass
class EpochProgress:
    """A partly trained epoch: what a mid-epoch checkpoint saves and a resumed epoch starts from."""

    batches: int = 0
    samples: int = 0
    loss_sum: float = 0.0  # sum of per-example losses, so the epoch's mean is exact after a resume
    seconds: float = 0.0
    trace: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Predictions:
    probs: np.ndarray  # (N, classes), in dataset order
    labels: np.ndarray | None
    loss: float | None


def train_one_epoch(
    accelerator: Any,
    model: torch.nn.Module,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    schedule: LRSchedule,
    step: int,
    *,
    label_smoothing: float = 0.0,
    max_grad_norm: float | None = None,
    description: str = "train",
    quiet: bool = False,
    progress: EpochProgress | None = None,
    before_first_batch: Callable[[], None] | None = None,
    on_step: Callable[[int, EpochProgress], None] | None = None,
) -> tuple[EpochStats, int]:
    """Train for one pass over ``loader``; returns the epoch's stats and the new optimizer step.

    A resumed epoch passes the ``progress`` saved with its checkpoint (the loader then yields only
    the remaining batches) and ``before_first_batch`` to restore the RNG states once the loader has
    started. ``on_step(step, progress)`` runs after every optimizer step (checkpoints).
    A non-finite loss or gradient norm raises :class:`DivergenceError` before the step is applied.
    """
    model.train()
    done = progress or EpochProgress()
    start = time.perf_counter() - done.seconds
    total_loss, seen, batches = done.loss_sum, done.samples, done.batches
    trace: list[dict[str, Any]] = list(done.trace)
    window_loss, window_n = 0.0, 0  # the micro-batches of the current optimizer step
    bar = tqdm(total=len(loader), desc=description, leave=False, dynamic_ncols=True, disable=quiet or not accelerator.is_main_process or not _interactive())
    for batch in loader:
        if before_first_batch is not None:
            before_first_batch()
            before_first_batch = None
        with accelerator.accumulate(model):
            schedule.apply(optimizer, step)
            logits = model(batch)
            loss = F.cross_entropy(logits.float(), batch["labels"], label_smoothing=label_smoothing)
            if not torch.isfinite(loss):
                raise DivergenceError(f"training diverged: the loss became {loss.item()} at optimizer step {step + 1}")
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                _check_gradients(accelerator, model, max_grad_norm, step + 1)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if accelerator.sync_gradients:
                step += 1
        n = batch["labels"].shape[0]
        window_loss += loss.item() * n
        window_n += n
        if accelerator.sync_gradients:
            lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)}
            trace.append({"step": step, "loss": window_loss / max(window_n, 1), "lr": lrs})
            window_loss, window_n = 0.0, 0
        total_loss += loss.item() * n
        seen += n
        batches += 1
        bar.update(1)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", samples_s=f"{seen / (time.perf_counter() - start):.1f}")
        if on_step is not None and accelerator.sync_gradients:
            on_step(step, EpochProgress(batches, seen, total_loss, time.perf_counter() - start, list(trace)))
    bar.close()
    return EpochStats(total_loss / max(seen, 1), seen, time.perf_counter() - start, batches, trace), step


def _check_gradients(accelerator: Any, model: torch.nn.Module, max_grad_norm: float | None, step: int) -> None:
    """Clip (when ``max_grad_norm`` is set) and stop on a non-finite gradient norm.

    Under fp16 the grad scaler owns this: an overflow there is routine and only skips the step.
    """
    if max_grad_norm is not None:
        norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    elif getattr(accelerator, "scaler", None) is None:
        grads = [p.grad.detach() for p in model.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])) if grads else None
    else:
        return
    if getattr(accelerator, "scaler", None) is None and norm is not None and not torch.isfinite(torch.as_tensor(norm)):
        raise DivergenceError(f"training diverged: the gradient norm became {float(norm)} at optimizer step {step}")


@torch.no_grad()
def evaluate_loader(accelerator: Any, model: torch.nn.Module, loader: Any, size: int, description: str = "eval", quiet: bool = False) -> Predictions:
    """Class probabilities for every example, put back in dataset order (batches carry ``index``)."""
    model.eval()
    chunks_probs, chunks_labels, chunks_index = [], [], []
    bar = tqdm(total=len(loader), desc=description, leave=False, dynamic_ncols=True, disable=quiet or not accelerator.is_main_process or not _interactive())
    for batch in loader:
        logits = model(batch).float()
        gathered = accelerator.gather_for_metrics((logits, batch["index"], batch.get("labels", batch["index"])))
        chunks_probs.append(gathered[0].softmax(-1).cpu())
        chunks_index.append(gathered[1].cpu())
        chunks_labels.append(gathered[2].cpu())
        bar.update(1)
    bar.close()
    probs = torch.cat(chunks_probs).numpy()
    index = torch.cat(chunks_index).numpy()
    order = np.argsort(index, kind="stable")
    probs, index = probs[order], index[order]
    if len(index) != size or (len(index) and (index != np.arange(size)).any()):
        raise RuntimeError(f"evaluation returned {len(index)} rows for {size} examples")
    has_labels = getattr(loader.dataset, "labels", None) is not None
    labels = torch.cat(chunks_labels).numpy()[order] if has_labels else None
    loss = None
    if labels is not None and size:
        loss = float(-np.log(np.clip(probs[np.arange(size), labels], 1e-12, None)).mean())
        if not math.isfinite(loss):
            loss = None
    return Predictions(probs, labels, loss)

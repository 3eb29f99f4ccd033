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
from tqdm.auto import tqdm

from ..core.errors import DivergenceError
from .objective import Objective
from .optim import LRSchedule


def _interactive() -> bool:
    # Progress bars only on a terminal: in CI logs and pipes they are thousands of lines of noise;
    # the per-epoch summary line carries the same numbers.
    import sys

    return sys.stderr.isatty()


@dataclass
class EpochStats:
    loss: float  # mean per example of the optimised total (task loss + extra terms)
    samples: int
    seconds: float
    steps: int
    # one record per optimizer step: {"step", "loss", "lr": {group name: learning rate used}}, and
    # "loss_<part>" for each part ("task", "l2sp", "distill") when the objective has extra terms
    trace: list[dict[str, Any]] = field(default_factory=list)
    terms: dict[str, float] = field(default_factory=dict)  # part -> mean per example; empty without extra terms

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
    term_sums: dict[str, float] = field(default_factory=dict)  # the same sums per loss part


@dataclass
class Predictions:
    scores: np.ndarray  # the task's scores (class probabilities, values...), in dataset order
    labels: np.ndarray | None  # the encoded targets
    loss: float | None

    @property
    def probs(self) -> np.ndarray:
        return self.scores


def train_one_epoch(
    accelerator: Any,
    model: torch.nn.Module,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    schedule: LRSchedule,
    step: int,
    *,
    objective: Objective,
    max_grad_norm: float | None = None,
    description: str = "train",
    quiet: bool = False,
    progress: EpochProgress | None = None,
    before_first_batch: Callable[[], None] | None = None,
    on_step: Callable[[int, EpochProgress], None] | None = None,
) -> tuple[EpochStats, int]:
    """Train for one pass over ``loader``; returns the epoch's stats and the new optimizer step.

    ``objective(model, batch)`` gives the loss to minimise and its parts (the task's loss and the
    strategy's terms). A resumed epoch passes the ``progress`` saved with its checkpoint (the loader
    then yields only the remaining batches) and ``before_first_batch`` to restore the RNG states
    once the loader has started. ``on_step(step, progress)`` runs after every optimizer step
    (weight averaging, checkpoints). A non-finite loss or gradient norm raises
    :class:`DivergenceError` before the step is applied.
    """
    model.train()
    tally = _Tally(progress or EpochProgress(), breakdown=len(objective.names) > 1)
    bar = tqdm(total=len(loader), desc=description, leave=False, dynamic_ncols=True, disable=quiet or not accelerator.is_main_process or not _interactive())
    for batch in loader:
        if before_first_batch is not None:
            before_first_batch()
            before_first_batch = None
        with accelerator.accumulate(model):
            schedule.apply(optimizer, step)
            loss, parts = objective(model, batch)
            if not torch.isfinite(loss):
                raise DivergenceError(f"training diverged: the loss became {loss.item()} at optimizer step {step + 1}")
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                _check_gradients(accelerator, model, max_grad_norm, step + 1)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if accelerator.sync_gradients:
                step += 1
        tally.add(batch["labels"].shape[0], loss, parts)
        if accelerator.sync_gradients:
            tally.end_step(step, optimizer)
        bar.update(1)
        bar.set_postfix(loss=f"{tally.loss_sum / tally.seen:.4f}", samples_s=f"{tally.seen / tally.elapsed():.1f}")
        if on_step is not None and accelerator.sync_gradients:
            on_step(step, tally.progress())
    bar.close()
    return tally.stats(), step


class _Tally:
    """Running sums of one epoch: the loss and its parts per example, per optimizer step (the
    micro-batches of one step form a window) and for the whole epoch."""

    def __init__(self, done: EpochProgress, breakdown: bool) -> None:
        self.start = time.perf_counter() - done.seconds
        self.loss_sum, self.seen, self.batches = done.loss_sum, done.samples, done.batches
        self.term_sums = dict(done.term_sums)
        self.trace: list[dict[str, Any]] = list(done.trace)
        self.breakdown = breakdown
        self.window: dict[str, float] = {}
        self.window_n = 0

    def elapsed(self) -> float:
        return max(time.perf_counter() - self.start, 1e-9)

    def add(self, n: int, loss: torch.Tensor, parts: dict[str, torch.Tensor]) -> None:
        values = {"loss": loss.item()}
        if self.breakdown:
            values.update({f"loss_{name}": float(value.item()) for name, value in parts.items()})
        for key, value in values.items():
            self.window[key] = self.window.get(key, 0.0) + value * n
            if key != "loss":
                self.term_sums[key] = self.term_sums.get(key, 0.0) + value * n
        self.window_n += n
        self.loss_sum += values["loss"] * n
        self.seen += n
        self.batches += 1

    def end_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)}
        means = {k: v / max(self.window_n, 1) for k, v in self.window.items()}
        self.trace.append({"step": step, "loss": means.pop("loss"), **means, "lr": lrs})
        self.window, self.window_n = {}, 0

    def progress(self) -> EpochProgress:
        return EpochProgress(self.batches, self.seen, self.loss_sum, self.elapsed(), list(self.trace), dict(self.term_sums))

    def stats(self) -> EpochStats:
        seen = max(self.seen, 1)
        terms = {k.removeprefix("loss_"): v / seen for k, v in self.term_sums.items()}
        return EpochStats(self.loss_sum / seen, self.seen, time.perf_counter() - self.start, self.batches, self.trace, terms)


def _check_gradients(accelerator: Any, model: torch.nn.Module, max_grad_norm: float | None, step: int) -> None:
    """Clip (when ``max_grad_norm`` is set) and stop on a non-finite gradient norm.

    Under fp16 the grad scaler owns this: an overflow there is routine and only skips the step.
    """
    if max_grad_norm is not None:
        norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    elif getattr(accelerator, "scaler", None) is None:
        grads = [p.grad.detach().float() for p in model.parameters() if p.grad is not None]
        norm = _total_norm(grads) if grads else None
    else:
        return
    if getattr(accelerator, "scaler", None) is None and norm is not None and not torch.isfinite(torch.as_tensor(norm)):
        raise DivergenceError(f"training diverged: the gradient norm became {float(norm)} at optimizer step {step}")


def _total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    # One multi-tensor kernel (torch >= 2.6) instead of a norm per parameter: about 100 small ops a
    # step fewer for a BERT-sized model.
    total = getattr(torch.nn.utils, "get_total_norm", None)
    if total is not None:
        return total(tensors)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in tensors]))


@torch.no_grad()
def evaluate_loader(
    accelerator: Any, model: torch.nn.Module, loader: Any, size: int, task: Any, description: str = "eval", quiet: bool = False
) -> Predictions:
    """The task's scores for every example, put back in dataset order (batches carry ``index``),
    and the task's validation loss."""
    model.eval()
    chunks_probs, chunks_labels, chunks_index = [], [], []
    bar = tqdm(total=len(loader), desc=description, leave=False, dynamic_ncols=True, disable=quiet or not accelerator.is_main_process or not _interactive())
    for batch in loader:
        # Scores are per example, so they are computed before the gather: what travels between
        # processes is the (often smaller) scores, and outputs may be a tuple or dict of tensors.
        scores = task.scores(model(batch))
        gathered = accelerator.gather_for_metrics((scores, batch["index"], batch.get("labels", batch["index"])))
        chunks_probs.append(gathered[0].cpu())
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
    loss = task.eval_loss(probs, labels) if labels is not None and size else None
    if loss is not None and not math.isfinite(loss):
        loss = None
    return Predictions(probs, labels, loss)

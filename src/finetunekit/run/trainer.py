"""``finetunekit.train``: recipe in, run directory out.

Example::

    from finetunekit import Recipe, train
    recipe = Recipe.from_dict({"model": {"backbone": "bundled:efficientnet_lite0"},
                               "data": {"train": "hymenoptera_data"}})
    result = train(recipe, output="runs/ants")
    result.metrics["accuracy"], result.run_dir
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import artifacts, trackers
from ..backbones import create_backbone
from .checkpoint import (
    Checkpointer,
    Position,
    ResumePoint,
    TrainingParts,
    check_same_data,
    check_same_recipe,
    data_fingerprint,
    has_checkpoints,
    list_checkpoints,
    truncate_logs,
)
from ..data import Examples
from ..data.memory import held, holding, is_token, memory_splits
from ..data.pipeline import build_loader, progressive_sizes
from ..engine import Callback, EarlyStopping, LRSchedule, build_optimizer, evaluate_loader, train_one_epoch
from ..engine.ema import ModelEMA
from ..engine.loop import EpochProgress, EpochStats
from ..engine.objective import build_objective
from ..engine.optim import format_param_groups, param_group_rows
from ..core.errors import DivergenceError, FinetuneError, RecipeError
from ..core.timing import PhaseTimer
from ..modalities import modality_of
from .model import FineTuneModel
from .plan import Plan, resolve
from .recipe import Recipe
from ..core.runtime import distributed, resolve_precision
from ..strategies import STRATEGIES
from ..strategies.regularizers import without_backbone_decay
from ..tasks import Task


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]  # final validation metrics (of the restored best epoch)
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    trainable_params: int = 0
    total_params: int = 0
    recipe: Recipe | None = None
    # the optimizer's parameter groups as training started (or resumed): name, params, trainable, lr
    param_groups: list[dict[str, Any]] = field(default_factory=list)
    # the trained model in memory (best epoch restored), on this process; in multi-process runs
    # every process holds the same weights
    model: Any = None
    # frozen-backbone features: {"hits": sets read from the cache, "total": sets, "seconds": time
    # to read or compute them}; None when no epoch trained on cached features
    feature_cache: dict[str, Any] | None = None
    # wall seconds per phase of the run (also in RUN_DIR/timings.json), in the order they ran
    timings: dict[str, float] = field(default_factory=dict)


def make_accelerator(
    precision: str, grad_accum_steps: int, log_with: list[str] | None = None, run_dir: Path | None = None, compile: bool = False,
    unused_parameters: bool = False,
):
    """``unused_parameters``: some trainable parameters may get no gradient in a step (a dense
    task's head reads the backbone's stage outputs, so the backbone's last layers before pooling
    stay unused): multi-process runs then tell DistributedDataParallel to look for them, which it
    otherwise refuses on the second step."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[resolve_precision(precision)]
    # Accelerate keeps process-wide singletons; several runs in one process (the demo, tests,
    # hyper-parameter trials) each need their own precision and accumulation settings.
    if not AcceleratorState._shared_state.get("_cpu_launched_distributed") and not distributed():
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
    # Trackers (train.report_to) write under the run directory: RUN_DIR/tensorboard/<run name>/.
    project = ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard")) if run_dir else None
    # cpu=True on a machine without a GPU: Accelerate then reads torchrun's environment as a
    # multi-process CPU run (gloo); without it every process would train alone.
    return Accelerator(
        mixed_precision=mixed, gradient_accumulation_steps=grad_accum_steps, log_with=log_with, project_config=project,
        cpu=not torch.cuda.is_available(), dynamo_plugin=_dynamo_plugin() if compile else None,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)] if unused_parameters else None,
    )


def _dynamo_plugin():
    from accelerate.utils import TorchDynamoPlugin

    return TorchDynamoPlugin(backend="inductor", dynamic=True)


def _log(accelerator, quiet: bool, message: str) -> None:
    if accelerator.is_main_process and not quiet:
        print(message, flush=True)


def train(
    recipe: Recipe | None = None, output: str | Path | None = None, overwrite: bool = False, quiet: bool = False, resume: bool = False,
    callbacks: Sequence[Callback] = (), checkpoints: bool = True, report: bool = True, *, train: Any = None, val: Any = None,
    overrides: Sequence[str] = (), timer: PhaseTimer | None = None,
) -> RunResult:
    """Fine-tune according to ``recipe``; write the run directory; return its final metrics.

    ``train`` / ``val``: the data instead of the recipe's ``data.train`` / ``data.val``: a path, a
    pandas DataFrame, a pyarrow Table or a ``datasets.Dataset`` (a ``DatasetDict`` as ``train``:
    its train and validation splits), read as a table file is (``finetunekit.data.memory``); the
    run's recipe.yaml names in-memory data by content (``memory:pandas:<sha256>``).

    ``recipe=None``: zero-config, as ``finetunekit train DATA``: the recipe is chosen from ``train``
    (its columns, labels and size; ``finetunekit.choose.autoconfig``), the reasons printed and kept
    in the run's autoconfig.txt. ``overrides`` (``section.field=value``, as ``--set``) apply to the
    recipe, given or chosen; those naming a column or ``task.type`` steer the choice.

    ``resume=True`` continues the run in ``output`` from its newest intact checkpoint (the same
    recipe and data are required); with no checkpoint there yet, the run starts from the beginning.
    The run directory is locked while the run lasts: a second process on it is refused.
    ``callbacks`` (:class:`finetunekit.engine.Callback`) see each epoch's metrics after validation.
    ``checkpoints=False`` writes no checkpoint (such a run cannot resume; a hyper-parameter trial
    is run again instead) and ``report=False`` no report.html (``finetunekit report`` writes it
    later): both are per-epoch and per-run costs a search pays many times.
    ``timer``: a :class:`finetunekit.core.timing.PhaseTimer` that already holds the caller's
    phases (the command line's start-up); the run adds its own and writes them all to
    ``RUN_DIR/timings.json`` (``RunResult.timings``).
    """
    from ..core.outputs import check_writable

    run_dir = Path(output) if output is not None else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    if run_dir.exists() and not run_dir.is_dir():
        raise FinetuneError(f"output {run_dir} exists and is not a directory")
    check_writable(run_dir)  # a read-only or impossible place is refused before anything loads
    tables = memory_splits(train, val)
    with holding(*tables):  # the readers find the in-memory tables by their tokens
        recipe, reasons = with_data(recipe, train, val, tables, overrides, quiet)
        result = _train_locked(recipe, run_dir, overwrite, quiet, resume, callbacks, checkpoints, report, timer or PhaseTimer())
        # what the tokens in recipe.yaml stand for (tables given here, or held by the caller: tune's trials)
        described = {k: held(token).describe() for k, token in (("train", recipe.data.train), ("val", recipe.data.val))
                     if is_token(token)}
    main = int(os.environ.get("RANK", "0")) == 0
    if described and main:
        artifacts.atomic_write_text(run_dir / "data_sources.json", json.dumps(described, indent=2) + "\n")
    if reasons and main:
        artifacts.atomic_write_text(run_dir / "autoconfig.txt", "\n".join(reasons) + "\n")  # recipe.yaml holds the result
    return result


def with_data(recipe: Recipe | None, train: Any, val: Any, tables: tuple[Any, Any], overrides: Sequence[str] = (),
              quiet: bool = False) -> tuple[Recipe, list[str]]:
    """(the recipe reading ``train`` / ``val``, the zero-config reasons): given data replaces the
    recipe's ``data.train`` / ``data.val`` (in-memory ``tables``, held by the caller, by their
    tokens); no recipe: one chosen from the data, its reasons printed unless ``quiet``; then the
    ``overrides``. ``finetunekit.train`` and ``finetunekit.tune`` take their data through here."""
    paths = {k: str(v) for k, v in (("train", train), ("val", val)) if isinstance(v, (str, Path))}
    given = {k: t.token for k, t in zip(("train", "val"), tables, strict=True) if t is not None}
    reasons: list[str] = []
    if recipe is None:
        from ..choose.autoconfig import infer_recipe

        source = tables[0] if tables[0] is not None else paths.get("train")
        if source is None:
            raise FinetuneError("no recipe and no training data: give a recipe, or train= (a path, DataFrame, "
                                "pyarrow Table or datasets.Dataset) for a recipe chosen from the data")
        inferred = infer_recipe(source, overrides, val=tables[1] if tables[1] is not None else paths.get("val"))
        recipe, reasons = inferred.recipe, inferred.reasons
        if not quiet:
            print("no recipe: chose from the data\n  " + "\n  ".join(reasons), flush=True)
    elif given or paths:
        recipe = recipe.replace(data={**paths, **given})
    return recipe.with_overrides(list(overrides)) if overrides else recipe, reasons


def _train_locked(
    recipe: Recipe, run_dir: Path, overwrite: bool, quiet: bool, resume: bool, callbacks: Sequence[Callback], checkpoints: bool,
    report: bool, timer: PhaseTimer,
) -> RunResult:
    from ..core.outputs import RunDirLock, WriteError

    try:
        if int(os.environ.get("RANK", "0")) != 0:  # multi-process: the main process holds the lock
            return _train(recipe, run_dir, overwrite, quiet, resume, callbacks, checkpoints, report, timer)
        with RunDirLock(run_dir):
            return _train(recipe, run_dir, overwrite, quiet, resume, callbacks, checkpoints, report, timer)
    except WriteError as exc:  # a full disk, mid-run or while writing the finished run's files
        raise FinetuneError(_after_write_error(run_dir, exc)) from None


def _after_write_error(run_dir: Path, exc: Exception) -> str:
    """What a failed write leaves and how to go on: the checkpoints are never touched by it, so
    ``resume`` continues (or finishes) the run once there is space."""
    last = next(reversed(list_checkpoints(run_dir)), None) if run_dir.is_dir() else None
    if last is None:
        return f"{exc}; no checkpoint had been written yet: start the run again once there is space"
    return f"{exc}; the last checkpoint is intact: {last}; once there is space, finish the run with: finetunekit resume {run_dir}"


def _train(
    recipe: Recipe, run_dir: Path, overwrite: bool, quiet: bool, resume: bool, callbacks: Sequence[Callback] = (),
    checkpoints: bool = True, report: bool = True, timer: PhaseTimer | None = None,
) -> RunResult:
    started = time.perf_counter()
    timer = timer or PhaseTimer()
    resuming = _check_output(run_dir, overwrite, resume)  # before minutes are spent loading anything
    found = None
    if "auto" in (recipe.train.lr, recipe.train.head_lr):  # a range test picks them, then the run starts afresh
        with timer.phase("learning-rate range test"):
            recipe, found = find_lr(recipe, quiet=quiet)
    log_with = trackers.check_trackers(recipe.train.report_to)
    _seed_everything(recipe.train.seed)
    backbone, plan = _plan(recipe, quiet, timer)  # the resolved recipe, data and task; nothing reads the raw recipe after this
    t = plan.recipe.train
    with timer.phase("tokenise or decode, build model and loaders"):
        accelerator = make_accelerator(t.precision, t.grad_accum_steps, log_with, run_dir, t.compile, plan.task.dense)
        run = _build(plan, backbone, accelerator, run_dir)
    run.started, run.callbacks, run.report, run.timer = started, list(callbacks), report, timer
    run.checkpointer.write = checkpoints
    recipe, t = run.recipe, run.recipe.train
    start = _resume(run) if resuming else None
    if start is None and accelerator.is_main_process:
        artifacts.prepare_run_dir(run_dir, overwrite or resume)
        artifacts.save_recipe(run_dir, recipe.to_dict())
        if found is not None:
            save_lr_find(found, run_dir)
    if log_with:
        accelerator.init_trackers(run_dir.resolve().name, config=trackers.tracker_config(recipe.to_dict()))
    trainable, total = accelerator.unwrap_model(run.model).parameter_counts()
    _log(accelerator, quiet, f"run dir: {run_dir}")
    _log(accelerator, quiet, (
        f"backbone {recipe.model.backbone} ({run.modality}), {run.task.type}: {run.task.describe()}, "
        f"{len(run.train_ex)} train / {len(run.val_ex)} val examples, strategy {recipe.strategy.name}, "
        f"trainable params {trainable:,} / {total:,} ({100 * trainable / total:.1f}%), device {accelerator.device}"
        f"{f' x {accelerator.num_processes} processes' if accelerator.num_processes > 1 else ''}, "
        f"precision {resolve_precision(t.precision)}"
    ))
    if run.cached is not None:
        c, frozen = run.cached, sum(run.strategy.backbone_frozen_at(e) for e in range(t.epochs))
        views = f"{c.views} augmented views" if c.views else "un-augmented inputs"
        _log(accelerator, quiet, (
            f"feature cache: {frozen} of {t.epochs} epochs train the head on cached backbone features "
            f"({views}; {c.hits} of {c.total} sets read from the cache, {c.seconds:.1f}s)"
        ))
    groups = param_group_rows(run.optimizer)  # after a resume: the resumed phase's groups
    _log(accelerator, quiet, format_param_groups(groups))
    try:
        _fit(run, start, quiet)
    except DivergenceError as exc:
        raise DivergenceError(_divergence_advice(run, exc)) from None
    result = _finish(run, started, trainable, total, quiet)
    result.param_groups = groups
    result.timings = timer.as_dict()
    if run.cached is not None:
        result.feature_cache = {"hits": run.cached.hits, "total": run.cached.total, "seconds": round(run.cached.seconds, 3)}
    return result


@dataclass
class _Run:
    """The parts of one training run, built from the recipe alone (so a resumed run rebuilds the
    same ones before loading the checkpoint into them) and the progress made so far."""

    recipe: Recipe
    run_dir: Path
    accelerator: Any
    modality: str
    train_ex: Examples
    val_ex: Examples
    task: Task
    preprocessing: dict[str, Any]
    model: Any
    optimizer: Any
    strategy: Any
    schedule: LRSchedule
    stopper: EarlyStopping
    train_loader: Any
    val_loader: Any
    train_sampler: Any
    val_size: int
    batches_per_epoch: int
    steps_per_epoch: int
    checkpointer: Checkpointer
    history: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0
    stopped: bool = False  # early stopping ended the run
    seconds_before: float = 0.0  # training time of the processes before a resume
    preds: Any = None  # the last validation predictions and metrics
    metrics: dict[str, Any] | None = None
    started: float = field(default_factory=time.perf_counter)
    cached: Any = None  # features.CachedLoaders while some epochs train on a frozen backbone
    wrapped_trainable: frozenset[str] = frozenset()  # what trained when the model was wrapped (DDP)
    objective: Any = None  # engine.objective.Objective: task loss + the strategy's extra terms
    ema: ModelEMA | None = None  # train.ema_decay: averaged weights, evaluated and saved
    fingerprint: dict[str, Any] | None = None  # of the data's examples and bytes, checked on resume
    callbacks: list[Callback] = field(default_factory=list)
    report: bool = True  # write report.html at the end
    timer: PhaseTimer = field(default_factory=PhaseTimer)  # seconds per phase, RUN_DIR/timings.json
    best_preds: Any = None  # the best epoch's validation predictions: restoring its weights needs no new pass


def _check_output(run_dir: Path, overwrite: bool, resume: bool) -> bool:
    """Whether there is a checkpoint to resume; raises when ``run_dir`` cannot be used."""
    if not resume:
        artifacts.check_run_dir(run_dir, overwrite)
        return False
    if overwrite:
        raise FinetuneError("--resume and --overwrite exclude each other: resume keeps the run directory, overwrite replaces it")
    if has_checkpoints(run_dir):
        return True
    if (run_dir / "metrics.json").is_file():
        raise FinetuneError(f"run directory {run_dir} has finished training (metrics.json is written); nothing to resume")
    if run_dir.exists() and not (run_dir.is_dir() and (not any(run_dir.iterdir()) or artifacts.is_run_dir(run_dir))):
        artifacts.check_run_dir(run_dir, overwrite=True)  # raises: a file, or a folder finetunekit did not write
    return False  # killed before its first checkpoint, or never started: start from the beginning


def _plan(recipe: Recipe, quiet: bool = False, timer: PhaseTimer | None = None) -> tuple[Any, Plan]:
    """The backbone (its modality decides how the data is read) and the run's :class:`Plan`."""
    spec = recipe.model
    timer = timer or PhaseTimer()
    with timer.phase("load backbone"):
        backbone = create_backbone(spec.backbone, spec.pretrained, spec.pooling, spec.image_size)
    modality_of(backbone.modality).check_backbone(backbone)
    main = int(os.environ.get("RANK", "0")) == 0  # what was inferred is said once, by the main process
    say = (lambda message: print(message, flush=True)) if main and not quiet else None
    with timer.phase("read and check data"):
        plan = resolve(recipe, backbone.modality, say)
    return plan.task.backbone_for(backbone), plan


def _build(plan: Plan, backbone: Any, accelerator: Any, run_dir: Path) -> _Run:
    recipe, train_ex, val_ex, task = plan.recipe, plan.train, plan.val, plan.task
    train_ids, val_ids = task.encode(train_ex), task.encode(val_ex)
    t, d, spec = recipe.train, recipe.data, recipe.model
    kind = modality_of(plan.modality)

    model = FineTuneModel(backbone, task.head_for(backbone, spec.head_dropout))
    if spec.head_init:  # the head starts as an image-text run's zero-shot classifier of the class names
        from ..retrieval.head_init import zero_shot_head

        _log(accelerator, False, zero_shot_head(spec.head_init, model, task, backbone, STRATEGIES.get(recipe.strategy.name)))
    preprocessing = kind.run_preprocessing(backbone, d)  # what predict needs: text length and pair columns, image limits
    strategy = STRATEGIES.get(recipe.strategy.name)(recipe.strategy)
    groups = strategy.setup(model, t.lr, t.head_lr, pretrained=spec.pretrained)
    if recipe.strategy.l2sp_alpha:
        groups = without_backbone_decay(groups)  # L2-SP pulls the backbone to w0, not to 0
    optimizer = build_optimizer(t, groups)

    train_ds = kind.build_dataset(train_ex, train_ids, backbone, preprocessing, True, d.augment, d.max_length, task, d.crop_scale)
    val_ds = kind.build_dataset(val_ex, val_ids, backbone, preprocessing, False, "none", d.max_length, task)
    sizes = progressive_sizes(int(preprocessing["input_size"]), t.epochs, t.progressive_resize) if kind.resizes else None
    train_loader = build_loader(train_ds, backbone, t.batch_size, True, t.seed, d.num_workers, d.sampler, sizes)
    val_loader = build_loader(val_ds, backbone, t.batch_size * 2, False, t.seed, d.num_workers)
    train_sampler = train_loader.batch_sampler
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    batches_per_epoch = len(train_loader)
    steps_per_epoch = max(1, batches_per_epoch // t.grad_accum_steps)
    schedule = LRSchedule(t.scheduler, _phase_steps(strategy, 0, t.epochs, steps_per_epoch), t.warmup_ratio)
    stopper = EarlyStopping(plan.metric, t.early_stopping_patience, plan.higher_is_better)
    # The regularisers' reference (w0, the frozen copy) and the average start from the set-up,
    # pretrained model: built here, before _resume loads a checkpoint into the model.
    unwrapped = accelerator.unwrap_model(model)
    terms = strategy.loss_terms(unwrapped, accelerator, t.epochs)
    objective = build_objective(recipe, task, terms)
    ema = ModelEMA(unwrapped, t.ema_decay) if t.ema_decay is not None else None
    parts = TrainingParts(accelerator, model, optimizer, schedule, strategy, stopper, ema)
    run = _Run(
        recipe, run_dir, accelerator, backbone.modality, train_ex, val_ex, task, preprocessing, model, optimizer,
        strategy, schedule, stopper, train_loader, val_loader, train_sampler, len(val_ds), batches_per_epoch,
        steps_per_epoch, Checkpointer(run_dir, t.keep_checkpoints, parts), objective=objective, ema=ema,
    )
    run.wrapped_trainable = _trainable_names(accelerator.unwrap_model(model))
    if _use_feature_cache(run):
        from .features import build_cached_loaders

        run.cached = build_cached_loaders(run, train_ds, val_ds, train_ids, val_ids)
    return run


def _use_feature_cache(run: _Run) -> bool:
    """Cache features when some epoch trains on a frozen backbone and nothing needs the raw inputs."""
    t, d = run.recipe.train, run.recipe.data
    if not d.feature_cache or not any(run.strategy.backbone_frozen_at(e) for e in range(t.epochs)):
        return False
    if run.task.dense:  # the head reads feature maps and the targets move with the pixels: train on the images
        return False
    # mixing inputs (mixup/cutmix) needs the images themselves in every epoch
    return not (t.mixup_alpha or t.cutmix_alpha)


def _epoch_loaders(run: _Run, epoch: int) -> tuple[Any, Any]:
    """(train, val) loaders of ``epoch``: cached features while the backbone is frozen."""
    if run.cached is not None and run.strategy.backbone_frozen_at(epoch):
        run.cached.set_epoch(epoch)
        return run.cached.train_loader, run.cached.val_loader
    return run.train_loader, run.val_loader


def _resume(run: _Run) -> ResumePoint:
    """Load the newest intact checkpoint into ``run``; refuse when the recipe or data changed."""
    ckpt = run.checkpointer
    ckpt.clean_leftovers()
    check_same_recipe(run.run_dir, run.recipe.to_dict())
    loaded = ckpt.latest()
    if loaded is None:
        raise FinetuneError(
            f"no intact checkpoint left in {ckpt.root} (the corrupt ones were set aside as *.corrupt); "
            "pass --overwrite to start the run again"
        )
    check_same_recipe(run.run_dir, run.recipe.to_dict(), loaded)  # recipe.yaml edited since the run started
    run.fingerprint = check_same_data(loaded, run.task.identity(), run.train_ex, run.val_ex)
    state = ckpt.restore(loaded)
    point = ResumePoint.from_state(loaded, state)
    run.history, run.step, run.stopped = point.history, point.position.step, point.stopped
    run.seconds_before = float(state.get("seconds", 0.0))
    if run.accelerator.is_main_process:
        truncate_logs(run.run_dir, run.history)
    p = point.position
    where = f"epoch {p.epoch + 1}, batch {p.batch} of {run.batches_per_epoch}" if p.batch else f"the start of epoch {p.epoch + 1}"
    _log(run.accelerator, False, f"resuming from checkpoint {loaded.path} (optimizer step {p.step}, {where})")
    return point


def _fit(run: _Run, start: ResumePoint | None, quiet: bool) -> None:
    t = run.recipe.train
    first = start.position.epoch if start else 0
    model = run.accelerator.unwrap_model(run.model)
    for epoch in range(first, t.epochs):
        if run.stopped:
            break
        part_way = start is not None and epoch == first and start.progress is not None
        if not part_way:  # an epoch resumed part-way ran these hooks before its checkpoint
            message = run.strategy.on_epoch_start(epoch, model, run.optimizer)
            if message:
                _log(run.accelerator, quiet, message)
            if run.strategy.restarts_schedule(epoch):
                run.schedule.restart(run.step, _phase_steps(run.strategy, epoch, t.epochs, run.steps_per_epoch))
        _rewrap_if_trainable_changed(run)
        # The prepared loader forwards the epoch to the batch sampler (accelerate re-applies its own
        # count on every iteration, so it must hear the epoch too).
        train_loader, val_loader = _epoch_loaders(run, epoch)
        train_loader.set_epoch(epoch)
        run.train_sampler.set_epoch(epoch)
        if part_way:
            run.train_sampler.resume_at(epoch, start.position.batch)
        _seed_everything(t.seed * 1000 + epoch)  # dropout and other global-RNG draws: a function of the epoch

        def on_step(step: int, progress: EpochProgress, epoch: int = epoch) -> None:
            if run.ema is not None:
                run.ema.update(model)
            every = t.checkpoint_every_steps
            if every and step % every == 0 and progress.batches < run.batches_per_epoch:
                run.checkpointer.save(Position(epoch, progress.batches, step), _checkpoint_extra(run, progress))

        trained = run.timer.start()
        own = run.strategy.fit_epoch(model, train_loader, run.accelerator, epoch=epoch, seed=t.seed * 1000 + epoch,
                                     batch_size=t.batch_size, quiet=quiet, task=run.task)
        if own is not None:  # a strategy with its own procedure (prototype, setfit)
            stats = EpochStats(own["loss"], own["samples"], own["seconds"], own["steps"], own.get("trace", []))
            run.step += own["steps"]
        else:
            stats, run.step = train_one_epoch(
                run.accelerator, run.model, train_loader, run.optimizer, run.schedule, run.step,
                objective=run.objective, max_grad_norm=t.max_grad_norm,
                description=f"epoch {epoch + 1}/{t.epochs}", quiet=quiet,
                progress=start.progress if part_way else None,
                before_first_batch=start.restore_rng if part_way else None, on_step=on_step,
            )
        run.timer.stop(f"epoch {epoch + 1} train", trained)
        _end_epoch(run, epoch, stats, quiet, val_loader)


def _rewrap_if_trainable_changed(run: _Run) -> None:
    """Multi-process runs: wrap the model again when a strategy (un)froze parameters.

    DistributedDataParallel registers only the parameters that need gradients when it wraps the
    model; a group unfrozen later would train on each process's own gradients, never averaged, and
    the processes would drift apart silently.
    """
    from torch.nn.parallel import DistributedDataParallel

    if not isinstance(run.model, DistributedDataParallel):
        return
    module = run.model.module
    trainable = _trainable_names(module)
    if trainable == run.wrapped_trainable:
        return
    run.model = run.accelerator.prepare_model(module)
    run.wrapped_trainable = trainable


def _trainable_names(module: torch.nn.Module) -> frozenset[str]:
    return frozenset(n for n, p in module.named_parameters() if p.requires_grad)


def _end_epoch(run: _Run, epoch: int, stats: Any, quiet: bool, val_loader: Any) -> None:
    """Validate, log, update early stopping, and write the epoch's checkpoint."""
    t, accelerator, run_dir = run.recipe.train, run.accelerator, run.run_dir
    validated = run.timer.start()
    with _averaged(run):
        run.preds = evaluate_loader(accelerator, run.model, val_loader, run.val_size, run.task, description="validate", quiet=quiet)
    metrics = run.metrics = _judge(run)
    run.timer.stop(f"epoch {epoch + 1} validate", validated)
    record = {
        "epoch": epoch + 1, "step": run.step, "train_loss": stats.loss,
        **{f"train_loss_{name}": value for name, value in stats.terms.items()},  # parts of train_loss
        **run.task.epoch_record(metrics),
        "lr": {g.get("name", str(i)): g["lr"] for i, g in enumerate(run.optimizer.param_groups)},
        "train_seconds": round(stats.seconds, 3), "train_samples_per_second": round(stats.samples_per_second, 2),
    }
    run.history.append(record)
    if accelerator.is_main_process:
        artifacts.append_jsonl(run_dir / "metrics.jsonl", record)
        artifacts.append_jsonl_many(run_dir / "steps.jsonl", [{"epoch": epoch + 1, **item} for item in stats.trace])
    trackers.log_epoch(accelerator, record, stats.trace)
    _log(accelerator, quiet, (
        f"epoch {epoch + 1}/{t.epochs}  train_loss {stats.loss:.4f}  val_loss {metrics.get('loss', float('nan')):.4f}  "
        f"{run.task.format_epoch(metrics)}  "
        f"({stats.seconds:.1f}s, {stats.samples_per_second:.1f} samples/s)"
    ))
    value = metrics["loss"] if t.metric == "loss" else metrics[t.metric]
    with _averaged(run):  # the best epoch's weights are those evaluated
        run.stopped = run.stopper.update(value, epoch, accelerator.unwrap_model(run.model), metrics.get("loss"))
    if run.stopped:
        _log(accelerator, quiet, f"early stopping: no {t.metric} improvement for {run.stopper.patience} epochs")
    improved = run.stopper.best_epoch == epoch
    if improved:
        run.best_preds = run.preds
    with run.timer.phase(f"epoch {epoch + 1} checkpoint"):
        run.checkpointer.save(Position(epoch + 1, 0, run.step), _checkpoint_extra(run, None), is_best=improved)
    for callback in run.callbacks:  # after the checkpoint: a callback that ends the run loses no epoch
        callback.on_epoch_end(epoch, record)


@contextmanager
def _averaged(run: _Run) -> Iterator[None]:
    """With train.ema_decay, the averaged weights in the model inside the block."""
    if run.ema is None:
        yield
        return
    with run.ema.applied(run.accelerator.unwrap_model(run.model)):
        yield


def _checkpoint_extra(run: _Run, progress: EpochProgress | None) -> dict[str, Any]:
    """The trainer's part of a checkpoint's state.json."""
    if run.fingerprint is None:  # once per run: image bytes are read for it
        run.fingerprint = data_fingerprint(run.train_ex, run.val_ex)
    return {
        "classes": run.task.identity(),
        "recipe": run.recipe.to_dict(),  # what recipe.yaml must still say on resume
        "data": run.fingerprint,
        "history": run.history,
        "epoch_progress": None if progress is None else asdict(progress),
        "stopped": run.stopped,
        "seconds": run.seconds_before + (time.perf_counter() - run.started),
    }


def _divergence_advice(run: _Run, exc: DivergenceError) -> str:
    t = run.recipe.train
    saved = run.checkpointer.last_saved or next(reversed(list_checkpoints(run.run_dir)), None)
    kept = f"the last good checkpoint is kept: {saved}" if saved else "no checkpoint had been written yet"
    fixes = [f"a lower train.lr (now {t.lr:g}) and train.head_lr (now {t.head_lr:g})"]
    if resolve_precision(t.precision) != "fp32":
        fixes.append("train.precision=fp32")
    if t.max_grad_norm is None:
        fixes.append("train.max_grad_norm=1.0")
    return f"{exc}; {kept}; try {' or '.join(fixes)}"


def _finish(run: _Run, started: float, trainable: int, total: int, quiet: bool) -> RunResult:
    """Restore the best epoch, write the model and the reports, drop the checkpoints."""
    t, accelerator, run_dir, task, timer = run.recipe.train, run.accelerator, run.run_dir, run.task, run.timer
    unwrapped = accelerator.unwrap_model(run.model)
    stopper = run.stopper
    evaluated = timer.start()
    if run.ema is not None:  # training is over: from here on the model is the average
        run.ema.copy_to(unwrapped)
    restore = t.restore_best and stopper.best_state is not None and stopper.best_epoch != len(run.history) - 1
    if restore:
        unwrapped.load_state_dict(stopper.best_state)
        _log(accelerator, quiet, f"restored the best epoch ({stopper.best_epoch + 1}, val {t.metric} {stopper.best:.4f})")
    # The strategy's last word on the weights (an adapter strategy merges them): the final metrics and
    # predictions are then those of exactly the model that is saved.
    finalized = run.strategy.finalize(unwrapped)
    if restore and not finalized and run.best_preds is not None:
        # the restored weights are those the best epoch validated: its predictions are theirs
        run.preds = run.best_preds
        run.metrics = _judge(run)
    elif restore or finalized or run.preds is None:  # run.preds is None when a resumed run had no epoch left to train
        # the loader of the epoch whose weights are now in the model (cached features stay valid
        # for weights restored from an epoch with a frozen backbone)
        epoch = stopper.best_epoch if restore else len(run.history) - 1
        val_loader = _epoch_loaders(run, epoch)[1]
        run.preds = evaluate_loader(accelerator, run.model, val_loader, run.val_size, task, description="validate", quiet=True)
        run.metrics = _judge(run)
    seconds = time.perf_counter() - started
    preds = run.preds
    final = {**run.metrics, **task.confidence_intervals(preds.scores, preds.labels),
             "best_epoch": stopper.best_epoch + 1, "epochs_run": len(run.history),
             "train_seconds": round(run.seconds_before + seconds, 2), "eval_set": run.val_ex.source}
    timer.stop("final evaluation and intervals", evaluated)
    if accelerator.is_main_process:
        _write_final(run, unwrapped, final, trainable, total)
        from ..use.explain import error_explanations
        from ..report import write_report_after_training

        if run.report:
            with timer.phase("report"):
                # explanations that cost many passes per example (a text's integrated gradients)
                # wait for `finetunekit report RUN_DIR`: the run is usable without them
                explain = error_explanations if modality_of(run.modality).explain_after_training else None
                write_report_after_training(run_dir, quiet, explain=explain)
        if not t.keep_checkpoints_when_done:
            with timer.phase("remove checkpoints"):
                run.checkpointer.remove_all()  # last: a crash before this point resumes into these steps
    accelerator.wait_for_everyone()
    accelerator.end_training()
    seconds = time.perf_counter() - started
    if accelerator.is_main_process:
        _write_timings(run_dir, timer, seconds)
    # The final table prints even when quiet: it is the result, not progress.
    _log(accelerator, False, task.format_metrics(final, title=f"validation metrics ({run.val_ex.source}):"))
    _log(accelerator, False, f"saved to {run_dir} in {seconds:.1f}s")
    return RunResult(run_dir, final, run.history, seconds, trainable, total, run.recipe, model=unwrapped)


def _write_timings(run_dir: Path, timer: PhaseTimer, seconds: float) -> None:
    """RUN_DIR/timings.json, written after everything it times: the run is finished and usable
    before it, so a failed write warns instead of failing the run."""
    import warnings

    from ..core.outputs import WriteError

    try:
        artifacts.atomic_write_json(run_dir / "timings.json", {
            "seconds": timer.as_dict(), "total_seconds": round(_wall(timer, seconds), 3), "cpu_seconds": timer.cpu_dict(),
        })
    except WriteError as exc:
        warnings.warn(f"{exc}; the run is complete without its timings.json", stacklevel=2)


def _wall(timer: PhaseTimer, seconds: float) -> float:
    """The whole the phases are shares of: the run's seconds plus the phases timed before it
    started (the command line's start-up)."""
    return seconds + timer.seconds.get(STARTUP, 0.0)


STARTUP = "start-up (interpreter and imports)"


def _write_final(run: _Run, model: Any, final: dict[str, Any], trainable: int, total: int) -> None:
    """The finished run's files, metrics.json last (it marks the run finished). A disk that fills
    up on the way is reported like a failed checkpoint (see train); the checkpoints stay, so
    ``finetunekit resume`` writes these files again once there is space."""
    from .card import write_model_card

    run_dir, task, timer = run.run_dir, run.task, run.timer
    saving = "save model, predictions, metrics"
    with timer.phase(saving):
        artifacts.save_model(run_dir, model, task, run.preprocessing, resolve_precision(run.recipe.train.precision))
    with timer.phase("model card"):
        write_model_card(run_dir, run.recipe, final, run.train_ex, run.val_ex, trainable, total, task)
    with timer.phase(saving):
        _write_predictions(run, final)


def _write_predictions(run: _Run, final: dict[str, Any]) -> None:
    run_dir, task, preds = run.run_dir, run.task, run.preds
    scores, labels = preds.scores, preds.labels
    if task.dense:  # the saved predictions are in each image's own pixels, as `predict` gives them
        from ..data.images import image_size

        sizes = [image_size(p, run.recipe.data.max_image_pixels) for p in run.val_ex.inputs]
        scores, labels = task.to_input_frame(scores, sizes), None if labels is None else task.to_input_frame(labels, sizes)
    artifacts.save_predictions(run_dir, run.val_ex.inputs, task.prediction_records(scores, labels))
    for name, data in task.run_files(run.val_ex.inputs, preds.scores, preds.labels).items():
        artifacts.atomic_write_bytes(run_dir / name, data)
    artifacts.atomic_write_json(run_dir / "metrics.json", final)


def _judge(run: _Run) -> dict[str, Any]:
    """The task's metrics on the last validation predictions (after it fits its decision rules,
    such as multi-label thresholds, on them)."""
    preds = run.preds
    run.task.calibrate(preds.scores, preds.labels)
    return run.task.metrics(preds.scores, preds.labels, preds.loss)


def _phase_steps(strategy, epoch: int, epochs: int, steps_per_epoch: int) -> int:
    """Optimizer steps until the next schedule restart (or the end of training)."""
    end = next((e for e in range(epoch + 1, epochs) if strategy.restarts_schedule(e)), epochs)
    return (end - epoch) * steps_per_epoch


def _seed_everything(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -- learning-rate range test (train.lr: auto, finetunekit lr-find) ----------------------------------


@dataclass
class LRFound:
    result: Any  # engine.lr_find.LRFindResult
    rates: dict[str, float]  # the fields set: "lr" and/or "head_lr"
    swept: str  # the field the sweep's x axis is


def find_lr(
    recipe: Recipe, steps: int = 200, start: float = 1e-7, end: float = 10.0, rule: str = "min/10", quiet: bool = False,
) -> tuple[Recipe, LRFound]:
    """Run a learning-rate range test on a throw-away copy of the run; returns the recipe with the
    rates it found in place of ``auto`` (with none, ``lr`` and ``head_lr`` are swept together)."""
    import tempfile

    from ..engine.lr_find import lr_sweep

    t = recipe.train
    auto = {f for f in ("lr", "head_lr") if getattr(t, f) == "auto"} or {"lr", "head_lr"}
    if t.lr == "auto" and t.head_lr is None:
        auto.add("head_lr")  # as with any lr set by hand, it applies to the head too
    # fields left to auto take the defaults for the sweep (the ratio between the two rates when
    # both are swept); rates set by hand keep theirs
    base = recipe.replace(train={f: None for f in auto if getattr(t, f) == "auto"})
    accelerator = make_accelerator(t.precision, t.grad_accum_steps)
    _seed_everything(t.seed)
    with tempfile.TemporaryDirectory(prefix="finetunekit-lr-find-") as scratch:
        backbone, plan = _plan(base, quiet=True)
        run = _build(plan, backbone, accelerator, Path(scratch))  # checkpoints are never written here
        model = accelerator.unwrap_model(run.model)
        epoch = 0
        if auto == {"lr"}:  # the backbone's rate alone: sweep the first epoch in which the backbone trains
            epoch = next((e for e in range(run.recipe.train.epochs) if not run.strategy.backbone_frozen_at(e)), -1)
            if epoch < 0:
                raise RecipeError(f"train.lr: auto, but strategy {run.recipe.strategy.name} never trains the backbone; use train.head_lr: auto")
            run.strategy.on_epoch_start(epoch, model, run.optimizer)
        # the x axis: the backbone's rate when it trains in the swept epoch, else the head's
        swept = "lr" if "lr" in auto and not run.strategy.backbone_frozen_at(epoch) else "head_lr"
        rt = run.recipe.train
        rates = {"lr": float(rt.lr), "head_lr": float(rt.head_lr)}
        scale = {
            g["name"]: g["base_lr"] / rates[swept] for g in run.optimizer.param_groups
            if "name" in g and ("head_lr" if g["name"] == "head" else "lr") in auto
        }
        result = lr_sweep(
            accelerator, run.model, _epoch_loaders(run, epoch)[0], run.optimizer, run.objective, scale,
            start=start, end=end, steps=steps, rule=rule, max_grad_norm=rt.max_grad_norm,
        )
    del run, model
    ratio = {f: rates[f] / rates[swept] for f in auto}
    found = {f: min(10.0, float(f"{result.suggestion * ratio[f]:.3g}")) for f in sorted(auto)}  # 10: the recipe's bound
    _log(accelerator, False, (
        "lr-find: " + ", ".join(f"train.{f} = {v:g}" for f, v in found.items())
        + f" (rule {rule}: {'a tenth of the rate at the smoothed loss minimum' if rule == 'min/10' else 'steepest descent of the smoothed loss'}; "
        f"swept train.{swept} {start:g} to {result.lrs[-1]:g} over {len(result.lrs)} steps"
        + (", stopped when the loss diverged)" if result.stopped_early else ")")
    ))
    return recipe.replace(train=found), LRFound(result, found, swept)


def save_lr_find(found: LRFound, folder: Path) -> tuple[Path, Path]:
    """``lr_find.png`` (the smoothed loss against the rate, the suggestions marked) and ``lr_find.json``."""
    from ..report.plots import lr_find_plot

    folder.mkdir(parents=True, exist_ok=True)
    png, data = folder / "lr_find.png", folder / "lr_find.json"
    artifacts.atomic_write_bytes(png, lr_find_plot(found.result, found.swept).png)
    artifacts.atomic_write_json(data, {**found.result.to_dict(), "rates": found.rates, "swept": found.swept})
    return png, data

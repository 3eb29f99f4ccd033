"""``finetunekit tune``: hyper-parameter search over recipe fields, on Optuna.

Each trial is an ordinary run (``finetunekit.train``) written to ``STUDY_DIR/trials/NNNN``; it is
scored on its best epoch (the one the trainer restores), reports every epoch to the pruner, and is
stopped early when the pruner says so. The best trial's run directory is copied to
``STUDY_DIR/best``; the other trials keep their metrics, logs and recipe, and their weights only
with ``keep_weights``. The study lives in ``STUDY_DIR/study.db`` (SQLite) or in a shared database
(``storage="postgresql://..."``), so several processes or machines can work on one study and an
interrupted study resumes with the same command.

Example::

    from finetunekit import Recipe
    from finetunekit.choose.tune import tune
    result = tune(Recipe.from_yaml("examples/hymenoptera.yaml"), "studies/ants", trials=20)
    result.best_score, result.best_dir

Optuna (and a database driver for shared storage) is optional: ``pip install 'finetunekit[tune]'``.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import io
import json
import math
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..run import artifacts
from ..engine.callbacks import Callback
from ..core.errors import DivergenceError, FinetuneError, RecipeError
from ..run.recipe import Recipe

STUDY_NAME = "finetunekit"
STUDY_FILE = "study.json"  # marks a study directory; names the storage (never its password)
MAX_RETRY = 2  # a trial whose worker died is run again at most this many times

def metric_value(record: dict[str, Any], metric: str) -> float:
    """The validation metric that ranks a run's epochs (and so the trials), from one epoch's
    metrics.jsonl record."""
    return float(record[f"val_{metric}"])


def _optuna() -> Any:
    """The one place Optuna is imported (optional dependency)."""
    try:
        import optuna
    except ImportError:
        raise FinetuneError("finetunekit tune needs Optuna: pip install 'finetunekit[tune]'") from None
    import warnings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # heartbeats and stale-trial retries are marked experimental; they are what shared studies rely on
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


# -- the search space -------------------------------------------------------------------------------


def search_space(recipe: Recipe, modality: str) -> dict[str, dict[str, list[Any]]]:
    """``search.space`` of the recipe, or the modality's default space (``Modality.search_space``)."""
    from ..modalities import modality_of

    return dict(recipe.search.space) if recipe.search.space else dict(modality_of(modality).search_space)


def suggest(trial: Any, space: dict[str, dict[str, list[Any]]]) -> dict[str, Any]:
    """One value per recipe field, drawn by the trial's sampler."""
    params: dict[str, Any] = {}
    for name, dist in space.items():
        ((kind, values),) = dist.items()
        if kind == "choice":
            params[name] = trial.suggest_categorical(name, values)
        elif kind.endswith("int"):
            params[name] = trial.suggest_int(name, int(float(values[0])), int(float(values[1])), log=kind == "log_int")
        else:
            params[name] = trial.suggest_float(name, float(values[0]), float(values[1]), log=kind == "log_uniform")
    return params


def apply_params(recipe: Recipe, params: dict[str, Any]) -> Recipe:
    """A copy of ``recipe`` with ``section.field`` values set (validated like any recipe)."""
    sections: dict[str, dict[str, Any]] = {}
    for name, value in params.items():
        section, _, field_name = name.partition(".")
        sections.setdefault(section, {})[field_name] = value
    return recipe.replace(**sections)


def _check_space(recipe: Recipe, space: dict[str, dict[str, list[Any]]]) -> None:
    """Every end of every range, and every choice, must make a valid recipe: fail before trial 0."""
    for name, dist in space.items():
        ((kind, values),) = dist.items()
        for value in values:
            value = value if kind == "choice" else (int(float(value)) if kind.endswith("int") else float(value))
            try:
                apply_params(recipe, {name: value})
            except RecipeError as exc:
                raise RecipeError(f"search.space.{name}: {value!r} does not make a valid recipe: {exc}") from None


def _default_point(resolved_recipe: Recipe, space: dict[str, dict[str, list[Any]]]) -> dict[str, Any] | None:
    """The resolved recipe's own values (finetunekit.run.plan), when they lie in the space: trial 0
    runs them, so the search never ends below the defaults it started from."""
    resolved = resolved_recipe.to_dict()
    point: dict[str, Any] = {}
    for name, dist in space.items():
        section, _, field_name = name.partition(".")
        value = resolved[section][field_name]
        ((kind, values),) = dist.items()
        if kind == "choice":
            if value not in values:
                return None
        elif value is None or not float(values[0]) <= float(value) <= float(values[1]):
            return None
        point[name] = value
    return point


# -- one trial: a training run -----------------------------------------------------------------------


class _Pruning(Callback):
    """Reports each epoch's validation metric to the trial; raises TrialPruned when the pruner says so."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial, self.metric = trial, metric

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        value = metric_value(record, self.metric)
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise _optuna().TrialPruned(f"epoch {epoch + 1}: val {self.metric} {value:.4f}")


def best_epoch_score(history: list[dict[str, Any]], metric: str, higher_is_better: bool) -> tuple[float, int]:
    """(score, 1-based epoch) of a run's best epoch by ``metric``."""
    values = [metric_value(record, metric) for record in history]
    best = max(values) if higher_is_better else min(values)
    return best, values.index(best) + 1


def _worker_tag(trial_number: int) -> str:
    # host:pid:trial: a retried trial inherits its predecessor's user attributes until it sets its
    # own; the trial number tells them apart
    return f"{socket.gethostname()}:{os.getpid()}:{trial_number}"


@dataclass
class _TrainObjective:
    """One trial: a training run of the recipe with the trial's values, scored on its best epoch
    by ``metric`` (the task's direction: ``higher_is_better``); ``shown``: the final metrics a
    trial keeps for the study page."""

    recipe: Recipe
    space: dict[str, dict[str, list[Any]]]
    study_dir: Path
    metric: str
    higher_is_better: bool
    shown: tuple[str, ...] = ("loss",)

    def __call__(self, trial: Any) -> float:
        trial.set_user_attr("worker", _worker_tag(trial.number))
        params = suggest(trial, self.space)
        run_dir = self.study_dir / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir.relative_to(self.study_dir)))
        recipe = apply_params(self.recipe, params)
        from ..run.trainer import train

        started = time.perf_counter()
        log = io.StringIO()
        try:
            # a trial's own output (its metrics table) goes to its train.log, not the console
            with contextlib.redirect_stdout(log):
                # a killed trial is run again from the start, so it needs no checkpoints; the
                # report is written for the best trial alone
                result = train(recipe, output=run_dir, overwrite=True, quiet=True, callbacks=[_Pruning(trial, self.metric)],
                               checkpoints=False, report=False)
        except _optuna().TrialPruned:
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
            raise
        except DivergenceError as exc:
            trial.set_user_attr("error", str(exc))
            raise
        finally:
            if run_dir.is_dir():
                artifacts.atomic_write_text(run_dir / "train.log", log.getvalue())
            _release_memory()
        score, epoch = best_epoch_score(result.history, self.metric, self.higher_is_better)
        trial.set_user_attr("best_epoch", epoch)
        trial.set_user_attr("epochs_run", len(result.history))
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
        trial.set_user_attr("feature_cache", result.feature_cache)
        trial.set_user_attr("metrics", {k: result.metrics[k] for k in self.shown if k in result.metrics})
        return score


def _release_memory() -> None:
    """Between trials: nothing of the last model stays reachable, and the GPU cache is returned."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


# -- keeping the best run ------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock between the processes that share a study directory."""
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


WEIGHT_FILES = ("model.safetensors", "adapter")


@dataclass
class _KeepBest:
    """Study callback after each trial: STUDY_DIR/best holds a copy of the best trial's run
    directory; the weights of every other finished trial are removed unless ``keep_weights``."""

    study_dir: Path
    keep_weights: bool

    def __call__(self, study: Any, trial: Any) -> None:
        optuna = _optuna()
        with _locked(self.study_dir / ".best.lock"):
            complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if not complete:
                return
            best = study.best_trial
            best_dir = self.study_dir / "best"
            marker = best_dir / "trial.json"
            current = json.loads(marker.read_text())["number"] if marker.is_file() else None
            source = self.study_dir / best.user_attrs.get("run_dir", "")
            if current != best.number and (source / "metrics.json").is_file():
                # copied next to it, then swapped in: best/ is always one whole run directory
                tmp = self.study_dir / f".best-{os.getpid()}"
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("checkpoints"))
                artifacts.atomic_write_json(tmp / "trial.json", {"number": best.number, "value": best.value, "params": best.params})
                old = self.study_dir / f".best-old-{os.getpid()}"
                if best_dir.exists():
                    best_dir.rename(old)
                tmp.rename(best_dir)
                shutil.rmtree(old, ignore_errors=True)
            if not self.keep_weights:
                for t in complete:
                    if t.number != best.number and "run_dir" in t.user_attrs:
                        _remove_weights(self.study_dir / t.user_attrs["run_dir"])
            if trial.state != optuna.trial.TrialState.COMPLETE and "run_dir" in trial.user_attrs:
                _remove_weights(self.study_dir / trial.user_attrs["run_dir"])


def _remove_weights(run_dir: Path) -> None:
    for name in WEIGHT_FILES:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()


# -- the study: storage, workers, resuming ------------------------------------------------------------


def open_storage(storage: str | None, study_dir: Path, heartbeat: int = 10) -> Any:
    """Optuna RDB storage with heartbeats: a trial whose worker stops beating for ``3 * heartbeat``
    seconds is marked failed and queued again (same parameters), at most MAX_RETRY times."""
    optuna = _optuna()
    url = storage or f"sqlite:///{(study_dir / 'study.db').resolve()}"
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                heartbeat_stale_trial_callback=retry,
            )
        except ImportError as exc:
            raise FinetuneError(f"--storage {_redact(url)}: the database driver is missing ({exc}); for PostgreSQL: pip install 'psycopg[binary]'") from None
        except Exception as exc:  # sqlalchemy's errors: a bad URL, a refused connection, bad credentials
            if attempt < 2 and ("already exists" in str(exc) or "duplicate key" in str(exc)):
                # workers starting together on a new database race to create its tables: try again
                time.sleep(1.0)
                continue
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FinetuneError(f"--storage {_redact(url)}: cannot open the study storage: {first}") from None
    raise AssertionError("unreachable")


def _redact(url: str) -> str:
    """The URL without its password."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        credentials, _, host = rest.rpartition("@")
        user, has_password, _ = credentials.partition(":")
        return f"{scheme}://{user}{':***' if has_password else ''}@{host}"
    return url


def _fail_dead_local_trials(study: Any) -> None:
    """Trials left RUNNING by a killed process of this machine fail at once (and are queued again),
    without waiting for their heartbeat to go stale; other machines' trials go by heartbeat."""
    optuna = _optuna()
    host = socket.gethostname()
    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        tag = str(trial.user_attrs.get("worker", "")).split(":")
        if len(tag) != 3 or tag[0] != host or tag[2] != str(trial.number) or _alive(int(tag[1])):
            continue
        try:
            if storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL):
                optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, storage.get_trial(trial._trial_id))
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another process got there first


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _counts(study: Any) -> dict[str, int]:
    """Trials by state; a failed trial that was queued again is ``retried``, not ``failed``."""
    optuna = _optuna()
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials if "failed_trial" in t.system_attrs}
    counts = {"complete": 0, "pruned": 0, "running": 0, "waiting": 0, "failed": 0, "retried": 0}
    state = optuna.trial.TrialState
    for t in trials:
        if t.state == state.FAIL:
            counts["retried" if t.number in retried else "failed"] += 1
        else:
            counts[{state.COMPLETE: "complete", state.PRUNED: "pruned", state.RUNNING: "running", state.WAITING: "waiting"}[t.state]] += 1
    return counts


def run_workers(
    study: Any, objective: Callable[[Any], float], trials: int, timeout: float | None = None,
    callbacks: list[Callable[[Any, Any], None]] | None = None, poll: float = 1.0,
    on_trial: Callable[[Any], None] | None = None,
) -> None:
    """Run trials in this process until the study has ``trials`` finished ones (complete, pruned,
    or failed for a reason of their own). Other processes may work on the same study at once;
    when the remaining trials are all running elsewhere this process waits for them, failing and
    taking over those whose worker died (heartbeat), so the study ends complete."""
    optuna = _optuna()
    deadline = None if timeout is None else time.monotonic() + timeout
    reported: set[int] = set()
    while True:
        optuna.storages.fail_stale_trials(study)
        _fail_dead_local_trials(study)
        c = _counts(study)
        finished = c["complete"] + c["pruned"] + c["failed"]
        if finished >= trials or (deadline is not None and time.monotonic() >= deadline):
            return
        if finished + c["running"] >= trials and not c["waiting"]:
            time.sleep(poll)  # the rest run elsewhere; wait in case their worker dies
            continue
        study.optimize(objective, n_trials=1, callbacks=callbacks or [], catch=(DivergenceError,), gc_after_trial=True)
        if on_trial is not None:
            mine = f"{socket.gethostname()}:{os.getpid()}:"
            for t in study.get_trials(deepcopy=False):
                if str(t.user_attrs.get("worker", "")).startswith(mine) and t.state.is_finished() and t.number not in reported:
                    reported.add(t.number)
                    on_trial(t)


def create_study(storage: Any, direction: str, search: Any, study_name: str = STUDY_NAME) -> Any:
    """A new study, or the one already in ``storage`` under ``study_name``."""
    optuna = _optuna()
    pruner = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=search.prune_startup_trials, n_warmup_steps=search.prune_warmup_epochs),
        "asha": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, search.prune_warmup_epochs)),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=max(1, search.prune_warmup_epochs)),
        "none": lambda: optuna.pruners.NopPruner(),
    }[search.pruner]()
    # constant_liar: parallel workers do not all sample the point the running trials already cover
    sampler = optuna.samplers.TPESampler(seed=search.sampler_seed, constant_liar=True)
    return optuna.create_study(
        storage=storage, study_name=study_name, direction=direction, sampler=sampler, pruner=pruner, load_if_exists=True
    )


# -- the command -------------------------------------------------------------------------------------


@dataclass
class StudyResult:
    study_dir: Path
    best_dir: Path | None
    best_score: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    counts: dict[str, int]
    seconds: float
    metric: str
    trials_run_here: int = 0


def _check_study_dir(study_dir: Path) -> None:
    if study_dir.exists() and not study_dir.is_dir():
        raise FinetuneError(f"--output {study_dir}: is a file, not a study directory")
    if study_dir.is_dir() and any(study_dir.iterdir()) and not (study_dir / STUDY_FILE).is_file():
        raise FinetuneError(f"--output {study_dir}: is not empty and holds no {STUDY_FILE}; choose a new or empty folder")


def _check_same_study(study: Any, recipe: Recipe, space: dict[str, Any], study_dir: Path) -> None:
    """The study's recipe and space are set when it is created; resuming with others is refused."""
    spec = json.loads(json.dumps({"recipe": recipe.to_dict(), "space": space}, default=str))
    stored = study.user_attrs.get("spec")
    if stored is None:
        study.set_user_attr("spec", spec)
    elif stored != spec:
        changed = sorted(
            f"{section}.{k}" for section in ("model", "data", "strategy", "train", "search")
            for k in set(stored["recipe"][section]) | set(spec["recipe"][section])
            if stored["recipe"][section].get(k) != spec["recipe"][section].get(k)
        ) or ["the search space"]
        raise FinetuneError(
            f"{study_dir}: the study was started with another recipe (differs in {', '.join(changed)}); "
            "use the same recipe to resume it, or a new --output"
        )


def tune(
    recipe: Recipe | None = None, output: str | Path | None = None, trials: int = 20, timeout: float | None = None,
    storage: str | None = None, study_name: str = STUDY_NAME, keep_weights: bool = False, heartbeat: int = 10,
    quiet: bool = False, *, train: Any = None, val: Any = None, overrides: Sequence[str] = (),
) -> StudyResult:
    """Search ``recipe.search.space`` (or the modality's default) with ``trials`` trials; resume the
    study already in ``output`` (default ``studies/<date-time>``; or in ``storage``) when there is one.

    ``train`` / ``val``, ``recipe=None`` and ``overrides`` as for ``finetunekit.train``: the data
    may be paths, DataFrames, pyarrow Tables or ``datasets`` objects (every trial reads the same
    rows), and with no recipe the one zero-config chooses from the data is the study's base::

        finetunekit.tune(None, train=train_df, val=val_df, output="studies/reviews", trials=10)
    """
    from ..data.memory import holding, memory_splits
    from ..run.trainer import with_data

    output = output if output is not None else Path("studies") / time.strftime("%Y%m%d-%H%M%S")
    tables = memory_splits(train, val)
    with holding(*tables):  # every trial's run reads the in-memory tables by their tokens
        recipe, _ = with_data(recipe, train, val, tables, overrides, quiet)
        return _tune(recipe, output, trials, timeout, storage, study_name, keep_weights, heartbeat, quiet)


def _tune(
    recipe: Recipe, output: str | Path, trials: int, timeout: float | None, storage: str | None, study_name: str,
    keep_weights: bool, heartbeat: int, quiet: bool,
) -> StudyResult:
    if trials < 1:
        raise FinetuneError(f"--trials: must be at least 1, got {trials}")
    if heartbeat < 1:
        raise FinetuneError(f"--heartbeat: must be at least 1 second, got {heartbeat}")
    started = time.perf_counter()
    study_dir = Path(output)
    _check_study_dir(study_dir)
    _optuna()  # a one-line error before anything is written when Optuna is missing
    plan = _plan(recipe)  # data and task checked, metric and direction known, before anything is written
    # trials rank by the recipe's train.metric, else the task's primary metric, in the task's direction;
    # each trial resolves its own recipe (a searched strategy takes that strategy's defaults)
    recipe = recipe.replace(train={"metric": plan.metric})
    space = search_space(recipe, plan.modality)
    _check_space(recipe, space)
    study_dir.mkdir(parents=True, exist_ok=True)
    artifacts.atomic_write_json(study_dir / STUDY_FILE, {"storage": _redact(storage) if storage else "sqlite:study.db", "study_name": study_name})
    store = open_storage(storage, study_dir, heartbeat)
    direction = plan.direction
    study = create_study(store, direction, recipe.search, study_name)
    with _locked(study_dir / ".best.lock"):  # one process of many seeds the default point
        _check_same_study(study, recipe, space, study_dir)
        if not study.user_attrs.get("seeded"):
            point = _default_point(plan.recipe, space)
            if point is not None:
                study.enqueue_trial(point, skip_if_exists=True)
            study.set_user_attr("seeded", True)
    done_before = sum(_counts(study)[k] for k in ("complete", "pruned", "failed"))
    say = (lambda message: None) if quiet else (lambda message: print(message, flush=True))
    say(f"study {study_dir} ({_redact(storage) if storage else 'sqlite: study.db'}): {trials} trials, "
        f"{done_before} finished before; {direction} val {recipe.train.metric}")
    say("space: " + ", ".join(f"{k} {next(iter(v))} {next(iter(v.values()))}" for k, v in space.items()))
    ran = [0]

    def on_trial(t: Any) -> None:
        ran[0] += 1
        say(_trial_line(study, t, recipe.train.metric))

    shown = tuple(dict.fromkeys((plan.metric, *plan.task.epoch_metrics, "loss")))
    objective = _TrainObjective(recipe, space, study_dir, plan.metric, plan.higher_is_better, shown)
    run_workers(study, objective, trials, timeout, [_KeepBest(study_dir, keep_weights)], on_trial=on_trial)
    return _finish(study, study_dir, recipe, time.perf_counter() - started, ran[0], say)


def _plan(recipe: Recipe) -> Any:
    """The recipe resolved on its data (finetunekit.run.plan) without pretrained weights: the backbone
    is only asked its modality, and each trial loads its own."""
    from ..backbones import create_backbone
    from ..run.plan import resolve

    spec = recipe.model
    return resolve(recipe, create_backbone(spec.backbone, False, spec.pooling, spec.image_size).modality)


def _trial_line(study: Any, t: Any, metric: str) -> str:
    params = "  ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())
    seconds = t.user_attrs.get("seconds")
    took = f" in {seconds:.1f}s" if seconds is not None else ""
    if t.state.name == "COMPLETE":
        what = f"val {metric} {t.value:.4f} (epoch {t.user_attrs.get('best_epoch')})"
    elif t.state.name == "PRUNED":
        last = max(t.intermediate_values) if t.intermediate_values else -1
        what = f"pruned after epoch {last + 1}"
    else:
        what = f"{t.state.name.lower()}: {t.user_attrs.get('error', '')}".rstrip(": ")
    try:
        best = f" | best: trial {study.best_trial.number} {study.best_value:.4f}"
    except ValueError:
        best = ""
    return f"trial {t.number}: {what}{took}  {params}{best}"


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def study_rows(study: Any) -> list[Any]:
    """The study's trials as plain rows for the page."""
    from ..report.study import TrialRow

    counts_as = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}
    retried = {t.system_attrs.get("failed_trial") for t in study.get_trials(deepcopy=False) if "failed_trial" in t.system_attrs}
    rows = []
    for t in study.get_trials(deepcopy=False):
        state = counts_as.get(t.state.name, t.state.name.lower())
        note = "worker died; run again" if t.number in retried else str(t.user_attrs.get("error", ""))
        rows.append(TrialRow(
            t.number, state, t.value if state == "complete" else None, dict(t.params), dict(t.intermediate_values),
            t.user_attrs.get("best_epoch"), t.user_attrs.get("seconds"), t.user_attrs.get("run_dir"), note,
        ))
    return rows


def write_study_page(study: Any, study_dir: Path, recipe: Recipe) -> Path:
    """STUDY_DIR/study.html from the study as it stands."""
    from ..report.study import write_study_report

    optuna = _optuna()
    try:
        best = study.best_trial
    except ValueError:
        best = None
    importances = None
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) >= 2 and len({t.value for t in complete}) > 1:
        try:
            importances = dict(optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)))
        except (RuntimeError, ValueError):  # e.g. a single distinct value per parameter
            importances = None
    best_yaml = None
    if best is not None:
        best_recipe = apply_params(recipe, best.params)
        best_yaml = best_recipe.replace(search={"space": None}).to_yaml()
    space = study.user_attrs.get("spec", {}).get("space", {})
    log_params = {k for k, v in space.items() if next(iter(v)) in ("log_uniform", "log_int")}
    return write_study_report(study_dir, study_rows(study), study.direction.name.lower(), recipe.train.metric, importances, best_yaml, log_params)


def _finish(study: Any, study_dir: Path, recipe: Recipe, seconds: float, ran: int, say: Callable[[str], None]) -> StudyResult:
    counts = _counts(study)
    try:
        best = study.best_trial
    except ValueError:
        best = None
    best_dir = study_dir / "best" if best is not None and (study_dir / "best").is_dir() else None
    result = StudyResult(
        study_dir, best_dir, best.value if best else None, dict(best.params) if best else {}, best.number if best else None,
        counts, seconds, recipe.train.metric, ran,
    )
    if best_dir is not None and not (best_dir / "report.html").is_file():
        from ..report import write_report

        with _locked(study_dir / ".best.lock"):  # trials skip their report; the kept run gets one
            write_report(best_dir)
    report = write_study_page(study, study_dir, recipe)
    summary = {
        "best_trial": result.best_trial, "best_score": result.best_score, "metric": result.metric,
        "best_params": result.best_params, "counts": counts, "seconds_this_process": round(seconds, 2),
        "trials_this_process": ran,
    }
    artifacts.atomic_write_json(study_dir / "summary.json", json.loads(json.dumps(summary, default=str)))
    rate = f", {60 * ran / seconds:.1f} trials/min" if ran and seconds > 0 else ""
    retried = f", {counts['retried']} retried after their worker died" if counts["retried"] else ""
    say(
        f"{counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} failed"
        f"{retried}; "
        f"{ran} trials here in {seconds:.1f}s{rate}"
    )
    if best is not None and not math.isnan(best.value):
        say(f"best: trial {best.number}, val {recipe.train.metric} {best.value:.4f}, "
            + "  ".join(f"{k}={_fmt(v)}" for k, v in best.params.items()))
        say(f"best run: {best_dir}  report: {report}")
    return result

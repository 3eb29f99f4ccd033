"""Training checkpoints: everything a killed run needs to continue exactly where it stopped.

::

    RUN_DIR/checkpoints/
      step-00000012/           one checkpoint per directory, named by optimizer step
        model.safetensors      weights
        optimizer.safetensors  optimizer tensors (moments, step counts)
        rng.safetensors        torch CPU (and CUDA) generator states
        ema.safetensors        the averaged weights, when train.ema_decay is set
        state.json             the rest: data-order position, optimizer groups, LR schedule, strategy,
                               early stopping, grad scaler, Python and NumPy RNG states, epoch history
        manifest.json          size and SHA-256 of every file above, written last

A checkpoint is built in a hidden temporary directory and renamed into place in one step, so a crash
while writing leaves the previous checkpoints as they were. Reading verifies each file against the
manifest; a truncated or corrupt checkpoint is reported, set aside (renamed ``*.corrupt``) and the
previous one is used. Nothing is unpickled: tensors come from safetensors, everything else from JSON.

Example::

    checkpointer = Checkpointer(run_dir, keep=2, parts=parts)
    checkpointer.save(Position(epoch=1, batch=3, step=9), {"history": history})
    found = checkpointer.latest()          # newest intact checkpoint, or None
    state = checkpointer.restore(found)    # loads model, optimizer, schedule, strategy, ...
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine.loop import EpochProgress
from ..core.errors import DivergenceError, FinetuneError, warn

FORMAT_VERSION = 1
DIRNAME = "checkpoints"
_NAME = re.compile(r"^step-(\d{8})$")
_TENSOR_FILES = ("model.safetensors", "optimizer.safetensors", "rng.safetensors")
_OPTIONAL_TENSOR_FILES = ("ema.safetensors",)  # read and verified when the manifest lists them


@dataclass(frozen=True)
class Position:
    """Where a run stands: the next batch to train is batch ``batch`` of epoch ``epoch`` (0-based)."""

    epoch: int
    batch: int
    step: int  # optimizer steps taken so far


@dataclass
class Loaded:
    """A verified checkpoint read into memory."""

    path: Path
    tensors: dict[str, dict[str, torch.Tensor]]  # file stem -> tensors
    state: dict[str, Any]

    @property
    def position(self) -> Position:
        return Position(**self.state["position"])


@dataclass
class TrainingParts:
    """The objects whose state a checkpoint holds."""

    accelerator: Any
    model: torch.nn.Module  # as prepared by accelerate (unwrapped on save and load)
    optimizer: Any
    schedule: Any  # engine.optim.LRSchedule
    strategy: Any  # strategies.Strategy
    stopper: Any  # engine.callbacks.EarlyStopping
    ema: Any = None  # engine.ema.ModelEMA when train.ema_decay is set


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint directories (by name; contents are verified on read), oldest first."""
    root = Path(run_dir) / DIRNAME
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


# -- JSON without loss: tuples and non-finite floats survive the round trip ---------------------


def _to_json(value: Any) -> Any:
    if isinstance(value, tuple):
        return {"__tuple__": [_to_json(v) for v in value]}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint's JSON")


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(_from_json(v) for v in value["__tuple__"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


# -- optimizer and RNG states as (tensors, JSON) -------------------------------------------------


def split_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch optimizer state dict -> (tensors keyed ``"<param id>.<name>"``, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in state_dict["state"].items():
        scalars[str(pid)] = {}
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value
            else:
                scalars[str(pid)][key] = _to_json(value)
    return tensors, {"state": scalars, "param_groups": _to_json(state_dict["param_groups"])}


def join_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(pid): dict(_from_json(v)) for pid, v in rest["state"].items()}
    for key, value in tensors.items():
        pid, _, name = key.partition(".")
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": _from_json(rest["param_groups"])}


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """RNG states of Python, NumPy, torch (CPU) and every CUDA device."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    rest = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    return tensors, rest


def restore_rng(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> None:
    version, internal, gauss = rest["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = rest["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


# -- files -----------------------------------------------------------------------------------------


def _write_file(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_dir(path: Path) -> None:
    """Rename out of sight first, so a crash mid-delete never leaves a half checkpoint in view."""
    hidden = path.with_name(f".{path.name}.deleting")
    shutil.rmtree(hidden, ignore_errors=True)
    os.replace(path, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


def _encode_safetensors(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    # safetensors refuses shared storage; contiguous CPU copies also drop any view offsets.
    return save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, metadata={"format": "pt"})


def read_checkpoint(path: Path) -> Loaded:
    """Read and verify one checkpoint; raises FinetuneError naming what is wrong."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        files = manifest["files"]
    except FileNotFoundError:
        raise FinetuneError("manifest.json is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise FinetuneError("manifest.json is corrupt") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise FinetuneError(f"checkpoint format {manifest.get('format_version')!r} is not {FORMAT_VERSION}")
    blobs: dict[str, bytes] = {}
    optional = tuple(n for n in _OPTIONAL_TENSOR_FILES if n in files)
    for name in (*_TENSOR_FILES, *optional, "state.json"):
        meta = files.get(name)
        if not isinstance(meta, dict):
            raise FinetuneError(f"manifest.json does not list {name}")
        try:
            data = (path / name).read_bytes()
        except FileNotFoundError:
            raise FinetuneError(f"{name} is missing") from None
        if len(data) != meta.get("bytes"):
            raise FinetuneError(f"{name} is truncated or altered ({len(data)} bytes, expected {meta.get('bytes')})")
        if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            raise FinetuneError(f"{name} does not match its SHA-256 checksum")
        blobs[name] = data
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for name in (*_TENSOR_FILES, *optional):
        try:  # the header is checked too: the checksum alone would accept any file written here
            tensors[name.split(".")[0]] = load(blobs[name])
        except (SafetensorError, ValueError) as exc:
            raise FinetuneError(f"{name} is not a valid safetensors file ({exc})") from None
    try:
        state = json.loads(blobs["state.json"].decode("utf-8"))
        Position(**state["position"])
        missing = [k for k in ("optimizer", "schedule", "strategy", "early_stopping", "rng") if k not in state]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise FinetuneError("state.json is corrupt") from None
    if missing:
        raise FinetuneError(f"state.json lacks {', '.join(missing)}")
    return Loaded(path, tensors, state)


class Checkpointer:
    """Writes, prunes, finds and restores the checkpoints of one run directory."""

    def __init__(self, run_dir: Path, keep: int, parts: TrainingParts, write: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.write = write  # False: weights are still checked for divergence, nothing is written
        self.root = self.run_dir / DIRNAME
        self.keep = keep
        self.parts = parts
        self.best: str | None = None  # the epoch-end checkpoint holding the best epoch's weights
        self.last_saved: Path | None = None

    # -- writing -------------------------------------------------------------------------------
    def save(self, position: Position, extra: dict[str, Any], is_best: bool = False) -> Path:
        """Write a checkpoint at ``position`` (on the main process), then prune old ones.

        ``extra`` is JSON-able run state owned by the trainer (history, epoch progress, ...).
        Weights that are no longer finite are never saved: the previous checkpoint stays the last
        good one.
        """
        p = self.parts
        model = p.accelerator.unwrap_model(p.model)
        weights = model.state_dict()
        bad = next((k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
        if bad is not None:
            raise DivergenceError(f"training diverged: weight {bad} became non-finite after optimizer step {position.step}")
        name = checkpoint_name(position.step)
        if is_best:
            self.best = name
        path = self.root / name
        if p.accelerator.is_main_process and self.write:
            self._write(path, weights, position, extra)
            self._prune()
        p.accelerator.wait_for_everyone()
        if self.write:
            self.last_saved = path
        return path

    def _state(self, position: Position, extra: dict[str, Any]) -> tuple[dict[str, bytes], dict[str, Any]]:
        p = self.parts
        opt_tensors, opt_rest = split_optimizer_state(p.optimizer.state_dict())
        rng_tensors, rng_rest = capture_rng()
        scaler = getattr(p.accelerator, "scaler", None)
        state = {
            "format_version": FORMAT_VERSION,
            "position": asdict(position),
            "optimizer": opt_rest,
            "schedule": p.schedule.state_dict(),
            "strategy": p.strategy.state_dict(),
            "early_stopping": p.stopper.state_dict(),
            "best_checkpoint": self.best,
            "grad_scaler": None if scaler is None else scaler.state_dict(),
            "rng": rng_rest,
            **extra,
        }
        blobs = {"optimizer.safetensors": _encode_safetensors(opt_tensors), "rng.safetensors": _encode_safetensors(rng_tensors)}
        if p.ema is not None:
            ema_tensors, state["ema"] = p.ema.state_dict()
            blobs["ema.safetensors"] = _encode_safetensors(ema_tensors)
        return blobs, _to_json(state)

    def _write(self, path: Path, weights: dict[str, torch.Tensor], position: Position, extra: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        blobs, state = self._state(position, extra)
        blobs = {"model.safetensors": _encode_safetensors(weights), **blobs}
        blobs["state.json"] = (json.dumps(state) + "\n").encode("utf-8")
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{path.name}.", suffix=".tmp"))
        try:
            manifest: dict[str, Any] = {"format_version": FORMAT_VERSION, "files": {}}
            for name, data in blobs.items():
                _write_file(tmp / name, data)
                manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            _write_file(tmp / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
            _fsync_dir(tmp)
            if path.exists():  # a step re-trained after falling back past a corrupt checkpoint
                _remove_dir(path)
            os.replace(tmp, path)
            _fsync_dir(self.root)
        except OSError as exc:  # a full or failing disk: the previous checkpoints are untouched
            shutil.rmtree(tmp, ignore_errors=True)
            previous = list_checkpoints(self.run_dir)
            kept = f"the last checkpoint is intact: {previous[-1]}" if previous else "no checkpoint was written"
            raise FinetuneError(f"could not write checkpoint {path} ({exc.strerror or exc}); {kept}") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _prune(self) -> None:
        """Keep the newest ``keep`` checkpoints and the best one."""
        found = list_checkpoints(self.run_dir)
        keep = {p.name for p in found[-self.keep :]} | ({self.best} if self.best else set())
        for path in found:
            if path.name not in keep:
                _remove_dir(path)

    def clean_leftovers(self) -> None:
        """Remove temporary and half-deleted directories a killed process left behind."""
        if self.root.is_dir() and self.parts.accelerator.is_main_process:
            for path in self.root.iterdir():
                if path.name.startswith(".") and path.name.endswith((".tmp", ".deleting")):
                    shutil.rmtree(path, ignore_errors=True)

    def remove_all(self) -> None:
        if self.root.is_dir():
            _remove_dir(self.root)

    # -- reading -------------------------------------------------------------------------------
    def latest(self) -> Loaded | None:
        """The newest checkpoint that passes verification; corrupt ones are reported and set aside.

        The main process checks and sets aside first; the others then read what is left, so every
        process resumes from the same checkpoint.
        """
        main = self.parts.accelerator.is_main_process
        found = self._newest_intact(set_aside=True) if main else None
        self.parts.accelerator.wait_for_everyone()
        return found if main else self._newest_intact(set_aside=False)

    def _newest_intact(self, set_aside: bool) -> Loaded | None:
        for path in reversed(list_checkpoints(self.run_dir)):
            try:
                return read_checkpoint(path)
            except FinetuneError as exc:
                if set_aside:
                    aside = path.with_name(f"{path.name}.corrupt")
                    shutil.rmtree(aside, ignore_errors=True)
                    os.replace(path, aside)
                    warn(f"checkpoint {path} is unusable ({exc}); set aside as {aside.name}, using the previous one")
        return None

    def restore(self, loaded: Loaded) -> dict[str, Any]:
        """Load every part's state from ``loaded``; returns the checkpoint's state.json contents.

        The RNG states are not applied here: a resumed epoch applies them just before its first
        batch (see :func:`restore_rng`), after the data loader has been set up.
        """
        p, state = self.parts, loaded.state
        model = p.accelerator.unwrap_model(p.model)
        try:
            model.load_state_dict(loaded.tensors["model"])
            p.optimizer.load_state_dict(join_optimizer_state(loaded.tensors["optimizer"], state["optimizer"]))
            if p.ema is not None:
                if "ema" not in loaded.tensors or "ema" not in state:
                    raise KeyError("it holds no averaged weights (train.ema_decay)")
                p.ema.load_state_dict(loaded.tensors["ema"], state["ema"])
        except (RuntimeError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0][:200]
            raise FinetuneError(f"checkpoint {loaded.path} does not fit this model and optimizer ({first})") from None
        p.schedule.load_state_dict(state["schedule"])
        # After the optimizer: the strategy re-applies requires_grad for its phase (e.g. unfrozen).
        p.strategy.load_state_dict(state["strategy"], model, p.optimizer)
        p.stopper.load_state_dict(state["early_stopping"])
        scaler = getattr(p.accelerator, "scaler", None)
        if scaler is not None and state.get("grad_scaler"):
            scaler.load_state_dict(state["grad_scaler"])
        self.best = state.get("best_checkpoint")
        p.stopper.best_state = self._best_weights(loaded)
        return state

    def _best_weights(self, loaded: Loaded) -> dict[str, torch.Tensor] | None:
        """The weights early stopping kept for the best epoch: the averaged ones when there are."""
        if self.best is None:
            return None
        if self.best == loaded.path.name:
            return {k: v.clone() for k, v in _evaluated_weights(loaded.tensors).items()}
        try:
            return _evaluated_weights(read_checkpoint(self.root / self.best).tensors)
        except FinetuneError as exc:
            warn(f"best checkpoint {self.root / self.best} is unusable ({exc}); the final model will be the last epoch's")
            self.best = None
            return None


def _evaluated_weights(tensors: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return tensors.get("ema") or tensors["model"]


# -- resuming --------------------------------------------------------------------------------------

# Fields a resumed run may change: they do not change what is computed.
RESUME_FREE_FIELDS = frozenset({"data.num_workers"})


@dataclass
class ResumePoint:
    """Where a resumed run continues, read from its checkpoint."""

    path: Path
    position: Position
    progress: EpochProgress | None  # set when the checkpoint was taken part-way through an epoch
    history: list[dict[str, Any]]
    stopped: bool
    rng: tuple[dict[str, torch.Tensor], dict[str, Any]]

    @classmethod
    def from_state(cls, loaded: Loaded, state: dict[str, Any]) -> ResumePoint:
        progress = state.get("epoch_progress")
        return cls(
            loaded.path,
            loaded.position,
            None if progress is None else EpochProgress(**progress),
            list(state.get("history", [])),
            bool(state.get("stopped", False)),
            (loaded.tensors["rng"], state["rng"]),
        )

    def restore_rng(self) -> None:
        restore_rng(*self.rng)


def data_fingerprint(examples: Any, val: Any = None) -> dict[str, Any]:
    """Count and SHA-256 of the training inputs and labels, in order, and for image files the
    SHA-256 of their bytes (a path says nothing of what the file holds now); ``val`` the same under
    ``"val"``. Texts are their own content."""
    found = _fingerprint(examples)
    if val is not None:
        found["val"] = _fingerprint(val)
    return found


def _fingerprint(examples: Any) -> dict[str, Any]:
    digest = hashlib.sha256()
    for item, label in zip(examples.inputs, examples.labels or [None] * len(examples), strict=True):
        digest.update(f"{item}\t{label}\n".encode())
    found = {"examples": len(examples), "sha256": digest.hexdigest()}
    from ..modalities import modality_of

    content = modality_of(examples.modality).content_digest(examples.inputs)  # images: the files' bytes
    if content is not None:
        found["content"] = content
    return found


def _recipe_diffs(before: dict[str, Any], after: dict[str, Any], then: str, now: str) -> list[str]:
    from ..core.errors import shown

    before, after = json.loads(json.dumps(before)), json.loads(json.dumps(after))  # tuples vs lists
    diffs = []
    for section, fields in after.items():
        if not isinstance(fields, dict):  # a list section (tasks:) or none: compared whole
            if before.get(section) != fields:
                diffs.append(f"{section} is {shown(before.get(section))} {then}, {shown(fields)} {now}")
            continue
        was = before.get(section) or {}
        diffs += [
            f"{section}.{name} is {shown(was.get(name))} {then}, {shown(value)} {now}"
            for name, value in fields.items()
            if f"{section}.{name}" not in RESUME_FREE_FIELDS and was.get(name) != value
        ]
    return diffs


def check_same_recipe(run_dir: Path, current: dict[str, Any], loaded: Loaded | None = None) -> None:
    """Refuse to resume under a recipe other than the one the run started with: the one given
    now must be the run's recipe.yaml, and recipe.yaml must still be the recipe that the
    checkpoint was written under (an edited recipe.yaml would no longer describe the run)."""
    from .recipe import Recipe

    saved = Recipe.from_yaml(Path(run_dir) / "recipe.yaml").to_dict()
    diffs = _recipe_diffs(saved, current, "in the run", "now")
    if diffs:
        raise FinetuneError(
            f"cannot resume {run_dir}: the recipe differs from its recipe.yaml ({'; '.join(diffs)}); "
            f"resume with the same recipe (finetunekit resume {run_dir}) or start a new run"
        )
    started = loaded.state.get("recipe") if loaded is not None else None
    if started:  # read as recipe.yaml is: a checkpoint of an older version lists every task type's options
        started = Recipe.from_dict(started).to_dict()
    diffs = _recipe_diffs(started, saved, "when the run started", "in recipe.yaml") if started else []
    if diffs:
        raise FinetuneError(
            f"cannot resume {run_dir}: {Path(run_dir) / 'recipe.yaml'} was edited after checkpoint {loaded.path} was "
            f"written ({'; '.join(diffs)}); put the run's values back, or start a new run"
        )


def check_same_data(loaded: Loaded, classes: list[str], examples: Any, val: Any = None) -> dict[str, Any]:
    """Refuse to resume on other classes, other examples or other file contents than the
    checkpoint's; returns the data's fingerprint (for the checkpoints still to come)."""
    from ..core.errors import DataError

    saved = loaded.state.get("classes")
    if saved != classes:
        raise DataError(
            f"{examples.source}: classes {', '.join(classes)} do not match those of checkpoint {loaded.path} "
            f"({', '.join(map(str, saved or []))}); resume needs the data the run started with"
        )
    then, now = loaded.state.get("data") or {}, data_fingerprint(examples, val)
    for part, ex in (("training", examples), ("validation", val)):
        old, new = (then.get("val"), now.get("val")) if part == "validation" else (then, now)
        if not old or not new:  # checkpoints from before validation was fingerprinted
            continue
        if (old.get("examples"), old.get("sha256")) != (new["examples"], new["sha256"]):
            raise DataError(
                f"{ex.source}: the {part} examples differ from those of checkpoint {loaded.path} "
                f"({old.get('examples')} then, {new['examples']} now); resume needs the data the run started with"
            )
        if "content" in old and old["content"] != new.get("content"):
            raise DataError(
                f"{ex.source}: the contents of the {part} files changed since checkpoint {loaded.path} was written "
                "(same names, other bytes); resume needs the data the run started with"
            )
    return now


def _jsonl_records(path: Path) -> list[dict[str, Any]]:
    """Lines of a JSONL log; a line torn by a kill mid-append is dropped."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_logs(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Drop the metrics.jsonl and steps.jsonl lines written after the checkpoint: the resumed run
    writes them again."""
    from .artifacts import atomic_write_text

    run_dir = Path(run_dir)
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    steps = run_dir / "steps.jsonl"
    if steps.is_file():
        last = history[-1]["step"] if history else 0
        kept = [r for r in _jsonl_records(steps) if isinstance(r, dict) and r.get("step", 0) <= last]
        atomic_write_text(steps, "".join(json.dumps(r) + "\n" for r in kept))


def has_checkpoints(run_dir: Path) -> bool:
    """Checkpoints to resume from, including ones set aside as corrupt (so a run whose every
    checkpoint is damaged reports it rather than silently starting over)."""
    root = Path(run_dir) / DIRNAME
    return root.is_dir() and any(_NAME.match(p.name.removesuffix(".corrupt")) for p in root.iterdir())

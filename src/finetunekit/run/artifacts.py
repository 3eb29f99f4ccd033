"""The run directory: everything needed to rebuild and use a fine-tuned model, and nothing that
executes code on load.

::

    RUN_DIR/
      finetunekit.json     format version, the task (type and what rebuilds it: classes, target
                           statistics, thresholds), modality, backbone and head description
      recipe.yaml          the resolved recipe (every default filled in)
      data_sources.json    runs trained from in-memory tables: each one's content token
                           (memory:<kind>:<sha256>, as recipe.yaml names it), rows and columns
      labels.json          classification: class names, index order
      preprocessing.json   image sizes and normalisation, or text pooling and max length
      backbone/            tokenizer and config files (text backbones)
      model.safetensors    backbone + head weights
      adapter/             adapters a strategy kept unmerged: its own files and the head
                           (finetunekit.strategies: Strategy.save_extra)
      metrics.json         final validation metrics
      metrics.jsonl        one line per epoch
      steps.jsonl          one line per optimizer step (training loss, learning rate per group)
      val_predictions.jsonl  the final model's validation predictions, one line per example
      report.html          curves, confusion matrix, calibration, worst errors (finetunekit.report)
      timings.json         wall and CPU seconds of each phase of the run (start-up, reading, each
                           epoch's training, validation and checkpoint, saving, card, report)
      README.md            model card

Every file is written to a temporary name in the same directory and renamed into place, so a crash
leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from ..core.errors import FinetuneError
from ..core.outputs import WriteError, is_lock

FORMAT_VERSION = 1
MARKER = "finetunekit.json"


# -- atomic writes -------------------------------------------------------------------------------


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically; an OS error (a full disk) is a WriteError naming ``path``."""
    try:
        _atomic_write_bytes(path, data)
    except OSError as exc:
        raise WriteError(path, exc) from None


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """Write the tensors as safetensors; returns the file's SHA-256."""
    import hashlib

    from safetensors.torch import save

    # safetensors refuses shared storage; contiguous copies also drop any view offsets.
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    data = save(clean, metadata=metadata)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def atomic_replace_dir(path: Path, fill) -> None:
    """Build a directory under a temporary name with ``fill(tmp_path)``, then swap it in."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    except OSError as exc:
        raise WriteError(path, exc) from None
    try:
        fill(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise WriteError(path, exc) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    append_jsonl_many(path, [record])


def append_jsonl_many(path: Path, records: list[dict[str, Any]]) -> None:
    """Append several lines with one write and one fsync (per-step records arrive once per epoch)."""
    if not records:
        return
    try:
        _append_bytes(path, "".join(json.dumps(record) + "\n" for record in records).encode("utf-8"))
    except OSError as exc:  # a torn last line is dropped when the run resumes (checkpoint.truncate_logs)
        raise WriteError(path, exc) from None


def _append_bytes(path: Path, data: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Lines of a JSONL file; a missing file is an empty list, a corrupt line an error naming it."""
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise FinetuneError(f"{path}:{number}: corrupt JSON line ({exc.msg})") from None
    return records


PREDICTIONS_FILE = "val_predictions.jsonl"


def save_predictions(run_dir: Path, inputs: list[str], records: list[dict[str, Any]]) -> None:
    """The validation set's predictions, one JSON line per example, written atomically:
    ``{"index", "input", ...}`` and the task's fields (``task.prediction_records``; for
    classification ``label, predicted, confidence, probabilities`` in ``labels.json`` order). The
    report's error gallery and plots read this file."""
    lines = []
    for i, (text, fields) in enumerate(zip(inputs, records, strict=True)):
        record = {"index": i, "input": text, **fields}
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    atomic_write_text(run_dir / PREDICTIONS_FILE, "".join(lines))


# -- run directories -----------------------------------------------------------------------------


def is_run_dir(path: Path) -> bool:
    """A directory finetunekit wrote (finished, or stopped part-way)."""
    return any((path / name).exists() for name in (MARKER, "metrics.jsonl", "recipe.yaml", "checkpoints"))


def check_run_dir(path: Path, overwrite: bool) -> None:
    """Raise if ``path`` cannot become a new run directory; touches nothing, so a run can check
    its output before spending minutes on loading data and models."""
    if path.exists() and not path.is_dir():
        raise FinetuneError(f"output {path} exists and is not a directory")
    if path.is_dir() and any(not is_lock(child) for child in path.iterdir()):  # the run's own lock does not count
        if not overwrite:
            raise FinetuneError(f"run directory {path} already exists and is not empty; pass --overwrite or choose another --output")
        if not is_run_dir(path):
            raise FinetuneError(f"refusing to overwrite {path}: it is not a finetunekit run directory")


def prepare_run_dir(path: Path, overwrite: bool) -> Path:
    """Create the run directory; refuse to reuse a non-empty one unless ``overwrite``."""
    check_run_dir(path, overwrite)
    if path.is_dir():
        for child in path.iterdir():
            if not is_lock(child):
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_model(run_dir: Path, model: torch.nn.Module, task: Any, preprocessing: dict[str, Any], precision: str = "fp32") -> None:
    """Weights, the task's state and files, preprocessing and the backbone's description + assets.

    ``precision`` is the autocast precision the run validated in; predict uses the same one, so a
    reloaded model reproduces the run's validation predictions exactly."""
    from ..version import __version__

    backbone = model.backbone
    if backbone.saves_assets:
        atomic_replace_dir(run_dir / "backbone", backbone.save_assets)
    # what a strategy added to the model and kept separate (adapters), described in finetunekit.json
    adapter = getattr(model, "adapter", None)
    from ..strategies import saved_extras

    for name, fill in saved_extras(model).items():
        atomic_replace_dir(run_dir / name, fill)
    weights_sha256 = atomic_save_safetensors(run_dir / "model.safetensors", model.state_dict(), {"format": "pt"})
    for name, content in task.files().items():
        atomic_write_json(run_dir / name, content)
    atomic_write_json(run_dir / "preprocessing.json", preprocessing)
    atomic_write_json(
        run_dir / MARKER,
        {
            "format_version": FORMAT_VERSION,
            "finetunekit_version": __version__,
            "task": task.state(),
            "modality": backbone.modality,
            "backbone": backbone.describe(),
            "head": model.head.describe(),
            "precision": precision,
            "weights_sha256": weights_sha256,  # loading refuses weights that are not these (another run's)
            **({"adapter": adapter} if adapter is not None else {}),
        },
    )


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FinetuneError(f"{path} is missing: {path.parent} is not a complete finetunekit run directory") from None
    except json.JSONDecodeError as exc:
        raise FinetuneError(f"{path}: corrupt JSON ({exc.msg} at line {exc.lineno})") from None


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """``finetunekit.json`` of a run directory, its format version checked."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FinetuneError(f"run directory not found: {run_dir}")
    info = read_json(run_dir / MARKER)
    if info.get("format_version") != FORMAT_VERSION:
        raise FinetuneError(f"{run_dir}: run format {info.get('format_version')} is not supported (expected {FORMAT_VERSION})")
    return info


def read_weights(run_dir: Path, verify: bool = True) -> dict[str, torch.Tensor]:
    """The run's ``model.safetensors`` (never a pickle: one in its place is refused, not loaded);
    ``verify``: checked against the SHA-256 in ``finetunekit.json`` (see :func:`verify_weights`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = Path(run_dir) / "model.safetensors"
    if not weights.is_file():
        pickles = sorted(p for p in Path(run_dir).iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise pickle_refusal(pickles[0])
        raise FinetuneError(f"{weights} is missing: {run_dir} is not a complete finetunekit run directory")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        if _is_pickle(weights):
            raise pickle_refusal(weights) from None
        raise FinetuneError(f"{weights}: corrupt or truncated weights ({exc})") from None
    if verify:
        verify_weights(run_dir)
    return state


def verify_weights(run_dir: Path) -> None:
    """Refuse a ``model.safetensors`` that is not the file this run saved: ``finetunekit.json``
    records its SHA-256 (runs saved before it did are not checked)."""
    import hashlib

    run_dir = Path(run_dir)
    try:
        expected = json.loads((run_dir / MARKER).read_text(encoding="utf-8")).get("weights_sha256")
    except (OSError, ValueError, AttributeError):
        return  # a missing or corrupt finetunekit.json is reported by whoever reads it
    if not expected:
        return
    found = hashlib.sha256()
    with (run_dir / "model.safetensors").open("rb") as handle:
        while chunk := handle.read(1 << 20):
            found.update(chunk)
    if found.hexdigest() != expected:
        raise FinetuneError(
            f"{run_dir / 'model.safetensors'}: not the weights this run saved (their SHA-256 differs from the one in "
            f"{run_dir / MARKER}); the file comes from another run or was altered"
        )


def load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    """``module.load_state_dict(state)``, every key accounted for, or an error naming ``where``."""
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise FinetuneError(f"{where}: weights do not fit the saved architecture (missing {missing[:3]}, unexpected {unexpected[:3]})")


# -- no code from files: pickles are refused --------------------------------------------------------

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def _is_pickle(path: Path) -> bool:
    """A pickle (protocol 2 to 5: 0x80 then the protocol number) or torch.save's zip archive (which
    holds one). A safetensors file starts with its header's length, then the JSON header ``{``."""
    with path.open("rb") as handle:
        head = handle.read(9)
    pickled = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05") and head[8:9] != b"{"
    return pickled or head[:4] == b"PK\x03\x04"


def pickle_refusal(path: Path) -> FinetuneError:
    return FinetuneError(
        f"{path}: refusing to load a pickle: unpickling can run any code the file contains, so finetunekit reads "
        "weights only from safetensors (if you trust the file, convert it once with "
        "safetensors.torch.save_file(torch.load(path, weights_only=True), 'model.safetensors'))"
    )


def safe_torch_load(path: Path) -> Any:
    """A torch.save file loaded with ``weights_only=True``: the unpickler builds tensors and plain
    containers only, and a file that asks for anything else (code) is refused, never run."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise FinetuneError(
            f"{path}: refused: it holds pickled objects other than tensors, which could run code when loaded ({first})"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise FinetuneError(f"{path}: corrupt or truncated weights ({type(exc).__name__})") from None


def save_recipe(run_dir: Path, recipe_dict: dict[str, Any]) -> None:
    atomic_write_text(run_dir / "recipe.yaml", yaml.safe_dump(recipe_dict, sort_keys=False))

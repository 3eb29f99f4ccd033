"""Export a run directory for use without finetunekit, each export checked against the run's own
model before it is kept.

::

    finetunekit export runs/sst2 --format hf     # transformers directory (text runs)
    finetunekit export runs/ants --format timm   # timm directory: config.json + model.safetensors (image runs)
    finetunekit export runs/ants --format onnx   # model.onnx, dynamic batch (and sequence length for text)

The output (default ``RUN_DIR/export/FORMAT``) is built in a temporary directory, reloaded the way a
user would load it (``AutoModelForSequenceClassification.from_pretrained``, ``timm.create_model``,
``onnxruntime.InferenceSession``), and compared with the run's PyTorch model on validation inputs:
the largest absolute logit difference must be within ``tolerance`` and every predicted label must
agree, or nothing is written. ``export.json`` in the output records the check.

Loading code for each format: docs/report-and-export.md.
"""

from __future__ import annotations

import json
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..run import artifacts
from ..run.card import write_export_card
from ..core.errors import FinetuneError

FORMATS = ("hf", "timm", "onnx")
LIBRARIES = {"hf": "transformers", "timm": "timm", "onnx": "onnx"}


@dataclass
class ExportResult:
    format: str
    path: Path
    files: list[str]
    max_abs_diff: float
    examples: int
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"exported {self.format} to {self.path} ({', '.join(self.files)}); parity on {self.examples} examples: "
            f"max |logit difference| {self.max_abs_diff:.2e}, all predicted labels equal"
        )


def export(run_dir: str | Path, fmt: str, output: str | Path | None = None, overwrite: bool = False,
           tolerance: float = 1e-4) -> ExportResult:
    """Export ``run_dir`` as ``fmt`` (``hf``, ``timm`` or ``onnx``) and check it; see the module doc."""
    from contextlib import nullcontext

    from ..core.outputs import RunDirLock, check_output, check_writable, in_run_dir

    if fmt not in FORMATS:
        raise FinetuneError(f"export: unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    target = Path(output) if output is not None else run_dir / "export" / fmt
    check_output(target, [run_dir])  # never the run itself, a folder holding it, or one of its files
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not overwrite:
        raise FinetuneError(f"export: {target} already exists; pass --overwrite or choose another --output")
    if not run_dir.is_dir():
        raise FinetuneError(f"run directory not found: {run_dir}")
    check_writable(target)  # before the model loads
    # An export into the run directory writes there: one process at a time, as for training.
    with RunDirLock(run_dir) if in_run_dir(target, run_dir) else nullcontext():
        return _export(run_dir, fmt, target, tolerance)


def _export(run_dir: Path, fmt: str, target: Path, tolerance: float) -> ExportResult:
    from .predict import Predictor

    predictor = Predictor(run_dir, device="cpu")
    if predictor.task.needs_decoder:  # the model writes text: its library form is a generating model
        return _export_seq2seq(predictor, run_dir, fmt, target)
    if fmt != "onnx" and predictor.task.dense:
        raise FinetuneError(f"export {fmt}: {run_dir} is a {predictor.task.type} run, whose head has no {fmt} form; export it with --format onnx")
    if fmt != "onnx" and not predictor.task.head_folds_outputs:
        raise FinetuneError(f"export {fmt}: {run_dir} is a {predictor.task.type} run, whose outputs are no linear layer's; "
                            "export it with --format onnx")
    if fmt != "onnx" and not hasattr(predictor.model.head, "fc"):
        raise FinetuneError(f"export {fmt}: {run_dir} has one head per task (tasks:); export it with --format onnx")
    # Adapters kept unmerged: exports hold plain weights. The merged model differs from the
    # adapter one by float rounding only, far inside the parity tolerance.
    from ..strategies import merge_added

    merge_added(predictor.model)
    exporter = {"hf": _export_hf, "timm": _export_timm, "onnx": _export_onnx}[fmt]
    batches = sample_batches(predictor)
    result: dict[str, Any] = {}

    def fill(tmp: Path) -> None:
        result.update(exporter(predictor, tmp, batches))
        diff = result["max_abs_diff"]
        if not diff <= tolerance:
            raise FinetuneError(
                f"export {fmt}: parity check failed, max |logit difference| {diff:.3e} exceeds the tolerance {tolerance:g}"
            )
        if result["label_mismatches"]:
            raise FinetuneError(f"export {fmt}: {result['label_mismatches']} predicted labels differ from finetunekit's")
        record = {"format": fmt, "run_dir": str(run_dir), "tolerance": tolerance, **result}
        artifacts.atomic_write_json(tmp / "export.json", record)
        write_export_card(run_dir, tmp, LIBRARIES[fmt], loading_code(fmt, target, predictor))

    if target.exists() and target.is_file():
        target.unlink()
    artifacts.atomic_replace_dir(target, fill)
    files = sorted(p.name for p in target.iterdir())
    return ExportResult(fmt, target, files, float(result["max_abs_diff"]), int(result["examples"]), result)


# -- text-writing models (seq2seq) -----------------------------------------------------------------


def _export_seq2seq(predictor, run_dir: Path, fmt: str, target: Path) -> ExportResult:
    """``hf``: the encoder-decoder as transformers saves it, with its tokenizer, processor and a
    generation config that decodes as the run does; checked by loading it into
    ``transformers.pipeline(<the backbone's pipeline task>)`` and transcribing (translating) the
    run's validation inputs: every text must equal finetunekit's, or nothing is written."""
    from ..strategies import merge_added

    if fmt != "hf":
        raise FinetuneError(
            f"export {fmt}: {run_dir} writes text (a seq2seq run); export it with --format hf. ONNX would need the "
            "encoder, the decoder with its key/value cache and the search loop exported separately (optimum's "
            "seq2seq export), which finetunekit does not do (docs/seq2seq.md)"
        )
    merge_added(predictor.model)
    backbone, task = predictor.model.backbone, predictor.task
    saved = [r["input"] for r in artifacts.read_jsonl(predictor.run_dir / artifacts.PREDICTIONS_FILE)]
    inputs = predictor.kind.export_samples(saved, predictor.schema, 8)
    if not inputs:
        raise FinetuneError(f"export hf: the run's validation inputs ({artifacts.PREDICTIONS_FILE}) are gone; the parity check needs them")
    expected = predictor.predict(list(inputs))
    result: dict[str, Any] = {}

    def fill(tmp: Path) -> None:
        with _quiet_transformers():
            backbone.save_transformers(tmp, task.num_beams, task.length_penalty, int(task.max_new_tokens))
            got = backbone.library_answers(tmp, list(inputs))
        mismatches = sum(a != b for a, b in zip(expected, got, strict=True))
        if mismatches:
            first = next(i for i, (a, b) in enumerate(zip(expected, got, strict=True)) if a != b)
            hint = (" (the pipeline pads clips to Whisper's window and this run encodes each clip on its own frames: "
                    "train with task.pad_to_window: true for an exact export)" if backbone.preprocessing().get("frames") == "own" else "")
            raise FinetuneError(f"export hf: the pipeline's texts differ from finetunekit's on {mismatches} of {len(got)} "
                                f"validation inputs (first: {inputs[first]}: {got[first]!r} against {expected[first]!r}){hint}")
        result.update({"max_abs_diff": 0.0, "label_mismatches": 0, "examples": len(got), "pipeline": backbone.pipeline_task,
                       "texts_equal": len(got)})
        artifacts.atomic_write_json(tmp / "export.json", {"format": fmt, "run_dir": str(run_dir), **result})
        d = str(target)
        write_export_card(run_dir, tmp, LIBRARIES[fmt], backbone.library_usage(d))

    if target.exists() and target.is_file():
        target.unlink()
    artifacts.atomic_replace_dir(target, fill)
    files = sorted(p.name for p in target.iterdir())
    return ExportResult(fmt, target, files, 0.0, int(result["examples"]), result)


# -- sample inputs ---------------------------------------------------------------------------------


@dataclass
class Sample:
    inputs: list[Any] | None  # image paths, texts or (first, second) pairs; None for synthetic pixels
    batch: dict[str, torch.Tensor]  # made by the run's own preprocessing


def sample_batches(predictor, limit: int = 8) -> list[Sample]:
    """Two batches of different sizes (and, for text, different lengths), made by the run's own
    preprocessing from its validation inputs when they are still there; synthetic inputs otherwise."""
    from ..data import Examples
    from ..data.pipeline import build_loader

    saved = [r["input"] for r in artifacts.read_jsonl(predictor.run_dir / artifacts.PREDICTIONS_FILE)]
    inputs = predictor.kind.export_samples(saved, predictor.schema, limit)  # the modality's choice (texts: built-in ones too)
    if inputs is None:  # images gone: random pixels at the input size
        generator = torch.Generator().manual_seed(0)
        size = int(predictor.preprocessing["input_size"])
        height, width = getattr(predictor.task, "input_size", (size, size))  # dense tasks: their own input size
        pixels = torch.randn(5, 3, height, width, generator=generator)
        return [Sample(None, {"pixel_values": pixels[:2]}), Sample(None, {"pixel_values": pixels[2:]})]
    max_length = int(predictor.preprocessing.get("max_length", 512))
    split = max(1, len(inputs) // 3)
    batches = []
    for part in (inputs[:split], inputs[split:]):
        examples = Examples(list(part), None, "export sample", predictor.modality)
        dataset = predictor.kind.build_dataset(examples, None, predictor.model.backbone, predictor.preprocessing, False, "none", max_length, predictor.task)
        (batch,) = list(build_loader(dataset, predictor.model.backbone, len(part), False, 0))
        order = batch.pop("index")  # text batches come sorted by length: put rows back in input order
        batch = {k: v[torch.argsort(order)] for k, v in batch.items()}
        batches.append(Sample(list(part), batch))
    return batches


@torch.no_grad()
def _reference(predictor, samples: list[Sample]) -> list[np.ndarray]:
    """What the export must output: the task's exported form of the model's outputs (logits, or
    values in target units for regression)."""
    predictor.model.eval()
    return [predictor.task.export_outputs(predictor.model(s.batch).float()).numpy() for s in samples]


def _compare(expected: list[np.ndarray], got: list[np.ndarray], samples: list[Sample], task: Any = None) -> dict[str, Any]:
    """Largest output difference, and how many predictions (the task's decoded ones) differ."""
    diff = max(float(np.abs(e - g).max()) for e, g in zip(expected, got, strict=True))

    def decided(x: np.ndarray) -> list:
        if task is None:
            return x.argmax(1).tolist()
        return task.decode(task.scores(task.import_outputs(torch.as_tensor(x))).numpy())

    def differs(a: Any, b: Any) -> bool:  # decisions only: numbers (regression) are covered by the difference above
        if isinstance(a, dict):
            return any(differs(a[k], b[k]) for k in a)
        if isinstance(a, float) or (isinstance(a, list) and a and isinstance(a[0], float)):
            return False
        if isinstance(a, np.ndarray):  # a mask: one decision per pixel
            return bool((a != b).any())
        return a != b

    mismatches = sum(sum(differs(a, b) for a, b in zip(decided(e), decided(g), strict=True)) for e, g in zip(expected, got, strict=True))
    return {"max_abs_diff": diff, "label_mismatches": mismatches, "examples": sum(len(e) for e in expected),
            "input_shapes": [{k: list(v.shape) for k, v in s.batch.items()} for s in samples]}


def _copy_run_metadata(predictor, tmp: Path) -> None:
    for name in ("labels.json", "preprocessing.json"):
        if (predictor.run_dir / name).is_file():  # labels.json: classification runs
            shutil.copy2(predictor.run_dir / name, tmp / name)
    artifacts.atomic_write_json(tmp / "task.json", predictor.task.state())


def _check_format(predictor, fmt: str) -> None:
    """A library format is the modality's own (``Modality.export_formats``) on its backbone kind."""
    formats = predictor.kind.export_formats
    if fmt not in formats or predictor.model.backbone.kind != fmt:
        others = " or ".join(f for f in FORMATS if f in formats or f == "onnx")
        raise FinetuneError(f"export {fmt}: {predictor.run_dir} is {'an' if predictor.modality[0] in 'aeiou' else 'a'} "
                            f"{predictor.modality} run; export it with --format {others}")


# -- transformers ------------------------------------------------------------------------------------


def _export_hf(predictor, tmp: Path, batches) -> dict[str, Any]:
    writer = HF_WRITERS.get(predictor.model.backbone.kind)  # by backbone kind: text encoders, Whisper's encoder
    if writer is None or "hf" not in predictor.kind.export_formats:
        _check_format(predictor, "hf")
    with _quiet_transformers():
        return writer(predictor, tmp, batches)


@contextmanager
def _quiet_transformers():
    """No progress bars or weight-loading chatter while saving and reloading; settings restored."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _write_and_check_hf(predictor, tmp: Path, batches) -> dict[str, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from . import hf_modeling

    backbone, head, task = predictor.model.backbone, predictor.model.head, predictor.task
    labels = task.export_config()
    config = hf_modeling.FinetunekitTextConfig(
        encoder_config=backbone.model.config.to_dict(), pooling=backbone.pooling,
        id2label=labels["id2label"], label2id=labels["label2id"], problem_type=labels["problem_type"],
        architectures=["FinetunekitForSequenceClassification"],
        **{k: v for k, v in labels.items() if k not in ("id2label", "label2id", "problem_type")},
    )
    config.auto_map = {
        "AutoConfig": "modeling_finetunekit.FinetunekitTextConfig",
        "AutoModelForSequenceClassification": "modeling_finetunekit.FinetunekitForSequenceClassification",
    }
    model = hf_modeling.FinetunekitForSequenceClassification(config)
    state = {f"encoder.{k}": v for k, v in backbone.model.state_dict().items()}
    state.update({f"classifier.{k}": v for k, v in task.export_head(head.fc.state_dict()).items()})
    model.load_state_dict(state, strict=True)
    model.save_pretrained(tmp, safe_serialization=True)
    shutil.copy2(Path(hf_modeling.__file__), tmp / "modeling_finetunekit.py")
    _save_tokenizer(predictor, tmp)
    _copy_run_metadata(predictor, tmp)

    loaded = AutoModelForSequenceClassification.from_pretrained(str(tmp), trust_remote_code=True)
    loaded_tokenizer = AutoTokenizer.from_pretrained(str(tmp), trust_remote_code=True)
    loaded.eval()
    got = []
    with torch.no_grad():  # raw texts through the exported tokenizer, as a user would call it
        for sample in batches:
            texts = [[a for a, _ in sample.inputs], [b for _, b in sample.inputs]] if predictor.text_columns else [sample.inputs]
            encoded = loaded_tokenizer(*texts, padding=True, truncation=True, return_tensors="pt")
            got.append(loaded(**encoded).logits.float().numpy())
    return {**_compare(_reference(predictor, batches), got, batches, task), "problem_type": loaded.config.problem_type}


def _write_and_check_whisper(predictor, tmp: Path, batches) -> dict[str, Any]:
    """A stock ``WhisperForAudioClassification`` that computes what the run's model computes, and
    a ``WhisperFeatureExtractor`` beside it, so ``pipeline("audio-classification")`` loads the
    directory with no code of ours (see :func:`whisper_classifier`). Checked two ways on the run's
    validation clips: the logits of the loaded model on the saved feature extractor's features
    (the tolerance), and the labels ``pipeline("audio-classification")`` answers."""
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification, pipeline

    from ..data.audio import fit_length, read_audio

    model, extractor = whisper_classifier(predictor)
    model.save_pretrained(tmp, safe_serialization=True)
    extractor.save_pretrained(tmp)
    _copy_run_metadata(predictor, tmp)

    loaded = AutoModelForAudioClassification.from_pretrained(str(tmp)).eval()
    features = AutoFeatureExtractor.from_pretrained(str(tmp))
    classify = pipeline("audio-classification", model=str(tmp), device="cpu")
    rate, clip = int(features.sampling_rate), int(features.n_samples)
    got, answers, cropped = [], [], 0
    for sample in batches:
        waves = []
        for path in sample.inputs:
            wave = read_audio(path, rate)
            if len(wave) > clip:  # the feature extractor would keep the start; the run keeps the centre
                wave, cropped = fit_length(wave, clip, "center"), cropped + 1
            waves.append(wave)
        with torch.no_grad():
            got.append(loaded(**features(waves, sampling_rate=rate, return_tensors="pt")).logits.float().numpy())
        answers += [max(a, key=lambda x: x["score"])["label"] for a in classify([{"raw": w, "sampling_rate": rate} for w in waves], top_k=None)]
    result = _compare(_reference(predictor, batches), got, batches, predictor.task)
    expected = [loaded.config.id2label[int(i)] for e in _reference(predictor, batches) for i in e.argmax(-1)]
    result["label_mismatches"] += sum(a != b for a, b in zip(answers, expected, strict=True))
    return {**result, "pipeline_labels_checked": len(answers), "clip_samples": clip,
            "inputs_longer_than_the_clip_centre_cropped_first": cropped}


def whisper_classifier(predictor) -> tuple[Any, Any]:
    """The run's Whisper classifier as transformers' own classes, computing the same function.

    The run encodes a clip on its own frames (``clip_seconds`` of them, positional embeddings
    sliced), averages the encoder states and applies a linear head. ``WhisperForAudioClassification``
    pads every input to ``max_source_positions * 2`` frames, projects the states, averages all of
    them and classifies. Set ``max_source_positions`` to the clip's positions (the embeddings cut
    to those rows: the same slice), the feature extractor's window (``chunk_length``) to the clip's
    seconds, the projector to the identity and the classifier to the head, and the two agree for
    every clip up to ``clip_seconds`` long (padded with silence at the end, as the run pads it)."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForAudioClassification

    backbone, task = predictor.model.backbone, predictor.task
    pre = predictor.preprocessing
    rate, hop = int(backbone.sampling_rate), int(pre.get("hop_length", 160))
    clip_seconds = float(pre["clip_seconds"])
    if not clip_seconds.is_integer():
        # WhisperFeatureExtractor pads to chunk_length * sampling_rate samples, which numpy needs whole:
        # a fractional window fails inside the pipeline, and a longer one would add silence the run never saw
        raise FinetuneError(f"export hf: the run's clips are {clip_seconds:g} s long (clip_seconds in preprocessing.json), and "
                            "WhisperFeatureExtractor's window is whole seconds; export it with --format onnx")
    frames = int(round(clip_seconds * rate)) // hop
    if frames % 2:
        raise FinetuneError(f"export hf: a clip of {frames} mel frames has no whole number of Whisper positions")
    labels = task.export_config()
    width = int(backbone.config.d_model)
    config = WhisperConfig(**{**backbone.config.to_dict(), "max_source_positions": frames // 2, "classifier_proj_size": width,
                              "use_weighted_layer_sum": False, "id2label": labels["id2label"], "label2id": labels["label2id"],
                              "architectures": ["WhisperForAudioClassification"]})
    model = WhisperForAudioClassification(config)
    state = {f"encoder.{k}": v for k, v in backbone.encoder.state_dict().items()}
    state["encoder.embed_positions.weight"] = state["encoder.embed_positions.weight"][: frames // 2].clone()
    state["projector.weight"] = torch.eye(width)
    state["projector.bias"] = torch.zeros(width)
    state.update({f"classifier.{k}": v for k, v in task.export_head(predictor.model.head.fc.state_dict()).items()})
    model.load_state_dict(state, strict=True)
    fe = backbone.feature_extractor
    # chunk_length: the window every input is padded or cut to, the run's clip length
    extractor = WhisperFeatureExtractor(feature_size=int(fe.feature_size), sampling_rate=rate, hop_length=hop,
                                        chunk_length=int(clip_seconds), n_fft=int(fe.n_fft), padding_value=float(fe.padding_value))
    return model.eval(), extractor


HF_WRITERS = {"hf": _write_and_check_hf, "whisper": _write_and_check_whisper}


def _save_tokenizer(predictor, directory: Path) -> None:
    backbone = predictor.model.backbone
    # With model_max_length set, truncation=True cuts where finetunekit cut during training.
    backbone.tokenizer.model_max_length = min(int(predictor.preprocessing.get("max_length", 512)), backbone.max_positions)
    backbone.tokenizer.save_pretrained(directory)


# -- timm --------------------------------------------------------------------------------------------


def _export_timm(predictor, tmp: Path, batches) -> dict[str, Any]:
    _check_format(predictor, "timm")
    import timm
    from timm.models import save_for_hf

    backbone, head = predictor.model.backbone, predictor.model.head
    model_args = {"bn_eps": backbone.bn_eps} if backbone.bn_eps is not None else {}
    try:
        full = timm.create_model(backbone.arch, pretrained=False, num_classes=predictor.task.output_size, **model_args)
    except TypeError as exc:
        raise FinetuneError(f"export timm: timm cannot build {backbone.arch} with {model_args} ({exc})") from None
    classifier = full.pretrained_cfg.get("classifier")
    state = {k: v for k, v in backbone.model.state_dict().items()}
    state.update({f"{classifier}.{k}": v for k, v in predictor.task.export_head(head.fc.state_dict()).items()})
    missing, unexpected = full.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise FinetuneError(
            f"export timm: {backbone.arch}'s classifier layout is not supported (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    pre = predictor.preprocessing
    data_config = {"input_size": (3, int(pre["input_size"]), int(pre["input_size"])), "crop_pct": pre["crop_pct"],
                   "interpolation": pre["interpolation"], "mean": tuple(pre["mean"]), "std": tuple(pre["std"])}
    names = predictor.classes or list(predictor.task.export_config()["id2label"].values())
    save_for_hf(full.eval(), str(tmp), model_config={"label_names": names}, model_args=model_args,
                safe_serialization=True, data_config=data_config)
    _copy_run_metadata(predictor, tmp)

    loaded = timm.create_model(f"local-dir:{tmp}", pretrained=True).eval()
    with torch.no_grad():
        got = [loaded(s.batch["pixel_values"]).float().numpy() for s in batches]
    return {**_compare(_reference(predictor, batches), got, batches, predictor.task), "model_args": model_args, "architecture": backbone.arch}


# -- ONNX --------------------------------------------------------------------------------------------


class _OnnxWrapper(torch.nn.Module):
    """Positional tensors in, the task's exported outputs (logits; values for regression) out: the
    signature ONNX needs."""

    def __init__(self, model: torch.nn.Module, names: list[str], task: Any) -> None:
        super().__init__()
        self.model = model
        self.names = names
        self.task = task

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.task.export_outputs(self.model(dict(zip(self.names, tensors, strict=True))))


def _export_onnx(predictor, tmp: Path, batches) -> dict[str, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise FinetuneError("export onnx: needs the packages 'onnx' and 'onnxruntime' (pip install 'finetunekit[export]')") from None
    axes = predictor.kind.onnx_axes  # the modality's input tensors, in order, and their dynamic axes
    names = [k for k in axes if k in batches[0].batch]
    dynamic: dict[str, dict[int, str]] = {name: dict(axes[name]) for name in names}
    dynamic["logits"] = {0: "batch"}
    wrapper = _OnnxWrapper(predictor.model.eval(), names, predictor.task).eval()
    path = tmp / "model.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
        # The TorchScript-based exporter: it runs offline, needs no extra packages, and handles the
        # dynamic batch and sequence axes of both model kinds.
        torch.onnx.export(wrapper, tuple(batches[0].batch[n] for n in names), str(path), dynamo=False, input_names=names,
                          output_names=["logits"], dynamic_axes=dynamic, opset_version=17, do_constant_folding=True)
    onnx.checker.check_model(str(path))
    _copy_run_metadata(predictor, tmp)
    backbone = predictor.model.backbone
    if getattr(backbone, "tokenizer", None) is not None:  # a tokenizer: the ONNX model's inputs are its token ids
        _save_tokenizer(predictor, tmp / "tokenizer")
    elif backbone.saves_assets:  # what makes the inputs otherwise (audio: the feature extractor's settings)
        backbone.save_assets(tmp / "preprocessor")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = [session.run(["logits"], {n: s.batch[n].numpy() for n in names})[0] for s in batches]
    return {**_compare(_reference(predictor, batches), got, batches, predictor.task), "inputs": names, "opset": 17}


def read_export_record(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / "export.json").read_text(encoding="utf-8"))


# -- loading code for the export's README ------------------------------------------------------------


def loading_code(fmt: str, target: Path, predictor) -> list[str]:
    """Markdown: how to load and run this export with its own library alone."""
    d = str(target)
    if not predictor.task.single_class:
        return _task_loading_code(fmt, d, predictor)
    if fmt == "hf" and predictor.model.backbone.kind == "whisper":
        seconds = predictor.preprocessing["clip_seconds"]
        return [
            "```python",
            "from transformers import pipeline",
            f'classify = pipeline("audio-classification", model="{d}")',
            'print(classify("clip.wav"))            # a file (decoded with ffmpeg), or',
            'print(classify({"raw": samples, "sampling_rate": 16000}))   # a mono float32 array',
            "```",
            f"A stock `WhisperForAudioClassification` and `WhisperFeatureExtractor`: no remote code. Its window is the run's clip "
            f"length ({seconds} s, `chunk_length`), not Whisper's 30 seconds, and its positional embeddings are cut to that "
            "window, so it computes what the run computes: the same logits for any clip up to that long (silence-padded at the "
            "end, as the run pads it). A longer input is cut to its first "
            f"{seconds} s by the feature extractor, where finetunekit keeps its centre: cut long recordings yourself "
            "(finetunekit's predict cuts them into windows). `export.json` records the parity check.",
        ]
    if fmt == "hf":
        return [
            "```python",
            "import torch",
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
            f'model = AutoModelForSequenceClassification.from_pretrained("{d}", trust_remote_code=True).eval()',
            f'tokenizer = AutoTokenizer.from_pretrained("{d}", trust_remote_code=True)',
            (
                'batch = tokenizer(["first text of the pair"], ["second text"], padding=True, truncation=True, return_tensors="pt")'
                if predictor.text_columns
                else 'batch = tokenizer(["a sentence to classify"], padding=True, truncation=True, return_tensors="pt")'
            ),
            "with torch.no_grad():",
            "    probs = model(**batch).logits.softmax(-1)",
            "print([model.config.id2label[i] for i in probs.argmax(-1).tolist()])",
            "```",
            "`trust_remote_code=True` runs `modeling_finetunekit.py` from this directory (torch and transformers only): "
            "the classifier reads " + ("the mean of the token states" if predictor.model.backbone.pooling == "mean" else "the CLS token state")
            + ", which no stock transformers class does (BERT's reads a tanh pooler layer), so a stock class would "
            "silently predict differently; the config's own `model_type` makes transformers refuse instead.",
        ]
    if fmt == "timm":
        backbone = predictor.model.backbone
        extra = f", bn_eps={backbone.bn_eps}" if backbone.bn_eps is not None else ""
        return [
            "```python",
            "import json, timm, torch",
            "from PIL import Image",
            f'model = timm.create_model("local-dir:{d}", pretrained=True).eval()',
            "# or by architecture name, with these weights:",
            f'# model = timm.create_model("{backbone.arch}", pretrained=True, num_classes={len(predictor.classes)}{extra},',
            f'#                           pretrained_cfg_overlay=dict(file="{d}/model.safetensors", num_classes={len(predictor.classes)})).eval()',
            "# (num_classes in the overlay as well: otherwise timm drops the classifier as a mismatched ImageNet head)",
            "transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))",
            f'classes = json.load(open("{d}/labels.json"))["classes"]',
            "with torch.no_grad():",
            '    probs = model(transform(Image.open("photo.jpg").convert("RGB")).unsqueeze(0)).softmax(-1)',
            "print(classes[probs.argmax(-1).item()])",
            "```",
            "`model.safetensors` is a plain timm state dict (`timm.create_model(arch, num_classes=K).load_state_dict(...)`); "
            "`preprocessing.json` is finetunekit's exact input pipeline (resize to input_size / crop_pct, centre crop, normalise).",
        ]
    inputs = predictor.kind.onnx_inputs(predictor)
    return [
        "```python",
        "import json, onnxruntime",
        f'session = onnxruntime.InferenceSession("{d}/model.onnx")',
        f'classes = json.load(open("{d}/labels.json"))["classes"]',
        "logits = session.run([\"logits\"], inputs)[0]   # inputs: a dict of numpy arrays, see below",
        "print([classes[i] for i in logits.argmax(-1)])",
        "```",
        f"Inputs: {inputs}; the batch axis (and the sequence axis for text) is dynamic. `export.json` records "
        "the parity check against PyTorch (largest logit difference).",
    ]


def _task_loading_code(fmt: str, d: str, predictor) -> list[str]:
    """Loading notes for the task types other than single-label classification: what the outputs
    mean (task.json holds the task: label names and thresholds, or target names)."""
    task = predictor.task
    meaning = task.export_note or "the outputs are the tasks' blocks side by side, in `task.json`'s `tasks` order"
    call = {
        "hf": [f'model = AutoModelForSequenceClassification.from_pretrained("{d}", trust_remote_code=True).eval()',
               f'tokenizer = AutoTokenizer.from_pretrained("{d}", trust_remote_code=True)',
               'outputs = model(**tokenizer(["a text"], padding=True, truncation=True, return_tensors="pt")).logits'],
        "timm": [f'model = timm.create_model("local-dir:{d}", pretrained=True).eval()', "outputs = model(pixel_values)"],
        "onnx": [f'session = onnxruntime.InferenceSession("{d}/model.onnx")', 'outputs = session.run(["logits"], inputs)[0]'],
    }[fmt]
    imports = {"hf": "from transformers import AutoModelForSequenceClassification, AutoTokenizer", "timm": "import timm",
               "onnx": "import onnxruntime"}[fmt]
    problem = f" (`config.problem_type` is `{task.export_config()['problem_type']}`)" if fmt == "hf" else ""
    return ["```python", imports, *call, "```", f"For this {task.type} model{problem}, {meaning}. `export.json` records the "
            "parity check against PyTorch."]


# -- the fast-predict model (finetunekit.use.fast) -------------------------------------------------------


class _ScoresWrapper(torch.nn.Module):
    """Positional tensors in, the task's scores out (probabilities; values in target units)."""

    def __init__(self, model: torch.nn.Module, names: list[str], task: Any) -> None:
        super().__init__()
        self.model, self.names, self.task = model, names, task

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.task.scores(self.model(dict(zip(self.names, tensors, strict=True))))


@dataclass
class FastModelResult:
    """What :func:`write_fast_model` did: ``path`` (None when no fast model was written and
    ``reason`` says why), its wall ``seconds`` and the parity it checked."""

    path: Path | None
    seconds: float
    reason: str = ""
    max_abs_diff: float = 0.0
    examples: int = 0
    parity_failed: bool = False  # the run is covered, and the model did not answer as torch does

    def summary(self) -> str:
        if self.path is None:
            return f"no fast-predict model: {self.reason}"
        return (f"fast-predict model: {self.path} ({self.seconds:.1f} s; ONNX scores within {self.max_abs_diff:.1e} of torch's "
                f"on {self.examples} inputs, every answer equal)")


def _fast_samples(predictor, tmp: Path, limit: int = 12) -> list[Any]:
    """Raw inputs for the fast model's parity check: the run's validation inputs (texts with the
    built-in samples; images still on disk), else a few random images of several shapes."""
    saved = [r["input"] for r in artifacts.read_jsonl(predictor.run_dir / artifacts.PREDICTIONS_FILE)]
    inputs = predictor.kind.export_samples(saved, predictor.schema, limit)
    if inputs is None and predictor.kind.fast_input == "pixels":
        from PIL import Image

        rng = np.random.default_rng(0)
        inputs = []
        for k, (w, h) in enumerate([(320, 240), (200, 333), (97, 64)]):
            path = tmp / f"sample{k}.png"
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
            inputs.append(str(path))
    return list(inputs or [])


def write_fast_model(run_dir: str | Path, predictor=None, tolerance: float = 1e-4) -> FastModelResult:
    """Write ``RUN_DIR/fast/`` (see :mod:`finetunekit.use.fast`): the run's model as ONNX
    computing the task's scores, with what its preprocessing needs, atomically, after checking on
    the run's validation inputs that it answers as the torch path does (scores within
    ``tolerance``, every predicted label equal), preprocessing included. A run the fast path does
    not cover writes nothing, and a failed check only a fast.json saying so (predict does not try
    again for the same weights): the result's ``reason`` says why.
    ``predictor``: the run's, already loaded on the CPU (loaded here otherwise)."""
    import tempfile
    import time

    from . import fast

    started = time.perf_counter()
    run_dir = Path(run_dir)

    def skipped(reason: str) -> FastModelResult:
        return FastModelResult(None, time.perf_counter() - started, reason)

    info = artifacts.read_json(run_dir / artifacts.MARKER)

    def why_not(p, precision: str) -> str | None:  # Task.answer_form: None for what the fast path does not answer
        return fast.why_not({**info, "precision": precision}, p.task.state(), p.preprocessing, getattr(p.task, "answer_form", None))

    if predictor is not None and predictor.device.type != "cpu":
        # what does not depend on the device first: a run the fast path does not cover is not loaded again
        reason = why_not(predictor, "fp32")
        if reason is not None:
            return skipped(reason)
        predictor = None
    if predictor is None:
        from .predict import Predictor

        predictor = Predictor(run_dir, device="cpu")
    task_state = predictor.task.state()
    form = getattr(predictor.task, "answer_form", None)
    reason = why_not(predictor, predictor.precision)
    if reason is not None:
        return skipped(reason)
    backbone = predictor.model.backbone
    text: dict[str, Any] | None = None
    if predictor.kind.fast_input == "tokens":
        tokenizer = getattr(backbone, "tokenizer", None)
        if tokenizer is None or not getattr(tokenizer, "is_fast", False) or getattr(backbone, "is_seq2seq", False):
            return skipped("the run's tokenizer has no tokenizers-library form")
        text = {"max_length": min(int(predictor.preprocessing.get("max_length", 512)), int(backbone.max_positions)),
                "pad_token_id": int(backbone.pad_token_id), "text_columns": predictor.preprocessing.get("text_columns")}
    from ..strategies import merge_added

    merge_added(predictor.model)  # adapters kept unmerged: plain weights (a float-rounding difference)
    batches = sample_batches(predictor)
    axes = predictor.kind.onnx_axes
    names = [k for k in axes if k in batches[0].batch]
    dynamic: dict[str, dict[int, str]] = {name: dict(axes[name]) for name in names}
    dynamic["scores"] = {0: "batch"}
    spec: dict[str, Any] = {
        "format": fast.FORMAT, "finetunekit": fast.__version__, "weights_sha256": info.get("weights_sha256"),
        "modality": predictor.modality, "task": task_state, "answer_form": form, "inputs": names,
    }
    if text is not None:
        spec["text"] = text
    else:
        pre = predictor.preprocessing
        spec["image"] = {k: pre.get(k) for k in ("input_size", "crop_pct", "interpolation", "mean", "std", "max_image_pixels")}
        if spec["image"]["interpolation"] is None:
            spec["image"]["interpolation"] = "bilinear"
        if spec["image"]["interpolation"] not in fast.PIL_FILTERS:
            return skipped(f"interpolation {spec['image']['interpolation']!r} has no PIL filter")
    checked: dict[str, Any] = {}

    def fill(tmp: Path) -> None:
        import os

        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # readable as the run directory is (a temporary directory is private)
        wrapper = _ScoresWrapper(predictor.model.eval(), names, predictor.task).eval()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
            torch.onnx.export(wrapper, tuple(batches[0].batch[n] for n in names), str(tmp / "model.onnx"), dynamo=False,
                              input_names=names, output_names=["scores"], dynamic_axes=dynamic, opset_version=17,
                              do_constant_folding=True)
        if text is not None:
            backbone.tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
        spec["onnx_bytes"] = (tmp / "model.onnx").stat().st_size
        with tempfile.TemporaryDirectory() as scratch:
            inputs = _fast_samples(predictor, Path(scratch))
            expected = predictor.predict_proba(list(inputs))
            got = fast.FastModel(tmp, spec).scores(list(inputs))
        diff = float(np.abs(expected - got).max()) if len(inputs) else 0.0
        # the decisions (a class, a label set) must be the same; values (regression) are the difference above
        same = _decisions(form, task_state, expected) == _decisions(form, task_state, got)
        if not (diff <= tolerance and same):
            raise _ParityFailed(f"its scores differ from torch's by {diff:.2e} (tolerance {tolerance:g})"
                                + ("" if same else ", with different predicted labels"))
        spec["parity"] = {"max_abs_diff": diff, "examples": len(inputs), "tolerance": tolerance}
        checked.update(spec["parity"])
        artifacts.atomic_write_json(tmp / "fast.json", spec)

    from ..core.outputs import RunDirLock

    with RunDirLock(run_dir):  # only what writes holds the run directory (a run the fast path skips is not locked)
        try:
            artifacts.atomic_replace_dir(run_dir / fast.FOLDER, fill)
        except _ParityFailed as exc:  # recorded, so that predict does not try again for these weights
            unusable = {k: spec[k] for k in ("format", "finetunekit", "weights_sha256")}
            artifacts.atomic_replace_dir(run_dir / fast.FOLDER,
                                         lambda tmp: artifacts.atomic_write_json(tmp / "fast.json", {**unusable, "unusable": str(exc)}))
            return FastModelResult(None, time.perf_counter() - started, str(exc), parity_failed=True)
    return FastModelResult(run_dir / fast.FOLDER, time.perf_counter() - started, "", checked["max_abs_diff"], checked["examples"])


class _ParityFailed(Exception):
    pass


def _decisions(form: str, task_state: dict[str, Any], scores: np.ndarray) -> list[Any]:
    """The decisions (a class, a label set) answered from ``scores``; none for values, whose
    difference is the scores' own."""
    from ..core.answers import DECISION_KEYS, task_records

    key = DECISION_KEYS[form]
    return [] if key is None else [r["json"][key] for r in task_records(form, task_state, scores)]

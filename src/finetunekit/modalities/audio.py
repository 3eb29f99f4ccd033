"""Audio: class folders or tables of audio files (WAV, FLAC, OGG, MP3), read with
``finetunekit.data.audio``, cut or padded to one clip length, turned into log-mel features by the
backbone's own feature extractor (Whisper's), augmented with time shifts, gain and SpecAugment masks.

The clip length is taken from the training data: the longest training clip, rounded up to a tenth
of a second (1.0 s for Speech Commands), at most the backbone's window. It is written into the
run's ``preprocessing.json`` (``clip_seconds``), and predict crops (the centre) or pads every input
to it, as training did.

Example::

    from finetunekit.modalities import read_examples
    examples = read_examples("speech_commands/train", "audio")
    examples.labels[:2]     # ['_silence_', '_silence_']
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import DataError
from ..data.audio import AUDIO_EXTENSIONS, DEFAULT_MAX_SECONDS, AudioError
from ..data.readers import IMAGE_EXTENSIONS, RECIPE_COLUMN_OPTIONS, Examples, is_table
from . import MODALITIES
from .base import FileInputs, InputSchema, Modality

AUDIO_COLUMN_GUESSES = ("audio", "file", "path", "filename", "clip")
# Augmentation presets (data.augment): "light" moves the word in time and changes its level;
# "strong" adds SpecAugment's frequency and time masks (Park et al., 2019) on the log-mel features.
PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "light": {"shift": 0.1, "gain_db": 6.0},
    "strong": {"shift": 0.1, "gain_db": 6.0, "freq_masks": 2, "freq_width": 10, "time_masks": 2, "time_width": 10},
    # "light" plus, for 80% of the clips, a random stretch of a recording from data.noise_dir at 0 to 20 dB SNR
    "noise": {"shift": 0.1, "gain_db": 6.0, "noise_probability": 0.8, "noise_snr_db": (0.0, 20.0)},
}


def _audio_folder(root: Path) -> Examples:
    """``root/<class>/<audio files>`` (searched recursively in each class folder)."""
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders (expected {root}/<class name>/<audio files>)")
    inputs: list[str] = []
    labels: list[str] = []
    for folder in classes:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        others = [p for p in files if p.suffix.lower() not in AUDIO_EXTENSIONS]
        if others:
            listed = ", ".join(str(p) for p in others[:3]) + (" ..." if len(others) > 3 else "")
            raise DataError(f"{folder}: {len(others)} non-audio file(s) among the clips: {listed}")
        if not files:
            raise DataError(f"{folder}: class folder {folder.name!r} has no audio files")
        inputs.extend(str(p) for p in files)
        labels.extend([folder.name] * len(files))
    return Examples(inputs, labels, str(root), "audio")


def _first_media_file(root: Path, limit: int = 2000) -> Path | None:
    """The first audio or image file under ``root`` (a sorted walk, hidden entries skipped; a
    README or LICENSE beside the class folders is passed over), looking at ``limit`` files at most."""
    media = set(AUDIO_EXTENSIONS) | set(IMAGE_EXTENSIONS)
    seen = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            seen += 1
            if not name.startswith(".") and Path(name).suffix.lower() in media:
                return Path(dirpath) / name
            if seen >= limit:
                return None
    return None


def clip_seconds_of(paths: Sequence[str], window: float) -> float:
    """The clip length of a training set: its longest file (from the headers, nothing decoded),
    rounded up to 0.1 s, at most ``window`` (the backbone's)."""
    import soundfile as sf

    longest = 0.0
    for path in paths:
        try:
            info = sf.info(str(path))
        except (sf.LibsndfileError, RuntimeError):
            continue  # unreadable files fail with their own message when read
        if info.samplerate > 0:
            longest = max(longest, info.frames / info.samplerate)
    if longest == 0.0:
        return min(1.0, window)
    return min(window, math.ceil(round(longest * 10, 6)) / 10)


class AudioDataset:
    """Clips read (and kept in memory, decoded), fitted to ``clip_samples`` and featurized by the
    backbone on access. A key is an index, or ``(index, seed)`` from a training sampler: the
    augmentation then draws from ``numpy.random.default_rng(seed)``, a function of (seed, epoch,
    index) alone, as for images (exact resume)."""

    memory_budget = 1 << 30  # bytes of decoded waveforms kept

    def __init__(self, paths: Sequence[str], labels: Any, backbone: Any, clip_samples: int, augment: str = "none",
                 max_seconds: float = DEFAULT_MAX_SECONDS, noise_dir: str | None = None) -> None:
        from ..data.pipeline import _targets

        self.paths = list(paths)
        self.labels = _targets(labels)
        self.backbone = backbone
        self.rate = int(backbone.sampling_rate)
        self.clip_samples = int(clip_samples)
        self.preset = dict(PRESETS[augment])
        if "noise_probability" in self.preset:
            from ..data.audio import read_noise_folder

            if not noise_dir:
                raise DataError("data.augment: 'noise' mixes in recordings from data.noise_dir; set it to a folder of audio files")
            self.preset["noises"] = read_noise_folder(noise_dir, self.rate)
        self.max_seconds = max_seconds
        self._waves: dict[int, np.ndarray] = {}
        self._bytes = 0
        self._window_file: tuple[Any, Any] = (None, None)

    def __len__(self) -> int:
        return len(self.paths)

    def wave(self, index: int) -> np.ndarray:
        from ..data.audio import read_audio

        item = self.paths[index]
        if isinstance(item, tuple):  # a window of a long file (Audio.windows): (path, start, samples) at the backbone's rate
            path, start, length = item
            if self._window_file[0] != path:  # a file's windows come one after another: decoded once
                self._window_file = (path, read_audio(path, self.rate, self.max_seconds))
            return self._window_file[1][start : start + length]
        wave = self._waves.get(index)
        if wave is None:
            wave = read_audio(item, self.rate, self.max_seconds)
            if self._bytes + wave.nbytes <= self.memory_budget:
                self._waves[index] = wave
                self._bytes += wave.nbytes
        return wave

    def __getitem__(self, key: int | tuple[int, ...]) -> dict[str, Any]:
        index, seed = (key[0], key[1] if len(key) > 1 else None) if isinstance(key, tuple) else (key, None)
        item = clip_features(self.backbone, self.wave(index), self.clip_samples, self.preset if seed is not None else {},
                             None if seed is None else np.random.default_rng(seed))
        item["index"] = index
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item

    @staticmethod
    def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_features(items)


def clip_features(backbone: Any, wave: np.ndarray, clip_samples: int, preset: dict[str, Any] | None = None,
                  rng: np.random.Generator | None = None) -> dict[str, Any]:
    """The model inputs of one clip fitted to ``clip_samples``, as the backbone's ``featurize``
    makes them (Whisper: log-mel ``input_features`` (n_mels, frames) and ``frame_mask``; wav2vec
    2.0 / HuBERT: ``input_values`` (samples,) and ``attention_mask``; AST: ``input_values``
    (frames, mel bins)), one example's tensors without the batch axis. With a preset and ``rng``,
    augmented: a random crop of a longer clip, background noise, time shift, gain, and SpecAugment
    on log-mel features. ``clip_samples`` 0: the clip whole, at its own length (no crop, noise or
    time shift, which would cut or cover words of a transcript's clip; gain and SpecAugment only)."""
    import torch

    from ..data.audio import fit_length, gain, mix_noise, spec_augment, time_shift

    preset = preset or {}
    if clip_samples <= 0:
        if rng is not None and preset:
            wave = gain(wave, rng, -preset["gain_db"], preset["gain_db"])
    elif rng is not None and preset:
        wave = fit_length(wave, clip_samples, "random", rng)
        noises = preset.get("noises")
        if noises and rng.random() < preset.get("noise_probability", 1.0):
            wave = mix_noise(wave, noises[int(rng.integers(len(noises)))], rng, *preset.get("noise_snr_db", (5.0, 20.0)))
        wave = time_shift(wave, rng, int(preset["shift"] * clip_samples))
        wave = gain(wave, rng, -preset["gain_db"], preset["gain_db"])
    else:
        wave = fit_length(wave, clip_samples, "center")
    item = {k: v[0] for k, v in backbone.featurize([wave]).items()}
    if rng is not None and preset.get("freq_masks") and getattr(backbone, "input_form", None) == "log-mel":
        item["input_features"] = torch.from_numpy(spec_augment(item["input_features"].numpy(), rng, preset["freq_masks"],
                                                               preset["freq_width"], preset["time_masks"], preset["time_width"]))
    return item


def collate_features(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch: each input tensor zero-padded along its last axis to the longest clip's (Whisper's
    ``frame_mask`` and wav2vec 2.0's ``attention_mask`` are then 0 past each clip's end), labels
    and indices stacked."""
    import torch

    batch: dict[str, Any] = {}
    for key in items[0]:
        if key in ("labels", "index"):
            continue
        values = [torch.as_tensor(it[key]) for it in items]
        longest = max(v.shape[-1] for v in values)
        out = values[0].new_zeros((len(values), *values[0].shape[:-1], longest))
        for i, v in enumerate(values):
            out[i, ..., : v.shape[-1]] = v
        batch[key] = out
    if "labels" in items[0]:
        batch["labels"] = torch.stack([torch.as_tensor(it["labels"]) for it in items])
    if "index" in items[0]:
        batch["index"] = torch.tensor([it["index"] for it in items], dtype=torch.long)
    return batch


@MODALITIES.register("audio")
class Audio(FileInputs, Modality):
    digest_tag = b"sha256 of each audio file\0"
    file_noun = "audio file"
    file_kind = "audio"
    refuse_other_suffixes = True
    name = "audio"
    column_guesses = AUDIO_COLUMN_GUESSES
    file_extensions = frozenset(AUDIO_EXTENSIONS)
    request_field = "audio"
    backbone_needs = ("featurize", "sampling_rate")
    augments = True
    mixes_noise = True
    seq2seq_backbones = True  # Whisper: bundled:whisper_tiny_en, bundled:whisper_base, whisper:<folder>
    # Chosen by measurement on Speech Commands V2-12 (benchmarks/audio.py, docs/audio.md): full
    # fine-tuning of Whisper tiny.en for 4 epochs reached 0.981 test accuracy against 0.932 for the
    # linear probe on its features (0.946 on Whisper base's), in about 5 minutes on two CPU cores.
    default_strategy = "full"
    train_defaults = {"epochs": 4, "batch_size": 32, "lr": 5e-5, "head_lr": 1e-3, "weight_decay": 0.01, "scheduler": "cosine",
                      "warmup_ratio": 0.1, "progressive_resize": 1.0}
    strategy_train_defaults = {
        # the probe reads the feature cache: more epochs cost seconds, and the new head alone takes a larger rate
        "linear_probe": {"epochs": 10, "head_lr": 1e-2, "warmup_ratio": 0.0},
        "lora": {"lr": 1e-3, "head_lr": 1e-3},  # adapters start as a zero update and need a larger rate than full
        "prototype": {"epochs": 1},
    }
    # the rates and length of the default full fine-tuning
    search_space = {
        "train.lr": {"log_uniform": [1e-5, 3e-4]},
        "train.head_lr": {"log_uniform": [1e-4, 1e-2]},
        "train.epochs": {"int": [2, 6]},
        "train.batch_size": {"choice": [16, 32]},
        "train.warmup_ratio": {"uniform": [0.0, 0.2]},
    }
    export_formats = ("hf", "onnx")  # hf: WhisperForAudioClassification, for pipeline("audio-classification")
    onnx_axes = {"input_features": {0: "batch", 2: "frames"}, "frame_mask": {0: "batch", 1: "frames"},  # Whisper
                 "input_values": {0: "batch"}, "attention_mask": {0: "batch"}}  # wav2vec 2.0, HuBERT, AST (fixed clip length)
    zero_config_backbone = "bundled:whisper_tiny_en"
    zero_config_reason = ("the audio default: full fine-tuning of Whisper tiny.en's encoder, 0.981 test accuracy on "
                          "Speech Commands V2-12 against 0.932 for the linear probe (docs/audio.md)")
    zero_config_writer = "Whisper tiny.en's own decoder writes the text"
    zero_config_seq2seq_example = "examples/an4.yaml trains Whisper tiny.en on AN4 speech with it to test WER 2.46% in one epoch"
    report_errors = 20  # each a playable clip with its spectrogram (about 20 kB each, inlined)
    # integrated gradients cost 32 backward passes a clip, paid at the end of every run: the 8 most
    # confident errors are explained, the others shown with a plain spectrogram
    explained_errors = 8
    input_view = "table"
    input_noun = "clip"
    explanation_note = ('<p class="note">Each clip plays in the page; its spectrogram shows integrated gradients of the '
                        "predicted (wrong) class per time-frequency patch: red pushed it up, blue down.</p>")
    card_dataset_type = "audiofolder"
    card_example = '["path/to/clip.wav"]'
    card_native_export = ' that `transformers.pipeline("audio-classification")` loads (Whisper backbones)'

    # -- finding examples -------------------------------------------------------------------------

    def claims(self, path: Path) -> bool:
        if path.is_dir():
            first = _first_media_file(path)
            return first is not None and first.suffix.lower() in AUDIO_EXTENSIONS
        return path.suffix.lower() in AUDIO_EXTENSIONS

    def find_examples(self, path: Path, found: str, text_column: str | None = None, label_column: str | list[str] = "label",
                      require_labels: bool = True, text_columns: list[str] | None = None, image_column: str | None = None,
                      options: tuple[str, str] = RECIPE_COLUMN_OPTIONS, image_root: str | Path | None = None) -> Any:
        if is_table(path):
            return _audio_table(path, image_column, label_column, require_labels, options, image_root)
        if found != self.name:
            raise self.mismatch(path, found)
        if not path.is_dir():
            raise DataError(f"{path}: one audio file is no data set; give a folder of class folders, or a table with an audio column")
        return _audio_folder(path)

    def split_folders(self, root: Path) -> tuple[str, str] | None:
        if not (root / "train").is_dir():
            return None
        for name in ("val", "valid", "validation", "test"):
            if (root / name).is_dir():
                return str(root / "train"), str(root / name)
        return None

    def check_examples(self, examples: Any, data: Any) -> Any:
        """Every clip's header read before training (about a millisecond a file), so a file that is
        empty, not audio, of a broken rate or too long stops the run before it starts, with its
        one-line reason; a file corrupt past its header fails when it is decoded, as clearly."""
        import soundfile as sf

        from ..data.audio import MIN_SAMPLE_RATE, read_audio_native

        for path in examples.inputs:
            try:
                info = sf.info(str(path))
                ok = info.frames > 0 and MIN_SAMPLE_RATE <= info.samplerate and info.frames / info.samplerate <= DEFAULT_MAX_SECONDS
            except (sf.LibsndfileError, RuntimeError, OSError):
                ok = False
            if not ok:
                read_audio_native(path)  # raises the reason, naming the file
        return examples

    # -- preprocessing ------------------------------------------------------------------------------

    def run_preprocessing(self, backbone: Any, data: Any) -> dict[str, Any]:
        preprocessing = backbone.preprocessing()  # build_dataset(train=True) adds clip_seconds, from the data
        if data.augment == "noise":
            if not data.noise_dir:
                raise DataError("data.augment: 'noise' mixes in recordings from data.noise_dir; set it to a folder of audio files")
            preprocessing["noise_dir"] = str(data.noise_dir)  # training only: what the run mixed in (predict adds none)
        elif data.noise_dir:
            raise DataError(f"data.noise_dir: set, but data.augment is {data.augment!r}; the noise is mixed in by augment 'noise'")
        return preprocessing

    def build_dataset(self, examples: Any, label_ids: Any, backbone: Any, preprocessing: dict, train: bool, augment: str,
                      max_length: int, task: Any = None, crop_scale: float = 0.25) -> Any:
        """Training (``train=True``) sets ``preprocessing["clip_seconds"]`` from its clips when the
        preprocessing has none yet; the run saves that preprocessing, so predict fits inputs alike."""
        if getattr(task, "whole_inputs", False):  # a transcript covers the whole clip: each at its own length
            preprocessing["clip_seconds"] = None
            return AudioDataset(examples.inputs, label_ids, backbone, 0, augment if train else "none")
        if "clip_seconds" not in preprocessing:
            preprocessing["clip_seconds"] = clip_seconds_of(examples.inputs, float(preprocessing.get("max_seconds", 30.0)))
        clip = int(round(float(preprocessing["clip_seconds"]) * int(backbone.sampling_rate)))
        return AudioDataset(examples.inputs, label_ids, backbone, clip, augment if train else "none",
                            noise_dir=preprocessing.get("noise_dir") if train else None)

    def encode(self, predictor: Any, items: Sequence[Any]) -> dict[str, Any]:
        """``items``: ``(samples, sample_rate)`` pairs (:meth:`load_item`, :meth:`decode_request`)."""
        from ..data.audio import resample

        backbone = predictor.model.backbone
        rate = int(backbone.sampling_rate)
        seconds = predictor.preprocessing.get("clip_seconds", 1.0)
        clip = 0 if seconds is None else int(round(float(seconds) * rate))  # None: each clip whole (seq2seq)
        waves = [resample(*(self.load_item(item) if isinstance(item, (str, Path)) else item), rate) for item in items]
        return collate_features([clip_features(backbone, w, clip) for w in waves])

    def windows(self, preprocessing: dict[str, Any], examples: Any) -> tuple[Any, np.ndarray, list[tuple[float, float]]] | None:
        """Predict cuts a file longer than the run's clip into windows of the clip's length, every
        half clip (the last one ends at the file's end), and its answer is the mean of the windows'
        scores. Returns ``(windows as Examples, the input each belongs to, (start, end) seconds of
        each)``, or None when no input is longer than the clip (one pass, as before). Durations
        come from the headers; nothing is decoded here."""
        import soundfile as sf

        from ..data.readers import Examples

        rate = int(preprocessing.get("sampling_rate", 16_000))
        clip = int(round(float(preprocessing.get("clip_seconds", 1.0)) * rate))
        hop = max(1, clip // 2)
        parts: list[Any] = []
        owner: list[int] = []
        spans: list[tuple[float, float]] = []
        long = False
        for i, path in enumerate(examples.inputs):
            try:
                info = sf.info(str(path))
                samples = int(info.frames * rate / info.samplerate) if info.samplerate > 0 else 0
            except (sf.LibsndfileError, RuntimeError, OSError):
                samples = 0  # unreadable: read whole below, failing with its own one-line message
            if samples <= clip:
                parts.append(path)
                owner.append(i)
                spans.append((0.0, samples / rate))
                continue
            long = True
            starts = list(range(0, samples - clip, hop)) + [samples - clip]
            for start in starts:
                parts.append((str(path), start, clip))
                owner.append(i)
                spans.append((start / rate, (start + clip) / rate))
        if not long:
            return None
        return Examples(parts, None, examples.source, self.name), np.asarray(owner), spans

    def long_inputs(self, inputs: Sequence[Any], max_seconds: float) -> dict[int, list[Any]]:
        """Inputs longer than ``max_seconds``, cut into consecutive windows of ``max_seconds`` (the
        last one shorter), each ``(samples, sample_rate)``. An input is a file (its length from its
        header) or a clip already in memory, ``(samples, sample_rate)`` (a service upload)."""
        import soundfile as sf

        from ..data.audio import windows

        out: dict[int, list[Any]] = {}
        if max_seconds <= 0:
            return out
        for i, item in enumerate(inputs):
            if isinstance(item, tuple):
                wave, rate = item
                if not (rate > 0 and len(wave) / rate > max_seconds):
                    continue
            else:
                try:
                    info = sf.info(str(item))
                except (sf.LibsndfileError, RuntimeError, OSError):
                    continue  # an unreadable file fails with its own message when it is read
                if not (info.samplerate > 0 and info.frames / info.samplerate > max_seconds):
                    continue
                wave, rate = self.load_item(item)
            out[i] = [(piece, rate) for _, piece in windows(wave, int(max_seconds * rate))]
        return out

    def load_item(self, item: Any) -> Any:
        """A file -> ``(samples, sample_rate)``, float32 mono at the file's own rate."""
        from ..data.audio import read_audio_native

        return read_audio_native(item)

    # -- checks ---------------------------------------------------------------------------------------

    def decode_request(self, where: str, value: Any) -> Any:
        """A base64 string of an audio file's bytes (JSON), or ``(name, bytes)`` (a multipart
        upload) -> ``(samples, sample_rate)``; a bad file is a DataError naming ``where``."""
        if isinstance(value, tuple):
            where, data = value
        elif isinstance(value, str):
            try:
                data = base64.b64decode(value.split(",", 1)[1] if value.startswith("data:") else value, validate=True)
            except (binascii.Error, ValueError):
                raise DataError(f"{where}: not base64") from None
        else:
            raise DataError(f"{where}: expected a base64 string of an audio file, got {type(value).__name__}")
        return decode_audio_bytes(where, data)

    # -- showing an input -----------------------------------------------------------------------------

    def explanation(self, backbone: Any) -> dict[str, Any]:
        """Integrated gradients over time-frequency patches of the log-mel features (8 mel bins x
        10 frames: 0.1 s of a 10-band slice of the spectrum); a waveform backbone has no spectrogram."""
        if getattr(backbone, "input_form", None) != "log-mel":
            return {"method": None, "reason": f"no time-frequency explanation for a {backbone.kind} audio backbone, whose "
                                              "input is not a log-mel spectrogram"}
        return {"method": "mel-integrated-gradients", "patch": [8, 10]}

    def report_cell(self, value: Any, explanation: str | None) -> str | None:
        """The clip playable (a small WAV inlined), its name, and its explanation's spectrogram, or
        a plain spectrogram when it has none; a clip no longer there is said so."""
        import base64
        from html import escape

        from ..data.audio import audio_player, spectrogram_png, stft_spectrogram

        name = escape(Path(str(value)).name)
        try:
            wave, rate = self.load_item(str(value))
        except DataError as exc:
            return f'{name}<br><span class="note">({escape(str(exc).replace(str(value), "clip"))})</span>'
        if explanation is None:
            picture = spectrogram_png(stft_spectrogram(wave, rate, n_fft=max(64, rate // 40), hop=max(16, rate // 100)),
                                      0.01, ylabel="frequency bin", width=3.2)
            explanation = "data:image/png;base64," + base64.b64encode(picture).decode("ascii")
        return (f'<div title="{escape(str(value))}">{name}</div>{audio_player(wave, rate, title=str(value))}'
                f'<br><img src="{explanation}" alt="spectrogram of {name}" style="max-width:320px">')

    def card_input(self, recipe: Any) -> str:
        augment = recipe.data.augment
        trained = {"none": "no augmentation", "light": "time shifts and gain changes",
                   "strong": "time shifts, gain changes and SpecAugment masks",
                   "noise": f"time shifts, gain changes and background noise from `{recipe.data.noise_dir}`"}.get(augment, augment)
        return ("mono audio resampled to the backbone's rate, cropped or padded to the run's clip length "
                "(`clip_seconds` in `preprocessing.json`), then the backbone's feature extractor's inputs (Whisper: log-mel "
                "features on the clip's own frames, not a 30-second window); predict cuts a longer file into windows of "
                f"that length every half clip and averages their scores. Trained with {trained}")

    def card_head(self, pooling: str) -> str:
        return "mean-pooled encoder states over the clip's own frames"

    def export_samples(self, saved: list[Any], schema: InputSchema, limit: int) -> list[Any] | None:
        inputs = [p for p in saved if Path(p).is_file()][:limit]
        return inputs if len(inputs) >= 3 else None

    def onnx_inputs(self, predictor: Any) -> str:
        form = getattr(predictor.model.backbone, "input_form", "log-mel")
        if form != "log-mel":  # wav2vec 2.0, HuBERT (samples), AST (filter-bank frames)
            return ("the feature extractor's outputs in preprocessor/ for clips fitted to clip_seconds: input_values float32 "
                    + ("(N, samples) and attention_mask (N, samples) int64" if form == "waveform" else "(N, frames, mel bins)"))
        return ("input_features (N, n_mels, T) float32, Whisper log-mel features of clips fitted to clip_seconds, and "
                "frame_mask (N, T) int64, 1 on each clip's frames (preprocessing.json)")


def decode_audio_bytes(where: str, data: bytes) -> tuple[np.ndarray, int]:
    """An audio file's bytes -> ``(samples, sample_rate)``, checked as files are (one-line errors
    naming ``where``). libsndfile reads from a path, so the bytes go through a private temporary
    file, removed at once; its suffix follows the bytes' own signature."""
    from ..data.audio import read_audio_native

    if not data:
        raise DataError(f"{where}: empty file")
    suffix = {b"RIFF": ".wav", b"fLaC": ".flac", b"OggS": ".ogg"}.get(data[:4], ".mp3")
    handle, name = tempfile.mkstemp(prefix="finetunekit-audio-", suffix=suffix)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        return read_audio_native(name)
    except AudioError as exc:
        raise DataError(str(exc).replace(name, where)) from None
    finally:
        os.unlink(name)


def _audio_table(path: Path, column: str | None, label_column: Any, require_labels: bool, options: tuple[str, str],
                 root: str | Path | None) -> Examples:
    """A table with one audio file per row: the file column is ``data.image_column`` if set, else
    the first of :data:`AUDIO_COLUMN_GUESSES` it has; paths relative to the table's folder (or
    ``data.image_root``; the working directory for an in-memory table, whose clips given as bytes
    or arrays ``finetunekit.data.memory`` has written to files)."""
    from ..data.readers import _blank, _check_label_column, _columns, _label, _table

    in_memory = hasattr(path, "table_rows")  # a DataFrame's relative paths: relative to the working directory
    base = Path(root) if root is not None else Path.cwd() if in_memory else path.parent
    rows, columns = _table(path)
    if column is None:
        column = next((c for c in AUDIO_COLUMN_GUESSES if c in columns), None)
        if column is None:
            raise DataError(f"{path}: no audio file column (tried {', '.join(AUDIO_COLUMN_GUESSES)}; columns: "
                            f"{', '.join(columns)}); set data.image_column to the column of audio files")
    if column not in columns:
        raise DataError(f"{path}: no audio file column {column!r} (columns: {', '.join(columns)})")
    has_labels = _check_label_column(path, columns, label_column, require_labels, options)
    inputs: list[Any] = []
    labels: list[Any] = []
    places: list[str] = []
    for where, row in rows:
        places.append(where)
        name = row.get(column)
        if _blank(name):
            raise DataError(f"{where}: empty audio cell in column {column!r} (expected a path, bytes or {{'array', 'sampling_rate'}})"
                            if in_memory else f"{where}: empty audio path in column {column!r}")
        file = base / str(name).strip()
        if not file.is_file():
            raise DataError(f"{where}: audio file not found: {file} (column {column!r}; paths are relative to {base})")
        if file.suffix.lower() not in AUDIO_EXTENSIONS:
            raise DataError(f"{where}: {file} is not an audio file ({', '.join(AUDIO_EXTENSIONS)})")
        inputs.append(str(file))
        if has_labels:
            labels.append(_label(row, label_column, where))
    return Examples(inputs, labels if has_labels else None, str(path), "audio", places=places, label_columns=_columns(label_column))

"""Reading audio files and augmenting waveforms, for backbones that take sound.

Files are decoded with soundfile (libsndfile: WAV, FLAC, OGG Vorbis/Opus and, with libsndfile 1.1
or newer, MP3), mixed down to mono and resampled with soxr to the backbone's rate. Every way a
file can be unusable is a one-line :class:`AudioError` naming it: empty, text, truncated or
corrupt, an unsupported codec, a sample rate below :data:`MIN_SAMPLE_RATE`, non-finite samples,
or longer than ``max_seconds``: such a file is refused (never silently cropped), since cutting a
recording the user meant to be whole loses data without saying so; :func:`windows` cuts a long
file that is meant to be cut. Clip lengths for training are set by :func:`fit_length`.

Augmentations are functions of a waveform (or log-mel features) and a ``numpy.random.Generator``,
so a seed reproduces them: :func:`time_shift`, :func:`gain`, :func:`mix_noise`, :func:`spec_augment`.

Example::

    from finetunekit.data.audio import read_audio, fit_length, gain
    wave = read_audio("yes/0a7c2a8d_nohash_0.ogg", sampling_rate=16_000)   # float32, mono
    clip = fit_length(wave, 16_000)                                       # exactly 1 s
    louder = gain(clip, np.random.default_rng(0), min_db=-6, max_db=6)
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..core.errors import DataError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3")
# Below this no speech survives (telephone audio is 8 kHz); a rate this low is a broken header.
MIN_SAMPLE_RATE = 4_000
# Longer files are refused: a whole file is decoded into memory (10 minutes of 48 kHz stereo is
# 230 MB as float32), and a clip folder holding hours is a mistake worth hearing about.
DEFAULT_MAX_SECONDS = 600.0
# WAV format tags libsndfile decodes: PCM, ADPCM (MS, IMA), IEEE float, A-law, mu-law, GSM 6.10,
# MPEG (libsndfile >= 1.1), WAVE_FORMAT_EXTENSIBLE
_WAV_CODECS = {0x0001, 0x0002, 0x0003, 0x0006, 0x0007, 0x0011, 0x0031, 0x0050, 0x0055, 0xFFFE}


class AudioError(DataError):
    """An audio file cannot be used; the message names the file."""


def _soundfile() -> Any:
    try:
        import soundfile
    except (ImportError, OSError):
        raise AudioError("reading audio needs the package 'soundfile' (pip install 'finetunekit[speech]')") from None
    return soundfile


def supported_extensions() -> tuple[str, ...]:
    """The extensions :func:`read_audio` decodes here (MP3 only where libsndfile has it)."""
    sf = _soundfile()
    return tuple(e for e in AUDIO_EXTENSIONS if e != ".mp3" or "MP3" in sf.available_formats())


# -- reading -------------------------------------------------------------------------------------


def read_audio(path: str | Path, sampling_rate: int, max_seconds: float = DEFAULT_MAX_SECONDS) -> np.ndarray:
    """The file's samples as float32 mono at ``sampling_rate`` (channels averaged, soxr resampling)."""
    wave, rate = read_audio_native(path, max_seconds)
    return resample(wave, rate, sampling_rate)


def read_audio_native(path: str | Path, max_seconds: float = DEFAULT_MAX_SECONDS) -> tuple[np.ndarray, int]:
    """``(samples, sample_rate)``: float32 mono at the file's own rate, checked (see the module doc)."""
    sf = _soundfile()
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise AudioError(f"{path}: audio file not found") from None
    except OSError as exc:
        raise AudioError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if size == 0:
        raise AudioError(f"{path}: empty file (0 bytes), not audio")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(f"{path}: {_diagnose(path, exc)}") from None
    if info.samplerate < MIN_SAMPLE_RATE:
        raise AudioError(f"{path}: sample rate {info.samplerate} Hz is below {MIN_SAMPLE_RATE} Hz; the header is broken or the file is not speech audio")
    seconds = info.frames / info.samplerate
    if seconds > max_seconds:
        raise AudioError(
            f"{path}: refused, {_clock(seconds)} long, over the {_clock(max_seconds)} limit "
            "(cut it into clips, or raise the limit: max_seconds)"
        )
    _check_wav_length(path)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(f"{path}: corrupt audio, decoding failed ({_first_line(exc)})") from None
    # libsndfile's frame count comes from the header; a decoder that stops early met a cut file
    if info.frames > 0 and data.shape[0] < info.frames * 0.99:
        raise AudioError(f"{path}: truncated audio, {data.shape[0]} of the {info.frames} samples its header announces")
    if data.shape[0] == 0:
        raise AudioError(f"{path}: holds no samples")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).any(axis=1).sum())
        first = int(np.argmax(~np.isfinite(data).all(axis=1)))
        what = "1 sample is" if bad == 1 else f"{bad} samples are"
        raise AudioError(f"{path}: {what} NaN or infinite (the first at {first / rate:.3f} s)")
    return np.ascontiguousarray(data.mean(axis=1, dtype=np.float32)), int(rate)


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``wave`` from ``rate`` to ``target`` Hz with soxr (its high-quality setting), float32."""
    if rate == target:
        return wave.astype(np.float32, copy=False)
    try:
        import soxr
    except ImportError:
        raise AudioError("resampling audio needs the package 'soxr' (pip install 'finetunekit[speech]')") from None
    return soxr.resample(wave, rate, target, quality="HQ").astype(np.float32, copy=False)


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _diagnose(path: Path, exc: BaseException) -> str:
    """Why libsndfile could not open ``path``, in the user's terms."""
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if _looks_like_text(head):
        return f"a text file, not audio (it starts {head[:40].decode('utf-8', 'replace').strip()!r})"
    if head[:4] in (b"RIFF", b"RIFX") and head[8:12] == b"WAVE":
        tag = _wav_format_tag(head)
        if tag is not None and tag not in _WAV_CODECS:
            return f"unsupported codec: WAV format tag 0x{tag:04x}, which libsndfile cannot decode (convert it to PCM WAV or FLAC)"
        return f"corrupt WAV file ({_libsndfile_reason(exc)})"
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska, WebM
        return ("unsupported container: WebM/Matroska (what browsers' MediaRecorder writes), which libsndfile cannot read; "
                "send WAV, FLAC, OGG (Vorbis or Opus) or MP3")
    if head[4:8] == b"ftyp":
        return "unsupported container: MP4/M4A (AAC), which libsndfile cannot read; send WAV, FLAC, OGG (Vorbis or Opus) or MP3"
    if head[:4] == b"OggS" and b"Speex" in head:
        return "unsupported codec: OGG Speex (libsndfile decodes OGG Vorbis and Opus)"
    return f"corrupt or unsupported audio ({_libsndfile_reason(exc)})"


def _libsndfile_reason(exc: BaseException) -> str:
    text = _first_line(exc)
    # "Error opening '/long/path': Format not recognised." -> "libsndfile: Format not recognised."
    return "libsndfile: " + (text.split("': ", 1)[1] if "': " in text else text)


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\0" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


def _wav_chunks(head: bytes):
    """(chunk id, declared size, data offset) of a RIFF WAVE file's chunks found in ``head``."""
    offset = 12
    while offset + 8 <= len(head):
        cid, size = head[offset : offset + 4], struct.unpack("<I", head[offset + 4 : offset + 8])[0]
        yield cid, size, offset + 8
        offset += 8 + size + (size & 1)


def _wav_format_tag(head: bytes) -> int | None:
    for cid, _size, start in _wav_chunks(head):
        if cid == b"fmt " and start + 2 <= len(head):
            return struct.unpack("<H", head[start : start + 2])[0]
    return None


def _check_wav_length(path: Path) -> None:
    """libsndfile reads a cut WAV quietly, up to where it ends; the data chunk's size says how long it was."""
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    total = path.stat().st_size
    for cid, size, start in _wav_chunks(head):
        if cid == b"data":
            # 0 and 0xFFFFFFFF are written by recorders that stream and never fix the header
            if size not in (0, 0xFFFFFFFF) and start + size > total:
                raise AudioError(f"{path}: truncated WAV, its data chunk announces {size} bytes and {total - start} follow")
            return


# -- lengths -------------------------------------------------------------------------------------


def fit_length(
    wave: np.ndarray, length: int, where: Literal["start", "center", "random"] = "center", rng: np.random.Generator | None = None
) -> np.ndarray:
    """Exactly ``length`` samples: a longer clip is cropped (its centre, its start, or a random
    window for training), a shorter one padded with silence at the end."""
    if len(wave) >= length:
        if where == "start":
            start = 0
        elif where == "center":
            start = (len(wave) - length) // 2
        else:
            if rng is None:
                raise ValueError("fit_length(where='random') needs rng")
            start = int(rng.integers(0, len(wave) - length + 1))
        return wave[start : start + length]
    return np.pad(wave, (0, length - len(wave)))


def windows(wave: np.ndarray, length: int, hop: int | None = None) -> list[tuple[int, np.ndarray]]:
    """``(start sample, window)`` pairs covering the whole of ``wave``: windows of ``length``
    samples every ``hop`` (default ``length``: no overlap); the last one may be shorter.

    >>> [(s, len(w)) for s, w in windows(np.zeros(25), 10)]
    [(0, 10), (10, 10), (20, 5)]
    """
    hop = hop or length
    if length <= 0 or hop <= 0:
        raise ValueError("window length and hop must be positive")
    out = []
    start = 0
    while True:
        out.append((start, wave[start : start + length]))
        if start + length >= len(wave):
            return out
        start += hop


# -- augmentation --------------------------------------------------------------------------------


def time_shift(wave: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    """Shift by up to ``max_shift`` samples either way, filling with silence (no wrap-around: a
    word moved past the end must not reappear at the start)."""
    shift = int(np.clip(rng.integers(-max_shift, max_shift + 1), -len(wave), len(wave)))
    out = np.zeros_like(wave)
    if shift >= 0:
        out[shift:] = wave[: len(wave) - shift]
    else:
        out[:shift] = wave[-shift:]
    return out


def gain(wave: np.ndarray, rng: np.random.Generator, min_db: float = -6.0, max_db: float = 6.0) -> np.ndarray:
    """Scale by a random gain in decibels, uniform in ``[min_db, max_db]``."""
    db = rng.uniform(min_db, max_db)
    return (wave * np.float32(10.0 ** (db / 20.0))).astype(wave.dtype, copy=False)


def mix_noise(
    wave: np.ndarray, noise: np.ndarray, rng: np.random.Generator, min_snr_db: float = 5.0, max_snr_db: float = 20.0
) -> np.ndarray:
    """Add a random stretch of ``noise`` (repeated if shorter than the clip) at a signal-to-noise
    ratio drawn uniformly in ``[min_snr_db, max_snr_db]``; a silent clip gets the noise at its
    own level (no signal to compare with)."""
    if len(noise) == 0:
        raise ValueError("mix_noise: empty noise")
    if len(noise) < len(wave):
        noise = np.tile(noise, int(np.ceil(len(wave) / len(noise))))
    start = int(rng.integers(0, len(noise) - len(wave) + 1))
    piece = noise[start : start + len(wave)].astype(np.float32)
    signal_power, noise_power = float(np.mean(wave**2)), float(np.mean(piece**2))
    if noise_power == 0.0:
        return wave.copy()
    if signal_power == 0.0:
        return wave + piece
    snr = rng.uniform(min_snr_db, max_snr_db)
    scale = np.sqrt(signal_power / (noise_power * 10.0 ** (snr / 10.0)))
    return (wave + scale * piece).astype(np.float32)


def read_noise_folder(folder: str | Path, sampling_rate: int, max_seconds: float = DEFAULT_MAX_SECONDS) -> list[np.ndarray]:
    """Every audio file under ``folder`` (recursively), read for :func:`mix_noise`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AudioError(f"{folder}: noise folder not found")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise AudioError(f"{folder}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) for background noise")
    return [read_audio(p, sampling_rate, max_seconds) for p in files]


def spec_augment(
    features: np.ndarray,
    rng: np.random.Generator,
    freq_masks: int = 2,
    freq_width: int = 15,
    time_masks: int = 2,
    time_width: int = 20,
    valid_frames: int | None = None,
) -> np.ndarray:
    """SpecAugment's masks (Park et al., 2019) on log-mel features ``(n_mels, frames)``: bands of up
    to ``freq_width`` mel bins and stretches of up to ``time_width`` frames (never more than a fifth
    of the clip's ``valid_frames``) set to the clip's mean. Returns a copy."""
    out = np.array(features, dtype=np.float32, copy=True)
    n_mels, frames = out.shape
    frames_valid = frames if valid_frames is None else min(valid_frames, frames)
    fill = float(out[:, :frames_valid].mean())
    for _ in range(freq_masks):
        width = int(rng.integers(0, min(freq_width, n_mels) + 1))
        start = int(rng.integers(0, n_mels - width + 1))
        out[start : start + width, :] = fill
    limit = min(time_width, frames_valid // 5)
    for _ in range(time_masks):
        width = int(rng.integers(0, limit + 1))
        start = int(rng.integers(0, frames_valid - width + 1))
        out[:, start : start + width] = fill
    return out


# -- listening and looking ------------------------------------------------------------------------


def wav_bytes(wave: np.ndarray, sampling_rate: int, rate: int = 8_000, max_seconds: float = 10.0) -> bytes:
    """A small 16-bit PCM WAV of ``wave`` (resampled to ``rate``, at most ``max_seconds`` from its
    start), for a page to play: a 1-second clip is 16 kB at 8 kHz, which every browser plays."""
    import io

    sf = _soundfile()
    wave = resample(np.asarray(wave, dtype=np.float32)[: int(max_seconds * sampling_rate)], sampling_rate, rate)
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(wave, -1.0, 1.0), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def audio_player(wave: np.ndarray, sampling_rate: int, title: str = "") -> str:
    """An HTML ``<audio>`` element with the clip inlined (a base64 WAV data URI: no file beside the page)."""
    import base64
    from html import escape

    data = base64.b64encode(wav_bytes(wave, sampling_rate)).decode("ascii")
    return (f'<audio controls preload="none" title="{escape(title)}" style="width:100%;max-width:260px" '
            f'src="data:audio/wav;base64,{data}"></audio>')


def spectrogram_png(features: np.ndarray, frame_seconds: float, attributions: np.ndarray | None = None,
                    patch: tuple[int, int] = (1, 1), title: str = "", width: float = 4.0, ylabel: str = "mel band") -> bytes:
    """A PNG of log-mel ``features`` ``(n_mels, frames)`` (time across, low bands at the bottom);
    with ``attributions`` ``(bands, steps)`` in [-1, 1], one per ``patch`` of (mel bins, frames),
    drawn over it: red where a patch pushed the explained output up, blue where it pushed it down,
    stronger for a larger share of the largest attribution."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    n_mels, frames = features.shape
    extent = (0.0, frames * frame_seconds, 0.0, float(n_mels))
    fig = Figure(figsize=(width, 2.0), dpi=100)
    ax = fig.add_axes((0.12, 0.22, 0.86, 0.66 if title else 0.74))
    ax.imshow(features, origin="lower", aspect="auto", cmap="gray_r" if attributions is not None else "magma",
              extent=extent, interpolation="nearest")
    if attributions is not None:
        a = np.asarray(attributions, dtype=np.float32)
        cells = np.kron(a, np.ones(patch, dtype=np.float32))[:n_mels, :frames]
        rgba = np.zeros((*cells.shape, 4), dtype=np.float32)
        rgba[..., 0] = cells > 0
        rgba[..., 2] = cells < 0
        rgba[..., 3] = 0.7 * np.clip(np.abs(cells), 0, 1)
        ax.imshow(rgba, origin="lower", aspect="auto", extent=extent, interpolation="nearest")
    ax.set_xlabel("time (s)", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    if title:
        ax.set_title(title, fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def stft_spectrogram(wave: np.ndarray, sampling_rate: int, n_fft: int = 400, hop: int = 160) -> np.ndarray:
    """Log power spectrogram ``(n_fft // 2 + 1, frames)`` of ``wave`` (Hann window, floored 8
    decades under its loudest), for showing a clip when no model's features are at hand."""
    wave = np.asarray(wave, dtype=np.float32)
    if len(wave) < n_fft:
        wave = np.pad(wave, (0, n_fft - len(wave)))
    count = 1 + (len(wave) - n_fft) // hop
    frames = np.lib.stride_tricks.as_strided(wave, (count, n_fft), (wave.strides[0] * hop, wave.strides[0]))
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft).astype(np.float32), axis=1)) ** 2
    log = np.log10(np.maximum(power, 1e-10)).T
    return np.maximum(log, log.max() - 8.0).astype(np.float32)

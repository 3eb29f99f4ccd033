"""Audio reading (every format, resampling, channels), its one-line errors on files made here, the
length policy and the seeded augmentations."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

sf = pytest.importorskip("soundfile", reason="audio tests need soundfile (pip install 'finetunekit[speech]')")
pytest.importorskip("soxr", reason="audio tests need soxr (pip install 'finetunekit[speech]')")

from finetunekit.core.errors import DataError  # noqa: E402
from finetunekit.data.audio import (  # noqa: E402
    AudioError,
    fit_length,
    gain,
    mix_noise,
    read_audio,
    read_audio_native,
    read_noise_folder,
    spec_augment,
    supported_extensions,
    time_shift,
    windows,
)

RATE = 16_000


def tone(seconds: float = 0.5, rate: int = RATE, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _error(path: Path, match: str) -> str:
    with pytest.raises(AudioError, match=match) as info:
        read_audio(path, RATE)
    message = str(info.value)
    assert str(path) in message and "\n" not in message and isinstance(info.value, DataError)
    return message


# -- formats -------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext, atol", [("wav", 1e-4), ("flac", 1e-4), ("ogg", 0.05), ("mp3", 0.05)])
def test_formats_read_back(tmp_path, ext, atol):
    if f".{ext}" not in supported_extensions():
        pytest.skip(f"this libsndfile ({sf.__libsndfile_version__}) has no {ext}")
    wave = tone()
    path = tmp_path / f"a.{ext}"
    sf.write(path, wave, RATE)
    got = read_audio(path, RATE)
    assert got.dtype == np.float32 and got.ndim == 1
    if ext == "mp3":  # the encoder adds a delay of its own: compare levels, not samples
        assert abs(len(got) - len(wave)) < 2000 and abs(np.sqrt(np.mean(got**2)) - np.sqrt(np.mean(wave**2))) < atol
    else:
        assert len(got) == len(wave)
        np.testing.assert_allclose(got, wave, atol=atol)


def test_mp3_is_supported_by_this_libsndfile():
    # libsndfile reads MP3 from version 1.1; the soundfile wheels bundle 1.2
    assert ".mp3" in supported_extensions(), sf.__libsndfile_version__


def test_stereo_is_averaged_and_rates_resampled(tmp_path):
    left, right = tone(0.5, 44_100, 440.0), tone(0.5, 44_100, 440.0) * 0.5
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], 1), 44_100)
    native, rate = read_audio_native(path)
    assert rate == 44_100
    np.testing.assert_allclose(native, (left + right) / 2, atol=1e-4)
    resampled = read_audio(path, RATE)
    assert len(resampled) == RATE // 2
    # a 440 Hz tone stays one: the spectrum's peak is at 440 Hz after resampling
    spectrum = np.abs(np.fft.rfft(resampled))
    assert abs(np.argmax(spectrum) * RATE / len(resampled) - 440) < 5


# -- errors --------------------------------------------------------------------------------------


def test_empty_file(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    _error(tmp_path / "empty.wav", r"empty file \(0 bytes\)")


def test_text_file_named_wav(tmp_path):
    (tmp_path / "notes.wav").write_text("these are my notes, not a recording\n")
    _error(tmp_path / "notes.wav", r"a text file, not audio \(it starts 'these are")


def test_missing_file(tmp_path):
    _error(tmp_path / "nowhere.wav", "audio file not found")


@pytest.mark.parametrize("ext, match", [("wav", "truncated WAV, its data chunk announces"), ("flac", "corrupt|truncated"), ("ogg", "corrupt|truncated")])
def test_truncated_files(tmp_path, ext, match):
    full = tmp_path / f"full.{ext}"
    sf.write(full, tone(1.0), RATE)
    cut = tmp_path / f"cut.{ext}"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    _error(cut, match)


def test_corrupt_bytes(tmp_path):
    path = tmp_path / "noise.ogg"
    sf.write(path, tone(1.0), RATE)
    data = bytearray(path.read_bytes())
    data[200:600] = np.random.default_rng(0).integers(0, 256, 400, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    _error(path, "corrupt")


def test_unsupported_codec(tmp_path):
    # a WAV whose format chunk names a codec libsndfile has no decoder for (0x7777)
    pcm = (tone(0.1) * 32767).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHHH", 0x7777, 1, RATE, RATE * 2, 2, 16, 0)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(pcm)) + pcm
    path = tmp_path / "odd.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    _error(path, "unsupported codec: WAV format tag 0x7777")


def test_one_hertz_sample_rate(tmp_path):
    path = tmp_path / "slow.wav"
    sf.write(path, tone(0.01), 1)
    _error(path, "sample rate 1 Hz is below 4000 Hz")


def test_nan_and_infinite_samples(tmp_path):
    wave = tone(0.5)
    wave[4000], wave[6000] = np.nan, np.inf
    path = tmp_path / "nan.wav"
    sf.write(path, wave, RATE, subtype="FLOAT")
    _error(path, r"2 samples are NaN or infinite \(the first at 0.250 s\)")


def test_a_three_hour_file_is_refused(tmp_path):
    # 3 hours at 4 kHz, 8-bit: 43 MB of silence written in blocks
    path = tmp_path / "long.wav"
    with sf.SoundFile(path, "w", samplerate=4000, channels=1, subtype="PCM_U8") as out:
        block = np.zeros(4000 * 600, dtype=np.float32)
        for _ in range(18):
            out.write(block)
    message = _error(path, r"refused, 3:00:00 long, over the 0:10:00 limit")
    assert "max_seconds" in message
    short = tmp_path / "two_seconds.wav"
    sf.write(short, tone(2.0), RATE)
    with pytest.raises(AudioError, match="refused, 0:00:02 long, over the 0:00:01 limit"):
        read_audio(short, RATE, max_seconds=1)
    assert len(read_audio(short, RATE, max_seconds=3)) == 2 * RATE


# -- lengths -------------------------------------------------------------------------------------


def test_fit_length_crops_and_pads():
    wave = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(fit_length(wave, 4, "start"), [0, 1, 2, 3])
    np.testing.assert_array_equal(fit_length(wave, 4, "center"), [3, 4, 5, 6])
    np.testing.assert_array_equal(fit_length(wave, 12), [*range(10), 0, 0])
    crops = {fit_length(wave, 4, "random", np.random.default_rng(s))[0] for s in range(20)}
    assert len(crops) > 1 and crops <= set(range(7))
    a, b = (fit_length(wave, 4, "random", np.random.default_rng(3)) for _ in range(2))
    np.testing.assert_array_equal(a, b)


def test_windows_cover_the_whole_file():
    wave = np.arange(25, dtype=np.float32)
    assert [(s, len(w)) for s, w in windows(wave, 10)] == [(0, 10), (10, 10), (20, 5)]
    assert [s for s, _ in windows(wave, 10, hop=5)] == [0, 5, 10, 15]
    np.testing.assert_array_equal(np.concatenate([w for _, w in windows(wave, 10)]), wave)


# -- augmentation --------------------------------------------------------------------------------


def test_augmentations_are_seeded_and_do_what_they_say():
    wave = tone(0.5)
    for fn in (lambda r: time_shift(wave, r, 800), lambda r: gain(wave, r), lambda r: mix_noise(wave, tone(0.2, freq=3000), r)):
        np.testing.assert_array_equal(fn(np.random.default_rng(7)), fn(np.random.default_rng(7)))
        assert not np.array_equal(fn(np.random.default_rng(7)), fn(np.random.default_rng(8)))
    shifted = time_shift(wave, np.random.default_rng(0), 800)
    assert len(shifted) == len(wave)
    ratio = np.sqrt(np.mean(gain(wave, np.random.default_rng(0), 6, 6) ** 2) / np.mean(wave**2))
    assert abs(20 * np.log10(ratio) - 6) < 1e-3


def test_noise_is_mixed_at_the_drawn_snr():
    wave, noise = tone(0.5), np.random.default_rng(0).standard_normal(3000).astype(np.float32)
    mixed = mix_noise(wave, noise, np.random.default_rng(1), min_snr_db=10, max_snr_db=10)
    residual = mixed - wave
    snr = 10 * np.log10(np.mean(wave**2) / np.mean(residual**2))
    assert abs(snr - 10) < 1e-3


def test_noise_folder(tmp_path):
    (tmp_path / "noise").mkdir()
    sf.write(tmp_path / "noise" / "hum.flac", tone(0.3, 8000, 60), 8000)
    bank = read_noise_folder(tmp_path / "noise", RATE)
    assert len(bank) == 1 and len(bank[0]) == int(0.3 * RATE)
    (tmp_path / "quiet").mkdir()
    with pytest.raises(AudioError, match="quiet: no audio files"):
        read_noise_folder(tmp_path / "quiet", RATE)


def test_spec_augment_masks_bands_and_stretches():
    features = np.random.default_rng(0).standard_normal((80, 100)).astype(np.float32)
    out = spec_augment(features, np.random.default_rng(1), freq_masks=1, freq_width=10, time_masks=1, time_width=10)
    np.testing.assert_array_equal(out, spec_augment(features, np.random.default_rng(1), freq_masks=1, freq_width=10, time_masks=1, time_width=10))
    changed = out != features
    rows, cols = changed.all(axis=1).sum(), changed.all(axis=0).sum()
    assert rows <= 10 and cols <= 10 and changed.any()
    assert not np.shares_memory(out, features)
    # time masks stay inside a clip's own frames
    padded = spec_augment(features, np.random.default_rng(2), freq_masks=0, time_masks=3, time_width=40, valid_frames=50)
    np.testing.assert_array_equal(padded[:, 50:], features[:, 50:])

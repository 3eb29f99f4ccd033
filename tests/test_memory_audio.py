"""Audio columns in memory (a DataFrame or a datasets.Dataset with an ``Audio`` feature): paths,
encoded bytes, ``{"array", "sampling_rate"}`` clips and ``{"path", "bytes"}`` dicts become files
the audio modality reads, bad cells are one-line errors naming the column and the row, and a run
from a DataFrame matches the run from the equivalent folder."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest

from finetunekit import Recipe
from finetunekit.core.errors import DataError
from finetunekit.data.memory import memory_table
from finetunekit.modalities import read_examples

pd = pytest.importorskip("pandas")
sf = pytest.importorskip("soundfile")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNEKIT_CACHE_DIR", str(tmp_path / "cache"))


def _clips(folder: Path) -> tuple[list[Path], list[str]]:
    """The clips of a class folder in the order the folder reader lists them, and their labels."""
    files = sorted(p for p in folder.rglob("*.wav"))
    files.sort(key=lambda p: (p.parent.name, p.name))
    return files, [p.parent.name for p in files]


def _arrays_frame(folder: Path):
    files, labels = _clips(folder)
    cells = []
    for path in files:
        wave, rate = sf.read(path, dtype="float32")
        cells.append({"array": wave, "sampling_rate": rate})
    return pd.DataFrame({"audio": cells, "label": labels})


def _wav_bytes(wave, rate=16_000, fmt="WAV") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format=fmt)
    return buffer.getvalue()


def test_audio_cells_become_files_named_by_content(audio_data, tmp_path, monkeypatch):
    monkeypatch.chdir(audio_data)
    tone = (0.2 * np.sin(np.linspace(0, 400, 8000))).astype(np.float32)
    stereo = np.stack([tone, -tone])  # channels x frames, as torchaudio gives it
    frame = pd.DataFrame({
        "audio": [
            "train/low/clip_0.wav",  # a path, relative to the working directory
            _wav_bytes(tone),
            _wav_bytes(tone, fmt="FLAC"),
            {"array": tone, "sampling_rate": 16_000},
            {"bytes": _wav_bytes(tone * 0.5), "path": "x.wav"},
            {"path": str(audio_data / "train/high/clip_1.wav"), "bytes": None},
            {"path": "decoded.wav", "array": tone.tolist(), "sampling_rate": 8_000},
            {"array": stereo, "sampling_rate": 16_000},
        ],
        "label": ["low", "high", "low", "high", "low", "high", "low", "high"],
    })
    examples = read_examples(frame, "audio")
    inputs = [Path(p) for p in examples.inputs]
    assert inputs[0] == audio_data / "train/low/clip_0.wav" and inputs[5] == audio_data / "train/high/clip_1.wav"
    written = inputs[1:5] + inputs[6:]
    assert [p.suffix for p in written] == [".wav", ".flac", ".wav", ".wav", ".wav", ".wav"]
    assert all(p.parent == tmp_path / "cache" / "audio" and re.fullmatch(r"[0-9a-f]{64}\.\w+", p.name) for p in written)
    # bytes are kept as they are; arrays are float32 WAV holding exactly the samples given
    assert inputs[1].read_bytes() == _wav_bytes(tone)
    back, rate = sf.read(inputs[3], dtype="float32")
    assert rate == 16_000 and np.array_equal(back, tone) and sf.info(inputs[3]).subtype == "FLOAT"
    assert sf.read(inputs[6])[1] == 8_000 and inputs[6] != inputs[3]  # another rate, another file
    both, _ = sf.read(inputs[7], dtype="float32")
    assert both.shape == (8000, 2) and np.array_equal(both[:, 1], -tone)
    # the same samples give the same file and token; one changed sample another token
    again = read_examples(frame.copy(), "audio")
    assert again.inputs == examples.inputs and memory_table(frame).token == memory_table(frame.copy()).token
    other = frame.copy()
    changed = tone.copy()
    changed[4000] += 0.01
    other.at[3, "audio"] = {"array": changed, "sampling_rate": 16_000}
    assert memory_table(other).token != memory_table(frame).token


@pytest.mark.parametrize("cell, message", [
    ({"array": np.zeros((2, 2, 100), np.float32), "sampling_rate": 16_000}, r"an audio array of shape \(2, 2, 100\); expected 1-D"),
    ({"array": np.array([0.0, np.nan, 0.1], np.float32), "sampling_rate": 16_000}, "with 1 NaN or infinite sample"),
    ({"array": np.zeros(100, np.float32)}, "without a 'sampling_rate'"),
    ({"array": np.zeros(100, np.float32), "sampling_rate": None}, "without a 'sampling_rate'"),
    ({"array": np.zeros(100, np.float32), "sampling_rate": 16_000.5}, "sampling_rate 16000.5 is not a whole number"),
    ({"array": np.zeros(100, np.float32), "sampling_rate": 1}, "sampling_rate 1 Hz is below 4000 Hz"),
    ({"array": np.zeros(0, np.float32), "sampling_rate": 16_000}, "with no samples"),
    ({"array": np.array(["a", "b"]), "sampling_rate": 16_000}, "of <U1 values; expected float samples"),
    (None, r"empty audio cell in column 'audio'"),
    (b"not audio at all", "16 bytes that are not an image PIL can read, nor audio"),
])
def test_bad_audio_cells_name_the_column_and_the_row(cell, message):
    good = {"array": np.zeros(1600, np.float32), "sampling_rate": 16_000}
    frame = pd.DataFrame({"audio": [good, good, cell], "label": ["a", "b", "a"]}, index=[10, 11, 12])
    with pytest.raises(DataError, match=r"DataFrame data \(memory:pandas:[0-9a-f]{12}\): row 12: .*" + message) as caught:
        read_examples(frame, "audio")
    assert "column 'audio'" in str(caught.value) and "\n" not in str(caught.value)


def test_datasets_audio_feature_paths_and_bytes(audio_data):
    datasets = pytest.importorskip("datasets")
    files, labels = _clips(audio_data / "val")
    classes = sorted(set(labels))
    ids = [classes.index(x) for x in labels]
    # datasets keeps an Audio column as {"bytes", "path"}: a local file by its path, a downloaded set by
    # its bytes (cast, not encoded: encoding arrays needs torchcodec, which datasets 4+ decodes with)
    ds = datasets.Dataset.from_dict({"audio": [str(p) for p in files], "label": ids})
    embedded = datasets.Dataset.from_dict({"audio": [{"bytes": p.read_bytes(), "path": None} for p in files], "label": ids})
    ds, embedded = (d.cast_column("audio", datasets.Audio()).cast_column("label", datasets.ClassLabel(names=classes))
                    for d in (ds, embedded))
    assert type(ds.features["audio"]).__name__ == "Audio"
    by_path, by_bytes = read_examples(ds, "audio"), read_examples(embedded, "audio")
    assert by_path.inputs == [str(p) for p in files] and by_path.labels == by_bytes.labels == labels
    assert [Path(p).read_bytes() for p in by_bytes.inputs] == [p.read_bytes() for p in files]
    assert all(Path(p).suffix == ".wav" for p in by_bytes.inputs)


def test_same_rows_same_metrics_from_folder_dataframe_and_dataset(audio_data, tiny_whisper, tmp_path):
    import finetunekit

    datasets = pytest.importorskip("datasets")
    recipe = Recipe.from_dict({
        "model": {"backbone": f"whisper:{tiny_whisper}"},
        "data": {"train": str(audio_data / "train"), "val": str(audio_data / "val")},
        "strategy": {"name": "full"},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "head_lr": 1e-2, "seed": 0},
    })
    train_frame, val_frame = _arrays_frame(audio_data / "train"), _arrays_frame(audio_data / "val")
    from_folder = finetunekit.train(recipe, output=tmp_path / "folder", quiet=True, report=False)
    from_frame = finetunekit.train(recipe, output=tmp_path / "frame", quiet=True, report=False, train=train_frame, val=val_frame)
    files, labels = _clips(audio_data / "train")
    embedded = datasets.Dataset.from_dict({"audio": [{"bytes": p.read_bytes(), "path": None} for p in files], "label": labels})
    from_dataset = finetunekit.train(recipe, output=tmp_path / "ds", quiet=True, report=False,
                                     train=embedded.cast_column("audio", datasets.Audio()), val=str(audio_data / "val"))
    assert from_frame.metrics["accuracy"] == from_folder.metrics["accuracy"] == from_dataset.metrics["accuracy"]
    assert from_frame.metrics["loss"] == pytest.approx(from_folder.metrics["loss"], abs=1e-6)
    assert from_dataset.metrics["loss"] == pytest.approx(from_folder.metrics["loss"], abs=1e-6)

    evaluated = finetunekit.evaluate(str(tmp_path / "frame"), val_frame)
    assert evaluated["accuracy"] == from_folder.metrics["accuracy"]
    assert evaluated["eval_set"].startswith("DataFrame data (memory:pandas:")
    val_files, _ = _clips(audio_data / "val")
    model = finetunekit.load(tmp_path / "frame")
    unlabelled = val_frame.drop(columns=["label"])
    assert model.predict(unlabelled) == finetunekit.load(tmp_path / "folder").predict([str(p) for p in val_files])


def test_arrow_table_of_audio_structs_or_paths(audio_data, tiny_whisper, tmp_path):
    """A pyarrow Table holding each clip as a struct {"array": list<float>, "sampling_rate": int}
    (as pa.Table.from_pylist writes decoded clips) or as a path: read as the folder's clips, and
    trained to the folder run's metrics."""
    import finetunekit

    pa = pytest.importorskip("pyarrow")
    files, labels = _clips(audio_data / "train")
    structs = pa.Table.from_pylist([{"audio": {"array": sf.read(p, dtype="float32")[0].tolist(), "sampling_rate": sf.info(p).samplerate},
                                     "label": label} for p, label in zip(files, labels, strict=True)])
    assert pa.types.is_struct(structs.schema.field("audio").type)
    paths = pa.table({"audio": [str(p) for p in files], "label": labels})
    from_structs, from_paths = read_examples(structs, "audio"), read_examples(paths, "audio")
    assert from_paths.inputs == [str(p) for p in files] and from_structs.labels == from_paths.labels == labels
    for written, original in zip(from_structs.inputs, files, strict=True):
        assert np.array_equal(sf.read(written, dtype="float32")[0], sf.read(original, dtype="float32")[0])
    with pytest.raises(DataError, match=r"pyarrow Table data \(memory:arrow:[0-9a-f]{12}\): row 1: column 'audio': an audio array without a 'sampling_rate'"):
        read_examples(pa.Table.from_pylist([{"audio": {"array": [0.0] * 800, "sampling_rate": 16_000}},
                                            {"audio": {"array": [0.0] * 800, "sampling_rate": None}}]).append_column("label", pa.array(["a", "b"])),
                      "audio")

    recipe = Recipe.from_dict({
        "model": {"backbone": f"whisper:{tiny_whisper}"},
        "data": {"train": str(audio_data / "train"), "val": str(audio_data / "val")},
        "strategy": {"name": "full"},
        "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "head_lr": 1e-2, "seed": 0},
    })
    from_folder = finetunekit.train(recipe, output=tmp_path / "folder", quiet=True, report=False)
    from_arrow = finetunekit.train(recipe, output=tmp_path / "arrow", quiet=True, report=False, train=structs, val=str(audio_data / "val"))
    assert from_arrow.metrics["accuracy"] == from_folder.metrics["accuracy"]
    assert from_arrow.metrics["loss"] == pytest.approx(from_folder.metrics["loss"], abs=1e-6)
    assert finetunekit.load(tmp_path / "arrow").predict(paths) == finetunekit.load(tmp_path / "folder").predict([str(p) for p in files])

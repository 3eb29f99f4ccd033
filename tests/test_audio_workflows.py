"""Audio classification through the workflows beyond one training run, each with tiny Whispers
built from configs: a hyper-parameter study (``tune``), backbone selection (``select``) across two
Whisper sizes, and a two-process (torchrun, gloo on CPU) run matching one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import finetunekit
from finetunekit import Recipe


def _recipe(tiny_whisper: Path, audio_data: Path, **train) -> Recipe:
    return Recipe.from_dict({
        "model": {"backbone": f"whisper:{tiny_whisper}"},
        "data": {"train": str(audio_data / "train"), "val": str(audio_data / "val")},
        "strategy": {"name": "full"},
        "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "head_lr": 1e-2, "seed": 0, "precision": "fp32", **train},
    })


def _narrow_whisper(folder: Path) -> Path:
    """A second tiny Whisper, half as wide as the session's (32 channels), for select to compare."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    config = WhisperConfig(
        vocab_size=96, num_mel_bins=80, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=50, max_target_positions=16,
        bos_token_id=0, eos_token_id=1, pad_token_id=1, decoder_start_token_id=2, suppress_tokens=None, begin_suppress_tokens=None,
    )
    torch.manual_seed(1)
    WhisperForConditionalGeneration(config).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return folder


def _clips_frame(folder: Path):
    """The clips of a class folder as a DataFrame of decoded {"array", "sampling_rate"} cells."""
    pd = pytest.importorskip("pandas")
    import soundfile as sf

    files = sorted(folder.rglob("*.wav"))
    return pd.DataFrame({"audio": [dict(zip(("array", "sampling_rate"), sf.read(p, dtype="float32"), strict=True)) for p in files],
                         "label": [p.parent.name for p in files]})


def test_tune_runs_two_audio_trials_from_a_dataframe_and_keeps_the_best(audio_data, tiny_whisper, tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNEKIT_CACHE_DIR", str(tmp_path / "cache"))
    recipe = _recipe(tiny_whisper, audio_data).replace(search={"space": {"train.lr": {"choice": [1e-3, 3e-3]}}})
    # the training clips in memory (every trial reads the same rows), the validation clips from their folder
    study = finetunekit.tune(recipe, output=tmp_path / "study", trials=2, quiet=True, train=_clips_frame(audio_data / "train"))
    assert study.counts["complete"] == 2 and study.metric == "accuracy"
    saved = json.loads((study.best_dir / "data_sources.json").read_text())["train"]
    assert saved["rows"] == 24 and saved["container"] == "DataFrame"
    trials = sorted((tmp_path / "study" / "trials").iterdir())
    assert len(trials) == 2
    scores = [json.loads((t / "metrics.json").read_text())["accuracy"] for t in trials]
    assert study.best_score == max(scores)
    model = finetunekit.load(study.best_dir)
    assert model.modality == "audio"
    clips = sorted(str(p) for p in (audio_data / "val").rglob("*.wav"))
    assert set(model.predict(clips)) <= {"high", "low", "noise"}
    assert model.evaluate(str(audio_data / "val"))["accuracy"] == study.best_score


def test_select_ranks_two_whisper_sizes_on_audio_clips(audio_data, tiny_whisper, tmp_path):
    narrow = _narrow_whisper(tmp_path / "narrow")
    rows = finetunekit.select(str(audio_data / "train"), [f"whisper:{tiny_whisper}", f"whisper:{narrow}"], k=3,
                              cache_dir=str(tmp_path / "features"))
    assert all(r.error is None for r in rows), [r.error for r in rows]
    # the training split select reads: 8 clips per class less a stratified 20% held out, 6 per class
    assert sorted(r.num_features for r in rows) == [32, 64] and all(r.num_examples == 18 for r in rows)
    assert rows[0].scores["logme"] >= rows[1].scores["logme"] and all(0 <= r.scores["knn"] <= 1 for r in rows)
    again = finetunekit.select(str(audio_data / "train"), [f"whisper:{narrow}"], k=3, cache_dir=str(tmp_path / "features"))
    assert again[0].cached and again[0].scores == next(r.scores for r in rows if r.num_features == 32)


@pytest.mark.slow  # three processes start torch and transformers: about a minute on 2 cores
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_processes_train_audio_as_one(audio_data, tiny_whisper, tmp_path):
    from test_distributed import two_processes_and_one

    def recipe(batch_size: int) -> str:
        return json.dumps(_recipe(tiny_whisper, audio_data, epochs=2, batch_size=batch_size, optimizer="sgd", lr=1e-2,
                                  restore_best=False).to_dict())

    two, one = two_processes_and_one(recipe, 4, tmp_path)
    metrics = json.loads((two / "run" / "metrics.json").read_text())
    assert len((two / "run" / "val_predictions.jsonl").read_text().splitlines()) == 12
    assert metrics["accuracy"] == json.loads((one / "run" / "metrics.json").read_text())["accuracy"]

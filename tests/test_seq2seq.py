"""The seq2seq task on a tiny Whisper built from a config (with a byte-level BPE tokenizer trained
here): training through the registries, exact resume, evaluate, predict, metrics against hand
counts, decoding against transformers' own generate, export, and bad input; a slow end-to-end check
on real AN4 clips with the bundled tiny.en."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA
from finetunekit import Recipe, train

pytest.importorskip("soundfile")
pytest.importorskip("jiwer")
AN4 = SHARED_DATA / "audio" / "an4"
WORDS = ["one", "two", "three", "four", "five", "yes", "no", "stop", "go", "up", "down"]


@pytest.fixture(scope="session")
def tiny_asr(tmp_path_factory) -> Path:
    """A 1+1-layer, 64-wide Whisper with a 300-token byte-level BPE tokenizer: ``whisper:<folder>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        PreTrainedTokenizerFast,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(WORDS).upper(), " ".join(WORDS)] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=specials[1:])
    ids = {t: fast.convert_tokens_to_ids(t) for t in specials}
    config = WhisperConfig(
        vocab_size=len(fast), num_mel_bins=80, d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_source_positions=100, max_target_positions=24,
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
        decoder_start_token_id=ids["<|startoftranscript|>"], suppress_tokens=None, begin_suppress_tokens=None,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_asr")
    WhisperForConditionalGeneration(config).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def write_speech_table(folder: Path, count: int, seed: int, rate: int = 16_000) -> Path:
    """folder/clips/*.wav (0.3 to 1.2 s of tones, one pitch per word) and folder/data.tsv with
    ``audio`` and ``text`` columns: a transcript of one to three words the tones spell."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    (folder / "clips").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        words = [WORDS[j] for j in rng.integers(0, 5, size=int(rng.integers(1, 4)))]
        parts = []
        for w in words:
            t = np.arange(int(rate * 0.3)) / rate
            parts.append(0.3 * np.sin(2 * np.pi * (200 + 150 * WORDS.index(w)) * t))
        sf.write(folder / "clips" / f"c{i}.wav", np.concatenate(parts).astype(np.float32), rate)
        rows.append({"audio": f"clips/c{i}.wav", "text": " ".join(words).upper()})
    with open(folder / "data.tsv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["audio", "text"], delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return folder / "data.tsv"


@pytest.fixture(scope="session")
def speech_tables(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("speech")
    return write_speech_table(root / "train", 16, 0), write_speech_table(root / "val", 6, 1)


def asr_recipe(tiny_asr: Path, tables: tuple[Path, Path], **train_fields) -> Recipe:
    return Recipe.from_dict({
        "model": {"backbone": f"whisper:{tiny_asr}"},
        "data": {"train": str(tables[0]), "val": str(tables[1]), "label_column": "text"},
        "task": {"type": "seq2seq", "num_beams": 2},
        "strategy": {"name": "full"},
        "train": {"epochs": 2, "batch_size": 8, "lr": 3e-3, "seed": 0, **train_fields},
    })


@pytest.fixture(scope="module")
def asr_run(tiny_asr, speech_tables, tmp_path_factory):
    return train(asr_recipe(tiny_asr, speech_tables), output=tmp_path_factory.mktemp("asr") / "run", quiet=True)


def test_training_writes_text_and_its_error_rates(asr_run):
    m = asr_run.metrics
    assert {"wer", "cer", "wer_whisper", "loss", "wer_ci"} <= set(m)
    assert 0.0 <= m["wer_ci"][0] <= m["wer"] <= m["wer_ci"][1]
    assert m["normalisation"].startswith("plain")


def test_the_run_reloads_predicts_evaluates_and_reports(asr_run, speech_tables, capsys):
    import json

    from finetunekit import load
    from finetunekit.cli import main

    run_dir = asr_run.run_dir
    saved = [json.loads(line) for line in (run_dir / "val_predictions.jsonl").read_text().splitlines()]
    model = load(run_dir)
    assert model.predict([r["input"] for r in saved]) == [r["predicted"] for r in saved]
    again = model.evaluate(str(speech_tables[1]), label_column="text")
    assert again["wer"] == pytest.approx(asr_run.metrics["wer"]) and again["cer"] == pytest.approx(asr_run.metrics["cer"])
    html = (run_dir / "report.html").read_text()
    assert "Worst examples" in html and "Training curves" in html
    assert "automatic-speech-recognition" in (run_dir / "README.md").read_text()
    capsys.readouterr()
    assert main(["predict", str(run_dir), saved[0]["input"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[0])["text"] == saved[0]["predicted"]


def test_a_stopped_run_resumes_to_the_same_weights(tiny_asr, speech_tables, tmp_path, monkeypatch):
    from finetunekit.run.artifacts import read_weights
    from test_resume import interrupted

    recipe = asr_recipe(tiny_asr, speech_tables, checkpoint_every_steps=1)
    reference = train(recipe, output=tmp_path / "reference", quiet=True)
    interrupted(monkeypatch, recipe, tmp_path / "run", 2)
    resumed = train(recipe, output=tmp_path / "run", quiet=True, resume=True)
    assert resumed.metrics["wer"] == pytest.approx(reference.metrics["wer"])
    got = read_weights(resumed.run_dir)
    for name, value in read_weights(reference.run_dir).items():
        torch.testing.assert_close(got[name], value)


@pytest.mark.parametrize("strategy", ["frozen_encoder", "lora"])
def test_encoder_decoder_strategies_train_what_they_say(strategy, tiny_asr, speech_tables, tmp_path):
    """frozen_encoder: the encoder keeps its pretrained weights, the decoder trains; lora: adapters
    on the attention projections only (merged on save), the rest as pretrained."""
    from safetensors.torch import load_file

    from finetunekit.run.artifacts import read_weights

    recipe = Recipe.from_dict({**asr_recipe(tiny_asr, speech_tables, epochs=1).to_dict(),
                               "strategy": {"name": strategy, "lora_rank": 4}})
    result = train(recipe, output=tmp_path / "run", quiet=True)
    pretrained = load_file(str(tiny_asr / "model.safetensors"))
    got = {k.removeprefix("backbone.model."): v for k, v in read_weights(result.run_dir).items()}
    changed = {k for k, v in pretrained.items() if k in got and not torch.equal(got[k], v.float())}
    assert changed, "nothing trained"
    if strategy == "frozen_encoder":
        assert not {k for k in changed if k.startswith("model.encoder.")} and any(k.startswith("model.decoder.layers") for k in changed)
    else:
        assert {k.rsplit(".", 2)[-2] for k in changed} <= {"q_proj", "k_proj", "v_proj", "out_proj"}


def test_frozen_encoder_refuses_an_encoder_task(tiny_bert, tmp_path):
    from conftest import tiny_text_recipe
    from test_tasks import text_task_data

    from finetunekit.core.errors import RecipeError

    data = text_task_data(tmp_path, "classification")
    recipe = tiny_text_recipe((Path(data["train"]), Path(data["val"])), tiny_bert, data=data, strategy={"name": "frozen_encoder"})
    with pytest.raises(RecipeError, match="strategy.name: frozen_encoder splits an encoder-decoder"):
        train(recipe, output=tmp_path / "run", quiet=True)

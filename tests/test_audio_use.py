"""Using an audio run: explanations over the spectrogram (with the deletion check), the
transformers export for ``pipeline("audio-classification")``, long files cut into windows,
background-noise augmentation, playable clips in the report, and the service's recorded uploads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from finetunekit import Recipe, train
from finetunekit.use.predict import load

pytest.importorskip("soundfile")


@pytest.fixture(scope="module")
def run_dir(audio_data, tiny_whisper, tmp_path_factory):
    """The tone clips with one 1-second clip among them: the run's clips are 1 s (clip_seconds 1.0)."""
    import shutil

    import soundfile as sf

    root = tmp_path_factory.mktemp("audio_use")
    shutil.copytree(audio_data / "train", root / "train")
    sf.write(root / "train" / "noise" / "long.wav", np.random.default_rng(5).normal(0, 0.1, 16_000).astype(np.float32), 16_000)
    recipe = Recipe.from_dict({
        "model": {"backbone": f"whisper:{tiny_whisper}"},
        "data": {"train": str(root / "train"), "val": str(audio_data / "val")},
        "strategy": {"name": "full"},
        "train": {"epochs": 4, "batch_size": 4, "lr": 1e-3, "head_lr": 1e-2, "seed": 0},
    })
    return train(recipe, output=root / "run", quiet=True).run_dir


def _clips(audio_data, index: int = 0) -> list[str]:
    return [str(audio_data / "val" / name / f"clip_{index}.wav") for name in ("high", "low", "noise")]


# -- explain -----------------------------------------------------------------------------------------


def test_explain_command_draws_attributions_over_the_spectrogram(run_dir, audio_data, tmp_path, capsys):
    pytest.importorskip("captum")
    from PIL import Image

    from finetunekit.cli import main

    clips = _clips(audio_data)
    out = tmp_path / "why"
    assert main(["explain", str(run_dir), *clips, "--output", str(out)]) == 0
    records = [json.loads(line) for line in (out / "explanations.jsonl").read_text().splitlines()]
    assert [r["label"] for r in records] == load(run_dir).predict(clips)
    for r in records:
        e = r["explanation"]
        assert e["method"] == "mel-integrated-gradients" and e["target"] == r["label"]
        assert e["patch"] == {"mel_bins": 8, "frames": 10, "seconds": 0.1}
        patches = np.array(e["patches"])
        assert patches.shape == (10, 10) and np.abs(patches).max() == pytest.approx(1.0)  # 80 bins / 8, 100 frames / 10
        picture = Image.open(out / e["overlay_file"])
        assert e["overlay_file"].endswith(".attribution.png") and picture.size == (400, 200)
    page = (out / "index.html").read_text()
    assert page.count("<img ") == 3 and page.count("<audio ") == 3 and "silence floor" in page
    assert main(["explain", str(run_dir), str(tmp_path / "missing.wav"), "--output", str(tmp_path / "o")]) == 2
    assert "audio file not found" in capsys.readouterr().err


def test_attributions_are_complete_and_removing_the_top_patches_hurts_more_than_random(run_dir, audio_data):
    """Integrated gradients: the patches sum to logit(clip) - logit(silence floor) (completeness);
    the deletion check of the image and text explainers: removing the most attributed patches
    lowers the predicted class's probability more than removing as many random ones."""
    pytest.importorskip("captum")
    from finetunekit.modalities import modality_of
    from finetunekit.use.explain import Explainer, silence_floor

    predictor = load(run_dir, precision="fp32")
    explainer = Explainer(predictor, ig_steps=64)
    clips = _clips(audio_data) + _clips(audio_data, 1) + _clips(audio_data, 2)
    batch = predictor.encode([modality_of("audio").load_item(c) for c in clips])
    targets = predictor.forward_proba(batch).argmax(1)
    patches = explainer.attributions(batch, targets.tolist())
    assert patches.shape == (9, 10, 10)
    with torch.no_grad():
        logits = predictor.model(batch)
        base = predictor.model({**batch, "input_features": silence_floor(batch["input_features"], batch["frame_mask"])})
    rows = torch.arange(len(clips))
    expected = (logits - base)[rows, torch.as_tensor(targets)]
    torch.testing.assert_close(patches.flatten(1).sum(1), expected, atol=0.05 * float(expected.abs().max()), rtol=0.05)

    rng = np.random.default_rng(0)
    k = 20  # of the 100 patches
    top = [np.argsort(-p.flatten().numpy(), kind="stable")[:k] for p in patches]
    probs_top = predictor.forward_proba(explainer.remove_patches(batch, top))[rows, targets].mean()
    probs_random = np.mean([predictor.forward_proba(explainer.remove_patches(batch, [rng.permutation(100)[:k] for _ in clips]))
                            [rows, targets].mean() for _ in range(3)])
    before = predictor.forward_proba(batch)[rows, targets].mean()
    assert probs_top < probs_random <= before + 1e-6


# -- export ------------------------------------------------------------------------------------------


def test_hf_export_loads_in_transformers_and_the_pipeline_gives_the_same_answers(run_dir, audio_data, tmp_path):
    from transformers import (
        AutoFeatureExtractor,
        AutoModelForAudioClassification,
        WhisperForAudioClassification,
        pipeline,
    )

    from finetunekit.data.audio import read_audio
    from finetunekit.use.export import export

    result = export(run_dir, "hf", tmp_path / "hf")
    assert result.examples >= 3 and result.max_abs_diff < 1e-4
    assert result.details["pipeline_labels_checked"] == result.examples and result.details["clip_samples"] == 16_000
    model = AutoModelForAudioClassification.from_pretrained(tmp_path / "hf")
    assert type(model) is WhisperForAudioClassification and model.config.max_source_positions == 50  # 1 s of 20 ms positions
    assert AutoFeatureExtractor.from_pretrained(tmp_path / "hf").n_samples == 16_000
    classify = pipeline("audio-classification", model=str(tmp_path / "hf"), device="cpu")
    clips = _clips(audio_data, 3)
    predictor = load(run_dir, precision="fp32")  # the export's parity is with the fp32 model
    for clip, expected, scores in zip(clips, predictor.predict(clips), predictor.predict_proba(clips), strict=True):
        answer = classify({"raw": read_audio(clip, 16_000), "sampling_rate": 16_000}, top_k=None)
        assert answer[0]["label"] == expected
        got = {a["label"]: a["score"] for a in answer}
        np.testing.assert_allclose([got[c] for c in predictor.classes], scores, atol=1e-5)
    assert 'pipeline("audio-classification"' in (tmp_path / "hf" / "README.md").read_text()


# -- hf: audio sources ---------------------------------------------------------------------------------


def _tiny_hf_audio(kind: str, folder):
    """A 2-layer, 32-wide wav2vec 2.0 / HuBERT / AST saved with its feature extractor, from a config."""
    import transformers as tf

    torch.manual_seed(0)
    if kind == "ast":
        config = tf.ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_length=100,
                              num_mel_bins=32, patch_size=16, frequency_stride=16, time_stride=16)
        extractor = tf.ASTFeatureExtractor(num_mel_bins=32, max_length=100)
    else:
        common = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                  "conv_dim": (16, 16), "conv_stride": (5, 4), "conv_kernel": (10, 4), "num_conv_pos_embeddings": 8,
                  "num_conv_pos_embedding_groups": 2, "vocab_size": 8}
        config = (tf.Wav2Vec2Config if kind == "wav2vec2" else tf.HubertConfig)(**common)
        extractor = tf.Wav2Vec2FeatureExtractor(sampling_rate=16_000, return_attention_mask=True, do_normalize=True)
    tf.AutoModel.from_config(config).save_pretrained(folder)
    extractor.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert", "ast"])
def test_hf_audio_backbones_train_predict_and_reload(kind, audio_data, tmp_path):
    from finetunekit.backbones import create_backbone

    folder = _tiny_hf_audio(kind, tmp_path / kind)
    backbone = create_backbone(f"hf:{folder}")
    assert backbone.kind == "hf_audio" and backbone.modality == "audio" and backbone.num_features == 32
    recipe = Recipe.from_dict({
        "model": {"backbone": f"hf:{folder}"},
        "data": {"train": str(audio_data / "train"), "val": str(audio_data / "val")},
        "strategy": {"name": "full"},
        "train": {"epochs": 3, "batch_size": 8, "lr": 3e-3, "head_lr": 1e-2, "seed": 0},
    })
    result = train(recipe, output=tmp_path / "run", quiet=True)
    assert result.metrics["accuracy"] > 1 / 3  # better than chance on the three tone classes
    clips = _clips(audio_data)
    reloaded = load(result.run_dir, precision="fp32")
    scores = reloaded.predict_proba(clips)
    assert scores.shape == (3, 3) and np.allclose(scores.sum(1), 1, atol=1e-5)
    # the run directory alone rebuilds the model: the same scores from a second load
    np.testing.assert_allclose(load(result.run_dir, precision="fp32").predict_proba(clips), scores, atol=1e-6)
    assert reloaded.predict(clips) == [reloaded.classes[i] for i in scores.argmax(1)]
    if kind != "hubert":  # ONNX with its parity check (HuBERT's graph is wav2vec 2.0's)
        pytest.importorskip("onnxruntime")
        from finetunekit.use.export import export

        exported = export(result.run_dir, "onnx", tmp_path / "onnx", tolerance=1e-3)  # a tiny random model; kernels differ by CPU
        assert exported.examples >= 3 and exported.max_abs_diff < 1e-3
        assert "input_values" in (tmp_path / "onnx" / "README.md").read_text()


# -- long files ----------------------------------------------------------------------------------------


def test_a_long_file_is_cut_into_overlapping_windows_and_their_scores_averaged(run_dir, audio_data, tmp_path, capsys):
    import soundfile as sf

    from finetunekit.cli import main
    from finetunekit.data.audio import read_audio

    # 2.5 s: a high tone clip padded to 1 s, a low one, and half a second of silence
    high, low = (read_audio(audio_data / "val" / name / "clip_2.wav", 16_000) for name in ("high", "low"))
    wave = np.concatenate([np.pad(high, (0, 16_000 - len(high))), np.pad(low, (0, 16_000 - len(low))), np.zeros(8_000)])
    sf.write(tmp_path / "long.wav", wave.astype(np.float32), 16_000)
    short = _clips(audio_data)[0]
    predictor = load(run_dir, precision="fp32")
    records = predictor.records([str(tmp_path / "long.wav"), short])
    windows = records[0]["json"]["windows"]
    assert [(w["start"], w["end"]) for w in windows] == [(0.0, 1.0), (0.5, 1.5), (1.0, 2.0), (1.5, 2.5)]
    assert windows[0]["label"] == "high" and windows[2]["label"] == "low"
    # the file's answer: the mean of its windows' scores
    mean = np.mean([[w["scores"][c] for c in predictor.classes] for w in windows], axis=0)
    np.testing.assert_allclose(predictor.predict_proba([str(tmp_path / "long.wav")])[0], mean, atol=1e-4)
    assert "windows" not in records[1]["json"] and records[0]["line"].endswith("(mean of 4 windows)")
    assert main(["predict", str(run_dir), str(tmp_path / "long.wav"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(printed["windows"]) == 4


# -- background noise ----------------------------------------------------------------------------------


def test_the_noise_preset_mixes_in_recordings_from_a_folder(audio_data, tiny_whisper, tmp_path):
    import soundfile as sf

    from finetunekit.backbones import create_backbone
    from finetunekit.core.errors import DataError, RecipeError
    from finetunekit.modalities import modality_of, read_examples

    (tmp_path / "noise").mkdir()
    sf.write(tmp_path / "noise" / "hum.wav", (0.3 * np.sin(np.arange(48_000) * 0.2)).astype(np.float32), 16_000)
    audio = modality_of("audio")
    backbone = create_backbone(f"whisper:{tiny_whisper}")
    examples = read_examples(audio_data / "train", "audio")
    data = Recipe.from_dict({"data": {"train": "x", "augment": "noise", "noise_dir": str(tmp_path / "noise")}}).data
    preprocessing = audio.run_preprocessing(backbone, data)
    assert preprocessing["noise_dir"] == str(tmp_path / "noise")
    noisy = audio.build_dataset(examples, None, backbone, dict(preprocessing), True, "noise", 0)
    light = audio.build_dataset(examples, None, backbone, dict(preprocessing), True, "light", 0)
    first, again = noisy[(0, 3)]["input_features"], noisy[(0, 3)]["input_features"]
    assert torch.equal(first, again)  # seeded: a resumed run replays the same mix
    # with noise drawn for most clips, most keys give other features than light's shift and gain alone
    differs = [not torch.equal(noisy[(i, 11)]["input_features"], light[(i, 11)]["input_features"]) for i in range(10)]
    assert sum(differs) >= 5
    # evaluation mixes in nothing
    plain = audio.build_dataset(examples, None, backbone, dict(preprocessing), False, "noise", 0)
    assert torch.equal(plain[0]["input_features"], light.__class__(examples.inputs, None, backbone, 8000)[0]["input_features"])
    with pytest.raises(DataError, match="set it to a folder of audio files"):
        audio.run_preprocessing(backbone, Recipe.from_dict({"data": {"train": "x", "augment": "noise"}}).data)
    with pytest.raises(DataError, match="noise folder not found"):
        audio.build_dataset(examples, None, backbone, {**preprocessing, "noise_dir": str(tmp_path / "none")}, True, "noise", 0)
    with pytest.raises(RecipeError, match="mix background noise into audio clips"):
        modality_of("image").check_recipe(Recipe.from_dict({"data": {"train": "x", "augment": "noise"}}))
    # a run with it: the folder is recorded in preprocessing.json, predict adds no noise
    recipe = Recipe.from_dict({"model": {"backbone": f"whisper:{tiny_whisper}"},
                               "data": {"train": str(audio_data / "train"), "val": str(audio_data / "val"), "augment": "noise",
                                        "noise_dir": str(tmp_path / "noise")},
                               "strategy": {"name": "full"}, "train": {"epochs": 1, "batch_size": 8, "seed": 0}})
    run = train(recipe, output=tmp_path / "run", quiet=True).run_dir
    assert json.loads((run / "preprocessing.json").read_text())["noise_dir"] == str(tmp_path / "noise")


# -- the report --------------------------------------------------------------------------------------


def test_the_report_plays_the_worst_clips_beside_their_spectrograms(run_dir, tmp_path):
    import shutil

    from finetunekit.report import write_report
    from finetunekit.use.explain import error_explanations

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    rows = [json.loads(line) for line in (copy / "val_predictions.jsonl").read_text().splitlines()]
    for r in rows[:2]:  # two confident mistakes, so the report has errors to show
        r["predicted"] = next(c for c in ("high", "low", "noise") if c != r["label"])
    (copy / "val_predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    explained = error_explanations(copy) if __import__("importlib").util.find_spec("captum") else {}
    page = write_report(copy, tmp_path / "report.html", explanations=explained).read_text()
    errors = page[page.index('id="errors"'):]
    errors = errors[: errors.index("</section>")]
    assert errors.count("<audio controls") == 2 and errors.count('src="data:audio/wav;base64,') == 2
    assert errors.count('alt="spectrogram of') == 2 and "<th>clip</th>" in errors
    if explained:
        assert "integrated gradients" in errors and len(explained) == 2


# -- the service -------------------------------------------------------------------------------------


def test_the_service_reads_ogg_opus_recordings_and_refuses_webm_with_a_clear_422(run_dir, audio_data, tmp_path):
    pytest.importorskip("fastapi")
    import soundfile as sf

    from finetunekit.data.audio import read_audio
    from service_client import post_form, running

    # what Firefox's MediaRecorder can write: OGG Opus (48 kHz here), decoded by libsndfile
    wave = read_audio(audio_data / "val" / "high" / "clip_1.wav", 48_000)
    sf.write(tmp_path / "rec.ogg", wave, 48_000, format="OGG", subtype="OPUS")
    # what Chrome's writes: WebM (an EBML header, then Matroska elements), which libsndfile cannot read
    webm = bytes.fromhex("1a45dfa39f4286810142f7810142f2810442f381084282847765626d") + b"\x00" * 64
    with running(load(run_dir)) as (url, _):
        status, body = post_form(url, [("files", ("rec.ogg", (tmp_path / "rec.ogg").read_bytes(), "audio/ogg"))])
        assert status == 200 and body["predictions"][0]["label"] == "high", body
        status, body = post_form(url, [("files", ("recording.webm", webm, "audio/webm"))])
        assert status == 422, body
        assert "files[0] (recording.webm): unsupported container: WebM/Matroska" in json.dumps(body)


def test_the_page_records_from_the_microphone_and_shows_the_answer(run_dir):
    """Chromium's fake microphone (a beep) recorded for a second: the page decodes the recording,
    sends it as WAV and draws the scores and the spectrogram explanation."""
    pytest.importorskip("fastapi")
    pytest.importorskip("websocket")
    from browser import Browser, find_chromium
    from service_client import running

    chromium = find_chromium()
    if chromium is None:
        pytest.skip("chromium not installed")
    flags = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream", "--autoplay-policy=no-user-gesture-required")
    with Browser(chromium, width=1000, height=800, flags=flags) as browser, running(load(run_dir)) as (url, _):
        for domain in ("Page", "Runtime"):
            browser.call(f"{domain}.enable", session=True)
        browser.call("Page.navigate", session=True, url=url + "/")
        browser.wait_for("Page.loadEventFired")
        shown = browser.evaluate("""new Promise((resolve, reject) => {
          const started = Date.now();
          const ready = () => document.getElementById('meta').textContent.includes('labels');
          const wait = () => {
            if (!ready()) return setTimeout(wait, 30);
            if (document.getElementById('audio-input').hidden) return reject(new Error('no audio panel'));
            document.getElementById('record').click();
            setTimeout(() => document.getElementById('record').click(), 1200);
            const poll = () => {
              const failed = document.getElementById('error').textContent;
              if (failed) return reject(new Error(failed));
              const img = document.getElementById('overlay');
              if (!document.getElementById('result').hidden && img && img.complete && img.naturalWidth)
                return resolve({rows: document.querySelectorAll('#scores .row').length, method: document.getElementById('method').textContent,
                                width: img.naturalWidth, playback: !document.getElementById('playback').hidden});
              if (Date.now() - started > 25000) return reject(new Error('no result after 25 s'));
              setTimeout(poll, 50);
            };
            poll();
          };
          wait();
        })""")
    assert shown["rows"] == 3 and shown["method"].startswith("mel-integrated-gradients for") and shown["width"] == 400
    assert shown["playback"]

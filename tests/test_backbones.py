"""Contract tests over every registered backbone source (and every bundled backbone): features,
widths, layer groups, tokenisation, rebuild from a run dir.

The cases come from the registries themselves (``SOURCES``, ``BUNDLED``): a new source is tested as
soon as it is registered, and fails here until it has a tiny example in ``TINY_EXAMPLES``.
"""

import json

import pytest
import torch

from finetunekit.backbones import BACKBONE_KINDS, BUNDLED, SOURCES, Backbone, check_layer_groups, create_backbone, rebuild_backbone
from finetunekit.core.errors import FinetuneError

# source -> the smallest backbone of that source, from the test fixtures. Bundled backbones are the
# real (small) models: there is nothing smaller to bundle.
TINY_EXAMPLES = {
    "timm": lambda fx: "timm:test_efficientnet",
    "hf": lambda fx: f"hf:{fx.getfixturevalue('tiny_bert')}",
    "run": lambda fx: f"run:{fx.getfixturevalue('image_run')}",
    "whisper": lambda fx: f"whisper:{fx.getfixturevalue('tiny_whisper')}",
    "bert2bert": lambda fx: f"bert2bert:{fx.getfixturevalue('tiny_bert')}",
}
CASES = [s for s in SOURCES.names() if s != "bundled"] + [f"bundled:{name}" for name in BUNDLED.names()]


@pytest.fixture(params=CASES)
def backbone(request):
    case = request.param
    if case.startswith("bundled:"):
        try:
            return create_backbone(case, image_size=32)
        except FinetuneError as exc:
            if "needs the package" not in str(exc):
                raise
            pytest.skip(str(exc))  # an optional extra (speech) that this environment did not install
    if case not in TINY_EXAMPLES:
        pytest.fail(f"backbone source {case!r} has no tiny example: add one to TINY_EXAMPLES in tests/test_backbones.py")
    name = TINY_EXAMPLES[case](request)
    return create_backbone(name, pretrained=not name.startswith("timm:"), image_size=32)


def _batch(backbone, texts=("good film", "bad plot and story")):
    if backbone.modality == "image":
        size = backbone.preprocessing()["input_size"]
        return {"pixel_values": torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))}
    if backbone.modality == "audio":  # half a second and one second of noise
        gen = torch.Generator().manual_seed(0)
        return backbone.featurize([0.1 * torch.randn(n, generator=gen).numpy() for n in (8000, 16000)])
    enc = backbone.tokenize(list(texts), 16)
    width = max(len(x) for x in enc["input_ids"])
    return {k: torch.tensor([row + [0] * (width - len(row)) for row in v]) for k, v in enc.items()}


def test_contract(backbone, tmp_path):
    assert isinstance(backbone, Backbone) and backbone.modality in ("image", "text", "audio")
    check_layer_groups(backbone)
    assert len(backbone.layer_groups()) >= 3
    assert backbone.num_features > 0
    json.dumps(backbone.preprocessing())  # stored in preprocessing.json
    description = json.loads(json.dumps(backbone.describe()))  # stored in finetunekit.json
    assert description["kind"] in BACKBONE_KINDS
    backbone.eval()
    batch = _batch(backbone)
    features = backbone.forward_features(batch)
    assert features.shape == (2, backbone.num_features) and torch.isfinite(features).all()
    # Rebuilding from the description + assets and loading the weights gives the same features.
    backbone.save_assets(tmp_path)
    rebuilt = rebuild_backbone(description, tmp_path)
    rebuilt.load_state_dict(backbone.state_dict())
    rebuilt.eval()
    torch.testing.assert_close(rebuilt.forward_features(batch), features)


def test_text_backbones_encode_pairs(backbone):
    if backbone.modality != "text" or getattr(backbone, "is_seq2seq", False):
        pytest.skip(f"{backbone.modality} backbone: no text pairs" if backbone.modality != "text" else "an encoder-decoder translates single texts")
    pairs = [("good film", "bad plot"), ("a story", "fine and warm")]
    enc = backbone.tokenize(pairs, 16)
    assert len(enc["input_ids"]) == 2
    if "token_type_ids" in enc:  # models with segment embeddings mark the second text
        assert all(1 in row for row in enc["token_type_ids"])
    backbone.eval()
    features = backbone.forward_features(_batch(backbone, pairs))
    assert features.shape == (2, backbone.num_features)


def test_mean_pooling_ignores_padding(tiny_bert):
    bb = create_backbone(f"hf:{tiny_bert}", pooling="mean").eval()
    enc = bb.tokenize(["good film"], 16)
    ids = torch.tensor(enc["input_ids"])
    mask = torch.tensor(enc["attention_mask"])
    padded = {"input_ids": torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], 1),
              "attention_mask": torch.cat([mask, torch.zeros(1, 5, dtype=torch.long)], 1)}
    torch.testing.assert_close(bb.forward_features({"input_ids": ids, "attention_mask": mask}), bb.forward_features(padded), atol=1e-5, rtol=1e-5)


def test_sources_registered():
    assert {"timm", "hf", "bundled", "run"} <= set(SOURCES.names())


@pytest.mark.parametrize(
    "name, message",
    [
        ("nosuch:thing", "unknown backbone source 'nosuch'"),
        ("timm:efficientnet_lite9", "unknown timm architecture 'efficientnet_lite9' (did you mean"),
        ("bundled:minilm", "unknown bundled backbone 'minilm' (did you mean 'minilm_l6'?)"),
        ("efficientnet", "is not 'source:name'"),
        ("hf:/no/such/dir", "could not load Hugging Face model '/no/such/dir'"),
        ("timm:", "names no model"),
    ],
)
def test_unknown_backbones_explain(name, message):
    with pytest.raises(FinetuneError, match=None) as info:
        create_backbone(name)
    assert message in str(info.value)


def test_depthwise_convolutions_train_in_fp32_under_cpu_bf16_autocast(monkeypatch):
    from torch import nn

    from finetunekit.backbones import create_backbone
    from finetunekit.backbones import timm_backbone

    monkeypatch.setattr(timm_backbone, "cpu_has_amx", lambda: False)  # the CPUs this is for (no AMX tiles)
    backbone = create_backbone("timm:test_efficientnet", pretrained=False)
    depthwise = [m for m in backbone.modules() if isinstance(m, timm_backbone.DepthwiseConv2d)]
    assert depthwise and all(isinstance(m, nn.Conv2d) and m.groups == m.in_channels for m in depthwise)
    plain = create_backbone("timm:test_efficientnet", pretrained=False)
    assert list(backbone.state_dict()) == list(plain.state_dict())  # same parameters, same names
    conv = depthwise[0]
    x = torch.randn(2, conv.in_channels, 8, 8)
    with torch.autocast("cpu", torch.bfloat16):
        assert conv(x.requires_grad_()).dtype == torch.float32  # trains in fp32
        with torch.no_grad():
            assert conv(x).dtype == torch.bfloat16  # inference keeps bf16
    monkeypatch.setattr(timm_backbone, "cpu_has_amx", lambda: True)
    with torch.autocast("cpu", torch.bfloat16):
        assert conv(x).dtype == torch.bfloat16  # AMX CPUs keep bf16
    # a bf16 training step through the whole backbone gives finite gradients
    monkeypatch.setattr(timm_backbone, "cpu_has_amx", lambda: False)
    with torch.autocast("cpu", torch.bfloat16):
        out = backbone.forward_features({"pixel_values": torch.randn(2, 3, 32, 32)})
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in backbone.parameters() if p.grad is not None)

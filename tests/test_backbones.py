"""Contract tests over every backbone source: features, widths, layer groups, rebuild from a run dir."""

import pytest
import torch

from finetunekit.backbones import SOURCES, check_layer_groups, create_backbone, rebuild_backbone
from finetunekit.errors import FinetuneError


@pytest.fixture(params=["timm", "hf"])
def backbone(request, tiny_bert):
    if request.param == "timm":
        return create_backbone("timm:test_efficientnet", pretrained=False, image_size=32)
    return create_backbone(f"hf:{tiny_bert}")


def _batch(backbone):
    if backbone.modality == "image":
        size = backbone.preprocessing()["input_size"]
        return {"pixel_values": torch.randn(2, 3, size, size)}
    enc = backbone.tokenize(["good film", "bad plot and story"], 16)
    width = max(len(x) for x in enc["input_ids"])
    return {k: torch.tensor([row + [0] * (width - len(row)) for row in v]) for k, v in enc.items()}


def test_contract(backbone, tmp_path):
    check_layer_groups(backbone)
    assert len(backbone.layer_groups()) >= 3
    backbone.eval()
    batch = _batch(backbone)
    features = backbone.forward_features(batch)
    assert features.shape == (2, backbone.num_features)
    # Rebuilding from the description + assets and loading the weights gives the same features.
    backbone.save_assets(tmp_path)
    rebuilt = rebuild_backbone(backbone.describe(), tmp_path)
    rebuilt.load_state_dict(backbone.state_dict())
    rebuilt.eval()
    torch.testing.assert_close(rebuilt.forward_features(batch), features)


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

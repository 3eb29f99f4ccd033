"""The bundled pretrained models: weight mapping and sanity of their pretrained behaviour."""

import pytest
import torch

from conftest import HYMENOPTERA, needs_shared_data
from finetunekit.backbones.bundled import efficientnet_lite0_imagenet, efficientnet_lite0_weights_path, map_lite0_state_dict
from finetunekit.core.errors import FinetuneError


def test_lite0_mapping_is_positional_and_shape_checked():
    import timm

    source = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    target = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    mapped = map_lite0_state_dict(source, target)
    assert list(mapped) == list(target)
    assert mapped["conv_stem.weight"] is source["_conv_stem.weight"]
    assert mapped["classifier.weight"] is source["_fc.weight"]
    broken = dict(source)
    broken["_fc.bias"] = torch.zeros(3)
    with pytest.raises(FinetuneError, match="does not fit timm's classifier.bias"):
        map_lite0_state_dict(broken, target)


@needs_shared_data
def test_lite0_imagenet_predictions_on_real_photos():
    """Ants should mostly land on ImageNet class 310 (ant), bees on 309 (bee)."""
    from finetunekit.data.pipeline import image_transform, open_image
    from finetunekit.backbones.bundled import efficientnet_lite0

    model = efficientnet_lite0_imagenet().eval()
    transform = image_transform(efficientnet_lite0(pretrained=False).preprocessing(), train=False)
    for folder, imagenet_class in (("ants", 310), ("bees", 309)):
        files = sorted((HYMENOPTERA / "val" / folder).iterdir())[:20]
        x = torch.stack([transform(open_image(str(f))) for f in files])
        with torch.no_grad():
            top1 = model(x).argmax(-1)
        share = (top1 == imagenet_class).float().mean().item()
        assert share >= 0.7, f"only {share:.0%} of {folder} predicted as ImageNet class {imagenet_class}"


def test_minilm_loads_offline():
    from finetunekit.backbones import create_backbone

    bb = create_backbone("bundled:minilm_l6").eval()
    assert bb.num_features == 384
    enc = bb.tokenize(["a good movie", "a terrible movie", "an excellent film"], 32)
    width = max(map(len, enc["input_ids"]))
    batch = {k: torch.tensor([r + [0] * (width - len(r)) for r in v]) for k, v in enc.items()}
    with torch.no_grad():
        f = torch.nn.functional.normalize(bb.forward_features(batch), dim=-1)
    # A real sentence encoder: "good movie" is closer to "excellent film" than to "terrible movie".
    assert f[0] @ f[2] > f[0] @ f[1]


@pytest.mark.parametrize("variant", [1, 2])
def test_lite1_lite2_weights_map_onto_timm(variant):
    import timm

    from finetunekit.backbones.bundled import efficientnet_lite_weights_path

    source = torch.load(efficientnet_lite_weights_path(variant), map_location="cpu", weights_only=True)
    target = timm.create_model(f"efficientnet_lite{variant}", pretrained=False).state_dict()
    mapped = map_lite0_state_dict(source, target)
    assert list(mapped) == list(target)
    assert mapped["classifier.weight"].shape == (1000, 1280)


@needs_shared_data
@pytest.mark.parametrize("variant", [1, 2])
def test_lite1_lite2_imagenet_predictions_on_real_photos(variant):
    """Real ImageNet weights: most ants and bees get ImageNet's ant (310) / bee (309) as top-1
    (Lite1: 93% / 88% of the whole val set, Lite2: 87% / 87%; 10 photos each here)."""
    from finetunekit.backbones.bundled import efficientnet_lite, efficientnet_lite_imagenet
    from finetunekit.data.pipeline import image_transform, open_image

    model = efficientnet_lite_imagenet(variant).eval()
    transform = image_transform(efficientnet_lite(variant, pretrained=False).preprocessing(), train=False)
    for folder, imagenet_class in (("ants", 310), ("bees", 309)):
        files = sorted((HYMENOPTERA / "val" / folder).iterdir())[:10]
        x = torch.stack([transform(open_image(str(f))) for f in files])
        with torch.no_grad():
            share = (model(x).argmax(-1) == imagenet_class).float().mean().item()
        assert share >= 0.7, f"lite{variant}: only {share:.0%} of {folder} predicted as ImageNet class {imagenet_class}"

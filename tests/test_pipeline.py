"""The image pipeline decodes each file once and gives the same tensors as decoding every time."""

import pytest
import torch

from finetunekit.data import pipeline
from finetunekit.data.pipeline import ImageDataset, augment_seed, image_transform

PRE = {"input_size": 24, "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 0.875}


def _paths(image_data):
    return sorted(str(p) for p in image_data.rglob("*.png"))[:6]


def test_decoded_images_are_reused_and_identical(image_data, monkeypatch):
    paths = _paths(image_data)
    opened = []
    real = pipeline.open_image
    monkeypatch.setattr(pipeline, "open_image", lambda p, *limit: opened.append(p) or real(p, *limit))
    for train, augment in ((False, "none"), (True, "light"), (True, "strong")):
        cached = ImageDataset(paths, None, image_transform(PRE, train, augment))
        fresh = ImageDataset(paths, None, image_transform(PRE, train, augment))
        fresh.memory_budget = 0  # decodes on every access
        opened.clear()
        for epoch in range(2):
            for i in range(len(paths)):
                key = (i, augment_seed(0, epoch, i)) if train else i
                assert torch.equal(cached[key]["pixel_values"], fresh[key]["pixel_values"])
        # the cached set opened each file once; the uncached one every time
        assert sorted(opened) == sorted(paths + paths * 2)


def test_memory_budget_bounds_what_is_kept(image_data):
    paths = _paths(image_data)
    ds = ImageDataset(paths, None, image_transform(PRE, False))
    ds.memory_budget = 2 * 24 * 24 * 3  # two centre-cropped images
    for i in range(len(paths)):
        ds[i]
    assert len(ds._decoded) == 2 and ds._bytes <= ds.memory_budget


def test_progressive_sizes_grow_to_the_full_size():
    assert pipeline.progressive_sizes(224, 5, 0.6) == [128, 160, 176, 208, 224]
    assert pipeline.progressive_sizes(224, 5, 1.0) is None and pipeline.progressive_sizes(224, 1, 0.5) is None


def test_progressive_resizing_keys_give_smaller_crops_of_the_same_draw(image_data):
    """Under progressive resizing the sampler's keys carry the epoch's size; the crop is the one
    the same seed draws at full size, only resized, and an epoch's keys are a function of
    (seed, epoch), so a resumed epoch sees the same batches."""
    paths = _paths(image_data)
    ds = ImageDataset(paths, None, image_transform(PRE, True, "light"))
    sampler = pipeline.ShuffledBatchSampler(len(paths), 2, seed=3, item_seeds=True)
    sampler.sizes = [16, 24]
    sampler.set_epoch(0)
    first = sampler.batches()
    assert all(len(key) == 3 and key[2] == 16 for batch in first for key in batch)
    assert ds[first[0][0]]["pixel_values"].shape == (3, 16, 16)
    sampler.set_epoch(1)
    assert all(key[2] == 24 for batch in sampler.batches() for key in batch)
    sampler.set_epoch(0)
    assert sampler.batches() == first
    index, seed, _ = first[0][0]
    assert torch.equal(ds[(index, seed, 24)]["pixel_values"], ds[(index, seed)]["pixel_values"])


def test_crop_scale_bounds_the_random_crop(tmp_path, image_data):
    """data.crop_scale is the smallest share of the area the training crop keeps; 1.0 keeps the
    whole image (only its aspect ratio may change), and the recipe checks the range."""
    import pytest
    from PIL import Image
    from torchvision import transforms as T

    from finetunekit import Recipe
    from finetunekit.core.errors import RecipeError

    pre = {"input_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}
    crops = [t for t in image_transform(pre, True, "light", 0.8).transforms if isinstance(t, T.RandomResizedCrop)]
    assert len(crops) == 1 and crops[0].scale == (0.8, 1.0)
    assert [t for t in image_transform(pre, True, "strong").transforms if isinstance(t, T.RandomResizedCrop)][0].scale == (0.25, 1.0)
    # a crop of the whole area of a square image is the image itself, resized
    square = Image.new("RGB", (64, 64))
    square.paste((255, 0, 0), (0, 0, 32, 64))
    whole = T.RandomResizedCrop(32, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    torch.manual_seed(0)
    assert whole.get_params(square, whole.scale, whole.ratio) == (0, 0, 64, 64)
    with pytest.raises(RecipeError, match=r"^data\.crop_scale: 0\.0 is out of range \(0\.0, 1\.0\]"):
        Recipe.from_dict({"data": {"crop_scale": 0}})
    assert Recipe.from_dict({"data": {"crop_scale": 0.7}}).data.crop_scale == 0.7


def test_threaded_batches_keep_order_and_raise_the_readers_errors():
    from finetunekit.data.pipeline import threaded_batches

    class Items:
        def __getitem__(self, key):
            if key == 7:
                raise ValueError("item 7 is unreadable")
            return key * 10

    batches = [[0, 1, 2], [3, 4], [5], [6]]
    assert list(threaded_batches(Items(), batches, list, workers=3, ahead=1)) == [[0, 10, 20], [30, 40], [50], [60]]
    with pytest.raises(ValueError, match="item 7 is unreadable"):
        list(threaded_batches(Items(), [[0], [7], [1]], list, workers=2))

"""The image pipeline decodes each file once and gives the same tensors as decoding every time."""

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

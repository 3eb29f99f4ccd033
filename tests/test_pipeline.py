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

"""Examples -> tensors: image transforms from the backbone's preprocessing config, one-time
tokenization, dynamic padding and length-grouped batches for text."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import DataError
from .readers import Examples

# -- images --------------------------------------------------------------------------------------


def image_transform(preprocessing: dict[str, Any], train: bool, augment: str = "light"):
    """torchvision transform built from a backbone's preprocessing dict."""
    from torchvision import transforms as T

    size = int(preprocessing["input_size"])
    interpolation = T.InterpolationMode(preprocessing.get("interpolation", "bilinear"))
    normalize = [T.ToTensor(), T.Normalize(preprocessing["mean"], preprocessing["std"])]
    if train and augment == "light":
        return T.Compose(
            [T.RandomResizedCrop(size, scale=(0.25, 1.0), interpolation=interpolation), T.RandomHorizontalFlip(), *normalize]
        )
    resize = int(round(size / float(preprocessing.get("crop_pct", 1.0))))
    return T.Compose([T.Resize(resize, interpolation=interpolation), T.CenterCrop(size), *normalize])


def open_image(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot read image ({exc.__class__.__name__}: {exc})") from None


class ImageDataset(Dataset):
    def __init__(self, paths: Sequence[str], labels: Sequence[int] | None, transform) -> None:
        self.paths = list(paths)
        self.labels = None if labels is None else list(labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {"pixel_values": self.transform(open_image(self.paths[index])), "index": index}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item


def collate_images(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    batch = {"pixel_values": torch.stack([it["pixel_values"] for it in items]), "index": _indices(items)}
    if "labels" in items[0]:
        batch["labels"] = torch.tensor([it["labels"] for it in items], dtype=torch.long)
    return batch


# -- text ----------------------------------------------------------------------------------------


class TextDataset(Dataset):
    """Token ids computed once, at construction; batches are padded to their own longest row."""

    def __init__(self, encodings: dict[str, list[list[int]]], labels: Sequence[int] | None) -> None:
        self.encodings = encodings
        self.labels = None if labels is None else list(labels)
        self.lengths = [len(ids) for ids in encodings["input_ids"]]

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {k: v[index] for k, v in self.encodings.items()}
        item["index"] = index
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item


class TextCollator:
    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(it["input_ids"]) for it in items)
        batch: dict[str, torch.Tensor] = {}
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            if key not in items[0]:
                continue
            pad = self.pad_token_id if key == "input_ids" else 0
            rows = [list(it[key]) + [pad] * (width - len(it[key])) for it in items]
            batch[key] = torch.tensor(rows, dtype=torch.long)
        if "labels" in items[0]:
            batch["labels"] = torch.tensor([it["labels"] for it in items], dtype=torch.long)
        batch["index"] = _indices(items)
        return batch


def _indices(items: list[dict[str, Any]]) -> torch.Tensor:
    # Row indices travel with each batch so predictions can be put back in dataset order after
    # length-sorted or multi-process evaluation.
    return torch.tensor([it["index"] for it in items], dtype=torch.long)


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Shuffled batches of similar-length rows: shuffle, cut into windows of 50 batches, sort each
    window by length, batch it, then shuffle the batch order. Padding shrinks, randomness stays."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, window: int = 50) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.window = window * batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed * 100_003 + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        batches = []
        for start in range(0, len(order), self.window):
            chunk = sorted(order[start : start + self.window], key=lambda i: self.lengths[i], reverse=True)
            batches.extend(chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        rng.shuffle(batches)
        return iter(batches)


class EvalBatchSampler(Sampler[list[int]]):
    """Evaluation batches sorted by length (less padding); predictions are put back in order."""

    def __init__(self, lengths: Sequence[int], batch_size: int) -> None:
        self.order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        self.batch_size = batch_size

    def __len__(self) -> int:
        return (len(self.order) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        return iter([self.order[i : i + self.batch_size] for i in range(0, len(self.order), self.batch_size)])


class ShuffledBatchSampler(Sampler[list[int]]):
    """A fresh permutation per epoch, a function of (seed, epoch) alone, so a resumed run sees the
    same batches as an uninterrupted one."""

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (self.size + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)).tolist()
        return iter([order[i : i + self.batch_size] for i in range(0, self.size, self.batch_size)])


class SequentialBatchSampler(EvalBatchSampler):
    def __init__(self, size: int, batch_size: int) -> None:
        self.order = list(range(size))
        self.batch_size = batch_size


# -- loaders -------------------------------------------------------------------------------------


def build_dataset(
    examples: Examples, label_ids: Sequence[int] | None, backbone, preprocessing: dict, train: bool, augment: str, max_length: int
) -> Dataset:
    if backbone.modality == "image":
        return ImageDataset(examples.inputs, label_ids, image_transform(preprocessing, train, augment))
    return TextDataset(backbone.tokenize(examples.inputs, max_length), label_ids)


def build_loader(dataset: Dataset, backbone, batch_size: int, train: bool, seed: int, num_workers: int = 0) -> DataLoader:
    """A DataLoader whose batch order is a function of (seed, epoch) only; call
    ``loader.batch_sampler.set_epoch(epoch)`` before each training epoch."""
    sampler: Sampler[list[int]]
    if isinstance(dataset, TextDataset):
        sampler = LengthGroupedBatchSampler(dataset.lengths, batch_size, seed) if train else EvalBatchSampler(dataset.lengths, batch_size)
        collate: Any = TextCollator(backbone.pad_token_id)
    else:
        sampler = ShuffledBatchSampler(len(dataset), batch_size, seed) if train else SequentialBatchSampler(len(dataset), batch_size)
        collate = collate_images
    return DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers, persistent_workers=num_workers > 0
    )

"""Examples -> tensors: image transforms from the backbone's preprocessing config, one-time
tokenization, dynamic padding and length-grouped batches for text."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..core.errors import DataError
from .readers import Examples

# -- images --------------------------------------------------------------------------------------


def image_transform(preprocessing: dict[str, Any], train: bool, augment: str = "light", crop_scale: float = 0.25):
    """torchvision transform built from a backbone's preprocessing dict.

    ``augment`` (training only): "light" = random resized crop (keeping ``crop_scale`` to all of
    the image's area) + horizontal flip; "strong" adds
    TrivialAugmentWide (Mueller & Hutter 2021: one operation of random kind and strength per image,
    no policy to tune) before and RandomErasing (p=0.25) after normalisation. Every draw comes
    from torch's generator, which :class:`ImageDataset` seeds per (seed, epoch, example).
    """
    from torchvision import transforms as T

    size = int(preprocessing["input_size"])
    interpolation = T.InterpolationMode(preprocessing.get("interpolation", "bilinear"))
    normalize = [T.ToTensor(), T.Normalize(preprocessing["mean"], preprocessing["std"])]
    if train and augment in ("light", "strong"):
        crop = [T.RandomResizedCrop(size, scale=(float(crop_scale), 1.0), interpolation=interpolation), T.RandomHorizontalFlip()]
        if augment == "light":
            return T.Compose([*crop, *normalize])
        return T.Compose([*crop, T.TrivialAugmentWide(interpolation=interpolation), *normalize, T.RandomErasing(p=0.25)])
    resize = int(round(size / float(preprocessing.get("crop_pct", 1.0))))
    return T.Compose([T.Resize(resize, interpolation=interpolation), T.CenterCrop(size), *normalize])


def open_image(path: str, max_pixels: int | None = None):
    from PIL import UnidentifiedImageError

    from .images import open_bounded

    try:
        with open_bounded(path, max_pixels) as image:  # too many pixels: a DataError naming the file
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot read image ({exc.__class__.__name__}: {exc})") from None


class ImageDataset(Dataset):
    """Images opened and transformed on access.

    A key is an index, or ``(index, seed)`` from a training sampler: the random augmentation then
    draws from its own generator seeded with ``seed`` and leaves the global RNG untouched. An
    example's augmentation is thus a function of (seed, epoch, index) alone, whatever the worker
    count or prefetching, which is what lets a run resumed mid-epoch replay the same batches.

    With ``joint=True`` (dense tasks) ``labels`` are the examples' raw targets (a mask path, a
    list of boxes) and ``transform(image, raw target)`` returns ``(pixels, target tensor)``: the
    task's joint transform moves the target with the pixels, under the same seeding.
    """

    # Decoded images are kept in memory (per process) up to this many bytes, so later epochs skip
    # the JPEG decode; with a deterministic resize + centre crop first (evaluation), the cropped
    # image is kept instead, which skips the resize too.
    memory_budget = 1 << 30

    def __init__(
        self, paths: Sequence[str], labels: Any, transform, max_pixels: int | None = None, joint: bool = False
    ) -> None:
        self.paths = list(paths)
        self.max_pixels = max_pixels
        self.joint = joint
        self.labels = (None if labels is None else list(labels)) if joint else _targets(labels)
        self.transform = transform
        self._prefix, self._rest = (None, transform) if joint else _deterministic_prefix(transform)
        self._decoded: dict[int, Any] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self.paths)

    def _image(self, index: int):
        image = self._decoded.get(index)
        if image is None:
            image = open_image(self.paths[index], self.max_pixels)
            if self._prefix is not None:
                image = self._prefix(image)
            size = image.width * image.height * 3
            if self._bytes + size <= self.memory_budget:
                self._decoded[index] = image
                self._bytes += size
        return image

    def __getitem__(self, key: int | tuple[int, int] | tuple[int, int, int]) -> dict[str, Any]:
        index, seed, size = (*key, None)[:3] if isinstance(key, tuple) else (key, None, None)
        image = self._image(index)
        transform = self._rest if size is None else self._at_size(size)
        if seed is None:
            pixels, target = self._apply(transform, image, index)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                pixels, target = self._apply(transform, image, index)
        item: dict[str, Any] = {"pixel_values": pixels, "index": index}
        if target is not None:
            item["labels"] = target
        return item

    def _apply(self, transform, image, index: int) -> tuple[torch.Tensor, Any]:
        if self.joint:
            return transform(image, None if self.labels is None else self.labels[index])
        return transform(image), None if self.labels is None else self.labels[index]

    def _at_size(self, size: int):
        """The training transform with its random resized crop producing ``size`` pixels (a key of
        a progressive-resizing epoch); transforms without such a crop are used as they are."""
        from torchvision import transforms as T

        steps = list(getattr(self._rest, "transforms", []))
        if self.joint or not steps or not isinstance(steps[0], T.RandomResizedCrop) or steps[0].size == (size, size):
            return self._rest
        crop = steps[0]
        return T.Compose([T.RandomResizedCrop(size, scale=crop.scale, ratio=crop.ratio, interpolation=crop.interpolation), *steps[1:]])


def progressive_sizes(input_size: int, epochs: int, start: float) -> list[int] | None:
    """Training image size of each epoch for ``train.progressive_resize`` = ``start``: from
    ``start`` x the input size up to the full size in the last epoch, in multiples of 16; None when
    every epoch would use the full size."""
    if start >= 1.0 or epochs < 2:
        return None
    sizes = [min(input_size, max(16, int(round(input_size * (start + (1 - start) * e / (epochs - 1)) / 16)) * 16)) for e in range(epochs)]
    sizes[-1] = input_size
    return None if all(s == input_size for s in sizes) else sizes


def _deterministic_prefix(transform):
    """(Resize + CenterCrop, the rest) for an evaluation Compose, else (None, the whole transform)."""
    from torchvision import transforms as T

    steps = getattr(transform, "transforms", None)
    if steps and len(steps) > 2 and isinstance(steps[0], T.Resize) and isinstance(steps[1], T.CenterCrop):
        return T.Compose(steps[:2]), T.Compose(steps[2:])
    return None, transform


def collate_images(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    batch = {"pixel_values": torch.stack([it["pixel_values"] for it in items]), "index": _indices(items)}
    if "labels" in items[0]:
        batch["labels"] = torch.stack([it["labels"] for it in items])
    return batch


def _targets(labels: Any) -> torch.Tensor | None:
    """Encoded targets (finetunekit.tasks: ``task.encode``) as one tensor, a row per example."""
    if labels is None:
        return None
    return labels if torch.is_tensor(labels) else torch.as_tensor(list(labels), dtype=torch.long)


# -- text ----------------------------------------------------------------------------------------


class TextDataset(Dataset):
    """Token ids computed once, at construction; batches are padded to their own longest row."""

    def __init__(self, encodings: dict[str, list[list[int]]], labels: torch.Tensor | None) -> None:
        self.encodings = encodings
        self.labels = _targets(labels)
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
            batch["labels"] = torch.stack([it["labels"] for it in items])
        batch["index"] = _indices(items)
        return batch


def _indices(items: list[dict[str, Any]]) -> torch.Tensor:
    # Row indices travel with each batch so predictions can be put back in dataset order after
    # length-sorted or multi-process evaluation.
    return torch.tensor([it["index"] for it in items], dtype=torch.long)


class ResumableBatchSampler(Sampler[list[Any]]):
    """Training batches whose order is a function of (seed, epoch) alone, and that can start an
    epoch part-way: ``resume_at(epoch, batch)`` skips the first ``batch`` batches of ``epoch`` as
    lists of indices, so a resumed run loads none of the data it already trained on.

    Subclasses define ``batches()`` (every batch of ``self.epoch``) and ``num_batches``.
    """

    num_batches: int

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.epoch = 0
        self._resume = (-1, 0)  # (epoch, first batch); only that epoch starts late

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, batch: int) -> None:
        self._resume = (epoch, batch)

    def _start(self) -> int:
        return self._resume[1] if self._resume[0] == self.epoch else 0

    def batches(self) -> list[list[Any]]:
        raise NotImplementedError

    item_seeds = False
    sizes: Sequence[int] | None = None  # progressive resizing: the image size of each epoch

    def keys(self, indices: list[int]) -> list[Any]:
        """Dataset keys of ``indices`` in this epoch: the index alone, or with ``item_seeds``
        ``(index, seed of its augmentation)``, plus the epoch's image size under progressive
        resizing (see :class:`ImageDataset`)."""
        if not self.item_seeds:
            return list(indices)
        if self.sizes:
            size = self.sizes[min(self.epoch, len(self.sizes) - 1)]
            return [(i, augment_seed(self.seed, self.epoch, i), size) for i in indices]
        return [(i, augment_seed(self.seed, self.epoch, i)) for i in indices]

    def __len__(self) -> int:
        return max(0, self.num_batches - self._start())

    def __iter__(self) -> Iterator[list[Any]]:
        return iter(self.batches()[self._start() :])


class LengthGroupedBatchSampler(ResumableBatchSampler):
    """Shuffled batches of similar-length rows: shuffle, cut into windows of 50 batches, sort each
    window by length, batch it, then shuffle the batch order. Padding shrinks, randomness stays."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, window: int = 50) -> None:
        super().__init__(seed)
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.window = window * batch_size
        self.num_batches = (len(self.lengths) + self.batch_size - 1) // self.batch_size

    def batches(self) -> list[list[Any]]:
        rng = random.Random(self.seed * 100_003 + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        batches = []
        for start in range(0, len(order), self.window):
            chunk = sorted(order[start : start + self.window], key=lambda i: self.lengths[i], reverse=True)
            batches.extend(chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        rng.shuffle(batches)
        return batches


class EvalBatchSampler(Sampler[list[int]]):
    """Evaluation batches sorted by length (less padding); predictions are put back in order."""

    def __init__(self, lengths: Sequence[int], batch_size: int) -> None:
        self.order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        self.batch_size = batch_size

    def __len__(self) -> int:
        return (len(self.order) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        return iter([self.order[i : i + self.batch_size] for i in range(0, len(self.order), self.batch_size)])


class ShuffledBatchSampler(ResumableBatchSampler):
    """A fresh permutation per epoch, a function of (seed, epoch) alone, so a resumed run sees the
    same batches as an uninterrupted one. With ``item_seeds`` each index comes with the seed of its
    augmentation, ``(index, seed)`` (see :class:`ImageDataset`)."""

    def __init__(self, size: int, batch_size: int, seed: int, item_seeds: bool = False) -> None:
        super().__init__(seed)
        self.size = size
        self.batch_size = batch_size
        self.item_seeds = item_seeds
        self.num_batches = (self.size + self.batch_size - 1) // self.batch_size

    def batches(self) -> list[list[Any]]:
        epoch_seed = self.seed * 100_003 + self.epoch
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(epoch_seed)).tolist()
        keys = self.keys(order)
        return [keys[i : i + self.batch_size] for i in range(0, self.size, self.batch_size)]


def augment_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of example ``index``'s augmentation in ``epoch`` (also used by the feature cache
    to compute exactly the views an uncached run would see)."""
    return ((seed * 100_003 + epoch) * 1_000_003 + index) % 2**63


class BalancedBatchSampler(ResumableBatchSampler):
    """Class-balanced training batches (``data.sampler: balanced``): an epoch draws as many examples
    as the data set has, with replacement, each class with the same probability and each example
    of a class with the same probability within it. The draws are a function of (seed, epoch)
    alone, so :meth:`resume_at` continues an epoch exactly. With ``item_seeds``, keys carry the
    augmentation seed of (seed, epoch, index) as in :class:`ShuffledBatchSampler` (an example drawn
    twice in one epoch gets the same view; across epochs the views differ).
    """

    def __init__(self, labels: Sequence[int] | torch.Tensor, batch_size: int, seed: int, item_seeds: bool = False) -> None:
        super().__init__(seed)
        self.labels = torch.as_tensor(labels if torch.is_tensor(labels) else list(labels), dtype=torch.long)
        counts = torch.bincount(self.labels).double()
        self.weights = 1.0 / counts[self.labels]  # P(example) proportional to 1 / size of its class
        self.batch_size = batch_size
        self.item_seeds = item_seeds
        self.num_batches = (len(self.labels) + batch_size - 1) // batch_size

    def batches(self) -> list[list[Any]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        drawn = torch.multinomial(self.weights, len(self.labels), replacement=True, generator=generator).tolist()
        keys = self.keys(drawn)
        return [keys[i : i + self.batch_size] for i in range(0, len(keys), self.batch_size)]


class SequentialBatchSampler(EvalBatchSampler):
    def __init__(self, size: int, batch_size: int) -> None:
        self.order = list(range(size))
        self.batch_size = batch_size


# -- loaders -------------------------------------------------------------------------------------


def build_loader(
    dataset: Dataset, backbone, batch_size: int, train: bool, seed: int, num_workers: int = 0, sampler_kind: str = "shuffle",
    sizes: Sequence[int] | None = None,
) -> DataLoader:
    """A DataLoader whose batch order is a function of (seed, epoch) only; call
    ``loader.batch_sampler.set_epoch(epoch)`` before each training epoch. ``sampler_kind``
    (``data.sampler``) "balanced" draws class-balanced training batches. ``sizes``: the training
    image size of each epoch (:func:`progressive_sizes`)."""
    sampler: Sampler[list[int]]
    own = getattr(dataset, "collate", None)  # a modality's own dataset says how its items batch
    if train and sampler_kind == "balanced":
        labels = getattr(dataset, "labels", None)
        if labels is None:
            raise DataError("data.sampler: balanced sampling needs labelled training data")
        if not torch.is_tensor(labels) or labels.dim() != 1 or labels.is_floating_point():
            raise DataError("data.sampler: balanced sampling needs one class per example (a single-label classification task)")
        sampler = BalancedBatchSampler(dataset.labels, batch_size, seed, item_seeds=isinstance(dataset, ImageDataset))
        collate: Any = TextCollator(backbone.pad_token_id) if isinstance(dataset, TextDataset) else own or collate_images
    elif isinstance(dataset, TextDataset):
        sampler = LengthGroupedBatchSampler(dataset.lengths, batch_size, seed) if train else EvalBatchSampler(dataset.lengths, batch_size)
        collate = TextCollator(backbone.pad_token_id)
    else:
        sampler = ShuffledBatchSampler(len(dataset), batch_size, seed, item_seeds=True) if train else SequentialBatchSampler(len(dataset), batch_size)
        collate = own or collate_images
    if train and isinstance(dataset, ImageDataset) and isinstance(sampler, ResumableBatchSampler):
        sampler.sizes = sizes
    return DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers, persistent_workers=num_workers > 0
    )


def reader_threads() -> int:
    """Threads that read images for evaluation and prediction: the usable cores, at most 8."""
    from ..core.runtime import usable_cores

    return max(1, min(8, usable_cores()))


def threaded_batches(dataset: Dataset, batches: Any, collate: Any, workers: int, ahead: int = 2) -> Iterator[Any]:
    """The batches of ``dataset`` (one list of keys each), read by ``workers`` threads up to
    ``ahead`` batches beyond the one the caller holds. JPEG decoding and resizing release the GIL,
    so the next batches are read in parallel while the model runs on this one, without the start-up
    and pickling of worker processes. Only for items that draw no random numbers (evaluation and
    prediction: the threads would share torch's generator)."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="finetunekit-read")
    pending: deque[list[Any]] = deque()
    try:
        for keys in batches:
            pending.append([pool.submit(dataset.__getitem__, key) for key in keys])
            if len(pending) > ahead:
                yield collate([future.result() for future in pending.popleft()])
        while pending:
            yield collate([future.result() for future in pending.popleft()])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

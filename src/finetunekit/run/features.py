"""Frozen-feature cache: run a frozen backbone once per example, then train the head on tensors.

While no backbone parameter trains (a linear probe, the head-only epochs of freeze-then-unfreeze,
LP-FT and gradual unfreezing), the backbone's output for an example never changes, so running it
every epoch is wasted work. The trainer computes the pooled features once, stores them on disk and
trains the head on them; the whole epoch then costs a few matrix products.

The cache is keyed by everything the features depend on: the backbone's architecture and weights
(a hash of every tensor), its preprocessing, the examples' content (file bytes for images, token ids
for text), the precision, and for augmented views the seed and augmentation. A second run or a
hyper-parameter trial with the same key reads the features back instead of recomputing them.

Augmentation (``data.cache_views``): with 0 views the training features are those of the
un-augmented (evaluation-transformed) images, computed in one pass. With K views, view k of an
example is exactly the augmentation an uncached run would draw for it in epoch k (the augmentation is
a function of seed, epoch and index), and epoch e uses view e mod K; K >= the number of frozen epochs
reproduces the uncached run, at the cost of K passes over the training images.

Example::

    cache = FeatureCache.default()
    feats = cache.load_or_compute(key, lambda: compute_features(model, loader, accelerator))
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

CACHE_ENV = "FINETUNEKIT_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$FINETUNEKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/finetunekit/features`` (``~/.cache/...``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "finetunekit" / "features"


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def examples_digest(inputs: Sequence[Any], modality: str, encodings: dict[str, list[list[int]]] | None = None) -> str:
    """Content hash of the examples in order, as their modality identifies them (image file bytes,
    the token ids of texts: ``Modality.examples_digest``)."""
    from ..modalities import modality_of

    h = hashlib.sha256()
    modality_of(modality).examples_digest(h, inputs, encodings)
    return h.hexdigest()


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's shape, dtype and bytes."""
    t = tensor.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


class FeatureCache:
    """Feature tensors on disk, one safetensors file per key, written atomically."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @classmethod
    def default(cls, root: str | Path | None = None) -> FeatureCache:
        return cls(root if root is not None else default_cache_dir())

    def path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def get(self, key: str, rows: int | None = None) -> torch.Tensor | None:
        """The entry stored under ``key``, verified: a float32 matrix (of ``rows`` rows when given)
        whose SHA-256 matches the one written with it. Anything else (a truncated file, an entry of
        the wrong shape, values altered on disk) is reported once and treated as a miss, so it is
        recomputed and rewritten, never trusted."""
        path = self.path(key)
        if not path.is_file():
            return None
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                written = (handle.metadata() or {}).get("sha256")
                features = handle.get_tensor("features")
        except (SafetensorError, OSError, KeyError, ValueError) as exc:
            return self._damaged(path, f"unreadable: {exc}")
        if features.dtype != torch.float32 or features.dim() != 2 or (rows is not None and features.shape[0] != rows):
            expected = f"{rows} x D float32" if rows is not None else "a float32 matrix"
            return self._damaged(path, f"{' x '.join(map(str, features.shape))} {features.dtype}, expected {expected}")
        if written != tensor_digest(features):
            return self._damaged(path, "its values do not match the SHA-256 written with them" if written else "no SHA-256 written with it")
        return features

    @staticmethod
    def _damaged(path: Path, why: str) -> None:
        from ..core.errors import warn

        warn(f"feature cache: {path} is damaged ({why}); computing the features again")
        return None

    def put(self, key: str, features: torch.Tensor, meta: dict[str, str] | None = None) -> Path:
        from safetensors.torch import save_file

        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        features = features.contiguous()
        save_file({"features": features}, str(tmp), metadata={**(meta or {}), "sha256": tensor_digest(features)})
        os.replace(tmp, path)
        return path

    def load_or_compute(
        self, key: str, compute: Callable[[], torch.Tensor], meta: dict[str, str] | None = None, rows: int | None = None
    ) -> tuple[torch.Tensor, bool]:
        """``(features, hit)``: the cached tensor (verified, see :meth:`get`), or ``compute()``
        stored under ``key``."""
        found = self.get(key, rows)
        if found is not None:
            return found, True
        features = compute()
        try:
            self.put(key, features, meta)
        except OSError as exc:  # a read-only or full cache disk costs speed next time, not this run
            from ..core.errors import warn

            warn(f"feature cache: could not write {self.path(key)} ({exc}); continuing without storing it")
        return features, False


@torch.no_grad()
def compute_features(
    model: torch.nn.Module, loader: Any, size: int, accelerator: Any, description: str = "features", overlap: bool = False
) -> torch.Tensor:
    """Pooled backbone features (float32, dataset order) for every example ``loader`` yields.

    Runs in eval mode under the accelerator's autocast, so the features match what the frozen
    backbone produces inside training. Every process computes the whole set (no gathering needed).
    ``overlap``: the next batches are read (decoded, resized) in a background thread while the
    backbone runs, for loaders whose items draw no random numbers (decoding and the torch
    operations release the GIL; the global RNG would be shared).
    """
    from tqdm.auto import tqdm

    from ..engine.loop import _interactive

    backbone = model.backbone
    was_training = backbone.training
    backbone.eval()
    out: torch.Tensor | None = None
    bar = tqdm(total=len(loader), desc=description, leave=False, dynamic_ncols=True, disable=not _interactive())
    try:
        for batch in background(loader) if overlap else loader:
            batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            with accelerator.autocast():
                feats = backbone.forward_features(batch).float().cpu()
            if out is None:
                out = torch.empty(size, feats.shape[1], dtype=torch.float32)
            out[batch["index"].cpu()] = feats
            bar.update(1)
    finally:
        bar.close()
        backbone.train(was_training)
    if out is None:
        raise RuntimeError("no examples to compute features for")
    return out


def background(batches: Any, depth: int = 2) -> Any:
    """Iterate ``batches`` in a thread, up to ``depth`` batches ahead of the consumer; an exception
    raised while reading is raised here, and stopping early stops the thread."""
    import queue
    import threading

    ready: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def offer(item: Any) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not offer(batch):
                    return
            offer(end)
        except BaseException as exc:  # handed to the consumer, raised there
            offer(exc)

    thread = threading.Thread(target=produce, name="finetunekit-prefetch", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


class CachedFeatureDataset(Dataset):
    """Rows of cached features (``views`` x N x D) with their labels; ``set_view`` picks the view.

    Keys may be ``(index, seed)`` pairs from an augmenting sampler: the seed is ignored, since the
    augmentation of each view is already in the features. Whole batches are fetched at once
    (``__getitems__``): a batch is one indexing operation, not a Python loop over rows.
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor | Sequence[int] | None) -> None:
        self.features = features if features.dim() == 3 else features.unsqueeze(0)
        if labels is not None and not torch.is_tensor(labels):
            labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.labels = labels
        self.view = 0

    def set_view(self, epoch: int) -> None:
        self.view = epoch % self.features.shape[0]

    def __len__(self) -> int:
        return self.features.shape[1]

    def __getitems__(self, keys: Sequence[Any]) -> dict[str, torch.Tensor]:
        index = torch.tensor([k[0] if isinstance(k, tuple) else k for k in keys], dtype=torch.long)
        batch = {"features": self.features[self.view, index], "index": index}
        if self.labels is not None:
            batch["labels"] = self.labels[index]
        return batch

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        return self.__getitems__([key])


def collate_features(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return batch  # CachedFeatureDataset.__getitems__ already built the batch


# -- the trainer's side ----------------------------------------------------------------------------


class CachedLoaders:
    """Training and validation loaders over cached features, for the epochs with a frozen backbone.

    The training loader shares the run's batch sampler, so a cached epoch sees the same batches in
    the same order as an uncached one would (and resumes mid-epoch the same way).
    """

    def __init__(self, train_ds: CachedFeatureDataset, train_loader: Any, val_loader: Any, seconds: float, hits: int, views: int) -> None:
        self.train_ds, self.train_loader, self.val_loader = train_ds, train_loader, val_loader
        self.seconds, self.hits, self.views = seconds, hits, views  # views: augmented views cached (0: none)

    @property
    def total(self) -> int:
        """Feature sets behind the loaders: each training view, and the validation set."""
        return max(self.views, 1) + 1

    def set_epoch(self, epoch: int) -> None:
        self.train_ds.set_view(epoch)


def build_cached_loaders(run: Any, train_ds: Dataset, val_ds: Dataset, train_ids: Any, val_ids: Any) -> CachedLoaders:
    """Features for the run's training views and validation set, read from the cache or computed.

    ``train_ds`` / ``val_ds`` are the run's own datasets (training and evaluation transforms), so
    texts are not tokenised again; only un-augmented image features need an evaluation-transform
    copy of the training set.
    """
    import time

    from torch.utils.data import DataLoader

    from ..data.pipeline import SequentialBatchSampler, augment_seed, build_loader
    from ..modalities import modality_of
    from ..core.runtime import resolve_precision

    started = time.perf_counter()
    recipe, accelerator, d, seed = run.recipe, run.accelerator, run.recipe.data, run.recipe.train.seed
    model = accelerator.unwrap_model(run.model)
    backbone = model.backbone
    cache = FeatureCache.default(d.cache_dir)
    base = {
        "version": 1, "backbone": backbone.describe(), "weights": weights_digest(backbone),
        "preprocessing": run.preprocessing, "precision": resolve_precision(recipe.train.precision),
    }
    eval_bs = max(64, recipe.train.batch_size * 2)

    def features_of(ds: Dataset, digest: str, view: int | None, desc: str) -> tuple[torch.Tensor, bool]:
        augmentation = {"augment": d.augment, "seed": seed, "view": view}
        if d.crop_scale != 0.25:  # keys of the default stay those of earlier versions
            augmentation["crop_scale"] = d.crop_scale
        key = cache_key({**base, "data": digest, "view": None if view is None else augmentation})
        loader = build_loader(ds, backbone, eval_bs, False, seed, d.num_workers)
        if view is not None:  # every example with the augmentation an uncached run draws in epoch `view`
            keys = [(i, augment_seed(seed, view, i)) for i in range(len(ds))]
            batches = [keys[i : i + eval_bs] for i in range(0, len(keys), eval_bs)]
            loader = DataLoader(ds, batch_sampler=batches, collate_fn=loader.collate_fn, num_workers=d.num_workers)
        # un-augmented images draw no random numbers: they are read while the backbone runs
        overlap = view is None and d.num_workers == 0
        compute = lambda: compute_features(model, loader, len(ds), accelerator, desc, overlap=overlap)  # noqa: E731
        return _shared(accelerator, cache, key, compute, len(ds))

    def digest(examples: Any, ds: Dataset) -> str:
        return examples_digest(examples.inputs, run.modality, getattr(ds, "encodings", None))

    kind = modality_of(run.modality)
    views = d.cache_views if kind.augments and d.augment != "none" else 0
    train_digest = digest(run.train_ex, train_ds)  # read once, whatever the number of views
    if views:
        parts = [features_of(train_ds, train_digest, v, "features (train)") for v in range(views)]
    else:
        # without augmentation the training dataset is already the plain one
        plain = train_ds if not kind.augments else kind.build_dataset(run.train_ex, train_ids, backbone, run.preprocessing, False, "none",
                                                                      d.max_length)
        parts = [features_of(plain, train_digest, None, "features (train)")]
    val, val_hit = features_of(val_ds, digest(run.val_ex, val_ds), None, "features (val)")
    cached_train = CachedFeatureDataset(torch.stack([f for f, _ in parts]), train_ids)
    cached_val = CachedFeatureDataset(val, val_ids)
    train_loader = DataLoader(cached_train, batch_sampler=run.train_sampler, collate_fn=collate_features)
    val_loader = DataLoader(cached_val, batch_sampler=SequentialBatchSampler(len(cached_val), 1024), collate_fn=collate_features)
    train_loader, val_loader = accelerator.prepare(train_loader, val_loader)
    hits = sum(hit for _, hit in parts) + val_hit
    return CachedLoaders(cached_train, train_loader, val_loader, time.perf_counter() - started, hits, views)


def _shared(accelerator: Any, cache: FeatureCache, key: str, compute: Callable[[], torch.Tensor], rows: int) -> tuple[torch.Tensor, bool]:
    """The main process computes and stores the features; the others then read them back."""
    if accelerator.num_processes == 1:
        return cache.load_or_compute(key, compute, rows=rows)
    if accelerator.is_main_process:
        result = cache.load_or_compute(key, compute, rows=rows)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        found = cache.get(key, rows)
        result = (found, True) if found is not None else (compute(), False)
    return result

"""Training a dual encoder: recipe in, run directory out.

An epoch visits every training image once, shuffled, each with one of its captions (the captions of
an image take turns from epoch to epoch), so no batch holds one image twice and every other row of
a batch is a true negative. With the image tower locked (``lit``, ``lora_text``, ``projections``)
its features are computed once, before the first epoch, through the feature cache: an epoch then
runs the text tower alone. Every optimizer step is seeded from (seed, step) and every epoch's batches
from (seed, epoch), so a run resumed from a checkpoint (end of an epoch, or every
``train.checkpoint_every_steps``) continues exactly as the uninterrupted run would.

Example::

    result = train(RetrievalRecipe.from_yaml("examples/flickr8k.yaml"), output="runs/f8k")
    print(result.metrics["test_t2i_r1"])
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import FinetuneError, RecipeError
from . import distributed
from .data import Pairs, check_distinct_images, read_pairs
from .encode import TokenStates, image_features, lower_text_states, run_image_tower, run_text_tower, text_features, text_layers, token_batch
from .metrics import bootstrap_intervals, format_metrics, retrieval_metrics, retrieval_ranks
from .model import DualEncoder, contrastive_loss
from .recipe import RetrievalRecipe

CHECKPOINT = "checkpoint"


@dataclass
class RetrievalResult:
    run_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    model: Any = None


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, flush=True)


# -- building ------------------------------------------------------------------------------------


def set_crop_pct(image: torch.nn.Module, crop_pct: float) -> None:
    """The image tower's centre crop (``model.image_crop_pct``): part of its preprocessing, so of its
    description (saved with the run), of the feature cache's key and of what ``predict`` runs."""
    setter = getattr(image, "set_crop_pct", None)
    if setter is None or "input_size" not in image.preprocessing():
        raise RecipeError(f"model.image_crop_pct: {type(image).__name__} has no resize-and-crop preprocessing to set")
    setter(crop_pct)


def build_towers(recipe: RetrievalRecipe) -> DualEncoder:
    """The two backbones (checked to be an image and a text backbone) and the projections."""
    from ..backbones import create_backbone
    from ..modalities import modality_of

    m = recipe.model
    image = create_backbone(m.image_backbone, m.pretrained, "auto", m.image_size)
    if m.image_crop_pct is not None:
        set_crop_pct(image, m.image_crop_pct)
    text = create_backbone(m.text_backbone, m.pretrained, m.pooling, None)
    for field_name, backbone, kind in (("image_backbone", image, "image"), ("text_backbone", text, "text")):
        try:
            modality_of(kind).check_backbone(backbone)
        except FinetuneError as exc:
            raise RecipeError(f"model.{field_name}: {exc}") from None
    model = DualEncoder(image, text, recipe.task.embed_dim, recipe.task.init_temperature, recipe.task.image_projection_hidden,
                        recipe.task.image_projection_dropout)
    unlocked = recipe.strategy.unlocked_text_layers
    if unlocked is not None:
        depth = len(text_layers(text))
        if unlocked > depth:
            raise RecipeError(f"strategy.unlocked_text_layers: {unlocked}, but {m.text_backbone} has {depth} layers")
        model.unlocked_text_layers = unlocked
    return model


def apply_strategy(model: DualEncoder, spec: Any) -> dict[str, Any] | None:
    """Which parameters train; returns the LoRA adapter's description for ``lora_text``."""
    for p in model.image.parameters():
        p.requires_grad_(not spec.image_locked)
    adapter = None
    if spec.text_lora:
        from ..strategies.lora import inject_adapter, plan

        for p in model.text.parameters():
            p.requires_grad_(False)
        adapter = plan(model.text, spec)
        inject_adapter(model.text, adapter)  # the new low-rank layers are the text tower's only trainable weights
    else:
        for p in model.text.parameters():
            p.requires_grad_(not spec.text_locked)
        if spec.unlocked_text_layers is not None:  # the embeddings and the lower layers stay locked
            for p in model.text.parameters():
                p.requires_grad_(False)
            layers = text_layers(model.text)
            for p in layers[len(layers) - spec.unlocked_text_layers:].parameters():
                p.requires_grad_(True)
    for p in model.head_parameters():
        p.requires_grad_(True)
    return adapter


def optimizer_for(model: DualEncoder, t: Any) -> torch.optim.Optimizer:
    heads = {id(p) for p in model.head_parameters()}
    towers = [p for p in model.parameters() if p.requires_grad and id(p) not in heads]
    groups = [
        {"name": "projections", "params": [*model.image_proj.parameters(), model.text_proj.weight], "lr": t.head_lr,
         "weight_decay": t.weight_decay},
        {"name": "temperature", "params": [model.logit_scale], "lr": t.head_lr, "weight_decay": 0.0},
    ]
    if towers:
        groups.insert(0, {"name": "towers", "params": towers, "lr": t.lr, "weight_decay": t.weight_decay})
    return torch.optim.AdamW(groups)


def lr_factor(step: int, total: int, warmup_ratio: float) -> float:
    """Linear warmup, then cosine decay to zero."""
    warmup = int(total * warmup_ratio)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def epoch_batches(pairs: Pairs, epoch: int, seed: int, batch_size: int) -> list[list[tuple[int, int]]]:
    """(image, caption row) batches of an epoch: every image once, shuffled by (seed, epoch), with
    its caption number (epoch + a seeded offset) mod its caption count; a last batch of one
    example (no negative) is dropped."""
    groups = pairs.captions_of()
    offsets = random.Random(seed).choices(range(1 << 16), k=len(groups))
    order = list(range(len(groups)))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    chosen = [(i, groups[i][(epoch + offsets[i]) % len(groups[i])]) for i in order]
    batches = [chosen[s : s + batch_size] for s in range(0, len(chosen), batch_size)]
    return [b for b in batches if len(b) >= 2]


@dataclass
class _Data:
    pairs: Pairs
    tokens: dict[str, list[list[int]]]
    image_feats: torch.Tensor | None = None  # cached features of the locked image tower
    text_feats: torch.Tensor | None = None  # cached features of the locked text tower
    head_text_feats: torch.Tensor | None = None  # the text tower's initial features, for the head-only epochs
    text_states: TokenStates | None = None  # token states below the unlocked top text layers (strategy.unlocked_text_layers)


def _prepare(model: DualEncoder, pairs: Pairs, recipe: RetrievalRecipe, preprocessing: dict[str, Any], device: Any, quiet: bool,
             name: str) -> tuple[_Data, list[bool]]:
    s, d = recipe.strategy, recipe.data
    hits = []
    data = _Data(pairs, model.text.tokenize(pairs.captions, d.max_length))
    if s.image_locked:
        data.image_feats, hit = image_features(model.image, pairs.images, preprocessing["image_tower"], device, d.cache_dir, quiet,
                                               f"image features ({name})")
        hits.append(hit)
    if s.caches_text:
        data.text_feats, hit = text_features(model.text, data.tokens, device, d.cache_dir, quiet)
        hits.append(hit)
    elif s.unlocked_text_layers is not None and name != "test":  # the test split runs the whole tower, as search does
        depth = len(text_layers(model.text)) - s.unlocked_text_layers
        data.text_states, hit = lower_text_states(model.text, data.tokens, depth, device, d.cache_dir, quiet)
        hits.append(hit)
        if s.head_epochs:  # the initial top layers on the cached states: the whole tower's initial features
            data.head_text_feats = _state_features(model, data.text_states, len(pairs), device)
    elif s.head_epochs and name != "test":
        data.head_text_feats, hit = text_features(model.text, data.tokens, device, d.cache_dir, quiet)
        hits.append(hit)
    return data, hits


@torch.no_grad()
def _state_features(model: DualEncoder, states: TokenStates, n: int, device: Any, batch_size: int = 256) -> torch.Tensor:
    """The text tower's pooled features of every caption, its unlocked top layers run (in eval mode)
    on the cached lower token states."""
    was = model.text.training
    model.text.eval()
    rows = list(range(n))
    try:
        return torch.cat([model.text_features({k: v.to(device) for k, v in states.batch(rows[s : s + batch_size]).items()}).float().cpu()
                          for s in range(0, n, batch_size)])
    finally:
        model.text.train(was)


# -- evaluation ----------------------------------------------------------------------------------


@torch.no_grad()
def embed_split(model: DualEncoder, data: _Data, preprocessing: dict[str, Any], device: Any, quiet: bool = True,
                head_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(image embeddings, caption embeddings) of a split, unit length; ``head_only``: the text
    tower has not trained yet, so its cached initial features stand for it."""
    model.eval()
    if head_only and data.head_text_feats is not None:
        data = _Data(data.pairs, data.tokens, data.image_feats, data.head_text_feats)
    img_feats = data.image_feats if data.image_feats is not None else run_image_tower(model.image, data.pairs.images, preprocessing["image_tower"],
                                                                                     device, quiet=quiet)
    if data.text_feats is not None:
        txt_feats = data.text_feats
    elif data.text_states is not None:  # the unlocked top layers on the cached lower states
        txt_feats = _state_features(model, data.text_states, len(data.pairs), device)
    else:
        txt_feats = run_text_tower(model.text, data.tokens, device, quiet=quiet)
    img = model.encode_image({"image_features": img_feats.to(device)}).cpu().numpy()
    txt = model.encode_text({"text_features": txt_feats.to(device)}).cpu().numpy()
    return img, txt


def judge(model: DualEncoder, data: _Data, preprocessing: dict[str, Any], device: Any, head_only: bool = False
          ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    img, txt = embed_split(model, data, preprocessing, device, head_only=head_only)
    ranks = retrieval_ranks(img, txt, data.pairs.image_of)
    return retrieval_metrics(ranks), ranks


# -- the loop --------------------------------------------------------------------------------------


def _step(model: DualEncoder, train: _Data, batch: list[tuple[int, int]], device: Any, preprocessing: dict[str, Any],
          head_only: bool = False, label_smoothing: float = 0.0) -> torch.Tensor:
    if head_only:
        train = _Data(train.pairs, train.tokens, train.image_feats, train.head_text_feats)
    size, batch = len(batch), distributed.shard(batch)  # several processes: each embeds its own slice
    images = [i for i, _ in batch]
    rows = [r for _, r in batch]
    if train.image_feats is not None:
        img = model.encode_image({"image_features": train.image_feats[images].to(device)})
    else:
        from .encode import pixel_batches

        pixels = next(iter(pixel_batches([train.pairs.images[i] for i in images], preprocessing["image_tower"], len(images))))[1]
        img = model.encode_image({"pixel_values": pixels.to(device)})
    if train.text_feats is not None:
        txt = model.encode_text({"text_features": train.text_feats[rows].to(device)})
    elif train.text_states is not None:
        txt = model.encode_text({k: v.to(device) for k, v in train.text_states.batch(rows).items()})
    else:
        txt = model.encode_text({k: v.to(device) for k, v in token_batch(train.tokens, rows, model.text.pad_token_id).items()})
    img, txt = distributed.gather_pairs(img, txt, size)  # the loss over the global batch
    return contrastive_loss(img, txt, model.logit_scale.exp(), label_smoothing)


def train(recipe: RetrievalRecipe, output: str | Path | None = None, overwrite: bool = False, quiet: bool = False, resume: bool = False,
          stop_after_steps: int | None = None) -> RetrievalResult:
    """Train ``recipe`` into ``output``. ``resume=True`` continues from the run's checkpoint
    (the same recipe is required). ``stop_after_steps`` stops (as an interruption would) after that
    many optimizer steps, having written a checkpoint: for testing resume. Started by torchrun on
    several processes, each step's loss is taken over the global batch with every process's
    embeddings (:mod:`finetunekit.retrieval.distributed`)."""
    run_dir = Path(output) if output is not None else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    distributed.setup()  # several processes (torchrun): the batch's negatives are gathered from all
    if distributed.is_main():  # process 0 writes the run directory
        return _train(recipe, run_dir, overwrite, quiet, resume, stop_after_steps)
    import contextlib
    import io
    import shutil

    own = distributed.private_run_dir(run_dir, resume)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return _train(recipe, own, overwrite, True, resume, stop_after_steps)
    finally:
        shutil.rmtree(own.parent, ignore_errors=True)


def _train(recipe: RetrievalRecipe, run_dir: Path, overwrite: bool, quiet: bool, resume: bool, stop_after_steps: int | None
           ) -> RetrievalResult:
    from ..core.outputs import RunDirLock
    from ..run import artifacts

    started = time.perf_counter()
    resuming = resume and (run_dir / CHECKPOINT / "state.json").is_file()
    if resume and overwrite:
        raise FinetuneError("--resume and --overwrite exclude each other: resume keeps the run directory, overwrite replaces it")
    if not resuming:
        artifacts.check_run_dir(run_dir, overwrite or resume)
    t, d = recipe.train, recipe.data
    if not d.train:
        raise RecipeError("data.train: no training table given (a .csv/.tsv/.jsonl/.parquet file with image and caption columns)")
    train_pairs = read_pairs(d.train, d.image_column, d.caption_column, d.image_root)
    if d.max_train_images is not None and d.max_train_images < len(train_pairs.images):
        keep = sorted(random.Random(t.seed).sample(range(len(train_pairs.images)), d.max_train_images))
        train_pairs = train_pairs.subset_images(keep)
    if d.val:
        val_pairs = read_pairs(d.val, d.image_column, d.caption_column, d.image_root)
    else:  # a seeded tenth of the training images (with all their captions) is held out
        order = list(range(len(train_pairs.images)))
        random.Random(t.seed).shuffle(order)
        cut = max(2, len(order) // 10)
        if len(order) - cut < 2:
            raise FinetuneError(f"{d.train}: {len(order)} images; give data.val or at least 4 training images")
        val_pairs, train_pairs = train_pairs.subset_images(sorted(order[:cut])), train_pairs.subset_images(sorted(order[cut:]))
    test_pairs = read_pairs(d.test, d.image_column, d.caption_column, d.image_root) if d.test else None
    for pairs in (train_pairs, val_pairs, test_pairs):
        if pairs is not None:  # one picture under two paths would be its own negative, and a second right answer
            check_distinct_images(pairs)
    torch.manual_seed(t.seed)  # the projections' initial weights (and random towers): a function of the seed
    model = build_towers(recipe)  # after the data: a bad table is refused before minutes of loading
    adapter = apply_strategy(model, recipe.strategy)
    device = distributed.device()
    model.to(device)
    preprocessing = {"image_tower": model.image.preprocessing(), "text_tower": {"max_length": d.max_length}}

    with RunDirLock(run_dir) if run_dir.parent.exists() else _nothing():
        if not resuming:
            artifacts.prepare_run_dir(run_dir, overwrite or resume)
            artifacts.save_recipe(run_dir, recipe.to_dict())
        return _fit(recipe, model, adapter, run_dir, train_pairs, val_pairs, test_pairs, preprocessing, device, resuming, quiet,
                    stop_after_steps, started)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _fit(recipe: RetrievalRecipe, model: DualEncoder, adapter: dict[str, Any] | None, run_dir: Path, train_pairs: Pairs, val_pairs: Pairs,
         test_pairs: Pairs | None, preprocessing: dict[str, Any], device: Any, resuming: bool, quiet: bool, stop_after_steps: int | None,
         started: float) -> RetrievalResult:
    from ..run import artifacts

    t = recipe.train
    cache_started = time.perf_counter()
    train_data, hits = _prepare(model, train_pairs, recipe, preprocessing, device, quiet, "train")
    val_data, val_hits = _prepare(model, val_pairs, recipe, preprocessing, device, quiet, "val")
    cache_seconds = time.perf_counter() - cache_started
    optimizer = optimizer_for(model, t)
    per_epoch = len(epoch_batches(train_pairs, 0, t.seed, t.batch_size))
    total = per_epoch * t.epochs
    head_steps = per_epoch * recipe.strategy.head_epochs  # the schedule starts again when the towers start training
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    count = sum(p.numel() for p in model.parameters())
    _say(quiet, f"run dir: {run_dir}")
    _say(quiet, (f"retrieval: image {recipe.model.image_backbone} + text {recipe.model.text_backbone} -> {recipe.task.embed_dim}-d, "
                 f"strategy {recipe.strategy.name}; {len(train_pairs.images)} train images ({len(train_pairs)} captions), "
                 f"{len(val_pairs.images)} val images ({len(val_pairs)} captions); trainable params {trainable:,} / {count:,} "
                 f"({100 * trainable / count:.1f}%), device {device}"))
    bs = min(t.batch_size, len(train_pairs.images))
    _say(quiet, (f"{distributed.describe_batch(bs)} in each direction (image->text and text->image); "
                 f"{per_epoch} batches per epoch (each image once, one of its captions)"))
    if hits:
        s = recipe.strategy
        locked = " and ".join(n for n, on in (("image", s.image_locked), ("text", s.caches_text)) if on)
        states = " and the token states of the text tower's locked lower layers" if s.unlocked_text_layers else ""
        _say(quiet, (f"feature cache: the locked {locked} tower's features{states}, {sum(hits) + sum(val_hits)} of {len(hits) + len(val_hits)} "
                     f"sets read from the cache ({cache_seconds:.1f}s); epochs run "
                     + ("the projections only" if s.caches_text else
                        f"the text tower's top {s.unlocked_text_layers} layers on its cached lower token states, and the projections"
                        if s.unlocked_text_layers else "the text tower and the projections")))
    history: list[dict[str, Any]] = []
    epoch, batch_at, step = 0, 0, 0
    if resuming:
        epoch, batch_at, step, history = _restore(run_dir, recipe, model, optimizer)
        _say(False, f"resuming from {run_dir / CHECKPOINT} (optimizer step {step}, epoch {epoch + 1}, batch {batch_at})")
    while epoch < t.epochs:
        model.train()
        if recipe.strategy.image_locked:
            model.image.eval()  # a locked tower keeps its BatchNorm statistics and drops no units
        if recipe.strategy.caches_text:
            model.text.eval()
        batches = epoch_batches(train_pairs, epoch, t.seed, t.batch_size)
        head_only = epoch < recipe.strategy.head_epochs
        tic, losses = time.perf_counter(), []
        for b in range(batch_at, len(batches)):
            torch.manual_seed(t.seed * 1_000_003 + step)  # dropout draws: a function of the step alone
            for group in optimizer.param_groups:
                phase = (step, head_steps) if step < head_steps else (step - head_steps, total - head_steps)
                group["lr"] = group.setdefault("initial_lr", group["lr"]) * lr_factor(*phase, t.warmup_ratio)
            loss = _step(model, train_data, batches[b], device, preprocessing, head_only, t.label_smoothing)
            if not torch.isfinite(loss):
                raise FinetuneError(f"the loss became {loss.item()} at step {step + 1}; try a lower train.lr / train.head_lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients(model)
            if t.max_grad_norm:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], t.max_grad_norm)
            optimizer.step()
            model.clamp_logit_scale()
            step += 1
            losses.append(loss.item())
            every = t.checkpoint_every_steps
            if (every and step % every == 0 and b + 1 < len(batches)) or (stop_after_steps is not None and step >= stop_after_steps):
                _save_checkpoint(run_dir, recipe, model, optimizer, epoch, b + 1, step, history)
            if stop_after_steps is not None and step >= stop_after_steps:
                raise KeyboardInterrupt(f"stopped after {step} steps")
        seconds = time.perf_counter() - tic
        metrics, _ = judge(model, val_data, preprocessing, device, head_only)
        record = {"epoch": epoch + 1, "step": step, "train_loss": float(np.mean(losses)) if losses else None,
                  "temperature": round(1 / float(model.logit_scale.detach().exp()), 5), "train_seconds": round(seconds, 2),
                  **{f"val_{k}": v for k, v in metrics.items() if isinstance(v, float)}}
        history.append(record)
        artifacts.atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
        _say(quiet, (f"epoch {epoch + 1}/{t.epochs}  train_loss {record['train_loss'] or float('nan'):.4f}  "
                     f"val i2t R@1 {metrics['i2t_r1']:.3f}  t2i R@1 {metrics['t2i_r1']:.3f}  mean recall {metrics['mean_recall']:.3f}  "
                     f"temperature {record['temperature']:.4f}  ({seconds:.1f}s)"))
        epoch, batch_at = epoch + 1, 0
        _save_checkpoint(run_dir, recipe, model, optimizer, epoch, 0, step, history)
    return _finish(recipe, model, adapter, run_dir, val_data, test_pairs, preprocessing, device, history, quiet, started)


def _save_checkpoint(run_dir: Path, recipe: RetrievalRecipe, model: DualEncoder, optimizer: Any, epoch: int, batch: int, step: int,
                     history: list[dict[str, Any]]) -> None:
    """The model, the optimizer and the position, swapped in as one directory."""
    from ..run import artifacts

    def fill(folder: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
        torch.save(optimizer.state_dict(), folder / "optimizer.pt")
        state = {"epoch": epoch, "batch": batch, "step": step, "history": history, "recipe": recipe.to_dict()}
        (folder / "state.json").write_text(json.dumps(state))

    artifacts.atomic_replace_dir(run_dir / CHECKPOINT, fill)


def _restore(run_dir: Path, recipe: RetrievalRecipe, model: DualEncoder, optimizer: Any) -> tuple[int, int, int, list[dict[str, Any]]]:
    from safetensors.torch import load_file

    from ..run.artifacts import safe_torch_load

    folder = run_dir / CHECKPOINT
    state = json.loads((folder / "state.json").read_text())
    if state["recipe"] != recipe.to_dict():
        changed = sorted(f"{s}.{k}" for s in state["recipe"] for k in state["recipe"][s]
                         if state["recipe"][s].get(k) != recipe.to_dict().get(s, {}).get(k))
        raise FinetuneError(f"{run_dir}: the recipe changed since the checkpoint ({', '.join(changed)}); resume needs the same recipe")
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    optimizer.load_state_dict(safe_torch_load(folder / "optimizer.pt"))
    return int(state["epoch"]), int(state["batch"]), int(state["step"]), list(state["history"])


def _finish(recipe: RetrievalRecipe, model: DualEncoder, adapter: dict[str, Any] | None, run_dir: Path, val_data: _Data,
            test_pairs: Pairs | None, preprocessing: dict[str, Any], device: Any, history: list[dict[str, Any]], quiet: bool,
            started: float) -> RetrievalResult:
    import shutil

    from .run_dir import save_run

    if adapter is not None:  # the saved model is a plain one: the adapters folded into the text tower's weights
        from ..strategies.lora import merge_into_backbone

        merge_into_backbone(model.text)
    metrics, ranks = judge(model, val_data, preprocessing, device)
    final: dict[str, Any] = {**metrics, **bootstrap_intervals(ranks), "epochs_run": len(history), "eval_set": val_data.pairs.source}
    all_ranks = {"val": {k: v.tolist() for k, v in ranks.items()}}
    examples = None
    if test_pairs is not None:
        test_data, _ = _prepare(model, test_pairs, recipe, preprocessing, device, quiet, "test")
        img, txt = embed_split(model, test_data, preprocessing, device, quiet)
        test_ranks = retrieval_ranks(img, txt, test_pairs.image_of)
        test_metrics = {**retrieval_metrics(test_ranks), **bootstrap_intervals(test_ranks)}
        final.update({f"test_{k}": v for k, v in test_metrics.items()})
        final["test_set"] = test_pairs.source
        all_ranks["test"] = {k: v.tolist() for k, v in test_ranks.items()}
        examples = top_images(img, txt, test_pairs)
    seconds = time.perf_counter() - started
    final["train_seconds"] = round(sum(r["train_seconds"] for r in history), 2)
    save_run(run_dir, recipe, model, preprocessing, final, all_ranks, examples)
    shutil.rmtree(run_dir / CHECKPOINT, ignore_errors=True)  # last: a crash before this resumes into the finished run's files
    print(format_metrics(metrics, f"validation metrics ({val_data.pairs.source}):"), flush=True)
    if test_pairs is not None:
        print(format_metrics({k[5:]: v for k, v in final.items() if k.startswith("test_")}, f"test metrics ({test_pairs.source}):"), flush=True)
    print(f"saved to {run_dir} in {seconds:.1f}s", flush=True)
    return RetrievalResult(run_dir, final, history, seconds, model)


def top_images(img: np.ndarray, txt: np.ndarray, pairs: Pairs, queries: int = 8, top: int = 5) -> list[dict[str, Any]]:
    """For the first caption of the first ``queries`` images: the ``top`` images found, and where
    the right one ranked (the report shows them)."""
    out = []
    groups = pairs.captions_of()
    for image in range(min(queries, len(groups))):
        row = groups[image][0]
        sims = img @ txt[row]
        order = np.argsort(-sims)
        out.append({"caption": pairs.captions[row], "answer": pairs.images[image],
                    "rank": int((sims >= sims[image]).sum()),
                    "found": [{"path": pairs.images[j], "score": round(float(sims[j]), 4)} for j in order[:top]]})
    return out

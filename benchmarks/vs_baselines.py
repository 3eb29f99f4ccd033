"""finetunekit against the baselines people use today, in one run, on the same model, data, epochs
and batch size; prints times, accuracy, peak memory and the speed ratios, each against the
strongest (fastest) baseline row of the same task measured in the same run.

Rows (each runs in its own fresh Python process, so peak memory is that row's alone):

* text: the bundled MiniLM-L6 fully fine-tuned on 2,000 random SST-2 training rows for 3 epochs,
  evaluated on the full dev set, at finetunekit's default batch size (16) on both sides.
  Baselines: Hugging Face ``Trainer`` with its defaults (AdamW fused, learning rate 5e-5, linear
  decay, no warmup, weight decay 0, gradient clipping at 1.0, dynamic padding with
  ``DataCollatorWithPadding``), with ``train_sampling_strategy="group_by_length"`` (batches of
  similar lengths, the setting a user who wants speed turns on) in bf16 and fp32; the slower
  random-batch rows (its default) and finetunekit's fp32 row run with ``--rows text_extra``. Its accuracy
  comes from a plain in-order loop over the dev set (``Trainer.predict`` also groups evaluation
  batches by length and returns them out of order).
  finetunekit runs its defaults (``examples/sst2.yaml``, strategy full). Time = the training loop
  alone on both sides (``Trainer.train``'s runtime; finetunekit's per-epoch training seconds).
* matmul rate: a large bf16 matrix product (4096 x 4096 x 4096, best of 5) with the same torch
  thread count, the reference for the text row's share of the CPU's matrix-product rate (the
  text row counts its matrix-product FLOPs with torch's FlopCounterMode on two batch shapes and
  scales them to every batch it trained on).
* vision: the bundled EfficientNet-Lite0 on ants/bees. Baseline: the PyTorch transfer-learning
  tutorial loop (RandomResizedCrop + flip, SGD 1e-3 momentum 0.9, StepLR(7, 0.1), a train and a
  val phase per epoch, best weights kept, DataLoader with 4 workers), fully fine-tuned (5 epochs,
  at finetunekit's batch size and at the tutorial's own batch size 4) and as a fixed feature
  extractor (10 epochs). Both sides use the model's own preprocessing (input size, mean/std).
  Time = everything from the start of training to the trained model (validation every epoch
  included, on both sides; finetunekit's includes building the model, its image checks and feature
  cache too, but not writing the run directory). Library imports (torch, torchvision, timm) happen
  before the clock starts on both sides.
* inference (``--rows inference``, not in the default run): ``predict`` (the batch path, input
  table or folder to a CSV) and ``evaluate`` throughput in samples per second, on a run trained
  inside the rows first (text: MiniLM-L6, 256 SST-2 rows, one epoch; images: a Lite0 linear probe
  on ants/bees, 3 epochs; training not counted), over the SST-2 dev set (872 sentences) and the
  ants/bees val folder (153 images). Baselines load the run's own exports (``export --format hf``,
  ``--format timm``), so they hold the same weights: the transformers ``pipeline`` and a plain
  tokenizer + model loop (in input order, and batched by length) for text, a plain timm loop (its
  own transform, a DataLoader with workers, channels-last) for images; all batched (64), in the run's precision, on cuda when there is one. Model
  load and one warm-up batch are outside the clock on every side. Each row's predictions are
  compared with finetunekit's batch predict (the table's "same label" column).
  ``BENCH_INFER_LIMIT=N`` predicts only the first N inputs (per class for images), for smoke runs.

    python benchmarks/vs_baselines.py                 # text, vision, frozen (about 20 minutes on 2 quiet CPU cores)
    python benchmarks/vs_baselines.py --rows text     # a subset: text, text_extra, vision, frozen, inference
    python benchmarks/vs_baselines.py --rows inference --write   # inference rows into docs/performance.md (a table per device kind)
    python benchmarks/vs_baselines.py --json out.json # also write the raw rows
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FINETUNEKIT_SHARED_DATA", REPO.parent / "shared" / "data"))
SST2 = DATA / "sst2"
ANTS = DATA / "images" / "hymenoptera_data"
TEXT_BATCH = int(os.environ.get("BENCH_TEXT_BATCH", 16))  # finetunekit's default (finetunekit.run.defaults)
EPOCHS = int(os.environ.get("BENCH_EPOCHS", 3))
IMAGE_BATCH = 16


def peak_memory_mib() -> float:
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def device_name() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} ({os.cpu_count()} CPU cores for data loading), torch {torch.__version__}"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{platform.machine()} CPU, {usable} of {os.cpu_count()} cores usable, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"


# -- text: Hugging Face Trainer -----------------------------------------------------------------------


def sst2_subset(tmp: Path) -> tuple[Path, Path]:
    """The same 2,000 training rows finetunekit's data.max_train_samples=2000 (seed 0) picks."""
    from finetunekit import Recipe
    from finetunekit.run.plan import resolve

    recipe = Recipe.from_yaml(REPO / "examples" / "sst2.yaml").with_overrides(
        [f"data.train={SST2 / 'train.tsv'}", f"data.val={SST2 / 'dev.tsv'}"]
    )
    train_ex = resolve(recipe, "text").train
    out = tmp / "sst2_2000.tsv"
    rows = ["sentence\tlabel"] + [f"{t}\t{y}" for t, y in zip(train_ex.inputs, train_ex.labels)]
    out.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return out, SST2 / "dev.tsv"


def row_text_trainer(precision: str, grouped: bool, tmp: Path) -> dict:
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

    from finetunekit.backbones.bundled import minilm_l6_path
    from finetunekit.modalities import read_examples

    train_path, dev_path = sst2_subset(tmp)
    path = str(minilm_l6_path())
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)

    class Rows(torch.utils.data.Dataset):
        def __init__(self, file: Path) -> None:
            ex = read_examples(str(file), "text", "sentence", "label")
            self.enc = tok(list(ex.inputs), truncation=True, max_length=128)
            self.labels = [int(y) for y in ex.labels]

        def __len__(self) -> int:
            return len(self.labels)

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": self.enc["input_ids"][i], "attention_mask": self.enc["attention_mask"][i], "labels": self.labels[i]}

    train_ds, dev_ds = Rows(train_path), Rows(dev_path)
    args = TrainingArguments(
        output_dir=str(tmp / "hf"), per_device_train_batch_size=TEXT_BATCH, per_device_eval_batch_size=64,
        num_train_epochs=EPOCHS, learning_rate=5e-5, bf16=precision == "bf16", use_cpu=not torch.cuda.is_available(),
        train_sampling_strategy="group_by_length" if grouped else "random",
        eval_strategy="no", save_strategy="no", report_to=[], logging_strategy="no", seed=0, disable_tqdm=True,
    )
    collator = DataCollatorWithPadding(tok)
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, data_collator=collator)
    out = trainer.train()
    # A plain in-order loop: Trainer.predict groups evaluation batches by length when the training
    # batches are grouped, so its predictions would not line up with the labels.
    model = trainer.model.eval()
    correct = 0
    with torch.no_grad(), torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        for i in range(0, len(dev_ds), 64):
            batch = collator([dev_ds[j] for j in range(i, min(i + 64, len(dev_ds)))])
            labels = batch.pop("labels")
            logits = model(**{k: v.to(model.device) for k, v in batch.items()}).logits
            correct += int((logits.argmax(-1).cpu() == labels).sum())
    accuracy = correct / len(dev_ds)
    seconds = float(out.metrics["train_runtime"])
    return {"train_seconds": seconds, "samples_per_second": len(train_ds) * EPOCHS / seconds, "accuracy": accuracy,
            "settings": f"batch {TEXT_BATCH}, {'length-grouped' if grouped else 'random'} batches, {precision}, "
                        f"{getattr(args.optim, 'value', args.optim)} lr 5e-5, linear decay, no warmup, weight decay 0, "
                        f"gradient clipping {args.max_grad_norm:g}, dataloader workers {args.dataloader_num_workers}"}


def row_text_finetunekit(precision: str, tmp: Path) -> dict:
    from finetunekit import Recipe, train

    recipe = Recipe.from_yaml(REPO / "examples" / "sst2.yaml").with_overrides([
        f"data.train={SST2 / 'train.tsv'}", f"data.val={SST2 / 'dev.tsv'}", "strategy.name=full",
        f"train.batch_size={TEXT_BATCH}", f"train.epochs={EPOCHS}", f"train.precision={precision}",
    ])
    result = train(recipe, output=tmp / "run", quiet=True)
    seconds = sum(h["train_seconds"] for h in result.history)
    samples = sum(h["train_seconds"] * h["train_samples_per_second"] for h in result.history)
    r = result.recipe.train
    return {"train_seconds": seconds, "samples_per_second": samples / seconds, "accuracy": result.metrics["accuracy"],
            "wall_seconds": result.seconds, "matmul_gflop": text_matmul_flops(result, recipe) / 1e9,
            "settings": f"batch {r.batch_size}, length-grouped batches, {precision}, adamw (fused) lr {r.lr:g} (head {r.head_lr:g}), "
                        f"{r.scheduler} decay, warmup {r.warmup_ratio:g}, weight decay {r.weight_decay:g}, "
                        f"token embeddings {'trained' if result.recipe.strategy.train_token_embeddings else 'frozen'}"}


def text_matmul_flops(result, recipe) -> float:
    """Matrix-product FLOPs of every training step the run took (forward and backward).

    A step's FLOPs are a * tokens + b * sum(length^2) over its batch (linear layers; attention
    scores); a and b come from torch's FlopCounterMode on two real steps of different lengths, and
    the sums from the batches the run's sampler drew in each epoch.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from finetunekit.data.pipeline import build_loader
    from finetunekit.modalities import build_dataset
    from finetunekit.run.plan import resolve

    model = result.model.train()
    backbone = model.backbone
    plan = resolve(recipe, "text")
    resolved, train_ex, task = plan.recipe, plan.train, plan.task
    train_ids = task.encode(train_ex)
    ds = build_dataset(train_ex, train_ids, backbone, {}, True, "none", resolved.data.max_length)
    loader = build_loader(ds, backbone, TEXT_BATCH, True, resolved.train.seed)
    precision = result.recipe.train.precision

    def counted(length: int) -> float:
        ids = torch.full((TEXT_BATCH, length), 1000, dtype=torch.long)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.zeros(TEXT_BATCH, dtype=torch.long)}
        if "token_type_ids" in ds.encodings:
            batch["token_type_ids"] = torch.zeros_like(ids)
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        with FlopCounterMode(display=False) as counter, torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
            loss = sum(dict(task.loss(model(batch), batch["labels"])).values())
            loss.backward()
        model.zero_grad(set_to_none=True)
        return float(counter.get_total_flops())

    l1, l2 = 16, 48
    f1, f2 = counted(l1), counted(l2)
    b = (f2 / l2 - f1 / l1) / (TEXT_BATCH * (l2 - l1))  # per example per length^2
    a = f1 / (TEXT_BATCH * l1) - b * l1  # per token
    total = 0.0
    for epoch in range(result.metrics["epochs_run"]):
        loader.batch_sampler.set_epoch(epoch)
        for indices in loader.batch_sampler:
            width = max(ds.lengths[i] for i in indices)
            total += a * len(indices) * width + b * len(indices) * width**2
    return total


def row_matmul_rate(tmp: Path) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    n = 8192 if cuda else 4096
    device = "cuda" if cuda else "cpu"
    x, y = torch.randn(n, n, dtype=torch.bfloat16, device=device), torch.randn(n, n, dtype=torch.bfloat16, device=device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(3):
        x @ y
    sync()
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(10 if cuda else 1):
            x @ y
        sync()
        best = min(best, (time.perf_counter() - started) / (10 if cuda else 1))
    where = torch.cuda.get_device_name() if cuda else f"{torch.get_num_threads()} thread(s)"
    return {"train_seconds": best, "samples_per_second": 0.0, "accuracy": float("nan"), "gflops": 2 * n**3 / best / 1e9,
            "settings": f"{n} x {n} x {n} bf16 product, best of 5{' (each the mean of 10)' if cuda else ''}, {where}"}


# -- vision: the PyTorch transfer-learning tutorial ---------------------------------------------------


def row_vision_tutorial(mode: str, epochs: int, batch_size: int, tmp: Path) -> dict:
    """The tutorial's train_model(), with the bundled Lite0 in place of ResNet-18."""
    import copy

    import torch
    from torch import nn
    from torchvision import datasets, transforms

    from finetunekit.backbones import create_backbone

    torch.manual_seed(0)
    backbone = create_backbone("bundled:efficientnet_lite0", True, "auto", None)
    pre = backbone.preprocessing()
    size, mean, std = int(pre["input_size"]), pre["mean"], pre["std"]
    net = backbone.model  # the timm efficientnet_lite0 with the ImageNet weights
    net.reset_classifier(2)
    tf = {
        "train": transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), transforms.ToTensor(), transforms.Normalize(mean, std)]),
        "val": transforms.Compose([transforms.Resize(int(round(size / pre.get("crop_pct", 0.875)))), transforms.CenterCrop(size), transforms.ToTensor(), transforms.Normalize(mean, std)]),
    }
    sets = {x: datasets.ImageFolder(ANTS / x, tf[x]) for x in ("train", "val")}
    loaders = {x: torch.utils.data.DataLoader(sets[x], batch_size=batch_size, shuffle=True, num_workers=4) for x in sets}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = net.to(device)
    if mode == "fixed":
        for p in net.parameters():
            p.requires_grad = False
        for p in net.get_classifier().parameters():
            p.requires_grad = True
        params = net.get_classifier().parameters()
    else:
        params = net.parameters()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(params, lr=0.001, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    started = time.perf_counter()
    best_acc, best = 0.0, copy.deepcopy(net.state_dict())
    for _ in range(epochs):
        for phase in ("train", "val"):
            net.train() if phase == "train" else net.eval()
            correct = 0
            for inputs, labels in loaders[phase]:
                inputs, labels = inputs.to(device), labels.to(device)
                optimizer.zero_grad()
                with torch.set_grad_enabled(phase == "train"):
                    outputs = net(inputs)
                    loss = criterion(outputs, labels)
                    if phase == "train":
                        loss.backward()
                        optimizer.step()
                correct += int((outputs.argmax(1) == labels).sum())
            if phase == "train":
                scheduler.step()
            acc = correct / len(sets[phase])
            if phase == "val" and acc > best_acc:
                best_acc, best = acc, copy.deepcopy(net.state_dict())
    net.load_state_dict(best)
    seconds = time.perf_counter() - started
    what = "fixed feature extractor (only the classifier trains)" if mode == "fixed" else "full fine-tuning"
    return {"train_seconds": seconds, "samples_per_second": len(sets["train"]) * epochs / seconds, "accuracy": best_acc,
            "settings": f"{what}, batch {batch_size}, {epochs} epochs, SGD lr 1e-3 momentum 0.9, StepLR(7, 0.1), fp32, "
                        f"RandomResizedCrop({size}) + flip, DataLoader with 4 workers, validation every epoch, best epoch kept"}


def row_vision_finetunekit(strategy: str, epochs: int, batch_size: int, tmp: Path, cache_dir: Path | None = None, runs: int = 1) -> dict:
    import timm  # noqa: F401  # library imports before the clock, as in the tutorial row
    import torchvision  # noqa: F401

    from finetunekit import Recipe, train

    if cache_dir is not None:
        os.environ["FINETUNEKIT_CACHE_DIR"] = str(cache_dir)
    recipe = Recipe.from_yaml(REPO / "examples" / "hymenoptera.yaml").with_overrides([
        f"data.train={ANTS}", f"strategy.name={strategy}", f"train.epochs={epochs}", f"train.batch_size={batch_size}",
    ])
    rows = []
    for i in range(runs):  # runs=2: the second run reads the features the first one cached
        result = train(recipe, output=tmp / f"run{i}", quiet=True)
        # metrics["train_seconds"]: from the call to the trained model (setup, data checks, feature
        # cache, every epoch's training and validation), before the run directory is written
        seconds = result.metrics["train_seconds"]
        t = result.recipe.train
        rows.append({"train_seconds": seconds, "samples_per_second": 245 * epochs / seconds,
                     "accuracy": result.metrics["accuracy"], "wall_seconds": result.seconds,
                     "settings": f"strategy {strategy}, batch {t.batch_size}, {epochs} epochs, {t.optimizer} lr {t.lr:g} (head {t.head_lr:g}), "
                                 f"{t.scheduler} schedule, precision {t.precision}, progressive resize {t.progressive_resize:g}, "
                                 f"data workers {result.recipe.data.num_workers}, validation every epoch, best epoch kept"})
    return rows[-1] if runs == 1 else {**rows[-1], "cold_seconds": rows[0]["train_seconds"], "cold_accuracy": rows[0]["accuracy"]}



# -- inference: predict and evaluate against the transformers pipeline and a plain timm loop --------

INFER_BATCH = int(os.environ.get("BENCH_INFER_BATCH", 64))  # finetunekit predict's default --batch-size
# smoke runs: only the first N inputs of each set (0: all of them)
INFER_LIMIT = int(os.environ.get("BENCH_INFER_LIMIT", 0))


def infer_repeats() -> int:
    """Timed passes per row, the fastest kept: a GPU pass over 872 sentences takes well under a
    second, so one pass would mostly measure noise (BENCH_INFER_REPEATS overrides)."""
    import torch

    return int(os.environ.get("BENCH_INFER_REPEATS") or (5 if torch.cuda.is_available() else 1))


def best_of(fn):
    """(seconds of the fastest of ``infer_repeats()`` calls of ``fn``, the last call's result)."""
    best, out = float("inf"), None
    for _ in range(infer_repeats()):
        started = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - started)
    return best, out


def repeats_note() -> str:
    n = infer_repeats()
    return "one timed pass" if n == 1 else f"fastest of {n} timed passes"


def infer_work(tmp: Path) -> Path:
    """Where the inference rows keep the run they share: trained once by the first row that needs it
    (the parent process passes one folder to every row), not counted in any row's time."""
    work = Path(os.environ.get("BENCH_INFER_WORK") or tmp)
    work.mkdir(parents=True, exist_ok=True)
    return work


def infer_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def text_run(tmp: Path) -> tuple[Path, Path, list[str], list[str]]:
    """A finetunekit run of the bundled MiniLM-L6 on 512 SST-2 rows (one epoch), its transformers
    export, and the dev set the rows predict: (run dir, dev table, sentences, labels)."""
    from finetunekit import Recipe, train
    from finetunekit.modalities import read_examples
    from finetunekit.use.export import export

    work = infer_work(tmp)
    run = work / "sst2_run"
    if not (run / "export" / "hf").is_dir():
        recipe = Recipe.from_yaml(REPO / "examples" / "sst2.yaml").with_overrides([
            f"data.train={SST2 / 'train.tsv'}", f"data.val={SST2 / 'dev.tsv'}", "train.epochs=1", "data.max_train_samples=512",
        ])
        train(recipe, output=run, quiet=True)
        export(run, "hf")
    dev = SST2 / "dev.tsv"
    ex = read_examples(str(dev), "text", "sentence", "label")
    texts, labels = list(ex.inputs), [str(y) for y in ex.labels]
    if INFER_LIMIT:
        texts, labels = texts[:INFER_LIMIT], labels[:INFER_LIMIT]
        dev = work / f"dev_{INFER_LIMIT}.tsv"
        dev.write_text("\n".join(["sentence\tlabel", *(f"{t}\t{y}" for t, y in zip(texts, labels))]) + "\n", encoding="utf-8")
    return run, dev, texts, labels


def image_run(tmp: Path) -> tuple[Path, Path, list[str]]:
    """A finetunekit linear probe of the bundled EfficientNet-Lite0 on ants/bees (3 epochs), its
    timm export, and the val folder the rows predict: (run dir, folder, true label per image in
    the folder's sorted order)."""
    from finetunekit import Recipe, train
    from finetunekit.use.export import export

    work = infer_work(tmp)
    run = work / "ants_run"
    if not (run / "export" / "timm").is_dir():
        os.environ.setdefault("FINETUNEKIT_CACHE_DIR", str(work / "cache"))
        recipe = Recipe.from_yaml(REPO / "examples" / "hymenoptera.yaml").with_overrides([
            f"data.train={ANTS}", "strategy.name=linear_probe", "train.epochs=3",
        ])
        train(recipe, output=run, quiet=True)
        export(run, "timm")
    val = ANTS / "val"
    if INFER_LIMIT:  # the first N images of each class, as links in a folder of the same layout
        sliced = work / f"val_{INFER_LIMIT}"
        for cls in sorted(d.name for d in val.iterdir() if d.is_dir()):
            (sliced / cls).mkdir(parents=True, exist_ok=True)
            for f in sorted((val / cls).iterdir())[:INFER_LIMIT]:
                if not (sliced / cls / f.name).exists():
                    (sliced / cls / f.name).symlink_to(f)
        val = sliced
    from finetunekit.use.serving.bulk import _walk_images

    labels = [Path(p).parent.name for p in _walk_images(val)]
    return run, val, labels


def timed_predict_to_csv(run: Path, source: Path, tmp: Path, warm: list) -> tuple[float, list[str], object]:
    """``finetunekit predict RUN --input SOURCE --output preds.csv`` through its Python function,
    the model loaded (and one batch predicted to warm up) before the clock starts."""
    import csv

    from finetunekit import load
    from finetunekit.use.serving.bulk import predict_to_csv

    predictor = load(run)
    predictor.predict(warm[:INFER_BATCH])
    out = tmp / "preds.csv"
    seconds, _ = best_of(lambda: predict_to_csv(run, source, out, batch_size=INFER_BATCH, quiet=True, predictor=predictor, overwrite=True))
    with out.open(encoding="utf-8", newline="") as handle:
        predicted = [row["label"] for row in csv.DictReader(handle)]
    return seconds, predicted, predictor


def infer_result(seconds: float, n: int, predicted: list[str] | None, labels: list[str], settings: str, accuracy: float | None = None) -> dict:
    if accuracy is None:
        accuracy = sum(p == y for p, y in zip(predicted, labels, strict=True)) / len(labels)
    row = {"train_seconds": seconds, "samples_per_second": n / seconds, "accuracy": accuracy, "inputs": n, "settings": settings}
    if predicted is not None:
        row["predictions"] = predicted
    return row


def threads() -> str:
    import torch

    return f"{torch.get_num_threads()} torch thread(s)"


def row_infer_ours(mode: str, run: Path, source: Path, items: list, labels: list[str], tmp: Path, what: str) -> dict:
    """finetunekit's side of an inference row: batch ``predict`` to a CSV, or ``evaluate``, over
    ``source`` (whose inputs are ``items``), described by ``what``."""
    if mode == "predict":
        seconds, predicted, predictor = timed_predict_to_csv(run, source, tmp, items)
        accuracy = None
    else:
        from finetunekit import load

        predictor = load(run)
        predictor.batch_size = INFER_BATCH
        predictor.predict(items[:INFER_BATCH])
        seconds, metrics = best_of(lambda: predictor.evaluate(source))
        predicted, accuracy = None, metrics["accuracy"]
    return infer_result(seconds, len(items), predicted, labels, f"{what}; batch {INFER_BATCH}, {predictor.precision} (autocast), "
                        f"{predictor.device.type}, {threads()}, model load and one warm-up batch excluded, {repeats_note()}", accuracy)


def row_infer_text_ours(mode: str, tmp: Path) -> dict:
    run, dev, texts, labels = text_run(tmp)
    what = ("`predict RUN --input dev.tsv --output preds.csv`: reading the table, tokenizing, forward passes, writing the CSV" if mode == "predict"
            else "`evaluate RUN dev.tsv`: reading the table, tokenizing, forward passes, metrics and their confidence intervals")
    return row_infer_ours(mode, run, dev, texts, labels, tmp, what)


def run_precision(run: Path) -> str:
    from finetunekit.run.artifacts import MARKER, read_json

    return str(read_json(run / MARKER).get("precision", "fp32"))


def row_infer_text_pipeline(tmp: Path) -> dict:
    """transformers' text-classification pipeline on the run's transformers export (the same
    weights and pooling), weights cast to the run's precision, batched."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
    from transformers.utils import logging as hf_logging

    run, _, texts, labels = text_run(tmp)
    precision, device = run_precision(run), infer_device()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16 if device == "cuda" else torch.float32}.get(precision, torch.float32)
    path = run / "export" / "hf"
    hf_logging.set_verbosity_error()  # the pipeline lists its stock classes when given a custom one
    model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    pipe = pipeline("text-classification", model=model, tokenizer=tok, device=device)
    pipe(texts[:INFER_BATCH], batch_size=INFER_BATCH, truncation=True)
    seconds, out = best_of(lambda: pipe(texts, batch_size=INFER_BATCH, truncation=True))
    predicted = [o["label"] for o in out]
    return infer_result(seconds, len(texts), predicted, labels,
                        f"pipeline('text-classification') on the run's `export --format hf`, batch {INFER_BATCH}, weights in {dtype}, "
                        f"{device}, {threads()}, texts in memory, labels out; model load and one warm-up batch excluded, {repeats_note()}")


def row_infer_text_loop(tmp: Path, by_length: bool = False) -> dict:
    """The plain loop: tokenizer, padded batches, the model under inference_mode and autocast in
    the run's precision, argmax. ``by_length``: the texts are tokenized once up front, batched in
    order of length (less padding) and the predictions put back in input order, the way a user
    who cares about speed writes it."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run, _, texts, labels = text_run(tmp)
    precision, device = run_precision(run), infer_device()
    path = run / "export" / "hf"
    model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True).to(device).eval()
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    names = model.config.id2label
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    enabled = amp is not None and not (device == "cpu" and amp == torch.float16)

    def run_all(items: list[str]) -> list[str]:
        predicted = []
        with torch.inference_mode(), torch.autocast(device, dtype=amp or torch.bfloat16, enabled=enabled):
            for i in range(0, len(items), INFER_BATCH):
                batch = tok(items[i : i + INFER_BATCH], padding=True, truncation=True, return_tensors="pt").to(device)
                predicted += [names[int(k)] for k in model(**batch).logits.argmax(-1).tolist()]
        return predicted

    def run_sorted(items: list[str]) -> list[str]:
        encoded = tok(items, truncation=True)["input_ids"]
        order = sorted(range(len(items)), key=lambda i: len(encoded[i]))
        predicted: list[str] = [""] * len(items)
        with torch.inference_mode(), torch.autocast(device, dtype=amp or torch.bfloat16, enabled=enabled):
            for i in range(0, len(order), INFER_BATCH):
                rows = order[i : i + INFER_BATCH]
                batch = tok.pad({"input_ids": [encoded[j] for j in rows]}, return_tensors="pt").to(device)
                for j, k in zip(rows, model(**batch).logits.argmax(-1).tolist()):
                    predicted[j] = names[int(k)]
        return predicted

    loop = run_sorted if by_length else run_all
    loop(texts[:INFER_BATCH])
    seconds, predicted = best_of(lambda: loop(texts))
    batching = "tokenized up front, batched by length, answers put back in input order" if by_length else "in input order"
    return infer_result(seconds, len(texts), predicted, labels,
                        f"plain loop: tokenizer + model on the run's `export --format hf`, batches of {INFER_BATCH} {batching}, "
                        f"inference_mode, {precision if enabled else 'fp32'} (autocast), {device}, {threads()}, texts in memory; "
                        f"model load and one warm-up batch excluded, {repeats_note()}")


def row_infer_image_ours(mode: str, tmp: Path) -> dict:
    from finetunekit.use.serving.bulk import _walk_images

    run, val, labels = image_run(tmp)
    what = ("`predict RUN --input val/ --output preds.csv`: walking the folder, decoding, preprocessing, forward passes, writing the CSV"
            if mode == "predict" else
            "`evaluate RUN val/`: reading the folder, decoding, preprocessing, forward passes, metrics and their confidence intervals")
    return row_infer_ours(mode, run, val, list(_walk_images(val)), labels, tmp, what)


def row_infer_image_timm(tmp: Path) -> dict:
    """A plain timm loop on the run's timm export: timm's own transform from the model's data
    config, an ImageFolder and a DataLoader with workers, batched, channels-last (timm's
    inference.py --channels-last; finetunekit's timm backbones run channels-last too: the Lite0
    passes over the val set took 8.7 and 13.0 s instead of 15.9 and 22.2 s on the loaded 2-core
    CPU), inference_mode and autocast."""
    import json as _json

    import timm
    import torch
    from torchvision import datasets

    run, val, labels = image_run(tmp)
    precision, device = run_precision(run), infer_device()
    path = run / "export" / "timm"
    model = timm.create_model(f"local-dir:{path}", pretrained=True).to(device, memory_format=torch.channels_last).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    classes = _json.loads((path / "labels.json").read_text(encoding="utf-8"))["classes"]
    workers = min(8, len(os.sched_getaffinity(0)))
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    enabled = amp is not None and not (device == "cpu" and amp == torch.float16)

    def run_all(folder: Path, limit: int | None = None) -> list[str]:
        data = datasets.ImageFolder(folder, transform)
        if limit:
            data = torch.utils.data.Subset(data, range(min(limit, len(data))))
        loader = torch.utils.data.DataLoader(data, batch_size=INFER_BATCH, num_workers=workers, pin_memory=device == "cuda")
        predicted = []
        with torch.inference_mode(), torch.autocast(device, dtype=amp or torch.bfloat16, enabled=enabled):
            for x, _ in loader:
                x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                predicted += [classes[int(k)] for k in model(x).argmax(-1).tolist()]
        return predicted

    run_all(val, INFER_BATCH)
    seconds, predicted = best_of(lambda: run_all(val))  # the DataLoader's workers start inside the clock
    return infer_result(seconds, len(predicted), predicted, labels,
                        f"plain loop: timm.create_model('local-dir:' + the run's `export --format timm`), timm's create_transform from "
                        f"its data config, ImageFolder + DataLoader ({workers} workers), batch {INFER_BATCH}, channels-last, inference_mode, "
                        f"{precision if enabled else 'fp32'} (autocast), {device}, {threads()}; model load and one warm-up batch excluded, {repeats_note()}")

ROWS = {
    "text": [
        ("text", "Trainer fp32, length-grouped", "baseline", lambda t: row_text_trainer("fp32", True, t)),
        ("text", "Trainer bf16, length-grouped", "baseline", lambda t: row_text_trainer("bf16", True, t)),
        ("text", "finetunekit bf16", "ours", lambda t: row_text_finetunekit("bf16", t)),
        ("matmul", "bf16 matrix product", "hardware", row_matmul_rate),
    ],
    # slower baselines and finetunekit's fp32 row: not in the default run (--rows text_extra)
    "text_extra": [
        ("text", "Trainer bf16, random batches", "baseline", lambda t: row_text_trainer("bf16", False, t)),
        ("text", "Trainer fp32, random batches", "baseline", lambda t: row_text_trainer("fp32", False, t)),
        ("text", "finetunekit fp32", "ours", lambda t: row_text_finetunekit("fp32", t)),
    ],
    "vision": [
        ("vision full", f"tutorial bs {IMAGE_BATCH}", "baseline", lambda t: row_vision_tutorial("full", 5, IMAGE_BATCH, t)),
        ("vision full", "tutorial bs 4", "baseline", lambda t: row_vision_tutorial("full", 5, 4, t)),
        ("vision full", f"finetunekit full bs {IMAGE_BATCH}", "ours", lambda t: row_vision_finetunekit("full", 5, IMAGE_BATCH, t)),
    ],
    "frozen": [
        ("vision frozen", f"tutorial fixed features bs {IMAGE_BATCH}", "baseline", lambda t: row_vision_tutorial("fixed", 10, IMAGE_BATCH, t)),
        ("vision frozen", f"finetunekit linear probe bs {IMAGE_BATCH} (cold, then warm cache)", "ours",
         lambda t: row_vision_finetunekit("linear_probe", 10, IMAGE_BATCH, t, cache_dir=t / "cache", runs=2)),
    ],
    # predict and evaluate throughput (--rows inference; not in the default run)
    "inference": [
        ("text inference", "finetunekit predict (batch, to CSV)", "ours", lambda t: row_infer_text_ours("predict", t)),
        ("text inference", "finetunekit evaluate", "ours", lambda t: row_infer_text_ours("evaluate", t)),
        ("text inference", "transformers pipeline", "baseline", row_infer_text_pipeline),
        ("text inference", "plain transformers loop", "baseline", row_infer_text_loop),
        ("text inference", "plain transformers loop, batched by length", "baseline", lambda t: row_infer_text_loop(t, by_length=True)),
        ("image inference", "finetunekit predict (batch, to CSV)", "ours", lambda t: row_infer_image_ours("predict", t)),
        ("image inference", "finetunekit evaluate", "ours", lambda t: row_infer_image_ours("evaluate", t)),
        ("image inference", "plain timm loop", "baseline", row_infer_image_timm),
    ],
}

# The targets of issue 16, as (task, our row, ratio at least, baseline row the target names or None
# for the strongest baseline).
TARGETS = [
    ("text", "finetunekit bf16", 2.0, "Trainer bf16, length-grouped"),
    ("vision full", f"finetunekit full bs {IMAGE_BATCH}", 3.0, f"tutorial bs {IMAGE_BATCH}"),
    ("vision frozen", f"finetunekit linear probe bs {IMAGE_BATCH} (cold, then warm cache)", 20.0, f"tutorial fixed features bs {IMAGE_BATCH}"),
]


def run_row(key: str) -> None:
    """Child process: run one row, print its JSON on the last line."""
    group, index = key.split(":")
    task, name, role, fn = ROWS[group][int(index)]
    with tempfile.TemporaryDirectory() as tmp:
        out = fn(Path(tmp))
    import torch

    out.update(task=task, name=name, role=role, peak_memory_mib=round(peak_memory_mib(), 1), device=device_name(),
               device_type="cuda" if torch.cuda.is_available() else "cpu")
    print("ROW " + json.dumps(out), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=["text", "vision", "frozen"])
    parser.add_argument("--json", help="write the raw rows here (default benchmarks/results/vs_baselines.json)")
    parser.add_argument("--write", action="store_true", help="put the table and ratios into docs/performance.md")
    parser.add_argument("--from-json", nargs="+", type=Path, metavar="JSON",
                        help="do not run: print (and with --write, write) the rows stored in these files (for example rows taken on a GPU machine)")
    parser.add_argument("--section", default="", help="with --write: the docs/performance.md section to fill "
                        "(between <!-- results-SECTION:begin/end -->; default the main CPU table); inference rows go to "
                        "results-inference-cpu or results-inference-cuda, by the device they ran on")
    parser.add_argument("--row", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        return run_row(args.row)
    if args.from_json:
        results = [row for path in args.from_json for row in json.loads(path.read_text(encoding="utf-8"))]
        results.sort(key=lambda r: ORDER.index(r["task"]) if r["task"] in ORDER else len(ORDER))
        ratios, inference_ratios = split_ratios(results)
        if args.write:
            write_tables(results, ratios, inference_ratios, args.section)
        return None
    if not SST2.is_dir() or not ANTS.is_dir():
        sys.exit(f"data not found under {DATA} (set FINETUNEKIT_SHARED_DATA to the shared/data folder)")
    results = []
    with tempfile.TemporaryDirectory() as work:
        # the inference rows share one trained run per modality (trained by the first row needing it)
        env = {**os.environ, "BENCH_INFER_WORK": os.environ.get("BENCH_INFER_WORK") or work}
        for group in args.rows:
            for i in range(len(ROWS[group])):
                started = time.perf_counter()
                proc = subprocess.run([sys.executable, __file__, "--row", f"{group}:{i}"], capture_output=True, text=True, env=env)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROW ")]
                if proc.returncode or not lines:
                    print(f"row {ROWS[group][i][1]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}", flush=True)
                    continue
                row = json.loads(lines[-1][4:])
                results.append(row)
                print(f"{row['task']:<15} {row['name']:<58} {row['train_seconds']:8.1f}s  {row['samples_per_second']:7.1f}/s  acc {row['accuracy']:.4f}  "
                      f"peak {row['peak_memory_mib']:7.0f} MiB  ({time.perf_counter() - started:.0f}s with start-up)", flush=True)
    results.sort(key=lambda r: ORDER.index(r["task"]) if r["task"] in ORDER else len(ORDER))
    add_agreement(results)
    ratios, inference_ratios = split_ratios(results)
    out = Path(args.json) if args.json else REPO / "benchmarks" / "results" / "vs_baselines.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if args.write:
        write_tables(results, ratios, inference_ratios, args.section)


def write_tables(results: list[dict], ratios: list[str], inference_ratios: list[str], section: str) -> None:
    """The training rows into the section ``--section`` names; the inference rows into
    ``results-inference-cpu`` or ``results-inference-cuda``, by the device they ran on."""
    command = " ".join(sys.argv[1:])
    training = [r for r in results if r["task"] not in INFERENCE_TASKS]
    inference = [r for r in results if r["task"] in INFERENCE_TASKS]
    if training:
        write_doc(markdown(training, ratios, command), section)
    if inference:
        write_doc(inference_markdown(inference, inference_ratios, command), f"inference-{inference[0].get('device_type', 'cpu')}")


INFERENCE_TASKS = ("text inference", "image inference")
ORDER = ["text", "matmul", "vision full", "vision frozen", *INFERENCE_TASKS]  # the tables' order, whatever order the rows ran in
OURS_PREDICT = "finetunekit predict (batch, to CSV)"


def split_ratios(results: list[dict]) -> tuple[list[str], list[str]]:
    """The printed ratio lines of the training rows and of the inference rows."""
    training = [r for r in results if r["task"] not in INFERENCE_TASKS]
    inference = [r for r in results if r["task"] in INFERENCE_TASKS]
    return (print_ratios(training) if training else []), (print_ratios(inference) if inference else [])


def add_agreement(results: list[dict]) -> None:
    """Each inference row's predictions against those of finetunekit's batch predict of the same
    task (``agrees``: how many of the inputs got the same label); the predictions themselves are
    dropped from the rows."""
    ours = {r["task"]: r.get("predictions") for r in results if r["name"] == OURS_PREDICT}
    for r in results:
        predicted, reference = r.pop("predictions", None), ours.get(r["task"])
        if predicted is not None and reference is not None and len(predicted) == len(reference):
            r["agrees"] = f"{sum(a == b for a, b in zip(predicted, reference))}/{len(reference)}"


def markdown(results: list[dict], ratios: list[str], command: str = "--write") -> str:
    rows = ["| task | run | seconds | samples/s | accuracy | peak memory (MiB) |", "| --- | --- | --- | --- | --- | --- |"]
    settings = []
    for r in results:
        if r["role"] == "hardware":
            settings.append(f"- {r['name']}: {r['gflops']:.0f} GFLOP/s ({r['settings']})")
            continue
        cold = f" (cold cache: {r['cold_seconds']:.1f} s, accuracy {r['cold_accuracy']:.4f})" if "cold_seconds" in r else ""
        rows.append(f"| {r['task']} | {r['name']} | {r['train_seconds']:.1f}{cold} | {r['samples_per_second']:.1f} | "
                    f"{r['accuracy']:.4f} | {r['peak_memory_mib']:.0f} |")
        if r.get("settings"):
            settings.append(f"- {r['task']}, {r['name']}: {r['settings']}")
    device = results[0]["device"] if results else "?"
    return "\n".join([f"Measured with `python benchmarks/vs_baselines.py {command}` on {device}.", "", *rows, "",
                      "Settings of every row:", "", *settings, "", "Ratios (each against the fastest baseline row of its task in this run):", "",
                      *[f"- {line}" for line in ratios], ""])


def inference_markdown(results: list[dict], ratios: list[str], command: str = "--rows inference --write") -> str:
    """The inference rows' table: throughput, accuracy and agreement with finetunekit's batch predict."""
    rows = ["| task | run | inputs | seconds | samples/s | accuracy | same label as `predict` | peak memory (MiB) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        rows.append(f"| {r['task']} | {r['name']} | {r['inputs']} | {r['train_seconds']:.2f} | {r['samples_per_second']:.1f} | "
                    f"{r['accuracy']:.4f} | {r.get('agrees', '-')} | {r['peak_memory_mib']:.0f} |")
    settings = [f"- {r['task']}, {r['name']}: {r['settings']}" for r in results]
    device = results[0]["device"] if results else "?"
    return "\n".join([f"Measured with `python benchmarks/vs_baselines.py {command}` on {device}.", "", *rows, "",
                      "Settings of every row:", "", *settings, "", "Ratios (each against the fastest baseline row of its task in this run):", "",
                      *[f"- {line}" for line in ratios], ""])


def write_doc(text: str, section: str = "") -> None:
    doc = REPO / "docs" / "performance.md"
    name = f"results-{section}" if section else "results"
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    body = doc.read_text(encoding="utf-8")
    if begin not in body or end not in body:
        sys.exit(f"{doc}: the markers {begin} and {end} are missing")
    body = body[: body.index(begin) + len(begin)] + "\n" + text + body[body.index(end) :]
    partial = doc.with_name(f".{doc.name}.partial")
    partial.write_text(body, encoding="utf-8")
    os.replace(partial, doc)


def print_ratios(results: list[dict]) -> list[str]:
    """Each of our rows against the fastest baseline row of its task (most samples per second), the
    issue's targets against the row they name, and the text row's share of the matmul rate."""
    print(f"\ndevice: {results[0]['device'] if results else '?'}")
    lines: list[str] = []
    by = {(r["task"], r["name"]): r for r in results}

    def ratio(o: dict, b: dict) -> str:
        acc = f"accuracy {o['accuracy']:.4f} vs {b['accuracy']:.4f}"
        if "cold_seconds" in o:
            return (f"cold cache {b['train_seconds'] / o['cold_seconds']:.1f}x, warm cache {b['train_seconds'] / o['train_seconds']:.1f}x "
                    f"({acc}; cold {o['cold_accuracy']:.4f})")
        return f"{o['samples_per_second'] / b['samples_per_second']:.2f}x ({acc})"

    for o in results:
        if o["role"] != "ours":
            continue
        bases = [b for b in results if b["task"] == o["task"] and b["role"] == "baseline"]
        if bases:
            b = max(bases, key=lambda r: r["samples_per_second"])
            lines.append(f"{o['task']}: {o['name']} vs {b['name']} (fastest baseline): {ratio(o, b)}")
    for task, ours, at_least, base in TARGETS:
        if (task, ours) in by and (task, base) in by:
            o, b = by[(task, ours)], by[(task, base)]
            x = (b["train_seconds"] / o["cold_seconds"]) if "cold_seconds" in o else o["samples_per_second"] / b["samples_per_second"]
            lines.append(f"target {task} >= {at_least:g}x {base}: {x:.2f}x, {'met' if x >= at_least else 'missed'}")
    rate = next((r for r in results if r["role"] == "hardware"), None)
    text = by.get(("text", "finetunekit bf16"))
    if rate and text and text.get("matmul_gflop"):
        achieved = text["matmul_gflop"] / text["train_seconds"]
        share = achieved / rate["gflops"]
        lines.append(f"target text training >= 10% of the bf16 matmul rate: {text['matmul_gflop']:.0f} GFLOP of matrix products in "
                     f"{text['train_seconds']:.1f} s = {achieved:.0f} GFLOP/s, {100 * share:.0f}% of {rate['gflops']:.0f} GFLOP/s, "
                     f"{'met' if share >= 0.10 else 'missed'}")
    for line in lines:
        print(line)
    return lines


if __name__ == "__main__":
    main()

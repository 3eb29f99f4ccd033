"""finetunekit against the baselines people use today, in one run, on the same model, data, epochs
and batch size; prints times, accuracy, peak memory and the speed ratios.

Rows (each runs in its own fresh Python process, so peak memory is that row's alone):

* text: the bundled MiniLM-L6 fully fine-tuned on 2,000 random SST-2 training rows for 3 epochs,
  evaluated on the full dev set. Baseline: Hugging Face ``Trainer`` (fp32 and bf16, dynamic padding
  with ``DataCollatorWithPadding``, learning rate 5e-5), the same batch size. Time = the training
  loop alone on both sides (``Trainer.train``'s runtime; finetunekit's per-epoch training seconds).
* vision: the bundled EfficientNet-Lite0 on ants/bees. Baseline: the PyTorch transfer-learning
  tutorial loop (RandomResizedCrop + flip, SGD 1e-3 momentum 0.9, StepLR(7, 0.1), a train and a
  val phase per epoch, best weights kept), fully fine-tuned (5 epochs, at finetunekit's batch size
  and at the tutorial's own batch size 4) and as a fixed feature extractor (10 epochs). Both
  sides use the model's own preprocessing (input size, mean/std). Time = everything from the start
  of training to the trained model (validation every epoch included, on both sides; finetunekit's
  includes its set-up, image checks and feature cache too, but not writing the run directory).

    python benchmarks/vs_baselines.py                 # all rows (about 15 minutes on 2 CPU cores)
    python benchmarks/vs_baselines.py --rows text     # a subset: text, vision, frozen
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
TEXT_BATCH = int(os.environ.get("BENCH_TEXT_BATCH", 32))
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
        return torch.cuda.get_device_name()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{platform.machine()} CPU, {usable} of {os.cpu_count()} cores usable, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"


# -- text: Hugging Face Trainer -----------------------------------------------------------------------


def sst2_subset(tmp: Path) -> tuple[Path, Path]:
    """The same 2,000 training rows finetunekit's data.max_train_samples=2000 (seed 0) picks."""
    from finetunekit import Recipe
    from finetunekit.trainer import _read_data

    recipe = Recipe.from_yaml(REPO / "examples" / "sst2.yaml").with_overrides(
        [f"data.train={SST2 / 'train.tsv'}", f"data.val={SST2 / 'dev.tsv'}"]
    )
    from finetunekit.defaults import resolve

    train_ex, val_ex, *_ = _read_data(resolve(recipe, "text"), "text")
    out = tmp / "sst2_2000.tsv"
    rows = ["sentence\tlabel"] + [f"{t}\t{y}" for t, y in zip(train_ex.inputs, train_ex.labels)]
    out.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return out, SST2 / "dev.tsv"


def row_text_trainer(precision: str, tmp: Path) -> dict:
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

    from finetunekit.backbones.bundled import minilm_l6_path
    from finetunekit.data.readers import read_examples

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
        num_train_epochs=int(os.environ.get("BENCH_EPOCHS", 3)), learning_rate=5e-5, bf16=precision == "bf16", use_cpu=not torch.cuda.is_available(),
        eval_strategy="no", save_strategy="no", report_to=[], logging_strategy="no", seed=0, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, data_collator=DataCollatorWithPadding(tok))
    out = trainer.train()
    logits = trainer.predict(dev_ds).predictions
    accuracy = float((np.argmax(logits, -1) == np.array(dev_ds.labels)).mean())
    seconds = float(out.metrics["train_runtime"])
    return {"train_seconds": seconds, "samples_per_second": len(train_ds) * int(os.environ.get("BENCH_EPOCHS", 3)) / seconds, "accuracy": accuracy}


def row_text_finetunekit(precision: str, tmp: Path) -> dict:
    from finetunekit import Recipe, train

    recipe = Recipe.from_yaml(REPO / "examples" / "sst2.yaml").with_overrides([
        f"data.train={SST2 / 'train.tsv'}", f"data.val={SST2 / 'dev.tsv'}", "strategy.name=full",
        f"train.batch_size={TEXT_BATCH}", f"train.epochs={os.environ.get('BENCH_EPOCHS', 3)}", f"train.precision={precision}",
    ])
    result = train(recipe, output=tmp / "run", quiet=True)
    seconds = sum(h["train_seconds"] for h in result.history)
    samples = sum(h["train_seconds"] * h["train_samples_per_second"] for h in result.history)
    return {"train_seconds": seconds, "samples_per_second": samples / seconds, "accuracy": result.metrics["accuracy"],
            "wall_seconds": result.seconds}


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
    return {"train_seconds": seconds, "samples_per_second": len(sets["train"]) * epochs / seconds, "accuracy": best_acc}


def row_vision_finetunekit(strategy: str, epochs: int, batch_size: int, tmp: Path, cache_dir: Path | None = None, runs: int = 1) -> dict:
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
        rows.append({"train_seconds": seconds, "samples_per_second": 245 * epochs / seconds,
                     "accuracy": result.metrics["accuracy"], "wall_seconds": result.seconds})
    return rows[-1] if runs == 1 else {**rows[-1], "cold_seconds": rows[0]["train_seconds"], "cold_accuracy": rows[0]["accuracy"]}


ROWS = {
    "text": [
        ("text", "Trainer fp32", "baseline", lambda t: row_text_trainer("fp32", t)),
        ("text", "Trainer bf16", "baseline", lambda t: row_text_trainer("bf16", t)),
        ("text", "finetunekit fp32", "ours", lambda t: row_text_finetunekit("fp32", t)),
        ("text", "finetunekit bf16", "ours", lambda t: row_text_finetunekit("bf16", t)),
    ],
    "vision": [
        ("vision full", f"tutorial bs {IMAGE_BATCH}", "baseline", lambda t: row_vision_tutorial("full", 5, IMAGE_BATCH, t)),
        ("vision full", "tutorial bs 4", "reference", lambda t: row_vision_tutorial("full", 5, 4, t)),
        ("vision full", f"finetunekit full bs {IMAGE_BATCH}", "ours", lambda t: row_vision_finetunekit("full", 5, IMAGE_BATCH, t)),
    ],
    "frozen": [
        ("vision frozen", f"tutorial fixed features bs {IMAGE_BATCH}", "baseline", lambda t: row_vision_tutorial("fixed", 10, IMAGE_BATCH, t)),
        ("vision frozen", f"finetunekit linear probe bs {IMAGE_BATCH} (cold, then warm cache)", "ours",
         lambda t: row_vision_finetunekit("linear_probe", 10, IMAGE_BATCH, t, cache_dir=t / "cache", runs=2)),
    ],
}


def run_row(key: str) -> None:
    """Child process: run one row, print its JSON on the last line."""
    group, index = key.split(":")
    task, name, role, fn = ROWS[group][int(index)]
    with tempfile.TemporaryDirectory() as tmp:
        out = fn(Path(tmp))
    out.update(task=task, name=name, role=role, peak_memory_mib=round(peak_memory_mib(), 1), device=device_name())
    print("ROW " + json.dumps(out), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--json", help="write the raw rows here (default benchmarks/results/vs_baselines.json)")
    parser.add_argument("--write", action="store_true", help="put the table and ratios into docs/performance.md")
    parser.add_argument("--row", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        return run_row(args.row)
    if not SST2.is_dir() or not ANTS.is_dir():
        sys.exit(f"data not found under {DATA} (set FINETUNEKIT_SHARED_DATA to the shared/data folder)")
    results = []
    for group in args.rows:
        for i in range(len(ROWS[group])):
            started = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, "--row", f"{group}:{i}"], capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROW ")]
            if proc.returncode or not lines:
                print(f"row {ROWS[group][i][1]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}", flush=True)
                continue
            row = json.loads(lines[-1][4:])
            results.append(row)
            print(f"{row['task']:<14} {row['name']:<58} {row['train_seconds']:8.1f}s  acc {row['accuracy']:.4f}  "
                  f"peak {row['peak_memory_mib']:7.0f} MiB  ({time.perf_counter() - started:.0f}s with start-up)", flush=True)
    ratios = print_ratios(results)
    out = Path(args.json) if args.json else REPO / "benchmarks" / "results" / "vs_baselines.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if args.write:
        write_doc(markdown(results, ratios))


def markdown(results: list[dict], ratios: list[str]) -> str:
    rows = ["| task | run | seconds | samples/s | accuracy | peak memory (MiB) |", "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        cold = f" (cold cache: {r['cold_seconds']:.1f} s, accuracy {r['cold_accuracy']:.4f})" if "cold_seconds" in r else ""
        rows.append(f"| {r['task']} | {r['name']} | {r['train_seconds']:.1f}{cold} | {r['samples_per_second']:.1f} | "
                    f"{r['accuracy']:.4f} | {r['peak_memory_mib']:.0f} |")
    device = results[0]["device"] if results else "?"
    return "\n".join([f"Measured with `python benchmarks/vs_baselines.py --write` on {device}.", "", *rows, "",
                      *[f"- {line}" for line in ratios], ""])


def write_doc(text: str) -> None:
    doc = REPO / "docs" / "performance.md"
    begin, end = "<!-- results:begin -->", "<!-- results:end -->"
    body = doc.read_text(encoding="utf-8")
    if begin in body and end in body:
        body = body[: body.index(begin) + len(begin)] + "\n" + text + body[body.index(end) :]
        doc.write_text(body, encoding="utf-8")


def print_ratios(results: list[dict]) -> list[str]:
    print(f"\ndevice: {results[0]['device'] if results else '?'}")
    lines: list[str] = []
    by = {(r["task"], r["name"]): r for r in results}
    pairs = [
        ("text", "finetunekit bf16", "Trainer bf16", "text full FT vs Trainer bf16 (target >= 3x)"),
        ("text", "finetunekit bf16", "Trainer fp32", "text full FT vs Trainer fp32"),
        ("vision full", f"finetunekit full bs {IMAGE_BATCH}", f"tutorial bs {IMAGE_BATCH}", "vision full FT vs tutorial, same batch (target >= 5x)"),
        ("vision full", f"finetunekit full bs {IMAGE_BATCH}", "tutorial bs 4", "vision full FT vs tutorial at its batch size 4"),
        ("vision frozen", f"finetunekit linear probe bs {IMAGE_BATCH} (cold, then warm cache)", f"tutorial fixed features bs {IMAGE_BATCH}", "frozen 10 epochs vs tutorial fixed features (target >= 20x)"),
    ]
    for task, ours, base, label in pairs:
        if (task, ours) not in by or (task, base) not in by:
            continue
        o, b = by[(task, ours)], by[(task, base)]
        acc = f"accuracy {o['accuracy']:.4f} vs {b['accuracy']:.4f}"
        if "cold_seconds" in o:
            line = f"{label}: cold cache {b['train_seconds'] / o['cold_seconds']:.1f}x, warm cache {b['train_seconds'] / o['train_seconds']:.1f}x ({acc}; cold {o['cold_accuracy']:.4f})"
        else:
            line = f"{label}: {b['train_seconds'] / o['train_seconds']:.1f}x ({acc})"
        print(line)
        lines.append(line)
    return lines


if __name__ == "__main__":
    main()

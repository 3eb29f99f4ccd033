"""Dense tasks on their shared data sets: the default recipes against a reference loop.

For each set, ``finetunekit train`` with its example recipe (in a fresh process), then, with the
same model, the same data and the same number of epochs, a training loop written the way
torchvision's detection fine-tuning tutorial writes it (TorchVision Object Detection Finetuning
Tutorial; references/detection/engine.py ``train_one_epoch``):

* a ``Dataset`` whose ``__getitem__`` reads the image file (``torchvision.io.read_image``) and its
  annotation (Penn-Fudan: the instance mask, boxes from ``masks_to_boxes``, as the tutorial does;
  raccoon: the image's Pascal VOC XML), then the tutorial's transforms (random horizontal flip,
  ``ToDtype(float, scale=True)``);
* a ``DataLoader`` of lists (``collate_fn=lambda b: tuple(zip(*b))``), ``model(images, targets)``
  returning the loss dict, ``sum(loss_dict.values()).backward()``, ``optimizer.step()``, in float32,
  the images resized and normalised inside the model (torchvision's ``GeneralizedRCNNTransform``,
  long side = the recipe's input size, batches padded to a multiple of 32);
* the model: torchvision's ``FCOS`` class holding the same backbone (the bundled EfficientNet-Lite0,
  BatchNorm statistics frozen as torchvision's detection backbones freeze them), the same feature
  pyramid and the same FCOS head (same widths, same anchors); the same parameters train (the
  recipe's strategy sets them up), with the recipe's optimiser and schedule (AdamW, backbone and
  head rates, warmup then cosine), so the accuracies compare; evaluation: the same torchmetrics mAP.

Reported per set: the metrics of each (finetunekit: the run's final metrics, on the set's test or
val split), training wall time (epochs only, no evaluation, for the throughput) and training
images per second, and the ratio. Segmentation (CamVid) has its own script, benchmarks/dense_segmentation.py.

    nice -n 5 python benchmarks/dense.py --write          # everything, one run at a time
    python benchmarks/dense.py --only raccoon             # one set
    python benchmarks/dense.py --reference raccoon --epochs 1   # the reference loop alone
    # on a shared machine: both loops at the same time, so they meet the same load
    nice -n 5 python benchmarks/dense.py --only raccoon pennfudan --no-reference &
    nice -n 5 python benchmarks/dense.py --reference raccoon --save; nice -n 5 python benchmarks/dense.py --reference pennfudan --save
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FINETUNEKIT_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "benchmarks" / "results" / "dense.json"
DOC = REPO / "docs" / "detection-segmentation.md"
BEGIN, END = "<!-- benchmark:dense:begin -->", "<!-- benchmark:dense:end -->"

# name -> (recipe, metrics reported, bar (metric, op, value), has a reference loop)
RUNS = {
    "raccoon": ("examples/raccoon.yaml", ["map_50", "map", "map_75", "mar_100"], ("map_50", ">=", 0.60), True),
    "pennfudan": ("examples/pennfudan.yaml", ["map_50", "map", "map_75", "mar_100"], ("map_50", ">=", 0.70), True),
}


# -- finetunekit -----------------------------------------------------------------------------------


def run_finetunekit(name: str, work: Path, overrides: list[str]) -> dict:
    recipe, keys, bar, _ = RUNS[name]
    out = work / name
    cmd = [sys.executable, "-m", "finetunekit", "train", str(REPO / recipe), "--output", str(out), "--quiet", "--overwrite"]
    for item in overrides:
        cmd += ["--set", item]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    wall = time.perf_counter() - started
    final = json.loads((out / "metrics.json").read_text())
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    seconds = sum(e["train_seconds"] for e in epochs)
    images = sum(e["train_seconds"] * e["train_samples_per_second"] for e in epochs)
    row = {"metrics": {k: final.get(k) for k in keys}, "eval_set": final.get("eval_set"), "wall_seconds": round(wall, 1),
           "train_seconds": round(seconds, 1), "train_images_per_second": round(images / seconds, 3), "epochs": len(epochs),
           "per_epoch": [{k: e.get(f"val_{k}") for k in keys} for e in epochs]}
    metric, op, value = bar
    got = row["metrics"][metric]
    row["bar"] = {"metric": metric, "op": op, "value": value, "got": got, "met": got is not None and got >= value}
    return row


# -- the reference loop ------------------------------------------------------------------------------


def _recipe(name: str, overrides: list[str]):
    sys.path.insert(0, str(REPO / "src"))
    from finetunekit import Recipe
    from finetunekit.run.defaults import resolve

    recipe = Recipe.from_yaml(REPO / RUNS[name][0]).with_overrides(overrides)
    return resolve(recipe, "image")


class TutorialDataset:
    """As the tutorial's PennFudanDataset: everything read from the files on every access."""

    def __init__(self, name: str, split: str, train: bool) -> None:
        import csv

        from torchvision.transforms import v2 as T

        self.name = name
        if name == "pennfudan":
            root = DATA / "detection" / "pennfudan"
            self.images = [root / "PNGImages" / n for n in (root / f"{split}.txt").read_text().split()]
        else:
            root = DATA / "detection" / "raccoon"
            table = root / "labels_csv" / ("train_labels.csv" if split == "train" else "test_labels.csv")
            names = list(dict.fromkeys(row["filename"] for row in csv.DictReader(table.open())))
            self.images = [root / "images" / n for n in names]
        self.root = root
        steps = [T.RandomHorizontalFlip(0.5)] if train else []
        self.transforms = T.Compose([*steps, T.ToDtype(__import__("torch").float, scale=True), T.ToPureTensor()])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: int):
        import torch
        from torchvision import tv_tensors
        from torchvision.io import ImageReadMode, read_image
        from torchvision.ops.boxes import masks_to_boxes
        from torchvision.transforms.v2 import functional as F

        path = self.images[idx]
        img = read_image(str(path), ImageReadMode.RGB)
        if self.name == "pennfudan":
            mask = read_image(str(self.root / "PedMasks" / path.name.replace(".png", "_mask.png")))
            obj_ids = torch.unique(mask)[1:]
            masks = (mask == obj_ids[:, None, None]).to(dtype=torch.uint8)
            boxes = masks_to_boxes(masks)
        else:
            import xml.etree.ElementTree as ET

            note = ET.parse(self.root / "annotations" / path.with_suffix(".xml").name).getroot()
            boxes = torch.tensor([[float(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")] for o in note.findall("object")])
        labels = torch.zeros((len(boxes),), dtype=torch.int64)  # one class, id 0 (as finetunekit's)
        img = tv_tensors.Image(img)
        target = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=F.get_size(img)), "labels": labels, "image_id": idx}
        return self.transforms(img, target)


def build_reference_model(recipe, num_classes: int):
    """torchvision's FCOS around finetunekit's own backbone, pyramid and head modules."""
    import torch
    from torch import nn
    from torchvision.models.detection import FCOS

    from finetunekit.backbones import create_backbone
    from finetunekit.tasks.detection_head import DetectionHead, anchor_generator

    spec = recipe.model
    backbone = create_backbone(spec.backbone, spec.pretrained, spec.pooling, spec.image_size)
    head = DetectionHead(backbone.feature_info(), num_classes, recipe.task.option("head") or "fcos", recipe.task.option("fpn_channels") or 64)

    class Features(nn.Module):
        """backbone maps -> the pyramid, as torchvision's BackboneWithFPN returns it."""

        def __init__(self) -> None:
            super().__init__()
            self.body, self.fpn, self.levels = backbone, head.fpn, head.levels
            self.out_channels = head.channels

        def forward(self, x):
            from collections import OrderedDict

            maps = self.body.feature_maps({"pixel_values": x})
            return self.fpn(OrderedDict((str(k), maps[i]) for k, i in enumerate(self.levels)))

        def train(self, mode: bool = True):
            super().train(mode)
            for m in self.body.modules():  # frozen statistics, as torchvision's FrozenBatchNorm2d
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
            return self

    pre = backbone.preprocessing()
    size = int(pre["input_size"])
    model = FCOS(Features(), num_classes, min_size=size, max_size=size, image_mean=pre["mean"], image_std=pre["std"],
                 anchor_generator=anchor_generator("fcos"), head=head.head, score_thresh=0.05, nms_thresh=recipe.task.nms_iou or 0.6,
                 detections_per_img=100, topk_candidates=1000)
    return model, backbone, head


def run_reference(name: str, overrides: list[str], epochs: int | None = None) -> dict:
    import torch
    from torchmetrics.detection import MeanAveragePrecision

    recipe = _recipe(name, overrides)
    t = recipe.train
    epochs = epochs or t.epochs
    torch.manual_seed(t.seed)
    model, backbone, head = build_reference_model(recipe, 1)
    split = "val" if name == "pennfudan" else "test"
    collate = lambda batch: tuple(zip(*batch))  # noqa: E731  (the tutorial's utils.collate_fn)
    train_loader = torch.utils.data.DataLoader(TutorialDataset(name, "train", True), batch_size=t.batch_size, shuffle=True, collate_fn=collate)
    test_loader = torch.utils.data.DataLoader(TutorialDataset(name, split, False), batch_size=1, shuffle=False, collate_fn=collate)
    # the recipe's strategy decides what trains and at which rate (finetunekit's own code, on the
    # same modules), and the recipe's optimiser: both loops train the same parameters the same way
    from finetunekit.engine import build_optimizer
    from finetunekit.run.model import FineTuneModel
    from finetunekit.strategies import STRATEGIES

    groups = STRATEGIES.get(recipe.strategy.name)(recipe.strategy).setup(FineTuneModel(backbone, head), t.lr, t.head_lr, recipe.model.pretrained)
    optimizer = build_optimizer(t, [{k: v for k, v in g.items() if k != "base_lr"} for g in groups])
    steps = epochs * len(train_loader)
    warmup = int(t.warmup_ratio * steps)

    def factor(step: int) -> float:  # the recipe's warmup then cosine
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    seconds, images = 0.0, 0
    per_epoch = []
    for epoch in range(epochs):
        model.train()
        started = time.perf_counter()
        for imgs, targets in train_loader:
            imgs = list(image for image in imgs)
            targets = [{k: v for k, v in tg.items()} for tg in targets]
            loss_dict = model(imgs, targets)
            losses = sum(loss for loss in loss_dict.values())
            if not math.isfinite(losses.item()):
                raise SystemExit(f"reference loss is {losses.item()}, stopping training")
            optimizer.zero_grad()
            losses.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm or 1e9)  # as the recipe clips
            optimizer.step()
            scheduler.step()
            images += len(imgs)
        seconds += time.perf_counter() - started
        metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
        model.eval()
        with torch.no_grad():
            for imgs, targets in test_loader:
                out = model(list(imgs))
                metric.update([{k: o[k] for k in ("boxes", "scores", "labels")} for o in out],
                              [{"boxes": tg["boxes"].as_subclass(torch.Tensor), "labels": tg["labels"]} for tg in targets])
        values = metric.compute()
        per_epoch.append({k: float(values[k]) for k in ("map_50", "map", "map_75", "mar_100")})
        print(f"reference {name} epoch {epoch + 1}/{epochs}: {per_epoch[-1]} ({seconds:.0f}s training so far)", file=sys.stderr, flush=True)
    return {"metrics": per_epoch[-1], "train_seconds": round(seconds, 1), "train_images_per_second": round(images / seconds, 3),
            "epochs": epochs, "per_epoch": per_epoch, "eval_set": split}


def data_seconds(name: str, overrides: list[str], epochs: int = 2) -> dict:
    """Seconds per epoch that each loop spends producing its training batches, without the model:
    finetunekit's dataset (decoded images kept in memory after the first epoch, the joint
    transform, stacked letterboxed batches) against the tutorial's Dataset (files read and parsed on
    every access, lists of images)."""
    import torch

    from finetunekit.backbones import create_backbone
    from finetunekit.data.pipeline import build_loader
    from finetunekit.data.readers import resolve_splits
    from finetunekit.modalities import build_dataset
    from finetunekit.tasks import TASKS, task_reader

    recipe = _recipe(name, overrides)
    d, t = recipe.data, recipe.train
    reader = task_reader("detection", image_root=d.image_root, classes=recipe.task.option("classes"))
    train, _ = resolve_splits(d.train, d.val, "image", d.val_fraction, t.seed, reader=reader, lists=(d.train_list, d.val_list))
    task = TASKS.get("detection").from_data(TASKS.get("detection").check_options({**recipe.to_dict()["task"]}, "task"), train)
    backbone = create_backbone(recipe.model.backbone, False, image_size=recipe.model.image_size)
    ours = build_loader(build_dataset(train, task.encode(train), backbone, backbone.preprocessing(), True, d.augment, 0, task),
                        backbone, t.batch_size, True, t.seed)
    theirs = torch.utils.data.DataLoader(TutorialDataset(name, "train", True), batch_size=t.batch_size, shuffle=True,
                                         collate_fn=lambda batch: tuple(zip(*batch)))
    out: dict = {"finetunekit": [], "reference": []}
    for epoch in range(epochs):
        ours.batch_sampler.set_epoch(epoch)
        for key, loader in (("finetunekit", ours), ("reference", theirs)):
            started = time.perf_counter()
            for _ in loader:
                pass
            out[key].append(round(time.perf_counter() - started, 2))
    return out


def step_seconds(name: str, overrides: list[str], repeats: int = 3) -> dict:
    """Seconds of one training step (forward, loss, backward) on the same 8 training images, for
    finetunekit's path (letterboxed batch, the task's loss) and the tutorial's (a list of images
    through torchvision's FCOS), each in float32 and under bfloat16 autocast; interleaved, so a
    shared machine's load falls on all four alike."""
    import torch

    from finetunekit.data.pipeline import open_image
    from finetunekit.run.model import FineTuneModel
    from finetunekit.strategies import STRATEGIES
    from finetunekit.tasks import TASKS

    recipe = _recipe(name, overrides)
    model, backbone, head = build_reference_model(recipe, 1)
    STRATEGIES.get(recipe.strategy.name)(recipe.strategy).setup(FineTuneModel(backbone, head), 1e-4, 1e-3, True)
    ds = TutorialDataset(name, "train", True)
    images, targets = zip(*(ds[i] for i in range(8)))
    from finetunekit.tasks.detection_data import read_detection

    d = recipe.data
    train = read_detection(d.train, image_root=d.image_root, classes=recipe.task.option("classes"))
    names = [p.name for p in ds.images[:8]]
    train = train.subset([[__import__("pathlib").Path(p).name for p in train.inputs].index(n) for n in names])
    task = TASKS.get("detection").from_data(TASKS.get("detection").check_options({**recipe.to_dict()["task"]}, "task"), train)
    ours = FineTuneModel(backbone, head)
    ours.freeze_batchnorm_stats = True
    task.head_for(backbone)
    transform = task.transform(backbone.preprocessing(), True, d.augment)
    pairs = [transform(open_image(p), raw) for p, raw in zip(train.inputs, task.encode(train), strict=True)]
    x, y = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def finetunekit_step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = ours({"pixel_values": x})
        sum(task.loss(out.float(), y).values()).backward()

    def reference_step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            losses = model(list(images), [dict(t) for t in targets])
        sum(losses.values()).backward()

    ours.train()
    model.train()
    out: dict = {}
    for _ in range(repeats):
        for key, step, bf16 in (("finetunekit fp32", finetunekit_step, False), ("finetunekit bf16", finetunekit_step, True),
                                ("reference fp32", reference_step, False), ("reference bf16", reference_step, True)):
            started = time.perf_counter()
            step(bf16)
            out.setdefault(key, []).append(round(time.perf_counter() - started, 2))
            model.zero_grad(set_to_none=True)
    return out


# -- results -----------------------------------------------------------------------------------------


def table(rows: dict) -> str:
    env = f"{platform.machine()} CPU, {os.cpu_count()} cores"
    lines = [f"Measured on {env}, nothing else running: `python benchmarks/dense.py --only raccoon pennfudan` (finetunekit, "
             "then the reference loop in a fresh process, each with every core); this table: "
             "`python benchmarks/dense.py --summarise --write`.", "",
             "| set | loop | metrics (last epoch) | bar | epochs | training s | training images/s | speed-up |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in rows.items():
        ours = r.get("finetunekit")
        if ours is None:
            continue
        bar = ours["bar"]
        shown = f"{bar['metric']} {bar['op']} {bar['value']}: {'met' if bar['met'] else 'missed'} ({bar['got']:.4f})"
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in ours["metrics"].items() if isinstance(v, (int, float)))
        ref = r.get("reference")
        ratio = f"{ours['train_images_per_second'] / ref['train_images_per_second']:.2f}x" if ref else "-"
        lines.append(f"| {name} ({ours['eval_set']}) | finetunekit ({RUNS[name][0]}) | {metrics} | {shown} | {ours['epochs']} | "
                     f"{ours['train_seconds']:.0f} | {ours['train_images_per_second']:.2f} | {ratio} |")
        if ref:
            rm = ", ".join(f"{k} {v:.4f}" for k, v in ref["metrics"].items())
            lines.append(f"| {name} | tutorial-style reference | {rm} | - | {ref['epochs']} | {ref['train_seconds']:.0f} | "
                         f"{ref['train_images_per_second']:.2f} | 1.00x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", choices=sorted(RUNS), help="run these sets only")
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="recipe overrides for both loops")
    parser.add_argument("--reference", choices=[n for n, r in RUNS.items() if r[3]], help="run the reference loop of this set only")
    parser.add_argument("--epochs", type=int, help="with --reference: epochs (default: the recipe's)")
    parser.add_argument("--no-reference", action="store_true", help="finetunekit runs only (run the reference loops alongside, "
                        "with --reference NAME --save, so both meet the same load on a shared machine)")
    parser.add_argument("--data-only", choices=[n for n, r in RUNS.items() if r[3]],
                        help="only time producing the training batches of both loops (two epochs, no model)")
    parser.add_argument("--step-only", choices=[n for n, r in RUNS.items() if r[3]],
                        help="only time one training step on 8 images, both loops, float32 and bfloat16 autocast")
    parser.add_argument("--save", action="store_true", help="with --reference: store the result in the results file")
    parser.add_argument("--write", action="store_true", help="write the table into docs/detection-segmentation.md")
    parser.add_argument("--summarise", action="store_true", help="only rebuild the table from the results file")
    args = parser.parse_args()
    if args.step_only:
        print(json.dumps({"step_seconds_8_images": step_seconds(args.step_only, args.overrides)}))
        return
    if args.data_only:
        print(json.dumps({"data_seconds_per_epoch": data_seconds(args.data_only, args.overrides)}))
        return
    if args.reference:
        row = run_reference(args.reference, args.overrides, args.epochs)
        print(json.dumps(row), flush=True)
        if args.save:  # read, update, write back at the end: the finetunekit run of the same set may run alongside
            saved = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
            saved.setdefault(args.reference, {})["reference"] = row
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(saved, indent=2) + "\n")
        return
    saved = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    if not args.summarise:
        with tempfile.TemporaryDirectory(prefix="fk-dense-") as work:
            for name in args.only or list(RUNS):
                ours = run_finetunekit(name, Path(work), args.overrides)
                print(json.dumps({name: ours}), flush=True)
                saved = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}  # a reference run alongside may have written
                row = saved.get(name, {})
                row["finetunekit"] = ours
                if RUNS[name][3] and not args.no_reference:
                    # a fresh process, as the finetunekit run had
                    printed = subprocess.run([sys.executable, __file__, "--reference", name, *sum((["--set", o] for o in args.overrides), [])],
                                             check=True, cwd=REPO, capture_output=True, text=True).stdout
                    row["reference"] = json.loads(printed.strip().splitlines()[-1])
                    print(json.dumps({name: row["reference"]}), flush=True)
                saved[name] = row
                RESULTS.parent.mkdir(parents=True, exist_ok=True)
                RESULTS.write_text(json.dumps(saved, indent=2) + "\n")
    text = table({n: saved[n] for n in RUNS if n in saved})
    print(text)
    if args.write:
        from tasks import write_between  # benchmarks/tasks.py, beside this script

        write_between(DOC, BEGIN, END, text)


if __name__ == "__main__":
    main()

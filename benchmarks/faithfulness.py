"""Deletion test: do the explanations point at what the model uses?

For every validation example, remove the inputs the explanation ranks highest (image regions by
Grad-CAM, tokens by integrated gradients) and, separately, as many chosen at random, and record
the probability of the originally predicted class after each removal. A faithful explanation makes
the probability fall faster than random removal does. Averaged over the whole validation set of
both shared data sets:

* ants/bees (hymenoptera val, 153 photos): a linear probe on the bundled EfficientNet-Lite0
  (frozen backbone; Grad-CAM's gradients still flow through it to the last feature map). Regions
  are the cells of that feature map (8x8 at 256 px, 32x32 pixels each); removing a cell sets its
  pixels to the normalisation mean (grey). Fractions of the 64 cells: 0, 5, 10, 20, 30, 50 %.
* SST-2 (dev, 872 sentences): the bundled MiniLM-L6 fine-tuned 2 epochs on train_1k. Removing a
  token deletes it from the sequence ([CLS] and [SEP] stay). Fractions of the sentence's tokens:
  0, 10, 20, 30, 50 % (rounded, at least one token past 0).

* Speech Commands (val, 396 one-second clips; ``--max-clips`` for the first N of each class in
  turn): the audio default recipe's run (full fine-tuning of the bundled Whisper tiny.en), or any
  audio run given with ``--audio-run``. Regions are the time-frequency patches the audio explainer
  attributes (8 mel bands x 10 frames: 100 patches a clip); removing one sets it to the clip's
  silence floor (the explainer's baseline). Fractions of the 100 patches: 0, 5, 10, 20, 30, 50 %.

Random removal is averaged over 3 draws per example (seeded). Prints a table, writes
benchmarks/results/faithfulness.json and docs/faithfulness.png::

    nice -n 5 python benchmarks/faithfulness.py [--runs /tmp/faithfulness-runs] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from finetunekit import Recipe, train
from finetunekit.modalities import read_examples
from finetunekit.use.explain import Explainer
from finetunekit.use.predict import load

REPO = Path(__file__).resolve().parents[1]
IMAGE_FRACTIONS = [0.0, 0.05, 0.1, 0.2, 0.3, 0.5]
TEXT_FRACTIONS = [0.0, 0.1, 0.2, 0.3, 0.5]
RANDOM_DRAWS = 3


def train_runs(data: Path, runs: Path, only: str | None = None) -> tuple[Path, Path]:
    """The two runs the curves explain, trained once into ``runs`` (only the one measured with ``only``)."""
    image_run, text_run = runs / "ants-lp", runs / "sst2-1k"
    if only != "text" and not (image_run / "model.safetensors").is_file():
        recipe = Recipe.from_dict({
            "model": {"backbone": "bundled:efficientnet_lite0"},
            "data": {"train": str(data / "images" / "hymenoptera_data"), "augment": "none"},
            "strategy": {"name": "linear_probe"},
            "train": {"epochs": 5, "seed": 0},
        })
        train(recipe, output=image_run, overwrite=True, quiet=True)
    if only != "image" and not (text_run / "model.safetensors").is_file():
        recipe = Recipe.from_dict({
            "model": {"backbone": "bundled:minilm_l6"},
            "data": {"train": str(data / "sst2" / "train_1k.tsv"), "val": str(data / "sst2" / "dev.tsv"),
                     "text_column": "sentence"},
            "train": {"epochs": 2, "seed": 0},
        })
        train(recipe, output=text_run, overwrite=True, quiet=True)
    return image_run, text_run


def _probs(predictor, batch: dict[str, torch.Tensor]) -> np.ndarray:
    return predictor.forward_proba(batch)


def image_curves(run: Path, data: Path, batch_size: int = 16) -> dict:
    from finetunekit.data.pipeline import open_image

    predictor = load(run, precision="fp32")
    explainer = Explainer(predictor)
    started = time.perf_counter()
    examples = read_examples(data / "images" / "hymenoptera_data" / "val", "image")
    rng = np.random.default_rng(0)
    top = {f: [] for f in IMAGE_FRACTIONS}
    rand = {f: [] for f in IMAGE_FRACTIONS}
    for start in range(0, len(examples), batch_size):
        images = [open_image(p) for p in examples.inputs[start : start + batch_size]]
        batch = predictor.encode(images)
        pixels = batch["pixel_values"]
        targets = predictor.forward_proba(batch).argmax(1)
        cams = explainer.attributions(batch, targets.tolist()).numpy()  # (B, h, w)
        _, gh, gw = cams.shape
        cell_h, cell_w = pixels.shape[2] // gh, pixels.shape[3] // gw
        cells = gh * gw
        for fraction in IMAGE_FRACTIONS:
            k = int(round(fraction * cells))
            orders = [np.argsort(-cam.ravel(), kind="stable")[:k] for cam in cams]
            top[fraction] += _masked_probs(predictor, pixels, orders, targets, gw, cell_h, cell_w).tolist()
            draws = []
            for _ in range(RANDOM_DRAWS):
                orders = [rng.permutation(cells)[:k] for _ in cams]
                draws.append(_masked_probs(predictor, pixels, orders, targets, gw, cell_h, cell_w))
            rand[fraction] += np.mean(draws, axis=0).tolist()
    print(f"images: {time.perf_counter() - started:.0f} s", flush=True)
    return _summary("ants/bees val (Grad-CAM, linear probe on EfficientNet-Lite0)", len(examples), top, rand, f"{gh}x{gw} cells")


def _masked_probs(predictor, pixels, orders, targets, grid_w, cell_h, cell_w) -> np.ndarray:
    masked = pixels.clone()
    for i, cells in enumerate(orders):
        for cell in cells:
            r, c = divmod(int(cell), grid_w)
            masked[i, :, r * cell_h : (r + 1) * cell_h, c * cell_w : (c + 1) * cell_w] = 0.0  # the normalisation mean
    probs = predictor.forward_proba({"pixel_values": masked})
    return probs[np.arange(len(targets)), targets]


def text_curves(run: Path, data: Path, batch_size: int = 16, ig_steps: int = 32, max_texts: int | None = None) -> dict:
    predictor = load(run, precision="fp32")
    explainer = Explainer(predictor, ig_steps=ig_steps)
    started = time.perf_counter()
    examples = read_examples(data / "sst2" / "dev.tsv", "text", "sentence")
    if max_texts is not None:  # the first N rows of dev.tsv, in file order
        examples = examples.subset(list(range(min(max_texts, len(examples)))))
    pad = predictor.model.backbone.pad_token_id
    rng = np.random.default_rng(0)
    top = {f: [] for f in TEXT_FRACTIONS}
    rand = {f: [] for f in TEXT_FRACTIONS}
    for start in range(0, len(examples), batch_size):
        if start and start % (batch_size * 10) == 0:
            print(f"texts: {start}/{len(examples)} in {time.perf_counter() - started:.0f} s", flush=True)
        batch = predictor.encode(examples.inputs[start : start + batch_size])
        targets = predictor.forward_proba(batch).argmax(1)
        scores = explainer.attributions(batch, targets.tolist()).numpy()  # (B, T)
        special = explainer.special_mask(batch["input_ids"]).numpy()
        rows = []
        for ids, mask, row, sp in zip(batch["input_ids"].numpy(), batch["attention_mask"].numpy(), scores, special, strict=True):
            n = int(mask.sum())
            content = [j for j in range(n) if not sp[j]]
            rows.append((ids[:n], content, row))
        for fraction in TEXT_FRACTIONS:
            def k_of(content):
                return 0 if fraction == 0 else max(1, int(round(fraction * len(content))))

            removed = [sorted(content, key=lambda j: -row[j])[: k_of(content)] for _, content, row in rows]
            top[fraction] += _deleted_probs(predictor, rows, removed, targets, pad).tolist()
            draws = []
            for _ in range(RANDOM_DRAWS):
                removed = [list(rng.permutation(content)[: k_of(content)]) for _, content, _ in rows]
                draws.append(_deleted_probs(predictor, rows, removed, targets, pad))
            rand[fraction] += np.mean(draws, axis=0).tolist()
    name = "SST-2 dev" + (f" (first {len(examples)} sentences)" if max_texts else "")
    return _summary(f"{name} (integrated gradients, MiniLM-L6 fine-tuned on train_1k)", len(examples), top, rand, "tokens")


def _deleted_probs(predictor, rows, removed, targets, pad: int) -> np.ndarray:
    kept = [[int(t) for j, t in enumerate(ids) if j not in set(gone)] for (ids, _, _), gone in zip(rows, removed, strict=True)]
    width = max(len(k) for k in kept)
    input_ids = torch.tensor([k + [pad] * (width - len(k)) for k in kept])
    attention = torch.tensor([[1] * len(k) + [0] * (width - len(k)) for k in kept])
    batch = {"input_ids": input_ids, "attention_mask": attention}
    probs = predictor.forward_proba(batch)
    return probs[np.arange(len(targets)), targets]


def audio_curves(run: Path, data: Path, batch_size: int = 16, ig_steps: int = 16, max_clips: int | None = None) -> dict:
    predictor = load(run, precision="fp32")
    explainer = Explainer(predictor, ig_steps=ig_steps)
    started = time.perf_counter()
    examples = read_examples(data / "audio" / "speech_commands" / "val", "audio")
    if max_clips is not None:  # the classes in turn (file order within each), so every class is in
        by_class: dict[str, list[int]] = {}
        for i, label in enumerate(examples.labels):
            by_class.setdefault(label, []).append(i)
        order = [i for rank in range(max(map(len, by_class.values()))) for c in sorted(by_class) if rank < len(by_class[c])
                 for i in [by_class[c][rank]]]
        examples = examples.subset(sorted(order[:max_clips]))
    rng = np.random.default_rng(0)
    top = {f: [] for f in IMAGE_FRACTIONS}
    rand = {f: [] for f in IMAGE_FRACTIONS}
    for start in range(0, len(examples), batch_size):
        if start and start % (batch_size * 5) == 0:
            print(f"clips: {start}/{len(examples)} in {time.perf_counter() - started:.0f} s", flush=True)
        items = [predictor.kind.load_item(p) for p in examples.inputs[start : start + batch_size]]
        batch = predictor.encode(items)
        targets = predictor.forward_proba(batch).argmax(1)
        patches = explainer.attributions(batch, targets.tolist()).numpy()  # (B, bands, steps)
        cells = patches.shape[1] * patches.shape[2]
        rows = np.arange(len(targets))
        for fraction in IMAGE_FRACTIONS:
            k = int(round(fraction * cells))
            orders = [np.argsort(-p.ravel(), kind="stable")[:k] for p in patches]
            top[fraction] += predictor.forward_proba(explainer.remove_patches(batch, orders))[rows, targets].tolist()
            draws = [predictor.forward_proba(explainer.remove_patches(batch, [rng.permutation(cells)[:k] for _ in patches]))[rows, targets]
                     for _ in range(RANDOM_DRAWS)]
            rand[fraction] += np.mean(draws, axis=0).tolist()
    print(f"audio: {time.perf_counter() - started:.0f} s", flush=True)
    name = "Speech Commands val" + (f" (first {len(examples)} clips, classes in turn)" if max_clips else "")
    return _summary(f"{name} (integrated gradients over log-mel patches, Whisper tiny.en fine-tuned)", len(examples), top, rand,
                    f"{patches.shape[1]}x{patches.shape[2]} patches")


def _summary(name: str, n: int, top: dict, rand: dict, unit: str) -> dict:
    fractions = sorted(top)
    curve_top = [float(np.mean(top[f])) for f in fractions]
    curve_rand = [float(np.mean(rand[f])) for f in fractions]
    # paired per example: how much more the top removal lowers the probability than random removal
    gaps = [np.array(rand[f]) - np.array(top[f]) for f in fractions[1:]]
    return {
        "name": name, "examples": n, "unit": unit, "fractions": fractions,
        "top_attributed": curve_top, "random": curve_rand,
        "mean_gap": float(np.mean([g.mean() for g in gaps])),
        "share_of_examples_top_lower_at_20pct": float(np.mean(np.array(rand[0.2]) > np.array(top[0.2]))),
    }


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 3.8))
    for ax, r in zip(np.atleast_1d(axes), results, strict=True):
        x = [100 * f for f in r["fractions"]]
        ax.plot(x, r["top_attributed"], "o-", color="#cf222e", label="most attributed removed first")
        ax.plot(x, r["random"], "s--", color="#57606a", label=f"random (mean of {RANDOM_DRAWS} draws)")
        ax.set_title(r["name"].split(" (")[0] + f" ({r['examples']} examples)", fontsize=10)
        ax.set_xlabel(f"% of {r['unit']} removed")
        ax.set_ylabel("probability of the predicted class")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--runs", default="/tmp/finetunekit-faithfulness-runs", help="where the two runs are trained (reused when there)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ig-steps", type=int, default=32, help="integrated-gradients steps for the texts")
    parser.add_argument("--only", choices=["image", "text", "audio"], help="measure one data set (the others' results are kept)")
    parser.add_argument("--audio-run", help="the audio run to explain (default: the audio default recipe, trained into --runs)")
    parser.add_argument("--max-clips", type=int, help="only N Speech Commands val clips, the classes in turn (default: all 396)")
    parser.add_argument("--max-texts", type=int, help="only the first N sentences of SST-2 dev (default: all 872)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "faithfulness.json",
                        help="the results file (read for the kept data set with --only, then written)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data, runs = Path(args.data), Path(args.runs)
    started = time.perf_counter()
    image_run, text_run = train_runs(data, runs, args.only) if args.only != "audio" else (None, None)
    audio_run = Path(args.audio_run) if args.audio_run else runs / "speech-commands-default"
    if args.only in (None, "audio") and not (audio_run / "model.safetensors").is_file():
        import yaml

        raw = yaml.safe_load((REPO / "examples" / "speech_commands.yaml").read_text())  # paths relative to the repository: set here
        raw["data"].update({part: str(data / "audio" / "speech_commands" / part) for part in ("train", "val")})
        train(Recipe.from_dict(raw), output=audio_run, overwrite=True, quiet=True)
    trained = time.perf_counter() - started
    out = args.out
    kept = {r["name"].split(" ")[0]: r for r in json.loads(out.read_text())["results"]} if out.is_file() else {}
    results = [
        image_curves(image_run, data) if args.only in (None, "image") else kept["ants/bees"],
        text_curves(text_run, data, ig_steps=args.ig_steps, max_texts=args.max_texts) if args.only in (None, "text") else kept["SST-2"],
    ]
    if args.only in (None, "audio"):
        results.append(audio_curves(audio_run, data, ig_steps=args.ig_steps, max_clips=args.max_clips))
        results[-1]["ig_steps"] = args.ig_steps
    elif "Speech" in kept:
        results.append(kept["Speech"])
    if args.only in (None, "text"):
        results[1]["ig_steps"] = args.ig_steps
    for r in results:
        print(f"\n{r['name']}: {r['examples']} examples")
        print(f"{'removed':>8} {'top-attributed':>15} {'random':>8}")
        for f, a, b in zip(r["fractions"], r["top_attributed"], r["random"], strict=True):
            print(f"{100 * f:>7.0f}% {a:>15.3f} {b:>8.3f}")
        print(f"mean gap (random - top) over the removal fractions: {r['mean_gap']:.3f}; "
              f"examples where top removal hurts more at 20%: {r['share_of_examples_top_lower_at_20pct']:.1%}")
    out.write_text(json.dumps({"results": results, "seconds": {"training": trained, "total": time.perf_counter() - started}}, indent=2) + "\n")
    plot(results, out.with_suffix(".png") if out != REPO / "benchmarks" / "results" / "faithfulness.json" else REPO / "docs" / "faithfulness.png")
    print(f"\nwrote {out} and its plot ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

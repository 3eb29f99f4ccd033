"""Which strategy and how many epochs, by the amount of data per class: the evidence behind
`finetunekit train DATA_PATH` (finetunekit.autoconfig).

Class-folder subsets derived from the shared data (symlinks in a temporary folder, never copies in
the repository): ants/bees photos (hymenoptera, various sizes) and UTKFace 200x200 face chips by
gender (a different domain and resolution), at N training images per class; validation on a fixed
set per source. Each subset is trained with the bundled EfficientNet-Lite0 as a linear probe for the
default 5 epochs, as a linear probe for the epochs the step rule gives (about 100 optimizer steps),
and with full fine-tuning (lr 1e-4, head 1e-2, 5 epochs; the step rule for the smallest sets).

    python benchmarks/zero_config.py --sizes 8 32 all --seeds 0 1   # prints a table, writes results/zero_config.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
SHARED = Path(os.environ.get("FINETUNEKIT_SHARED_DATA", REPO.parent / "shared" / "data"))


def _link(files: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f.name).symlink_to(f.resolve())


def hymenoptera(root: Path, per_class: int | None, seed: int) -> Path:
    src = SHARED / "images" / "hymenoptera_data"
    for cls in ("ants", "bees"):
        files = sorted((src / "train" / cls).iterdir())
        if per_class is not None:
            files = random.Random(seed).sample(files, per_class)
        _link(files, root / "train" / cls)
        _link(sorted((src / "val" / cls).iterdir()), root / "val" / cls)
    return root


def utkface(root: Path, per_class: int | None, seed: int) -> Path:
    src = SHARED / "image_regression" / "utkface"
    names = {"0": "male", "1": "female"}
    for split, limit in (("train", per_class), ("test", 100)):
        rows = list(csv.DictReader(open(src / f"{split}.csv", encoding="utf-8")))
        for code, cls in names.items():
            files = sorted(src / "images" / r["file"] for r in rows if r["gender"] == code)
            if limit is not None:
                files = random.Random(seed if split == "train" else 0).sample(files, limit)
            _link(files, root / ("train" if split == "train" else "val") / cls)
    return root


SOURCES = {"ants/bees": hymenoptera, "utkface gender": utkface}


def step_rule_epochs(n_train: int, batch_size: int = 16, target_steps: int = 100) -> int:
    from finetunekit.autoconfig import epochs_for

    return epochs_for(n_train, batch_size, target_steps)


def run(data: Path, strategy: str, epochs: int, seed: int) -> dict:
    from finetunekit import Recipe, train

    train_cfg = {"epochs": epochs, "seed": seed}
    if strategy == "full":
        train_cfg.update({"lr": 1e-4, "head_lr": 1e-2})
    recipe = Recipe.from_dict({"model": {"backbone": "bundled:efficientnet_lite0"}, "data": {"train": str(data)},
                               "strategy": {"name": strategy}, "train": train_cfg})
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = train(recipe, output=Path(out) / "run", quiet=True, checkpoints=False, report=False)  # accuracy is what counts here
        return {"accuracy": result.metrics["accuracy"], "seconds": round(time.perf_counter() - started, 1),
                "best_epoch": result.metrics["best_epoch"]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=["8", "32", "all"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--sources", nargs="+", default=list(SOURCES))
    parser.add_argument("--full-up-to", type=int, default=32, help="full fine-tuning only up to this many images per class (CPU time)")
    parser.add_argument("--full-seeds", nargs="+", type=int, default=[0], help="seeds that also run full fine-tuning")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "zero_config.json"))
    args = parser.parse_args()
    results = json.loads(Path(args.output).read_text()) if Path(args.output).is_file() else []
    done = {(r["source"], r["per_class"], r["seed"], r["arm"]) for r in results}
    for source in args.sources:
        for size in args.sizes:
            per_class = None if size == "all" else int(size)
            for seed in args.seeds:
                with tempfile.TemporaryDirectory(prefix="zc-") as tmp:
                    data = SOURCES[source](Path(tmp) / "data", per_class, seed)
                    n_train = sum(1 for _ in (data / "train").rglob("*.*"))
                    rule = step_rule_epochs(n_train)
                    arms = [("linear_probe", 5), ("linear_probe", rule)]
                    if per_class is not None and per_class <= args.full_up_to and seed in args.full_seeds:
                        # full fine-tuning costs a backbone pass per epoch: the step rule's epochs only
                        # where they stay cheap (the smallest sets)
                        arms += [("full", 5)] + ([("full", rule)] if per_class * 2 * rule <= 400 else [])
                    for strategy, epochs in dict.fromkeys(arms):
                        arm = f"{strategy} {epochs} ep"
                        key = (source, size, seed, arm)
                        if key in done:
                            continue
                        r = {"source": source, "per_class": size, "n_train": n_train, "seed": seed, "arm": arm,
                             "strategy": strategy, "epochs": epochs, **run(data, strategy, epochs, seed)}
                        print(json.dumps(r), flush=True)
                        results.append(r)
                        done.add(key)
                        Path(args.output).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

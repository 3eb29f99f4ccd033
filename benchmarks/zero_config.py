"""Which strategy and how many epochs, by the amount of data per class: the evidence behind
`finetunekit train DATA_PATH` (finetunekit.choose.autoconfig).

Class-folder subsets derived from the shared data (symlinks in a temporary folder, never copies in
the repository): ants/bees photos (hymenoptera, various sizes) and UTKFace 200x200 face chips by
gender (a different domain and resolution), at N training images per class; validation on a fixed
set per source. Each subset is trained with the bundled EfficientNet-Lite0 as a linear probe for the
default 5 epochs, as a linear probe for the epochs the step rule gives (about 100 optimizer steps),
and with full fine-tuning (lr 1e-4, head 1e-2, 5 epochs; the step rule for the smallest sets).

    python benchmarks/zero_config.py --sizes 8 32 all --seeds 0 1   # prints a table, writes results/zero_config.json

``--modality text``: the same question for text, on SST-2 (train.tsv, validated on dev.tsv) and
TREC-6 coarse (train_5500 converted by benchmarks/fewshot.py's ``trec_tables``, validated on the
500 TREC_10 questions), at K training examples per class (``data.shots_per_class``, drawn with the
seed; a class with fewer keeps all), bundled MiniLM-L6. The candidate text rules, one arm each:

* ``full 3 ep``: the text default (full fine-tuning, lr 1e-4, head 1e-3, 3 epochs);
* ``full step rule``: the same with the images' epochs rule (about 100 optimizer steps at batch 16,
  5..50 epochs; finetunekit.choose.autoconfig.epochs_for);
* ``setfit``: its defaults (1 epoch of 2 x 20 x N contrastive pairs at 2e-5, logistic head);
* ``linear_probe step rule``: frozen backbone, head at 1e-2 (the image probe's rate), step-rule epochs.

Every arm trains with ``train.restore_best: false``: ``accuracy`` is the last epoch's, chosen on
nothing (the validation sets here are the evaluation sets); ``best_accuracy`` (the best epoch's,
selected on the same set, optimistic) is kept beside it. Each run is a subprocess
(``OMP_NUM_THREADS=2``; ``--jobs N`` at a time, sharing the GPU when there is one); each finished
run appends a row to ``--results`` (written atomically), so an interrupted run continues where it
stopped with the same command. Needs the project's dependencies (``pip install -e .``), not its
console script::

    PYTHONPATH=src FINETUNEKIT_SHARED_DATA=/data python benchmarks/zero_config.py --modality text \
        --sizes 8 32 128 512 --seeds 0 1 --jobs 8 --results zero_config_text.json
    python benchmarks/zero_config.py --modality text --results zero_config_text.json --summarise
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
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
    from finetunekit.choose.autoconfig import epochs_for

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
    if "--run-one" in sys.argv:  # a text run in its own process (started by text_main)
        return run_one_text(json.loads(sys.argv[sys.argv.index("--run-one") + 1]))
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--modality", choices=["image", "text"], default="image")
    if first.parse_known_args()[0].modality == "text":
        return text_main()
    parser = argparse.ArgumentParser()
    parser.add_argument("--modality", choices=["image"], default="image", help="image (this table) or text (see --modality text --help)")
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


# ---------------------------------------------------------------------------------------------
# --modality text

TEXT_DATA = ("sst2", "trec6")
TEXT_ARMS = ("full 3 ep", "full step rule", "setfit", "linear_probe step rule")
TEXT_RESULTS = REPO / "benchmarks" / "results" / "zero_config_text.json"


def text_tables(name: str, tmp: Path) -> tuple[Path, Path]:
    """(train, validation) tables of a text set; TREC is converted into ``tmp``."""
    if name == "sst2":
        return SHARED / "sst2" / "train.tsv", SHARED / "sst2" / "dev.tsv"
    sys.path.insert(0, str(REPO / "benchmarks"))
    from fewshot import trec_tables

    return trec_tables(tmp)


def label_counts(table: Path) -> Counter:
    """Examples per class of a TSV table with a ``label`` column (GLUE style: no quoting)."""
    lines = table.read_text(encoding="utf-8").splitlines()
    column = lines[0].split("\t").index("label")
    return Counter(line.split("\t")[column] for line in lines[1:] if line.strip())


def text_arm_overrides(arm: str, n_train: int, epochs: int | None) -> list[str]:
    """The recipe overrides of one arm; ``epochs`` (smoke tests) replaces every arm's epochs."""
    rule = step_rule_epochs(n_train)
    arms = {
        "full 3 ep": ["strategy.name=full", "train.epochs=3"],
        "full step rule": ["strategy.name=full", f"train.epochs={rule}"],
        "setfit": ["strategy.name=setfit"],
        "linear_probe step rule": ["strategy.name=linear_probe", f"train.epochs={rule}", "train.head_lr=0.01"],
    }
    overrides = arms[arm]
    if epochs is not None:
        overrides = [o for o in overrides if not o.startswith("train.epochs=")] + [f"train.epochs={epochs}"]
    return overrides


def run_one_text(spec: dict) -> int:
    """Train one arm (in this process) and print its row as the last line of stdout."""
    import torch

    from finetunekit import Recipe, train

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    overrides = ["model.backbone=bundled:minilm_l6", f"data.train={spec['train']}", f"data.val={spec['val']}",
                 f"data.shots_per_class={spec['per_class']}", f"train.seed={spec['seed']}", "train.restore_best=false",
                 *spec["overrides"]]
    recipe = Recipe().with_overrides(overrides)
    with tempfile.TemporaryDirectory(prefix="zc-text-") as out:
        started = time.perf_counter()
        result = train(recipe, output=Path(out) / "run", quiet=True, checkpoints=False, report=False)
        seconds = time.perf_counter() - started
    history = [h["val_accuracy"] for h in result.history if "val_accuracy" in h]
    row = {"data": spec["data"], "per_class": spec["per_class"], "n_train": spec["n_train"], "seed": spec["seed"],
           "arm": spec["arm"], "strategy": result.recipe.strategy.name, "epochs": result.recipe.train.epochs,
           "lr": result.recipe.train.lr, "head_lr": result.recipe.train.head_lr,
           "accuracy": result.metrics["accuracy"], "macro_f1": result.metrics["macro_f1"],
           "best_accuracy": max(history) if history else result.metrics["accuracy"], "seconds": round(seconds, 1),
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    print("ROW " + json.dumps(row), flush=True)
    return 0


def _save_rows(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    os.replace(tmp, path)


def text_summary(rows: list[dict]) -> str:
    """Mean last-epoch accuracy (± sd over seeds) and seconds a run, per data set, size and arm."""
    arms = [a for a in TEXT_ARMS if any(r["arm"] == a for r in rows)]
    lines = ["| data | per class (train) | " + " | ".join(arms) + " |", "| --- | --- |" + " --- |" * len(arms)]
    for data in TEXT_DATA:
        for k in sorted({r["per_class"] for r in rows if r["data"] == data}):
            here = [r for r in rows if r["data"] == data and r["per_class"] == k]
            cells = []
            for arm in arms:
                mine = [r for r in here if r["arm"] == arm]
                if not mine:
                    cells.append("")
                    continue
                accs = [r["accuracy"] for r in mine]
                sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
                cells.append(f"{statistics.mean(accs):.3f} ± {sd:.3f} ({len(mine)}; {mine[0]['epochs']} ep; "
                             f"best ep {statistics.mean(r['best_accuracy'] for r in mine):.3f}; "
                             f"{statistics.mean(r['seconds'] for r in mine):.0f} s)")
            lines.append(f"| {data} | {k} ({here[0]['n_train']}) | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("cells: last-epoch accuracy, mean ± sd (seeds; epochs; best-epoch accuracy, selected on the same "
                 "validation set; seconds a run)")
    return "\n".join(lines)


def text_main() -> int:
    parser = argparse.ArgumentParser(description="zero-config text rule: strategies by examples per class")
    parser.add_argument("--modality", choices=["text"], default="text")
    parser.add_argument("--data", nargs="+", choices=TEXT_DATA, default=list(TEXT_DATA))
    parser.add_argument("--sizes", nargs="+", type=int, default=[8, 32, 128, 512], help="training examples per class")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--arms", nargs="+", choices=TEXT_ARMS, default=list(TEXT_ARMS))
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, each a subprocess with OMP_NUM_THREADS=2")
    parser.add_argument("--epochs", type=int, default=None, help="smoke tests: every arm trains this many epochs")
    parser.add_argument("--results", type=Path, default=TEXT_RESULTS, help="JSON rows, appended per finished run")
    parser.add_argument("--summarise", action="store_true", help="only print the table of the stored rows")
    args = parser.parse_args()
    rows = json.loads(args.results.read_text()) if args.results.is_file() else []
    if not args.summarise:
        rows = run_text(args, rows)
    print(text_summary(rows))
    return 0


def run_text(args: argparse.Namespace, rows: list[dict]) -> list[dict]:
    done = {(r["data"], r["per_class"], r["seed"], r["arm"]) for r in rows}
    tmp = Path(tempfile.mkdtemp(prefix="zc-text-"))
    specs = []
    for data in args.data:
        train, val = text_tables(data, tmp)
        counts = label_counts(train)
        for k in args.sizes:
            n_train = sum(min(c, k) for c in counts.values())
            for seed in args.seeds:
                for arm in args.arms:
                    if (data, k, seed, arm) not in done:
                        specs.append({"data": data, "per_class": k, "n_train": n_train, "seed": seed, "arm": arm,
                                      "train": str(train), "val": str(val),
                                      "overrides": text_arm_overrides(arm, n_train, args.epochs)})
    specs.sort(key=lambda s: s["n_train"])  # small first: an interrupted run leaves whole small sizes
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
           # features of the frozen probe: a cache of this benchmark's own, gone with it
           "FINETUNEKIT_CACHE_DIR": os.environ.get("FINETUNEKIT_CACHE_DIR") or str(tmp / "feature-cache")}
    lock, started = threading.Lock(), time.perf_counter()
    print(f"{len(specs)} runs to do ({len(done)} already in {args.results}), {args.jobs} at a time", flush=True)

    def one(spec: dict) -> None:
        nonlocal rows
        began = time.perf_counter()
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--run-one", json.dumps(spec)],
                              env=env, capture_output=True, text=True)
        found = [line[4:] for line in proc.stdout.splitlines() if line.startswith("ROW ")]
        label = f"{spec['data']} K={spec['per_class']} seed {spec['seed']} {spec['arm']}"
        if proc.returncode != 0 or not found:
            print(f"FAILED {label} (exit {proc.returncode}):\n{(proc.stderr or proc.stdout)[-2000:]}", flush=True)
            return
        row = {**json.loads(found[-1]), "process_seconds": round(time.perf_counter() - began, 1)}  # with start-up
        with lock:
            rows = [*rows, row]
            _save_rows(rows, args.results)
            print(f"[{time.perf_counter() - started:.0f}s] {label}: accuracy {row['accuracy']:.4f} "
                  f"(best epoch {row['best_accuracy']:.4f}), {row['epochs']} ep, {row['seconds']} s", flush=True)

    try:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            list(pool.map(one, specs))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


if __name__ == "__main__":
    raise SystemExit(main())

"""Which fine-tuning strategy wins? Every strategy on the same data, several seeds, one table.

* images: the bundled EfficientNet-Lite0 on ants/bees (train/ -> val/), the image defaults
  otherwise (5 epochs, batch 16, 256 px, head lr 1e-2, backbone lr as listed);
* text: the bundled MiniLM-L6 on 2,000 random SST-2 training rows, evaluated on the full dev set,
  the text defaults otherwise (3 epochs, batch 16, lr 1e-4, head 1e-3; those were chosen on
  held-out training rows, never on dev).

Each run is a fresh process (its peak memory is its own) and reports validation accuracy, wall
time of ``finetunekit.train`` (data checks, feature cache, validation and artefacts included),
trainable parameters and peak resident memory. The table goes to stdout and, with ``--write``, into
docs/strategies.md between the benchmark markers; raw rows to benchmarks/results/strategies.json.

    python benchmarks/strategies.py --write --jobs 2     # everything, 3 seeds, two runs at a time
    python benchmarks/strategies.py --task text --seeds 0 --only full lora
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FINETUNEKIT_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "benchmarks" / "results" / "strategies.json"
DOC = REPO / "docs" / "strategies.md"
BEGIN, END = "<!-- benchmark:strategies:begin -->", "<!-- benchmark:strategies:end -->"

# name -> recipe overrides (dotted), per task
CONFIGS = {
    "images": {
        "linear_probe": ["strategy.name=linear_probe"],
        "last_n (2 groups)": ["strategy.name=last_n", "strategy.last_n=2", "train.lr=1e-4"],
        "full": ["strategy.name=full", "train.lr=1e-4"],
        "full + layer decay 0.7": ["strategy.name=full", "train.lr=1e-4", "strategy.layer_decay=0.7"],
        "full + L2-SP": ["strategy.name=full", "train.lr=1e-4", "strategy.l2sp_alpha=0.01"],
        "freeze_then_unfreeze": ["strategy.name=freeze_then_unfreeze", "train.lr=1e-4"],
        "lp_ft": ["strategy.name=lp_ft", "train.lr=1e-4"],
        "gradual_unfreeze": ["strategy.name=gradual_unfreeze", "train.lr=1e-4"],
        "lora (r 8)": ["strategy.name=lora"],
    },
    "text": {
        "linear_probe": ["strategy.name=linear_probe", "train.lr=1e-3", "train.epochs=10"],
        "full": ["strategy.name=full"],
        "full + layer decay 0.9": ["strategy.name=full", "strategy.layer_decay=0.9"],
        "full + layer decay 0.9 + L2-SP": ["strategy.name=full", "strategy.layer_decay=0.9", "strategy.l2sp_alpha=0.01"],
        "lp_ft": ["strategy.name=lp_ft", "train.epochs=4"],
        "gradual_unfreeze": ["strategy.name=gradual_unfreeze"],
        "lora (r 8)": ["strategy.name=lora"],
    },
}
BASE = {
    "images": ["model.backbone=bundled:efficientnet_lite0", f"data.train={DATA / 'images' / 'hymenoptera_data'}"],
    "text": ["model.backbone=bundled:minilm_l6", f"data.train={DATA / 'sst2' / 'train.tsv'}", f"data.val={DATA / 'sst2' / 'dev.tsv'}",
             "data.text_column=sentence", "data.label_column=label", "data.max_train_samples=2000"],
}


def run_one(task: str, name: str, seed: int) -> dict:
    """Child process: one training run; prints its row as JSON."""
    import resource

    import torch

    from finetunekit import Recipe, train

    torch.set_num_threads(int(os.environ.get("FINETUNEKIT_BENCH_THREADS", torch.get_num_threads())))

    recipe = Recipe.from_dict({}).with_overrides([*BASE[task], *CONFIGS[task][name], f"train.seed={seed}"])
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FINETUNEKIT_CACHE_DIR"] = str(Path(tmp) / "cache")  # every run pays for its own features
        started = time.perf_counter()
        result = train(recipe, output=Path(tmp) / "run", quiet=True)
        seconds = time.perf_counter() - started
    return {
        "task": task, "name": name, "seed": seed, "accuracy": result.metrics["accuracy"], "macro_f1": result.metrics["macro_f1"],
        "seconds": round(seconds, 1), "trainable_params": result.trainable_params, "total_params": result.total_params,
        "peak_memory_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "best_epoch": result.metrics["best_epoch"], "overrides": CONFIGS[task][name],
    }


def summarise(rows: list[dict]) -> str:
    out = []
    for task in CONFIGS:
        mine = [r for r in rows if r["task"] == task]
        if not mine:
            continue
        seeds = sorted({r["seed"] for r in mine})
        out.append(f"\n**{task}** ({'ants/bees, 245 train / 153 val photos' if task == 'images' else 'SST-2, 2,000 train rows / 872 dev rows'}; seeds {', '.join(map(str, seeds))})\n")
        out.append("| strategy | seeds | accuracy (mean ± sd) | min – max | seconds / run | trainable params | peak memory (MiB) | recipe overrides |")
        out.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for name in CONFIGS[task]:
            rs = [r for r in mine if r["name"] == name]
            if not rs:
                continue
            acc = [r["accuracy"] for r in rs]
            sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
            out.append(
                f"| {name} | {len(rs)} | {statistics.mean(acc):.4f} ± {sd:.4f} | {min(acc):.4f} – {max(acc):.4f} | "
                f"{statistics.mean(r['seconds'] for r in rs):.0f} | {rs[0]['trainable_params']:,} / {rs[0]['total_params']:,} | "
                f"{max(r['peak_memory_mib'] for r in rs):.0f} | `{' '.join(o for o in rs[0]['overrides'])}` |"
            )
    out.append("\nTrainable parameters are counted when training starts: the schedules that begin with the head "
               "alone (`lp_ft`, `gradual_unfreeze`) train more later. Seconds are wall time of `finetunekit.train` "
               "(features, validation and artefacts included); compare them within this table only.")
    return "\n".join(out) + "\n"


def write_doc(table: str, device: str) -> None:
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else "# Strategies\n"
    block = f"{BEGIN}\nMeasured with `python benchmarks/strategies.py --write` on {device}.\n{table}{END}"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n## Benchmark\n\n" + block + "\n"
    DOC.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", help="strategy names (the table's first column, or a prefix)")
    parser.add_argument("--write", action="store_true", help="write the table into docs/strategies.md")
    parser.add_argument("--jobs", type=int, default=1, help="trainings at once (each gets cores // jobs threads)")
    parser.add_argument("--threads", type=int, help="torch threads per training (default: cores // jobs)")
    parser.add_argument("--results", default=str(RESULTS), help="JSON file of raw rows (read, then updated after every run)")
    parser.add_argument("--summarise", nargs="*", metavar="JSON", help="no training: tabulate these result files (default: --results)")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        task, name, seed = args.one
        print("ROW " + json.dumps(run_one(task, name, int(seed))), flush=True)
        return
    results = Path(args.results)
    if args.summarise is not None:
        rows = [r for f in (args.summarise or [results]) for r in json.loads(Path(f).read_text())]
        args.task, args.seeds = [], []
    else:
        rows = json.loads(results.read_text()) if results.exists() else []
    todo = [(task, name, seed) for task in args.task for name in CONFIGS[task] for seed in args.seeds
            if not args.only or any(name.startswith(o) for o in args.only)]
    # --jobs N runs N trainings at once, each on cores // N torch threads, so they never compete
    # for a core (oversubscribed OpenMP threads would distort every time in the table).
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "FINETUNEKIT_BENCH_THREADS": str(threads)}
    lock = threading.Lock()

    def one(job: tuple[str, str, int]) -> None:
        nonlocal rows
        task, name, seed = job
        proc = subprocess.run([sys.executable, __file__, "--one", task, name, str(seed)], capture_output=True, text=True, env=env)
        found = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROW ")]
        with lock:
            if proc.returncode or not found:
                print(f"{task} {name} seed {seed} FAILED:\n{proc.stderr[-2000:]}", flush=True)
                return
            row = {**json.loads(found[-1][4:]), "threads": threads}
            rows = [r for r in rows if (r["task"], r["name"], r["seed"]) != (task, name, seed)] + [row]
            results.parent.mkdir(parents=True, exist_ok=True)
            results.write_text(json.dumps(rows, indent=1) + "\n")  # after every run: partial results survive
            print(f"{task:<7} {name:<26} seed {seed}  acc {row['accuracy']:.4f}  {row['seconds']:6.1f}s  "
                  f"trainable {row['trainable_params']:>10,}  peak {row['peak_memory_mib']:.0f} MiB", flush=True)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one, todo))
    table = summarise(rows)
    print(table)
    if args.write:
        import platform

        import torch

        threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
        write_doc(table, f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}; "
                         f"{args.jobs} run(s) at a time, {threads} torch thread(s) each")


if __name__ == "__main__":
    main()

"""Task types on their shared data sets, with the bundled backbones and the example recipes.

* STS-B (sentence-pair regression): examples/stsb.yaml, dev Spearman;
* RTE (sentence-pair classification): examples/rte.yaml, dev accuracy;
* GoEmotions (multi-label, 28 labels): examples/goemotions.yaml, trained with dev as validation
  (epoch choice and per-label thresholds), then evaluated on test: macro F1, micro F1, mAP;
* UTKFace (image regression): examples/utkface.yaml, a held-out part of train validates, test MAE;
* UTKFace, several tasks against one model per task: gender alone (classification), age alone,
  and age + gender on one backbone (examples/utkface_multitask.yaml): test MAE, test gender
  accuracy, and the total training time of each way.

Each run is ``finetunekit train`` in a fresh process (its wall time includes reading and checking the
data, the feature cache, validation and the run directory), then ``finetunekit evaluate`` on the
test file where there is one. Results go to benchmarks/results/tasks.json and, with ``--write``,
into docs/tasks.md between the benchmark markers.

    nice -n 5 python benchmarks/tasks.py --write            # everything, one run at a time
    python benchmarks/tasks.py --only stsb rte
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FINETUNEKIT_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "benchmarks" / "results" / "tasks.json"
DOC = REPO / "docs" / "tasks.md"
BEGIN, END = "<!-- benchmark:tasks:begin -->", "<!-- benchmark:tasks:end -->"

# the image defaults instead of the example's full fine-tuning
LINEAR_PROBE = ["strategy.name=linear_probe", "model.image_size=", "train.epochs=", "train.batch_size=", "train.lr=", "train.head_lr="]

# name -> (recipe, overrides, test file or None, metrics to report, bar (metric, op, value) or None)
RUNS = {
    "stsb": ("examples/stsb.yaml", [], None, ["spearman", "pearson", "rmse"], ("spearman", ">=", 0.85)),
    "rte": ("examples/rte.yaml", [], None, ["accuracy", "macro_f1"], ("accuracy", ">=", 0.60)),
    "goemotions": ("examples/goemotions.yaml", [], "text_multilabel/goemotions/test.csv",
                   ["macro_f1", "micro_f1", "map", "subset_accuracy"], ("macro_f1", ">=", 0.40)),
    "utkface": ("examples/utkface.yaml", [], "image_regression/utkface/test.csv", ["mae", "rmse", "r2"], ("mae", "<=", 7.0)),
    "utkface_gender": ("examples/utkface.yaml", ["data.label_column=gender", "task.type=classification", "train.metric=accuracy"],
                       "image_regression/utkface/test.csv", ["accuracy", "macro_f1"], None),
    "utkface_multitask": ("examples/utkface_multitask.yaml", [], "image_regression/utkface/test.csv",
                          ["age/mae", "age/rmse", "gender/accuracy"], None),
    # the same three with the image default, a linear probe on the frozen backbone (features cached)
    "utkface_lp": ("examples/utkface.yaml", LINEAR_PROBE, "image_regression/utkface/test.csv", ["mae", "rmse", "r2"], None),
    "utkface_gender_lp": ("examples/utkface.yaml", [*LINEAR_PROBE, "data.label_column=gender", "task.type=classification",
                                                   "train.metric=accuracy"],
                          "image_regression/utkface/test.csv", ["accuracy", "macro_f1"], None),
    "utkface_multitask_lp": ("examples/utkface_multitask.yaml", LINEAR_PROBE, "image_regression/utkface/test.csv",
                             ["age/mae", "age/rmse", "gender/accuracy"], None),
}


def run_one(name: str, work: Path) -> dict:
    recipe, overrides, test, keys, bar = RUNS[name]
    out = work / name
    cmd = [sys.executable, "-m", "finetunekit", "train", str(REPO / recipe), "--output", str(out), "--quiet", "--overwrite"]
    for item in overrides:
        cmd += ["--set", item]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    seconds = time.perf_counter() - started
    val = json.loads((out / "metrics.json").read_text())
    row = {"name": name, "recipe": recipe, "overrides": overrides, "train_seconds": round(seconds, 1),
           "epochs_run": val.get("epochs_run"), "best_epoch": val.get("best_epoch"),
           "validation": {k: val.get(k) for k in keys}, "eval_set": val.get("eval_set")}
    if test:
        started = time.perf_counter()
        extra = ["--image-root", str(DATA / Path(test).parent / "images")] if "utkface" in name else []
        printed = subprocess.run([sys.executable, "-m", "finetunekit", "evaluate", str(out), str(DATA / test), "--json", *extra],
                                 check=True, cwd=REPO, capture_output=True, text=True).stdout
        metrics = json.loads(printed)
        row["test"] = {k: metrics.get(k) for k in keys}
        row["test_set"] = metrics.get("eval_set")
        row["evaluate_seconds"] = round(time.perf_counter() - started, 1)
    if bar:
        metric, op, value = bar
        got = (row.get("test") or row["validation"])[metric]
        row["bar"] = {"metric": metric, "op": op, "value": value, "got": got,
                      "met": got is not None and (got >= value if op == ">=" else got <= value)}
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict]) -> str:
    env = f"{platform.machine()} CPU, {os.cpu_count()} cores (shared with other work while it ran: wall times are upper bounds)"
    lines = [f"Measured with `nice -n 5 python benchmarks/tasks.py --write` on {env}.", "",
             "| run | recipe | validation | test | bar | train s |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        def fmt(d):
            return ", ".join(f"{k} {v:.4f}" for k, v in (d or {}).items() if isinstance(v, (int, float))) or "-"
        bar = r.get("bar")
        shown = "-" if not bar else f"{bar['metric']} {bar['op']} {bar['value']}: {'met' if bar['met'] else 'missed'} ({bar['got']:.4f})"
        recipe = r["recipe"] + (" " + " ".join(f"`--set {o}`" for o in r["overrides"]) if r["overrides"] else "")
        lines.append(f"| {r['name']} | {recipe} | {fmt(r['validation'])} | {fmt(r.get('test'))} | {shown} | {r['train_seconds']:.0f} |")
    by = {r["name"]: r for r in rows}
    for suffix, how in (("", "full fine-tuning, examples/utkface*.yaml"), ("_lp", "linear probe, the image default")):
        age, gender, multi = (by.get(f"utkface{part}{suffix}") for part in ("", "_gender", "_multitask"))
        if not (age and gender and multi):
            continue
        single = age["train_seconds"] + gender["train_seconds"]
        lines += ["", f"Several tasks against one model per task (UTKFace test set; {how}):", "",
                  "| way | test age MAE | test gender accuracy | training seconds (total) |", "| --- | --- | --- | --- |",
                  f"| one model per task | {age['test']['mae']:.3f} | {gender['test']['accuracy']:.4f} | {single:.0f} |",
                  f"| one backbone, two heads | {multi['test']['age/mae']:.3f} | {multi['test']['gender/accuracy']:.4f} | {multi['train_seconds']:.0f} |"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", choices=sorted(RUNS), help="run these only")
    parser.add_argument("--write", action="store_true", help="write the table into docs/tasks.md")
    parser.add_argument("--summarise", action="store_true", help="only rebuild the table from the results file")
    args = parser.parse_args()
    saved = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    if not args.summarise:
        with tempfile.TemporaryDirectory(prefix="fk-tasks-") as work:
            for name in args.only or list(RUNS):
                saved[name] = run_one(name, Path(work))
                RESULTS.parent.mkdir(parents=True, exist_ok=True)
                RESULTS.write_text(json.dumps(saved, indent=2) + "\n")
    rows = [saved[n] for n in RUNS if n in saved]
    text = table(rows)
    print(text)
    if args.write:
        write_between(DOC, BEGIN, END, text)


def write_between(doc: Path, begin: str, end: str, text: str) -> None:
    """Replace what lies between the markers ``begin`` and ``end`` of ``doc`` with ``text``."""
    content = doc.read_text()
    start, stop = content.index(begin) + len(begin), content.index(end)
    doc.write_text(content[:start] + "\n" + text + "\n" + content[stop:])


if __name__ == "__main__":
    main()

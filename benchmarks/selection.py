"""Does ``finetunekit select`` rank backbones the way fine-tuning does? Kendall's tau between each
score (LogME, k-NN) and the validation accuracy the default image recipe reaches (a linear probe on
the bundled backbone, 5 epochs), per data set, over every offline image backbone:
bundled EfficientNet-Lite0, -Lite1, -Lite2, and Lite0 with ``model.pretrained: false`` (the control).

Image sets: ants/bees (train/ -> val/) and three class-folder sets derived from the UTKFace face
crops in shared/data (symbolic links in a temporary directory, never copies in the repo): gender
(2 classes), age bins (0-14, 15-29, 30-49, 50+) and race (5 classes), each from a seeded sample of
``--utk-train`` rows of UTKFace's train.csv (train/) and ``--utk-val`` rows of its test.csv (val/).

The scores are computed on the training part only; the accuracy is on val/. ``select`` and the
linear probe share the feature cache, so each backbone runs once per image.

    python benchmarks/selection.py --write
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FINETUNEKIT_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "benchmarks" / "results" / "selection.json"
DOC = REPO / "docs" / "selection-and-few-shot.md"
BEGIN, END = "<!-- benchmark:selection:begin -->", "<!-- benchmark:selection:end -->"
BACKBONES = ["bundled:efficientnet_lite0", "bundled:efficientnet_lite1", "bundled:efficientnet_lite2"]
CONTROL = "bundled:efficientnet_lite0"
UTK = DATA / "image_regression" / "utkface"
RACES = ["white", "black", "asian", "indian", "other"]


def age_bin(age: int) -> str:
    return "age_00-14" if age < 15 else "age_15-29" if age < 30 else "age_30-49" if age < 50 else "age_50+"


UTK_SETS = {
    "utk_gender": lambda row: ("male", "female")[int(row["gender"])],
    "utk_age": lambda row: age_bin(int(row["age"])),
    "utk_race": lambda row: RACES[int(row["race"])],
}


def derive_utk(root: Path, name: str, n_train: int, n_val: int, seed: int = 0) -> Path:
    """train/<class>/ and val/<class>/ folders of links to seeded samples of UTKFace's rows."""
    label_of = UTK_SETS[name]
    for split, table, n in (("train", "train.csv", n_train), ("val", "test.csv", n_val)):
        with open(UTK / table, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        random.Random(seed).shuffle(rows)
        for row in rows[:n]:
            folder = root / name / split / label_of(row)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / row["file"]).symlink_to(UTK / "images" / row["file"])
    return root / name


def kendall(xs: list[float], ys: list[float]) -> float:
    """Kendall's tau-b; NaN when either side is constant (every score or every accuracy tied)."""
    from scipy.stats import kendalltau

    return float(kendalltau(xs, ys).statistic)


def shown_tau(value: float) -> str:
    return "n/a (all tied)" if math.isnan(value) else f"{value:+.2f}"


def run_set(name: str, path: Path) -> list[dict]:
    from finetunekit import Recipe, train
    from finetunekit.choose.selection import Candidate, select

    candidates = [Candidate(b) for b in BACKBONES] + [Candidate(CONTROL, pretrained=False)]
    scored = {(r.candidate.name, r.candidate.pretrained): r for r in select(str(path), candidates)}
    rows = []
    for cand in candidates:
        s = scored[(cand.name, cand.pretrained)]
        if s.error:
            raise SystemExit(f"{name}: {cand.label}: {s.error}")
        recipe = Recipe().with_overrides([f"model.backbone={cand.name}", f"model.pretrained={str(cand.pretrained).lower()}",
                                          f"data.train={path}"])
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            result = train(recipe, output=Path(tmp) / "run", quiet=True)
        rows.append({
            "data": name, "backbone": cand.label, "classes": len(result.metrics["per_class"]), "train_examples": s.num_examples,
            "val_examples": result.metrics["num_examples"], "logme": s.scores["logme"], "knn": s.scores["knn"],
            "accuracy": result.metrics["accuracy"], "accuracy_ci": result.metrics["accuracy_ci"],
            "select_seconds": round(s.seconds["load"] + s.seconds["features"] + s.seconds["logme"] + s.seconds["knn"], 1),
            "score_seconds": {"logme": round(s.seconds["logme"], 3), "knn": round(s.seconds["knn"], 3)},
            "train_seconds": round(time.perf_counter() - started, 1),
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def summarise(rows: list[dict]) -> str:
    out = ["| data | backbone | LogME | k-NN acc | linear-probe val accuracy (95% CI) | select s | LogME s | k-NN s | fine-tune s |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lo, hi = r["accuracy_ci"]
        out.append(f"| {r['data']} ({r['classes']} classes, {r['train_examples']}/{r['val_examples']}) | {r['backbone']} | "
                   f"{r['logme']:.4f} | {r['knn']:.3f} | {r['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] | {r['select_seconds']:.1f} | "
                   f"{r['score_seconds']['logme']:.3f} | {r['score_seconds']['knn']:.3f} | {r['train_seconds']:.1f} |")
    out += ["", "| data | tau LogME (4 backbones) | tau k-NN (4) | tau LogME (3 pretrained) | tau k-NN (3 pretrained) | control last by LogME / k-NN |",
            "| --- | --- | --- | --- | --- | --- |"]
    taus: dict[str, list[float]] = {"l4": [], "k4": [], "l3": [], "k3": []}
    for data in dict.fromkeys(r["data"] for r in rows):
        mine = [r for r in rows if r["data"] == data]
        pre = [r for r in mine if "pretrained: false" not in r["backbone"]]
        control = next(r for r in mine if "pretrained: false" in r["backbone"])
        vals = {
            "l4": kendall([r["logme"] for r in mine], [r["accuracy"] for r in mine]),
            "k4": kendall([r["knn"] for r in mine], [r["accuracy"] for r in mine]),
            "l3": kendall([r["logme"] for r in pre], [r["accuracy"] for r in pre]),
            "k3": kendall([r["knn"] for r in pre], [r["accuracy"] for r in pre]),
        }
        for key, value in vals.items():
            taus[key].append(value)
        last = (all(control["logme"] < r["logme"] for r in pre), all(control["knn"] < r["knn"] for r in pre))
        out.append(f"| {data} | {' | '.join(shown_tau(vals[k]) for k in ('l4', 'k4', 'l3', 'k3'))} | "
                   f"{'yes' if last[0] else 'no'} / {'yes' if last[1] else 'no'} |")
    if taus["l4"]:  # the mean over the sets where tau is defined; how many, when some are not
        cells = []
        for key in ("l4", "k4", "l3", "k3"):
            defined = [v for v in taus[key] if not math.isnan(v)]
            cell = f"{sum(defined) / len(defined):+.2f}" if defined else "n/a"
            cells.append(cell if len(defined) == len(taus[key]) else f"{cell} ({len(defined)} sets)")
        out.append(f"| mean | {' | '.join(cells)} | |")
    return "\n".join(out)


def write_doc(table: str) -> None:
    text = DOC.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["ants_bees", *UTK_SETS])
    parser.add_argument("--utk-train", type=int, default=160)
    parser.add_argument("--utk-val", type=int, default=80)
    parser.add_argument("--summarise", action="store_true")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    rows = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    if not args.summarise:
        tmp = Path(tempfile.mkdtemp(prefix="selection-sets-"))
        for name in args.sets:
            if any(r["data"] == name for r in rows):
                continue
            path = DATA / "images" / "hymenoptera_data" if name == "ants_bees" else derive_utk(tmp, name, args.utk_train, args.utk_val)
            rows += run_set(name, path)
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(rows, indent=1) + "\n")
    table = summarise(rows)
    print(table)
    if args.write:
        write_doc(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

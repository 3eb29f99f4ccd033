"""Few-shot: K training examples per class (data.shots_per_class), the few-shot strategies against
plain fine-tuning at the same K, several seeds.

* SST-2 (binary sentiment): K per class from train.tsv, evaluated on the full dev set (872);
* TREC-6 (question type, 6 coarse classes): train_5500.label / TREC_10.label (latin-1 lines
  ``COARSE:fine question``) converted to TSV tables in a temporary directory (never the repo),
  evaluated on the 500 test questions;
* ants/bees: K per class from train/, evaluated on val/ (153).

Text: ``setfit`` (its defaults: 1 epoch of 2 x 20 x N pairs at 2e-5, logistic-regression head)
against ``full`` (the text default recipe: 3 epochs, lr 1e-4, head 1e-3) on bundled MiniLM-L6, and
``frozen_head`` (``setfit`` with ``setfit_iterations: 0``: its logistic-regression head on the
pretrained encoder), which measures what SetFit's pair stage adds.
Images: ``prototype`` against ``linear_probe`` (the image default) on bundled EfficientNet-Lite0.
The seed draws the K examples and seeds training; the same seed gives both methods the same
examples, so each pair of runs is also compared per example (McNemar, finetunekit.core.stats).

Runs in one process, one thread. Rows go to benchmarks/results/fewshot.json (appended per run, so
an interrupted benchmark continues), the table to stdout, the plot to docs/fewshot.png, and with
``--write`` the table into docs/selection-and-few-shot.md between the markers.

    python benchmarks/fewshot.py --seeds 0 1 2 3 4 --shots 8 16 64 --write
    python benchmarks/fewshot.py --data sst2 --shots 8 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FINETUNEKIT_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "benchmarks" / "results" / "fewshot.json"
DOC = REPO / "docs" / "selection-and-few-shot.md"
PLOT = REPO / "docs" / "fewshot.png"
BEGIN, END = "<!-- benchmark:fewshot:begin -->", "<!-- benchmark:fewshot:end -->"

FROZEN_HEAD = ["strategy.name=setfit", "strategy.setfit_iterations=0"]  # SetFit's head without its pair stage
METHODS = {
    "sst2": {"setfit": ["strategy.name=setfit"], "frozen_head": FROZEN_HEAD, "full": ["strategy.name=full"]},
    "trec6": {"setfit": ["strategy.name=setfit"], "frozen_head": FROZEN_HEAD, "full": ["strategy.name=full"]},
    "ants_bees": {"prototype": ["strategy.name=prototype"], "linear_probe": ["strategy.name=linear_probe"]},
}
BASELINE = {"sst2": "full", "trec6": "full", "ants_bees": "linear_probe"}


def trec_tables(root: Path) -> tuple[Path, Path]:
    """TREC's ``COARSE:fine question`` lines (latin-1) as TSV tables ``text<TAB>label`` (coarse)."""
    out = []
    for name in ("train_5500.label", "TREC_10.label"):
        rows = []
        for number, line in enumerate((DATA / "trec" / name).read_bytes().decode("latin-1").splitlines(), start=1):
            if not line.strip():
                continue
            label, _, text = line.partition(" ")
            coarse = label.split(":", 1)[0]
            if not coarse or not text.strip():
                raise SystemExit(f"{DATA / 'trec' / name}:{number}: not a 'COARSE:fine question' line")
            rows.append(f"{' '.join(text.split())}\t{coarse}\n")
        path = root / (name.split(".")[0] + ".tsv")
        path.write_text("text\tlabel\n" + "".join(rows), encoding="utf-8")
        out.append(path)
    return out[0], out[1]


def data_overrides(name: str, tmp: Path) -> list[str]:
    if name == "sst2":
        return ["model.backbone=bundled:minilm_l6", f"data.train={DATA / 'sst2' / 'train.tsv'}", f"data.val={DATA / 'sst2' / 'dev.tsv'}"]
    if name == "trec6":
        train, test = trec_tables(tmp)
        return ["model.backbone=bundled:minilm_l6", f"data.train={train}", f"data.val={test}"]
    return ["model.backbone=bundled:efficientnet_lite0", f"data.train={DATA / 'images' / 'hymenoptera_data'}"]


def load_rows(path: Path = RESULTS) -> list[dict]:
    return json.loads(path.read_text()) if path.is_file() else []


def save_rows(rows: list[dict], path: Path = RESULTS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    os.replace(tmp, path)


def run_one(data: str, method: str, shots: int, seed: int, tmp: Path, base: list[str]) -> dict:
    from finetunekit import Recipe, train

    overrides = [*base, *METHODS[data][method], f"data.shots_per_class={shots}", f"train.seed={seed}"]
    recipe = Recipe().with_overrides(overrides)
    run_dir = tmp / f"{data}-{method}-k{shots}-s{seed}"
    started = time.perf_counter()
    result = train(recipe, output=run_dir, quiet=True, overwrite=True)
    return {"data": data, "method": method, "shots": shots, "seed": seed, "accuracy": result.metrics["accuracy"],
            "accuracy_ci": result.metrics.get("accuracy_ci"), "macro_f1": result.metrics["macro_f1"],
            "seconds": round(time.perf_counter() - started, 1), "run_dir": str(run_dir)}


def paired_p(row_a: dict, row_b: dict) -> float | None:
    from finetunekit.report import load_run, significance

    try:
        (_, comparison), = significance([load_run(row_b["run_dir"]), load_run(row_a["run_dir"])])
    except Exception:  # noqa: BLE001 - run dirs of an earlier session may be gone
        return None
    return None if isinstance(comparison, str) else comparison.p_value


def summarise(rows: list[dict]) -> str:
    lines = ["| data | K per class | method | accuracy (mean ± sd) | seeds | gain over plain | seeds where it is significantly better / worse than plain (McNemar, two-sided p < 0.05) | seconds a run |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for data in METHODS:
        for shots in sorted({r["shots"] for r in rows if r["data"] == data}):
            here = [r for r in rows if r["data"] == data and r["shots"] == shots]
            base = {r["seed"]: r for r in here if r["method"] == BASELINE[data]}
            for method in METHODS[data]:
                mine = sorted((r for r in here if r["method"] == method), key=lambda r: r["seed"])
                if not mine:
                    continue
                accs = [r["accuracy"] for r in mine]
                sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
                gain, sig = "", ""
                if method != BASELINE[data]:
                    paired = [(r, base[r["seed"]]) for r in mine if r["seed"] in base]
                    if paired:
                        gain = f"{100 * statistics.mean(a['accuracy'] - b['accuracy'] for a, b in paired):+.1f} points"
                        significant = [(a, b) for a, b in paired if a.get("p_vs_plain") is not None and a["p_vs_plain"] < 0.05]
                        better = sum(a["accuracy"] > b["accuracy"] for a, b in significant)
                        sig = f"{better} better, {len(significant) - better} worse, of {len(paired)}"
                lines.append(f"| {data} | {shots} | {method} | {statistics.mean(accs):.3f} ± {sd:.3f} | {len(accs)} | {gain} | {sig} | "
                             f"{statistics.mean(r['seconds'] for r in mine):.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [d for d in METHODS if any(r["data"] == d for r in rows)]
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.4), squeeze=False)
    for ax, data in zip(axes[0], datasets, strict=True):
        for method in METHODS[data]:
            mine = [r for r in rows if r["data"] == data and r["method"] == method]
            ks = sorted({r["shots"] for r in mine})
            means = [statistics.mean(r["accuracy"] for r in mine if r["shots"] == k) for k in ks]
            sds = [statistics.pstdev([r["accuracy"] for r in mine if r["shots"] == k]) for k in ks]
            ax.errorbar(ks, means, yerr=sds, marker="o", capsize=3, label=method)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["shots"] for r in rows if r["data"] == data}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_title(data)
        ax.set_xlabel("training examples per class")
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)


def write_doc(table: str) -> None:
    text = DOC.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{DOC}: benchmark markers missing")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--shots", nargs="+", type=int, default=[8, 16, 64])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--summarise", action="store_true", help="only print (and plot / write) the stored results")
    parser.add_argument("--write", action="store_true", help="write the table into docs/selection-and-few-shot.md")
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON file of rows (default benchmarks/results/fewshot.json)")
    parser.add_argument("--merge", nargs="*", type=Path, default=[], help="more row files to add to the table (parallel runs)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    rows = load_rows(args.results)
    if not args.summarise:
        tmp = Path(tempfile.mkdtemp(prefix="fewshot-"))
        for data in args.data:
            base = data_overrides(data, tmp)
            for shots in args.shots:
                for seed in args.seeds:
                    done = {r["method"] for r in rows if (r["data"], r["shots"], r["seed"]) == (data, shots, seed)}
                    fresh = []
                    for method in METHODS[data]:
                        if method in done:
                            continue
                        row = run_one(data, method, shots, seed, tmp, base)
                        fresh.append(row)
                        print(json.dumps({k: v for k, v in row.items() if k != "run_dir"}), flush=True)
                    plain = next((r for r in [*rows, *fresh] if (r["data"], r["shots"], r["seed"], r["method"]) == (data, shots, seed, BASELINE[data])), None)
                    for row in fresh:
                        if plain is not None and row["method"] != BASELINE[data]:
                            row["p_vs_plain"] = paired_p(row, plain)
                    rows = [*rows, *fresh]
                    save_rows(rows, args.results)
    for extra in args.merge:
        rows += [r for r in load_rows(extra) if r not in rows]
    table = summarise(rows)
    print(table)
    if rows and (args.write or args.results == RESULTS):  # a side file of a parallel run leaves the docs' plot alone
        plot(rows)
    if args.write:
        write_doc(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

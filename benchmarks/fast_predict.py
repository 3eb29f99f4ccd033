"""The fast predict path (``RUN_DIR/fast``, finetunekit.use.fast) against the torch path on a run's
whole validation set, and both as cold ``finetunekit predict RUN one_input`` commands.

    python benchmarks/fast_predict.py runs/sst2 runs/ants            # parity on every validation input
    python benchmarks/fast_predict.py runs/sst2 --cold 5 --input "a gripping, beautifully made film"

Parity: the validation inputs the run saved (val_predictions.jsonl), predicted by
``finetunekit.load(RUN)`` (torch, CPU) and by the fast model (written first when the run has none):
the largest score difference and how many predicted labels differ. Cold: ``--cold N`` new processes
of each path (``predict --torch`` and the fast path), median wall seconds, and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}


def parity(run_dir: Path) -> dict:
    from finetunekit.core.answers import task_records
    from finetunekit.use import fast
    from finetunekit.use.export import write_fast_model
    from finetunekit.use.predict import load

    if fast.status(run_dir)[0] is None:
        print(write_fast_model(run_dir).summary(), flush=True)
    model = fast.FastModel.open(run_dir)
    if model is None:
        sys.exit(f"{run_dir}: no fast-predict model ({fast.status(run_dir)[1]})")
    inputs = [json.loads(line)["input"] for line in (run_dir / "val_predictions.jsonl").read_text().splitlines()]
    inputs = [tuple(x) if isinstance(x, list) else x for x in inputs]
    predictor = load(run_dir, device="cpu")
    started = time.perf_counter()
    expected = predictor.predict_proba(inputs)
    torch_seconds = time.perf_counter() - started
    started = time.perf_counter()
    got = model.scores(inputs)
    fast_seconds = time.perf_counter() - started
    a, b = task_records(model.task, expected), task_records(model.task, got)
    key = {"classification": "label", "multilabel": "labels"}.get(model.task["type"])
    differ = sum(x["json"][key] != y["json"][key] for x, y in zip(a, b, strict=True)) if key else 0
    return {"run": str(run_dir), "inputs": len(inputs), "max_abs_score_diff": float(np.abs(expected - got).max()),
            "labels_differ": differ, "torch_seconds": round(torch_seconds, 2), "fast_seconds": round(fast_seconds, 2)}


def cold(run_dir: Path, item: str, repeats: int) -> dict:
    walls: dict[str, list[float]] = {"fast": [], "torch": []}
    for _ in range(repeats):
        for path in walls:
            argv = [sys.executable, "-m", "finetunekit", "predict", str(run_dir), item] + (["--torch"] if path == "torch" else [])
            started = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True, env=ENV)
            walls[path].append(time.perf_counter() - started)
    return {"run": str(run_dir), "median_fast_s": round(statistics.median(walls["fast"]), 2),
            "median_torch_s": round(statistics.median(walls["torch"]), 2), "walls": walls, "loadavg": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--cold", type=int, default=0, help="also time N cold predict commands of each path")
    parser.add_argument("--input", help="the one input for --cold (default: the run's first validation input)")
    args = parser.parse_args()
    for run in map(Path, args.runs):
        print(json.dumps(parity(run)), flush=True)
        if args.cold:
            first = json.loads((run / "val_predictions.jsonl").read_text().splitlines()[0])["input"]
            print(json.dumps(cold(run, args.input or first, args.cold)), flush=True)


if __name__ == "__main__":
    main()

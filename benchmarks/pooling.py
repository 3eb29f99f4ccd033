"""CLS vs mean pooling for the bundled MiniLM-L6, measured on held-out *training* rows of SST-2.

SST-2 dev is kept for final reporting: this script trains on 2,000 random rows of train.tsv and
validates on 1,000 other random rows of train.tsv, for each pooling and seed, and prints a table.

    python benchmarks/pooling.py [--seeds 0 1] [--data ../shared/data/sst2]
"""

from __future__ import annotations

import argparse
import csv
import random
import statistics
import tempfile
from pathlib import Path

from finetunekit import Recipe, train


def split_rows(source: Path, out: Path, n_train: int, n_val: int, seed: int) -> tuple[Path, Path]:
    with source.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    header, body = rows[0], rows[1:]
    random.Random(seed).shuffle(body)
    paths = []
    for name, chunk in (("train", body[:n_train]), ("heldout", body[n_train : n_train + n_val])):
        path = out / f"{name}.tsv"
        path.write_text("\n".join("\t".join(r) for r in [header, *chunk]) + "\n", encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    results: dict[str, list[float]] = {"cls": [], "mean": []}
    seconds: dict[str, list[float]] = {"cls": [], "mean": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            train_path, heldout = split_rows(Path(args.data) / "train.tsv", Path(tmp), 2000, 1000, seed=1000 + seed)
            for pooling in results:
                recipe = Recipe.from_dict({
                    "model": {"backbone": "bundled:minilm_l6", "pooling": pooling},
                    "data": {"train": str(train_path), "val": str(heldout)},
                    "train": {"epochs": 3, "seed": seed},
                })
                result = train(recipe, output=Path(tmp) / f"{pooling}-{seed}", quiet=True)
                results[pooling].append(result.metrics["accuracy"])
                seconds[pooling].append(result.seconds)
    print(f"{'pooling':<8} {'held-out acc (mean ± sd)':>26} {'seeds':>6} {'time/run (s)':>13}")
    for pooling, accs in results.items():
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"{pooling:<8} {statistics.mean(accs):>18.4f} ± {sd:.4f} {len(accs):>6} {statistics.mean(seconds[pooling]):>13.1f}")


if __name__ == "__main__":
    main()

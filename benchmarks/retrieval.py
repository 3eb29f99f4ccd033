"""Flickr8k retrieval: the test recall of finished runs side by side, as docs/retrieval.md shows it.

Train the runs first (each command is in docs/retrieval.md), e.g.::

    finetunekit train examples/flickr8k.yaml --output runs/f8k-lit
    finetunekit train examples/flickr8k.yaml --set strategy.name=projections --output runs/f8k-proj
    python benchmarks/retrieval.py runs/f8k-lit runs/f8k-proj

Prints a Markdown table: recall@1/5/10 both ways on the test set (95% bootstrap intervals of R@1),
median ranks, the strategy and the training time (epochs only: cached features are computed before).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml


def main(run_dirs: list[str]) -> None:
    if not run_dirs:
        raise SystemExit(__doc__)
    print("| run | strategy | towers | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 | t2i R@10 | median rank i2t / t2i | epochs | train s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for run in run_dirs:
        m = json.loads((Path(run) / "metrics.json").read_text())
        r = yaml.safe_load((Path(run) / "recipe.yaml").read_text())
        p = "test_" if "test_i2t_r1" in m else ""
        towers = "pretrained" if r["model"]["pretrained"] else f"random init, {r['model']['image_size']} px"

        def cell(key: str, m: dict = m, p: str = p) -> str:
            ci = m.get(f"{p}{key}_ci")
            return f"{m[p + key]:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci and key.endswith("r1") else "")

        print(f"| {Path(run).name} | {r['strategy']['name']} | {towers} | {cell('i2t_r1')} | {cell('i2t_r5')} | {cell('i2t_r10')} | "
              f"{cell('t2i_r1')} | {cell('t2i_r5')} | {cell('t2i_r10')} | {m[p + 'i2t_median_rank']:.0f} / {m[p + 't2i_median_rank']:.0f} | "
              f"{m['epochs_run']} | {m['train_seconds']:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1:])

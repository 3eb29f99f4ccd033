"""Flickr8k retrieval: the test recall of finished runs side by side, as docs/retrieval.md shows it;
and (``--epoch-speed``) what the feature cache saves in a LiT epoch.

Train the runs first (each command is in docs/retrieval.md), e.g.::

    finetunekit train examples/flickr8k.yaml --output runs/f8k-lit
    finetunekit train examples/flickr8k.yaml --set strategy.name=projections --output runs/f8k-proj
    python benchmarks/retrieval.py runs/f8k-lit runs/f8k-proj

Prints a Markdown table: recall@1/5/10 both ways on the test set (95% bootstrap intervals of R@1),
median ranks, the strategy and the training time (epochs only: cached features are computed before).

    python benchmarks/retrieval.py --epoch-speed [--recipe examples/flickr8k.yaml] [--batches N] [--set k=v ...]

times, in one process, the same LiT epoch (the recipe's strategy and text side, its training
images each with one caption, its batch size, the same optimizer steps from the same start; with
``--batches N`` only the epoch's first N batches) three ways: on a warm feature cache (the locked image tower's features, and with
``strategy.unlocked_text_layers`` the lower text layers' token states, read from memory), then
recomputing the image tower's features from the image files in every step, then (with
``unlocked_text_layers``) running the whole text tower forward each step as well (the text side
locked below the same layers, so the same weights train). Prints each epoch's seconds and the ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml


def table(run_dirs: list[str]) -> None:
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


def epoch_speed(recipe_path: str, batches: int | None, overrides: list[str]) -> None:
    import torch

    from finetunekit.retrieval.data import read_pairs
    from finetunekit.retrieval.recipe import RetrievalRecipe
    from finetunekit.retrieval.train import _Data, _prepare, _step, apply_strategy, build_towers, epoch_batches, optimizer_for

    recipe = RetrievalRecipe.from_yaml(recipe_path).with_overrides(overrides)
    s, d, t = recipe.strategy, recipe.data, recipe.train
    if s.name != "lit":
        raise SystemExit(f"--epoch-speed times a lit epoch; the recipe's strategy is {s.name}")
    pairs = read_pairs(d.train, d.image_column, d.caption_column, d.image_root)
    torch.manual_seed(t.seed)
    model = build_towers(recipe)
    apply_strategy(model, s)
    device = torch.device("cpu")
    preprocessing = {"image_tower": model.image.preprocessing(), "text_tower": {"max_length": d.max_length}}
    tic = time.perf_counter()
    data, hits = _prepare(model, pairs, recipe, preprocessing, device, True, "train")
    plan = epoch_batches(pairs, 0, t.seed, t.batch_size)[:batches]
    print(f"{recipe.model.image_backbone} + {recipe.model.text_backbone}, strategy lit, unlocked_text_layers "
          f"{s.unlocked_text_layers}; {len(pairs.images)} images, batch {t.batch_size}, {len(plan)} batches timed; "
          f"torch threads {torch.get_num_threads()}")
    print(f"feature cache: {sum(hits)} of {len(hits)} sets read back, {time.perf_counter() - tic:.1f}s (before the epochs)")
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def epoch(name: str, split: _Data) -> float:
        model.load_state_dict(state)  # the same start and the same steps each time
        optimizer = optimizer_for(model, t)
        model.train()
        model.image.eval()
        start = time.perf_counter()
        for step, batch in enumerate(plan):
            torch.manual_seed(t.seed * 1_000_003 + step)
            loss = _step(model, split, batch, device, preprocessing, label_smoothing=t.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            model.clamp_logit_scale()
        seconds = time.perf_counter() - start
        print(f"  {name}: {seconds:.1f}s (loss of the last step {loss.item():.4f})", flush=True)
        return seconds

    warm = epoch("epoch on the warm cache", data)
    cold = epoch("epoch recomputing the image tower", _Data(data.pairs, data.tokens, None, text_states=data.text_states))
    print(f"epoch speed-up from the image feature cache: {cold / warm:.1f}x")
    if data.text_states is not None:
        whole = epoch("epoch on cached image features, the whole text tower run", _Data(data.pairs, data.tokens, data.image_feats))
        print(f"epoch speed-up from the cached lower text states: {whole / warm:.1f}x; "
              f"recomputing both the image tower and the locked text layers: {(cold - warm + whole) / warm:.1f}x")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*")
    parser.add_argument("--epoch-speed", action="store_true")
    parser.add_argument("--recipe", default="examples/flickr8k.yaml")
    parser.add_argument("--batches", type=int, default=None, help="time only the epoch's first N batches")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args(argv)
    if args.epoch_speed:
        epoch_speed(args.recipe, args.batches, args.overrides)
    elif args.runs:
        table(args.runs)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])

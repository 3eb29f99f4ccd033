"""The command-line side of retrieval runs: ``index``, ``search``, zero-shot ``predict
--classes``, ``evaluate`` and ``compare`` of retrieval runs (``finetunekit.cli`` calls these).

Example::

    finetunekit index runs/flickr8k photos/ --output photos.index
    finetunekit search photos.index "a dog running on the beach" --top 10
    finetunekit search photos.index --image query.jpg
    finetunekit predict runs/flickr8k --classes ants,bees ant.jpg bee.jpg
    finetunekit evaluate runs/flickr8k hymenoptera_data/val --classes ants,bees
    finetunekit evaluate runs/flickr8k flickr8k/test.tsv
    finetunekit compare runs/lit runs/scratch
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..core.errors import FinetuneError


def index(args: Any) -> int:
    from .index import build_index

    result = build_index(args.run_dir, args.source, args.output, image_column=args.image_column, batch_size=args.batch_size,
                         quiet=args.quiet, restart=args.restart)
    resumed = f" ({result['resumed']} read back from an earlier, interrupted build)" if result["resumed"] else ""
    print(f"index: {result['output']}: {result['count']} images{resumed}")
    return 0


def search(args: Any) -> int:
    from .index import Index

    if (args.query is None) == (args.image is None):
        raise FinetuneError("search: give a text query or --image PHOTO (one of the two)")
    if args.query is not None and not args.query.strip():
        raise FinetuneError("search: empty text query")
    opened = Index.open(args.index)
    if args.image is not None and not Path(args.image).is_file():
        raise FinetuneError(f"--image: image not found: {args.image}")
    vectors = opened.model.embed_text([args.query]) if args.query is not None else opened.model.embed_images([args.image])
    tic = time.perf_counter()
    found = opened.search(vectors, args.top)[0]
    ms = (time.perf_counter() - tic) * 1000
    if args.json:
        print(json.dumps({"query": args.query or args.image, "results": [{"path": p, "score": round(s, 5)} for p, s in found]}))
    else:
        for rank, (path, score) in enumerate(found, start=1):
            print(f"{rank:3d}  {score:.4f}  {path}")
        print(f"({len(found)} of {len(opened)} images; index search {ms:.2f} ms)")
    return 0


def predict_zero_shot(args: Any) -> int:
    from .api import RetrievalModel
    from .index import collect_images

    model = RetrievalModel(args.run_dir)
    classes = [c for c in args.classes.split(",")]
    inputs: list[str] = []
    for item in args.inputs:
        inputs += collect_images(item) if Path(item).is_dir() else [item]
    if not inputs:
        raise FinetuneError("predict: give image files or folders to classify")
    for item, answer in zip(inputs, model.classify(inputs, classes), strict=True):
        if args.json:
            print(json.dumps({"input": item, **answer}))
        else:
            print(f"{answer['label']} ({answer['probabilities'][answer['label']]:.3f})\t{item}")
    return 0


def evaluate(args: Any) -> int:
    from .api import RetrievalModel
    from .metrics import format_metrics

    model = RetrievalModel(args.run_dir)
    if Path(args.data).is_dir():  # a folder of class folders: zero-shot classification from the folder names
        metrics = model.evaluate_zero_shot(args.data, args.classes.split(",") if args.classes else None)
        if args.json:
            print(json.dumps(metrics, indent=2))
        else:
            print(f"zero-shot on {metrics['eval_set']} ({metrics['examples']} images, classes {', '.join(metrics['classes'])}, "
                  f"{metrics['templates']} prompt templates averaged):\n  accuracy {metrics['accuracy']:.4f}  macro_f1 {metrics['macro_f1']:.4f}")
        return 0
    metrics = model.evaluate(args.data, args.image_column or "image", args.text_column or "caption", args.image_root)
    metrics.pop("ranks")
    print(json.dumps(metrics, indent=2) if args.json else format_metrics(metrics, f"metrics on {metrics['eval_set']}:"))
    return 0


def compare(run_dirs: list[str]) -> int:
    """Recall@1/5/10 of each run against the first, with a paired bootstrap over the same queries
    (the test set's ranks when every run has them, else the validation set's)."""
    from .metrics import KS, paired_bootstrap

    ranks = [json.loads((Path(r) / "ranks.json").read_text()) for r in run_dirs]
    split = "test" if all("test" in r for r in ranks) else "val"
    sizes = {(len(r[split]["i2t"]), len(r[split]["t2i"])) for r in ranks}
    if len(sizes) != 1:
        raise FinetuneError(f"compare: the runs were judged on different {split} sets ({sorted(sizes)} images, captions)")
    print(f"paired bootstrap over the {split} queries, each run against {run_dirs[0]}:")
    for run, r in zip(run_dirs[1:], ranks[1:], strict=True):
        print(f"{run}:")
        for way, label in (("i2t", "image->text"), ("t2i", "text->image")):
            for k in KS:
                d = paired_bootstrap(ranks[0][split][way], r[split][way], k)
                print(f"  {label} R@{k}: {d['difference']:+.3f} (95% interval {d['low']:+.3f} to {d['high']:+.3f}, p {d['p_value']:.3g})")
    return 0

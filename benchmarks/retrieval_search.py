"""Query latency of `finetunekit search` on a 10,000-image index.

The index holds 10,000 random unit vectors (the latency of an exact inner-product search depends
on the number and size of the vectors, not on what they encode), written and read back through
finetunekit's own index format. With --run, each query is also embedded by that run's text tower
first, as `finetunekit search INDEX "text"` does, so the end-to-end time is printed too.

    python benchmarks/retrieval_search.py                       # index search alone
    python benchmarks/retrieval_search.py --run runs/flickr8k   # + text embedding of each query
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--run", help="a retrieval run: embed each query text with it as well")
    args = parser.parse_args()

    import faiss
    import torch

    from finetunekit.retrieval.index import FORMAT, FORMAT_VERSION, Index

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.items, args.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder)
        flat = faiss.IndexFlatIP(args.dim)
        flat.add(vectors)
        faiss.write_index(flat, str(path / "vectors.faiss"))
        (path / "items.json").write_text(json.dumps([f"image_{i}.jpg" for i in range(args.items)]))
        (path / "index.json").write_text(json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, "count": args.items,
                                                     "complete": True, "run_dir": "", "weights_sha256": ""}))
        tic = time.perf_counter()
        index = Index.open(path)
        opened = time.perf_counter() - tic
        queries = rng.standard_normal((args.queries, args.dim)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        times = []
        for q in queries:
            tic = time.perf_counter()
            index.search(q[None], args.top)
            times.append((time.perf_counter() - tic) * 1000)
        print(f"index of {args.items:,} x {args.dim} (faiss IndexFlatIP, exact), opened in {opened * 1000:.1f} ms; "
              f"{args.queries} queries, top {args.top}, 1 thread:")
        print(f"  search: median {statistics.median(times):.3f} ms, p95 {np.percentile(times, 95):.3f} ms")
        if args.run:
            from finetunekit.retrieval.api import RetrievalModel

            model = RetrievalModel(args.run, device="cpu")
            if model.embed_dim != args.dim:
                raise SystemExit(f"--dim {args.dim} differs from the run's embedding size {model.embed_dim}")
            texts = ["a dog running on the beach", "two children playing in the snow", "a man riding a bike down a hill",
                     "a group of people standing outside a building"]
            model.embed_text(texts[:1])  # first call: tokenizer and kernels warm up
            total = []
            for i in range(args.queries // 4):
                tic = time.perf_counter()
                index.search(model.embed_text([texts[i % len(texts)]]), args.top)
                total.append((time.perf_counter() - tic) * 1000)
            print(f"  text query embedded by {args.run} + search: median {statistics.median(total):.1f} ms, "
                  f"p95 {np.percentile(total, 95):.1f} ms")


if __name__ == "__main__":
    main()

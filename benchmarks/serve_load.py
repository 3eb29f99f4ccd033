"""Load test of ``finetunekit serve``: dynamic batching against one forward pass per request.

Starts the service twice on a free loopback port, as a user would (``finetunekit serve``): once
batched (``--max-batch-size 32 --max-wait-ms 5``, the defaults) and once with
``--max-batch-size 1`` (every request its own forward pass). For 1, 4, 16 and 64 concurrent
clients, each client sends one SST-2 dev sentence per request, back to back on a keep-alive
connection, for ``--seconds`` after a short warm-up; the table gives requests per second and the
p50/p95/p99 latency. The clients run in this process (threads) on the same machine as the service.

    nice -n 5 python benchmarks/serve_load.py [--run RUN_DIR] [--seconds 10] [--threads 2]

Without ``--run``, a text run is trained first (bundled MiniLM-L6, 2 epochs on SST-2 train_1k,
as benchmarks/faithfulness.py does) into /tmp/finetunekit-faithfulness-runs/sst2-1k.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLIENTS = [1, 4, 16, 64]


def ensure_run(run: str | None, data: Path) -> Path:
    if run:
        return Path(run)
    path = Path("/tmp/finetunekit-faithfulness-runs/sst2-1k")
    if not (path / "model.safetensors").is_file():
        from finetunekit import Recipe, train

        recipe = Recipe.from_dict({
            "model": {"backbone": "bundled:minilm_l6"},
            "data": {"train": str(data / "sst2" / "train_1k.tsv"), "val": str(data / "sst2" / "dev.tsv"), "text_column": "sentence"},
            "train": {"epochs": 2, "seed": 0},
        })
        train(recipe, output=path, overwrite=True, quiet=True)
    return path


def sentences(data: Path) -> list[str]:
    with (data / "sst2" / "dev.tsv").open(encoding="utf-8", newline="") as handle:
        return [row["sentence"] for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)]


class Service:
    def __init__(self, run: Path, threads: int, max_batch_size: int, max_wait_ms: float = 5.0) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "finetunekit", "serve", str(run), "--port", "0", "--threads", str(threads),
             "--max-batch-size", str(max_batch_size), "--max-wait-ms", str(max_wait_ms), "--log-level", "warning"],
            stdout=subprocess.PIPE, text=True, env=env,
        )
        line = self.process.stdout.readline()
        if "http://" not in line:
            raise RuntimeError(f"service did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1].strip().rstrip("/"))

    def stats(self) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", "/health")
        return json.loads(conn.getresponse().read())

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def http_stack() -> str:
    """What uvicorn's ``http="auto"`` and ``loop="auto"`` pick: httptools and uvloop when installed."""
    import importlib.util

    parser = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return f"uvicorn with {parser} and {loop}"


def client(port: int, texts: list[str], offset: int, start: float, warm_until: float, stop: float, out: list[float], errors: list[str]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    i = offset
    while True:
        now = time.perf_counter()
        if now >= stop:
            break
        body = json.dumps({"texts": [texts[i % len(texts)]]}).encode()
        i += 7
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/predict", body=body, headers={"content-type": "application/json"})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                errors.append(str(response.status))
        except OSError as exc:
            errors.append(type(exc).__name__)
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            continue
        t1 = time.perf_counter()
        if t0 >= warm_until and t1 <= stop:
            out.append(t1 - t0)
    conn.close()


def run_level(port: int, texts: list[str], clients: int, seconds: float, warmup: float = 2.0) -> dict:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    start = time.perf_counter()
    warm_until, stop = start + warmup, start + warmup + seconds
    threads = [threading.Thread(target=client, args=(port, texts, k * 131, start, warm_until, stop, latencies[k], errors))
               for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = sorted(x for per in latencies for x in per)
    q = statistics.quantiles(done, n=100) if len(done) > 1 else [done[0]] * 99

    return {"clients": clients, "requests": len(done), "rps": len(done) / seconds, "p50_ms": 1000 * q[49],
            "p95_ms": 1000 * q[94], "p99_ms": 1000 * q[98], "errors": len(errors)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2, help="the service's torch threads")
    parser.add_argument("--clients", type=int, nargs="+", default=CLIENTS)
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="the batched service's --max-wait-ms")
    parser.add_argument("--json", help="write the results here (default benchmarks/results/serve_load.json)")
    args = parser.parse_args()
    data = Path(args.data)
    run = ensure_run(args.run, data)
    texts = sentences(data)
    results = {}
    for mode, max_batch in (("batched", 32), ("per_request", 1)):
        service = Service(run, args.threads, max_batch, args.max_wait_ms)
        try:
            run_level(service.port, texts, 4, 2.0, warmup=1.0)  # load, first-call allocations
            rows = []
            for clients in args.clients:
                before = service.stats()
                row = run_level(service.port, texts, clients, args.seconds)
                after = service.stats()
                batches = after["batches"] - before["batches"]
                row["mean_batch"] = (after["inputs"] - before["inputs"]) / batches if batches else 0.0
                rows.append(row)
                print(f"{mode:<12} {clients:>3} clients: {row['rps']:7.1f} req/s  p50 {row['p50_ms']:7.1f} ms  "
                      f"p95 {row['p95_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  mean batch {row['mean_batch']:5.1f}  "
                      f"errors {row['errors']}", flush=True)
            results[mode] = rows
        finally:
            service.close()
    print(f"\n{'clients':>7} {'batched req/s':>14} {'per-request req/s':>18} {'ratio':>6} {'batched p99 ms':>15} {'per-request p99 ms':>19}")
    for b, p in zip(results["batched"], results["per_request"], strict=True):
        print(f"{b['clients']:>7} {b['rps']:>14.1f} {p['rps']:>18.1f} {b['rps'] / p['rps']:>6.2f} {b['p99_ms']:>15.0f} {p['p99_ms']:>19.0f}")
    out = Path(args.json) if args.json else REPO / "benchmarks" / "results" / "serve_load.json"
    out.write_text(json.dumps({"run": str(run), "seconds": args.seconds, "threads": args.threads, "cpus": os.cpu_count(),
                               "max_wait_ms": args.max_wait_ms, "http": http_stack(),
                               "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

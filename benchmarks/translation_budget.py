"""Multi30k German->English at a fixed wall-clock budget: the BERT2BERT warm-started from the bundled
MiniLM (``bundled:minilm_l6_encdec``) against the same architecture from scratch (``pretrained:
false``), on the same pairs, in the same order, with the same settings and budget.

Each model trains in its own process (one CPU thread each, so the two share a two-core machine
evenly) with the generation task's objective: teacher-forced token cross-entropy with label
smoothing 0.1, AdamW, bf16 autocast where the CPU has it, batches of similar source lengths. The
learning rate warms up over the first 5% of the budget and decays linearly to zero at its end
(a schedule by elapsed time, since the step count a budget buys depends on the machine's load).
Every ``--curve-every`` seconds: corpus BLEU (greedy) on the first 200 val pairs, the learning
curve. At the end: test2016 (1,000 pairs) with beam 4, lower-cased BLEU (the headline, as Multi30k
is usually reported; the uncased MiniLM vocabulary writes no capitals), cased BLEU and chrF, with
sacrebleu's signatures.

This script is for measuring on a small machine: the full recipe is ``finetunekit train
examples/multi30k.yaml``, which trains the same model with the same objective.

    python benchmarks/translation_budget.py --minutes 30              # both models, side by side
    python benchmarks/translation_budget.py --minutes 30 --write      # also benchmarks/results/translation_budget.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FINETUNEKIT_SHARED_DATA", REPO.parent / "shared" / "data")) / "text_seq2seq" / "multi30k"
RESULTS = REPO / "benchmarks" / "results" / "translation_budget.json"
SETTINGS = {"batch_size": 32, "lr": 2e-4, "weight_decay": 0.01, "label_smoothing": 0.1, "warmup": 0.05, "max_source_tokens": 64,
            "curve_pairs": 200, "beam": 4, "max_new_tokens": 64, "seed": 0}


def read_pairs(path: Path, limit: int | None = None) -> list[tuple[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = [(r["de"], r["en"]) for r in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)]
    return rows[:limit] if limit else rows


def translate(bb, sources: list[str], beam: int, batch_size: int = 64) -> list[str]:
    import torch

    bb.eval()
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    out: dict[int, str] = {}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF16):
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = bb.collate_source(bb.tokenize([sources[i] for i in chunk], SETTINGS["max_source_tokens"]))
            for i, ids in zip(chunk, bb.generate(batch, num_beams=beam, max_new_tokens=SETTINGS["max_new_tokens"]), strict=True):
                out[i] = bb.decode_text(ids)
    bb.train()
    return [out[i] for i in range(len(sources))]


def scores(hypotheses: list[str], references: list[str]) -> dict:
    import sacrebleu

    lower = sacrebleu.BLEU(lowercase=True)
    cased = sacrebleu.BLEU()
    chrf = sacrebleu.CHRF()
    return {
        "bleu_lowercase": round(lower.corpus_score(hypotheses, [references]).score, 2),
        "bleu_cased": round(cased.corpus_score(hypotheses, [references]).score, 2),
        "chrf": round(chrf.corpus_score(hypotheses, [references]).score, 2),
        "signatures": {"bleu_lowercase": str(lower.get_signature()), "bleu_cased": str(cased.get_signature()),
                       "chrf": str(chrf.get_signature())},
    }


def train_one(pretrained: bool, seconds: float, curve_every: float, out: Path) -> None:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(SETTINGS["seed"])
    from finetunekit.backbones import create_backbone

    bb = create_backbone("bundled:minilm_l6_encdec", pretrained=pretrained)
    frozen = set(bb.token_embedding_names()) if pretrained else set()  # the modality's default for pretrained text backbones
    for name, p in bb.named_parameters():
        p.requires_grad_(name not in frozen)
    params = [p for p in bb.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=SETTINGS["lr"], weight_decay=SETTINGS["weight_decay"])
    train = read_pairs(DATA / "train.tsv")
    val = read_pairs(DATA / "val.tsv", SETTINGS["curve_pairs"])
    src = bb.tokenize([de for de, _ in train], SETTINGS["max_source_tokens"])["input_ids"]
    tgt = bb.target_tokenize([en for _, en in train])
    # batches of similar source length, in a seeded random order (both models see the same batches)
    order = sorted(range(len(train)), key=lambda i: (len(src[i]), i))
    batches = [order[i:i + SETTINGS["batch_size"]] for i in range(0, len(order), SETTINGS["batch_size"])]
    random.Random(SETTINGS["seed"]).shuffle(batches)
    curve, step, seen, start, next_curve = [], 0, 0, time.perf_counter(), curve_every
    bb.train()
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
        if elapsed >= next_curve:
            hyp = translate(bb, [de for de, _ in val], beam=1)
            point = {"seconds": round(elapsed), "steps": step, "pairs_seen": seen,
                     "val200_bleu_lowercase_greedy": scores(hyp, [en for _, en in val])["bleu_lowercase"]}
            curve.append(point)
            print(("warm" if pretrained else "scratch"), point, flush=True)
            next_curve += curve_every
            start += time.perf_counter() - start - elapsed  # evaluation time does not count against the budget
            continue
        fraction = elapsed / seconds
        lr = SETTINGS["lr"] * (fraction / SETTINGS["warmup"] if fraction < SETTINGS["warmup"] else (1 - fraction) / (1 - SETTINGS["warmup"]))
        for group in opt.param_groups:
            group["lr"] = lr
        rows = batches[step % len(batches)]
        batch = bb.collate_source({"input_ids": [src[i] for i in rows], "attention_mask": [[1] * len(src[i]) for i in rows]})
        width = max(len(tgt[i]) for i in rows)
        decoder_in = torch.tensor([[bb.decoder_start_token_id] + tgt[i][:-1] + [bb.pad_token_id] * (width - len(tgt[i])) for i in rows])
        labels = torch.tensor([tgt[i] + [-100] * (width - len(tgt[i])) for i in rows])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF16):
            logits = bb.forward_seq2seq(batch, decoder_in, (labels != -100).long())
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100,
                                                 label_smoothing=SETTINGS["label_smoothing"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step, seen = step + 1, seen + len(rows)
        if step % 50 == 0:
            print(("warm" if pretrained else "scratch"), f"step {step} loss {loss.item():.3f} lr {lr:.2e} {elapsed:.0f}s", flush=True)
    test = read_pairs(DATA / "test.tsv", TEST_LIMIT)
    t0 = time.perf_counter()
    hyp = translate(bb, [de for de, _ in test], beam=SETTINGS["beam"])
    result = {"model": "warm-started" if pretrained else "from scratch", "budget_seconds": seconds, "steps": step, "pairs_seen": seen,
              "epochs": round(seen / len(train), 3), "curve": curve, "test2016": scores(hyp, [en for _, en in test]),
              "test_decode_seconds": round(time.perf_counter() - t0, 1), "examples": list(zip([de for de, _ in test[:5]], hyp[:5], strict=True))}
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    print(json.dumps(result["test2016"], ensure_ascii=False), flush=True)


def _bf16() -> bool:
    from finetunekit.core.runtime import cpu_has_fast_bf16

    return cpu_has_fast_bf16()


BF16 = False
TEST_LIMIT: int | None = None  # a smoke run decodes only this many test pairs


def main() -> None:
    global BF16, TEST_LIMIT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--curve-every", type=float, default=300.0, help="seconds between learning-curve points")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--only", choices=["warm", "scratch"], help=argparse.SUPPRESS)  # one model in this process
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--test-limit", type=int, help="decode only the first N test pairs (a smoke run; not comparable)")
    args = parser.parse_args()
    TEST_LIMIT = args.test_limit
    BF16 = _bf16()
    if args.only:
        train_one(args.only == "warm", args.minutes * 60, args.curve_every, args.out)
        return
    outs = {name: Path(f"/tmp/translation_budget_{name}_{os.getpid()}.json") for name in ("warm", "scratch")}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    print(f"load average at start: {os.getloadavg()}; bf16 autocast: {BF16}; settings: {SETTINGS}", flush=True)
    procs = [subprocess.Popen([sys.executable, __file__, "--minutes", str(args.minutes), "--curve-every", str(args.curve_every),
                               "--only", name, "--out", str(path)] + (["--test-limit", str(args.test_limit)] if args.test_limit else []), env=env) for name, path in outs.items()]
    for proc in procs:
        if proc.wait() != 0:
            sys.exit(f"a training process failed (exit {proc.returncode})")
    results = {name: json.loads(path.read_text(encoding="utf-8")) for name, path in outs.items()}
    print(f"\nMulti30k de->en test2016, {args.minutes:g} minutes of training each ({'bf16' if BF16 else 'fp32'}, one thread each)")
    print(f"{'model':<14}{'steps':>7}{'epochs':>8}{'BLEU lc':>9}{'BLEU':>7}{'chrF':>7}")
    for r in results.values():
        t = r["test2016"]
        print(f"{r['model']:<14}{r['steps']:>7}{r['epochs']:>8.2f}{t['bleu_lowercase']:>9.2f}{t['bleu_cased']:>7.2f}{t['chrf']:>7.2f}")
    print("signatures:", json.dumps(results["warm"]["test2016"]["signatures"]))
    if args.write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        tmp = RESULTS.with_suffix(".tmp")
        tmp.write_text(json.dumps({"settings": SETTINGS, "bf16": BF16, "minutes": args.minutes, "results": results}, indent=2,
                                  ensure_ascii=False), encoding="utf-8")
        tmp.replace(RESULTS)


if __name__ == "__main__":
    main()

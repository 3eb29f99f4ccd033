"""Translation speed, both ratios measured in one run on the same machine:

(a) decoding: finetunekit's batched beam search (the backbone's ``generate``: whole batches of
    similar length, with the decoder's key/value cache) against calling the transformers model's
    ``generate`` one sentence at a time with the same beam and length settings, on the same model
    and sentences; the outputs are compared token for token.
(b) training: ``finetunekit train`` (one epoch, bf16 autocast where the CPU has it) against
    transformers' ``Seq2SeqTrainer`` with ``bf16=True`` and ``group_by_length=True``, on the same
    model (the bundled MiniLM warm-started on both sides), the same pairs, batch size and label
    smoothing, every weight training in both. Throughput: training pairs per second of the epoch.

Each measurement is short (a few hundred Multi30k pairs) so the script runs in minutes; on a shared
machine the ratio is the number to read, and the load average is printed beside it.

    OMP_NUM_THREADS=2 python benchmarks/seq2seq_speed.py
    python benchmarks/seq2seq_speed.py --decode-pairs 64 --train-pairs 256 --write
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FINETUNEKIT_SHARED_DATA", REPO.parent / "shared" / "data")) / "text_seq2seq" / "multi30k"
RESULTS = REPO / "benchmarks" / "results" / "seq2seq_speed.json"
MODEL = "bundled:minilm_l6_encdec"


def read_pairs(path: Path, limit: int) -> list[tuple[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return [(r["de"], r["en"]) for _, r in zip(range(limit), csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), strict=False)]


def decoding(n: int, beams: int, max_new_tokens: int, batch_size: int) -> dict:
    from finetunekit.backbones import create_backbone

    torch.manual_seed(0)
    bb = create_backbone(MODEL).eval()
    sources = [de for de, _ in read_pairs(DATA / "test.tsv", n)]
    encoded = bb.tokenize(sources, 64)
    order = sorted(range(n), key=lambda i: len(encoded["input_ids"][i]))
    start = time.perf_counter()
    batched: dict[int, list[int]] = {}
    for k in range(0, n, batch_size):
        rows = order[k:k + batch_size]
        batch = bb.collate_source({key: [encoded[key][i] for i in rows] for key in ("input_ids", "attention_mask")})
        for i, ids in zip(rows, bb.generate(batch, num_beams=beams, max_new_tokens=max_new_tokens), strict=True):
            batched[i] = ids
    batched_seconds = time.perf_counter() - start
    start = time.perf_counter()
    single: dict[int, list[int]] = {}
    with torch.no_grad():
        for i in range(n):
            one = bb.collate_source({key: [encoded[key][i]] for key in ("input_ids", "attention_mask")})
            out = bb.model.generate(**one, num_beams=beams, max_new_tokens=max_new_tokens, early_stopping=beams > 1, do_sample=False,
                                    decoder_start_token_id=bb.decoder_start_token_id, eos_token_id=bb.eos_token_id,
                                    pad_token_id=bb.pad_token_id)[0].tolist()[1:]
            single[i] = out[:out.index(bb.eos_token_id)] if bb.eos_token_id in out else out
    single_seconds = time.perf_counter() - start
    same = sum(batched[i] == single[i] for i in range(n))
    return {"sentences": n, "beams": beams, "max_new_tokens": max_new_tokens, "batch_size": batch_size,
            "batched_seconds": round(batched_seconds, 2), "one_at_a_time_seconds": round(single_seconds, 2),
            "speedup": round(single_seconds / batched_seconds, 2), "identical_outputs": same}


def write_table(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("de\ten\n" + "".join(f"{de}\t{en}\n" for de, en in pairs), encoding="utf-8")
    return path


def ours(train: list[tuple[str, str]], val: list[tuple[str, str]], batch_size: int, lr: float, folder: Path) -> float:
    from finetunekit import Recipe
    from finetunekit import train as run_training

    recipe = Recipe.from_dict({
        "model": {"backbone": MODEL},
        "data": {"train": str(write_table(folder / "train.tsv", train)), "val": str(write_table(folder / "val.tsv", val)),
                 "text_column": "de", "label_column": "en", "max_length": 64},
        "task": {"type": "seq2seq", "num_beams": 1, "label_smoothing": 0.1},
        "strategy": {"name": "full", "train_token_embeddings": True},  # every weight trains, as in Seq2SeqTrainer
        "train": {"epochs": 1, "batch_size": batch_size, "lr": lr, "warmup_ratio": 0.0, "seed": 0},
    })
    torch.manual_seed(0)
    result = run_training(recipe, output=folder / "run", quiet=True)
    epoch = json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[0])
    return float(epoch["train_samples_per_second"])


def theirs(train: list[tuple[str, str]], batch_size: int, lr: float, folder: Path, bf16: bool) -> float:
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

    from finetunekit.backbones import create_backbone

    torch.manual_seed(0)
    bb = create_backbone(MODEL)
    model, tokenizer = bb.model, bb.tokenizer
    sources = bb.tokenize([de for de, _ in train], 64)
    targets = bb.target_tokenize([en for _, en in train])
    rows = [{"input_ids": sources["input_ids"][i], "attention_mask": sources["attention_mask"][i], "labels": targets[i]}
            for i in range(len(train))]
    import inspect

    # transformers 5 names length grouping train_sampling_strategy="group_by_length"; 4.x group_by_length=True
    grouping = ({"train_sampling_strategy": "group_by_length"} if "train_sampling_strategy" in
                inspect.signature(Seq2SeqTrainingArguments.__init__).parameters else {"group_by_length": True})
    args = Seq2SeqTrainingArguments(
        output_dir=str(folder / "hf"), per_device_train_batch_size=batch_size, num_train_epochs=1, learning_rate=lr, bf16=bf16,
        label_smoothing_factor=0.1, use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no",
        dataloader_num_workers=0, seed=0, disable_tqdm=True, **grouping,
    )
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer,
                             data_collator=DataCollatorForSeq2Seq(tokenizer, model=model))
    return float(trainer.train().metrics["train_samples_per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decode-pairs", type=int, default=64)
    parser.add_argument("--train-pairs", type=int, default=256)
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--skip-decoding", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from finetunekit.core.runtime import cpu_has_fast_bf16

    bf16 = cpu_has_fast_bf16()
    print(f"torch threads {torch.get_num_threads()}, bf16 {bf16}, load average {os.getloadavg()}", flush=True)
    result: dict = {"model": MODEL, "torch_threads": torch.get_num_threads(), "bf16": bf16, "load_at_start": os.getloadavg()}
    result["decoding"] = d = ({} if args.skip_decoding else decoding(args.decode_pairs, args.beams, args.max_new_tokens, 32))
    if d:
        print(f"(a) decoding {d['sentences']} sentences, beam {d['beams']}, up to {d['max_new_tokens']} tokens: batched "
              f"{d['batched_seconds']}s, one at a time {d['one_at_a_time_seconds']}s, speedup {d['speedup']}x, "
              f"identical outputs {d['identical_outputs']}/{d['sentences']}", flush=True)
    pairs = read_pairs(DATA / "train.tsv", args.train_pairs)
    with tempfile.TemporaryDirectory() as tmp:
        theirs_rate = theirs(pairs, args.batch_size, 2e-4, Path(tmp), bf16)
        ours_rate = ours(pairs, read_pairs(DATA / "val.tsv", 8), args.batch_size, 2e-4, Path(tmp))
    result["training"] = {"pairs": len(pairs), "batch_size": args.batch_size, "finetunekit_pairs_per_second": round(ours_rate, 2),
                          "seq2seq_trainer_pairs_per_second": round(theirs_rate, 2), "ratio": round(ours_rate / theirs_rate, 2)}
    t = result["training"]
    print(f"(b) training {t['pairs']} pairs, batch {t['batch_size']}: finetunekit {t['finetunekit_pairs_per_second']} pairs/s, "
          f"Seq2SeqTrainer (bf16, group_by_length) {t['seq2seq_trainer_pairs_per_second']} pairs/s, ratio {t['ratio']}x", flush=True)
    result["load_at_end"] = os.getloadavg()
    if args.write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        tmp_file = RESULTS.with_suffix(".tmp")
        tmp_file.write_text(json.dumps(result, indent=2), encoding="utf-8")
        tmp_file.replace(RESULTS)


if __name__ == "__main__":
    main()

"""The end-to-end baseline for text: a plain Hugging Face ``Trainer`` script doing what
``finetunekit train examples/sst2.yaml`` does, timed as a whole process by
benchmarks/end_to_end.py.

Read the training and dev tables, tokenise (truncation at 128 tokens, dynamic padding), fine-tune
the whole model with the strongest CPU settings the Trainer offers (bf16 where the machine has bf16 matrix units, ``group_by_length``,
``adamw_torch_fused``, batch 16, the same epochs), then the dev accuracy from a plain in-order loop
(``Trainer.predict`` would group evaluation batches by length too and return them out of order)
and ``save_model``. The last line printed is ``RESULT {"accuracy": ..., "seconds": ...}``.

    python benchmarks/baselines/text_trainer.py --model MODEL_DIR --train train_2000.tsv \
        --dev dev.tsv --output /tmp/hf --epochs 3
"""

from __future__ import annotations

import argparse
import csv
import json
import time


def read_tsv(path: str) -> tuple[list[str], list[int]]:
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence"] for r in rows], [int(r["label"]) for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a transformers model folder (the bundled MiniLM-L6)")
    parser.add_argument("--train", required=True)
    parser.add_argument("--dev", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="auto: bf16 on a GPU or a CPU with bf16 matrix units (AMX, AVX512-BF16), fp32 elsewhere, "
                        "where bf16 is emulated and many times slower")
    args = parser.parse_args()
    started = time.perf_counter()

    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    tok = AutoTokenizer.from_pretrained(args.model)
    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)

    class Rows(torch.utils.data.Dataset):
        def __init__(self, path: str) -> None:
            texts, self.labels = read_tsv(path)
            self.enc = tok(texts, truncation=True, max_length=128)

        def __len__(self) -> int:
            return len(self.labels)

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": self.enc["input_ids"][i], "attention_mask": self.enc["attention_mask"][i], "labels": self.labels[i]}

    train_ds, dev_ds = Rows(args.train), Rows(args.dev)
    cuda = torch.cuda.is_available()
    from finetunekit.core.runtime import cpu_has_fast_bf16

    bf16 = args.precision == "bf16" or (args.precision == "auto" and (cuda or cpu_has_fast_bf16()))
    print(f"precision: {'bf16' if bf16 else 'fp32'}", flush=True)
    training = TrainingArguments(
        output_dir=args.output, per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64,
        num_train_epochs=args.epochs, learning_rate=5e-5, bf16=bf16, use_cpu=not cuda, optim="adamw_torch_fused",
        train_sampling_strategy="group_by_length", eval_strategy="no", save_strategy="no", report_to=[],
        logging_strategy="no", seed=args.seed, disable_tqdm=True,
    )
    collator = DataCollatorWithPadding(tok)
    trainer = Trainer(model=model, args=training, train_dataset=train_ds, data_collator=collator)
    out = trainer.train()

    model = trainer.model.eval()
    correct = 0
    with torch.no_grad(), torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(dev_ds), 64):
            batch = collator([dev_ds[j] for j in range(i, min(i + 64, len(dev_ds)))])
            labels = batch.pop("labels")
            logits = model(**{k: v.to(model.device) for k, v in batch.items()}).logits
            correct += int((logits.argmax(-1).cpu() == labels).sum())
    trainer.save_model(args.output)
    tok.save_pretrained(args.output)
    print("RESULT " + json.dumps({"accuracy": correct / len(dev_ds), "train_seconds": float(out.metrics["train_runtime"]),
                                  "seconds_in_script": time.perf_counter() - started}), flush=True)


if __name__ == "__main__":
    main()

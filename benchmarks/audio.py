"""Speech Commands V2-12 with the audio modality: the default recipe against other strategies and
backbones, on the speaker-held-out test part (688 clips).

Each configuration is ``finetunekit train examples/speech_commands.yaml --set ...`` in a fresh
process (its wall time includes reading the clips, the feature cache and validation), then
``finetunekit evaluate RUN ../shared/data/audio/speech_commands/test --json``. Rows: test accuracy,
macro F1, the validation accuracy of the kept epoch, and the training command's wall time. Also
printed: the machine's load average when each run started (the numbers are taken on a shared
machine; compare times within one table only).

    python benchmarks/audio.py                           # every configuration
    python benchmarks/audio.py --only default lora --write
    python benchmarks/audio.py --write                   # also benchmarks/results/audio.json

The own-frames encoding against the 30-second padded one (speed and probe accuracy) is measured by
benchmarks/whisper_parity.py.

``--vs-transformers`` times the default recipe against the usual transformers route on the same
clips and epochs: ``WhisperForAudioClassification`` from the same converted tiny.en weights, the
feature extractor's 30-second padded input, ``Trainer`` in bf16 (where the device has it), the
same batch size, learning rate and warm-up. Both train on the first ``--clips`` training clips
(the classes in turn) for ``--epochs`` and are scored on ``--eval-clips`` test clips (the classes
in turn). The finetunekit side is the whole ``finetunekit train`` command (reading, validation,
report); the transformers side is ``Trainer.train()`` alone (its model load and evaluation not
counted). Two ratios are printed: Trainer.train() against the whole finetunekit command, and
training loop against training loop (finetunekit's epochs' ``train_seconds`` in metrics.jsonl)::

    python benchmarks/audio.py --vs-transformers --clips 96 --epochs 1 --eval-clips 96
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FINETUNEKIT_SHARED_DATA", REPO.parent / "shared" / "data")) / "audio" / "speech_commands"
RECIPE = REPO / "examples" / "speech_commands.yaml"
RESULTS = REPO / "benchmarks" / "results" / "audio.json"

# name -> recipe overrides; "default" is the audio modality's default recipe as the example states it
CONFIGS: dict[str, list[str]] = {
    "default (full fine-tuning, tiny.en)": [],
    "linear probe, base": ["model.backbone=bundled:whisper_base"],
    "lora (r 8), tiny.en": ["strategy.name=lora", "train.epochs=4"],
    "full, tiny.en": ["strategy.name=full", "train.epochs=4"],
    "full from scratch, tiny.en architecture": ["strategy.name=full", "train.epochs=4", "model.pretrained=false", "train.lr=1e-3"],
}


def run(name: str, overrides: list[str], work: Path) -> dict:
    out = work / "".join(c if c.isalnum() else "_" for c in name)
    sets = [a for o in overrides for a in ("--set", o)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    load = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "finetunekit", "train", str(RECIPE), *sets, "--output", str(out), "--quiet"],
                   check=True, cwd=REPO, env=env)
    seconds = time.perf_counter() - start
    shown = subprocess.run([sys.executable, "-m", "finetunekit", "evaluate", str(out), str(DATA / "test"), "--json"],
                           check=True, cwd=REPO, env=env, capture_output=True, text=True).stdout
    test = json.loads(shown[shown.index("{"):])
    val = json.loads((out / "metrics.json").read_text())
    return {"name": name, "overrides": overrides, "test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"],
            "val_accuracy": val.get("accuracy"), "train_seconds": round(seconds, 1), "load_average": round(load, 2)}


def _in_turn(folder: Path, count: int) -> list[tuple[str, str]]:
    """The first ``count`` clips of ``folder``'s class folders, the classes in turn (file order in each)."""
    classes = {d.name: sorted(d.glob("*.ogg")) for d in sorted(folder.iterdir()) if d.is_dir()}
    out = []
    for rank in range(max(map(len, classes.values()))):
        for name, files in classes.items():
            if rank < len(files) and len(out) < count:
                out.append((str(files[rank]), name))
    return out


def versus_transformers(clips: int, epochs: int, eval_clips: int, batch_size: int, work: Path) -> dict:
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO / "src"))
    from finetunekit.backbones.bundled import whisper_source
    from finetunekit.backbones.whisper_ct2 import converted_whisper_dir
    from finetunekit.data.audio import read_audio

    train_rows, test_rows = _in_turn(DATA / "train", clips), _in_turn(DATA / "test", eval_clips)
    for name, rows in (("train.csv", train_rows), ("test.csv", test_rows)):
        (work / name).write_text("audio,label\n" + "".join(f"{p},{label}\n" for p, label in rows))
    lr, warmup = 5e-5, 0.1  # the audio modality's defaults (a float warmup_steps is a ratio in transformers 5)

    # finetunekit: the default recipe on those clips
    ours = work / "finetunekit"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    load = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "finetunekit", "train", str(RECIPE), "--set", f"data.train={work / 'train.csv'}",
                    "--set", f"data.val={work / 'test.csv'}", "--set", f"train.epochs={epochs}", "--set", f"train.batch_size={batch_size}",
                    "--output", str(ours), "--quiet"], check=True, cwd=REPO, env=env)
    ours_seconds = time.perf_counter() - start
    ours_accuracy = json.loads((ours / "metrics.json").read_text())["accuracy"]
    # the training loop alone (each epoch's train_seconds: batches, forward, backward, steps), as Trainer.train() is
    epochs_run = [json.loads(line) for line in (ours / "metrics.jsonl").read_text().splitlines() if line.strip()]
    ours_loop = sum(float(r["train_seconds"]) for r in epochs_run)

    # transformers: WhisperForAudioClassification on the 30-second padded features, Trainer
    from transformers import (
        Trainer,
        TrainingArguments,
        WhisperFeatureExtractor,
        WhisperForAudioClassification,
    )

    converted = converted_whisper_dir(whisper_source("whisper_tiny_en"))
    labels = sorted({label for _, label in train_rows})
    extractor = WhisperFeatureExtractor.from_pretrained(converted)
    # float32 weights (the file is fp16, which transformers 5 would keep), bf16 autocast by the Trainer, as in the usual recipe
    model = WhisperForAudioClassification.from_pretrained(converted, num_labels=len(labels), id2label=dict(enumerate(labels)),
                                                          label2id={c: i for i, c in enumerate(labels)}, dtype=torch.float32)

    class Clips(torch.utils.data.Dataset):
        def __init__(self, rows):
            self.waves = [read_audio(p, 16_000) for p, _ in rows]
            self.labels = [labels.index(label) for _, label in rows]

        def __len__(self):
            return len(self.waves)

        def __getitem__(self, i):  # features made per step, as a set_transform would
            features = extractor(self.waves[i], sampling_rate=16_000, return_tensors="pt")["input_features"][0]
            return {"input_features": features, "labels": self.labels[i]}

    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported() or not cuda
    train_set, test_set = Clips(train_rows), Clips(test_rows)
    args = TrainingArguments(output_dir=str(work / "transformers"), per_device_train_batch_size=batch_size,
                             per_device_eval_batch_size=batch_size, num_train_epochs=epochs, learning_rate=lr,
                             warmup_steps=warmup, lr_scheduler_type="cosine", weight_decay=0.01, bf16=bf16, save_strategy="no",
                             report_to=[], logging_strategy="no", dataloader_num_workers=0, seed=0, use_cpu=not cuda,
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=train_set)
    start = time.perf_counter()
    trainer.train()
    theirs_seconds = time.perf_counter() - start
    predictions = trainer.predict(test_set).predictions
    predictions = predictions[0] if isinstance(predictions, tuple) else predictions
    theirs_accuracy = float(np.mean(np.asarray(predictions).argmax(-1) == np.asarray(test_set.labels)))
    row = {"clips": clips, "epochs": epochs, "eval_clips": eval_clips, "batch_size": batch_size, "bf16_transformers": bf16,
           "device": "cuda" if cuda else "cpu", "threads": torch.get_num_threads(), "load_average": round(load, 2),
           "finetunekit_seconds": round(ours_seconds, 1), "finetunekit_accuracy": ours_accuracy,
           "transformers_seconds": round(theirs_seconds, 1), "transformers_accuracy": theirs_accuracy,
           "speed_ratio": round(theirs_seconds / ours_seconds, 1), "finetunekit_loop_seconds": round(ours_loop, 1),
           "speed_ratio_loops": round(theirs_seconds / ours_loop, 1)}
    print(f"finetunekit train (whole command): {ours_seconds:.0f} s (its training loop {ours_loop:.1f} s), accuracy "
          f"{ours_accuracy:.4f} on {eval_clips} test clips")
    print(f"transformers Trainer.train() ({'bf16' if bf16 else 'fp32'}, 30-s padding): {theirs_seconds:.0f} s, "
          f"accuracy {theirs_accuracy:.4f}")
    print(f"ratio: transformers Trainer.train() / finetunekit whole command = {row['speed_ratio']}x; training loop against "
          f"training loop = {row['speed_ratio_loops']}x ({clips} clips, {epochs} epoch(s), load average {load:.1f})")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="configurations whose name starts with one of these")
    parser.add_argument("--write", action="store_true", help="also write benchmarks/results/audio.json")
    parser.add_argument("--vs-transformers", action="store_true", help="the default recipe against WhisperForAudioClassification + Trainer")
    parser.add_argument("--clips", type=int, default=96, help="--vs-transformers: training clips (the classes in turn)")
    parser.add_argument("--epochs", type=int, default=1, help="--vs-transformers: epochs of both")
    parser.add_argument("--eval-clips", type=int, default=96, help="--vs-transformers: test clips scored")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    if args.vs_transformers:
        with tempfile.TemporaryDirectory(prefix="audio-vs-") as tmp:
            row = versus_transformers(args.clips, args.epochs, args.eval_clips, args.batch_size, Path(tmp))
        if args.write:
            out = RESULTS.with_name("audio_vs_transformers.json")
            out.write_text(json.dumps(row, indent=2) + "\n")
        return
    chosen = {k: v for k, v in CONFIGS.items() if not args.only or any(k.startswith(o) for o in args.only)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="audio-bench-") as tmp:
        for name, overrides in chosen.items():
            row = run(name, overrides, Path(tmp))
            rows.append(row)
            print(f"| {name} | {row['test_accuracy']:.4f} | {row['test_macro_f1']:.4f} | {row['val_accuracy']:.4f} | "
                  f"{row['train_seconds']:.0f} s | {row['load_average']} |", flush=True)
    if args.write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

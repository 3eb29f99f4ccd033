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
    "default (linear probe, tiny.en)": [],
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="configurations whose name starts with one of these")
    parser.add_argument("--write", action="store_true", help="also write benchmarks/results/audio.json")
    args = parser.parse_args()
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

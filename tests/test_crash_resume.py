"""Real `finetunekit train` processes killed with SIGKILL, then resumed, end bitwise identical to an
uninterrupted run: same weights, same metrics, same logs.

Every process runs on CPU with one thread (OMP_NUM_THREADS=1), so the reference and the resumed
runs execute the same kernels in the same order; that is what makes bitwise equality a fair demand.
The recipe exercises every piece of state a resume must restore: augmentation and dropout RNG,
a warmup + cosine schedule, the freeze-then-unfreeze strategy (its switch at epoch 2 changes
requires_grad and the optimizer's learning rates), early-stopping bookkeeping, and mid-epoch data
order.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_image_folder, tiny_image_recipe
from finetunekit.run.checkpoint import list_checkpoints, read_checkpoint
from run_outputs import comparable, differences

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
STEPS = 12  # 2 epochs x 6 batches of 2 images
RESUMED = re.compile(r"resuming from checkpoint (\S+) \(optimizer step (\d+),")

# Run in place of `python -m finetunekit`: the same CLI, except that writing the N-th checkpoint's
# model.safetensors stops half-way and waits to be killed (a crash in the middle of a checkpoint).
# Tiny steps take ~20 ms uncontended: the whole run could finish between the kill point being seen
# and the kill. This wrapper makes each training forward take at least 0.1 s, so "a random moment
# in the next step" stays inside the run; it changes timing only, never the numbers.
SLOW_STEPS = """
import sys, time
import finetunekit.run.model as model
forward = model.FineTuneModel.forward
def slow(self, batch):
    if self.training:
        time.sleep(0.1)
    return forward(self, batch)
model.FineTuneModel.forward = slow
from finetunekit.cli import main
sys.exit(main(sys.argv[1:]))
"""

PAUSE_IN_CHECKPOINT = """
import os, sys, time
import finetunekit.run.checkpoint as checkpoint
target, marker = int(os.environ["PAUSE_AT_CHECKPOINT"]), os.environ["PAUSE_MARKER"]
write, count = checkpoint._write_file, [0]
def paused(path, data):
    if path.name == "model.safetensors":
        count[0] += 1
        if count[0] == target:
            with open(path, "wb") as handle:
                handle.write(data[: len(data) // 2])
                handle.flush()
                os.fsync(handle.fileno())
            with open(marker + ".tmp", "w") as handle:  # renamed into place: never seen empty
                handle.write(str(path))
            os.replace(marker + ".tmp", marker)
            time.sleep(600)
    write(path, data)
checkpoint._write_file = paused
from finetunekit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "finetunekit", *map(str, args)], capture_output=True, text=True, env=env or ENV, timeout=300
    )


def newest_step(run: Path) -> int:
    found = list_checkpoints(run)
    return int(found[-1].name.split("-")[1]) if found else 0


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the training process ended (code {proc.returncode}) before the kill point: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the training process never reached the kill point")
        time.sleep(0.02)


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The recipe file and the outputs of one uninterrupted run of it."""
    root = tmp_path_factory.mktemp("crash")
    make_image_folder(root / "data" / "train", per_class=4, seed=0)
    make_image_folder(root / "data" / "val", per_class=2, seed=1)
    recipe = tiny_image_recipe(
        root / "data",
        model={"head_dropout": 0.3},
        data={"augment": "light"},
        strategy={"name": "freeze_then_unfreeze", "freeze_epochs": 1},
        train={"epochs": 2, "batch_size": 2, "scheduler": "cosine", "warmup_ratio": 0.2,
               "early_stopping_patience": 5, "checkpoint_every_steps": 1, "keep_checkpoints": 2},
    )
    path = root / "recipe.yaml"
    path.write_text(recipe.to_yaml(), encoding="utf-8")
    proc = cli("train", path, "--output", root / "reference", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert not (root / "reference" / "checkpoints").exists(), "checkpoints are removed once a run finishes"
    return path, comparable(root / "reference")


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_sigkill_at_a_random_step_then_resume_matches_an_uninterrupted_run(seed, reference, tmp_path):
    recipe, expected = reference
    rng = random.Random(seed)
    kill_step, delay = rng.randint(1, STEPS - 2), rng.uniform(0.0, 0.09)
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_STEPS, "train", str(recipe), "--output", str(run), "--quiet"],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    wait_for(lambda: newest_step(run) >= kill_step, proc)
    time.sleep(delay)  # somewhere in the next step: a forward, a backward, a checkpoint being written
    kill(proc)
    assert not (run / "model.safetensors").exists() and not (run / "metrics.json").exists()

    resumed = cli("resume", run)
    assert resumed.returncode == 0, resumed.stderr
    match = RESUMED.search(resumed.stdout)
    assert match, resumed.stdout
    assert kill_step <= int(match.group(2)) < STEPS
    assert "Traceback" not in resumed.stderr
    assert differences(comparable(run), expected) == []
    assert not (run / "checkpoints").exists()


def test_kill_while_writing_a_checkpoint_resumes_from_the_previous_one(reference, tmp_path):
    recipe, expected = reference
    run, marker = tmp_path / "run", tmp_path / "paused"
    env = {**ENV, "PAUSE_AT_CHECKPOINT": "5", "PAUSE_MARKER": str(marker)}
    proc = subprocess.Popen(
        [sys.executable, "-c", PAUSE_IN_CHECKPOINT, "train", str(recipe), "--output", str(run), "--quiet"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    wait_for(marker.exists, proc)
    kill(proc)

    # What the kill left: the half-written checkpoint sits in a hidden temporary directory; the
    # newest visible checkpoint is the previous one, complete and verified.
    partial = Path(marker.read_text())
    assert partial.parent.name.startswith(".step-00000005.") and partial.parent.name.endswith(".tmp")
    assert 0 < partial.stat().st_size < (run / "checkpoints" / "step-00000004" / "model.safetensors").stat().st_size
    assert [p.name for p in list_checkpoints(run)] == ["step-00000003", "step-00000004"]
    assert read_checkpoint(run / "checkpoints" / "step-00000004").position.step == 4

    resumed = cli("resume", run)
    assert resumed.returncode == 0, resumed.stderr
    match = RESUMED.search(resumed.stdout)
    assert match and Path(match.group(1)).name == "step-00000004", resumed.stdout
    assert not partial.parent.exists(), "the temporary directory is cleaned up on resume"
    assert differences(comparable(run), expected) == []

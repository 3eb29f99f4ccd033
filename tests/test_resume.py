"""Checkpoints and resume, in-process: a run stopped after any checkpoint and resumed ends exactly
as an uninterrupted run; corrupt checkpoints are detected and skipped; divergence stops the run
with the step named and the last good checkpoint kept.

A stop is simulated by raising ``Killed`` (a BaseException nothing catches) right after the N-th
checkpoint is written: the run directory is then what a SIGKILL at that moment would leave.
tests/test_crash_resume.py does the same with real processes and real SIGKILLs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import tiny_image_recipe, tiny_text_recipe
from finetunekit import train
from finetunekit.run import checkpoint
from finetunekit.run.artifacts import atomic_write_bytes
from finetunekit.run.checkpoint import Checkpointer, Position, TrainingParts, list_checkpoints, read_checkpoint
from finetunekit.cli import main
from finetunekit.core.errors import DivergenceError, FinetuneError
from finetunekit.tasks.classification import ClassificationTask
from run_outputs import comparable, differences


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a small shared machine more threads wait on busy cores, which makes
    these tiny models many times slower. Reference and resumed runs share the setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Killed(BaseException):
    """Stands for the process being killed: nothing in finetunekit catches it."""


def kill_after_checkpoint(monkeypatch, n: int, when=None) -> list[Path]:
    """Stop the next run right after its ``n``-th checkpoint (or just before the first checkpoint
    for which ``when(position)`` is true); returns the paths written."""
    original, written = Checkpointer.save, []

    def save(self, position, extra, is_best=False):
        if when is not None and when(position):
            raise Killed
        path = original(self, position, extra, is_best)
        written.append(path)
        if len(written) == n:
            raise Killed
        return path

    monkeypatch.setattr(Checkpointer, "save", save)
    return written


def interrupted(monkeypatch, recipe, run: Path, n: int, when=None) -> list[Path]:
    written = kill_after_checkpoint(monkeypatch, n, when)
    with pytest.raises(Killed):
        train(recipe, output=run, quiet=True)
    monkeypatch.undo()
    return written


IMAGE = {
    "model": {"head_dropout": 0.3},
    "data": {"augment": "light"},
    "strategy": {"name": "freeze_then_unfreeze", "freeze_epochs": 1},
    "train": {"epochs": 2, "scheduler": "cosine", "warmup_ratio": 0.3, "checkpoint_every_steps": 1,
              "early_stopping_patience": 3, "keep_checkpoints": 3},
}


@pytest.fixture(scope="module")
def image_reference(image_data, tmp_path_factory):
    recipe = tiny_image_recipe(image_data, **IMAGE)
    run = tmp_path_factory.mktemp("reference") / "image"
    train(recipe, output=run, quiet=True)
    return recipe, comparable(run)


@pytest.fixture(scope="module")
def stopped_image_run(image_data, tmp_path_factory):
    """A run stopped after its 4th checkpoint (step 4: epoch 2, batch 1 of 3, backbone unfrozen)."""
    mp = pytest.MonkeyPatch()
    run = tmp_path_factory.mktemp("stopped") / "run"
    written = interrupted(mp, tiny_image_recipe(image_data, **IMAGE), run, 4)
    assert [p.name for p in written] == ["step-00000001", "step-00000002", "step-00000003", "step-00000004"]
    return run


def test_text_resume_mid_epoch_with_accumulation_is_bitwise_identical(text_data, tiny_bert, tmp_path, monkeypatch):
    """Text: BERT dropout, length-grouped batches, warmup + linear decay, two micro-batches per step."""
    recipe = tiny_text_recipe(text_data, tiny_bert, train={
        "epochs": 2, "grad_accum_steps": 2, "scheduler": "linear", "warmup_ratio": 0.3, "checkpoint_every_steps": 1,
    })
    train(recipe, output=tmp_path / "reference", quiet=True)
    written = interrupted(monkeypatch, recipe, tmp_path / "run", 2)
    state = read_checkpoint(written[-1]).state
    assert state["position"] == {"epoch": 0, "batch": 4, "step": 2}  # part-way through epoch 1
    result = train(recipe, output=tmp_path / "run", quiet=True, resume=True)
    assert differences(comparable(result.run_dir), comparable(tmp_path / "reference")) == []


def test_resume_loads_only_the_batches_not_yet_trained(image_reference, stopped_image_run, tmp_path, monkeypatch, capsys):
    from finetunekit.data.pipeline import ImageDataset

    recipe, expected = image_reference
    run = tmp_path / "run"
    shutil.copytree(stopped_image_run, run)
    loaded: list = []
    original = ImageDataset.__getitem__
    monkeypatch.setattr(ImageDataset, "__getitem__", lambda self, key: loaded.append(key) or original(self, key))
    train(recipe, output=run, quiet=True, resume=True)
    training_items = [k for k in loaded if isinstance(k, tuple)]  # training keys carry their augmentation seed
    # Step 4 is batch 1 of epoch 2's three batches of 8: two batches (16 images) remain, none reloaded.
    assert len(training_items) == 16
    assert f"resuming from checkpoint {run}/checkpoints/step-00000004 (optimizer step 4, epoch 2, batch 1 of 3)" in capsys.readouterr().out
    assert differences(comparable(run), expected) == []


def _truncate(path: Path) -> None:
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 3])


def _flip_a_byte(path: Path) -> None:
    data = bytearray((path / "optimizer.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / "optimizer.safetensors").write_bytes(bytes(data))


def _drop_manifest(path: Path) -> None:
    (path / "manifest.json").unlink()


def _garble_state(path: Path) -> None:
    (path / "state.json").write_text("{not json")


@pytest.mark.parametrize("damage, problem", [
    (_truncate, "model.safetensors is truncated or altered ({size} bytes, expected {expected})"),
    (_flip_a_byte, "optimizer.safetensors does not match its SHA-256 checksum"),
    (_drop_manifest, "manifest.json is missing"),
    (_garble_state, "state.json is truncated or altered (9 bytes, expected {expected})"),
], ids=["truncated", "bit-flip", "no-manifest", "garbled-state"])
def test_corrupt_newest_checkpoint_is_detected_and_the_previous_one_used(
    damage, problem, image_reference, stopped_image_run, tmp_path, capsys
):
    recipe, expected = image_reference
    run = tmp_path / "run"
    shutil.copytree(stopped_image_run, run)
    newest = run / "checkpoints" / "step-00000004"
    manifest = json.loads((newest / "manifest.json").read_text())["files"]
    name = problem.split(" ")[0]
    damage(newest)
    problem = problem.format(size=(newest / name).stat().st_size if (newest / name).exists() else 0,
                             expected=manifest.get(name, {}).get("bytes"))
    train(recipe, output=run, quiet=True, resume=True)
    captured = capsys.readouterr()
    assert captured.err.splitlines()[0] == (
        f"finetunekit: warning: checkpoint {newest} is unusable ({problem}); "
        "set aside as step-00000004.corrupt, using the previous one"
    )
    assert f"resuming from checkpoint {run}/checkpoints/step-00000003 " in captured.out
    assert not (run / "checkpoints").exists(), "a finished run removes its checkpoints, the set-aside one too"
    assert differences(comparable(run), expected) == []


def test_checkpoints_keep_the_last_k_and_the_best(image_data, tmp_path, monkeypatch):
    recipe = tiny_image_recipe(image_data, train={
        "epochs": 4, "checkpoint_every_steps": 1, "keep_checkpoints": 2, "keep_checkpoints_when_done": True, "metric": "loss",
    })
    # The validation losses of the four epochs, so that the best epoch (2) is not the last.
    losses, real = [0.9, 0.4, 0.6, 0.5], ClassificationTask.metrics
    monkeypatch.setattr(ClassificationTask, "metrics", lambda *a: {**real(*a), **({"loss": losses.pop(0)} if losses else {})})
    listings, bests = [], []
    original = Checkpointer.save

    def save(self, position, extra, is_best=False):
        path = original(self, position, extra, is_best)
        listings.append([p.name for p in list_checkpoints(tmp_path / "run")])
        bests.append(self.best)
        return path

    monkeypatch.setattr(Checkpointer, "save", save)
    result = train(recipe, output=tmp_path / "run", quiet=True)
    assert result.metrics["best_epoch"] == 2
    steps = [f"step-{s:08d}" for s in range(1, 13)]  # 4 epochs x 3 steps, a checkpoint at each
    assert bests == [None, None, steps[2], steps[2], steps[2], steps[5]] + [steps[5]] * 6
    for i, (listing, best) in enumerate(zip(listings, bests, strict=True)):
        assert listing == sorted(set(steps[max(0, i - 1) : i + 1]) | ({best} if best else set()))
    assert listings[-1] == ["step-00000006", "step-00000011", "step-00000012"]
    # The best checkpoint holds the weights the run restored and saved as its model.
    best = read_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000006").tensors["model"]
    from safetensors.torch import load_file

    final = load_file(tmp_path / "run" / "model.safetensors")
    assert best.keys() == final.keys() and all(torch.equal(best[k], final[k]) for k in best)


def test_lines_logged_after_the_checkpoint_are_not_duplicated(image_reference, image_data, tmp_path, monkeypatch):
    """Killed between logging epoch 2 and writing its checkpoint: metrics.jsonl already has the
    line; the resumed run trains epoch 2's last batches again and must not log it twice."""
    recipe, expected = image_reference
    run = tmp_path / "run"
    interrupted(monkeypatch, recipe, run, 0, when=lambda position: position == Position(2, 0, 6))
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    train(recipe, output=run, quiet=True, resume=True)
    assert differences(comparable(run), expected) == []


def test_killed_while_saving_the_final_model_resumes_into_the_final_steps(image_reference, tmp_path, monkeypatch, capsys):
    from finetunekit.run import artifacts

    recipe, expected = image_reference
    run = tmp_path / "run"

    def crash(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(artifacts, "save_model", crash)
    with pytest.raises(Killed):
        train(recipe, output=run, quiet=True)
    monkeypatch.undo()
    assert list_checkpoints(run)[-1].name == "step-00000006"
    result = train(recipe, output=run, quiet=True, resume=True)
    assert "resuming from checkpoint" in capsys.readouterr().out
    assert result.history == json.loads("[" + ",".join((run / "metrics.jsonl").read_text().splitlines()) + "]")
    assert differences(comparable(run), expected) == []


def test_resume_after_early_stopping_trains_no_further(image_data, tmp_path, monkeypatch):
    """Killed after early stopping ended the run (while saving the model): the resumed run must not
    train the epochs early stopping skipped."""
    from finetunekit.run import artifacts, trainer

    recipe = tiny_image_recipe(image_data, train={"epochs": 5, "early_stopping_patience": 1, "metric": "loss"})
    real = ClassificationTask.metrics

    def metrics_with_losses(losses):  # validation losses per epoch: the best is epoch 1, stop after 2
        return lambda *a: {**real(*a), **({"loss": losses.pop(0)} if losses else {})}

    monkeypatch.setattr(ClassificationTask, "metrics", metrics_with_losses([0.5, 0.7]))
    reference = train(recipe, output=tmp_path / "reference", quiet=True)
    assert reference.metrics["epochs_run"] == 2 and reference.metrics["best_epoch"] == 1

    monkeypatch.setattr(ClassificationTask, "metrics", metrics_with_losses([0.5, 0.7]))
    save_model = artifacts.save_model
    monkeypatch.setattr(artifacts, "save_model", lambda *a, **k: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        train(recipe, output=tmp_path / "run", quiet=True)
    monkeypatch.setattr(artifacts, "save_model", save_model)
    steps = []
    monkeypatch.setattr(trainer, "train_one_epoch", lambda *a, **k: steps.append(1))
    result = train(recipe, output=tmp_path / "run", quiet=True, resume=True)
    assert steps == [] and result.metrics["epochs_run"] == 2 and result.metrics["best_epoch"] == 1
    assert differences(comparable(tmp_path / "run"), comparable(tmp_path / "reference")) == []


def test_resume_before_the_first_checkpoint_starts_over(image_reference, tmp_path, monkeypatch, capsys):
    recipe, expected = image_reference
    run = tmp_path / "run"
    interrupted(monkeypatch, recipe, run, 0, when=lambda position: True)
    assert not list_checkpoints(run) and (run / "recipe.yaml").is_file()
    train(recipe, output=run, quiet=True, resume=True)
    assert "resuming" not in capsys.readouterr().out
    assert differences(comparable(run), expected) == []


def test_checkpoint_round_trips_optimizer_groups_strategy_schedule_and_rng(tmp_path):
    """Through the files on disk: requires_grad (not re-frozen), every optimizer group with its
    rates and moments, the LR schedule, early stopping and the RNG states."""
    from accelerate import Accelerator

    from finetunekit.backbones import create_backbone
    from finetunekit.engine import EarlyStopping, LRSchedule, build_optimizer
    from finetunekit.tasks.heads import LinearHead
    from finetunekit.run.model import FineTuneModel
    from finetunekit.run.recipe import StrategySpec, TrainSpec
    from finetunekit.strategies import STRATEGIES

    def parts():
        torch.manual_seed(0)
        backbone = create_backbone("timm:test_efficientnet", pretrained=False, image_size=32)
        model = FineTuneModel(backbone, LinearHead(backbone.num_features, 3))
        strategy = STRATEGIES.get("freeze_then_unfreeze")(StrategySpec(name="freeze_then_unfreeze", freeze_epochs=1))
        optimizer = build_optimizer(TrainSpec(lr=1e-4, weight_decay=0.01), strategy.setup(model, lr=1e-4, head_lr=1e-2))
        return TrainingParts(Accelerator(cpu=True), model, optimizer, LRSchedule("cosine", 10), strategy, EarlyStopping("loss", 2, higher_is_better=False))

    a = parts()
    a.strategy.on_epoch_start(1, a.model, a.optimizer)  # unfreezes the backbone; the head keeps its rate
    loss = a.model({"pixel_values": torch.randn(2, 3, 32, 32)}).logsumexp(-1).sum()
    loss.backward()
    a.optimizer.step()
    a.schedule.restart(3, 7)
    a.stopper.load_state_dict({"best": 0.5, "best_epoch": 0, "bad_epochs": 1, "best_loss": 0.5})
    checkpointer = Checkpointer(tmp_path, keep=2, parts=a)
    checkpointer.save(Position(1, 2, 3), {"history": []})
    expected_rng = torch.rand(3)

    b = parts()
    assert not any(p.requires_grad for p in b.model.backbone.parameters())
    loaded = Checkpointer(tmp_path, keep=2, parts=b).latest()
    Checkpointer(tmp_path, keep=2, parts=b).restore(loaded)
    assert all(p.requires_grad for p in b.model.backbone.parameters())
    assert b.schedule.state_dict() == {"phase_start": 3, "phase_steps": 7}
    assert b.stopper.state_dict() == a.stopper.state_dict()
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"] and len(sa["param_groups"]) == 4
    assert sa["state"].keys() == sb["state"].keys() and sa["state"]
    for pid in sa["state"]:
        for key, value in sa["state"][pid].items():
            assert torch.equal(value, sb["state"][pid][key]), (pid, key)
    for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    checkpoint.ResumePoint.from_state(loaded, loaded.state).restore_rng()
    assert torch.equal(torch.rand(3), expected_rng)


# -- divergence --------------------------------------------------------------------------------


def _poison(monkeypatch, at_call: int, where: str) -> None:
    """From the ``at_call``-th forward pass on, make the loss (or the gradients) NaN."""
    from finetunekit.run.model import FineTuneModel

    calls, forward = [0], FineTuneModel.forward

    def poisoned(self, batch):
        logits = forward(self, batch)
        if self.training:
            calls[0] += 1
            if calls[0] >= at_call:
                if where == "loss":
                    return logits * float("nan")
                logits.register_hook(lambda grad: grad * float("nan"))
        return logits

    monkeypatch.setattr(FineTuneModel, "forward", poisoned)


@pytest.mark.parametrize("where, what", [("loss", "the loss"), ("gradient", "the gradient norm")])
def test_divergence_stops_naming_the_step_and_keeps_the_last_good_checkpoint(where, what, image_data, tmp_path, monkeypatch, capsys):
    _poison(monkeypatch, 5, where)
    run = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(tiny_image_recipe(image_data, train={"checkpoint_every_steps": 1, "precision": "fp32"}).to_yaml())
    assert main(["train", str(recipe), "--output", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"finetunekit train: error: training diverged: {what} became nan at optimizer step 5; "
        f"the last good checkpoint is kept: {run}/checkpoints/step-00000004; "
        "try a lower train.lr (now 0.01) and train.head_lr (now 0.01)\n"
    )
    good = read_checkpoint(run / "checkpoints" / "step-00000004")
    assert all(torch.isfinite(t).all() for t in good.tensors["model"].values() if t.is_floating_point())
    assert [p.name for p in list_checkpoints(run)] == ["step-00000003", "step-00000004"]
    assert not (run / "model.safetensors").exists()


def test_divergence_advice_depends_on_the_settings(image_data, tmp_path, monkeypatch):
    _poison(monkeypatch, 2, "loss")
    recipe = tiny_image_recipe(image_data, train={"max_grad_norm": None, "precision": "bf16"})
    with pytest.raises(DivergenceError) as info:
        train(recipe, output=tmp_path / "run", quiet=True)
    assert str(info.value) == (
        "training diverged: the loss became nan at optimizer step 2; no checkpoint had been written yet; "
        "try a lower train.lr (now 0.01) and train.head_lr (now 0.01) or train.precision=fp32 or train.max_grad_norm=1.0"
    )


def test_non_finite_weights_are_never_checkpointed(image_data, tmp_path, monkeypatch):
    """An update that overflows the weights (finite loss and gradients, infinite step) stops the
    run instead of writing a checkpoint nobody could resume from."""
    from finetunekit.engine.optim import LRSchedule

    apply = LRSchedule.apply

    def overflow(self, optimizer, step):
        apply(self, optimizer, step)
        if step == 3:
            for group in optimizer.param_groups:
                group["lr"] = float("inf")

    monkeypatch.setattr(LRSchedule, "apply", overflow)
    run = tmp_path / "run"
    with pytest.raises(DivergenceError, match=r"^training diverged: weight \S+ became non-finite after optimizer step 4; "
                       rf"the last good checkpoint is kept: {run}/checkpoints/step-00000003; "):
        train(tiny_image_recipe(image_data, train={"checkpoint_every_steps": 1}), output=run, quiet=True)
    assert list_checkpoints(run)[-1].name == "step-00000003"


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path, monkeypatch):
    """Artefacts go through a temporary file and a rename: a failure mid-write keeps the old file."""
    import os

    target = tmp_path / "metrics.json"
    atomic_write_bytes(target, b"old")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    from finetunekit.core.outputs import WriteError

    with pytest.raises(WriteError) as info:  # a FinetuneError: one line naming the file
        atomic_write_bytes(target, b"new")
    assert str(info.value) == f"could not write {target} (disk full)"
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_resume_refuses_a_run_that_has_finished(image_data, tmp_path):
    run = tmp_path / "run"
    train(tiny_image_recipe(image_data, train={"epochs": 1}), output=run, quiet=True)
    with pytest.raises(FinetuneError, match="has finished training"):
        train(tiny_image_recipe(image_data, train={"epochs": 1}), output=run, quiet=True, resume=True)


def test_a_full_disk_while_checkpointing_is_one_error_and_keeps_the_previous_checkpoint(image_data, tmp_path, monkeypatch):
    import errno

    write, count = checkpoint._write_file, [0]

    def full_disk(path, data):
        if path.name == "model.safetensors":
            count[0] += 1
            if count[0] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        write(path, data)

    monkeypatch.setattr(checkpoint, "_write_file", full_disk)
    run = tmp_path / "run"
    with pytest.raises(FinetuneError) as info:
        train(tiny_image_recipe(image_data, train={"checkpoint_every_steps": 1}), output=run, quiet=True)
    assert str(info.value) == (
        f"could not write checkpoint {run}/checkpoints/step-00000002 (No space left on device); "
        f"the last checkpoint is intact: {run}/checkpoints/step-00000001"
    )
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000001"]
    assert read_checkpoint(run / "checkpoints" / "step-00000001").position == Position(0, 1, 1)


@pytest.mark.parametrize("full_at", ["metrics.jsonl", "model.safetensors", "metrics.json"])
def test_a_full_disk_while_writing_the_finished_run_is_one_error_and_resume_finishes_it(
    full_at, image_reference, tmp_path, monkeypatch, capsys
):
    import errno

    from finetunekit.run import artifacts
    from finetunekit.cli import main

    recipe, expected = image_reference
    run = tmp_path / "run"
    write = artifacts._atomic_write_bytes

    def full_disk(path, data):
        if path == run / full_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(path, data)

    monkeypatch.setattr(artifacts, "_atomic_write_bytes", full_disk)
    append = artifacts._append_bytes

    def full_disk_appending(path, data):
        if path == run / full_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        append(path, data)

    monkeypatch.setattr(artifacts, "_append_bytes", full_disk_appending)
    (tmp_path / "recipe.yaml").write_text(recipe.to_yaml())
    assert main(["train", str(tmp_path / "recipe.yaml"), "--output", str(run), "--quiet"]) == 2
    last = "step-00000006" if full_at != "metrics.jsonl" else "step-00000002"  # metrics.jsonl: at the first epoch's end
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"finetunekit train: error: could not write {run / full_at} (No space left on device); the last checkpoint "
        f"is intact: {run}/checkpoints/{last}; once there is space, finish the run with: finetunekit resume {run}"
    )
    assert not (run / "metrics.json").exists()
    monkeypatch.undo()
    assert main(["resume", str(run), "--quiet"]) == 0
    assert differences(comparable(run), expected) == []
    assert not (run / "checkpoints").exists() and not (run / ".finetunekit.lock").exists()

"""Hostile and careless inputs (issue 15): each class of mistake gives one exact line on stderr,
exit status 2 and nothing changed on disk (the same contract as tests/test_errors.py, whose helpers
and runs this module reuses), or, where the input is usable, the documented normalisation.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from finetunekit.cli import main
from test_errors import GOOD_ROWS, env, image_recipe, images, snapshot, stopped_run, text_recipe, tsv  # noqa: F401 (env: fixture)

CASES: dict[str, Callable] = {}


def case(fn: Callable) -> Callable:
    CASES[fn.__name__] = fn
    return fn


def shown(value):
    from finetunekit.core.errors import shown  # imported late: the module still loads where it is missing

    return shown(value)


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A few hundred bytes of YAML that expand to width**levels values."""
    lines = ["x0: &x0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


# -- recipes: repeated keys, size and expansion bounds, encodings ------------------------------------


@case
def recipe_repeated_key(root, env):
    path = tsv(root, "r.yaml", "train:\n  lr: 0.1\n  epochs: 1\n  lr: 0.001\n")
    return ["train", str(path)], f"{path}: key 'train.lr' is given twice, at lines 2 and 4; keep one"


@case
def recipe_repeated_section(root, env):
    path = tsv(root, "r.yaml", "train:\n  lr: 0.1\ndata:\n  train: x\ntrain:\n  epochs: 3\n")
    return ["train", str(path)], f"{path}: key 'train' is given twice, at lines 1 and 5; keep one"


@case
def recipe_alias_bomb(root, env):
    path = tsv(root, "r.yaml", alias_bomb() + "train:\n  lr: *x8\n")
    return ["train", str(path)], (
        f"{path}: expands to more than 100,000 values (aliases counted each time they are used, at line 6); "
        "a recipe is limited to 100,000"
    )


@case
def recipe_recursive_alias(root, env):
    path = tsv(root, "r.yaml", "train: &a\n  lr: [*a]\n")
    return ["train", str(path)], f"{path}: a recursive alias at line 1 (a value that contains itself)"


@case
def recipe_nested_too_deep(root, env):
    path = tsv(root, "r.yaml", "train:\n  lr: " + "[" * 5000 + "]" * 5000 + "\n")
    return ["train", str(path)], f"{path}: nested more than 64 levels deep at line 2"


@case
def recipe_too_large(root, env):
    path = tsv(root, "r.yaml", "# padding\n" * 200_000)
    return ["train", str(path)], f"{path}: 2,000,000 bytes; a recipe is limited to 1,048,576 bytes"


@case
def recipe_not_utf8(root, env):
    path = root / "r.yaml"
    path.write_bytes("train:\n  lr: 0.1  # caf\u00e9\n".encode("latin-1"))
    return ["train", str(path)], f"{path}: not UTF-8 text at line 2, column 17 (byte 0xe9)"


@case
def override_alias_bomb(root, env):
    value = "[" + ", ".join(f"&x{i} [" + ", ".join([f"*x{i - 1}" if i else "lol"] * 9) + "]" for i in range(9)) + "]"
    item = f"data.train={value}"
    return ["train", "--set", item], (
        f"override {shown(item)}: expands to more than 100,000 values (aliases counted each time they are used, at line 1); "
        "a recipe is limited to 100,000"
    )


@case
def wide_value_is_shown_cut_short(root, env):
    # 9**4 = 6,561 values: within the bound, but the message must not print them all
    anchors = ", ".join(f"&x{i} [" + ", ".join([f"*x{i - 1}" if i else "lol"] * 9) + "]" for i in range(5))
    path = tsv(root, "r.yaml", f"train:\n  epochs: [{anchors}]\n")
    levels = [["lol"] * 9]
    for _ in range(4):
        levels.append([levels[-1]] * 9)
    return ["train", str(path)], f"{path}: train.epochs: expected an integer, got {shown(levels)}"


# -- text tables: columns, labels, encodings ---------------------------------------------------------


@case
def text_column_is_the_label_column(root, env):
    path = tsv(root, "train.tsv", GOOD_ROWS)
    return (["train", str(text_recipe(root, env, path, data={"text_column": "label"}))],
            f"{path}: the text column and the label column are both 'label': the model would read its own label; "
            "set data.text_column to the column holding the inputs")


@case
def label_written_as_two_numbers(root, env):
    path = tsv(root, "train.csv", "sentence,label\ngood film,1\nbad film,0\ngreat plot,1.0\ndull plot,0\n")
    return (["train", str(text_recipe(root, env, path, path))],
            f"{path}: labels '1', '1.0' are one value written 2 ways; write each class one way")


@case
def invisible_character_in_a_column_name(root, env):
    path = tsv(root, "train.tsv", "sentence\u200b\tlabel\ngood film\tpos\nbad film\tneg\n")
    return (["train", str(text_recipe(root, env, path, data={"text_column": "sentence"}))],
            f"{path}: no text column 'sentence' (did you mean 'sentence\\u200b'?) (columns: 'sentence\\u200b', label); "
            "set data.text_column")


@case
def non_utf8_byte_far_into_a_file(root, env):
    path = root / "train.tsv"
    rows = "sentence\tlabel\n" + "good film\tpos\nbad film\tneg\n" * 2000
    path.write_bytes(rows.encode() + "na\u00efve\tpos\n".encode("latin-1"))
    return ["train", str(text_recipe(root, env, path))], f"{path}: not UTF-8 text at line 4002, column 3 (byte 0xef)"


# -- predict and evaluate ---------------------------------------------------------------------------


@case
def evaluate_hint_names_the_flag(root, env):
    shutil.copytree(env.text_run, root / "run")
    path = tsv(root, "test.tsv", GOOD_ROWS)
    return (["evaluate", str(root / "run"), str(path), "--label-column", "target"],
            f"{path}: no label column 'target' (columns: sentence, label); set --label-column")


@case
def predict_file_hint_names_the_flag(root, env):
    shutil.copytree(env.text_run, root / "run")
    path = tsv(root, "test.tsv", GOOD_ROWS)
    return (["predict", str(root / "run"), "--file", str(path), "--text-column", "review"],
            f"{path}: no text column 'review' (columns: sentence, label); set --text-column")


@case
def predict_empty_text(root, env):
    shutil.copytree(env.text_run, root / "run")
    return ["predict", str(root / "run"), "good film", "  "], "input 2: empty text"


# -- outputs: places that cannot be written, files that are not replaced ------------------------------


@case
def train_output_that_cannot_be_created(root, env):
    return (["train", str(image_recipe(root)), "--output", "/proc/finetunekit-run"],
            "cannot write /proc/finetunekit-run: cannot create files in /proc (No such file or directory)")


@case
def export_output_that_cannot_be_created(root, env):
    shutil.copytree(env.image_run, root / "run")
    return (["export", str(root / "run"), "--format", "timm", "--output", "/proc/finetunekit-export"],
            "cannot write /proc/finetunekit-export: cannot create files in /proc (No such file or directory)")


@case
def compare_onto_an_existing_page(root, env):
    (root / "compare.html").write_text("<p>an earlier comparison</p>")
    return (["compare", str(env.image_run), str(env.text_run), "--output", str(root / "compare.html")],
            f"{root}/compare.html already exists; pass --overwrite to replace it, or choose another --output")


@case
def compare_onto_a_runs_weights(root, env):
    shutil.copytree(env.image_run, root / "run")
    target = root / "run" / "model.safetensors"
    return (["compare", str(env.image_run), str(env.text_run), "--output", str(target), "--overwrite"],
            f"--output {target} is model.safetensors of the run directory {root / 'run'}; --overwrite replaces earlier "
            "outputs, never a run's own files: choose another --output")


@case
def report_onto_an_existing_file(root, env):
    (root / "page.html").write_text("mine")
    return (["report", str(env.image_run), "--output", str(root / "page.html")],
            f"{root}/page.html already exists; pass --overwrite to replace it, or choose another --output")


# -- decompression bombs ---------------------------------------------------------------------------


def png_bomb(path: Path, side: int = 20000) -> Path:
    """A real 1-bit PNG of side x side pixels, all black: some 50 KB that decode to side**2 * 3 bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, row = zlib.compressobj(9), b"\0" * (1 + side // 8)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


BOMB = "20000x20000 = 400,000,000 pixels, more than data.max_image_pixels = 178,956,970 (a decompression bomb? raise the limit if the image is real)"


@case
def decompression_bomb_in_training_images(root, env):
    base = images(root, "a", "b")
    bomb = png_bomb(base / "train" / "a" / "bomb.png")
    return ["train", str(image_recipe(root))], (
        f"{base}/train: 1 unreadable image file(s): {bomb} ({BOMB}); remove them or set data.bad_images=skip"
    )


@case
def decompression_bomb_below_a_lower_limit(root, env):
    base = images(root, "a", "b")
    bomb = png_bomb(base / "val" / "b" / "big.png", side=64)
    return ["train", str(image_recipe(root, data={"max_image_pixels": 1024}))], (
        f"{base}/val: 1 unreadable image file(s): {bomb} (64x64 = 4,096 pixels, more than data.max_image_pixels = 1,024 "
        "(a decompression bomb? raise the limit if the image is real)); remove them or set data.bad_images=skip"
    )


@case
def predict_a_decompression_bomb(root, env):
    shutil.copytree(env.image_run, root / "run")
    bomb = png_bomb(root / "bomb.png")
    return ["predict", str(root / "run"), str(bomb)], f"{bomb}: {BOMB}"


@case
def evaluate_on_a_decompression_bomb(root, env):
    shutil.copytree(env.image_run, root / "run")
    base = images(root, "a", "b", split=False, per_class=1)
    bomb = png_bomb(base / "b" / "bomb.png")
    return ["evaluate", str(root / "run"), str(base)], f"{bomb}: {BOMB}"


# -- run directories whose parts disagree ---------------------------------------------------------


def other_weights(run: Path) -> Path:
    """The run's weights file replaced by one of the same architecture and other values."""
    from safetensors.torch import load_file, save_file

    weights = run / "model.safetensors"
    state = load_file(str(weights))
    state["head.fc.bias"] = state["head.fc.bias"] + 1.0
    save_file(state, str(weights), metadata={"format": "pt"})
    return weights


@case
def predict_with_weights_of_another_run(root, env):
    shutil.copytree(env.text_run, root / "run")
    weights = other_weights(root / "run")
    return ["predict", str(root / "run"), "good film"], (
        f"{weights}: not the weights this run saved (their SHA-256 differs from the one in {root}/run/finetunekit.json); "
        "the file comes from another run or was altered"
    )


@case
def evaluate_with_weights_of_another_run(root, env):
    shutil.copytree(env.text_run, root / "run")
    weights = other_weights(root / "run")
    return ["evaluate", str(root / "run"), str(tsv(root, "test.tsv", GOOD_ROWS))], (
        f"{weights}: not the weights this run saved (their SHA-256 differs from the one in {root}/run/finetunekit.json); "
        "the file comes from another run or was altered"
    )


@case
def backbone_from_a_run_with_weights_of_another_run(root, env):
    shutil.copytree(env.image_run, root / "run")
    weights = other_weights(root / "run")
    images(root, "a", "b")
    return ["train", str(image_recipe(root, model={"backbone": f"run:{root}/run"})), "--output", str(root / "out")], (
        f"{weights}: not the weights this run saved (their SHA-256 differs from the one in {root}/run/finetunekit.json); "
        "the file comes from another run or was altered"
    )


@case
def export_with_weights_of_another_shape(root, env):
    from safetensors.torch import load_file, save_file

    shutil.copytree(env.image_run, root / "run")
    weights = root / "run" / "model.safetensors"
    state = load_file(str(weights))
    state["head.fc.bias"] = state["head.fc.bias"].repeat(2)
    save_file(state, str(weights), metadata={"format": "pt"})
    return ["export", str(root / "run"), "--format", "timm", "--output", str(root / "out")], (
        f"{weights}: head.fc.bias has shape [4], but the model finetunekit.json describes needs [2]; "
        "the weights come from another run"
    )


@case
def predict_with_labels_of_another_run(root, env):
    shutil.copytree(env.image_run, root / "run")
    (root / "run" / "labels.json").write_text(json.dumps({"classes": ["a", "b", "c"]}))
    return ["predict", str(root / "run"), "x.png"], (
        f"{root}/run/labels.json: 3 classes, but the model's head has 2 outputs ({root}/run/finetunekit.json); "
        "labels.json comes from another run"
    )


@case
def predict_with_labels_json_of_another_shape(root, env):
    shutil.copytree(env.image_run, root / "run")
    (root / "run" / "labels.json").write_text(json.dumps(["a", "b"]))
    return ["predict", str(root / "run"), "x.png"], (
        f'{root}/run/labels.json: expected {{"classes": [class names, in the order of the head\'s outputs]}}'
    )


# -- resume refuses what changed --------------------------------------------------------------------


@case
def resume_after_recipe_yaml_was_edited(root, env, monkeypatch):
    from finetunekit.run.checkpoint import list_checkpoints

    _, run = stopped_run(root, monkeypatch)
    recipe = run / "recipe.yaml"
    recipe.write_text(re.sub(r"(?m)^  epochs: 1$", "  epochs: 2", recipe.read_text()))
    return ["resume", str(run)], (
        f"cannot resume {run}: {recipe} was edited after checkpoint {list_checkpoints(run)[-1]} was written "
        "(train.epochs is 1 when the run started, 2 in recipe.yaml); put the run's values back, or start a new run"
    )


@case
def resume_after_image_bytes_changed(root, env, monkeypatch):
    from finetunekit.run.checkpoint import list_checkpoints

    _, run = stopped_run(root, monkeypatch)
    train = root / "images" / "train"
    (train / "a" / "a_0.png").write_bytes((train / "b" / "b_0.png").read_bytes())
    return ["resume", str(run)], (
        f"{train}: the contents of the training files changed since checkpoint {list_checkpoints(run)[-1]} was written "
        "(same names, other bytes); resume needs the data the run started with"
    )


@case
def resume_after_validation_bytes_changed(root, env, monkeypatch):
    from finetunekit.run.checkpoint import list_checkpoints

    _, run = stopped_run(root, monkeypatch)
    val = root / "images" / "val"
    (val / "a" / "a_0.png").write_bytes((val / "b" / "b_0.png").read_bytes())
    return ["resume", str(run)], (
        f"{val}: the contents of the validation files changed since checkpoint {list_checkpoints(run)[-1]} was written "
        "(same names, other bytes); resume needs the data the run started with"
    )


# -- the test --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input_is_one_exact_line_and_changes_nothing(name, env, tmp_path, capsys, monkeypatch):
    fn = CASES[name]
    args, message = fn(tmp_path, env, monkeypatch) if "monkeypatch" in fn.__code__.co_varnames else fn(tmp_path, env)
    before = snapshot(tmp_path)
    capsys.readouterr()
    started = time.perf_counter()
    code = main(args)
    err = capsys.readouterr().err
    assert (code, err) == (2, f"finetunekit {args[0]}: error: {message}\n")
    assert len(err) < 400 + len(str(tmp_path)) * 3
    assert snapshot(tmp_path) == before
    assert time.perf_counter() - started < 30  # the alias bomb took 72 s and all the memory


def test_labels_written_differently_in_jsonl_are_one_class_and_said_so(tmp_path, env, capsys):
    from finetunekit.modalities import read_examples

    rows = [("good film", 1), ("bad film", 0), ("great plot", "1"), ("dull plot", 0.0), ("fine story", 1.0), ("grim story", "0")]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows), encoding="utf-8")
    examples = read_examples(path, "text")
    assert examples.labels == ["1", "0", "1", "0", "1", "0"]
    assert examples.notes == [f"{path}: column 'label' writes a label several ways; read \"0\", 0, 0.0 as '0'; \"1\", 1, 1.0 as '1'"]
    capsys.readouterr()
    assert main(["train", str(text_recipe(tmp_path, env, path, path)), "--output", str(tmp_path / "run"), "-q"]) == 0
    assert json.loads((tmp_path / "run" / "labels.json").read_text())["classes"] == ["0", "1"]
    assert f"finetunekit: warning: {examples.notes[0]}\n" in capsys.readouterr().err


def test_byte_order_mark_is_not_part_of_a_column_name(tmp_path):
    from finetunekit.modalities import read_examples

    for suffix in (".tsv", ".csv", ".jsonl"):
        path = tmp_path / f"train{suffix}"
        body = {".tsv": "sentence\tlabel\ngood\tpos\n", ".csv": "sentence,label\ngood,pos\n",
                ".jsonl": '{"sentence": "good", "label": "pos"}\n'}[suffix]
        path.write_bytes(b"\xef\xbb\xbf" + body.encode())
        examples = read_examples(path, "text", text_column="sentence")
        assert (examples.inputs, examples.labels) == (["good"], ["pos"])


def test_predict_takes_options_before_or_after_its_inputs(env, capsys):
    capsys.readouterr()
    assert main(["predict", str(env.text_run), "--json", "good film", "bad film"]) == 0
    after = [json.loads(line)["input"] for line in capsys.readouterr().out.splitlines()]
    assert main(["predict", str(env.text_run), "good film", "--json", "bad film"]) == 0
    between = [json.loads(line)["input"] for line in capsys.readouterr().out.splitlines()]
    assert after == between == ["good film", "bad film"]


def test_every_case_is_listed_in_docs_errors_md():
    text = (Path(__file__).resolve().parents[1] / "docs" / "errors.md").read_text()
    assert [name for name in sorted(CASES) if f"`{name}`" not in text] == []


def test_compare_overwrites_only_when_asked(env, tmp_path):
    page = tmp_path / "compare.html"
    page.write_text("old")
    assert main(["compare", str(env.image_run), str(env.text_run), "--output", str(page), "--overwrite"]) == 0
    assert page.read_text().startswith("<!DOCTYPE html>") or "<html" in page.read_text()


def _hold_lock(run: Path):
    """Another process holding the run directory's lock (started, and its lock taken, on return)."""
    import subprocess
    import sys

    code = ("import sys, time; from pathlib import Path; from finetunekit.core.outputs import RunDirLock; "
            "RunDirLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


@pytest.mark.parametrize("command", ["resume", "train", "export"])
def test_a_second_process_on_a_run_directory_is_refused_naming_the_holder(command, env, tmp_path, capsys):
    from finetunekit.core.outputs import RunDirLock

    run = tmp_path / "run"
    shutil.copytree(env.image_run, run)
    args = {"resume": ["resume", str(run)],
            "train": ["train", str(image_recipe(tmp_path)), "--output", str(run), "--overwrite"],
            "export": ["export", str(run), "--format", "timm"]}[command]
    holder = _hold_lock(run)
    try:
        before = snapshot(tmp_path)
        capsys.readouterr()
        assert main(args) == 2
        assert capsys.readouterr().err == (
            f"finetunekit {command}: error: {run} is in use by another finetunekit process (pid {holder.pid}); "
            "wait for it to finish or stop it, then try again\n"
        )
        assert snapshot(tmp_path) == before
    finally:
        holder.kill()
        holder.wait()
    with RunDirLock(run):  # the kernel dropped the killed holder's lock: the next process gets it
        pass
    assert not (run / ".finetunekit.lock").exists()


def test_decompression_bomb_is_skipped_and_counted_with_bad_images_skip(env, tmp_path, capsys):
    base = images(tmp_path, "a", "b")
    bomb = png_bomb(base / "train" / "b" / "bomb.png")
    capsys.readouterr()
    recipe = image_recipe(tmp_path, data={"bad_images": "skip"})
    assert main(["train", str(recipe), "--output", str(tmp_path / "run"), "-q"]) == 0
    assert f"finetunekit: warning: skipped 1 unreadable image file(s): {bomb} ({BOMB})\n" in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "preprocessing.json").read_text())["max_image_pixels"] == 178_956_970


@pytest.mark.parametrize("damage", ["shape", "values"])
def test_damaged_feature_cache_entries_are_reported_and_recomputed(damage, tmp_path, capsys):
    import os

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from conftest import tiny_image_recipe
    from finetunekit import train
    from run_outputs import comparable, differences

    data = images(tmp_path, "a", "b", per_class=4)
    recipe = tiny_image_recipe(data, strategy={"name": "linear_probe"}, train={"epochs": 2})
    train(recipe, output=tmp_path / "reference", quiet=True)
    entries = sorted(Path(os.environ["FINETUNEKIT_CACHE_DIR"]).glob("*.safetensors"))
    assert len(entries) == 2  # training and validation features
    for entry in entries:
        with safe_open(str(entry), framework="pt") as handle:
            meta, features = handle.metadata(), handle.get_tensor("features")
        # a wrong shape crashed the run; right-shaped wrong values trained silently to a worse model
        features = torch.zeros(3, 7) if damage == "shape" else features * 0.5
        save_file({"features": features}, str(entry), metadata=meta)
    capsys.readouterr()
    train(recipe, output=tmp_path / "again", quiet=True)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("finetunekit: warning: feature cache:")]
    assert sorted(w.split(" is damaged (")[0] for w in warnings) == [f"finetunekit: warning: feature cache: {e}" for e in entries]
    assert differences(comparable(tmp_path / "again"), comparable(tmp_path / "reference")) == []
    assert all(w.endswith("; computing the features again") for w in warnings)

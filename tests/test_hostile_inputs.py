"""Hostile and careless inputs (issue 15): each class of mistake gives one exact line on stderr,
exit status 2 and nothing changed on disk (the same contract as tests/test_errors.py, whose helpers
and runs this module reuses), or, where the input is usable, the documented normalisation.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from finetunekit.cli import main
from finetunekit.errors import shown
from test_errors import GOOD_ROWS, env, image_recipe, images, snapshot, text_recipe, tsv  # noqa: F401 (env: fixture)

CASES: dict[str, Callable] = {}


def case(fn: Callable) -> Callable:
    CASES[fn.__name__] = fn
    return fn


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
            f"{target}: expected a file name ending in .html or .htm")


@case
def report_onto_an_existing_file(root, env):
    (root / "page.html").write_text("mine")
    return (["report", str(env.image_run), "--output", str(root / "page.html")],
            f"{root}/page.html already exists; pass --overwrite to replace it, or choose another --output")


# -- the test --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input_is_one_exact_line_and_changes_nothing(name, env, tmp_path, capsys):
    args, message = CASES[name](tmp_path, env)
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
    from finetunekit.data import read_examples

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
    from finetunekit.data import read_examples

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

    code = ("import sys, time; from pathlib import Path; from finetunekit.outputs import RunDirLock; "
            "RunDirLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


@pytest.mark.parametrize("command", ["resume", "train", "export"])
def test_a_second_process_on_a_run_directory_is_refused_naming_the_holder(command, env, tmp_path, capsys):
    from finetunekit.outputs import RunDirLock

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

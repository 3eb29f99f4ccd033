"""Hostile and careless inputs, run through the command line: the whole sweep, re-runnable.

Builds every input itself under a temporary directory (tiny image folders, a 2-layer BERT made from a
config, small runs of both modalities, then the hostile files: alias bombs, repeated keys, a
20000 x 20000 PNG of 50 KB, run directories with parts of other runs, edited recipes, a locked run,
a full disk simulated by replacing the file writer, damaged feature-cache entries, ...), runs each
case as its own ``python -m finetunekit`` process and prints one table row per case: the exit status
expected and found, the wall time, and the first line the command printed (stderr first; the
temporary directory shown as ``$TMP``).

    python benchmarks/hostile_inputs.py [--only SUBSTRING] [--keep]

Exit status 0 when every case exits as expected (2: a one-line error; 0: handled and said), 1
otherwise. Nothing here downloads anything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
TIMEOUT = 300

# A command run with one writer replaced: the named file fails with ENOSPC (a full disk).
FULL_DISK = """
import errno, sys
from pathlib import Path
import finetunekit.run.artifacts as artifacts
target, write = sys.argv.pop(1), artifacts._atomic_write_bytes
def full(path, data):
    if Path(path).name == target:
        raise OSError(errno.ENOSPC, "No space left on device")
    write(path, data)
artifacts._atomic_write_bytes = full
from finetunekit.cli import main
sys.exit(main(sys.argv[1:]))
"""

# A training killed (as by SIGKILL: no clean-up) right after its first checkpoint.
KILLED_AFTER_FIRST_CHECKPOINT = """
import os, sys
import finetunekit.run.checkpoint as checkpoint
save = checkpoint.Checkpointer.save
def save_then_die(self, *args, **kwargs):
    save(self, *args, **kwargs)
    os._exit(137)
checkpoint.Checkpointer.save = save_then_die
from finetunekit.cli import main
sys.exit(main(sys.argv[1:]))
"""

# One hostile request to a running service (the real app on a free loopback port), then a good one
# and /health: exits 0 when the hostile request got the expected 4xx status and the service still
# answers; prints the status and the error line either way.
SERVICE_REQUEST = r"""
import base64, http.client, json, sys, threading, time
import uvicorn
from finetunekit.use.predict import load
from finetunekit.use.serving.app import ServeOptions, bind, create_app
run_dir, expected, body, good = sys.argv[1], int(sys.argv[2]), open(sys.argv[3], "rb").read(), sys.argv[4]
app = create_app(load(run_dir), ServeOptions(max_body_bytes=8 * 1024 * 1024))
sock = bind("127.0.0.1", 0)
server = uvicorn.Server(uvicorn.Config(app, log_level="critical"))
threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
while not server.started:
    time.sleep(0.02)
def post(data, kind="application/json", path="/predict", method="POST"):
    conn = http.client.HTTPConnection("127.0.0.1", sock.getsockname()[1], timeout=120)
    conn.request(method, path, body=data, headers={"content-type": kind})
    response = conn.getresponse()
    return response.status, response.read().decode("utf-8", "replace")
kind = "application/json"
if body.startswith(b"\x89PNG"):
    body, kind = (b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"bomb.png\"\r\n"
                  b"Content-Type: image/png\r\n\r\n" + body + b"\r\n--b--\r\n"), "multipart/form-data; boundary=b"
status, answer = post(body, kind)
print(f"status {status}: {answer}"[:400], flush=True)
healthy = post(None, path="/health", method="GET")[0] == 200 and post(good.encode())[0] == 200
print("the service answers afterwards" if healthy else "the service no longer answers", flush=True)
server.should_exit = True
sys.exit(0 if status == expected and healthy else 1)
"""

HOLD_LOCK = """
import sys, time
from pathlib import Path
from finetunekit.core.outputs import RunDirLock
RunDirLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(600)
"""


@dataclass
class Result:
    case: str
    expected: int
    code: int
    seconds: float
    first_line: str


def cli(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "finetunekit", *args]
    try:
        return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(command, 124, exc.stdout or "", f"timed out after {TIMEOUT} s")


# -- inputs ----------------------------------------------------------------------------------------


def png_bomb(path: Path, side: int = 20000) -> Path:
    """A valid 1-bit PNG of side x side black pixels: about 50 KB that decode to 1.2 GB of RGB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, row = zlib.compressobj(9), b"\0" * (1 + side // 8)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def image_folder(root: Path, classes=("a", "b"), per_class: int = 4, seed: int = 0) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, size=(16, 16, 3)).astype(np.uint8)
            pixels[4:12, 4:12] = [(220, 40, 40), (40, 60, 220)][c % 2]
            Image.fromarray(pixels).save(root / name / f"{name}_{i}.png")
    return root


def tiny_bert(root: Path) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = ["good", "great", "fine", "bad", "awful", "dull", "film", "plot", "the", "a"]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])})
    torch.manual_seed(0)
    config = BertConfig(vocab_size=15, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64)
    BertModel(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


def write_yaml(path: Path, raw: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


class World:
    """The shared inputs: image data, a text model, and a finished run of each modality."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.images = root / "images"
        image_folder(self.images / "train")
        image_folder(self.images / "val", per_class=2, seed=1)
        self.bert = tiny_bert(root / "bert")
        self.texts = root / "train.tsv"
        rows = [("good film", "pos"), ("bad film", "neg"), ("great plot", "pos"), ("dull plot", "neg")] * 4
        self.texts.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
        self.image_recipe = self.recipe_for(self.images, "image_recipe.yaml")
        self.text_recipe = self.recipe_for(self.texts, "text_recipe.yaml", val=str(self.texts))
        self.image_run, self.text_run = root / "image_run", root / "text_run"
        for recipe, run in ((self.image_recipe, self.image_run), (self.text_recipe, self.text_run)):
            done = cli("train", str(recipe), "--output", str(run), "--quiet")
            if done.returncode != 0:
                raise SystemExit(f"setting up {run} failed:\n{done.stderr}")

    def recipe_for(self, data: Path, name: str, **data_fields) -> Path:
        if data.suffix in (".tsv", ".jsonl", ".csv"):
            raw = {"model": {"backbone": f"hf:{self.bert}"}, "data": {"train": str(data), "max_length": 16, **data_fields},
                   "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3}}
        else:
            raw = {"model": {"backbone": "timm:test_efficientnet", "pretrained": False, "image_size": 32},
                   "data": {"train": str(data), "augment": "none", **data_fields},
                   "train": {"epochs": 1, "batch_size": 4, "lr": 0.01, "head_lr": 0.01}}
        return write_yaml(self.root / name, raw)

    def case_dir(self, name: str) -> Path:
        path = self.root / "cases" / name
        path.mkdir(parents=True)
        return path

    def copy_run(self, run: Path, where: Path) -> Path:
        return Path(shutil.copytree(run, where / "run"))

    def stopped_image_run(self, where: Path) -> Path:
        data = image_folder(where / "images" / "train")
        image_folder(where / "images" / "val", per_class=2, seed=1)
        recipe = write_yaml(where / "recipe.yaml", {
            "model": {"backbone": "timm:test_efficientnet", "pretrained": False, "image_size": 32},
            "data": {"train": str(data.parent), "augment": "none"},
            "train": {"epochs": 2, "batch_size": 4, "lr": 0.01, "head_lr": 0.01, "checkpoint_every_steps": 1},
        })
        cli("train", str(recipe), "--output", str(where / "run"), "--quiet", code=KILLED_AFTER_FIRST_CHECKPOINT)
        return where / "run"


# -- the cases: each returns (expected exit status, completed process) -----------------------------

CASES: dict[str, Callable[[World, Path], tuple[int, subprocess.CompletedProcess]]] = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def alias_bomb(levels: int = 9) -> str:
    return "\n".join(f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}" if i else "lol"] * 9) + "]" for i in range(levels)) + "\n"


@case
def recipe_alias_bomb(w, d):
    path = d / "r.yaml"
    path.write_text(alias_bomb() + "train:\n  lr: *x8\n")
    return 2, cli("train", str(path))


@case
def override_alias_bomb(w, d):
    value = "[" + ", ".join(f"&x{i} [" + ", ".join([f"*x{i - 1}" if i else "lol"] * 9) + "]" for i in range(9)) + "]"
    return 2, cli("train", str(w.image_recipe), "--set", f"data.train={value}")


@case
def recipe_recursive_alias(w, d):
    path = d / "r.yaml"
    path.write_text("train: &a\n  lr: [*a]\n")
    return 2, cli("train", str(path))


@case
def recipe_nested_5000_deep(w, d):
    path = d / "r.yaml"
    path.write_text("train:\n  lr: " + "[" * 5000 + "]" * 5000 + "\n")
    return 2, cli("train", str(path))


@case
def recipe_of_2_mb(w, d):
    path = d / "r.yaml"
    path.write_text("# padding\n" * 200_000)
    return 2, cli("train", str(path))


@case
def recipe_repeated_key(w, d):
    path = d / "r.yaml"
    path.write_text(w.image_recipe.read_text() + "train:\n  lr: 0.5\n")
    return 2, cli("train", str(path))


@case
def recipe_not_utf8(w, d):
    path = d / "r.yaml"
    path.write_bytes("train:\n  lr: 0.1  # caf\u00e9\n".encode("latin-1"))
    return 2, cli("train", str(path))


@case
def recipe_wide_value_in_an_error(w, d):
    anchors = ", ".join(f"&x{i} [" + ", ".join([f"*x{i - 1}" if i else "lol"] * 9) + "]" for i in range(5))
    path = d / "r.yaml"
    path.write_text(f"train:\n  epochs: [{anchors}]\n")
    return 2, cli("train", str(path))


@case
def text_column_is_the_label_column(w, d):
    return 2, cli("train", str(w.text_recipe), "--set", "data.text_column=label", "--output", str(d / "run"))


@case
def labels_0_quoted_0_and_0_0_in_jsonl(w, d):
    path = d / "train.jsonl"
    rows = [("good film", 1), ("bad film", 0), ("great plot", "1"), ("dull plot", 0.0), ("fine film", 1.0), ("awful plot", "0")] * 2
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    return 0, cli("train", str(w.text_recipe), "--set", f"data.train={path}", "--set", f"data.val={path}",
                  "--output", str(d / "run"), "--quiet")


@case
def labels_1_and_1_0_in_csv(w, d):
    path = d / "train.csv"
    path.write_text("sentence,label\ngood film,1\nbad film,0\ngreat plot,1.0\ndull plot,0\n")
    return 2, cli("train", str(w.text_recipe), "--set", f"data.train={path}", "--set", f"data.val={path}")


@case
def byte_order_mark_before_the_header(w, d):
    path = d / "train.tsv"
    path.write_bytes(b"\xef\xbb\xbf" + w.texts.read_bytes())
    return 0, cli("train", str(w.text_recipe), "--set", f"data.train={path}", "--set", f"data.val={path}",
                  "--set", "data.text_column=sentence", "--output", str(d / "run"), "--quiet")


@case
def invisible_character_in_a_column_name(w, d):
    path = d / "train.tsv"
    path.write_text(w.texts.read_text().replace("sentence", "sentence\u200b", 1))
    return 2, cli("train", str(w.text_recipe), "--set", f"data.train={path}", "--set", "data.text_column=sentence")


@case
def non_utf8_byte_on_line_4002(w, d):
    path = d / "train.tsv"
    path.write_bytes(("sentence\tlabel\n" + "good film\tpos\nbad film\tneg\n" * 2000).encode() + "na\u00efve\tpos\n".encode("latin-1"))
    return 2, cli("train", str(w.text_recipe), "--set", f"data.train={path}")


@case
def decompression_bomb_in_training(w, d):
    shutil.copytree(w.images, d / "images")
    png_bomb(d / "images" / "train" / "a" / "bomb.png")
    return 2, cli("train", str(w.image_recipe), "--set", f"data.train={d / 'images'}", "--output", str(d / "run"))


@case
def decompression_bomb_skipped(w, d):
    shutil.copytree(w.images, d / "images")
    png_bomb(d / "images" / "train" / "a" / "bomb.png")
    return 0, cli("train", str(w.image_recipe), "--set", f"data.train={d / 'images'}", "--set", "data.bad_images=skip",
                  "--output", str(d / "run"), "--quiet")


@case
def decompression_bomb_predicted(w, d):
    return 2, cli("predict", str(w.image_run), str(png_bomb(d / "bomb.png")))


@case
def decompression_bomb_evaluated(w, d):
    data = image_folder(d / "test", per_class=1)
    png_bomb(data / "b" / "bomb.png")
    return 2, cli("evaluate", str(w.image_run), str(data))


@case
def train_output_under_proc(w, d):
    return 2, cli("train", str(w.image_recipe), "--output", "/proc/finetunekit-run")


@case
def export_output_under_proc(w, d):
    return 2, cli("export", str(w.image_run), "--format", "timm", "--output", "/proc/finetunekit-export")


@case
def full_disk_writing_the_finished_run(w, d):
    return 2, cli("model.safetensors", "train", str(w.image_recipe), "--output", str(d / "run"), "--quiet", code=FULL_DISK)


@case
def resume_after_the_full_disk(w, d):
    cli("metrics.json", "train", str(w.image_recipe), "--output", str(d / "run"), "--quiet", code=FULL_DISK)
    return 0, cli("resume", str(d / "run"), "--quiet")


@case
def predict_with_weights_of_another_run(w, d):
    from safetensors.torch import load_file, save_file

    run = w.copy_run(w.text_run, d)
    state = load_file(str(run / "model.safetensors"))
    state["head.fc.bias"] = state["head.fc.bias"] + 1
    save_file(state, str(run / "model.safetensors"), metadata={"format": "pt"})
    return 2, cli("predict", str(run), "good film")


@case
def evaluate_with_labels_json_of_another_run(w, d):
    run = w.copy_run(w.text_run, d)
    (run / "labels.json").write_text(json.dumps({"classes": ["neg", "neutral", "pos"]}))
    return 2, cli("evaluate", str(run), str(w.texts))


@case
def export_with_weights_of_another_architecture(w, d):
    run = w.copy_run(w.image_run, d)
    shutil.copy(w.text_run / "model.safetensors", run / "model.safetensors")
    return 2, cli("export", str(run), "--format", "timm", "--output", str(d / "out"))


@case
def resume_after_recipe_yaml_was_edited(w, d):
    run = w.stopped_image_run(d)
    recipe = run / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("  epochs: 2\n", "  epochs: 3\n"))
    return 2, cli("resume", str(run))


@case
def resume_after_image_bytes_changed(w, d):
    run = w.stopped_image_run(d)
    train = d / "images" / "train"
    (train / "a" / "a_0.png").write_bytes((train / "b" / "b_0.png").read_bytes())
    return 2, cli("resume", str(run))


@case
def second_resume_while_one_runs(w, d):
    run = w.stopped_image_run(d)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        holder.stdout.readline()
        return 2, cli("resume", str(run))
    finally:
        holder.kill()
        holder.wait()


@case
def compare_onto_an_existing_file(w, d):
    (d / "compare.html").write_text("an earlier page")
    return 2, cli("compare", str(w.image_run), str(w.text_run), "--output", str(d / "compare.html"))


@case
def compare_onto_a_runs_weights(w, d):
    run = w.copy_run(w.image_run, d)
    return 2, cli("compare", str(w.image_run), str(w.text_run), "--output", str(run / "model.safetensors"), "--overwrite")


@case
def predict_json_after_the_run(w, d):
    return 0, cli("predict", str(w.text_run), "--json", "good film")


@case
def predict_an_empty_text(w, d):
    return 2, cli("predict", str(w.text_run), "good film", " ")


@case
def evaluate_hint_names_the_flag(w, d):
    return 2, cli("evaluate", str(w.text_run), str(w.texts), "--label-column", "target")


@case
def damaged_feature_cache_entries(w, d):
    from safetensors import safe_open
    from safetensors.torch import save_file

    cache = d / "cache"
    args = ["train", str(w.image_recipe), "--set", "strategy.name=linear_probe", "--set", f"data.cache_dir={cache}", "--quiet"]
    cli(*args, "--output", str(d / "first"))
    for entry in cache.glob("*.safetensors"):
        with safe_open(str(entry), framework="pt") as handle:
            meta, features = handle.metadata(), handle.get_tensor("features")
        save_file({"features": features * 0.5}, str(entry), metadata=meta)
    return 0, cli(*args, "--output", str(d / "second"))


# -- outputs never destroy inputs ----------------------------------------------


@case
def export_onto_the_run_it_exports(w, d):
    run = w.copy_run(w.image_run, d)
    return 2, cli("export", str(run), "--format", "onnx", "--output", str(run), "--overwrite")


@case
def export_onto_a_folder_holding_the_run(w, d):
    run = w.copy_run(w.image_run, d)
    return 2, cli("export", str(run), "--format", "timm", "--output", str(d), "--overwrite")


@case
def predict_onto_the_runs_weights(w, d):
    run = w.copy_run(w.text_run, d)
    return 2, cli("predict", str(run), "--input", str(w.texts), "--output", str(run / "model.safetensors"), "--overwrite")


@case
def predict_onto_its_input_table(w, d):
    table = Path(shutil.copy(w.texts, d / "dev.tsv"))
    return 2, cli("predict", str(w.text_run), "--input", str(table), "--output", str(table), "--overwrite")


@case
def train_onto_its_own_data(w, d):
    data = Path(shutil.copytree(w.images, d / "images"))
    return 2, cli("train", str(w.image_recipe), "--set", f"data.train={data}", "--output", str(data), "--overwrite")


@case
def train_onto_the_run_it_starts_from(w, d):
    run = w.copy_run(w.image_run, d)
    return 2, cli("train", str(w.image_recipe), "--set", f"model.backbone=run:{run}", "--output", str(run), "--overwrite")


@case
def report_through_a_symlink_onto_the_recipe(w, d):
    run = w.copy_run(w.image_run, d)
    (d / "page.html").symlink_to(run / "recipe.yaml")
    return 2, cli("report", str(run), "--output", str(d / "page.html"), "--overwrite")


@case
def compare_onto_a_runs_labels_through_dotdot(w, d):
    run = w.copy_run(w.image_run, d)
    return 2, cli("compare", str(run), str(w.text_run), "--output", str(d / "x" / ".." / "run" / "labels.json"), "--overwrite")


@case
def explain_into_the_run(w, d):
    run = w.copy_run(w.text_run, d)
    return 2, cli("explain", str(run), "good film", "--output", str(run))


@case
def tune_into_a_run(w, d):
    run = w.copy_run(w.image_run, d)
    return 2, cli("tune", str(w.image_recipe), "--output", str(run), "--trials", "1")


@case
def lr_find_into_a_run(w, d):
    run = w.copy_run(w.image_run, d)
    return 2, cli("lr-find", str(w.image_recipe), "--output", str(run))


# -- a table is read as written, or refused -------------------------------------------------


def text_table_case(w, d, name: str, text: str) -> subprocess.CompletedProcess:
    path = d / name
    path.write_text(text, encoding="utf-8")
    return cli("train", str(w.text_recipe), "--set", f"data.train={path}", "--set", f"data.val={path}",
               "--output", str(d / "run"), "--quiet")


GOOD_ROWS = [("good film", "pos"), ("bad film", "neg"), ("great plot", "pos"), ("dull plot", "neg")] * 4


@case
def repeated_label_column_in_the_header(w, d):
    return 2, text_table_case(w, d, "t.csv", "label,sentence,label\n" + "".join(f"{y},{t},{y}\n" for t, y in GOOD_ROWS))


@case
def unclosed_quote_swallowing_a_row(w, d):
    rows = "".join(f"{t},{y}\n" for t, y in GOOD_ROWS)
    return 2, text_table_case(w, d, "t.csv", 'sentence,label\n"good film,pos\nbad film",neg\n' + rows)


@case
def unclosed_quote_to_the_end_of_the_file(w, d):
    rows = "".join(f"{t},{y}\n" for t, y in GOOD_ROWS)
    return 2, text_table_case(w, d, "t.csv", "sentence,label\n" + rows + '"bad film,neg\ngreat plot,pos\n')


@case
def one_list_label_among_63_single_labels(w, d):
    rows = [{"text": t, "label": y} for t, y in (GOOD_ROWS * 4)[:63]] + [{"text": "good plot", "label": ["pos"]}]
    return 2, text_table_case(w, d, "t.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


@case
def cell_of_50_mb(w, d):
    rows = "".join(f"{t},{y}\n" for t, y in GOOD_ROWS)
    return 2, text_table_case(w, d, "t.csv", "sentence,label\n" + rows + "x" * 50_000_000 + ",pos\n")


@case
def detection_box_row_leaving_the_image_folder(w, d):
    from PIL import Image

    (d / "images").mkdir()
    (d / "labels").mkdir()
    for i in range(4):
        Image.new("RGB", (64, 48), (200, 40, 40)).save(d / "images" / f"img_{i}.png")
    rows = [f"img_{i}.png,4,4,40,30,cat\n" for i in range(4)]
    rows.insert(1, "../../../../etc/hostname,4,4,40,30,cat\n")
    (d / "labels" / "boxes.csv").write_text("file,x1,y1,x2,y2,label\n" + "".join(rows), encoding="utf-8")
    recipe = write_yaml(d / "recipe.yaml", {
        "model": {"backbone": "timm:test_efficientnet", "pretrained": False, "image_size": 64},
        "data": {"train": str(d / "labels" / "boxes.csv"), "augment": "none"}, "task": {"type": "detection", "fpn_channels": 64},
        "train": {"epochs": 1, "batch_size": 2}})
    return 2, cli("train", str(recipe), "--output", str(d / "run"), "--quiet")


# -- the service answers every bad request with a 4xx -----------------------------------------


def service_case(run: Path, d: Path, expected: int, body: bytes, good: dict) -> subprocess.CompletedProcess:
    (d / "body").write_bytes(body)
    return cli(str(run), str(expected), str(d / "body"), json.dumps(good), code=SERVICE_REQUEST)


@case
def service_lone_surrogate(w, d):
    return 0, service_case(w.text_run, d, 400, b'{"texts": ["\\ud800 bad"]}', {"texts": ["good film"]})


@case
def service_json_200000_deep(w, d):
    return 0, service_case(w.text_run, d, 400, b'{"texts": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", {"texts": ["good film"]})


@case
def service_png_of_20000_by_20000(w, d):
    import base64
    import io

    from PIL import Image

    good = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 40, 40)).save(good, format="PNG")
    bomb = png_bomb(d / "bomb.png").read_bytes()
    return 0, service_case(w.image_run, d, 413, bomb, {"images": [base64.b64encode(good.getvalue()).decode()]})


# -- audio files in a training folder (the audio modality) -------------------------------------------

def tiny_whisper(root: Path) -> Path:
    """A 2-layer Whisper made from a config, saved with its feature extractor: ``whisper:<folder>``."""
    folder = root / "tiny_whisper"
    if not folder.is_dir():
        import torch
        from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

        config = WhisperConfig(
            vocab_size=96, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_source_positions=50,
            max_target_positions=16, bos_token_id=0, eos_token_id=1, pad_token_id=1, decoder_start_token_id=2,
            suppress_tokens=None, begin_suppress_tokens=None)
        torch.manual_seed(0)
        WhisperForConditionalGeneration(config).save_pretrained(folder)
        WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return folder


def audio_case(w, d, bad_name: str, write_bad: Callable[[Path], None]) -> subprocess.CompletedProcess:
    """A folder of two classes of good 0.3 s tones, with one bad file in class b."""
    import numpy as np
    import soundfile

    for label, freq in (("a", 440.0), ("b", 880.0)):
        (d / "clips" / label).mkdir(parents=True)
        for i in range(3):
            t = np.arange(4800) / 16000
            soundfile.write(d / "clips" / label / f"{i}.wav", (0.3 * np.sin(2 * np.pi * freq * (1 + i / 20) * t)).astype("float32"), 16000)
    write_bad(d / "clips" / "b" / bad_name)
    recipe = write_yaml(d / "recipe.yaml", {
        "model": {"backbone": f"whisper:{tiny_whisper(w.root)}"},
        "data": {"train": str(d / "clips"), "val": str(d / "clips"), "augment": "none"},
        "train": {"epochs": 1, "batch_size": 4, "lr": 1e-3}})
    return cli("train", str(recipe), "--output", str(d / "run"), "--quiet")


@case
def audio_zero_byte_wav(w, d):
    return 2, audio_case(w, d, "empty.wav", lambda p: p.write_bytes(b""))


@case
def audio_text_file_named_wav(w, d):
    return 2, audio_case(w, d, "notes.wav", lambda p: p.write_text("this is not a sound\n"))


@case
def audio_truncated_flac(w, d):
    def write(p: Path) -> None:
        import numpy as np
        import soundfile

        soundfile.write(p, np.zeros(16000, dtype="float32"), 16000, format="FLAC")
        p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    return 2, audio_case(w, d, "cut.flac", write)


@case
def audio_nan_samples(w, d):
    def write(p: Path) -> None:
        import numpy as np
        import soundfile

        x = np.zeros(4800, dtype="float32")
        x[100] = np.nan
        soundfile.write(p, x, 16000, subtype="FLOAT")
    return 2, audio_case(w, d, "nan.wav", write)


@case
def audio_sample_rate_of_1_hz(w, d):
    def write(p: Path) -> None:
        import numpy as np
        import soundfile

        soundfile.write(p, np.zeros(8, dtype="float32"), 1)
    return 2, audio_case(w, d, "slow.wav", write)


# -- the sweep --------------------------------------------------------------------------------------


def first_line(done: subprocess.CompletedProcess, root: Path) -> str:
    lines = [line for line in (done.stderr + "\n" + done.stdout).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    for path in {str(root), os.path.realpath(root)}:
        text = text.replace(path, "$TMP")
    return text if len(text) <= 240 else text[:237] + "..."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run the cases whose name contains this (several: comma-separated)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="finetunekit-hostile-"))
    try:
        started = time.perf_counter()
        world = World(root)
        print(f"setup (data, a tiny BERT, two runs): {time.perf_counter() - started:.0f} s", file=sys.stderr)
        results = []
        for name, fn in CASES.items():
            if args.only and not any(part in name for part in args.only.split(",")):
                continue
            started = time.perf_counter()
            expected, done = fn(world, world.case_dir(name))
            results.append(Result(name, expected, done.returncode, time.perf_counter() - started, first_line(done, root)))
            print(f"{name}: exit {done.returncode}", file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print("| case | expected | exit | seconds | first line of output |")
    print("| --- | --- | --- | --- | --- |")
    for r in results:
        mark = "" if r.code == r.expected else " **unexpected**"
        line = r.first_line.replace("|", "\\|")
        print(f"| `{r.case}` | {r.expected} | {r.code}{mark} | {r.seconds:.1f} | `{line}` |")
    wrong = [r.case for r in results if r.code != r.expected]
    print(f"\n{len(results) - len(wrong)} of {len(results)} cases exited as expected" + (f"; not: {', '.join(wrong)}" if wrong else ""))
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What a user waits for before any work starts: ``import finetunekit`` and ``finetunekit --help``
load none of the heavy libraries (they load on first use), and a training run records where its
time went (RUN_DIR/timings.json, ``train --verbose``)."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from conftest import tiny_image_recipe
from finetunekit.cli import main
from finetunekit.core.timing import PhaseTimer, format_phases, process_age

HEAVY = ("torch", "transformers", "timm", "torchvision", "accelerate", "matplotlib", "sklearn", "scipy", "captum", "PIL")


def _loaded_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1].replace("'", '"'))


def test_import_finetunekit_loads_no_heavy_library():
    assert _loaded_after("import finetunekit\nfinetunekit.__version__") == []


def test_help_loads_no_heavy_library():
    code = "from finetunekit.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    assert _loaded_after(code) == []
    code = "from finetunekit.cli import main\ntry:\n    main(['train', '--help'])\nexcept SystemExit:\n    pass"
    assert _loaded_after(code) == []


def test_phase_timer_adds_repeated_phases_in_order():
    timer = PhaseTimer()
    timer.add("read", 1.0)
    with timer.phase("train"):
        pass
    timer.add("read", 0.5)
    assert list(timer.as_dict()) == ["read", "train"] and timer.as_dict()["read"] == 1.5
    text = format_phases({"read": 1.5, "train": 2.5}, total=5.0)
    assert "read" in text and "30.0%" in text and "other" in text and "20.0%" in text
    age = process_age()
    assert age is None or 0 < age < 24 * 3600


def test_run_records_where_its_time_went(image_run):
    timings = json.loads((image_run / "timings.json").read_text())
    seconds = timings["seconds"]
    for phase in ("load backbone", "read and check data", "epoch 1 train", "epoch 1 validate", "epoch 3 checkpoint",
                  "final evaluation and intervals", "save model, predictions, metrics", "model card", "report"):
        assert phase in seconds and seconds[phase] >= 0, phase
    assert sum(seconds.values()) <= timings["total_seconds"] + 0.05
    assert set(timings["cpu_seconds"]) == set(seconds) and all(v >= 0 for v in timings["cpu_seconds"].values())


def test_cli_train_verbose_prints_the_phases(image_data, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_image_recipe(image_data, train={"epochs": 1}).to_dict()))
    assert main(["train", str(recipe), "--output", str(tmp_path / "run"), "--quiet", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "where the time went" in out and "start-up (interpreter and imports)" in out and "epoch 1 train" in out
    seconds = json.loads((tmp_path / "run" / "timings.json").read_text())["seconds"]
    assert "start-up (interpreter and imports)" in seconds


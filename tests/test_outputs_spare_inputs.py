"""An output never destroys an input: every command that writes refuses, ``--overwrite`` or not, a
destination that is something it reads, a folder holding it, a run directory, or a run's own file;
one line naming both paths, exit status 2, nothing on disk changed. Symlinks and ``..`` are
resolved first. The places outputs do belong (export/, report.html, a predictions table beside
a run's files, the run a training replaces) stay writable.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import make_image_folder, tiny_image_recipe
from finetunekit import train
from finetunekit.cli import main
from finetunekit.core.errors import FinetuneError
from finetunekit.core.outputs import check_output


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("spare_inputs")
    data = make_image_folder(root / "data", per_class=3, classes=("a", "b"), size=16)
    train(tiny_image_recipe(data, train={"epochs": 1}), output=root / "run", quiet=True)
    return root / "run"


def world(root: Path, image_run: Path) -> dict[str, Path]:
    """root/images (a class folder per class), root/recipe.yaml training on it, root/run (a
    finished run), root/other (another one), root/inputs.csv (a table of image paths)."""
    images = make_image_folder(root / "images", per_class=3, classes=("a", "b"), size=16)
    raw = {"model": {"backbone": "timm:test_efficientnet", "pretrained": False, "image_size": 32},
           "data": {"train": str(images), "augment": "none"}, "train": {"epochs": 1, "batch_size": 4}}
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw), encoding="utf-8")
    run, other = Path(shutil.copytree(image_run, root / "run")), Path(shutil.copytree(image_run, root / "other"))
    table = root / "inputs.csv"
    table.write_text("file\n" + "".join(f"{p}\n" for p in sorted(images.rglob("*.png"))), encoding="utf-8")
    return {"images": images, "recipe": recipe, "run": run, "other": other, "table": table, "image": next(images.rglob("*.png"))}


# Each case: (the command line, the two paths its one-line error must name).
def cases(w: dict[str, Path], root: Path) -> dict[str, tuple[list[str], Path | str, Path]]:
    run, images, recipe = w["run"], w["images"], w["recipe"]
    backbone_of_itself = root / "resumed"
    return {
        "train_onto_its_data": (["train", str(recipe), "--output", str(images), "--overwrite"], images, images),
        "train_onto_a_folder_holding_its_recipe": (["train", str(recipe), "--output", str(root), "--overwrite"], root, recipe),
        "train_onto_the_run_it_starts_from": (
            ["train", str(recipe), "--set", f"model.backbone=run:{run}", "--output", str(run), "--overwrite"], run, run),
        "train_resume_into_its_data": (["train", str(recipe), "--output", str(images), "--resume"], images, images),
        "resume_a_run_that_starts_from_itself": (["resume", str(backbone_of_itself)], backbone_of_itself, backbone_of_itself),
        "export_onto_the_run": (["export", str(run), "--format", "timm", "--output", str(run), "--overwrite"], run, run),
        "export_onto_a_folder_holding_the_run": (["export", str(run), "--format", "timm", "--output", str(root), "--overwrite"], root, run),
        "export_onto_another_run": (["export", str(run), "--format", "timm", "--output", str(w["other"]), "--overwrite"],
                                    w["other"], w["other"]),
        "predict_onto_the_runs_weights": (
            ["predict", str(run), "--input", str(images), "--output", str(run / "model.safetensors"), "--overwrite"],
            run / "model.safetensors", run),
        "predict_onto_its_input_table": (
            ["predict", str(run), "--input", str(w["table"]), "--output", str(w["table"]), "--overwrite"], w["table"], w["table"]),
        "predict_files_into_the_run": (["predict", str(run), str(w["image"]), "--save-dir", str(run)], run, run),
        "explain_into_the_run": (["explain", str(run), str(w["image"]), "--output", str(run)], run, run),
        "report_through_a_symlink_onto_the_recipe": (
            ["report", str(run), "--output", str(root / "page.html"), "--overwrite"], root / "page.html", run),
        "compare_onto_a_runs_labels_through_dotdot": (
            ["compare", str(run), str(w["other"]), "--output", str(images / ".." / "other" / "labels.json"), "--overwrite"],
            images / ".." / "other" / "labels.json", w["other"]),
        "tune_into_a_run": (["tune", str(recipe), "--output", str(w["other"]), "--trials", "1"], w["other"], w["other"]),
        "lr_find_into_a_run": (["lr-find", str(recipe), "--output", str(run)], run, run),
        "demo_onto_a_run": (["demo", "--output", str(run), "--overwrite", "--quick"], run, run),
        "index_onto_its_images": (["index", str(run), str(images), "--output", str(images)], images, images),
    }


CASE_NAMES = [
    "train_onto_its_data", "train_onto_a_folder_holding_its_recipe", "train_onto_the_run_it_starts_from",
    "train_resume_into_its_data", "resume_a_run_that_starts_from_itself", "export_onto_the_run",
    "export_onto_a_folder_holding_the_run", "export_onto_another_run", "predict_onto_the_runs_weights",
    "predict_onto_its_input_table", "predict_files_into_the_run", "explain_into_the_run",
    "report_through_a_symlink_onto_the_recipe", "compare_onto_a_runs_labels_through_dotdot", "tune_into_a_run",
    "lr_find_into_a_run", "demo_onto_a_run", "index_onto_its_images",
]


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): "link" if p.is_symlink() else "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("name", CASE_NAMES)
def test_every_writing_command_refuses_an_output_that_destroys_an_input(name, image_run, tmp_path, capsys):
    w = world(tmp_path, image_run)
    (tmp_path / "page.html").symlink_to(w["run"] / "recipe.yaml")
    resumed = Path(shutil.copytree(image_run, tmp_path / "resumed"))
    recipe = yaml.safe_load((resumed / "recipe.yaml").read_text(encoding="utf-8"))
    recipe["model"]["backbone"] = f"run:{resumed}"
    (resumed / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    args, output, read = cases(w, tmp_path)[name]
    before = snapshot(tmp_path)
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"finetunekit {args[0]}: error: ") and err.count("\n") == 1, err
    assert str(output) in err and str(read) in err, err
    assert snapshot(tmp_path) == before


def test_the_cases_cover_every_writing_command(tmp_path, image_run):
    from finetunekit.cli import COMMANDS

    readers_only = {"evaluate", "serve", "select", "list", "search"}
    built = cases(world(tmp_path, image_run), tmp_path)
    assert sorted(built) == sorted(CASE_NAMES)
    assert {args[0] for args, _, _ in built.values()} == set(COMMANDS) - readers_only


def test_outputs_that_belong_are_allowed(tmp_path, image_run):
    run = Path(shutil.copytree(image_run, tmp_path / "run"))
    (run / "predictions.csv").write_text("input,label\n")
    (run / "report.html").write_text("<p>earlier</p>")
    check_output(run / "export" / "onnx", [run])  # export's default place
    check_output(run / "report.html", [run])  # report's default, rewritten on purpose
    check_output(run / "predictions.csv", [run, tmp_path / "missing.csv"])  # an earlier output beside the run's files
    check_output(run, [tmp_path / "recipe.yaml"], own_run=True)  # train --overwrite replaces its own earlier run
    check_output(tmp_path / "fresh", [run])
    # an earlier explain / lr-find folder inside the run is replaced on a second run; the run's own
    # folders and any folder holding weights are not
    (run / "explanations").mkdir()
    (run / "explanations" / "ant.png").write_bytes(b"png")
    check_output(run / "explanations", [run / "model.safetensors"])
    (run / "checkpoints").mkdir(exist_ok=True)
    with pytest.raises(FinetuneError, match="checkpoints of the run directory"):
        check_output(run / "checkpoints", [])
    (run / "copy").mkdir()
    (run / "copy" / "model.safetensors").write_bytes(b"w")
    with pytest.raises(FinetuneError, match="copy of the run directory"):
        check_output(run / "copy", [])
    # A folder that merely holds a recipe.yaml (a project folder) is not a run directory.
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "recipe.yaml").write_text("train: {}\n")
    (tmp_path / "project" / "out").mkdir()
    check_output(tmp_path / "project" / "out", [tmp_path / "project" / "recipe.yaml"], own_run=True)


def test_a_filled_folder_may_hold_what_it_reads(tmp_path):
    # tune and explain add files to their folder; a recipe kept in the study folder is not destroyed
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "recipe.yaml").write_text("train: {}\n")
    check_output(tmp_path / "study", [tmp_path / "study" / "recipe.yaml"], replaces=False)
    with pytest.raises(FinetuneError, match="holds the file"):
        check_output(tmp_path / "study", [tmp_path / "study" / "recipe.yaml"])

"""Nothing from a run directory, a checkpoint or a model folder is unpickled or evaluated: a crafted
pickle whose payload writes a file is refused with an explanation, and the file never appears.

The payload is checked to be live (plain ``pickle.load`` runs it), so each refusal is a real one.
"""

from __future__ import annotations

import ast
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from conftest import tiny_image_recipe
from finetunekit import train
from finetunekit.run.artifacts import pickle_refusal, safe_torch_load
from finetunekit.run.checkpoint import list_checkpoints
from finetunekit.cli import main
from finetunekit.core.errors import FinetuneError

SRC = Path(__file__).resolve().parents[1] / "src" / "finetunekit"


class Payload:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('payload ran')",))


def malicious_torch_file(path: Path, marker: Path) -> Path:
    """A torch.save archive that looks like a state dict but carries the payload."""
    torch.save({"head.linear.weight": torch.zeros(3, 4), "__extra__": Payload(marker)}, path)
    return path


def malicious_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"weights": Payload(marker)}, protocol=4))
    return path



@pytest.fixture(scope="module")
def finished_run(image_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("safe") / "run"
    train(tiny_image_recipe(image_data, train={"epochs": 1}), output=run, quiet=True)
    return run


def test_the_payload_is_live(tmp_path):
    marker = tmp_path / "ran"
    with malicious_pickle(tmp_path / "evil.pkl", marker).open("rb") as handle:
        pickle.load(handle)  # the control: a naive loader runs it
    assert marker.read_text() == "payload ran"
    marker.unlink()
    torch.load(malicious_torch_file(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.read_text() == "payload ran"


def test_safe_torch_load_refuses_the_payload(tmp_path):
    marker = tmp_path / "ran"
    path = malicious_torch_file(tmp_path / "evil.pt", marker)
    with pytest.raises(FinetuneError) as info:
        safe_torch_load(path)
    assert str(info.value).startswith(
        f"{path}: refused: it holds pickled objects other than tensors, which could run code when loaded ("
    )
    assert not marker.exists()
    # Plain tensors still load.
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.equal(safe_torch_load(tmp_path / "ok.pt")["w"], torch.ones(2))


@pytest.mark.parametrize("filename, maker", [
    ("pytorch_model.bin", malicious_torch_file),
    ("model.pt", malicious_pickle),
    ("model.safetensors", malicious_torch_file),
    ("model.safetensors", malicious_pickle),
], ids=["bin-instead", "pt-instead", "torch-zip-renamed", "pickle-renamed"])
def test_run_dir_with_pickled_weights_is_refused(filename, maker, finished_run, tmp_path, capsys):
    run, marker = tmp_path / "run", tmp_path / "ran"
    shutil.copytree(finished_run, run)
    (run / "model.safetensors").unlink()
    evil = maker(run / filename, marker)
    assert main(["predict", str(run), "x.png"]) == 2
    assert capsys.readouterr().err == f"finetunekit predict: error: {pickle_refusal(evil)}\n"
    assert not marker.exists()


def test_run_backbone_with_pickled_weights_is_refused(finished_run, image_data, tmp_path):
    run, marker = tmp_path / "run", tmp_path / "ran"
    shutil.copytree(finished_run, run)
    (run / "model.safetensors").unlink()
    evil = malicious_torch_file(run / "pytorch_model.bin", marker)
    with pytest.raises(FinetuneError) as info:
        train(tiny_image_recipe(image_data, model={"backbone": f"run:{run}"}), output=tmp_path / "new", quiet=True)
    assert str(info.value) == str(pickle_refusal(evil))
    assert not marker.exists() and not (tmp_path / "new").exists()


def test_hf_folder_with_pickled_weights_is_refused(tiny_bert, tmp_path, capsys):
    folder, marker = tmp_path / "bert", tmp_path / "ran"
    shutil.copytree(tiny_bert, folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    malicious_torch_file(folder / "pytorch_model.bin", marker)
    assert main(["train", "--set", f"model.backbone=hf:{folder}", "--set", "data.train=unused.tsv"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"finetunekit train: error: could not load Hugging Face model '{folder}': refused its pickled weights, which hold "
        "objects other than tensors and could run code when loaded; use a model with safetensors weights"
    )
    assert not marker.exists()


def test_checkpoint_with_a_pickle_and_a_matching_manifest_is_refused(image_data, tmp_path, capsys, monkeypatch):
    """An attacker who also rewrites the manifest's checksums still gets nothing unpickled: every
    tensor file must parse as safetensors, and the rest is JSON."""
    import hashlib

    from finetunekit.run.checkpoint import Checkpointer

    recipe = tiny_image_recipe(image_data, train={"epochs": 1, "checkpoint_every_steps": 1})
    run, marker = tmp_path / "run", tmp_path / "ran"

    class Killed(BaseException):
        pass

    original, count = Checkpointer.save, [0]

    def save(self, *args, **kwargs):
        original(self, *args, **kwargs)
        count[0] += 1
        if count[0] == 2:
            raise Killed

    monkeypatch.setattr(Checkpointer, "save", save)
    with pytest.raises(Killed):
        train(recipe, output=run, quiet=True)
    monkeypatch.undo()
    newest = list_checkpoints(run)[-1]
    manifest = json.loads((newest / "manifest.json").read_text())
    for name in ("model.safetensors", "optimizer.safetensors"):
        data = malicious_torch_file(newest / name, marker).read_bytes()
        manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (newest / "manifest.json").write_text(json.dumps(manifest))
    train(recipe, output=run, quiet=True, resume=True)
    err = capsys.readouterr().err
    assert f"checkpoint {newest} is unusable (model.safetensors is not a valid safetensors file (" in err
    assert not marker.exists()


def test_recipe_yaml_cannot_construct_objects(finished_run, tmp_path, capsys):
    run, marker = tmp_path / "run", tmp_path / "ran"
    shutil.copytree(finished_run, run)
    (run / "metrics.json").unlink()
    (run / "recipe.yaml").write_text(f"train: !!python/object/apply:os.system ['touch {marker}']\n")
    assert main(["resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"finetunekit resume: error: {run}/recipe.yaml: not valid YAML at line 1: ")
    assert len(err.splitlines()) == 1 and not marker.exists()


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_the_source_never_unpickles_or_evaluates():
    """Every torch.load passes weights_only=True; no pickle.load(s), eval, exec or unsafe yaml.load."""
    torch_loads = []
    for path in sorted(SRC.rglob("*.py")):
        for call, name in _calls(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{path.relative_to(SRC)}:{call.lineno}"
            assert name not in {"pickle.load", "pickle.loads", "eval", "exec", "yaml.load", "yaml.unsafe_load",
                                "marshal.loads", "dill.load", "joblib.load"}, where
            if name == "torch.load":
                weights_only = [k for k in call.keywords if k.arg == "weights_only"]
                assert weights_only and ast.unparse(weights_only[0].value) == "True", where
                torch_loads.append(where)
    # One place loads torch files (the bundled package's weights go through it).
    assert {where.split(":")[0] for where in torch_loads} == {"run/artifacts.py"}

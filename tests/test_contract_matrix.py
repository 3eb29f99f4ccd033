"""The registry cross-product contract: every valid modality x task type x strategy combination
trains, resumes, evaluates, predicts, exports and reports on tiny models.

The three lists are read from the registries (``MODALITIES``, ``TASKS``, ``STRATEGIES``) when this
module is collected, so a newly registered component is covered with no new test code; its data
comes from the per-task data of ``tests/test_tasks.py`` (``_recipe``), the tiny backbones from
conftest. Whether a combination is valid is asked of the components' declarations
(``Task.dense``, ``Task.single_class``, ``Modality.feature_maps``, ``Strategy.modalities``,
``Strategy.needs_single_class``), never a list of names; every invalid combination must be refused
by the resolve step's checks with a one-line RecipeError before any data is read
(``test_invalid_combination_is_refused_at_plan_time``, no training).

The full product is too slow for the suite's budget, so by default only a pairwise-covering subset
runs: every (modality, task), (task, strategy) and (modality, strategy) pair that occurs in some
valid combination occurs in at least one chosen combination (a deterministic greedy cover computed
from the registries). The remaining valid combinations are marked ``slow`` and run only with
``FINETUNEKIT_FULL_MATRIX=1``::

    FINETUNEKIT_FULL_MATRIX=1 python -m pytest -q tests/test_contract_matrix.py

Ids read ``<modality>-<task>-<strategy>``, e.g. ``text-regression-lora``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from finetunekit import evaluate, train
from finetunekit.cli import main
from finetunekit.core.errors import FinetuneError, RecipeError
from finetunekit.modalities import MODALITIES, modality_of
from finetunekit.run.plan import check_combination
from finetunekit.run.recipe import Recipe
from finetunekit.strategies import STRATEGIES, supported_strategies
from finetunekit.tasks import TASKS
from run_outputs import comparable, differences
from test_resume import interrupted
from test_tasks import MULTI, _recipe, _same

# strategy options that make every schedule change inside two epochs (ignored by the others)
SHORT_SCHEDULES = {"last_n": 1, "freeze_epochs": 1, "lp_epochs": 1, "unfreeze_every": 1, "setfit_iterations": 1, "lora_rank": 4}


def refusal(modality: str, kind: str, strategy: str) -> str | None:
    """Why the registries rule the combination out, or None when they allow it: the modality must
    feed the task type (``Modality.task_refusal``, ``Modality.supported_tasks``) and the task type
    must train with the strategy on that modality (``supported_strategies``), both from the
    components' declarations."""
    task = TASKS.get(kind)
    why = modality_of(modality).task_refusal(task)
    if why:
        return why
    if strategy not in supported_strategies(task, modality):
        return f"{strategy} is not among the strategies a {kind} task trains with on {modality} data"
    return None


def shipped(registry) -> list[str]:
    """The registry's names of components defined in the package: a plug-in that another test
    module registers (tests/test_plugins.py) is exercised there, and may be registered before this
    module is collected when files are run in another order."""
    return [n for n in registry.names() if getattr(registry.get(n), "__module__", "").startswith("finetunekit.")]


# task types that write text train encoder-decoders: tests/test_seq2seq.py covers them with tiny ones
GENERIC_TASKS = [t for t in shipped(TASKS) if not TASKS.get(t).needs_decoder]


def strategy_axis(kind: str) -> list[str]:
    """The strategies a task type is crossed with: its own when it declares them (retrieval's
    dual encoder), else the strategies registry's."""
    own = TASKS.get(kind).own_strategies
    return list(own) if own is not None else shipped(STRATEGIES)


ALL = [(m, t, s) for m, t in itertools.product(shipped(MODALITIES), GENERIC_TASKS) for s in strategy_axis(t)]
VALID = [c for c in ALL if refusal(*c) is None]
INVALID = [c for c in ALL if refusal(*c) is not None]


def pairwise_cover(combos: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """A deterministic subset of ``combos`` in which every pair of values (modality-task,
    task-strategy, modality-strategy) that occurs in ``combos`` occurs at least once: greedy, each
    step takes the first combination (in registry order) covering the most pairs not yet covered."""

    def pairs(c):
        m, t, s = c
        return {("mt", m, t), ("ts", t, s), ("ms", m, s)}

    missing = set().union(*(pairs(c) for c in combos)) if combos else set()
    chosen = []
    while missing:
        best = max(combos, key=lambda c: len(pairs(c) & missing))  # max keeps the first of equals
        chosen.append(best)
        missing -= pairs(best)
    return sorted(chosen, key=combos.index)


COVER = pairwise_cover(VALID)
FULL = os.environ.get("FINETUNEKIT_FULL_MATRIX") == "1"
needs_full = pytest.mark.skipif(not FULL, reason="set FINETUNEKIT_FULL_MATRIX=1 to run the whole product")


def combo_id(c) -> str:
    return "-".join(c)


def params(combos):
    return [pytest.param(*c, id=combo_id(c), marks=() if c in COVER else (pytest.mark.slow, needs_full)) for c in combos]


# -- the declarations themselves ------------------------------------------------------------------


def test_the_matrix_is_taken_from_the_registries():
    assert {m for m, _, _ in ALL} == set(shipped(MODALITIES))
    assert {s for _, _, s in ALL} == set(shipped(STRATEGIES)) | {s for t in GENERIC_TASKS for s in TASKS.get(t).own_strategies or ()}
    # what the registries say each modality and task type supports is what the matrix runs
    for m in shipped(MODALITIES):
        assert {t for mm, t, _ in VALID if mm == m} == set(modality_of(m).supported_tasks()) & set(GENERIC_TASKS), m
    assert {t for _, t, _ in ALL} == set(GENERIC_TASKS)
    missing = sorted(set(shipped(MODALITIES)) - set(TINY))
    assert not missing, f"give tests/test_contract_matrix.py TINY a tiny backbone and data for modality {missing}"
    assert len(ALL) == len(VALID) + len(INVALID) and VALID
    covered = {p for m, t, s in COVER for p in (("mt", m, t), ("ts", t, s), ("ms", m, s))}
    for m, t, s in VALID:
        assert {("mt", m, t), ("ts", t, s), ("ms", m, s)} <= covered, combo_id((m, t, s))
    assert pairwise_cover(VALID) == COVER  # deterministic


@pytest.mark.parametrize(("modality", "kind", "strategy"), INVALID, ids=[combo_id(c) for c in INVALID])
def test_invalid_combination_is_refused_at_plan_time(modality, kind, strategy, request, tmp_path):
    """The resolve step refuses it before reading any data: one line, naming the field."""
    with pytest.raises(RecipeError) as caught:
        check_combination(modality, kind, strategy)
    message = str(caught.value)
    assert "\n" not in message and message.split(":")[0] in ("task.type", "strategy.name"), message
    if not modality_of(modality).single_backbone:  # its examples are read by their task type's own recipe only
        from finetunekit.retrieval import RetrievalRecipe

        with pytest.raises(RecipeError, match=r"^(task\.type|strategy\.name): "):
            RetrievalRecipe.from_dict({"task": {"type": kind}, "strategy": {"name": strategy}, "data": {"train": str(tmp_path / "absent.tsv")}})
        return
    # and train() stops there too, through the resolve step (no data is read: the files are absent)
    with pytest.raises(RecipeError, match=r"^(task\.type|strategy\.name): "):  # a task type's own strategy: the recipe refuses it
        recipe = _matrix_recipe(modality, kind, strategy, request, tmp_path, with_data=False)
        train(recipe, output=tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


# -- tiny data and backbones per modality ----------------------------------------------------------


def _audio_task_data(root: Path, kind: str) -> dict:
    """Tone clips (conftest.write_tone_clips) whose class folders carry the target, as
    tests/test_tasks.py does for images; several tasks: a clip table with a class and a score."""
    from conftest import write_tone_clips

    names = {"classification": ("high", "low", "noise"), "multilabel": ("tone|high", "tone", "noise"),
             "regression": ("2.25", "0.5", "1.5"), "multitask": ("high", "low", "noise")}[kind]
    for split, count, seed in (("train", 4, 0), ("val", 3, 1)):
        folder = write_tone_clips(root / kind / "clips" / split, count, seed)
        for old, new in zip(("high", "low", "noise"), names, strict=True):
            target = root / kind / split / new
            target.parent.mkdir(parents=True, exist_ok=True)
            (folder / old).rename(target)
    if kind == "multitask":
        scores = {"high": "2.25", "low": "0.5", "noise": "1.5"}
        for split in ("train", "val"):
            rows = [f"{f.relative_to(root / kind)},{f.parent.name},{scores[f.parent.name]}" for f in sorted((root / kind / split).rglob("*.wav"))]
            (root / kind / f"{split}.csv").write_text("file,label,score\n" + "\n".join(rows) + "\n")
        return {"train": str(root / kind / "train.csv"), "val": str(root / kind / "val.csv")}
    return {"train": str(root / kind / "train"), "val": str(root / kind / "val")}


def _audio_recipe(request, root: Path, kind: str, **sections) -> Recipe:
    whisper = request.getfixturevalue("tiny_whisper")
    raw = {"model": {"backbone": f"whisper:{whisper}"}, "data": _audio_task_data(root, kind),
           "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "head_lr": 1e-2, "seed": 0}, **sections}
    if kind == "multitask":
        raw["tasks"] = MULTI
    return Recipe.from_dict(raw)


# modality -> (its tiny backbone, a recipe of tiny data for a task type); a modality missing here is
# skipped with the reason, and test_the_matrix_is_taken_from_the_registries names it
TINY = {
    "image": ({"backbone": "timm:test_efficientnet", "pretrained": False, "image_size": 32},
              lambda request, root, kind, **sections: _recipe("image", root, kind, None, **sections)),
    "text": ({"backbone": "hf:{tiny_bert}"},
             lambda request, root, kind, **sections: _recipe("text", root, kind, request.getfixturevalue("tiny_bert"), **sections)),
    "audio": ({"backbone": "whisper:{tiny_whisper}"}, _audio_recipe),
    # image-caption pairs train a dual encoder with a recipe of its own (_own_recipe_lifecycle)
    "image_text": ({}, None),
}


def _matrix_recipe(modality, kind, strategy, request, root: Path, with_data: bool = True) -> Recipe:
    if modality not in TINY:
        pytest.skip(f"no tiny backbone and data for modality {modality} in tests/test_contract_matrix.py TINY")
    strategy_section = {"name": strategy, **SHORT_SCHEDULES}
    model, make = TINY[modality]
    if not with_data:  # a data section whose files do not exist: refusals come before any reading
        model = {k: v.format(**{n: request.getfixturevalue(n) for n in ("tiny_bert", "tiny_whisper") if "{" + n + "}" in str(v)})
                 if isinstance(v, str) else v for k, v in model.items()}
        raw = {"model": model, "data": {"train": str(root / "absent.csv")}, "strategy": strategy_section, "train": {"epochs": 2}}
        raw["tasks" if kind == "multitask" else "task"] = (
            [{"name": "a", "type": "classification", "label_column": "a"}, {"name": "b", "type": "regression", "label_column": "b"}]
            if kind == "multitask" else {"type": kind}
        )
        return Recipe.from_dict(raw)
    recipe = make(request, root, kind, strategy=strategy_section)
    # 8 training examples (one batch an epoch) keep the product affordable; a checkpoint after each
    # optimizer step lets the resume step stop the run part-way
    return recipe.replace(data={"max_train_samples": 8}, train={"epochs": 2, "batch_size": 8, "checkpoint_every_steps": 1})


def _finite_metrics(metrics: dict, names) -> None:
    for name in names:
        assert name in metrics, f"metric {name!r} missing from {sorted(metrics)}"
        assert isinstance(metrics[name], float | int) and math.isfinite(metrics[name]), (name, metrics[name])


@pytest.mark.parametrize(("modality", "kind", "strategy"), params(VALID))
def test_valid_combination_trains_resumes_evaluates_predicts_exports_and_reports(
    modality, kind, strategy, request, tmp_path, monkeypatch
):
    from finetunekit.use.export import export
    from finetunekit.use.predict import load

    torch.set_num_threads(1)
    if TASKS.get(kind).own_recipe:
        return _own_recipe_lifecycle(strategy, request, tmp_path)
    recipe = _matrix_recipe(modality, kind, strategy, request, tmp_path)

    # train: an uninterrupted reference (the report is the last step's, written once below)
    reference = train(recipe, output=tmp_path / "reference", quiet=True, report=False)

    # resume: stopped after its first checkpoint, resumed, it ends as the reference did
    interrupted(monkeypatch, recipe, tmp_path / "run", 1)  # killed before any report
    resumed = train(recipe, output=tmp_path / "run", quiet=True, resume=True, report=False)
    run_dir = resumed.run_dir
    assert differences(comparable(run_dir), comparable(reference.run_dir)) == []
    predictor = load(run_dir)
    task = predictor.task
    assert resumed.recipe.train.metric in task.metric_names()
    _finite_metrics(resumed.metrics, [resumed.recipe.train.metric, *task.epoch_metrics])

    # evaluate on the labelled validation set: the run's own final numbers, named as the task says
    val = recipe.data.val or str(Path(recipe.data.train) / "val")
    metrics = evaluate(str(run_dir), val, image_root=recipe.data.image_root)
    _finite_metrics(metrics, task.epoch_metrics)
    for name in task.epoch_metrics:
        assert metrics[name] == pytest.approx(resumed.metrics[name], abs=1e-4), name

    # predict on raw inputs (file paths, texts): one answer per input, the run's own answers
    saved = [json.loads(line) for line in (run_dir / "val_predictions.jsonl").read_text().splitlines()][:3]
    inputs = [r["input"] for r in saved]
    records = task.prediction_records(predictor.predict_proba(inputs), None)
    assert _same([r["predicted"] for r in records], [r["predicted"] for r in saved])
    answers = predictor.predict(inputs)
    assert len(answers) == len(inputs)
    if not task.dense:  # a dense task's answers are masks or boxes, summarised in the records above
        assert _same(answers, [r["predicted"] for r in saved])
    else:  # per input image: a class-id mask of its size, or a list of boxes with a label each
        from PIL import Image

        for path, answer in zip(inputs, answers, strict=True):
            size = Image.open(path).size
            if isinstance(answer, np.ndarray):
                assert answer.shape == (size[1], size[0]) and np.issubdtype(answer.dtype, np.integer), answer.shape
            else:
                assert isinstance(answer, list) and all(len(d["box"]) == 4 and isinstance(d["label"], str) for d in answer)

    # export: the modality's native format (its first export format), with its parity check
    native = modality_of(modality).export_formats[0]
    if native != "onnx":
        try:  # the parity check inside export loads the written files and compares them with the run
            exported = export(run_dir, native, tmp_path / native)
        except FinetuneError as refused:  # timm / transformers hold one head on pooled features
            # an audio run's pipeline export needs clips of whole seconds (the tone clips here are 0.5 s;
            # tests/test_audio_use.py exports a 1-second run)
            clip_refused = modality == "audio" and "whole seconds" in str(refused)
            assert (task.dense or task.composite or clip_refused) and "\n" not in str(refused) and "--format onnx" in str(refused), refused
        else:
            assert exported.examples > 0 and exported.max_abs_diff < 1e-3, exported.summary()
            assert {"config.json", "model.safetensors"} <= set(exported.files), exported.files

    # export: ONNX with its parity check against the run's model
    pytest.importorskip("onnxruntime")
    exported = export(run_dir, "onnx", tmp_path / "onnx")
    assert exported.examples > 0 and exported.max_abs_diff < 1e-3, exported.summary()
    import onnx

    onnx.checker.check_model(str(tmp_path / "onnx" / "model.onnx"))

    # report: `finetunekit report RUN_DIR` writes the run's page
    assert not (run_dir / "report.html").exists()
    assert main(["report", str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text()
    view = type(task).view(task.state())
    assert "Training curves" in page and all(label in page for label, _ in view.cards), view.cards


def _own_recipe_lifecycle(strategy: str, request, tmp_path: Path) -> None:
    """A task type with a recipe of its own (retrieval's dual encoder, on tiny towers and colour
    pictures from tests/test_retrieval.py): trains, resumes to the same weights, evaluates to its
    own numbers, indexes and searches, classifies zero-shot, exports and reports."""
    from safetensors.torch import load_file

    from finetunekit.retrieval.api import RetrievalModel
    from finetunekit.retrieval.index import Index, build_index
    from finetunekit.retrieval.train import train as train_retrieval
    from test_retrieval import make_pairs, tiny_recipe

    make_pairs(tmp_path / "pairs", "train", 2, 0)
    make_pairs(tmp_path / "pairs", "val", 1, 1)
    tiny_bert = request.getfixturevalue("tiny_bert")
    head = {"head_epochs": 1} if strategy in ("lit", "lora_text") else {}
    recipe = tiny_recipe(tmp_path / "pairs", tiny_bert, strategy={"name": strategy, "lora_rank": 4, **head},
                         train={"epochs": 2, "batch_size": 4, "checkpoint_every_steps": 1})
    reference = train_retrieval(recipe, output=tmp_path / "reference", quiet=True)
    with pytest.raises(KeyboardInterrupt):
        train_retrieval(recipe, output=tmp_path / "run", quiet=True, stop_after_steps=1)
    resumed = train_retrieval(recipe, output=tmp_path / "run", quiet=True, resume=True)
    a, b = load_file(str(reference.run_dir / "model.safetensors")), load_file(str(resumed.run_dir / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    task = TASKS.get("retrieval")
    _finite_metrics(resumed.metrics, [task.primary_metric, *task.epoch_metrics])
    model = RetrievalModel(resumed.run_dir)
    again = model.evaluate(tmp_path / "pairs" / "val.tsv")
    for name in task.epoch_metrics:
        assert again[name] == pytest.approx(resumed.metrics[name], abs=1e-6), name
    build_index(resumed.run_dir, tmp_path / "pairs" / "images", tmp_path / "idx", quiet=True)
    found = Index.open(tmp_path / "idx").search(model.embed_images([str(tmp_path / "pairs" / "images" / "val_warm_0.png")]), 1)[0]
    assert found[0][0].endswith("val_warm_0.png")  # an image is its own nearest neighbour
    answers = model.classify([str(tmp_path / "pairs" / "images" / "val_warm_0.png")], ["warm", "cold"])
    assert answers[0]["label"] in ("warm", "cold")
    native = modality_of("image_text").export_formats[0]
    assert main(["export", str(resumed.run_dir), "--format", native, "--output", str(tmp_path / native)]) == 0
    assert (resumed.run_dir / "report.html").is_file() and (resumed.run_dir / "metrics.json").is_file()

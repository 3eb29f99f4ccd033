"""Every registered modality keeps the same contract, and nothing outside modalities/ (and tasks/)
asks which modality it has by name.

The contract tests take their list from ``MODALITIES.names()``, so a newly registered modality gets
them with no new test code (it must add a sample data set and a tiny backbone to SAMPLES).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from finetunekit.backbones import create_backbone
from finetunekit.backbones.base import Backbone
from finetunekit.core.errors import DataError, FinetuneError, RecipeError
from finetunekit.use.export import FORMATS
from finetunekit.modalities import MODALITIES, InputSchema, Modality, detect, modality_of, read_examples
from finetunekit.run.recipe import Recipe, TrainSpec
from finetunekit.strategies import STRATEGIES

SRC = Path(__file__).resolve().parents[1] / "src" / "finetunekit"
# the package's own modalities (each with a sample below); a test may register its own (tests/test_plugins.py)
PACKAGE = [n for n in MODALITIES.names() if MODALITIES.get(n).__module__.startswith("finetunekit.") and MODALITIES.get(n).single_backbone]
# modalities whose examples feed a task type with a recipe and trainer of its own (image_text: retrieval)
OWN_RECIPE = [n for n in MODALITIES.names() if not MODALITIES.get(n).single_backbone]


@pytest.fixture
def samples(image_data, text_data, tiny_bert, audio_data, tiny_whisper):
    """Per modality: (a labelled data set, a tiny backbone of that modality)."""
    return {
        "audio": (audio_data / "train", lambda: create_backbone(f"whisper:{tiny_whisper}")),
        "image": (image_data / "train", lambda: create_backbone("timm:test_efficientnet", pretrained=False, image_size=32)),
        "text": (text_data[0], lambda: create_backbone(f"hf:{tiny_bert}")),
    }


@pytest.mark.parametrize("name", OWN_RECIPE)
def test_a_modality_of_its_own_recipe_feeds_only_task_types_with_one(name):
    """Its examples train task types of its input form only, each with a recipe, trainer and
    strategies of its own; its default strategy is one of theirs."""
    from finetunekit.strategies import supported_strategies
    from finetunekit.tasks import TASKS

    kind = modality_of(name)
    tasks = kind.supported_tasks()
    assert tasks, f"modality {name} feeds no registered task type"
    for task in tasks:
        assert TASKS.get(task).own_recipe and TASKS.get(task).input_form == kind.input_form
        assert kind.default_strategy in supported_strategies(TASKS.get(task))
    for other in MODALITIES.names():  # and no single-backbone modality feeds them
        if other != name and modality_of(other).single_backbone:
            assert not set(tasks) & set(modality_of(other).supported_tasks()), other
    assert kind.request_field and kind.column_guesses and kind.zero_config_backbone


@pytest.mark.parametrize("name", [n for n in MODALITIES.names() if MODALITIES.get(n).single_backbone])
def test_modality_contract(name):
    kind = modality_of(name)
    assert isinstance(kind, Modality) and kind.name == name and modality_of(kind) is kind
    assert kind.request_field and kind.column_guesses
    assert kind.default_strategy in STRATEGIES
    train_fields = {f.name for f in dataclasses.fields(TrainSpec)}
    assert set(kind.train_defaults) <= train_fields
    for strategy, fields in kind.strategy_train_defaults.items():
        assert strategy in STRATEGIES and set(fields) <= train_fields
    # the search space names recipe fields, and its points are valid recipes
    for key, spec in kind.search_space.items():
        section, _, field = key.partition(".")
        assert section == "train" and field in train_fields, key
        (low,) = [v[0] for v in spec.values()]
        Recipe().with_overrides([f"{key}={low}"])
    assert "onnx" in kind.export_formats and set(kind.export_formats) <= set(FORMATS) and kind.onnx_axes
    assert kind.input_view in ("gallery", "table") and kind.report_errors > 0 and kind.explained_errors > 0
    assert kind.card_dataset_type and kind.card_example and kind.zero_config_backbone


@pytest.mark.parametrize("name", PACKAGE)
def test_modality_reads_its_data_and_refuses_the_others(name, samples):
    assert set(samples) == set(PACKAGE), "give every modality of the package a sample in samples()"
    path, _ = samples[name]
    assert detect(path) == name
    examples = read_examples(path, name)
    assert examples.modality == name and len(examples) > 0 and examples.labels
    for other in samples:  # the package's modalities (a test may register its own: tests/test_plugins.py)
        if other != name and not modality_of(other).file_extensions:  # a table of files is another modality's too
            with pytest.raises(DataError, match=f"is {name} data, but the model's backbone takes {other}"):
                read_examples(path, other)


@pytest.mark.parametrize("name", PACKAGE)
def test_modality_builds_batches_from_its_backbone(name, samples):
    path, make = samples[name]
    kind = modality_of(name)
    backbone = make()
    kind.check_backbone(backbone)
    examples = read_examples(path, name).subset([0, 1, 2])
    preprocessing = kind.run_preprocessing(backbone, Recipe().data)
    dataset = kind.build_dataset(examples, None, backbone, preprocessing, False, "none", 32)
    assert len(dataset) == 3
    from finetunekit.data.pipeline import build_loader

    (batch,) = list(build_loader(dataset, backbone, 3, False, 0))
    batch.pop("index")
    features = backbone.forward_features(batch)
    assert features.shape == (3, backbone.num_features) and torch.isfinite(features).all()
    # the same inputs read again give the same content digest (the feature cache's key)
    import hashlib

    a, b = hashlib.sha256(), hashlib.sha256()
    kind.examples_digest(a, examples.inputs, getattr(dataset, "encodings", None))
    kind.examples_digest(b, examples.inputs, getattr(dataset, "encodings", None))
    assert a.hexdigest() == b.hexdigest()


@pytest.mark.parametrize("name", PACKAGE)
def test_single_input_schema_refuses_pairs(name):
    with pytest.raises(DataError, match="not pairs"):
        modality_of(name).check_inputs([("a", "b")], InputSchema())


def test_text_pairs_are_the_schema_not_a_convention():
    text = modality_of("text")
    schema = text.schema({"text_columns": ["sentence1", "sentence2"]})
    assert schema.is_pair and schema.columns == ("sentence1", "sentence2")
    assert text.check_inputs([["a", "b"]], schema) == [("a", "b")]
    with pytest.raises(DataError, match="takes sentence pairs"):
        text.check_inputs(["a single text"], schema)
    assert not text.schema({}).is_pair


def test_backbone_contract_declares_what_a_modality_needs():
    class NoTokenizer(Backbone):
        modality = "text"
        kind = "test"

    with pytest.raises(FinetuneError, match="must provide tokenize, pad_token_id"):
        modality_of("text").check_backbone(NoTokenizer())
    with pytest.raises(FinetuneError, match="does not tokenize"):
        NoTokenizer().tokenize(["a"], 8)
    with pytest.raises(FinetuneError, match="cannot take image inputs"):
        modality_of("image").check_backbone(NoTokenizer())


@pytest.mark.parametrize("name", MODALITIES.names())
def test_recipe_fields_a_modality_cannot_honour_are_refused(name):
    kind = modality_of(name)
    recipe = Recipe.from_dict({"train": {"mixup_alpha": 0.2}})
    if kind.blends:
        kind.check_recipe(recipe)
    else:
        with pytest.raises(RecipeError, match="train.mixup_alpha: mixup and cutmix blend images"):
            kind.check_recipe(recipe)


def test_defaults_come_from_the_modality():
    from finetunekit.run.defaults import resolve

    for name in MODALITIES.names():
        kind = modality_of(name)
        if not kind.single_backbone:  # its task type's own recipe holds the defaults (tested there)
            continue
        resolved = resolve(Recipe(), name)
        assert resolved.strategy.name == kind.default_strategy
        expected = {**kind.train_defaults, **kind.strategy_train_defaults.get(kind.default_strategy, {})}
        assert all(getattr(resolved.train, k) == v for k, v in expected.items())


# -- no modality compared by name outside modalities/ and tasks/ ------------------------------------

# Each a documented exception: "file:text on the line" that may stay.
ALLOWED: dict[str, str] = {
    # zero-config's strategy rules were measured per modality (docs/automation.md); dense layouts are images
    "choose/autoconfig.py": 'if modality == "image":',
}


def _name_checks(root: Path = SRC) -> list[str]:
    names = "|".join(map(re.escape, MODALITIES.names()))
    patterns = [
        rf"""[=!]=\s*["']({names})["']""",  # x == "text"
        rf"""["']({names})["']\s*[=!]=""",  # "text" == x
        r"""modality\s+(not\s+)?in\s*[\(\[\{]""",  # modality in ("image", ...)
        rf"""\{{\s*["']({names})["']\s*:""",  # a table keyed by modality: {"image": ...}
    ]
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in ("modalities", "tasks"):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if any(re.search(p, line) for p in patterns):
                if ALLOWED.get(str(rel)) and ALLOWED[str(rel)] in line:
                    continue
                found.append(f"{rel}:{number}: {line.strip()}")
    return found


def test_no_modality_is_compared_by_name_outside_its_module():
    found = _name_checks()
    assert not found, "ask the modality (finetunekit.modalities) instead of comparing its name:\n" + "\n".join(found)


def test_the_name_check_sees_a_comparison(tmp_path):
    # the check is only worth something if it finds what it looks for
    (tmp_path / "x.py").write_text('if backbone.modality == "text":\n    pass\nDEFAULTS = {"image": 1}\nok = {"modality": "image"}\n')
    (tmp_path / "modalities").mkdir()
    (tmp_path / "modalities" / "y.py").write_text('if name == "text":\n    pass\n')
    assert [line.split(":")[1] for line in _name_checks(tmp_path)] == ["1", "3"]

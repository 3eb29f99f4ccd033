"""Frozen-feature cache: a cached run trains the same head as an uncached one, a second run reads the
features back, and anything the features depend on changes the key."""

from __future__ import annotations

import os

import pytest
import torch

from conftest import tiny_image_recipe, tiny_text_recipe
from finetunekit import train
from finetunekit.run import features
from finetunekit.use.loading import load_model
from finetunekit.run.features import FeatureCache, cache_key


def _head(run_dir):
    model, _ = load_model(run_dir)
    return {k: v for k, v in model.state_dict().items() if k.startswith("head.")}


def _cache_files():
    return sorted(p.name for p in FeatureCache.default().root.glob("*.safetensors"))


def _assert_close(a: dict, b: dict, tol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=tol, rtol=tol), f"{k} differs by {(a[k] - b[k]).abs().max():g}"


def test_cached_linear_probe_equals_uncached_with_augmented_views(image_data, tmp_path):
    # With as many cached views as frozen epochs, every epoch sees exactly the augmentation an
    # uncached run draws, so the trained head is the same up to float summation order.
    common = {"augment": "light"}
    plain = train(tiny_image_recipe(image_data, data={**common, "feature_cache": False}, strategy={"name": "linear_probe"}), output=tmp_path / "plain", quiet=True)
    cached = train(tiny_image_recipe(image_data, data={**common, "cache_views": 2}, strategy={"name": "linear_probe"}), output=tmp_path / "cached", quiet=True)
    assert len(_cache_files()) == 3  # two training views and the validation set
    _assert_close(_head(plain.run_dir), _head(cached.run_dir))
    assert [h["val_accuracy"] for h in plain.history] == [h["val_accuracy"] for h in cached.history]


def test_second_run_reads_the_cache(image_data, tmp_path, monkeypatch, capsys):
    recipe = tiny_image_recipe(image_data, strategy={"name": "linear_probe"})
    first = train(recipe, output=tmp_path / "a")
    assert "0 of 2 sets read from the cache" in capsys.readouterr().out
    files = _cache_files()
    assert len(files) == 2

    def boom(*a, **k):
        raise AssertionError("features were recomputed although cached")

    monkeypatch.setattr(features, "compute_features", boom)
    second = train(recipe.with_overrides(["train.epochs=3"]), output=tmp_path / "b")  # a new trial, same features
    assert "2 of 2 sets read from the cache" in capsys.readouterr().out
    assert _cache_files() == files
    assert second.metrics["epochs_run"] == 3


def test_key_changes_with_data_content_weights_and_view(image_data, tmp_path):
    recipe = tiny_image_recipe(image_data, strategy={"name": "linear_probe"})
    train(recipe, output=tmp_path / "a", quiet=True)
    before = set(_cache_files())
    # one training image's bytes change: its set gets a new key, the validation set's stays
    victim = sorted((image_data).rglob("*.png"))[0]
    data = bytearray(victim.read_bytes())
    copy = tmp_path / "data"
    import shutil

    shutil.copytree(image_data, copy)
    target = copy / victim.relative_to(image_data)
    target.write_bytes(bytes(data) + b"\0")  # trailing byte: same pixels, different content
    train(recipe.with_overrides([f"data.train={copy}"]), output=tmp_path / "b", quiet=True)
    after = set(_cache_files())
    assert len(after - before) >= 1
    assert cache_key({"a": 1, "view": 0}) != cache_key({"a": 1, "view": 1})


def test_damaged_cache_entry_is_recomputed(image_data, tmp_path):
    recipe = tiny_image_recipe(image_data, strategy={"name": "linear_probe"})
    first = train(recipe, output=tmp_path / "a", quiet=True)
    for name in _cache_files():
        path = FeatureCache.default().root / name
        path.write_bytes(path.read_bytes()[:40])  # truncated
    second = train(recipe, output=tmp_path / "b", quiet=True)
    _assert_close(_head(first.run_dir), _head(second.run_dir))
    assert all(os.path.getsize(FeatureCache.default().root / n) > 100 for n in _cache_files())


@pytest.mark.parametrize("modality", ["image", "text"])
def test_freeze_then_unfreeze_uses_cache_for_head_epochs_only(modality, image_data, text_data, tiny_bert, tmp_path, capsys):
    strategy = {"name": "freeze_then_unfreeze", "freeze_epochs": 1}
    if modality == "image":
        make = lambda **kw: tiny_image_recipe(image_data, strategy=strategy, **kw)  # noqa: E731
    else:
        make = lambda **kw: tiny_text_recipe(text_data, tiny_bert, strategy=strategy, **kw)  # noqa: E731
    # SGD: Adam turns float-noise differences in near-zero gradients into lr-sized steps, which
    # would hide a real difference behind a loose tolerance
    t = {"epochs": 2, "restore_best": False, "optimizer": "sgd"}
    cached = train(make(train=t), output=tmp_path / "cached")
    assert "1 of 2 epochs train the head on cached backbone features" in capsys.readouterr().out
    plain = train(make(train=t, data={"feature_cache": False}), output=tmp_path / "plain", quiet=True)
    a, _ = load_model(cached.run_dir)
    b, _ = load_model(plain.run_dir)
    _assert_close(a.state_dict(), b.state_dict(), tol=1e-4)


def test_full_strategy_never_caches(image_data, tmp_path):
    train(tiny_image_recipe(image_data, strategy={"name": "full"}), output=tmp_path / "run", quiet=True)
    assert _cache_files() == []


def test_unwritable_cache_warns_and_trains(image_data, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("FINETUNEKIT_CACHE_DIR", str(blocker / "cache"))
    result = train(tiny_image_recipe(image_data, strategy={"name": "linear_probe"}), output=tmp_path / "run", quiet=True)
    assert "warning: feature cache: could not write" in capsys.readouterr().err
    assert (result.run_dir / "model.safetensors").is_file()


def test_background_reads_ahead_and_passes_errors_on():
    from finetunekit.core.errors import DataError

    assert list(features.background(iter(range(7)))) == list(range(7))

    def failing():
        yield 1
        raise DataError("x.jpg: cannot read image")

    seen = []
    with pytest.raises(DataError, match="x.jpg"):
        for item in features.background(failing()):
            seen.append(item)
    assert seen == [1]
    consumer = features.background(iter(range(1000)), depth=2)
    assert next(consumer) == 0
    consumer.close()  # stopping early ends the reading thread

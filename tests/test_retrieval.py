"""Image-text retrieval: the metrics by hand, the loss, the recipe, a tiny dual encoder trained,
resumed, loaded, indexed and searched, and bad input named by its row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from finetunekit.cli import main
from finetunekit.core.errors import DataError, FinetuneError, RecipeError
from finetunekit.retrieval import RetrievalRecipe
from finetunekit.retrieval.data import read_pairs
from finetunekit.retrieval.metrics import paired_bootstrap, retrieval_metrics, retrieval_ranks
from finetunekit.retrieval.model import contrastive_loss

# colour -> a word the tiny BERT of conftest knows
COLOURS = {"warm": (220, 40, 30), "cold": (30, 60, 220), "bright": (40, 200, 60), "grim": (60, 60, 60)}
FILL = ["the", "a", "very", "quite"]


def make_pairs(root: Path, name: str, per_colour: int, seed: int) -> Path:
    """A table of small solid-colour pictures (with noise), two captions each naming the colour."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = ["image\tcaption"]
    for word, rgb in COLOURS.items():
        for i in range(per_colour):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
            file = f"images/{name}_{word}_{i}.png"
            Image.fromarray(pixels).save(root / file)
            for j in range(2):
                lines.append(f"{file}\t{FILL[(i + j) % 4]} {word} {FILL[(i + 2 * j + 1) % 4]} story")
    table = root / f"{name}.tsv"
    table.write_text("\n".join(lines) + "\n")
    return table


@pytest.fixture(scope="module")
def pairs_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pairs")
    make_pairs(root, "train", 6, 0)
    make_pairs(root, "val", 2, 1)
    return root


def tiny_recipe(pairs_data: Path, tiny_bert: Path, **sections) -> RetrievalRecipe:
    raw = {
        "task": {"type": "retrieval", "embed_dim": 16},
        "model": {"image_backbone": "timm:test_efficientnet", "text_backbone": f"hf:{tiny_bert}", "pretrained": False, "image_size": 32},
        "data": {"train": str(pairs_data / "train.tsv"), "val": str(pairs_data / "val.tsv"), "max_length": 16},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "head_lr": 1e-2, "seed": 0},
    }
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return RetrievalRecipe.from_dict(raw)


# -- metrics by hand ---------------------------------------------------------------------------------


def test_recall_by_hand_with_several_captions_per_image():
    # 3 images on the axes of R^3; 5 captions: image 0 has captions 0, 1; image 1 has 2, 3; image 2 has 4
    images = np.eye(3, dtype=np.float32)
    texts = np.array([
        [0.9, 0.1, 0.0],   # caption 0 (image 0): nearest image 0 -> rank 1
        [0.0, 0.8, 0.2],   # caption 1 (image 0): images by score 1, 2, 0 -> rank 3
        [0.1, 0.0, 0.9],   # caption 2 (image 1): images 2, 0, 1 -> rank 3
        [0.2, 0.7, 0.1],   # caption 3 (image 1): image 1 first -> rank 1
        [0.5, 0.4, 0.3],   # caption 4 (image 2): images 0, 1, 2 -> rank 3
    ], dtype=np.float32)
    image_of = [0, 0, 1, 1, 2]
    ranks = retrieval_ranks(images, texts, image_of)
    assert ranks["t2i"].tolist() == [1, 3, 3, 1, 3]
    # image 0 scores captions 0.9, 0.0, 0.1, 0.2, 0.5: its caption 0 is first -> 1
    # image 1 scores 0.1, 0.8, 0.0, 0.7, 0.4: caption 1 (not its own) then caption 3 (its own) -> 2
    # image 2 scores 0.0, 0.2, 0.9, 0.1, 0.3: captions 2, 4 -> its caption 4 is second -> 2
    assert ranks["i2t"].tolist() == [1, 2, 2]
    m = retrieval_metrics(ranks)
    assert m["t2i_r1"] == pytest.approx(2 / 5) and m["t2i_r5"] == 1.0 and m["t2i_median_rank"] == 3
    assert m["i2t_r1"] == pytest.approx(1 / 3) and m["i2t_r5"] == 1.0 and m["i2t_median_rank"] == 2
    assert m["images"] == 3 and m["captions"] == 5


def test_ties_count_against_the_query():
    ranks = retrieval_ranks(np.ones((4, 2), np.float32), np.ones((4, 2), np.float32), [0, 1, 2, 3])
    assert ranks["t2i"].tolist() == [4, 4, 4, 4] and ranks["i2t"].tolist() == [4, 4, 4, 4]


def test_paired_bootstrap_sees_a_clear_difference():
    a = np.full(400, 20)
    b = np.where(np.arange(400) % 2 == 0, 1, 20)
    result = paired_bootstrap(a, b, k=1)
    assert result["difference"] == pytest.approx(0.5) and result["low"] > 0.4 and result["p_value"] < 0.01


# -- the loss ----------------------------------------------------------------------------------------


def test_loss_is_symmetric_and_rewards_matching_pairs():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(10.0)
    assert contrastive_loss(img, txt, scale).item() == pytest.approx(contrastive_loss(txt, img, scale).item(), abs=1e-6)
    matched = contrastive_loss(img, img, scale).item()
    assert matched < contrastive_loss(img, txt, scale).item()
    # by hand for two pairs: logits [[s, 0], [0, s]] -> each row's cross-entropy is log(1 + e^-s)
    eye = torch.eye(2)
    assert contrastive_loss(eye, eye, torch.tensor(2.0)).item() == pytest.approx(float(np.log1p(np.exp(-2.0))), rel=1e-5)
    # label smoothing 0.2 over two rows: targets (0.9, 0.1) -> 0.9 log(1 + e^-s) + 0.1 (s + log(1 + e^-s))
    smoothed = 0.9 * np.log1p(np.exp(-2.0)) + 0.1 * (2.0 + np.log1p(np.exp(-2.0)))
    assert contrastive_loss(eye, eye, torch.tensor(2.0), 0.2).item() == pytest.approx(float(smoothed), rel=1e-5)


# -- recipe and data ---------------------------------------------------------------------------------


def test_recipe_fields_are_checked_by_name():
    with pytest.raises(RecipeError, match=r"^strategy.name: 'lot' is not a retrieval strategy.*did you mean 'lit'"):
        RetrievalRecipe.from_dict({"task": {"type": "retrieval"}, "strategy": {"name": "lot"}})
    with pytest.raises(RecipeError, match=r"^model.backbone: not a field"):
        RetrievalRecipe.from_dict({"task": {"type": "retrieval"}, "model": {"backbone": "bundled:minilm_l6"}})
    with pytest.raises(RecipeError, match="train.batch_size"):
        RetrievalRecipe.from_dict({"task": {"type": "retrieval"}, "train": {"batch_size": 1}})
    recipe = RetrievalRecipe().with_overrides(["task.embed_dim=64", "strategy.name=full"])
    assert recipe.task.embed_dim == 64 and recipe.strategy.name == "full" and not recipe.strategy.image_locked


def test_pairs_group_captions_by_image(pairs_data):
    pairs = read_pairs(pairs_data / "train.tsv")
    assert len(pairs) == 48 and len(pairs.images) == 24
    assert all(len(g) == 2 for g in pairs.captions_of())


def test_missing_caption_column_and_missing_image_are_named(pairs_data, tmp_path):
    with pytest.raises(DataError, match=r"no column 'text' \(data.caption_column\)"):
        read_pairs(pairs_data / "train.tsv", caption_column="text")
    table = tmp_path / "t.tsv"
    table.write_text("image\tcaption\nimages/a.png\ta dog\n")
    with pytest.raises(DataError, match=r"t.tsv:2: image not found: .*a.png$"):
        read_pairs(table)
    (tmp_path / "images").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    table.write_text("image\tcaption\nimages/a.png\ta dog\nimages/a.png\t \n")
    with pytest.raises(DataError, match=r"t.tsv:3: empty 'caption' cell"):
        read_pairs(table)


# -- training ----------------------------------------------------------------------------------------


def test_lit_trains_from_the_feature_cache_without_running_the_image_tower(pairs_data, tiny_bert, tmp_path, capsys, monkeypatch):
    from finetunekit.retrieval.train import train

    recipe = tiny_recipe(pairs_data, tiny_bert)
    first = train(recipe, output=tmp_path / "a", quiet=True)
    assert {"i2t_r1", "t2i_r10", "i2t_median_rank", "t2i_r1_ci"} <= set(first.metrics)
    # a second run with the same image tower reads every image feature from the cache: the tower's
    # forward never runs (not in the epochs, not in validation)
    from timm.models.efficientnet import EfficientNet

    calls = []
    original = EfficientNet.forward_features
    monkeypatch.setattr(EfficientNet, "forward_features", lambda self, x: calls.append(1) or original(self, x))
    second = train(recipe, output=tmp_path / "b")
    out = capsys.readouterr().out
    assert "batch size 8: 7 in-batch negatives per query" in out and "3 batches per epoch" in out
    assert "2 of 2 sets read from the cache" in out
    assert calls == []
    second.model.image.forward_features({"pixel_values": torch.zeros(1, 3, 32, 32)})
    assert calls == [1]  # the patch does see the tower run
    assert second.metrics["t2i_r1"] == first.metrics["t2i_r1"]


def test_resume_mid_epoch_gives_the_uninterrupted_weights(pairs_data, tiny_bert, tmp_path):
    from safetensors.torch import load_file

    from finetunekit.retrieval.train import train

    recipe = tiny_recipe(pairs_data, tiny_bert, strategy={"name": "full"})
    train(recipe, output=tmp_path / "straight", quiet=True)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, output=tmp_path / "stopped", quiet=True, stop_after_steps=4)  # epoch 2, batch 1
    assert json.loads((tmp_path / "stopped" / "checkpoint" / "state.json").read_text())["batch"] == 1
    train(recipe, output=tmp_path / "stopped", quiet=True, resume=True)
    a, b = load_file(str(tmp_path / "straight" / "model.safetensors")), load_file(str(tmp_path / "stopped" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    history = [json.loads(line) for line in (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2]


# -- using a run: load, index, search, zero-shot -------------------------------------------------------


@pytest.fixture(scope="module")
def lit_run(pairs_data, tiny_bert, tmp_path_factory) -> Path:
    from finetunekit.retrieval.train import train

    recipe = tiny_recipe(pairs_data, tiny_bert, data={"test": str(pairs_data / "val.tsv")}, train={"epochs": 3})
    return train(recipe, output=tmp_path_factory.mktemp("lit") / "run", quiet=True).run_dir


def test_loaded_run_embeds_as_in_training_and_writes_its_files(lit_run, pairs_data):
    import finetunekit

    model = finetunekit.load(lit_run)
    for name in ("report.html", "README.md", "ranks.json", "examples.json", "recipe.yaml", "text_backbone"):
        assert (lit_run / name).exists(), name
    metrics = json.loads((lit_run / "metrics.json").read_text())
    again = model.evaluate(pairs_data / "val.tsv")
    assert again["t2i_r1"] == pytest.approx(metrics["test_t2i_r1"]) and again["i2t_r5"] == pytest.approx(metrics["test_i2t_r5"])
    emb = model.embed_text(["the warm story", "a cold plot"])
    assert emb.shape == (2, 16) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    with pytest.raises(DataError, match="text 2: empty text"):
        model.embed_text(["fine", "  "])


def test_index_build_search_and_resume(lit_run, pairs_data, tmp_path, capsys, monkeypatch):
    from finetunekit.retrieval import index as index_module
    from finetunekit.retrieval.index import Index, build_index

    images = pairs_data / "images"
    monkeypatch.setattr(index_module, "CHUNK", 8)
    # interrupted after two chunks: the rerun reads them back and embeds the rest
    from finetunekit.retrieval.api import RetrievalModel

    model = RetrievalModel(lit_run)
    original, calls = model.embed_images, []

    def failing(items, batch_size=64, quiet=True):
        calls.append(len(items))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(items, batch_size)

    monkeypatch.setattr(model, "embed_images", failing)
    with pytest.raises(KeyboardInterrupt):
        build_index(lit_run, images, tmp_path / "idx", quiet=True, model=model)
    with pytest.raises(FinetuneError, match="not finished"):
        Index.open(tmp_path / "idx")
    monkeypatch.setattr(model, "embed_images", original)
    result = build_index(lit_run, images, tmp_path / "idx", quiet=True, model=model)
    assert result["count"] == 32 and result["resumed"] == 16
    index = Index.open(tmp_path / "idx")
    assert len(index) == 32 and not (tmp_path / "idx" / "parts").exists()
    # the index answers as brute force over the same embeddings does
    all_emb = original(index.items)
    query = model.embed_text(["the warm story"])
    expected = [index.items[i] for i in np.argsort(-(all_emb @ query[0]))[:5]]
    assert [p for p, _ in index.search(query, top=5)[0]] == expected
    assert main(["search", str(tmp_path / "idx"), "the warm story", "--top", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[0].split()[2] == expected[0] and "of 32 images" in lines[-1]
    picture = index.items[0]
    assert main(["search", str(tmp_path / "idx"), "--image", picture, "--top", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["path"] == picture  # an image is its own nearest neighbour


def test_search_refusals_are_one_line(lit_run, pairs_data, tmp_path, capsys):
    from finetunekit.retrieval.index import build_index

    build_index(lit_run, pairs_data / "images", tmp_path / "idx", quiet=True)
    cases = [
        (["search", str(tmp_path / "idx")], "give a text query or --image"),
        (["search", str(tmp_path / "idx"), "dog", "--top", "0"], "--top: expected at least 1"),
        (["search", str(tmp_path / "nothing"), "dog"], "not a finetunekit index"),
        (["search", str(tmp_path / "idx"), "--image", str(tmp_path / "no.jpg")], "image not found"),
        (["index", str(lit_run), str(pairs_data / "images"), "--output", str(tmp_path / "idx")], "a finished index is there already"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    (tmp_path / "idx" / "index.json").write_text(json.dumps({**meta, "weights_sha256": "0" * 64}))
    assert main(["search", str(tmp_path / "idx"), "dog"]) == 2
    assert "built with other weights" in capsys.readouterr().err
    (tmp_path / "idx" / "index.json").write_text(json.dumps({**meta, "format_version": 99}))
    assert main(["search", str(tmp_path / "idx"), "dog"]) == 2
    assert "index format 99" in capsys.readouterr().err
    # an index whose run is gone: nothing can embed the query as the index's images were embedded
    (tmp_path / "idx" / "index.json").write_text(json.dumps({**meta, "run_dir": str(tmp_path / "moved")}))
    assert main(["search", str(tmp_path / "idx"), "dog"]) == 2
    err = capsys.readouterr().err.strip()
    assert "which is no longer there" in err and "\n" not in err, err
    # nothing to index is refused when building; a query to an index that holds no vectors anyway
    (tmp_path / "none.tsv").write_text("image\n")
    assert main(["index", str(lit_run), str(tmp_path / "none.tsv"), "--output", str(tmp_path / "empty"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "none.tsv: no data rows" in err and "\n" not in err, err
    import faiss

    (tmp_path / "empty").mkdir(exist_ok=True)
    faiss.write_index(faiss.IndexFlatIP(meta["embed_dim"]), str(tmp_path / "empty" / "vectors.faiss"))
    (tmp_path / "empty" / "items.json").write_text("[]")
    (tmp_path / "empty" / "index.json").write_text(json.dumps({**meta, "count": 0}))
    for argv in (["search", str(tmp_path / "empty"), "dog"], ["search", str(tmp_path / "empty"), "--image", str(pairs_data / "images" / "val_warm_0.png")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "the index is empty" in err and "\n" not in err, err


@pytest.mark.parametrize(("rows", "message"), [
    ("images/val_warm_0.png\twarm story\n\ta caption without its image\n", r"t.tsv:3: empty 'image' cell \(every caption needs its image\)"),
    ("images/val_warm_0.png\twarm story\nimages/absent.png\tcold story\n", r"t.tsv:3: image not found: .*absent.png"),
    ("images/val_warm_0.png\twarm story\nimages/val_cold_0.png\t  \n", r"t.tsv:3: empty 'caption' cell"),
    ("images/val_warm_0.png\twarm story\nimages/copy.png\twarm again\n", r"copy.png and .*val_warm_0.png are the same image under two paths"),
], ids=["caption-without-image", "image-not-there", "empty-caption", "one-image-two-paths"])
def test_bad_training_table_is_one_line_and_exit_2(rows, message, pairs_data, tiny_bert, tmp_path, capsys):
    """The command line's answer to each bad table: one line naming the file and row, status 2,
    before any tower is loaded, and no run directory left behind."""
    import re
    import shutil

    import yaml

    shutil.copytree(pairs_data / "images", tmp_path / "images")
    shutil.copy(tmp_path / "images" / "val_warm_0.png", tmp_path / "images" / "copy.png")
    (tmp_path / "t.tsv").write_text("image\tcaption\n" + rows)
    recipe = tiny_recipe(pairs_data, tiny_bert, data={"train": str(tmp_path / "t.tsv")})
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict()))
    assert main(["train", str(tmp_path / "recipe.yaml"), "--output", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(message, err) and "\n" not in err, err
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_zero_shot_predict_and_evaluate_on_class_folders(lit_run, tmp_path, capsys):
    from PIL import Image

    for word, rgb in list(COLOURS.items())[:2]:
        (tmp_path / "folder" / word).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (32, 32), rgb).save(tmp_path / "folder" / word / f"{i}.png")
    assert main(["predict", str(lit_run), "--classes", "warm,cold", str(tmp_path / "folder" / "warm" / "0.png"), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["label"] in ("warm", "cold") and sum(answer["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    assert main(["evaluate", str(lit_run), str(tmp_path / "folder"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["examples"] == 6 and 0 <= metrics["accuracy"] <= 1 and metrics["classes"] == ["cold", "warm"]
    assert main(["predict", str(lit_run), "--classes", "warm", str(tmp_path / "folder" / "warm" / "0.png")]) == 2
    assert "at least two" in capsys.readouterr().err


def test_compare_is_a_paired_bootstrap_over_the_same_queries(lit_run, capsys):
    assert main(["compare", str(lit_run), str(lit_run)]) == 0
    out = capsys.readouterr().out
    assert "text->image R@1: +0.000" in out and "paired bootstrap over the test queries" in out


def test_search_service_answers_and_refuses_bad_requests(lit_run, pairs_data, tmp_path):
    import base64
    import threading
    import time

    import uvicorn

    from finetunekit.retrieval.index import Index, build_index
    from finetunekit.use.serving.app import bind
    from finetunekit.use.serving.search import create_search_app
    from service_client import call, post_json

    build_index(lit_run, pairs_data / "images", tmp_path / "idx", quiet=True)
    app = create_search_app(Index.open(tmp_path / "idx"))
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        status, answer = post_json(url, {"text": "the warm story", "top": 3}, "/search")
        assert status == 200 and [r["rank"] for r in answer["results"]] == [1, 2, 3]
        status, picture = call(url, "GET", answer["results"][0]["url"])
        assert status == 200
        image = base64.b64encode((pairs_data / "images" / "val_cold_0.png").read_bytes()).decode()
        status, answer = post_json(url, {"image": image, "top": 1}, "/search")
        assert status == 200 and answer["results"][0]["path"].endswith("val_cold_0.png")
        for body, code, message in [
            (b"{not json", 400, "not valid JSON"), ({"text": "x", "image": image}, 422, "one of 'text'"), ({"query": "x"}, 422, "unknown field"),
            ({"text": "  "}, 422, "non-empty"), ({"text": "dog", "top": 0}, 422, "top:"), ({"image": "!!"}, 422, "not valid base64"),
            ({"image": base64.b64encode(b"not a picture").decode()}, 422, "cannot decode"),
        ]:
            status, answer = post_json(url, body, "/search")
            assert status == code and message in answer["error"], (body, answer)
        status, page = call(url, "GET", "/")
        assert status == 200 and 'id="q"' in page and "/search" in page
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def test_zero_config_trains_a_caption_table_given_alone(pairs_data, tiny_bert, tmp_path, capsys):
    from finetunekit.retrieval.recipe import zero_config

    recipe, reasons = zero_config(pairs_data / "train.tsv")
    assert recipe.strategy.name == "lit" and recipe.data.caption_column == "caption" and "image-text retrieval" in reasons[0]
    assert zero_config(pairs_data / "images" / "train_warm_0.png") is None
    argv = ["train", str(pairs_data / "train.tsv"), "--output", str(tmp_path / "run"), "-q",
            "--set", "model.image_backbone=timm:test_efficientnet", "--set", f"model.text_backbone=hf:{tiny_bert}",
            "--set", "model.pretrained=false", "--set", "model.image_size=32", "--set", "train.epochs=1", "--set", "train.batch_size=8"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "no recipe: chose from the data" in out and (tmp_path / "run" / "metrics.json").is_file()
    assert main(["train", str(pairs_data / "train.tsv"), "--output", str(tmp_path / "run2"), "--set", "data.caption_column=text"]) == 2
    assert "no column 'text' (data.caption_column)" in capsys.readouterr().err


FLICKR8K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "image_text" / "flickr8k"


@pytest.mark.slow
@pytest.mark.skipif(not FLICKR8K.is_dir(), reason=f"Flickr8k not found at {FLICKR8K}")
def test_lit_on_a_flickr8k_slice_beats_chance_by_far(tmp_path):
    """The bundled towers, LiT, 200 training images and 60 validation images (300 captions)."""
    from finetunekit.retrieval.train import train

    lines = (FLICKR8K / "val.tsv").read_text().splitlines()
    (tmp_path / "val.tsv").write_text("\n".join(lines[:301]) + "\n")  # the first 60 images, 5 captions each
    recipe = RetrievalRecipe.from_dict({
        "task": {"type": "retrieval", "embed_dim": 128},
        "data": {"train": str(FLICKR8K / "train.tsv"), "val": str(tmp_path / "val.tsv"), "image_root": str(FLICKR8K),
                 "max_train_images": 200, "max_length": 32},
        "train": {"epochs": 3, "batch_size": 64, "lr": 1e-4},
    })
    metrics = train(recipe, output=tmp_path / "run", quiet=True).metrics
    assert metrics["images"] == 60 and metrics["captions"] == 300
    # chance: R@10 = 10/60 for text->image over 60 images
    assert metrics["t2i_r10"] > 0.3 and metrics["i2t_r10"] > 0.3, metrics


@pytest.mark.parametrize("strategy", ["lora_text", "projections"])
def test_other_strategies_train_what_they_declare(strategy, pairs_data, tiny_bert, tmp_path, capsys):
    import finetunekit
    from finetunekit.retrieval.train import train

    recipe = tiny_recipe(pairs_data, tiny_bert, strategy={"name": strategy, "lora_rank": 2}, train={"epochs": 1})
    from finetunekit.retrieval.train import build_towers

    torch.manual_seed(0)  # as train() seeds before building the (random) towers
    before = {k: v.clone() for k, v in build_towers(recipe).state_dict().items()}
    result = train(recipe, output=tmp_path / "run")
    out = capsys.readouterr().out
    state = result.model.state_dict()
    assert not any("lora" in k for k in state)  # adapters merged into the saved weights
    image_same = all(torch.equal(before[k], state[k]) for k in before if k.startswith("image."))
    text_same = all(torch.equal(before[k], state[k]) for k in before if k.startswith("text."))
    assert image_same  # the image tower stays locked in both
    assert text_same == (strategy == "projections")  # merged LoRA changes the text weights; projections leave them
    if strategy == "projections":
        assert "epochs run the projections only" in out
    loaded = finetunekit.load(result.run_dir)
    assert loaded.embed_text(["the warm story"]).shape == (1, 16)


@pytest.mark.parametrize("fmt", ["hf", "onnx"])
def test_export_of_each_tower_matches_the_run(lit_run, fmt, tmp_path, capsys):
    assert main(["export", str(lit_run), "--format", fmt, "--output", str(tmp_path / fmt)]) == 0
    assert "parity: largest difference" in capsys.readouterr().out
    assert (tmp_path / fmt / ("config.json" if fmt == "hf" else "image_encoder.onnx")).is_file()
    assert main(["export", str(lit_run), "--format", "timm", "--output", str(tmp_path / "t")]) == 2


def test_pairs_from_a_dataframe_with_paths_and_bytes(pairs_data):
    import pandas as pd

    first = pairs_data / "images" / "val_warm_0.png"
    second = pairs_data / "images" / "val_cold_0.png"
    frame = pd.DataFrame({"image": [str(first), str(first), second.read_bytes()], "caption": ["a warm story", "warm", "the cold plot"]})
    pairs = read_pairs(frame)
    assert len(pairs) == 3 and len(pairs.images) == 2 and pairs.image_of == [0, 0, 1]
    with pytest.raises(DataError, match=r"row 1: empty 'caption' cell"):
        read_pairs(pd.DataFrame({"image": [str(first), str(second)], "caption": ["fine", ""]}))


def test_one_image_under_two_paths_is_refused(pairs_data, tiny_bert, tmp_path, capsys):
    import shutil

    (tmp_path / "images").mkdir()
    shutil.copy(pairs_data / "images" / "val_warm_0.png", tmp_path / "images" / "a.png")
    shutil.copy(pairs_data / "images" / "val_warm_0.png", tmp_path / "images" / "b.png")
    shutil.copy(pairs_data / "images" / "val_cold_0.png", tmp_path / "images" / "c.png")
    (tmp_path / "t.tsv").write_text("image\tcaption\nimages/a.png\twarm\nimages/b.png\twarm story\nimages/c.png\tcold\n")
    recipe = tiny_recipe(pairs_data, tiny_bert, data={"train": str(tmp_path / "t.tsv")})
    from finetunekit.retrieval.train import train

    with pytest.raises(DataError, match=r"b.png and .*a.png are the same image under two paths"):
        train(recipe, output=tmp_path / "run", quiet=True)


def test_head_epochs_train_the_projections_before_the_text_tower(pairs_data, tiny_bert, tmp_path, capsys):
    from safetensors.torch import load_file

    from finetunekit.retrieval.train import build_towers, train

    recipe = tiny_recipe(pairs_data, tiny_bert, strategy={"head_epochs": 1})
    torch.manual_seed(0)
    start = build_towers(recipe).state_dict()
    with pytest.raises(KeyboardInterrupt):
        train(recipe, output=tmp_path / "run", quiet=True, stop_after_steps=3)  # the end of the head-only epoch
    mid = load_file(str(tmp_path / "run" / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(start[k], mid[k]) for k in start if k.startswith("text."))  # the text tower waited
    assert not torch.equal(start["text_proj.weight"], mid["text_proj.weight"])
    final = train(recipe, output=tmp_path / "run", quiet=True, resume=True).model.state_dict()
    assert not all(torch.equal(start[k], final[k]) for k in start if k.startswith("text."))
    with pytest.raises(RecipeError, match="strategy.head_epochs: applies to lit and lora_text"):
        tiny_recipe(pairs_data, tiny_bert, strategy={"head_epochs": 1, "name": "full"})


def test_cli_resume_finishes_an_interrupted_retrieval_run(pairs_data, tiny_bert, tmp_path, capsys):
    from finetunekit.retrieval.train import train

    recipe = tiny_recipe(pairs_data, tiny_bert, train={"epochs": 2})
    with pytest.raises(KeyboardInterrupt):
        train(recipe, output=tmp_path / "run", quiet=True, stop_after_steps=2)
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert main(["resume", str(tmp_path / "run"), "-q"]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs_run"] == 2
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_unlocked_text_layers_train_the_top_layers_on_cached_lower_states(pairs_data, tiny_bert, tmp_path, capsys):
    """strategy.unlocked_text_layers: 1 of the tiny BERT's 2 layers: the embeddings and layer 0
    stay as they were, layer 1 trains; the cached states + the top layer give the whole tower's
    features; a resumed run ends with the uninterrupted weights; the run loads and embeds."""
    import finetunekit
    from safetensors.torch import load_file

    from finetunekit.retrieval.encode import lower_text_states
    from finetunekit.retrieval.train import build_towers, train

    recipe = tiny_recipe(pairs_data, tiny_bert, strategy={"unlocked_text_layers": 1})
    torch.manual_seed(0)
    start = build_towers(recipe)
    before = {k: v.clone() for k, v in start.state_dict().items()}
    # parity: the top layer on the cached states = the whole tower, padding and all
    captions = ["the warm story", "a very cold story that goes on", "grim"]
    tokens = start.text.tokenize(captions, 16)
    states, hit = lower_text_states(start.text, tokens, 1, "cpu", str(tmp_path / "cache"), quiet=True)
    assert not hit and states.states.shape == (sum(len(t) for t in tokens["input_ids"]), 32)
    start.eval()
    with torch.no_grad():
        whole = start.text.forward_features(token_batch_of(start, tokens))
        start.unlocked_text_layers = 1
        top = start.text_features(states.batch([0, 1, 2]))
    assert torch.allclose(whole, top, atol=1e-5)

    result = train(recipe, output=tmp_path / "straight")
    out = capsys.readouterr().out
    assert "the text tower's top 1 layers on its cached lower token states" in out
    after = result.model.state_dict()
    lower = [k for k in before if k.startswith("text.") and ".encoder.layer.1." not in k]
    assert lower and all(torch.equal(before[k], after[k]) for k in lower)  # embeddings and layer 0 locked
    assert not all(torch.equal(before[k], after[k]) for k in before if ".encoder.layer.1." in k)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("image."))
    with pytest.raises(KeyboardInterrupt):
        train(recipe, output=tmp_path / "stopped", quiet=True, stop_after_steps=4)
    train(recipe, output=tmp_path / "stopped", quiet=True, resume=True)
    a, b = load_file(str(tmp_path / "straight" / "model.safetensors")), load_file(str(tmp_path / "stopped" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    loaded = finetunekit.load(result.run_dir)
    assert loaded.embed_text(["the warm story"]).shape == (1, 16)
    # LP-FT on top: the head-only epoch's text features come from the top layer on the cached states
    lpft = train(tiny_recipe(pairs_data, tiny_bert, strategy={"unlocked_text_layers": 1, "head_epochs": 1}), output=tmp_path / "lpft", quiet=True)
    assert len(lpft.history) == 2
    with pytest.raises(RecipeError, match="strategy.unlocked_text_layers: applies to lit"):
        tiny_recipe(pairs_data, tiny_bert, strategy={"unlocked_text_layers": 1, "name": "full"})
    with pytest.raises(RecipeError, match="strategy.unlocked_text_layers: 3, but .* has 2 layers"):
        build_towers(tiny_recipe(pairs_data, tiny_bert, strategy={"unlocked_text_layers": 3}))


def token_batch_of(model, tokens):
    from finetunekit.retrieval.encode import token_batch

    return token_batch(tokens, list(range(len(tokens["input_ids"]))), model.text.pad_token_id)


def test_mlp_image_projection_is_saved_reloaded_and_exported(pairs_data, tiny_bert, tmp_path, capsys):
    import finetunekit

    from finetunekit.retrieval.train import train

    recipe = tiny_recipe(pairs_data, tiny_bert, task={"image_projection_hidden": 24, "image_projection_dropout": 0.1},
                         strategy={"name": "projections"}, train={"epochs": 1})
    result = train(recipe, output=tmp_path / "run", quiet=True)
    assert result.model.image_proj[0].weight.shape == (24, result.model.image.num_features)
    loaded = finetunekit.load(result.run_dir)
    image = str(pairs_data / "images" / "val_warm_0.png")
    result.model.eval()
    with torch.no_grad():
        from finetunekit.retrieval.encode import run_image_tower

        feats = run_image_tower(result.model.image, [image], result.model.image.preprocessing(), "cpu", quiet=True)
        expected = result.model.encode_image({"image_features": feats}).numpy()
    assert np.allclose(loaded.embed_images([image]), expected, atol=1e-5)  # dropout off, the MLP rebuilt from finetunekit.json
    assert main(["export", str(result.run_dir), "--format", "onnx", "--output", str(tmp_path / "onnx")]) == 0
    assert "parity: largest difference" in capsys.readouterr().out
    with pytest.raises(RecipeError, match=r"task.image_projection_dropout: expected a number in \[0, 1\)"):
        tiny_recipe(pairs_data, tiny_bert, task={"image_projection_dropout": 1.5})


def test_image_crop_pct_sets_the_towers_crop_keys_the_feature_cache_and_travels_with_the_run(pairs_data, tiny_bert, tmp_path, monkeypatch):
    import finetunekit
    from finetunekit.retrieval.train import train
    from timm.models.efficientnet import EfficientNet

    with pytest.raises(RecipeError, match=r"^model.image_crop_pct: expected a number in \(0, 1\], got 1.5"):
        tiny_recipe(pairs_data, tiny_bert, model={"image_crop_pct": 1.5})
    cache = {"cache_dir": str(tmp_path / "cache"), "test": str(pairs_data / "val.tsv")}
    train(tiny_recipe(pairs_data, tiny_bert, data=cache, train={"epochs": 1}), output=tmp_path / "cropped", quiet=True)
    calls = []
    original = EfficientNet.forward_features
    monkeypatch.setattr(EfficientNet, "forward_features", lambda self, x: calls.append(len(x)) or original(self, x))
    whole = tiny_recipe(pairs_data, tiny_bert, data=cache, model={"image_crop_pct": 1.0}, train={"epochs": 1})
    result = train(whole, output=tmp_path / "whole", quiet=True)
    # the cropped run's features are not reused: every train and val image runs through the tower again
    assert sum(calls) >= 24 + 8
    assert result.model.image.preprocessing()["crop_pct"] == 1.0
    assert json.loads((tmp_path / "cropped" / "preprocessing.json").read_text())["image_tower"]["crop_pct"] < 1  # the backbone's own
    assert json.loads((tmp_path / "whole" / "preprocessing.json").read_text())["image_tower"]["crop_pct"] == 1.0
    loaded = finetunekit.load(tmp_path / "whole")
    assert loaded.evaluate(pairs_data / "val.tsv")["t2i_r1"] == pytest.approx(result.metrics["test_t2i_r1"])
    calls.clear()
    train(whole, output=tmp_path / "whole2", quiet=True)
    assert calls == []  # the same crop again: read from the cache

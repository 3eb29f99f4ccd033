"""Shared fixtures: tiny data sets and tiny models built from configs, so code paths run in seconds.

The real bundled models and ../shared/data are used by a few end-to-end tests, which skip with a
clear reason when the data folder is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import torch

# Tiny models run several times faster on one thread than on two contended ones, and one thread
# makes CPU results bitwise repeatable.
torch.set_num_threads(1)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# session-scoped runs too keep their cached features out of the user's ~/.cache
os.environ["FINETUNEKIT_CACHE_DIR"] = __import__("tempfile").mkdtemp(prefix="finetunekit-test-cache-")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FINETUNEKIT_SHARED_DATA", REPO.parent / "shared" / "data"))
HYMENOPTERA = SHARED_DATA / "images" / "hymenoptera_data"
SST2 = SST2_DIR = SHARED_DATA / "sst2"

@pytest.fixture(autouse=True)
def _feature_cache_dir(tmp_path_factory, monkeypatch):
    # Every test gets its own empty feature cache: no test reads features another one stored, and
    # nothing is written to the user's ~/.cache.
    monkeypatch.setenv("FINETUNEKIT_CACHE_DIR", str(tmp_path_factory.mktemp("feature-cache")))


needs_shared_data = pytest.mark.skipif(
    not HYMENOPTERA.is_dir() or not SST2_DIR.is_dir(),
    reason=f"real datasets not found at {SHARED_DATA} (set FINETUNEKIT_SHARED_DATA to the shared/data folder)",
)

WORDS = {
    "pos": ["good", "great", "fine", "lovely", "superb", "happy", "bright", "warm"],
    "neg": ["bad", "awful", "poor", "sad", "dull", "grim", "cold", "weak"],
}
FILLER = ["the", "film", "was", "very", "and", "quite", "a", "story", "plot", "it"]


def make_image_folder(root: Path, per_class: int = 8, classes=("circle", "square", "stripe"), size: int = 32, seed: int = 0) -> Path:
    """Synthetic but learnable: each class has its own colour and pattern, plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    palette = {0: (220, 40, 40), 1: (40, 200, 60), 2: (40, 60, 220), 3: (200, 200, 40)}
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 60, size=(size, size, 3)).astype(np.uint8)
            img[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = palette[c % 4]
            if c == 2:
                img[::4] = 255
            Image.fromarray(img).save(folder / f"{name}_{i}.png")
    return root


def make_text_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = list(rng.choice(FILLER, size=4)) + [str(rng.choice(WORDS[label]))] + list(rng.choice(FILLER, size=2))
        rows.append((" ".join(words), label))
    return rows


def write_tsv(path: Path, rows: list[tuple[str, str]], header=("sentence", "label")) -> Path:
    path.write_text("\t".join(header) + "\n" + "".join(f"{t}\t{lab}\n" for t, lab in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def image_data(tmp_path_factory) -> Path:
    """root/train/<3 classes>/8 images, root/val/<3 classes>/4 images."""
    root = tmp_path_factory.mktemp("images")
    make_image_folder(root / "train", per_class=8, seed=0)
    make_image_folder(root / "val", per_class=4, seed=1)
    return root


@pytest.fixture(scope="session")
def text_data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("text")
    return write_tsv(root / "train.tsv", make_text_rows(48, 0)), write_tsv(root / "dev.tsv", make_text_rows(16, 1))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with a word-level vocabulary, saved in Hugging Face format."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted({w for ws in WORDS.values() for w in ws} | set(FILLER))
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


def tiny_image_recipe(image_data: Path, **sections):
    from finetunekit import Recipe

    raw = {
        "model": {"backbone": "timm:test_efficientnet", "pretrained": False, "image_size": 32},
        "data": {"train": str(image_data), "augment": "none"},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-2, "head_lr": 1e-2, "seed": 0},
    }
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return Recipe.from_dict(raw)


def tiny_text_recipe(text_data, tiny_bert: Path, **sections):
    from finetunekit import Recipe

    raw = {
        "model": {"backbone": f"hf:{tiny_bert}"},
        "data": {"train": str(text_data[0]), "val": str(text_data[1]), "max_length": 32},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "head_lr": 1e-3, "seed": 0},
    }
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return Recipe.from_dict(raw)


# -- finished runs shared by the report, export and tracker tests -------------------------------------


@pytest.fixture(scope="session")
def image_run(image_data, tmp_path_factory) -> Path:
    """A tiny image run trained 3 epochs at a low learning rate: curves over several epochs, and
    misclassified validation images for the error gallery."""
    from finetunekit import train

    recipe = tiny_image_recipe(image_data, strategy={"name": "full"}, train={"epochs": 3, "lr": 1e-3, "head_lr": 1e-3})
    return train(recipe, output=tmp_path_factory.mktemp("image_run") / "ants-like", quiet=True).run_dir


@pytest.fixture(scope="session")
def text_run(text_data, tiny_bert, tmp_path_factory) -> Path:
    """A tiny text run (mean pooling, the default)."""
    from finetunekit import train

    return train(tiny_text_recipe(text_data, tiny_bert, train={"epochs": 2}), output=tmp_path_factory.mktemp("text_run") / "run", quiet=True).run_dir


def write_tone_clips(folder: Path, count: int, seed: int, rate: int = 16_000) -> Path:
    """folder/<low|high|noise>/clip_<i>.wav: 0.3 to 0.5 s of a 300 Hz tone, a 2 kHz tone, or white
    noise, at random levels, so three classes a tiny encoder can tell apart."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    for name in ("high", "low", "noise"):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            t = np.arange(int(rate * rng.uniform(0.3, 0.5))) / rate
            level = rng.uniform(0.1, 0.5)
            if name == "noise":
                wave = rng.normal(0, level / 2, len(t))
            else:
                wave = level * np.sin(2 * np.pi * (300 if name == "low" else 2000) * t + rng.uniform(0, 6))
            sf.write(folder / name / f"clip_{i}.wav", wave.astype(np.float32), rate)
    return folder


@pytest.fixture(scope="session")
def audio_data(tmp_path_factory) -> Path:
    """root/train/<3 classes>/8 WAV clips, root/val/<3 classes>/4 clips (16 kHz, under 0.5 s)."""
    root = tmp_path_factory.mktemp("audio")
    write_tone_clips(root / "train", 8, 0)
    write_tone_clips(root / "val", 4, 1)
    return root


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory) -> Path:
    """A 2-layer, 64-wide Whisper saved with its feature extractor (80 mel bins, 1-second window):
    ``model.backbone: whisper:<this folder>``."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    config = WhisperConfig(
        vocab_size=96, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_source_positions=50, max_target_positions=16,
        bos_token_id=0, eos_token_id=1, pad_token_id=1, decoder_start_token_id=2, suppress_tokens=None, begin_suppress_tokens=None,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_whisper")
    WhisperForConditionalGeneration(config).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return folder

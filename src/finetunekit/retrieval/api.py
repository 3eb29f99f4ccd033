"""Using a finished retrieval run: embeddings of texts and images, zero-shot classification, metrics.

Example::

    import finetunekit
    model = finetunekit.load("runs/flickr8k")          # a RetrievalModel for a retrieval run
    model.embed_text(["a dog running on the beach"])    # (1, D) float32, unit length
    model.embed_images(["photo.jpg"])                   # (1, D)
    model.classify(["photo.jpg"], ["ants", "bees"])     # [{"label": "bees", "probabilities": {...}}]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import DataError, FinetuneError

# Prompt templates averaged for zero-shot classification (a few of CLIP's ImageNet templates)
TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "a close-up photo of a {}.", "a picture of a {}.", "a photo of many {}.",
             "an image of a {}.")


class RetrievalModel:
    """A retrieval run loaded for use (``finetunekit.load`` gives one for a retrieval run)."""

    def __init__(self, run_dir: str | Path, device: str | None = None) -> None:
        from .run_dir import load_run

        self.run_dir = Path(run_dir)
        self.model, self.info = load_run(run_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)
        self.preprocessing = self.info["preprocessing"]
        self.max_length = int(self.preprocessing["text_tower"]["max_length"])

    @property
    def embed_dim(self) -> int:
        return int(self.info["embed_dim"])

    @torch.no_grad()
    def embed_text(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Unit-length embeddings of ``texts`` (float32, one row each)."""
        from .encode import run_text_tower

        texts = list(texts)
        for number, text in enumerate(texts, start=1):
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"text {number}: empty text")
        if not texts:
            return np.zeros((0, self.embed_dim), np.float32)
        encodings = self.model.text.tokenize(texts, self.max_length)
        feats = run_text_tower(self.model.text, encodings, self.device, batch_size, quiet=True)
        return self.model.encode_text({"text_features": feats.to(self.device)}).cpu().numpy()

    @torch.no_grad()
    def embed_images(self, images: Sequence[Any], batch_size: int = 64, quiet: bool = True) -> np.ndarray:
        """Unit-length embeddings of images: file paths or PIL images."""
        from .encode import run_image_tower

        images = list(images)
        for item in images:
            if not hasattr(item, "convert") and not Path(str(item)).is_file():
                raise DataError(f"image not found: {item}")
        if not images:
            return np.zeros((0, self.embed_dim), np.float32)
        feats = run_image_tower(self.model.image, images, self.preprocessing["image_tower"], self.device, batch_size, quiet=quiet)
        return self.model.encode_image({"image_features": feats.to(self.device)}).cpu().numpy()

    def class_embeddings(self, classes: Sequence[str], templates: Sequence[str] = TEMPLATES) -> np.ndarray:
        """One unit vector per class: the mean of its prompts' embeddings, normalised (CLIP's
        prompt ensembling). Underscores in class names read as spaces."""
        classes = [str(c).strip() for c in classes]
        if len(classes) < 2 or any(not c for c in classes):
            raise FinetuneError(f"--classes: give at least two non-empty class names, got {','.join(classes)!r}")
        if len(set(classes)) != len(classes):
            raise FinetuneError(f"--classes: a class is named twice: {','.join(classes)}")
        prompts = [t.format(c.replace("_", " ")) for c in classes for t in templates]
        emb = self.embed_text(prompts).reshape(len(classes), len(templates), -1).mean(axis=1)
        return emb / np.linalg.norm(emb, axis=1, keepdims=True)

    def classify(self, images: Sequence[Any], classes: Sequence[str], templates: Sequence[str] = TEMPLATES) -> list[dict[str, Any]]:
        """Zero-shot labels: each image's nearest class embedding; probabilities from the model's
        own temperature."""
        weights = self.class_embeddings(classes, templates)
        scores = self.zero_shot_scores(self.embed_images(images), weights)
        return [{"label": classes[int(row.argmax())], "probabilities": {c: round(float(p), 6) for c, p in zip(classes, row, strict=True)}}
                for row in scores]

    def zero_shot_scores(self, image_emb: np.ndarray, class_emb: np.ndarray) -> np.ndarray:
        logits = float(self.model.logit_scale.detach().exp()) * image_emb @ class_emb.T
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def evaluate_zero_shot(self, folder: str | Path, classes: Sequence[str] | None = None) -> dict[str, Any]:
        """Accuracy and macro F1 on a folder of class folders, from the class names alone (the
        folder names, or ``classes`` naming them in the same order)."""
        from sklearn.metrics import accuracy_score, f1_score

        from ..data.readers import _read_image_folder

        examples = _read_image_folder(Path(folder))
        names = sorted(set(examples.labels))
        if classes is not None and sorted(classes) != names:
            raise FinetuneError(f"--classes: {','.join(classes)} are not the class folders of {folder} ({','.join(names)})")
        classes = list(classes or names)
        scores = self.zero_shot_scores(self.embed_images(examples.inputs, quiet=False), self.class_embeddings(classes))
        predicted = [classes[int(i)] for i in scores.argmax(axis=1)]
        return {"accuracy": float(accuracy_score(examples.labels, predicted)),
                "macro_f1": float(f1_score(examples.labels, predicted, average="macro")), "examples": len(predicted),
                "classes": classes, "eval_set": str(folder), "templates": len(TEMPLATES)}

    def evaluate(self, data: Any, image_column: str = "image", caption_column: str = "caption", image_root: str | None = None) -> dict[str, Any]:
        """Recall@1/5/10 both ways and median ranks on an image-caption table, with bootstrap
        intervals over the queries; ``ranks`` holds every query's rank."""
        from .data import read_pairs
        from .metrics import bootstrap_intervals, retrieval_metrics, retrieval_ranks

        pairs = read_pairs(data, image_column, caption_column, image_root)
        img, txt = self.embed_images(pairs.images, quiet=False), self.embed_text(pairs.captions)
        ranks = retrieval_ranks(img, txt, pairs.image_of)
        return {**retrieval_metrics(ranks), **bootstrap_intervals(ranks), "eval_set": pairs.source,
                "ranks": {k: v.tolist() for k, v in ranks.items()}}


def load(run_dir: str | Path, device: str | None = None, **options: Any) -> Any:
    """``finetunekit.load``: a :class:`RetrievalModel` for a retrieval run, else the predictor of
    ``finetunekit.use.predict.load`` (``options``: its ``precision``)."""
    from .run_dir import is_retrieval_run

    if is_retrieval_run(run_dir):
        return RetrievalModel(run_dir, device)
    from ..use.predict import load as load_predictor

    return load_predictor(run_dir, device, **options)

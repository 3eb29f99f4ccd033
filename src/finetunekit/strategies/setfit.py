"""``setfit``: contrastive sentence-pair fine-tuning of the encoder, then the head (SetFit).

Tunstall et al., "Efficient Few-Shot Learning Without Prompts" (2022). Two stages per epoch:

1. **The encoder**, on generated pairs: for each of ``strategy.setfit_iterations`` rounds (R, 20 in
   the paper) every training example is paired once with a random example of its own class (label
   1) and once with a random example of another class (label 0), 2 R N pairs in all. The loss is the
   squared error between the cosine similarity of the two pooled embeddings and the pair's label
   (sentence-transformers' ``CosineSimilarityLoss``), minimised with AdamW at ``train.lr`` (2e-5
   by default, the paper's), batch ``train.batch_size``, linear warmup over the first 10% of the
   steps then linear decay.
2. **The head**: a logistic regression (scikit-learn, as SetFit's default head) on the fine-tuned
   embeddings of the training examples, copied into the model's linear head, so the run is saved,
   reloaded and predicted like any other (a binary model's single weight vector w becomes the two
   rows -w/2 and w/2: the same softmax probabilities).

``strategy.setfit_iterations: 0`` skips stage 1: the head alone on the pretrained encoder's
embeddings, the fastest few-shot baseline (seconds), and the ablation that says how much the pair
stage adds (docs/selection-and-few-shot.md).

Pairs are a function of (train.seed, epoch) alone.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.errors import FinetuneError, check_range
from . import STRATEGIES, Strategy


def generate_pairs(labels: list[int], iterations: int, seed: int) -> list[tuple[int, int, float]]:
    """(i, j, 1.0) same-class and (i, j, 0.0) other-class pairs: one of each per example per round,
    shuffled. A positive partner is another example of the class when there is one."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    if len(by_class) < 2:
        raise FinetuneError("strategy setfit: needs training examples of at least two classes to make negative pairs")
    others = {c: [i for i, label in enumerate(labels) if label != c] for c in by_class}
    pairs = []
    for _ in range(iterations):
        for i, label in enumerate(labels):
            same = by_class[label]
            j = rng.choice(same) if len(same) == 1 else rng.choice([k for k in same if k != i])
            pairs.append((i, j, 1.0))
            pairs.append((i, rng.choice(others[label]), 0.0))
    rng.shuffle(pairs)
    return pairs


def cosine_pair_loss(u: torch.Tensor, v: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between cos(u, v) and the pair labels (CosineSimilarityLoss)."""
    return nn.functional.mse_loss(nn.functional.cosine_similarity(u.float(), v.float(), dim=-1), target)


@STRATEGIES.register("setfit")
class SetFit(Strategy):
    """Contrastive sentence-pair fine-tuning of the encoder, then a logistic-regression head (few-shot text)."""

    @dataclass
    class Options:
        # rounds of pair generation, each pairing every training example once with its own class
        # and once with another (2 x rounds x examples pairs an epoch); 0: no pair stage, only the
        # logistic-regression head on the pretrained encoder's embeddings
        setfit_iterations: int = 20

        def __post_init__(self) -> None:
            check_range("strategy.setfit_iterations", self.setfit_iterations, 0, 100_000)

    sets_linear_head = True  # the head is a logistic regression on pooled embeddings
    needs_single_class = True  # pairs are same-class / different-class
    modalities = frozenset({"text"})  # pairs of sentences; prototype is the image counterpart

    def fit_epoch(self, model: nn.Module, loader: Any, accelerator: Any, **context: Any) -> dict[str, Any]:
        if accelerator.num_processes > 1:
            raise FinetuneError("strategy setfit: runs in one process (its pair loop is not distributed)")
        dataset = loader.dataset
        if getattr(dataset, "encodings", None) is None or dataset.labels is None:
            raise FinetuneError("strategy setfit: is for text backbones (sentence pairs); for images use prototype")
        started = time.perf_counter()
        seed, batch_size, epoch = int(context.get("seed", 0)), int(context.get("batch_size", 16)), int(context.get("epoch", 0))
        pairs = generate_pairs(list(dataset.labels), self.spec.setfit_iterations, seed)
        loss, steps, trace = 0.0, 0, []
        if pairs:  # setfit_iterations 0: the head alone, on the encoder as it is
            loss, steps, trace = self._contrastive(model, dataset, loader.collate_fn, pairs, batch_size, accelerator, epoch)
        self._fit_head(model, dataset, loader.collate_fn, accelerator, seed)
        return {"loss": loss, "samples": len(pairs), "seconds": time.perf_counter() - started, "steps": steps, "trace": trace}

    def _contrastive(self, model, dataset, collate, pairs, batch_size, accelerator, epoch) -> tuple[float, int, list]:
        backbone = model.backbone
        params = [p for p in backbone.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.01)
        batches = [pairs[i : i + batch_size] for i in range(0, len(pairs), batch_size)]
        warmup = max(1, math.ceil(0.1 * len(batches)))

        def rate(step: int) -> float:  # linear warmup, then linear decay to 0
            return (step + 1) / warmup if step < warmup else max(0.0, (len(batches) - step) / max(1, len(batches) - warmup))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
        model.train()
        total, trace = 0.0, []
        for step, chunk in enumerate(batches):
            items = [dataset[i] for i, _, _ in chunk] + [dataset[j] for _, j, _ in chunk]
            batch = {k: v.to(accelerator.device) for k, v in collate(items).items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            target = torch.tensor([y for _, _, y in chunk], device=accelerator.device)
            with accelerator.autocast():
                embeddings = backbone.forward_features(batch)
            loss = cosine_pair_loss(embeddings[: len(chunk)], embeddings[len(chunk) :], target)
            if not torch.isfinite(loss):
                from ..core.errors import DivergenceError

                raise DivergenceError(f"training diverged: the pair loss became {loss.item()} at step {step + 1} of epoch {epoch + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(chunk)
            trace.append({"step": step + 1, "loss": loss.item(), "lr": {"backbone": lr}})
        return total / max(1, len(pairs)), len(batches), trace

    @torch.no_grad()
    def _fit_head(self, model, dataset, collate, accelerator, seed: int) -> None:
        from sklearn.linear_model import LogisticRegression

        model.eval()
        feats = []
        for start in range(0, len(dataset), 64):
            items = [dataset[i] for i in range(start, min(len(dataset), start + 64))]
            batch = {k: v.to(accelerator.device) for k, v in collate(items).items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            with accelerator.autocast():
                feats.append(model.backbone.forward_features(batch).float().cpu())
        x = torch.cat(feats).double().numpy()
        y = list(dataset.labels)
        head = LogisticRegression(max_iter=1000, random_state=seed).fit(x, y)
        fc = model.head.fc
        coef = torch.as_tensor(head.coef_, dtype=fc.weight.dtype)
        intercept = torch.as_tensor(head.intercept_, dtype=fc.bias.dtype)
        weight = torch.zeros_like(fc.weight, device="cpu")
        bias = torch.zeros_like(fc.bias, device="cpu")
        classes = [int(c) for c in head.classes_]
        if len(classes) == 2:  # one weight vector for "the second class vs the first"
            weight[classes[1]], weight[classes[0]] = coef[0] / 2, -coef[0] / 2
            bias[classes[1]], bias[classes[0]] = intercept[0] / 2, -intercept[0] / 2
        else:
            for row, c in enumerate(classes):
                weight[c], bias[c] = coef[row], intercept[row]
            missing = sorted(set(range(fc.out_features)) - set(classes))
            bias[missing] = -1e4  # a class without training examples is never predicted
        fc.weight.copy_(weight.to(fc.weight.device))
        fc.bias.copy_(bias.to(fc.bias.device))
        model.train()

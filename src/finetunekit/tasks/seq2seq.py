"""Sequence-to-sequence: the target is a text the model writes (a transcript, a translation).

The task trains an encoder-decoder backbone (:class:`finetunekit.backbones.seq2seq.Seq2SeqBackbone`)
with teacher-forced token cross-entropy (label smoothing, ``task.label_smoothing``) and decodes
with greedy or beam search (``task.num_beams``, ``task.length_penalty``, ``task.max_new_tokens``,
by default the longest training target's tokens plus a margin). Predictions are texts.

Metrics (``task.metric``; ``auto``: by the input, word error rates for speech, BLEU for text):

* ``wer``: word and character error rate (jiwer) after ``task.normalise``: ``plain`` (the default:
  lower-cased, punctuation turned into spaces, spaces collapsed), ``whisper`` (transformers'
  ``EnglishTextNormalizer``, with an empty spelling table: it also writes numbers as digits) or
  ``none``; the other normalisation's WER is reported beside it (``wer_whisper`` / ``wer_plain``).
  Corpus WER is the sum of word errors (substitutions, deletions, insertions) over the sum of
  reference words.
* ``bleu``: sacrebleu's corpus BLEU on lower-cased text (``lowercase=True``, detokenised inputs,
  its 13a tokenizer), cased BLEU and chrF beside it, with sacrebleu's signatures.

The targets travel through the data pipeline as their UTF-8 bytes (one row per example, padded
with -1): the task needs no tokenizer before the backbone is known, metrics are computed against
the texts as written, and the head tokenizes a batch's targets with the backbone's tokenizer.
The model's scores per example are ``[loss sum, target tokens, generated ids..., -1 padding]``.

Example::

    task = Seq2SeqTask.from_data({"type": "seq2seq"}, train_examples)   # texts as labels
    head = task.head_for(backbone)                  # a Seq2SeqBackbone; fixes max_new_tokens
    targets = task.encode(train_examples)           # (N, bytes) int64
    task.metrics(scores, targets)["wer"]
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import DataError, FinetuneError, RecipeError, check_range
from ..core.stats import CONFIDENCE, RESAMPLES, SEED, resample_index
from . import TASKS
from .base import ReportView, Task
from .options import TaskOptions

# how the outputs of a model that reads this modality are judged, when task.metric is auto: a
# speech recogniser by its word errors, a translation by BLEU
METRIC_FOR_INPUT = {"audio": "wer", "text": "bleu"}
MARGIN_TOKENS = 8  # max_new_tokens' default: the longest training target's tokens + 10% + this
LONGEST_KEPT = 32  # training targets (the longest by bytes) tokenized to fix max_new_tokens
WER_METRICS = ("wer", "cer", "wer_whisper", "cer_whisper", "wer_plain")
BLEU_METRICS = ("bleu", "bleu_cased", "chrf")


def _training_world() -> int:
    """The number of training processes when several train together with gradients on, else 1."""
    dist = torch.distributed
    if not (torch.is_grad_enabled() and dist.is_available() and dist.is_initialized()):
        return 1
    return int(dist.get_world_size())


@dataclass
class Seq2SeqOptions(TaskOptions):
    label_smoothing: float | None = None  # default 0.1
    num_beams: int | None = None  # default 4; 1: greedy decoding
    length_penalty: float | None = None  # default 1.0: beam scores are log-probabilities / length
    max_new_tokens: int | None = None  # default: the longest training target's tokens + 10% + 8
    normalise: Literal["plain", "whisper", "none"] | None = None  # default plain (WER's text normalisation)
    metric: Literal["auto", "wer", "bleu"] | None = None  # default auto: wer for audio inputs, bleu for text
    # speech: encode each clip padded to Whisper's 30-second window, as Whisper was trained, instead
    # of on its own frames (default false: 10x or more cheaper to train; docs/seq2seq.md)
    pad_to_window: bool | None = None

    def __post_init__(self) -> None:
        if self.label_smoothing is not None:
            check_range("task.label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)
        if self.num_beams is not None:
            check_range("task.num_beams", self.num_beams, 1, 64)
        if self.length_penalty is not None:
            check_range("task.length_penalty", self.length_penalty, -10.0, 10.0)
        if self.max_new_tokens is not None:
            check_range("task.max_new_tokens", self.max_new_tokens, 1, 100_000)


DEFAULTS = {"label_smoothing": 0.1, "num_beams": 4, "length_penalty": 1.0, "normalise": "plain", "metric": "auto", "pad_to_window": False}


# -- text normalisation and metrics ---------------------------------------------------------------


def plain_normalise(text: str) -> str:
    """Lower-cased, every punctuation character (Unicode category P) turned into a space, spaces collapsed."""
    chars = (" " if unicodedata.category(c).startswith("P") else c for c in text.lower())
    return " ".join("".join(chars).split())


def whisper_normalise(text: str) -> str:
    """transformers' ``EnglishTextNormalizer`` (its spelling table empty: nothing is downloaded)."""
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    global _WHISPER_NORMALISER
    if _WHISPER_NORMALISER is None:
        _WHISPER_NORMALISER = EnglishTextNormalizer({})
    return " ".join(_WHISPER_NORMALISER(text).split())


_WHISPER_NORMALISER: Any = None
NORMALISERS = {"plain": plain_normalise, "whisper": whisper_normalise, "none": lambda text: " ".join(text.split())}
NORMALISATION_TEXT = {
    "plain": "lower-cased, punctuation replaced by spaces, whitespace collapsed",
    "whisper": "transformers' EnglishTextNormalizer (empty spelling table): lower-cased, numbers as digits, fillers dropped",
    "none": "as written (whitespace collapsed)",
}


def edit_counts(refs: Sequence[str], hyps: Sequence[str], unit: Literal["word", "char"] = "word") -> tuple[np.ndarray, np.ndarray]:
    """Per example (errors, reference length) in words or characters, from jiwer's alignment;
    an empty reference counts every hypothesis unit as an insertion."""
    try:
        import jiwer
    except ImportError:
        raise FinetuneError("word and character error rates need the package 'jiwer' (pip install 'finetunekit[speech]')") from None

    errors = np.zeros(len(refs), dtype=np.float64)
    lengths = np.zeros(len(refs), dtype=np.float64)
    for i, (ref, hyp) in enumerate(zip(refs, hyps, strict=True)):
        ref_units = ref.split() if unit == "word" else list(ref)
        hyp_units = hyp.split() if unit == "word" else list(hyp)
        lengths[i] = len(ref_units)
        if not ref_units:
            errors[i] = len(hyp_units)
            continue
        if not hyp_units:
            errors[i] = len(ref_units)
            continue
        out = jiwer.process_words(ref, hyp) if unit == "word" else jiwer.process_characters(ref, hyp)
        errors[i] = out.substitutions + out.deletions + out.insertions
    return errors, lengths


def error_rate(errors: np.ndarray, lengths: np.ndarray) -> float:
    total = float(lengths.sum())
    return float(errors.sum()) / total if total else float("nan")


def wer_metrics(refs: Sequence[str], hyps: Sequence[str], normalise: str) -> dict[str, Any]:
    """WER and CER after ``normalise``, with the Whisper-normalised (or plain) WER beside them."""
    norm = NORMALISERS[normalise]
    r, h = [norm(x) for x in refs], [norm(x) for x in hyps]
    errors, words = edit_counts(r, h)
    char_errors, chars = edit_counts(r, h, "char")
    out: dict[str, Any] = {"wer": error_rate(errors, words), "cer": error_rate(char_errors, chars)}
    other = "plain" if normalise == "whisper" else "whisper"
    ro, ho = [NORMALISERS[other](x) for x in refs], [NORMALISERS[other](x) for x in hyps]
    other_errors, other_words = edit_counts(ro, ho)
    out[f"wer_{other}"] = error_rate(other_errors, other_words)
    if other == "whisper":
        ce, cl = edit_counts(ro, ho, "char")
        out["cer_whisper"] = error_rate(ce, cl)
    out.update({"num_words": int(words.sum()), "normalisation": f"{normalise}: {NORMALISATION_TEXT[normalise]}"})
    return out


def bleu_metrics(refs: Sequence[str], hyps: Sequence[str]) -> dict[str, Any]:
    """Corpus BLEU lower-cased (primary) and cased, and chrF, with sacrebleu's signatures."""
    try:
        from sacrebleu.metrics import BLEU, CHRF
    except ImportError:
        raise FinetuneError("BLEU and chrF need the package 'sacrebleu' (pip install 'finetunekit[translation]')") from None

    lower, cased, chrf = BLEU(lowercase=True), BLEU(), CHRF()
    return {
        "bleu": lower.corpus_score(list(hyps), [list(refs)]).score,
        "bleu_cased": cased.corpus_score(list(hyps), [list(refs)]).score,
        "chrf": chrf.corpus_score(list(hyps), [list(refs)]).score,
        "signature": {"bleu": str(lower.get_signature()), "bleu_cased": str(cased.get_signature()), "chrf": str(chrf.get_signature())},
    }


# -- targets as bytes -------------------------------------------------------------------------------


def texts_to_tensor(texts: Sequence[str]) -> torch.Tensor:
    """UTF-8 bytes of each text, one row each, padded with -1."""
    raw = [t.encode("utf-8") for t in texts]
    width = max((len(b) for b in raw), default=1) or 1
    out = torch.full((len(raw), width), -1, dtype=torch.long)
    for i, b in enumerate(raw):
        if b:
            out[i, : len(b)] = torch.frombuffer(bytearray(b), dtype=torch.uint8).long()
    return out


def tensor_to_texts(rows: Any) -> list[str]:
    rows = np.asarray(rows)
    return [bytes(int(v) for v in row if v >= 0).decode("utf-8", errors="replace") for row in rows]


# -- the head ---------------------------------------------------------------------------------------


class Seq2SeqHead(nn.Module):
    """No parameters of its own: it drives the backbone's decoder. Training: teacher-forced logits
    and the target ids they are scored against. Evaluation: per example ``[loss sum, target
    tokens, generated ids...]`` (the loss columns 0 and NaN without targets), one float row of
    ``2 + max_new_tokens`` columns, -1 after the generated ids."""

    takes_batch = True

    def __init__(self, task: Seq2SeqTask) -> None:
        super().__init__()
        self.task = task

    def describe(self) -> dict[str, Any]:
        return {"kind": "seq2seq_decoder", "dropout": 0.0}

    def targets(self, backbone: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(decoder input ids, decoder attention mask, target ids with -100 on padding), the
        decoder's inputs being the prompt and then each target but its last token."""
        texts = tensor_to_texts(batch["labels"].cpu())
        ids = backbone.target_tokenize(texts)
        prompt = list(backbone.decoder_prompt)
        longest = max(len(r) for r in ids)
        device = batch["labels"].device
        n = len(ids)
        targets = torch.full((n, longest), -100, dtype=torch.long)
        inputs = torch.full((n, len(prompt) + longest - 1), int(backbone.pad_token_id), dtype=torch.long)
        mask = torch.zeros(inputs.shape, dtype=torch.long)
        for i, row in enumerate(ids):
            targets[i, : len(row)] = torch.tensor(row)
            seq = prompt + row[:-1]
            inputs[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
        return inputs.to(device), mask.to(device), targets.to(device)

    def teacher_forced(self, backbone: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, mask, targets = self.targets(backbone, batch)
        logits = backbone.forward_seq2seq(batch, inputs, mask)
        return logits[:, len(backbone.decoder_prompt) - 1 :], targets

    def forward(self, backbone: Any, batch: dict[str, torch.Tensor]) -> Any:
        if "features" in batch:
            raise FinetuneError("a seq2seq model decodes from the encoder's states, not cached pooled features; "
                                "set data.feature_cache: false or choose a strategy that trains the decoder")
        if self.training:
            logits, targets = self.teacher_forced(backbone, batch)
            return {"logits": logits, "targets": targets}
        task = self.task
        n = batch["input_features" if "input_features" in batch else "input_ids"].shape[0]
        width = int(task.max_new_tokens)
        out = torch.full((n, 2 + width), -1.0)
        out[:, 0], out[:, 1] = float("nan"), 0.0
        if "labels" in batch:
            logits, targets = self.teacher_forced(backbone, batch)
            losses = token_losses(logits, targets, task.label_smoothing)
            out[:, 0] = losses.sum(1).float().cpu()
            out[:, 1] = (targets != -100).sum(1).float().cpu()
        generated = backbone.generate(batch, num_beams=task.num_beams, max_new_tokens=width, length_penalty=task.length_penalty)
        for i, row in enumerate(generated):
            row = row[:width]
            if row:
                out[i, 2 : 2 + len(row)] = torch.tensor(row, dtype=torch.float32)
        return out.to(batch["labels"].device if "labels" in batch else out.device)


def token_losses(logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Per-token cross-entropy with label smoothing, (B, T), 0 on padding (-100)."""
    flat = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                           label_smoothing=smoothing, reduction="none")
    return flat.reshape(targets.shape)


# -- the task -----------------------------------------------------------------------------------------


@TASKS.register("seq2seq")
class Seq2SeqTask(Task):
    """A text per example, written by an encoder-decoder; see the module docstring."""

    type = "seq2seq"
    primary_metric = "wer"
    lower_is_better = frozenset({"loss", *WER_METRICS})
    epoch_metrics = ("wer", "cer")
    Options = Seq2SeqOptions
    title = "sequence-to-sequence (text targets)"
    needs_decoder = True
    whole_inputs = True  # a transcript covers the whole clip: never cropped to one length
    # decoding a validation set every epoch is slow on a CPU; a few epochs at a rate suited to
    # fine-tuning a pretrained encoder-decoder (Whisper's fine-tuning recipes use 1e-5 to 1e-4)
    train_defaults = {"epochs": 3, "batch_size": 16, "lr": 1e-4, "head_lr": 1e-4, "warmup_ratio": 0.1, "label_smoothing": 0.0}
    report = ReportView(
        noun="text outputs", cards=(("WER", "wer"), ("CER", "cer"), ("loss", "loss")), curves=(("val_wer", "WER"),),
        sections=("text_errors",), compared=("wer", "cer"), bounded=False,
    )
    export_note = "the exported model writes text: generate() with the decoding settings in generation_config.json"
    head_folds_outputs = False

    def __init__(self, options: dict[str, Any], metric: str, longest: list[tuple[str, str]], max_new_tokens: int | None = None) -> None:
        self.options = {**DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
        self.metric_family = metric
        self.longest = longest  # (row, text) of the longest training targets
        self.max_new_tokens = max_new_tokens if max_new_tokens is not None else self.options.get("max_new_tokens")
        self.primary_metric = "wer" if metric == "wer" else "bleu"  # type: ignore[misc]
        self.epoch_metrics = ("wer", "cer") if metric == "wer" else ("bleu", "chrf")  # type: ignore[misc]
        self._decode_text: Any = None

    # -- construction ---------------------------------------------------------------------------
    @property
    def label_smoothing(self) -> float:
        return float(self.options["label_smoothing"])

    @property
    def num_beams(self) -> int:
        return int(self.options["num_beams"])

    @property
    def length_penalty(self) -> float:
        return float(self.options["length_penalty"])

    @classmethod
    def check_options(cls, options: dict[str, Any], where: str) -> dict[str, Any]:
        known = {"type", "label_smoothing", "num_beams", "length_penalty", "max_new_tokens", "normalise", "metric", "pad_to_window"}
        for key in options:
            if key not in known and options[key] is not None:
                raise RecipeError(f"{where}.{key}: not an option of a seq2seq task ({', '.join(sorted(known - {'type'}))})")
        return dict(options)

    @classmethod
    def from_data(cls, options: dict[str, Any], train: Any, recipe: Any = None) -> Seq2SeqTask:
        texts = _texts(train)
        metric = options.get("metric") or "auto"
        if metric == "auto":
            metric = METRIC_FOR_INPUT.get(getattr(train, "modality", "text"), "bleu")
        places = list(getattr(train, "places", None) or [f"{train.source} row {i + 1}" for i in range(len(texts))])
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i].encode("utf-8")))[:LONGEST_KEPT]
        return cls(options, metric, [(places[i], texts[i]) for i in order])

    @classmethod
    def from_state(cls, state: dict[str, Any], read: Any = None) -> Seq2SeqTask:
        return cls(dict(state.get("options", {})), str(state["metric"]), [tuple(x) for x in state.get("longest", [])],
                   state.get("max_new_tokens"))

    @classmethod
    def view(cls, state: dict[str, Any]) -> ReportView:
        """WER and CER for speech (the class's view); BLEU and chrF for a text-to-text run."""
        if state.get("metric", "wer") == "wer":
            return cls.report
        return replace(cls.report, cards=(("BLEU", "bleu"), ("chrF", "chrf"), ("loss", "loss")),
                       curves=(("val_bleu", "BLEU"), ("val_chrf", "chrF")), compared=("bleu", "bleu_cased", "chrf"))

    def state(self) -> dict[str, Any]:
        return {"type": self.type, "options": dict(self.options), "metric": self.metric_family,
                "max_new_tokens": self.max_new_tokens, "longest": [list(x) for x in self.longest]}

    def identity(self) -> Any:
        return {"type": self.type, "options": dict(self.options), "metric": self.metric_family}

    def describe(self) -> str:
        beams = "greedy" if self.num_beams == 1 else f"beam {self.num_beams}"
        # before fitting, the length is not known yet: it comes from the longest training target
        length = ("as many new tokens as the longest training target plus a margin" if self.max_new_tokens is None
                  else f"at most {self.max_new_tokens} new tokens")
        return f"text targets ({self.metric_family}), {beams} decoding, {length}"

    def label_columns(self, default: str | list[str]) -> str | list[str]:
        return default

    @classmethod
    def check_recipe(cls, recipe: Any, modality: str) -> None:
        if recipe.train.label_smoothing:
            raise RecipeError("train.label_smoothing: a seq2seq task smooths its token targets with task.label_smoothing; "
                              "leave train.label_smoothing at 0")
        if recipe.data.sampler == "balanced":
            raise RecipeError("data.sampler: balanced sampling needs one class per example; a seq2seq target is a text")

    # -- targets --------------------------------------------------------------------------------
    def encode(self, examples: Any) -> torch.Tensor:
        return texts_to_tensor(_texts(examples))

    def collate(self, values: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(values))

    # -- model ----------------------------------------------------------------------------------
    @property
    def output_size(self) -> int:
        return 2 + int(self.max_new_tokens or 1)

    def backbone_for(self, backbone: Any) -> Any:
        backbone = backbone if getattr(backbone, "is_seq2seq", False) else backbone.as_seq2seq()
        if self.options.get("pad_to_window"):
            if not hasattr(backbone, "use_window"):
                raise RecipeError(f"task.pad_to_window: pads audio to Whisper's window; a {backbone.kind} backbone has none")
            backbone.use_window(True)
        return backbone

    def head_for(self, backbone: Any, dropout: float = 0.0) -> nn.Module:
        """The head driving ``backbone``'s decoder; fixes ``max_new_tokens`` from the longest
        training targets (their tokens + 10% + 8, within the decoder's positions) and refuses a
        target the decoder cannot hold."""
        if not getattr(backbone, "is_seq2seq", False):
            backbone.as_seq2seq()  # raises: an encoder alone cannot write text
            raise FinetuneError("a seq2seq task needs an encoder-decoder backbone")
        room = int(backbone.max_target_positions) - len(backbone.decoder_prompt)
        if self.longest:
            lengths = [len(ids) for ids in backbone.target_tokenize([t for _, t in self.longest])]
            worst = max(range(len(lengths)), key=lengths.__getitem__)
            if lengths[worst] > room:
                place, _ = self.longest[worst]
                raise DataError(f"{place}: the target text is {lengths[worst]} tokens long; the decoder writes at most {room} "
                                f"after its prompt (shorten or split that example)")
            if self.max_new_tokens is None:
                self.max_new_tokens = min(room, int(math.ceil(max(lengths) * 1.1)) + MARGIN_TOKENS)
        if self.max_new_tokens is None:
            self.max_new_tokens = room
        self.max_new_tokens = min(int(self.max_new_tokens), room)
        self._decode_text = backbone.decode_text
        return Seq2SeqHead(self)

    def loss(self, outputs: Any, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        losses = token_losses(outputs["logits"], outputs["targets"], self.label_smoothing)
        count = (outputs["targets"] != -100).sum()
        world = _training_world()
        if world > 1:
            # per token over every process's batch: the processes' batches hold different numbers
            # of target tokens, and DDP averages the processes' gradients, so each divides its sum
            # by the global count over the world size (N processes then train as one does)
            count = count.detach().clone()
            torch.distributed.all_reduce(count)
            return {"task": losses.sum() * world / count.clamp(min=1)}
        return {"task": losses.sum() / count.clamp(min=1)}

    def mixable(self, targets: torch.Tensor) -> torch.Tensor:
        raise RecipeError("train.mixup_alpha: mixing examples needs targets that blend; a seq2seq target is a text")

    def scores(self, outputs: Any) -> torch.Tensor:
        if isinstance(outputs, dict):
            raise FinetuneError("seq2seq scores come from the model in evaluation mode (model.eval())")
        return outputs.float()

    # -- judging --------------------------------------------------------------------------------
    def eval_loss(self, scores: np.ndarray, targets: np.ndarray) -> float | None:
        scores = np.asarray(scores, dtype=np.float64)
        tokens = scores[:, 1].sum() if len(scores) else 0.0
        if not tokens or not np.isfinite(scores[:, 0]).all():
            return None
        return float(scores[:, 0].sum() / tokens)

    def _pairs(self, scores: np.ndarray, targets: np.ndarray) -> tuple[list[str], list[str]]:
        return tensor_to_texts(targets), self.decode(scores)

    def metrics(self, scores: np.ndarray, targets: np.ndarray, loss: float | None = None) -> dict[str, Any]:
        refs, hyps = self._pairs(scores, targets)
        out: dict[str, Any] = {"num_examples": len(refs)}
        if self.metric_family == "wer":
            out.update(wer_metrics(refs, hyps, str(self.options["normalise"])))
        else:
            out.update(bleu_metrics(refs, hyps))
        out["decoding"] = {"num_beams": self.num_beams, "length_penalty": self.length_penalty, "max_new_tokens": self.max_new_tokens}
        if loss is not None:
            out["loss"] = float(loss)
        return out

    def confidence_intervals(self, scores: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        refs, hyps = self._pairs(scores, targets)
        if not refs:
            return {}
        index = resample_index(len(refs))
        tail = 100 * (1 - CONFIDENCE) / 2
        out: dict[str, Any] = {}
        if self.metric_family == "wer":
            norm = NORMALISERS[str(self.options["normalise"])]
            r, h = [norm(x) for x in refs], [norm(x) for x in hyps]
            for name, unit in (("wer", "word"), ("cer", "char")):
                errors, lengths = edit_counts(r, h, unit)  # type: ignore[arg-type]
                reps = errors[index].sum(1) / np.maximum(lengths[index].sum(1), 1)
                low, high = np.percentile(reps, [tail, 100 - tail])
                out[f"{name}_ci"] = [round(float(low), 6), round(float(high), 6)]
        else:
            from sacrebleu.metrics import BLEU

            bleu = BLEU(lowercase=True)
            stats = np.array([bleu._extract_corpus_statistics([h], [[r]])[0] for r, h in zip(refs, hyps, strict=True)])
            reps = [bleu._compute_score_from_stats(list(stats[row].sum(0))).score for row in index[:RESAMPLES]]
            low, high = np.percentile(reps, [tail, 100 - tail])
            out["bleu_ci"] = [round(float(low), 4), round(float(high), 4)]
        out["ci"] = {"method": "percentile bootstrap over evaluation examples (corpus rates recomputed per resample)",
                     "confidence": CONFIDENCE, "resamples": RESAMPLES, "seed": SEED}
        return out

    def metric_names(self) -> list[str]:
        return ["loss", *(WER_METRICS if self.metric_family == "wer" else BLEU_METRICS)]

    def format_epoch(self, metrics: dict[str, Any]) -> str:
        return "  ".join(f"val_{k} {metrics[k]:.4f}" for k in self.epoch_metrics if isinstance(metrics.get(k), float))

    def format_metrics(self, metrics: dict[str, Any], title: str = "") -> str:
        from ..core.stats import format_ci

        lines = [title] if title else []
        keys = [k for k in (WER_METRICS if self.metric_family == "wer" else BLEU_METRICS) if isinstance(metrics.get(k), float)]
        cells = [f"{k} {metrics[k]:.4f}" + (f" {ci}" if (ci := format_ci(metrics.get(f"{k}_ci"))) else "") for k in keys]
        if "loss" in metrics:
            cells.append(f"loss {metrics['loss']:.4f}")
        lines.append("  ".join(cells) + f"  (n={metrics.get('num_examples', 0)})")
        if "normalisation" in metrics:
            lines.append(f"  text normalisation: {metrics['normalisation']}")
        if "signature" in metrics:
            lines.append(f"  sacrebleu: {metrics['signature']['bleu']}")
        if any(f"{k}_ci" in metrics for k in keys):
            lines.append("  [low, high]: 95% bootstrap confidence interval over the evaluation examples")
        return "\n".join(lines)

    # -- predictions ----------------------------------------------------------------------------
    def decode(self, scores: np.ndarray) -> list[str]:
        if self._decode_text is None:
            raise FinetuneError("a seq2seq task decodes token ids with its backbone's tokenizer: build its head first (head_for)")
        out = []
        for row in np.asarray(scores)[:, 2:]:
            ids = [int(v) for v in row if v >= 0]
            out.append(self._decode_text(ids))
        return out

    def join_windows(self, rows: np.ndarray) -> np.ndarray:
        """The windows' generated ids one after the other (Whisper's tokens carry their leading
        spaces, so the decoded texts join with one); no loss without targets."""
        ids = [v for row in np.asarray(rows)[:, 2:] for v in row if v >= 0]
        return np.array([float("nan"), 0.0, *ids], dtype=np.float32)

    def target_values(self, targets: np.ndarray) -> list[Any]:
        return tensor_to_texts(targets)

    def prediction_records(self, scores: np.ndarray, targets: np.ndarray | None) -> list[dict[str, Any]]:
        hyps = self.decode(scores)
        if targets is None:
            return [{"predicted": h} for h in hyps]
        refs = tensor_to_texts(targets)
        records = []
        if self.metric_family == "wer":
            norm = NORMALISERS[str(self.options["normalise"])]
            errors, words = edit_counts([norm(r) for r in refs], [norm(h) for h in hyps])
            for r, h, e, w in zip(refs, hyps, errors, words, strict=True):
                records.append({"label": r, "predicted": h, "word_errors": int(e), "words": int(w), "correct": bool(e == 0)})
        else:
            from sacrebleu.metrics import BLEU

            bleu = BLEU(lowercase=True, effective_order=True)
            for r, h in zip(refs, hyps, strict=True):
                records.append({"label": r, "predicted": h, "sentence_bleu": bleu.sentence_score(h, [r]).score, "correct": h == r})
        return records

    def output_records(self, scores: np.ndarray) -> list[dict[str, Any]]:
        return [{"json": {"text": t}, "line": t} for t in self.decode(scores)]

    def example_values(self, records: list[dict[str, Any]]) -> list[tuple[str, np.ndarray, bool]]:
        if self.metric_family == "wer":
            errors = np.array([r["word_errors"] for r in records], dtype=np.float64)
            words = np.array([r["words"] for r in records], dtype=np.float64)
            # errors over the mean reference length: their mean is the corpus WER, and both runs
            # share the denominator (the same references), so paired differences are exact
            return [("wer", errors / max(words.mean(), 1e-9), False)]
        return [("sentence_bleu", np.array([r["sentence_bleu"] for r in records], dtype=np.float64), True)]

    def output_names(self) -> list[str]:
        return ["loss_sum", "tokens", *(f"token_{i}" for i in range(int(self.max_new_tokens or 0)))]

    def card(self, modality: str, metrics: dict[str, Any], train: Any) -> dict[str, Any]:
        kind = {"audio": "speech recognition", "text": "text-to-text generation"}.get(modality, "text generation")
        tag = {"audio": "automatic-speech-recognition"}.get(modality, "text2text-generation")
        names = WER_METRICS if self.metric_family == "wer" else BLEU_METRICS
        values = [{"type": k, "value": round(float(metrics[k]), 4), "name": k.upper().replace("_", " ")}
                  for k in names if isinstance(metrics.get(k), float)]
        rows = ["| metric | value |", "| --- | --- |"] + [f"| {v['name']} | {v['value']:.4f} |" for v in values]
        if "normalisation" in metrics:
            rows.append(f"\nText normalisation before scoring: {metrics['normalisation']}.")
        if "signature" in metrics:
            rows.append(f"\nsacrebleu signature: `{metrics['signature']['bleu']}`.")
        beams = "greedy decoding" if self.num_beams == 1 else f"beam search ({self.num_beams} beams, length penalty {self.length_penalty})"
        return {
            "pipeline_tag": tag,
            "metric_names": list(names),
            "metrics": values,
            "title": f"{kind} model",
            "summary": f"Writes a text for each input ({kind}), decoded with {beams}, at most {self.max_new_tokens} new tokens.",
            "use": (f"Inputs like the {len(train)} training examples. The model writes text in the style of its training "
                    "targets (case, spelling of numbers); outputs for inputs unlike them (other speakers, noise, domains) "
                    "can be fluent and wrong, so check the error rates below on your own data first."),
            "data": f"({len(train)} input/text pairs)",
            "table": "\n".join(rows),
            "report": "Curves and the worst examples with their word-level differences: `report.html`.",
        }

    def export_config(self) -> dict[str, Any]:
        return {}


def _texts(examples: Any) -> list[str]:
    """The examples' target texts; an empty or missing one is an error naming its row."""
    labels = examples.labels
    if labels is None:
        raise DataError(f"{examples.source}: no target text column; a seq2seq task needs one text per example "
                        "(set data.label_column to the column of transcripts or translations)")
    places = getattr(examples, "places", None)
    texts = []
    for i, label in enumerate(labels):
        text = label if isinstance(label, str) else "" if label is None else str(label)
        if not text.strip():
            where = places[i] if places else f"{examples.source} row {i + 1}"
            raise DataError(f"{where}: empty target text; every example needs the text the model should write")
        texts.append(text.strip())
    return texts


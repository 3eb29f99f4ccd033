"""Zero-shot Whisper on AN4 test, and the batched decoding speed, measured in one process.

Whisper was trained on 30-second windows. The seq2seq backbone encodes each clip on its own frames
(``frames="own"``, as the audio classifier does), which is what makes CPU fine-tuning affordable;
this script measures what that costs the pretrained decoder before any fine-tuning, against the
padded window (``frames="window"``), on the same clips with the same decoding, and the speed of
batched beam search against calling transformers' ``generate`` one clip at a time (same beam,
same outputs).

    OMP_NUM_THREADS=1 python benchmarks/seq2seq.py --write                 # all 130 test clips
    OMP_NUM_THREADS=1 python benchmarks/seq2seq.py --limit 40 --skip-window
    # the weights of a training checkpoint (an unfinished run) on the test set, own frames, beam 4:
    OMP_NUM_THREADS=2 python benchmarks/seq2seq.py --checkpoint runs/an4/checkpoints/<step> --skip-zero-shot --skip-speed
    # a finished run scored as `finetunekit evaluate` scores it, and zero-shot tiny.en on the
    # 30-second window (greedy) in the same process:
    OMP_NUM_THREADS=2 python benchmarks/seq2seq.py --run runs/an4 --skip-own --beams 1 --skip-speed --write

Results: benchmarks/results/seq2seq.json (with --write), written up in docs/seq2seq.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from pathlib import Path

import torch

from finetunekit.backbones import create_backbone
from finetunekit.data.audio import read_audio
from finetunekit.tasks.seq2seq import wer_metrics

AN4 = Path(__file__).resolve().parents[2] / "shared" / "data" / "audio" / "an4"
RESULTS = Path(__file__).resolve().parent / "results" / "seq2seq.json"


def transcribe(backbone, waves, beams: int, batch: int, max_new_tokens: int = 40) -> tuple[list[str], float]:
    texts, start = [], time.perf_counter()
    for i in range(0, len(waves), batch):
        ids = backbone.generate(backbone.featurize(waves[i : i + batch]), num_beams=beams, max_new_tokens=max_new_tokens)
        texts += [backbone.decode_text(x) for x in ids]
    return texts, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled:whisper_tiny_en")
    parser.add_argument("--limit", type=int, default=None, help="first N test clips (default: all 130)")
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--skip-window", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a checkpoint folder of a run: its weights on the test set")
    parser.add_argument("--skip-zero-shot", action="store_true")
    parser.add_argument("--skip-own", action="store_true", help="no zero-shot row on own frames (the pretrained decoder repeats there)")
    parser.add_argument("--run", type=Path, default=None, help="a finished run: its test metrics as `finetunekit evaluate` computes them")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = list(csv.DictReader((AN4 / "test.tsv").open(encoding="utf-8"), delimiter="\t"))[: args.limit]
    refs = [r["text"] for r in rows]
    waves = [read_audio(AN4 / r["audio"], 16_000) for r in rows]
    encoder = create_backbone(args.model)
    results: dict = {"model": args.model, "clips": len(rows), "words": sum(len(t.split()) for t in refs), "beams": args.beams,
                     "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(), "zero_shot": {}}
    if args.run is not None:
        results["run"] = run_metrics(args.run, args.limit)
    if args.checkpoint is not None:
        results["checkpoint"] = checkpoint_wer(encoder, args.checkpoint, waves, refs, args.beams)
    for frames in ("own", "window"):
        if args.skip_zero_shot or (frames == "window" and args.skip_window) or (frames == "own" and args.skip_own):
            continue
        backbone = encoder.as_seq2seq()
        backbone.frames = frames
        for beams in sorted({1, args.beams}):
            texts, seconds = transcribe(backbone, waves, beams, 16 if frames == "own" else 8)
            m = wer_metrics(refs, texts, "plain")
            entry = {"wer_plain": m["wer"], "cer_plain": m["cer"], "wer_whisper": m["wer_whisper"], "seconds": round(seconds, 1),
                     "examples": [{"reference": r, "written": t} for r, t in list(zip(refs, texts, strict=True))[:8]]}
            results["zero_shot"][f"{frames}-beam{beams}"] = entry
            print(f"zero-shot {frames:6s} beam {beams}: WER plain {m['wer']:.3f}  CER {m['cer']:.3f}  WER whisper-normalised "
                  f"{m['wer_whisper']:.3f}  ({seconds:.1f} s)", flush=True)
    if not args.skip_speed:
        results["decoding_speed"] = decoding_speed(encoder.as_seq2seq(), waves[:48], args.beams)
    if args.write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {RESULTS}")


def run_metrics(run: Path, limit: int | None) -> dict:
    """A finished run's metrics on AN4 test (the first ``limit`` clips), through ``load(run).evaluate``,
    which is what ``finetunekit evaluate RUN test.tsv`` prints: the run's own decoding."""
    import tempfile

    from finetunekit import load

    table = AN4 / "test.tsv"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if limit is not None:  # the first rows, audio paths made absolute
            lines = table.read_text(encoding="utf-8").splitlines()
            head, rows = lines[0], lines[1 : limit + 1]
            table = Path(tmp) / "test.tsv"
            table.write_text("\n".join([head] + [str(AN4 / r.split("\t", 1)[0]) + "\t" + r.split("\t", 1)[1] for r in rows]) + "\n",
                             encoding="utf-8")
        metrics = load(run).evaluate(str(table))
    seconds = time.perf_counter() - start
    keep = {k: v for k, v in metrics.items() if k in ("wer", "cer", "wer_whisper", "cer_whisper", "wer_ci", "cer_ci", "num_examples",
                                                      "normalisation")}
    print(f"run {run}: WER plain {metrics['wer']:.4f}  CER {metrics['cer']:.4f}  WER whisper-normalised "
          f"{metrics.get('wer_whisper', float('nan')):.4f}  ({metrics.get('num_examples')} clips, {seconds:.1f} s)", flush=True)
    return {"path": str(run), **keep}


def checkpoint_wer(encoder, checkpoint: Path, waves, refs, beams: int) -> dict:
    """Test WER of the backbone weights a training checkpoint holds (``backbone.*`` of its
    model.safetensors), decoded as the run decodes (own frames, ``beams``, 34 new tokens)."""
    from safetensors.torch import load_file

    backbone = encoder.as_seq2seq()
    state = {k.removeprefix("backbone."): v for k, v in load_file(str(checkpoint / "model.safetensors")).items()
             if k.startswith("backbone.")}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if "proj_out" not in m]:
        raise SystemExit(f"{checkpoint}: weights do not fit ({missing[:3]}, {unexpected[:3]})")
    backbone.eval()
    texts, seconds = transcribe(backbone, waves, beams, 16, max_new_tokens=34)
    m = wer_metrics(refs, texts, "plain")
    print(f"checkpoint {checkpoint}: WER plain {m['wer']:.4f}  CER {m['cer']:.4f}  WER whisper-normalised {m['wer_whisper']:.4f} "
          f"({seconds:.1f} s, beam {beams})", flush=True)
    return {"path": str(checkpoint), "wer_plain": m["wer"], "cer_plain": m["cer"], "wer_whisper": m["wer_whisper"],
            "examples": [{"reference": r, "written": t} for r, t in list(zip(refs, texts, strict=True))[:10]]}


def decoding_speed(backbone, waves, beams: int) -> dict:
    """Batched beam search (batches of 16, the cache, masks) against transformers' generate on one
    clip at a time, on the same model, beam and maximum length; the outputs must agree."""
    from transformers import GenerationConfig
    from transformers.generation.utils import GenerationMixin
    from transformers.modeling_outputs import BaseModelOutput

    batched, t_batched = [], time.perf_counter()
    for i in range(0, len(waves), 16):
        batched += backbone.generate(backbone.featurize(waves[i : i + 16]), num_beams=beams, max_new_tokens=40)
    t_batched = time.perf_counter() - t_batched
    single, t_single = [], time.perf_counter()
    config = GenerationConfig(max_new_tokens=40, num_beams=beams, early_stopping=beams > 1, do_sample=False,
                              eos_token_id=backbone.eos_token_id, pad_token_id=backbone.pad_token_id,
                              decoder_start_token_id=backbone.decoder_start_token_id, **backbone.generation_options())
    with torch.no_grad():
        for wave in waves:
            hidden, _ = backbone.encode(backbone.featurize([wave]))
            prompt = torch.tensor([backbone.decoder_prompt])
            out = GenerationMixin.generate(backbone.model, encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
                                           decoder_input_ids=prompt, generation_config=config)[0, prompt.shape[1]:].tolist()
            single.append(out[: out.index(backbone.eos_token_id)] if backbone.eos_token_id in out else out)
    t_single = time.perf_counter() - t_single
    same = sum(a == b for a, b in zip(batched, single, strict=True))
    print(f"decoding {len(waves)} clips, beam {beams}: batched {t_batched:.1f} s, one at a time {t_single:.1f} s "
          f"({t_single / t_batched:.2f}x); identical outputs {same}/{len(waves)}", flush=True)
    return {"clips": len(waves), "beams": beams, "batched_seconds": round(t_batched, 2), "single_seconds": round(t_single, 2),
            "speedup": round(t_single / t_batched, 2), "identical": same}


if __name__ == "__main__":
    main()

"""What a user waits for: ``finetunekit train RECIPE`` as a whole process, from the command to a
saved, reloadable run with its validation metrics, against a baseline script doing the same work,
also as a whole process (imports, reading, training, evaluating, saving included on both sides).

Rows:

* text: ``finetunekit train examples/sst2.yaml`` (the bundled MiniLM-L6, 2,000 SST-2 training rows,
  the full dev set) against benchmarks/baselines/text_trainer.py: a Hugging Face ``Trainer`` in
  bf16 where the machine has bf16 matrix units (fp32 elsewhere) with ``group_by_length``, ``adamw_torch_fused``, batch 16, then the dev accuracy from an
  in-order loop and ``save_model`` (it reads the same 2,000 rows, written to a table before the
  clock starts). The script runs at its own best setting, 3 epochs, and, when the recipe's
  ``train.epochs`` differs, also at the recipe's count, so each ratio is printed both ways: against
  the baseline as people run it and against the baseline doing the same number of passes.
* vision: ``finetunekit train examples/hymenoptera.yaml --set strategy.name=full`` (EfficientNet-Lite0
  fully fine-tuned on ants/bees, 5 epochs, batch 16) against benchmarks/baselines/vision_tutorial.py:
  the PyTorch transfer-learning tutorial loop as written (fp32, NCHW, batch 4, 4 loader workers)
  and in its best-configured form (channels-last and bf16 autocast where the machine has bf16 matrix
  units, batch 16), the same epochs. Every row is labelled with the precision it really trained in
  (finetunekit's from the run's finetunekit.json, a baseline's from the ``precision:`` line it prints).

The contestants of a row run in turn, A B C A B C ..., ``--repeats`` times (the tutorial as
written, the slowest command, ``--slow-repeats`` times), each in a fresh process with the
environment it was given. Printed per contestant: wall seconds (min and median), CPU seconds
(user + sys, median; less disturbed by other load than wall time), validation accuracy; the ratio
of each baseline's median wall time to finetunekit's; finetunekit's time to quality (the first
epoch whose validation accuracy reaches the baseline's final accuracy, and how many seconds into
the process it was reached, from the run's timings.json); the median share of each phase of
finetunekit's runs; and a markdown table for docs/performance.md.

    python benchmarks/end_to_end.py --rows text,vision --repeats 3     # about 15 minutes on 2 quiet cores
    python benchmarks/end_to_end.py --rows text --repeats 1 --json out.json
    python benchmarks/end_to_end.py --rows text,vision --repeats 3 --write   # the table into docs/performance.md
    python benchmarks/end_to_end.py --smoke --repeats 1 --cold-repeats 1     # does every command run? (minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FINETUNEKIT_SHARED_DATA", REPO.parent / "shared" / "data"))
SST2 = DATA / "sst2"
ANTS = DATA / "images" / "hymenoptera_data"
BASELINES = Path(__file__).resolve().parent / "baselines"
# every command runs this checkout's finetunekit, whatever the environment has installed
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
       "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@dataclass
class Contestant:
    row: str
    name: str
    role: str  # "ours" or "baseline"
    argv: list[str]
    out: Path
    settings: str
    repeats: int
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    histories: list[list[float]] = field(default_factory=list)  # per-epoch validation accuracy
    timings: list[dict] = field(default_factory=list)  # ours: each run's timings.json
    precisions: list[str] = field(default_factory=list)  # the precision each run really trained in

    def median(self) -> float:
        return statistics.median(self.walls)

    @property
    def precision(self) -> str:
        """What the runs trained in (finetunekit's: the run's finetunekit.json; a baseline's: the
        ``precision:`` line it prints), several joined by "/" when they differed."""
        return "/".join(dict.fromkeys(self.precisions)) or "precision not yet known"

    @property
    def label(self) -> str:
        return self.name.format(precision=self.precision)

    @property
    def described(self) -> str:
        return self.settings.format(precision=self.precision)


def ours_argv(recipe: str, out: Path, overrides: list[str]) -> list[str]:
    sets = [arg for o in overrides for arg in ("--set", o)]
    return [sys.executable, "-m", "finetunekit", "train", str(REPO / "examples" / recipe), "--output", str(out), "--overwrite", "--quiet", *sets]


def sst2_subset(work: Path, rows: int) -> Path:
    """The training rows ``data.max_train_samples`` picks (seed 0), as a table for the baseline."""
    from finetunekit import Recipe
    from finetunekit.run.plan import resolve

    recipe = Recipe.from_yaml(REPO / "examples" / "sst2.yaml").with_overrides(
        [f"data.train={SST2 / 'train.tsv'}", f"data.val={SST2 / 'dev.tsv'}", f"data.max_train_samples={rows}"]
    )
    train = resolve(recipe, "text").train
    out = work / f"sst2_{rows}.tsv"
    out.write_text("\n".join(["sentence\tlabel", *(f"{t}\t{y}" for t, y in zip(train.inputs, train.labels, strict=True))]) + "\n",
                   encoding="utf-8")
    return out


def recipe_epochs(recipe: str) -> int:
    """The number of epochs an example recipe trains for (its own ``train.epochs``)."""
    import yaml

    return int(yaml.safe_load((REPO / "examples" / recipe).read_text(encoding="utf-8"))["train"]["epochs"])


TRAINER_BEST_EPOCHS = 3  # the Trainer script's own best setting (its accuracy peaks there, docs/performance.md)


def text_contestants(work: Path, repeats: int, smoke: bool = False) -> list[Contestant]:
    """finetunekit's recipe as it is, and the Trainer script at its own best epoch count and, when
    the recipe trains for fewer or more epochs, at the recipe's count too (the same work)."""
    from finetunekit.backbones.bundled import minilm_l6_path

    ours_epochs = recipe_epochs("sst2.yaml")
    rows = 200 if smoke else 2000
    baseline_epochs = [1] if smoke else sorted({TRAINER_BEST_EPOCHS, ours_epochs}, reverse=True)
    subset, dev = sst2_subset(work, rows), SST2 / "dev.tsv"
    ours = work / "text_ours"
    shrink = [f"data.max_train_samples={rows}", "train.epochs=1"] if smoke else []
    contestants = [
        Contestant("text", "finetunekit train examples/sst2.yaml ({precision})", "ours",
                   ours_argv("sst2.yaml", ours, [f"data.train={SST2 / 'train.tsv'}", f"data.val={dev}", *shrink]), ours,
                   f"the recipe's defaults: strategy full, batch 16, {ours_epochs} epoch(s), {{precision}}, length-grouped batches, "
                   "validation every epoch, best epoch kept, report and model card written", repeats),
    ]
    for epochs in baseline_epochs:
        hf = work / f"text_trainer_{epochs}ep"
        which = "its own best" if epochs == TRAINER_BEST_EPOCHS else "the recipe's epochs"
        contestants.append(Contestant(
            "text", f"Trainer script ({{precision}}, group_by_length, fused AdamW), {epochs} epoch(s)", "baseline",
            [sys.executable, str(BASELINES / "text_trainer.py"), "--model", str(minilm_l6_path()), "--train", str(subset),
             "--dev", str(dev), "--output", str(hf), "--epochs", str(epochs), "--batch-size", "16"], hf,
            f"transformers Trainer, {{precision}}, train_sampling_strategy group_by_length, adamw_torch_fused lr 5e-5, batch 16, "
            f"{epochs} epoch(s) ({which}), no evaluation during training, dev accuracy from an in-order loop, save_model", repeats))
    return contestants


def vision_contestants(work: Path, repeats: int, slow_repeats: int, smoke: bool = False) -> list[Contestant]:
    ours = work / "vision_ours"
    script = str(BASELINES / "vision_tutorial.py")
    epochs = "1" if smoke else "5"
    return [
        Contestant("vision", "finetunekit train examples/hymenoptera.yaml, strategy full ({precision})", "ours",
                   ours_argv("hymenoptera.yaml", ours, [f"data.train={ANTS}", "strategy.name=full", f"train.epochs={epochs}"]), ours,
                   "strategy full, batch 16, 5 epochs, {precision} (precision auto: bf16 autocast only with bf16 matrix units), channels-last, validation every epoch, best epoch kept, "
                   "report (with Grad-CAM of the worst errors) and model card written", repeats),
        Contestant("vision", "tutorial as written ({precision}, NCHW, batch 4, 4 workers)", "baseline",
                   [sys.executable, script, "--data", str(ANTS), "--output", str(work / "tutorial"), "--epochs", epochs, "--batch-size", "4"],
                   work / "tutorial", "the tutorial's train_model: SGD 1e-3 momentum 0.9, StepLR(7, 0.1), batch 4, {precision}, NCHW, "
                   "DataLoader with 4 workers, 5 epochs, best epoch kept, torch.save", slow_repeats),
        Contestant("vision", "tutorial best-configured (channels-last, {precision}, batch 16)", "baseline",
                   [sys.executable, script, "--data", str(ANTS), "--output", str(work / "tutorial_best"), "--epochs", epochs,
                    "--batch-size", "16", "--best"], work / "tutorial_best",
                   "the same loop with channels-last tensors, {precision} (bf16 autocast only where the machine has bf16 matrix "
                   "units), batch 16", repeats),
    ]


def run_once(c: Contestant) -> None:
    """One whole process of ``c``: wall and CPU seconds, accuracy, and for ours its history and timings."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(c.argv, cwd=REPO, capture_output=True, text=True, env=ENV)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        sys.exit(f"{c.label} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    c.walls.append(wall)
    c.cpus.append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
    if c.role == "ours":
        c.precisions.append(str(json.loads((c.out / "finetunekit.json").read_text()).get("precision", "fp32")))
        c.accuracies.append(json.loads((c.out / "metrics.json").read_text())["accuracy"])
        epochs = [json.loads(line) for line in (c.out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        c.histories.append([e["val_accuracy"] for e in epochs])
        c.timings.append(json.loads((c.out / "timings.json").read_text()))
    else:
        said = next((line for line in proc.stdout.splitlines() if line.startswith("precision: ")), None)
        c.precisions.append(said[len("precision: "):].split(",")[0].strip() if said else "precision not printed")
        result = json.loads(next(line for line in reversed(proc.stdout.splitlines()) if line.startswith("RESULT "))[7:])
        c.accuracies.append(result["accuracy"])
        if "history" in result:
            c.histories.append(result["history"])
    print(f"  {c.row:<7} {c.label:<70} {wall:7.1f}s wall  {c.cpus[-1]:7.1f}s cpu  accuracy {c.accuracies[-1]:.4f}", flush=True)


def check_reloadable(c: Contestant) -> str:
    """finetunekit's run loads and predicts on its own (outside the clock)."""
    from finetunekit import load

    predictor = load(c.out)
    sample = "a gripping, beautifully made film" if c.row == "text" else str(next((ANTS / "val" / "ants").iterdir()))
    return f"{c.out.name}: reloaded, predicts {predictor.predict([sample])[0]!r} for one input"


def time_to_quality(ours: Contestant, target: float) -> str:
    """The first epoch of finetunekit's (median) run whose validation accuracy reaches ``target``,
    and how far into the process that epoch's validation ended (start-up and every phase before
    it, from timings.json)."""
    i = ours.walls.index(sorted(ours.walls)[len(ours.walls) // 2])  # the median run
    history, timing = ours.histories[i], ours.timings[i]
    epoch = next((k for k, acc in enumerate(history, start=1) if acc >= target), None)
    if epoch is None:
        return f"never within {len(history)} epochs (best {max(history):.4f})"
    elapsed = 0.0
    for name, seconds in timing["seconds"].items():
        elapsed += seconds
        if name == f"epoch {epoch} validate":
            break
    return f"epoch {epoch} of {len(history)} (val accuracy {history[epoch - 1]:.4f}), {elapsed:.1f} s into the {timing['total_seconds']:.1f} s run"


def phase_shares(ours: Contestant) -> list[tuple[str, float, float]]:
    """(phase, median seconds, median share of the run) over finetunekit's runs; the epochs' phases summed by kind."""
    def grouped(timing: dict) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, seconds in timing["seconds"].items():
            key = ("epochs: " + name.split(" ", 2)[2]) if name.startswith("epoch ") else name
            out[key] = out.get(key, 0.0) + seconds
        return out

    runs = [grouped(t) for t in ours.timings]
    totals = [t["total_seconds"] for t in ours.timings]
    return [(name, statistics.median(r.get(name, 0.0) for r in runs), statistics.median(r.get(name, 0.0) / tot for r, tot in zip(runs, totals, strict=True)))
            for name in runs[0]]


# -- cold start: what a user waits for at first use ------------------------------------------------------

PREDICT_BREAKDOWN = """
import json, sys, time
t0 = time.perf_counter()
import finetunekit
t1 = time.perf_counter()
from finetunekit.use.predict import load
t2 = time.perf_counter()
predictor = load(sys.argv[1])
t3 = time.perf_counter()
predictor.predict([sys.argv[2]])
t4 = time.perf_counter()
print("PHASES " + json.dumps({"import finetunekit": t1 - t0, "import the predict path (torch)": t2 - t1,
      "load the run (backbone library imports, weights, checks)": t3 - t2,
      **{"  of which " + name: seconds for name, seconds in predictor.load_seconds.items()}, "predict one input": t4 - t3}))
"""


def timed(argv: list[str], repeats: int) -> list[float]:
    walls = []
    for _ in range(repeats):
        started = time.perf_counter()
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=ENV)
        walls.append(time.perf_counter() - started)
        if proc.returncode:
            sys.exit(f"{' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
    return walls


def serve_cold_start(run: Path) -> float:
    """Seconds from ``finetunekit serve RUN`` to its first answered /health."""
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "finetunekit", "serve", str(run), "--port", str(port)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        while time.perf_counter() - started < 300:
            if proc.poll() is not None:
                sys.exit(f"finetunekit serve {run} exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as answer:
                    if answer.status == 200:
                        return time.perf_counter() - started
            except OSError:
                time.sleep(0.05)
        return float("nan")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def cold_start(plan: dict[str, list[Contestant]], repeats: int) -> list[str]:
    """``import finetunekit``, ``finetunekit --help``, and for each row's finetunekit run
    ``finetunekit predict RUN one_input`` (the first, which writes the fast-predict model; the
    later ones, on the fast path; and with ``--torch``) and the service's start to its first
    /health; where the predict time goes when it is over 3 s. Returns the markdown rows."""
    python = sys.executable
    lines = ["| command | runs | wall s (min / median) | target |", "| --- | --- | --- | --- |"]
    print("\ncold start:")

    def row(name: str, walls: list[float], target: float | None) -> None:
        met = "" if target is None else f"< {target:g} s, {'met' if statistics.median(walls) < target else 'missed'}"
        print(f"  {name:<70} min {min(walls):5.2f}s  median {statistics.median(walls):5.2f}s  {met}")
        lines.append(f"| `{name}` | {len(walls)} | {min(walls):.2f} / {statistics.median(walls):.2f} | {met or '-'} |")

    row("python -c 'import finetunekit'", timed([python, "-c", "import finetunekit"], repeats), 0.5)
    row("finetunekit --help", timed([python, "-m", "finetunekit", "--help"], repeats), 1.0)
    for name, contestants in plan.items():
        ours = next(c for c in contestants if c.role == "ours")
        sample = "a gripping, beautifully made film" if name == "text" else str(sorted((ANTS / "val" / "ants").iterdir())[0])
        predict = [python, "-m", "finetunekit", "predict", str(ours.out), sample]
        # the first predict answers with torch and writes the run's fast-predict model; the later ones use it
        row(f"finetunekit predict RUN one_input, the first ({name} run: torch, then writes RUN/fast)", timed(predict, 1), None)
        walls = timed(predict, repeats)
        row(f"finetunekit predict RUN one_input ({name} run, fast path)", walls, 3.0)
        if statistics.median(walls) >= 3.0:
            proc = subprocess.run([*predict, "--verbose"], cwd=REPO, capture_output=True, text=True, env=ENV)
            print("      " + "\n      ".join(proc.stderr.strip().splitlines()))
        torch_walls = timed([*predict, "--torch"], repeats)
        row(f"finetunekit predict RUN one_input --torch ({name} run)", torch_walls, None)
        if statistics.median(torch_walls) >= 3.0:
            proc = subprocess.run([python, "-c", PREDICT_BREAKDOWN, str(ours.out), sample], cwd=REPO, capture_output=True, text=True, env=ENV)
            phases = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("PHASES "))[7:])
            for phase, seconds in phases.items():
                print(f"      {phase:<60} {seconds:5.2f}s")
        serve = [serve_cold_start(ours.out) for _ in range(repeats)]
        row(f"finetunekit serve RUN, to the first /health ({name} run)", serve, None)
    return lines


def device() -> str:
    import torch

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{platform.machine()} CPU, {usable} of {os.cpu_count()} cores usable, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def report(rows: dict[str, list[Contestant]], argv: list[str]) -> str:
    """Print the per-row results and return the markdown for docs/performance.md."""
    md = [f"Measured with `python benchmarks/end_to_end.py {' '.join(argv)}` on {device()}.", "",
          "| task | command (whole process) | runs | wall s (min / median) | CPU s (median) | accuracy | ratio to finetunekit |",
          "| --- | --- | --- | --- | --- | --- | --- |"]
    notes, settings = [], []
    for row, contestants in rows.items():
        ours = next(c for c in contestants if c.role == "ours")
        print(f"\n{row}:")
        for c in contestants:
            ratio = "" if c is ours else f"{c.median() / ours.median():.2f}x"
            accuracy = statistics.median(c.accuracies)
            print(f"  {c.label:<70} n={len(c.walls)}  wall min {min(c.walls):6.1f}s  median {c.median():6.1f}s  "
                  f"cpu {statistics.median(c.cpus):6.1f}s  accuracy {accuracy:.4f}" + (f"  baseline/finetunekit {ratio}" if ratio else ""))
            md.append(f"| {row} | {c.label} | {len(c.walls)} | {min(c.walls):.1f} / {c.median():.1f} | {statistics.median(c.cpus):.1f} | "
                      f"{accuracy:.4f} | {ratio or '1 (reference)'} |")
            settings.append(f"- {row}, {c.label}: {c.described}")
        for c in contestants:
            if c is not ours:
                line = (f"{row}: {c.label} takes {c.median() / ours.median():.2f}x finetunekit's time end to end (median wall) "
                        f"(accuracy {statistics.median(ours.accuracies):.4f} against {statistics.median(c.accuracies):.4f}); "
                        f"time to its final accuracy: {time_to_quality(ours, statistics.median(c.accuracies))}")
                print("  " + line)
                notes.append(f"- {line}")
        print(f"  {check_reloadable(ours)}")
        print("  finetunekit's phases (median over its runs):")
        for name, seconds, share in phase_shares(ours):
            print(f"    {name:<48} {seconds:7.2f}s  {100 * share:5.1f}%")
    return "\n".join([*md, "", *notes, "", "Settings:", "", *settings, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="text,vision", help="comma-separated: text, vision")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each command (alternating)")
    parser.add_argument("--slow-repeats", type=int, default=1, help="runs of the tutorial as written (the slowest command)")
    parser.add_argument("--json", type=Path, help="also write every run's numbers here")
    parser.add_argument("--cold-repeats", type=int, default=3, help="runs of each cold-start command (0: none)")
    parser.add_argument("--smoke", action="store_true", help="a quick check that every command runs (200 text rows, one epoch "
                        "everywhere); its numbers compare nothing")
    parser.add_argument("--write", action="store_true", help="put the markdown into docs/performance.md (between the e2e markers)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))  # this checkout's finetunekit here too (the subset, the reload check)
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    if unknown := set(rows) - {"text", "vision"}:
        sys.exit(f"--rows: unknown {', '.join(sorted(unknown))} (choose from text, vision)")
    if not SST2.is_dir() or not ANTS.is_dir():
        sys.exit(f"data not found under {DATA} (set FINETUNEKIT_SHARED_DATA to the shared/data folder)")
    with tempfile.TemporaryDirectory(prefix="finetunekit-e2e-") as tmp:
        work = Path(tmp)
        plan = {}
        if "text" in rows:
            plan["text"] = text_contestants(work, args.repeats, args.smoke)
        if "vision" in rows:
            plan["vision"] = vision_contestants(work, args.repeats, args.slow_repeats, args.smoke)
        for row, contestants in plan.items():
            print(f"{row}: {len(contestants)} commands, alternating", flush=True)
            for i in range(max(c.repeats for c in contestants)):
                for c in contestants:
                    if i < c.repeats:
                        run_once(c)
        markdown = report(plan, sys.argv[1:])
        if args.cold_repeats:
            markdown += "\nCold start (a new process each, after the training rows):\n\n" + "\n".join(cold_start(plan, args.cold_repeats)) + "\n"
        if args.json:
            args.json.write_text(json.dumps([{k: v for k, v in vars(c).items() if k not in ("argv", "out")}
                                             for cs in plan.values() for c in cs], indent=2, default=str) + "\n")
    print("\nmarkdown for docs/performance.md:\n")
    print(markdown)
    if args.write and not args.smoke:
        write_doc(markdown)


def write_doc(text: str) -> None:
    """Replace what is between ``<!-- e2e:begin -->`` and ``<!-- e2e:end -->`` in docs/performance.md."""
    doc = REPO / "docs" / "performance.md"
    begin, end = "<!-- e2e:begin -->", "<!-- e2e:end -->"
    body = doc.read_text(encoding="utf-8")
    if begin not in body or end not in body:
        sys.exit(f"{doc}: the markers {begin} and {end} are missing")
    body = body[: body.index(begin) + len(begin)] + "\n" + text + body[body.index(end) :]
    partial = doc.with_name(f".{doc.name}.partial")
    partial.write_text(body, encoding="utf-8")
    os.replace(partial, doc)


if __name__ == "__main__":
    main()

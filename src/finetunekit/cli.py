"""Command line: a thin table from subcommand to function.

    finetunekit train recipe.yaml --set train.lr=3e-4 --output runs/x
    finetunekit resume runs/x            (or: finetunekit train recipe.yaml --output runs/x --resume)
    finetunekit evaluate RUN_DIR DATA
    finetunekit predict RUN_DIR INPUT...    (a sentence-pair model: --pair FIRST SECOND, repeatable)
    finetunekit predict RUN_DIR --input FOLDER_OR_TABLE --output predictions.csv
    finetunekit serve RUN_DIR --port 8000
    finetunekit explain RUN_DIR INPUT... --output DIR
    finetunekit report RUN_DIR
    finetunekit compare RUN_DIR RUN_DIR... --output compare.html
    finetunekit select DATA --candidates A,B,C
    finetunekit export RUN_DIR --format onnx|hf|timm
    finetunekit tune recipe.yaml --trials 20 --output studies/x [--storage postgresql://...]
    finetunekit lr-find recipe.yaml --output lr_find/     (learning-rate range test; or train.lr: auto)
    finetunekit demo

User mistakes (a missing path, an unknown backbone, a bad recipe field) print one line on stderr and
exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from .core.errors import FinetuneError
from .core.outputs import check_output


def recipe_reads(recipe) -> list[str]:
    """Every path a recipe names (data files and folders, a local backbone or run directory), for
    :func:`check_output`: the strings of the recipe, and each with a ``source:`` prefix removed
    (``run:runs/x``, ``hf:/models/bert``); the ones that do not exist are skipped there."""
    found: list[str] = []

    def walk(value, key: str = "") -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k != "cache_dir":  # written to, not read, and shared by every run on purpose
                    walk(v, k)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v, key)
        elif isinstance(value, str) and value and "://" not in value:
            found.append(value)
            if ":" in value:
                found.append(value.split(":", 1)[1].split("?", 1)[0])

    walk(recipe.to_dict())
    return found


def cmd_train(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from .core.timing import PhaseTimer, process_age

    importing = time.perf_counter()
    from .run.recipe import Recipe
    from .run.trainer import STARTUP, train

    timer = PhaseTimer()  # the interpreter's start and the imports, then the run's own phases
    timer.add(STARTUP, process_age() or time.perf_counter() - importing, time.process_time())

    reasons = None
    if args.recipe and Path(args.recipe).suffix.lower() in (".yaml", ".yml") and _is_retrieval(args.recipe):
        return _train_retrieval(args)
    if args.recipe and Path(args.recipe).suffix.lower() not in (".yaml", ".yml"):
        from .retrieval.recipe import zero_config

        if zero_config(args.recipe) is not None:  # image and caption columns: an image-text retrieval run
            return _train_retrieval(args)
        from .choose.autoconfig import infer_recipe  # a data path instead of a recipe: zero-config

        inferred = infer_recipe(args.recipe, args.set or [])
        recipe, reasons = inferred.recipe, inferred.reasons
        print("no recipe: chose from the data\n  " + "\n  ".join(reasons), flush=True)
    else:
        recipe = Recipe.from_yaml(args.recipe) if args.recipe else Recipe()
    recipe = recipe.with_overrides(args.set or [])
    if args.resume and not args.output:
        raise FinetuneError("--resume needs --output RUN_DIR: the run directory to continue")
    if args.output:
        check_output(args.output, [args.recipe, *recipe_reads(recipe)], replaces=not args.resume, own_run=True)
    result = train(recipe, output=args.output, overwrite=args.overwrite, quiet=args.quiet, resume=args.resume, timer=timer)
    if args.fast_predict:  # the fast-predict model (finetunekit.use.fast) now, rather than at the first predict
        _write_fast_model(result.run_dir, quiet=args.quiet)
    if args.verbose:
        from .core.timing import format_phases

        print(f"where the time went ({result.run_dir / 'timings.json'}):\n"
              + format_phases(result.timings, process_age() or sum(result.timings.values()), timer.cpu_dict()), flush=True)
    if reasons is not None:
        from .run.artifacts import atomic_write_text

        atomic_write_text(result.run_dir / "autoconfig.txt", "\n".join(reasons) + "\n")  # recipe.yaml holds the result
    return 0


def _is_retrieval(recipe_path: str) -> bool:
    """Whether the recipe file says ``task.type: retrieval``; any file it cannot read is left to
    the recipe reader, which names the problem."""
    from pathlib import Path

    from .retrieval import is_retrieval_recipe

    try:
        return Path(recipe_path).is_file() and is_retrieval_recipe(recipe_path)
    except Exception:  # noqa: BLE001  (unreadable or invalid YAML: Recipe.from_yaml reports it)
        return False


def _train_retrieval(args: argparse.Namespace, resume_dir: str | None = None) -> int:
    """An image-text retrieval recipe (``task.type: retrieval``), or a table of images and captions
    given alone: finetunekit.retrieval trains it."""
    from pathlib import Path

    from .retrieval import RetrievalRecipe, train_retrieval

    if resume_dir is None and Path(args.recipe).suffix.lower() not in (".yaml", ".yml"):
        from .retrieval.recipe import zero_config

        recipe, reasons = zero_config(args.recipe)
        print("no recipe: chose from the data\n  " + "\n  ".join(reasons), flush=True)
    else:
        recipe = RetrievalRecipe.from_yaml(args.recipe if resume_dir is None else f"{resume_dir}/recipe.yaml")
    recipe = recipe.with_overrides(getattr(args, "set", None) or [])
    output = resume_dir or args.output
    resume = resume_dir is not None or args.resume
    if output:
        reads = [v for section in recipe.to_dict().values() for v in section.values() if isinstance(v, str)]
        check_output(output, [args.recipe, *reads] if resume_dir is None else reads, replaces=not resume, own_run=True)
    train_retrieval(recipe, output=output, overwrite=getattr(args, "overwrite", False), quiet=args.quiet, resume=resume)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .run.recipe import Recipe
    from .run.trainer import train

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise FinetuneError(f"run directory not found: {run_dir}")
    if not (run_dir / "recipe.yaml").is_file():
        raise FinetuneError(f"{run_dir / 'recipe.yaml'} is missing: {run_dir} is not a finetunekit run directory")
    if _is_retrieval(str(run_dir / "recipe.yaml")):
        return _train_retrieval(args, resume_dir=str(run_dir))
    recipe = Recipe.from_yaml(run_dir / "recipe.yaml")
    check_output(run_dir, recipe_reads(recipe), replaces=False, own_run=True, flag="RUN_DIR")
    train(recipe, output=run_dir, quiet=args.quiet, resume=True)
    return 0


def _retrieval_run(run_dir: str) -> bool:
    from .retrieval.run_dir import is_retrieval_run

    return is_retrieval_run(run_dir)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .use.predict import load

    if _retrieval_run(args.run_dir):  # recall on an image-caption table, or zero-shot on class folders
        from .retrieval import commands

        return commands.evaluate(args)

    predictor = load(args.run_dir)
    metrics = predictor.evaluate(
        args.data, text_column=args.text_column, label_column=args.label_column, text_columns=args.text_columns,
        image_column=args.image_column, image_root=args.image_root, image_list=args.image_list,
    )
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(predictor.task.format_metrics(metrics, title=f"metrics on {metrics['eval_set']}:"))
    return 0


COLD_START_AIM = 3.0  # seconds from the command to its first answer, beyond which predict says where they went


def cmd_predict(args: argparse.Namespace) -> int:
    import time

    from .core.timing import process_age

    started = time.perf_counter()
    age = process_age()  # the interpreter and finetunekit's own imports, before this line
    fast_ok = _fast_eligible(args)
    if fast_ok:  # the run's ONNX model, run without torch (finetunekit.use.fast)
        from pathlib import Path

        from .use import fast

        spec, why, stale = fast.status(Path(args.run_dir))
        if spec is not None:
            return _predict_fast(args, spec, age, started)
        if args.verbose:
            print(f"predict: torch path: {why}", file=sys.stderr)
    from .modalities import read_examples
    from .data.readers import FLAG_COLUMN_OPTIONS
    from .use.predict import load
    imported = time.perf_counter()

    if args.classes or _retrieval_run(args.run_dir):  # zero-shot classification from class names
        from .retrieval import commands

        if not args.classes:
            raise FinetuneError("predict: an image-text retrieval run classifies with --classes NAME,NAME,...")
        return commands.predict_zero_shot(args)
    if args.input or args.output:
        return _predict_to_file(args)
    predictor = load(args.run_dir).set_options(score_threshold=args.score_threshold, nms_iou=args.nms_iou)
    loaded = time.perf_counter()
    inputs: list = _command_line_inputs(args, bool(predictor.text_columns))
    if args.file:
        columns = args.text_columns or predictor.text_columns
        inputs += read_examples(
            args.file, predictor.modality, args.text_column, require_labels=False, text_columns=columns,
            image_column=args.image_column, options=FLAG_COLUMN_OPTIONS,
        ).inputs
    if not inputs:
        raise FinetuneError("predict: give inputs (image paths or texts) or --file")
    if args.save_dir:
        check_output(args.save_dir, [args.run_dir, args.file, *args.inputs], replaces=False, flag="--save-dir")
        records, written = predictor.records_and_files(inputs, args.save_dir)
        print(f"prediction files: {args.save_dir} ({sum(len(w) - 1 for w in written)} files)", file=sys.stderr)
    else:
        records = predictor.records(inputs)
    _print_records(inputs, records, args.json)
    done = time.perf_counter()
    phases = {"start-up (interpreter, finetunekit)": age if age is not None else 0.0,
              "import torch and the predict path": imported - started, **predictor.load_seconds}
    rest = (loaded - imported) - sum(predictor.load_seconds.values())
    if rest > 0.005:
        phases["the rest of loading"] = rest
    phases[f"predict {len(inputs)} input(s)"] = done - loaded
    _cold_start_line(phases, args.verbose)
    if fast_ok and stale:  # the first predict of a run trained without one: write it for the next ones
        _write_fast_model(args.run_dir, predictor, explain=args.verbose)
    return 0


def _command_line_inputs(args: argparse.Namespace, pairs: bool) -> list:
    """predict's inputs given on the command line: texts or image paths, or ``--pair`` tuples for a
    model trained on sentence pairs (``pairs``); the wrong kind is a one-line error."""
    if pairs and args.inputs:
        raise FinetuneError(
            "this model takes sentence pairs: give each as --pair FIRST SECOND (repeatable), or a table with --file"
        )
    if args.pair and not pairs:
        raise FinetuneError("--pair: this model takes single texts, not pairs (it was not trained with data.text_columns)")
    return [*args.inputs, *(tuple(pair) for pair in args.pair or [])]


def _print_records(inputs: list, records: list[dict], as_json: bool) -> None:
    """predict's answers on stdout: one JSON object per input, or the answer's line and the input."""
    for item, record in zip(inputs, records, strict=True):
        if as_json:
            shown = list(item) if isinstance(item, tuple) else item
            print(json.dumps({"input": shown, **record["json"]}))
        else:
            text = "\t".join(item) if isinstance(item, tuple) else item
            print(f"{record['line']}\t{text}")


def _fast_eligible(args: argparse.Namespace) -> bool:
    """Whether this predict command is one the fast path answers: inputs on the command line
    (texts, image paths or pairs), printed as lines or JSON."""
    return not (args.torch or args.classes or args.input or args.output or args.file or args.save_dir
                or args.score_threshold is not None or args.nms_iou is not None)


def _predict_fast(args: argparse.Namespace, spec: dict, age: float | None, started: float) -> int:
    """``predict`` with the run's fast-predict model: the same checks, lines and JSON as the torch
    path, with numpy, PIL, onnxruntime and tokenizers only."""
    import time
    from pathlib import Path

    import onnxruntime  # noqa: F401  (here, so that the cold-start line counts it as an import)

    from .modalities import InputSchema, modality_of
    from .use.fast import FOLDER, FastModel

    imported = time.perf_counter()
    model = FastModel(Path(args.run_dir) / FOLDER, spec)
    loaded = time.perf_counter()
    inputs: list = _command_line_inputs(args, model.pairs)
    if not inputs:
        raise FinetuneError("predict: give inputs (image paths or texts) or --file")
    schema = InputSchema(2, tuple(spec["text"]["text_columns"])) if model.pairs else InputSchema()
    inputs = modality_of(model.modality).check_inputs(inputs, schema)
    records = model.records(inputs)
    _print_records(inputs, records, args.json)
    done = time.perf_counter()
    phases = {"start-up (interpreter, finetunekit)": age if age is not None else 0.0,
              "import onnxruntime and the fast path": imported - started,
              "load the ONNX model": loaded - imported,
              f"predict {len(inputs)} input(s)": done - loaded}
    _cold_start_line(phases, args.verbose, "fast path (ONNX) ")
    return 0


def _write_fast_model(run_dir, predictor=None, quiet: bool = False, explain: bool = True) -> None:
    """Write the run's fast-predict model, saying so in one line on stderr (unless ``quiet``); a
    run directory that cannot be written to (or is in use) only costs the line. A run the fast
    path does not cover (audio, detection...) is said only with ``explain``; a failed parity
    check always."""
    from .use.export import write_fast_model

    try:
        result = write_fast_model(run_dir, predictor)  # it locks the run directory while it writes
    except (FinetuneError, OSError) as exc:
        if explain:
            print(f"no fast-predict model: {exc}", file=sys.stderr, flush=True)
        return
    if result.path is not None:
        if not quiet:
            print(result.summary() + "; predict uses it from now on (without torch)", file=sys.stderr, flush=True)
    elif explain or result.parity_failed:
        print(result.summary(), file=sys.stderr, flush=True)


def _cold_start_line(phases: dict[str, float], always: bool, path: str = "") -> None:
    """One line on stderr saying where a cold start went, when it took longer than
    :data:`COLD_START_AIM` seconds (or always, with ``--verbose``)."""
    total = sum(phases.values())
    if always or total > COLD_START_AIM:
        parts = "; ".join(f"{name} {seconds:.2f} s" for name, seconds in phases.items())
        print(f"{path}cold start {total:.2f} s: {parts}", file=sys.stderr, flush=True)


def _predict_to_file(args: argparse.Namespace) -> int:
    from .use.serving.bulk import predict_to_csv

    if not (args.input and args.output):
        raise FinetuneError("predict: --input FOLDER_OR_TABLE and --output FILE.csv go together")
    if args.inputs or args.file:
        raise FinetuneError("predict: give either inputs (or --file) or --input/--output, not both")
    if args.batch_size < 1:
        raise FinetuneError(f"--batch-size: expected at least 1, got {args.batch_size}")
    result = predict_to_csv(args.run_dir, args.input, args.output, batch_size=args.batch_size, column=args.text_column,
                            restart=args.restart, quiet=args.quiet, overwrite=args.overwrite,
                            pair_columns=args.text_columns)
    resumed = f" (resumed after {result['resumed']})" if result["resumed"] else ""
    errors = f"; {result['errors']} could not be used (see the error column)" if result["errors"] else ""
    print(f"predictions: {result['output']}: {result['total']} inputs{resumed}{errors}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .use.serving.app import ServeOptions, serve

    options = ServeOptions(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                           max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_inputs=args.max_inputs)
    serve(args.run_dir, args.host, args.port, options, threads=args.threads, device=args.device, log_level=args.log_level)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from .use.explain import write_explanations

    inputs = list(args.inputs)
    if args.file:
        from .modalities import read_examples
        from .use.predict import _modality

        inputs += read_examples(args.file, _modality(args.run_dir), args.text_column, require_labels=False).inputs
    if not inputs:
        raise FinetuneError("explain: give inputs (image paths or texts) or --file")
    check_output(args.output, [args.run_dir, args.file, *args.inputs], replaces=False)
    print(f"explanations: {write_explanations(args.run_dir, inputs, args.output)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .use.explain import error_explanations
    from .report import load_run, write_report

    check_output(args.output or Path(args.run_dir) / "report.html", [args.run_dir])
    load_run(args.run_dir)  # a missing or broken run directory is its one-line error, before any explaining
    report = write_report(args.run_dir, args.output, overwrite=args.overwrite, explanations=error_explanations(args.run_dir))
    print(f"report: {report}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .report import significance_lines, write_comparison

    if all(_retrieval_run(r) for r in args.run_dirs):
        from .retrieval import commands

        return commands.compare(args.run_dirs)
    check_output(args.output, args.run_dirs)
    print(f"comparison: {write_comparison(args.run_dirs, args.output, overwrite=args.overwrite)}")
    for line in significance_lines(args.run_dirs, args.metric):
        print(line)
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from .choose.selection import format_selection, parse_candidates, select

    candidates = parse_candidates(args.candidates, control=args.control)

    def progress(row) -> None:
        if not args.json:
            print(f"scored {row.candidate.label}: LogME {row.scores['logme']:.4f}, k-NN {row.scores['knn']:.4f}", file=sys.stderr, flush=True)

    rows = select(args.data, candidates, k=args.k, max_samples=args.max_samples, seed=args.seed, text_column=args.text_column,
                  label_column=args.label_column, max_length=args.max_length, progress=progress)
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
    else:
        print(format_selection(rows))
    return 0 if any(r.error is None for r in rows) else 2


def cmd_export(args: argparse.Namespace) -> int:
    from .use.export import export

    if _retrieval_run(args.run_dir):  # the text tower as a transformers directory, the image tower as ONNX
        from .retrieval.export import export as export_towers

        done = export_towers(args.run_dir, args.format, args.output, overwrite=args.overwrite, tolerance=args.tolerance)
        print(f"exported {args.format}: {done['output']} (parity: largest difference {done['max_difference']:.2e})")
        return 0

    result = export(args.run_dir, args.format, args.output, overwrite=args.overwrite, tolerance=args.tolerance)
    print(result.summary())
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from .run.recipe import Recipe
    from .choose.tune import tune

    recipe = Recipe.from_yaml(args.recipe).with_overrides(args.set or [])
    check_output(args.output, [args.recipe, *recipe_reads(recipe)], replaces=False)
    tune(recipe, args.output, trials=args.trials, timeout=args.timeout, storage=args.storage, study_name=args.study_name,
         keep_weights=args.keep_weights, heartbeat=args.heartbeat, quiet=args.quiet)
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .run.recipe import Recipe
    from .run.trainer import find_lr, save_lr_find

    recipe = Recipe.from_yaml(args.recipe).with_overrides(args.set or [])
    check_output(args.output, [args.recipe, *recipe_reads(recipe)], replaces=False)
    if not 0 < args.start < args.end:
        raise FinetuneError(f"lr-find: --start {args.start:g} must be above 0 and below --end {args.end:g}")
    if args.steps < 20:
        raise FinetuneError(f"lr-find: --steps must be at least 20, got {args.steps}")
    _, found = find_lr(recipe, steps=args.steps, start=args.start, end=args.end, rule=args.rule)
    png, data = save_lr_find(found, Path(args.output))
    others = ", ".join(f"{rule} {lr:.3g}" for rule, lr in found.result.suggestions.items() if rule != args.rule)
    print(f"plot: {png}  data: {data}  (other rules: {others})")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from .retrieval import commands

    check_output(args.output, [args.run_dir, args.source], replaces=False, flag="--output")
    return commands.index(args)


def cmd_search(args: argparse.Namespace) -> int:
    from .retrieval import commands

    return commands.search(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    check_output(args.output)
    run_demo(args.output, overwrite=args.overwrite, quick=args.quick)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .backbones import BUNDLED, SOURCES
    from .strategies import STRATEGIES

    print("backbone sources: " + ", ".join(f"{s}:" for s in SOURCES.names()))
    print("bundled backbones: " + ", ".join(f"bundled:{n}" for n in BUNDLED.names()))
    print("strategies:")
    names = STRATEGIES.names()
    for name in names:
        print(f"  {name.ljust(max(map(len, names)))}  {STRATEGIES.get(name).describe()}")
    without = [n for n in names if not STRATEGIES.get(n).supports_layer_decay]
    print(f"with any strategy but {', '.join(without)}: strategy.layer_decay=d trains backbone layer group i of n at train.lr * d**(n-1-i)")
    from .tasks import TASKS

    print("task types (task.type; several tasks: tasks:): " + ", ".join(n for n in TASKS.names() if not TASKS.get(n).composite))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": cmd_train,
    "resume": cmd_resume,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "serve": cmd_serve,
    "explain": cmd_explain,
    "report": cmd_report,
    "compare": cmd_compare,
    "select": cmd_select,
    "export": cmd_export,
    "tune": cmd_tune,
    "lr-find": cmd_lr_find,
    "index": cmd_index,
    "search": cmd_search,
    "demo": cmd_demo,
    "list": cmd_list,
}


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__

    parser = argparse.ArgumentParser(prog="finetunekit", description="Fine-tune pretrained image and text models.")
    parser.add_argument("--version", action="version", version=f"finetunekit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fine-tune from a YAML recipe")
    p.add_argument("recipe", nargs="?",
                   help="recipe YAML file (optional: --set alone works too), or a data path alone (image folder or "
                   ".csv/.tsv/.jsonl/.parquet table): the recipe is then chosen from the data, with the reasons printed")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="override a recipe field (repeatable)")
    p.add_argument("--output", "-o", help="run directory (default: runs/<timestamp>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output from its newest checkpoint (starts it when there is none yet)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("--verbose", "-v", action="store_true", help="at the end, the seconds each phase took (also in RUN_DIR/timings.json)")
    p.add_argument("--fast-predict", action="store_true", help="also write the fast-predict (ONNX) model at the end (3-5 s; "
                   "otherwise the first predict writes it), so that even the first predict runs without torch")

    p = sub.add_parser("resume", help="continue a stopped run from its newest checkpoint, with its own recipe.yaml")
    p.add_argument("run_dir")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or per-epoch lines")

    p = sub.add_parser("evaluate", help="metrics of a run on a labelled data set")
    p.add_argument("run_dir")
    p.add_argument("data", help="image folder, or a .csv/.tsv/.jsonl/.parquet table (texts or image files) with labels")
    p.add_argument("--text-column")
    p.add_argument("--text-columns", nargs=2, metavar=("FIRST", "SECOND"),
                   help="sentence pairs: the two text columns (default: the run's data.text_columns)")
    p.add_argument("--image-column", help="image tables: the column of image files (relative to the table)")
    p.add_argument("--image-root", help="image tables: the folder the image paths are relative to (default: the table's folder)")
    p.add_argument("--image-list", help="a text file naming the images to evaluate, one file name a line (e.g. Penn-Fudan's val.txt)")
    p.add_argument("--label-column", default=None, help="default: the run's own label column(s)")
    p.add_argument("--classes", help="image-text runs: zero-shot on a folder of class folders, these names in place of the folder names")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")

    p = sub.add_parser("predict", help="predict labels with a run directory")
    p.add_argument("run_dir")
    p.add_argument("inputs", nargs="*", help="image paths, or texts")
    p.add_argument("--pair", nargs=2, action="append", metavar=("FIRST", "SECOND"),
                   help="one sentence pair, for a model trained with data.text_columns (repeatable)")
    p.add_argument("--file", help="a .csv/.tsv/.jsonl/.txt/.parquet table of texts, pairs or image files "
                   "(or an image folder) to predict")
    p.add_argument("--text-column", "--column", dest="text_column",
                   help="the table column to read (texts, or image files for an image model)")
    p.add_argument("--text-columns", nargs=2, metavar=("FIRST", "SECOND"),
                   help="--file of pairs: the two text columns (default: the run's data.text_columns)")
    p.add_argument("--image-column", help="--file of images: the column of image files (relative to the table)")
    p.add_argument("--json", action="store_true", help="one JSON object per input, with all class probabilities")
    p.add_argument("--verbose", "-v", action="store_true", help="on stderr, where the cold start went (printed anyway when it "
                   "takes over 3 s), and why the fast path was not taken")
    p.add_argument("--torch", action="store_true", help="predict with the PyTorch model even where the run has a fast-predict "
                   "(ONNX) model, and write none")
    p.add_argument("--classes", metavar="A,B,...", help="image-text runs: zero-shot classification into these classes, from their names")
    p.add_argument("--save-dir", help="also write the task's prediction files there (segmentation: an index PNG and a colour "
                   "overlay per image; detection: each image with its boxes drawn, and detections.json in COCO result format)")
    p.add_argument("--score-threshold", type=float, help="detection: report detections scoring at least this (default: the run's "
                   "task.score_threshold)")
    p.add_argument("--nms-iou", type=float, help="detection: non-maximum suppression drops the weaker of two boxes of one class "
                   "overlapping by more than this IoU (default: the run's task.nms_iou)")
    p.add_argument("--input", help="batch mode: an image folder or a .csv/.tsv/.jsonl/.txt table (texts, or image paths)")
    p.add_argument("--output", "-o", help="batch mode: the CSV file to write (atomically; a rerun resumes)")
    p.add_argument("--batch-size", type=int, default=64, help="batch mode: inputs per forward pass (default 64)")
    p.add_argument("--restart", action="store_true", help="batch mode: ignore a partial output left by an earlier run")
    p.add_argument("--overwrite", action="store_true", help="batch mode: replace an existing --output file")
    p.add_argument("--quiet", "-q", action="store_true", help="batch mode: no progress bar")

    p = sub.add_parser("serve", help="an HTTP service (and web page) answering predictions, with dynamic batching")
    p.add_argument("run_dir")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--max-batch-size", type=int, default=32, help="most inputs gathered into one forward pass (1: no batching)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="longest wait for more requests to fill a batch")
    p.add_argument("--max-body-mb", type=float, default=20.0, help="largest request body accepted (413 above)")
    p.add_argument("--max-inputs", type=int, default=64, help="most inputs in one request")
    p.add_argument("--threads", type=int, help="torch threads for inference (default: every core)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    p = sub.add_parser("explain", help="Grad-CAM overlays (images), token attributions (texts) or time-frequency attributions "
                                       "over the spectrogram (audio), as HTML and PNG files")
    p.add_argument("run_dir")
    p.add_argument("inputs", nargs="*", help="image or audio paths, or texts")
    p.add_argument("--file", help="a .csv/.tsv/.jsonl/.txt file of texts (or an image or audio folder) to explain")
    p.add_argument("--text-column")
    p.add_argument("--output", "-o", required=True, help="directory for index.html, explanations.jsonl and overlays")

    p = sub.add_parser("report", help="(re)write a run's HTML report (RUN_DIR/report.html)")
    p.add_argument("run_dir")
    p.add_argument("--output", "-o", help="HTML file to write (default: RUN_DIR/report.html)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")

    p = sub.add_parser("compare", help="one HTML page comparing runs; says whether each differs significantly from the first")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--output", "-o", default="compare.html", help="HTML file to write (default: compare.html)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("--metric", choices=["accuracy", "macro_f1"], default="accuracy",
                   help="metric of the significance test printed for each run against the first (default: accuracy)")

    p = sub.add_parser("select", help="rank candidate backbones for a data set from their frozen features (LogME, k-NN)")
    p.add_argument("data", help="image folder or .csv/.tsv/.jsonl file with labels (its training part is scored)")
    p.add_argument("--candidates", "-c", required=True, metavar="A,B,C",
                   help="backbones as in model.backbone (timm:, hf:, bundled:, run:); NAME?pretrained=false for an untrained one")
    p.add_argument("--control", action="store_true", help="add the first candidate with random weights (it should rank last)")
    p.add_argument("--k", type=int, default=5, help="neighbours of the k-NN score (default 5)")
    p.add_argument("--max-samples", type=int, help="score a seeded stratified subset of this many training examples")
    p.add_argument("--seed", type=int, default=0, help="split, subset and control weights seed (default 0, as train.seed)")
    p.add_argument("--text-column")
    p.add_argument("--label-column", default="label")
    p.add_argument("--max-length", type=int, default=128, help="text: tokens per example (default 128, as data.max_length)")
    p.add_argument("--json", action="store_true", help="print the table as JSON")

    p = sub.add_parser("export", help="export a run for use without finetunekit (ONNX, transformers, timm)")
    p.add_argument("run_dir")
    p.add_argument("--format", "-f", required=True, choices=["onnx", "hf", "timm"],
                   help="onnx: an ONNX model checked against PyTorch; hf: a transformers directory (text runs); "
                   "timm: a timm directory (image runs)")
    p.add_argument("--output", "-o", help="output directory (default: RUN_DIR/export/FORMAT)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export directory")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest logit difference the parity check accepts")

    p = sub.add_parser("tune", help="hyper-parameter search (Optuna) over the recipe's search: space")
    p.add_argument("recipe", help="recipe YAML file; its search: section declares the space (default: per modality)")
    p.add_argument("--trials", type=int, default=20, help="finished trials the study needs (default 20)")
    p.add_argument("--timeout", type=float, help="start no trial after this many seconds")
    p.add_argument("--output", "-o", required=True, help="study directory: trials/, best/, study.html (and study.db)")
    p.add_argument("--storage", help="shared study database, e.g. postgresql://user:pass@host/db (default: OUTPUT/study.db)")
    p.add_argument("--study-name", default="finetunekit", help="the study's name in the storage (default finetunekit)")
    p.add_argument("--keep-weights", action="store_true", help="keep every trial's weights, not only the best one's")
    p.add_argument("--heartbeat", type=int, default=10,
                   help="seconds between a worker's heartbeats; a trial silent for 3 of them is failed and run again")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="override a recipe field (repeatable)")
    p.add_argument("--quiet", "-q", action="store_true", help="no per-trial lines")

    p = sub.add_parser("lr-find", help="learning-rate range test: loss against an exponentially growing rate, a suggested rate")
    p.add_argument("recipe")
    p.add_argument("--output", "-o", default="lr_find", help="folder for lr_find.png and lr_find.json (default lr_find/)")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps in the sweep (default 200)")
    p.add_argument("--start", type=float, default=1e-7, help="first rate (default 1e-7)")
    p.add_argument("--end", type=float, default=10.0, help="last rate, unless the loss diverges first (default 10)")
    p.add_argument("--rule", choices=["min/10", "steepest"], default="min/10",
                   help="min/10: a tenth of the rate at the smoothed loss minimum (default); steepest: its steepest descent")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="override a recipe field (repeatable)")

    p = sub.add_parser("index", help="image-text runs: embed a folder or table of images into a searchable index (resumable)")
    p.add_argument("run_dir")
    p.add_argument("source", help="an image folder (searched recursively) or a table with an image column")
    p.add_argument("--output", "-o", required=True, help="the index directory to write")
    p.add_argument("--image-column", help="tables: the column of image files (default: image, path or file)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--restart", action="store_true", help="build again from the start (an unfinished build resumes by default)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    p = sub.add_parser("search", help="the images of an index nearest a text (or an image)")
    p.add_argument("index")
    p.add_argument("query", nargs="?", help="the text to search for")
    p.add_argument("--image", help="search with this image instead of a text")
    p.add_argument("--top", type=int, default=10, help="results to show (default 10)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")

    p = sub.add_parser("demo", help="offline demo: bundled EfficientNet-Lite0 on scikit-learn's digits")
    p.add_argument("--output", "-o", default="runs/demo")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quick", action="store_true", help="fewer images and epochs (a smoke test)")

    sub.add_parser("list", help="list backbone sources, bundled backbones and strategies")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options may come before, between or after positional arguments (``predict RUN --json TEXT``).

    argparse alone ends a ``nargs="*"`` positional at the first option and then rejects what follows;
    the subcommand's own parser, given the arguments after the command name, reads them intermixed.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if not extra:
        return args
    argv = list(sys.argv[1:] if argv is None else argv)
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    rest = argv[argv.index(args.command) + 1 :]
    return argparse.Namespace(**{**vars(subparsers.choices[args.command].parse_intermixed_args(rest)), "command": args.command})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except FinetuneError as exc:
        print(f"finetunekit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"finetunekit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

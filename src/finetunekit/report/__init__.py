"""HTML reports: one self-contained page per run, and one page comparing runs.

Training writes ``RUN_DIR/report.html`` at the end; these regenerate or extend it::

    finetunekit report runs/ants                       # -> runs/ants/report.html
    finetunekit compare runs/a runs/b -o compare.html  # curves overlaid, metrics side by side

or from Python::

    from finetunekit.report import write_report, write_comparison
    write_report("runs/ants")
    write_comparison(["runs/a", "runs/b"], "compare.html")

A run page has: headline metrics, training and validation curves (loss per step and epoch,
validation accuracy and macro F1, learning rate per parameter group), the confusion matrix,
per-class precision/recall/F1, calibration (reliability diagram and ECE), and the worst errors
(the most confidently misclassified validation images as a gallery, or texts as a table). It reads
only the run directory's files; images in the error gallery are read from their paths at report
time and inlined as thumbnails.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from html import escape
from pathlib import Path

from .. import artifacts
from ..errors import FinetuneError
from . import html, plots
from .run_data import RunData, load_run, worst_errors

__all__ = ["load_run", "write_comparison", "write_report"]

REPORT_FILE = "report.html"
MAX_IMAGE_ERRORS = 24
MAX_TEXT_ERRORS = 50


def write_report(
    run_dir: str | Path, output: str | Path | None = None, overwrite: bool = False, explanations: dict[int, str] | None = None
) -> Path:
    """Render the run's report page (default ``RUN_DIR/report.html``, which it always replaces;
    another existing ``output`` only with ``overwrite``); returns its path. ``explanations``: per
    validation index, the explanation of that error (a Grad-CAM overlay's data URI, or highlighted
    text HTML), as :func:`finetunekit.explain.error_explanations` makes them."""
    from ..outputs import check_new_file

    if output is not None:
        check_new_file(Path(output), overwrite)
    run = load_run(run_dir)
    target = Path(output) if output is not None else run.run_dir / REPORT_FILE
    artifacts.atomic_write_text(target, render_report(run, explanations))
    return target


def write_report_after_training(run_dir: Path, quiet: bool, explain: Callable[[Path], dict[int, str]] | None = None) -> None:
    """The end-of-training report; ``explain(run_dir)`` gives its errors' explanations. The run's
    artifacts are already saved when this runs, so a failure here warns (with the command that
    retries) instead of failing the finished run."""
    try:
        path = write_report(run_dir, explanations=explain(run_dir) if explain is not None else None)
    except Exception as exc:  # noqa: BLE001 - any plotting failure must not lose a finished run
        warnings.warn(f"{run_dir}: report.html not written ({type(exc).__name__}: {exc}); "
                      f"retry with: finetunekit report {run_dir}", stacklevel=2)
        return
    if not quiet:
        print(f"report: {path}", flush=True)


def render_report(run: RunData, explanations: dict[int, str] | None = None) -> str:
    m = run.metrics
    header = (
        f"<h1>{escape(run.name)}</h1>"
        f"<p>{escape(run.backbone)} &middot; {escape(run.modality)} &middot; strategy {escape(run.strategy)} "
        f"&middot; {len(run.classes)} classes &middot; best epoch {escape(str(m.get('best_epoch', '?')))} of "
        f"{escape(str(m.get('epochs_run', len(run.epochs))))}</p>"
        f"<p>evaluated on {escape(str(m.get('eval_set', '?')))} ({m.get('num_examples', '?')} examples)</p>"
        + html.cards([
            ("accuracy", html.fmt(m.get("accuracy"))), ("macro F1", html.fmt(m.get("macro_f1"))),
            ("macro precision", html.fmt(m.get("macro_precision"))), ("macro recall", html.fmt(m.get("macro_recall"))),
            ("loss", html.fmt(m.get("loss"))), ("ECE", html.fmt(m.get("ece"))),
        ])
    )
    sections = [_curves(run), _confusion(run), _per_class(run), _calibration(run), _errors(run, explanations or {})]
    return html.page(f"finetunekit report: {run.name}", header, sections)


def _curves(run: RunData) -> str:
    if not run.epochs:
        return html.section("curves", "Training curves", '<p class="note">metrics.jsonl has no epochs.</p>')
    body = '<div class="plots">' + "".join([
        html.figure(plots.loss_curves(run), "Training loss per optimizer step (faint) and per epoch; validation loss after each epoch."),
        html.figure(plots.metric_curves(run), "Validation accuracy and macro F1 after each epoch; the dashed line is the epoch whose weights were kept."),
        html.figure(plots.lr_curves(run), "Learning rate of each parameter group (the new head and the backbone groups)."),
    ]) + "</div>"
    return html.section("curves", "Training curves", body)


def _confusion(run: RunData) -> str:
    caption = "Rows are true classes, columns predicted classes; numbers are counts, colour the share of the row."
    return html.section("confusion-matrix", "Confusion matrix", html.figure(plots.confusion_matrix_plot(run), caption))


def _per_class(run: RunData) -> str:
    per_class = run.metrics.get("per_class", {})
    rows = [[name, html.fmt(r["precision"]), html.fmt(r["recall"]), html.fmt(r["f1"]), r["support"]] for name, r in per_class.items()]
    m = run.metrics
    rows.append(["macro average", html.fmt(m.get("macro_precision")), html.fmt(m.get("macro_recall")), html.fmt(m.get("macro_f1")),
                 sum(r["support"] for r in per_class.values())])
    body = html.table(["class", "precision", "recall", "F1", "support"], rows)
    return html.section("per-class", "Per-class precision, recall and F1", body)


def _calibration(run: RunData) -> str:
    plot = plots.reliability_diagram(run)
    if plot is None:
        body = f'<p class="note">ECE {html.fmt(run.metrics.get("ece"))}. The run has no {artifacts.PREDICTIONS_FILE}, so no reliability diagram.</p>'
    else:
        body = html.figure(plot, (
            "Each bar: validation examples whose top-class probability falls in the bin; its height is how many of them "
            "were right. Bars under the diagonal mean over-confidence. ECE is the count-weighted mean gap (15 bins)."
        ))
    return html.section("calibration", "Calibration", body)


def _errors(run: RunData, explanations: dict[int, str]) -> str:
    if not run.predictions:
        return html.section("errors", "Worst errors", f'<p class="note">The run has no {artifacts.PREDICTIONS_FILE}.</p>')
    limit = MAX_IMAGE_ERRORS if run.modality == "image" else MAX_TEXT_ERRORS
    errors = worst_errors(run, limit)
    total = sum(1 for r in run.predictions if r.get("label") is not None and r["predicted"] != r["label"])
    intro = f'<p class="note">{total} of {len(run.predictions)} validation examples are misclassified'
    intro += f"; the {len(errors)} most confident mistakes:</p>" if errors else ".</p>"
    explained = [r for r in errors if r.get("index") in explanations]
    if explained:
        intro += ('<p class="note">Under each image, Grad-CAM of the predicted class: red is where the model found '
                  "its evidence.</p>" if run.modality == "image" else
                  '<p class="note">Words coloured by integrated gradients of the predicted class: green pushed towards '
                  "it, red away from it (hover for the value).</p>")
        if len(explained) < len(errors):
            intro += f'<p class="note">The {len(explained)} most confident mistakes are explained.</p>'
    if not errors:
        body = intro
    elif run.modality == "image":
        body = intro + '<div class="gallery">' + "".join(html.image_tile(r, explanations.get(r.get("index"))) for r in errors) + "</div>"
    else:
        # a sentence pair is saved as [first, second]: shown as both texts, one after the other
        rows = [[html.Markup(explanations[r["index"]]) if r.get("index") in explanations else _text(r["input"]),
                 r["label"], r["predicted"], f"{r['confidence']:.1%}"] for r in errors]
        body = intro + html.table(["text", "true", "predicted", "confidence"], rows, [["text", "true", "pred", ""]] * len(rows))
    return html.section("errors", "Worst errors", body)


def _text(value) -> str:
    return " ‖ ".join(map(str, value)) if isinstance(value, list) else str(value)


# -- comparison ----------------------------------------------------------------------------------

COMPARED = [("accuracy", "max"), ("macro_f1", "max"), ("macro_precision", "max"), ("macro_recall", "max"), ("loss", "min"), ("ece", "min")]


def write_comparison(run_dirs: list[str | Path], output: str | Path, overwrite: bool = False) -> Path:
    """One page comparing runs: per-epoch curves overlaid and final metrics side by side. An
    existing ``output`` is replaced only with ``overwrite``, and only by a page (``.html``)."""
    from ..outputs import check_new_file

    if len(run_dirs) < 2:
        raise FinetuneError("compare: give at least two run directories")
    check_new_file(Path(output), overwrite)
    runs = [load_run(d) for d in run_dirs]
    artifacts.atomic_write_text(Path(output), render_comparison(runs))
    return Path(output)


def render_comparison(runs: list[RunData]) -> str:
    names = _unique_names(runs)
    headers = ["metric", *names]
    rows, css = [], []
    for key, better in COMPARED:
        values = [r.metrics.get(key) for r in runs]
        known = [v for v in values if isinstance(v, (int, float))]
        best = (max(known) if better == "max" else min(known)) if known else None
        rows.append([f"{key} ({'higher' if better == 'max' else 'lower'} is better)", *(html.fmt(v) for v in values)])
        css.append(["", *("best" if v is not None and v == best else "" for v in values)])
    for key, label in [("best_epoch", "best epoch"), ("epochs_run", "epochs run"), ("train_seconds", "training seconds"),
                       ("num_examples", "evaluation examples")]:
        rows.append([label, *(html.fmt(r.metrics.get(key), 1) for r in runs)])
        css.append([""] * (len(runs) + 1))
    setup = [["backbone", *(r.backbone for r in runs)], ["strategy", *(r.strategy for r in runs)],
             ["evaluation set", *(str(r.metrics.get("eval_set", "?")) for r in runs)],
             ["run directory", *(str(r.run_dir) for r in runs)]]
    eval_sets = {str(r.metrics.get("eval_set")) for r in runs}
    warning = "" if len(eval_sets) == 1 else (
        '<p class="note">The runs were evaluated on different sets; their metrics are not directly comparable.</p>')
    sections = [
        html.section("metrics", "Final validation metrics", warning + html.table(headers, rows, css)),
        html.section("curves", "Curves", html.figure(plots.comparison_curves(runs, names), "Per-epoch curves, one colour per run.")),
        html.section("setup", "Setup", html.table(["", *names], setup)),
    ]
    header = f"<h1>Comparison of {len(runs)} runs</h1><p>{escape(', '.join(names))}</p>"
    return html.page("finetunekit comparison", header, sections)


def _unique_names(runs: list[RunData]) -> list[str]:
    names = [r.name for r in runs]
    if len(set(names)) == len(names):
        return names
    return [str(r.run_dir) for r in runs]

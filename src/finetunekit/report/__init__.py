"""HTML reports: one self-contained page per run, and one page comparing runs.

Training writes ``RUN_DIR/report.html`` at the end; these regenerate or extend it::

    finetunekit report runs/ants                       # -> runs/ants/report.html
    finetunekit compare runs/a runs/b -o compare.html  # curves overlaid, metrics side by side

or from Python::

    from finetunekit.report import write_report, write_comparison
    write_report("runs/ants")
    write_comparison(["runs/a", "runs/b"], "compare.html")

A run page has: headline metrics, training and validation curves (loss per step and epoch,
validation metrics, learning rate per parameter group), then the task's sections
(each task type's ``ReportView``, rendered by :data:`SECTIONS`). Classification: the confusion matrix, per-class precision/recall/F1,
calibration (reliability diagram and ECE), and the worst errors (the most confidently misclassified
validation images as a gallery, or texts as a table). Regression: predicted against true values,
the residuals, and the largest errors. Multi-label: the per-label table with its thresholds and the
examples with the most wrong labels. It reads only the run directory's files; images in the
galleries are read from their paths at report time and inlined as thumbnails.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..run import artifacts
from ..core.errors import FinetuneError
from ..modalities import modality_of
from . import html, plots
from .run_data import RunData, load_run, worst_errors

if TYPE_CHECKING:
    from ..core.stats import Comparison
    from ..tasks.base import ReportView

__all__ = ["load_run", "significance", "significance_lines", "write_comparison", "write_report"]

REPORT_FILE = "report.html"


def write_report(
    run_dir: str | Path, output: str | Path | None = None, overwrite: bool = False, explanations: dict[int, str] | None = None
) -> Path:
    """Render the run's report page (default ``RUN_DIR/report.html``, which it always replaces;
    another existing ``output`` only with ``overwrite``); returns its path. ``explanations``: per
    validation index, the explanation of that error (a Grad-CAM overlay's data URI, or highlighted
    text HTML), as :func:`finetunekit.use.explain.error_explanations` makes them."""
    from ..core.outputs import check_new_file

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


def task_view(run: RunData) -> ReportView:
    """The run's report view, as its task type describes it (finetunekit.tasks.base.ReportView)."""
    from ..tasks import TASKS

    return TASKS.get(run.task_type).view(run.task)


def _noun(run: RunData, view: ReportView) -> str:
    """The view's subtitle template filled from the run."""
    parts = _task_parts(run)
    return view.noun.format(
        count=len(run.classes), names=", ".join(run.classes) or "one target", plural="es" if len(run.classes) != 1 else "",
        tasks=len(parts), task_names=", ".join(p["name"] for p in parts),
    )


def render_report(run: RunData, explanations: dict[int, str] | None = None) -> str:
    m = run.metrics
    view = task_view(run)
    header = (
        f"<h1>{escape(run.name)}</h1>"
        f"<p>{escape(run.backbone)} &middot; {escape(run.modality)} &middot; strategy {escape(run.strategy)} "
        f"&middot; {escape(_noun(run, view))} &middot; best epoch {escape(str(m.get('best_epoch', '?')))} of "
        f"{escape(str(m.get('epochs_run', len(run.epochs))))}</p>"
        f"<p>evaluated on {escape(str(m.get('eval_set', '?')))} ({m.get('num_examples', '?')} examples)</p>"
        + html.cards([(_with_ci(label, m, key), html.fmt(m.get(key))) for label, key in view.cards])
    )
    sections = [_curves(run, view), *(SECTIONS[name](run, explanations or {}) for name in view.sections)]
    return html.page(f"finetunekit report: {run.name}", header, sections)


def _with_ci(label: str, metrics: dict, key: str | None = None) -> str:
    """A card's label with the metric's bootstrap interval (metrics.json ``<key>_ci``) when there is one."""
    from ..core.stats import format_ci

    ci = format_ci(metrics.get(f"{key or label}_ci"))
    return f"{label} (95% CI {ci})" if ci else label


def _curves(run: RunData, view: ReportView) -> str:
    if not run.epochs:
        return html.section("curves", "Training curves", '<p class="note">metrics.jsonl has no epochs.</p>')
    curves = list(view.curves)
    names = " and ".join(label for _, label in curves)
    body = '<div class="plots">' + "".join([
        html.figure(plots.loss_curves(run), "Training loss per optimizer step (faint) and per epoch; validation loss after each epoch."),
        html.figure(plots.metric_curves(run, curves, view.bounded),
                    f"Validation {names} after each epoch; the dashed line is the epoch whose weights were kept."),
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
    kind = modality_of(run.modality)
    errors = worst_errors(run, kind.report_errors)
    total = sum(1 for r in run.predictions if r.get("label") is not None and r["predicted"] != r["label"])
    intro = f'<p class="note">{total} of {len(run.predictions)} validation examples are misclassified'
    intro += f"; the {len(errors)} most confident mistakes:</p>" if errors else ".</p>"
    explained = [r for r in errors if r.get("index") in explanations]
    if errors and not explanations and not kind.explain_after_training:
        intro += (f'<p class="note">To explain these errors: <code>finetunekit report {escape(str(run.run_dir))}</code> '
                  "rewrites this page with them.</p>")
    if explained:
        intro += kind.explanation_note
        if len(explained) < len(errors):
            intro += f'<p class="note">The {len(explained)} most confident mistakes are explained.</p>'
    if not errors:
        body = intro
    elif kind.input_view == "gallery":
        body = intro + '<div class="gallery">' + "".join(html.image_tile(r, explanations.get(r.get("index"))) for r in errors) + "</div>"
    else:
        # a sentence pair is saved as [first, second]: shown as both texts, one after the other
        rows = []
        for r in errors:
            own = kind.report_cell(r["input"], explanations.get(r.get("index")))  # the modality's view (audio: playable)
            cell = html.Markup(own) if own is not None else (
                html.Markup(explanations[r["index"]]) if r.get("index") in explanations else _text(r["input"]))
            rows.append([cell, r["label"], r["predicted"], f"{r['confidence']:.1%}"])
        body = intro + html.table([kind.input_noun, "true", "predicted", "confidence"], rows, [["text", "true", "pred", ""]] * len(rows))
    return html.section("errors", "Worst errors", body)


def _text(value) -> str:
    return " ‖ ".join(map(str, value)) if isinstance(value, list) else str(value)


# -- regression ----------------------------------------------------------------------------------


def _predicted_vs_true(run: RunData) -> str:
    plot = plots.predicted_vs_true(run)
    if plot is None:
        return html.section("predicted-vs-true", "Predicted against true", f'<p class="note">The run has no {artifacts.PREDICTIONS_FILE}.</p>')
    caption = "Each dot is a validation example; on the dashed diagonal the prediction equals the true value."
    return html.section("predicted-vs-true", "Predicted against true", html.figure(plot, caption))


def _residuals(run: RunData) -> str:
    plot = plots.residual_plots(run)
    if plot is None:
        return html.section("residuals", "Residuals", f'<p class="note">The run has no {artifacts.PREDICTIONS_FILE}.</p>')
    caption = ("Residual = predicted - true. A trend against the prediction means a bias at some values (often regression "
               "to the mean at the extremes); the histogram shows how large the errors usually are.")
    per_target = run.metrics.get("per_target", {})
    table = ""
    if len(per_target) > 1:
        rows = [[name, *(html.fmt(r[k]) for k in ("rmse", "mae", "r2", "pearson", "spearman"))] for name, r in per_target.items()]
        table = html.table(["target", "RMSE", "MAE", "R²", "Pearson", "Spearman"], rows)
    return html.section("residuals", "Residuals", html.figure(plot, caption) + table)


def _largest_errors(run: RunData) -> str:
    rows = [r for r in run.predictions if r.get("label") is not None]
    if not rows:
        return html.section("errors", "Largest errors", f'<p class="note">The run has no {artifacts.PREDICTIONS_FILE}.</p>')

    def error(r: dict) -> float:
        true, pred = r["label"], r["predicted"]
        if isinstance(true, list):
            return max(abs(p - t) for p, t in zip(pred, true, strict=True))
        return abs(pred - true)

    kind = modality_of(run.modality)
    worst = sorted(rows, key=lambda r: -error(r))[: kind.report_errors]
    intro = f'<p class="note">The {len(worst)} validation examples with the largest absolute error:</p>'
    if kind.input_view == "gallery":
        tiles = [{**r, "label": _shown(r["label"]), "predicted": _shown(r["predicted"]), "confidence": error(r)} for r in worst]
        body = intro + '<div class="gallery">' + "".join(html.image_tile(t, detail="error") for t in tiles) + "</div>"
    else:
        table = [[_text(r["input"]), _shown(r["label"]), _shown(r["predicted"]), f"{error(r):.3g}"] for r in worst]
        body = intro + html.table(["text", "true", "predicted", "error"], table, [["text", "true", "pred", ""]] * len(table))
    return html.section("errors", "Largest errors", body)


def _shown(value) -> str:
    return ", ".join(f"{v:.3g}" for v in value) if isinstance(value, list) else f"{value:.3g}"


# -- multi-label -----------------------------------------------------------------------------------


def _per_label(run: RunData) -> str:
    per_label = run.metrics.get("per_label", {})
    rows = [[name, html.fmt(r["threshold"]), html.fmt(r["precision"]), html.fmt(r["recall"]), html.fmt(r["f1"]),
             html.fmt(r["average_precision"]), r["support"]] for name, r in per_label.items()]
    body = html.table(["label", "threshold", "precision", "recall", "F1", "average precision", "support"], rows)
    note = ('<p class="note">A label is predicted when its probability reaches its threshold (chosen on the validation set '
            "for the best F1 of that label, unless the recipe fixed one).</p>")
    return html.section("per-label", "Per-label precision, recall and F1", note + body)


def _label_errors(run: RunData) -> str:
    rows = [r for r in run.predictions if r.get("label") is not None]
    if not rows:
        return html.section("errors", "Worst errors", f'<p class="note">The run has no {artifacts.PREDICTIONS_FILE}.</p>')

    def wrong(r: dict) -> int:
        return len(set(r["label"]) ^ set(r["predicted"]))

    kind = modality_of(run.modality)
    worst = [r for r in sorted(rows, key=lambda r: -wrong(r)) if wrong(r)][: kind.report_errors]
    total = sum(1 for r in rows if wrong(r))
    intro = f'<p class="note">{total} of {len(rows)} validation examples have a wrong label set; the {len(worst)} with the most wrong labels:</p>'
    if kind.input_view == "gallery":
        tiles = [{**r, "label": ", ".join(r["label"]) or "(none)", "predicted": ", ".join(r["predicted"]) or "(none)",
                  "confidence": float(wrong(r))} for r in worst]
        body = intro + '<div class="gallery">' + "".join(html.image_tile(t, detail="wrong labels") for t in tiles) + "</div>"
    else:
        table = [[_text(r["input"]), ", ".join(r["label"]) or "(none)", ", ".join(r["predicted"]) or "(none)", wrong(r)] for r in worst]
        body = intro + html.table(["text", "true", "predicted", "wrong labels"], table, [["text", "true", "pred", ""]] * len(table))
    return html.section("errors", "Worst errors", body)


# -- segmentation ----------------------------------------------------------------------------------


def _per_class_iou(run: RunData) -> str:
    per_class = run.metrics.get("per_class", {})
    rows = [[name, html.fmt(r.get("iou")), f"{r.get('share', 0.0):.2%}"] for name, r in per_class.items()]
    rows.append(["mean", html.fmt(run.metrics.get("mean_iou")), ""])
    note = '<p class="note">IoU over the validation pixels (the ignore value left out); share: of the labelled validation pixels.</p>'
    return html.section("per-class", "Per-class IoU", note + html.table(["class", "IoU", "share of pixels"], rows))


def _worst_tiles(run: RunData, caption) -> list[str] | None:
    """The pictures a dense task wrote at the end of training (worst_val.json: per image its
    input, the picture file and its numbers), as figures captioned by ``caption(row)``; None
    when the run has no worst_val.json."""
    import base64

    index_path = run.run_dir / "worst_val.json"
    if not index_path.is_file():
        return None
    tiles = []
    for row in artifacts.read_json(index_path):
        picture = run.run_dir / row["file"]
        if picture.is_file():
            data = base64.b64encode(picture.read_bytes()).decode("ascii")
            tiles.append(f'<figure><img src="data:image/png;base64,{data}" style="max-width:100%">'
                         f"<figcaption>{escape(Path(row['input']).name)}: {caption(row)}</figcaption></figure>")
    return tiles


def _worst_images(run: RunData) -> str:
    """Segmentation: the validation images with the lowest mean IoU, image | truth | prediction."""
    tiles = _worst_tiles(run, lambda row: f"mean IoU {html.fmt(row.get('mean_iou'))}, pixel accuracy {html.fmt(row.get('pixel_accuracy'))}")
    if tiles is None:
        return html.section("errors", "Worst validation images", '<p class="note">The run has no worst_val.json.</p>')
    note = ('<p class="note">The validation images with the lowest mean IoU; in each, left to right: the image, the ground '
            "truth and the prediction (classes in colour, ignored pixels black).</p>")
    return html.section("errors", "Worst validation images", note + "".join(tiles))


# -- detection -------------------------------------------------------------------------------------


def _per_class_ap(run: RunData) -> str:
    per_class = run.metrics.get("per_class", {})
    rows = [[name, html.fmt(r.get("ap")), html.fmt(r.get("ap_50")), html.fmt(r.get("recall")), r.get("boxes", 0)] for name, r in per_class.items()]
    rows.append(["all", html.fmt(run.metrics.get("map")), html.fmt(run.metrics.get("map_50")), html.fmt(run.metrics.get("mar_100")),
                 run.metrics.get("num_boxes", "")])
    note = ('<p class="note">COCO evaluation (torchmetrics, pycocotools): AP averaged over IoU 0.50:0.95, AP at IoU 0.5, '
            "recall with up to 100 detections per image averaged over the same IoUs; -1: no true box of that class.</p>")
    return html.section("per-class", "Per-class average precision", note + html.table(["class", "AP", "AP@0.5", "recall", "true boxes"], rows))


def _worst_detections(run: RunData) -> str:
    """Detection: the validation images with the most errors, true boxes beside the detections."""
    tiles = _worst_tiles(run, lambda row: escape(str(row.get("caption", ""))))
    if tiles is None:
        return html.section("errors", "Worst validation images", '<p class="note">The run has no worst_val.json.</p>')
    note = ('<p class="note">The validation images with the most errors at IoU 0.5 (true boxes missed plus detections at or above '
            "the score threshold matching no true box); in each, left: the true boxes, right: the detections with their scores.</p>")
    return html.section("errors", "Worst validation images", note + ("".join(tiles) or '<p class="note">No errors.</p>'))


# -- several tasks -----------------------------------------------------------------------------------


def _task_parts(run: RunData) -> list[dict]:
    return list(run.task.get("tasks", []))


def _per_task(run: RunData) -> str:
    from ..tasks import TASKS

    body = ""
    for part in _task_parts(run):
        name, kind = part["name"], part["state"]["type"]
        metrics = run.metrics.get("tasks", {}).get(name, {})
        rows = [[label, html.fmt(metrics.get(key))] for label, key in TASKS.get(kind).view(part["state"]).cards]
        body += f"<h3>{escape(name)} ({escape(kind)}, loss weight {part['weight']:g})</h3>" + html.table(["metric", "value"], rows)
    return html.section("per-task", "Per-task metrics", body)


# -- text outputs (seq2seq) -----------------------------------------------------------------------


def word_diff(reference: str, hypothesis: str) -> str:
    """The hypothesis against the reference word by word, as HTML: words the model missed or got
    wrong struck through (<del>), words it wrote instead underlined (<ins>)."""
    import difflib

    ref, hyp = reference.split(), hypothesis.split()
    parts: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=ref, b=hyp, autojunk=False).get_opcodes():
        if op == "equal":
            parts.append(escape(" ".join(ref[i1:i2])))
            continue
        if i2 > i1:
            parts.append(f"<del>{escape(' '.join(ref[i1:i2]))}</del>")
        if j2 > j1:
            parts.append(f"<ins>{escape(' '.join(hyp[j1:j2]))}</ins>")
    return " ".join(parts)


def _text_errors(run: RunData) -> str:
    """The examples with the most word errors (or the lowest sentence BLEU), each with its
    word-level differences."""
    rows = [r for r in run.predictions if r.get("label") is not None]
    if not rows:
        return html.section("text-errors", "Worst examples", f'<p class="note">The run has no {artifacts.PREDICTIONS_FILE}.</p>')
    graded = "word_errors" in rows[0]
    wrong = [r for r in rows if not r.get("correct")]
    order = sorted(wrong, key=lambda r: (-r["word_errors"], -r.get("words", 0)) if graded else (r.get("sentence_bleu", 0.0),))
    shown = order[: modality_of(run.modality).report_errors]
    intro = f'<p class="note">{len(wrong)} of {len(rows)} validation examples differ from their reference'
    intro += (f"; the {len(shown)} with the most word errors. <del>struck</del>: reference words missed or replaced; "
              "<ins>underlined</ins>: words written instead (compared after the run's text normalisation for the counts, "
              "as written here).</p>" if shown else ".</p>")
    table = [[_text(r["input"]), r["label"], r["predicted"], html.Markup(word_diff(str(r["label"]), str(r["predicted"]))),
              r["word_errors"] if graded else f"{r.get('sentence_bleu', 0.0):.1f}"] for r in shown]
    body = intro + (html.table(["input", "reference", "written", "differences", "word errors" if graded else "sentence BLEU"], table)
                    if table else "")
    return html.section("text-errors", "Worst examples", body)


# The sections a task's view names (ReportView.sections), in the order it names them; a task type
# added outside the package may register renderers of its own here.
SECTIONS: dict[str, Callable[[RunData, dict[int, str]], str]] = {
    "confusion": lambda run, _: _confusion(run),
    "per_class": lambda run, _: _per_class(run),
    "calibration": lambda run, _: _calibration(run),
    "errors": _errors,
    "predicted_vs_true": lambda run, _: _predicted_vs_true(run),
    "residuals": lambda run, _: _residuals(run),
    "largest_errors": lambda run, _: _largest_errors(run),
    "per_label": lambda run, _: _per_label(run),
    "label_errors": lambda run, _: _label_errors(run),
    "per_class_iou": lambda run, _: _per_class_iou(run),
    "worst_images": lambda run, _: _worst_images(run),
    "per_class_ap": lambda run, _: _per_class_ap(run),
    "worst_detections": lambda run, _: _worst_detections(run),
    "per_task": lambda run, _: _per_task(run),
    "text_errors": lambda run, _: _text_errors(run),
}


# -- comparison ----------------------------------------------------------------------------------


def write_comparison(run_dirs: list[str | Path], output: str | Path, overwrite: bool = False) -> Path:
    """One page comparing runs: per-epoch curves overlaid and final metrics side by side. An
    existing ``output`` is replaced only with ``overwrite``, and only by a page (``.html``)."""
    from ..core.outputs import check_new_file

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
    view = task_view(runs[0])
    compared: list[tuple[str, str]] = []
    for run in runs:  # runs of different task types: each type's metrics, once, in the task's direction
        task = _task_of(run)
        compared += [(k, "max" if task.higher_is_better(k) else "min") for k in task_view(run).compared
                     if k not in (c[0] for c in compared)]
    for key, better in compared:
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
        _significance_section(runs, names),
        html.section("curves", "Curves", html.figure(
            plots.comparison_curves(runs, names, [(k, f"Validation {label}") for k, label in view.curves]),
            "Per-epoch curves, one colour per run.")),
        html.section("setup", "Setup", html.table(["", *names], setup)),
    ]
    header = f"<h1>Comparison of {len(runs)} runs</h1><p>{escape(', '.join(names))}</p>"
    return html.page("finetunekit comparison", header, sections)


def _task_of(run: RunData):
    """The run's task, rebuilt from its files (it knows each metric's direction)."""
    from ..tasks import task_from_state

    return task_from_state(run.task, lambda name: artifacts.read_json(run.run_dir / name))


def _paired_by_class(runs: list[RunData]) -> bool:
    """Whether every run predicts one class per example (McNemar's test on right/wrong applies)."""
    from ..tasks import TASKS

    return all(TASKS.get(r.task_type).single_class for r in runs)


def paired_predictions(a: RunData, b: RunData) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | str:
    """(labels, predictions of a, predictions of b, classes) over the validation examples both runs
    predicted, aligned by input; or why the runs cannot be paired."""
    paired = paired_rows(a, b)
    if isinstance(paired, str):
        return paired
    rows_a, rows_b = paired
    names = sorted({r["label"] for r in rows_a} | {r["predicted"] for r in (*rows_a, *rows_b)})
    index = {name: i for i, name in enumerate(names)}
    labels = np.array([index[r["label"]] for r in rows_a])
    return labels, np.array([index[r["predicted"]] for r in rows_a]), np.array([index[r["predicted"]] for r in rows_b]), len(names)


def paired_rows(a: RunData, b: RunData) -> tuple[list[dict], list[dict]] | str:
    """The labelled validation records of both runs, aligned by (input, label); or why the runs
    cannot be paired."""
    rows_a = [r for r in a.predictions if r.get("label") is not None]
    rows_b = [r for r in b.predictions if r.get("label") is not None]
    for run, rows in ((a, rows_a), (b, rows_b)):
        if not rows:
            return f"{run.run_dir} has no labelled {artifacts.PREDICTIONS_FILE}"
    def key(row: dict) -> tuple[str, str]:
        return (str(row["input"]), str(row["label"]))

    if [key(r) for r in rows_a] != [key(r) for r in rows_b]:
        # the same examples in another order are paired by (input, label); anything else is not the same set
        rows_a, rows_b = sorted(rows_a, key=key), sorted(rows_b, key=key)
        if [key(r) for r in rows_a] != [key(r) for r in rows_b]:
            return (f"{a.run_dir} and {b.run_dir} were not evaluated on the same examples "
                    f"({len(rows_a)} and {len(rows_b)} labelled predictions); no paired test")
    return rows_a, rows_b


def significance(runs: list[RunData], metric: str = "accuracy") -> list[tuple[int, Comparison | str]]:
    """Each run after the first against the first, on their shared validation examples:
    (run position, :class:`finetunekit.core.stats.Comparison`, or why there is none). Classification
    runs are compared on ``metric`` (accuracy or macro_f1); runs of other tasks on each metric
    their task's ``example_values`` gives (MAE, sample F1, one per task of several...)."""
    from ..core.stats import compare_predictions

    out: list[tuple[int, Comparison | str]] = []
    for i, run in enumerate(runs[1:], start=1):
        if not _paired_by_class([runs[0], run]):
            out.extend((i, c) for c in _graded_comparisons(runs[0], run))
            continue
        paired = paired_predictions(runs[0], run)
        if isinstance(paired, str):
            out.append((i, paired))
            continue
        labels, preds_first, preds_run, k = paired
        out.append((i, compare_predictions(labels, preds_run, preds_first, metric, num_classes=k)))
    return out


def _graded_comparisons(first: RunData, run: RunData) -> list[Comparison | str]:
    """``run`` against ``first`` through their task's per-example values (not classification)."""
    from ..core.stats import compare_values
    from ..tasks import task_from_state

    if first.task_type != run.task_type:
        return [f"{run.run_dir} is a {run.task_type} run and {first.run_dir} a {first.task_type} run; no paired test"]
    task, other = (task_from_state(r.task, lambda name, r=r: artifacts.read_json(r.run_dir / name)) for r in (first, run))
    if task.identity() != other.identity():
        return [f"{run.run_dir} and {first.run_dir} predict different targets or labels; no paired test"]
    paired = paired_rows(first, run)
    if isinstance(paired, str):
        return [paired]
    mine, theirs = task.example_values(paired[1]), task.example_values(paired[0])
    if not mine:
        return [f"no paired test for {first.task_type} runs"]
    return [compare_values(a, b, name, higher) for (name, a, higher), (_, b, _) in zip(mine, theirs, strict=True)]


def significance_lines(run_dirs: list[str | Path], metric: str = "accuracy") -> list[str]:
    """The command line's summary: one line per run after the first, against the first."""
    runs = [load_run(d) for d in run_dirs]
    names = _unique_names(runs)
    return [f"{names[i]} vs {names[0]}: {c}" if isinstance(c, str) else c.summary(names[i], names[0]) for i, c in significance(runs, metric)]


def _significance_section(runs: list[RunData], names: list[str]) -> str:
    rows = []
    for i, c in significance(runs):
        if isinstance(c, str):
            rows.append([names[i], names[0], "–", "–", "–", "–", "–", c])
        else:
            test = "McNemar" if c.p_value is c.p_mcnemar else "bootstrap"
            rows.append([names[i], names[0], c.metric, f"{c.difference:+.4f}", f"{c.ci[0]:+.4f} to {c.ci[1]:+.4f}", f"{c.only_a} / {c.only_b}",
                         f"{c.p_value:.4g} ({test})", "significant" if c.significant else "not significant"])
    note = ('<p class="note">Each run against the first, on the validation examples both predicted: the paired '
            "bootstrap interval of the difference (2,000 resamples of the examples); for accuracy McNemar's exact test on the "
            "examples exactly one of the two runs gets right, for other metrics the paired bootstrap's p. Regression runs are "
            "compared on MAE (lower is better), multi-label runs on sample-averaged F1 and subset accuracy, several tasks "
            "task by task; the counts are the examples where each run is better. Significant means p &lt; 0.05.</p>")
    table = html.table(["run", "against", "metric", "difference", "95% CI", "better in run / in other", "p", "verdict"], rows)
    return html.section("significance", "Is the difference real?", note + table)


def _unique_names(runs: list[RunData]) -> list[str]:
    names = [r.name for r in runs]
    if len(set(names)) == len(names):
        return names
    return [str(r.run_dir) for r in runs]

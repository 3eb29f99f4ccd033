"""The study page of ``finetunekit tune``: STUDY_DIR/study.html, self-contained like report.html.

Sections: the trials sorted by score, the optimisation history, one slice per parameter (score
against value), the parameters' importances (Optuna's fANOVA), and the best trial's recipe as
YAML to copy. It renders plain rows (:class:`TrialRow`), so it needs no Optuna::

    write_study_report(study_dir, rows, direction="maximize", metric="accuracy",
                       importances={"train.head_lr": 0.7, ...}, best_recipe_yaml="...")
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from ..run import artifacts
from . import html
from .plots import COLORS, Plot, _figure, _render, _style

STUDY_REPORT = "study.html"


@dataclass
class TrialRow:
    number: int
    state: str  # complete | pruned | failed | running | waiting
    value: float | None  # the score (best epoch) of a complete trial
    params: dict[str, Any]
    intermediate: dict[int, float] = field(default_factory=dict)  # epoch (0-based) -> validation metric
    best_epoch: int | None = None
    seconds: float | None = None
    run_dir: str | None = None
    note: str = ""


def write_study_report(
    study_dir: Path, rows: list[TrialRow], direction: str, metric: str, importances: dict[str, float] | None,
    best_recipe_yaml: str | None, log_params: set[str] | None = None,
) -> Path:
    target = Path(study_dir) / STUDY_REPORT
    artifacts.atomic_write_text(target, render_study(Path(study_dir).name, rows, direction, metric, importances, best_recipe_yaml, log_params or set()))
    return target


def render_study(
    name: str, rows: list[TrialRow], direction: str, metric: str, importances: dict[str, float] | None,
    best_recipe_yaml: str | None, log_params: set[str],
) -> str:
    maximize = direction == "maximize"
    complete = [r for r in rows if r.state == "complete" and r.value is not None]
    best = (max if maximize else min)(complete, key=lambda r: r.value) if complete else None
    counts = {s: sum(r.state == s for r in rows) for s in ("complete", "pruned", "failed")}
    header = (
        f"<h1>study {escape(name)}</h1>"
        f"<p>{len(rows)} trials: {counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} failed "
        f"&middot; {'maximising' if maximize else 'minimising'} validation {escape(metric)} of each trial's best epoch</p>"
        + html.cards([
            (f"best val {metric}", html.fmt(best.value) if best else "–"), ("best trial", str(best.number) if best else "–"),
            ("trials", str(len(rows))), ("pruned", str(counts["pruned"])),
        ])
    )
    sections = [
        _trials_table(rows, maximize, best),
        _history(rows, maximize, metric),
        _slices(complete, metric, log_params),
        _importances(importances),
        _best_recipe(best, best_recipe_yaml),
    ]
    return html.page(f"finetunekit study: {name}", header, sections)


def _trials_table(rows: list[TrialRow], maximize: bool, best: TrialRow | None) -> str:
    names = sorted({k for r in rows for k in r.params})
    sign = -1 if maximize else 1
    ordered = sorted(rows, key=lambda r: (r.value is None, sign * (r.value or 0.0), r.number))
    table_rows, classes = [], []
    for r in ordered:
        last = f"{max(r.intermediate) + 1}" if r.intermediate else "–"
        table_rows.append([
            r.number, r.state, html.fmt(r.value), r.best_epoch or "–", last, html.fmt(r.seconds, 1),
            *[_short(r.params.get(n)) for n in names], r.run_dir or "–",
        ])
        css = "best" if best is not None and r.number == best.number else ""
        classes.append([css] * len(table_rows[-1]))
    headers = ["trial", "state", "score", "best epoch", "epochs run", "seconds", *names, "run directory"]
    note = '<p class="note">Sorted by score; a pruned trial was stopped after the epochs shown; the best trial is highlighted.</p>'
    return html.section("trials", "Trials", note + html.table(headers, table_rows, classes))


def _short(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _history(rows: list[TrialRow], maximize: bool, metric: str) -> str:
    fig = _figure(6.4, 3.6)
    ax = fig.add_subplot()
    done = sorted((r.number, r.value) for r in rows if r.state == "complete" and r.value is not None)
    pruned = sorted((r.number, r.intermediate[max(r.intermediate)]) for r in rows if r.state == "pruned" and r.intermediate)
    if done:
        ax.scatter([n for n, _ in done], [v for _, v in done], color=COLORS[0], label="complete", zorder=3)
        running, best_so_far = None, []
        for _, v in done:
            running = v if running is None else (max(running, v) if maximize else min(running, v))
            best_so_far.append(running)
        ax.step([n for n, _ in done], best_so_far, where="post", color=COLORS[1], label="best so far")
    if pruned:
        ax.scatter([n for n, _ in pruned], [v for _, v in pruned], marker="x", color=COLORS[7], label="pruned (last epoch reported)")
    _style(ax, "Optimisation history", "trial", f"val {metric}")
    if done or pruned:
        ax.legend(fontsize=8)
    plot = _render(fig, "optimisation history")
    return html.section("history", "Optimisation history", '<div class="plots">' + html.figure(
        plot, f"Each trial's score (its best epoch's validation {metric}) in the order trials started; the line is the best so far."
    ) + "</div>")


def _slices(complete: list[TrialRow], metric: str, log_params: set[str]) -> str:
    names = sorted({k for r in complete for k in r.params})
    if not complete or not names:
        return html.section("slices", "Parameter slices", '<p class="note">No complete trial yet.</p>')
    cols = min(3, len(names))
    nrows = math.ceil(len(names) / cols)
    fig = _figure(3.3 * cols, 2.8 * nrows)
    for i, name in enumerate(names):
        ax = fig.add_subplot(nrows, cols, i + 1)
        points = [(r.params[name], r.value, r.number) for r in complete if name in r.params]
        xs = [p[0] for p in points]
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs):
            ax.scatter(xs, [p[1] for p in points], c=[p[2] for p in points], cmap="viridis", s=18)
            if name in log_params:
                ax.set_xscale("log")
        else:  # a choice: categories along x
            cats = sorted({str(x) for x in xs})
            ax.scatter([cats.index(str(x)) for x in xs], [p[1] for p in points], c=[p[2] for p in points], cmap="viridis", s=18)
            ax.set_xticks(range(len(cats)), cats, fontsize=8)
        _style(ax, name, "", f"val {metric}" if i % cols == 0 else "")
    plot = _render(fig, "parameter slices")
    return html.section("slices", "Parameter slices", '<div class="plots">' + html.figure(
        plot, "Score against each parameter's value over the complete trials; colour is the trial number (dark: early)."
    ) + "</div>")


def _importances(importances: dict[str, float] | None) -> str:
    if not importances:
        return html.section("importances", "Parameter importances",
                            '<p class="note">Not computed: it needs at least two complete trials whose scores differ.</p>')
    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig = _figure(6.0, max(2.6, 0.5 + 0.4 * len(items)))
    ax = fig.add_subplot()
    ax.barh([k for k, _ in items], [v for _, v in items], color=COLORS[0])
    _style(ax, "Parameter importances (fANOVA)", "share of the score's variance", "")
    plot: Plot = _render(fig, "parameter importances")
    table = html.table(["parameter", "importance"], [[k, html.fmt(v, 3)] for k, v in reversed(items)])
    return html.section("importances", "Parameter importances", '<div class="plots">' + html.figure(
        plot, "How much of the variation in score each parameter explains (Optuna's fANOVA over the complete trials)."
    ) + table + "</div>")


def _best_recipe(best: TrialRow | None, yaml_text: str | None) -> str:
    if best is None or not yaml_text:
        return html.section("best-recipe", "Best recipe", '<p class="note">No complete trial yet.</p>')
    return html.section("best-recipe", "Best recipe", (
        f'<p class="note">Trial {best.number} (run directory {escape(best.run_dir or "?")}); '
        "train it again with <code>finetunekit train best.yaml</code>.</p>"
        f'<pre id="best-yaml" style="background:#f3f4f6;padding:10px;overflow-x:auto">{escape(yaml_text)}</pre>'
    ))

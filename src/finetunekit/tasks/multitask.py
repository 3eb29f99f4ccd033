"""Several named tasks on one backbone (recipe ``tasks:``), each with its own label column(s),
head, loss weight and metrics.

The heads' outputs, the encoded targets and the scores are each one tensor whose columns are the
tasks' blocks side by side, so the loop, the feature cache, checkpoints and evaluation handle a
multi-task run like any other. The loss is the weighted sum of the tasks' losses, each part logged
(``train_loss_task_<name>``); metrics are per task (``<name>/<metric>``), and ``train.metric`` picks
the task that chooses the best epoch (``loss``: the weighted sum of the validation losses).

Example::

    recipe:  tasks: [{name: age, type: regression, label_column: age},
                     {name: gender, type: classification, label_column: gender, weight: 0.5}]
    metrics: {"age/mae": 6.1, "gender/accuracy": 0.88, "tasks": {"age": {...}, "gender": {...}}, ...}
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.errors import RecipeError
from . import TASKS
from .base import ReportView, Task


class MultiHead(nn.Module):
    """One head per task on the same features; outputs side by side."""

    def __init__(self, heads: dict[str, nn.Module]) -> None:
        super().__init__()
        self.heads = nn.ModuleDict(heads)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([head(features) for head in self.heads.values()], dim=1)

    def describe(self) -> dict:
        return {"kind": "multi", "heads": {name: head.describe() for name, head in self.heads.items()}}


@dataclasses.dataclass
class Part:
    name: str
    weight: float
    task: Task
    columns: list[str]


@TASKS.register("multitask")
class MultiTask(Task):
    """Built from the recipe's ``tasks:`` list (see the module docstring)."""

    type = "multitask"
    composite = True

    @classmethod
    def view(cls, state: dict[str, Any]) -> ReportView:
        """Each part's first two cards and first curve, under the part's name; the weighted loss."""
        parts = [(p["name"], TASKS.get(p["state"]["type"]).view(p["state"])) for p in state.get("tasks", [])]
        cards = [(f"{name} {label}", f"{name}/{key}") for name, view in parts for label, key in view.cards[:2]]
        curves = [(f"val_{name}/{key[4:]}", f"{name} {label}") for name, view in parts for key, label in view.curves[:1]]
        return ReportView(
            noun="{tasks} tasks ({task_names})", cards=(*cards, ("weighted loss", "loss")), curves=tuple(curves),
            sections=("per_task",), compared=("loss",), bounded=False,
        )

    def __init__(self, parts: list[Part]) -> None:
        self.parts = parts
        first = parts[0]
        self.primary_metric = f"{first.name}/{first.task.primary_metric}"  # type: ignore[misc]
        self.epoch_metrics = tuple(f"{p.name}/{m}" for p in parts for m in p.task.epoch_metrics)  # type: ignore[misc]
        self._layout: list[tuple[int, bool]] | None = None

    @classmethod
    def from_data(cls, options: dict[str, Any], train: Any, recipe: Any = None) -> MultiTask:
        """``options["tasks"]``: the resolved task specs (dicts with name, type, label_column, weight)."""
        parts = []
        for spec in options["tasks"]:
            columns = [spec["label_column"]] if isinstance(spec["label_column"], str) else list(spec["label_column"])
            view = column_view(train, columns)
            sub = TASKS.get(spec["type"])
            parts.append(Part(spec["name"], float(spec["weight"]), sub.from_data(sub.check_options(spec, "tasks"), view, recipe), columns))
        return cls(parts)

    @classmethod
    def from_state(cls, state: dict[str, Any], read: Any = None) -> MultiTask:
        return cls([Part(p["name"], float(p["weight"]), TASKS.get(p["state"]["type"]).from_state(p["state"], read), p["columns"])
                    for p in state["tasks"]])

    def state(self) -> dict[str, Any]:
        return {"type": self.type, "tasks": [{"name": p.name, "weight": p.weight, "columns": p.columns, "state": p.task.state()}
                                             for p in self.parts]}

    def label_columns(self, default: str | list[str]) -> str | list[str]:
        return list(dict.fromkeys(c for p in self.parts for c in p.columns))

    def identity(self) -> Any:
        return {"type": self.type, "tasks": {p.name: p.task.identity() for p in self.parts}}

    def describe(self) -> str:
        return "; ".join(f"{p.name} ({p.task.type}, {p.task.describe()}, weight {p.weight:g})" for p in self.parts)

    # -- layout: each task's block of target and output columns
    def layout(self) -> list[tuple[int, bool]]:
        """Per task: (target columns, whether its targets are class indices)."""
        if self._layout is None:
            self._layout = []
            for p in self.parts:
                empty = p.task.encode(column_view(SimpleNamespace(labels=[], label_columns=p.columns, source="", where=None), p.columns))
                self._layout.append((1 if empty.dim() == 1 else int(empty.shape[1]), not empty.is_floating_point()))
        return self._layout

    def _targets(self, targets: Any) -> list[Any]:
        out, start = [], 0
        for width, indices in self.layout():
            block = targets[:, start : start + width]
            if indices:
                block = block[:, 0].long() if torch.is_tensor(block) else block[:, 0].astype(np.int64)
            out.append(block)
            start += width
        return out

    def _outputs(self, outputs: Any) -> list[Any]:
        out, start = [], 0
        for p in self.parts:
            out.append(outputs[:, start : start + p.task.output_size])
            start += p.task.output_size
        return out

    # -- targets
    def encode(self, examples: Any) -> torch.Tensor:
        blocks = [p.task.encode(column_view(examples, p.columns)) for p in self.parts]
        return torch.cat([b.float().reshape(len(b), -1) for b in blocks], dim=1)

    # -- model
    @property
    def output_size(self) -> int:
        return sum(p.task.output_size for p in self.parts)

    def build_head(self, in_features: int, dropout: float = 0.0) -> nn.Module:
        return MultiHead({p.name: p.task.build_head(in_features, dropout) for p in self.parts})

    def loss_names(self) -> list[str]:
        return [f"task_{p.name}" for p in self.parts]

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = {}
        for p, out, tgt in zip(self.parts, self._outputs(outputs), self._targets(targets), strict=True):
            values = list(p.task.loss(out, tgt).values())
            total = values[0]
            for v in values[1:]:
                total = total + v
            parts[f"task_{p.name}"] = p.weight * total
        return parts

    def mixable(self, targets: torch.Tensor) -> torch.Tensor:
        raise RecipeError("train.mixup_alpha / train.cutmix_alpha: mixing is not supported with several tasks; set them to 0")

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        return torch.cat([p.task.scores(out) for p, out in zip(self.parts, self._outputs(outputs), strict=True)], dim=1)

    def calibrate(self, scores: np.ndarray, targets: np.ndarray) -> None:
        for p, s, t in zip(self.parts, self._outputs(scores), self._targets(targets), strict=True):
            p.task.calibrate(s, t)

    # -- judging
    def eval_loss(self, scores: np.ndarray, targets: np.ndarray) -> float | None:
        losses = [p.task.eval_loss(s, t) for p, s, t in zip(self.parts, self._outputs(scores), self._targets(targets), strict=True)]
        if any(v is None for v in losses):
            return None
        return float(sum(p.weight * v for p, v in zip(self.parts, losses, strict=True)))

    def metrics(self, scores: np.ndarray, targets: np.ndarray, loss: float | None = None) -> dict[str, Any]:
        per = {}
        for p, s, t in zip(self.parts, self._outputs(scores), self._targets(targets), strict=True):
            per[p.name] = p.task.metrics(s, t, p.task.eval_loss(s, t))
        result: dict[str, Any] = {}
        for name, m in per.items():
            result.update({f"{name}/{k}": v for k, v in m.items() if isinstance(v, (int, float)) and k != "num_examples"})
        result["num_examples"] = int(len(targets))
        if loss is not None:
            result["loss"] = float(loss)
        result["tasks"] = per
        return result

    def metric_names(self) -> list[str]:
        return ["loss", *(f"{p.name}/{m}" for p in self.parts for m in p.task.metric_names())]

    def higher_is_better(self, metric: str) -> bool:
        name, _, sub = metric.partition("/")
        part = next((p for p in self.parts if p.name == name), None)
        return part.task.higher_is_better(sub) if part is not None else False

    def epoch_record(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {"val_loss": metrics.get("loss"), **{f"val_{k}": metrics.get(k) for k in self.epoch_metrics}}

    def format_epoch(self, metrics: dict[str, Any]) -> str:
        return "  ".join(f"{k} {metrics[k]:.4f}" for k in self.epoch_metrics if metrics.get(k) is not None)

    def format_metrics(self, metrics: dict[str, Any], title: str = "") -> str:
        lines = [title] if title else []
        if "loss" in metrics:
            lines.append(f"weighted loss {metrics['loss']:.4f}  (n={metrics['num_examples']})")
        for p in self.parts:
            lines.append(p.task.format_metrics(metrics["tasks"][p.name], title=f"task {p.name} ({p.task.type}, weight {p.weight:g}):"))
        return "\n".join(lines)

    # -- predictions
    def decode(self, scores: np.ndarray) -> list[Any]:
        columns = [p.task.decode(s) for p, s in zip(self.parts, self._outputs(np.asarray(scores)), strict=True)]
        return [{p.name: col[i] for p, col in zip(self.parts, columns, strict=True)} for i in range(len(scores))]

    def target_values(self, targets: np.ndarray) -> list[Any]:
        columns = [p.task.target_values(t) for p, t in zip(self.parts, self._targets(np.asarray(targets)), strict=True)]
        return [{p.name: col[i] for p, col in zip(self.parts, columns, strict=True)} for i in range(len(targets))]

    def prediction_records(self, scores: np.ndarray, targets: np.ndarray | None) -> list[dict[str, Any]]:
        """``{"label": {task: value}, "predicted": {task: value}, "tasks": {task: its own record}}``."""
        scores = np.asarray(scores)
        per = [p.task.prediction_records(s, None if targets is None else t) for p, s, t in
               zip(self.parts, self._outputs(scores), self._targets(np.asarray(targets)) if targets is not None else [None] * len(self.parts), strict=True)]
        records = []
        for i in range(len(scores)):
            own = {p.name: rows[i] for p, rows in zip(self.parts, per, strict=True)}
            records.append({"label": None if targets is None else {n: r["label"] for n, r in own.items()},
                            "predicted": {n: r["predicted"] for n, r in own.items()}, "tasks": own})
        return records

    def output_records(self, scores: np.ndarray) -> list[dict[str, Any]]:
        per = [p.task.output_records(s) for p, s in zip(self.parts, self._outputs(np.asarray(scores)), strict=True)]
        return [{"json": {p.name: rows[i]["json"] for p, rows in zip(self.parts, per, strict=True)},
                 "line": "\t".join(f"{p.name}={rows[i]['line']}" for p, rows in zip(self.parts, per, strict=True))}
                for i in range(len(scores))]

    def answers(self, scores: np.ndarray) -> list[dict[str, Any]]:
        """``{task name: that task's answer}`` for each input."""
        per = [p.task.answers(s) for p, s in zip(self.parts, self._outputs(np.asarray(scores)), strict=True)]
        return [{p.name: rows[i] for p, rows in zip(self.parts, per, strict=True)} for i in range(len(scores))]

    def example_values(self, records: list[dict[str, Any]]) -> list[tuple[str, np.ndarray, bool]]:
        """Each task's values, named ``task/metric``."""
        return [(f"{p.name}/{metric}", values, higher) for p in self.parts
                for metric, values, higher in p.task.example_values([r["tasks"][p.name] for r in records])]

    def output_names(self) -> list[str]:
        return [f"{p.name}: {n}" for p in self.parts for n in p.task.output_names()]

    def explain_targets(self, scores: np.ndarray) -> list[int]:
        """The first task's choice (its outputs come first)."""
        return self.parts[0].task.explain_targets(self._outputs(np.asarray(scores))[0])

    def table_row(self, answer: dict[str, Any]) -> dict[str, Any]:
        """Each task's cells with its name in front (``age_value``, ``gender_label``...)."""
        return {f"{p.name}_{k}": v for p in self.parts for k, v in p.task.table_row(answer[p.name]).items()}

    def card(self, modality: str, metrics: dict[str, Any], train: Any) -> dict[str, Any]:
        facts = [(p, p.task.card(modality, metrics["tasks"][p.name], column_view(train, p.columns))) for p in self.parts]
        values = [{**v, "name": f"{p.name}: {v['name']}"} for p, f in facts for v in f["metrics"]]
        names = list(dict.fromkeys(n for _, f in facts for n in f["metric_names"]))
        return {
            "pipeline_tag": facts[0][1]["pipeline_tag"],
            "metric_names": names,
            "metrics": values,
            "title": f"{modality} multi-task model ({', '.join(p.name for p in self.parts)})",
            "summary": " ".join(f"**{p.name}** ({p.task.type}, loss weight {p.weight:g}): {f['summary']}" for p, f in facts),
            "use": " ".join(f["use"] for _, f in facts),
            "data": "; ".join(f"{p.name} {f['data']}" for p, f in facts),
            "table": "\n\n".join(f"### {p.name}\n\n{f['table']}" for p, f in facts),
            "report": "Curves and each task's metrics: `report.html`.",
        }

    def export_config(self) -> dict[str, Any]:
        raise RecipeError("export: a multi-task model has several heads; export it with --format onnx")


def column_view(examples: Any, columns: list[str]) -> Any:
    """The examples with only ``columns`` of their label cells (one column: plain cells)."""
    all_columns = list(getattr(examples, "label_columns", None) or columns)
    index = [all_columns.index(c) for c in columns]
    labels = None
    if examples.labels is not None:
        def pick(cell: Any) -> Any:
            cells = cell if isinstance(cell, tuple) else (cell,)
            chosen = tuple(cells[i] for i in index)
            return chosen[0] if len(chosen) == 1 else chosen
        labels = [pick(cell) for cell in examples.labels]
    if dataclasses.is_dataclass(examples):
        return dataclasses.replace(examples, labels=labels, label_columns=list(columns))
    return SimpleNamespace(labels=labels, label_columns=list(columns), source=examples.source, where=examples.where)

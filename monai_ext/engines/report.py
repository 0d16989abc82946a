# Copyright (c) monai_ext contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""Evaluation report of a bundle: per-patient predictions, a metrics JSON and the task's plots.

:class:`EvaluationReport` is an Ignite handler for a MONAI evaluator (outputs not decollated). When the run
completes it writes ``predictions.csv``, ``metrics.json`` and

- survival: ``kaplan_meier.png``, the Kaplan-Meier curves (lifelines) of the patients split at the median
  predicted risk, with the log-rank p-value (Mantel 1966, https://pubmed.ncbi.nlm.nih.gov/5910392/);
- classification and staging: ``roc.png`` (one-vs-rest ROC curves, Fawcett 2006,
  https://doi.org/10.1016/j.patrec.2005.10.010) and ``confusion_matrix.png``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ignite.engine import Engine, Events
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix, roc_curve

from monai_ext.metrics.classification import (
    balanced_accuracy,
    macro_f1,
    quadratic_weighted_kappa,
    roc_auc,
)
from monai_ext.metrics.survival import concordance_index

__all__ = ["EvaluationReport", "classification_report", "survival_report"]

logger = logging.getLogger(__name__)


def _clean(value: Any) -> Any:
    """JSON-safe values: NaN and infinities become None, NumPy scalars Python numbers."""
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def survival_report(table: pd.DataFrame, out_dir: str | Path) -> dict[str, Any]:
    """Harrell's C-index, risk groups at the median predicted risk, Kaplan-Meier plot with the log-rank p-value.

    Args:
        table: one row per patient with ``time`` (months), ``event`` (1 = death observed) and ``risk``
            (higher = shorter expected survival).
        out_dir: where ``kaplan_meier.png`` goes.

    Returns:
        ``c_index``, ``logrank_p``, ``risk_threshold`` and per group (``low``, ``high``) ``n``, ``events`` and
        ``median_months`` (None when the curve does not reach 0.5).
    """
    from lifelines import KaplanMeierFitter  # imported here: lifelines is slow to import
    from lifelines.statistics import logrank_test

    time, event, risk = (table[column].to_numpy(float) for column in ("time", "event", "risk"))
    threshold = float(np.median(risk))
    high = risk > threshold
    metrics: dict[str, Any] = {
        "n_patients": len(table),
        "n_events": int(event.sum()),
        "c_index": concordance_index(time, event, risk),
        "risk_threshold": threshold,
        "risk_groups": "split at the median predicted risk of the evaluated patients (high: risk > median)",
    }
    figure = Figure(figsize=(5.5, 4.0))
    axis = figure.subplots()
    groups = {}
    for name, members in (("low", ~high), ("high", high)):
        groups[name] = {"n": int(members.sum()), "events": int(event[members].sum()), "median_months": None}
        if members.any():
            fitter = KaplanMeierFitter().fit(time[members], event[members], label=f"{name} risk (n={members.sum()})")
            groups[name]["median_months"] = float(fitter.median_survival_time_)
            fitter.plot_survival_function(ax=axis, ci_show=False, show_censors=True)
    metrics["groups"] = groups
    p_value = float("nan")
    if high.any() and (~high).any():
        p_value = float(logrank_test(time[~high], time[high], event[~high], event[high]).p_value)
    metrics["logrank_p"] = p_value
    axis.set_xlabel("months")
    axis.set_ylabel("survival probability")
    axis.set_ylim(0.0, 1.05)
    axis.set_title(f"C-index {metrics['c_index']:.3f}, log-rank p = {p_value:.3g}")
    figure.tight_layout()
    figure.savefig(Path(out_dir) / "kaplan_meier.png", dpi=120)
    return metrics


def classification_report(
    table: pd.DataFrame, out_dir: str | Path, class_names: Sequence[str], *, ordinal: bool = False
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro F1, ROC AUC (one-vs-rest macro), quadratic kappa for ordinal classes;
    ``roc.png`` and ``confusion_matrix.png``.

    Args:
        table: one row per patient with ``label`` (class index), ``prob_<k>`` per class and ``pred``.
        out_dir: where the plots go.
        class_names: names of the classes, in index order.
        ordinal: the classes are ordered (staging): add ``kappa``.

    Returns:
        the metrics; ``auc`` is None when the evaluated patients hold a single class.
    """
    n_classes = len(class_names)
    labels = table["label"].to_numpy(int)
    predicted = table["pred"].to_numpy(int)
    probs = table[[f"prob_{k}" for k in range(n_classes)]].to_numpy(float)
    present = np.unique(labels)
    metrics: dict[str, Any] = {
        "n_patients": len(table),
        "class_counts": {str(name): int((labels == k).sum()) for k, name in enumerate(class_names)},
        "accuracy": float((labels == predicted).mean()),
        "balanced_accuracy": balanced_accuracy(labels, predicted),
        "macro_f1": macro_f1(labels, predicted, num_classes=n_classes),
        "auc": float("nan"),
    }
    if len(present) > 1:
        scores = probs[:, 1] if n_classes == 2 else probs[:, present] / probs[:, present].sum(1, keepdims=True)
        metrics["auc"] = roc_auc(np.searchsorted(present, labels) if n_classes > 2 else labels, scores)
    if ordinal:
        metrics["kappa"] = quadratic_weighted_kappa(labels, predicted, num_classes=n_classes)
    _plot_roc(labels, probs, class_names, Path(out_dir) / "roc.png")
    _plot_confusion(confusion_matrix(labels, predicted, labels=range(n_classes)), class_names, out_dir)
    return metrics


def _plot_roc(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str], path: Path) -> None:
    figure = Figure(figsize=(4.5, 4.5))
    axis = figure.subplots()
    shown = [1] if len(class_names) == 2 else range(len(class_names))
    for k in shown:
        positive = labels == k
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, probs[:, k])
        axis.plot(fpr, tpr, label=f"{class_names[k]} vs rest" if len(class_names) > 2 else str(class_names[k]))
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":")
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def _plot_confusion(matrix: np.ndarray, class_names: Sequence[str], out_dir: str | Path) -> None:
    figure = Figure(figsize=(1.2 * len(class_names) + 2.5, 1.2 * len(class_names) + 2.0))
    axis = figure.subplots()
    axis.imshow(matrix, cmap="Blues")
    for (row, column), count in np.ndenumerate(matrix):
        axis.text(column, row, str(count), ha="center", va="center")
    axis.set_xticks(range(len(class_names)), [str(name) for name in class_names], rotation=45, ha="right")
    axis.set_yticks(range(len(class_names)), [str(name) for name in class_names])
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    figure.tight_layout()
    figure.savefig(Path(out_dir) / "confusion_matrix.png", dpi=120)


class EvaluationReport:
    """Collect a MONAI evaluator's per-patient outputs and write the report when the run completes.

    Reads ``engine.state.output`` (``decollate=False``): ``pred`` (the network's output dict: ``risk`` or
    ``probs``) and ``label`` (the target dict), and the batch's ``case_id``.

    Args:
        output_dir: folder of ``predictions.csv``, ``metrics.json`` and the plots (created).
        task: ``survival``, ``classification`` or ``staging``.
        class_names: class names in index order (classification and staging).
    """

    def __init__(self, output_dir: str | Path, task: str, class_names: Sequence[Any] | None = None) -> None:
        if task not in ("survival", "classification", "staging"):
            raise ValueError(f"unknown task {task!r}; choose survival, classification or staging")
        if task != "survival" and not class_names:
            raise ValueError(f"task {task!r} needs class_names (in class index order)")
        self.output_dir = Path(output_dir)
        self.task = task
        self.class_names = [str(name) for name in class_names or ()]
        self.rows: list[dict[str, Any]] = []
        self.metrics: dict[str, Any] = {}

    def attach(self, engine: Engine) -> None:
        """Collect at every iteration, write at completion."""
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        """Forget the rows of an earlier run."""
        self.rows = []

    def collect(self, engine: Engine) -> None:
        """Add one row per patient of the current batch."""
        output = engine.state.output
        pred, targets = output["pred"], output["label"]
        cases = engine.state.batch.get("case_id") or [None] * len(next(iter(targets.values())))
        for i, case in enumerate(cases):
            row: dict[str, Any] = {"case_id": case}
            row.update({key: float(value[i]) for key, value in targets.items()})
            if "risk" in pred:
                row["risk"] = float(pred["risk"][i])
            if "survival" in pred:
                row.update({f"survival_{k}": float(s) for k, s in enumerate(pred["survival"][i].tolist())})
            if "probs" in pred:
                probs = pred["probs"][i].float().tolist()
                row.update({f"prob_{k}": p for k, p in enumerate(probs)})
                row["pred"] = int(np.argmax(probs))
            self.rows.append(row)

    def write(self, engine: Engine | None = None) -> dict[str, Any]:
        """Write ``predictions.csv``, ``metrics.json`` and the plots; returns the metrics."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        table = pd.DataFrame(self.rows)
        table.to_csv(self.output_dir / "predictions.csv", index=False)
        if self.task == "survival":
            metrics = survival_report(table, self.output_dir)
        else:
            metrics = classification_report(table, self.output_dir, self.class_names, ordinal=self.task == "staging")
        self.metrics = {"task": self.task, **_clean(metrics)}
        (self.output_dir / "metrics.json").write_text(json.dumps(self.metrics, indent=1) + "\n")
        logger.info("evaluation metrics: %s", self.metrics)
        return self.metrics

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

"""Evaluation report: metrics against scikit-survival, lifelines and scikit-learn; the handler on an Ignite run."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from ignite.engine import Engine
from lifelines.utils import concordance_index as lifelines_concordance
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, f1_score, roc_auc_score
from sksurv.compare import compare_survival

from monai_ext.engines.report import EvaluationReport, classification_report, survival_report


def _survival_table(seed: int, n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    time = rng.exponential(30.0 * np.exp(-0.8 * risk)) + 0.5
    event = (rng.random(n) < 0.7).astype(int)
    return pd.DataFrame({"case_id": [f"p{i}" for i in range(n)], "time": time, "event": event, "risk": risk})


@pytest.mark.parametrize("seed", [0, 1])
def test_survival_report_matches_references(seed: int, tmp_path: Path) -> None:
    table = _survival_table(seed)
    metrics = survival_report(table, tmp_path)
    assert metrics["c_index"] == pytest.approx(lifelines_concordance(table["time"], -table["risk"], table["event"]))
    high = table["risk"] > table["risk"].median()
    outcome = np.array(
        list(zip(table["event"].astype(bool), table["time"], strict=True)), dtype=[("e", bool), ("t", float)]
    )
    _, p_value = compare_survival(outcome, high.to_numpy())
    assert metrics["logrank_p"] == pytest.approx(p_value, rel=1e-6)
    assert metrics["groups"]["high"]["n"] == int(high.sum()) and metrics["groups"]["low"]["n"] == int((~high).sum())
    assert cv2.imread(str(tmp_path / "kaplan_meier.png")) is not None


@pytest.mark.parametrize(("n_classes", "ordinal"), [(2, False), (4, False), (5, True)])
def test_classification_report_matches_sklearn(n_classes: int, ordinal: bool, tmp_path: Path) -> None:
    rng = np.random.default_rng(n_classes)
    labels = np.concatenate([np.arange(n_classes), rng.integers(0, n_classes, 40)])
    logits = rng.normal(size=(len(labels), n_classes)) + 1.5 * np.eye(n_classes)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    table = pd.DataFrame({"label": labels, "pred": probs.argmax(1)})
    for k in range(n_classes):
        table[f"prob_{k}"] = probs[:, k]
    names = [f"class {k}" for k in range(n_classes)]
    metrics = classification_report(table, tmp_path, names, ordinal=ordinal)
    predicted = probs.argmax(1)
    assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predicted))
    assert metrics["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    expected_auc = (
        roc_auc_score(labels, probs[:, 1]) if n_classes == 2 else roc_auc_score(labels, probs, multi_class="ovr")
    )
    assert metrics["auc"] == pytest.approx(expected_auc)
    if ordinal:
        assert metrics["kappa"] == pytest.approx(cohen_kappa_score(labels, predicted, weights="quadratic"))
    for name in ("roc.png", "confusion_matrix.png"):
        assert cv2.imread(str(tmp_path / name)) is not None


def test_classification_report_with_absent_class(tmp_path: Path) -> None:
    """A test split without one class: the AUC is taken over the classes present (renormalised)."""
    labels = np.array([0, 0, 1, 1, 1, 0])
    probs = np.array(
        [[0.6, 0.3, 0.1], [0.5, 0.2, 0.3], [0.2, 0.7, 0.1], [0.3, 0.4, 0.3], [0.1, 0.8, 0.1], [0.4, 0.4, 0.2]]
    )
    table = pd.DataFrame({"label": labels, "pred": probs.argmax(1), **{f"prob_{k}": probs[:, k] for k in range(3)}})
    metrics = classification_report(table, tmp_path, ["a", "b", "c"])
    present = probs[:, :2] / probs[:, :2].sum(1, keepdims=True)
    assert metrics["auc"] == pytest.approx(roc_auc_score(labels, present[:, 1]))
    assert metrics["class_counts"] == {"a": 3, "b": 3, "c": 0}


def test_handler_collects_an_evaluator_run(tmp_path: Path) -> None:
    table = _survival_table(3, n=12)
    batches = [  # batches of 5, 5 and 2 patients, as a collate gives them: ids as a list, values as arrays
        {column: table[column].iloc[i : i + 5].tolist() for column in table.columns} for i in range(0, len(table), 5)
    ]

    def step(engine: Engine, batch: dict) -> dict:
        risk = torch.tensor(batch["risk"])
        return {
            "pred": {"risk": risk, "survival": torch.sigmoid(-risk)[:, None].repeat(1, 3)},
            "label": {"time": torch.tensor(batch["time"]), "event": torch.tensor(batch["event"])},
        }

    evaluator = Engine(step)
    report = EvaluationReport(tmp_path / "eval", "survival")
    report.attach(evaluator)
    evaluator.run(batches)
    written = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    assert written["case_id"].tolist() == table["case_id"].tolist()
    np.testing.assert_allclose(written["risk"], table["risk"])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["c_index"] == pytest.approx(lifelines_concordance(table["time"], -table["risk"], table["event"]))
    evaluator.run(batches[:1])
    assert len(pd.read_csv(tmp_path / "eval" / "predictions.csv")) == 5  # a second run starts afresh


@pytest.mark.parametrize(("task", "names"), [("regression", None), ("staging", None)])
def test_handler_ill_arg(task: str, names: list[str] | None, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="task"):
        EvaluationReport(tmp_path, task, names)

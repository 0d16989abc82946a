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

"""The staging report against scikit-learn: accuracy_score, f1_score(average="macro") and
cohen_kappa_score(weights="quadratic") over the five ordinal pN stages."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score

from monai_ext.metrics.staging import accuracy, staging_report


@pytest.mark.parametrize("seed", range(5))
def test_report_matches_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    slide_true, slide_pred = rng.integers(0, 4, 30), rng.integers(0, 4, 30)
    patient_true = rng.choice([0, 1, 3, 4], 12)  # a stage missing from the fold must keep the kappa distances
    preds = {"learned": rng.integers(0, 5, 12), "rule": np.clip(patient_true + rng.integers(-1, 2, 12), 0, 4)}
    report = staging_report(slide_true, slide_pred, patient_true, preds)
    assert report["slide_accuracy"] == pytest.approx(accuracy_score(slide_true, slide_pred))
    assert report["slide_macro_f1"] == pytest.approx(f1_score(slide_true, slide_pred, average="macro"))
    for name, pred in preds.items():
        assert report[f"patient_{name}_accuracy"] == pytest.approx(accuracy_score(patient_true, pred))
        assert report[f"patient_{name}_macro_f1"] == pytest.approx(f1_score(patient_true, pred, average="macro"))
        expected = cohen_kappa_score(patient_true, pred, weights="quadratic", labels=list(range(5)))
        assert report[f"patient_{name}_kappa"] == pytest.approx(expected)
    assert len(report) == 2 + 3 * len(preds)


def test_perfect_and_undefined() -> None:
    report = staging_report([0, 1, 3], [0, 1, 3], [2, 4], {"rule": [2, 4]})
    assert report == {
        "slide_accuracy": 1.0,
        "slide_macro_f1": 1.0,
        "patient_rule_accuracy": 1.0,
        "patient_rule_macro_f1": 1.0,
        "patient_rule_kappa": 1.0,
    }
    assert math.isnan(staging_report([0], [0], [1, 1], {"learned": [1, 1]})["patient_learned_kappa"])
    patient_only = staging_report(None, None, [0, 2, 4], {"learned": [0, 2, 3]})
    assert sorted(patient_only) == ["patient_learned_accuracy", "patient_learned_kappa", "patient_learned_macro_f1"]


def test_ill_arg() -> None:
    with pytest.raises(ValueError, match="patient_preds is empty"):
        staging_report([0], [0], [0], {})
    with pytest.raises(ValueError, match=r"same length|one length"):
        staging_report([0, 1], [0], [0], {"rule": [0]})
    with pytest.raises(ValueError, match="one length"):
        accuracy([], [])
    with pytest.raises(ValueError, match="or neither"):
        staging_report([0], None, [0], {"rule": [0]})

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

"""Classification metrics against scikit-learn, and the expected calibration error against a plain loop."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn import metrics as sk

from monai_ext.metrics.classification import (
    balanced_accuracy,
    expected_calibration_error,
    macro_f1,
    quadratic_weighted_kappa,
    roc_auc,
)


def _probabilities(seed: int, n: int, n_classes: int, decimals: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels covering every class and rounded softmax probabilities (few decimals = many tied scores)."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(n_classes), rng.integers(0, n_classes, n - n_classes)])
    logits = rng.normal(0, 1, (n, n_classes)) + 1.5 * np.eye(n_classes)[labels] * rng.random((n, 1))
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    prob = np.round(prob, decimals)
    return labels, prob / prob.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("seed,n,n_classes,decimals", [(0, 50, 2, 1), (1, 200, 2, 6), (2, 90, 3, 1), (3, 300, 5, 4)])
def test_auc_matches_sklearn(seed, n, n_classes, decimals):
    labels, prob = _probabilities(seed, n, n_classes, decimals)
    if n_classes == 2:
        expected = sk.roc_auc_score(labels, prob[:, 1])
        assert roc_auc(labels, prob[:, 1]) == pytest.approx(expected, abs=1e-12)
    else:
        expected = sk.roc_auc_score(labels, prob, multi_class="ovr", average="macro")
    assert roc_auc(labels, prob) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed,n,n_classes", [(0, 40, 2), (1, 120, 4), (2, 15, 6), (3, 500, 3)])
def test_label_metrics_match_sklearn(seed, n, n_classes):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, n_classes, n)
    y_pred = np.where(rng.random(n) < 0.5, y_true, rng.integers(0, n_classes, n))
    labels = np.arange(n_classes)
    assert balanced_accuracy(y_true, y_pred) == pytest.approx(sk.balanced_accuracy_score(y_true, y_pred), abs=1e-12)
    assert macro_f1(y_true, y_pred) == pytest.approx(sk.f1_score(y_true, y_pred, average="macro"), abs=1e-12)
    assert macro_f1(y_true, y_pred, num_classes=n_classes + 1) == pytest.approx(
        sk.f1_score(y_true, y_pred, labels=np.arange(n_classes + 1), average="macro", zero_division=0), abs=1e-12
    )
    assert quadratic_weighted_kappa(y_true, y_pred, num_classes=n_classes) == pytest.approx(
        sk.cohen_kappa_score(y_true, y_pred, labels=labels, weights="quadratic"), abs=1e-12
    )


def test_kappa_weights_use_class_index_even_when_a_class_is_absent():
    """Classes 0 and 2 only: with num_classes=3 their distance is 2 (sklearn, given labels 0..2, agrees)."""
    y_true, y_pred = np.array([0, 0, 2, 2, 0]), np.array([0, 2, 2, 0, 0])
    expected = sk.cohen_kappa_score(y_true, y_pred, labels=[0, 1, 2], weights="quadratic")
    assert quadratic_weighted_kappa(y_true, y_pred, num_classes=3) == pytest.approx(expected)
    assert quadratic_weighted_kappa(y_true, y_true) == pytest.approx(1.0)


def _ece_loop(labels: np.ndarray, prob: np.ndarray, n_bins: int) -> float:
    """ECE bin by bin: (lo, hi] intervals, |accuracy - mean confidence| weighted by the bin's share of samples."""
    confidence, prediction = prob.max(axis=1), prob.argmax(axis=1)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            accuracy = np.mean(prediction[inside] == labels[inside])
            total += inside.mean() * abs(accuracy - confidence[inside].mean())
    return total


@pytest.mark.parametrize("seed,n,n_classes,n_bins", [(0, 100, 2, 10), (1, 400, 4, 15), (2, 60, 3, 5), (3, 80, 2, 1)])
def test_ece_matches_loop(seed, n, n_classes, n_bins):
    labels, prob = _probabilities(seed, n, n_classes, 2)  # rounding puts confidences on bin edges
    assert expected_calibration_error(labels, prob, n_bins) == pytest.approx(_ece_loop(labels, prob, n_bins))
    if n_classes == 2:
        assert expected_calibration_error(labels, prob[:, 1], n_bins) == pytest.approx(_ece_loop(labels, prob, n_bins))


def test_ece_of_a_calibrated_predictor_is_small():
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    labels = (rng.random(20000) < p).astype(int)
    assert expected_calibration_error(labels, p) < 0.02
    assert expected_calibration_error(labels, np.where(p > 0.5, 1.0, 0.0)) > 0.2


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: roc_auc(np.array([0, 0, 0]), np.array([0.1, 0.2, 0.3])), "no sample"),
        (lambda: roc_auc(np.array([0, 1, 2]), np.array([[1.0, 2.0, 3.0]] * 3)), "softmax"),
        (lambda: roc_auc(np.array([0, 3, 1]), np.full((3, 3), 1 / 3)), "scores for 3"),
        (lambda: roc_auc(np.array([0, 1]), np.array([0.1, np.nan])), "finite"),
        (lambda: balanced_accuracy(np.array([0, 1]), np.array([0, 1, 1])), "same length"),
        (lambda: balanced_accuracy(np.array([0, -1]), np.array([0, 1])), "non-negative"),
        (lambda: macro_f1(np.array([0.5, 1.0]), np.array([0, 1])), "integer"),
        (lambda: quadratic_weighted_kappa(np.array([1, 1]), np.array([1, 1])), "undefined"),
        (lambda: quadratic_weighted_kappa(np.array([0, 3]), np.array([0, 1]), num_classes=3), "num_classes"),
        (lambda: expected_calibration_error(np.array([0, 1]), np.array([0.2, 1.3])), "probabilities"),
        (lambda: expected_calibration_error(np.array([0, 1]), np.array([0.2, 0.3]), n_bins=0), "n_bins"),
    ],
)
def test_ill_arg(call, match):
    with pytest.raises(ValueError, match=match):
        call()

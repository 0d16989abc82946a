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

"""Classification metrics: ROC AUC (binary, one-vs-rest macro), balanced accuracy, macro F1, quadratic kappa, ECE.

NumPy in, float out. Labels are integer class indices ``0 .. C - 1``; scores are probabilities ``[N, C]`` (or a
positive-class score ``[N]`` for binary tasks). Written without scikit-learn so the definitions are explicit;
the tests check them against scikit-learn.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

__all__ = ["balanced_accuracy", "expected_calibration_error", "macro_f1", "quadratic_weighted_kappa", "roc_auc"]


def _labels(y: np.ndarray, name: str) -> np.ndarray:
    """Validate class labels: a non-empty 1-D array of non-negative integers (integral floats accepted)."""
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of class indices, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.any(arr < 0) or np.any(arr != np.round(arr)):
        raise ValueError(f"{name} must hold non-negative integer class indices, got values {np.unique(arr)[:10]}")
    return arr.astype(np.int64)


def _pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a pair of label vectors of the same length."""
    true, pred = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if true.shape != pred.shape:
        raise ValueError(f"y_true and y_pred must have the same length, got {true.size} and {pred.size}")
    return true, pred


def _confusion(true: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``[C, C]`` counts, rows = true class, columns = predicted class."""
    if max(true.max(), pred.max()) >= n_classes:
        raise ValueError(f"labels must be < num_classes = {n_classes}, got {max(true.max(), pred.max())}")
    return np.bincount(true * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney form of the ROC AUC (tied scores count 1/2), from average ranks."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Area under the ROC curve: binary, or one-vs-rest macro average for more than two classes.

    Binary tasks take a positive-class score ``[N]`` or probabilities ``[N, 2]`` (column 1 is used). With ``C >
    2`` classes, ``y_score`` holds softmax probabilities ``[N, C]``; the AUC of each class against the rest is
    averaged with equal weights. Hanley & McNeil, Radiology 1982 (https://doi.org/10.1148/radiology.143.1.7063747);
    Fawcett, Pattern Recognit Lett 2006 (https://doi.org/10.1016/j.patrec.2005.10.010).

    Args:
        y_true: ``[N]`` class indices.
        y_score: ``[N]`` positive-class scores or ``[N, C]`` probabilities.

    Returns:
        The AUC in [0, 1].

    Raises:
        ValueError: on malformed inputs, a class without positives or negatives, or rows that are not
            probabilities in the multi-class case.
    """
    true = _labels(y_true, "y_true")
    score = np.asarray(y_score, dtype=float)
    if score.ndim not in (1, 2) or score.shape[0] != true.size or not np.isfinite(score).all():
        raise ValueError(f"y_score must be finite with shape [N] or [N, C] and N = {true.size}, got {score.shape}")
    if score.ndim == 2 and score.shape[1] == 2:
        score = score[:, 1]
    n_classes = 2 if score.ndim == 1 else score.shape[1]
    if true.max() >= n_classes:
        raise ValueError(f"y_true holds class {true.max()} but y_score has scores for {n_classes} classes")
    missing = np.setdiff1d(np.arange(n_classes), true)
    if missing.size:
        raise ValueError(f"AUC is undefined: classes {missing.tolist()} have no sample in y_true")
    if score.ndim == 1:
        return _binary_auc(true == 1, score)
    if np.any(score < 0) or not np.allclose(score.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("multi-class y_score must hold probabilities whose rows sum to 1 (apply softmax to logits)")
    return float(np.mean([_binary_auc(true == c, score[:, c]) for c in range(n_classes)]))


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``y_true``.

    Brodersen et al., ICPR 2010 (https://doi.org/10.1109/ICPR.2010.764).

    Args:
        y_true: ``[N]`` class indices.
        y_pred: ``[N]`` predicted class indices.

    Returns:
        Balanced accuracy in [0, 1].
    """
    true, pred = _pair(y_true, y_pred)
    classes = np.unique(true)
    return float(np.mean([np.mean(pred[true == c] == c) for c in classes]))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None = None) -> float:
    """Unweighted mean of per-class F1 scores.

    Classes are ``0 .. num_classes - 1`` when given, else those present in ``y_true`` or ``y_pred``; a class with
    no true and no predicted sample scores 0 (scikit-learn's ``zero_division=0``). Sokolova & Lapalme, Inf
    Process Manag 2009 (https://doi.org/10.1016/j.ipm.2009.03.002).

    Args:
        y_true: ``[N]`` class indices.
        y_pred: ``[N]`` predicted class indices.
        num_classes: number of classes, so that classes absent from this sample still count.

    Returns:
        Macro F1 in [0, 1].
    """
    true, pred = _pair(y_true, y_pred)
    n = num_classes if num_classes is not None else int(max(true.max(), pred.max())) + 1
    confusion = _confusion(true, pred, n)
    classes = np.arange(n) if num_classes is not None else np.union1d(true, pred)
    tp = np.diag(confusion)[classes].astype(float)
    denominator = 2 * tp + (confusion.sum(axis=0)[classes] - tp) + (confusion.sum(axis=1)[classes] - tp)
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return float(f1.mean())


def quadratic_weighted_kappa(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None = None) -> float:
    """Cohen's kappa with quadratic disagreement weights ``(i - j)^2`` between ordinal class indices.

    Classes are ``0 .. num_classes - 1`` (default ``max label + 1``), so the weight is the squared distance in
    class index even when some classes are absent. Cohen, Psychol Bull 1968 (https://doi.org/10.1037/h0026256).

    Args:
        y_true: ``[N]`` ordinal class indices (e.g. stages).
        y_pred: ``[N]`` predicted class indices.
        num_classes: number of ordinal classes.

    Returns:
        Kappa in [-1, 1].

    Raises:
        ValueError: when both label vectors use a single identical class (kappa undefined).
    """
    true, pred = _pair(y_true, y_pred)
    n = num_classes if num_classes is not None else int(max(true.max(), pred.max())) + 1
    observed = _confusion(true, pred, n).astype(float)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / observed.sum()
    weights = np.square(np.subtract.outer(np.arange(n), np.arange(n))).astype(float)
    chance = float(np.sum(weights * expected))
    if chance == 0:
        raise ValueError("kappa is undefined when y_true and y_pred use one and the same class only")
    return 1.0 - float(np.sum(weights * observed)) / chance


def expected_calibration_error(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = 15) -> float:
    """Top-label expected calibration error with equal-width confidence bins.

    Each sample's confidence is its largest class probability; bins are ``(k / n_bins, (k + 1) / n_bins]``, and
    ``ECE = sum_b |B_b| / N * |accuracy(B_b) - mean confidence(B_b)|``. Guo et al., "On calibration of modern
    neural networks", ICML 2017 (https://arxiv.org/abs/1706.04599).

    Args:
        y_true: ``[N]`` class indices.
        y_prob: ``[N, C]`` probabilities, or ``[N]`` positive-class probabilities of a binary task.
        n_bins: number of confidence bins.

    Returns:
        ECE in [0, 1].
    """
    true = _labels(y_true, "y_true")
    prob = np.asarray(y_prob, dtype=float)
    if prob.ndim == 1:
        prob = np.stack([1.0 - prob, prob], axis=1)
    if prob.ndim != 2 or prob.shape[0] != true.size or not np.isfinite(prob).all():
        raise ValueError(f"y_prob must be finite with shape [N] or [N, C] and N = {true.size}, got {prob.shape}")
    if prob.min() < 0 or prob.max() > 1:
        raise ValueError("y_prob must hold probabilities in [0, 1] (apply softmax or sigmoid to logits)")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    confidence = prob.max(axis=1)
    correct = (prob.argmax(axis=1) == true).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    gap = np.bincount(bin_index, weights=correct - confidence, minlength=n_bins)
    return float(np.sum(np.abs(gap)) / true.size)

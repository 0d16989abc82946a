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

"""Slide- and patient-level staging metrics, as reported by HMF (Hierarchical Multimodal Fusion of Whole Slide
Images and Text for Patient-Level Cancer Staging, https://github.com/ErShiY/HMF): slide accuracy and macro F1,
and for each slide -> patient aggregator patient accuracy, macro F1 and quadratic weighted kappa."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from monai_ext.metrics.classification import macro_f1, quadratic_weighted_kappa

__all__ = ["accuracy", "staging_report"]


def accuracy(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> float:
    """Share of exactly right predictions.

    Args:
        y_true: ``[N]`` class indices.
        y_pred: ``[N]`` predicted class indices.

    Returns:
        accuracy in [0, 1].

    Raises:
        ValueError: empty or mismatched inputs.
    """
    true, pred = np.asarray(y_true), np.asarray(y_pred)
    if true.ndim != 1 or true.shape != pred.shape or true.size == 0:
        raise ValueError(
            f"y_true and y_pred must be non-empty 1-D arrays of one length, got {true.shape}, {pred.shape}"
        )
    return float(np.mean(true == pred))


def staging_report(
    slide_true: Sequence[int] | np.ndarray | None,
    slide_pred: Sequence[int] | np.ndarray | None,
    patient_true: Sequence[int] | np.ndarray,
    patient_preds: Mapping[str, Sequence[int] | np.ndarray],
    *,
    n_patient_classes: int = 5,
) -> dict[str, float]:
    """Staging metrics at both levels.

    Macro F1 averages the classes present in the true or predicted labels (scikit-learn's ``average="macro"``, as
    HMF reports it). Kappa uses quadratic weights on the distance between patient stage indices ``0 ..
    n_patient_classes - 1`` (pN0 < pN0(i+) < pN1mi < pN1 < pN2), so a class missing from a small test fold does not
    shrink the distances; it is NaN when undefined (true and predicted stages all one and the same class).

    Args:
        slide_true: ``[S]`` true slide stages (indices of ``SLIDE_STAGES``); None (with ``slide_pred``) for a
            patient-level model without slide predictions.
        slide_pred: ``[S]`` predicted slide stages, or None.
        patient_true: ``[P]`` true patient stages (indices of ``PN_STAGES``).
        patient_preds: aggregator name (e.g. ``"learned"``, ``"rule"``) -> ``[P]`` predicted patient stages.
        n_patient_classes: number of ordinal patient stages.

    Returns:
        ``slide_accuracy`` and ``slide_macro_f1`` (when slide stages are given) and, per aggregator ``a``,
        ``patient_<a>_accuracy``, ``patient_<a>_macro_f1`` and ``patient_<a>_kappa``.

    Raises:
        ValueError: empty or mismatched inputs, only one of the slide arguments, or no aggregator.
    """
    if not patient_preds:
        raise ValueError("patient_preds is empty: give {aggregator name: predicted patient stages}")
    if (slide_true is None) != (slide_pred is None):
        raise ValueError("give both slide_true and slide_pred, or neither (patient-level model)")
    report = {}
    if slide_true is not None and slide_pred is not None:
        report["slide_accuracy"] = accuracy(slide_true, slide_pred)
        report["slide_macro_f1"] = macro_f1(slide_true, slide_pred)
    for name, pred in patient_preds.items():
        report[f"patient_{name}_accuracy"] = accuracy(patient_true, pred)
        report[f"patient_{name}_macro_f1"] = macro_f1(patient_true, pred)
        single_class = np.unique(np.concatenate([np.asarray(patient_true), np.asarray(pred)])).size == 1
        report[f"patient_{name}_kappa"] = (
            float("nan")
            if single_class
            else quadratic_weighted_kappa(patient_true, pred, num_classes=n_patient_classes)
        )
    return report

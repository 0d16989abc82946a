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

"""Discrete time bins for survival labels: edges from quantiles of uncensored times, and bin assignment.

Compute the edges on the training fold only and reuse them for its validation and test patients: edges taken
from the whole cohort leak the test patients' survival times into training.
"""

from __future__ import annotations

import numpy as np

__all__ = ["assign_bins", "make_time_bins"]


def make_time_bins(times: np.ndarray, events: np.ndarray, n_bins: int = 4) -> np.ndarray:
    """Bin edges at the quantiles of the uncensored survival times, as in MCAT and PORPOISE.

    The inner edges are the ``k / n_bins`` quantiles (linear interpolation, as ``pandas.qcut``) of the times of
    patients whose event was observed; the first edge is 0 and the last ``+inf``, so every positive time falls in
    a bin. Bins are half-open, ``[edges[k], edges[k + 1])``. Chen et al., MCAT, ICCV 2021:
    https://openaccess.thecvf.com/content/ICCV2021/html/Chen_Multimodal_Co-Attention_Transformer_for_Survival_Prediction_in_Gigapixel_Whole_Slide_ICCV_2021_paper.html;
    Zadeh & Schmid, TPAMI 2021 (https://ieeexplore.ieee.org/document/9028113).

    Args:
        times: ``[N]`` survival times (months), one per patient of the training fold, all > 0.
        events: ``[N]`` 1 = event observed, 0 = censored.
        n_bins: number of bins (the model's number of hazard outputs).

    Returns:
        ``[n_bins + 1]`` increasing edges, ``edges[0] = 0`` and ``edges[-1] = inf``.

    Raises:
        ValueError: on malformed inputs, or too few distinct uncensored times for ``n_bins`` distinct edges.
    """
    times_arr = np.asarray(times, dtype=float)
    events_arr = np.asarray(events)
    if times_arr.ndim != 1 or times_arr.shape != events_arr.shape:
        raise ValueError(
            f"times and events must be 1-D arrays of the same length, got {times_arr.shape} and {events_arr.shape}"
        )
    if not np.isin(events_arr, (0, 1)).all():
        raise ValueError("events must hold 0 (censored) and 1 (event observed); TCGA's `censorship` is 1 - event")
    if not (np.isfinite(times_arr).all() and (times_arr > 0).all()):
        raise ValueError("times must be finite and > 0 (months of follow-up)")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    uncensored = times_arr[events_arr == 1]
    if uncensored.size < n_bins:
        raise ValueError(f"{uncensored.size} uncensored patients cannot define {n_bins} bins; lower n_bins")
    inner = np.quantile(uncensored, np.arange(1, n_bins) / n_bins)
    edges = np.concatenate(([0.0], inner, [np.inf]))
    if np.any(np.diff(edges) <= 0):
        raise ValueError(f"quantile edges {inner} are not distinct (many tied uncensored times); lower n_bins")
    return edges


def assign_bins(times: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Index of the half-open bin ``[edges[k], edges[k + 1])`` holding each time.

    Args:
        times: ``[N]`` survival times (any fold), >= ``edges[0]``.
        edges: ``[K + 1]`` increasing edges from ``make_time_bins`` on the training fold.

    Returns:
        ``[N]`` int64 bin indices in ``[0, K - 1]``.
    """
    times_arr = np.asarray(times, dtype=float)
    edges_arr = np.asarray(edges, dtype=float)
    if edges_arr.ndim != 1 or edges_arr.size < 2 or np.any(np.diff(edges_arr) <= 0):
        raise ValueError(f"edges must be a strictly increasing 1-D array of at least 2 values, got {edges_arr}")
    if not np.isfinite(times_arr).all() or np.any(times_arr < edges_arr[0]) or np.any(times_arr >= edges_arr[-1]):
        raise ValueError(
            f"times must be finite and within [{edges_arr[0]:g}, {edges_arr[-1]:g}); got range "
            f"[{np.min(times_arr):g}, {np.max(times_arr):g}]"
        )
    return (np.searchsorted(edges_arr, times_arr, side="right") - 1).astype(np.int64)

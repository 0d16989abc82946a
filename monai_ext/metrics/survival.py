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

"""Survival metrics: Harrell's and Uno's C-index, Brier score, integrated Brier score, cumulative/dynamic AUC.

All functions take NumPy arrays (anything ``np.asarray`` accepts) and follow the project convention: ``event`` = 1
when the event (death) was observed and 0 when censored, and a higher ``risk`` means an earlier event. They are
written here (not imported from scikit-survival, which is GPL-3.0) and reproduce scikit-survival 0.28's
``sksurv.metrics`` to floating-point precision, including its tie rules: pairs whose risks differ by at most
``tied_tol`` count one half, and a censored subject is comparable with an event at the same time. Where
scikit-survival raises because the censoring survival function is undefined at a time point that does not enter
the result (for example a test event after the last time asked for), these functions compute the result anyway.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "brier_score",
    "concordance_index",
    "concordance_index_ipcw",
    "cumulative_dynamic_auc",
    "integrated_brier_score",
    "kaplan_meier",
    "risk_from_hazards",
    "survival_from_hazards",
]

_CHUNK_ELEMENTS = 4_000_000  # pairwise comparisons held in memory at once


def survival_from_hazards(hazards: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Survival curve of a discrete-time hazard model, ``S(k) = prod_{l<=k} (1 - h(l))``.

    Zadeh & Schmid, "Bias in cross-entropy-based training of deep survival networks", TPAMI 2021:
    https://ieeexplore.ieee.org/document/9028113

    Args:
        hazards: ``[N, T]`` per-bin hazards in [0, 1] (``sigmoid`` of the model's logits), NumPy or torch.

    Returns:
        ``[N, T]`` survival probabilities, same type as ``hazards``.
    """
    if isinstance(hazards, torch.Tensor):
        return torch.cumprod(1.0 - hazards, dim=-1)
    return np.cumprod(1.0 - np.asarray(hazards, dtype=float), axis=-1)


def risk_from_hazards(hazards: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Scalar risk from discrete-time hazards, MCAT's convention ``risk = -sum_k S(k)``.

    The risk is minus the area under the predicted survival curve (in bins), so a higher risk means an earlier
    event, as ``concordance_index`` expects. Chen et al., MCAT, ICCV 2021:
    https://openaccess.thecvf.com/content/ICCV2021/html/Chen_Multimodal_Co-Attention_Transformer_for_Survival_Prediction_in_Gigapixel_Whole_Slide_ICCV_2021_paper.html

    Args:
        hazards: ``[N, T]`` per-bin hazards in [0, 1], NumPy or torch.

    Returns:
        ``[N]`` risks, same type as ``hazards``.
    """
    survival = survival_from_hazards(hazards)
    if isinstance(survival, torch.Tensor):
        return -survival.sum(dim=-1)
    return -survival.sum(axis=-1)


def _survival_arrays(time: np.ndarray, event: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate one set of survival outcomes: ``time`` finite floats ``[N]``, ``event`` in {0, 1} ``[N]``."""
    time_arr = np.asarray(time, dtype=float)
    event_arr = np.asarray(event)
    if time_arr.ndim != 1 or event_arr.ndim != 1 or time_arr.shape != event_arr.shape:
        raise ValueError(
            f"{name}: time and event must be 1-D arrays of the same length, got shapes {time_arr.shape} and "
            f"{event_arr.shape}"
        )
    if time_arr.size < 2:
        raise ValueError(f"{name}: need at least two subjects, got {time_arr.size}")
    if not np.isfinite(time_arr).all():
        raise ValueError(f"{name}: time holds NaN or infinite values; drop or impute those subjects first")
    if not np.isin(event_arr, (0, 1)).all():
        raise ValueError(
            f"{name}: event must hold only 0 (censored) and 1 (event observed), got values "
            f"{np.unique(event_arr)[:10]}; TCGA's `censorship` column is 1 - event"
        )
    return time_arr, event_arr.astype(bool)


def _scores(values: np.ndarray, n: int, name: str, ndim: tuple[int, ...] = (1,)) -> np.ndarray:
    """Validate a prediction array: finite floats with ``n`` rows and one of the allowed numbers of dimensions."""
    arr = np.asarray(values, dtype=float)
    if arr.ndim not in ndim or arr.shape[0] != n:
        raise ValueError(f"{name} must have {n} rows and {' or '.join(map(str, ndim))} dimension(s), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or infinite values; check the model output")
    return arr


def _weighted_concordance(
    time: np.ndarray, event: np.ndarray, risk: np.ndarray, weights: np.ndarray, tied_tol: float
) -> float:
    """Weighted Harrell concordance: sum over comparable pairs (i event, j later or censored at the same time).

    Pair (i, j) adds ``w_i`` to the denominator and ``w_i`` (``r_i > r_j``) or ``w_i / 2`` (``|r_i - r_j| <=
    tied_tol``) to the numerator.
    """
    anchors = np.flatnonzero(event & (weights > 0))
    numerator = 0.0
    denominator = 0.0
    chunk = max(1, _CHUNK_ELEMENTS // time.size)
    for start in range(0, anchors.size, chunk):
        idx = anchors[start : start + chunk]
        t_i = time[idx, None]  # [k, 1]
        comparable = (time[None, :] > t_i) | ((time[None, :] == t_i) & ~event[None, :])  # [k, N]
        diff = risk[idx, None] - risk[None, :]  # [k, N]
        tied = np.abs(diff) <= tied_tol
        score = np.where(tied, 0.5, (diff > 0).astype(float))
        w_i = weights[idx]
        numerator += float(np.sum(w_i * np.sum(score * comparable, axis=1)))
        denominator += float(np.sum(w_i * comparable.sum(axis=1)))
    if denominator == 0:
        raise ValueError(
            "no comparable pairs: a pair needs an observed event and a subject followed up for longer "
            "(check event coding: 1 = event observed, 0 = censored)"
        )
    return numerator / denominator


def concordance_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray, tied_tol: float = 1e-8) -> float:
    """Harrell's concordance index, identical to ``sksurv.metrics.concordance_index_censored``.

    A pair (i, j) is comparable when i had the event and ``t_j > t_i``, or ``t_j == t_i`` and j is censored. It
    is concordant when ``risk_i > risk_j``; risks within ``tied_tol`` count 0.5. Harrell et al., "Evaluating
    the yield of medical tests", JAMA 1982 (https://doi.org/10.1001/jama.1982.03320430047030).

    Args:
        time: ``[N]`` follow-up times (event or censoring).
        event: ``[N]`` 1 when the event was observed, 0 when censored.
        risk: ``[N]`` predicted risks, higher = earlier event (e.g. ``risk_from_hazards``).
        tied_tol: risks that differ by at most this much are tied.

    Returns:
        The C-index in [0, 1].

    Raises:
        ValueError: on malformed inputs, no observed event, or no comparable pair.
    """
    time_arr, event_arr = _survival_arrays(time, event, "concordance_index")
    risk_arr = _scores(risk, time_arr.size, "risk")
    if not event_arr.any():
        raise ValueError("concordance_index: every subject is censored; the C-index needs at least one event")
    return _weighted_concordance(time_arr, event_arr, risk_arr, np.ones_like(time_arr), tied_tol)


def kaplan_meier(time: np.ndarray, event: np.ndarray, reverse: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier estimate at each distinct time; with ``reverse`` the censoring survival ``G(t) = P(C > t)``.

    For the censoring distribution, events at a time are taken to happen before censorings at that time (the
    usual convention, as in scikit-survival). Kaplan & Meier, JASA 1958 (https://doi.org/10.2307/2281868).

    Args:
        time: ``[N]`` follow-up times.
        event: ``[N]`` 1 = event observed, 0 = censored.
        reverse: estimate the censoring survival function instead of the event survival function.

    Returns:
        ``(unique_times [U], survival [U])``: the right-continuous step function's values at its jump times.
    """
    time_arr, event_arr = _survival_arrays(time, event, "kaplan_meier")
    unique_times, inverse = np.unique(time_arr, return_inverse=True)
    n_total = np.bincount(inverse, minlength=unique_times.size)
    n_events = np.bincount(inverse, weights=event_arr.astype(float), minlength=unique_times.size)
    at_risk = time_arr.size - np.concatenate(([0], np.cumsum(n_total)[:-1]))
    if reverse:
        at_risk = at_risk - n_events
        n_events = n_total - n_events
    ratio = np.divide(n_events, at_risk, out=np.zeros(unique_times.size), where=n_events != 0)
    return unique_times, np.cumprod(1.0 - ratio)


def _step_values(unique_times: np.ndarray, values: np.ndarray, query: np.ndarray, what: str) -> np.ndarray:
    """Evaluate a right-continuous step function (1 before its first jump) at ``query`` times."""
    if values[-1] > 0 and np.any(query > unique_times[-1]):
        raise ValueError(
            f"{what} is undefined after the last training time {unique_times[-1]:g} (latest time asked: "
            f"{query.max():g}); use training data with longer follow-up or lower tau / the evaluation times"
        )
    idx = np.searchsorted(unique_times, query, side="right") - 1
    return np.where(idx >= 0, values[np.clip(idx, 0, None)], 1.0)


def _censoring_survival(
    train_time: np.ndarray, train_event: np.ndarray, query: np.ndarray, allow_zero: bool
) -> np.ndarray:
    """Censoring survival ``G(t)`` fitted on the training outcomes and evaluated at ``query``."""
    unique_times, values = kaplan_meier(train_time, train_event, reverse=True)
    g = _step_values(unique_times, values, query, "the censoring survival function G(t)")
    if not allow_zero and np.any(g == 0):
        raise ValueError(
            f"the censoring survival function G(t) is zero at times {query[g == 0][:5]} (no training subject is "
            "censored later); inverse-probability weights are infinite there: lower tau or the evaluation times"
        )
    return g


def concordance_index_ipcw(
    train_time: np.ndarray,
    train_event: np.ndarray,
    test_time: np.ndarray,
    test_event: np.ndarray,
    risk: np.ndarray,
    tau: float | None = None,
    tied_tol: float = 1e-8,
) -> float:
    """Uno's inverse-probability-of-censoring weighted C-index, as ``sksurv.metrics.concordance_index_ipcw``.

    Harrell's pairs, each weighted by ``1 / G(t_i)^2`` with ``G`` the Kaplan-Meier censoring survival of the
    training set; only events with ``t_i < tau`` anchor pairs. Uno et al., Stat Med 2011
    (https://doi.org/10.1002/sim.4154).

    Args:
        train_time: ``[M]`` training follow-up times (estimate the censoring distribution).
        train_event: ``[M]`` training event indicators.
        test_time: ``[N]`` test follow-up times.
        test_event: ``[N]`` test event indicators.
        risk: ``[N]`` predicted risks, higher = earlier event.
        tau: truncation time; ``G`` must be positive before it. ``None``: no truncation.
        tied_tol: risks that differ by at most this much are tied.

    Returns:
        The IPCW C-index in [0, 1].

    Raises:
        ValueError: on malformed inputs, a test event where ``G`` is undefined or zero, or no comparable pair.
    """
    train_t, train_e = _survival_arrays(train_time, train_event, "concordance_index_ipcw (train)")
    test_t, test_e = _survival_arrays(test_time, test_event, "concordance_index_ipcw (test)")
    risk_arr = _scores(risk, test_t.size, "risk")
    if not test_e.any():
        raise ValueError("concordance_index_ipcw: every test subject is censored; the C-index needs an event")
    anchor = test_e if tau is None else test_e & (test_t < tau)
    weights = np.zeros_like(test_t)
    weights[anchor] = 1.0 / np.square(_censoring_survival(train_t, train_e, test_t[anchor], allow_zero=False))
    return _weighted_concordance(test_t, test_e, risk_arr, weights, tied_tol)


def _evaluation_times(times: np.ndarray, test_time: np.ndarray) -> np.ndarray:
    """Validate evaluation times: strictly increasing, within ``[min(test_time), max(test_time))``."""
    times_arr = np.atleast_1d(np.asarray(times, dtype=float))
    if times_arr.ndim != 1 or times_arr.size == 0 or np.any(np.diff(times_arr) <= 0):
        raise ValueError(f"times must be a non-empty, strictly increasing 1-D array, got {times_arr}")
    if times_arr[0] < test_time.min() or times_arr[-1] >= test_time.max():
        raise ValueError(
            f"times must lie within the test follow-up [{test_time.min():g}, {test_time.max():g}), got "
            f"[{times_arr[0]:g}, {times_arr[-1]:g}]"
        )
    return times_arr


def cumulative_dynamic_auc(
    train_time: np.ndarray,
    train_event: np.ndarray,
    test_time: np.ndarray,
    test_event: np.ndarray,
    risk: np.ndarray,
    times: np.ndarray,
    tied_tol: float = 1e-8,
) -> tuple[np.ndarray, float]:
    """Cumulative/dynamic time-dependent AUC, as ``sksurv.metrics.cumulative_dynamic_auc``.

    At each time ``t``, cases are events with ``t_i <= t`` (weighted by ``1 / G(t_i)``), controls are subjects
    with ``t_j > t``; the AUC is the weighted fraction of case-control pairs with ``risk_i > risk_j`` (ties count
    0.5). The summary is the mean AUC weighted by the test Kaplan-Meier decrements. Uno et al., JASA 2007
    (https://doi.org/10.1198/016214507000000149); Lambert & Chevret, SMMR 2016
    (https://doi.org/10.1177/0962280213515571).

    Args:
        train_time: ``[M]`` training follow-up times (estimate the censoring distribution).
        train_event: ``[M]`` training event indicators.
        test_time: ``[N]`` test follow-up times.
        test_event: ``[N]`` test event indicators.
        risk: ``[N]`` risks, or ``[N, T]`` time-dependent risks (column k for ``times[k]``).
        times: ``[T]`` strictly increasing evaluation times in ``[min(test_time), max(test_time))``.
        tied_tol: risks that differ by at most this much are tied.

    Returns:
        ``(auc [T], mean_auc)``.

    Raises:
        ValueError: on malformed inputs, or a time with no case or no control.
    """
    train_t, train_e = _survival_arrays(train_time, train_event, "cumulative_dynamic_auc (train)")
    test_t, test_e = _survival_arrays(test_time, test_event, "cumulative_dynamic_auc (test)")
    times_arr = _evaluation_times(times, test_t)
    risk_arr = _scores(risk, test_t.size, "risk", ndim=(1, 2))
    if risk_arr.ndim == 1:
        risk_arr = np.repeat(risk_arr[:, None], times_arr.size, axis=1)
    elif risk_arr.shape[1] != times_arr.size:
        raise ValueError(f"risk has {risk_arr.shape[1]} columns but {times_arr.size} evaluation times were given")
    weighted = test_e & (test_t <= times_arr[-1])
    ipcw = np.zeros_like(test_t)
    ipcw[weighted] = 1.0 / _censoring_survival(train_t, train_e, test_t[weighted], allow_zero=False)
    auc = np.empty(times_arr.size)
    for k, t in enumerate(times_arr):
        cases = np.flatnonzero(test_e & (test_t <= t))
        controls = test_t > t
        if cases.size == 0 or not controls.any():
            raise ValueError(f"cumulative_dynamic_auc: no case or no control at time {t:g}; choose other times")
        diff = risk_arr[cases, k, None] - risk_arr[controls, k][None, :]  # [cases, controls]
        score = np.where(np.abs(diff) <= tied_tol, 0.5, (diff > 0).astype(float))
        auc[k] = np.sum(ipcw[cases] * score.sum(axis=1)) / (ipcw[cases].sum() * controls.sum())
    if times_arr.size == 1:
        return auc, float(auc[0])
    unique_times, surv = kaplan_meier(test_t, test_e)
    s_times = _step_values(unique_times, surv, times_arr, "the test survival function")
    drops = -np.diff(np.concatenate(([1.0], s_times)))
    return auc, float(np.sum(auc * drops) / (1.0 - s_times[-1]))


def brier_score(
    train_time: np.ndarray,
    train_event: np.ndarray,
    test_time: np.ndarray,
    test_event: np.ndarray,
    survival: np.ndarray,
    times: np.ndarray,
) -> np.ndarray:
    """Time-dependent Brier score with inverse-probability-of-censoring weights, as ``sksurv.metrics.brier_score``.

    ``BS(t) = mean_i [ S_i(t)^2 1(t_i <= t, event_i) / G(t_i) + (1 - S_i(t))^2 1(t_i > t) / G(t) ]``; a term
    whose ``G`` is zero counts 0. Graf et al., Stat Med 1999
    (https://doi.org/10.1002/(SICI)1097-0258(19990915/30)18:17/18<2529::AID-SIM274>3.0.CO;2-5).

    Args:
        train_time: ``[M]`` training follow-up times (estimate the censoring distribution).
        train_event: ``[M]`` training event indicators.
        test_time: ``[N]`` test follow-up times.
        test_event: ``[N]`` test event indicators.
        survival: ``[N, T]`` predicted probabilities of surviving past ``times[k]``.
        times: ``[T]`` strictly increasing evaluation times in ``[min(test_time), max(test_time))``.

    Returns:
        ``[T]`` Brier scores.
    """
    train_t, train_e = _survival_arrays(train_time, train_event, "brier_score (train)")
    test_t, test_e = _survival_arrays(test_time, test_event, "brier_score (test)")
    times_arr = _evaluation_times(times, test_t)
    surv = _scores(survival, test_t.size, "survival", ndim=(2,))
    if surv.shape[1] != times_arr.size:
        raise ValueError(f"survival has {surv.shape[1]} columns but {times_arr.size} evaluation times were given")
    if surv.min() < 0 or surv.max() > 1:
        raise ValueError("survival must hold probabilities in [0, 1] (pass survival curves, not risks)")
    weighted = test_e & (test_t <= times_arr[-1])
    inv_g_case = np.zeros_like(test_t)
    g_case = _censoring_survival(train_t, train_e, test_t[weighted], allow_zero=True)
    inv_g_case[weighted] = np.divide(1.0, g_case, out=np.zeros_like(g_case), where=g_case > 0)
    g_t = _censoring_survival(train_t, train_e, times_arr, allow_zero=True)
    inv_g_t = np.divide(1.0, g_t, out=np.zeros_like(g_t), where=g_t > 0)
    is_case = test_e[:, None] & (test_t[:, None] <= times_arr[None, :])  # [N, T]
    is_control = test_t[:, None] > times_arr[None, :]  # [N, T]
    terms = np.square(surv) * is_case * inv_g_case[:, None] + np.square(1.0 - surv) * is_control * inv_g_t[None, :]
    return terms.mean(axis=0)


def integrated_brier_score(
    train_time: np.ndarray,
    train_event: np.ndarray,
    test_time: np.ndarray,
    test_event: np.ndarray,
    survival: np.ndarray,
    times: np.ndarray,
) -> float:
    """Integrated Brier score: trapezoidal mean of ``brier_score`` over ``[times[0], times[-1]]``.

    Matches ``sksurv.metrics.integrated_brier_score``. Graf et al., Stat Med 1999
    (https://doi.org/10.1002/(SICI)1097-0258(19990915/30)18:17/18<2529::AID-SIM274>3.0.CO;2-5).

    Args:
        train_time: ``[M]`` training follow-up times (estimate the censoring distribution).
        train_event: ``[M]`` training event indicators.
        test_time: ``[N]`` test follow-up times.
        test_event: ``[N]`` test event indicators.
        survival: ``[N, T]`` predicted probabilities of surviving past ``times[k]``.
        times: ``[T]`` (T >= 2) strictly increasing times in ``[min(test_time), max(test_time))``.

    Returns:
        The integrated Brier score (lower is better; a constant 0.5 prediction scores about 0.25).
    """
    times_arr = np.atleast_1d(np.asarray(times, dtype=float))
    if times_arr.size < 2:
        raise ValueError(f"integrated_brier_score needs at least two evaluation times, got {times_arr.size}")
    scores = brier_score(train_time, train_event, test_time, test_event, survival, times_arr)
    return float(np.trapezoid(scores, times_arr) / (times_arr[-1] - times_arr[0]))

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

"""Survival metrics against scikit-survival, lifelines and plain-loop references, and MCAT's published C-index."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from lifelines import KaplanMeierFitter
from sksurv import metrics as sk_metrics
from sksurv.nonparametric import kaplan_meier_estimator
from sksurv.util import Surv

from monai_ext.metrics.survival import (
    brier_score,
    concordance_index,
    concordance_index_ipcw,
    cumulative_dynamic_auc,
    integrated_brier_score,
    kaplan_meier,
    risk_from_hazards,
    survival_from_hazards,
)


def _outcomes(seed: int, n: int, max_time: int, event_rate: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Integer follow-up times in [1, max_time] (many ties) and random event indicators."""
    rng = np.random.default_rng(seed)
    return rng.integers(1, max_time + 1, n).astype(float), (rng.random(n) < event_rate).astype(int)


def _risk(seed: int, n: int, n_levels: int) -> np.ndarray:
    """Integer risks with ``n_levels`` distinct values (few levels = many tied risks)."""
    return np.random.default_rng(seed + 1000).integers(0, n_levels, n).astype(float)


def _harrell_loop(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Textbook double loop over ordered pairs, written independently of the library code."""
    num = den = 0.0
    for i in range(len(time)):
        for j in range(len(time)):
            if event[i] == 1 and (time[j] > time[i] or (time[j] == time[i] and event[j] == 0)):
                den += 1
                num += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
    return num / den


@pytest.mark.parametrize(
    "seed,n,max_time,n_levels", [(0, 5, 3, 2), (1, 40, 6, 3), (2, 200, 10, 5), (3, 300, 50, 1000), (4, 2, 2, 2)]
)
def test_harrell_matches_sksurv_and_loop_with_ties(seed, n, max_time, n_levels):
    time, event = _outcomes(seed, n, max_time)
    event[0] = 1
    time[0] = 1  # guarantees at least one comparable pair
    risk = _risk(seed, n, n_levels)
    ours = concordance_index(time, event, risk)
    expected = sk_metrics.concordance_index_censored(event.astype(bool), time, risk)[0]
    assert ours == pytest.approx(expected, abs=1e-12)
    assert ours == pytest.approx(_harrell_loop(time, event, risk), abs=1e-12)
    assert ours + concordance_index(time, event, -risk) == pytest.approx(1.0)


def test_harrell_chunking_does_not_change_the_result(monkeypatch):
    time, event = _outcomes(5, 120, 8)
    risk = _risk(5, 120, 4)
    whole = concordance_index(time, event, risk)
    monkeypatch.setattr("monai_ext.metrics.survival._CHUNK_ELEMENTS", 250)  # two anchors per chunk
    assert concordance_index(time, event, risk) == pytest.approx(whole, abs=1e-12)


@pytest.mark.parametrize("model,cohort,published", [("MCAT", "blca", 0.6243), ("SNN", "blca", 0.5407)])
def test_reproduces_mcat_published_cindex(shared_data, model, cohort, published):
    """MCAT's risk is -sum(S): higher = worse, used as given (no sign flip); event = 1 - censorship."""
    preds = pd.read_csv(shared_data / "reference_results" / "mcat_iccv2021_val_predictions.csv")
    rows = preds[(preds["model"] == model) & (preds["cohort"] == cohort)]
    per_fold = [
        concordance_index(fold["survival_months"], 1 - fold["censorship"], fold["risk"])
        for _, fold in rows.groupby("fold")
    ]
    assert len(per_fold) == 5
    assert np.mean(per_fold) == pytest.approx(published, abs=1e-4)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("reverse", [False, True])
def test_kaplan_meier_matches_references(seed, reverse):
    time, event = _outcomes(seed, 80, 12)
    times, surv = kaplan_meier(time, event, reverse=reverse)
    ref_times, ref_surv = kaplan_meier_estimator(event.astype(bool), time, reverse=reverse)
    np.testing.assert_allclose(times, ref_times)
    np.testing.assert_allclose(surv, ref_surv, atol=1e-12)
    if not reverse:
        km = KaplanMeierFitter().fit(time, event)
        np.testing.assert_allclose(surv, km.survival_function_at_times(times).to_numpy(), atol=1e-12)


def _train_test(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training follow-up longer than the test's, so every test time has a defined censoring weight."""
    train_time, train_event = _outcomes(seed, 150, 30, event_rate=0.5)
    train_time[0], train_event[0] = 31.0, 0  # censored last: G > 0 up to 31
    test_time, test_event = _outcomes(seed + 50, 70, 20)
    return train_time, train_event, test_time, test_event


@pytest.mark.parametrize("seed,tau,n_levels", [(0, None, 4), (1, 12.0, 3), (2, 5.0, 1000), (3, None, 1000)])
def test_uno_cindex_matches_sksurv(seed, tau, n_levels):
    train_time, train_event, test_time, test_event = _train_test(seed)
    risk = _risk(seed, test_time.size, n_levels)
    ours = concordance_index_ipcw(train_time, train_event, test_time, test_event, risk, tau=tau)
    expected = sk_metrics.concordance_index_ipcw(
        Surv.from_arrays(train_event, train_time), Surv.from_arrays(test_event, test_time), risk, tau=tau
    )[0]
    assert ours == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("seed,time_dependent", [(0, False), (1, True), (2, False)])
def test_cumulative_dynamic_auc_matches_sksurv(seed, time_dependent):
    train_time, train_event, test_time, test_event = _train_test(seed)
    times = np.array([3.0, 7.0, 11.0, 15.0])
    shape = (test_time.size, times.size) if time_dependent else test_time.size
    risk = np.random.default_rng(seed).integers(0, 6, shape).astype(float)
    auc, mean_auc = cumulative_dynamic_auc(train_time, train_event, test_time, test_event, risk, times)
    ref_auc, ref_mean = sk_metrics.cumulative_dynamic_auc(
        Surv.from_arrays(train_event, train_time), Surv.from_arrays(test_event, test_time), risk, times
    )
    np.testing.assert_allclose(auc, ref_auc, atol=1e-10)
    assert mean_auc == pytest.approx(ref_mean, abs=1e-10)
    single, single_mean = cumulative_dynamic_auc(
        train_time, train_event, test_time, test_event, risk if not time_dependent else risk[:, :1], times[:1]
    )
    assert single[0] == pytest.approx(ref_auc[0], abs=1e-10)
    assert single_mean == pytest.approx(ref_auc[0], abs=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_brier_and_integrated_brier_match_sksurv(seed):
    train_time, train_event, test_time, test_event = _train_test(seed)
    times = np.array([2.0, 5.0, 9.0, 14.0, 18.0])
    survival = np.sort(np.random.default_rng(seed).random((test_time.size, times.size)), axis=1)[:, ::-1]
    train, test = Surv.from_arrays(train_event, train_time), Surv.from_arrays(test_event, test_time)
    np.testing.assert_allclose(
        brier_score(train_time, train_event, test_time, test_event, survival, times),
        sk_metrics.brier_score(train, test, survival, times)[1],
        atol=1e-12,
    )
    assert integrated_brier_score(train_time, train_event, test_time, test_event, survival, times) == pytest.approx(
        sk_metrics.integrated_brier_score(train, test, survival, times), abs=1e-12
    )


def test_test_event_beyond_training_follow_up_is_harmless_when_unused():
    """sksurv raises for a late test event whose weight never enters; its value equals that subject censored."""
    train_time, train_event, test_time, test_event = _train_test(7)
    test_time[0], test_event[0] = 40.0, 1  # after the training follow-up (31) and after every evaluation time
    times = np.array([4.0, 8.0, 12.0])
    censored = test_event.copy()
    censored[0] = 0
    train, test_censored = Surv.from_arrays(train_event, train_time), Surv.from_arrays(censored, test_time)
    with pytest.raises(ValueError):
        sk_metrics.cumulative_dynamic_auc(train, Surv.from_arrays(test_event, test_time), test_time, times)
    risk = _risk(7, test_time.size, 5)
    auc, mean_auc = cumulative_dynamic_auc(train_time, train_event, test_time, test_event, risk, times)
    ref_auc, ref_mean = sk_metrics.cumulative_dynamic_auc(train, test_censored, risk, times)
    np.testing.assert_allclose(auc, ref_auc, atol=1e-12)
    assert mean_auc == pytest.approx(ref_mean, abs=1e-12)
    survival = np.full((test_time.size, times.size), 0.6)
    np.testing.assert_allclose(
        brier_score(train_time, train_event, test_time, test_event, survival, times),
        sk_metrics.brier_score(train, test_censored, survival, times)[1],
        atol=1e-12,
    )
    with pytest.raises(ValueError, match="censoring survival function"):
        concordance_index_ipcw(train_time, train_event, test_time, test_event, risk)
    assert concordance_index_ipcw(train_time, train_event, test_time, test_event, risk, tau=30.0) == pytest.approx(
        sk_metrics.concordance_index_ipcw(train, test_censored, risk, tau=30.0)[0], abs=1e-12
    )


def test_risk_from_hazards_numpy_torch_and_loop():
    hazards = np.random.default_rng(0).random((6, 4))
    expected = np.array([-sum(np.prod(1 - row[: k + 1]) for k in range(len(row))) for row in hazards])
    np.testing.assert_allclose(risk_from_hazards(hazards), expected)
    torch_risk = risk_from_hazards(torch.from_numpy(hazards))
    assert isinstance(torch_risk, torch.Tensor)
    np.testing.assert_allclose(torch_risk.numpy(), expected)
    np.testing.assert_allclose(survival_from_hazards(hazards)[:, -1], np.prod(1 - hazards, axis=1))
    assert np.all(risk_from_hazards(np.minimum(hazards + 0.1, 1.0)) > risk_from_hazards(hazards))


_T, _E = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1, 0, 1, 0])


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: concordance_index(_T, _E, _T[:3]), "rows"),
        (lambda: concordance_index(_T, np.array([1, 2, 0, 0]), _T), "only 0"),
        (lambda: concordance_index(_T, np.zeros(4), _T), "censored"),
        (lambda: concordance_index(_T, _E, np.array([1.0, np.nan, 0.0, 1.0])), "NaN"),
        (lambda: concordance_index(np.array([1.0, np.inf, 2.0, 3.0]), _E, _T), "NaN or infinite"),
        (lambda: concordance_index(_T, np.array([0, 0, 0, 1]), _T), "no comparable"),
        (lambda: concordance_index(_T[:1], _E[:1], _T[:1]), "two subjects"),
        (lambda: cumulative_dynamic_auc(_T, _E, _T, _E, _T, np.array([2.0, 1.5])), "increasing"),
        (lambda: cumulative_dynamic_auc(_T, _E, _T, _E, _T, np.array([2.0, 4.0])), "follow-up"),
        (lambda: cumulative_dynamic_auc(_T, _E, _T, _E, np.ones((4, 3)), np.array([2.0, 3.0])), "columns"),
        (lambda: brier_score(_T, _E, _T, _E, np.full((4, 1), 2.0), np.array([2.0])), "probabilities"),
        (lambda: integrated_brier_score(_T, _E, _T, _E, np.full((4, 1), 0.5), np.array([2.0])), "two"),
    ],
)
def test_ill_arg(call, match):
    with pytest.raises(ValueError, match=match):
        call()

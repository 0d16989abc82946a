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

"""Survival losses against plain NumPy loops of MCAT's formulas, scikit-survival's Breslow likelihood and lifelines."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from lifelines import CoxPHFitter
from sksurv.linear_model.coxph import CoxPHOptimizer

from monai_ext.losses.survival import CoxPHLoss, CrossEntropySurvivalLoss, DiscreteTimeNLLLoss


def _discrete_batch(seed: int, batch: int, n_bins: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random logits (``scale`` large = saturated hazards that hit the eps clamp), bin labels and events."""
    rng = np.random.default_rng(seed)
    return rng.normal(0, scale, (batch, n_bins)), rng.integers(0, n_bins, batch), rng.integers(0, 2, batch)


def _mcat_terms(logit_row: np.ndarray, y: int, eps: float) -> dict[str, float]:
    """Per-patient log terms computed in probability space with MCAT's clamps, one patient at a time."""
    hazard = [1.0 / (1.0 + np.exp(-v)) for v in logit_row]
    one_minus = [1.0 / (1.0 + np.exp(v)) for v in logit_row]
    surv_padded = [1.0]
    for q in one_minus:
        surv_padded.append(surv_padded[-1] * q)
    return {
        "log_s_before": np.log(max(surv_padded[y], eps)),
        "log_s_at": np.log(max(surv_padded[y + 1], eps)),
        "log_event_by_y": np.log(max(1.0 - surv_padded[y + 1], eps)),
        "log_h": np.log(max(hazard[y], eps)),
    }


def _nll_loop(logits: np.ndarray, label: np.ndarray, event: np.ndarray, alpha: float, eps: float) -> float:
    total = 0.0
    for row, y, e in zip(logits, label, event, strict=True):
        t = _mcat_terms(row, int(y), eps)
        uncensored = -e * (t["log_s_before"] + t["log_h"])
        censored = -(1 - e) * t["log_s_at"]
        total += (1 - alpha) * (censored + uncensored) + alpha * uncensored
    return total / len(label)


def _ce_loop(logits: np.ndarray, label: np.ndarray, event: np.ndarray, alpha: float, eps: float) -> float:
    total = 0.0
    for row, y, e in zip(logits, label, event, strict=True):
        t = _mcat_terms(row, int(y), eps)
        ce = -(1 - e) * t["log_s_at"] - e * t["log_event_by_y"]
        reg = -e * (t["log_s_before"] + t["log_h"])
        total += (1 - alpha) * ce + alpha * reg
    return total / len(label)


@pytest.mark.parametrize("seed,batch,n_bins,scale", [(0, 8, 4, 1.0), (1, 16, 6, 3.0), (2, 5, 4, 25.0), (3, 1, 1, 1.0)])
@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_discrete_losses_match_mcat_formulas(seed, batch, n_bins, scale, alpha):
    logits, label, event = _discrete_batch(seed, batch, n_bins, scale)
    args = (torch.from_numpy(logits), torch.from_numpy(label), torch.from_numpy(event))
    nll = DiscreteTimeNLLLoss(alpha=alpha, eps=1e-7)(*args)
    ce = CrossEntropySurvivalLoss(alpha=alpha, eps=1e-7)(*args)
    assert nll.item() == pytest.approx(_nll_loop(logits, label, event, alpha, 1e-7), rel=1e-9)
    assert ce.item() == pytest.approx(_ce_loop(logits, label, event, alpha, 1e-7), rel=1e-9)


@pytest.mark.parametrize("loss", [DiscreteTimeNLLLoss(alpha=0.3), CrossEntropySurvivalLoss()])
def test_discrete_losses_are_differentiable(loss):
    logits, label, event = _discrete_batch(4, 6, 4, 1.0)
    logits_t = torch.from_numpy(logits).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: loss(x, torch.from_numpy(label), torch.from_numpy(event)), (logits_t,))


def test_nll_prefers_the_observed_bin():
    """An event in bin 2 is likelier under hazards peaking in bin 2 than under hazards peaking in bin 0."""
    loss = DiscreteTimeNLLLoss()
    label, event = torch.tensor([2]), torch.tensor([1])
    right = loss(torch.tensor([[-4.0, -4.0, 4.0, 0.0]]), label, event)
    wrong = loss(torch.tensor([[4.0, -4.0, -4.0, 0.0]]), label, event)
    assert right < wrong


def _cox_batch(seed: int, batch: int, max_time: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, batch), rng.integers(1, max_time + 1, batch).astype(float), rng.integers(0, 2, batch)


def _cox_loop(risk: np.ndarray, time: np.ndarray, event: np.ndarray) -> float:
    """Breslow partial likelihood, one event at a time, divided by the number of events."""
    total = 0.0
    for i in range(len(risk)):
        if event[i]:
            risk_set = sum(np.exp(risk[j]) for j in range(len(risk)) if time[j] >= time[i])
            total -= risk[i] - np.log(risk_set)
    return total / event.sum()


@pytest.mark.parametrize("seed,batch,max_time", [(0, 10, 3), (1, 40, 8), (2, 64, 1000), (3, 2, 1)])
def test_cox_matches_sksurv_breslow_and_loop_with_ties(seed, batch, max_time):
    risk, time, event = _cox_batch(seed, batch, max_time)
    event[0] = 1
    ours = CoxPHLoss()(torch.from_numpy(risk), torch.from_numpy(time), torch.from_numpy(event)).item()
    optimizer = CoxPHOptimizer(risk[:, None], event.astype(bool), time, np.zeros(1), "breslow")
    expected = optimizer.nlog_likelihood(np.ones(1)) * batch / event.sum()  # sksurv averages over all samples
    assert ours == pytest.approx(expected, rel=1e-10)
    assert ours == pytest.approx(_cox_loop(risk, time, event), rel=1e-10)
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(batch))
    shuffled = CoxPHLoss()(torch.from_numpy(risk)[perm], torch.from_numpy(time)[perm], torch.from_numpy(event)[perm])
    assert shuffled.item() == pytest.approx(ours, rel=1e-12)


def test_cox_is_minimised_at_lifelines_estimate():
    """Without tied times Efron (lifelines) equals Breslow: the loss is minimal at lifelines' fitted coefficient."""
    rng = np.random.default_rng(7)
    x = rng.normal(0, 1, 80)
    time = rng.exponential(1.0 / np.exp(0.8 * x)) + 1e-3
    event = (rng.random(80) < 0.7).astype(int)
    fitter = CoxPHFitter().fit(pd.DataFrame({"x": x, "time": time, "event": event}), "time", "event")
    beta = torch.tensor(float(fitter.params_["x"]), dtype=torch.float64, requires_grad=True)
    loss = CoxPHLoss()(beta * torch.from_numpy(x), torch.from_numpy(time), torch.from_numpy(event))
    loss.backward()
    assert loss.item() * event.sum() == pytest.approx(-fitter.log_likelihood_, rel=1e-8)
    assert abs(beta.grad.item()) < 1e-5


def test_cox_without_events_is_a_zero_that_keeps_the_graph():
    risk = torch.randn(5, dtype=torch.float64, requires_grad=True)
    loss = CoxPHLoss()(risk, torch.arange(1.0, 6.0), torch.zeros(5))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(risk.grad, torch.zeros(5, dtype=torch.float64))
    risk_t, time, event = (torch.from_numpy(a) for a in _cox_batch(5, 12, 4))
    assert torch.autograd.gradcheck(lambda r: CoxPHLoss()(r, time, event), (risk_t.requires_grad_(True),))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: DiscreteTimeNLLLoss(alpha=1.5), "alpha"),
        (lambda: CrossEntropySurvivalLoss(eps=0.0), "eps"),
        (lambda: DiscreteTimeNLLLoss()(torch.zeros(4), torch.zeros(4), torch.zeros(4)), r"\[B, T\]"),
        (lambda: DiscreteTimeNLLLoss()(torch.zeros(2, 4), torch.tensor([0, 4]), torch.zeros(2)), "time-bin"),
        (lambda: CrossEntropySurvivalLoss()(torch.zeros(2, 4), torch.tensor([0, 1]), torch.zeros(3)), "event"),
        (lambda: CoxPHLoss()(torch.zeros(3), torch.ones(2), torch.ones(3)), "time"),
    ],
)
def test_ill_arg(call, match):
    with pytest.raises(ValueError, match=match):
        call()

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

"""Survival losses: discrete-time hazard NLL, cross-entropy survival loss (MCAT) and the Cox partial likelihood.

Convention: ``event`` = 1 when the event (death) was observed, 0 when censored (TCGA's ``censorship`` is
``1 - event``). Discrete-time losses take the model's logits ``[B, T]``; hazards are ``sigmoid(logits)`` and the
survival curve is ``S(k) = prod_{l<=k} (1 - h(l))``. Labels are time-bin indices from
``monai_ext.data.survival_bins``. Logarithms are computed in log space (``logsigmoid``) and clamped at
``log(eps)``, which gives MCAT's values and gradients wherever MCAT's probability-space clamp is exact.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CoxPHLoss", "CrossEntropySurvivalLoss", "DiscreteTimeNLLLoss"]


def _check_alpha_eps(alpha: float, eps: float) -> None:
    """Reject a loss weight outside [0, 1] and a clamp outside (0, 1)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must lie in (0, 1), got {eps}")


def _flat(x: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """Reshape ``[B]`` or ``[B, 1]`` to ``[B]``, naming the argument when the batch size does not match."""
    if x.numel() != batch or x.ndim > 2:
        raise ValueError(f"{name} must have shape [B] or [B, 1] with B = {batch}, got {tuple(x.shape)}")
    return x.reshape(batch)


def _discrete_inputs(
    logits: torch.Tensor, label: torch.Tensor, event: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate and return ``(log h [B, T], log S padded [B, T + 1], label [B, 1] long, event [B] float)``."""
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape [B, T] (one logit per time bin), got {tuple(logits.shape)}")
    batch, n_bins = logits.shape
    label = _flat(label, batch, "label").long()
    event = _flat(event, batch, "event").to(logits.dtype)
    if label.numel() and (int(label.min()) < 0 or int(label.max()) >= n_bins):
        raise ValueError(
            f"label must hold time-bin indices in [0, {n_bins - 1}] for {n_bins} logits, got "
            f"[{int(label.min())}, {int(label.max())}]; compute labels with assign_bins on the same bin edges"
        )
    log_hazard = F.logsigmoid(logits)
    log_survival = torch.cumsum(F.logsigmoid(-logits), dim=1)
    log_survival_padded = torch.cat([log_survival.new_zeros(batch, 1), log_survival], dim=1)  # S(-1) = 1
    return log_hazard, log_survival_padded, label.unsqueeze(1), event


class DiscreteTimeNLLLoss(nn.Module):
    """Negative log-likelihood of a discrete-time hazard model with censoring, batch mean.

    For a patient in bin ``y``: uncensored ``-log S(y - 1) - log h(y)``, censored ``-log S(y)``, and
    ``loss = (1 - alpha) * (censored + uncensored) + alpha * uncensored`` as in MCAT. Zadeh & Schmid, "Bias in
    cross-entropy-based training of deep survival networks", TPAMI 2021 (https://ieeexplore.ieee.org/document/9028113);
    Chen et al., MCAT, ICCV 2021:
    https://openaccess.thecvf.com/content/ICCV2021/html/Chen_Multimodal_Co-Attention_Transformer_for_Survival_Prediction_in_Gigapixel_Whole_Slide_ICCV_2021_paper.html

    Args:
        alpha: extra weight on uncensored patients, in [0, 1].
        eps: probabilities are clamped at ``eps`` before the logarithm.
    """

    def __init__(self, alpha: float = 0.0, eps: float = 1e-7) -> None:
        super().__init__()
        _check_alpha_eps(alpha, eps)
        self.alpha = alpha
        self.log_eps = math.log(eps)

    def forward(self, logits: torch.Tensor, label: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            logits: ``[B, T]`` hazard logits.
            label: ``[B]`` time-bin index of each patient (long).
            event: ``[B]`` 1 = event observed, 0 = censored.

        Returns:
            Scalar batch-mean loss.
        """
        log_hazard, log_survival, label, event = _discrete_inputs(logits, label, event)
        log_s_before = log_survival.gather(1, label).clamp(min=self.log_eps).squeeze(1)
        log_s_after = log_survival.gather(1, label + 1).clamp(min=self.log_eps).squeeze(1)
        log_h = log_hazard.gather(1, label).clamp(min=self.log_eps).squeeze(1)
        uncensored = -event * (log_s_before + log_h)
        censored = -(1.0 - event) * log_s_after
        return ((1.0 - self.alpha) * (censored + uncensored) + self.alpha * uncensored).mean()


class CrossEntropySurvivalLoss(nn.Module):
    """MCAT's cross-entropy survival loss over time bins, batch mean.

    For a patient in bin ``y``: ``ce = -(1 - event) log S(y) - event log(1 - S(y))`` and ``reg`` the uncensored
    NLL term ``-event (log S(y - 1) + log h(y))``; ``loss = (1 - alpha) * ce + alpha * reg``. Unlike MCAT's code,
    ``1 - S(y)`` (not ``S(y)``) is clamped at ``eps``, so ``S(y) = 1`` gives ``-log(eps)`` instead of infinity.
    Zadeh & Schmid, TPAMI 2021 (https://ieeexplore.ieee.org/document/9028113); Chen et al., MCAT, ICCV 2021:
    https://openaccess.thecvf.com/content/ICCV2021/html/Chen_Multimodal_Co-Attention_Transformer_for_Survival_Prediction_in_Gigapixel_Whole_Slide_ICCV_2021_paper.html

    Args:
        alpha: weight of the uncensored NLL term, in [0, 1] (MCAT's default 0.15).
        eps: probabilities are clamped at ``eps`` before the logarithm.
    """

    def __init__(self, alpha: float = 0.15, eps: float = 1e-7) -> None:
        super().__init__()
        _check_alpha_eps(alpha, eps)
        self.alpha = alpha
        self.eps = eps
        self.log_eps = math.log(eps)

    def forward(self, logits: torch.Tensor, label: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            logits: ``[B, T]`` hazard logits.
            label: ``[B]`` time-bin index of each patient (long).
            event: ``[B]`` 1 = event observed, 0 = censored.

        Returns:
            Scalar batch-mean loss.
        """
        log_hazard, log_survival, label, event = _discrete_inputs(logits, label, event)
        log_s_before = log_survival.gather(1, label).clamp(min=self.log_eps).squeeze(1)
        log_s_at = log_survival.gather(1, label + 1).squeeze(1)
        log_h = log_hazard.gather(1, label).clamp(min=self.log_eps).squeeze(1)
        log_event_by_y = torch.log((-torch.expm1(log_s_at)).clamp(min=self.eps))  # log(1 - S(y))
        ce = -(1.0 - event) * log_s_at.clamp(min=self.log_eps) - event * log_event_by_y
        reg = -event * (log_s_before + log_h)
        return ((1.0 - self.alpha) * ce + self.alpha * reg).mean()


class CoxPHLoss(nn.Module):
    """Negative Cox partial log-likelihood over the batch, Breslow's ties, averaged over the observed events.

    ``loss = -(1 / n_events) sum_{i: event_i = 1} [r_i - log sum_{j: t_j >= t_i} exp(r_j)]``. A batch without an
    observed event has no partial likelihood: the loss is then 0, a zero that keeps the graph
    (zero gradients) so training steps on all-censored batches are harmless. A batch of one patient always gives
    0, so use batches of several patients. Cox, JRSS-B 1972 (https://doi.org/10.1111/j.2517-6161.1972.tb00899.x);
    Breslow, Biometrics 1974 (https://doi.org/10.2307/2529620); Katzman et al., DeepSurv, BMC Med Res Methodol
    2018 (https://arxiv.org/abs/1606.00931).
    """

    def forward(self, risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            risk: ``[B]`` log hazard ratios (higher = earlier event).
            time: ``[B]`` follow-up times.
            event: ``[B]`` 1 = event observed, 0 = censored.

        Returns:
            Scalar loss.
        """
        batch = risk.shape[0] if risk.ndim else 1
        risk = _flat(risk, batch, "risk")
        time = _flat(time, batch, "time").to(risk.dtype)
        event = _flat(event, batch, "event").to(risk.dtype)
        at_risk = time[None, :] >= time[:, None]  # [B, B]: row i holds the risk set of t_i
        log_risk_set = torch.logsumexp(risk[None, :].masked_fill(~at_risk, float("-inf")), dim=1)  # [B]
        # without events the numerator is 0 * (...) and the clamp avoids 0 / 0: a zero that keeps the graph
        return -(event * (risk - log_risk_set)).sum() / event.sum().clamp(min=1.0)

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

"""Knowledge distillation from a multimodal teacher into a pathology-only student.

Three pieces, after Xing et al., "Gradient modulated contrastive distillation of low-rank multi-modal knowledge
for disease diagnosis", Medical Image Analysis 2023 (https://doi.org/10.1016/j.media.2023.102874) and its MICCAI
2022 precursor "Discrepancy and gradient-guided multi-modal knowledge distillation for pathological glioma grading"
(https://doi.org/10.1007/978-3-031-16443-9_61):

- :class:`LogitKDLoss`: logit distillation (Hinton et al. 2015, https://arxiv.org/abs/1503.02531), per sample.
  Classification: ``T^2 KL(softmax(t / T) || softmax(s / T))``. Discrete-time survival (hazard logits ``[B, K]``):
  ``"bernoulli"`` treats each bin's hazard as a Bernoulli variable, ``T^2 sum_k KL(Bern(sigmoid(t_k / T)) ||
  Bern(sigmoid(s_k / T)))``; ``"distribution"`` compares the discrete survival distributions over the ``K + 1``
  outcomes (event in bin ``k``: ``S(k - 1) h(k)``; alive after the last bin: ``S(K - 1)``) built from the
  tempered hazards, ``T^2 KL(p_t || p_s)``. The ``T^2`` factor keeps the gradient scale independent of ``T``
  (the gradient with respect to the student logits is ``T (q_s - q_t)`` in the classification and Bernoulli
  cases). Cox risks ``[B]``: ``(s - t)^2 / 2`` (no temperature).
- :class:`ContrastiveDistillationLoss`: contrastive representation distillation (CRD, Tian et al. 2020,
  https://arxiv.org/abs/1910.10699) in its InfoNCE form: student and teacher embeddings are projected to a shared
  space and L2-normalised; each student embedding must pick its own patient's teacher embedding among the
  candidates (the other samples of the batch, or a bank of teacher embeddings of the whole training set, CRD's
  memory; with a frozen teacher the bank holds the exact teacher embeddings).
- :func:`gradient_agreement_weights`: the gradient-guided knowledge modulation: per sample, the cosine between the
  gradients of the KD loss and of the task loss with respect to the student's logits; samples where distillation
  pulls against the ground truth get a small weight (see the function for the formula).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "KD_TASKS",
    "MODULATION_MODES",
    "SURVIVAL_KD_MODES",
    "ContrastiveDistillationLoss",
    "LogitKDLoss",
    "gradient_agreement_weights",
    "kd_bernoulli",
    "kd_classification",
    "kd_regression",
    "kd_survival_distribution",
]

KD_TASKS = ("classification", "survival", "cox")
SURVIVAL_KD_MODES = ("bernoulli", "distribution")
MODULATION_MODES = ("soft", "hard")


def _check_pair(student: Tensor, teacher: Tensor, ndim: int, what: str) -> None:
    """Refuse student / teacher outputs of different shapes or of the wrong rank."""
    if student.shape != teacher.shape or student.ndim != ndim:
        raise ValueError(
            f"student and teacher {what} must have the same shape with {ndim} dimension(s), got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


def kd_classification(student: Tensor, teacher: Tensor, temperature: float = 4.0) -> Tensor:
    """Per-sample ``T^2 KL(softmax(teacher / T) || softmax(student / T))``.

    Args:
        student: ``[B, C]`` logits.
        teacher: ``[B, C]`` logits (no gradient flows into them).
        temperature: ``T > 0``.

    Returns:
        ``[B]``, 0 where the logits are equal.
    """
    _check_pair(student, teacher, 2, "logits")
    _check_temperature(temperature)
    log_p_student = F.log_softmax(student / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher.detach() / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True).sum(dim=-1)
    return kl * temperature**2


def kd_bernoulli(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """Per-sample ``T^2 sum_k KL(Bern(sigmoid(t_k / T)) || Bern(sigmoid(s_k / T)))`` over hazard bins.

    Args:
        student: ``[B, K]`` hazard logits.
        teacher: ``[B, K]`` hazard logits.
        temperature: ``T > 0``.

    Returns:
        ``[B]``, 0 where the logits are equal.
    """
    _check_pair(student, teacher, 2, "hazard logits")
    _check_temperature(temperature)
    s, t = student / temperature, teacher.detach() / temperature
    p_teacher = torch.sigmoid(t)
    kl = p_teacher * (F.logsigmoid(t) - F.logsigmoid(s)) + (1.0 - p_teacher) * (F.logsigmoid(-t) - F.logsigmoid(-s))
    return kl.sum(dim=-1) * temperature**2


def _log_event_distribution(logits: Tensor) -> Tensor:
    """``[B, K]`` hazard logits -> log-probabilities ``[B, K + 1]`` of the event bin (last: alive after bin K-1)."""
    log_survival = torch.cumsum(F.logsigmoid(-logits), dim=-1)  # log S(k)
    log_before = torch.cat([log_survival.new_zeros(logits.shape[0], 1), log_survival[:, :-1]], dim=-1)  # S(k-1)
    return torch.cat([log_before + F.logsigmoid(logits), log_survival[:, -1:]], dim=-1)


def kd_survival_distribution(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """Per-sample ``T^2 KL(p_teacher || p_student)`` between discrete survival distributions.

    ``p[k] = S(k - 1) h(k)`` for ``k < K`` and ``p[K] = S(K - 1)``, with ``h = sigmoid(logits / T)``.

    Args:
        student: ``[B, K]`` hazard logits.
        teacher: ``[B, K]`` hazard logits.
        temperature: ``T > 0``.

    Returns:
        ``[B]``, 0 where the logits are equal.
    """
    _check_pair(student, teacher, 2, "hazard logits")
    _check_temperature(temperature)
    log_p_student = _log_event_distribution(student / temperature)
    log_p_teacher = _log_event_distribution(teacher.detach() / temperature)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True).sum(dim=-1)
    return kl * temperature**2


def kd_regression(student: Tensor, teacher: Tensor) -> Tensor:
    """Per-sample ``(student - teacher)^2 / 2`` for scalar outputs such as Cox risks.

    Args:
        student: ``[B]``.
        teacher: ``[B]``.

    Returns:
        ``[B]``.
    """
    _check_pair(student, teacher, 1, "risks")
    return 0.5 * (student - teacher.detach()) ** 2


class LogitKDLoss(nn.Module):
    """Logit distillation for a task (see the module docstring for each formula).

    Args:
        task: ``"classification"`` (logits ``[B, C]``), ``"survival"`` (hazard logits ``[B, K]``) or ``"cox"``
            (risks ``[B]``).
        temperature: softening temperature ``T`` (unused for ``"cox"``).
        survival: ``"bernoulli"`` (per-bin hazards) or ``"distribution"`` (the discrete survival distribution).
        reduction: ``"mean"`` (scalar) or ``"none"`` (``[B]``, e.g. for per-sample weights).

    Raises:
        ValueError: for an unknown task, survival mode or reduction, or a non-positive temperature.
    """

    def __init__(
        self,
        task: str,
        *,
        temperature: float = 2.0,
        survival: str = "bernoulli",
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if task not in KD_TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {list(KD_TASKS)}")
        if survival not in SURVIVAL_KD_MODES:
            raise ValueError(f"unknown survival KD mode {survival!r}; choose one of {list(SURVIVAL_KD_MODES)}")
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        _check_temperature(temperature)
        self.task = task
        self.temperature = temperature
        self.survival = survival
        self.reduction = reduction

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        """Distillation loss of the student outputs towards the (detached) teacher outputs.

        Args:
            student: ``[B, C]`` / ``[B, K]`` logits or ``[B]`` risks.
            teacher: same shape.

        Returns:
            scalar (``reduction="mean"``) or ``[B]``.
        """
        if self.task == "classification":
            per_sample = kd_classification(student, teacher, self.temperature)
        elif self.task == "cox":
            per_sample = kd_regression(student, teacher)
        elif self.survival == "bernoulli":
            per_sample = kd_bernoulli(student, teacher, self.temperature)
        else:
            per_sample = kd_survival_distribution(student, teacher, self.temperature)
        return per_sample.mean() if self.reduction == "mean" else per_sample

    def extra_repr(self) -> str:
        """Settings, for ``print(module)``."""
        return f"task={self.task!r}, temperature={self.temperature}, survival={self.survival!r}"


class ContrastiveDistillationLoss(nn.Module):
    """Contrastive representation distillation, InfoNCE form (Tian et al. 2020, https://arxiv.org/abs/1910.10699).

    ``z_s = normalize(W_s e_s)``, ``z_t = normalize(W_t e_t)`` (trainable projections, part of the student's
    optimiser), logits ``z_s z_t^T / tau`` and cross-entropy towards the sample's own teacher embedding:
    ``-log exp(z_s_i . z_t_i / tau) / sum_j exp(z_s_i . z_t_j / tau)``. Candidates ``j``: the batch (positives on
    the diagonal), or ``bank`` (teacher embeddings of the training set, positives at ``index``), which gives
    negatives even with a batch of one.

    Args:
        student_dim: width of the student embedding.
        teacher_dim: width of the teacher embedding.
        proj_dim: width of the shared projection space.
        temperature: ``tau > 0``.

    Raises:
        ValueError: for a non-positive size or temperature.
    """

    def __init__(self, student_dim: int, teacher_dim: int, *, proj_dim: int = 128, temperature: float = 0.1) -> None:
        super().__init__()
        if min(student_dim, teacher_dim, proj_dim) < 1:
            raise ValueError(
                f"student_dim, teacher_dim and proj_dim must be positive, got {student_dim}, {teacher_dim}, {proj_dim}"
            )
        _check_temperature(temperature)
        self.student_proj = nn.Linear(student_dim, proj_dim)
        self.teacher_proj = nn.Linear(teacher_dim, proj_dim)
        self.temperature = temperature

    def forward(
        self,
        student: Tensor,
        teacher: Tensor | None = None,
        *,
        bank: Tensor | None = None,
        index: Tensor | None = None,
        reduction: str = "mean",
    ) -> Tensor:
        """Compute the loss.

        Args:
            student: ``[B, Es]`` student embeddings.
            teacher: ``[B, Et]`` teacher embeddings of the same samples (in-batch mode; detached).
            bank: ``[N, Et]`` teacher embeddings of all candidates (bank mode; detached).
            index: ``[B]`` long, the row of ``bank`` holding each sample's own teacher embedding (bank mode).
            reduction: ``"mean"`` or ``"none"`` (``[B]``).

        Returns:
            scalar or ``[B]``.

        Raises:
            ValueError: unless exactly one of ``teacher`` / ``bank`` is given (``index`` with ``bank``), or for
                mismatched shapes.
        """
        if (teacher is None) == (bank is None) or (bank is not None) != (index is not None):
            raise ValueError("give either teacher [B, Et] (in-batch negatives) or bank [N, Et] with index [B]")
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        if student.ndim != 2:
            raise ValueError(f"student embeddings must be [B, Es], got {tuple(student.shape)}")
        candidates = (teacher if bank is None else bank).detach()
        if candidates.ndim != 2 or candidates.shape[1] != self.teacher_proj.in_features:
            raise ValueError(
                f"teacher embeddings must be [*, {self.teacher_proj.in_features}], got {tuple(candidates.shape)}"
            )
        if index is None:
            if candidates.shape[0] != student.shape[0]:
                raise ValueError(f"teacher has {candidates.shape[0]} rows, student {student.shape[0]}")
            index = torch.arange(student.shape[0], device=student.device)
        elif index.shape != (student.shape[0],):
            raise ValueError(f"index must be [B] = [{student.shape[0]}], got {tuple(index.shape)}")
        z_student = F.normalize(self.student_proj(student), dim=-1)
        z_teacher = F.normalize(self.teacher_proj(candidates), dim=-1)
        logits = z_student @ z_teacher.T / self.temperature  # [B, N]
        return F.cross_entropy(logits, index.long(), reduction=reduction)

    def extra_repr(self) -> str:
        """Temperature, for ``print(module)``."""
        return f"temperature={self.temperature}"


def gradient_agreement_weights(
    kd_per_sample: Tensor,
    task_loss: Tensor,
    outputs: Tensor,
    *,
    mode: str = "soft",
    eps: float = 1e-8,
) -> Tensor:
    """Per-sample distillation weights from the agreement of the KD and task gradients (gradient-guided knowledge
    modulation, Xing et al. 2022/2023).

    With ``g_kd_i = d (sum_b kd_b) / d outputs_i`` and ``g_task_i = d task_loss / d outputs_i`` (row ``i`` of the
    gradients with respect to the student's outputs ``[B, K]``), ``c_i = <g_kd_i, g_task_i> / (max(||g_kd_i||, eps)
    max(||g_task_i||, eps))`` and

    - ``"soft"``: ``w_i = max(c_i, 0)``: aligned gradients keep the full weight, orthogonal ones none, and samples
      where distillation pulls against the label get 0;
    - ``"hard"``: ``w_i = 1[c_i > 0]`` (the released code of the paper).

    A sample whose KD or task gradient is zero (or below ``eps``, rounding noise) gets ``c_i`` close to 0. The
    weights are detached (constants for the step): ``loss = task + mean_i(w_i kd_i)``.

    Args:
        kd_per_sample: ``[B]`` KD losses, functions of ``outputs``.
        task_loss: scalar task loss (a sum or mean of per-sample terms, or a batch loss such as Cox's).
        outputs: ``[B, K]`` (or ``[B]``) student logits both losses depend on.
        mode: ``"soft"`` or ``"hard"``.
        eps: floor of each gradient norm.

    Returns:
        ``[B]`` weights in ``[0, 1]``, detached.

    Raises:
        ValueError: for an unknown mode or mismatched sizes.
    """
    if mode not in MODULATION_MODES:
        raise ValueError(f"unknown modulation mode {mode!r}; choose one of {list(MODULATION_MODES)}")
    if kd_per_sample.ndim != 1 or kd_per_sample.shape[0] != outputs.shape[0]:
        raise ValueError(
            f"kd_per_sample must be [B] = [{outputs.shape[0]}] (use reduction='none'), got {tuple(kd_per_sample.shape)}"
        )
    g_kd = _rows_grad(kd_per_sample.sum(), outputs)
    g_task = _rows_grad(task_loss, outputs)
    cosine = (g_kd * g_task).sum(dim=1) / (g_kd.norm(dim=1).clamp(min=eps) * g_task.norm(dim=1).clamp(min=eps))
    weights = cosine.clamp(min=0.0, max=1.0) if mode == "soft" else (cosine > 0).to(cosine.dtype)
    return weights.detach()


def _rows_grad(loss: Tensor, outputs: Tensor) -> Tensor:
    """Gradient of a scalar ``loss`` with respect to ``outputs``, flattened per sample to ``[B, K]`` (zeros when
    the loss does not depend on them); the graph is kept for the real backward pass."""
    (grad,) = torch.autograd.grad(loss, outputs, retain_graph=True, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(outputs)
    return grad.reshape(outputs.shape[0], -1)

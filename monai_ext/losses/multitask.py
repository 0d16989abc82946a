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

"""Multi-task loss with per-sample label masks (survival + subtype + stage together), and a KL to soft targets.

Written for ModalTune (Ramanathan et al. 2025, https://arxiv.org/abs/2503.17564), whose multi-task, pan-cancer
training mixes cohorts where a sample may lack some labels. Target keys, per task ``t``:

- classification: ``t`` long ``[B]`` (class index) and ``t_mask`` bool ``[B]``;
- survival (discrete time): ``t_bin`` long ``[B]``, ``t_event`` ``[B]`` (1 = event observed) and ``t_mask``;
- optional soft targets (any classification task): ``t_soft`` ``[B, K]`` (rows summing to 1, e.g. from
  :func:`monai_ext.networks.modaltune.class_text_targets`) with ``t_soft_mask`` ``[B]``.

A missing ``*_mask`` key means every sample is labelled; missing label keys mean no sample is. Values under a
False mask are never read, so placeholders (e.g. -1) are safe.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from monai_ext.losses.survival import DiscreteTimeNLLLoss

__all__ = ["MultiTaskLoss", "soft_target_kl"]

KINDS = ("classification", "survival")


def soft_target_kl(logits: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over the selected rows of ``KL(target || softmax(logits))``.

    ``KL(p || q) = sum_k p_k (log p_k - log q_k)`` with ``0 log 0 = 0`` (Kullback & Leibler 1951,
    https://doi.org/10.1214/aoms/1177729694); as a loss it is the cross-entropy to the soft labels minus their
    (constant) entropy, the soft-label distillation of Hinton et al. 2015 (https://arxiv.org/abs/1503.02531).

    Args:
        logits: ``[B, K]``.
        target: ``[B, K]`` probabilities (non-negative, rows summing to 1).
        mask: bool ``[B]`` of rows to use (default all).

    Returns:
        scalar; a zero that keeps the graph when no row is selected.

    Raises:
        ValueError: for mismatched shapes or targets that are not distributions.
    """
    if logits.ndim != 2 or target.shape != logits.shape:
        raise ValueError(f"logits and target must both be [B, K], got {tuple(logits.shape)} and {tuple(target.shape)}")
    if mask is not None:
        logits, target = logits[mask], target[mask]
    if target.numel() == 0:
        return logits.sum() * 0.0
    target = target.to(logits.dtype)
    if bool((target < 0).any()) or not torch.allclose(target.sum(dim=1), torch.ones_like(target[:, 0]), atol=1e-4):
        raise ValueError("soft targets must be probabilities: non-negative rows summing to 1")
    log_target = torch.where(target > 0, target.clamp(min=1e-30).log(), torch.zeros_like(target))
    return (target * (log_target - F.log_softmax(logits, dim=1))).sum(dim=1).mean()


def _mask(target: Mapping[str, Any], key: str, batch: int, device: torch.device) -> Tensor:
    """``target[key]`` checked as bool ``[B]``, or all True when absent."""
    if key not in target:
        return torch.ones(batch, dtype=torch.bool, device=device)
    mask = target[key]
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (batch,):
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"target[{key!r}] must be a bool tensor [B] = ({batch},), got {got}")
    return mask.to(device)


class MultiTaskLoss(nn.Module):
    """Weighted sum of per-task losses over the labelled samples of each task, for routed and shared heads.

    For a head set ``s`` (the model's routed ``tasks``, and ``shared_tasks`` when present, see
    :class:`monai_ext.networks.modaltune.CohortTaskHeads`): ``L_s = sum_t w_t (L_t + soft_weight * KL_t)`` where
    ``L_t`` is the cross-entropy (classification) or the discrete-time NLL (survival,
    :class:`~monai_ext.losses.survival.DiscreteTimeNLLLoss`) averaged over the samples labelled for ``t``, and
    ``KL_t`` the :func:`soft_target_kl` over samples with soft targets. A task without labelled samples in the
    batch contributes nothing (its part is absent) and its head stays out of the graph (no gradient at all).
    ``total = L_routed + shared_weight * L_shared``.

    Args:
        tasks: ``{task name: "classification" or "survival"}``.
        weights: ``{task name: weight}`` (default 1 each; missing tasks get 1).
        alpha: MCAT's extra weight on uncensored patients in the survival NLL.
        soft_weight: weight of the KL to soft targets.
        shared_weight: weight of the shared heads' loss (0 disables it).

    Raises:
        ValueError: unknown task kinds, weights for unknown tasks, or negative weights.
    """

    def __init__(
        self,
        tasks: Mapping[str, str],
        *,
        weights: Mapping[str, float] | None = None,
        alpha: float = 0.0,
        soft_weight: float = 1.0,
        shared_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if not tasks or any(kind not in KINDS for kind in tasks.values()):
            raise ValueError(f"tasks must map names to one of {list(KINDS)}, got {dict(tasks)}")
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(tasks))
        if unknown:
            raise ValueError(f"weights given for unknown tasks {unknown}; tasks are {sorted(tasks)}")
        if any(w < 0 for w in weights.values()) or soft_weight < 0 or shared_weight < 0:
            raise ValueError(f"weights must be non-negative, got {weights}, soft {soft_weight}, shared {shared_weight}")
        self.tasks = dict(tasks)
        self.weights = {name: float(weights.get(name, 1.0)) for name in tasks}
        self.soft_weight = soft_weight
        self.shared_weight = shared_weight
        self.nll = DiscreteTimeNLLLoss(alpha=alpha)

    def task_loss(self, name: str, output: Mapping[str, Tensor], target: Mapping[str, Any]) -> Tensor | None:
        """The loss of one task over its labelled samples, or None when the batch has none.

        Raises:
            KeyError: the model output lacks ``logits``.
            ValueError: class labels out of range or malformed masks.
        """
        logits = output["logits"]
        batch = logits.shape[0]
        label_key = name if self.tasks[name] == "classification" else f"{name}_bin"
        if label_key not in target:
            return None
        rows = _mask(target, f"{name}_mask", batch, logits.device)
        if not bool(rows.any()):
            return None
        label = target[label_key].to(logits.device)[rows].long()
        if self.tasks[name] == "survival":
            return self.nll(logits[rows], label, target[f"{name}_event"].to(logits.device)[rows])
        n_classes = logits.shape[1]
        if int(label.min()) < 0 or int(label.max()) >= n_classes:
            raise ValueError(
                f"task {name!r}: labelled samples must have class indices in [0, {n_classes - 1}], got "
                f"[{int(label.min())}, {int(label.max())}]; mark unlabelled samples with {name}_mask=False"
            )
        return F.cross_entropy(logits[rows], label)

    def _head_set(
        self, outputs: Mapping[str, Mapping[str, Tensor]], target: Mapping[str, Any], prefix: str
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted loss of one head set and its parts (keys prefixed with ``prefix``)."""
        missing = sorted(set(self.tasks) - set(outputs))
        if missing:
            raise KeyError(f"the model output has no heads for tasks {missing}; it has {sorted(outputs)}")
        terms: list[Tensor] = []
        parts: dict[str, Tensor] = {}
        for name in self.tasks:
            loss = self.task_loss(name, outputs[name], target)
            if loss is not None:
                parts[f"{prefix}{name}"] = loss.detach()
                terms.append(self.weights[name] * loss)
            soft_key = f"{name}_soft"
            if self.tasks[name] == "classification" and soft_key in target and self.soft_weight > 0:
                logits = outputs[name]["logits"]
                rows = _mask(target, f"{soft_key}_mask", logits.shape[0], logits.device)
                if bool(rows.any()):
                    kl = soft_target_kl(logits, target[soft_key].to(logits.device), rows)
                    parts[f"{prefix}{soft_key}"] = kl.detach()
                    terms.append(self.weights[name] * self.soft_weight * kl)
        if not terms:  # nothing labelled: a zero that keeps the graph (zero gradients, a harmless step)
            return sum(outputs[name]["logits"].sum() * 0.0 for name in self.tasks), parts
        # heads of tasks without labels stay out of the graph: no gradient, so no weight decay moves them either
        return torch.stack(terms).sum(), parts

    def forward(self, output: Mapping[str, Any], target: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the loss.

        Args:
            output: the model output, with ``tasks`` (``{task: {"logits": ...}}``) and optionally
                ``shared_tasks``.
            target: the batch (label keys as in the module docstring).

        Returns:
            the scalar total and its detached parts for logging: ``{task}``, ``{task}_soft``, ``shared/{task}``,
            ``shared/{task}_soft`` (only those with labelled samples) and ``total``.
        """
        total, parts = self._head_set(output["tasks"], target, "")
        if "shared_tasks" in output and self.shared_weight > 0:
            shared, shared_parts = self._head_set(output["shared_tasks"], target, "shared/")
            total = total + self.shared_weight * shared
            parts.update(shared_parts)
        parts["total"] = total.detach()
        return total, parts

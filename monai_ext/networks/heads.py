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

"""Task heads on a fused embedding (classification, discrete-time hazards, Cox risk) and modality dropout."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = ["ClassificationHead", "CoxHead", "DiscreteHazardHead", "ModalityDropout"]


def _check_embedding(x: Tensor, in_dim: int, head: str) -> None:
    if x.ndim != 2 or x.shape[1] != in_dim:
        raise ValueError(f"{head} expects an embedding [B, {in_dim}], got shape {list(x.shape)}")


class ClassificationHead(nn.Module):
    """Linear classifier on an embedding.

    Args:
        in_dim: embedding dimension ``E``.
        n_classes: number of classes ``C``.
        dropout: dropout on the embedding.

    Raises:
        ValueError: for a non-positive size.
    """

    def __init__(self, in_dim: int, n_classes: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        if in_dim < 1 or n_classes < 1:
            raise ValueError(f"in_dim and n_classes must be positive, got {in_dim} and {n_classes}")
        self.in_dim = in_dim
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_dim, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``x [B, E]`` to logits ``[B, C]``."""
        _check_embedding(x, self.in_dim, "ClassificationHead")
        return self.linear(self.dropout(x))


class DiscreteHazardHead(nn.Module):
    """Discrete-time survival head (hazards per time bin), as in MCAT and PORPOISE (Zadeh & Schmid 2021,
    https://doi.org/10.1109/TPAMI.2020.2979450, the discrete-time NLL these models train with).

    ``hazards[k] = sigmoid(logits[k]) = P(T = k | T >= k)``, ``survival[k] = prod_{j <= k} (1 - hazards[j])``
    and ``risk = -sum_k survival[k]`` (higher risk = shorter expected survival), the risk score MCAT ranks with.

    Args:
        in_dim: embedding dimension ``E``.
        n_bins: number of time bins ``K``.
        dropout: dropout on the embedding.

    Raises:
        ValueError: for a non-positive size.
    """

    def __init__(self, in_dim: int, n_bins: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        if in_dim < 1 or n_bins < 1:
            raise ValueError(f"in_dim and n_bins must be positive, got {in_dim} and {n_bins}")
        self.in_dim = in_dim
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_dim, n_bins)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Map ``x [B, E]`` to ``{"logits", "hazards", "survival": [B, K], "risk": [B]}``."""
        _check_embedding(x, self.in_dim, "DiscreteHazardHead")
        logits = self.linear(self.dropout(x))
        # 1 - sigmoid(z) = sigmoid(-z), computed without cancellation for large z
        survival = torch.cumprod(torch.sigmoid(-logits), dim=1)
        return {"logits": logits, "hazards": torch.sigmoid(logits), "survival": survival, "risk": -survival.sum(dim=1)}


class CoxHead(nn.Module):
    """Cox proportional-hazards head: a linear log-risk score (Cox 1972; deep form DeepSurv, Katzman et al. 2018,
    https://arxiv.org/abs/1606.00931). No bias: the partial likelihood is invariant to a constant shift.

    Args:
        in_dim: embedding dimension ``E``.
        dropout: dropout on the embedding.

    Raises:
        ValueError: for a non-positive size.
    """

    def __init__(self, in_dim: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        if in_dim < 1:
            raise ValueError(f"in_dim must be positive, got {in_dim}")
        self.in_dim = in_dim
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_dim, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``x [B, E]`` to the log-risk ``[B]``."""
        _check_embedding(x, self.in_dim, "CoxHead")
        return self.linear(self.dropout(x)).squeeze(-1)


class ModalityDropout(nn.Module):
    """Drop whole modalities per sample during training by setting their token masks to False.

    Each listed modality present for a sample is dropped independently with probability ``p``; if that would
    drop every modality the sample has (listed or not), one of its present listed modalities, chosen at random,
    is kept. In eval mode the masks are returned unchanged. Trains a fusion for missing modalities at test time
    (modality dropout as in Neverova et al. 2016, https://arxiv.org/abs/1501.00102).

    Args:
        p: drop probability in ``[0, 1]``.
        modalities: names that may be dropped; others are never touched.

    Raises:
        ValueError: for ``p`` outside ``[0, 1]`` or an empty modality list.
    """

    def __init__(self, p: float, modalities: Sequence[str]) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        if isinstance(modalities, str) or not modalities:
            raise ValueError(f"modalities must be a non-empty sequence of names, got {modalities!r}")
        self.p = p
        self.modalities = tuple(modalities)

    def forward(self, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Return new masks ``{name: bool [B, N_m]}`` with dropped modalities all-False (inputs are not modified)."""
        out = dict(masks)
        names = [name for name in self.modalities if name in masks]
        if not self.training or self.p == 0.0 or not names:
            return out
        present = torch.stack([masks[name].any(dim=1) for name in names], dim=1)  # [B, K]
        others = [mask.any(dim=1) for name, mask in masks.items() if name not in self.modalities]
        others_present = torch.stack(others, dim=1).any(dim=1) if others else torch.zeros_like(present[:, 0])
        drop = (torch.rand(present.shape, device=present.device) < self.p) & present
        lost_all = present.any(dim=1) & ~(present & ~drop).any(dim=1) & ~others_present
        rescue_scores = torch.rand(present.shape, device=present.device).masked_fill(~present, -1.0)
        rescued = nn.functional.one_hot(rescue_scores.argmax(dim=1), len(names)).bool() & lost_all[:, None]
        drop &= ~rescued
        for i, name in enumerate(names):
            out[name] = masks[name] & ~drop[:, i : i + 1]
        return out

    def extra_repr(self) -> str:
        """Probability and modalities for ``print(model)``."""
        return f"p={self.p}, modalities={self.modalities}"

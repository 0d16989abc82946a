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

"""Masked bag primitives shared by every MIL aggregator, and the mean / max pooling baselines.

Every aggregator takes a padded batch of bags ``x: [B, N, D]`` with ``mask: [B, N]`` (True = real patch) and
returns a dict with ``embedding: [B, E]`` and ``attention: [B, N]``. :func:`prepare_bag` is the single entry
check: it refuses empty bags (a model must not answer from its bias alone) and zeroes padded rows, so junk values
in the padding (even NaN) cannot leak into the output. Mean and max pooling are the baselines of
Ilse et al. 2018, "Attention-based Deep Multiple Instance Learning" (https://arxiv.org/abs/1802.04712).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def prepare_bag(x: Tensor, mask: Tensor | None, in_dim: int) -> tuple[Tensor, Tensor]:
    """Validate a padded batch of bags and zero its padded rows.

    Args:
        x: patch features ``[B, N, D]``.
        mask: bool ``[B, N]``, True for real patches; None means every patch is real.
        in_dim: the feature size ``D`` the model was built for.

    Returns:
        ``(x, mask)``: ``x [B, N, D]`` with padded rows set to 0 (``x`` itself when nothing is padded), and the
        bool mask ``[B, N]``.

    Raises:
        ValueError: when shapes or the mask dtype are wrong, or when a bag has no real patch.
    """
    if x.dim() != 3 or x.shape[-1] != in_dim:
        raise ValueError(f"expected patch features [B, N, {in_dim}], got shape {list(x.shape)}")
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    elif mask.dtype != torch.bool or mask.shape != x.shape[:2]:
        raise ValueError(
            f"mask must be bool [B, N] = {list(x.shape[:2])} (True = real patch), "
            f"got {mask.dtype} of shape {list(mask.shape)}"
        )
    n_empty = int((mask.sum(dim=1) == 0).sum())
    if n_empty > 0:
        raise ValueError(
            f"{n_empty} of {x.shape[0]} bags have no valid patch (mask all False or N = 0); "
            f"drop empty bags before the model instead of padding them"
        )
    if bool(mask.all()):
        return x, mask  # nothing to clean: no copy of a possibly large bag
    return x.masked_fill(~mask.unsqueeze(-1), 0.0), mask


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last (patch) axis with padded patches at exactly zero.

    Args:
        scores: ``[B, N]`` or ``[B, C, N]`` attention logits.
        mask: bool ``[B, N]``, True for real patches (every bag has at least one).

    Returns:
        probabilities of the same shape as ``scores``, summing to 1 over real patches.
    """
    if scores.dim() == 3:
        mask = mask.unsqueeze(1)
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)


def check_common_args(in_dim: int, hidden_dim: int | None, dropout: float) -> None:
    """Raise ValueError on a non-positive size or a dropout outside ``[0, 1)``."""
    if in_dim < 1 or (hidden_dim is not None and hidden_dim < 1):
        raise ValueError(f"in_dim and hidden_dim must be positive, got in_dim={in_dim}, hidden_dim={hidden_dim}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


def projection(in_dim: int, hidden_dim: int, dropout: float) -> nn.Sequential:
    """The per-patch ``Linear -> ReLU -> Dropout`` projection used in front of the attention models."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))


class _PoolingBase(nn.Module):
    """Optional per-patch projection followed by a masked pooling (shared constructor of mean and max)."""

    def __init__(
        self,
        *,
        in_dim: int,
        hidden_dim: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_common_args(in_dim, hidden_dim, dropout)
        self.in_dim = in_dim
        self.out_dim = in_dim if hidden_dim is None else hidden_dim
        self.encoder = nn.Dropout(dropout) if hidden_dim is None else projection(in_dim, hidden_dim, dropout)


class MeanPooling(_PoolingBase):
    """Mean of the (optionally projected) patch features over the real patches of each bag.

    The permutation-invariant baseline of Ilse et al. 2018 (https://arxiv.org/abs/1802.04712).

    Args:
        in_dim: patch feature size ``D``.
        hidden_dim: size of a ``Linear -> ReLU -> Dropout`` projection applied per patch before pooling;
            None pools the raw features (``out_dim = in_dim``).
        dropout: dropout probability on the patch features.

    Forward returns ``embedding [B, E]`` and ``attention [B, N]`` = ``1 / n_valid`` on real patches, 0 on padding.
    """

    def forward(self, x: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """Pool ``x: [B, N, D]`` (``mask: [B, N]``, True = real) into ``embedding [B, E]``."""
        x, mask = prepare_bag(x, mask, self.in_dim)
        h = self.encoder(x)  # [B, N, E]
        weights = mask.to(h.dtype) / mask.sum(dim=1, keepdim=True).to(h.dtype)  # [B, N]
        embedding = torch.einsum("bn,bne->be", weights, h)
        return {"embedding": embedding, "attention": weights}


class MaxPooling(_PoolingBase):
    """Feature-wise maximum of the (optionally projected) patch features over the real patches of each bag.

    The max-pooling baseline of Ilse et al. 2018 (https://arxiv.org/abs/1802.04712).

    Args:
        in_dim: patch feature size ``D``.
        hidden_dim: size of a ``Linear -> ReLU -> Dropout`` projection applied per patch before pooling;
            None pools the raw features (``out_dim = in_dim``).
        dropout: dropout probability on the patch features.

    Forward returns ``embedding [B, E]`` and ``attention [B, N]``: the share of the ``E`` features whose maximum
    comes from each patch (argmax wins / ``E``; sums to 1, 0 on padding).
    """

    def forward(self, x: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """Pool ``x: [B, N, D]`` (``mask: [B, N]``, True = real) into ``embedding [B, E]``."""
        x, mask = prepare_bag(x, mask, self.in_dim)
        h = self.encoder(x).masked_fill(~mask.unsqueeze(-1), float("-inf"))  # [B, N, E]
        embedding, winner = h.max(dim=1)  # [B, E], [B, E]
        wins = torch.zeros(mask.shape, dtype=h.dtype, device=h.device)
        wins = wins.scatter_add(1, winner, torch.ones(winner.shape, dtype=h.dtype, device=h.device))
        return {"embedding": embedding, "attention": wins / float(h.shape[-1])}

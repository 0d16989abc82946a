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

"""Building blocks shared by the fusion modules: masked softmax and mean, gated attention pooling, multi-head
attention with a key mask that never builds an ``N x N`` matrix over patches, and a pre-norm transformer block.

Conventions: a mask is ``True`` where a token is valid; attention over an empty key set contributes nothing (its
output is zero), and a softmax over an empty set gives all-zero weights instead of NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = ["FeedForward", "GatedAttentionPool", "MaskedAttention", "TransformerBlock", "masked_mean", "masked_softmax"]


def masked_softmax(scores: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """Softmax of ``scores`` over the positions where ``mask`` is True.

    Args:
        scores: attention logits, any shape, e.g. ``[B, N]`` or ``[B, H, Nq, Nk]``.
        mask: bool, broadcastable to ``scores``; True marks valid positions.
        dim: the dimension to normalise over.

    Returns:
        Weights shaped like ``scores``: zero at masked positions, summing to 1 along ``dim`` where at least one
        position is valid and all zero where none is (no NaN, finite gradients).
    """
    mask = mask.expand_as(scores)
    has_any = mask.any(dim=dim, keepdim=True)
    # rows with no valid position are normalised over everything (finite), then zeroed by the final fill
    safe = mask | ~has_any
    weights = torch.softmax(scores.masked_fill(~safe, float("-inf")), dim=dim)
    return weights.masked_fill(~mask, 0.0)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of the valid tokens of each sample.

    Args:
        x: tokens ``[B, N, D]``.
        mask: bool ``[B, N]``, True for valid tokens.

    Returns:
        ``[B, D]``; a row without valid tokens gives zeros, which callers replace (see
        :class:`monai_ext.networks.fusion.base.MissingEmbeddings`).
    """
    weights = mask.to(x.dtype)
    total = torch.einsum("bn,bnd->bd", weights, x)
    return total / weights.sum(dim=1, keepdim=True).clamp(min=1.0)


class GatedAttentionPool(nn.Module):
    """Gated attention pooling of a token set (Ilse et al. 2018, https://arxiv.org/abs/1802.04712).

    ``a_n = softmax_n(w^T (tanh(V x_n) * sigmoid(U x_n)))`` over the valid tokens; pooled ``sum_n a_n x_n``.

    Args:
        dim: token dimension ``D``.
        hidden: width of the attention branches (default ``D``).
        dropout: dropout inside the attention branches.
    """

    def __init__(self, dim: int, *, hidden: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = hidden or dim
        self.tanh_branch = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.gate_branch = nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid(), nn.Dropout(dropout))
        self.score = nn.Linear(hidden, 1)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Pool ``x``.

        Args:
            x: tokens ``[B, N, D]``.
            mask: bool ``[B, N]``.

        Returns:
            ``(pooled [B, D], weights [B, N])``; weights are zero at padded tokens and for rows without tokens.
        """
        scores = self.score(self.tanh_branch(x) * self.gate_branch(x)).squeeze(-1)
        weights = masked_softmax(scores, mask)
        return torch.einsum("bn,bnd->bd", weights, x), weights


class MaskedAttention(nn.Module):
    """Multi-head attention of a query set over a context set with a key-validity mask.

    Memory is ``O(B * heads * N_q * N_k)``: callers keep one side small (queries from omics, text or pathway
    tokens over patches, or patches over the small side), so no ``N_patches x N_patches`` matrix is ever built.
    Without ``need_weights`` it runs :func:`torch.nn.functional.scaled_dot_product_attention` with a boolean mask
    (fused kernels where available); with it, an explicit softmax whose head-averaged weights are returned. Same
    parametrisation as :class:`torch.nn.MultiheadAttention` (Vaswani et al. 2017, https://arxiv.org/abs/1706.03762).

    Args:
        dim: model dimension ``D`` (divisible by ``n_heads``).
        n_heads: number of heads.
        dropout: dropout on the attention weights (training only).

    Raises:
        ValueError: when ``dim`` is not divisible by ``n_heads``.
    """

    def __init__(self, dim: int, *, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if n_heads < 1 or dim % n_heads:
            raise ValueError(f"dim={dim} must be a positive multiple of n_heads={n_heads}; change one of them")
        self.n_heads = n_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(
        self, query: Tensor, context: Tensor, key_mask: Tensor, *, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``query`` to the valid tokens of ``context``.

        Args:
            query: ``[B, N_q, D]``.
            context: keys and values ``[B, N_k, D]``.
            key_mask: bool ``[B, N_k]``, True for valid keys.
            need_weights: also return the attention weights averaged over heads.

        Returns:
            ``(out [B, N_q, D], weights [B, N_q, N_k] or None)``. Rows whose context has no valid key give
            ``out = 0`` and zero weights; padded keys always get zero weight.
        """
        q = rearrange(self.q_proj(query), "b n (h d) -> b h n d", h=self.n_heads)
        k = rearrange(self.k_proj(context), "b n (h d) -> b h n d", h=self.n_heads)
        v = rearrange(self.v_proj(context), "b n (h d) -> b h n d", h=self.n_heads)
        has_key = key_mask.any(dim=1)
        dropout_p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * q.shape[-1] ** -0.5
            attn = masked_softmax(scores, key_mask[:, None, None, :])  # [B, H, N_q, N_k]
            out = torch.einsum("bhqk,bhkd->bhqd", F.dropout(attn, dropout_p, self.training), v)
            weights = attn.mean(dim=1)
        else:
            # rows without a valid key attend over everything (finite) and are zeroed below
            safe = (key_mask | ~has_key[:, None])[:, None, None, :]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=safe, dropout_p=dropout_p)
        out = self.out_proj(rearrange(out, "b h n d -> b n (h d)"))
        return out.masked_fill(~has_key[:, None, None], 0.0), weights


class FeedForward(nn.Sequential):
    """Token-wise MLP ``Linear -> GELU -> Dropout -> Linear -> Dropout`` on ``[..., D]``.

    Args:
        dim: model dimension ``D``.
        mlp_ratio: hidden width as a multiple of ``D``.
        dropout: dropout after each layer.
    """

    def __init__(self, dim: int, *, mlp_ratio: float = 2.0, dropout: float = 0.0) -> None:
        hidden = int(dim * mlp_ratio)
        super().__init__(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )


class TransformerBlock(nn.Module):
    """Pre-norm transformer encoder block over a small masked token set (Vaswani et al. 2017,
    https://arxiv.org/abs/1706.03762): ``x + Attn(LN(x))`` then ``x + FFN(LN(x))``.

    Args:
        dim: model dimension ``D``.
        n_heads: attention heads.
        mlp_ratio: feed-forward width as a multiple of ``D``.
        dropout: dropout on attention weights and in the feed-forward.
    """

    def __init__(self, dim: int, *, n_heads: int, mlp_ratio: float = 2.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = MaskedAttention(dim, n_heads=n_heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, mlp_ratio=mlp_ratio, dropout=dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Update ``x [B, N, D]`` with self-attention over its valid tokens (``mask [B, N]``); returns ``[B, N, D]``.

        Padded positions are updated too (from the valid keys only) and must stay masked downstream.
        """
        h = self.norm1(x)
        x = x + self.attention(h, h, mask)[0]
        return x + self.ffn(self.norm2(x))

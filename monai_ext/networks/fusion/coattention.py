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

"""Genomic-guided co-attention fusion of MCAT (Chen et al. 2021, https://doi.org/10.1109/ICCV48922.2021.00398)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from monai_ext.networks.fusion.base import FusionBase, MissingEmbeddings
from monai_ext.networks.fusion.layers import GatedAttentionPool, MaskedAttention, TransformerBlock

__all__ = ["CoAttentionFusion"]


class CoAttentionFusion(FusionBase):
    """Genomic-guided co-attention, MCAT (Chen et al. 2021, https://doi.org/10.1109/ICCV48922.2021.00398).

    The query modality's tokens (e.g. 6 gene-family or pathway tokens) attend over the patch tokens, giving one
    co-attended patch summary per query ``[B, N_q, D]`` and the co-attention matrix ``[B, N_q, N_patches]``
    (memory linear in patches). Then, per modality, a small transformer (``n_layers`` blocks) and gated attention
    pooling give one vector: the patch branch runs on the co-attended tokens, every other modality (the queries
    themselves, clinical, text, ...) on its own tokens. The vectors are concatenated in construction order and
    mapped by ``Linear -> ReLU -> Linear -> ReLU`` to ``[B, E]``.

    Missing modalities: a learned global query is always appended to the queries, so a sample without the query
    modality still summarises its patches (through that query alone); a modality absent for a sample enters the
    concatenation through its learned missing embedding.

    Args:
        modalities: modality names; must contain ``patch_modality`` and ``query_modality``.
        dim: shared token dimension ``D``.
        out_dim: embedding dimension ``E`` (default ``D``).
        patch_modality: the large token set (patches).
        query_modality: the modality whose tokens query the patches.
        n_heads: attention heads (co-attention and transformers).
        n_layers: transformer blocks per modality (MCAT uses 2).
        dropout: dropout in attention, feed-forwards and pooling.

    Raises:
        ValueError: when the patch or query modality is not among ``modalities`` or both are the same.
    """

    def __init__(
        self,
        modalities: Sequence[str],
        dim: int,
        *,
        out_dim: int | None = None,
        patch_modality: str = "wsi",
        query_modality: str = "omics",
        n_heads: int = 4,
        n_layers: int = 2,
        dropout: float = 0.25,
    ) -> None:
        super().__init__(modalities, dim, out_dim)
        if patch_modality not in self.modalities or query_modality not in self.modalities:
            raise ValueError(
                f"patch_modality={patch_modality!r} and query_modality={query_modality!r} must both be in "
                f"modalities {list(self.modalities)}; use 'concat' or 'bicross' without a query modality"
            )
        if patch_modality == query_modality:
            raise ValueError(f"patch_modality and query_modality must differ, both are {patch_modality!r}")
        if n_layers < 0:
            raise ValueError(f"n_layers must be >= 0, got {n_layers}")
        self.patch_modality = patch_modality
        self.query_modality = query_modality
        self.global_query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.query_norm = nn.LayerNorm(dim)
        self.patch_norm = nn.LayerNorm(dim)
        self.coattention = MaskedAttention(dim, n_heads=n_heads, dropout=dropout)
        self.encoders = nn.ModuleDict(
            {
                name: nn.ModuleList([TransformerBlock(dim, n_heads=n_heads, dropout=dropout) for _ in range(n_layers)])
                for name in self.modalities
            }
        )
        self.pools = nn.ModuleDict({name: GatedAttentionPool(dim, dropout=dropout) for name in self.modalities})
        self.missing = MissingEmbeddings(self.modalities, dim)
        self.mlp = nn.Sequential(
            nn.Linear(len(self.modalities) * dim, self.out_dim),
            nn.ReLU(),
            nn.Linear(self.out_dim, self.out_dim),
            nn.ReLU(),
        )

    def _encode(self, name: str, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Transformer blocks then gated attention pooling of ``x [B, N, D]``; returns ``([B, D], [B, N])``."""
        for block in self.encoders[name]:
            x = block(x, mask)
        return self.pools[name](x, mask)

    def forward(self, tokens: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict:
        """Fuse.

        Args:
            tokens: ``{name: [B, N_m, D]}``.
            masks: ``{name: bool [B, N_m]}``.

        Returns:
            ``{"embedding": [B, E], "attention": {name: [B, N_m]}, "coattention": [B, N_q, N_patches]}``.
            ``attention[patch_modality]`` is the patch attention (pooling weights over the queries times the
            co-attention, a distribution over valid patches); other entries are pooling weights over each
            modality's tokens. ``"coattention"`` (mean over heads, zero rows for padded or absent queries) is
            present when both the patch and the query modality are in the batch.
        """
        tokens, masks, batch_size = self.check_inputs(tokens, masks)
        result: dict = {"attention": {}}
        pooled = []
        for name in self.modalities:
            if name not in tokens:
                pooled.append(self.missing.fill(name, None, None, batch_size))
                continue
            if name == self.patch_modality:
                vector, weights, coattention = self._coattend(tokens, masks, batch_size)
                if coattention is not None:
                    result["coattention"] = coattention
            else:
                vector, weights = self._encode(name, tokens[name], masks[name])
            result["attention"][name] = weights
            pooled.append(self.missing.fill(name, vector, masks[name].any(dim=1), batch_size))
        result["embedding"] = self.mlp(torch.cat(pooled, dim=-1))
        return result

    def _coattend(
        self, tokens: dict[str, Tensor], masks: dict[str, Tensor], batch_size: int
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Co-attention of the queries over the patches, then the patch branch.

        Returns:
            ``(vector [B, D], patch attention [B, N_p], co-attention [B, N_q, N_p] or None without queries)``.
        """
        patches, patch_mask = tokens[self.patch_modality], masks[self.patch_modality]
        global_query = self.global_query.expand(batch_size, -1, -1).to(patches.dtype)
        global_mask = torch.ones(batch_size, 1, dtype=torch.bool, device=patches.device)
        has_queries = self.query_modality in tokens
        if has_queries:
            query = torch.cat([tokens[self.query_modality], global_query], dim=1)
            query_mask = torch.cat([masks[self.query_modality], global_mask], dim=1)
        else:
            query, query_mask = global_query, global_mask
        coattended, coattention = self.coattention(
            self.query_norm(query), self.patch_norm(patches), patch_mask, need_weights=True
        )
        coattention = coattention.masked_fill(~query_mask[..., None], 0.0)  # [B, N_q + 1, N_p]
        vector, query_weights = self._encode(self.patch_modality, coattended, query_mask)
        patch_attention = torch.einsum("bq,bqn->bn", query_weights, coattention)
        return vector, patch_attention, coattention[:, :-1] if has_queries else None

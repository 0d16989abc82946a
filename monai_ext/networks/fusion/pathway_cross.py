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

"""SurvPath-like fusion: one transformer layer over pathway and patch tokens with the patch-patch block masked
(Jaume et al. 2024, https://arxiv.org/abs/2304.06819)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from monai_ext.networks.fusion.base import FusionBase, MissingEmbeddings, concat_token_sets
from monai_ext.networks.fusion.layers import FeedForward, MaskedAttention, masked_mean

__all__ = ["PathwayCrossFusion"]


class PathwayCrossFusion(FusionBase):
    """Sparse multimodal transformer layer of SurvPath (Jaume et al. 2024, https://arxiv.org/abs/2304.06819).

    The tokens of all non-patch modalities (pathway tokens, and clinical or text tokens when given) form the
    "small side"; with the patch tokens they go through one pre-norm transformer layer whose attention keeps
    small->small, small->patch and patch->small and masks out patch->patch, so memory grows linearly with the
    number of patches. Both directions share the attention weights, as in a single layer over the concatenation.
    Each modality's updated tokens are then mean-pooled, the vectors concatenated in construction order and mapped
    by ``Linear -> ReLU -> Dropout`` to ``[B, E]``.

    Missing modalities: a learned register token is always on the small side, so patches have something to attend
    to when no other modality is present; an absent modality enters the concatenation through its learned missing
    embedding.

    Args:
        modalities: modality names; must contain ``patch_modality``.
        dim: shared token dimension ``D``.
        out_dim: embedding dimension ``E`` (default ``D``).
        patch_modality: the large token set (patches).
        n_heads: attention heads (SurvPath uses 1).
        mlp_ratio: feed-forward width as a multiple of ``D``.
        dropout: dropout on attention weights, in the feed-forward and after the MLP.
        return_attention: compute the patch attention (small-side queries over patches, averaged over heads and
            valid queries). Needs explicit ``[B, heads, N_small, N_patches]`` weights; ``False`` uses the fused
            ``scaled_dot_product_attention`` kernels and returns no patch attention.

    Raises:
        ValueError: when ``patch_modality`` is not among ``modalities``.
    """

    def __init__(
        self,
        modalities: Sequence[str],
        dim: int,
        *,
        out_dim: int | None = None,
        patch_modality: str = "wsi",
        n_heads: int = 1,
        mlp_ratio: float = 2.0,
        dropout: float = 0.1,
        return_attention: bool = True,
    ) -> None:
        super().__init__(modalities, dim, out_dim)
        if patch_modality not in self.modalities:
            raise ValueError(f"patch_modality={patch_modality!r} must be in modalities {list(self.modalities)}")
        self.patch_modality = patch_modality
        self.small_modalities = tuple(name for name in self.modalities if name != patch_modality)
        self.return_attention = return_attention
        self.register = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.norm1 = nn.LayerNorm(dim)
        self.attention = MaskedAttention(dim, n_heads=n_heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, mlp_ratio=mlp_ratio, dropout=dropout)
        self.missing = MissingEmbeddings(self.modalities, dim)
        self.mlp = nn.Sequential(nn.Linear(len(self.modalities) * dim, self.out_dim), nn.ReLU(), nn.Dropout(dropout))

    def layer(
        self, small: Tensor, small_mask: Tensor, patches: Tensor | None, patch_mask: Tensor | None
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The sparse transformer layer.

        Args:
            small: small-side tokens ``[B, N_s, D]`` (including the register token).
            small_mask: bool ``[B, N_s]``.
            patches: patch tokens ``[B, N_p, D]`` or None when the batch has no patches.
            patch_mask: bool ``[B, N_p]`` or None.

        Returns:
            ``(small [B, N_s, D], patches [B, N_p, D] or None, weights [B, N_s, N_s + N_p] or None)``.
        """
        h_small = self.norm1(small)
        if patches is None or patch_mask is None:
            update, weights = self.attention(h_small, h_small, small_mask)
        else:
            h_patch = self.norm1(patches)
            context = torch.cat([h_small, h_patch], dim=1)
            context_mask = torch.cat([small_mask, patch_mask], dim=1)
            update, weights = self.attention(h_small, context, context_mask, need_weights=self.return_attention)
            patches = patches + self.attention(h_patch, h_small, small_mask)[0]  # no patch -> patch attention
            patches = patches + self.ffn(self.norm2(patches))
        small = small + update
        small = small + self.ffn(self.norm2(small))
        return small, patches, weights

    def forward(self, tokens: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict:
        """Fuse.

        Args:
            tokens: ``{name: [B, N_m, D]}``.
            masks: ``{name: bool [B, N_m]}``.

        Returns:
            ``{"embedding": [B, E], "attention": {patch_modality: [B, N_p]}}``; the patch attention (a
            distribution over valid patches, zero where a sample has none) only with ``return_attention``.
        """
        tokens, masks, batch_size = self.check_inputs(tokens, masks)
        reference = next(iter(tokens.values()))
        register = self.register.expand(batch_size, -1, -1).to(reference.dtype)
        small, small_mask, slices = concat_token_sets(self.small_modalities, tokens, masks, register)
        patches = tokens.get(self.patch_modality)
        patch_mask = masks.get(self.patch_modality)
        small, patches, weights = self.layer(small, small_mask, patches, patch_mask)
        result: dict = {"attention": {}}
        pooled = []
        for name in self.modalities:
            if name not in tokens:
                pooled.append(self.missing.fill(name, None, None, batch_size))
                continue
            if name == self.patch_modality:
                vector = masked_mean(patches, masks[name])
            else:
                vector = masked_mean(small[:, slices[name]], small_mask[:, slices[name]])
            pooled.append(self.missing.fill(name, vector, masks[name].any(dim=1), batch_size))
        if weights is not None:
            n_small = small.shape[1]
            query_weights = small_mask.to(weights.dtype) / small_mask.sum(dim=1, keepdim=True)
            patch_weights = torch.einsum("bq,bqn->bn", query_weights, weights[:, :, n_small:])
            result["attention"][self.patch_modality] = patch_weights / patch_weights.sum(dim=1, keepdim=True).clamp(
                min=torch.finfo(patch_weights.dtype).tiny
            )
        result["embedding"] = self.mlp(torch.cat(pooled, dim=-1))
        return result

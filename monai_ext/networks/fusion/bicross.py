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

"""Bi-cross attention between patch tokens and class-text prompt embeddings, after HMF (Hierarchical Multimodal
Fusion of Whole Slide Images and Text for Patient-Level Cancer Staging, https://github.com/ErShiY/HMF)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from monai_ext.networks.fusion.base import FusionBase, MissingEmbeddings, concat_token_sets
from monai_ext.networks.fusion.layers import GatedAttentionPool, MaskedAttention, masked_mean

__all__ = ["BiCrossFusion"]


class BiCrossFusion(FusionBase):
    """Bi-cross attention (BCA) of HMF (Hierarchical Multimodal Fusion of Whole Slide Images and Text for
    Patient-Level Cancer Staging, https://github.com/ErShiY/HMF).

    Step 1 (text -> patches): the "context" tokens (class-text prompt embeddings ``[B, T, D]``, plus the tokens
    of any other non-patch modality) attend over the patches, ``c' = LN(c + Attn(c, p))``. Step 2 (patches ->
    text): the patches attend over the updated context, ``p' = LN(p + Attn(p, c'))``. Queries come from the small
    side in step 1 and keys from the small side in step 2, so memory is linear in patches. Patches are pooled with
    gated attention (the returned patch attention), every context modality by a masked mean; the vectors are
    concatenated in construction order and mapped by ``Linear -> ReLU -> Dropout`` to ``[B, E]``.

    Unlike the reference code, which picks the prompts of the true class and random negatives (so the label enters
    the forward pass), the prompts are an input here: pass those of all classes.

    Missing modalities: a learned register token is always in the context so patches can attend when no other
    modality is present; an absent modality enters the concatenation through its learned missing embedding.

    Args:
        modalities: modality names; must contain ``patch_modality``.
        dim: shared token dimension ``D``.
        out_dim: embedding dimension ``E`` (default ``D``).
        patch_modality: the large token set (patches).
        n_heads: attention heads (HMF uses 8).
        dropout: dropout on attention weights, in pooling and after the MLP.

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
        n_heads: int = 4,
        dropout: float = 0.25,
    ) -> None:
        super().__init__(modalities, dim, out_dim)
        if patch_modality not in self.modalities:
            raise ValueError(f"patch_modality={patch_modality!r} must be in modalities {list(self.modalities)}")
        self.patch_modality = patch_modality
        self.context_modalities = tuple(name for name in self.modalities if name != patch_modality)
        self.register = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.context_to_patch = MaskedAttention(dim, n_heads=n_heads, dropout=dropout)
        self.patch_to_context = MaskedAttention(dim, n_heads=n_heads, dropout=dropout)
        self.context_norm = nn.LayerNorm(dim)
        self.patch_norm = nn.LayerNorm(dim)
        self.patch_pool = GatedAttentionPool(dim, dropout=dropout)
        self.missing = MissingEmbeddings(self.modalities, dim)
        self.mlp = nn.Sequential(nn.Linear(len(self.modalities) * dim, self.out_dim), nn.ReLU(), nn.Dropout(dropout))

    def bi_cross(
        self, context: Tensor, context_mask: Tensor, patches: Tensor, patch_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The two cross-attention steps.

        Args:
            context: ``[B, N_c, D]`` (including the register token).
            context_mask: bool ``[B, N_c]``.
            patches: ``[B, N_p, D]``.
            patch_mask: bool ``[B, N_p]``.

        Returns:
            ``(context [B, N_c, D], patches [B, N_p, D])`` after both steps.
        """
        context = self.context_norm(context + self.context_to_patch(context, patches, patch_mask)[0])
        patches = self.patch_norm(patches + self.patch_to_context(patches, context, context_mask)[0])
        return context, patches

    def forward(self, tokens: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict:
        """Fuse.

        Args:
            tokens: ``{name: [B, N_m, D]}``.
            masks: ``{name: bool [B, N_m]}``.

        Returns:
            ``{"embedding": [B, E], "attention": {patch_modality: [B, N_p]}}`` when patches are in the batch (the
            gated pooling weights: zero at padded patches, summing to 1 over valid ones).
        """
        tokens, masks, batch_size = self.check_inputs(tokens, masks)
        reference = next(iter(tokens.values()))
        register = self.register.expand(batch_size, -1, -1).to(reference.dtype)
        context, context_mask, slices = concat_token_sets(self.context_modalities, tokens, masks, register)
        result: dict = {"attention": {}}
        patch_vector = None
        if self.patch_modality in tokens:
            patch_mask = masks[self.patch_modality]
            context, patches = self.bi_cross(context, context_mask, tokens[self.patch_modality], patch_mask)
            patch_vector, result["attention"][self.patch_modality] = self.patch_pool(patches, patch_mask)
        else:
            context = self.context_norm(context)  # the text -> patch step over no patches adds nothing
        pooled = []
        for name in self.modalities:
            if name not in tokens:
                pooled.append(self.missing.fill(name, None, None, batch_size))
                continue
            if name == self.patch_modality:
                vector = patch_vector
            else:
                vector = masked_mean(context[:, slices[name]], context_mask[:, slices[name]])
            pooled.append(self.missing.fill(name, vector, masks[name].any(dim=1), batch_size))
        result["embedding"] = self.mlp(torch.cat(pooled, dim=-1))
        return result

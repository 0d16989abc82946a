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
import torch.nn.functional as F
from torch import Tensor, nn

from monai_ext.networks.fusion.base import FusionBase, MissingEmbeddings, concat_token_sets
from monai_ext.networks.fusion.layers import GatedAttentionPool, MaskedAttention, masked_mean

__all__ = ["BiCrossFusion", "top_patch_mask"]


def top_patch_mask(scores: Tensor, mask: Tensor, ratio: float) -> Tensor:
    """Keep the ``ceil(ratio * n_valid)`` highest-scoring valid patches of each sample.

    Args:
        scores: ``[B, N]`` patch scores.
        mask: bool ``[B, N]``, True for valid patches.
        ratio: share of the valid patches kept, in ``(0, 1]``.

    Returns:
        bool ``[B, N]``: True for kept patches (a subset of ``mask``; ties go to the earlier patch). A sample with
        at least one valid patch keeps at least one.
    """
    n_valid = mask.sum(dim=1).to(torch.float64)
    # the small epsilon keeps float error from rounding e.g. 0.3 * 10 = 3.0000000000000004 up to 4
    n_keep = torch.ceil(n_valid * ratio - 1e-9).clamp(min=1.0).to(torch.long)
    order = scores.masked_fill(~mask, float("-inf")).argsort(dim=1, descending=True, stable=True)
    positions = torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    ranks = torch.empty_like(order).scatter_(1, order, positions)
    return mask & (ranks < n_keep[:, None])


class BiCrossFusion(FusionBase):
    """Bi-cross attention (BCA) of HMF (Hierarchical Multimodal Fusion of Whole Slide Images and Text for
    Patient-Level Cancer Staging, https://github.com/ErShiY/HMF).

    Step 1 (text -> patches): the "context" tokens (class-text prompt embeddings ``[B, T, D]``, plus the tokens
    of any other non-patch modality) attend over the patches, ``c' = LN(c + Attn(c, p))``. Step 2 (patches ->
    text): the patches attend over the updated context, ``p' = LN(p + Attn(p, c'))``. Queries come from the small
    side in step 1 and keys from the small side in step 2, so memory is linear in patches. Patches are pooled with
    gated attention (the returned patch attention), every context modality by a masked mean; the vectors are
    concatenated in construction order and mapped by ``Linear -> ReLU -> Dropout`` to ``[B, E]``.

    Attention filter (HMF's ``ratio``): with ``keep_ratio < 1`` only the ``ceil(keep_ratio * n_valid)`` patches of
    each sample with the highest text-attention score go on to step 2 and the pool; the others get zero pooling
    attention. A patch's score is the step-1 attention it receives, averaged over heads and over the sample's
    valid context tokens (prompts, other context modalities and the register). HMF ranks patches with a separately
    trained CLAM attention network; here the ranking comes from the text itself, so no second network is needed.
    The selection is not differentiable (as in HMF, which ranks under ``no_grad``); the kept patches are.

    Slide-text alignment (HMF's contrastive term): with ``n_prompt_classes = K``, the tokens of
    ``prompt_modality`` are read as ``K`` equal groups of prompts in class order (``[B, K * P, D]``, as
    :meth:`monai_ext.data.text.TextEmbedder.class_prompt_embeddings` flattened), and the fusion also returns the
    cosine similarity between the projected pooled patch vector and each class's projected mean prompt (after
    step 1), ``slide_text_similarity [B, K]``, for :class:`monai_ext.losses.alignment.TextAlignmentLoss`.

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
        keep_ratio: share of each sample's valid patches kept after step 1, in ``(0, 1]``; 1 keeps all (HMF's
            filter off).
        n_prompt_classes: number of prompt classes ``K`` for the slide-text similarity; None computes none.
        prompt_modality: the context modality holding the class prompts.

    Raises:
        ValueError: when ``patch_modality`` is not among ``modalities``, ``keep_ratio`` is outside ``(0, 1]``, or
            ``n_prompt_classes`` is given without ``prompt_modality`` among the context modalities.
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
        keep_ratio: float = 1.0,
        n_prompt_classes: int | None = None,
        prompt_modality: str = "text",
    ) -> None:
        super().__init__(modalities, dim, out_dim)
        if patch_modality not in self.modalities:
            raise ValueError(f"patch_modality={patch_modality!r} must be in modalities {list(self.modalities)}")
        if not 0.0 < keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio must be in (0, 1] (1 keeps every patch), got {keep_ratio}")
        self.patch_modality = patch_modality
        self.context_modalities = tuple(name for name in self.modalities if name != patch_modality)
        if n_prompt_classes is not None and (n_prompt_classes < 1 or prompt_modality not in self.context_modalities):
            raise ValueError(
                f"n_prompt_classes={n_prompt_classes} needs a positive count and prompt_modality={prompt_modality!r} "
                f"among the context modalities {list(self.context_modalities)}"
            )
        self.keep_ratio = float(keep_ratio)
        self.n_prompt_classes = n_prompt_classes
        self.prompt_modality = prompt_modality
        self.register = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.context_to_patch = MaskedAttention(dim, n_heads=n_heads, dropout=dropout)
        self.patch_to_context = MaskedAttention(dim, n_heads=n_heads, dropout=dropout)
        self.context_norm = nn.LayerNorm(dim)
        self.patch_norm = nn.LayerNorm(dim)
        self.patch_pool = GatedAttentionPool(dim, dropout=dropout)
        self.missing = MissingEmbeddings(self.modalities, dim)
        self.mlp = nn.Sequential(nn.Linear(len(self.modalities) * dim, self.out_dim), nn.ReLU(), nn.Dropout(dropout))
        if n_prompt_classes is not None:
            self.align_slide = nn.Linear(dim, dim)
            self.align_text = nn.Linear(dim, dim)

    def bi_cross(
        self, context: Tensor, context_mask: Tensor, patches: Tensor, patch_mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The two cross-attention steps, with the attention filter between them.

        Args:
            context: ``[B, N_c, D]`` (including the register token).
            context_mask: bool ``[B, N_c]``.
            patches: ``[B, N_p, D]``.
            patch_mask: bool ``[B, N_p]``.

        Returns:
            ``(context [B, N_c, D], patches [B, N_p, D], kept bool [B, N_p])`` after both steps; ``kept`` is
            ``patch_mask`` without the patches the filter dropped (all of ``patch_mask`` when ``keep_ratio`` is 1).
        """
        filtering = self.keep_ratio < 1.0
        update, weights = self.context_to_patch(context, patches, patch_mask, need_weights=filtering)
        context = self.context_norm(context + update)
        kept = patch_mask
        if weights is not None:  # [B, N_c, N_p], averaged over heads
            valid = context_mask.to(weights.dtype)[..., None]
            scores = (weights * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1.0)
            kept = top_patch_mask(scores.detach(), patch_mask, self.keep_ratio)
        patches = self.patch_norm(patches + self.patch_to_context(patches, context, context_mask)[0])
        return context, patches, kept

    def slide_text_similarity(self, slide: Tensor, prompts: Tensor, prompt_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Cosine similarity of the slide vector to each class's mean prompt.

        Args:
            slide: pooled patch vector ``[B, D]``.
            prompts: prompt tokens after step 1, ``[B, K * P, D]`` in class order.
            prompt_mask: bool ``[B, K * P]``.

        Returns:
            ``(similarity [B, K] in [-1, 1], class_mask bool [B, K])``; ``class_mask`` is False for a class without
            any valid prompt (its similarity is 0 and must be ignored).

        Raises:
            ValueError: when the number of prompt tokens is not a multiple of ``K``.
        """
        n_classes = self.n_prompt_classes
        assert n_classes is not None  # only called when the alignment is on
        if prompts.shape[1] % n_classes:
            raise ValueError(
                f"{prompts.shape[1]} {self.prompt_modality!r} tokens cannot be split into {n_classes} classes of "
                "equally many prompts; give every class the same number of prompts, in class order"
            )
        grouped = prompts.reshape(prompts.shape[0], n_classes, -1, prompts.shape[-1])  # [B, K, P, D]
        group_mask = prompt_mask.reshape(prompts.shape[0], n_classes, -1).to(prompts.dtype)  # [B, K, P]
        class_text = torch.einsum("bkp,bkpd->bkd", group_mask, grouped) / group_mask.sum(-1, keepdim=True).clamp(min=1)
        slide_unit = F.normalize(self.align_slide(slide), dim=-1)  # [B, D]
        text_unit = F.normalize(self.align_text(class_text), dim=-1)  # [B, K, D]
        class_mask = group_mask.sum(-1) > 0
        similarity = torch.einsum("bd,bkd->bk", slide_unit, text_unit).masked_fill(~class_mask, 0.0)
        return similarity, class_mask

    def forward(self, tokens: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict:
        """Fuse.

        Args:
            tokens: ``{name: [B, N_m, D]}``.
            masks: ``{name: bool [B, N_m]}``.

        Returns:
            ``{"embedding": [B, E], "attention": {patch_modality: [B, N_p]}}`` when patches are in the batch (the
            gated pooling weights: zero at padded and filtered-out patches, summing to 1 over the kept ones); with
            ``n_prompt_classes`` and both patches and (at least one valid) prompt in the batch, also
            ``slide_text_similarity [B, K]`` and ``slide_text_mask`` bool ``[B, K]`` (see
            :meth:`slide_text_similarity`).
        """
        tokens, masks, batch_size = self.check_inputs(tokens, masks)
        reference = next(iter(tokens.values()))
        register = self.register.expand(batch_size, -1, -1).to(reference.dtype)
        context, context_mask, slices = concat_token_sets(self.context_modalities, tokens, masks, register)
        result: dict = {"attention": {}}
        patch_vector = None
        if self.patch_modality in tokens:
            patches, patch_mask = tokens[self.patch_modality], masks[self.patch_modality]
            context, patches, kept = self.bi_cross(context, context_mask, patches, patch_mask)
            patch_vector, result["attention"][self.patch_modality] = self.patch_pool(patches, kept)
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
        # the data-dependent check comes last, so a network without prompt classes exports with dynamic shapes
        if (
            self.n_prompt_classes is not None
            and patch_vector is not None
            and self.prompt_modality in tokens
            and bool(masks[self.prompt_modality].any())
        ):
            span = slices[self.prompt_modality]
            similarity, class_mask = self.slide_text_similarity(patch_vector, context[:, span], context_mask[:, span])
            result["slide_text_similarity"] = similarity
            result["slide_text_mask"] = class_mask & masks[self.patch_modality].any(dim=1, keepdim=True)
        return result

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

"""Contrastive alignment of slide embeddings with class-text embeddings, the alignment term of HMF (Hierarchical
Multimodal Fusion of Whole Slide Images and Text for Patient-Level Cancer Staging, https://github.com/ErShiY/HMF)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TextAlignmentLoss"]


class TextAlignmentLoss(nn.Module):
    """InfoNCE over classes: cross-entropy of the temperature-scaled cosine similarities between each slide and
    every class's text embedding, with the slide's true class as the positive (CLIP-style, Radford et al. 2021,
    https://arxiv.org/abs/2103.00020; the slide-text term of HMF, https://github.com/ErShiY/HMF).

    ``loss = mean_b -log( exp(s_{b,y_b} / t) / sum_{k valid} exp(s_{b,k} / t) )`` over the samples ``b`` with a
    label (``y_b >= 0``) whose true class has text (``mask[b, y_b]``); classes without text (``mask`` False) are
    left out of the denominator. HMF uses ``t = 0.07``.

    Args:
        temperature: softmax temperature ``t > 0``.

    Raises:
        ValueError: for a non-positive temperature.
    """

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, similarity: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
        """Alignment loss.

        Args:
            similarity: cosine similarities ``[B, K]`` (e.g. ``slide_text_similarity`` of
                :class:`monai_ext.networks.fusion.BiCrossFusion`).
            labels: true class ``[B]`` (long; ``-1`` for samples without a label, which are skipped).
            mask: bool ``[B, K]``, True where class ``k`` has text for sample ``b`` (default all True).

        Returns:
            scalar mean loss over the usable samples; 0 (still attached to the graph) when none is usable.

        Raises:
            ValueError: for mismatched shapes or a label outside ``[-1, K)``.
        """
        if similarity.ndim != 2 or labels.shape != similarity.shape[:1]:
            raise ValueError(
                f"expected similarity [B, K] and labels [B], got {tuple(similarity.shape)} and {tuple(labels.shape)}"
            )
        if mask is None:
            mask = torch.ones_like(similarity, dtype=torch.bool)
        elif mask.shape != similarity.shape or mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool {tuple(similarity.shape)}, got {mask.dtype} {tuple(mask.shape)}")
        labels = labels.long()
        n_classes = similarity.shape[1]
        if bool(((labels < -1) | (labels >= n_classes)).any()):
            raise ValueError(f"labels must be class indices in [0, {n_classes}) or -1 (none), got {labels.tolist()}")
        has_label = labels >= 0
        target_has_text = mask.gather(1, labels.clamp(min=0)[:, None]).squeeze(1)
        usable = has_label & target_has_text
        if not bool(usable.any()):
            return similarity.sum() * 0.0
        logits = (similarity[usable] / self.temperature).masked_fill(~mask[usable], float("-inf"))
        return F.cross_entropy(logits, labels[usable])

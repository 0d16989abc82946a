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

"""Late fusion by concatenation: masked mean per modality, learned missing embeddings, concatenation, MLP."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from monai_ext.networks.fusion.base import FusionBase, MissingEmbeddings
from monai_ext.networks.fusion.layers import masked_mean

__all__ = ["ConcatFusion"]


class ConcatFusion(FusionBase):
    """Concatenation fusion, the usual late-fusion baseline (e.g. the "concat" arm of Pathomic Fusion,
    Chen et al. 2020, https://arxiv.org/abs/1912.08937).

    Each modality is mean-pooled over its valid tokens to ``[B, D]``; a modality absent for a sample (all-False
    mask row, or left out of the batch) enters through its learned missing embedding. The ``M`` vectors are
    concatenated in construction order to ``[B, M * D]`` and mapped by ``Linear -> ReLU -> Dropout`` to ``[B, E]``.
    For a patch bag, aggregate with a MIL model first and pass ``[B, 1, D]`` if a plain mean is too crude.

    Args:
        modalities: modality names, in concatenation order.
        dim: shared token dimension ``D``.
        out_dim: embedding dimension ``E`` (default ``D``).
        dropout: dropout after the MLP.
    """

    def __init__(
        self,
        modalities: Sequence[str],
        dim: int,
        *,
        out_dim: int | None = None,
        dropout: float = 0.25,
    ) -> None:
        super().__init__(modalities, dim, out_dim)
        self.missing = MissingEmbeddings(self.modalities, dim)
        self.mlp = nn.Sequential(nn.Linear(len(self.modalities) * dim, self.out_dim), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, tokens: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict:
        """Fuse.

        Args:
            tokens: ``{name: [B, N_m, D]}``.
            masks: ``{name: bool [B, N_m]}``.

        Returns:
            ``{"embedding": [B, E], "attention": {}}`` (mean pooling has no attention to report).
        """
        tokens, masks, batch_size = self.check_inputs(tokens, masks)
        pooled = []
        for name in self.modalities:
            if name in tokens:
                vector = masked_mean(tokens[name], masks[name])
                pooled.append(self.missing.fill(name, vector, masks[name].any(dim=1), batch_size))
            else:
                pooled.append(self.missing.fill(name, None, None, batch_size))
        return {"embedding": self.mlp(torch.cat(pooled, dim=-1)), "attention": {}}

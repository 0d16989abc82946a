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

"""Low-rank multimodal fusion, LMF (Liu et al. 2018, https://arxiv.org/abs/1806.00064)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from monai_ext.networks.fusion.base import FusionBase
from monai_ext.networks.fusion.layers import masked_mean

__all__ = ["LowRankFusion"]


class LowRankFusion(FusionBase):
    """Low-rank multimodal fusion, LMF (Liu et al. 2018, https://arxiv.org/abs/1806.00064).

    The full multilinear fusion ``W . (z_1 x z_2 x ... x z_M)`` of the extended vectors ``z_m = [v_m; 1]``
    (``v_m`` the masked mean of modality ``m``) is computed with a rank-``r`` decomposition of ``W``:
    ``h = sum_r w_r * prod_m (z_m W_m^(r)) + b``, with factors ``W_m^(r)`` of shape ``[D + 1, E]``. Cost is linear
    in the number of modalities instead of exponential.

    Missing modalities are **excluded**: an absent modality's factor is replaced by ones (the identity of the
    element-wise product), so the product runs over the present modalities only; a sample with no modality gets
    ``sum_r w_r + b``.

    Initialisation differs from the reference code (Xavier on the factors, which makes a product of ``M`` factors
    vanish as ``M`` grows): factor entries are ``N(0, 1 / (D * M))`` and the row multiplying the constant 1 is 1,
    so for unit-variance inputs each factor starts as ``1 + N(0, 1 / M)`` and the second moment of the product,
    ``(1 + 1 / M) ** M < e``, stays bounded for any number of modalities.

    Args:
        modalities: modality names.
        dim: shared token dimension ``D``.
        out_dim: embedding dimension ``E`` (default ``D``).
        rank: rank ``r`` of the decomposition (the paper uses 1 to 16; 4 is a good default).
        dropout: dropout on the pooled vectors.

    Raises:
        ValueError: when ``rank < 1``.
    """

    def __init__(
        self,
        modalities: Sequence[str],
        dim: int,
        *,
        out_dim: int | None = None,
        rank: int = 4,
        dropout: float = 0.25,
    ) -> None:
        super().__init__(modalities, dim, out_dim)
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.rank = rank
        self.dropout = nn.Dropout(dropout)
        self.factors = nn.ParameterDict(
            {name: nn.Parameter(torch.empty(rank, dim + 1, self.out_dim)) for name in self.modalities}
        )
        self.fusion_weights = nn.Parameter(torch.empty(rank))
        self.fusion_bias = nn.Parameter(torch.empty(self.out_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Factors ``N(0, 1 / (D * M))`` with the constant row set to 1; fusion weights ``N(0, 1 / r)``; bias 0."""
        with torch.no_grad():
            for factor in self.factors.values():
                factor.normal_(0.0, (self.dim * len(self.modalities)) ** -0.5)
                factor[:, -1, :] = 1.0
            self.fusion_weights.normal_(0.0, self.rank**-0.5)
            self.fusion_bias.zero_()

    def forward(self, tokens: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict:
        """Fuse.

        Args:
            tokens: ``{name: [B, N_m, D]}``.
            masks: ``{name: bool [B, N_m]}``.

        Returns:
            ``{"embedding": [B, E], "attention": {}}``.
        """
        tokens, masks, _ = self.check_inputs(tokens, masks)
        product: Tensor | None = None
        for name in tokens:
            vector = self.dropout(masked_mean(tokens[name], masks[name]))
            extended = torch.cat([vector, vector.new_ones(vector.shape[0], 1)], dim=-1)  # [B, D + 1]
            factor = torch.einsum("bd,rde->bre", extended, self.factors[name])  # [B, r, E]
            factor = torch.where(masks[name].any(dim=1)[:, None, None], factor, torch.ones_like(factor))
            product = factor if product is None else product * factor
        assert product is not None  # check_inputs guarantees one modality
        embedding = torch.einsum("r,bre->be", self.fusion_weights, product) + self.fusion_bias
        return {"embedding": embedding, "attention": {}}

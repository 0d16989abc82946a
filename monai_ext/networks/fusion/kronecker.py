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

"""Gated Kronecker fusion of Pathomic Fusion (Chen et al. 2020, https://arxiv.org/abs/1912.08937)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from monai_ext.networks.fusion.base import FusionBase
from monai_ext.networks.fusion.layers import masked_mean

__all__ = ["GatedModalityUnit", "KroneckerFusion", "batched_kronecker", "default_gated_dim"]

_MAX_PRODUCT_SIZE = 2**16


def batched_kronecker(factors: Sequence[Tensor]) -> Tensor:
    """Row-wise Kronecker product: ``torch.kron(f_1[b], f_2[b], ...)`` for every row ``b``.

    Args:
        factors: tensors ``[B, n_m]``.

    Returns:
        ``[B, prod_m n_m]``, flattened in ``torch.kron`` order (last factor fastest).
    """
    out = factors[0]
    for factor in factors[1:]:
        out = torch.einsum("bi,bj->bij", out, factor).flatten(1)
    return out


def default_gated_dim(n_modalities: int) -> int:
    """The gated width ``g`` used when none is given: the paper's 32, reduced until ``(g + 1) ** M <= 2 ** 16``.

    Args:
        n_modalities: ``M``.

    Raises:
        ValueError: when even ``g = 1`` gives a product larger than ``2 ** 16`` (more than 16 modalities).
    """
    gated_dim = 32
    while gated_dim >= 1 and (gated_dim + 1) ** n_modalities > _MAX_PRODUCT_SIZE:
        gated_dim -= 1
    if gated_dim < 1:
        raise ValueError(f"{n_modalities} modalities are too many for a Kronecker product; use 'lowrank' instead")
    return gated_dim


class GatedModalityUnit(nn.Module):
    """Gating-based attention for one modality (Pathomic Fusion, Chen et al. 2020,
    https://arxiv.org/abs/1912.08937): ``o = ReLU(W_o (sigmoid(W_z [v; c]) * ReLU(W_h v)))``.

    The paper gates each modality by a bilinear form of itself and another modality; to accept any subset of
    modalities, the gate here sees the modality's own vector ``v`` and the mean ``c`` of the vectors of all
    modalities present for the sample (with a single modality, ``c = v``).

    Args:
        dim: input dimension ``D``.
        gated_dim: output dimension ``g``.
        dropout: dropout on the output.
    """

    def __init__(self, dim: int, gated_dim: int, *, dropout: float = 0.25) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(dim, gated_dim), nn.ReLU())
        self.gate = nn.Linear(2 * dim, gated_dim)
        self.out = nn.Sequential(nn.Linear(gated_dim, gated_dim), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, vector: Tensor, context: Tensor) -> Tensor:
        """Gate ``vector [B, D]`` given ``context [B, D]``; returns ``[B, g]``."""
        gate = torch.sigmoid(self.gate(torch.cat([vector, context], dim=-1)))
        return self.out(gate * self.hidden(vector))


class KroneckerFusion(FusionBase):
    """Gated Kronecker-product fusion of Pathomic Fusion (Chen et al. 2020, https://arxiv.org/abs/1912.08937).

    Each present modality is mean-pooled to ``v_m [B, D]``, gated to ``o_m [B, g]`` (:class:`GatedModalityUnit`),
    extended with a constant ``1`` and all factors are multiplied by a Kronecker product (the 3-way product of the
    paper for three modalities, ``M``-way in general), giving ``[B, (g + 1) ** M]`` with every unimodal and
    cross-modal interaction term. Dropout and two ``Linear -> ReLU -> Dropout`` layers map it to ``[B, E]``.

    Missing modalities are **excluded** from the product: an absent modality's factor is the unit vector
    ``[0, ..., 0, 1]``, so the product equals the Kronecker product of the present modalities' factors (placed in
    the block where the absent modality contributes its constant 1) and all terms involving the absent modality
    are 0 by construction. A sample with no modality gets the constant term alone.

    Args:
        modalities: modality names, in product order.
        dim: shared token dimension ``D``.
        out_dim: embedding dimension ``E`` (default ``D``).
        gated_dim: gated width ``g`` per modality (default :func:`default_gated_dim`: 32 for up to 3 modalities,
            then smaller so ``(g + 1) ** M <= 65536``).
        dropout: dropout in the gates, after the product and in the encoder.
    """

    def __init__(
        self,
        modalities: Sequence[str],
        dim: int,
        *,
        out_dim: int | None = None,
        gated_dim: int | None = None,
        dropout: float = 0.25,
    ) -> None:
        super().__init__(modalities, dim, out_dim)
        self.gated_dim = gated_dim or default_gated_dim(len(self.modalities))
        self.units = nn.ModuleDict(
            {name: GatedModalityUnit(dim, self.gated_dim, dropout=dropout) for name in self.modalities}
        )
        product_size = (self.gated_dim + 1) ** len(self.modalities)
        self.post_fusion_dropout = nn.Dropout(dropout)
        self.encoder = nn.Sequential(
            nn.Linear(product_size, self.out_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(self.out_dim, self.out_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
        )

    def forward(self, tokens: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict:
        """Fuse.

        Args:
            tokens: ``{name: [B, N_m, D]}``.
            masks: ``{name: bool [B, N_m]}``.

        Returns:
            ``{"embedding": [B, E], "attention": {}}``.
        """
        tokens, masks, batch_size = self.check_inputs(tokens, masks)
        vectors = {name: masked_mean(tokens[name], masks[name]) for name in tokens}
        present = {name: masks[name].any(dim=1) for name in masks}
        # mean of the vectors of the modalities present for each sample (absent rows of masked_mean are 0)
        count = torch.stack([present[name] for name in tokens]).sum(dim=0).clamp(min=1)
        context = torch.stack([vectors[name] for name in tokens]).sum(dim=0) / count[:, None]
        reference = next(iter(vectors.values()))
        unit = torch.zeros(self.gated_dim + 1, dtype=reference.dtype, device=reference.device)
        unit[-1] = 1.0
        factors = []
        for name in self.modalities:
            if name not in tokens:
                factors.append(unit.expand(batch_size, -1))
                continue
            gated = self.units[name](vectors[name], context)
            factor = torch.cat([gated, gated.new_ones(batch_size, 1)], dim=-1)
            factors.append(torch.where(present[name][:, None], factor, unit))
        fused = batched_kronecker(factors)
        return {"embedding": self.encoder(self.post_fusion_dropout(fused)), "attention": {}}

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

"""Omics encoders: a self-normalizing network (SNN), a pathway-token encoder (SurvPath) and a gene-family token
encoder (MCAT). All take a gene vector ``[B, G]``; the token encoders give ``[B, P, D]``, one token per group."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["SNN", "GeneFamilyEncoder", "PathwayTokenEncoder", "lecun_normal_"]


def lecun_normal_(weight: Tensor, fan_in: int | None = None) -> Tensor:
    """Fill ``weight`` in place from ``N(0, 1 / fan_in)``, the LeCun normal init that SELU networks need.

    Args:
        weight: a weight tensor, ``[out, in]`` for a linear layer.
        fan_in: number of inputs per unit (default ``weight.shape[-1]``).

    Returns:
        ``weight``.
    """
    with torch.no_grad():
        return weight.normal_(0.0, (fan_in or weight.shape[-1]) ** -0.5)


class SNN(nn.Module):
    """Self-normalizing network (Klambauer et al. 2017, https://arxiv.org/abs/1706.02515), the genomics encoder of
    Pathomic Fusion and MCAT: ``Linear -> SELU -> AlphaDropout`` per hidden layer with LeCun normal weights, so
    activations stay near zero mean and unit variance through depth.

    Args:
        in_dim: input features ``G``.
        hidden: widths of the layers; the output dimension is ``hidden[-1]``.
        dropout: AlphaDropout probability (keeps mean and variance, unlike plain dropout).

    Raises:
        ValueError: for a non-positive size or an empty ``hidden``.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int] = (256, 256), dropout: float = 0.25) -> None:
        super().__init__()
        widths = [in_dim, *hidden]
        if not hidden or min(widths) < 1:
            raise ValueError(f"in_dim and hidden must be positive and hidden non-empty, got {in_dim}, {hidden}")
        layers: list[nn.Module] = []
        for fan_in, fan_out in itertools.pairwise(widths):
            layers += [nn.Linear(fan_in, fan_out), nn.SELU(), nn.AlphaDropout(dropout)]
        self.layers = nn.Sequential(*layers)
        self.in_dim = in_dim
        self.out_dim = widths[-1]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """LeCun normal weights, zero biases."""
        for module in self.layers:
            if isinstance(module, nn.Linear):
                lecun_normal_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``x [..., G]`` to ``[..., hidden[-1]]``."""
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"SNN expects [..., {self.in_dim}] inputs, got {tuple(x.shape)}")
        return self.layers(x)


def _check_groups(groups: Sequence[Sequence[int]], n_genes: int | None, what: str) -> list[list[int]]:
    """Validate gene-index groups: non-empty, non-negative, unique within a group, below ``n_genes`` if given."""
    if not groups:
        raise ValueError(f"{what}: give at least one group of gene indices")
    checked = []
    for i, group in enumerate(groups):
        indices = [int(g) for g in group]
        if not indices:
            raise ValueError(f"{what}: group {i} has no genes; drop it or map its genes to indices")
        if min(indices) < 0 or (n_genes is not None and max(indices) >= n_genes):
            raise ValueError(
                f"{what}: group {i} has gene indices outside [0, {n_genes}): {min(indices)}..{max(indices)}"
            )
        if len(set(indices)) != len(indices):
            raise ValueError(f"{what}: group {i} lists a gene twice; list each gene once")
        checked.append(indices)
    return checked


def _check_genes(genes: Tensor, min_genes: int, what: str) -> None:
    if genes.ndim != 2 or genes.shape[1] < min_genes:
        raise ValueError(f"{what} expects gene vectors [B, G] with G >= {min_genes}, got {tuple(genes.shape)}")


class _PathwayBucket(nn.Module):
    """First layer for pathways of similar size: gathered genes ``[B, P_b, W]`` times weights ``[P_b, W, H]``."""

    def __init__(self, groups: list[list[int]], hidden: int) -> None:
        super().__init__()
        width = max(len(g) for g in groups)
        index = torch.zeros(len(groups), width, dtype=torch.long)
        valid = torch.zeros(len(groups), width)
        weight = torch.zeros(len(groups), width, hidden)
        for p, group in enumerate(groups):
            index[p, : len(group)] = torch.as_tensor(group)
            valid[p, : len(group)] = 1.0
            lecun_normal_(weight[p, : len(group)], fan_in=len(group))
        self.register_buffer("gene_index", index)
        self.register_buffer("valid", valid)
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(len(groups), hidden))

    def forward(self, genes: Tensor) -> Tensor:
        """``[B, G]`` -> ``[B, P_b, H]``; padded slots read 0 so their (zero) weights get no gradient."""
        gathered = genes[:, self.gene_index] * self.valid
        return torch.einsum("bpw,pwh->bph", gathered, self.weight) + self.bias


class PathwayTokenEncoder(nn.Module):
    """One small SNN per biological pathway, mapping that pathway's genes to a token (SurvPath, Jaume et al. 2024,
    https://arxiv.org/abs/2304.06819; SNN blocks of Klambauer et al. 2017, https://arxiv.org/abs/1706.02515).

    Token ``p`` is ``SNNBlock_2(SNNBlock_1(genes[pathway_gene_index[p]]))`` with separate weights per pathway
    (``SNNBlock = Linear -> SELU -> AlphaDropout``), so it depends on the genes of pathway ``p`` only. The per-
    pathway layers are computed together: pathways are bucketed by size (powers of two), each bucket gathers its
    genes into ``[B, P_b, W]`` (padding reads zero) and multiplies batched weights, so padding costs at most twice
    the true parameter count and there is no Python loop over pathways.

    Args:
        pathway_gene_index: for each pathway, the column indices of its genes in the gene vector.
        dim: token dimension ``D``.
        hidden: width of the first layer per pathway (default ``D``; SurvPath uses 256 for both).
        dropout: AlphaDropout probability.
        n_genes: length ``G`` of the gene vector, to validate indices at construction (checked at run time too).

    Raises:
        ValueError: for an empty pathway, a duplicated or out-of-range gene index, or a non-positive size.
    """

    def __init__(
        self,
        pathway_gene_index: Sequence[Sequence[int]],
        dim: int,
        *,
        hidden: int | None = None,
        dropout: float = 0.25,
        n_genes: int | None = None,
    ) -> None:
        super().__init__()
        groups = _check_groups(pathway_gene_index, n_genes, type(self).__name__)
        hidden = hidden or dim
        if dim < 1 or hidden < 1:
            raise ValueError(f"dim and hidden must be positive, got {dim} and {hidden}")
        self.n_pathways = len(groups)
        self.dim = dim
        self.min_genes = max(max(g) for g in groups) + 1
        size_class = [math.ceil(math.log2(len(g))) for g in groups]
        buckets, order = [], []
        for key in sorted(set(size_class)):
            members = [p for p, k in enumerate(size_class) if k == key]
            buckets.append(_PathwayBucket([groups[p] for p in members], hidden))
            order += members
        self.buckets = nn.ModuleList(buckets)
        self.register_buffer("restore_order", torch.argsort(torch.as_tensor(order)))
        self.second_weight = nn.Parameter(lecun_normal_(torch.empty(self.n_pathways, hidden, dim)))
        self.second_bias = nn.Parameter(torch.zeros(self.n_pathways, dim))
        self.activation = nn.SELU()
        self.dropout = nn.AlphaDropout(dropout)

    def forward(self, genes: Tensor) -> Tensor:
        """Map gene vectors ``[B, G]`` to pathway tokens ``[B, P, D]`` (in the order of ``pathway_gene_index``)."""
        _check_genes(genes, self.min_genes, type(self).__name__)
        first = torch.cat([bucket(genes) for bucket in self.buckets], dim=1)[:, self.restore_order]
        first = self.dropout(self.activation(first))
        second = torch.einsum("bph,phd->bpd", first, self.second_weight) + self.second_bias
        return self.dropout(self.activation(second))


class GeneFamilyEncoder(nn.Module):
    """One SNN per gene family, each giving a token (MCAT, Chen et al. 2021,
    https://doi.org/10.1109/ICCV48922.2021.00398, which uses 6 families: tumour suppressors, oncogenes, protein
    kinases, cell differentiation markers, transcription factors, cytokines and growth factors).

    Families are few and large, so each has its own :class:`SNN` with hidden widths ``(dim, dim)``.

    Args:
        family_gene_index: for each family, the column indices of its genes in the gene vector.
        dim: token dimension ``D``.
        dropout: AlphaDropout probability.
        n_genes: length ``G`` of the gene vector, to validate indices at construction (checked at run time too).

    Raises:
        ValueError: for an empty family, a duplicated or out-of-range gene index, or a non-positive size.
    """

    def __init__(
        self,
        family_gene_index: Sequence[Sequence[int]],
        dim: int,
        *,
        dropout: float = 0.25,
        n_genes: int | None = None,
    ) -> None:
        super().__init__()
        groups = _check_groups(family_gene_index, n_genes, type(self).__name__)
        self.n_families = len(groups)
        self.dim = dim
        self.min_genes = max(max(g) for g in groups) + 1
        self.networks = nn.ModuleList(SNN(len(g), hidden=(dim, dim), dropout=dropout) for g in groups)
        for i, group in enumerate(groups):
            self.register_buffer(f"gene_index_{i}", torch.as_tensor(group))

    def forward(self, genes: Tensor) -> Tensor:
        """Map gene vectors ``[B, G]`` to family tokens ``[B, F, D]``."""
        _check_genes(genes, self.min_genes, type(self).__name__)
        tokens = [net(genes[:, getattr(self, f"gene_index_{i}")]) for i, net in enumerate(self.networks)]
        return torch.stack(tokens, dim=1)

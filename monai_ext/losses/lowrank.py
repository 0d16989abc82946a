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

"""Low-rank constraints across modalities for a multimodal teacher (Xing et al., MedIA 2023).

Xing, Chen, Hou and Yuan, "Gradient modulated contrastive distillation of low-rank multi-modal knowledge for
disease diagnosis", Medical Image Analysis 2023 (https://doi.org/10.1016/j.media.2023.102874). Its teacher adds a
low-rank term on the *sample-relation* matrices of the modalities: per modality (view) a batch relation matrix
``[B, B]``, the views stacked into a third-order tensor ``[B, B, M]`` and its tensor nuclear norm (t-SVD) kept
small. This module gives that term (``mode="relation"``) and a per-sample alternative (``mode="sample"``):

- ``"relation"`` (the paper's): ``A_m = X_m X_m^T`` with ``X_m`` the L2-normalised embeddings ``[B, D]`` of
  modality ``m`` (cosine relations); ``TNN(A) / B`` with :func:`tensor_nuclear_norm`. Each ``A_m`` is positive
  semi-definite with trace ``B``, so the Fourier slice 0 (the sum of the views) always contributes exactly ``B``
  and the normalised value is ``1 + (1 / (M B)) sum_{k >= 1} ||A_hat_k||_*``: it is 1 exactly when every
  modality induces the same relations between patients, and grows with their disagreement. The constraint asks
  the modalities to agree on *which patients are alike* while leaving each embedding space free. It needs a
  batch (``B >= 2``) and uses the samples that have every modality.
- ``"sample"``: per patient, the matrix ``[M, D]`` of its L2-normalised modality embeddings;
  ``||X||_* / sqrt(M)`` lies in ``[1, sqrt(M)]`` (equal to 1 exactly when the rows are collinear, rank 1),
  averaged over the samples with at least two modalities. Works with a batch of one; it pulls the modality
  embeddings of a patient onto one direction, a stronger constraint than the paper's.

The paper minimises the relation TNN with an auxiliary tensor updated by tensor singular value thresholding
(ADMM); here the (sub)gradient of the nuclear norm flows directly through ``torch.linalg.svdvals`` (stable: the
backward of singular values needs no division by singular-value gaps).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LOWRANK_MODES", "LowRankLoss", "nuclear_norm", "relation_tensor", "tensor_nuclear_norm"]

LOWRANK_MODES = ("relation", "sample")


def nuclear_norm(x: Tensor) -> Tensor:
    """Nuclear norm (sum of singular values) of a matrix or a batch of matrices.

    Args:
        x: ``[..., m, n]`` real or complex.

    Returns:
        ``[...]`` real.
    """
    if x.ndim < 2:
        raise ValueError(f"nuclear_norm needs a matrix [..., m, n], got shape {tuple(x.shape)}")
    return torch.linalg.svdvals(x).sum(dim=-1)


def tensor_nuclear_norm(x: Tensor) -> Tensor:
    """Tensor nuclear norm of a third-order tensor under the t-product (t-SVD; Lu et al., "Tensor robust principal
    component analysis with a new tensor nuclear norm", TPAMI 2020, https://arxiv.org/abs/1804.03728).

    ``TNN(X) = (1 / n3) sum_k ||X_hat[:, :, k]||_*`` with ``X_hat = fft(X, dim=-1)``. For ``n3 = 1`` it is the
    matrix nuclear norm.

    Args:
        x: ``[n1, n2, n3]`` real.

    Returns:
        scalar.
    """
    if x.ndim != 3:
        raise ValueError(f"tensor_nuclear_norm needs a tensor [n1, n2, n3], got shape {tuple(x.shape)}")
    slices = torch.fft.fft(x, dim=-1).permute(2, 0, 1)  # [n3, n1, n2] complex
    return nuclear_norm(slices).sum() / x.shape[-1]


def relation_tensor(embeddings: Tensor) -> Tensor:
    """Cosine relations between the samples, one slice per modality.

    Args:
        embeddings: ``[B, M, D]``.

    Returns:
        ``[B, B, M]`` with ``out[i, j, m] = cos(embeddings[i, m], embeddings[j, m])``.
    """
    if embeddings.ndim != 3:
        raise ValueError(f"embeddings must be [B, M, D], got shape {tuple(embeddings.shape)}")
    unit = F.normalize(embeddings, dim=-1)
    return torch.einsum("imd,jmd->ijm", unit, unit)


class LowRankLoss(nn.Module):
    """Normalised low-rank penalty on the stacked modality embeddings of a batch (see the module docstring).

    Args:
        mode: ``"relation"`` (t-SVD nuclear norm of the cosine relation tensor ``[B, B, M]``, the paper's) or
            ``"sample"`` (nuclear norm of each patient's ``[M, D]`` matrix).

    Raises:
        ValueError: for an unknown mode.
    """

    def __init__(self, mode: str = "relation") -> None:
        super().__init__()
        if mode not in LOWRANK_MODES:
            raise ValueError(f"unknown low-rank mode {mode!r}; choose one of {list(LOWRANK_MODES)}")
        self.mode = mode

    def forward(self, embeddings: Tensor, present: Tensor | None = None) -> Tensor:
        """Compute the penalty.

        Args:
            embeddings: ``[B, M, D]`` per-modality embeddings of each sample.
            present: bool ``[B, M]``, which modalities each sample has (default: all).

        Returns:
            scalar: ``"relation"`` in ``[1, ...)`` (1 = the modalities induce identical relations), ``"sample"``
            in ``[1, sqrt(M)]``. A zero that keeps the graph when no sample qualifies (fewer than 2 complete
            samples for ``"relation"``, no sample with 2+ modalities for ``"sample"``).

        Raises:
            ValueError: for wrong shapes.
        """
        if embeddings.ndim != 3:
            raise ValueError(f"embeddings must be [B, M, D], got shape {tuple(embeddings.shape)}")
        batch, n_modalities, _ = embeddings.shape
        if present is None:
            present = torch.ones(batch, n_modalities, dtype=torch.bool, device=embeddings.device)
        if present.dtype != torch.bool or tuple(present.shape) != (batch, n_modalities):
            raise ValueError(
                f"present must be a bool tensor of shape {(batch, n_modalities)}, got {present.dtype} "
                f"{tuple(present.shape)}"
            )
        zero = embeddings.sum() * 0.0
        if self.mode == "relation":
            complete = present.all(dim=1)
            if int(complete.sum()) < 2:
                return zero
            relations = relation_tensor(embeddings[complete])
            return tensor_nuclear_norm(relations) / relations.shape[0]
        unit = F.normalize(embeddings, dim=-1) * present[..., None]  # absent rows are zero: no singular value
        counts = present.sum(dim=1)
        usable = counts >= 2
        if not bool(usable.any()):
            return zero
        per_sample = nuclear_norm(unit[usable]) / counts[usable].to(embeddings.dtype).sqrt()
        return per_sample.mean()

    def extra_repr(self) -> str:
        """The mode, for ``print(module)``."""
        return f"mode={self.mode!r}"

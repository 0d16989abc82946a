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

"""Attention-based MIL (ABMIL) with the gated attention of Ilse et al. 2018.

Ilse, Tomczak, Welling, "Attention-based Deep Multiple Instance Learning", ICML 2018,
https://arxiv.org/abs/1802.04712.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from monai_ext.networks.mil.pooling import check_common_args, masked_softmax, prepare_bag, projection


class AttentionScorer(nn.Module):
    """Per-patch attention logits ``w^T (tanh(V h) * sigmoid(U h))`` (gated) or ``w^T tanh(V h)`` (plain).

    Ilse et al. 2018, eq. 8-9 (https://arxiv.org/abs/1802.04712). ``n_branches > 1`` gives one logit per branch
    (the multi-branch attention of CLAM-MB).

    Args:
        in_dim: size of the patch embeddings ``h``.
        attention_dim: size ``L`` of the hidden attention layer.
        n_branches: number of attention logits per patch.
        gated: use the sigmoid gate.
        dropout: dropout probability after the hidden attention layer.
    """

    def __init__(
        self,
        *,
        in_dim: int,
        attention_dim: int,
        n_branches: int = 1,
        gated: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if attention_dim < 1 or n_branches < 1:
            raise ValueError(f"attention_dim and n_branches must be positive, got {attention_dim}, {n_branches}")
        self.gated = gated
        self.tanh_branch = nn.Sequential(nn.Linear(in_dim, attention_dim), nn.Tanh())
        self.gate_branch = nn.Sequential(nn.Linear(in_dim, attention_dim), nn.Sigmoid()) if gated else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.to_logits = nn.Linear(attention_dim, n_branches)

    def forward(self, h: Tensor) -> Tensor:
        """Map ``h: [B, N, E]`` to attention logits ``[B, n_branches, N]``."""
        hidden = self.tanh_branch(h)
        if self.gated:
            hidden = hidden * self.gate_branch(h)
        return self.to_logits(self.dropout(hidden)).transpose(1, 2)


class ABMIL(nn.Module):
    """Gated attention MIL pooling: ``embedding = sum_n a_n h_n`` with ``a = softmax(w^T (tanh(V h) * sigm(U h)))``.

    Ilse et al. 2018 (https://arxiv.org/abs/1802.04712); the ``Linear(in_dim, hidden_dim) -> ReLU`` projection in
    front follows the usual setting for pre-extracted pathology features (CLAM, Lu et al. 2021).

    Args:
        in_dim: patch feature size ``D``.
        hidden_dim: size ``E`` of the projected patches and of the bag embedding (``out_dim``).
        attention_dim: size of the hidden attention layer (``L`` in the paper).
        gated: use the gated attention (``False`` gives the plain ``tanh`` attention of the paper).
        dropout: dropout probability after the projection and in the attention layer.

    Forward returns ``embedding [B, E]`` and ``attention [B, N]`` (softmax over real patches, 0 on padding).
    """

    def __init__(
        self,
        *,
        in_dim: int,
        hidden_dim: int = 512,
        attention_dim: int = 128,
        gated: bool = True,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        check_common_args(in_dim, hidden_dim, dropout)
        self.in_dim = in_dim
        self.out_dim = hidden_dim
        self.encoder = projection(in_dim, hidden_dim, dropout)
        self.scorer = AttentionScorer(in_dim=hidden_dim, attention_dim=attention_dim, gated=gated, dropout=dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """Pool ``x: [B, N, D]`` (``mask: [B, N]``, True = real) into ``embedding [B, E]``."""
        x, mask = prepare_bag(x, mask, self.in_dim)
        h = self.encoder(x)  # [B, N, E]
        attention = masked_softmax(self.scorer(h)[:, 0], mask)  # [B, N]
        embedding = torch.einsum("bn,bne->be", attention, h)
        return {"embedding": embedding, "attention": attention}

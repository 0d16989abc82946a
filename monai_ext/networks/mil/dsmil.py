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

"""DSMIL: dual-stream MIL with a max-pooling instance stream and a critical-instance attention stream.

Li, Li, Eliceiri, "Dual-stream Multiple Instance Learning Network for Whole Slide Image Classification with
Self-supervised Contrastive Learning", CVPR 2021, https://arxiv.org/abs/2011.08939.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from monai_ext.networks.mil.pooling import check_common_args, masked_softmax, prepare_bag


class DSMIL(nn.Module):
    """Dual-stream MIL (Li et al. 2021, https://arxiv.org/abs/2011.08939).

    Stream 1 scores every patch with a linear instance classifier; its top patch per class is the critical
    instance ``m_c``. Stream 2 attends from each critical instance's query to all patches,
    ``a_{c,n} = softmax_n(<q_n, q_{m_c}> / sqrt(L))``, and pools the value embeddings into one bag embedding per
    class, ``b_c = sum_n a_{c,n} v_n``; a 1D convolution over the ``C x H`` embeddings gives the bag scores.
    The paper trains with ``0.5 * BCE(logits) + 0.5 * BCE(max_instance_logits)``.

    Args:
        in_dim: patch feature size ``D``.
        hidden_dim: size ``H`` of the value embeddings; the bag embedding is the ``n_classes`` per-class
            embeddings concatenated (``out_dim = n_classes * H``).
        attention_dim: size ``L`` of the queries.
        n_classes: number of classes ``C``.
        dropout: dropout probability on the features before the value projection.

    Forward returns ``embedding [B, C * H]``, ``attention [B, N]`` (mean over classes of ``class_attention``),
    ``class_attention [B, C, N]``, ``instance_logits [B, N, C]`` (0 on padding), ``max_instance_logits [B, C]``
    (the instance stream's bag score) and ``logits [B, C]`` (the attention stream's bag score).
    """

    def __init__(
        self,
        *,
        in_dim: int,
        hidden_dim: int = 512,
        attention_dim: int = 128,
        n_classes: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_common_args(in_dim, hidden_dim, dropout)
        if attention_dim < 1 or n_classes < 1:
            raise ValueError(f"attention_dim and n_classes must be positive, got {attention_dim}, {n_classes}")
        self.in_dim = in_dim
        self.out_dim = n_classes * hidden_dim
        self.instance_classifier = nn.Linear(in_dim, n_classes)
        self.query = nn.Sequential(
            nn.Linear(in_dim, attention_dim), nn.ReLU(), nn.Linear(attention_dim, attention_dim), nn.Tanh()
        )
        self.value = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, hidden_dim), nn.ReLU())
        self.bag_classifier = nn.Conv1d(n_classes, n_classes, kernel_size=hidden_dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """Pool ``x: [B, N, D]`` (``mask: [B, N]``, True = real) into ``embedding [B, C * H]``."""
        x, mask = prepare_bag(x, mask, self.in_dim)
        instance_logits = self.instance_classifier(x).masked_fill(~mask.unsqueeze(-1), float("-inf"))  # [B, N, C]
        max_instance_logits, critical = instance_logits.max(dim=1)  # [B, C], [B, C]
        queries = self.query(x)  # [B, N, L]
        critical_queries = queries.gather(1, critical.unsqueeze(-1).expand(-1, -1, queries.shape[-1]))  # [B, C, L]
        scores = torch.einsum("bnl,bcl->bcn", queries, critical_queries) / math.sqrt(queries.shape[-1])
        attention = masked_softmax(scores, mask)  # [B, C, N]
        class_embeddings = torch.einsum("bcn,bnh->bch", attention, self.value(x))  # [B, C, H]
        return {
            "embedding": class_embeddings.flatten(1),
            "attention": attention.mean(dim=1),
            "class_attention": attention,
            "instance_logits": instance_logits.masked_fill(~mask.unsqueeze(-1), 0.0),
            "max_instance_logits": max_instance_logits,
            "logits": self.bag_classifier(class_embeddings).squeeze(-1),
        }

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

"""CLAM: clustering-constrained attention MIL, single-branch (SB) and multi-branch (MB).

Lu et al., "Data-efficient and weakly supervised computational pathology on whole-slide images",
Nature Biomedical Engineering 2021, https://arxiv.org/abs/2004.09666. The bag pooling is gated attention
(:mod:`monai_ext.networks.mil.abmil`); the instance-level clustering loss is computed when ``bag_label`` is given:
for the bag's class, the ``k`` most attended patches are pseudo-labelled positive and the ``k`` least attended
negative; with ``subtyping=True`` the ``k`` most attended patches of every other class's branch are also
pseudo-labelled negative for that class. The loss on the pseudo labels is cross-entropy or the smooth top-1 SVM
loss of Berrada et al. 2018 (https://arxiv.org/abs/1802.07595), the paper's default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from monai_ext.networks.mil.abmil import AttentionScorer
from monai_ext.networks.mil.pooling import check_common_args, masked_softmax, prepare_bag, projection

INSTANCE_LOSSES = ("ce", "svm")


def smooth_top1_svm_loss(scores: Tensor, target: Tensor, alpha: float = 1.0, tau: float = 1.0) -> Tensor:
    """Smooth top-1 multiclass SVM loss ``tau * log sum_j exp((alpha [j != y] + s_j) / tau) - s_y``, averaged.

    Berrada, Zisserman, Kumar, "Smooth Loss Functions for Deep Top-k Classification", ICLR 2018,
    https://arxiv.org/abs/1802.07595 (eq. 12 with k = 1); ``tau -> 0`` gives the multiclass hinge loss.

    Args:
        scores: ``[M, K]`` class scores.
        target: int64 ``[M]`` true classes.
        alpha: margin.
        tau: temperature (> 0).

    Returns:
        the scalar mean loss.
    """
    margin = alpha * (1.0 - F.one_hot(target, scores.shape[-1]).to(scores.dtype))  # [M, K]
    smooth_max = tau * torch.logsumexp((scores + margin) / tau, dim=-1)  # [M]
    return (smooth_max - scores.gather(1, target.unsqueeze(1)).squeeze(1)).mean()


class _CLAMBase(nn.Module):
    """Projection, gated attention with ``n_branches`` branches and the per-class instance classifiers."""

    def __init__(
        self,
        *,
        in_dim: int,
        hidden_dim: int,
        attention_dim: int,
        n_classes: int,
        n_branches: int,
        k_sample: int,
        instance_loss: str,
        subtyping: bool,
        gated: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        check_common_args(in_dim, hidden_dim, dropout)
        if n_classes < 1 or k_sample < 1:
            raise ValueError(f"n_classes and k_sample must be positive, got {n_classes}, {k_sample}")
        if instance_loss not in INSTANCE_LOSSES:
            raise ValueError(f"instance_loss must be one of {INSTANCE_LOSSES}, got {instance_loss!r}")
        self.in_dim = in_dim
        self.n_classes = n_classes
        self.k_sample = k_sample
        self.use_svm = instance_loss == "svm"
        self.subtyping = subtyping
        self.multi_branch = n_branches > 1
        self.encoder = projection(in_dim, hidden_dim, dropout)
        self.scorer = AttentionScorer(
            in_dim=hidden_dim, attention_dim=attention_dim, n_branches=n_branches, gated=gated, dropout=dropout
        )
        self.instance_classifiers = nn.ModuleList([nn.Linear(hidden_dim, 2) for _ in range(n_classes)])

    def _pseudo_label_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        return smooth_top1_svm_loss(logits, target) if self.use_svm else F.cross_entropy(logits, target)

    def _instance_loss(self, h: Tensor, attention: Tensor, mask: Tensor, bag_label: Tensor) -> Tensor:
        """Clustering loss on top-k / bottom-k attention pseudo labels, averaged over bags.

        Args:
            h: projected patches ``[B, N, E]``.
            attention: ``[B, n_branches, N]`` softmax attention (0 on padding).
            mask: bool ``[B, N]``.
            bag_label: int64 ``[B]`` class of each bag.

        Returns:
            scalar loss; bags with fewer than 2 real patches contribute nothing.
        """
        if bag_label.shape != mask.shape[:1] or bag_label.dtype != torch.long:
            raise ValueError(
                f"bag_label must be int64 [B] = [{mask.shape[0]}], got {bag_label.dtype} of shape {bag_label.shape}"
            )
        if bool((bag_label < 0).any()) or bool((bag_label >= self.n_classes).any()):
            raise ValueError(
                f"bag_label must be in [0, {self.n_classes}), got values from {int(bag_label.min())} "
                f"to {int(bag_label.max())}"
            )
        most = attention.masked_fill(~mask.unsqueeze(1), -1.0)  # padding never among the top
        least = attention.masked_fill(~mask.unsqueeze(1), 2.0)  # nor among the bottom
        n_valid = mask.sum(dim=1)
        total = torch.zeros((), dtype=h.dtype, device=h.device)
        n_bags = 0
        for b in range(h.shape[0]):
            k = min(self.k_sample, int(n_valid[b]) // 2)
            if k == 0:
                continue
            label = int(bag_label[b])
            bag_loss = torch.zeros((), dtype=h.dtype, device=h.device)
            for c, classifier in enumerate(self.instance_classifiers):
                branch = c if self.multi_branch else 0
                top = most[b, branch].topk(k).indices
                if c == label:  # in the class: most attended -> 1, least attended -> 0
                    bottom = least[b, branch].topk(k, largest=False).indices
                    index = torch.cat([top, bottom])
                    target = torch.cat([torch.ones_like(top), torch.zeros_like(bottom)])
                    bag_loss = bag_loss + self._pseudo_label_loss(classifier(h[b, index]), target)
                elif self.subtyping:  # another class: its most attended patches -> 0
                    bag_loss = bag_loss + self._pseudo_label_loss(classifier(h[b, top]), torch.zeros_like(top))
            total = total + (bag_loss / self.n_classes if self.subtyping else bag_loss)
            n_bags += 1
        return total / max(n_bags, 1)


class CLAMSB(_CLAMBase):
    """CLAM single-branch: one gated attention map shared by all classes (Lu et al. 2021).

    https://arxiv.org/abs/2004.09666

    Args:
        in_dim: patch feature size ``D``.
        hidden_dim: size ``E`` of the projected patches and of the bag embedding (``out_dim``).
        attention_dim: size of the hidden attention layer.
        n_classes: number of bag classes (one instance classifier each).
        k_sample: number of most / least attended patches pseudo-labelled per bag.
        instance_loss: ``"ce"`` (cross-entropy) or ``"svm"`` (smooth top-1 SVM, the paper's choice).
        subtyping: also push the most attended patches of the other classes to negative (mutually exclusive
            classes, e.g. subtypes).
        gated: use gated attention.
        dropout: dropout probability after the projection and in the attention layer.

    Forward ``(x [B, N, D], mask [B, N] | None, bag_label [B] | None)`` returns ``embedding [B, E]``,
    ``attention [B, N]`` and, when ``bag_label`` is given, the scalar ``instance_loss``.
    """

    def __init__(
        self,
        *,
        in_dim: int,
        hidden_dim: int = 512,
        attention_dim: int = 256,
        n_classes: int = 2,
        k_sample: int = 8,
        instance_loss: str = "svm",
        subtyping: bool = False,
        gated: bool = True,
        dropout: float = 0.25,
    ) -> None:
        super().__init__(
            in_dim=in_dim,
            hidden_dim=hidden_dim,
            attention_dim=attention_dim,
            n_classes=n_classes,
            n_branches=1,
            k_sample=k_sample,
            instance_loss=instance_loss,
            subtyping=subtyping,
            gated=gated,
            dropout=dropout,
        )
        self.out_dim = hidden_dim

    def forward(self, x: Tensor, mask: Tensor | None = None, bag_label: Tensor | None = None) -> dict[str, Tensor]:
        """Pool ``x: [B, N, D]`` into ``embedding [B, E]``; add ``instance_loss`` when ``bag_label [B]`` is given."""
        x, mask = prepare_bag(x, mask, self.in_dim)
        h = self.encoder(x)  # [B, N, E]
        attention = masked_softmax(self.scorer(h), mask)  # [B, 1, N]
        out = {"embedding": torch.einsum("bn,bne->be", attention[:, 0], h), "attention": attention[:, 0]}
        if bag_label is not None:
            out["instance_loss"] = self._instance_loss(h, attention, mask, bag_label)
        return out


class CLAMMB(_CLAMBase):
    """CLAM multi-branch: one gated attention map, bag embedding and bag score per class (Lu et al. 2021).

    https://arxiv.org/abs/2004.09666

    Args:
        in_dim: patch feature size ``D``.
        hidden_dim: size ``H`` of the projected patches; the bag embedding is the ``n_classes`` per-class
            embeddings concatenated (``out_dim = n_classes * H``).
        attention_dim: size of the hidden attention layer.
        n_classes: number of bag classes ``C`` (one attention branch, bag score and instance classifier each).
        k_sample: number of most / least attended patches pseudo-labelled per bag.
        instance_loss: ``"ce"`` (cross-entropy) or ``"svm"`` (smooth top-1 SVM, the paper's choice).
        subtyping: also push the most attended patches of the other classes' branches to negative.
        gated: use gated attention.
        dropout: dropout probability after the projection and in the attention layer.

    Forward ``(x [B, N, D], mask [B, N] | None, bag_label [B] | None)`` returns ``embedding [B, C * H]``,
    ``attention [B, N]`` (mean of the class branches), ``class_attention [B, C, N]``, ``logits [B, C]`` (the
    paper's per-class bag scores) and, when ``bag_label`` is given, the scalar ``instance_loss``.
    """

    def __init__(
        self,
        *,
        in_dim: int,
        hidden_dim: int = 512,
        attention_dim: int = 256,
        n_classes: int = 2,
        k_sample: int = 8,
        instance_loss: str = "svm",
        subtyping: bool = False,
        gated: bool = True,
        dropout: float = 0.25,
    ) -> None:
        super().__init__(
            in_dim=in_dim,
            hidden_dim=hidden_dim,
            attention_dim=attention_dim,
            n_classes=n_classes,
            n_branches=n_classes,
            k_sample=k_sample,
            instance_loss=instance_loss,
            subtyping=subtyping,
            gated=gated,
            dropout=dropout,
        )
        self.out_dim = n_classes * hidden_dim
        self.bag_classifiers = nn.ModuleList([nn.Linear(hidden_dim, 1) for _ in range(n_classes)])

    def forward(self, x: Tensor, mask: Tensor | None = None, bag_label: Tensor | None = None) -> dict[str, Tensor]:
        """Pool ``x: [B, N, D]`` into ``embedding [B, C * H]``; add ``instance_loss`` when ``bag_label`` is given."""
        x, mask = prepare_bag(x, mask, self.in_dim)
        h = self.encoder(x)  # [B, N, H]
        attention = masked_softmax(self.scorer(h), mask)  # [B, C, N]
        class_embeddings = torch.einsum("bcn,bnh->bch", attention, h)
        scores: list[Tensor] = []
        for c, classifier in enumerate(self.bag_classifiers):
            scores.append(classifier(class_embeddings[:, c]))  # [B, 1]
        logits = torch.cat(scores, dim=1)  # [B, C]
        out = {
            "embedding": class_embeddings.flatten(1),
            "attention": attention.mean(dim=1),
            "class_attention": attention,
            "logits": logits,
        }
        if bag_label is not None:
            out["instance_loss"] = self._instance_loss(h, attention, mask, bag_label)
        return out

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

"""The slide-text alignment loss against a NumPy hand computation of InfoNCE over classes, with masked classes
and unlabelled samples left out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_ext.losses.alignment import TextAlignmentLoss


def reference(similarity: np.ndarray, labels: np.ndarray, mask: np.ndarray, temperature: float) -> float:
    """Mean over usable rows of -log(exp(s_y / t) / sum over valid classes of exp(s_k / t)), in float64."""
    losses = []
    for s, y, m in zip(similarity, labels, mask, strict=True):
        if y < 0 or not m[y]:
            continue
        logits = s[m] / temperature
        log_norm = np.log(np.exp(logits - logits.max()).sum()) + logits.max()
        losses.append(log_norm - s[y] / temperature)
    return float(np.mean(losses)) if losses else 0.0


@pytest.mark.parametrize("temperature", [0.07, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_hand_computation(temperature: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    similarity = rng.uniform(-1, 1, (6, 4))
    labels = rng.integers(-1, 4, 6)
    mask = rng.random((6, 4)) > 0.2
    loss = TextAlignmentLoss(temperature)(
        torch.tensor(similarity, dtype=torch.float64), torch.tensor(labels), torch.tensor(mask)
    )
    assert loss.item() == pytest.approx(reference(similarity, labels, mask, temperature), rel=1e-10, abs=1e-12)


def test_masked_classes_and_unlabelled_rows_do_not_count() -> None:
    similarity = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.8, 0.0], [0.5, 0.5, 0.5]])
    mask = torch.tensor([[True, True, False], [True, True, True], [True, True, True]])
    labels = torch.tensor([0, 1, -1])
    loss = TextAlignmentLoss()(similarity, labels, mask)
    other = similarity.clone()
    other[0, 2] = 5.0  # a masked class
    other[2] = torch.tensor([-1.0, 1.0, 0.0])  # an unlabelled row
    assert TextAlignmentLoss()(other, labels, mask) == loss
    # a row whose true class has no text is skipped too
    assert TextAlignmentLoss()(similarity, torch.tensor([2, 1, -1]), mask) == TextAlignmentLoss()(
        similarity[1:2], labels[1:2], mask[1:2]
    )


def test_gradient_pulls_the_true_class_closer() -> None:
    similarity = torch.zeros(2, 3, requires_grad=True)
    TextAlignmentLoss()(similarity, torch.tensor([2, 0])).backward()
    assert similarity.grad[0, 2] < 0 and similarity.grad[1, 0] < 0
    assert (similarity.grad[0, :2] > 0).all() and (similarity.grad[1, 1:] > 0).all()


def test_no_usable_row_gives_an_attached_zero() -> None:
    similarity = torch.rand(2, 3, requires_grad=True)
    loss = TextAlignmentLoss()(similarity, torch.tensor([-1, -1]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(similarity.grad, torch.zeros(2, 3))


def test_ill_arg() -> None:
    with pytest.raises(ValueError, match="temperature"):
        TextAlignmentLoss(0.0)
    loss = TextAlignmentLoss()
    with pytest.raises(ValueError, match=r"similarity \[B, K\]"):
        loss(torch.rand(2, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="class indices"):
        loss(torch.rand(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="mask must be bool"):
        loss(torch.rand(2, 3), torch.tensor([0, 1]), torch.ones(2, 3))

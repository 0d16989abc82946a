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

"""Mean and max pooling against NumPy on the real patches of each bag, and the masked softmax."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_ext.networks.mil import MaxPooling, MeanPooling, masked_softmax


def padded_batch(sizes: list[int], dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(sizes), max(sizes), dim, generator=gen) * 3
    mask = torch.arange(max(sizes))[None] < torch.tensor(sizes)[:, None]
    return x, mask


@pytest.mark.parametrize("sizes", [[1], [5, 2, 9]])
def test_mean_matches_numpy(sizes: list[int]) -> None:
    x, mask = padded_batch(sizes, 6)
    out = MeanPooling(in_dim=6)(x, mask)
    for b, n in enumerate(sizes):
        np.testing.assert_allclose(out["embedding"][b].numpy(), x[b, :n].numpy().mean(axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out["attention"][b, :n].numpy(), np.full(n, 1.0 / n), rtol=1e-6)


@pytest.mark.parametrize("sizes", [[1], [5, 2, 9]])
def test_max_matches_numpy(sizes: list[int]) -> None:
    x, mask = padded_batch(sizes, 6)
    x[~mask] = 100.0  # padding larger than every real value must not win
    out = MaxPooling(in_dim=6)(x, mask)
    for b, n in enumerate(sizes):
        real = x[b, :n].numpy()
        np.testing.assert_array_equal(out["embedding"][b].numpy(), real.max(axis=0))
        wins = np.bincount(real.argmax(axis=0), minlength=n) / real.shape[1]
        np.testing.assert_allclose(out["attention"][b, :n].numpy(), wins, rtol=1e-6)


def test_projection_changes_out_dim() -> None:
    model = MeanPooling(in_dim=6, hidden_dim=4).eval()
    x, mask = padded_batch([3], 6)
    out = model(x, mask)
    linear = model.encoder[0]
    expected = torch.relu(x[0] @ linear.weight.T + linear.bias).mean(dim=0)
    assert model.out_dim == 4
    torch.testing.assert_close(out["embedding"][0], expected)


def test_masked_softmax_matches_softmax_of_real_entries() -> None:
    scores = torch.randn(2, 3, 7)
    mask = torch.tensor([[True] * 7, [True, False, True, True, False, False, False]])
    out = masked_softmax(scores, mask)
    torch.testing.assert_close(out[0], torch.softmax(scores[0], dim=-1))
    torch.testing.assert_close(out[1][:, mask[1]], torch.softmax(scores[1][:, mask[1]], dim=-1))
    assert (out[1][:, ~mask[1]] == 0).all()

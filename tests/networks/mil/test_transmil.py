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

"""TransMIL: Nystrom attention against exact attention when every token is a landmark, the pseudo-inverse
against ``torch.linalg.pinv``, the fused PPEG against the paper's three convolutions, the class-token shortcut of
layer 2 against a full exact layer written out here, and a large bag."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monai_ext.networks.mil import PPEG, NystromLayer, TransMIL, nystrom_attention
from monai_ext.networks.mil.transmil import depthwise_conv2d, iterative_pinv, segment_means


@pytest.mark.parametrize(("n", "m"), [(12, 12), (12, 4), (10, 3), (1000, 256)])
def test_segment_means(n: int, m: int) -> None:
    t = torch.randn(2, n, 3)
    out = segment_means(t, m).numpy()
    segment = np.array([i * m // n for i in range(n)])
    for j in range(m):
        np.testing.assert_allclose(out[:, j], t.numpy()[:, segment == j].mean(axis=1), rtol=1e-5, atol=1e-6)
    sizes = np.bincount(segment)
    assert sizes.max() - sizes.min() <= 1, "segments of nearly equal size"


def test_iterative_pinv_matches_linalg() -> None:
    a = torch.softmax(torch.randn(3, 16, 16, dtype=torch.float64), dim=-1)
    torch.testing.assert_close(iterative_pinv(a, 30), torch.linalg.pinv(a), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n", [5, 64])
def test_nystrom_is_exact_with_every_token_a_landmark(n: int) -> None:
    q, k, v = torch.randn(3, 4, n, 8, dtype=torch.float64).unbind(0)
    exact = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1) @ v
    torch.testing.assert_close(nystrom_attention(q, k, v, n, 40), exact, rtol=1e-6, atol=1e-6)


def test_nystrom_approximates_smooth_attention() -> None:
    """With fewer landmarks than tokens the error stays small for low-temperature attention."""
    q, k, v = (0.3 * torch.randn(3, 2, 500, 8)).unbind(0)
    exact = F.scaled_dot_product_attention(q, k, v)
    error = (nystrom_attention(q, k, v, 50, 6) - exact).abs().max()
    assert error < 0.05 * v.abs().max()


@pytest.mark.parametrize("n", [1, 2, 5, 16, 17])
def test_fused_ppeg_matches_three_convolutions(n: int) -> None:
    torch.manual_seed(0)
    ppeg = PPEG(dim=6)
    tokens = torch.randn(n, 6)
    side = math.ceil(math.sqrt(n))
    filled = torch.cat([tokens, tokens[: side * side - n]]) if side * side > n else tokens
    grid = filled.T.reshape(1, 6, side, side)
    expected = grid + ppeg.proj7(grid) + ppeg.proj5(grid) + ppeg.proj3(grid)
    torch.testing.assert_close(ppeg(tokens), expected.reshape(6, -1).T[:n], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("batch", "k"), [(1, 7), (2, 3)])
def test_depthwise_conv_and_its_gradients(batch: int, k: int) -> None:
    """The custom backward against finite differences, the forward against ``F.conv2d`` (non-square grid)."""
    x = torch.randn(batch, 4, 6, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 1, k, k, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(depthwise_conv2d(x, weight, bias), F.conv2d(x, weight, bias, padding=k // 2, groups=4))
    assert torch.autograd.gradcheck(depthwise_conv2d, (x, weight, bias))


def exact_layer(layer: NystromLayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer with plain full softmax attention on every token: outputs ``[N, dim]``, weights ``[H, N, N]``."""
    n, dim = x.shape
    heads = layer.n_heads
    q, k, v = (t.reshape(n, heads, -1).transpose(0, 1) for t in layer.to_qkv(layer.norm(x)).chunk(3, dim=-1))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // heads), dim=-1)
    out = weights @ v + layer.value_conv(v[None])[0]
    return x + layer.to_out(out.transpose(0, 1).reshape(n, dim)), weights


@pytest.mark.parametrize("n", [1, 20, 40])
def test_class_token_shortcut_is_exact(n: int) -> None:
    torch.manual_seed(0)
    layer = NystromLayer(dim=8, n_heads=2, num_landmarks=4, pinv_iterations=6, residual_kernel=33, dropout=0.0)
    x = torch.randn(n, 8)
    cls, weights = layer.forward_first(x)
    expected, all_weights = exact_layer(layer, x)
    torch.testing.assert_close(cls, expected[0])
    torch.testing.assert_close(weights, all_weights[:, 0])


@pytest.mark.parametrize("n", [6, 50])
def test_transmil_composition(n: int) -> None:
    """``norm(layer2(ppeg(layer1([cls, h]))))[0]`` written out, with an exact full layer 2."""
    torch.manual_seed(0)
    model = TransMIL(in_dim=5, hidden_dim=8, n_heads=2, num_landmarks=16, residual_kernel=5).eval()
    x = torch.randn(1, n, 5)
    out = model(x)
    tokens = model.layer1(torch.cat([model.cls_token, model.encoder(x[0])]))
    tokens = torch.cat([tokens[:1], model.ppeg(tokens[1:])])
    last, weights = exact_layer(model.layer2, tokens)
    patch_weights = weights[:, 0, 1:].mean(dim=0)
    torch.testing.assert_close(out["embedding"][0], model.norm(last[0]))
    torch.testing.assert_close(out["attention"][0], patch_weights / patch_weights.sum())


@pytest.mark.slow
def test_large_bag_forward_backward() -> None:
    """A 10k-patch bag of 1024-d features with the default (paper) configuration, Nystrom path in layer 1."""
    torch.manual_seed(0)
    model = TransMIL(in_dim=1024)
    x = torch.randn(1, 10_000, 1024)
    out = model(x)
    out["embedding"].sum().backward()
    assert out["embedding"].shape == (1, 512)
    torch.testing.assert_close(out["attention"].sum(), torch.tensor(1.0))
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name

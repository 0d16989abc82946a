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

"""Fusion building blocks against independent references: ``torch.nn.MultiheadAttention``, hand-written
softmax, mean and gated-attention formulas."""

from __future__ import annotations

import pytest
import torch

from monai_ext.networks.fusion.layers import GatedAttentionPool, MaskedAttention, masked_mean, masked_softmax


def load_from_mha(attention: MaskedAttention, mha: torch.nn.MultiheadAttention) -> None:
    """Copy the weights of a ``MultiheadAttention`` into a ``MaskedAttention``."""
    q, k, v = mha.in_proj_weight.chunk(3)
    qb, kb, vb = mha.in_proj_bias.chunk(3)
    with torch.no_grad():
        for proj, w, b in ((attention.q_proj, q, qb), (attention.k_proj, k, kb), (attention.v_proj, v, vb)):
            proj.weight.copy_(w)
            proj.bias.copy_(b)
        attention.out_proj.weight.copy_(mha.out_proj.weight)
        attention.out_proj.bias.copy_(mha.out_proj.bias)


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("n_heads", [1, 4])
def test_masked_attention_matches_multihead_attention(need_weights: bool, n_heads: int) -> None:
    torch.manual_seed(0)
    dim, n_q, n_k = 16, 5, 11
    mha = torch.nn.MultiheadAttention(dim, n_heads, batch_first=True).eval()
    attention = MaskedAttention(dim, n_heads=n_heads).eval()
    load_from_mha(attention, mha)
    query, context = torch.randn(3, n_q, dim), torch.randn(3, n_k, dim)
    key_mask = torch.arange(n_k)[None, :] < torch.tensor([[11], [4], [1]])
    expected, expected_weights = mha(query, context, context, key_padding_mask=~key_mask, average_attn_weights=True)
    out, weights = attention(query, context, key_mask, need_weights=need_weights)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    if need_weights:
        torch.testing.assert_close(weights, expected_weights, rtol=1e-5, atol=1e-6)
    else:
        assert weights is None


@pytest.mark.parametrize("need_weights", [False, True])
def test_masked_attention_without_keys_contributes_nothing(need_weights: bool) -> None:
    torch.manual_seed(0)
    attention = MaskedAttention(8, n_heads=2)
    query = torch.randn(2, 3, 8, requires_grad=True)
    context = torch.randn(2, 4, 8)
    key_mask = torch.tensor([[True, True, False, False], [False] * 4])
    out, weights = attention(query, context, key_mask, need_weights=need_weights)
    assert (out[1] == 0).all() and out[0].abs().sum() > 0
    if need_weights:
        assert (weights[1] == 0).all() and (weights[0][:, 2:] == 0).all()
    out.sum().backward()
    assert torch.isfinite(query.grad).all()


def test_masked_attention_ill_args() -> None:
    with pytest.raises(ValueError, match="multiple of n_heads"):
        MaskedAttention(10, n_heads=4)


def test_masked_softmax_reference() -> None:
    torch.manual_seed(0)
    scores = torch.randn(4, 6)
    mask = torch.rand(4, 6) > 0.4
    mask[2] = False
    mask[3] = True
    weights = masked_softmax(scores, mask)
    for row in range(4):
        valid = mask[row]
        expected = torch.zeros(6)
        if valid.any():
            exp = scores[row][valid].exp()
            expected[valid] = exp / exp.sum()
        torch.testing.assert_close(weights[row], expected)


def test_masked_mean_reference() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 0, 0, 0], [0] * 5, [1] * 5], dtype=torch.bool)
    out = masked_mean(x, mask)
    torch.testing.assert_close(out[0], x[0, :2].mean(0))
    torch.testing.assert_close(out[1], torch.zeros(4))
    torch.testing.assert_close(out[2], x[2].mean(0))


def test_gated_attention_pool_formula() -> None:
    """Ilse et al. 2018: a = softmax(w^T (tanh(V x) * sigmoid(U x))) over valid tokens, pooled sum_n a_n x_n."""
    torch.manual_seed(0)
    pool = GatedAttentionPool(6, hidden=4).eval()
    x = torch.randn(2, 7, 6)
    mask = torch.arange(7)[None, :] < torch.tensor([[7], [3]])
    pooled, weights = pool(x, mask)
    v, u, w = pool.tanh_branch[0], pool.gate_branch[0], pool.score
    for b in range(2):
        xb = x[b][mask[b]]
        logits = (torch.tanh(xb @ v.weight.T + v.bias) * torch.sigmoid(xb @ u.weight.T + u.bias)) @ w.weight.T + w.bias
        a = torch.softmax(logits.squeeze(-1), dim=0)
        torch.testing.assert_close(weights[b][mask[b]], a)
        torch.testing.assert_close(pooled[b], a @ xb)
    assert (weights[~mask] == 0).all()

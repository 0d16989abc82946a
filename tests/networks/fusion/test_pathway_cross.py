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

"""SurvPath layer against a dense reference: ``torch.nn.MultiheadAttention`` over the concatenated tokens with an
explicit ``N x N`` mask that blocks patch -> patch attention (small inputs only)."""

from __future__ import annotations

import torch

from monai_ext.networks.fusion import PathwayCrossFusion
from monai_ext.networks.fusion.base import concat_token_sets
from tests.networks.fusion.test_contract import DIM, MODALITIES, make_batch
from tests.networks.fusion.test_layers import load_from_mha


def test_layer_matches_dense_masked_transformer_layer() -> None:
    torch.manual_seed(0)
    fusion = PathwayCrossFusion(MODALITIES, DIM, n_heads=2).eval()
    mha = torch.nn.MultiheadAttention(DIM, 2, batch_first=True).eval()
    load_from_mha(fusion.attention, mha)
    tokens, masks = make_batch()
    register = fusion.register.expand(3, -1, -1)
    small, small_mask, _ = concat_token_sets(fusion.small_modalities, tokens, masks, register)
    patches, patch_mask = tokens["wsi"], masks["wsi"]
    n_s, n_p = small.shape[1], patches.shape[1]
    with torch.no_grad():
        new_small, new_patches, weights = fusion.layer(small, small_mask, patches, patch_mask)
        x = torch.cat([small, patches], dim=1)
        blocked = torch.zeros(n_s + n_p, n_s + n_p, dtype=torch.bool)
        blocked[n_s:, n_s:] = True  # patch queries never see patch keys
        h = fusion.norm1(x)
        key_padding = ~torch.cat([small_mask, patch_mask], dim=1)
        update, expected_weights = mha(h, h, h, attn_mask=blocked, key_padding_mask=key_padding)
        x = x + update
        x = x + fusion.ffn(fusion.norm2(x))
    torch.testing.assert_close(new_small, x[:, :n_s], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(new_patches, x[:, n_s:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weights, expected_weights[:, :n_s], rtol=1e-5, atol=1e-6)


def test_patch_attention_is_mean_small_side_attention_over_patches() -> None:
    torch.manual_seed(0)
    fusion = PathwayCrossFusion(MODALITIES, DIM, n_heads=2).eval()
    tokens, masks = make_batch()
    captured = []
    original = fusion.layer

    def spy(*args):
        result = original(*args)
        captured.append(result[2])
        return result

    fusion.layer = spy
    with torch.no_grad():
        out = fusion(tokens, masks)
    register = fusion.register.expand(3, -1, -1)
    _, small_mask, _ = concat_token_sets(fusion.small_modalities, tokens, masks, register)
    weights = captured[0]
    n_s = small_mask.shape[1]
    for b in range(3):
        over_patches = weights[b][small_mask[b]][:, n_s:].mean(dim=0)
        expected = over_patches / over_patches.sum() if over_patches.sum() > 0 else over_patches
        torch.testing.assert_close(out["attention"]["wsi"][b], expected, rtol=1e-5, atol=1e-6)


def test_return_attention_off_gives_same_embedding() -> None:
    torch.manual_seed(0)
    with_weights = PathwayCrossFusion(MODALITIES, DIM, n_heads=2).eval()
    without = PathwayCrossFusion(MODALITIES, DIM, n_heads=2, return_attention=False).eval()
    without.load_state_dict(with_weights.state_dict())
    tokens, masks = make_batch()
    with torch.no_grad():
        a, b = with_weights(tokens, masks), without(tokens, masks)
    torch.testing.assert_close(a["embedding"], b["embedding"], rtol=1e-5, atol=1e-6)
    assert "wsi" in a["attention"] and not b["attention"]

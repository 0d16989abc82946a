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

"""HMF bi-cross attention against the reference structure built from two ``torch.nn.MultiheadAttention``:
``c' = LN(c + MHA(c, p, p))`` then ``p' = LN(p + MHA(p, c', c'))``."""

from __future__ import annotations

import torch

from monai_ext.networks.fusion import BiCrossFusion
from monai_ext.networks.fusion.base import concat_token_sets
from tests.networks.fusion.test_contract import DIM, MODALITIES, make_batch
from tests.networks.fusion.test_layers import load_from_mha


def test_bi_cross_matches_two_multihead_attentions() -> None:
    torch.manual_seed(0)
    fusion = BiCrossFusion(MODALITIES, DIM, n_heads=2).eval()
    text_to_patch = torch.nn.MultiheadAttention(DIM, 2, batch_first=True).eval()
    patch_to_text = torch.nn.MultiheadAttention(DIM, 2, batch_first=True).eval()
    load_from_mha(fusion.context_to_patch, text_to_patch)
    load_from_mha(fusion.patch_to_context, patch_to_text)
    tokens, masks = make_batch(missing=False)
    register = fusion.register.expand(3, -1, -1)
    context, context_mask, _ = concat_token_sets(fusion.context_modalities, tokens, masks, register)
    patches, patch_mask = tokens["wsi"], masks["wsi"]
    with torch.no_grad():
        new_context, new_patches = fusion.bi_cross(context, context_mask, patches, patch_mask)
        update = text_to_patch(context, patches, patches, key_padding_mask=~patch_mask)[0]
        expected_context = fusion.context_norm(context + update)
        update = patch_to_text(patches, expected_context, expected_context, key_padding_mask=~context_mask)[0]
        expected_patches = fusion.patch_norm(patches + update)
    torch.testing.assert_close(new_context, expected_context, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(new_patches, expected_patches, rtol=1e-5, atol=1e-5)


def test_text_prompts_change_patch_attention() -> None:
    """Patches attend to the prompts: other prompt embeddings give another patch attention."""
    torch.manual_seed(0)
    fusion = BiCrossFusion(("wsi", "text"), DIM, n_heads=2).eval()
    tokens, masks = make_batch(modalities=("wsi", "text"), missing=False)
    with torch.no_grad():
        first = fusion(tokens, masks)["attention"]["wsi"]
        tokens["text"] = torch.randn_like(tokens["text"])
        second = fusion(tokens, masks)["attention"]["wsi"]
    assert not torch.allclose(first, second)

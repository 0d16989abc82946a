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

"""MCAT co-attention: the returned matrix against ``torch.nn.MultiheadAttention`` on the same normalised inputs,
its zero rows, and the learned global query that summarises patches when omics is missing."""

from __future__ import annotations

import pytest
import torch

from monai_ext.networks.fusion import CoAttentionFusion
from tests.networks.fusion.test_contract import DIM, MODALITIES, make_batch
from tests.networks.fusion.test_layers import load_from_mha


@pytest.fixture
def fusion_and_mha() -> tuple[CoAttentionFusion, torch.nn.MultiheadAttention]:
    torch.manual_seed(0)
    fusion = CoAttentionFusion(MODALITIES, DIM, n_heads=2, n_layers=1).eval()
    mha = torch.nn.MultiheadAttention(DIM, 2, batch_first=True).eval()
    load_from_mha(fusion.coattention, mha)
    return fusion, mha


def test_coattention_matches_multihead_attention(fusion_and_mha) -> None:
    fusion, mha = fusion_and_mha
    tokens, masks = make_batch(missing=False)
    masks["omics"][1] = False
    masks["wsi"][2] = False
    with torch.no_grad():
        out = fusion(tokens, masks)
        query = torch.cat([tokens["omics"], fusion.global_query.expand(3, -1, -1)], dim=1)
        patches = fusion.patch_norm(tokens["wsi"])
        _, expected = mha(fusion.query_norm(query), patches, patches, key_padding_mask=~masks["wsi"])
    coattention = out["coattention"]
    assert coattention.shape == (3, 5, 9)
    valid_queries = masks["omics"][0]
    torch.testing.assert_close(coattention[0][valid_queries], expected[0, :5][valid_queries], rtol=1e-5, atol=1e-6)
    assert (coattention[0][~valid_queries] == 0).all(), "padded omics tokens have no co-attention row"
    assert (coattention[1] == 0).all(), "no omics: no co-attention rows"
    assert (coattention[2] == 0).all(), "no patches: nothing to attend"
    # without omics, the patches are summarised through the global query alone: its attention is the patch attention
    torch.testing.assert_close(out["attention"]["wsi"][1], expected[1, -1], rtol=1e-5, atol=1e-6)


def test_no_coattention_without_queries_or_patches() -> None:
    torch.manual_seed(0)
    fusion = CoAttentionFusion(MODALITIES, DIM, n_heads=2).eval()
    for subset in (("wsi", "text"), ("omics", "clinical")):
        tokens, masks = make_batch(modalities=subset)
        assert "coattention" not in fusion(tokens, masks)


def test_ill_construction() -> None:
    with pytest.raises(ValueError, match="query_modality"):
        CoAttentionFusion(("wsi", "text"), DIM)
    with pytest.raises(ValueError, match="differ"):
        CoAttentionFusion(("wsi", "omics"), DIM, query_modality="wsi")
    with pytest.raises(ValueError, match="n_layers"):
        CoAttentionFusion(("wsi", "omics"), DIM, n_layers=-1)
    with pytest.raises(ValueError, match="n_heads"):
        CoAttentionFusion(("wsi", "omics"), DIM, n_heads=3)

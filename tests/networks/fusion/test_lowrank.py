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

"""Low-rank fusion equals the full multilinear fusion with the weight tensor rebuilt from its factors (Liu et al.
2018, eq. 4-6), and an absent modality drops out of the product."""

from __future__ import annotations

import pytest
import torch

from monai_ext.networks.fusion import LowRankFusion
from tests.networks.fusion.test_contract import DIM, make_batch


def _extended_means(tokens: dict, masks: dict, name: str) -> torch.Tensor:
    means = torch.stack([tokens[name][b][masks[name][b]].mean(0) for b in range(tokens[name].shape[0])])
    return torch.cat([means, torch.ones(means.shape[0], 1)], dim=1)


def test_lowrank_equals_full_tensor_fusion() -> None:
    torch.manual_seed(0)
    modalities = ("wsi", "omics", "clinical")
    fusion = LowRankFusion(modalities, DIM, out_dim=4, rank=3).eval()
    tokens, masks = make_batch(modalities=modalities, missing=False)
    with torch.no_grad():
        out = fusion(tokens, masks)["embedding"]
        w1, w2, w3 = (fusion.factors[name] for name in modalities)
        full = torch.einsum("r,rie,rje,rke->eijk", fusion.fusion_weights, w1, w2, w3)  # [E, D+1, D+1, D+1]
        z1, z2, z3 = (_extended_means(tokens, masks, name) for name in modalities)
        expected = torch.einsum("eijk,bi,bj,bk->be", full, z1, z2, z3) + fusion.fusion_bias
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_absent_modality_is_left_out_of_the_product() -> None:
    torch.manual_seed(0)
    modalities = ("wsi", "omics", "clinical")
    fusion = LowRankFusion(modalities, DIM, out_dim=4, rank=3).eval()
    tokens, masks = make_batch(modalities=modalities, missing=False)
    masks["omics"][:] = False
    with torch.no_grad():
        out = fusion(tokens, masks)["embedding"]
        w1, w3 = fusion.factors["wsi"], fusion.factors["clinical"]
        full = torch.einsum("r,rie,rke->eik", fusion.fusion_weights, w1, w3)
        z1, z3 = _extended_means(tokens, masks, "wsi"), _extended_means(tokens, masks, "clinical")
        expected = torch.einsum("eik,bi,bk->be", full, z1, z3) + fusion.fusion_bias
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_product_scale_does_not_vanish_with_modalities() -> None:
    """At init the product keeps its scale with 1 or 6 modalities (Xavier factors, as in the reference code, make
    it shrink by orders of magnitude)."""
    torch.manual_seed(0)
    scales = []
    for n in (1, 6):
        names = tuple(f"m{i}" for i in range(n))
        fusion = LowRankFusion(names, 64, rank=4, dropout=0.0).eval()
        tokens = {m: torch.randn(256, 1, 64) for m in names}
        masks = {m: torch.ones(256, 1, dtype=torch.bool) for m in names}
        with torch.no_grad():
            scales.append(fusion(tokens, masks)["embedding"].std().item())
    assert 0.25 < scales[1] / scales[0] < 4.0


def test_ill_rank() -> None:
    with pytest.raises(ValueError, match="rank"):
        LowRankFusion(("wsi",), DIM, rank=0)

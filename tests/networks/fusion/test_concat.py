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

"""Concatenation fusion against a hand computation of the masked means and missing embeddings."""

from __future__ import annotations

import torch

from monai_ext.networks.fusion import ConcatFusion
from tests.networks.fusion.test_contract import DIM, MODALITIES, make_batch


def test_concat_input_is_masked_means_and_missing_embeddings() -> None:
    torch.manual_seed(0)
    fusion = ConcatFusion(MODALITIES, DIM).eval()
    fusion.mlp = torch.nn.Identity()
    tokens, masks = make_batch()
    del tokens["text"], masks["text"]  # absent for the whole batch
    with torch.no_grad():
        out = fusion(tokens, masks)["embedding"]
    for b in range(3):
        expected = []
        for name in MODALITIES:
            if name in tokens and masks[name][b].any():
                expected.append(tokens[name][b][masks[name][b]].mean(dim=0))
            else:
                expected.append(fusion.missing.vectors[name].detach())
        torch.testing.assert_close(out[b], torch.cat(expected))


def test_concat_out_dim() -> None:
    fusion = ConcatFusion(("wsi", "omics"), DIM, out_dim=5)
    tokens, masks = make_batch(modalities=("wsi",))
    assert fusion(tokens, masks)["embedding"].shape == (3, 5)
    assert fusion.out_dim == 5

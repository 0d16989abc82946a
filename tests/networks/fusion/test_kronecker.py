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

"""Kronecker fusion: the batched product against ``torch.kron``, the fused vector against the product of the
gated vectors, exclusion of absent modalities as a block of the full product, and the default gated width."""

from __future__ import annotations

import functools

import pytest
import torch

from monai_ext.networks.fusion import KroneckerFusion
from monai_ext.networks.fusion.kronecker import batched_kronecker, default_gated_dim
from tests.networks.fusion.test_contract import DIM, make_batch


@pytest.mark.parametrize("sizes", [(3,), (2, 4), (3, 2, 4)])
def test_batched_kronecker_matches_torch_kron(sizes: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    factors = [torch.randn(5, n) for n in sizes]
    out = batched_kronecker(factors)
    for b in range(5):
        torch.testing.assert_close(out[b], functools.reduce(torch.kron, [f[b] for f in factors]))


def _fused_and_gated(fusion: KroneckerFusion, tokens: dict, masks: dict) -> tuple[torch.Tensor, dict]:
    gated, fused = {}, []
    handles = [
        unit.register_forward_hook(lambda module, args, out, name=name: gated.__setitem__(name, out))
        for name, unit in fusion.units.items()
    ]
    handles.append(fusion.encoder.register_forward_pre_hook(lambda module, args: fused.append(args[0])))
    fusion.eval()
    with torch.no_grad():
        fusion(tokens, masks)
    for handle in handles:
        handle.remove()
    return fused[0], gated


def test_fused_vector_is_kronecker_of_gated_vectors_with_absent_excluded() -> None:
    torch.manual_seed(0)
    modalities = ("wsi", "omics", "clinical")
    fusion = KroneckerFusion(modalities, DIM, gated_dim=3)
    tokens, masks = make_batch(modalities=modalities, missing=False)
    masks["omics"][1] = False  # sample 1 has wsi and clinical only
    fused, gated = _fused_and_gated(fusion, tokens, masks)
    one = torch.ones(1)
    # complete samples: the 3-way product of [o_m; 1]
    for b in (0, 2):
        factors = [torch.cat([gated[name][b], one]) for name in modalities]
        torch.testing.assert_close(fused[b], functools.reduce(torch.kron, factors))
    # sample 1: the block where omics contributes its constant 1 is the 2-way product, all else is 0
    block = fused[1].reshape(4, 4, 4)
    expected = torch.kron(torch.cat([gated["wsi"][1], one]), torch.cat([gated["clinical"][1], one])).reshape(4, 4)
    torch.testing.assert_close(block[:, 3, :], expected)
    assert (block[:, :3, :] == 0).all()


def test_gate_context_is_mean_of_present_vectors() -> None:
    """A single present modality is gated by itself: the same as a fusion built for that modality alone."""
    torch.manual_seed(0)
    fusion = KroneckerFusion(("wsi", "omics"), DIM, gated_dim=3).eval()
    tokens, masks = make_batch(modalities=("wsi", "omics"), missing=False)
    masks["omics"][:] = False
    _, gated = _fused_and_gated(fusion, tokens, masks)
    vector = torch.stack([tokens["wsi"][b][masks["wsi"][b]].mean(0) for b in range(3)])
    with torch.no_grad():
        expected = fusion.units["wsi"](vector, vector)
    torch.testing.assert_close(gated["wsi"], expected)


@pytest.mark.parametrize(("n_modalities", "expected"), [(1, 32), (2, 32), (3, 32), (4, 15), (5, 8)])
def test_default_gated_dim(n_modalities: int, expected: int) -> None:
    assert default_gated_dim(n_modalities) == expected
    assert (expected + 1) ** n_modalities <= 2**16 < (expected + 2) ** n_modalities or expected == 32


def test_too_many_modalities() -> None:
    with pytest.raises(ValueError, match="lowrank"):
        KroneckerFusion([f"m{i}" for i in range(17)], DIM)

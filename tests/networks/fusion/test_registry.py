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

"""Building fusions by name."""

from __future__ import annotations

import pytest

from monai_ext.networks.fusion import FUSIONS, FusionBase, build_fusion


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_build_every_fusion(name: str) -> None:
    fusion = build_fusion(name.upper(), modalities=("wsi", "omics"), dim=8, out_dim=4)
    assert isinstance(fusion, FUSIONS[name]) and isinstance(fusion, FusionBase)
    assert fusion.modalities == ("wsi", "omics") and fusion.dim == 8 and fusion.out_dim == 4


def test_unknown_name() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        build_fusion("attention", modalities=("wsi",), dim=8)


def test_unknown_keyword() -> None:
    with pytest.raises(ValueError, match=r"does not take \['ranks'\]"):
        build_fusion("lowrank", modalities=("wsi", "omics"), dim=8, ranks=2)

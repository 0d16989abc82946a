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

"""Multimodal fusion modules with one interface: ``forward(tokens, masks) -> {"embedding", "attention"}``.

Every fusion accepts any subset of the modalities it was built for, per-sample missing modalities (all-False
mask rows) and padded token sets; see :mod:`monai_ext.networks.fusion.base` for the contract.
"""

from __future__ import annotations

from monai_ext.networks.fusion.base import FusionBase, MissingEmbeddings
from monai_ext.networks.fusion.bicross import BiCrossFusion
from monai_ext.networks.fusion.coattention import CoAttentionFusion
from monai_ext.networks.fusion.concat import ConcatFusion
from monai_ext.networks.fusion.kronecker import KroneckerFusion
from monai_ext.networks.fusion.lowrank import LowRankFusion
from monai_ext.networks.fusion.pathway_cross import PathwayCrossFusion
from monai_ext.networks.fusion.registry import FUSIONS, build_fusion

__all__ = [
    "FUSIONS",
    "BiCrossFusion",
    "CoAttentionFusion",
    "ConcatFusion",
    "FusionBase",
    "KroneckerFusion",
    "LowRankFusion",
    "MissingEmbeddings",
    "PathwayCrossFusion",
    "build_fusion",
]

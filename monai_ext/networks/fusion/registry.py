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

"""Fusion modules by name, for configs and bundles: ``build_fusion("coattention", modalities=..., dim=256)``."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from monai_ext.networks.fusion.base import FusionBase
from monai_ext.networks.fusion.bicross import BiCrossFusion
from monai_ext.networks.fusion.coattention import CoAttentionFusion
from monai_ext.networks.fusion.concat import ConcatFusion
from monai_ext.networks.fusion.kronecker import KroneckerFusion
from monai_ext.networks.fusion.lowrank import LowRankFusion
from monai_ext.networks.fusion.pathway_cross import PathwayCrossFusion

__all__ = ["FUSIONS", "build_fusion"]

FUSIONS: dict[str, type[FusionBase]] = {
    "concat": ConcatFusion,
    "kronecker": KroneckerFusion,
    "lowrank": LowRankFusion,
    "coattention": CoAttentionFusion,
    "pathway_cross": PathwayCrossFusion,
    "bicross": BiCrossFusion,
}


def build_fusion(name: str, *, modalities: Sequence[str], dim: int, **kwargs: Any) -> FusionBase:
    """Build a fusion module by name.

    Args:
        name: one of ``FUSIONS`` (``concat``, ``kronecker``, ``lowrank``, ``coattention``, ``pathway_cross``,
            ``bicross``), case-insensitive.
        modalities: modality names the fusion must accept (any subset of them at run time).
        dim: shared token dimension ``D``.
        kwargs: keyword arguments of that fusion's constructor (e.g. ``out_dim``, ``rank``, ``n_heads``).

    Returns:
        The fusion module.

    Raises:
        ValueError: for an unknown name or a keyword the fusion does not take.
    """
    key = name.lower()
    if key not in FUSIONS:
        raise ValueError(f"unknown fusion {name!r}; choose one of {sorted(FUSIONS)}")
    cls = FUSIONS[key]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "modalities", "dim"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"fusion {key!r} does not take {unknown}; it accepts {sorted(accepted)}")
    return cls(modalities=modalities, dim=dim, **kwargs)

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

"""MIL aggregators by name, for configs and bundles: ``build_aggregator("abmil", in_dim=1024)``."""

from __future__ import annotations

from torch import nn

from monai_ext.networks.mil.abmil import ABMIL
from monai_ext.networks.mil.clam import CLAMMB, CLAMSB
from monai_ext.networks.mil.dsmil import DSMIL
from monai_ext.networks.mil.pooling import MaxPooling, MeanPooling
from monai_ext.networks.mil.transmil import TransMIL

AGGREGATORS: dict[str, type[nn.Module]] = {
    "mean": MeanPooling,
    "max": MaxPooling,
    "abmil": ABMIL,
    "clam_sb": CLAMSB,
    "clam_mb": CLAMMB,
    "transmil": TransMIL,
    "dsmil": DSMIL,
}


def build_aggregator(name: str, **kwargs: object) -> nn.Module:
    """Build the MIL aggregator called ``name`` with its keyword arguments.

    Every aggregator maps ``x: [B, N, D]`` (and ``mask: [B, N]``) to a dict with ``embedding [B, out_dim]`` and
    ``attention [B, N]``.

    Args:
        name: one of ``mean``, ``max``, ``abmil``, ``clam_sb``, ``clam_mb``, ``transmil``, ``dsmil``
            (case-insensitive).
        kwargs: constructor arguments of that class, e.g. ``in_dim=1024, hidden_dim=512``.

    Returns:
        the aggregator module.

    Raises:
        ValueError: for an unknown name.
        TypeError: for an argument the class does not take.
    """
    key = name.lower()
    if key not in AGGREGATORS:
        raise ValueError(f"unknown MIL aggregator {name!r}; choose one of {sorted(AGGREGATORS)}")
    return AGGREGATORS[key](**kwargs)

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

"""MIL aggregators: patch features ``[B, N, D]`` (+ mask ``[B, N]``) -> bag ``embedding [B, E]`` + ``attention [B, N]``.

mean / max pooling, ABMIL (gated attention), CLAM-SB / CLAM-MB, TransMIL (Nystrom attention + PPEG) and DSMIL,
all with the same masked interface; :func:`build_aggregator` picks one by name.
"""

from __future__ import annotations

from monai_ext.networks.mil.abmil import ABMIL, AttentionScorer
from monai_ext.networks.mil.clam import CLAMMB, CLAMSB, smooth_top1_svm_loss
from monai_ext.networks.mil.dsmil import DSMIL
from monai_ext.networks.mil.pooling import MaxPooling, MeanPooling, masked_softmax, prepare_bag
from monai_ext.networks.mil.registry import AGGREGATORS, build_aggregator
from monai_ext.networks.mil.transmil import PPEG, NystromLayer, TransMIL, nystrom_attention

__all__ = [
    "ABMIL",
    "AGGREGATORS",
    "CLAMMB",
    "CLAMSB",
    "DSMIL",
    "PPEG",
    "AttentionScorer",
    "MaxPooling",
    "MeanPooling",
    "NystromLayer",
    "TransMIL",
    "build_aggregator",
    "masked_softmax",
    "nystrom_attention",
    "prepare_bag",
    "smooth_top1_svm_loss",
]

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

"""Split a collated multimodal batch into model inputs and targets for MONAI's supervised engines."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.engines.utils import PrepareBatch

TARGET_KEYS = ("label", "time", "event", "bin")


class MultimodalPrepareBatch(PrepareBatch):
    """``batch -> (inputs, targets)``: tensors moved to ``device``, targets split off, strings dropped.

    MONAI's ``SupervisedTrainer`` then calls ``network(inputs)`` and ``loss_function(pred, targets)``, so the model
    receives the modality dict (``wsi``, ``wsi_mask``, ``omics``, ...) and the loss the target dict.

    Args:
        target_keys: keys that are targets, not inputs.
        label_to_model: also hand ``label`` to the model (training only: CLAM's instance loss needs the bag label;
            never set it for evaluation or inference).
    """

    def __init__(self, target_keys: Sequence[str] = TARGET_KEYS, label_to_model: bool = False) -> None:
        self.target_keys = tuple(target_keys)
        self.label_to_model = label_to_model

    def __call__(
        self,
        batchdata: dict[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        inputs, targets = {}, {}
        for key, value in batchdata.items():
            if not isinstance(value, torch.Tensor):
                continue
            moved = value.to(device=device, non_blocking=non_blocking) if device is not None else value
            (targets if key in self.target_keys else inputs)[key] = moved
        if self.label_to_model and "label" in targets:
            inputs["label"] = targets["label"]
        return inputs, targets

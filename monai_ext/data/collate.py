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

"""Batch ragged per-patient samples: pad patch bags and text tokens, stack masks and targets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

PADDED_TOKENS = {"wsi": ("wsi_mask", 0.0), "wsi_slide_index": (None, -1), "text": ("text_mask", 0.0)}


def pad_stack(tensors: Sequence[torch.Tensor], value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``[N_i, ...]`` tensors into ``[B, N_max, ...]`` padded with ``value``.

    Returns:
        the padded tensor and the bool mask ``[B, N_max]`` of real rows.
    """
    longest = max(len(t) for t in tensors)
    shape = (len(tensors), longest, *tensors[0].shape[1:])
    out = torch.full(shape, value, dtype=tensors[0].dtype)
    mask = torch.zeros(len(tensors), longest, dtype=torch.bool)
    for row, tensor in enumerate(tensors):
        out[row, : len(tensor)] = tensor
        mask[row, : len(tensor)] = True
    return out, mask


def collate_multimodal(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Collate samples of :class:`~monai_ext.data.dataset.MultimodalDataset` into one batch.

    ``wsi`` becomes ``[B, N_max, D]`` with ``wsi_mask`` ``[B, N_max]`` and ``wsi_slide_index`` padded with -1;
    ``text`` becomes ``[B, T_max, E]`` with the samples' own token masks padded with False; every other tensor is
    stacked; strings (``case_id``) become lists.

    Raises:
        ValueError: empty list, or samples with different keys.
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    keys = set(samples[0])
    for sample in samples[1:]:
        if set(sample) != keys:
            raise ValueError(f"samples have different keys: {sorted(keys ^ set(sample))}")
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        if key == "text_mask":
            batch[key] = pad_stack(values, False)[0]
        elif key in PADDED_TOKENS:
            mask_key, fill = PADDED_TOKENS[key]
            batch[key], mask = pad_stack(values, fill)
            if mask_key is not None and mask_key not in samples[0]:
                batch[mask_key] = mask
        elif isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        else:
            batch[key] = list(values)
    return batch

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
"""Small helpers the bundle configs call instead of importing ``os`` or ``glob``.

Configs are code (``$`` expressions are evaluated), so a third-party bundle is checked against an allow-list of
modules before it runs (:mod:`monai_ext.engines.config_trust`). Our own configs stay within that list by calling
these functions for the little file-system and environment work they need.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["local_device", "patient_slides"]


def patient_slides(folder: str | Path, case_id: str, pattern: str = "slides/{case_id}-N*.tif") -> list[str]:
    """The slide files of one patient under ``folder``, sorted by name.

    Args:
        folder: the cohort folder.
        case_id: the patient's id, substituted into ``pattern``.
        pattern: a glob pattern relative to ``folder`` with a ``{case_id}`` field (the demo cohort's layout by
            default).

    Returns:
        The matching paths as strings (empty when none match).
    """
    return sorted(str(path) for path in Path(folder).glob(pattern.format(case_id=case_id)))


def local_device() -> torch.device:
    """This process's device under ``torchrun``: ``cuda:<LOCAL_RANK>`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")

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
"""The path and device helpers of the bundle configs."""

from __future__ import annotations

import pytest
import torch

from monai_ext.engines.bundle_paths import local_device, patient_slides


def test_patient_slides_sorted_and_only_that_patient(tmp_path):
    (tmp_path / "slides").mkdir()
    for name in ("P1-N1.tif", "P1-N0.tif", "P10-N0.tif", "P2-N0.tif", "P1-N0.txt"):
        (tmp_path / "slides" / name).touch()
    assert patient_slides(tmp_path, "P1") == [str(tmp_path / "slides" / f"P1-N{k}.tif") for k in (0, 1)]
    assert patient_slides(tmp_path, "P3") == []
    assert patient_slides(tmp_path, "P2", pattern="slides/{case_id}-*") == [str(tmp_path / "slides" / "P2-N0.tif")]


@pytest.mark.parametrize("cuda, rank, expected", [(False, "1", "cpu"), (True, "1", "cuda:1"), (True, None, "cuda:0")])
def test_local_device(monkeypatch, cuda, rank, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    if rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", rank)
    assert local_device() == torch.device(expected)

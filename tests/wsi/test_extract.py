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

"""Slide -> features: settings-aware reuse, slide listing, status records, the shipped config.

The shared stand-in encoder and config live here; bad slides and faults are tested in ``tests/reliability``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from monai_ext.wsi.batch import list_slides
from monai_ext.wsi.extract import ExtractionConfig, extract_slide

REPO = Path(__file__).resolve().parents[2]
CONFIG = ExtractionConfig(mpp=0.5, patch_size=256, min_tissue_fraction=0.25, batch_size=8, num_threads=2)


class MeanColorEncoder(torch.nn.Module):
    """Deterministic stand-in encoder: per-channel mean and std of the patch ([B, 6])."""

    identity = "mean_color@test"
    feature_dim = 6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], dim=1)


def test_other_settings_are_not_reused(make_tiff, tmp_path):
    path = make_tiff("slide.tif", width=2048, height=1536)
    first = extract_slide(path, tmp_path, MeanColorEncoder(), CONFIG)
    again = extract_slide(
        path, tmp_path, MeanColorEncoder(), ExtractionConfig(**{**CONFIG.__dict__, "patch_size": 128})
    )
    assert first.status == again.status == "done"
    assert again.reason != "already extracted" and again.n_patches > first.n_patches


def test_list_slides_folder_and_manifest(make_tiff, tmp_path):
    a, b = make_tiff("a.tif"), make_tiff("b.svs")
    (tmp_path / "notes.txt").write_text("x")
    assert [job.slide_id for job in list_slides(tmp_path)] == ["a", "b"]
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide_id,slide_path,mpp\nA,a.tif,0.25\nB,b.svs,\n")
    jobs = list_slides(manifest)
    assert [(j.slide_id, j.path, j.mpp) for j in jobs] == [("A", a, 0.25), ("B", b, None)]
    manifest.write_text("slide_id,slide_path\nA,a.tif\nA,b.svs\n")
    with pytest.raises(ValueError, match="duplicate slide ids"):
        list_slides(manifest)


def test_status_json_is_valid_after_each_slide(make_tiff, tmp_path):
    path = make_tiff("slide.tif")
    extract_slide(path, tmp_path, MeanColorEncoder(), CONFIG)
    status = json.loads((tmp_path / "status" / "slide.json").read_text())
    assert status["status"] in {"done", "no_tissue"}


def test_shipped_config_equals_library_defaults_and_unknown_keys_fail(tmp_path):
    shipped = ExtractionConfig.from_json(REPO / "configs" / "wsi.json")
    assert shipped == ExtractionConfig()
    assert ExtractionConfig.from_json(REPO / "configs" / "wsi.json", mpp=0.25, patch_size=None).mpp == 0.25
    bad = tmp_path / "wsi.json"
    bad.write_text(json.dumps({"mpp": 0.5, "tissue": {"otsu": True}}))
    with pytest.raises(ValueError, match="unknown tissue parameters"):
        ExtractionConfig.from_json(bad)

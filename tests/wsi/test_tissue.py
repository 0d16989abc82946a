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

"""Tissue detection: finds real tissue texture, ignores glass, removes specks, fills small holes only."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from monai_ext.wsi.open import open_slide
from monai_ext.wsi.tissue import TissueConfig, detect_tissue, read_thumbnail, save_qc_png, tissue_mask_from_rgb
from tests.wsi.conftest import tissue_image

GLASS = 238


def _disk(shape, center, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (xx - center[0]) ** 2 + (yy - center[1]) ** 2 < radius**2


def test_blank_slide_has_no_tissue():
    rng = np.random.default_rng(0)
    glass = np.clip(GLASS + rng.normal(0, 3, size=(300, 400, 3)), 0, 255).astype(np.uint8)
    assert not tissue_mask_from_rgb(glass, mpp=8.0, config=TissueConfig()).any()


def test_mask_matches_planted_tissue():
    full = tissue_image(5120, 3840, seed=3)  # 0.5 um/px; the thumbnail at 8 um/px is 16x smaller
    image = cv2.resize(full, (320, 240), interpolation=cv2.INTER_AREA)
    planted = (full != GLASS).any(axis=2).astype(np.float32)
    truth = cv2.resize(planted, (320, 240), interpolation=cv2.INTER_AREA) > 0.5
    mask = tissue_mask_from_rgb(image, mpp=8.0, config=TissueConfig())
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.85, f"IoU with the planted tissue was {iou:.3f}"


def test_small_specks_removed_and_small_holes_filled_big_holes_kept():
    image = np.full((400, 400, 3), GLASS, np.uint8)
    tissue = _disk(image.shape, (200, 200), 150)
    image[tissue] = (150, 60, 160)
    image[_disk(image.shape, (200, 120), 4)] = GLASS  # small hole: 50 px = 3,200 um2 at 8 um/px
    big_hole = _disk(image.shape, (200, 260), 40)  # 5,000 px = 320,000 um2
    image[big_hole] = GLASS
    image[_disk(image.shape, (20, 20), 3)] = (150, 60, 160)  # speck: ~28 px = 1,800 um2
    config = TissueConfig(closing_um=0, min_object_um2=50_000, max_hole_um2=200_000)
    mask = tissue_mask_from_rgb(image, mpp=8.0, config=config)
    assert mask[120, 200], "small hole should be filled"
    assert not mask[260, 200], "large hole (lumen) should stay open"
    assert not mask[20, 20], "speck should be removed"
    assert mask[200, 80]


def test_detect_tissue_on_slide_and_qc_png(make_tiff, tmp_path):
    path = make_tiff(width=2048, height=1536, n_levels=2)
    with open_slide(path) as slide:
        tissue = detect_tissue(slide, TissueConfig(thumbnail_mpp=8.0))
    assert tissue.mask.shape == (96, 128)  # 2048 px at 0.5 um/px = 1,024 um = 128 px at 8 um/px
    assert tissue.downsample == pytest.approx(16.0)
    assert 0.1 < tissue.tissue_fraction < 0.6
    qc = tmp_path / "qc.png"
    save_qc_png(qc, tissue, np.array([[0, 0], [256, 256]]), 256)
    picture = cv2.imread(str(qc))
    assert picture.shape[0] == 96 and picture.shape[1] > 2 * 128
    assert not list(tmp_path.glob("*.tmp"))


def test_unknown_config_key():
    with pytest.raises(ValueError, match="thumbnail_mpp"):
        TissueConfig.from_dict({"thumbnail_micron": 4})


@pytest.mark.parametrize("chunk", [64, 100, 4096])
def test_thumbnail_read_in_chunks_equals_one_read(make_tiff, chunk):
    path = make_tiff(width=1024, height=768, n_levels=1)  # no pyramid: the thumbnail comes from level 0
    with open_slide(path) as slide:
        whole, downsample = read_thumbnail(slide, 2.0, chunk=4096)
        pieces, same = read_thumbnail(slide, 2.0, chunk=chunk)
        full = slide.read_region((0, 0), 0, (1024, 768))
    assert whole.shape == (192, 256, 3) and downsample == same == 4.0
    reference = cv2.resize(full, (256, 192), interpolation=cv2.INTER_AREA)
    assert np.abs(pieces.astype(int) - reference).mean() < 1.0

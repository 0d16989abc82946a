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

"""Patch grid: tissue fractions equal a brute-force reference, coordinates in level 0, level choice, alignment."""

from __future__ import annotations

import numpy as np
import pytest

from monai_ext.wsi.backends import SlideInfo
from monai_ext.wsi.grid import choose_level, make_grid
from monai_ext.wsi.tissue import TissueMask


def _info(dims=((4096, 3072), (1024, 768), (256, 192)), mpp=0.25, tile=(256, 256)):
    downsamples = tuple(dims[0][0] / d[0] for d in dims)
    return SlideInfo(
        path=None,
        backend="cucim",
        level_dimensions=dims,
        level_downsamples=downsamples,
        tile_sizes=(tile,) * len(dims),
        mpp=mpp,
        mpp_source="file",
    )


def _mask(seed=0, shape=(192, 256)):
    rng = np.random.default_rng(seed)
    small = rng.random((shape[0] // 8, shape[1] // 8)) > 0.5
    return np.kron(small, np.ones((8, 8), bool)) | (rng.random(shape) > 0.97)


def _reference_fraction(mask, x0, y0, side):
    """Per-patch loop over the mask pixels the patch overlaps (independent of the summed-area table)."""
    left, top = int(np.floor(x0)), int(np.floor(y0))
    right, bottom = max(int(np.ceil(x0 + side)), left + 1), max(int(np.ceil(y0 + side)), top + 1)
    return mask[top : min(bottom, mask.shape[0]), left : min(right, mask.shape[1])].mean()


@pytest.mark.parametrize(
    ("target_mpp", "patch_size", "level", "read_size"),
    [
        (0.25, 256, 0, 256),  # native resolution
        (0.5, 224, 0, 448),  # between levels: read finer and downsample
        (1.0, 256, 1, 256),  # level 1 is exactly 1.0 um/px
        (2.0, 64, 1, 128),
    ],
)
def test_grid_matches_reference(target_mpp, patch_size, level, read_size):
    info = _info()
    mask = _mask()
    tissue = TissueMask(mask=mask, thumbnail=np.zeros((*mask.shape, 3), np.uint8), downsample=16.0)
    grid = make_grid(info, tissue, target_mpp=target_mpp, patch_size=patch_size, min_tissue_fraction=0.5)
    assert grid.level == level and grid.read_size == read_size
    downsample = info.level_downsamples[level]
    assert grid.size_level0 == read_size * downsample
    width, height = info.level_dimensions[level]
    expected = []
    for row in range(height // read_size):
        for col in range(width // read_size):
            x, y = col * read_size * downsample, row * read_size * downsample
            fraction = _reference_fraction(mask, x / 16, y / 16, read_size * downsample / 16)
            if fraction >= 0.5:
                expected.append((x, y, fraction))
    assert len(grid) == len(expected) > 0
    np.testing.assert_array_equal(grid.coords, np.array([(x, y) for x, y, _ in expected]))
    np.testing.assert_allclose(grid.tissue_fraction, [f for _, _, f in expected], rtol=1e-6)
    assert (grid.coords[:, 0] + grid.size_level0 <= info.level_dimensions[0][0]).all()
    assert (grid.coords[:, 1] + grid.size_level0 <= info.level_dimensions[0][1]).all()


def test_alignment_flag():
    info = _info(tile=(256, 256))
    tissue = TissueMask(np.ones((192, 256), bool), np.zeros((192, 256, 3), np.uint8), 16.0)
    assert make_grid(info, tissue, target_mpp=0.25, patch_size=256).tile_aligned
    assert make_grid(info, tissue, target_mpp=0.25, patch_size=512).tile_aligned
    assert not make_grid(info, tissue, target_mpp=0.25, patch_size=224).tile_aligned


def test_choose_level_never_upsamples():
    info = _info()
    assert choose_level(info, 0.1) == 0
    assert choose_level(info, 0.9) == 0
    assert choose_level(info, 1.02) == 1
    assert choose_level(info, 100.0) == 2


def test_empty_when_slide_smaller_than_a_patch():
    info = _info(dims=((16, 16),))
    tissue = TissueMask(np.ones((1, 1), bool), np.zeros((1, 1, 3), np.uint8), 16.0)
    grid = make_grid(info, tissue, target_mpp=0.25, patch_size=256)
    assert len(grid) == 0 and grid.coords.shape == (0, 2)


def test_ill_arg():
    info = _info()
    tissue = TissueMask(np.ones((192, 256), bool), np.zeros((192, 256, 3), np.uint8), 16.0)
    with pytest.raises(ValueError, match="min_tissue_fraction"):
        make_grid(info, tissue, target_mpp=0.5, patch_size=256, min_tissue_fraction=1.5)

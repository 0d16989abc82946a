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

"""Batched patch reading: pixels equal single reads, DataLoader workers keep order, broken tiles are dropped."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_ext.wsi.grid import make_grid
from monai_ext.wsi.open import open_slide
from monai_ext.wsi.reader import PatchDataset, broken_patch_mask, patch_loader
from monai_ext.wsi.tissue import detect_tissue


@pytest.mark.parametrize(
    ("origin", "zero_box", "tile", "expected"),
    [
        ((0, 0), None, (256, 256), False),
        ((0, 0), (0, 256, 0, 256), (256, 256), True),  # aligned patch, its one tile broken
        ((100, 100), (0, 156, 0, 156), (256, 256), True),  # unaligned: the top-left tile's share is zero
        ((100, 100), (0, 150, 0, 150), (256, 256), False),  # a zero area smaller than the tile's share: real pixels
        ((0, 0), (0, 128, 0, 128), (128, 128), True),  # 2 x 2 tiles per patch, one broken
        ((0, 0), (0, 128, 0, 128), (0, 0), False),  # tile size unknown: only a fully zero patch counts
        ((0, 0), (0, 256, 0, 256), (0, 0), True),
    ],
)
def test_broken_patch_mask(origin, zero_box, tile, expected):
    batch = np.random.default_rng(0).integers(1, 255, size=(2, 256, 256, 3), dtype=np.uint8)
    if zero_box is not None:
        top, bottom, left, right = zero_box
        batch[1, top:bottom, left:right] = 0
    result = broken_patch_mask(batch, np.array([origin, origin]), tile)
    assert not result[0]
    assert result[1] == expected


def _grid(path, **kwargs):
    with open_slide(path) as slide:
        return make_grid(slide.info, detect_tissue(slide), min_tissue_fraction=0.1, **kwargs)


def test_batches_equal_single_reads(make_tiff):
    path = make_tiff(width=2048, height=1536)
    grid = _grid(path, target_mpp=0.5, patch_size=256)
    assert grid.tile_aligned and len(grid) > 5
    items = list(patch_loader(PatchDataset(path, grid, batch_size=4, num_threads=2)))
    images = torch.cat([item["image"] for item in items])
    np.testing.assert_array_equal(torch.cat([item["coords"] for item in items]).numpy(), grid.coords)
    assert images.shape == (len(grid), 3, 256, 256) and images.dtype == torch.uint8
    with open_slide(path) as slide:
        for index in (0, len(grid) // 2, len(grid) - 1):
            single = slide.read_region(tuple(grid.coords[index]), 0, (256, 256))
            np.testing.assert_array_equal(images[index].permute(1, 2, 0).numpy(), single)


def test_resized_patches_when_target_is_coarser(make_tiff):
    path = make_tiff(width=2048, height=1536)
    grid = _grid(path, target_mpp=1.0, patch_size=128)
    assert grid.read_size == 256 and grid.level == 0
    item = next(iter(patch_loader(PatchDataset(path, grid, batch_size=3))))
    assert item["image"].shape == (3, 3, 128, 128)
    with open_slide(path) as slide:
        raw = slide.read_region(tuple(grid.coords[0]), 0, (256, 256)).astype(np.float32)
    pooled = raw.reshape(128, 2, 128, 2, 3).mean(axis=(1, 3))
    assert np.abs(item["image"][0].permute(1, 2, 0).numpy() - pooled).mean() < 3.0


def test_loader_workers_keep_grid_order(make_tiff):
    path = make_tiff(width=2048, height=1536)
    grid = _grid(path, target_mpp=0.5, patch_size=128)
    single = [item["index"] for item in patch_loader(PatchDataset(path, grid, batch_size=5))]
    multi = [item["index"] for item in patch_loader(PatchDataset(path, grid, batch_size=5), num_workers=2)]
    assert torch.equal(torch.cat(single), torch.cat(multi))
    assert torch.equal(torch.cat(single), torch.arange(len(grid)))

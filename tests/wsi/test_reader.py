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

import itertools

import numpy as np
import pytest
import torch

from monai_ext.wsi.grid import make_grid
from monai_ext.wsi.open import open_slide
from monai_ext.wsi.reader import PatchDataset, broken_patch_mask, patch_loader
from monai_ext.wsi.strips import plan_strips
from monai_ext.wsi.synthetic import corrupt_tile
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


@pytest.mark.parametrize(("size", "tile"), [(224, (256, 256)), (256, (128, 64)), (100, (0, 0))])
def test_broken_patch_mask_equals_block_by_block_reference(size, tile):
    rng = np.random.default_rng(1)
    batch = rng.integers(1, 255, size=(40, size, size, 3), dtype=np.uint8)
    origins = rng.integers(0, 5000, size=(40, 2))
    tile_w, tile_h = tile if all(tile) else (size, size)
    for index in range(0, 40, 2):  # zero a random rectangle in every other patch
        top, left = rng.integers(0, size, 2)
        height, width = rng.integers(1, size + 1, 2)
        batch[index, top : top + height, left : left + width] = 0
    for index in range(1, 40, 4):  # and the whole top-left tile block in some others
        x, y = origins[index] if all(tile) else (0, 0)
        batch[index, : tile_h - y % tile_h, : tile_w - x % tile_w] = 0

    def reference(patch, x, y):
        row_edges = sorted({0, size, *(t - y for t in range(0, y + size, tile_h) if 0 < t - y < size)})
        col_edges = sorted({0, size, *(t - x for t in range(0, x + size, tile_w) if 0 < t - x < size)})
        return any(
            not patch[top:bottom, left:right].any()
            for top, bottom in itertools.pairwise(row_edges)
            for left, right in itertools.pairwise(col_edges)
        )

    expected = [reference(batch[i], *(origins[i] if all(tile) else (0, 0))) for i in range(40)]
    np.testing.assert_array_equal(broken_patch_mask(batch, origins, tile), expected)
    assert 0 < sum(expected) < 20


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


@pytest.mark.parametrize(
    ("target_mpp", "size", "level", "compression", "backend"),
    [(0.5, 224, 0, "jpeg", "cucim"), (2.0, 96, 1, "jpeg", "cucim"), (0.5, 224, 0, "zlib", "openslide")],
)
def test_unaligned_patches_read_as_strips_equal_single_reads(make_tiff, target_mpp, size, level, compression, backend):
    path = make_tiff(width=4096, height=3072, compression=compression)
    grid = _grid(path, target_mpp=target_mpp, patch_size=size)
    assert grid.level == level and not grid.tile_aligned and len(grid) > 10
    with open_slide(path) as slide:
        assert slide.info.backend == backend
        downsample = slide.info.level_downsamples[level]
        assert plan_strips(grid.coords, size, downsample, slide.info.tile_sizes[level]).width > size
        singles = np.stack([slide.read_region(tuple(c), level, (size, size)) for c in grid.coords])
    items = list(patch_loader(PatchDataset(path, grid, batch_size=7, num_threads=2)))
    np.testing.assert_array_equal(torch.cat([item["index"] for item in items]).numpy(), np.arange(len(grid)))
    images = torch.cat([item["image"] for item in items]).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(images, singles)


def test_zeroed_tile_under_a_strip_drops_exactly_the_patches_on_it(make_tiff):
    path = make_tiff(width=4096, height=3072)
    grid = _grid(path, target_mpp=0.5, patch_size=224)
    with open_slide(path) as slide:
        clean = {tuple(c): slide.read_region(tuple(c), 0, (224, 224)) for c in grid.coords.tolist()}
    x, y = (int(v) for v in grid.coords[len(grid) // 2] + 100)
    corrupt_tile(path, level=0, x=x, y=y)
    tile_x, tile_y = x // 256 * 256, y // 256 * 256
    on_tile = {
        tuple(c)
        for c in grid.coords.tolist()
        if c[0] < tile_x + 256 and tile_x < c[0] + 224 and c[1] < tile_y + 256 and tile_y < c[1] + 224
    }
    items = list(patch_loader(PatchDataset(path, grid, batch_size=16)))
    broken = {tuple(c) for item in items for c in item["broken_coords"].tolist()}
    assert broken == on_tile and len(on_tile) >= 2
    for item in items:
        for coords, image in zip(item["coords"].tolist(), item["image"].permute(0, 2, 3, 1).numpy(), strict=True):
            np.testing.assert_array_equal(image, clean[tuple(coords)])


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

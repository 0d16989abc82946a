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

"""Patch grids at a target resolution, filtered by tissue fraction, in level-0 pixel coordinates.

The grid is read from the coarsest pyramid level that is at least as fine as the target, so patches are only ever
downsampled. Its origin is the level's (0, 0), which is also the origin of the file's tile grid: when the read size
and the tile size divide one another, every patch decodes whole tiles (one 256 px patch = one 256 px JPEG tile)
instead of up to four partial ones. Tissue fractions come from a summed-area table of the mask: vectorised, no
per-patch polygon test.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from monai_ext.wsi.backends import SlideInfo
from monai_ext.wsi.tissue import TissueMask

MPP_TOLERANCE = 0.05


@dataclass(frozen=True)
class PatchGrid:
    """Where to read patches.

    Attributes:
        coords: int64 ``[N, 2]`` level-0 (x, y) of each patch's top-left corner, row-major order.
        level: pyramid level to read from.
        read_size: patch side in pixels of ``level`` (resized to ``patch_size`` when they differ).
        patch_size: patch side in pixels at the target resolution.
        mpp: target micrometers per pixel.
        size_level0: patch side in level-0 pixels.
        tile_aligned: whether every patch covers whole tiles of the file.
        tissue_fraction: float32 ``[N]`` tissue share of each patch.
    """

    coords: np.ndarray
    level: int
    read_size: int
    patch_size: int
    mpp: float
    size_level0: int
    tile_aligned: bool
    tissue_fraction: np.ndarray

    def __len__(self) -> int:
        return len(self.coords)


def choose_level(info: SlideInfo, target_mpp: float) -> int:
    """The coarsest level whose resolution is at least as fine as ``target_mpp`` (within 5%)."""
    finer = [lvl for lvl in range(info.n_levels) if info.level_mpp(lvl) <= target_mpp * (1 + MPP_TOLERANCE)]
    return max(finer) if finer else 0


def make_grid(
    info: SlideInfo, tissue: TissueMask, *, target_mpp: float, patch_size: int, min_tissue_fraction: float = 0.25
) -> PatchGrid:
    """Non-overlapping patches of ``patch_size`` px at ``target_mpp`` covering at least ``min_tissue_fraction``.

    Args:
        info: the slide's description.
        tissue: its tissue mask.
        target_mpp: micrometers per pixel of the patches.
        patch_size: patch side at ``target_mpp``.
        min_tissue_fraction: minimum share of the patch area on tissue (0-1).

    Returns:
        the :class:`PatchGrid`; empty when no patch qualifies.
    """
    if not 0.0 <= min_tissue_fraction <= 1.0:
        raise ValueError(f"min_tissue_fraction must be in [0, 1], got {min_tissue_fraction}")
    level = choose_level(info, target_mpp)
    level_mpp = info.level_mpp(level)
    if abs(level_mpp - target_mpp) <= MPP_TOLERANCE * target_mpp:
        read_size = patch_size
    else:
        read_size = round(patch_size * target_mpp / level_mpp)
    width, height = info.level_dimensions[level]
    n_cols, n_rows = width // read_size, height // read_size
    downsample = info.level_downsamples[level]
    size_level0 = round(read_size * downsample)
    tile_w, tile_h = info.tile_sizes[level]
    tile_aligned = bool(tile_w and tile_h) and _divides(read_size, tile_w) and _divides(read_size, tile_h)
    if n_cols == 0 or n_rows == 0:
        empty = np.zeros((0, 2), np.int64)
        return PatchGrid(
            empty, level, read_size, patch_size, target_mpp, size_level0, tile_aligned, np.zeros(0, np.float32)
        )
    cols, rows = np.meshgrid(np.arange(n_cols), np.arange(n_rows))
    x_level, y_level = cols.ravel() * read_size, rows.ravel() * read_size
    fraction = _box_fractions(
        tissue.mask,
        x_level * downsample / tissue.downsample,
        y_level * downsample / tissue.downsample,
        read_size * downsample / tissue.downsample,
    )
    keep = fraction >= min_tissue_fraction if min_tissue_fraction > 0 else np.ones_like(fraction, bool)
    coords = np.stack([np.round(x_level * downsample), np.round(y_level * downsample)], axis=1).astype(np.int64)
    return PatchGrid(
        coords[keep],
        level,
        read_size,
        patch_size,
        target_mpp,
        size_level0,
        tile_aligned,
        fraction[keep].astype(np.float32),
    )


def _divides(a: int, b: int) -> bool:
    """Whether the larger of two sizes is a multiple of the smaller."""
    return max(a, b) % min(a, b) == 0


def _box_fractions(mask: np.ndarray, x0: np.ndarray, y0: np.ndarray, side: float) -> np.ndarray:
    """Mean of ``mask`` over the boxes ``[x0, x0 + side) x [y0, y0 + side)`` (mask pixels, rounded to the grid).

    Uses a summed-area table, so the cost is one pass over the mask plus O(1) per box.
    """
    height, width = mask.shape
    table = cv2.integral(mask.astype(np.uint8), sdepth=cv2.CV_32S).astype(np.int64)
    left = np.clip(np.floor(x0).astype(np.int64), 0, width)
    top = np.clip(np.floor(y0).astype(np.int64), 0, height)
    right = np.clip(np.maximum(np.ceil(x0 + side).astype(np.int64), left + 1), 0, width)
    bottom = np.clip(np.maximum(np.ceil(y0 + side).astype(np.int64), top + 1), 0, height)
    area = np.maximum((right - left) * (bottom - top), 1)
    total = table[bottom, right] - table[top, right] - table[bottom, left] + table[top, left]
    return total / area

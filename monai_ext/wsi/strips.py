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

"""Read neighbouring patches of a row as one strip, so a JPEG tile they share is decoded once.

A 224 px patch on a 256 px tile grid touches up to four tiles, and the next patch of the row touches two of them
again. Without a tile cache (cuCIM's is off, see :mod:`monai_ext.wsi.backends`), reading the patches one by one
decodes those shared tiles twice. Reading a run of up to ``K`` patches of the same row as one ``[H, K * P]`` region
and slicing it decodes each tile once. ``K`` is chosen per slide as the one that decodes the fewest tiles for the
slide's own locations (1, i.e. patch by patch, for tile-aligned or scattered patches).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

RUN_LENGTHS = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class StripPlan:
    """Where to read the strips and where each patch lies in its strip.

    Attributes:
        locations: int64 ``[S, 2]`` level-0 (x, y) of each strip.
        width: strip width in pixels of the read level (all strips share it; height is the patch size).
        strip_of: int64 ``[N]`` strip holding each patch, non-decreasing.
        offset: int64 ``[N]`` x offset of each patch in its strip, in pixels of the read level.
    """

    locations: np.ndarray
    width: int
    strip_of: np.ndarray
    offset: np.ndarray


def one_by_one(coords: np.ndarray, size: int) -> StripPlan:
    """The plan that reads every patch on its own."""
    n = len(coords)
    return StripPlan(np.asarray(coords, np.int64).reshape(n, 2), size, np.arange(n), np.zeros(n, np.int64))


def plan_strips(coords: np.ndarray, size: int, downsample: float, tile_size: tuple[int, int]) -> StripPlan:
    """The strip plan that decodes the fewest tiles for these patches, in their order.

    Args:
        coords: int ``[N, 2]`` level-0 (x, y) of the patches, in reading order.
        size: patch side in pixels of the read level.
        downsample: the read level's downsample factor.
        tile_size: (width, height) of the level's tiles; (0, 0) when unknown (then patches are read one by one).

    Returns:
        The chosen :class:`StripPlan`. Strips are only formed when level positions are exact (an integral
        downsample dividing every coordinate), so slicing a strip gives the very pixels a patch read would.
    """
    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    factor = round(downsample)
    exact = abs(downsample - factor) < 1e-9 and factor >= 1 and not (coords % factor).any()
    if not len(coords) or not exact or not all(tile_size):
        return one_by_one(coords, size)
    level_xy = coords // factor
    if not (size % np.array(tile_size)).any() and not (level_xy % np.array(tile_size)).any():
        return one_by_one(coords, size)  # tile-aligned: every patch already decodes only its own tiles
    best, best_tiles = one_by_one(coords, size), None
    for run_length in RUN_LENGTHS:
        plan = _runs(coords, level_xy, size, run_length)
        tiles = _tiles_decoded(plan, size, tile_size, factor)
        if best_tiles is None or tiles < best_tiles:
            best, best_tiles = plan, tiles
    return best


def _runs(coords: np.ndarray, level_xy: np.ndarray, size: int, run_length: int) -> StripPlan:
    """Greedy runs in reading order: a patch joins the open strip when it lies in the same row, to its right, and
    inside the strip's ``run_length * size`` px width."""
    width = run_length * size
    strip_of, offset, starts = [], [], []
    first_x = first_y = previous_x = None
    for index, (x, y) in enumerate(level_xy.tolist()):
        if y == first_y and x > previous_x and x + size <= first_x + width:
            offset.append(x - first_x)
        else:
            starts.append(index)
            first_x, first_y = x, y
            offset.append(0)
        strip_of.append(len(starts) - 1)
        previous_x = x
    return StripPlan(coords[starts], width, np.asarray(strip_of, np.int64), np.asarray(offset, np.int64))


def _tiles_decoded(plan: StripPlan, size: int, tile_size: tuple[int, int], factor: int) -> int:
    """Tiles decoded when every strip of ``plan`` is read once (a strip decodes every tile it overlaps)."""
    tile_w, tile_h = tile_size
    x0, y0 = (plan.locations // factor).T
    cols = (x0 + plan.width - 1) // tile_w - x0 // tile_w + 1
    rows = (y0 + size - 1) // tile_h - y0 // tile_h + 1
    return int((cols * rows).sum())


class StripCutter:
    """Hand out the patches of a stream of strip batches ``[b, P, W, C]`` (in plan order), any number at a time.

    Each batch is only read before the next one is requested, so a reader may lend its own buffers.

    Args:
        strips: the strip batches, as read.
        plan: the plan they were read by.
        size: patch side ``P``.
    """

    def __init__(self, strips: Iterator[np.ndarray], plan: StripPlan, size: int) -> None:
        self._strips = iter(strips)
        self._plan = plan
        self._size = size
        self._batch: np.ndarray | None = None
        self._first = 0  # strip index of the current batch's first strip
        self._next = 0  # next patch to hand out

    def take(self, count: int) -> np.ndarray:
        """The next ``count`` patches, uint8 ``[count, P, P, 3]``, copied out of the strips."""
        size, strip_of = self._size, self._plan.strip_of
        out = np.empty((count, size, size, 3), np.uint8)
        filled = 0
        while filled < count:
            batch = self._batch
            if batch is None or strip_of[self._next] >= self._first + len(batch):
                self._first += 0 if batch is None else len(batch)
                self._batch = next(self._strips)
                continue
            end = int(np.searchsorted(strip_of, self._first + len(batch)))
            stop = min(end, self._next + count - filled)
            rows = strip_of[self._next : stop] - self._first
            target = out[filled : filled + stop - self._next]
            if self._plan.width == size:  # one patch per strip: the strips are consecutive
                target[:] = batch[rows[0] : rows[-1] + 1, ..., :3]
            else:
                for index, (row, x) in enumerate(zip(rows, self._plan.offset[self._next : stop], strict=True)):
                    target[index] = batch[row, :, x : x + size, :3]
            filled += len(target)
            self._next = stop
        return out

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

"""Strip plans: the run length that decodes the fewest tiles, and strips cut back into the right patches."""

from __future__ import annotations

import numpy as np
import pytest

from monai_ext.wsi.strips import StripCutter, plan_strips


def _row_grid(step: int, n_cols: int, n_rows: int, x0: int = 0, y0: int = 0) -> np.ndarray:
    ys, xs = np.mgrid[:n_rows, :n_cols]
    return np.stack([x0 + xs.ravel() * step, y0 + ys.ravel() * step], 1).astype(np.int64)


def _tiles_brute_force(locations: np.ndarray, width: int, height: int, tile: int) -> int:
    return sum(
        len(range(x // tile, (x + width - 1) // tile + 1)) * len(range(y // tile, (y + height - 1) // tile + 1))
        for x, y in locations
    )


def test_unaligned_rows_are_read_as_strips_that_decode_fewer_tiles():
    coords = _row_grid(224, n_cols=40, n_rows=3, x0=100, y0=50)
    plan = plan_strips(coords, 224, 1.0, (256, 256))
    assert plan.width > 224
    strips = _tiles_brute_force(plan.locations, plan.width, 224, 256)
    one_by_one = _tiles_brute_force(coords, 224, 224, 256)
    assert strips < 0.7 * one_by_one
    # Every patch lies inside its strip, on the strip's row, at its own x.
    starts = plan.locations[plan.strip_of]
    np.testing.assert_array_equal(starts[:, 0] + plan.offset, coords[:, 0])
    np.testing.assert_array_equal(starts[:, 1], coords[:, 1])
    assert (plan.offset + 224 <= plan.width).all()
    assert (np.diff(plan.strip_of) >= 0).all()


@pytest.mark.parametrize(
    ("coords", "downsample", "tile"),
    [
        (_row_grid(256, 10, 2), 1.0, (256, 256)),  # tile-aligned: one tile per patch already
        (np.array([[5000, 300], [100, 9000], [7000, 7000]]), 1.0, (256, 256)),  # scattered
        (_row_grid(224, 10, 2), 1.0, (0, 0)),  # tile size unknown
        (_row_grid(224 * 4, 10, 2), 4.0002, (256, 256)),  # level positions not exact
        (_row_grid(224 * 4, 10, 2, x0=2), 4.0, (256, 256)),  # a coordinate not a multiple of the downsample
    ],
)
def test_patches_stay_one_by_one_when_strips_do_not_pay_or_are_not_exact(coords, downsample, tile):
    plan = plan_strips(coords, 224, downsample, tile)
    assert plan.width == 224
    np.testing.assert_array_equal(plan.locations, coords)
    np.testing.assert_array_equal(plan.strip_of, np.arange(len(coords)))


def test_level_positions_follow_the_downsample():
    coords = _row_grid(224 * 4, n_cols=12, n_rows=1, x0=400, y0=800)
    plan = plan_strips(coords, 224, 4.0, (256, 256))
    assert plan.width > 224
    np.testing.assert_array_equal(plan.offset[: plan.width // 224], 224 * np.arange(plan.width // 224))


def test_a_row_break_or_a_step_back_starts_a_new_strip():
    coords = np.array([[0, 0], [224, 0], [448, 0], [224, 224], [448, 224], [0, 224], [224, 224]])
    plan = plan_strips(coords, 224, 1.0, (256, 256))
    assert plan.width > 224
    assert plan.strip_of[3] != plan.strip_of[2] and plan.strip_of[5] != plan.strip_of[4]
    assert plan.strip_of[1] == plan.strip_of[0] and plan.strip_of[6] == plan.strip_of[5]


@pytest.mark.parametrize("batch_strips", [1, 3, 100])
@pytest.mark.parametrize("strip_size", [224, None])
def test_patches_cut_from_strips_equal_crops_in_order(batch_strips, strip_size):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(1200, 4000, 3), dtype=np.uint8)
    coords = np.concatenate([_row_grid(224, 15, 3, x0=37, y0=11), [[3000, 900], [10, 970]]])
    plan = plan_strips(coords, 224, 1.0, (256, 256) if strip_size is None else (0, 0))
    assert (plan.width == 224) == (strip_size == 224)

    def crop(x, y, width):
        region = np.zeros((224, width, 3), np.uint8)  # out of bounds reads as zeros, as cuCIM does
        part = image[y : y + 224, x : x + width]
        region[: part.shape[0], : part.shape[1]] = part
        return region

    strips = np.stack([crop(x, y, plan.width) for x, y in plan.locations])
    lent = np.empty((batch_strips, 224, plan.width, 3), np.uint8)

    def lend():  # one buffer reused for every batch, as cuCIM does
        for start in range(0, len(strips), batch_strips):
            batch = strips[start : start + batch_strips]
            lent[: len(batch)] = batch
            yield lent[: len(batch)]

    cutter = StripCutter(lend(), plan, 224)
    patches = np.concatenate([cutter.take(n) for n in (5, 0, 1, 17, len(coords) - 23)])
    expected = np.stack([crop(x, y, 224) for x, y in coords])
    np.testing.assert_array_equal(patches, expected)

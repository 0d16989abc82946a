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

"""Attention heatmaps: percentile ranks, blending by hand, and a PNG over a real (synthetic) slide."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from matplotlib import colormaps

from monai_ext.engines.heatmap import attention_percentiles, render_heatmap, save_attention_heatmap
from monai_ext.wsi.synthetic import write_demo_slide


@pytest.mark.parametrize(
    ("attention", "expected"),
    [
        ([0.1, 0.3, 0.2], [1 / 3, 1.0, 2 / 3]),
        ([0.5, 0.5], [0.75, 0.75]),  # ties share the mean rank (1.5 of 2)
        ([2.0], [1.0]),
    ],
)
def test_attention_percentiles(attention: list[float], expected: list[float]) -> None:
    np.testing.assert_allclose(attention_percentiles(np.array(attention)), expected)


@pytest.mark.parametrize("attention", [[], [[0.1, 0.2]], [0.1, np.nan]])
def test_attention_percentiles_ill_arg(attention: list) -> None:
    with pytest.raises(ValueError, match="attention"):
        attention_percentiles(np.array(attention, dtype=float))


def test_render_heatmap_by_hand() -> None:
    thumbnail = np.full((20, 30, 3), 200, np.uint8)
    coords = np.array([[0, 0], [40, 0], [60, 40]])  # level 0; downsample 4 -> (0, 0), (10, 0), (15, 10)
    scores = np.array([0.2, 1.0, 0.6])
    image = render_heatmap(thumbnail, coords, scores, patch_size_level0=48, downsample=4.0, alpha=0.5)
    jet = colormaps["jet"]

    def blend(score: float) -> np.ndarray:
        return np.rint(0.5 * 200 + 0.5 * np.asarray(jet(score)[:3]) * 255).astype(np.uint8)

    np.testing.assert_array_equal(image[5, 5], blend(0.2))  # first patch only (12 px boxes)
    np.testing.assert_array_equal(image[5, 11], blend(1.0))  # first and second overlap: the higher score
    np.testing.assert_array_equal(image[15, 20], blend(0.6))
    np.testing.assert_array_equal(image[19, 5], [200, 200, 200])  # no patch: the thumbnail
    assert image.shape == thumbnail.shape and image.dtype == np.uint8


@pytest.mark.parametrize(
    ("thumbnail", "scores", "size"),
    [
        (np.zeros((4, 4), np.uint8), [0.5], 8),  # not RGB
        (np.zeros((4, 4, 3), np.uint8), [1.5], 8),  # score outside [0, 1]
        (np.zeros((4, 4, 3), np.uint8), [0.5, 0.5], 8),  # one score per coordinate
        (np.zeros((4, 4, 3), np.uint8), [0.5], 0),  # patch size
    ],
)
def test_render_heatmap_ill_arg(thumbnail: np.ndarray, scores: list[float], size: int) -> None:
    with pytest.raises(ValueError):
        render_heatmap(thumbnail, np.zeros((1, 2)), np.array(scores), patch_size_level0=size, downsample=1.0)


def test_save_attention_heatmap_over_slide(tmp_path: Path) -> None:
    slide = tmp_path / "slide.tif"
    write_demo_slide(slide, seed=1, size=(1024, 512), tumor="macro", mpp=0.5)
    coords = np.array([[0, 0], [256, 0], [512, 256]])
    out = save_attention_heatmap(
        slide, coords, np.array([0.1, 0.7, 0.2]), 256, tmp_path / "maps" / "heat.png", thumbnail_mpp=4.0
    )
    image = cv2.imread(str(out))
    assert image.shape[:2] == (64, 128)  # 1024 x 512 px at 0.5 um/px, drawn at 4 um/px
    assert not list((tmp_path / "maps").glob(".*.tmp"))

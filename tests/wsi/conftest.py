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

"""Fixture factory for small tiled TIFF slides with controllable defects."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from skimage import data


def tissue_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """uint8 ``[height, width, 3]``: glass background with one elliptical piece of real IHC tissue texture."""
    rng = np.random.default_rng(seed)
    texture = data.immunohistochemistry()
    reps = (height // texture.shape[0] + 1, width // texture.shape[1] + 1, 1)
    image = np.full((height, width, 3), 238, np.uint8)
    tiled = np.tile(texture, reps)[:height, :width]
    yy, xx = np.mgrid[:height, :width]
    cx, cy = width * rng.uniform(0.4, 0.6), height * rng.uniform(0.4, 0.6)
    inside = ((xx - cx) / (width * 0.3)) ** 2 + ((yy - cy) / (height * 0.3)) ** 2 < 1
    image[inside] = tiled[inside]
    return image


def write_tiff(
    path: Path,
    image: np.ndarray,
    *,
    n_levels: int = 2,
    mpp: float | None = 0.5,
    tile: int = 256,
    compression: str | None = "jpeg",
    downsample: int = 4,
) -> Path:
    """Pyramidal tiled TIFF, one page per level, resolution tags in centimeters when ``mpp`` is given."""
    levels = [image]
    for _ in range(n_levels - 1):
        previous = levels[-1]
        size = (max(1, previous.shape[1] // downsample), max(1, previous.shape[0] // downsample))
        levels.append(cv2.resize(previous, size, interpolation=cv2.INTER_AREA))
    with tifffile.TiffWriter(path) as writer:
        for index, level in enumerate(levels):
            extra = {}
            if mpp is not None:
                px_per_cm = 1e4 / (mpp * downsample**index)
                extra = {"resolution": (px_per_cm, px_per_cm), "resolutionunit": "CENTIMETER"}
            writer.write(
                level,
                tile=(tile, tile),
                photometric="rgb",
                compression=compression,
                subfiletype=0 if index == 0 else 1,
                **extra,
            )
    return path


@pytest.fixture
def make_tiff(tmp_path: Path) -> Callable[..., Path]:
    """``make_tiff(name, width=1024, height=768, **write_tiff_kwargs)`` -> path of a new slide in ``tmp_path``."""

    def factory(name: str = "slide.tif", width: int = 1024, height: int = 768, seed: int = 0, **kwargs) -> Path:
        return write_tiff(tmp_path / name, tissue_image(width, height, seed), **kwargs)

    return factory

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

"""Fixture factories of the reliability suite: damaged slides, feature files, and the file-naming check."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile

from monai_ext.wsi.store import write_features
from tests.wsi.conftest import tissue_image, write_tiff

REPO = Path(__file__).resolve().parents[2]


def assert_names_file(error: BaseException, path: Path) -> None:
    """The error's message names ``path`` (and, for slide errors, its ``path`` attribute is that file)."""
    assert str(path) in str(error), f"{path} not named in: {error}"
    if hasattr(error, "path"):
        assert Path(error.path) == path


def write_shared_tile_tiff(path: Path, sizes: list[int], *, mpp: float = 0.5, tile: int = 256) -> Path:
    """A consistent pyramidal TIFF of ``sizes[0]`` x ``sizes[0]`` pixels whose tiles all point at one stored tile.

    Uncompressed glass-coloured tiles, one page per level; a 65536 x 65536 slide (12 GiB decoded) takes about
    1 MB on disk because every tile offset of a level points at the same bytes.
    """
    with tifffile.TiffWriter(path) as writer:
        for index, size in enumerate(sizes):
            level_mpp = mpp * sizes[0] / size
            writer.write(
                np.full((tile, tile, 3), 238, np.uint8),
                tile=(tile, tile),
                photometric="rgb",
                subfiletype=0 if index == 0 else 1,
                resolution=(1e4 / level_mpp, 1e4 / level_mpp),
                resolutionunit="CENTIMETER",
            )
    with tifffile.TiffFile(path, mode="r+") as tif:
        for page, size in zip(tif.pages, sizes, strict=True):
            offset, count = page.dataoffsets[0], page.databytecounts[0]
            n_tiles = math.ceil(size / tile) ** 2
            page.tags["ImageWidth"].overwrite(size)
            page.tags["ImageLength"].overwrite(size)
            page.tags["TileOffsets"].overwrite([offset] * n_tiles)
            page.tags["TileByteCounts"].overwrite([count] * n_tiles)
    return path


def write_small_features(path: Path, n: int = 5, d: int = 4, **kwargs) -> tuple[Path, np.ndarray, np.ndarray]:
    """A valid feature file of ``n`` random patches of width ``d``; returns its path, features and coords."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(n, d)).astype(np.float32)
    coords = rng.integers(0, 10_000, size=(n, 2))
    args = {"slide_id": path.stem, "encoder": "enc@abc", "patch_size": 256, "mpp": 0.5, "level": 0, **kwargs}
    return write_features(path, features, coords, **args), features, coords


@pytest.fixture
def make_tiff(tmp_path: Path) -> Callable[..., Path]:
    """``make_tiff(name, width=1024, height=768, seed=0, **write_tiff_kwargs)`` -> a new slide in ``tmp_path``."""

    def factory(name: str = "slide.tif", width: int = 1024, height: int = 768, seed: int = 0, **kwargs) -> Path:
        return write_tiff(tmp_path / name, tissue_image(width, height, seed), **kwargs)

    return factory

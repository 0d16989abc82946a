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

"""Slide readers behind one interface: cuCIM first, OpenSlide for what cuCIM cannot read.

Both return RGB ``uint8`` arrays ``[H, W, 3]`` (single region) or ``[B, H, W, 3]`` (batches); locations are level-0
pixel coordinates of the top-left corner, sizes are in pixels of the requested level.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from monai.utils import optional_import

# cuCIM reads its configuration once, when it loads, from $CUCIM_CONFIG_PATH: point it at ours unless the user chose
# a file. Ours turns the tile cache off. With cuCIM 26.10's per-process cache on, reading one demo slide's thumbnail
# made a later read of another slide's thumbnail return mostly white pixels in the same process (reproduced on
# two files of a 16-patient demo cohort; the cache speeds unaligned reads up ~3x, see docs/performance.md, but
# wrong pixels are not a price we pay). The Python `CuImage.cache()` call had no effect in cuCIM 26.10.
CUCIM_CONFIG = Path(__file__).resolve().parents[1] / "resources" / "cucim.json"
os.environ.setdefault("CUCIM_CONFIG_PATH", str(CUCIM_CONFIG))

CuImage, has_cucim = optional_import("cucim", name="CuImage")
openslide, has_openslide = optional_import("openslide")

UNIT_TO_MICROMETER = {
    "micrometer": 1.0,
    "um": 1.0,
    "µm": 1.0,
    "nanometer": 1e-3,
    "nm": 1e-3,
    "millimeter": 1e3,
    "mm": 1e3,
    "centimeter": 1e4,
    "cm": 1e4,
    "inch": 25400.0,
}


@dataclass(frozen=True)
class SlideInfo:
    """What is known about an opened slide before any pixel is read.

    Attributes:
        path: the slide file.
        backend: ``"cucim"`` or ``"openslide"``.
        level_dimensions: (width, height) of each pyramid level, level 0 first.
        level_downsamples: downsample factor of each level relative to level 0.
        tile_sizes: (width, height) of the encoded tiles of each level; (0, 0) when unknown or not tiled.
        mpp: micrometers per pixel at level 0.
        mpp_source: ``"file"`` or ``"manifest"``.
        tiff_pages: TIFF page index of each level when the file is a TIFF read by cuCIM, else empty.
    """

    path: Path
    backend: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    tile_sizes: tuple[tuple[int, int], ...]
    mpp: float
    mpp_source: str
    tiff_pages: tuple[int, ...] = ()

    @property
    def n_levels(self) -> int:
        """Number of pyramid levels."""
        return len(self.level_dimensions)

    def level_mpp(self, level: int) -> float:
        """Micrometers per pixel at ``level``."""
        return self.mpp * self.level_downsamples[level]


class SlideBackend(abc.ABC):
    """A readable slide. Use :func:`monai_ext.wsi.open.open_slide` to get one; it validates the file first."""

    path: Path

    @property
    @abc.abstractmethod
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """(width, height) per level as the reader sees them."""

    @property
    @abc.abstractmethod
    def level_downsamples(self) -> tuple[float, ...]:
        """Downsample factor per level as the reader sees them."""

    @abc.abstractmethod
    def declared_mpp(self) -> float | None:
        """Level-0 micrometers per pixel declared by the file, or None when the file has none."""

    def tile_size(self, level: int) -> tuple[int, int]:
        """(width, height) of the encoded tiles of ``level`` as the reader reports them; (0, 0) when unknown."""
        return (0, 0)

    @abc.abstractmethod
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """One region: level-0 ``location`` (x, y), ``size`` (w, h) at ``level`` -> ``[h, w, 3]`` uint8."""

    def read_regions(
        self,
        locations: Sequence[tuple[int, int]],
        level: int,
        size: tuple[int, int],
        *,
        batch_size: int,
        num_workers: int,
    ) -> Iterator[np.ndarray]:
        """Batches ``[B, h, w, 3]`` uint8 for ``locations`` in order (last batch may be short).

        A batch may be a view of the reader's own buffer: it is only valid until the next batch is requested.
        """
        for start in range(0, len(locations), batch_size):
            chunk = locations[start : start + batch_size]
            yield np.stack([self.read_region(loc, level, size) for loc in chunk])

    @abc.abstractmethod
    def close(self) -> None:
        """Release the file handle."""


class CuCIMBackend(SlideBackend):
    """cuCIM ``CuImage`` reader; batched reads use cuCIM's own worker threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._image = CuImage(str(path))
        self._resolutions = self._image.resolutions

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple((int(w), int(h)) for w, h in self._resolutions["level_dimensions"])

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(float(d) for d in self._resolutions["level_downsamples"])

    def declared_mpp(self) -> float | None:
        """Spacing with a known unit; cuCIM's ``1.0`` with an empty unit means *no resolution in the file*."""
        spacing, units = self._image.spacing(), self._image.spacing_units()
        dims = self._image.dims
        x_axis = dims.index("X") if "X" in dims else 1
        unit = str(units[x_axis]).strip().lower()
        if unit in UNIT_TO_MICROMETER:
            return float(spacing[x_axis]) * UNIT_TO_MICROMETER[unit]
        aperio_mpp = self._image.metadata.get("aperio", {}).get("MPP")
        return float(aperio_mpp) if aperio_mpp not in (None, "") else None

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        region = self._image.read_region((int(location[0]), int(location[1])), (int(size[0]), int(size[1])), level)
        return np.array(np.asarray(region)[..., :3], copy=True)

    def read_regions(
        self,
        locations: Sequence[tuple[int, int]],
        level: int,
        size: tuple[int, int],
        *,
        batch_size: int,
        num_workers: int,
    ) -> Iterator[np.ndarray]:
        # cuCIM 26.10 with numpy 2 rejects an ndarray of locations: it must be a list of tuples of Python ints.
        location_list = [(int(x), int(y)) for x, y in locations]
        if not location_list:
            return
        batches = self._image.read_region(
            location_list, (int(size[0]), int(size[1])), level, num_workers=num_workers, batch_size=batch_size
        )
        for batch in batches:
            # No copy: the memory belongs to cuCIM and stays valid until the iterator moves on (see the base class).
            array = np.asarray(batch)[..., :3]
            yield array if array.ndim == 4 else array[None]

    def close(self) -> None:
        self._image.close()


def openslide_recognises(path: Path) -> bool:
    """Whether OpenSlide identifies the file's vendor format (False when OpenSlide is absent)."""
    return bool(has_openslide and openslide.OpenSlide.detect_format(str(path)))


class OpenSlideBackend(SlideBackend):
    """OpenSlide reader, the fallback for deflate TIFF, DICOM-WSI and vendor formats cuCIM does not read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._slide = openslide.OpenSlide(str(path))
        except openslide.OpenSlideError as err:
            raise RuntimeError(str(err)) from err

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(float(d) for d in self._slide.level_downsamples)

    def declared_mpp(self) -> float | None:
        value = self._slide.properties.get(openslide.PROPERTY_NAME_MPP_X)
        return float(value) if value not in (None, "") else None

    def tile_size(self, level: int) -> tuple[int, int]:
        width = self._slide.properties.get(f"openslide.level[{level}].tile-width")
        height = self._slide.properties.get(f"openslide.level[{level}].tile-height")
        return (int(width), int(height)) if width and height else (0, 0)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        rgba = np.asarray(
            self._slide.read_region((int(location[0]), int(location[1])), level, (int(size[0]), int(size[1])))
        )
        # OpenSlide returns premultiplied RGBA with transparent pixels outside the scanned area: show them as glass.
        alpha = rgba[..., 3:4].astype(np.float32) / 255.0
        rgb = rgba[..., :3].astype(np.float32) + 255.0 * (1.0 - alpha)
        return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)

    def close(self) -> None:
        self._slide.close()

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

"""Open a whole-slide image safely: validate the file before any pixel is decoded, then pick a reader.

Order of checks: the file exists; its structure is readable (TIFF page directory inspected with tifffile, so cuCIM
never sees a file it would crash on); the declared pixel count fits the budget; tile data lies inside the file and
the pyramid is consistent; the reader sees every level the file declares; the pixel spacing is known and plausible.
cuCIM reads every TIFF whose compression it supports; OpenSlide takes the rest (deflate TIFF, DICOM-WSI, vendor
formats).
"""

from __future__ import annotations

import logging
from pathlib import Path

from monai_ext.wsi.backends import (
    CuCIMBackend,
    OpenSlideBackend,
    SlideBackend,
    SlideInfo,
    has_cucim,
    has_openslide,
    openslide_recognises,
)
from monai_ext.wsi.errors import (
    CorruptSlideError,
    ImplausibleMPPError,
    MissingMPPError,
    SlideNotFoundError,
    UnsupportedSlideError,
)
from monai_ext.wsi.tiff_layout import TiffLayout, inspect_tiff, is_tiff

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 200_000 * 200_000
DEFAULT_MPP_RANGE = (0.1, 2.0)


class Slide:
    """An opened, validated slide: :attr:`info` plus the reader's region functions.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, backend: SlideBackend, info: SlideInfo) -> None:
        self.backend = backend
        self.info = info

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]):
        """See :meth:`SlideBackend.read_region`."""
        return self.backend.read_region(location, level, size)

    def read_regions(self, locations, level: int, size: tuple[int, int], *, batch_size: int = 32, num_workers: int = 2):
        """See :meth:`SlideBackend.read_regions`."""
        return self.backend.read_regions(locations, level, size, batch_size=batch_size, num_workers=num_workers)

    def close(self) -> None:
        """Release the reader."""
        self.backend.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_slide(
    path: str | Path,
    *,
    mpp: float | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    mpp_range: tuple[float, float] = DEFAULT_MPP_RANGE,
) -> Slide:
    """Validate and open a slide.

    Args:
        path: the slide file.
        mpp: level-0 micrometers per pixel from the manifest; used when given (it overrides the file's value,
            with a warning when the two disagree by more than 5%), required when the file declares none.
        max_pixels: the largest accepted pixel count of any level (decompression-bomb guard).
        mpp_range: plausible micrometers per pixel (inclusive).

    Returns:
        the opened :class:`Slide`.

    Raises:
        SlideNotFoundError, UnsupportedSlideError, CorruptSlideError, SlideTooLargeError, MissingMPPError,
        ImplausibleMPPError: each names the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise SlideNotFoundError(path, "file not found (check the path or the manifest's slide_path column)")
    layout = inspect_tiff(path, max_pixels=max_pixels) if is_tiff(path) else None
    backend = _open_backend(path, layout)
    try:
        info = _describe(path, backend, layout, mpp, mpp_range)
    except Exception:
        backend.close()
        raise
    return Slide(backend, info)


def _open_backend(path: Path, layout: TiffLayout | None) -> SlideBackend:
    """cuCIM for TIFFs it decodes, OpenSlide otherwise; a file neither reads is unsupported."""
    if layout is not None and layout.cucim_readable and has_cucim:
        try:
            return CuCIMBackend(path)
        except (RuntimeError, ValueError) as err:
            logger.info("%s: cuCIM could not open the file (%s); trying OpenSlide", path, err)
    if not has_openslide:
        raise UnsupportedSlideError(path, "cuCIM cannot read this file and OpenSlide is not installed")
    if layout is None and not openslide_recognises(path):
        raise UnsupportedSlideError(path, "not a TIFF and not a format OpenSlide recognises (DICOM-WSI, MRXS, ...)")
    try:
        return OpenSlideBackend(path)
    except RuntimeError as err:
        detail = f"compression {layout.levels[0].compression}, " if layout is not None else ""
        raise UnsupportedSlideError(path, f"no reader can open it ({detail}OpenSlide: {err})") from err


def _describe(
    path: Path,
    backend: SlideBackend,
    layout: TiffLayout | None,
    manifest_mpp: float | None,
    mpp_range: tuple[float, float],
) -> SlideInfo:
    """Cross-check the reader's pyramid with the file's declaration and resolve the pixel spacing."""
    dimensions = backend.level_dimensions
    if layout is not None and isinstance(backend, CuCIMBackend):
        declared = tuple(level.size for level in layout.levels)
        if dimensions != declared:
            raise CorruptSlideError(
                path,
                f"the reader sees levels {list(dimensions)} but the file declares {list(declared)} "
                "(truncated or malformed pyramid)",
            )
        tiles = tuple(level.tile for level in layout.levels)
        pages = tuple(level.page for level in layout.levels)
    else:
        tiles = tuple(backend.tile_size(level) for level in range(len(dimensions)))
        pages = ()
    mpp, source = _resolve_mpp(path, backend.declared_mpp(), manifest_mpp)
    if not mpp_range[0] <= mpp <= mpp_range[1]:
        raise ImplausibleMPPError(
            path,
            f"pixel spacing {mpp:.4g} um/px ({source}) is outside the plausible range {mpp_range[0]}-"
            f"{mpp_range[1]} um/px; give the right value in the manifest's mpp column",
        )
    return SlideInfo(
        path=path,
        backend="cucim" if isinstance(backend, CuCIMBackend) else "openslide",
        level_dimensions=dimensions,
        level_downsamples=backend.level_downsamples,
        tile_sizes=tiles,
        mpp=mpp,
        mpp_source=source,
        tiff_pages=pages,
    )


def _resolve_mpp(path: Path, file_mpp: float | None, manifest_mpp: float | None) -> tuple[float, str]:
    """The manifest's value when given, else the file's; neither is a :class:`MissingMPPError`."""
    if manifest_mpp is not None:
        if file_mpp is not None and abs(file_mpp - manifest_mpp) > 0.05 * manifest_mpp:
            logger.warning("%s: manifest mpp %.4g overrides the file's %.4g", path, manifest_mpp, file_mpp)
        return float(manifest_mpp), "manifest"
    if file_mpp is None:
        raise MissingMPPError(path, "the file declares no pixel spacing (mpp); give it in the manifest's mpp column")
    return file_mpp, "file"

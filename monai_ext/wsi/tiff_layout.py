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

"""Read a TIFF's structure (pages, tiles, compression, byte ranges) without decoding a pixel, and check it.

cuCIM must never see a file it cannot handle: on some (deflate TIFFs, decompression bombs) it crashes the whole
process instead of raising. This module inspects the file with ``tifffile`` first, so problems become exceptions
that name the file.
"""

from __future__ import annotations

import contextlib
import logging
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import tifffile

from monai_ext.wsi.errors import CorruptSlideError, SlideTooLargeError

# TIFF compression codes cuCIM 26.x decodes on CPU (checked on this machine): none, LZW, JPEG, Aperio JPEG 2000.
CUCIM_COMPRESSIONS = frozenset({1, 5, 7, 33003, 33005})
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


@dataclass(frozen=True)
class TiffLevel:
    """One pyramid level as declared by the file: ``page`` index, ``size`` (w, h), ``tile`` (w, h) or (0, 0)."""

    page: int
    size: tuple[int, int]
    tile: tuple[int, int]
    compression: int


@dataclass(frozen=True)
class TiffLayout:
    """The pyramid levels of a TIFF, largest first, as the file declares them."""

    path: Path
    levels: tuple[TiffLevel, ...]

    @property
    def cucim_readable(self) -> bool:
        """Whether every level uses a compression cuCIM decodes."""
        return all(level.compression in CUCIM_COMPRESSIONS for level in self.levels)


def is_tiff(path: Path) -> bool:
    """Whether the file starts with a TIFF or BigTIFF signature."""
    with open(path, "rb") as handle:
        return handle.read(4) in TIFF_MAGICS


def inspect_tiff(path: Path, *, max_pixels: int) -> TiffLayout:
    """List the pyramid levels of a TIFF and validate sizes, tile tables and byte ranges.

    The levels are the first page plus every later tiled page with the same samples per pixel that is smaller than
    the previous level (label and macro images in Aperio files are stripped pages, so they are left out).

    Args:
        path: the TIFF file.
        max_pixels: the largest accepted pixel count of any level.

    Raises:
        SlideTooLargeError: a level declares more than ``max_pixels`` pixels.
        CorruptSlideError: unreadable page directory, tile data past the end of the file, a tile table of the wrong
            length, or levels that do not shrink consistently.
    """
    file_size = path.stat().st_size
    try:
        with _tifffile_warnings() as warnings, tifffile.TiffFile(path) as tif:
            pages = list(tif.pages)
            if not pages:
                raise CorruptSlideError(path, "TIFF header without any image page (empty or truncated file)")
            first = pages[0]
            levels: list[TiffLevel] = []
            for page in pages:
                if levels and not (page.is_tiled and page.samplesperpixel == first.samplesperpixel):
                    continue
                width, height = int(page.imagewidth), int(page.imagelength)
                if levels and (width >= levels[-1].size[0] or height >= levels[-1].size[1]):
                    continue
                _check_page(path, page, len(levels), width, height, file_size, max_pixels)
                tile = (int(page.tilewidth), int(page.tilelength)) if page.is_tiled else (0, 0)
                levels.append(TiffLevel(page=page.index, size=(width, height), tile=tile, compression=page.compression))
    except (tifffile.TiffFileError, struct.error, ValueError, IndexError) as err:
        raise CorruptSlideError(path, f"unreadable TIFF structure ({err})") from err
    if any("invalid page offset" in message for message in warnings):
        raise CorruptSlideError(path, "truncated: a page directory points past the end of the file (incomplete copy?)")
    _check_pyramid(path, levels)
    return TiffLayout(path=path, levels=tuple(levels))


@contextlib.contextmanager
def _tifffile_warnings() -> Iterator[list[str]]:
    """Collect (and keep off the console) the warnings tifffile logs while parsing, e.g. dangling page offsets."""
    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    tiff_logger = logging.getLogger("tifffile")
    handler, propagate = _Collect(level=logging.WARNING), tiff_logger.propagate
    tiff_logger.addHandler(handler)
    tiff_logger.propagate = False
    try:
        yield messages
    finally:
        tiff_logger.removeHandler(handler)
        tiff_logger.propagate = propagate


def _check_page(
    path: Path, page: tifffile.TiffPage, level: int, width: int, height: int, file_size: int, max_pixels: int
) -> None:
    """Validate one level's declared size and tile table against the budget and the file length."""
    if width * height > max_pixels:
        raise SlideTooLargeError(
            path,
            f"level {level} declares {width} x {height} = {width * height:,} pixels, above the budget of "
            f"{max_pixels:,} (raise max_pixels if the file is genuine)",
        )
    if page.is_tiled:
        per_plane = math.ceil(width / page.tilewidth) * math.ceil(height / page.tilelength)
        planes = page.samplesperpixel if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE else 1
        if len(page.dataoffsets) != per_plane * planes:
            raise CorruptSlideError(
                path,
                f"level {level} should have {per_plane * planes} tiles but its tile table lists "
                f"{len(page.dataoffsets)}",
            )
    ends = [offset + count for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True) if count]
    if ends and max(ends) > file_size:
        raise CorruptSlideError(
            path,
            f"truncated: level {level} image data ends at byte {max(ends):,} but the file has {file_size:,} "
            "bytes (incomplete copy or download?)",
        )


def _check_pyramid(path: Path, levels: list[TiffLevel]) -> None:
    """Each level must be a consistent downscale of level 0 (same factor in x and y, within rounding)."""
    base_w, base_h = levels[0].size
    for index, level in enumerate(levels[1:], start=1):
        factor_x, factor_y = base_w / level.size[0], base_h / level.size[1]
        if abs(factor_x - factor_y) > max(factor_x, factor_y) * 0.02 + 1.0 / min(level.size):
            raise CorruptSlideError(
                path,
                f"inconsistent pyramid: level {index} is {level.size[0]} x {level.size[1]}, a downscale of "
                f"{factor_x:.3f} in x but {factor_y:.3f} in y from level 0 ({base_w} x {base_h})",
            )

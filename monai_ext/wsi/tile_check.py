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

"""Find the encoded tiles of a TIFF level that cannot be decoded, so no patch built from them reaches an encoder.

cuCIM does not raise on a tile it cannot decode: it prints a decoder error and hands back the output buffer as it
is. In a fresh process that buffer is zeros, but in a process that has already freed image memory it holds stale
pixels from elsewhere (seen with cuCIM 26.10): a zero test alone would let such a patch through. So we check the
file itself: a tile with no bytes or without JPEG start/end markers is broken before anything is read, and when the
decoder complains during a batch, that batch's tiles are decoded independently (imagecodecs through tifffile) to
find the culprits.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import tifffile

JPEG_COMPRESSION = 7
JPEG_SOI, JPEG_EOI = b"\xff\xd8", b"\xff\xd9"


class TileChecker:
    """Structural and decode checks of the tiles of one TIFF page. Use as a context manager.

    Args:
        path: the TIFF file.
        page: index of the page holding the pyramid level.
    """

    def __init__(self, path: str | Path, page: int) -> None:
        self.path = Path(path)
        self._tif = tifffile.TiffFile(self.path)
        self._page = self._tif.pages[page]
        self._fd = os.open(self.path, os.O_RDONLY)
        self.tile_w, self.tile_h = int(self._page.tilewidth), int(self._page.tilelength)
        self.tiles_across = -(-int(self._page.imagewidth) // self.tile_w)
        self._offsets = np.asarray(self._page.dataoffsets, dtype=np.int64)
        self._counts = np.asarray(self._page.databytecounts, dtype=np.int64)
        self._verdict: dict[int, bool] = {}

    def tiles_of(self, x: int, y: int, size: int) -> list[int]:
        """Row-major indices of the tiles a ``size`` px square at level pixel (x, y) overlaps."""
        cols = range(x // self.tile_w, (x + size - 1) // self.tile_w + 1)
        rows = range(y // self.tile_h, (y + size - 1) // self.tile_h + 1)
        return [row * self.tiles_across + col for row in rows for col in cols]

    def structurally_broken(self, tiles: Iterable[int]) -> set[int]:
        """Tiles with no bytes, or (JPEG) without start-of-image / end-of-image markers. Cheap: 4 bytes per tile."""
        broken = set()
        for tile in tiles:
            count = int(self._counts[tile])
            if count == 0:
                broken.add(tile)
            elif self._page.compression == JPEG_COMPRESSION:
                offset = int(self._offsets[tile])
                head, tail = os.pread(self._fd, 2, offset), os.pread(self._fd, 2, offset + count - 2)
                if head != JPEG_SOI or tail != JPEG_EOI:
                    broken.add(tile)
        return broken

    def decode_broken(self, tiles: Iterable[int]) -> set[int]:
        """Tiles that fail to decode with tifffile's codecs (results are cached per tile)."""
        broken = set()
        for tile in tiles:
            if tile not in self._verdict:
                data = os.pread(self._fd, int(self._counts[tile]), int(self._offsets[tile]))
                try:
                    self._page.decode(data, tile, jpegtables=self._page.jpegtables)
                    self._verdict[tile] = False
                except Exception:
                    self._verdict[tile] = True
            if self._verdict[tile]:
                broken.add(tile)
        return broken

    def close(self) -> None:
        """Release the file handles."""
        os.close(self._fd)
        self._tif.close()

    def __enter__(self) -> TileChecker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

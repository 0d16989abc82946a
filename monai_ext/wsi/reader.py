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

"""Batched patch reading for a torch ``DataLoader``, with broken-tile detection.

cuCIM's batched ``read_region`` (one list of locations per slide, its own decoder threads decoding ahead) produces
the patches; the dataset turns them into channel-first tensors (channels-last memory), resizes them when the
pyramid level is finer than the target, and applies an optional MONAI dictionary transform. A broken tile must
never become a patch: cuCIM prints a decoder error and returns whatever its buffer holds (zeros or stale pixels).
Patches touching a tile that is structurally broken (:class:`~monai_ext.wsi.tile_check.TileChecker`), that fails
an independent decode after the decoder complained (the batches in flight at that moment are all checked), or that
came back with an all-zero tile-sized block are dropped and reported in ``broken_coords``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from monai_ext._quiet import native_output_watch
from monai_ext.wsi.grid import PatchGrid
from monai_ext.wsi.open import open_slide
from monai_ext.wsi.strips import StripCutter, plan_strips
from monai_ext.wsi.tile_check import TileChecker

SAMPLE_STRIDE = 8
PREFETCH_BATCHES = 2  # cuCIM's default prefetch_factor: batches decoded ahead of the one handed out


def broken_patch_mask(batch: np.ndarray, origins: np.ndarray, tile_size: tuple[int, int]) -> np.ndarray:
    """Which patches contain a tile-sized block that is entirely zero (the signature of an undecodable tile).

    Args:
        batch: uint8 ``[B, H, W, C]`` patches as read.
        origins: int ``[B, 2]`` (x, y) of each patch in pixels of the level it was read from.
        tile_size: (width, height) of the file's tiles at that level; (0, 0) checks the whole patch instead.

    Returns:
        bool ``[B]``, True for a broken patch.
    """
    n, height, width = batch.shape[:3]
    if tile_size[0] and tile_size[1]:
        tile_w, tile_h = tile_size
    else:  # one block: the whole patch
        tile_w, tile_h, origins = width, height, np.zeros_like(origins)
    broken = np.zeros(n, dtype=bool)
    if n == 0:
        return broken
    # Prefilter on a sparse sample of one channel: a block can only be all zero if its sampled values are (a real
    # block whose sample is zero only passes to the full check). An integral image of the sample gives the counts of
    # nonzero samples of every block of every patch at once.
    step = SAMPLE_STRIDE
    sampled = batch[:, ::step, ::step, min(1, batch.shape[-1] - 1)] != 0
    integral = np.zeros((n, sampled.shape[1] + 1, sampled.shape[2] + 1), np.int32)
    np.cumsum(np.cumsum(sampled, axis=1, dtype=np.int32), axis=2, out=integral[:, 1:, 1:])
    rows = _block_edges(origins[:, 1], height, tile_h)
    cols = _block_edges(origins[:, 0], width, tile_w)
    r, c = -(-rows // step), -(-cols // step)  # first sample index at or after each edge
    patch = np.arange(n)[:, None, None]
    r0, r1, c0, c1 = r[:, :-1, None], r[:, 1:, None], c[:, None, :-1], c[:, None, 1:]
    counts = integral[patch, r1, c1] - integral[patch, r0, c1] - integral[patch, r1, c0] + integral[patch, r0, c0]
    not_empty = (np.diff(rows)[:, :, None] > 0) & (np.diff(cols)[:, None, :] > 0)
    for index, i, j in np.argwhere((counts == 0) & not_empty):
        top, bottom, left, right = rows[index, i], rows[index, i + 1], cols[index, j], cols[index, j + 1]
        broken[index] |= not batch[index, top:bottom, left:right].any()
    return broken


def _block_edges(origins: np.ndarray, length: int, tile: int) -> np.ndarray:
    """int64 ``[B, k]`` patch-local edges of the tile blocks of patches starting at ``origins`` and ``length``
    pixels long: 0, the tile edges inside the patch, ``length`` (repeated at the end, giving empty blocks)."""
    origins = np.asarray(origins, np.int64)
    first = (tile - origins % tile) % tile
    first[first == 0] = tile
    inner = np.minimum(first[:, None] + tile * np.arange(-(-length // tile))[None, :], length)
    ends = np.full((len(origins), 1), length, np.int64)
    return np.concatenate([np.zeros_like(ends), inner, ends], axis=1)


@dataclass(frozen=True)
class _BatchPlan:
    """One batch before reading: grid positions, level-0 coords, level origins, patches to read, their tiles."""

    index: np.ndarray
    coords: np.ndarray
    origins: np.ndarray
    good: np.ndarray
    tiles: list[list[int]]


class PatchDataset(IterableDataset):
    """Yields batches of patches of one slide, in grid order.

    Each item is a dict: ``image`` uint8 ``[b, 3, P, P]``, ``coords`` int64 ``[b, 2]`` (level-0 x, y of the kept
    patches), ``broken_coords`` int64 ``[k, 2]`` (patches dropped because a tile failed to decode), ``index`` int64
    ``[b]`` (positions in the grid). With ``DataLoader`` workers, batches are dealt round-robin to the workers,
    so the loader's output order is the grid order.

    While an iteration is open, file descriptors 1 and 2 of the reading process go to a temporary file: cuCIM's
    decoder reports a broken tile only by printing, at any moment, from its own threads. Without ``DataLoader``
    workers that includes what the consumer prints between batches: it is logged at debug level when the
    iteration ends, and, like a decoder message, makes the batches in flight be checked tile by tile.

    Args:
        slide_path: the slide (reopened inside each worker: reader handles are not shared across processes).
        grid: where to read.
        mpp: manifest pixel spacing forwarded to :func:`open_slide`, if any.
        batch_size: patches per batch (one cuCIM batched read).
        num_threads: cuCIM decoder threads per read.
        transform: optional MONAI dictionary transform applied to each batch dict.
    """

    def __init__(
        self,
        slide_path: str | Path,
        grid: PatchGrid,
        *,
        mpp: float | None = None,
        batch_size: int = 64,
        num_threads: int = 2,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.slide_path = Path(slide_path)
        self.grid = grid
        self.mpp = mpp
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.transform = transform

    def __len__(self) -> int:
        return -(-len(self.grid) // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker = get_worker_info()
        worker_id, n_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        batch_ids = list(range(worker_id, len(self), n_workers))
        if not batch_ids:
            return
        grid = self.grid
        with open_slide(self.slide_path, mpp=self.mpp) as slide, native_output_watch() as decoder_output:
            info = slide.info
            downsample = info.level_downsamples[grid.level]
            checker = TileChecker(self.slide_path, info.tiff_pages[grid.level]) if info.tiff_pages else None
            with checker or contextlib.nullcontext():
                plans = [self._plan(checker, batch_id, downsample) for batch_id in batch_ids]
                # One batched read over every planned patch, so cuCIM decodes ahead of us with its own threads;
                # neighbours in a row are read as one strip when that decodes fewer tiles.
                coords = np.concatenate([plan.coords[plan.good] for plan in plans])
                strips = plan_strips(coords, grid.read_size, downsample, info.tile_sizes[grid.level])
                chunks = slide.read_regions(
                    [tuple(c) for c in strips.locations],
                    grid.level,
                    (strips.width, grid.read_size),
                    batch_size=max(1, self.batch_size * grid.read_size // strips.width),
                    num_workers=self.num_threads,
                )
                pieces = StripCutter(chunks, strips, grid.read_size)
                # Patches a decoder message may concern: everything cuCIM may have decoded since the last look.
                handed_out, verify_until = 0, 0
                for plan in plans:
                    patches = pieces.take(int(plan.good.sum()))
                    if decoder_output.new_text().strip():
                        verify_until = handed_out + len(patches) + (PREFETCH_BATCHES + 1) * self.batch_size
                    verify = handed_out < verify_until
                    handed_out += len(patches)
                    yield self._finish(plan, patches, checker, verify, info.tile_sizes[grid.level])

    def _plan(self, checker: TileChecker | None, batch_id: int, downsample: float) -> _BatchPlan:
        """Which patches of a batch to read: those not touching a structurally broken tile."""
        start = batch_id * self.batch_size
        index = np.arange(start, min(start + self.batch_size, len(self.grid)))
        coords = self.grid.coords[index]
        origins = np.round(coords / downsample).astype(np.int64)
        good = np.ones(len(index), dtype=bool)
        tiles: list[list[int]] = []
        if checker is not None:
            tiles = [checker.tiles_of(int(x), int(y), self.grid.read_size) for x, y in origins]
            bad_tiles = checker.structurally_broken({tile for patch in tiles for tile in patch})
            good &= np.array([not bad_tiles.intersection(patch) for patch in tiles], dtype=bool)
        return _BatchPlan(index, coords, origins, good, tiles)

    def _finish(
        self,
        plan: _BatchPlan,
        patches: np.ndarray,
        checker: TileChecker | None,
        verify: bool,
        tile_size: tuple[int, int],
    ) -> dict[str, torch.Tensor]:
        """Drop patches with an all-zero tile block, and when the decoder complained, patches on failing tiles."""
        good = plan.good.copy()
        readable = ~broken_patch_mask(patches, plan.origins[good], tile_size)
        if checker is not None and verify and len(patches):
            kept_tiles = [plan.tiles[i] for i in np.flatnonzero(good)]
            failing = checker.decode_broken({tile for patch in kept_tiles for tile in patch})
            readable &= np.array([not failing.intersection(patch) for patch in kept_tiles], dtype=bool)
        good[np.flatnonzero(good)[~readable]] = False
        kept = patches if readable.all() else patches[readable]  # avoid copying the common, all-good batch
        return self._to_item(kept, plan.coords[good], plan.coords[~good], plan.index[good])

    def _to_item(
        self, patches: np.ndarray, coords: np.ndarray, broken: np.ndarray, index: np.ndarray
    ) -> dict[str, torch.Tensor]:
        images = torch.from_numpy(np.ascontiguousarray(patches)).permute(0, 3, 1, 2)
        if self.grid.read_size != self.grid.patch_size and len(images):
            size = (self.grid.patch_size, self.grid.patch_size)
            images = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
            images = images.round_().clamp_(0, 255).to(torch.uint8)
        item = {
            "image": images,
            "coords": torch.from_numpy(coords),
            "broken_coords": torch.from_numpy(broken),
            "index": torch.from_numpy(index),
        }
        return self.transform(item) if self.transform is not None else item


def patch_loader(dataset: PatchDataset, *, num_workers: int = 0) -> DataLoader:
    """A ``DataLoader`` over a :class:`PatchDataset` (the dataset already batches, so ``batch_size=None``)."""
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, persistent_workers=False)

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

"""Tissue detection on a low-resolution level: Otsu on saturation, morphology, hole filling, small-object removal.

The mask is computed on a thumbnail resampled to ``thumbnail_mpp`` (8 um/px by default: a 40k-pixel slide at
0.5 um/px becomes 2,500 px), so its cost does not grow with the slide.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from monai_ext.wsi.open import Slide

THUMBNAIL_CHUNK = 4096


def check_known_keys(config_class: type, values: dict[str, Any], what: str) -> None:
    """Raise a ValueError listing the known fields when ``values`` holds keys ``config_class`` does not have."""
    known = {field.name for field in fields(config_class)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {what} parameters {sorted(unknown)}; known: {sorted(known)}")


@dataclass(frozen=True)
class TissueConfig:
    """Parameters of :func:`detect_tissue` (the ``tissue`` section of ``configs/wsi.json``).

    Attributes:
        thumbnail_mpp: resolution of the mask in micrometers per pixel.
        median_kernel: median blur kernel (odd, pixels of the thumbnail) applied to the saturation channel; 3 or 5
            use OpenCV's fast path (7 is 30x slower on a 2,500 px thumbnail).
        min_saturation: saturation floor (0-255): Otsu's threshold is never below it, so a blank slide has no tissue.
        max_value_dark: pixels darker than this value (0-255) in every channel are ignored (black borders, pen).
        closing_um: radius in micrometers of the morphological closing that joins nearby tissue fragments.
        min_object_um2: tissue pieces smaller than this area (square micrometers) are removed.
        max_hole_um2: holes inside tissue smaller than this area are filled (larger ones, e.g. lumina, stay).
    """

    thumbnail_mpp: float = 8.0
    median_kernel: int = 5
    min_saturation: int = 20
    max_value_dark: int = 20
    closing_um: float = 32.0
    min_object_um2: float = 50_000.0
    max_hole_um2: float = 200_000.0

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TissueConfig:
        """Build from a config section; unknown keys are an error that lists the known ones."""
        check_known_keys(cls, values, "tissue")
        return cls(**values)


@dataclass(frozen=True)
class TissueMask:
    """A binary tissue mask and the thumbnail it was computed from.

    Attributes:
        mask: bool ``[h, w]``.
        thumbnail: uint8 ``[h, w, 3]``.
        downsample: level-0 pixels per mask pixel (same in x and y).
    """

    mask: np.ndarray
    thumbnail: np.ndarray
    downsample: float

    @property
    def tissue_fraction(self) -> float:
        """Share of the slide area covered by tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0


def read_thumbnail(slide: Slide, thumbnail_mpp: float, chunk: int = THUMBNAIL_CHUNK) -> tuple[np.ndarray, float]:
    """Read the coarsest level at least as fine as ``thumbnail_mpp`` and resample it to that resolution.

    The level is read in ``chunk`` x ``chunk`` pieces, each shrunk before the next is read, so a slide without a
    usable pyramid costs time, not memory (a 65,536 px single-level slide would be 12 GiB in one read).

    Returns:
        the thumbnail ``[h, w, 3]`` uint8 and its downsample relative to level 0.
    """
    info = slide.info
    candidates = [lvl for lvl in range(info.n_levels) if info.level_mpp(lvl) <= thumbnail_mpp * 1.01]
    level = max(candidates) if candidates else 0
    width, height = info.level_dimensions[level]
    scale = min(1.0, info.level_mpp(level) / thumbnail_mpp)
    if scale >= 0.99:
        scale = 1.0
    out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
    thumbnail = np.empty((out_h, out_w, 3), np.uint8)
    level_downsample = info.level_downsamples[level]
    for top in range(0, height, chunk):
        for left in range(0, width, chunk):
            right, bottom = min(left + chunk, width), min(top + chunk, height)
            location = (round(left * level_downsample), round(top * level_downsample))
            piece = slide.read_region(location, level, (right - left, bottom - top))
            x0, x1 = round(left * scale), round(right * scale)
            y0, y1 = round(top * scale), round(bottom * scale)
            if x1 > x0 and y1 > y0:
                thumbnail[y0:y1, x0:x1] = (
                    piece if scale == 1.0 else cv2.resize(piece, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
                )
    return thumbnail, info.level_dimensions[0][0] / out_w


def tissue_mask_from_rgb(image: np.ndarray, mpp: float, config: TissueConfig) -> np.ndarray:
    """Binary tissue mask of an RGB thumbnail.

    Args:
        image: uint8 ``[h, w, 3]``.
        mpp: micrometers per pixel of ``image`` (converts the config's physical sizes to pixels).
        config: detection parameters.

    Returns:
        bool ``[h, w]``.
    """
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    saturation = hsv[..., 1]
    kernel = config.median_kernel if config.median_kernel % 2 else config.median_kernel + 1
    if min(image.shape[:2]) >= kernel:
        saturation = cv2.medianBlur(saturation, kernel)
    otsu, _ = cv2.threshold(saturation, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = (saturation > max(otsu, config.min_saturation)) & (hsv[..., 2] > config.max_value_dark)
    mask = mask.astype(np.uint8)
    radius = round(config.closing_um / mpp)
    if radius >= 1:
        mask = cv2.morphologyEx(
            mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)
        )
    pixel_area = mpp * mpp
    holes = _small_components(1 - mask, max_area=config.max_hole_um2 / pixel_area, keep_border=False)
    mask |= holes
    return mask.astype(bool) & ~_small_components(mask, max_area=config.min_object_um2 / pixel_area).astype(bool)


def _small_components(binary: np.ndarray, max_area: float, keep_border: bool = True) -> np.ndarray:
    """uint8 mask of the 8-connected components of ``binary`` with area below ``max_area`` pixels.

    With ``keep_border=False``, components touching the image border are never selected (for holes: the glass
    around the tissue is not a hole).
    """
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    selected = stats[:, cv2.CC_STAT_AREA] < max_area
    selected[0] = False  # label 0 is the complement of ``binary``
    if not keep_border:
        height, width = binary.shape
        left, top = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
        right, bottom = left + stats[:, cv2.CC_STAT_WIDTH], top + stats[:, cv2.CC_STAT_HEIGHT]
        selected &= (left > 0) & (top > 0) & (right < width) & (bottom < height)
    return selected.astype(np.uint8)[labels] if count > 1 else np.zeros_like(binary, dtype=np.uint8)


def detect_tissue(slide: Slide, config: TissueConfig | None = None) -> TissueMask:
    """Tissue mask of a slide computed on a thumbnail at ``config.thumbnail_mpp``."""
    config = config or TissueConfig()
    thumbnail, downsample = read_thumbnail(slide, config.thumbnail_mpp)
    mask = tissue_mask_from_rgb(thumbnail, slide.info.mpp * downsample, config)
    return TissueMask(mask=mask, thumbnail=thumbnail, downsample=downsample)


def save_qc_png(path: Path, tissue: TissueMask, coords: np.ndarray | None = None, patch_size_level0: int = 0) -> None:
    """Write the QC picture: thumbnail, tissue outline in green and patch boxes in blue, side by side with the mask.

    Written to a temporary name and renamed, so a crash never leaves half a PNG.
    """
    overlay = tissue.thumbnail.copy()
    contours, _ = cv2.findContours(tissue.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(overlay, contours, -1, (0, 160, 0), 2)
    if coords is not None and len(coords):
        scaled = np.round(np.asarray(coords) / tissue.downsample).astype(int)
        side = max(1, round(patch_size_level0 / tissue.downsample))
        for x, y in scaled:
            cv2.rectangle(overlay, (int(x), int(y)), (int(x) + side - 1, int(y) + side - 1), (40, 80, 220), 1)
    mask_rgb = np.repeat((tissue.mask[..., None] * 255).astype(np.uint8), 3, axis=2)
    panel = np.concatenate([overlay, np.full((overlay.shape[0], 8, 3), 255, np.uint8), mask_rgb], axis=1)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"could not encode the QC image for {path}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(encoded.tobytes())
    tmp.replace(path)

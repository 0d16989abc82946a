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

"""Attention heatmaps: a MIL model's patch attention drawn over the slide thumbnail.

Scores are the percentile ranks of the attention within the slide, as in CLAM's heatmaps (Lu et al. 2021,
https://doi.org/10.1038/s41551-020-00682-w): attention weights sum to 1 over a bag, so their raw scale depends on
the number of patches, while ranks compare across slides. Each patch box is filled with its score's colour and
blended into the thumbnail; pixels covered by no patch keep the thumbnail.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from matplotlib import colormaps
from scipy.stats import rankdata

from monai_ext.wsi.open import open_slide
from monai_ext.wsi.tissue import read_thumbnail

__all__ = ["attention_percentiles", "render_heatmap", "save_attention_heatmap"]


def attention_percentiles(attention: np.ndarray) -> np.ndarray:
    """Percentile rank of each patch's attention, in ``(0, 1]`` (ties share their mean rank).

    Args:
        attention: ``[N]`` attention weights of one slide's patches.

    Raises:
        ValueError: not a non-empty finite 1-D array.
    """
    values = np.asarray(attention, dtype=float)
    if values.ndim != 1 or values.size == 0 or not np.isfinite(values).all():
        raise ValueError(f"attention must be a non-empty finite 1-D array, got shape {values.shape}")
    return rankdata(values) / values.size


def render_heatmap(
    thumbnail: np.ndarray,
    coords: np.ndarray,
    scores: np.ndarray,
    patch_size_level0: float,
    downsample: float,
    *,
    alpha: float = 0.5,
    colormap: str = "jet",
) -> np.ndarray:
    """Blend per-patch scores into a thumbnail.

    Args:
        thumbnail: ``[H, W, 3]`` uint8 RGB.
        coords: ``[N, 2]`` level-0 ``(x, y)`` of each patch's top-left corner.
        scores: ``[N]`` in ``[0, 1]`` (e.g. :func:`attention_percentiles`); where patches overlap, the higher
            score is drawn.
        patch_size_level0: patch side in level-0 pixels.
        downsample: level-0 pixels per thumbnail pixel.
        alpha: weight of the colour over the thumbnail.
        colormap: a Matplotlib colormap name.

    Returns:
        ``[H, W, 3]`` uint8 RGB.

    Raises:
        ValueError: mismatched shapes, scores outside ``[0, 1]``, or a non-positive size.
    """
    coords = np.asarray(coords, dtype=float).reshape(-1, 2)
    scores = np.asarray(scores, dtype=float)
    if thumbnail.ndim != 3 or thumbnail.shape[2] != 3 or thumbnail.dtype != np.uint8:
        raise ValueError(f"thumbnail must be uint8 [H, W, 3], got {thumbnail.dtype} {thumbnail.shape}")
    if scores.shape != (len(coords),) or (scores.size and (scores.min() < 0 or scores.max() > 1)):
        raise ValueError(f"need one score in [0, 1] per coordinate: {len(coords)} coords, scores {scores.shape}")
    if patch_size_level0 <= 0 or downsample <= 0:
        raise ValueError(f"patch_size_level0 and downsample must be positive, got {patch_size_level0}, {downsample}")
    height, width = thumbnail.shape[:2]
    score_map = np.full((height, width), -1.0)
    side = max(1, round(patch_size_level0 / downsample))
    for (x, y), score in zip(np.round(coords / downsample).astype(int), scores, strict=True):
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + side, width), min(y + side, height)
        if x1 > x0 and y1 > y0:
            region = score_map[y0:y1, x0:x1]
            np.maximum(region, score, out=region)
    covered = score_map >= 0
    colours = (colormaps[colormap](np.clip(score_map, 0.0, 1.0))[..., :3] * 255.0).astype(np.float32)
    blended = thumbnail.astype(np.float32)
    blended[covered] = (1.0 - alpha) * blended[covered] + alpha * colours[covered]
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def save_attention_heatmap(
    slide_path: str | Path,
    coords: np.ndarray,
    attention: np.ndarray,
    patch_size_level0: float,
    path: str | Path,
    *,
    thumbnail_mpp: float = 8.0,
    mpp: float | None = None,
    alpha: float = 0.5,
) -> Path:
    """Write the attention heatmap of one slide as a PNG (written to a temporary name, then renamed).

    Args:
        slide_path: the slide file.
        coords: ``[N, 2]`` level-0 patch corners (the feature file's ``coords``).
        attention: ``[N]`` the model's attention over those patches.
        patch_size_level0: patch side in level-0 pixels.
        path: the PNG to write.
        thumbnail_mpp: micrometers per pixel of the thumbnail.
        mpp: level-0 micrometers per pixel when the file lacks it (as in the manifest).
        alpha: weight of the colour over the thumbnail.

    Returns:
        ``path``.
    """
    scores = attention_percentiles(attention)
    with open_slide(slide_path, mpp=mpp) as slide:
        thumbnail, downsample = read_thumbnail(slide, thumbnail_mpp)
    image = render_heatmap(thumbnail, coords, scores, patch_size_level0, downsample, alpha=alpha)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"could not encode the heatmap of {slide_path} as PNG")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(encoded.tobytes())
    os.replace(tmp, path)
    return path

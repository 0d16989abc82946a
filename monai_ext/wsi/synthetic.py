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

"""Synthetic whole-slide images with known ground truth: demo slides, a large benchmark slide, broken tiles.

Slides are pyramidal JPEG-tiled TIFFs written with ``tifffile``, one page per level (cuCIM ignores levels stored
as SubIFDs), levels shrinking by 4, JPEG in YCbCr with 2x2 chroma subsampling (tifffile's default for RGB; cuCIM,
OpenSlide and tifffile decode it to identical pixels, and it is 2.4x smaller than RGB-coded JPEG), resolution
tags in pixels per centimeter so that cuCIM reports ``spacing() == [mpp, mpp]`` in micrometers.

Content: a glass background (RGB 235-245 with slight noise), 2-4 irregular tissue pieces filled with real tissue
texture (``skimage.data.immunohistochemistry()``, tiled with random flips and rotations) and, on positive slides,
one tumor region inside a tissue piece drawn with a darker texture of dense purple nuclei. Tumor sizes follow the
CAMELYON17 / TNM definitions on the largest extent (Bandi et al., IEEE TMI 2019,
https://doi.org/10.1109/TMI.2018.2867350): isolated tumor cells (ITC) <= 0.2 mm, micro-metastasis > 0.2 mm and
<= 2 mm, macro-metastasis > 2 mm. The generator draws the tumor's bounding box so the rule holds for it: its
longest side lies in :data:`TUMOR_EXTENT_UM` and, for ITC and micro, its diagonal stays under the upper limit.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import imagecodecs
import numpy as np
import tifffile
from skimage import data as skdata
from tqdm import tqdm

logger = logging.getLogger(__name__)

TUMOR_CLASSES = ("negative", "itc", "micro", "macro")
ITC_MAX_UM = 200.0
MICRO_MAX_UM = 2000.0
# Longest side of the tumor's bounding box, micrometers. ITC and micro ranges keep the box diagonal (an upper
# bound of the largest diameter) under their limit; the macro range keeps the longest side (a lower bound) over 2 mm.
TUMOR_EXTENT_UM: dict[str, tuple[float, float]] = {
    "itc": (40.0, 140.0),
    "micro": (300.0, 1400.0),
    "macro": (2100.0, 2500.0),
}
LEVEL_DOWNSAMPLE = 4
MASK_DOWNSAMPLE = 16
TEXTURE_SIZE = 512  # side of skimage's IHC image, the period of the texture tiling
TRUTH_FILE = "truth.json"

_SUBSAMPLING = (2, 2)
_N_HARMONICS = 4
_CONTAINMENT_SLACK = 1.05  # host inner ellipse / tumor outer ellipse, at least


@dataclass
class SlideTruth:
    """Ground truth of a synthetic slide; boxes are ``(x, y, w, h)`` in level-0 pixels.

    Attributes:
        path: the TIFF file.
        size: level-0 ``(width, height)``.
        mpp: micrometers per level-0 pixel.
        tile_size: side of the square JPEG tiles.
        level_downsamples: downsample of each pyramid level (page) relative to level 0.
        tumor: one of :data:`TUMOR_CLASSES`.
        tissue_boxes: one box per tissue piece.
        tumor_boxes: the tumor region's box (empty on negative slides).
        tumor_scale: 1.0, or the factor by which the tumor was shrunk below its class's minimum size because the
            slide is too small for it (then sizes divided by this factor follow the class thresholds).
        seed: the seed that generated the slide.
        mask_downsample: level-0 pixels per ``tissue_mask`` pixel.
        tissue_mask: bool ``[ceil(h / mask_downsample), ceil(w / mask_downsample)]``, True on tissue.
    """

    path: Path
    size: tuple[int, int]
    mpp: float
    tile_size: int
    level_downsamples: tuple[float, ...]
    tumor: str
    tissue_boxes: tuple[tuple[int, int, int, int], ...]
    tumor_boxes: tuple[tuple[int, int, int, int], ...]
    tumor_scale: float
    seed: int
    mask_downsample: int
    tissue_mask: np.ndarray = field(repr=False, compare=False)

    def as_dict(self, relative_to: Path | None = None) -> dict[str, Any]:
        """JSON-ready dict; the mask is run-length encoded and ``path`` is made relative to ``relative_to`` if given."""
        path = Path(self.path)
        if relative_to is not None:
            path = path.resolve().relative_to(Path(relative_to).resolve())
        return {
            "path": path.as_posix(),
            "size": list(self.size),
            "mpp": self.mpp,
            "tile_size": self.tile_size,
            "level_downsamples": list(self.level_downsamples),
            "tumor": self.tumor,
            "tissue_boxes": [list(box) for box in self.tissue_boxes],
            "tumor_boxes": [list(box) for box in self.tumor_boxes],
            "tumor_scale": self.tumor_scale,
            "seed": self.seed,
            "mask_downsample": self.mask_downsample,
            "tissue_mask": {"shape": list(self.tissue_mask.shape), "runs": _rle_encode(self.tissue_mask)},
        }

    def to_json(self, relative_to: Path | None = None) -> str:
        """The :meth:`as_dict` form as JSON text."""
        return json.dumps(self.as_dict(relative_to))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], root: Path | None = None) -> SlideTruth:
        """Inverse of :meth:`as_dict`; a relative ``path`` is resolved against ``root`` when given."""
        path = Path(values["path"])
        if root is not None and not path.is_absolute():
            path = Path(root) / path
        mask = values["tissue_mask"]
        return cls(
            path=path,
            size=(int(values["size"][0]), int(values["size"][1])),
            mpp=float(values["mpp"]),
            tile_size=int(values["tile_size"]),
            level_downsamples=tuple(float(d) for d in values["level_downsamples"]),
            tumor=str(values["tumor"]),
            tissue_boxes=tuple(tuple(int(v) for v in box) for box in values["tissue_boxes"]),
            tumor_boxes=tuple(tuple(int(v) for v in box) for box in values["tumor_boxes"]),
            tumor_scale=float(values["tumor_scale"]),
            seed=int(values["seed"]),
            mask_downsample=int(values["mask_downsample"]),
            tissue_mask=_rle_decode(mask["runs"], tuple(mask["shape"])),
        )

    @classmethod
    def from_json(cls, text: str, root: Path | None = None) -> SlideTruth:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text), root)


def _rle_encode(mask: np.ndarray) -> list[int]:
    """Run lengths of a bool mask in row-major order, starting with a (possibly empty) run of False."""
    flat = np.asarray(mask, dtype=bool).ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    return [0, *runs] if flat.size and flat[0] else runs


def _rle_decode(runs: list[int], shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`_rle_encode`."""
    values = np.arange(len(runs)) % 2 == 1
    return np.repeat(values, runs).reshape(shape)


@dataclass(frozen=True)
class _Blob:
    """Star-shaped blob: ``(u, v) = ((x - cx) / rx, (y - cy) / ry)`` is inside when ``|(u, v)| <= r(atan2(v, u))``.

    ``r(t) = 1 + sum_k amplitude_k * cos((k + 2) * t + phase_k)``; without a first harmonic the center stays put.
    """

    cx: float
    cy: float
    rx: float
    ry: float
    amplitudes: tuple[float, ...]
    phases: tuple[float, ...]

    def radius(self, theta: np.ndarray) -> np.ndarray:
        """``r(theta)`` of the normalized shape."""
        out = np.ones_like(theta)
        for order, (amp, phase) in enumerate(zip(self.amplitudes, self.phases, strict=True), start=2):
            out += amp * np.cos(order * theta + phase)
        return out

    def unit_extent(self) -> tuple[float, float, float, float]:
        """``(u_min, u_max, v_min, v_max)`` of the boundary for ``rx = ry = 1``."""
        theta = np.linspace(0.0, 2.0 * np.pi, 2048, endpoint=False)
        r = self.radius(theta)
        u, v = r * np.cos(theta), r * np.sin(theta)
        return float(u.min()), float(u.max()), float(v.min()), float(v.max())

    def bbox(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` of the boundary in level-0 pixels."""
        u0, u1, v0, v1 = self.unit_extent()
        return self.cx + self.rx * u0, self.cy + self.ry * v0, self.cx + self.rx * u1, self.cy + self.ry * v1

    def transposed(self) -> _Blob:
        """The same blob with x and y swapped (``t -> pi/2 - t`` turns each phase into ``-k pi / 2 - phase``)."""
        phases = tuple(-(order * np.pi / 2) - phase for order, phase in enumerate(self.phases, start=2))
        return _Blob(self.cy, self.cx, self.ry, self.rx, self.amplitudes, phases)

    def render(self) -> tuple[int, int, np.ndarray]:
        """Level-0 mask of the blob: ``(x0, y0, mask [h, w] bool)``, unclipped.

        The inside-ness field ``r(t) - |(u, v)|`` is evaluated on a grid ``step`` times coarser (at least ~32
        samples per radius), stored as uint8 around 128 and upsampled bilinearly, so no level-0 float array exists.
        """
        step = int(max(1, min(8, min(self.rx, self.ry) // 32)))
        x0f, y0f, x1f, y1f = self.bbox()
        x0, y0 = math.floor(x0f) - step, math.floor(y0f) - step
        nx, ny = math.ceil((x1f + step - x0) / step) + 1, math.ceil((y1f + step - y0) / step) + 1
        xs = x0 + (np.arange(nx) + 0.5) * step - 0.5
        ys = y0 + (np.arange(ny) + 0.5) * step - 0.5
        u = ((xs - self.cx) / self.rx)[None, :]
        v = ((ys - self.cy) / self.ry)[:, None]
        inside = self.radius(np.arctan2(v, u)) - np.hypot(u, v)
        gain = 16.0 * min(self.rx, self.ry) / step  # ~16 grey levels per coarse sample across the edge
        coarse = np.clip(np.rint(128.0 + inside * gain), 0, 255).astype(np.uint8)
        fine = coarse if step == 1 else cv2.resize(coarse, (nx * step, ny * step), interpolation=cv2.INTER_LINEAR)
        return x0, y0, fine >= 128


def _harmonics(rng: np.random.Generator, total: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Random amplitudes summing to at most ``total`` (weight falling with order) and random phases."""
    weights = rng.uniform(0.3, 1.0, _N_HARMONICS) / np.arange(1, _N_HARMONICS + 1)
    amplitudes = weights / weights.sum() * total * rng.uniform(0.6, 1.0)
    phases = rng.uniform(0.0, 2.0 * np.pi, _N_HARMONICS)
    return tuple(float(a) for a in amplitudes), tuple(float(p) for p in phases)


def _boxes_overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float], gap: float) -> bool:
    """Whether two ``(x0, y0, x1, y1)`` boxes come closer than ``gap``."""
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def _layout(
    rng: np.random.Generator, width: int, height: int, mpp: float, tumor: str
) -> tuple[list[_Blob], _Blob | None, float]:
    """Tissue pieces (host first), the tumor blob inside the host (or None) and the tumor's shrink factor.

    Works on a landscape slide (portrait ones are transposed in and out). The host keeps to ``0.62 * height`` so
    the 1-3 satellite pieces, placed by rejection sampling, always find room in the remaining strip.
    """
    if height > width:
        pieces, tumor_blob, scale = _layout(rng, height, width, mpp, tumor)
        return [p.transposed() for p in pieces], None if tumor_blob is None else tumor_blob.transposed(), scale
    margin = 0.04 * height
    host_amp, host_phase = _harmonics(rng, 0.15)
    probe = _Blob(0.0, 0.0, 1.0, 1.0, host_amp, host_phase)
    hu0, hu1, hv0, hv1 = probe.unit_extent()
    host_inner = 1.0 - sum(host_amp)  # the host contains the ellipse of radii (rx, ry) * host_inner
    rx_max = (width - 2 * margin) / (hu1 - hu0)
    ry_max = (0.62 * height - margin) / (hv1 - hv0)
    rx_min = ry_min = 0.0
    tumor_blob, scale = None, 1.0
    if tumor != "negative":
        t_amp, t_phase = _harmonics(rng, 0.10)
        t_probe = _Blob(0.0, 0.0, 1.0, 1.0, t_amp, t_phase)
        tu0, tu1, tv0, tv1 = t_probe.unit_extent()
        outer = 1.0 + sum(t_amp)  # the tumor lies inside the ellipse of radii (rx, ry) * outer
        fit = host_inner / (outer * _CONTAINMENT_SLACK)
        lo, hi = (um / mpp for um in TUMOR_EXTENT_UM[tumor])
        longest_max = rx_max * fit * (tu1 - tu0)
        if longest_max >= lo:
            longest = rng.uniform(lo, min(hi, longest_max))
        else:
            longest, scale = longest_max, longest_max / lo
            logger.warning(
                f"a {width}x{height} slide at {mpp} um/px is too small for a {tumor} tumor of at least "
                f"{TUMOR_EXTENT_UM[tumor][0]} um: drawing it {scale:.3f} times smaller (recorded as tumor_scale)"
            )
        rx_t = longest / (tu1 - tu0)
        ry_t = min(rng.uniform(0.45, 0.85) * rx_t, ry_max * fit, 0.95 * longest / (tv1 - tv0))
        rx_min, ry_min = rx_t / fit, ry_t / fit
    rx = min(max(rng.uniform(0.22, 0.40) * width, rx_min), rx_max)
    ry = min(max(rng.uniform(0.17, 0.28) * height, ry_min), ry_max)
    low = margin - rx * hu0
    cx = low + rng.random() * max(width - margin - rx * hu1 - low, 0.0)  # the range is 0 when rx == rx_max
    cy = margin - ry * hv0 if rng.random() < 0.5 else height - margin - ry * hv1
    host = _Blob(cx, cy, rx, ry, host_amp, host_phase)
    if tumor != "negative":
        # in host-inner units the tumor's outer ellipse fits a disk of radius `reach`; move it within 1 - reach
        reach = max(rx_t * outer / (rx * host_inner), ry_t * outer / (ry * host_inner))
        angle, dist = rng.uniform(0.0, 2.0 * np.pi), math.sqrt(rng.random()) * 0.9 * (1.0 - reach)
        tcx = cx + dist * math.cos(angle) * rx * host_inner
        tcy = cy + dist * math.sin(angle) * ry * host_inner
        tumor_blob = _Blob(tcx, tcy, rx_t, ry_t, t_amp, t_phase)
    pieces = [host]
    for index in range(int(rng.integers(1, 4))):
        satellite = _place_satellite(rng, width, height, margin, pieces, required=index == 0)
        if satellite is not None:
            pieces.append(satellite)
    return pieces, tumor_blob, scale


def _place_satellite(
    rng: np.random.Generator, width: int, height: int, margin: float, pieces: list[_Blob], *, required: bool
) -> _Blob | None:
    """A small piece clear of ``pieces``; shrinks after every 50 failed draws; None if optional and no room."""
    boxes = [p.bbox() for p in pieces]
    size = 1.0
    for attempt in range(1000):
        if attempt and attempt % 50 == 0:
            if not required and attempt >= 200:
                return None
            size *= 0.8
        amp, phase = _harmonics(rng, 0.2)
        radius = rng.uniform(0.06, 0.14) * height * size
        aspect = rng.uniform(0.55, 1.0)
        rx, ry = (radius, radius * aspect) if rng.random() < 0.5 else (radius * aspect, radius)
        u0, u1, v0, v1 = _Blob(0.0, 0.0, 1.0, 1.0, amp, phase).unit_extent()
        lo_x, hi_x = margin - rx * u0, width - margin - rx * u1
        lo_y, hi_y = margin - ry * v0, height - margin - ry * v1
        if lo_x >= hi_x or lo_y >= hi_y:
            continue
        blob = _Blob(rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y), rx, ry, amp, phase)
        if not any(_boxes_overlap(blob.bbox(), box, margin / 2) for box in boxes):
            return blob
    raise RuntimeError(f"no room for a second tissue piece on a {width}x{height} slide; use a larger slide")


def _clip(x0: int, y0: int, mask: np.ndarray, width: int, height: int) -> tuple[int, int, np.ndarray]:
    """The part of ``mask`` (placed at ``(x0, y0)``) inside a ``width`` x ``height`` canvas, with its new origin."""
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x0 + mask.shape[1], width), min(y0 + mask.shape[0], height)
    return cx0, cy0, mask[cy0 - y0 : max(cy1, cy0) - y0, cx0 - x0 : max(cx1, cx0) - x0]


def _box_of(mask: np.ndarray, x0: int = 0, y0: int = 0) -> tuple[int, int, int, int]:
    """``(x, y, w, h)`` of the True pixels of ``mask`` placed at ``(x0, y0)``."""
    cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    return int(x0 + cols[0]), int(y0 + rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def _dihedral(image: np.ndarray) -> list[np.ndarray]:
    """The 8 flips/rotations of a square image, contiguous."""
    turns = [np.rot90(image, k) for k in range(4)]
    return [np.ascontiguousarray(t) for t in turns + [np.fliplr(t) for t in turns]]


def _tumor_texture(rng: np.random.Generator, tissue: np.ndarray, spacing: int = 13) -> np.ndarray:
    """uint8 ``[512, 512, 3]``: purple-pink stroma shaded by the IHC image's luminance, packed with dark nuclei
    ``spacing`` pixels apart."""
    size = tissue.shape[0]
    lum = cv2.cvtColor(tissue, cv2.COLOR_RGB2GRAY).astype(np.float32)[..., None] / 255.0
    base = np.array([200.0, 145.0, 195.0], np.float32) * (0.7 + 0.3 * lum)
    out = np.ascontiguousarray(np.clip(base, 0, 255).astype(np.uint8))
    grid = np.arange(spacing // 2, size, spacing)
    centers = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2) + rng.uniform(-4, 4, (grid.size**2, 2))
    axes = rng.uniform([3.5, 3.0], [6.5, 5.0], (len(centers), 2))
    angles = rng.uniform(0, 180, len(centers))
    colors = np.clip(np.array([80.0, 45.0, 120.0]) + rng.normal(0, 12, (len(centers), 3)), 0, 255)
    for (x, y), (a, b), angle, color in zip(centers, axes, angles, colors, strict=True):
        center, half_axes = (round(float(x)), round(float(y))), (round(float(a)), round(float(b)))
        cv2.ellipse(out, center, half_axes, float(angle), 0, 360, tuple(float(c) for c in color), -1, cv2.LINE_AA)
    return out


def _paint(
    canvas: np.ndarray, mask: np.ndarray, x0: int, y0: int, variants: list[np.ndarray], choice: np.ndarray
) -> None:
    """Copy texture into ``canvas`` where ``mask`` (placed at ``(x0, y0)``, inside the canvas) is True.

    The texture is tiled on a global grid of ``TEXTURE_SIZE`` cells; cell ``(i, j)`` uses ``variants[choice[i, j]]``.
    """
    t = TEXTURE_SIZE
    y1, x1 = y0 + mask.shape[0], x0 + mask.shape[1]
    for gy in range(y0 // t * t, y1, t):
        for gx in range(x0 // t * t, x1, t):
            ay, ax, by, bx = max(gy, y0), max(gx, x0), min(gy + t, y1), min(gx + t, x1)
            sub = mask[ay - y0 : by - y0, ax - x0 : bx - x0]
            texture = variants[choice[gy // t, gx // t]][ay - gy : by - gy, ax - gx : bx - gx]
            if sub.all():
                canvas[ay:by, ax:bx] = texture
            elif sub.any():
                np.copyto(canvas[ay:by, ax:bx], texture, where=sub[..., None])


def _check_slide_args(
    size: tuple[int, int], tumor: str, mpp: float, tile_size: int, n_levels: int, jpeg_quality: int
) -> None:
    """Raise ValueError naming the bad argument of :func:`write_demo_slide`."""
    if tumor not in TUMOR_CLASSES:
        raise ValueError(f"tumor={tumor!r} is not one of {TUMOR_CLASSES}")
    if not mpp > 0:
        raise ValueError(f"mpp must be positive micrometers per pixel, got {mpp}")
    if tile_size < 16 or tile_size % 16:
        raise ValueError(f"tile_size must be a multiple of 16 (JPEG with 2x2 chroma subsampling), got {tile_size}")
    if n_levels < 1:
        raise ValueError(f"n_levels must be at least 1, got {n_levels}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be between 1 and 100, got {jpeg_quality}")
    unit = max(MASK_DOWNSAMPLE, LEVEL_DOWNSAMPLE ** (n_levels - 1))
    if min(size) < 8 * unit or size[0] % unit or size[1] % unit:
        raise ValueError(
            f"size={size} must be (width, height), both multiples of {unit} and at least {8 * unit} "
            f"(so {n_levels} levels shrink exactly by {LEVEL_DOWNSAMPLE} and the tissue mask by {MASK_DOWNSAMPLE})"
        )


def _pyramid(level0: np.ndarray, n_levels: int) -> list[np.ndarray]:
    """Levels shrinking by :data:`LEVEL_DOWNSAMPLE` with area averaging."""
    levels = [level0]
    for _ in range(n_levels - 1):
        h, w = levels[-1].shape[:2]
        size = (w // LEVEL_DOWNSAMPLE, h // LEVEL_DOWNSAMPLE)
        levels.append(cv2.resize(levels[-1], size, interpolation=cv2.INTER_AREA))
    return levels


def _write_args(mpp: float, level: int, tile_size: int, jpeg_quality: int) -> dict[str, Any]:
    """``TiffWriter.write`` arguments of one pyramid page."""
    px_per_cm = 1e4 / (mpp * LEVEL_DOWNSAMPLE**level)
    return {
        "tile": (tile_size, tile_size),
        "photometric": "rgb",
        "compression": "jpeg",
        "compressionargs": {"level": jpeg_quality},
        "subsampling": _SUBSAMPLING,
        "resolution": (px_per_cm, px_per_cm),
        "resolutionunit": "CENTIMETER",
        "subfiletype": 0 if level == 0 else 1,
        "metadata": None,
    }


def write_demo_slide(
    path: str | Path,
    *,
    seed: int,
    size: tuple[int, int] = (6144, 4096),
    tumor: str = "negative",
    nuclei_spacing: int = 13,
    mpp: float = 0.5,
    tile_size: int = 256,
    n_levels: int = 3,
    jpeg_quality: int = 85,
) -> SlideTruth:
    """Write a synthetic pyramidal slide and return its ground truth.

    The same arguments give the same bytes. At the default size (3.1 x 2.0 mm at 0.5 um/px) the file is a few MB;
    a macro-metastasis (> 2 mm) needs a slide whose long side exceeds ~2.9 mm, else it is shrunk (see
    :attr:`SlideTruth.tumor_scale`, with a logged warning).

    Args:
        path: output ``.tif`` path (overwritten).
        seed: random seed of the layout, textures and noise.
        size: level-0 ``(width, height)``; multiples of ``max(16, 4 ** (n_levels - 1))``.
        tumor: ``"negative"``, ``"itc"``, ``"micro"`` or ``"macro"``.
        nuclei_spacing: pixels between tumor nuclei (8-20; smaller is denser), e.g. to plant a proliferation cue.
        mpp: micrometers per level-0 pixel (written as resolution tags in pixels per centimeter).
        tile_size: JPEG tile side, a multiple of 16.
        n_levels: pyramid levels (pages), each 4 times smaller than the previous.
        jpeg_quality: JPEG quality 1-100.

    Returns:
        The slide's :class:`SlideTruth`.

    Raises:
        ValueError: an argument out of range (the message names it).
    """
    size = (int(size[0]), int(size[1]))
    _check_slide_args(size, tumor, mpp, tile_size, n_levels, jpeg_quality)
    if not 8 <= nuclei_spacing <= 20:
        raise ValueError(f"nuclei_spacing must be between 8 and 20 pixels, got {nuclei_spacing}")
    width, height = size
    rng = np.random.default_rng(seed)
    pieces, tumor_blob, scale = _layout(rng, width, height, mpp, tumor)

    tissue = np.zeros((height, width), bool)
    tissue_boxes = []
    for piece in pieces:
        x0, y0, mask = _clip(*piece.render(), width, height)
        tissue[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]] |= mask
        tissue_boxes.append(_box_of(mask, x0, y0))

    ihc = skdata.immunohistochemistry()
    grid_shape = (math.ceil(height / TEXTURE_SIZE), math.ceil(width / TEXTURE_SIZE))
    background = np.clip(rng.normal(240.0, 1.5, (TEXTURE_SIZE, TEXTURE_SIZE, 3)), 235, 245).astype(np.uint8)
    level0 = np.empty((height, width, 3), np.uint8)
    _paint(level0, np.ones_like(tissue), 0, 0, [background], np.zeros(grid_shape, np.intp))
    _paint(level0, tissue, 0, 0, _dihedral(ihc), rng.integers(0, 8, grid_shape))

    tumor_boxes = []
    if tumor_blob is not None:
        x0, y0, mask = _clip(*tumor_blob.render(), width, height)
        mask = mask & tissue[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]]
        tx, ty, tw, th = _box_of(mask, x0, y0)
        region = mask[ty - y0 : ty - y0 + th, tx - x0 : tx - x0 + tw]
        texture = _tumor_texture(rng, ihc, nuclei_spacing)
        _paint(level0, region, tx, ty, _dihedral(texture), rng.integers(0, 8, grid_shape))
        tumor_boxes.append((tx, ty, tw, th))

    path = Path(path)
    with tifffile.TiffWriter(path) as writer:
        for level, image in enumerate(_pyramid(level0, n_levels)):
            writer.write(image, **_write_args(mpp, level, tile_size, jpeg_quality))
    tissue_fraction = cv2.resize(
        tissue.view(np.uint8) * np.uint8(255),
        (width // MASK_DOWNSAMPLE, height // MASK_DOWNSAMPLE),
        interpolation=cv2.INTER_AREA,
    )
    return SlideTruth(
        path=path,
        size=size,
        mpp=float(mpp),
        tile_size=tile_size,
        level_downsamples=tuple(float(LEVEL_DOWNSAMPLE**k) for k in range(n_levels)),
        tumor=tumor,
        tissue_boxes=tuple(tissue_boxes),
        tumor_boxes=tuple(tumor_boxes),
        tumor_scale=float(scale),
        seed=int(seed),
        mask_downsample=MASK_DOWNSAMPLE,
        tissue_mask=tissue_fraction >= 128,  # at least half of the cell is tissue
    )


def corrupt_tile(path: str | Path, *, level: int, x: int, y: int) -> int:
    """Overwrite with zeros, in place, the JPEG bytes of the tile that holds pixel ``(x, y)`` of page ``level``.

    Builds the "JPEG tile zeroed inside tissue" defect of the acceptance tests. In the slides written here each
    pyramid level is its own page, so ``level`` is a page index. cuCIM 26.10 does not raise on such a tile: it
    prints a libjpeg error ("Not a JPEG file") on stdout and returns whatever its buffer held for the tile, zeros
    on a first single-tile read in a fresh process but stale pixels of other tiles in batched or multi-tile reads.
    Only a check of the tile bytes (tifffile/imagecodecs raise ``Jpeg8Error``) detects it reliably.

    Args:
        path: a tiled TIFF.
        level: page index.
        x: column of a pixel of the tile, in that page's pixels.
        y: row of a pixel of the tile, in that page's pixels.

    Returns:
        The index of the zeroed tile in the page's row-major tile table.

    Raises:
        ValueError: no such page, the page is not tiled, or ``(x, y)`` lies outside it.
    """
    path = Path(path)
    with tifffile.TiffFile(path) as tif:
        if not 0 <= level < len(tif.pages):
            raise ValueError(f"{path} has pages 0-{len(tif.pages) - 1}; level={level} does not exist")
        page = tif.pages[level]
        if not page.is_tiled:
            raise ValueError(f"page {level} of {path} is not tiled; corrupt_tile needs a tiled page")
        if not (0 <= x < page.imagewidth and 0 <= y < page.imagelength):
            raise ValueError(
                f"pixel ({x}, {y}) is outside page {level} of {path} ({page.imagewidth} x {page.imagelength})"
            )
        tiles_across = math.ceil(page.imagewidth / page.tilewidth)
        index = (y // page.tilelength) * tiles_across + x // page.tilewidth
        offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(bytes(count))
    return index


def _allocate(n_slides: int, tumor_mix: Mapping[str, float] | None) -> list[str]:
    """Labels for ``n_slides`` in proportion to ``tumor_mix`` (largest remainder), in class order."""
    mix = dict.fromkeys(TUMOR_CLASSES, 1.0) if tumor_mix is None else dict(tumor_mix)
    unknown = set(mix) - set(TUMOR_CLASSES)
    if unknown or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(
            f"tumor_mix={tumor_mix} must map labels from {TUMOR_CLASSES} to non-negative weights with a positive sum"
        )
    labels = [label for label in TUMOR_CLASSES if label in mix]
    quotas = np.array([mix[label] for label in labels]) / sum(mix.values()) * n_slides
    counts = np.floor(quotas).astype(int)
    counts[np.argsort(-(quotas - counts), kind="stable")[: n_slides - counts.sum()]] += 1
    return [label for label, count in zip(labels, counts, strict=True) for _ in range(count)]


def make_demo_slides(
    out_dir: str | Path,
    *,
    n_slides: int,
    seed: int = 0,
    tumor_mix: Mapping[str, float] | None = None,
    size: tuple[int, int] = (6144, 4096),
    mpp: float = 0.5,
    progress: bool = False,
) -> list[SlideTruth]:
    """Write ``slide_000.tif``, ... and ``truth.json`` (paths relative to ``out_dir``) into ``out_dir``.

    Args:
        out_dir: output folder, created if missing.
        n_slides: number of slides.
        seed: master seed; slide ``i`` gets an independent seed spawned from it.
        tumor_mix: relative weight of each label of :data:`TUMOR_CLASSES`; counts are allocated by largest
            remainder and shuffled, so every label with weight appears once ``n_slides`` is large enough. Default:
            equal weights. Pass e.g. ``{"negative": 318, "itc": 36, "micro": 59, "macro": 87}`` for a
            CAMELYON17-like mix.
        size: level-0 ``(width, height)`` of every slide.
        mpp: micrometers per level-0 pixel.
        progress: show a tqdm progress bar.

    Returns:
        The truth of each slide, in file order.

    Raises:
        ValueError: ``n_slides < 1`` or a bad ``tumor_mix`` (or slide argument, see :func:`write_demo_slide`).
    """
    if n_slides < 1:
        raise ValueError(f"n_slides must be at least 1, got {n_slides}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = np.random.default_rng(seed).permutation(_allocate(n_slides, tumor_mix)).tolist()
    children = np.random.SeedSequence(seed).spawn(n_slides)
    truths = []
    for index, (label, child) in enumerate(
        tqdm(list(zip(labels, children, strict=True)), desc="demo slides", disable=not progress)
    ):
        slide_seed = int(child.generate_state(1)[0])
        path = out_dir / f"slide_{index:03d}.tif"
        truths.append(write_demo_slide(path, seed=slide_seed, size=size, tumor=label, mpp=mpp))
    payload = {"generator": __name__, "seed": seed, "slides": [t.as_dict(relative_to=out_dir) for t in truths]}
    (out_dir / TRUTH_FILE).write_text(json.dumps(payload))
    logger.info(f"wrote {n_slides} demo slides and {TRUTH_FILE} to {out_dir}")
    return truths


def read_truth(path: str | Path) -> list[SlideTruth]:
    """Load a ``truth.json`` written by :func:`make_demo_slides`; slide paths are resolved beside it.

    Raises:
        FileNotFoundError: the file does not exist (make it with ``scripts/make_demo.py slides``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; write demo slides with `python scripts/make_demo.py slides`")
    payload = json.loads(path.read_text())
    return [SlideTruth.from_dict(values, root=path.parent) for values in payload["slides"]]


def _benchmark_tiles(rng: np.random.Generator, tile_size: int, jpeg_quality: int) -> tuple[list[np.ndarray], int]:
    """A bank of tissue tiles (random crops of the flipped/rotated IHC texture) followed by background tiles."""
    variants = _dihedral(skdata.immunohistochemistry())
    tiles = []
    for _ in range(32):
        oy, ox = rng.integers(0, TEXTURE_SIZE - tile_size + 1, 2)
        tiles.append(np.ascontiguousarray(variants[rng.integers(0, 8)][oy : oy + tile_size, ox : ox + tile_size]))
    n_tissue = len(tiles)
    for _ in range(4):
        noise = rng.normal(240.0, 1.5, (tile_size, tile_size, 3))
        tiles.append(np.clip(noise, 235, 245).astype(np.uint8))
    return tiles, n_tissue


def _level_tiles(
    choice: np.ndarray, minis: np.ndarray, background: int, level_shape: tuple[int, int], tile_size: int, span: int
) -> Iterator[np.ndarray]:
    """Row-major tiles of a reduced level, each assembled from ``span x span`` downsampled level-0 bank tiles."""
    rows, cols = (math.ceil(n / tile_size) for n in level_shape)
    padded = np.full((rows * span, cols * span), background, choice.dtype)
    ny, nx = min(choice.shape[0], padded.shape[0]), min(choice.shape[1], padded.shape[1])
    padded[:ny, :nx] = choice[:ny, :nx]
    for row in range(rows):
        for col in range(cols):
            block = minis[padded[row * span : (row + 1) * span, col * span : (col + 1) * span]]  # [s, s, m, m, 3]
            yield block.transpose(0, 2, 1, 3, 4).reshape(tile_size, tile_size, 3)


def write_benchmark_slide(
    path: str | Path, *, size: int = 40000, tile_size: int = 256, seed: int = 0, progress: bool = False
) -> SlideTruth:
    """Write a large square JPEG-tiled pyramidal slide (0.5 um/px, 3 levels) by streaming tiles.

    Level-0 tiles are pre-encoded JPEG bytes drawn from a bank of 32 tissue and 4 background tiles: a tile is tissue
    when its center lies in one of 3-5 irregular ellipses. Reduced levels are exact area-downsamples of level 0's
    tile layout (assembled from shrunken bank tiles, then JPEG-encoded). Memory stays at the bank plus one tile
    index per level-0 tile, so a 40,000 px slide needs neither its pixels in memory nor per-tile encoding.

    Args:
        path: output ``.tif`` path (overwritten); BigTIFF when the data may exceed 3.5 GB.
        size: level-0 width and height in pixels.
        tile_size: JPEG tile side, a multiple of 16 and at most 512.
        seed: random seed of the layout and the bank.
        progress: show a tqdm progress bar over the level-0 tiles.

    Returns:
        The slide's :class:`SlideTruth` (``tumor="negative"``; the tissue mask has one pixel per level-0 tile).

    Raises:
        ValueError: a bad ``tile_size`` or a ``size`` smaller than one tile.
    """
    n_levels, mpp, jpeg_quality = 3, 0.5, 85
    span_max = LEVEL_DOWNSAMPLE ** (n_levels - 1)
    if tile_size % 16 or not span_max <= tile_size <= TEXTURE_SIZE:
        raise ValueError(f"tile_size must be a multiple of 16 between {span_max} and {TEXTURE_SIZE}, got {tile_size}")
    if size < tile_size:
        raise ValueError(f"size must be at least one tile ({tile_size} px), got {size}")
    rng = np.random.default_rng(seed)
    tiles, n_tissue = _benchmark_tiles(rng, tile_size, jpeg_quality)
    encoded = [
        imagecodecs.jpeg_encode(
            tile, level=jpeg_quality, colorspace="RGB", outcolorspace="YCBCR", subsampling=_SUBSAMPLING
        )
        for tile in tiles
    ]
    n_tiles = math.ceil(size / tile_size)
    centers = (np.arange(n_tiles) + 0.5) * tile_size
    blobs = []
    for _ in range(int(rng.integers(3, 6))):
        amp, phase = _harmonics(rng, 0.15)
        cx, cy = rng.uniform(0.2, 0.8, 2) * size
        rx, ry = rng.uniform(0.1, 0.25, 2) * size
        blobs.append(_Blob(float(cx), float(cy), float(rx), float(ry), amp, phase))
    inside = []
    for blob in blobs:
        u, v = ((centers - blob.cx) / blob.rx)[None, :], ((centers - blob.cy) / blob.ry)[:, None]
        inside.append(np.hypot(u, v) <= blob.radius(np.arctan2(v, u)))
    tissue = np.logical_or.reduce(inside)
    choice = np.where(tissue, rng.integers(0, n_tissue, tissue.shape), rng.integers(n_tissue, len(tiles), tissue.shape))
    tissue_boxes = []
    for grid in inside:
        if grid.any():
            x, y, w, h = _box_of(grid)
            x1, y1 = min((x + w) * tile_size, size), min((y + h) * tile_size, size)
            tissue_boxes.append((x * tile_size, y * tile_size, x1 - x * tile_size, y1 - y * tile_size))

    estimate = int(np.bincount(choice.ravel(), minlength=len(tiles)) @ np.array([len(e) for e in encoded]))
    path = Path(path)
    with tifffile.TiffWriter(path, bigtiff=estimate * 1.5 > 3.5e9) as writer:
        level0 = (encoded[c] for c in choice.ravel())
        writer.write(
            iter(tqdm(level0, total=choice.size, desc="level-0 tiles", disable=not progress)),
            shape=(size, size, 3),
            dtype=np.uint8,
            **_write_args(mpp, 0, tile_size, jpeg_quality),
        )
        for level in range(1, n_levels):
            span = LEVEL_DOWNSAMPLE**level
            mini = tile_size // span
            minis = np.stack([cv2.resize(t, (mini, mini), interpolation=cv2.INTER_AREA) for t in tiles])
            side = size // span
            writer.write(
                _level_tiles(choice, minis, n_tissue, (side, side), tile_size, span),
                shape=(side, side, 3),
                dtype=np.uint8,
                **_write_args(mpp, level, tile_size, jpeg_quality),
            )
    return SlideTruth(
        path=path,
        size=(size, size),
        mpp=mpp,
        tile_size=tile_size,
        level_downsamples=tuple(float(LEVEL_DOWNSAMPLE**k) for k in range(n_levels)),
        tumor="negative",
        tissue_boxes=tuple(tissue_boxes),
        tumor_boxes=(),
        tumor_scale=1.0,
        seed=int(seed),
        mask_downsample=tile_size,
        tissue_mask=tissue,
    )

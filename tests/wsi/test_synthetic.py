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

"""Synthetic slides: pyramid pages readable by cuCIM and tifffile, spacing, determinism, truth vs pixels, defects.

Truth is checked against the decoded pixels, not against the generator's own numbers: tumor texture is found by
color (purple: red and blue both well above green, a combination absent from the IHC tissue and the glass).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
from collections import Counter
from pathlib import Path

import cv2
import imagecodecs
import numpy as np
import pytest
import tifffile

from monai_ext.wsi.synthetic import (
    ITC_MAX_UM,
    MICRO_MAX_UM,
    TUMOR_CLASSES,
    SlideTruth,
    corrupt_tile,
    make_demo_slides,
    read_truth,
    write_benchmark_slide,
    write_demo_slide,
)

SMALL = (2048, 1536)  # at 2 um/px: 4.1 x 3.1 mm, room for a macro-metastasis at full size
SMALL_MPP = 2.0
TINY = (512, 384)


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SlideTruth]:
    """One small slide per tumor class, seed 7."""
    folder = tmp_path_factory.mktemp("synthetic")
    return {
        label: write_demo_slide(folder / f"{label}.tif", seed=7, size=SMALL, tumor=label, mpp=SMALL_MPP)
        for label in TUMOR_CLASSES
    }


@pytest.fixture(scope="module")
def cucim():
    """The cuCIM module, or a skip when it is not installed."""
    return pytest.importorskip("cucim")


def _purple(rgb: np.ndarray) -> np.ndarray:
    """bool mask of tumor-texture pixels."""
    rgb = rgb.astype(np.int16)
    return ((rgb[..., 0] - rgb[..., 1]) > 25) & ((rgb[..., 2] - rgb[..., 1]) > 25)


def _level0_mask(truth: SlideTruth) -> np.ndarray:
    """The truth's tissue mask at level-0 resolution."""
    ds = truth.mask_downsample
    return np.kron(truth.tissue_mask, np.ones((ds, ds), bool))[: truth.size[1], : truth.size[0]]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_levels_are_pages_in_tifffile(slides):
    truth = slides["micro"]
    with tifffile.TiffFile(truth.path) as tif:
        assert len(tif.pages) == 3
        assert all(not page.subifds for page in tif.pages)
        shapes = [page.shape for page in tif.pages]
        assert shapes == [(SMALL[1] // 4**k, SMALL[0] // 4**k, 3) for k in range(3)]
        for page in tif.pages:
            assert page.compression == tifffile.COMPRESSION.JPEG
            assert page.photometric == tifffile.PHOTOMETRIC.YCBCR
            assert (page.tilewidth, page.tilelength) == (truth.tile_size, truth.tile_size)
    assert truth.level_downsamples == (1.0, 4.0, 16.0)


def test_cucim_sees_all_levels_and_right_pixels(slides, cucim):
    truth = slides["macro"]
    image = cucim.CuImage(str(truth.path))
    assert image.resolutions["level_count"] == 3
    assert tuple(image.resolutions["level_downsamples"]) == truth.level_downsamples
    level0 = tifffile.imread(truth.path, key=0)
    for level in range(3):
        expected = tifffile.imread(truth.path, key=level)  # libjpeg-turbo via imagecodecs: an independent decoder
        w, h = expected.shape[1], expected.shape[0]
        assert tuple(image.resolutions["level_dimensions"][level]) == (w, h)
        np.testing.assert_array_equal(np.asarray(image.read_region((0, 0), (w, h), level)), expected)
        # each level is an area downsample of level 0, up to JPEG error (a one-pixel shift gives ~9 on this slide)
        shrunk = cv2.resize(level0, (w, h), interpolation=cv2.INTER_AREA)
        assert np.abs(shrunk.astype(np.int16) - expected).mean() < 5.0
    x, y = 3 * truth.tile_size - 17, 2 * truth.tile_size + 5  # unaligned read crossing tile borders
    region = np.asarray(image.read_region((x, y), (300, 200), 0))
    np.testing.assert_array_equal(region, level0[y : y + 200, x : x + 300])


def test_openslide_reads_the_same_pixels(slides):
    openslide = pytest.importorskip("openslide")
    truth = slides["itc"]
    with openslide.OpenSlide(str(truth.path)) as slide:
        assert slide.level_downsamples == pytest.approx(truth.level_downsamples)
        for level, (w, h) in enumerate(slide.level_dimensions):
            rgba = np.asarray(slide.read_region((0, 0), level, (w, h)))
            np.testing.assert_array_equal(rgba[..., :3], tifffile.imread(truth.path, key=level))


@pytest.mark.parametrize("mpp", [0.25, 0.5, 2.0])
def test_spacing_reads_back_as_mpp(tmp_path, cucim, mpp):
    truth = write_demo_slide(tmp_path / "s.tif", seed=0, size=TINY, mpp=mpp, n_levels=2)
    image = cucim.CuImage(str(truth.path))
    assert image.spacing()[:2] == pytest.approx([mpp, mpp], rel=1e-6)
    assert list(image.spacing_units()[:2]) == ["micrometer", "micrometer"]
    with tifffile.TiffFile(truth.path) as tif:
        page = tif.pages[0]
        assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        numerator, denominator = page.tags["XResolution"].value
        assert 1e4 / (numerator / denominator) == pytest.approx(mpp, rel=1e-6)
    openslide = pytest.importorskip("openslide")
    with openslide.OpenSlide(str(truth.path)) as slide:
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(mpp, rel=1e-6)


@pytest.mark.parametrize("tumor", ["negative", "micro"])
def test_same_seed_same_bytes(tmp_path, tumor):
    paths = [tmp_path / f"{name}.tif" for name in ("a", "b", "c")]
    write_demo_slide(paths[0], seed=3, size=TINY, tumor=tumor, mpp=SMALL_MPP)
    write_demo_slide(paths[1], seed=3, size=TINY, tumor=tumor, mpp=SMALL_MPP)
    write_demo_slide(paths[2], seed=4, size=TINY, tumor=tumor, mpp=SMALL_MPP)
    assert _sha256(paths[0]) == _sha256(paths[1])
    assert _sha256(paths[0]) != _sha256(paths[2])


@pytest.mark.parametrize("tumor", TUMOR_CLASSES)
def test_tumor_pixels_match_truth_and_lie_in_tissue(slides, tumor):
    truth = slides[tumor]
    purple = _purple(tifffile.imread(truth.path, key=0))
    if tumor == "negative":
        assert truth.tumor_boxes == ()
        assert purple.sum() == 0
        return
    (x, y, w, h) = truth.tumor_boxes[0]
    ys, xs = np.nonzero(purple)
    found = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert np.abs(np.subtract(found, (x, y, x + w, y + h))).max() <= 3  # JPEG blurs the edge by a pixel or two
    assert purple[y : y + h, x : x + w].mean() > 0.5  # the box is mostly tumor (an irregular ellipse fills ~70%)
    assert (purple & _level0_mask(truth)).sum() / purple.sum() > 0.99
    host = [b for b in truth.tissue_boxes if b[0] <= x and b[1] <= y and x + w <= b[0] + b[2] and y + h <= b[1] + b[3]]
    assert len(host) == 1


@pytest.mark.parametrize("tumor", TUMOR_CLASSES)
def test_glass_is_white_and_tissue_is_not(slides, tumor):
    truth = slides[tumor]
    level1 = tifffile.imread(truth.path, key=1)
    ds = truth.mask_downsample // 4
    tissue = np.kron(truth.tissue_mask, np.ones((ds, ds), np.uint8))
    kernel = np.ones((9, 9), np.uint8)  # keep 2 mask cells away from edges, where cells are partly tissue
    glass = cv2.erode(1 - tissue, kernel).astype(bool)
    inner = cv2.erode(tissue, kernel).astype(bool)
    assert glass.mean() > 0.3 and inner.mean() > 0.05
    glass_px = level1[glass]
    assert np.all((glass_px.mean(axis=0) >= 235) & (glass_px.mean(axis=0) <= 245))
    assert np.mean((glass_px >= 230).all(axis=1) & (glass_px <= 250).all(axis=1)) > 0.99
    assert level1[inner].mean() < 200
    assert 2 <= len(truth.tissue_boxes) <= 4


@pytest.mark.parametrize("tumor", ["itc", "micro", "macro"])
@pytest.mark.parametrize("seed", [1, 2])
def test_tumor_size_follows_camelyon_definition(tmp_path, tumor, seed):
    truth = write_demo_slide(tmp_path / "s.tif", seed=seed, size=SMALL, tumor=tumor, mpp=SMALL_MPP)
    assert truth.tumor_scale == 1.0
    (_, _, w, h) = truth.tumor_boxes[0]
    longest_um, diagonal_um = max(w, h) * truth.mpp, math.hypot(w, h) * truth.mpp
    # the largest diameter lies between the box's longest side and its diagonal
    if tumor == "itc":
        assert diagonal_um <= ITC_MAX_UM
    elif tumor == "micro":
        assert longest_um > ITC_MAX_UM and diagonal_um <= MICRO_MAX_UM
    else:
        assert longest_um > MICRO_MAX_UM


def test_too_small_slide_shrinks_macro_and_says_so(tmp_path, caplog):
    truth = write_demo_slide(tmp_path / "s.tif", seed=0, size=SMALL, tumor="macro", mpp=0.5)  # 1 x 0.8 mm
    assert 0 < truth.tumor_scale < 1
    assert "tumor_scale" in caplog.text
    (_, _, w, h) = truth.tumor_boxes[0]
    assert max(w, h) * truth.mpp / truth.tumor_scale > MICRO_MAX_UM


@pytest.mark.parametrize(
    "mask",
    [
        np.zeros((3, 4), bool),
        np.ones((3, 4), bool),
        np.eye(5, dtype=bool),
        np.random.default_rng(0).random((17, 9)) > 0.5,
    ],
)
def test_truth_json_round_trip(slides, mask):
    truth = dataclasses.replace(slides["itc"], tissue_mask=mask)
    back = SlideTruth.from_json(truth.to_json())
    assert back == truth
    np.testing.assert_array_equal(back.tissue_mask, mask)


def test_make_demo_slides_writes_truth(tmp_path):
    truths = make_demo_slides(tmp_path, n_slides=4, seed=5, size=TINY, mpp=SMALL_MPP)
    assert sorted(t.tumor for t in truths) == sorted(TUMOR_CLASSES)  # equal weights: one of each
    payload = json.loads((tmp_path / "truth.json").read_text())
    assert [s["path"] for s in payload["slides"]] == [f"slide_{i:03d}.tif" for i in range(4)]
    moved = tmp_path.parent / "moved"
    shutil.copytree(tmp_path, moved)  # relative paths: the folder can move
    for original, loaded in zip(truths, read_truth(moved / "truth.json"), strict=True):
        assert loaded.path == moved / original.path.name
        assert loaded.tumor_boxes == original.tumor_boxes
        np.testing.assert_array_equal(loaded.tissue_mask, original.tissue_mask)
        assert _sha256(loaded.path) == _sha256(original.path)


def test_tumor_mix_follows_largest_remainder(tmp_path):
    # CAMELYON17 training slides: quotas for 10 slides 6.36, 0.72, 1.18, 1.74 -> floors 6, 0, 1, 1, and the two
    # largest remainders (macro .74, itc .72) get the 2 slides left: 6, 1, 1, 2
    mix = {"negative": 318, "itc": 36, "micro": 59, "macro": 87}
    truths = make_demo_slides(tmp_path, n_slides=10, seed=0, tumor_mix=mix, size=(256, 256), mpp=8.0)
    assert Counter(t.tumor for t in truths) == {"negative": 6, "itc": 1, "micro": 1, "macro": 2}


def test_corrupt_tile_breaks_only_that_tile(tmp_path, cucim, capfd):
    truth = write_demo_slide(tmp_path / "s.tif", seed=2, size=SMALL, mpp=SMALL_MPP)
    ts = truth.tile_size
    original = tifffile.imread(truth.path, key=0)
    cells = ts // truth.mask_downsample
    col, row = next(
        (c, r)
        for r in range(1, SMALL[1] // ts - 1)
        for c in range(1, SMALL[0] // ts - 1)
        if truth.tissue_mask[r * cells : (r + 1) * cells, c * cells : (c + 1) * cells].all()
    )
    index = corrupt_tile(truth.path, level=0, x=col * ts + 100, y=row * ts + 7)
    assert index == row * (SMALL[0] // ts) + col
    with tifffile.TiffFile(truth.path) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    assert truth.path.read_bytes()[offset : offset + count] == bytes(count)
    with pytest.raises(imagecodecs.Jpeg8Error, match="Not a JPEG file"):
        tifffile.imread(truth.path, key=0)

    capfd.readouterr()
    x0, y0 = (col - 1) * ts, (row - 1) * ts
    region = np.asarray(cucim.CuImage(str(truth.path)).read_region((x0, y0), (3 * ts, 3 * ts), 0))
    # cuCIM does not raise: it prints a libjpeg error and hands back whatever its buffer held for that tile
    # (zeros in a fresh process, stale pixels of other tiles after earlier reads), never the original tile
    assert "Not a JPEG file" in "".join(capfd.readouterr())
    expected = original[y0 : y0 + 3 * ts, x0 : x0 + 3 * ts]
    broken = np.zeros((3 * ts, 3 * ts), bool)
    broken[ts : 2 * ts, ts : 2 * ts] = True
    np.testing.assert_array_equal(region[~broken], expected[~broken])
    assert not np.array_equal(region[broken], expected[broken])


def test_benchmark_slide_streams_a_consistent_pyramid(tmp_path, cucim):
    truth = write_benchmark_slide(tmp_path / "bench.tif", size=2000, tile_size=256, seed=1)
    image = cucim.CuImage(str(truth.path))
    assert [tuple(d) for d in image.resolutions["level_dimensions"]] == [(2000, 2000), (500, 500), (125, 125)]
    assert image.spacing()[:2] == pytest.approx([0.5, 0.5])
    level0 = tifffile.imread(truth.path, key=0)
    np.testing.assert_array_equal(np.asarray(image.read_region((0, 0), (2000, 2000), 0)), level0)
    for level, side in ((1, 500), (2, 125)):
        shrunk = cv2.resize(level0, (side, side), interpolation=cv2.INTER_AREA)
        assert np.abs(shrunk.astype(np.int16) - tifffile.imread(truth.path, key=level)).mean() < 3.0
    assert truth.tissue_mask.shape == (8, 8) and 0 < truth.tissue_mask.mean() < 1
    padded = np.zeros((8 * 256, 8 * 256, 3), np.uint8)
    padded[:2000, :2000] = level0
    tile_brightness = padded.reshape(8, 256, 8, 256, 3).mean(axis=(1, 3, 4))
    full = np.zeros((8, 8), bool)
    full[:7, :7] = True  # tiles wholly inside the image
    assert np.all(tile_brightness[truth.tissue_mask & full] < 215)
    assert np.all(tile_brightness[~truth.tissue_mask & full] > 235)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tumor": "huge"}, "tumor="),
        ({"size": (2008, 1536)}, "multiples of 16"),
        ({"size": (64, 64)}, "at least"),
        ({"tile_size": 200}, "multiple of 16"),
        ({"n_levels": 0}, "n_levels"),
        ({"mpp": 0.0}, "mpp"),
        ({"jpeg_quality": 0}, "jpeg_quality"),
    ],
)
def test_ill_arg_demo_slide(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_demo_slide(tmp_path / "s.tif", seed=0, **{"size": TINY, **kwargs})


def test_ill_arg_tools(tmp_path):
    truth = write_demo_slide(tmp_path / "s.tif", seed=0, size=TINY, n_levels=2)
    with pytest.raises(ValueError, match="level=2 does not exist"):
        corrupt_tile(truth.path, level=2, x=0, y=0)
    with pytest.raises(ValueError, match="outside page 1"):
        corrupt_tile(truth.path, level=1, x=TINY[0] // 4, y=0)
    with pytest.raises(ValueError, match="n_slides"):
        make_demo_slides(tmp_path, n_slides=0)
    with pytest.raises(ValueError, match="tumor_mix"):
        make_demo_slides(tmp_path, n_slides=2, tumor_mix={"metastasis": 1.0})
    with pytest.raises(ValueError, match="tile_size"):
        write_benchmark_slide(tmp_path / "b.tif", size=4096, tile_size=1024)
    with pytest.raises(FileNotFoundError, match=r"make_demo\.py"):
        read_truth(tmp_path / "missing.json")

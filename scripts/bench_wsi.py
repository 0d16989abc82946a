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

"""Slide-reading benchmark: our reader against the JPEG decode limit, raw cuCIM, OpenSlide and MONAI's tifffile.

Usage:
    python scripts/bench_wsi.py [--out bench_out] [--size 40000] [--n-patches 2000] [--threads 2]

Everything is measured in one run on one generated JPEG-tiled slide (written once, then reused), for three sets
of locations inside tissue: tile-aligned 256 px patches, sequential unaligned 224 px patches and random 224 px
patches. It also times tissue detection + grid per slide, end-to-end extraction with the built-in encoder
(slides/min), and peak RSS of extraction on slides of growing size (each in a fresh process). Ratios are printed
against baselines measured in the same run, never against remembered numbers.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import fire
import imagecodecs
import numpy as np
import tifffile

import monai_ext  # noqa: F401 - silences native library banners before MONAI loads
from monai_ext.wsi.backends import CuImage, openslide
from monai_ext.wsi.grid import PatchGrid, make_grid
from monai_ext.wsi.open import open_slide
from monai_ext.wsi.reader import PatchDataset, patch_loader
from monai_ext.wsi.strips import plan_strips
from monai_ext.wsi.synthetic import write_benchmark_slide, write_demo_slide
from monai_ext.wsi.tissue import detect_tissue

RSS_PROBE = """
import json, resource, sys, time
import monai_ext
from monai_ext.wsi.encoders import build_encoder
from monai_ext.wsi.extract import ExtractionConfig, extract_slide
config = ExtractionConfig.from_json(sys.argv[3])
start = time.perf_counter()
result = extract_slide(sys.argv[1], sys.argv[2], build_encoder("builtin_cnn").eval(), config, resume=False)
print(json.dumps({"status": result.status, "n_patches": result.n_patches, "seconds": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

MONAI_PROBE = """
import json, resource, sys, time
from monai.data import WSIReader
reader = WSIReader(backend="tifffile", level=0)
image = reader.read(sys.argv[1])
start = time.perf_counter()
patch, _ = reader.get_data(image, location=(int(sys.argv[3]), int(sys.argv[2])), size=(224, 224), level=0)
print(json.dumps({"seconds": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("nan")


def _locations(slide_path: Path, n_patches: int, seed: int) -> dict[str, tuple[np.ndarray, int]]:
    """Level-0 locations inside tissue: aligned 256 px, sequential unaligned 224 px, random 224 px."""
    rng = np.random.default_rng(seed)
    with open_slide(slide_path) as slide:
        tissue = detect_tissue(slide)
        aligned = make_grid(slide.info, tissue, target_mpp=slide.info.mpp, patch_size=256, min_tissue_fraction=0.9)
        sequential = make_grid(slide.info, tissue, target_mpp=slide.info.mpp, patch_size=224, min_tissue_fraction=0.9)
    start_aligned = rng.integers(0, max(1, len(aligned) - n_patches))
    start_seq = rng.integers(0, max(1, len(sequential) - n_patches))
    ys, xs = np.nonzero(tissue.mask)
    pick = rng.integers(0, len(xs), size=n_patches)
    jitter = rng.integers(0, int(tissue.downsample), size=(n_patches, 2))
    random_xy = np.stack([xs[pick], ys[pick]], 1) * int(tissue.downsample) + jitter
    width, height = slide.info.level_dimensions[0]
    random_xy = np.clip(random_xy, 0, [width - 224, height - 224])
    return {
        "tile-aligned 256": (aligned.coords[start_aligned : start_aligned + n_patches], 256),
        "sequential unaligned 224": (sequential.coords[start_seq : start_seq + n_patches], 224),
        "random 224": (random_xy.astype(np.int64), 224),
    }


def _decode_limit(slide_path: Path, coords: np.ndarray, size: int, cores: int) -> float:
    """Patches/s if every core did nothing but decode the JPEG tiles those patches touch (imagecodecs)."""
    with tifffile.TiffFile(slide_path) as tif:
        page = tif.pages[0]
        tile_w, tile_h = page.tilewidth, page.tilelength
        per_row = -(-page.imagewidth // tile_w)
        tiles = set()
        for x, y in coords:
            for ty in range(y // tile_h, (y + size - 1) // tile_h + 1):
                for tx in range(x // tile_w, (x + size - 1) // tile_w + 1):
                    tiles.add(ty * per_row + tx)
        tiles = sorted(tiles)[:1000]
        handle = tif.filehandle
        blobs = []
        for index in tiles:
            handle.seek(page.dataoffsets[index])
            blobs.append(handle.read(page.databytecounts[index]))
        tables = page.jpegtables
    start = time.perf_counter()
    for blob in blobs:
        imagecodecs.jpeg8_decode(blob, tables=tables)
    per_tile = (time.perf_counter() - start) / len(blobs)
    tiles_per_patch = np.mean(
        [((x + size - 1) // tile_w - x // tile_w + 1) * ((y + size - 1) // tile_h - y // tile_h + 1) for x, y in coords]
    )
    return cores / per_tile / tiles_per_patch


def _ours(slide_path: Path, coords: np.ndarray, size: int, threads: int, batch_size: int) -> float:
    grid = PatchGrid(
        coords=coords,
        level=0,
        read_size=size,
        patch_size=size,
        mpp=0.5,
        size_level0=size,
        tile_aligned=False,
        tissue_fraction=np.ones(len(coords), np.float32),
    )
    start = time.perf_counter()
    count = sum(
        len(item["image"])
        for item in patch_loader(PatchDataset(slide_path, grid, batch_size=batch_size, num_threads=threads))
    )
    return _rate(count, time.perf_counter() - start)


def _raw_cucim(slide_path: Path, coords: np.ndarray, size: int) -> float:
    image = CuImage(str(slide_path))
    start = time.perf_counter()
    for x, y in coords:
        np.asarray(image.read_region((int(x), int(y)), (size, size), 0))
    return _rate(len(coords), time.perf_counter() - start)


def _raw_cucim_batched(slide_path: Path, coords: np.ndarray, size: int, threads: int, batch_size: int) -> float:
    image = CuImage(str(slide_path))
    start = time.perf_counter()
    locations = [(int(x), int(y)) for x, y in coords]
    for batch in image.read_region(locations, (size, size), 0, num_workers=threads, batch_size=batch_size):
        np.asarray(batch)
    return _rate(len(coords), time.perf_counter() - start)


def _openslide(slide_path: Path, coords: np.ndarray, size: int) -> float:
    slide = openslide.OpenSlide(str(slide_path))
    start = time.perf_counter()
    for x, y in coords:
        np.asarray(slide.read_region((int(x), int(y)), 0, (size, size)))
    return _rate(len(coords), time.perf_counter() - start)


def _monai_tifffile(slide_path: Path, coords: np.ndarray, timeout: float) -> dict:
    x, y = (int(v) for v in coords[0])
    try:
        done = subprocess.run(
            [sys.executable, "-c", MONAI_PROBE, str(slide_path), str(x), str(y)],
            check=True,
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
        )
        return json.loads(done.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return {"seconds": float("inf"), "peak_rss_mb": float("nan")}


READERS = {
    "ours": lambda path, coords, size, threads, batch: _ours(path, coords, size, threads, batch),
    "cucim_batched": lambda path, coords, size, threads, batch: _raw_cucim_batched(path, coords, size, threads, batch),
    "cucim_single": lambda path, coords, size, threads, batch: _raw_cucim(path, coords, size),
    "openslide": lambda path, coords, size, threads, batch: _openslide(path, coords, size),
}


def _measure_in_fresh_process(
    reader: str, slide_path: Path, locations: Path, size: int, threads: int, batch_size: int
) -> float:
    """Patches/s of one reader, measured in a new process so no reader profits from another's tile cache."""
    command = [
        sys.executable,
        __file__,
        "--measure",
        reader,
        "--measure-locations",
        str(locations),
        "--size",
        str(size),
        "--out",
        str(slide_path),
        "--threads",
        str(threads),
        "--batch-size",
        str(batch_size),
    ]
    done = subprocess.run(command, check=True, capture_output=True, encoding="utf-8", errors="replace")
    return float(done.stdout.strip().splitlines()[-1])


def _extraction_probe(slide_path: Path, out: Path, config: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, str(slide_path), str(out), str(config)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(
    out: str = "bench_out",
    size: int = 40000,
    n_patches: int = 2000,
    threads: int = 2,
    batch_size: int = 64,
    rss_sizes: tuple[int, ...] = (10000, 40000),
    n_demo_slides: int = 3,
    monai_timeout: float = 120.0,
    seed: int = 0,
    measure: str | None = None,
    measure_locations: str | None = None,
) -> None:
    """Run the benchmark and print its tables.

    Args:
        out: working folder (the generated slides are kept there and reused).
        size: side of the benchmark slide in pixels.
        n_patches: patches per location set and reader.
        threads: decoder threads for the batched readers (and cores assumed for the decode limit).
        batch_size: patches per batched read.
        rss_sizes: slide sides for the peak-RSS-versus-slide-size check.
        n_demo_slides: demo slides for the end-to-end slides/minute figure.
        monai_timeout: seconds allowed for MONAI's tifffile reader to return one patch.
        seed: seed of the slides and locations.
        measure: internal: measure only this reader (ours, cucim_batched, cucim_single, openslide) on the slide
            given as ``out`` and the locations in ``measure_locations`` (patch side ``size``), print patches/s.
        measure_locations: internal: ``.npy`` of level-0 locations for ``measure``.
    """
    if measure is not None:
        print(READERS[measure](Path(out), np.load(measure_locations), size, threads, batch_size))
        return
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    cores = min(threads, len(os.sched_getaffinity(0)))
    slide_path = out_dir / f"bench_{size}.tif"
    if not slide_path.exists():
        start = time.perf_counter()
        write_benchmark_slide(slide_path, size=size, seed=seed)
        print(f"wrote {slide_path} ({slide_path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - start:.0f} s")
    location_sets = _locations(slide_path, n_patches, seed)
    with open_slide(slide_path) as slide:
        tile_size = slide.info.tile_sizes[0]

    print(f"\n## Patches/s on a {size} x {size} JPEG-tiled slide ({cores} cores, {n_patches} patches per cell)\n")
    header = (
        "locations",
        "decode limit",
        "ours",
        "raw cuCIM batched",
        "raw cuCIM 1-by-1",
        "OpenSlide",
        "ours/limit",
        "ours/raw 1-by-1",
        "ours/OpenSlide",
    )
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    run_lengths = {}
    for name, (coords, patch) in location_sets.items():
        strips = plan_strips(coords, patch, 1.0, tile_size)
        run_lengths[name] = strips.width // patch
        locations = out_dir / f"locations_{patch}_{name.split()[0]}.npy"
        np.save(locations, coords)
        limit = _decode_limit(slide_path, coords, patch, cores)
        rates = {
            reader: _measure_in_fresh_process(reader, slide_path, locations, patch, threads, batch_size)
            for reader in ("ours", "cucim_batched", "cucim_single", "openslide")
        }
        ours = rates["ours"]
        cells = [
            name,
            f"{limit:,.0f}",
            *(f"{rates[r]:,.0f}" for r in ("ours", "cucim_batched", "cucim_single", "openslide")),
            f"{ours / limit:.0%}",
            f"{ours / rates['cucim_single']:.2f}x",
            f"{ours / rates['openslide']:.2f}x",
        ]
        print("| " + " | ".join(cells) + " |")

    print(
        "\nours reads up to this many neighbouring patches of a row as one strip: "
        + ", ".join(f"{name} {length}" for name, length in run_lengths.items())
    )
    monai = _monai_tifffile(slide_path, location_sets["random 224"][0], monai_timeout)
    print(
        f"\nMONAI WSIReader(backend='tifffile'): one 224 px patch took {monai['seconds']:.1f} s, peak RSS "
        f"{monai['peak_rss_mb']:,.0f} MB (it decodes the whole level)"
    )

    timings = []
    with open_slide(slide_path) as slide:
        for _ in range(5):
            start = time.perf_counter()
            tissue = detect_tissue(slide)
            grid = make_grid(slide.info, tissue, target_mpp=0.5, patch_size=256)
            timings.append(time.perf_counter() - start)
    print(f"tissue detection + grid: {statistics.median(timings):.3f} s per slide (median of 5; {len(grid):,} patches)")

    config = Path(__file__).resolve().parents[1] / "configs" / "wsi.json"
    demo_dir = out_dir / "demo"
    demo_dir.mkdir(exist_ok=True)
    seconds = []
    for index in range(n_demo_slides):
        demo = demo_dir / f"demo_{index}.tif"
        if not demo.exists():
            write_demo_slide(demo, seed=seed + index, tumor="macro")
        seconds.append(_extraction_probe(demo, out_dir / "features_demo", config))
    total = sum(s["seconds"] for s in seconds)
    print(
        f"end to end (built-in encoder, demo slides 6144 x 4096): {60 * n_demo_slides / total:.1f} slides/min, "
        f"{sum(s['n_patches'] for s in seconds) / total:,.0f} patches/s"
    )

    print("\n## Peak RSS of one extraction process versus slide size\n")
    print("| slide | patches | seconds | peak RSS MB |\n|---|---|---|---|")
    for side in rss_sizes:
        path = out_dir / f"bench_{side}.tif"
        if not path.exists():
            write_benchmark_slide(path, size=side, seed=seed)
        probe = _extraction_probe(path, out_dir / "features_rss", config)
        print(f"| {side} x {side} | {probe['n_patches']:,} | {probe['seconds']:.1f} | {probe['peak_rss_mb']:,.0f} |")


if __name__ == "__main__":
    fire.Fire(main)

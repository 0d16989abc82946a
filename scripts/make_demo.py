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

"""Synthetic slides with known ground truth: a demo set (negative / ITC / micro / macro) or one big benchmark slide.

Usage:
    python scripts/make_demo.py slides --out demo_slides [--n-slides 8] [--seed 0] [--width 6144 --height 4096]
        [--mpp 0.5]
    python scripts/make_demo.py bench --out bench_40k.tif [--size 40000] [--tile-size 256] [--seed 0]

``slides`` writes ``slide_000.tif``, ... and ``truth.json`` (tumor label and boxes, tissue boxes and mask per
slide); ``bench`` writes one pyramidal slide by streaming pre-encoded tiles (about 3 s and 180 MB for 40,000 px).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import fire

from monai_ext.wsi.synthetic import make_demo_slides, write_benchmark_slide


def slides(out: str, n_slides: int = 8, seed: int = 0, width: int = 6144, height: int = 4096, mpp: float = 0.5) -> None:
    """Write ``n_slides`` demo slides (labels balanced over negative, itc, micro, macro) and ``truth.json``.

    Args:
        out: output folder.
        n_slides: number of slides.
        seed: master seed (the same seed gives the same files).
        width: level-0 width of each slide in pixels.
        height: level-0 height of each slide in pixels.
        mpp: micrometers per level-0 pixel.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    truths = make_demo_slides(out, n_slides=n_slides, seed=seed, size=(width, height), mpp=mpp, progress=True)
    counts = {label: sum(t.tumor == label for t in truths) for label in sorted({t.tumor for t in truths})}
    logging.info(f"labels: {json.dumps(counts)}; truth in {Path(out) / 'truth.json'}")


def bench(out: str, size: int = 40000, tile_size: int = 256, seed: int = 0) -> None:
    """Write one ``size`` x ``size`` JPEG-tiled benchmark slide and its truth as ``<out>.truth.json``.

    Args:
        out: output ``.tif`` path.
        size: level-0 width and height in pixels.
        tile_size: JPEG tile side.
        seed: random seed.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    truth = write_benchmark_slide(out, size=size, tile_size=tile_size, seed=seed, progress=True)
    truth_path = Path(f"{out}.truth.json")
    truth_path.write_text(truth.to_json())
    logging.info(f"wrote {out} ({Path(out).stat().st_size / 1e6:.0f} MB) and {truth_path}")


if __name__ == "__main__":
    fire.Fire({"slides": slides, "bench": bench})

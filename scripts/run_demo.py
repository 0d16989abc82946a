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

"""The main job on the built-in demo cohort, end to end, offline.

Usage:
    python scripts/run_demo.py [--out demo_out] [--n-slides 8]

Writes synthetic slides with planted tumors (``slides/``), extracts patch features with the built-in encoder
(``features/``, ``qc/``, ``status.csv``). Every step resumes: run it again and finished work is reused.
"""

from __future__ import annotations

import logging
from pathlib import Path

import fire

import monai_ext  # noqa: F401 - silences native library banners before MONAI loads
from monai_ext.wsi.batch import preprocess_slides
from monai_ext.wsi.extract import ExtractionConfig
from monai_ext.wsi.synthetic import make_demo_slides, read_truth

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "wsi.json"


def main(out: str = "demo_out", n_slides: int = 8, seed: int = 0) -> None:
    """Run the demo pipeline.

    Args:
        out: output folder.
        n_slides: number of synthetic slides.
        seed: seed of the synthetic cohort.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    out_dir = Path(out)
    slides_dir = out_dir / "slides"
    truth_file = slides_dir / "truth.json"
    if truth_file.is_file() and len(read_truth(truth_file)) == n_slides:
        print(f"demo slides: reusing {slides_dir}")
    else:
        print(f"demo slides: writing {n_slides} synthetic slides to {slides_dir}")
        make_demo_slides(slides_dir, n_slides=n_slides, seed=seed, progress=True)
    table = preprocess_slides(
        slides_dir, out_dir / "features_builtin", config=ExtractionConfig.from_json(CONFIG), device="auto", seed=seed
    )
    counts = table["status"].value_counts().to_dict()
    print(f"features: {counts} -> {out_dir / 'features_builtin'} (QC pictures in qc/, status in status.csv)")


if __name__ == "__main__":
    fire.Fire(main)

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

"""Whole-slide images to patch features: one feature file, one QC picture and one status row per slide.

Usage:
    python scripts/preprocess.py --slides <folder or manifest.csv> --out <dir> [--encoder builtin_cnn]
        [--weights PATH] [--mpp 0.5] [--patch-size 256] [--config configs/wsi.json]

Run it again with the same arguments and it resumes: finished slides (decided from their feature files'
attributes) are skipped, interrupted ones redone. Spread slides over processes or GPUs with
``torchrun --nproc_per_node K scripts/preprocess.py ...``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import fire
import pandas as pd

import monai_ext  # noqa: F401 - silences native library banners before MONAI loads
from monai_ext.wsi.batch import preprocess_slides
from monai_ext.wsi.extract import ExtractionConfig

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "wsi.json"


def main(
    slides: str,
    out: str,
    encoder: str = "builtin_cnn",
    weights: str | None = None,
    mpp: float | None = None,
    patch_size: int | None = None,
    config: str = str(DEFAULT_CONFIG),
    batch_size: int | None = None,
    device: str = "auto",
    resume: bool = True,
    seed: int = 0,
    verbose: bool = False,
) -> None:
    """Extract patch features from every slide of a folder or manifest.

    Args:
        slides: folder of slides, or manifest CSV with slide_path (and optional slide_id, mpp) columns.
        out: output folder (features/, qc/, status/, status.csv).
        encoder: patch encoder name (see monai_ext.wsi.encoders.list_encoders()).
        weights: local weights file for the encoder (required for all but builtin_cnn).
        mpp: target micrometers per pixel (default from the config: 0.5).
        patch_size: patch side in pixels at mpp (default from the config: 256).
        config: extraction config JSON.
        batch_size: patches per batch (default from the config).
        device: "cpu", "cuda", or "auto" (cuda when available).
        resume: skip slides already extracted with the same settings.
        seed: seed of the built-in encoder's weights.
        verbose: debug logging.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    settings = ExtractionConfig.from_json(config, mpp=mpp, patch_size=patch_size, batch_size=batch_size)
    table = preprocess_slides(
        slides, out, encoder=encoder, weights=weights, config=settings, device=device, resume=resume, seed=seed
    )
    if table is not None:
        print_summary(table, Path(out))


def print_summary(table: pd.DataFrame, out: Path) -> None:
    """Counts per status and the status table, readable in a terminal."""
    counts = table["status"].value_counts().to_dict()
    print(f"\n{len(table)} slides: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    shown = table[["slide_id", "status", "n_patches", "n_broken", "seconds", "reason"]].copy()
    shown["reason"] = shown["reason"].fillna("").str.slice(0, 100)
    print(shown.to_string(index=False))
    print(f"\nstatus table: {out / 'status.csv'}  features: {out / 'features'}  QC pictures: {out / 'qc'}")


if __name__ == "__main__":
    fire.Fire(main)

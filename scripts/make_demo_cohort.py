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

"""Write the built-in multimodal demo cohort: synthetic slides, features, omics, notes, clinical data and labels.

Usage:
    python scripts/make_demo_cohort.py [--root demo_cohort] [--n-patients 24] [--seed 0] [--width 3072 --height 2048]
        [--max-slides-per-patient 3] [--extract True] [--stage-reference CAMELYON17/splits/output.csv]

Writes ``manifest.csv``, ``omics.csv``, ``cohort.json``, ``slides/`` and ``features/`` under the root (see
:func:`monai_ext.data.demo.make_demo_cohort`); running it again reuses everything already complete. Use
``--max-slides-per-patient 5`` for a staging cohort that includes pN2 (four or more positive nodes).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import fire

import monai_ext  # noqa: F401 - silences native library banners before MONAI loads
from monai_ext.data.demo import make_demo_cohort


def main(
    root: str = "demo_cohort",
    n_patients: int = 24,
    seed: int = 0,
    width: int = 3072,
    height: int = 2048,
    max_slides_per_patient: int = 3,
    extract: bool = True,
    stage_reference: str | None = None,
) -> None:
    """Write (or complete) the demo cohort and log its label distribution.

    Args:
        root: output folder.
        n_patients: number of patients.
        seed: seed of everything (the same arguments give the same files).
        width: level-0 width of every slide in pixels.
        height: level-0 height of every slide in pixels.
        max_slides_per_patient: 1-5 lymph-node slides per patient.
        extract: extract patch features with the built-in encoder.
        stage_reference: CAMELYON17 ``output.csv`` to draw node stages from (default: the proportions measured
            from it, shipped in the code).
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    manifest = make_demo_cohort(
        root,
        n_patients=n_patients,
        seed=seed,
        slide_size=(width, height),
        max_slides_per_patient=max_slides_per_patient,
        extract=extract,
        progress=True,
        stage_reference=stage_reference,
    )
    description = json.loads((Path(root) / "cohort.json").read_text())
    logging.info(f"label distribution: {json.dumps(description['label_distribution'])}")
    logging.info(f"manifest: {manifest}")


if __name__ == "__main__":
    fire.Fire(main)

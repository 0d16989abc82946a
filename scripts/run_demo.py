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

"""The main job on the built-in demo cohort, end to end and offline.

Usage:
    python scripts/run_demo.py [--out demo_out] [--n-patients 24] [--epochs 8] [--folds 3]

1. Builds the demo cohort (synthetic slides with planted tumors, features with the built-in encoder, genomics,
   clinical data, notes) under ``out/cohort``; resumable.
2. Cross-validates a survival model (discrete-time hazards) on WSI alone, genomics alone and WSI + genomics
   (ABMIL + concat fusion), patient-grouped folds, bins and scaling fitted per training fold.
3. Prints the C-index table and writes everything under ``out/crossval/<modalities>``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import fire
import pandas as pd

import monai_ext  # noqa: F401 - silences native library banners before MONAI loads
from monai_ext.data.cohort import Cohort
from monai_ext.data.demo import make_demo_cohort
from monai_ext.data.omics import select_modalities
from monai_ext.data.splits import patient_kfold
from monai_ext.engines.crossval import CrossValSettings, run_crossval
from monai_ext.networks.multimodal import MultimodalModel

RUNS = (("wsi",), ("omics",), ("wsi", "omics"))


def main(out: str = "demo_out", n_patients: int = 48, epochs: int = 20, folds: int = 4, seed: int = 0) -> None:
    """Run the demo.

    Args:
        out: output folder.
        n_patients: patients of the demo cohort.
        epochs: maximum training epochs per fold.
        folds: cross-validation folds.
        seed: seed of the cohort and the training.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("ignite").setLevel(logging.WARNING)
    manifest = make_demo_cohort(Path(out) / "cohort", n_patients=n_patients, seed=seed, progress=True)
    root = manifest.parent
    print(f"demo cohort: {root} (slides/, features/, manifest.csv, omics.csv, cohort.json)")
    omics = select_modalities(pd.read_csv(root / "omics.csv").set_index("case_id"), ("_rnaseq",))
    slides = pd.read_csv(manifest)
    with_omics = slides[slides["case_id"].isin(omics.index)]  # same patients for every modality combination
    allowed = ("label", "slide_stage", "patient_stage", "text", "age", "sex", "slide_path")
    cohort = Cohort(with_omics, task="survival", data_root=root, allow_columns=allowed, source=str(manifest))
    print(f"{len(cohort.patients)} of {slides['case_id'].nunique()} patients have genomics; all runs use them")
    fold_list = patient_kfold(cohort, folds, stratify_by="survival", seed=seed)
    rows = []
    for modalities in RUNS:
        settings = CrossValSettings(
            task="survival",
            modalities=modalities,
            epochs=epochs,
            patience=4,
            lr=1e-3,
            max_patches=512,
            n_bins=4,
            seed=seed,
        )

        def build(
            wsi_dim: int,
            omics_dim: int,
            clinical_dim: int,
            text_dim: int,
            n_outputs: int,
            modalities: tuple[str, ...] = modalities,
        ) -> MultimodalModel:
            return MultimodalModel(
                modalities=modalities,
                wsi_dim=wsi_dim or None,
                omics_dim=omics_dim or None,
                dim=64,
                aggregator="abmil",
                fusion="concat",
                task="survival",
                n_bins=n_outputs,
            )

        name = "+".join(modalities)
        print(f"cross-validating {name} ...")
        results = run_crossval(cohort, fold_list, build, settings, Path(out) / "crossval" / name, omics=omics)
        rows.append(
            {
                "modalities": name,
                "c_index_mean": results["c_index"].mean(),
                "c_index_std": results["c_index"].std(ddof=1),
            }
        )
    table = pd.DataFrame(rows)
    print("\nTest C-index over folds (demo cohort):")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    table.to_csv(Path(out) / "crossval" / "summary.csv", index=False)


if __name__ == "__main__":
    fire.Fire(main)

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

"""Cross-validate a multimodal model on a cohort: per-fold training with early stopping, results table, predictions.

Usage:
    python scripts/crossval.py --manifest cohort/manifest.csv --task survival --out runs/cv \
        [--modalities wsi,omics] [--omics cohort/omics.csv] [--aggregator abmil --fusion concat --dim 128] \
        [--folds 5 | --splits path/to/splits_dir] [--epochs 20 --patience 5 --max-patches 4096]

Tasks: ``classification`` (``label``), ``staging`` (``patient_stage``), ``survival`` (discrete-time hazards on
``survival_months``/``event``; bins from the training fold), ``cox``. Writes ``results.csv`` (one row per fold),
``summary.json`` (mean and std), ``fold_k/predictions.csv``, checkpoints and TensorBoard logs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import fire
import pandas as pd
import torch

import monai_ext  # noqa: F401 - silences native library banners before MONAI loads
from monai_ext.data.cohort import Cohort
from monai_ext.data.omics import select_modalities
from monai_ext.data.splits import patient_kfold, read_published_splits
from monai_ext.engines.crossval import CrossValSettings, run_crossval
from monai_ext.networks.multimodal import MultimodalModel


def _split_names(value: str | tuple | list) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return tuple(value)


def main(
    manifest: str,
    task: str,
    out: str,
    modalities: str = "wsi",
    omics: str | None = None,
    omics_suffixes: str = "_rnaseq",
    clinical: str = "",
    categorical: str = "",
    aggregator: str = "abmil",
    fusion: str = "concat",
    dim: int = 128,
    model_config: str | None = None,
    folds: int = 5,
    splits: str | None = None,
    epochs: int = 20,
    patience: int = 5,
    lr: float = 2e-4,
    max_patches: int | None = 4096,
    n_bins: int = 4,
    val_fraction: float = 0.2,
    seed: int = 0,
    device: str = "auto",
    data_root: str | None = None,
) -> None:
    """Run cross-validation and print the results table.

    Args:
        manifest: cohort manifest CSV (one row per slide, with features_path).
        task: classification, staging, survival or cox.
        out: output folder.
        modalities: comma-separated subset of wsi, omics, clinical.
        omics: gene table CSV with a case_id column (TCGA-style _rnaseq/_cnv/_mut columns).
        omics_suffixes: comma-separated gene column suffixes to use.
        clinical: comma-separated manifest columns used as the clinical modality (e.g. age,sex).
        categorical: which of those are categorical (one-hot, unknown slot).
        aggregator: MIL aggregator (mean, max, abmil, clam_sb, clam_mb, transmil, dsmil).
        fusion: fusion (concat, kronecker, lowrank, coattention, pathway_cross, bicross).
        dim: shared token width.
        model_config: JSON file of further MultimodalModel keyword arguments.
        folds: number of patient-grouped folds (ignored with --splits).
        splits: folder of published splits_{k}.csv files (MCAT style).
        epochs: maximum epochs per fold.
        patience: early-stopping patience (epochs without improvement on the inner validation split).
        lr: learning rate (AdamW).
        max_patches: training cap on patches per patient (full bags at evaluation).
        n_bins: survival time bins (from each training fold's uncensored times).
        val_fraction: share of each training part held out for early stopping.
        seed: random seed.
        device: cpu, cuda or auto.
        data_root: folder the manifest's paths resolve in (default: the manifest's folder).
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    names = _split_names(modalities)
    cohort_task = "survival" if task == "cox" else task
    clinical_columns = _split_names(clinical)
    cohort = Cohort.from_csv(
        manifest, data_root=data_root, task=cohort_task, clinical_columns=clinical_columns, allow_columns=("text",)
    )
    clinical_table = cohort.patient_table()[list(clinical_columns)] if clinical_columns else None
    omics_table = None
    if omics is not None:
        table = pd.read_csv(omics).set_index("case_id")
        omics_table = select_modalities(table, _split_names(omics_suffixes))
    if splits is not None:
        fold_list = read_published_splits(splits)
    else:
        stratify = "survival" if cohort_task == "survival" else cohort.labels().columns[0]
        fold_list = patient_kfold(cohort, folds, stratify_by=stratify, seed=seed, val_fraction=val_fraction)
    extra = json.loads(Path(model_config).read_text()) if model_config else {}
    run_device = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    settings = CrossValSettings(
        task=task,
        modalities=names,
        epochs=epochs,
        patience=patience,
        lr=lr,
        max_patches=max_patches,
        n_bins=n_bins,
        val_fraction=val_fraction,
        seed=seed,
        device=run_device,
        clinical_columns=clinical_columns,
        categorical=_split_names(categorical),
    )

    def build_model(wsi_dim: int, omics_dim: int, clinical_dim: int, text_dim: int, n_outputs: int) -> MultimodalModel:
        model_task = {"staging": "classification"}.get(task, task)
        return MultimodalModel(
            modalities=names,
            wsi_dim=wsi_dim or None,
            omics_dim=omics_dim or None,
            clinical_dim=clinical_dim or None,
            text_dim=text_dim or None,
            dim=dim,
            aggregator=aggregator,
            fusion=fusion,
            task=model_task,
            n_classes=max(n_outputs, 2),
            n_bins=n_outputs,
            **extra,
        )

    results = run_crossval(cohort, fold_list, build_model, settings, out, omics=omics_table, clinical=clinical_table)
    print(results.to_string(index=False))
    summary = json.loads((Path(out) / "summary.json").read_text())
    print("\n" + "\n".join(f"{name}: {s['mean']:.4f} +/- {s['std']:.4f}" for name, s in summary.items()))


if __name__ == "__main__":
    fire.Fire(main)

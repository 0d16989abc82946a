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

"""Cross-validation of a multimodal model over patient-grouped folds.

For each fold: omics scaling, clinical encoding and survival bins are fitted on the fold's training patients only;
the model trains with early stopping on an inner validation split drawn from the training part (never the test
fold); the best weights predict the test fold. Results: a per-fold metrics table, its mean +/- std, per-fold
prediction CSVs, and for survival a Kaplan-Meier picture of the test risk groups and a Cox baseline on age alone.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split

from monai_ext.data.clinical import ClinicalEncoder
from monai_ext.data.cohort import Cohort
from monai_ext.data.dataset import MultimodalDataset
from monai_ext.data.omics import GeneScaler
from monai_ext.data.splits import Fold, check_no_leakage
from monai_ext.data.survival_bins import make_time_bins
from monai_ext.engines.fit import fit_model
from monai_ext.engines.predict import predict
from monai_ext.metrics.classification import balanced_accuracy, macro_f1, quadratic_weighted_kappa, roc_auc
from monai_ext.metrics.survival import concordance_index

logger = logging.getLogger(__name__)


@dataclass
class CrossValSettings:
    """Training settings shared by every fold."""

    task: str
    modalities: tuple[str, ...] = ("wsi",)
    epochs: int = 20
    patience: int = 5
    lr: float = 2e-4
    batch_size: int = 1
    max_patches: int | None = 4096
    n_bins: int = 4
    val_fraction: float = 0.2
    alpha: float = 0.0
    seed: int = 0
    device: str = "cpu"
    encoder: str | None = None
    clinical_columns: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()


def inner_validation(fold: Fold, labels: pd.Series | None, fraction: float, seed: int) -> Fold:
    """The fold with ``val`` drawn from its training part (stratified when every class has 2+ patients)."""
    if len(fold.val) or fraction <= 0:
        return fold
    stratify = None
    if labels is not None:
        counts = labels.loc[fold.train].value_counts()
        stratify = labels.loc[fold.train].to_numpy() if (counts >= 2).all() else None
    train, val = train_test_split(fold.train, test_size=fraction, random_state=seed, stratify=stratify)
    return Fold(np.sort(train), np.sort(val), fold.test)


def fold_metrics(task: str, table: pd.DataFrame) -> dict[str, float]:
    """Test-fold metrics from a prediction table (see :func:`monai_ext.engines.predict.predict`)."""
    if task in ("survival", "cox"):
        return {"c_index": concordance_index(table["time"], table["event"], table["risk"])}
    labels = table["label"].to_numpy(int)
    probs = table[[c for c in table.columns if c.startswith("prob_")]].to_numpy()
    metrics = {
        "balanced_accuracy": balanced_accuracy(labels, table["pred"].to_numpy(int)),
        "macro_f1": macro_f1(labels, table["pred"].to_numpy(int), num_classes=probs.shape[1]),
    }
    if len(np.unique(labels)) > 1:
        scores = probs[:, 1] if probs.shape[1] == 2 else probs / probs.sum(1, keepdims=True)
        present = len(np.unique(labels)) == probs.shape[1] or probs.shape[1] == 2
        metrics["auc"] = roc_auc(labels, scores) if present else float("nan")
    if task == "staging":
        metrics["kappa"] = quadratic_weighted_kappa(labels, table["pred"].to_numpy(int), num_classes=probs.shape[1])
    return metrics


def run_crossval(
    cohort: Cohort,
    folds: Sequence[Fold],
    build_model: Callable[..., torch.nn.Module],
    settings: CrossValSettings,
    out_dir: str | Path,
    *,
    omics: pd.DataFrame | None = None,
    clinical: pd.DataFrame | None = None,
    text: dict[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Train and test one model per fold; write ``results.csv``, ``summary.json``, ``fold_k/predictions.csv``.

    Args:
        cohort: the validated cohort.
        folds: patient-grouped folds (checked for leakage first).
        build_model: ``build_model(**dims) -> model`` called per fold with ``wsi_dim``, ``omics_dim``,
            ``clinical_dim``, ``text_dim``, ``n_outputs``.
        settings: training settings.
        out_dir: output folder.
        omics: raw gene table indexed by case id (scaled per fold on its training patients).
        clinical: raw clinical table indexed by case id (``settings.clinical_columns`` are encoded per fold,
            fitted on the training patients).
        text: per-patient text embeddings.

    Returns:
        the per-fold metrics table.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_no_leakage(folds, cohort.slide_table)
    labels = cohort.labels()
    strat = labels["event"] if settings.task in ("survival", "cox") else labels.iloc[:, 0]
    rows = []
    for k, fold in enumerate(folds):
        fold_dir = out_dir / f"fold_{k}"
        fold = inner_validation(fold, strat, settings.val_fraction, settings.seed + k)
        check_no_leakage([fold], cohort.slide_table)
        common = _fold_inputs(cohort, fold, settings, fold_dir, omics, clinical)
        datasets = {
            part: MultimodalDataset(
                cohort,
                getattr(fold, part),
                modalities=settings.modalities,
                omics=common["omics"],
                clinical=common["clinical"],
                text=text,
                time_bin_edges=common["edges"],
                encoder=settings.encoder,
                max_patches=settings.max_patches if part == "train" else None,
                seed=settings.seed + k,
            )
            for part in ("train", "val", "test")
        }
        probe = datasets["train"][0]
        model = build_model(
            wsi_dim=probe["wsi"].shape[1] if "wsi" in probe else 0,
            omics_dim=probe["omics"].shape[0] if "omics" in probe else 0,
            clinical_dim=probe["clinical"].shape[0] if "clinical" in probe else 0,
            text_dim=probe["text"].shape[1] if "text" in probe else 0,
            n_outputs=_n_outputs(settings, datasets["train"]),
        )
        result = fit_model(
            model,
            datasets["train"],
            datasets["val"],
            task=settings.task,
            out_dir=fold_dir,
            epochs=settings.epochs,
            lr=settings.lr,
            patience=settings.patience,
            batch_size=settings.batch_size,
            alpha=settings.alpha,
            device=settings.device,
            seed=settings.seed + k,
        )
        table = predict(model, datasets["test"], device=settings.device)
        _write_csv(table, fold_dir / "predictions.csv")
        metrics = {
            "fold": k,
            "n_train": len(fold.train),
            "n_val": len(fold.val),
            "n_test": len(fold.test),
            "best_epoch": result.best_epoch,
            f"val_{result.metric_name}": result.best_metric,
            **fold_metrics(settings.task, table),
        }
        rows.append(metrics)
        logger.info("fold %d: %s", k, metrics)
    results = pd.DataFrame(rows)
    _write_csv(results, out_dir / "results.csv")
    summary = {
        column: {"mean": float(results[column].mean()), "std": float(results[column].std(ddof=1))}
        for column in results.columns
        if column not in ("fold", "n_train", "n_val", "n_test", "best_epoch")
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return results


def _fold_inputs(
    cohort: Cohort,
    fold: Fold,
    settings: CrossValSettings,
    fold_dir: Path,
    omics: pd.DataFrame | None,
    clinical: pd.DataFrame | None,
) -> dict[str, Any]:
    """Per-fold pieces fitted on the training patients only: scaled omics and encoded clinical data (both saved
    with the fold) and survival bin edges."""
    fold_dir.mkdir(parents=True, exist_ok=True)
    scaled = None
    if omics is not None and "omics" in settings.modalities:
        scaler = GeneScaler().fit(omics, [c for c in fold.train if c in omics.index])
        scaler.save(fold_dir / "gene_scaler.json")
        values, _ = scaler.transform(omics)
        scaled = pd.DataFrame(values, index=omics.index, columns=scaler.genes)
    encoded = None
    if clinical is not None and "clinical" in settings.modalities:
        encoder = ClinicalEncoder().fit(
            clinical, settings.clinical_columns, case_ids=list(fold.train), categorical=settings.categorical
        )
        encoder.save(fold_dir / "clinical_encoder.json")
        encoded = encoder.transform_frame(clinical)
    edges = None
    if settings.task == "survival":
        train = cohort.labels(fold.train)
        edges = make_time_bins(train["survival_months"].to_numpy(), train["event"].to_numpy(), settings.n_bins)
        (fold_dir / "time_bins.json").write_text(json.dumps([float(e) for e in edges]))
    return {"omics": scaled, "clinical": encoded, "edges": edges}


def _n_outputs(settings: CrossValSettings, dataset: MultimodalDataset) -> int:
    if settings.task == "survival":
        return settings.n_bins
    if settings.task == "cox":
        return 1
    return len(dataset.label_values)


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(path)

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

"""Subtype classification benchmark from genomics + clinical variables on TCGA-format tables, baselines beside.

Labels come per patient from a folder of json files (e.g. ``subtyping/tcga_brca/*.json``: IDC 0 / ILC 1) or from a
column of the table mapped to class indices (e.g. ``oncotree_code``: ``IDC`` -> 0, ``ILC`` -> 1). Patients are split
into stratified, patient-grouped folds (scikit-learn ``StratifiedGroupKFold``, fixed seed). Per fold, the gene
scaler, the clinical encoder and the RNA gene selection are fitted on the training patients only; networks stop
early on the AUC of an inner split of the training fold, never on the test fold.

Baselines: L2 logistic regression (scikit-learn) on the most variable training RNA genes + age, on the clinical
vector alone, and on every gene + the clinical vector (the SNN + clinical network's own inputs). Models:
:class:`monai_ext.networks.multimodal.MultimodalModel` with an SNN genomics encoder (Klambauer et al. 2017,
https://arxiv.org/abs/1706.02515), with or without the clinical vector (concat fusion), trained with class-weighted
cross-entropy. Metrics: ROC AUC and balanced accuracy (threshold 0.5 on the
positive-class probability) per test fold.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold

from monai_ext.data.clinical import ClinicalEncoder
from monai_ext.data.omics import GeneScaler, gene_columns
from monai_ext.data.splits import Fold, check_no_leakage
from monai_ext.engines.crossval import inner_validation
from monai_ext.engines.tcga_benchmark import clinical_spec
from monai_ext.metrics.classification import balanced_accuracy, roc_auc
from monai_ext.networks.multimodal import MultimodalModel

__all__ = [
    "SUBTYPING_BASELINES",
    "ClassifierSpec",
    "SubtypingFold",
    "SubtypingSettings",
    "build_subtyping_fold",
    "classification_metrics",
    "default_subtyping_models",
    "labels_from_column",
    "logistic_baseline",
    "read_json_labels",
    "run_subtyping_benchmark",
    "stratified_patient_folds",
    "summarize_subtyping",
    "train_classifier",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubtypingSettings:
    """Hyperparameters fixed once for every cohort (no tuning on any test fold).

    Attributes:
        n_folds: outer folds.
        gene_suffixes: gene modalities fed to the networks.
        dim: token width of the networks.
        dropout: dropout of the networks.
        epochs: maximum epochs.
        patience: epochs without inner-validation AUC gain before stopping.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        batch_size: patients per step.
        val_fraction: part of the training fold held out (stratified) for early stopping.
        logistic_genes: RNA genes (highest training variance) given to the logistic regression.
        logistic_c: inverse L2 strength ``C`` of the logistic regression.
        seed: seed of the folds, inner splits and networks.
    """

    n_folds: int = 5
    gene_suffixes: tuple[str, ...] = ("_rnaseq", "_cnv", "_mut")
    dim: int = 64
    dropout: float = 0.25
    epochs: int = 40
    patience: int = 8
    lr: float = 5e-4
    weight_decay: float = 1e-3
    batch_size: int = 64
    val_fraction: float = 0.2
    logistic_genes: int = 100
    logistic_c: float = 0.1
    seed: int = 0


@dataclass(frozen=True)
class ClassifierSpec:
    """One network of the benchmark: row name and whether the clinical vector is a second modality."""

    name: str
    clinical: bool


def default_subtyping_models() -> list[ClassifierSpec]:
    """SNN on genomics, and SNN on genomics + clinical variables."""
    return [ClassifierSpec("snn", False), ClassifierSpec("snn+clin", True)]


def read_json_labels(
    folder: str | Path,
    *,
    id_key: str = "case_submitter_id",
    label_key: str = "primary_class",
    exclude: Sequence[int] = (-1,),
) -> pd.Series:
    """Patient labels from every ``*.json`` of a folder (``{"data": [one entry per slide]}`` or a plain list).

    Args:
        folder: folder of json files (all are read; their train / val / test names are ignored, the benchmark
            makes its own folds).
        id_key: entry key matching the table's ``case_id`` (TCGA barcode ``TCGA-XX-XXXX``; the entries'
            ``case_id`` is a GDC UUID).
        label_key: entry key holding the class index.
        exclude: label values dropped (e.g. -1 = excluded diagnosis).

    Returns:
        int Series indexed by case id (sorted), named ``label``.

    Raises:
        FileNotFoundError: no json file in the folder.
        ValueError: entries without the keys, or one patient with two labels.
    """
    files = sorted(Path(folder).glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no *.json label file in {folder}: pass the folder holding the subtyping json files")
    entries = []
    for path in files:
        content = json.loads(path.read_text())
        rows = content["data"] if isinstance(content, dict) and "data" in content else content
        missing = [key for key in (id_key, label_key) if any(key not in row for row in rows)]
        if missing:
            raise ValueError(f"{path}: entries without key(s) {missing}; pass id_key / label_key that the file uses")
        entries += [(str(row[id_key]), int(row[label_key])) for row in rows]
    table = pd.DataFrame(entries, columns=["case_id", "label"]).drop_duplicates()
    table = table[~table["label"].isin(list(exclude))]
    return _one_label_per_patient(table, f"{folder}")


def labels_from_column(slides: pd.DataFrame, mapping: Mapping[str, int], *, column: str = "oncotree_code") -> pd.Series:
    """Patient labels from a column of the slide table, mapped to class indices; unmapped values are dropped.

    Args:
        slides: one row per slide with ``case_id`` and ``column``.
        mapping: value -> class index, e.g. ``{"IDC": 0, "ILC": 1}``.
        column: the column holding the class names.

    Returns:
        int Series indexed by case id (sorted), named ``label``.

    Raises:
        ValueError: missing column, no mapped value in it, or one patient with two labels.
    """
    if column not in slides:
        raise ValueError(f"the table has no column {column!r}; choose one of {list(slides.columns)[:12]}")
    mapped = slides[column].map(dict(mapping))
    if mapped.notna().sum() == 0:
        found = sorted(slides[column].dropna().astype(str).unique())[:10]
        raise ValueError(f"none of {sorted(mapping)} occurs in column {column!r} (values: {found})")
    table = pd.DataFrame({"case_id": slides["case_id"], "label": mapped}).dropna().drop_duplicates()
    return _one_label_per_patient(table.astype({"label": int}), f"column {column!r}")


def _one_label_per_patient(table: pd.DataFrame, where: str) -> pd.Series:
    conflicting = sorted(table["case_id"][table["case_id"].duplicated()].unique())
    if conflicting:
        raise ValueError(f"{where}: {len(conflicting)} patient(s) with two labels, first {conflicting[:5]}")
    return table.set_index("case_id")["label"].sort_index().rename("label")


def stratified_patient_folds(
    case_ids: Sequence[str] | np.ndarray, labels: Sequence[int] | np.ndarray, n_folds: int = 5, seed: int = 0
) -> list[Fold]:
    """Stratified folds in which every patient's rows (e.g. slides) fall in one test part (scikit-learn
    ``StratifiedGroupKFold`` with ``shuffle=True``).

    Args:
        case_ids: ``[N]`` patient of each row (repeated for patients with several slides).
        labels: ``[N]`` class of each row (constant within a patient).
        n_folds: number of folds.
        seed: shuffling seed.

    Returns:
        ``n_folds`` folds of sorted unique patient ids; ``val`` is empty (drawn later from ``train``).

    Raises:
        ValueError: lengths that differ, a patient with two labels, or a class with fewer patients than folds.
    """
    ids, y = np.asarray(case_ids, dtype=str), np.asarray(labels, dtype=int)
    if ids.shape != y.shape:
        raise ValueError(f"case_ids and labels must have the same length, got {ids.shape} and {y.shape}")
    per_patient = pd.Series(y).groupby(ids).nunique()
    if (per_patient > 1).any():
        raise ValueError(f"patients with two labels: {per_patient.index[per_patient > 1].tolist()[:5]}")
    counts = pd.Series(y).groupby(ids).first().value_counts()
    if (counts < n_folds).any() or len(counts) < 2:
        raise ValueError(f"each of 2+ classes needs >= {n_folds} patients for {n_folds} folds, got {counts.to_dict()}")
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = []
    for train_rows, test_rows in splitter.split(ids, y, groups=ids):
        folds.append(Fold(np.unique(ids[train_rows]), np.array([], dtype=str), np.unique(ids[test_rows])))
    check_no_leakage(folds)
    return folds


@dataclass
class SubtypingFold:
    """Everything one fold's models and baselines need, fitted on the training fold (train + inner val) only.

    Attributes:
        parts: ``{"train", "val", "test"}`` -> case ids (``val`` is the inner split of the training fold).
        labels: class index per part ``[N]``.
        omics: scaled gene matrix per part ``[N, G]`` (float32).
        clinical: encoded clinical matrix per part ``[N, C]`` (float32).
        rna_age: the ``logistic_genes`` RNA genes of highest raw training variance (z-scored) + standardised age
            per part ``[N, R + 1]`` (for the logistic regression).
    """

    parts: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    omics: dict[str, np.ndarray]
    clinical: dict[str, np.ndarray]
    rna_age: dict[str, np.ndarray]

    def training(self, values: dict[str, np.ndarray]) -> np.ndarray:
        """Rows of the whole training fold (train, then val) of a per-part mapping."""
        return np.concatenate([values["train"], values["val"]])


def build_subtyping_fold(
    patients: pd.DataFrame, genes: pd.DataFrame, fold: Fold, settings: SubtypingSettings, seed: int
) -> SubtypingFold:
    """Scale genes, encode clinical variables and pick RNA genes on the fold's training patients only.

    Args:
        patients: one row per patient indexed by ``case_id`` with ``label``, ``age`` and optionally
            ``is_female``, ``stage``, ``grade`` (see :func:`monai_ext.engines.tcga_benchmark.patient_table`).
        genes: gene table indexed by ``case_id``.
        fold: the fold (``val`` is drawn from ``train``, stratified by label, when empty).
        settings: benchmark settings.
        seed: seed of the inner split.

    Raises:
        LeakageError: a patient in two parts.
    """
    known = patients.index.intersection(genes.index)
    unknown = sorted(set(fold.train).union(fold.test).difference(known))
    if unknown:
        logger.warning("%d fold case id(s) without genes or label are skipped, e.g. %s", len(unknown), unknown[:5])
    fold = Fold(*(np.asarray(sorted(set(ids) & set(known)), dtype=str) for ids in (fold.train, fold.val, fold.test)))
    fold = inner_validation(fold, patients["label"], settings.val_fraction, seed)
    check_no_leakage([fold])
    parts = fold.parts()
    training = list(np.concatenate([fold.train, fold.val]))
    columns = gene_columns(genes.columns, settings.gene_suffixes)
    scaler = GeneScaler().fit(genes[columns], training)
    scaled = pd.DataFrame(scaler.transform(genes[columns])[0], index=genes.index, columns=scaler.genes)
    rna = gene_columns(scaler.genes, ("_rnaseq",))
    # variance of the raw training values: after z-scoring every gene has variance 1 and the ranking is noise
    raw_variance = genes.loc[training, rna].astype(float).var()
    top_rna = raw_variance.sort_values(ascending=False, kind="stable").index[: settings.logistic_genes]
    age = patients["age"].astype(float)
    age = ((age - age.loc[training].mean()) / (age.loc[training].std(ddof=0) or 1.0)).fillna(0.0)
    clinical_columns, categorical, ordinal = clinical_spec(patients)
    encoder = ClinicalEncoder().fit(
        patients, clinical_columns, categorical=categorical, ordinal=ordinal, case_ids=training
    )
    clinical = pd.DataFrame(encoder.transform(patients)[0], index=patients.index)
    return SubtypingFold(
        parts=parts,
        labels={part: patients.loc[ids, "label"].to_numpy(int) for part, ids in parts.items()},
        omics={part: scaled.loc[ids].to_numpy(np.float32) for part, ids in parts.items()},
        clinical={part: clinical.loc[ids].to_numpy(np.float32) for part, ids in parts.items()},
        rna_age={
            part: np.column_stack([scaled.loc[ids, top_rna].to_numpy(), age.loc[ids].to_numpy()])
            for part, ids in parts.items()
        },
    )


def logistic_baseline(fold: SubtypingFold, settings: SubtypingSettings, *, features: str = "rna_age") -> np.ndarray:
    """L2 logistic regression (scikit-learn, ``class_weight="balanced"``) fitted on the whole training fold.

    Args:
        fold: the fold inputs.
        settings: benchmark settings (``logistic_c``).
        features: ``"rna_age"`` (selected RNA genes + age), ``"clinical"`` (the clinical vector) or
            ``"genes_clinical"`` (every gene + the clinical vector: the inputs of the SNN + clinical network).

    Returns:
        ``[N_test]`` positive-class probabilities.
    """
    if features not in ("rna_age", "clinical", "genes_clinical"):
        raise ValueError(f"features must be 'rna_age', 'clinical' or 'genes_clinical', got {features!r}")
    if features == "genes_clinical":
        values = {part: np.concatenate([fold.omics[part], fold.clinical[part]], axis=1) for part in fold.parts}
    else:
        values = getattr(fold, features)
    model = LogisticRegression(C=settings.logistic_c, class_weight="balanced", max_iter=5000)
    model.fit(fold.training(values), fold.training(fold.labels))
    return model.predict_proba(values["test"])[:, 1]


def _batch(fold: SubtypingFold, part: str, rows: np.ndarray | slice, clinical: bool) -> dict[str, torch.Tensor]:
    batch = {"omics": torch.from_numpy(fold.omics[part][rows])}
    if clinical:
        batch["clinical"] = torch.from_numpy(fold.clinical[part][rows])
    return batch


@torch.inference_mode()
def _positive_probability(model: MultimodalModel, fold: SubtypingFold, part: str, clinical: bool) -> np.ndarray:
    return model.eval()(_batch(fold, part, slice(None), clinical))["probs"][:, 1].double().numpy()


def train_classifier(
    fold: SubtypingFold, spec: ClassifierSpec, settings: SubtypingSettings, seed: int
) -> tuple[np.ndarray, dict[str, float]]:
    """Train a binary :class:`MultimodalModel` (SNN genomics encoder, optional clinical vector) with
    class-weighted cross-entropy on the inner training part, early stopping on the inner validation AUC.

    Args:
        fold: the fold inputs.
        spec: which modalities.
        settings: benchmark settings.
        seed: torch seed.

    Returns:
        ``[N_test]`` positive-class probabilities and ``{"best_epoch", "val_auc"}``.
    """
    torch.manual_seed(seed)
    model = MultimodalModel(
        modalities=("omics", "clinical") if spec.clinical else ("omics",),
        dim=settings.dim,
        omics_encoder="snn",
        omics_dim=fold.omics["train"].shape[1],
        clinical_dim=fold.clinical["train"].shape[1] if spec.clinical else None,
        task="classification",
        n_classes=2,
        dropout=settings.dropout,
        require_wsi=False,
    )
    labels = torch.from_numpy(fold.labels["train"]).long()
    counts = torch.bincount(labels, minlength=2).clamp(min=1).double()
    loss_fn = torch.nn.CrossEntropyLoss(weight=(counts.sum() / (2 * counts)).float())
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    val_labels = fold.labels["val"]
    best, best_epoch, best_state = -np.inf, 0, copy.deepcopy(model.state_dict())
    for epoch in range(1, settings.epochs + 1):
        model.train()
        for rows in torch.randperm(len(labels), generator=generator).split(settings.batch_size):
            if len(rows) < 2:
                continue
            loss = loss_fn(model(_batch(fold, "train", rows.numpy(), spec.clinical))["logits"], labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        score = roc_auc(val_labels, _positive_probability(model, fold, "val", spec.clinical))
        if score > best + 1e-4:
            best, best_epoch, best_state = score, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= settings.patience:
            break
    model.load_state_dict(best_state)
    return _positive_probability(model, fold, "test", spec.clinical), {"best_epoch": float(best_epoch), "val_auc": best}


def classification_metrics(labels: np.ndarray, probability: np.ndarray) -> dict[str, float]:
    """ROC AUC of the positive-class probability and balanced accuracy at threshold 0.5.

    Args:
        labels: ``[N]`` class indices (0 / 1).
        probability: ``[N]`` positive-class probabilities.

    Returns:
        ``{"auc", "balanced_accuracy"}``.
    """
    return {
        "auc": roc_auc(labels, probability),
        "balanced_accuracy": balanced_accuracy(labels, (np.asarray(probability) >= 0.5).astype(int)),
    }


def summarize_subtyping(results: pd.DataFrame) -> pd.DataFrame:
    """Per cohort and model, mean and std (ddof 1) over folds of ``auc`` and ``balanced_accuracy``.

    Returns:
        DataFrame indexed by (cohort, model) with columns ``<metric>_mean`` and ``<metric>_std``.
    """
    metrics = ["auc", "balanced_accuracy"]
    grouped = results.groupby(["cohort", "model"], sort=False)[metrics]
    summary = pd.concat([grouped.mean().add_suffix("_mean"), grouped.std(ddof=1).add_suffix("_std")], axis=1)
    return summary[[f"{m}_{s}" for m in metrics for s in ("mean", "std")]]


SUBTYPING_BASELINES: dict[str, Callable[[SubtypingFold, SubtypingSettings], np.ndarray]] = {
    "logreg_rna_age": lambda fold, settings: logistic_baseline(fold, settings, features="rna_age"),
    "logreg_clinical": lambda fold, settings: logistic_baseline(fold, settings, features="clinical"),
    "logreg_genes_clinical": lambda fold, settings: logistic_baseline(fold, settings, features="genes_clinical"),
}


def run_subtyping_benchmark(
    patients: pd.DataFrame,
    genes: pd.DataFrame,
    folds: Sequence[Fold],
    *,
    models: Sequence[ClassifierSpec] | None = None,
    baselines: dict[str, Callable[[SubtypingFold, SubtypingSettings], np.ndarray]] | None = None,
    settings: SubtypingSettings | None = None,
    cohort: str = "cohort",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run baselines and networks on the same folds.

    Args:
        patients: one row per patient with ``label`` and clinical columns, indexed by ``case_id``.
        genes: gene table indexed by ``case_id``.
        folds: held-out ``test`` parts (e.g. :func:`stratified_patient_folds`).
        models: networks (default :func:`default_subtyping_models`).
        baselines: name -> ``f(fold, settings) -> [N_test] probabilities`` (default :data:`SUBTYPING_BASELINES`).
        settings: hyperparameters (default :class:`SubtypingSettings`).
        cohort: name written in the ``cohort`` column.

    Returns:
        ``results``: one row per (model, fold): ``cohort, model, fold, n_test, n_positive, auc,
        balanced_accuracy`` (plus ``best_epoch``, ``val_auc`` for networks); ``predictions``: out-of-fold rows
        ``cohort, model, fold, case_id, label, probability``.
    """
    settings = settings or SubtypingSettings()
    models = default_subtyping_models() if models is None else list(models)
    baselines = SUBTYPING_BASELINES if baselines is None else baselines
    rows, predictions = [], []
    for k, fold in enumerate(folds):
        inputs = build_subtyping_fold(patients, genes, fold, settings, seed=settings.seed + k)
        test_labels = inputs.labels["test"]
        runs = [*baselines.items(), *((spec.name, spec) for spec in models)]
        for name, run in runs:
            info: dict[str, float] = {}
            if isinstance(run, ClassifierSpec):
                probability, info = train_classifier(inputs, run, settings, settings.seed + k)
            else:
                probability = run(inputs, settings)
            metrics = classification_metrics(test_labels, probability)
            rows.append(
                {
                    "cohort": cohort,
                    "model": name,
                    "fold": k,
                    "n_test": len(test_labels),
                    "n_positive": int(test_labels.sum()),
                    **metrics,
                    **info,
                }
            )
            logger.info("%s fold %d %s: %s", cohort, k, name, {key: round(v, 4) for key, v in metrics.items()})
            predictions.append(
                pd.DataFrame(
                    {
                        "cohort": cohort,
                        "model": name,
                        "fold": k,
                        "case_id": inputs.parts["test"],
                        "label": test_labels,
                        "probability": probability,
                    }
                )
            )
    return pd.DataFrame(rows), pd.concat(predictions, ignore_index=True)

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

"""Cross-validation: per-fold fitting on training patients only, results and predictions for every test patient."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from monai_ext.data.cohort import Cohort
from monai_ext.data.splits import patient_kfold
from monai_ext.data.survival_bins import make_time_bins
from monai_ext.engines.crossval import CrossValSettings, inner_validation, run_crossval
from monai_ext.networks.multimodal import MultimodalModel
from monai_ext.wsi.store import write_features

N_PATIENTS, DIM = 16, 8


@pytest.fixture
def cohort_dir(tmp_path):
    rng = np.random.default_rng(0)
    rows, genes = [], {}
    for p in range(N_PATIENTS):
        label = p % 2
        for s in range(1 + p % 2):
            features = rng.normal(size=(int(rng.integers(5, 15)), DIM)).astype(np.float32)
            features[:, 0] += 2.0 * label
            slide = f"p{p}_s{s}"
            write_features(
                tmp_path / f"{slide}.h5",
                features,
                np.zeros((len(features), 2)),
                slide_id=slide,
                encoder="e@1",
                patch_size=256,
                mpp=0.5,
                level=0,
            )
            rows.append(
                {
                    "case_id": f"p{p}",
                    "slide_id": slide,
                    "features_path": f"{slide}.h5",
                    "label": label,
                    "survival_months": float(5 + 20 * (1 - label) + p),
                    "event": int(p % 3 != 0),
                    "age": 50.0 + p,
                }
            )
        genes[f"p{p}"] = rng.normal(size=3) + label
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    omics = pd.DataFrame.from_dict(genes, orient="index", columns=["A_rnaseq", "B_rnaseq", "C_rnaseq"])
    return tmp_path, omics


def _builder(modalities, task):
    def build(wsi_dim, omics_dim, clinical_dim, text_dim, n_outputs):
        return MultimodalModel(
            modalities=modalities,
            wsi_dim=wsi_dim,
            omics_dim=omics_dim or None,
            clinical_dim=clinical_dim or None,
            dim=16,
            aggregator="abmil",
            fusion="concat",
            task=task,
            n_classes=max(n_outputs, 2),
            n_bins=n_outputs,
        )

    return build


def test_classification_crossval_writes_results_for_every_patient(cohort_dir):
    root, _ = cohort_dir
    cohort = Cohort.from_csv(
        root / "manifest.csv",
        task="classification",
        clinical_columns=("age",),
        allow_columns=("survival_months", "event"),
    )
    folds = patient_kfold(cohort, 2, stratify_by="label", seed=0)
    settings = CrossValSettings(
        task="classification", modalities=("wsi", "clinical"), epochs=3, patience=2, lr=1e-2, clinical_columns=("age",)
    )
    clinical = cohort.patient_table()[["age"]]
    out = root / "cv"
    results = run_crossval(
        cohort, folds, _builder(("wsi", "clinical"), "classification"), settings, out, clinical=clinical
    )
    assert list(results["fold"]) == [0, 1]
    assert {"auc", "balanced_accuracy", "macro_f1", "val_auc"} <= set(results.columns)
    tested = pd.concat([pd.read_csv(out / f"fold_{k}" / "predictions.csv") for k in range(2)])
    assert sorted(tested["case_id"]) == sorted(cohort.patients)
    encoder = json.loads((out / "fold_0" / "clinical_encoder.json").read_text())
    inner = inner_validation(folds[0], cohort.labels()["label"], settings.val_fraction, settings.seed)
    assert encoder["n_train"] == len(inner.train) < N_PATIENTS // 2
    assert encoder["numeric"]["age"]["mean"] == pytest.approx(clinical.loc[inner.train, "age"].mean())
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["auc"]) == {"mean", "std"}


def test_survival_bins_come_from_the_training_fold(cohort_dir):
    root, omics = cohort_dir
    cohort = Cohort.from_csv(root / "manifest.csv", task="survival", allow_columns=("label", "age"))
    folds = patient_kfold(cohort, 2, stratify_by="survival", seed=1, val_fraction=0.25)
    settings = CrossValSettings(task="survival", modalities=("wsi", "omics"), epochs=2, patience=2, n_bins=2)
    out = root / "cv"
    results = run_crossval(cohort, folds, _builder(("wsi", "omics"), "survival"), settings, out, omics=omics)
    assert "c_index" in results.columns and results["c_index"].between(0, 1).all()
    for k, fold in enumerate(folds):
        train = cohort.labels(fold.train)
        expected = make_time_bins(train["survival_months"].to_numpy(), train["event"].to_numpy(), 2)
        saved = json.loads((out / f"fold_{k}" / "time_bins.json").read_text())
        np.testing.assert_allclose(saved, expected)
        scaler = json.loads((out / f"fold_{k}" / "gene_scaler.json").read_text())
        assert scaler["n_train"] == len(fold.train)

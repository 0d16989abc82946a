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

"""Bundle data preparation: demo on an empty folder, one leak-free split, preprocessing fitted on training patients
only and read back unchanged for evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monai_ext.data.survival_bins import make_time_bins
from monai_ext.engines.bundle_data import BundleData, ensure_cohort, load_spec, scale_text, time_bin_edges
from tests.engines.conftest import RANDOM_FEATURE_DIM

EXTRA = ("label", "slide_stage", "patient_stage", "slide_path")
FEATURE_DIM = RANDOM_FEATURE_DIM  # the width of the shared cohort_dir fixture


def _data(root: Path, models: Path, **kwargs: object) -> BundleData:
    settings = {
        "task": "survival",
        "modalities": ("wsi", "omics", "clinical"),
        "clinical_columns": ("age", "sex"),
        "categorical": ("sex",),
        "allow_columns": EXTRA,
        "n_folds": 4,
        "n_bins": 2,
        **kwargs,
    }
    return BundleData(root, models, **settings)


def test_training_preprocessing_sees_training_patients_only(cohort_dir: Path, tmp_path: Path) -> None:
    data = _data(cohort_dir, tmp_path, pathways="hallmarks")
    train = list(data.split.train)
    assert not set(train) & set(data.split.test) and not set(train) & set(data.split.val)
    raw = pd.read_csv(cohort_dir / "omics.csv", index_col="case_id")
    genes = json.loads((tmp_path / "gene_scaler.json").read_text())["genes"]
    fitted = raw.loc[[c for c in train if c in raw.index], genes]
    scaled = data.omics.loc[fitted.index].to_numpy()
    np.testing.assert_allclose(scaled.mean(0), 0.0, atol=1e-5)  # z-scored with training statistics
    np.testing.assert_allclose(scaled.std(0), 1.0, atol=1e-4)
    labels = data.cohort.labels(train)
    expected_edges = make_time_bins(labels["survival_months"].to_numpy(), labels["event"].to_numpy(), 2)
    np.testing.assert_array_equal(time_bin_edges(load_spec(tmp_path)), expected_edges)
    spec = load_spec(tmp_path)
    assert spec["input_dims"] == {"wsi": FEATURE_DIM, "omics": len(genes), "clinical": 5}
    assert all(max(index) < len(genes) for index in spec["pathway_gene_index"])
    sample = data.train[0]
    assert sample["wsi"].shape[1] == FEATURE_DIM and sample["omics"].shape == (len(genes),)


def test_evaluation_reads_back_the_same_preprocessing(cohort_dir: Path, tmp_path: Path) -> None:
    trained = _data(cohort_dir, tmp_path)
    evaluated = _data(cohort_dir, tmp_path, mode="evaluate", n_folds=5, n_bins=7, seed=3)  # ignored: read back
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(evaluated.split, part), getattr(trained.split, part))
    case = trained.split.test[0]
    pd.testing.assert_series_equal(evaluated.omics.loc[case], trained.omics.loc[case])
    pd.testing.assert_frame_equal(evaluated.clinical, trained.clinical)
    first, again = trained.test[0], evaluated.test[0]
    assert first["case_id"] == again["case_id"] and int(first["bin"]) == int(again["bin"])


def test_evaluation_refuses_other_settings(cohort_dir: Path, tmp_path: Path) -> None:
    _data(cohort_dir, tmp_path)
    with pytest.raises(ValueError, match="modalities"):
        _data(cohort_dir, tmp_path, mode="evaluate", modalities=("wsi",))
    with pytest.raises(FileNotFoundError, match="training"):
        _data(cohort_dir, tmp_path / "untrained", mode="evaluate")


def test_classification_labels(cohort_dir: Path, tmp_path: Path) -> None:
    data = _data(
        cohort_dir,
        tmp_path,
        task="classification",
        modalities=("wsi",),
        allow_columns=(*EXTRA[1:], "event", "survival_months"),
    )
    assert data.spec["label_values"] == [0, 1] and data.spec["n_outputs"] == 2
    labels = data.cohort.labels(data.split.test)["label"]
    assert [int(data.test[i]["label"]) for i in range(len(data.test))] == labels.tolist()


def test_patients_with_modalities(cohort_dir: Path, tmp_path: Path) -> None:
    data = _data(cohort_dir, tmp_path, patients_with=("omics", "text"), n_folds=3)
    omics = pd.read_csv(cohort_dir / "omics.csv")["case_id"]
    notes = pd.read_csv(cohort_dir / "manifest.csv").dropna(subset=["text"])["case_id"]
    expected = set(omics) & set(notes)
    assert 0 < len(expected) < 20  # the demo leaves some patients without genomics or notes
    assert set().union(*(set(ids) for ids in data.split.parts().values())) == expected
    assert load_spec(tmp_path)["patients_with"] == ["omics", "text"]


def test_ensure_cohort_refuses_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a cohort")
    with pytest.raises(FileNotFoundError, match=r"manifest\.csv"):
        ensure_cohort(tmp_path, {"n_patients": 2})
    with pytest.raises(FileNotFoundError, match="demo"):
        ensure_cohort(tmp_path / "empty", None)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"task": "regression"}, "task"),
        ({"mode": "predict"}, "mode"),
        ({"modalities": ("wsi", "text")}, "text"),
        ({"text": "prompts", "modalities": ("wsi", "text")}, "class_prompts"),
        ({"fold": 4}, "fold"),
        ({"patients_with": ("genomics",)}, "patients_with"),
    ],
)
def test_ill_arg(cohort_dir: Path, tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _data(cohort_dir, tmp_path, **kwargs)


def test_note_embeddings_scaled_with_training_statistics(cohort_dir: Path, tmp_path: Path) -> None:
    from monai_ext.data.text import TextEmbedder

    data = _data(cohort_dir, tmp_path, modalities=("wsi", "text"), text="notes")
    spec = load_spec(tmp_path)
    mean, std = np.asarray(spec["text_scaling"]["mean"]), np.asarray(spec["text_scaling"]["std"])
    training = np.concatenate([data.text[case] for case in data.split.train if len(data.text[case])])
    np.testing.assert_allclose(training.mean(0), 0.0, atol=1e-4)  # the training notes are standardised
    spread = training.std(0)
    assert np.all(np.isclose(spread, 1.0, atol=1e-3) | (spread < 1e-5))  # (dimensions constant over the notes: kept)
    manifest = pd.read_csv(cohort_dir / "manifest.csv")
    case = next(c for c in data.split.test if len(data.text[c]))
    notes = [note for note in manifest.loc[manifest["case_id"] == case, "text"] if isinstance(note, str)]
    raw = TextEmbedder().embed(notes)
    np.testing.assert_allclose(data.text[case], (raw - mean) / std, atol=1e-4)  # (batched embedding: float noise)
    np.testing.assert_allclose(scale_text(raw, spec), data.text[case], atol=1e-4)  # what inference applies
    evaluated = _data(cohort_dir, tmp_path, modalities=("wsi", "text"), text="notes", mode="evaluate")
    np.testing.assert_array_equal(evaluated.text[case], data.text[case])
    assert scale_text(raw, {}) is raw  # specs without scaling (prompts, older models) leave embeddings alone

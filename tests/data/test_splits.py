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

"""Patient-level folds: partition, stratification, inner validation, published splits, JSON.

Leakage detection (a patient in two parts of a fold) is tested in ``tests/reliability/test_bad_manifests.py``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from monai_ext.data.cohort import Cohort
from monai_ext.data.splits import (
    Fold,
    check_no_leakage,
    load_folds,
    patient_kfold,
    read_published_splits,
    save_folds,
)
from monai_ext.data.tcga import read_tcga_table


def _slides(n_patients: int = 60, seed: int = 0) -> pd.DataFrame:
    """Slide table: 1-3 slides per patient, a 3-class label and survival shared by a patient's slides."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label, time, event = rng.integers(0, 3), rng.uniform(1, 100), int(rng.random() < 0.4)
        rows += [(f"P{p:03d}", f"P{p:03d}-s{s}", label, time, event) for s in range(rng.integers(1, 4))]
    return pd.DataFrame(rows, columns=["case_id", "slide_id", "label", "survival_months", "event"])


def _assert_partition(folds: list[Fold], case_ids: set[str]) -> None:
    """Every patient is in the test part of exactly one fold; parts of a fold are disjoint and cover everyone."""
    tests = [case for fold in folds for case in fold.test]
    assert sorted(tests) == sorted(case_ids)
    for fold in folds:
        train, val, test = set(fold.train), set(fold.val), set(fold.test)
        assert not (train & val) and not (train & test) and not (val & test)
        assert train | val | test == case_ids


def _per_fold_counts(folds: list[Fold], patients: pd.DataFrame, mask: pd.Series) -> list[int]:
    chosen = set(patients.index[mask])
    return [len(chosen & set(fold.test)) for fold in folds]


@pytest.mark.parametrize("n_folds", [2, 5])
@pytest.mark.parametrize("stratify_by", [None, "label", "survival"])
def test_patient_partition(n_folds, stratify_by):
    slides = _slides()
    folds = patient_kfold(slides, n_folds, stratify_by=stratify_by, seed=3)
    assert len(folds) == n_folds
    _assert_partition(folds, set(slides["case_id"]))
    check_no_leakage(folds, slides)
    assert all(len(fold.val) == 0 for fold in folds)


def test_cohort_input(tmp_path):
    slides = _slides(30).assign(features_path=lambda t: "features/" + t["slide_id"] + ".h5")
    cohort = Cohort(slides, task="survival", data_root=tmp_path, allow_columns=["label"], require_features=False)
    from_cohort = patient_kfold(cohort, 3, stratify_by="survival", seed=4)
    from_table = patient_kfold(slides, 3, stratify_by="survival", seed=4)
    for a, b in zip(from_cohort, from_table, strict=True):
        np.testing.assert_array_equal(a.test, b.test)
    _assert_partition(from_cohort, set(cohort.patients))


def test_label_stratification():
    slides = _slides(90)
    patients = slides.drop_duplicates("case_id").set_index("case_id")
    folds = patient_kfold(slides, 5, stratify_by="label")
    for label in range(3):
        total = int((patients["label"] == label).sum())
        counts = _per_fold_counts(folds, patients, patients["label"] == label)
        assert min(counts) >= total // 5 and max(counts) <= -(-total // 5), (label, counts)


def test_survival_stratification():
    slides = _slides(100, seed=1)
    patients = slides.drop_duplicates("case_id").set_index("case_id")
    folds = patient_kfold(slides, 5, stratify_by="survival", n_time_bins=2)
    events = int(patients["event"].sum())
    counts = _per_fold_counts(folds, patients, patients["event"] == 1)
    assert min(counts) >= events // 5 and max(counts) <= -(-events // 5), counts
    long_events = (patients["event"] == 1) & (patients["survival_months"] > patients["survival_months"].median())
    counts = _per_fold_counts(folds, patients, long_events)
    assert max(counts) - min(counts) <= 1, counts


@pytest.mark.parametrize("stratify_by", [None, "label"])
def test_inner_validation_from_training_part(stratify_by):
    slides = _slides(80)
    plain = patient_kfold(slides, 4, stratify_by=stratify_by, seed=5)
    inner = patient_kfold(slides, 4, stratify_by=stratify_by, seed=5, val_fraction=0.25)
    _assert_partition(inner, set(slides["case_id"]))
    for without, fold in zip(plain, inner, strict=True):
        np.testing.assert_array_equal(fold.test, without.test)  # test parts do not depend on val_fraction
        assert set(fold.val) <= set(without.train)
        assert len(fold.val) == round(0.25 * len(without.train))


def test_seed_and_determinism():
    slides = _slides()
    first, again = patient_kfold(slides, 5, seed=1), patient_kfold(slides, 5, seed=1)
    other = patient_kfold(slides, 5, seed=2)
    assert all(np.array_equal(a.test, b.test) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a.test, b.test) for a, b in zip(first, other, strict=True))


def test_ill_arg():
    slides = _slides(10)
    with pytest.raises(ValueError, match="n_folds must be >= 2"):
        patient_kfold(slides, 1)
    with pytest.raises(ValueError, match="val_fraction"):
        patient_kfold(slides, 2, val_fraction=1.0)
    with pytest.raises(ValueError, match="cannot be split into 20 folds"):
        patient_kfold(slides, 20)
    with pytest.raises(ValueError, match=r"needs column\(s\) \['grade'\]"):
        patient_kfold(slides, 2, stratify_by="grade")
    with pytest.raises(ValueError, match="need a case_id column"):
        patient_kfold(slides.drop(columns=["case_id"]), 2)
    disagreeing = slides.copy()
    first_two = disagreeing.index[disagreeing["case_id"].duplicated(keep=False)][:2]
    disagreeing.loc[first_two[1], "label"] = disagreeing.loc[first_two[0], "label"] + 1
    with pytest.raises(
        ValueError, match=f"label differs between slides of patient.*{disagreeing.loc[first_two[0], 'case_id']}"
    ):
        patient_kfold(disagreeing, 2, stratify_by="label")


def test_json_round_trip(tmp_path):
    folds = patient_kfold(_slides(), 3, stratify_by="label", val_fraction=0.2)
    loaded = load_folds(save_folds(folds, tmp_path / "folds.json"))
    for fold, again in zip(folds, loaded, strict=True):
        for name in ("train", "val", "test"):
            np.testing.assert_array_equal(getattr(fold, name), getattr(again, name))
    (tmp_path / "other.json").write_text('{"folds": []}')
    with pytest.raises(ValueError, match=r"not a monai_ext\.folds"):
        load_folds(tmp_path / "other.json")


@pytest.mark.parametrize("val_as", ["test", "val"])
def test_read_published_splits_layout(tmp_path, val_as):
    for k in range(2):
        pd.DataFrame({"train": [f"T{k}", "X", "Y"], "val": [f"V{k}", None, None]}).to_csv(tmp_path / f"splits_{k}.csv")
    folds = read_published_splits(tmp_path, val_as=val_as)
    assert [sorted(fold.train) for fold in folds] == [["T0", "X", "Y"], ["T1", "X", "Y"]]
    held_out = [list(getattr(fold, val_as)) for fold in folds]
    assert held_out == [["V0"], ["V1"]]
    (tmp_path / "splits_3.csv").write_text("train,val\nA,B\n")
    with pytest.raises(ValueError, match=r"fold numbers \[0, 1, 3\]"):
        read_published_splits(tmp_path)
    with pytest.raises(FileNotFoundError, match="no splits"):
        read_published_splits(tmp_path / "empty")


@pytest.fixture(scope="module")
def tcga_slides(shared_data):
    """Loader of a TCGA cohort's slide table, read once per cohort."""
    cache = {}

    def load(cohort: str) -> pd.DataFrame:
        if cohort not in cache:
            cache[cohort] = read_tcga_table(shared_data / "tcga" / f"tcga_{cohort}_all_clean.csv.zip").slides
        return cache[cohort]

    return load


@pytest.mark.shared_data
@pytest.mark.parametrize("cohort", ["blca", "brca", "luad"])
def test_published_splits_on_tcga(shared_data, tcga_slides, cohort):
    folder = shared_data / "tcga" / "splits" / f"tcga_{cohort}"
    folds = read_published_splits(folder)
    slides = tcga_slides(cohort)
    check_no_leakage(folds, slides)
    assert len(folds) == 5
    for k, fold in enumerate(folds):
        raw = pd.read_csv(folder / f"splits_{k}.csv")
        assert len(fold.train) == raw["train"].notna().sum() and len(fold.test) == raw["val"].notna().sum()
    _assert_partition(folds, set(slides["case_id"]))

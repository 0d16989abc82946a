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

"""Bad manifests and leaking folds: every problem reported in one ``CohortError`` naming the manifest, rows and
ids; paths outside the data root refused; a patient in two parts of a fold is a ``LeakageError``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monai_ext.data.cohort import CohortError, resolve_in_root
from monai_ext.data.splits import Fold, LeakageError, check_no_leakage, patient_kfold
from monai_ext.data.tcga import read_tcga_table
from tests.data.test_cohort import _features, _load, _table
from tests.data.test_splits import _assert_partition


def _set(column, row, value):
    def edit(table: pd.DataFrame, root: Path) -> pd.DataFrame:
        table.loc[row, column] = value
        return table

    return edit


def _add_column(column, value):
    def edit(table: pd.DataFrame, root: Path) -> pd.DataFrame:
        table[column] = value
        return table

    return edit


def _drop_column(column):
    def edit(table: pd.DataFrame, root: Path) -> pd.DataFrame:
        return table.drop(columns=[column])

    return edit


def _other_encoder(table: pd.DataFrame, root: Path) -> pd.DataFrame:
    table.loc[4, "features_path"] = _features(root, "s5-other", encoder="resnet50@ffff")
    return table


def _missing_file(table: pd.DataFrame, root: Path) -> pd.DataFrame:
    os.remove(root / table.loc[2, "features_path"])
    return table


def _append_slide(case_id, slide_id):
    def edit(table: pd.DataFrame, root: Path) -> pd.DataFrame:
        row = table.iloc[[0]].assign(case_id=case_id, slide_id=slide_id)
        return pd.concat([table, row], ignore_index=True)

    return edit


ERROR_CASES = [
    # (name, edit, fragments the single CohortError must contain)
    ("duplicate slide", _append_slide("P2", "s1"), ["duplicate slide_id s1", "rows 1, 7"]),
    ("slide under two patients", _append_slide("P3", "s1"), ["slide s1 listed under two patients ['P2', 'P3']"]),
    ("slide without case_id", _set("case_id", 3, ""), ["slide without case_id", "row 4 (slide_id s4)"]),
    ("missing slide_id", _set("slide_id", 0, np.nan), ["missing slide_id", "row 1"]),
    ("unknown column", _add_column("stain", "HE"), ["unknown column(s) ['stain']"]),
    ("censorship column", _add_column("censorship", 0), ["unknown column(s) ['censorship']", "1 - event"]),
    ("time <= 0", _set("survival_months", 1, 0.0), ["survival_months missing, not a number or <= 0", "slide_id s2"]),
    ("time missing", _set("survival_months", 0, np.nan), ["survival_months missing", "row 1 (slide_id s1"]),
    ("event out of range", _set("event", 5, 2), ["event not in {0, 1}", "row 6 (slide_id s6, case_id P3)"]),
    ("labels disagree", _set("event", 2, 1), ["event differs between slides of the same patient", "P1"]),
    ("clinical disagree", _set("age", 4, 71), ["age differs between slides", "P3"]),
    ("missing feature file", _missing_file, ["file not found", "slide_id s3", "s3.h5"]),
    ("other encoder", _other_encoder, ["another encoder", "slide_id s5", "resnet50@ffff"]),
    ("missing label column", _drop_column("event"), ["missing label column(s) ['event']"]),
    ("missing case_id column", _drop_column("case_id"), ["missing required column 'case_id'"]),
    ("no path column", _drop_column("features_path"), ["no path column"]),
    ("path escapes root", _set("features_path", 0, "../elsewhere/s1.h5"), ["outside the data root", "s1.h5"]),
    ("bad mpp", _add_column("mpp", [0.5, 0.5, -1.0, 0.5, 0.5, 0.5]), ["mpp not a positive number", "row 3"]),
]


@pytest.mark.parametrize("name, edit, fragments", ERROR_CASES, ids=[case[0] for case in ERROR_CASES])
def test_each_problem_is_reported(tmp_path, name, edit, fragments):
    table = edit(_table(tmp_path), tmp_path)
    with pytest.raises(CohortError) as info:
        _load(tmp_path, table)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{name}: {fragment!r} not in\n{message}"
    assert str(tmp_path / "manifest.csv") in message


def test_all_problems_reported_together(tmp_path):
    chosen = [case for case in ERROR_CASES if case[0] in INDEPENDENT]
    table = _table(tmp_path)
    for _, edit, _ in chosen:
        table = edit(table, tmp_path)
    with pytest.raises(CohortError) as info:
        _load(tmp_path, table)
    assert isinstance(info.value, ValueError)
    assert len(info.value.problems) == len(chosen), info.value.problems
    for name, _, fragments in chosen:
        assert fragments[0] in "\n".join(info.value.problems), name


INDEPENDENT = ("duplicate slide", "unknown column", "missing feature file", "other encoder", "path escapes root")


@pytest.mark.parametrize(
    "task, columns, label_values, bad_row, fragment",
    [
        ("classification", {"label": [0, 1, 1, 2, 2, 2]}, [0, 1, 2], None, None),
        ("classification", {"label": [0, 1, 1, 7, 7, 7]}, [0, 1, 2], 3, "label not in label_values [0, 1, 2]"),
        ("classification", {"label": ["IDC", "ILC", "ILC", "IDC", "IDC", "IDC"]}, ["IDC", "ILC"], None, None),
        ("classification", {"label": ["IDC", "ILC", "ILC", "x", "x", "x"]}, ["IDC", "ILC"], 3, "label not in"),
        ("staging", {"patient_stage": ["pN0", "pN1", "pN1", "pN2", "pN2", "pN2"]}, ["pN0", "pN1", "pN2"], None, None),
        ("staging", {"patient_stage": ["pN0", "pN1", "pN1", "pN7", "pN7", "pN7"]}, ["pN0", "pN1"], 3, "patient_stage"),
        ("staging", {"slide_stage": ["macro", "itc", "micro", "x", "micro", "negative"]}, ["itc", "micro"], 0, "slide"),
    ],
)
def test_label_values(tmp_path, task, columns, label_values, bad_row, fragment):
    table = _table(tmp_path).drop(columns=["survival_months", "event"]).assign(**columns)
    if bad_row is None:
        cohort = _load(tmp_path, table, task=task, label_values=label_values)
        label = next(iter(columns))
        if label != "slide_stage":
            expected = table.drop_duplicates("case_id").set_index("case_id")[label].sort_index()
            assert cohort.labels()[label].tolist() == expected.tolist()
        return
    with pytest.raises(CohortError) as info:
        _load(tmp_path, table, task=task, label_values=label_values)
    assert fragment in str(info.value)
    assert f"row {bad_row + 1} (slide_id {table.loc[bad_row, 'slide_id']}" in str(info.value)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_path_escape_refused(tmp_path, kind):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    table = _table(root)
    escaped = _features(outside, "s1")
    if kind == "dotdot":
        table.loc[0, "features_path"] = f"../outside/{escaped}"
    elif kind == "absolute":
        table.loc[0, "features_path"] = str(outside / escaped)
    else:
        (root / "link.h5").symlink_to(outside / escaped)
        table.loc[0, "features_path"] = "link.h5"
    with pytest.raises(CohortError, match="outside the data root") as err:
        _load(root, table)
    assert str(root / "manifest.csv") in str(err.value) and repr(table.loc[0, "features_path"]) in str(err.value)
    with pytest.raises(ValueError, match="outside the data root"):
        resolve_in_root(root, table.loc[0, "features_path"])


@pytest.mark.parametrize(
    "fold, fragment",
    [
        (Fold(np.array(["A", "B"]), np.array([]), np.array(["B", "C"])), "case_id(s) ['B'] in both train and test"),
        (Fold(np.array(["A"]), np.array(["C"]), np.array(["C", "D"])), "case_id(s) ['C'] in both val and test"),
        (Fold(np.array(["A", "B"]), np.array(["B"]), np.array(["D"])), "case_id(s) ['B'] in both train and val"),
    ],
)
def test_leakage_detected(fold, fragment):
    clean = Fold(np.array(["A", "B"]), np.array(["C"]), np.array(["D"]))
    check_no_leakage([clean])
    with pytest.raises(LeakageError) as info:
        check_no_leakage([clean, fold])
    assert f"fold 1: {fragment}" in str(info.value)


def test_leakage_through_slides():
    slides = pd.DataFrame({"case_id": ["A", "B", "C", "D"], "slide_id": ["a1", "b1", "a1", "d1"]})  # a1 in A and C
    fold = Fold(np.array(["A", "B"]), np.array([]), np.array(["C", "D"]))
    with pytest.raises(LeakageError) as info:
        check_no_leakage([fold], slides)
    message = str(info.value)
    assert "slide a1 listed under several patients ['A', 'C']" in message
    assert "fold 0: slide a1 is in ['test', 'train'] through patients ['A', 'C']" in message
    with pytest.raises(LeakageError, match=r"fold 0: 1 case_id\(s\) not in the slide table, first \['E'\]"):
        check_no_leakage([Fold(np.array(["A", "E"]), np.array([]), np.array(["B"]))], slides.iloc[:2])


@pytest.mark.shared_data
@pytest.mark.parametrize("stratify_by, val_fraction", [("survival", 0.0), ("oncotree_code", 0.1), (None, 0.2)])
def test_no_leakage_on_tcga_brca(shared_data, stratify_by, val_fraction):
    brca = read_tcga_table(shared_data / "tcga" / "tcga_brca_all_clean.csv.zip").slides
    assert brca["case_id"].duplicated().any(), "BRCA has patients with several slides"
    folds = patient_kfold(brca, 5, stratify_by=stratify_by, val_fraction=val_fraction, seed=0)
    check_no_leakage(folds, brca)
    _assert_partition(folds, set(brca["case_id"]))
    for fold in folds:  # independent check on slides: each slide's patient sits in one part only
        part = {case: name for name, ids in fold.parts().items() for case in ids}
        slide_parts = brca.assign(part=brca["case_id"].map(part)).groupby("case_id")["part"].nunique()
        assert (slide_parts == 1).all()

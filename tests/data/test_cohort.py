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

"""Cohort manifest: accessors, every validation error reported with its ids, paths kept inside the data root."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from monai_ext.data.cohort import Cohort, CohortError, resolve_in_root
from monai_ext.wsi.store import write_features

ENCODER = "tiny@0123abcd"
# case_id, slide_id, survival_months, event, age: patient P1 has two slides, P3 three
ROWS = [
    ("P2", "s1", 10.5, 1, 61),
    ("P1", "s2", 30.0, 0, 45),
    ("P1", "s3", 30.0, 0, 45),
    ("P3", "s4", 5.0, 1, 70),
    ("P3", "s5", 5.0, 1, 70),
    ("P3", "s6", 5.0, 1, 70),
]


def _features(root: Path, slide_id: str, encoder: str = ENCODER) -> str:
    """Write a small feature file under ``root/features`` and return its path relative to ``root``."""
    rng = np.random.default_rng(len(slide_id))
    relative = f"features/{slide_id}.h5"
    args = {"slide_id": slide_id, "encoder": encoder, "patch_size": 224, "mpp": 0.5, "level": 0}
    write_features(root / relative, rng.normal(size=(3, 4)), rng.integers(0, 999, (3, 2)), **args)
    return relative


def _table(root: Path) -> pd.DataFrame:
    """A valid survival manifest whose feature files exist under ``root``."""
    table = pd.DataFrame(ROWS, columns=["case_id", "slide_id", "survival_months", "event", "age"])
    table["features_path"] = [_features(root, slide) for slide in table["slide_id"]]
    return table


def _load(root: Path, table: pd.DataFrame, **kwargs) -> Cohort:
    path = root / "manifest.csv"
    table.to_csv(path, index=False)
    options = {"task": "survival", "clinical_columns": ["age"], "encoder": ENCODER, **kwargs}
    return Cohort.from_csv(path, **options)


def test_accessors(tmp_path):
    cohort = _load(tmp_path, _table(tmp_path))
    assert cohort.patients == ["P1", "P2", "P3"]
    assert cohort.slides_of("P3") == ["s4", "s5", "s6"]
    assert cohort.paths_of("P1") == [(tmp_path / "features" / f"{s}.h5").resolve() for s in ("s2", "s3")]
    patients = cohort.patient_table()
    expected = pd.DataFrame(ROWS, columns=["case_id", "slide_id", "survival_months", "event", "age"])
    expected_slides = expected.groupby("case_id").size()
    assert patients["n_slides"].to_dict() == expected_slides.to_dict()
    for case, row in expected.drop_duplicates("case_id").set_index("case_id").iterrows():
        assert patients.loc[case, "survival_months"] == row["survival_months"]
        assert patients.loc[case, "event"] == row["event"]
        assert patients.loc[case, "age"] == row["age"]
    labels = cohort.labels(["P3", "P1"])
    assert labels.index.tolist() == ["P3", "P1"]
    assert labels["event"].tolist() == [1, 0]
    assert labels.columns.tolist() == ["survival_months", "event"]
    with pytest.raises(KeyError, match="P9"):
        cohort.labels(["P9"])
    with pytest.raises(KeyError, match="P9"):
        cohort.slides_of("P9")


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


def test_paths_inside_root_accepted(tmp_path):
    table = _table(tmp_path)
    table.loc[0, "features_path"] = str((tmp_path / table.loc[0, "features_path"]).resolve())  # absolute, inside
    table.loc[1, "features_path"] = "features/../features/s2.h5"  # ".." that stays inside
    cohort = _load(tmp_path, table)
    assert cohort.paths_of("P2") == [(tmp_path / "features" / "s1.h5").resolve()]


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
    with pytest.raises(CohortError, match="outside the data root"):
        _load(root, table)
    with pytest.raises(ValueError, match="outside the data root"):
        resolve_in_root(root, table.loc[0, "features_path"])


def test_data_root_argument(tmp_path):
    data = tmp_path / "data"
    table = _table(data)
    (tmp_path / "lists").mkdir()
    path = tmp_path / "lists" / "manifest.csv"
    table.to_csv(path, index=False)
    with pytest.raises(CohortError, match="file not found"):  # default root: the CSV's folder
        Cohort.from_csv(path, task="survival", clinical_columns=["age"])
    cohort = Cohort.from_csv(path, task="survival", data_root=data, clinical_columns=["age"])
    assert cohort.paths_of("P1")[0] == (data / "features" / "s2.h5").resolve()


def test_feature_files_optional_and_foreign_files(tmp_path):
    table = _table(tmp_path)
    table.loc[0, "features_path"] = "features/not_yet.h5"
    with pytest.raises(CohortError, match=r"not_yet\.h5"):
        _load(tmp_path, table)
    assert _load(tmp_path, table, require_features=False).slides_of("P2") == ["s1"]
    with h5py.File(tmp_path / "features" / "clam.h5", "w") as h5:  # CLAM file: no encoder attribute, accepted
        h5.create_dataset("features", data=np.zeros((2, 4), np.float32))
    table.loc[0, "features_path"] = "features/clam.h5"
    assert _load(tmp_path, table).slides_of("P2") == ["s1"]
    (tmp_path / "features" / "broken.h5").write_bytes(b"not an h5 file")
    table.loc[0, "features_path"] = "features/broken.h5"
    with pytest.raises(CohortError, match="unreadable"):
        _load(tmp_path, table)


def test_allow_columns_and_slide_paths(tmp_path):
    table = _table(tmp_path).assign(scanner="aperio", slide_path=[f"slides/{row[1]}.svs" for row in ROWS])
    with pytest.raises(CohortError, match=r"unknown column\(s\) \['scanner'\]"):
        _load(tmp_path, table)
    cohort = _load(tmp_path, table, allow_columns=["scanner"])
    assert cohort.slide_table["scanner"].eq("aperio").all()
    with pytest.raises(CohortError, match=r"slides/s1\.svs"):
        _load(tmp_path, table, allow_columns=["scanner"], require_slides=True)


def test_ill_arg(tmp_path):
    with pytest.raises(ValueError, match="task must be one of"):
        _load(tmp_path, _table(tmp_path), task="segmentation")
    with pytest.raises(FileNotFoundError, match=r"nowhere\.csv"):
        Cohort.from_csv(tmp_path / "nowhere.csv", task="survival")
    with pytest.raises(CohortError, match=r"clinical column\(s\) \['bmi'\] declared but absent"):
        _load(tmp_path, _table(tmp_path), clinical_columns=["age", "bmi"])

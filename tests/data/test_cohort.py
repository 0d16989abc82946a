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

"""Cohort manifest: accessors, paths inside the root accepted, data root, optional and foreign feature files.

The manifest validation errors (duplicates, bad labels, paths escaping the root, ...) are tested in
``tests/reliability/test_bad_manifests.py``, which reuses the factories of this module.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from monai_ext.data.cohort import Cohort, CohortError
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


def test_paths_inside_root_accepted(tmp_path):
    table = _table(tmp_path)
    table.loc[0, "features_path"] = str((tmp_path / table.loc[0, "features_path"]).resolve())  # absolute, inside
    table.loc[1, "features_path"] = "features/../features/s2.h5"  # ".." that stays inside
    cohort = _load(tmp_path, table)
    assert cohort.paths_of("P2") == [(tmp_path / "features" / "s1.h5").resolve()]


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

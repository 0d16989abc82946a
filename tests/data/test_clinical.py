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

"""Clinical encoder: training-fold statistics (vs scikit-learn), unknown slot, missing indicator, ordinal, JSON."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from sklearn.impute import MissingIndicator
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from monai_ext.data.clinical import ClinicalEncoder

STAGES = ["I", "II", "III", "IV"]


def _table(n: int = 40, seed: int = 0) -> pd.DataFrame:
    """Clinical table indexed by case_id; the last ten patients are older and of grade G3 only."""
    rng = np.random.default_rng(seed)
    age = rng.normal(60, 10, n)
    age[-10:] += 25
    age[[1, 7, 12]] = np.nan
    bmi = rng.normal(27, 4, n)
    bmi[[3, 22]] = np.nan
    sex = rng.choice(["F", "M"], n).astype(object)
    sex[5] = None
    grade = rng.choice(["G1", "G2"], n).astype(object)
    grade[-10:] = "G3"
    grade[9] = np.nan
    stage = rng.choice(STAGES, n).astype(object)
    stage[[4, 11]] = None
    index = pd.Index([f"C{i:02d}" for i in range(n)], name="case_id")
    return pd.DataFrame({"age": age, "bmi": bmi, "sex": sex, "grade": grade, "stage": stage}, index=index)


def _fit(table: pd.DataFrame, case_ids: list[str] | None = None) -> ClinicalEncoder:
    return ClinicalEncoder().fit(
        table,
        ["age", "bmi", "sex", "grade", "stage"],
        categorical=["sex", "grade"],
        ordinal={"stage": STAGES},
        case_ids=case_ids,
    )


def _reference(train: pd.DataFrame, rows: pd.DataFrame) -> np.ndarray:
    """The same encoding built from scikit-learn parts fitted on the training rows."""
    numeric = train[["age", "bmi"]].to_numpy(float)
    scaler = StandardScaler().fit(numeric)  # ignores NaN when fitting
    medians = (np.nanmedian(numeric, axis=0) - scaler.mean_) / scaler.scale_
    scaled = scaler.transform(rows[["age", "bmi"]].to_numpy(float))
    missing = MissingIndicator(features="all").fit(numeric).transform(rows[["age", "bmi"]].to_numpy(float))
    scaled = np.where(missing, medians, scaled)
    blocks = [np.stack([scaled[:, 0], missing[:, 0]], 1), np.stack([scaled[:, 1], missing[:, 1]], 1)]
    for column in ("sex", "grade"):
        onehot = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
        onehot.fit(train[[column]].dropna().astype(str))
        coded = onehot.transform(rows[[column]].fillna("<missing>").astype(str))
        blocks.append(np.concatenate([coded, 1.0 - coded.sum(1, keepdims=True)], axis=1))
    ranks = rows["stage"].map({stage: k / 3 for k, stage in enumerate(STAGES)}).to_numpy(float)
    median = np.nanmedian(train["stage"].map({stage: k / 3 for k, stage in enumerate(STAGES)}).to_numpy(float))
    blocks.append(np.stack([np.where(np.isnan(ranks), median, ranks), np.isnan(ranks)], 1))
    return np.concatenate(blocks, axis=1)


def test_fitted_on_training_rows_only():
    table = _table()
    train = [f"C{i:02d}" for i in range(0, 30, 2)]  # none of the older, G3 patients
    encoder = _fit(table, train)
    np.testing.assert_allclose(encoder.numeric["age"]["mean"], table.loc[train, "age"].mean())
    np.testing.assert_allclose(encoder.numeric["age"]["std"], table.loc[train, "age"].std(ddof=0))
    np.testing.assert_allclose(encoder.numeric["bmi"]["median"], table.loc[train, "bmi"].median())
    assert encoder.categorical == {"sex": ["F", "M"], "grade": ["G1", "G2"]}
    assert encoder.n_train == len(train)
    features, observed = encoder.transform(table)
    assert features.dtype == np.float32 and features.shape == (40, encoder.n_features)
    np.testing.assert_allclose(features, _reference(table.loc[train], table), rtol=1e-5, atol=1e-6)
    assert observed.all()
    everything = _fit(table)
    assert not np.isclose(everything.numeric["age"]["mean"], encoder.numeric["age"]["mean"])


def test_feature_names():
    encoder = _fit(_table())
    assert encoder.feature_names == [
        "age",
        "age__missing",
        "bmi",
        "bmi__missing",
        "sex=F",
        "sex=M",
        "sex__unknown",
        "grade=G1",
        "grade=G2",
        "grade=G3",
        "grade__unknown",
        "stage",
        "stage__missing",
    ]


def test_unseen_category_goes_to_unknown_and_is_logged_once(caplog):
    encoder = ClinicalEncoder().fit(_table(), ["grade"], categorical=["grade"])
    rows = pd.DataFrame({"grade": ["G2", "G4", None, "G4", "GX"]})
    with caplog.at_level(logging.WARNING, logger="monai_ext.data.clinical"):
        features, observed = encoder.transform(rows)
        encoder.transform(rows)
    expected = np.array([[0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 1]], dtype=np.float32)
    np.testing.assert_array_equal(features, expected)
    np.testing.assert_array_equal(observed, [True, True, False, True, True])
    warnings = [record for record in caplog.records if "unseen in training" in record.getMessage()]
    assert len(warnings) == 1 and "G4" in warnings[0].getMessage() and "GX" in warnings[0].getMessage()


def test_missing_numeric_gets_train_median_and_indicator():
    train = pd.DataFrame({"age": [40.0, 50.0, 90.0, np.nan]})
    encoder = ClinicalEncoder().fit(train, ["age"])
    mean, std = 60.0, np.std([40.0, 50.0, 90.0])
    features, observed = encoder.transform(pd.DataFrame({"age": [np.nan, 70.0, "unknown"]}))
    np.testing.assert_allclose(features[:, 0], [(50.0 - mean) / std, (70.0 - mean) / std, (50.0 - mean) / std])
    np.testing.assert_array_equal(features[:, 1], [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(observed, [False, True, False])


def test_ordinal_rank_and_missing():
    train = pd.DataFrame({"stage": ["I", "II", "II", "IV", None]})
    encoder = ClinicalEncoder().fit(train, ["stage"], ordinal={"stage": STAGES})
    features, observed = encoder.transform(pd.DataFrame({"stage": ["III", None, "IIIA", "I"]}))
    median = np.median([0.0, 1 / 3, 1 / 3, 1.0])
    np.testing.assert_allclose(features, [[2 / 3, 0], [median, 1], [median, 1], [0, 0]], atol=1e-7)
    np.testing.assert_array_equal(observed, [True, False, False, True])
    with pytest.raises(ValueError, match=r"training values \['IIIA'\] not in its order"):
        ClinicalEncoder().fit(pd.DataFrame({"stage": ["I", "IIIA"]}), ["stage"], ordinal={"stage": STAGES})


def test_values_match_as_text():
    train = pd.DataFrame({"is_female": [0, 1, 1, 0]})
    encoder = ClinicalEncoder().fit(train, ["is_female"], categorical=["is_female"])
    rows = pd.DataFrame({"is_female": [1.0, "0", np.nan, " 1 "]})  # floats after a NaN, strings from a CSV
    features, observed = encoder.transform(rows)
    np.testing.assert_array_equal(features, [[0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0]])
    np.testing.assert_array_equal(observed, [True, True, False, True])


def test_all_missing_row_is_masked():
    encoder = _fit(_table())
    rows = pd.DataFrame({"age": [np.nan, 61.0], "bmi": [None, None], "sex": ["", None], "grade": [None] * 2})
    features, observed = encoder.transform(rows.assign(stage=[None, None]))
    np.testing.assert_array_equal(observed, [False, True])
    assert np.isfinite(features).all()
    frame = encoder.transform_frame(rows.assign(stage=[None, None]))
    assert frame.index.tolist() == [1] and frame.columns.tolist() == encoder.feature_names


def test_save_load_round_trip(tmp_path):
    table = _table()
    encoder = _fit(table, [f"C{i:02d}" for i in range(30)])
    path = encoder.save(tmp_path / "sub" / "clinical.json")
    loaded = ClinicalEncoder.load(path)
    assert loaded.feature_names == encoder.feature_names and loaded.n_train == 30
    rows = table.assign(grade=table["grade"].replace("G1", "G9"))
    for got, expected in zip(loaded.transform(rows), encoder.transform(rows), strict=True):
        np.testing.assert_array_equal(got, expected)
    (tmp_path / "other.json").write_text('{"format": "monai_ext.gene_scaler", "version": 1}')
    with pytest.raises(ValueError, match=r"other\.json: not a monai_ext\.clinical_encoder"):
        ClinicalEncoder.load(tmp_path / "other.json")


@pytest.mark.parametrize(
    "columns, kwargs, error, match",
    [
        ([], {}, ValueError, "no column to encode"),
        (["age", "age"], {}, ValueError, "listed more than once"),
        (["age"], {"categorical": ["sex"]}, ValueError, "not in columns"),
        (["sex"], {"categorical": ["sex"], "ordinal": {"sex": ["F", "M"]}}, ValueError, "both categorical and ordinal"),
        (["weight"], {}, KeyError, r"\['weight'\] are absent"),
        (["sex"], {}, ValueError, "numeric column 'sex' has non-numeric training values"),
        (["stage"], {"ordinal": {"stage": ["I", "I"]}}, ValueError, "must be non-empty, unique"),
        (["age"], {"case_ids": ["C00", "X99"]}, KeyError, "not in the clinical table"),
    ],
)
def test_ill_arg(columns, kwargs, error, match):
    with pytest.raises(error, match=match):
        ClinicalEncoder().fit(_table(), columns, **kwargs)


def test_ill_use():
    with pytest.raises(RuntimeError, match="not fitted"):
        ClinicalEncoder().transform(_table())
    with pytest.raises(ValueError, match="no observed training value"):
        ClinicalEncoder().fit(pd.DataFrame({"age": [np.nan, None]}), ["age"])
    with pytest.raises(KeyError, match=r"\['bmi'\] used at fit time are absent"):
        _fit(_table()).transform(_table().drop(columns="bmi"))


def test_tcga_blca_fold(shared_data):
    """Real BLCA clinical data on MCAT's fold 0: statistics come from the training patients alone."""
    tcga = shared_data / "tcga"
    slides = pd.read_csv(tcga / "tcga_blca_all_clean.csv.zip", compression="zip", usecols=["case_id", "age"])
    clinical = pd.read_csv(tcga / "clinical" / "tcga_blca_clinical.csv", index_col=0).set_index("case_id")
    table = clinical.join(slides.groupby("case_id")["age"].first(), how="inner")
    split = pd.read_csv(tcga / "splits" / "tcga_blca" / "splits_0.csv")
    train = [case for case in split["train"].dropna() if case in table.index]
    val = [case for case in split["val"].dropna() if case in table.index]
    encoder = ClinicalEncoder().fit(
        table,
        ["age", "stage", "grade"],
        categorical=["grade"],
        ordinal={"stage": ["0", "I", "II", "III", "IV"]},
        case_ids=train,
    )
    np.testing.assert_allclose(encoder.numeric["age"]["mean"], table.loc[train, "age"].mean())
    assert encoder.categorical["grade"] == sorted(table.loc[train, "grade"].dropna().unique())
    features, observed = encoder.transform(table.loc[val])
    assert features.shape == (len(val), encoder.n_features) and observed.all()
    np.testing.assert_allclose(features[:, 0].mean(), 0.0, atol=0.5)  # validation ages look like training ages
    stage_missing = table.loc[val, "stage"].isna().to_numpy()
    np.testing.assert_array_equal(features[:, encoder.feature_names.index("stage__missing")], stage_missing)

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

"""TCGA readers: event = 1 - censorship, one gene row per patient, endpoints, clinical conflicts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from monai_ext.data.tcga import event_from_censorship, read_clinical, read_survpath_metadata, read_tcga_table


def _small_table(path, changes=None):
    """A 3-slide TCGA-style table (patient A has two slides) written as a zipped CSV like the real ones."""
    table = pd.DataFrame(
        {
            "case_id": ["A", "A", "B"],
            "slide_id": ["a1", "a2", "b1"],
            "age": [50.0, 50.0, 61.0],
            "survival_months": [12.0, 12.0, 3.5],
            "censorship": [1, 1, 0],
            "TP53_rnaseq": [0.5, 0.5, -1.0],
            "TP53_cnv": [1, 1, 0],
            "KRAS_mut": [0, 0, 1],
        }
    )
    for (column, row), value in (changes or {}).items():
        table.loc[row, column] = value
    table.to_csv(path, compression="zip")  # with the unnamed pandas index, as in the published files
    return path


def test_small_table(tmp_path):
    slides, genes = read_tcga_table(_small_table(tmp_path / "t.csv.zip"))
    assert slides.columns.tolist() == ["case_id", "slide_id", "age", "survival_months", "event"]
    assert slides["event"].tolist() == [0, 0, 1]
    assert genes.index.tolist() == ["A", "B"]
    assert genes.columns.tolist() == ["TP53_rnaseq", "TP53_cnv", "KRAS_mut"]
    assert genes.loc["B"].tolist() == [-1.0, 0, 1]


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({("TP53_cnv", 1): 2}, "gene values differ between slides of the same patient for 1 case(s), first ['A']"),
        ({("censorship", 2): 2}, "censorship must be 0 or 1"),
        ({("survival_months", 2): 0.0}, "survival_months missing or <= 0 for slide(s) ['b1']"),
        ({("slide_id", 1): "a1"}, "slide_id listed more than once: ['a1']"),
    ],
)
def test_small_table_errors(tmp_path, changes, fragment):
    with pytest.raises(ValueError) as info:
        read_tcga_table(_small_table(tmp_path / "t.csv.zip", changes))
    assert fragment in str(info.value)


@pytest.mark.parametrize("censorship, event", [([0, 1, 1.0, 0.0], [1, 0, 0, 1]), (np.array([1, 1]), [0, 0])])
def test_event_from_censorship(censorship, event):
    assert event_from_censorship(censorship).tolist() == event


@pytest.mark.parametrize("censorship", [[0, 2], [0, np.nan], ["yes", 0]])
def test_event_from_censorship_refuses(censorship):
    with pytest.raises(ValueError, match="censorship must be 0 or 1"):
        event_from_censorship(censorship)


@pytest.mark.shared_data
@pytest.mark.parametrize("cohort", ["blca", "brca"])
def test_real_table(shared_data, cohort):
    path = shared_data / "tcga" / f"tcga_{cohort}_all_clean.csv.zip"
    raw = pd.read_csv(path, compression="zip")
    slides, genes = read_tcga_table(path)
    assert len(slides) == len(raw)
    np.testing.assert_array_equal(slides["slide_id"], raw["slide_id"])
    np.testing.assert_array_equal(slides["event"], 1 - raw["censorship"].to_numpy())
    assert {"case_id", "age", "is_female", "survival_months", "event"} <= set(slides.columns)
    assert "censorship" not in slides.columns
    gene_names = [c for c in raw.columns if c.rsplit("_", 1)[-1] in ("rnaseq", "cnv", "mut")]
    assert genes.columns.tolist() == gene_names
    assert genes.index.tolist() == sorted(raw["case_id"].unique())
    several = raw["case_id"][raw["case_id"].duplicated()].iloc[0]
    last_slide = raw[raw["case_id"] == several].iloc[-1]
    np.testing.assert_array_equal(genes.loc[several].to_numpy(), last_slide[gene_names].to_numpy(dtype=float))


@pytest.mark.shared_data
@pytest.mark.parametrize("endpoint, suffix", [("overall", ""), ("dss", "_dss"), ("pfi", "_pfi")])
def test_survpath_endpoints(shared_data, endpoint, suffix):
    path = shared_data / "tcga" / "survpath_metadata" / "tcga_blca.csv"
    raw = pd.read_csv(path)
    table = read_survpath_metadata(path, endpoint=endpoint)
    np.testing.assert_array_equal(table["survival_months"], raw[f"survival_months{suffix}"])
    np.testing.assert_array_equal(table["event"], 1 - raw[f"censorship{suffix}"].to_numpy())
    assert not any(column.startswith("censorship") or column.endswith(("_dss", "_pfi")) for column in table.columns)
    with pytest.raises(ValueError, match="endpoint must be one of"):
        read_survpath_metadata(path, endpoint="os")


def test_clinical(tmp_path):
    path = tmp_path / "clinical.csv"
    pd.DataFrame(
        {
            "case_id": ["A", "A", "B", "B", "C"],
            "stage": ["II", "II", "I", "I", "N/A"],
            "subtype": ["IDC", "IDC", "ILC", "BREAST", "IDC"],
        }
    ).to_csv(path)
    with pytest.raises(ValueError, match=r"1 patient\(s\) listed with different values, first \['B'\]"):
        read_clinical(path)
    table = read_clinical(path, on_conflict="drop")
    assert table.index.tolist() == ["A", "C"]
    assert table.loc["A", "stage"] == "II" and pd.isna(table.loc["C", "stage"])


@pytest.mark.shared_data
def test_real_clinical(shared_data):
    path = shared_data / "tcga" / "clinical" / "tcga_blca_clinical.csv"
    raw = pd.read_csv(path)
    table = read_clinical(path)
    assert len(table) == raw["case_id"].nunique()  # the repeated BLCA row is identical and merged
    assert table["stage"].isna().sum() == raw.drop_duplicates("case_id")["stage"].isna().sum()


def test_ill_arg(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_tcga_table(tmp_path / "missing.csv.zip")
    pd.DataFrame({"case_id": ["A"], "slide_id": ["a"]}).to_csv(tmp_path / "bare.csv", index=False)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['survival_months', 'censorship'\]"):
        read_tcga_table(tmp_path / "bare.csv")
    with pytest.raises(ValueError, match="on_conflict"):
        read_clinical(tmp_path / "bare.csv", on_conflict="first")

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

"""Gene tables: scaler fitted on training rows only (vs scikit-learn), gene alignment, Xena files.

Missing, extra and reordered genes at inference are tested in ``tests/reliability/test_bad_modalities.py``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import RobustScaler, StandardScaler

from monai_ext.data.omics import (
    GeneScaler,
    align_genes,
    gene_columns,
    gene_symbol,
    read_xena_matrix,
    select_modalities,
)

GENES = ["TP53_rnaseq", "EGFR_rnaseq", "MYC_rnaseq", "TP53_cnv", "KRAS_mut"]


def _table(n: int = 40, seed: int = 0) -> pd.DataFrame:
    """Gene table indexed by case_id; the last ten patients are shifted so that all-row statistics differ."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, len(GENES))) * [1.0, 2.0, 0.5, 1.0, 0.0] + [0.0, 5.0, -1.0, 0.0, 1.0]
    values[-10:] += 3.0
    return pd.DataFrame(values, index=pd.Index([f"C{i:02d}" for i in range(n)], name="case_id"), columns=GENES)


@pytest.mark.parametrize(
    "column, symbol",
    [("TP53_rnaseq", "TP53"), ("HLA-A_cnv", "HLA-A"), ("KRAS_mut", "KRAS"), ("age", "age"), ("MUT_rnaseq", "MUT")],
)
def test_gene_symbol(column, symbol):
    assert gene_symbol(column) == symbol


def test_select_modalities():
    table = _table().assign(age=1.0)
    assert select_modalities(table).columns.tolist() == ["TP53_rnaseq", "EGFR_rnaseq", "MYC_rnaseq"]
    assert gene_columns(table.columns, ("_cnv", "_mut")) == ["TP53_cnv", "KRAS_mut"]
    with pytest.raises(ValueError, match="unknown modality suffix"):
        select_modalities(table, ("_rna",))
    with pytest.raises(ValueError, match="no column ends with"):
        select_modalities(table[["age"]])


@pytest.mark.parametrize("method, reference", [("zscore", StandardScaler), ("robust", RobustScaler)])
def test_scaler_fitted_on_training_rows_only(method, reference):
    table = _table()
    train = [f"C{i:02d}" for i in range(0, 40, 2)]  # half of the shifted rows are not training rows
    test = table.drop(index=train)
    scaler = GeneScaler(method).fit(table, case_ids=train)
    expected = reference().fit(table.loc[train].to_numpy())
    np.testing.assert_allclose(scaler.center, expected.center_ if method == "robust" else expected.mean_)
    np.testing.assert_allclose(scaler.scale, expected.scale_)
    np.testing.assert_allclose(scaler.mean, table.loc[train].mean().to_numpy())
    transformed, report = scaler.transform(test)
    np.testing.assert_allclose(transformed, expected.transform(test.to_numpy()), rtol=1e-5, atol=1e-5)
    assert report.missing == [] and report.extra == []
    fitted_on_all = reference().fit(table.to_numpy())
    assert not np.allclose(scaler.scale[:4], fitted_on_all.scale_[:4])  # the shifted rows would change them
    assert scaler.n_train == len(train)


def test_scaler_round_trip(tmp_path):
    table = _table()
    scaler = GeneScaler("robust").fit(table, case_ids=table.index[:30])
    loaded = GeneScaler.load(scaler.save(tmp_path / "scaler.json"))
    assert loaded.genes == GENES and loaded.method == "robust"
    np.testing.assert_array_equal(loaded.transform(table)[0], scaler.transform(table)[0])
    (tmp_path / "bad.json").write_text('{"format": "something"}')
    with pytest.raises(ValueError, match="not a monai_ext"):
        GeneScaler.load(tmp_path / "bad.json")


def test_align_genes_directly():
    table = pd.DataFrame({"B": [1.0, 2.0], "A": [3.0, np.nan], "Z": [0.0, 0.0]})
    matrix, report = align_genes(table, ["A", "B", "C"], "mean", means={"C": 9.0})
    np.testing.assert_array_equal(matrix, [[3.0, 1.0, 9.0], [np.nan, 2.0, 9.0]])
    assert report.missing == ["C"] and report.extra == ["Z"] and report.n_nonfinite == 1
    assert "2/3 genes found" in str(report)
    with pytest.raises(ValueError, match="needs the training means"):
        align_genes(table, ["A", "C"], "mean")
    with pytest.raises(ValueError, match="policy must be one of"):
        align_genes(table, ["A"], "drop")
    with pytest.raises(ValueError, match=r"gene list repeat gene name\(s\) \['A'\]"):
        align_genes(table, ["A", "A"])


def test_scaler_ill_arg():
    table = _table()
    with pytest.raises(ValueError, match="method must be one of"):
        GeneScaler("minmax")
    with pytest.raises(RuntimeError, match="not fitted"):
        GeneScaler().transform(table)
    with pytest.raises(KeyError, match="X1"):
        GeneScaler().fit(table, case_ids=["C00", "X1"])
    table.iloc[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"non-finite.*TP53_rnaseq"):
        GeneScaler().fit(table)


def test_read_xena_matrix(tmp_path):
    path = tmp_path / "xena.tsv"
    path.write_text("sample\tTCGA-AA-0001-01\tTCGA-AA-0002-01\tTCGA-AA-0003-11\nTP53\t1.5\t2.5\t3.5\nEGFR\t-1\t0\t1\n")
    table = read_xena_matrix(path, suffix="_rnaseq", case_ids=True)
    assert table.index.tolist() == ["TCGA-AA-0001", "TCGA-AA-0002", "TCGA-AA-0003"]
    assert table.columns.tolist() == ["TP53_rnaseq", "EGFR_rnaseq"]
    assert table.loc["TCGA-AA-0002", "TP53_rnaseq"] == 2.5 and table.loc["TCGA-AA-0003", "EGFR_rnaseq"] == 1.0
    assert read_xena_matrix(path).index.tolist()[2] == "TCGA-AA-0003-11"
    path.write_text("sample\tTCGA-AA-0001-01\tTCGA-AA-0001-11\nTP53\t1\t2\nTP53\t3\t4\n")
    with pytest.raises(ValueError, match=r"listed on several rows \['TP53'\]"):
        read_xena_matrix(path)
    path.write_text("sample\tTCGA-AA-0001-01\tTCGA-AA-0001-11\nTP53\t1\t2\n")
    with pytest.raises(ValueError, match="several samples of the same patient"):
        read_xena_matrix(path, case_ids=True)

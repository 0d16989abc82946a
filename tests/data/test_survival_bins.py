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

"""Survival time bins against pandas' qcut/cut and MCAT's released bin labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from monai_ext.data.survival_bins import assign_bins, make_time_bins


def _cohort(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return np.round(rng.exponential(30.0, n) + 0.1, 2), (rng.random(n) < 0.4).astype(int)


@pytest.mark.parametrize("seed,n,n_bins", [(0, 200, 4), (1, 57, 3), (2, 500, 8), (3, 30, 1)])
def test_edges_and_labels_match_pandas(seed, n, n_bins):
    times, events = _cohort(seed, n)
    edges = make_time_bins(times, events, n_bins)
    assert edges[0] == 0.0
    assert edges[-1] == np.inf
    if n_bins > 1:
        _, qcut_edges = pd.qcut(times[events == 1], q=n_bins, retbins=True)
        np.testing.assert_allclose(edges[1:-1], qcut_edges[1:-1])
    labels = assign_bins(times, edges)
    expected = pd.cut(times, bins=edges, right=False, labels=False)
    np.testing.assert_array_equal(labels, expected)
    assert labels.dtype == np.int64
    counts = np.bincount(labels[events == 1], minlength=n_bins)
    assert counts.max() - counts.min() <= max(2, 0.05 * events.sum())  # quantile bins balance the events


def test_censored_times_do_not_move_edges():
    times, events = _cohort(4, 150)
    shifted = times.copy()
    shifted[events == 0] *= 3.0
    np.testing.assert_array_equal(make_time_bins(times, events), make_time_bins(shifted, events))


@pytest.mark.parametrize("cohort", ["blca", "luad"])
def test_reproduces_mcat_disc_labels(shared_data, cohort):
    """MCAT binned on all patients of the cohort (which leaks the validation folds); we redo that here only to
    check the edges and the half-open rule against its released ``disc_label``."""
    table = pd.read_csv(
        shared_data / "tcga" / f"tcga_{cohort}_all_clean.csv.zip",
        compression="zip",
        usecols=["case_id", "survival_months", "censorship"],
    ).drop_duplicates("case_id")
    edges = make_time_bins(table["survival_months"], 1 - table["censorship"], n_bins=4)
    labels = dict(zip(table["case_id"], assign_bins(table["survival_months"], edges), strict=True))
    reference = pd.read_csv(shared_data / "reference_results" / "mcat_iccv2021_val_predictions.csv")
    reference = reference[reference["cohort"] == cohort]
    np.testing.assert_array_equal(reference["case_id"].map(labels).to_numpy(), reference["disc_label"].to_numpy())


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: make_time_bins(np.array([1.0, 2.0]), np.array([1, 1, 0])), "same length"),
        (lambda: make_time_bins(np.array([1.0, 2.0]), np.array([1, 2])), "censorship"),
        (lambda: make_time_bins(np.array([0.0, 2.0]), np.array([1, 1])), "> 0"),
        (lambda: make_time_bins(np.array([1.0, 2.0, 3.0]), np.array([1, 1, 0]), n_bins=3), "lower n_bins"),
        (lambda: make_time_bins(np.array([5.0, 5.0, 5.0, 6.0]), np.ones(4), n_bins=4), "not distinct"),
        (lambda: make_time_bins(np.array([1.0, 2.0]), np.array([1, 1]), n_bins=0), "n_bins"),
        (lambda: assign_bins(np.array([1.0, -2.0]), np.array([0.0, 1.5, np.inf])), "within"),
        (lambda: assign_bins(np.array([1.0]), np.array([0.0, 2.0, 1.0])), "increasing"),
    ],
)
def test_ill_arg(call, match):
    with pytest.raises(ValueError, match=match):
        call()

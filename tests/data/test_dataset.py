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

"""Per-patient samples and their collation: slides concatenated, caps, masks for missing modalities, padding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from monai_ext.data.cohort import Cohort
from monai_ext.data.collate import collate_multimodal
from monai_ext.data.dataset import MultimodalDataset
from monai_ext.wsi.store import write_features

N_PATCHES = {"s1": 5, "s2": 3, "s3": 7}
DIM = 4


@pytest.fixture
def cohort(tmp_path):
    for slide, n in N_PATCHES.items():
        features = np.full((n, DIM), float(slide[1]), np.float32) + np.arange(n)[:, None]
        write_features(
            tmp_path / f"{slide}.h5",
            features,
            np.arange(2 * n).reshape(n, 2),
            slide_id=slide,
            encoder="enc@1",
            patch_size=256,
            mpp=0.5,
            level=0,
        )
    manifest = pd.DataFrame(
        {
            "case_id": ["A", "A", "B"],
            "slide_id": list(N_PATCHES),
            "features_path": [f"{s}.h5" for s in N_PATCHES],
            "survival_months": [10.0, 10.0, 3.0],
            "event": [1, 1, 0],
        }
    )
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    return Cohort.from_csv(tmp_path / "manifest.csv", task="survival")


def test_patient_sample_concatenates_slides(cohort):
    dataset = MultimodalDataset(cohort, ["A", "B"], time_bin_edges=np.array([0.0, 5.0, np.inf]))
    sample = dataset[0]
    assert sample["case_id"] == "A"
    assert sample["wsi"].shape == (8, DIM)
    assert sample["wsi_slide_index"].tolist() == [0] * 5 + [1] * 3
    assert sample["wsi"][5, 0] == 2.0  # first patch of slide s2
    assert sample["time"] == 10.0 and sample["event"] == 1.0 and sample["bin"] == 1
    assert dataset[1]["bin"] == 0


def test_patch_cap_resamples_each_epoch(cohort):
    dataset = MultimodalDataset(cohort, ["B"], max_patches=3, seed=0)
    first = dataset[0]["wsi"][:, 0]
    assert len(first) == 3 and len(set(first.tolist())) == 3
    draws = set()
    for epoch in range(8):
        dataset.set_epoch(epoch)
        draws.add(tuple(dataset[0]["wsi"][:, 0].tolist()))
    assert len(draws) > 1
    full = MultimodalDataset(cohort, ["B"])[0]["wsi"]
    assert len(full) == 7


def test_missing_modalities_are_masked_not_silent(cohort):
    omics = pd.DataFrame({"g1_rnaseq": [1.5], "g2_rnaseq": [-2.0]}, index=pd.Index(["A"], name="case_id"))
    text = {"A": np.ones((2, 3), np.float32)}
    dataset = MultimodalDataset(cohort, ["A", "B"], modalities=("wsi", "omics", "text"), omics=omics, text=text)
    a, b = dataset[0], dataset[1]
    assert a["omics_mask"] and a["omics"].tolist() == [1.5, -2.0]
    assert not b["omics_mask"]
    assert a["text_mask"].tolist() == [True, True] and not b["text_mask"].any()
    batch = collate_multimodal([a, b])
    assert batch["omics_mask"].tolist() == [True, False]
    assert batch["text"].shape == (2, 2, 3) and batch["text_mask"].tolist() == [[True, True], [False, False]]


def test_collate_pads_bags(cohort):
    dataset = MultimodalDataset(cohort, ["A", "B"])
    batch = collate_multimodal([dataset[0], dataset[1]])
    assert batch["wsi"].shape == (2, 8, DIM)
    assert batch["wsi_mask"].sum(1).tolist() == [8, 7]
    assert batch["wsi_slide_index"][1, 7] == -1
    assert torch.equal(batch["wsi"][1, :7], dataset[1]["wsi"])
    assert batch["case_id"] == ["A", "B"] and batch["time"].tolist() == [10.0, 3.0]


def test_ill_args(cohort):
    with pytest.raises(ValueError, match="unknown modalities"):
        MultimodalDataset(cohort, ["A"], modalities=("wsi", "genes"))
    with pytest.raises(ValueError, match="no omics table"):
        MultimodalDataset(cohort, ["A"], modalities=("wsi", "omics"))
    with pytest.raises(ValueError, match="max_patches"):
        MultimodalDataset(cohort, ["A"], max_patches=0)
    with pytest.raises(ValueError, match="different keys"):
        collate_multimodal([{"a": torch.zeros(1)}, {"b": torch.zeros(1)}])

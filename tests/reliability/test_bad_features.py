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

"""Bad feature files: incomplete, garbage, tampered, wrong schema, ragged, non-finite, another encoder, pickles.

Each is refused with a ``FeatureFileError`` that names the file; none is ever handed to a model.
"""

from __future__ import annotations

import os

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from monai_ext.data.cohort import Cohort
from monai_ext.data.dataset import MultimodalDataset
from monai_ext.wsi.store import FeatureFileError, is_complete, read_attrs, read_features, write_features
from tests.reliability.conftest import write_small_features


def test_incomplete_file_is_not_done(tmp_path):
    path, _, _ = write_small_features(tmp_path / "s1.h5")
    with h5py.File(path, "r+") as h5:
        h5.attrs["complete"] = False
    assert not is_complete(path, {})
    with pytest.raises(FeatureFileError, match="incomplete") as err:
        read_features(path)
    assert str(path) in str(err.value)


def test_garbage_file_is_not_done(tmp_path):
    path = tmp_path / "s1.h5"
    path.write_bytes(b"\x89HDF\r\n half a file")
    assert read_attrs(path) is None
    assert not is_complete(path, {})
    with pytest.raises(FeatureFileError, match=str(path)):
        read_features(path)


def test_wrong_schema_version_refused(tmp_path):
    path, _, _ = write_small_features(tmp_path / "s1.h5")
    with h5py.File(path, "r+") as h5:
        h5.attrs["schema_version"] = 99
    assert not is_complete(path, {})
    with pytest.raises(FeatureFileError, match="schema version 99") as err:
        read_features(path)
    assert str(path) in str(err.value)


def test_tampered_coords_detected(tmp_path):
    path, _, _ = write_small_features(tmp_path / "s1.h5")
    with h5py.File(path, "r+") as h5:
        h5["coords"][0, 0] += 1
    with pytest.raises(FeatureFileError, match="coordinate hash") as err:
        read_features(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("layout", ["ours", "clam"])
def test_features_and_coords_of_different_lengths(tmp_path, layout):
    path = tmp_path / "ragged.h5"
    if layout == "ours":
        write_small_features(path, n=5)
        with h5py.File(path, "r+") as h5:
            del h5["coords"]
            h5["coords"] = np.zeros((3, 2), np.int64)
        match = "patch count or coordinate hash"
    else:
        with h5py.File(path, "w") as h5:
            h5["features"] = np.zeros((5, 4), np.float32)
            h5["coords"] = np.zeros((3, 2), np.int64)
        match = r"coords must be \[5, 2\], got \(3, 2\)"
    with pytest.raises(FeatureFileError, match=match) as err:
        read_features(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("layout", ["ours", "clam"])
def test_non_finite_values_on_disk_refused(tmp_path, value, layout):
    path = tmp_path / "nonfinite.h5"
    if layout == "ours":
        write_small_features(path)
        with h5py.File(path, "r+") as h5:
            h5["features"][2, 1] = value
    else:
        with h5py.File(path, "w") as h5:
            h5["features"] = np.array([[0.0, 1.0], [value, 2.0]], np.float32)
    with pytest.raises(FeatureFileError, match="NaN or infinite") as err:
        read_features(path)
    assert str(path) in str(err.value)


def test_other_encoder_or_width_refused(tmp_path):
    path, _, _ = write_small_features(tmp_path / "s1.h5")
    with pytest.raises(FeatureFileError, match="enc@abc") as err:
        read_features(path, encoder="uni@123")
    assert str(path) in str(err.value)
    with pytest.raises(FeatureFileError, match="width 4"):
        read_features(path, feature_dim=1024)


@pytest.mark.parametrize(
    ("features", "coords", "match"),
    [
        (np.full((3, 2), np.nan), np.zeros((3, 2)), "NaN"),
        (np.zeros(3), np.zeros((3, 2)), r"\[N, D\]"),
        (np.zeros((3, 2)), np.zeros((2, 2)), "coords"),
    ],
)
def test_write_refuses_bad_arrays(tmp_path, features, coords, match):
    with pytest.raises(FeatureFileError, match=match) as err:
        write_features(tmp_path / "bad.h5", features, coords, slide_id="s", encoder="e", patch_size=1, mpp=1, level=0)
    assert str(tmp_path / "bad.h5") in str(err.value)
    assert not (tmp_path / "bad.h5").exists()


class _Payload:
    """Unpickling this runs ``os.makedirs(marker)``: the marker's existence proves code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_pt_with_pickled_code_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    torch.save({"features": _Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(FeatureFileError, match=r"evil\.pt"):
        read_features(tmp_path / "evil.pt")
    assert not marker.exists()


def test_empty_feature_file_never_reaches_a_model(tmp_path):
    for slide_id, n in (("s0", 3), ("s1", 0)):
        write_features(
            tmp_path / f"{slide_id}.h5",
            np.ones((n, 4)),
            np.zeros((n, 2)),
            slide_id=slide_id,
            encoder="e",
            patch_size=1,
            mpp=1,
            level=0,
        )
    manifest = pd.DataFrame({"case_id": ["P0", "P1"], "slide_id": ["s0", "s1"], "label": [0, 1]})
    manifest["features_path"] = manifest["slide_id"] + ".h5"
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    try:  # refusing the file (naming it) or leaving the patient out are both fine; an empty bag is not
        cohort = Cohort.from_csv(tmp_path / "manifest.csv", task="classification", encoder="e")
        dataset = MultimodalDataset(cohort, cohort.patients)
        bags = [dataset[index]["wsi"] for index in range(len(dataset))]
    except ValueError as err:
        assert str(tmp_path / "s1.h5") in str(err)
    else:
        assert all(len(bag) > 0 for bag in bags), "an empty bag was handed out"

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

"""Feature store: atomic round trip and attributes, CLAM files.

Damaged, tampered and unsafe feature files are tested in ``tests/reliability``.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from monai_ext.wsi.store import coords_sha256, is_complete, read_features, write_features


def _write(path, n=5, d=4, **kwargs):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(n, d)).astype(np.float32)
    coords = rng.integers(0, 10_000, size=(n, 2))
    args = {"slide_id": "s1", "encoder": "enc@abc", "patch_size": 256, "mpp": 0.5, "level": 0, **kwargs}
    return write_features(path, features, coords, **args), features, coords


def test_round_trip_and_attributes(tmp_path):
    path, features, coords = _write(tmp_path / "s1.h5", extra={"n_broken": 2})
    loaded = read_features(path, encoder="enc@abc", feature_dim=4)
    np.testing.assert_array_equal(loaded.features, features)
    np.testing.assert_array_equal(loaded.coords, coords)
    assert loaded.attrs["complete"] is True
    assert loaded.attrs["n_patches"] == 5
    assert loaded.attrs["n_broken"] == 2
    assert loaded.attrs["coords_sha256"] == coords_sha256(coords)
    assert not list(tmp_path.glob("*.partial"))
    assert is_complete(path, {"encoder": "enc@abc", "mpp": 0.5})
    assert not is_complete(path, {"encoder": "other@123"})


def test_clam_h5_and_pt_load(tmp_path):
    features = np.arange(12, dtype=np.float32).reshape(3, 4)
    with h5py.File(tmp_path / "clam.h5", "w") as h5:
        h5["features"] = features[None]
        h5["coords"] = np.arange(6).reshape(1, 3, 2)
    loaded = read_features(tmp_path / "clam.h5", encoder="anything")
    np.testing.assert_array_equal(loaded.features, features)
    assert loaded.coords.shape == (3, 2)
    torch.save(torch.from_numpy(features), tmp_path / "clam.pt")
    np.testing.assert_array_equal(read_features(tmp_path / "clam.pt").features, features)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"absent\.h5"):
        read_features(tmp_path / "absent.h5")

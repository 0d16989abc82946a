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
"""Shared fixtures of the engine tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monai_ext.data.demo import make_demo_cohort
from monai_ext.wsi.store import write_features

RANDOM_FEATURE_DIM = 8


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20-patient demo manifest with random ``[n, 8]`` feature files (no slide pipeline: fast)."""
    root = tmp_path_factory.mktemp("cohort")
    make_demo_cohort(root, n_patients=20, seed=0, slide_size=(256, 256), extract=False)
    manifest = pd.read_csv(root / "manifest.csv")
    rng = np.random.default_rng(0)
    for row in manifest.itertuples():
        n = int(rng.integers(3, 9))
        write_features(
            root / row.features_path,
            rng.normal(size=(n, RANDOM_FEATURE_DIM)).astype(np.float32),
            rng.integers(0, 256, size=(n, 2)),
            slide_id=row.slide_id,
            encoder="builtin_cnn@seed0",
            patch_size=256,
            mpp=0.5,
            level=0,
        )
    return root

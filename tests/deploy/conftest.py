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

"""Fixtures of the deploy tests: the app's folder on ``sys.path`` (the app imports its modules as siblings, as a
MONAI Application Package runs it), the SDK (skip when absent), and a survival bundle trained once per session.

The MONAI Deploy App SDK is an optional extra (``deploy/requirements.txt``), not installed in CI: the tests that
need it skip with the reason. Where the SDK sits in another site-packages than the system MONAI (a virtual
environment made with ``--system-site-packages``), set ``MONAI_DEPLOY_SITE`` to that site-packages folder and run
pytest with that environment's python (see ``deploy/README.md``).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from tests.bundles.conftest import REPO, train_bundle

DEPLOY_DIR = REPO / "deploy"
if str(DEPLOY_DIR) not in sys.path:
    sys.path.insert(0, str(DEPLOY_DIR))

SURVIVAL = "pathology_survival_multimodal"


@pytest.fixture(scope="session")
def deploy_sdk() -> None:
    """Skip unless ``monai.deploy.core`` and holoscan import (after the ``MONAI_DEPLOY_SITE`` path fix)."""
    try:
        importlib.import_module("sdk_site").extend_monai_path()
        importlib.import_module("monai.deploy.core")
        importlib.import_module("monai.deploy.conditions")
    except (ImportError, OSError) as error:
        pytest.skip(
            f"MONAI Deploy App SDK not importable ({type(error).__name__}: {error}); it is the optional extra "
            "deploy/requirements.txt (see deploy/README.md; set MONAI_DEPLOY_SITE for a --system-site-packages venv)"
        )


@pytest.fixture(scope="session")
def survival_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the survival bundle trained with the tiny overrides of the bundle tests (16 demo patients)."""
    return train_bundle(SURVIVAL, {}, tmp_path_factory)

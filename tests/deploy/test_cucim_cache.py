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

"""The deploy app's cuCIM guard (``deploy/cucim_cache.py``), without the SDK: imported first, it turns cuCIM's tile
cache off (a wrong thumbnail came out of the per-process cache in a long demo run, see the module), and it leaves a
configuration the user chose alone."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

from tests.bundles.conftest import bundle_env
from tests.deploy.conftest import DEPLOY_DIR

# what cuCIM reports once loaded, the guard imported first and monai_ext's reader after it (as in deploy/app.py)
REPORT = """
import cucim_cache
import monai_ext.wsi.backends
from cucim import CuImage
print(CuImage.cache().type)
"""


def test_cache_off_in_a_process_that_imports_it_first() -> None:
    pytest.importorskip("cucim")
    env = {**bundle_env(), "PYTHONPATH": os.pathsep.join([str(DEPLOY_DIR), os.environ.get("PYTHONPATH", "")])}
    env.pop("CUCIM_CONFIG_PATH", None)
    result = subprocess.run([sys.executable, "-c", REPORT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "CacheType.NoCache"


@pytest.mark.parametrize("chosen", [None, "/somewhere/cucim.json"])
def test_user_choice_kept(monkeypatch: pytest.MonkeyPatch, chosen: str | None) -> None:
    if chosen is None:
        monkeypatch.delenv("CUCIM_CONFIG_PATH", raising=False)
    else:
        monkeypatch.setenv("CUCIM_CONFIG_PATH", chosen)
    module = importlib.reload(importlib.import_module("cucim_cache"))
    assert os.environ["CUCIM_CONFIG_PATH"] == (chosen or str(module.NO_CACHE_CONFIG))
    assert module.NO_CACHE_CONFIG.is_file()

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

"""Run the deploy app with cuCIM's tile cache off (unless ``CUCIM_CONFIG_PATH`` is already set).

``monai_ext.wsi`` points cuCIM at a 128 MB per-process tile cache. Measured here (cuCIM 26.10, the survival demo
cohort of a bundle trained with the tests' tiny overrides): in one process, after the 4 um/px thumbnail of
``DEMO-005-N2.tif``, the 8 um/px thumbnail of ``DEMO-009-N0.tif`` came back wrong (mostly white, mean 233.6 instead
of 205.0), its tissue mask was empty and the patient failed. With ``"type": "nocache"`` the thumbnail matched a
fresh read, the patient succeeded and the other 15 patients' risks were unchanged. Copies of the two files (new
inodes and times) did not reproduce it, so it depends on the files' identity, which cuCIM's cache keys are built
from; the exact collision was not found. The app is a long multi-slide process, so it turns the cache off.
cuCIM reads its configuration once, when it loads: import this module before ``monai_ext.wsi``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["NO_CACHE_CONFIG"]

NO_CACHE_CONFIG = Path(__file__).resolve().with_name("cucim_nocache.json")

os.environ.setdefault("CUCIM_CONFIG_PATH", str(NO_CACHE_CONFIG))

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

"""Find the MONAI Deploy App SDK when another site-packages' ``monai`` hides it.

The SDK installs ``monai/deploy`` inside the ``monai`` folder of the environment it is installed into. In a virtual
environment made with ``--system-site-packages`` on top of a system MONAI, ``import monai`` finds the system one
(a regular package, so its ``__path__`` has one folder) and ``monai.deploy`` is not found. Setting the environment
variable ``MONAI_DEPLOY_SITE`` to the site-packages folder holding the SDK makes importing this module append that
folder's ``monai`` to ``monai.__path__``; without the variable, or where ``monai.deploy`` already imports, nothing
changes. Import it after ``monai_ext`` and before anything from ``monai.deploy``.
"""

from __future__ import annotations

import monai_ext  # noqa: F401 - first: silences native library banners before MONAI loads

# isort: split

import importlib.util
import logging
import os
from pathlib import Path

import monai

__all__ = ["SITE_VARIABLE", "extend_monai_path"]

logger = logging.getLogger(__name__)

SITE_VARIABLE = "MONAI_DEPLOY_SITE"


def extend_monai_path(site: str | Path | None = None) -> bool:
    """Make ``monai.deploy`` importable from ``site`` (default: ``$MONAI_DEPLOY_SITE``).

    Returns:
        True when ``monai.deploy`` can be imported afterwards.

    Raises:
        FileNotFoundError: ``site`` is given (or set) but holds no ``monai/deploy``.
    """
    site = site if site is not None else os.environ.get(SITE_VARIABLE)
    if importlib.util.find_spec("monai.deploy") is not None:
        return True
    if not site:
        return False
    folder = Path(site) / "monai"
    if not (folder / "deploy" / "__init__.py").is_file():
        raise FileNotFoundError(f"{folder / 'deploy'}: no MONAI Deploy App SDK there; fix {SITE_VARIABLE}={site}")
    if str(folder) not in monai.__path__:
        monai.__path__.append(str(folder))
        logger.info("monai.deploy taken from %s", folder)
    return importlib.util.find_spec("monai.deploy") is not None


extend_monai_path()

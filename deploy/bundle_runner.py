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

"""Run a bundle's own ``configs/inference.json`` for one patient at a time.

The bundle's config does all the work (network, trained weights, patch encoder, slide pipeline,
:class:`monai_ext.engines.inference.PatientInference`); this module only overrides the ids a deployment changes:
``bundle_root``, ``output_dir``, ``case_id``, ``slide_paths`` and, where the config has them, ``slide_mpp``,
``omics``, ``clinical`` and ``text``. A modality the deployment does not give is overridden to None (missing), so
the demo defaults of the config (a demo omics table, example clinical values) never reach a real patient.

Values reach the config through a global of the expressions (``$deploy_case['case_id']``), never as config text,
so an id or a note that starts with ``$``, ``@`` or ``%`` is not evaluated. Each patient gets a fresh parser (the
network is rebuilt and its weights loaded again: small next to the slide pipeline), so one patient's failure
cannot leave state behind for the next.
"""

from __future__ import annotations

import monai_ext  # noqa: F401 - first: silences native library banners before MONAI loads

# isort: split

import copy
import json
import logging
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from monai.bundle import ConfigParser
from slide_cases import CaseResult, PatientCase

__all__ = ["CASE_GLOBAL", "BundleRunner"]

logger = logging.getLogger(__name__)

CASE_GLOBAL = "deploy_case"
_OPTIONAL_IDS = ("slide_mpp", "omics", "clinical", "text")


class BundleRunner:
    """Predict for patients with a trained bundle's inference config.

    Args:
        bundle_root: the bundle folder (``configs/inference.json``, ``models/model.pt``).
        output_dir: outputs go to ``output_dir/<case_id>/`` (``prediction.json``, heatmaps, feature files).
        omics: a gene table CSV keyed by ``case_id``; a patient without a row gets omics as missing.
        config_file: the inference config, relative to ``bundle_root/configs``.
        init_id: the config's list of expressions run before inference (weights loading).
        run_id: the config's inference expression.

    Raises:
        FileNotFoundError: the bundle has no inference config or no trained weights, or ``omics`` does not exist.
        ValueError: the config lacks an id the deployment overrides, or the omics table has no ``case_id`` column.
    """

    def __init__(
        self,
        bundle_root: str | Path,
        output_dir: str | Path,
        *,
        omics: str | Path | None = None,
        config_file: str = "inference.json",
        init_id: str = "initialize",
        run_id: str = "inference",
    ) -> None:
        self.bundle_root = Path(bundle_root).resolve()
        self.output_dir = Path(output_dir).resolve()
        self.init_id = init_id
        self.run_id = run_id
        config_path = self.bundle_root / "configs" / config_file
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path}: not found; --bundle must be a bundle folder with configs/")
        weights = self.bundle_root / "models" / "model.pt"
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: no trained weights; train the bundle first (see its docs/README.md)")
        self.config: dict[str, Any] = ConfigParser.load_config_file(config_path)
        needed = ("bundle_root", "output_dir", "case_id", "slide_paths", init_id, run_id)
        absent = [key for key in needed if key not in self.config]
        if absent:
            raise ValueError(f"{config_path} lacks {absent}: the deploy app overrides these ids of a bundle config")
        self.omics = Path(omics).resolve() if omics is not None else None
        self.omics_cases = _table_cases(self.omics) if self.omics is not None else set()
        if self.omics is not None and "omics" not in self.config:
            logger.warning("the bundle's inference config takes no omics: %s is not used", self.omics)

    def overrides(self, case: PatientCase) -> dict[str, Any]:
        """The patient's values, by config id (only the optional ids the config has)."""
        values: dict[str, Any] = {
            "bundle_root": str(self.bundle_root),
            "output_dir": str(self.output_dir),
            "case_id": case.case_id,
            "slide_paths": [str(path) for path in case.slide_paths],
            "slide_mpp": case.mpp,
            "omics": str(self.omics) if self.omics is not None and case.case_id in self.omics_cases else None,
            "clinical": dict(case.clinical) if case.clinical else None,
            "text": list(case.text) or None,
        }
        return {key: value for key, value in values.items() if key not in _OPTIONAL_IDS or key in self.config}

    def __call__(self, case: PatientCase) -> CaseResult:
        """Predict for one patient; any error becomes a failed result naming it (the other patients go on)."""
        start = time.perf_counter()
        n_slides = len(case.slide_paths)
        if case.problem:
            logger.warning("%s not run: %s", case.case_id, case.problem)
            return CaseResult(case.case_id, "failed", case.problem, n_slides)
        try:
            prediction = self._predict(self.overrides(case))
        except Exception as error:  # a bad slide or input fails its patient only
            reason = _reason(error)
            logger.warning("%s failed: %s", case.case_id, reason)
            logger.debug("%s traceback", case.case_id, exc_info=True)
            return CaseResult(case.case_id, "failed", reason, n_slides, seconds=time.perf_counter() - start)
        return CaseResult(
            case.case_id,
            "done",
            n_slides=n_slides,
            prediction=str(prediction.get("prediction", "")),
            risk=prediction.get("risk"),
            prediction_json=self._prediction_file(case.case_id),
            seconds=time.perf_counter() - start,
        )

    def _predict(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Parse the config with the patient's values, run its init and inference expressions."""
        parser = ConfigParser(copy.deepcopy(self.config), globals={CASE_GLOBAL: dict(values)})
        parser.update({key: f"${CASE_GLOBAL}[{key!r}]" for key in values})
        parser.get_parsed_content(self.init_id)
        outputs = parser.get_parsed_content(self.run_id)
        prediction = outputs[-1] if isinstance(outputs, list) else outputs
        if not isinstance(prediction, Mapping):
            raise TypeError(f"the config's {self.run_id!r} returned {type(prediction).__name__}, not a prediction dict")
        return dict(prediction)

    def _prediction_file(self, case_id: str) -> str:
        """Where PatientInference wrote the patient's prediction (its folder-name rule: ``[^\\w.-]`` -> ``_``)."""
        path = self.output_dir / (re.sub(r"[^\w.-]", "_", case_id) or "case") / "prediction.json"
        if path.is_file() and json.loads(path.read_text()).get("case_id") == case_id:
            return str(path)
        logger.warning("%s: prediction.json not found at %s", case_id, path)
        return ""


def _reason(error: BaseException) -> str:
    """The innermost cause of an error, on one line (the config parser wraps what the bundle code raised)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return " ".join(f"{type(error).__name__}: {error}".split())


def _table_cases(path: Path) -> set[str]:
    """The ``case_id`` values of a gene table."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: omics table not found (give an existing CSV with --omics)")
    table = pd.read_csv(path, usecols=lambda column: column == "case_id", dtype=str)
    if "case_id" not in table.columns:
        raise ValueError(f"{path}: an omics table needs a case_id column naming each row's patient")
    return set(table["case_id"].dropna())

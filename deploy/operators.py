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

"""MONAI Deploy App SDK operators of the slide-folder app: plan the patients, run the bundle, write the summary.

Each operator is a thin shell around the plain-Python modules (:mod:`slide_cases`, :mod:`bundle_runner`), which
hold the logic and are tested without the SDK. The three operators pass Python lists between them in one tick:
``SlideCasesOperator`` (runs once) -> ``BundleInferenceOperator`` -> ``SummaryWriterOperator``.
"""

from __future__ import annotations

import monai_ext  # noqa: F401 - first: silences native library banners before MONAI loads

# isort: split

import sdk_site  # noqa: F401 - finds monai.deploy when another site-packages' monai hides it

# isort: split

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from bundle_runner import BundleRunner
from monai.deploy.core import Fragment, Operator, OperatorSpec
from slide_cases import CaseResult, PatientCase, plan_cases, write_summary

__all__ = ["SUMMARY_FILE", "BundleInferenceOperator", "SlideCasesOperator", "SummaryWriterOperator"]

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.csv"


class SlideCasesOperator(Operator):
    """Source: the patients of the run (one per slide, or grouped by a manifest), emitted as a list on ``cases``.

    Args:
        fragment: the application.
        input_dir: the folder of slides.
        manifest: optional CSV mapping slides to patients (see :mod:`slide_cases`).
    """

    def __init__(
        self, fragment: Fragment, *args: Any, input_dir: Path, manifest: Path | None = None, **kwargs: Any
    ) -> None:
        self.input_dir = Path(input_dir)
        self.manifest = Path(manifest) if manifest is not None else None
        Operator.__init__(self, fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        """Declare the output port."""
        spec.output("cases")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        """Plan the patients and emit them."""
        cases = plan_cases(self.input_dir, self.manifest)
        logger.info("%d patient(s), %d slide(s) to run", len(cases), sum(len(c.slide_paths) for c in cases))
        op_output.emit(cases, "cases")


class BundleInferenceOperator(Operator):
    """Run the bundle's inference for each patient of ``cases``; emit one :class:`CaseResult` each on ``results``.

    Args:
        fragment: the application.
        runner: the bundle, its output folder and the omics table.
    """

    def __init__(self, fragment: Fragment, *args: Any, runner: BundleRunner, **kwargs: Any) -> None:
        self.runner = runner
        Operator.__init__(self, fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        """Declare the ports."""
        spec.input("cases")
        spec.output("results")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        """Predict patient after patient; a failure is recorded and the next patient runs."""
        cases: list[PatientCase] = op_input.receive("cases")
        results = []
        for number, case in enumerate(cases, start=1):
            logger.info("patient %d/%d: %s (%d slide(s))", number, len(cases), case.case_id, len(case.slide_paths))
            results.append(self.runner(case))
        op_output.emit(results, "results")


class SummaryWriterOperator(Operator):
    """Sink: write ``summary.csv`` (one row per patient: status done/failed and the reason) to the output folder.

    Args:
        fragment: the application.
        output_dir: the app's output folder.
        collected: a list the results are also appended to, for the caller of ``run()``.
    """

    def __init__(
        self,
        fragment: Fragment,
        *args: Any,
        output_dir: Path,
        collected: list[CaseResult] | None = None,
        **kwargs: Any,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.collected = collected if collected is not None else []
        Operator.__init__(self, fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        """Declare the input port."""
        spec.input("results")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        """Write the summary and log the counts."""
        results: list[CaseResult] = op_input.receive("results")
        path = write_summary(results, self.output_dir / SUMMARY_FILE)
        self.collected.extend(results)
        counts = Counter(result.status for result in results)
        logger.info("summary written to %s: %s", path, dict(counts))

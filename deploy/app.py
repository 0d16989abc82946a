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

"""MONAI Deploy App SDK application: a bundle's inference over a folder of slides.

Usage (the SDK's ``-i/-o/-m`` conventions, with ``HOLOSCAN_INPUT_PATH``, ``HOLOSCAN_OUTPUT_PATH`` and
``HOLOSCAN_MODEL_PATH`` as defaults, as in a MONAI Application Package)::

    python deploy/app.py --bundle bundles/pathology_survival_multimodal --input <slides dir> --output <dir>
        [--manifest <csv: case_id, slide_path or slide_id, text, mpp, clinical columns>] [--omics <gene table csv>]
        [--log-level INFO]

The graph: ``SlideCasesOperator`` (the patients: one per slide, or grouped by the manifest) ->
``BundleInferenceOperator`` (the bundle's own ``configs/inference.json`` per patient, through
:class:`monai_ext.engines.inference.PatientInference`) -> ``SummaryWriterOperator`` (``summary.csv``).
Outputs: ``<output>/<case_id>/prediction.json``, ``heatmap_<slide_id>.png``, ``features/`` and
``<output>/summary.csv`` (``case_id, status, reason, ...``). A bad slide fails its patient only. The exit status is
0 when every patient is done, 1 otherwise.

The app sits above the bundles: ``monai_ext`` never imports it.
"""

from __future__ import annotations

import monai_ext  # noqa: F401 - silences native library banners before MONAI loads

# isort: split

import sdk_site  # noqa: F401 - finds monai.deploy when another site-packages' monai hides it

# isort: split

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundle_runner import BundleRunner
from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application, RuntimeEnv
from operators import BundleInferenceOperator, SlideCasesOperator, SummaryWriterOperator
from slide_cases import CaseResult

__all__ = ["DeploySettings", "SlideFolderApp", "main", "parse_settings"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeploySettings:
    """What one run works on.

    Args:
        bundle: the trained bundle's folder.
        input_dir: the folder of slides.
        output_dir: where predictions, heatmaps and ``summary.csv`` go.
        manifest: optional CSV grouping the slides into patients (with their notes and clinical values).
        omics: optional gene table CSV keyed by ``case_id``.
    """

    bundle: Path
    input_dir: Path
    output_dir: Path
    manifest: Path | None = None
    omics: Path | None = None


class SlideFolderApp(Application):
    """Runs a monai_ext bundle's inference for every patient of a slide folder (see the module docstring).

    Args:
        settings: the bundle, input, output, manifest and omics table.
        args: passed to :class:`monai.deploy.core.Application`.
        kwargs: passed to :class:`monai.deploy.core.Application`.
    """

    def __init__(self, settings: DeploySettings, *args: Any, **kwargs: Any) -> None:
        self.settings = settings
        self.results: list[CaseResult] = []
        # holoscan parses its own options from argv: give it none of ours
        Application.__init__(self, [sys.executable, __file__], *args, **kwargs)

    def compose(self) -> None:
        """Build the three-operator graph; the source runs once."""
        settings = self.settings
        runner = BundleRunner(settings.bundle, settings.output_dir, omics=settings.omics)
        cases_op = SlideCasesOperator(
            self,
            CountCondition(self, 1),
            input_dir=settings.input_dir,
            manifest=settings.manifest,
            name="slide_cases_op",
        )
        inference_op = BundleInferenceOperator(self, runner=runner, name="bundle_inference_op")
        summary_op = SummaryWriterOperator(
            self, output_dir=settings.output_dir, collected=self.results, name="summary_writer_op"
        )
        self.add_flow(cases_op, inference_op, {("cases", "cases")})
        self.add_flow(inference_op, summary_op, {("results", "results")})


def parse_settings(argv: Sequence[str] | None = None) -> tuple[DeploySettings, str]:
    """Settings and log level from the command line, with the SDK's environment variables as defaults.

    Raises:
        SystemExit: a path that does not exist (argparse's usage error).
    """
    env = RuntimeEnv()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--bundle", "--model", default=env.model, help="trained bundle folder")
    parser.add_argument("-i", "--input", default=env.input, help="folder of slides")
    parser.add_argument("-o", "--output", default=env.output, help="output folder")
    parser.add_argument("--manifest", default=None, help="CSV mapping slides to patients")
    parser.add_argument("--omics", default=None, help="gene table CSV keyed by case_id")
    parser.add_argument("-l", "--log-level", default="INFO", type=str.upper, help="logging level")
    args = parser.parse_args(argv)
    for name in ("bundle", "input", "manifest", "omics"):
        value = getattr(args, name)
        if value is not None and not Path(value).exists():
            parser.error(f"--{name} {value}: no such file or folder")
    settings = DeploySettings(
        bundle=Path(args.bundle),
        input_dir=Path(args.input),
        output_dir=Path(args.output),
        manifest=Path(args.manifest) if args.manifest else None,
        omics=Path(args.omics) if args.omics else None,
    )
    return settings, args.log_level


def main(argv: Sequence[str] | None = None) -> int:
    """Run the app; 0 when every patient is done, 1 when some failed (``summary.csv`` says which and why)."""
    settings, level = parse_settings(argv)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    app = SlideFolderApp(settings)
    app.run()
    failed = [result.case_id for result in app.results if result.status != "done"]
    logger.info("%d patient(s) done, %d failed %s", len(app.results) - len(failed), len(failed), failed)
    return 1 if failed or not app.results else 0


if __name__ == "__main__":
    sys.exit(main())

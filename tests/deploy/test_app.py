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

"""The MONAI Deploy App SDK application end to end on a trained survival bundle (skipped without the SDK).

The command line is run as a user types it (``python deploy/app.py ...`` in a subprocess) over the demo cohort with
its manifest; the app's predictions are compared with the bundle runner called directly, which
``test_bundle_runner`` compares with the bundle's own inference."""

from __future__ import annotations

import csv
import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pandas as pd
import pytest
from bundle_runner import BundleRunner
from slide_cases import plan_cases

from tests.bundles.conftest import bundle_env
from tests.deploy.conftest import DEPLOY_DIR

GOOD = ("DEMO-000-N0", "DEMO-003-N0")


def _slide_folder(bundle: Path, target: Path) -> Path:
    """Two demo slides, one patient each (no manifest)."""
    target.mkdir()
    for name in GOOD:
        shutil.copy(bundle / "demo_data" / "slides" / f"{name}.tif", target / f"{name}.tif")
    return target


def _summary(out: Path) -> dict[str, dict[str, str]]:
    with (out / "summary.csv").open(newline="") as handle:
        return {row["case_id"]: row for row in csv.DictReader(handle)}


@pytest.mark.slow
def test_command_line_over_the_demo_cohort(deploy_sdk: None, survival_bundle: Path, tmp_path: Path) -> None:
    data = survival_bundle / "demo_data"
    manifest = pd.read_csv(data / "manifest.csv")
    manifest["slide_path"] = [str(data / path) for path in manifest["slide_path"]]
    broken = tmp_path / "BROKEN.tif"
    broken.write_bytes(Path(manifest["slide_path"].iloc[0]).read_bytes()[:4096])  # a truncated copy
    extra = pd.DataFrame({"case_id": ["BROKEN"], "slide_path": [str(broken)]})
    pd.concat([manifest, extra]).to_csv(tmp_path / "manifest.csv", index=False)
    out = tmp_path / "out"
    args = ["--bundle", str(survival_bundle), "--input", str(data / "slides"), "--output", str(out)]
    args += ["--manifest", str(tmp_path / "manifest.csv"), "--omics", str(data / "omics.csv")]
    result = subprocess.run(
        [sys.executable, str(DEPLOY_DIR / "app.py"), *args],
        env=bundle_env(),
        capture_output=True,
        text=True,
        errors="replace",
        timeout=600,
    )
    assert result.returncode == 1, result.stderr[-4000:]  # one patient failed
    rows = _summary(out)
    statuses = {case_id: row["status"] for case_id, row in rows.items()}
    # every demo patient is done (cuCIM's tile cache, now off, once failed one: see monai_ext/wsi/backends.py)
    assert statuses == {"BROKEN": "failed", **dict.fromkeys(manifest["case_id"], "done")}
    assert str(broken) in rows["BROKEN"]["reason"]
    reference = BundleRunner(survival_bundle, tmp_path / "reference", omics=data / "omics.csv")
    cases = {case.case_id: case for case in plan_cases(data / "slides", data / "manifest.csv")}
    for case_id in ("DEMO-000", "DEMO-001"):
        prediction = json.loads(Path(rows[case_id]["prediction_json"]).read_text())
        assert prediction["case_id"] == case_id
        assert len(prediction["slides"]) == len(cases[case_id].slide_paths)
        assert all(cv2.imread(slide["heatmap"]) is not None for slide in prediction["slides"])
        assert float(rows[case_id]["risk"]) == pytest.approx(reference(cases[case_id]).risk, rel=1e-6)


@pytest.mark.slow
def test_all_done_exits_zero(deploy_sdk: None, survival_bundle: Path, tmp_path: Path) -> None:
    app = importlib.import_module("app")
    slides = _slide_folder(survival_bundle, tmp_path / "slides")
    out = tmp_path / "out"
    assert app.main(["-m", str(survival_bundle), "-i", str(slides), "-o", str(out)]) == 0
    assert sorted(_summary(out)) == sorted(GOOD)
    for case_id in GOOD:  # no omics table, no manifest: both missing, not the config's demo table and values
        prediction = json.loads((out / case_id / "prediction.json").read_text())
        assert prediction["modalities_missing"] == ["omics", "clinical"]


def test_settings_from_environment(deploy_sdk: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = importlib.import_module("app")
    for name in ("input", "output", "model"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(f"HOLOSCAN_{name.upper()}_PATH", str(tmp_path / name))
    settings, level = app.parse_settings(["-l", "debug"])
    assert (settings.input_dir, settings.output_dir, settings.bundle) == (
        tmp_path / "input",
        tmp_path / "output",
        tmp_path / "model",
    )
    assert level == "DEBUG" and settings.manifest is None and settings.omics is None


@pytest.mark.parametrize("option", ["--input", "--bundle", "--manifest", "--omics"])
def test_ill_arg(deploy_sdk: None, tmp_path: Path, option: str, capsys: pytest.CaptureFixture) -> None:
    app = importlib.import_module("app")
    args = {"--input": str(tmp_path), "--bundle": str(tmp_path), "--output": str(tmp_path / "out")}
    args[option] = str(tmp_path / "absent")
    with pytest.raises(SystemExit):
        app.parse_settings([item for pair in args.items() for item in pair])
    assert f"{option} {tmp_path / 'absent'}: no such file or folder" in capsys.readouterr().err

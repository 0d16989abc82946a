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

The command line is run as a user types it (``python deploy/app.py ...`` in a subprocess); the app's predictions
are compared with the bundle runner called directly, which ``test_bundle_runner`` compares with the bundle's own
inference."""

from __future__ import annotations

import csv
import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from bundle_runner import BundleRunner
from slide_cases import PatientCase

from tests.bundles.conftest import bundle_env
from tests.deploy.conftest import DEPLOY_DIR

GOOD = ("DEMO-000-N0", "DEMO-003-N0")


def _slide_folder(bundle: Path, target: Path, broken: bool) -> Path:
    """Two demo slides (one patient each) and, when ``broken``, a truncated copy as a third patient."""
    target.mkdir()
    for name in GOOD:
        shutil.copy(bundle / "demo_data" / "slides" / f"{name}.tif", target / f"{name}.tif")
    if broken:
        (target / "BROKEN.tif").write_bytes((target / f"{GOOD[0]}.tif").read_bytes()[:4096])
    return target


def _summary(out: Path) -> dict[str, dict[str, str]]:
    with (out / "summary.csv").open(newline="") as handle:
        return {row["case_id"]: row for row in csv.DictReader(handle)}


@pytest.mark.slow
def test_command_line_over_a_slide_folder(deploy_sdk: None, survival_bundle: Path, tmp_path: Path) -> None:
    slides = _slide_folder(survival_bundle, tmp_path / "slides", broken=True)
    omics = survival_bundle / "demo_data" / "omics.csv"
    out = tmp_path / "out"
    args = ["--bundle", str(survival_bundle), "--input", str(slides), "--output", str(out), "--omics", str(omics)]
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
    assert statuses == {"BROKEN": "failed", **dict.fromkeys(GOOD, "done")}
    assert str(slides / "BROKEN.tif") in rows["BROKEN"]["reason"]
    reference = BundleRunner(survival_bundle, tmp_path / "reference", omics=omics)
    for case_id in GOOD:
        prediction = json.loads(Path(rows[case_id]["prediction_json"]).read_text())
        assert prediction["case_id"] == case_id
        assert all(cv2.imread(slide["heatmap"]) is not None for slide in prediction["slides"])
        expected = reference(PatientCase(case_id, (slides / f"{case_id}.tif",)))
        assert float(rows[case_id]["risk"]) == pytest.approx(expected.risk, rel=1e-6)


@pytest.mark.slow
def test_all_done_exits_zero(deploy_sdk: None, survival_bundle: Path, tmp_path: Path) -> None:
    app = importlib.import_module("app")
    slides = _slide_folder(survival_bundle, tmp_path / "slides", broken=False)
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

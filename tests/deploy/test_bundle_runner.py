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

"""The deploy app's bundle runner without the SDK: which config ids it overrides, that patient values are never
evaluated as config text, that a failure names its innermost cause and stays with its patient, and (on a trained
survival bundle) that its prediction equals the bundle's own inference run for the same patient."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bundle_runner import BundleRunner
from monai.bundle import ConfigParser
from slide_cases import PatientCase, plan_cases

from tests.bundles.conftest import BUNDLES, TINY

FIXED_IDS = {"bundle_root", "output_dir", "case_id", "slide_paths"}
OPTIONAL_IDS = {"slide_mpp", "omics", "clinical", "text"}


def _fake_bundle(root: Path, config: dict | None = None, source: str | None = None) -> Path:
    """A bundle folder with an inference config (a real bundle's, or ``config``) and a placeholder weights file."""
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "models" / "model.pt").write_bytes(b"")
    if source is not None:
        shutil.copy(BUNDLES / source / "configs" / "inference.json", root / "configs" / "inference.json")
    else:
        (root / "configs" / "inference.json").write_text(json.dumps(config))
    return root


# the config sees the patient's values and returns them as its "prediction" (a JSON text)
ECHO = {
    "imports": ["$import json"],
    "bundle_root": ".",
    "output_dir": "out",
    "case_id": "demo",
    "slide_paths": [],
    "clinical": {"age": 50},
    "text": None,
    "initialize": [],
    "inference": ["$dict(prediction=json.dumps([@case_id, @slide_paths, @clinical, @text]))"],
}


@pytest.mark.parametrize("bundle", sorted(TINY))
def test_overrides_replace_demo_defaults(tmp_path: Path, bundle: str) -> None:
    root = _fake_bundle(tmp_path / bundle, source=bundle)
    config = json.loads((root / "configs" / "inference.json").read_text())
    runner = BundleRunner(root, tmp_path / "out")
    values = runner.overrides(PatientCase("P 1", (tmp_path / "a.svs",)))
    assert set(values) == FIXED_IDS | (OPTIONAL_IDS & set(config))
    assert values["bundle_root"] == str(root.resolve()) and values["output_dir"] == str((tmp_path / "out").resolve())
    assert values["slide_paths"] == [str(tmp_path / "a.svs")] and values["case_id"] == "P 1"
    # what the deployment does not give is missing, never the config's demo values
    assert all(values[key] is None for key in OPTIONAL_IDS & set(config))


def test_omics_row_or_missing(tmp_path: Path) -> None:
    root = _fake_bundle(tmp_path / "b", source="pathology_survival_multimodal")
    pd.DataFrame({"case_id": ["P1"], "TP53_rnaseq": [1.0]}).to_csv(tmp_path / "omics.csv", index=False)
    runner = BundleRunner(root, tmp_path / "out", omics=tmp_path / "omics.csv")
    assert runner.overrides(PatientCase("P1", ()))["omics"] == str((tmp_path / "omics.csv").resolve())
    assert runner.overrides(PatientCase("P2", ()))["omics"] is None


def test_values_are_not_evaluated(tmp_path: Path) -> None:
    runner = BundleRunner(_fake_bundle(tmp_path / "b", ECHO), tmp_path / "out")
    case = PatientCase("$1 + 1", (Path("@case_id"),), clinical={"sex": "%inference"}, text=("$__import__('os')",))
    result = runner(case)
    assert result.status == "done", result.reason
    assert json.loads(result.prediction) == ["$1 + 1", ["@case_id"], {"sex": "%inference"}, ["$__import__('os')"]]


def test_failure_names_the_innermost_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = {**ECHO, "inference": ["$dict(risk=int(@case_id))"]}
    runner = BundleRunner(_fake_bundle(tmp_path / "b", config), tmp_path / "out")
    with caplog.at_level(logging.WARNING):
        bad, good = runner(PatientCase("P-x", ())), runner(PatientCase("12", ()))
    assert bad.status == "failed" and bad.reason.startswith("ValueError: invalid literal for int()")
    assert "P-x" in caplog.text
    assert (good.status, good.risk) == ("done", 12)  # the next patient is not affected
    skipped = runner(PatientCase("P-y", (), problem="slide file y.svs not found"))
    assert (skipped.status, skipped.reason) == ("failed", "slide file y.svs not found")


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda root: (root / "configs" / "inference.json").unlink(), FileNotFoundError, "bundle folder"),
        (lambda root: (root / "models" / "model.pt").unlink(), FileNotFoundError, "no trained weights"),
        (
            lambda root: (root / "configs" / "inference.json").write_text(json.dumps({"bundle_root": "."})),
            ValueError,
            "lacks",
        ),
    ],
)
def test_ill_arg(tmp_path: Path, change, error: type[Exception], match: str) -> None:
    root = _fake_bundle(tmp_path / "b", ECHO)
    change(root)
    with pytest.raises(error, match=match):
        BundleRunner(root, tmp_path / "out")


@pytest.mark.parametrize(("table", "match"), [(None, "omics table not found"), ({"id": ["P1"]}, "case_id column")])
def test_omics_ill_arg(tmp_path: Path, table: dict | None, match: str) -> None:
    if table is not None:
        pd.DataFrame(table).to_csv(tmp_path / "omics.csv", index=False)
    with pytest.raises((FileNotFoundError, ValueError), match=match):
        BundleRunner(_fake_bundle(tmp_path / "b", ECHO), tmp_path / "out", omics=tmp_path / "omics.csv")


def _bundle_own_prediction(bundle: Path, out: Path) -> dict:
    """The bundle's inference config run as ``monai.bundle run inference`` does: its defaults, patient DEMO-000."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update({"bundle_root": str(bundle), "output_dir": str(out)})
    parser.get_parsed_content("initialize")
    return parser.get_parsed_content("inference")[0]


@pytest.mark.slow
def test_matches_bundle_inference_and_isolates_failures(survival_bundle: Path, tmp_path: Path) -> None:
    data = survival_bundle / "demo_data"
    reference = _bundle_own_prediction(survival_bundle, tmp_path / "reference")
    manifest = pd.read_csv(data / "manifest.csv")
    chosen = manifest[manifest["case_id"].isin(["DEMO-000", "DEMO-003"])].copy()
    chosen["slide_path"] = [str(data / path) for path in chosen["slide_path"]]
    broken = tmp_path / "BROKEN-1.tif"
    broken.write_bytes((data / chosen["slide_path"].iloc[0]).read_bytes()[:4096])  # a truncated copy
    rows = pd.concat([chosen, pd.DataFrame({"case_id": ["BROKEN"], "slide_path": [str(broken)]})])
    rows.to_csv(tmp_path / "manifest.csv", index=False)
    runner = BundleRunner(survival_bundle, tmp_path / "out", omics=data / "omics.csv")
    results = {case.case_id: runner(case) for case in plan_cases(tmp_path, tmp_path / "manifest.csv")}
    assert {case_id: result.status for case_id, result in results.items()} == {
        "DEMO-000": "done",
        "DEMO-003": "done",
        "BROKEN": "failed",
    }
    assert str(broken) in results["BROKEN"].reason
    ours = json.loads(Path(results["DEMO-000"].prediction_json).read_text())
    assert ours["modalities_used"] == reference["modalities_used"] == ["wsi", "omics", "clinical"]
    assert results["DEMO-000"].risk == pytest.approx(reference["risk"], rel=1e-6)
    np.testing.assert_allclose(ours["survival_curve"]["survival"], reference["survival_curve"]["survival"], 1e-6)
    assert [s["n_patches"] for s in ours["slides"]] == [s["n_patches"] for s in reference["slides"]]
    assert all(Path(s["heatmap"]).is_file() for s in ours["slides"])
    no_omics = json.loads(Path(results["DEMO-003"].prediction_json).read_text())  # no row in the demo table
    assert no_omics["modalities_missing"] == ["omics"]

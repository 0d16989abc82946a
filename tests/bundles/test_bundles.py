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

"""The bundles end to end as a user runs them: training (demo cohort built on the fly), evaluating, inference,
``ckpt_export`` (TorchScript equal to eager) and ``verify_metadata`` against the model-zoo schema."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from lifelines.utils import concordance_index as lifelines_concordance
from monai.bundle import ConfigParser

from monai_ext.data.collate import collate_multimodal
from monai_ext.engines.bundle_data import BundleData, load_spec
from tests.bundles.conftest import BUNDLES, REPO, TINY, run_bundle, run_module, train_bundle

NAMES = sorted(TINY)
SCHEMA = REPO / "tests" / "bundles" / "meta_schema.json"


@pytest.fixture
def bundle(request: pytest.FixtureRequest, trained_bundles: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The root of the trained copy of the bundle named by the test's parameter."""
    return train_bundle(request.param, trained_bundles, tmp_path_factory)


def _network(root: Path) -> torch.nn.Module:
    """The bundle's inference network with the trained weights, in eval mode."""
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    network = parser.get_parsed_content("network_def")
    state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    network.load_state_dict(state)
    return network.eval()


def _test_data(root: Path) -> BundleData:
    """The bundle's held-out patients, prepared with the preprocessing training saved (evaluate mode)."""
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / "train.json"), str(root / "configs" / "evaluate.json")])
    parser["bundle_root"] = str(root)
    return parser.get_parsed_content("data")


@pytest.mark.slow
@pytest.mark.parametrize("bundle", NAMES, indirect=True)
def test_training_writes_model_and_leak_free_split(bundle: Path) -> None:
    spec = load_spec(bundle / "models")
    parts = {name: set(ids) for name, ids in spec["split"].items()}
    assert not (parts["train"] & parts["val"] or parts["train"] & parts["test"] or parts["val"] & parts["test"])
    manifest = pd.read_csv(bundle / "demo_data" / "manifest.csv")
    assert set().union(*parts.values()) == set(manifest["case_id"])  # every demo patient in exactly one part
    assert (bundle / "models" / "model.pt").is_file()
    assert list((bundle / "models").glob("resume_checkpoint_epoch=2.pt"))  # the last epoch's resume checkpoint
    state = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(value).all() for value in state.values() if value.is_floating_point())


@pytest.mark.slow
@pytest.mark.parametrize("bundle", NAMES, indirect=True)
def test_evaluating_reports_test_patients(bundle: Path) -> None:
    run_bundle("run", "evaluating", ["train.json", "evaluate.json"], bundle)
    metrics = json.loads((bundle / "eval" / "metrics.json").read_text())
    table = pd.read_csv(bundle / "eval" / "predictions.csv")
    spec = load_spec(bundle / "models")
    assert sorted(table["case_id"]) == sorted(spec["split"]["test"])
    if spec["task"] == "survival":
        # lifelines ranks predicted survival times: the negated risk
        expected = lifelines_concordance(table["time"], -table["risk"], table["event"])
        assert metrics["c_index"] == pytest.approx(expected, abs=1e-9)
        pictures = ["kaplan_meier.png"]
    else:
        assert metrics["accuracy"] == pytest.approx(float((table["pred"] == table["label"]).mean()))
        pictures = ["roc.png", "confusion_matrix.png"]
    for name in pictures:
        assert cv2.imread(str(bundle / "eval" / name)) is not None


@pytest.mark.slow
@pytest.mark.parametrize("bundle", NAMES, indirect=True)
def test_inference_from_raw_slides(bundle: Path) -> None:
    run_bundle("run", "inference", ["inference.json"], bundle)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    case_id = parser["case_id"]
    out = bundle / "eval" / "inference" / case_id
    prediction = json.loads((out / "prediction.json").read_text())
    slides = pd.read_csv(bundle / "demo_data" / "manifest.csv").query("case_id == @case_id")
    assert [Path(s["slide_path"]).name for s in prediction["slides"]] == sorted(
        Path(p).name for p in slides["slide_path"]
    )
    for slide in prediction["slides"]:
        assert slide["n_patches"] > 0
        assert cv2.imread(slide["heatmap"]) is not None
    if "survival_curve" in prediction:
        survival = np.asarray(prediction["survival_curve"]["survival"])
        hazards = np.asarray(prediction["survival_curve"]["hazards"])
        np.testing.assert_allclose(survival, np.cumprod(1.0 - hazards), rtol=1e-5)
        assert prediction["risk"] == pytest.approx(-survival.sum(), rel=1e-5)
    else:
        assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert prediction["prediction"] == max(prediction["probabilities"], key=prediction["probabilities"].get)


@pytest.mark.slow
@pytest.mark.parametrize("bundle", NAMES, indirect=True)
def test_torchscript_export_matches_eager(bundle: Path) -> None:
    models = bundle / "models"
    run_module(
        [
            "-m",
            "monai.bundle",
            "ckpt_export",
            "network_def",
            "--filepath",
            "models/model.ts",
            "--ckpt_file",
            "models/model.pt",
            "--meta_file",
            "configs/metadata.json",
            "--config_file",
            "configs/inference.json",
        ],
        cwd=bundle,
    )
    exported = torch.jit.load(str(models / "model.ts"))
    network = _network(bundle)
    data = _test_data(bundle).test
    checked = 0
    for index in range(len(data)):
        batch = collate_multimodal([data[index]])
        inputs = {key: value for key, value in batch.items() if isinstance(value, torch.Tensor) and key in _INPUTS}
        variants = [inputs]
        optional = [name for name in ("omics", "clinical", "text") if name in inputs]
        if optional:  # the same patient with one modality missing, both as an absent key and as a False mask
            dropped = optional[0]
            variants.append({k: v for k, v in inputs.items() if k not in (dropped, f"{dropped}_mask")})
            variants.append({**inputs, f"{dropped}_mask": torch.zeros_like(inputs[f"{dropped}_mask"])})
        for variant in variants:
            with torch.no_grad():
                eager, scripted = network(variant), exported(variant)
            for key, value in scripted.items():
                torch.testing.assert_close(value, eager[key], rtol=1e-4, atol=1e-5)
            checked += 1
    assert checked >= 2 * len(data)


_INPUTS = (
    "wsi",
    "wsi_mask",
    "wsi_slide_index",
    "omics",
    "omics_mask",
    "clinical",
    "clinical_mask",
    "text",
    "text_mask",
)


@pytest.mark.parametrize("name", NAMES)
def test_metadata_verifies_against_model_zoo_schema(name: str, tmp_path: Path) -> None:
    schema = shutil.copy(SCHEMA, tmp_path / "schema.json")
    meta = BUNDLES / name / "configs" / "metadata.json"
    run_module(["-m", "monai.bundle", "verify_metadata", "--meta_file", str(meta), "--filepath", str(schema)], tmp_path)
    broken = json.loads(meta.read_text())
    del broken["network_data_format"]["inputs"]["wsi"]["num_channels"]
    broken_path = tmp_path / "metadata.json"
    broken_path.write_text(json.dumps(broken))
    from monai.bundle import verify_metadata

    with pytest.raises(ValueError, match="num_channels"):
        verify_metadata(meta_file=str(broken_path), filepath=str(schema))


@pytest.mark.slow
@pytest.mark.parametrize("bundle", NAMES, indirect=True)
def test_metadata_describes_the_trained_inputs(bundle: Path) -> None:
    meta = json.loads((BUNDLES / bundle.name / "configs" / "metadata.json").read_text())
    spec = load_spec(bundle / "models")
    inputs = meta["network_data_format"]["inputs"]
    assert sorted(inputs) == sorted(spec["modalities"])
    for modality in spec["modalities"]:
        if modality != "clinical":  # its width counts the categories seen in training: smaller on the tiny demo
            assert inputs[modality]["num_channels"] == spec["input_dims"][modality], modality


@pytest.mark.slow
@pytest.mark.parametrize("bundle", ["pathology_survival_multimodal"], indirect=True)
def test_inference_gene_list_mismatch_policy(bundle: Path, tmp_path: Path) -> None:
    """A genomics row without some training genes: refused by default (naming the file and the genes); with
    ``missing_genes=mean`` the genes get their training mean, the report lands in ``prediction.json``, and the
    prediction equals the one for a row that holds exactly those means."""
    from monai_ext.data.omics import GeneScaler

    scaler = GeneScaler.load(bundle / "models" / "gene_scaler.json")
    omics = pd.read_csv(bundle / "demo_data" / "omics.csv")
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    case_id = parser["case_id"]
    row = omics[omics["case_id"] == case_id]
    dropped = scaler.genes[:3]
    partial = tmp_path / "partial.csv"
    row.drop(columns=dropped).iloc[:, ::-1].to_csv(partial, index=False)  # columns reversed: matched by name
    at_mean = row.copy()
    for gene in dropped:
        at_mean[gene] = scaler.mean[scaler.genes.index(gene)]
    means = tmp_path / "means.csv"
    at_mean.to_csv(means, index=False)

    def predict(policy: str, table: Path) -> dict:
        parser["missing_genes"] = policy
        parser["output_dir"] = str(tmp_path / policy / table.stem)
        parser.parse(reset=True)
        parser.get_parsed_content("initialize")  # loads the trained weights, as `monai.bundle run` does
        predictor = parser.get_parsed_content("predictor")
        slides = parser.get_parsed_content("slide_paths")
        return predictor(slides, case_id=case_id, omics=str(table), clinical={"age": 50, "sex": "F"})

    with pytest.raises(ValueError, match=r"partial\.csv") as refused:
        predict("error", partial)
    assert dropped[0] in str(refused.value)
    filled = predict("mean", partial)
    report = filled["omics_genes"]
    assert report["policy"] == "mean" and report["missing"] == dropped
    extra = [column for column in row.columns if column != "case_id" and column not in scaler.genes]  # _cnv, _mut
    assert report["n_found"] == len(scaler.genes) - 3 and report["n_extra_ignored"] == len(extra) > 0
    reference = predict("error", means)
    assert reference["omics_genes"]["missing"] == []
    assert filled["risk"] == pytest.approx(reference["risk"], rel=1e-6)
    assert filled["modalities_used"] == reference["modalities_used"] == ["wsi", "omics", "clinical"]

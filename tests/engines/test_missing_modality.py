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

"""Missing-modality evaluation on a tiny synthetic cohort: a removed modality looks like a missing one, an oracle
that reads only omics loses exactly what a hand computation says, default removals follow the model, and staging
evaluation applies the pN rule to the predicted slide stages without ever handing slide labels to the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from monai_ext.data.cohort import Cohort
from monai_ext.data.dataset import PN_STAGES, SLIDE_STAGES, MultimodalDataset
from monai_ext.data.omics import select_modalities
from monai_ext.engines.compare import WithSlideLabels
from monai_ext.engines.missing_modality import (
    WithoutModality,
    evaluate_model,
    missing_modality_table,
    staging_predictions,
)
from monai_ext.engines.missing_modality import _default_removals as default_removals
from monai_ext.networks.hierarchical import SlideToPatientModel, pn_stage_from_slides
from monai_ext.networks.multimodal import MultimodalModel
from monai_ext.wsi.store import write_features

WSI_DIM = 8
# real Hallmark symbols, so that pathway tokens find their genes
GENES = ("JUNB", "CXCL2", "ATF3", "TNFAIP3", "IER3", "PLAUR", "JAG1", "MARCKS", "PDLIM5", "MYH9")


def write_cohort(root: Path, n_patients: int = 16, seed: int = 0) -> Path:
    """A demo-like cohort of synthetic feature files: 1-3 lymph-node slides per patient whose first feature
    grows with the slide stage, omics whose first gene gives the subtype (patients ``i % 6 == 5`` have none),
    one note per slide (``i % 6 == 4`` have none), age, sex and survival. Returns the manifest path."""
    rng = np.random.default_rng(seed)
    rows, omics = [], {}
    for i in range(n_patients):
        case_id, label = f"P{i:02d}", i % 2
        stages = [str(s) for s in rng.choice(SLIDE_STAGES, size=1 + i % 3, p=[0.5, 0.1, 0.2, 0.2])]
        age = float(rng.integers(40, 80))
        months, event = float(rng.uniform(5, 100)), int(rng.random() < 0.8)
        for s, stage in enumerate(stages):
            features = rng.normal(size=(int(rng.integers(4, 9)), WSI_DIM)).astype(np.float32)
            features[:, 0] += 2.0 * SLIDE_STAGES.index(stage)
            slide_id = f"{case_id}-N{s}"
            path = root / "features" / f"{slide_id}.h5"
            coords = np.zeros((len(features), 2))
            write_features(path, features, coords, slide_id=slide_id, encoder="e@1", patch_size=64, mpp=0.5, level=0)
            note = f"node {s}: {'discohesive' if label else 'cohesive'} tumor cells" if i % 6 != 4 else ""
            rows.append(
                {
                    "case_id": case_id,
                    "slide_id": slide_id,
                    "features_path": f"features/{slide_id}.h5",
                    "label": label,
                    "survival_months": months,
                    "event": event,
                    "slide_stage": stage,
                    "patient_stage": pn_stage_from_slides(stages),
                    "text": note,
                    "age": age,
                    "sex": "F" if i % 3 else "M",
                }
            )
        if i % 6 != 5:
            values = rng.normal(size=len(GENES))
            values[0] = (1.0 if label else -1.0) + 0.1 * values[0]
            omics[case_id] = {f"{gene}_rnaseq": float(v) for gene, v in zip(GENES, values, strict=True)}
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    pd.DataFrame.from_dict(omics, orient="index").rename_axis("case_id").to_csv(root / "omics.csv")
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def cohort_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic_cohort")
    write_cohort(root)
    return root


def load(root: Path, task: str) -> Cohort:
    labels = PN_STAGES if task == "staging" else None
    return Cohort.from_csv(
        root / "manifest.csv", task=task, clinical_columns=("age",), allow_columns=("sex",), label_values=labels
    )


def dataset(root: Path, task: str, modalities: tuple[str, ...], **kwargs: Any) -> MultimodalDataset:
    cohort = load(root, task)
    omics = select_modalities(pd.read_csv(root / "omics.csv").set_index("case_id"), ("_rnaseq",))
    text = {case: np.eye(3, 5, k=int(case[1:]) % 3, dtype=np.float32) for case in cohort.patients}
    text["P04"] = np.zeros((0, 5), dtype=np.float32)
    clinical = cohort.patient_table()[["age"]] / 100.0
    return MultimodalDataset(
        cohort, cohort.patients, modalities=modalities, omics=omics, clinical=clinical, text=text, **kwargs
    )


def test_a_removed_modality_looks_like_a_missing_one(cohort_root: Path) -> None:
    data = dataset(cohort_root, "classification", ("wsi", "omics", "clinical", "text"))
    missing_omics, missing_text = data[data.case_ids.index("P05")], data[data.case_ids.index("P04")]
    assert not missing_omics["omics_mask"] and not missing_text["text_mask"].any()
    for name, reference in (("omics", missing_omics), ("text", missing_text)):
        removed = WithoutModality(data, name)[0]
        original = data[0]
        assert torch.equal(removed[name], reference[name]) and torch.equal(
            removed[f"{name}_mask"], reference[f"{name}_mask"]
        )
        for key in original:
            if key not in (name, f"{name}_mask"):
                assert key in removed and (key == "case_id" or torch.equal(removed[key], original[key]))
    removed = WithoutModality(data, "clinical")[0]
    assert not removed["clinical_mask"] and not removed["clinical"].any()
    without_wsi = WithoutModality(data, "wsi")[0]
    assert "wsi" not in without_wsi and "wsi_slide_index" not in without_wsi and "omics" in without_wsi
    assert len(WithoutModality(data, "wsi")) == len(data)


class OmicsOracle(nn.Module):
    """Reads the subtype from the first gene when omics are present; 50/50 otherwise. Declares wsi + omics."""

    modalities = ("wsi", "omics")

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        present = batch["omics_mask"]  # the dataset always carries omics here (masked when absent)
        logit = torch.where(present, 10.0 * batch["omics"][:, 0], torch.zeros_like(batch["omics"][:, 0]))
        probs = torch.stack([torch.sigmoid(-logit), torch.sigmoid(logit)], dim=1)
        return {"logits": probs.log(), "probs": probs}


def test_drop_of_an_omics_oracle(cohort_root: Path) -> None:
    """All present: perfect on patients with omics, 50/50 on the two without; omics removed: 50/50 everywhere."""
    data = dataset(cohort_root, "classification", ("wsi", "omics"))
    table = missing_modality_table(OmicsOracle(), data, task="classification")
    assert table["removed"].tolist() == ["none", "wsi", "omics"]
    rows = table.set_index("removed")
    labels = np.array([int(case[1:]) % 2 for case in data.case_ids])
    has_omics = np.array([int(case[1:]) % 6 != 5 for case in data.case_ids])
    # hand computation: ties (0.5) predict class 0; AUC counts tied pairs as 1/2
    pred = np.where(has_omics, labels, 0)
    recall = [np.mean(pred[labels == c] == c) for c in (0, 1)]
    assert rows.loc["none", "balanced_accuracy"] == pytest.approx(np.mean(recall))
    positives, negatives = has_omics & (labels == 1), has_omics & (labels == 0)
    n_pos, n_neg = int((labels == 1).sum()), int((labels == 0).sum())
    tied_pos, tied_neg = n_pos - positives.sum(), n_neg - negatives.sum()
    # pairs: known pos > every tied/known neg; tied pos > known neg; tied pos vs tied neg: 1/2
    wins = positives.sum() * n_neg + tied_pos * negatives.sum() + 0.5 * tied_pos * tied_neg
    assert rows.loc["none", "auc"] == pytest.approx(wins / (n_pos * n_neg))
    assert rows.loc["omics", "auc"] == pytest.approx(0.5) and rows.loc["omics", "balanced_accuracy"] == 0.5
    assert rows.loc["omics", "drop_auc"] == pytest.approx(rows.loc["none", "auc"] - 0.5)
    assert rows.loc["wsi", "drop_auc"] == 0 and rows.loc["none", "drop_auc"] == 0


def test_default_removals_follow_the_model(cohort_root: Path) -> None:
    data = dataset(cohort_root, "classification", ("wsi", "omics", "clinical"))
    kwargs = {"wsi_dim": WSI_DIM, "omics_dim": len(GENES), "clinical_dim": 1, "dim": 8}
    assert default_removals(MultimodalModel(modalities=("wsi", "omics"), **kwargs), data) == ("omics",)
    free = MultimodalModel(modalities=("wsi", "omics", "clinical"), require_wsi=False, **kwargs)
    assert default_removals(free, data) == ("wsi", "omics", "clinical")
    assert default_removals(MultimodalModel(modalities=("omics",), **kwargs), data) == ()
    slide = MultimodalModel(modalities=("wsi", "clinical"), task="classification", n_classes=4, **kwargs)
    assert default_removals(SlideToPatientModel(slide_model=slide), data) == ("clinical",)
    table = missing_modality_table(free.eval(), data, task="classification")
    assert table["removed"].tolist() == ["none", "wsi", "omics", "clinical"]
    assert np.isfinite(table["auc"]).all()


class NoSlideLabels(nn.Module):
    """Fails when the wrapped model is handed slide labels."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.slide_model = getattr(model, "slide_model", None)
        self.modalities = getattr(model, "modalities", None) or model.slide_model.modalities

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        assert "slide_label" not in batch, "slide labels reached the model at evaluation"
        return self.model(batch)


def test_staging_predictions_and_report(cohort_root: Path) -> None:
    data = WithSlideLabels(dataset(cohort_root, "staging", ("wsi", "clinical")), width=3)
    torch.manual_seed(0)
    slide = MultimodalModel(
        modalities=("wsi", "clinical"), wsi_dim=WSI_DIM, clinical_dim=1, dim=8, task="classification", n_classes=4
    )
    model = NoSlideLabels(SlideToPatientModel(slide_model=slide, hidden_dim=8)).eval()
    slides, patients = staging_predictions(model, data)
    manifest = pd.read_csv(cohort_root / "manifest.csv")
    assert len(slides) == len(manifest) and len(patients) == manifest["case_id"].nunique()
    expected = [SLIDE_STAGES.index(stage) for stage in manifest.sort_values(["case_id", "slide_id"])["slide_stage"]]
    assert slides.sort_values(["case_id", "slide"])["label"].tolist() == expected
    for case_id, group in slides.groupby("case_id"):
        row = patients.set_index("case_id").loc[case_id]
        assert PN_STAGES[row["rule"]] == pn_stage_from_slides(group.sort_values("slide")["pred"].tolist())
        assert PN_STAGES[row["label"]] == manifest.loc[manifest["case_id"] == case_id, "patient_stage"].iloc[0]
    report = evaluate_model(model, data, task="staging")
    assert report["slide_accuracy"] == pytest.approx(float((slides["label"] == slides["pred"]).mean()))
    assert report["patient_rule_accuracy"] == pytest.approx(float((patients["label"] == patients["rule"]).mean()))
    table = missing_modality_table(model, data, task="staging")
    assert table["removed"].tolist() == ["none", "clinical"]
    flat = NoSlideLabels(MultimodalModel(modalities=("wsi",), wsi_dim=WSI_DIM, dim=8, n_classes=5)).eval()
    assert sorted(evaluate_model(flat, data, task="staging")) == [
        "patient_learned_accuracy",
        "patient_learned_kappa",
        "patient_learned_macro_f1",
    ]


def test_ill_arg(cohort_root: Path) -> None:
    data = dataset(cohort_root, "classification", ("omics",))
    with pytest.raises(ValueError, match="cannot remove 'radiology'"):
        WithoutModality(data, "radiology")
    with pytest.raises(ValueError, match=r"cannot remove \['genes'\]"):
        missing_modality_table(OmicsOracle(), data, task="classification", modalities=["genes"])

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

"""The method fragments of ``configs/methods`` merged onto the bundles' configs.

Fast tests parse each fragment x bundle pair against a tiny fake ``data_spec`` (no demo, no training): the merged
``network_def`` is the method's network (and the bundle's alone is not), one forward and one backward of the
bundle's loss run, the weights it trains load into the network of the merged ``evaluate`` and ``inference``
configs with the same outputs, and it still exports to TorchScript. A slow test trains, evaluates and runs
inference with the staging bundle and ``hmf.json`` on the tiny demo.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from lifelines.utils import concordance_index as lifelines_concordance
from monai.bundle import ConfigParser
from torch.utils.data import Dataset

from monai_ext.data.collate import collate_multimodal
from monai_ext.engines.bundle_data import load_spec
from monai_ext.engines.compare import WithSlideLabels
from monai_ext.engines.config_trust import check_config_targets
from monai_ext.engines.export import example_batch
from monai_ext.networks.fusion import BiCrossFusion, CoAttentionFusion, KroneckerFusion, PathwayCrossFusion
from monai_ext.networks.hierarchical import SLIDE_STAGES
from monai_ext.networks.modaltune_task import ModalTuneTask
from monai_ext.networks.multimodal import MultimodalModel
from monai_ext.networks.omics import SNN, GeneFamilyEncoder, PathwayTokenEncoder
from tests.bundles.conftest import BUNDLES, REPO, TINY, copy_bundle, run_bundle

METHODS = REPO / "configs" / "methods"
STAGING, SUBTYPING, SURVIVAL = (f"pathology_{task}_multimodal" for task in ("staging", "subtyping", "survival"))
GENE_GROUPS = [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9, 10, 11]]  # three gene groups of a 12-gene table
# tiny data specs, as training would write them to models/data_spec.json
SPECS: dict[str, dict[str, Any]] = {
    SURVIVAL: {
        "task": "survival",
        "modalities": ["wsi", "omics", "clinical"],
        "input_dims": {"wsi": 8, "omics": 12, "clinical": 3},
        "n_outputs": 3,
        "pathway_gene_index": GENE_GROUPS,
    },
    SUBTYPING: {
        "task": "classification",
        "modalities": ["wsi", "omics", "clinical", "text"],
        "input_dims": {"wsi": 8, "omics": 12, "clinical": 3, "text": 6},
        "n_outputs": 2,
        "pathway_gene_index": GENE_GROUPS,
    },
    STAGING: {
        "task": "staging",
        "modalities": ["wsi", "clinical", "text"],
        "input_dims": {"wsi": 8, "clinical": 3, "text": 6},
        "n_outputs": 5,
    },
}
N_PROMPTS = 2  # prompts per slide stage in the staging bundle's class_prompts


def _is_modaltune(network: torch.nn.Module) -> bool:
    inner = network.network
    return isinstance(inner, ModalTuneTask) and len(inner.model.adapters) == len(inner.model.encoder.blocks) == 2


def _method_parameters(network: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters that make the method: ModalTune's adapters, else the fusion."""
    if isinstance(network.network, ModalTuneTask):
        return list(network.network.model.adapters.parameters())
    return list(_slide_model(network).fusion.parameters())


def _slide_model(network: torch.nn.Module) -> MultimodalModel:
    """The multimodal model inside a bundle network (the slide model of a slide -> patient network)."""
    inner = network.network
    return inner.slide_model if hasattr(inner, "slide_model") else inner


def _is_pathomic(network: torch.nn.Module) -> bool:
    model = _slide_model(network)
    return isinstance(model.fusion, KroneckerFusion) and isinstance(model.encoders["omics"], SNN)


def _is_mcat(network: torch.nn.Module) -> bool:
    model = _slide_model(network)
    fusion = model.fusion
    return (
        isinstance(fusion, CoAttentionFusion)
        and fusion.query_modality == "omics"
        and isinstance(model.encoders["omics"], GeneFamilyEncoder)
    )


def _is_survpath(network: torch.nn.Module) -> bool:
    model = _slide_model(network)
    return isinstance(model.fusion, PathwayCrossFusion) and isinstance(model.encoders["omics"], PathwayTokenEncoder)


def _is_hmf(network: torch.nn.Module) -> bool:
    fusion = _slide_model(network).fusion
    return (
        isinstance(fusion, BiCrossFusion) and fusion.keep_ratio == 0.5 and fusion.n_prompt_classes == len(SLIDE_STAGES)
    )


def _has_modality_dropout(network: torch.nn.Module) -> bool:
    dropout = _slide_model(network).modality_dropout
    return dropout is not None and dropout.p == 0.25


# fragment x bundle pairs and the property that makes the merged network the method's
CASES: list[tuple[str, str, Callable[[torch.nn.Module], bool]]] = [
    ("pathomic_fusion", SURVIVAL, _is_pathomic),
    ("pathomic_fusion", SUBTYPING, _is_pathomic),
    ("mcat", SURVIVAL, _is_mcat),
    ("mcat", SUBTYPING, _is_mcat),
    ("survpath", SURVIVAL, _is_survpath),
    ("survpath", SUBTYPING, _is_survpath),
    ("hmf", STAGING, _is_hmf),
    ("modality_dropout", SURVIVAL, _has_modality_dropout),
    ("modality_dropout", SUBTYPING, _has_modality_dropout),
    ("modality_dropout_staging", STAGING, _has_modality_dropout),
    ("modaltune", SURVIVAL, _is_modaltune),
    ("modaltune", SUBTYPING, _is_modaltune),
]
IDS = [f"{method}-{bundle.split('_')[1]}" for method, bundle, _ in CASES]
# what a fragment changes in training besides the network
TRAINING_KEYS: dict[str, dict[str, Any]] = {
    "mcat": {"data#pathways": "mcat"},  # MCAT's 6 gene families
    "survpath": {"data#pathways": "hallmarks"},
    "hmf": {
        "train#dataset#_target_": "monai_ext.engines.compare.WithSlideLabels",
        "loss#slide_weight": 1.0,
        "loss#alignment_weight": 1.0,
        "loss#alignment_temperature": 0.07,
    },
}


def _parser(bundle: str, stage: str, method: str | None, root: Path) -> ConfigParser:
    """The bundle's ``train`` / ``evaluate`` / ``inference`` config with the method fragment appended, on the
    bundle's tiny fake data spec, with ``bundle_root`` at ``root``."""
    configs = BUNDLES / bundle / "configs"
    files = {
        "train": ["train.json"],
        "evaluate": ["train.json", "evaluate.json"],
        "inference": ["inference.json"],
    }[stage]
    paths = [str(configs / name) for name in files] + ([str(METHODS / f"{method}.json")] if method else [])
    parser = ConfigParser()
    parser.read_config(paths)
    parser["bundle_root"] = str(root)
    parser["spec"] = SPECS[bundle]
    return parser


def _batch(bundle: str, seed: int = 1) -> dict[str, torch.Tensor]:
    """A two-patient example batch; the staging text is the class prompts (4 stages x ``N_PROMPTS``)."""
    spec = SPECS[bundle]
    batch = example_batch(spec["modalities"], spec["input_dims"], slide_index=bundle == STAGING, seed=seed)
    if bundle == STAGING:
        generator = torch.Generator().manual_seed(seed)
        prompts = torch.randn(len(SLIDE_STAGES) * N_PROMPTS, spec["input_dims"]["text"], generator=generator)
        batch["text"] = prompts.expand(2, -1, -1).clone()
        batch["text_mask"] = torch.ones(2, len(prompts), dtype=torch.bool)
    return batch


def _targets(bundle: str) -> dict[str, torch.Tensor]:
    """Targets of the two patients of :func:`_batch` (survival bins and events, or class / pN labels)."""
    if bundle == SURVIVAL:
        return {"bin": torch.tensor([0, 2]), "event": torch.tensor([1.0, 0.0])}
    return {"label": torch.tensor([1, 0]) if bundle == SUBTYPING else torch.tensor([3, 1])}


@pytest.mark.parametrize("method, bundle, is_method", CASES, ids=IDS)
def test_fragment_builds_the_method_and_trains(method, bundle, is_method, tmp_path):
    merged, alone = _parser(bundle, "train", method, tmp_path), _parser(bundle, "train", None, tmp_path)
    torch.manual_seed(0)
    network = merged.get_parsed_content("network_def")
    assert is_method(network)
    assert not is_method(alone.get_parsed_content("network_def"))  # the bundle alone is not the method
    for key, value in TRAINING_KEYS.get(method, {}).items():
        assert merged[key] == value, key
    network.train()
    batch, targets = _batch(bundle), _targets(bundle)
    if bundle == STAGING:
        batch["slide_label"] = torch.tensor([[0, 3, -1], [2, 1, -1]])  # example_batch: two slides per patient
    loss = merged.get_parsed_content("loss")(network(batch), targets)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in _method_parameters(network) if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(bool(g.abs().sum() > 0) for g in grads)


def test_hmf_loss_adds_slide_stage_and_slide_text_terms(tmp_path):
    """HMF's objective by hand: patient cross-entropy + slide-stage cross-entropy + slide-text InfoNCE (t=0.07)."""
    parser = _parser(STAGING, "train", "hmf", tmp_path)
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def").train()
    slide_label = torch.tensor([[0, 3], [2, -1]])  # the second patient's second slide is unlabelled
    targets = _targets(STAGING)
    pred = network({**_batch(STAGING), "slide_label": slide_label})
    loss = parser.get_parsed_content("loss")(pred, targets)
    known = slide_label >= 0
    slide_logits, similarity = pred["slide_logits"][known], pred["slide_text_similarity"][known]
    expected = (
        F.cross_entropy(pred["logits"], targets["label"])
        + F.cross_entropy(slide_logits, slide_label[known])
        + F.cross_entropy(similarity / 0.07, slide_label[known])
    )
    torch.testing.assert_close(loss, expected)
    without = network(_batch(STAGING))  # no slide labels: the patient term alone
    assert "slide_loss" not in without and "alignment_loss" not in without
    torch.testing.assert_close(
        parser.get_parsed_content("loss")(without, targets), F.cross_entropy(without["logits"], targets["label"])
    )


@pytest.mark.parametrize("method, bundle, is_method", CASES, ids=IDS)
def test_trained_weights_load_for_evaluation_and_inference(method, bundle, is_method, tmp_path):
    torch.manual_seed(0)
    trained = _parser(bundle, "train", method, tmp_path).get_parsed_content("network_def").eval()
    batch = _batch(bundle, seed=2)
    with torch.no_grad():
        expected = trained(batch)
    for stage in ("evaluate", "inference"):
        parser = _parser(bundle, stage, method, tmp_path)
        network = parser.get_parsed_content("network_def")
        assert is_method(network), stage
        network.load_state_dict(trained.state_dict())  # strict: same modules, same shapes
        with torch.no_grad():
            got = network.eval()(batch)
        for key, value in expected.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(got[key], value, msg=f"{stage}: {key}")


@pytest.mark.parametrize("method, bundle, is_method", CASES, ids=IDS)
def test_merged_configs_pass_the_trust_screen(method, bundle, is_method, tmp_path):
    for stage in ("train", "evaluate", "inference"):
        check_config_targets(_parser(bundle, stage, method, tmp_path).get(), source=f"{bundle} {stage} + {method}")


@pytest.mark.parametrize(
    "method, bundle",
    [pytest.param(m, b, id=i) for (m, b, _), i in zip(CASES, IDS, strict=True)],
)
def test_merged_network_exports_to_torchscript(method, bundle, tmp_path):
    torch.manual_seed(0)
    network = _parser(bundle, "inference", method, tmp_path).get_parsed_content("network_def").eval()
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(network), buffer)
    buffer.seek(0)
    exported = torch.jit.load(buffer)
    batch = _batch(bundle, seed=3)
    with torch.no_grad():
        eager, scripted = network(batch), exported(batch)
    assert scripted
    for key, value in scripted.items():
        torch.testing.assert_close(value, eager[key], rtol=1e-5, atol=1e-6, msg=key)


class _FakePart(Dataset):
    """The training part of a staging cohort as :class:`WithSlideLabels` reads it (no feature files)."""

    def __init__(self, slide_table: pd.DataFrame, case_ids: list[str]) -> None:
        self.cohort = SimpleNamespace(slide_table=slide_table)
        self.case_ids = case_ids
        self.modalities = ("wsi",)

    def set_epoch(self, epoch: int) -> None:
        """Nothing to re-sample."""

    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"case_id": self.case_ids[index], "wsi": torch.ones(2, 8), "label": torch.tensor(0)}


def test_hmf_training_data_carry_slide_labels_to_the_network(tmp_path):
    slides = pd.DataFrame(
        {
            "case_id": ["A", "A", "A", "B", "C", "C", "C", "C"],
            "slide_stage": ["negative", "macro", "itc", "micro", "negative", "itc", "negative", "negative"],
        }
    )
    train_part = _FakePart(slides, ["A", "B"])  # C is not a training patient but has the most slides
    parser = _parser(STAGING, "train", "hmf", tmp_path)
    parser["data"] = SimpleNamespace(train=train_part, cohort=train_part.cohort)
    dataset = parser.get_parsed_content("train#dataset")
    assert isinstance(dataset, WithSlideLabels)
    width = int(slides["case_id"].value_counts().max())
    expected = {}
    for case_id in train_part.case_ids:
        stages = [SLIDE_STAGES.index(stage) for stage in slides.loc[slides["case_id"] == case_id, "slide_stage"]]
        expected[case_id] = stages + [-1] * (width - len(stages))
    assert [dataset[index]["slide_label"].tolist() for index in range(len(dataset))] == [expected["A"], expected["B"]]
    batch = collate_multimodal([dataset[0], dataset[1]])
    inputs, targets = parser.get_parsed_content("train#prepare_batch")(batch)
    assert inputs["slide_label"].tolist() == [expected["A"], expected["B"]] and "slide_label" not in targets
    # validation and evaluation read their parts without slide labels: the fragment changes training data only
    assert parser["validate#dataset"] == "$@data.val"
    assert _parser(STAGING, "evaluate", "hmf", tmp_path)["validate#dataset"] == "$@data.test"


@pytest.mark.parametrize(
    "method, bundle, error, match",
    [
        ("hmf", SURVIVAL, KeyError, "slide_model"),  # no slide model in a patient-bag network
        ("modality_dropout_staging", SUBTYPING, KeyError, "slide_model"),
        ("mcat", STAGING, RuntimeError, "SlideToPatientModel.*fusion"),  # the staging network has no omics
        ("modality_dropout", STAGING, RuntimeError, "SlideToPatientModel.*modality_dropout"),  # one level deeper
        ("modaltune", STAGING, RuntimeError, "build_modaltune_task"),  # staging: ValueError, see test_modaltune_task
    ],
)
def test_ill_arg(method, bundle, error, match, tmp_path):
    with pytest.raises(error, match=match):
        _parser(bundle, "train", method, tmp_path).get_parsed_content("network_def")


def _train_evaluate_infer(bundle: str, method: str, tmp_path: Path) -> tuple[Path, ConfigParser, dict, pd.DataFrame]:
    """Run a bundle's training (tiny demo), evaluation and inference with a method fragment. Returns the bundle
    root, the merged inference config, the evaluation metrics and predictions (checked to be the test split)."""
    root = copy_bundle(bundle, tmp_path / bundle)
    fragment = f"{method}.json"
    shutil.copy(METHODS / fragment, root / "configs" / fragment)
    run_bundle("run", "training", ["train.json", fragment], root, *TINY[bundle])
    run_bundle("run", "evaluating", ["train.json", "evaluate.json", fragment], root)
    run_bundle("run", "inference", ["inference.json", fragment], root)
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / "inference.json"), str(root / "configs" / fragment)])
    parser["bundle_root"] = str(root)
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    table = pd.read_csv(root / "eval" / "predictions.csv")
    assert sorted(table["case_id"]) == sorted(load_spec(root / "models")["split"]["test"])
    return root, parser, metrics, table


@pytest.mark.slow
def test_staging_bundle_trains_evaluates_and_infers_with_hmf(tmp_path):
    root, parser, metrics, table = _train_evaluate_infer(STAGING, "hmf", tmp_path)
    state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert "slide_model.fusion.align_slide.weight" in state  # bi-cross fusion with class prompts was trained
    # the slide-text projections get a gradient only through the alignment term, which needs the slide labels:
    # AdamW keeps state for exactly the parameters that received gradients
    names = [name for name, _ in parser.get_parsed_content("network_def").named_parameters()]
    resume = torch.load(next((root / "models").glob("resume_checkpoint_epoch=*.pt")), weights_only=True)
    optimized = {names[index] for index in resume["optimizer"]["state"]}
    assert {"network.slide_model.fusion.align_slide.weight", "network.slide_model.fusion.align_text.weight"} <= (
        optimized
    )
    assert metrics["accuracy"] == pytest.approx(float((table["pred"] == table["label"]).mean()))
    prediction = json.loads((root / "eval" / "inference" / parser["case_id"] / "prediction.json").read_text())
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert np.isfinite(list(prediction["probabilities"].values())).all()


@pytest.mark.slow
def test_survival_bundle_trains_evaluates_and_infers_with_modaltune(tmp_path):
    root, parser, metrics, table = _train_evaluate_infer(SURVIVAL, "modaltune", tmp_path)
    state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert any(key.startswith("model.adapters.1.") for key in state)  # the adapters were trained and saved
    assert {"model.tokenizers.omics.type_embedding", "model.tokenizers.clinical.type_embedding"} <= set(state)
    expected = lifelines_concordance(table["time"], -table["risk"], table["event"])
    assert metrics["c_index"] == pytest.approx(expected, abs=1e-9)
    prediction = json.loads((root / "eval" / "inference" / parser["case_id"] / "prediction.json").read_text())
    assert np.isfinite(prediction["risk"])
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(state)  # strict: the inference config builds the trained ModalTune network
    assert isinstance(network.network, ModalTuneTask)

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

"""Pan-cancer engine on tiny synthetic cohorts (cancer types = cohort-specific batch effects): training lowers the
loss, the frozen encoder stays fixed, a head without labels in its cohort never moves, an unseen cohort is answered
by the shared heads and beats chance on every task, soft targets enter the loss, and bad set-ups are refused."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from monai_ext.data.survival_bins import assign_bins, make_time_bins
from monai_ext.engines.pancancer import PanCancerResult, TaskKeys, evaluate_cohort, run_pancancer, train_pancancer
from monai_ext.networks.modaltune import ModalTuneModel, build_modaltune, class_text_targets

WSI_DIM, OMICS_DIM = 16, 8
TASKS = {"survival": ("survival", 4), "subtype": ("classification", 2), "stage": ("classification", 3)}
TUMOR = np.r_[np.ones(4), np.zeros(WSI_DIM - 4)]  # the direction of tumor patches


def _cohort(seed: int, n: int, effect_seed: int, *, stage_labels: bool = True) -> list[dict[str, Any]]:
    """A synthetic cancer type: a cohort-specific offset of the patch features (orthogonal to the tumor direction),
    subtype in the omics, stage = share of tumor patches, survival hazard rising with stage; 15% miss omics."""
    rng = np.random.default_rng(seed)
    offset = np.random.default_rng(effect_seed).normal(0.0, 0.5, WSI_DIM) * (1.0 - TUMOR)
    samples = []
    for i in range(n):
        subtype, stage, n_patches = i % 2, int(rng.integers(3)), int(rng.integers(6, 13))
        tumor = rng.random(n_patches) < 0.05 + 0.45 * stage
        wsi = rng.normal(size=(n_patches, WSI_DIM)) + offset + 3.0 * tumor[:, None] * TUMOR
        omics = rng.normal(size=OMICS_DIM)
        omics[:3] += 1.5 * (2 * subtype - 1)
        death, censor = rng.exponential(30.0 * np.exp(-1.2 * stage)), rng.uniform(10.0, 80.0)
        samples.append(
            {
                "wsi": torch.tensor(wsi, dtype=torch.float32),
                "omics": torch.tensor(omics, dtype=torch.float32),
                "omics_mask": torch.tensor(bool(rng.random() > 0.15)),
                "subtype": torch.tensor(subtype),
                "stage": torch.tensor(stage if stage_labels else -1),
                "stage_mask": torch.tensor(stage_labels),
                "survival_time": torch.tensor(float(min(death, censor))),
                "survival_event": torch.tensor(float(death <= censor)),
            }
        )
    return samples


def _add_bins(cohorts: list[list[dict[str, Any]]], edges: np.ndarray) -> None:
    for samples in cohorts:
        for sample in samples:
            sample["survival_bin"] = torch.tensor(
                int(assign_bins(np.array([float(sample["survival_time"])]), edges)[0])
            )


def _model(cohorts: list[str], seed: int = 0, **kwargs: Any) -> ModalTuneModel:
    torch.manual_seed(seed)
    options = {"modalities": {"omics": OMICS_DIM}, "dim": 32, "depth": 2, "dropout": 0.25}
    return build_modaltune(wsi_dim=WSI_DIM, tasks=TASKS, cohorts=cohorts, **{**options, **kwargs})


@pytest.fixture(scope="module")
def trained() -> tuple[PanCancerResult, ModalTuneModel, dict[str, torch.Tensor]]:
    train = {"A": _cohort(1, 48, 11), "B": _cohort(2, 48, 12, stage_labels=False), "C": _cohort(3, 48, 13)}
    evaluate = {"A": _cohort(4, 48, 11), "D": _cohort(5, 96, 14)}  # D: a cancer type never seen in training
    times = np.array([float(s["survival_time"]) for samples in train.values() for s in samples])
    events = np.array([float(s["survival_event"]) for samples in train.values() for s in samples])
    _add_bins([*train.values(), *evaluate.values()], make_time_bins(times, events, 4))  # bins from training only
    model = _model(list(train))
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    result = run_pancancer(model, train, evaluate, epochs=8, batch_size=8, lr=2e-3, weight_decay=0.05)
    return result, model, initial


def test_training_lowers_the_loss_and_moves_only_what_it_should(trained: tuple) -> None:
    result, model, initial = trained
    first, last = result.history[0], result.history[-1]
    assert last["total"] < 0.7 * first["total"]
    assert {"survival", "subtype", "stage", "shared/stage"} <= set(last)
    state = model.state_dict()
    for key in state:
        if key.startswith("encoder."):
            assert torch.equal(state[key], initial[key]), f"frozen encoder weight {key} changed"
    assert all(bool((adapter.gate != 0).any()) for adapter in model.adapters.values())
    # cohort B has no stage labels: its stage head never got a gradient, so it is exactly as initialised
    for key in state:
        if key.startswith("heads.cohort_heads.B.stage."):
            assert torch.equal(state[key], initial[key]), key
        if key.startswith("heads.cohort_heads.A.stage.") and key.endswith("weight"):
            assert not torch.equal(state[key], initial[key]), key


def test_unseen_cohort_uses_shared_heads_and_beats_chance(trained: tuple) -> None:
    result, _, _ = trained
    assert result.unseen == ["D"]
    assert result.metrics["A"]["heads"] == "A" and result.metrics["D"]["heads"] == "shared"
    unseen = result.metrics["D"]
    assert unseen["n"] == 96
    assert unseen["subtype/balanced_accuracy"] > 0.75  # chance 0.5
    assert unseen["stage/balanced_accuracy"] > 0.5  # chance 1/3
    assert unseen["survival/c_index"] > 0.6  # chance 0.5


def test_evaluation_matches_a_recomputation_with_the_shared_heads(trained: tuple) -> None:
    result, model, _ = trained
    samples = _cohort(5, 96, 14)
    metrics = evaluate_cohort(model, samples, "D")
    assert metrics["subtype/accuracy"] == pytest.approx(result.metrics["D"]["subtype/accuracy"])
    model.eval()
    with torch.no_grad():
        correct = 0
        for sample in samples:
            batch = {key: value[None] for key, value in sample.items()}  # no cohort key: shared heads
            logits = model(batch)["tasks"]["subtype"]["logits"]
            correct += int(int(logits.argmax()) == int(sample["subtype"]))
    assert metrics["subtype/accuracy"] == pytest.approx(correct / len(samples))
    cohort_b = evaluate_cohort(model, _cohort(6, 8, 12, stage_labels=False), "B")
    assert cohort_b["heads"] == "B" and not any(key.startswith("stage/") for key in cohort_b)


def test_soft_targets_enter_the_loss() -> None:
    samples = _cohort(7, 16, 11)
    _add_bins([samples], np.array([0.0, 5.0, 15.0, 40.0, np.inf]))
    class_text = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    for sample in samples:
        slide_embedding = sample["omics"][None]  # stands in for a text-aligned slide embedding
        sample["subtype_soft"] = class_text_targets(slide_embedding, class_text, temperature=0.5)[0]
    history = train_pancancer(_model(["A"]), {"A": samples}, epochs=1, batch_size=8)
    assert history[0]["subtype_soft"] > 0 and "shared/subtype_soft" in history[0]


def test_task_keys_renames_targets() -> None:
    dataset = TaskKeys([{"wsi": torch.zeros(2, 3), "label": torch.tensor(1)}], {"label": "subtype"})
    assert len(dataset) == 1 and set(dataset[0]) == {"wsi", "subtype"}


def test_ill_arg() -> None:
    samples = _cohort(8, 4, 11)
    with pytest.raises(ValueError, match=r"\['Z'\] have no heads"):
        train_pancancer(_model(["A"]), {"Z": samples})
    with pytest.raises(ValueError, match="at least one"):
        train_pancancer(_model(["A"]), {})
    with pytest.raises(ValueError, match="no shared heads"):
        run_pancancer(_model(["A"], shared_heads=False), {"A": samples}, {"D": samples})

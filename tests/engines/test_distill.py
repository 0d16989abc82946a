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

"""Teacher -> student distillation engine: the student only ever sees patch features, the losses are the
documented sums of their terms, distillation pulls the student towards the teacher, and one fold runs end to end
on a small demo cohort."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from monai_ext.data.collate import collate_multimodal
from monai_ext.engines.crossval import fold_metrics
from monai_ext.engines.distill import (
    DistillSettings,
    TeacherBank,
    build_student,
    build_teacher,
    distillation_loss,
    modality_stack,
    run_teacher_student,
    teacher_bank,
    teacher_loss,
    train_with_loss,
    wsi_inputs,
)
from monai_ext.engines.predict import predict
from monai_ext.engines.task_loss import TaskLoss
from monai_ext.losses.distillation import ContrastiveDistillationLoss, LogitKDLoss, gradient_agreement_weights
from monai_ext.losses.lowrank import LowRankLoss
from tests.engines.conftest import RANDOM_FEATURE_DIM

WSI_DIM = RANDOM_FEATURE_DIM  # the width of the shared cohort_dir fixture
DIMS = {"wsi": WSI_DIM, "omics": 6, "clinical": 3}


def _settings(**kwargs: Any) -> DistillSettings:
    return DistillSettings(**{"task": "classification", "dim": 16, "dropout": 0.0, "proj_dim": 8, **kwargs})


def _samples(n: int, seed: int, with_other_modalities: bool = True) -> list[dict[str, Any]]:
    """Per-patient samples: random bags whose mean patch carries the label, plus omics and clinical vectors."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        label = i % 2
        bag = rng.normal(size=(int(rng.integers(3, 7)), WSI_DIM)).astype(np.float32)
        bag[:, 0] += 1.5 * (2 * label - 1)
        sample = {"case_id": f"P{i:03d}", "wsi": torch.from_numpy(bag), "label": torch.tensor(label)}
        if with_other_modalities:
            sample["omics"] = torch.randn(DIMS["omics"])
            sample["omics_mask"] = torch.tensor(True)
            sample["clinical"] = torch.randn(DIMS["clinical"])
            sample["clinical_mask"] = torch.tensor(True)
        samples.append(sample)
    return samples


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return collate_multimodal(samples)


def test_student_is_built_for_slides_only() -> None:
    student = build_student(_settings(), WSI_DIM, 2)
    assert student.modalities == ("wsi",)
    assert set(student.encoders) == {"wsi"}
    assert wsi_inputs({"wsi": 1, "wsi_mask": 2, "omics": 3, "text": 4, "label": 5}) == {"wsi": 1, "wsi_mask": 2}


@pytest.mark.parametrize("with_teacher", [False, True])
def test_student_forward_receives_no_non_wsi_input(with_teacher: bool) -> None:
    torch.manual_seed(0)
    student = build_student(_settings(), WSI_DIM, 2).eval()
    seen: list[set[str]] = []
    student.register_forward_pre_hook(lambda module, args: seen.append(set(args[0])))
    batch = _collate(_samples(4, 0))
    batch["omics"] = torch.full_like(batch["omics"], float("nan"))  # would poison any output that read it
    batch["text"] = torch.full((4, 2, 5), float("nan"))
    bank = (
        TeacherBank(torch.randn(4, 2), torch.randn(4, 16), {f"P{i:03d}": i for i in range(4)}) if with_teacher else None
    )
    crd = ContrastiveDistillationLoss(16, 16, proj_dim=8)
    loss_fn = distillation_loss(
        student, TaskLoss("classification"), bank, kd=LogitKDLoss("classification", reduction="none"), crd=crd
    )
    value = loss_fn(batch)
    assert seen and all(keys <= {"wsi", "wsi_mask"} for keys in seen)
    assert torch.isfinite(value)
    clean = _collate(_samples(4, 0, with_other_modalities=False))
    assert float(loss_fn(clean).detach()) == pytest.approx(float(value.detach()), rel=1e-6)


def test_teacher_loss_is_task_plus_weighted_low_rank_term() -> None:
    torch.manual_seed(0)
    teacher = build_teacher(_settings(teacher_modalities=("wsi", "omics", "clinical")), DIMS, 2).eval()
    batch = _collate(_samples(6, 1))
    inputs = {key: value for key, value in batch.items() if key not in ("case_id", "label")}
    task, lowrank = TaskLoss("classification"), LowRankLoss("relation")
    output = teacher(inputs, return_tokens=True)
    expected_task = float(task(output, {"label": batch["label"]}).detach())
    expected_penalty = float(lowrank(*modality_stack(output)).detach())
    assert expected_penalty > 1.0
    for weight in (0.0, 0.5):
        got = teacher_loss(teacher, task, lowrank=lowrank, lowrank_weight=weight)(batch)
        assert float(got.detach()) == pytest.approx(expected_task + weight * expected_penalty, rel=1e-6)


def test_teacher_bank_holds_each_patients_outputs() -> None:
    torch.manual_seed(0)
    teacher = build_teacher(_settings(), DIMS, 2)
    samples = _samples(5, 2)
    bank = teacher_bank(teacher, samples, "classification")
    assert bank.outputs.shape == (5, 2) and bank.embeddings.shape == (5, teacher.embedding_dim)
    for sample in samples[::2]:
        batch = _collate([sample])
        with torch.no_grad():
            output = teacher({key: value for key, value in batch.items() if key != "case_id"})
        row = bank.rows[sample["case_id"]]
        torch.testing.assert_close(bank.outputs[row], output["logits"][0])
        torch.testing.assert_close(bank.embeddings[row], output["embedding"][0])
    with pytest.raises(KeyError, match="P999"):
        bank.index(["P000", "P999"])


@pytest.mark.parametrize("modulation", [None, "soft", "hard"])
def test_distillation_loss_is_task_plus_weighted_kd_plus_crd(modulation: str | None) -> None:
    torch.manual_seed(0)
    student = build_student(_settings(), WSI_DIM, 2).eval()
    samples = _samples(6, 3)
    bank = TeacherBank(3 * torch.randn(6, 2), torch.randn(6, 12), {s["case_id"]: 5 - i for i, s in enumerate(samples)})
    kd = LogitKDLoss("classification", temperature=2.0, reduction="none")
    crd = ContrastiveDistillationLoss(student.embedding_dim, 12, proj_dim=8)
    task = TaskLoss("classification")
    record: list[float] = []
    loss_fn = distillation_loss(
        student, task, bank, kd=kd, crd=crd, kd_weight=0.7, crd_weight=0.2, modulation=modulation, record=record
    )
    batch = _collate(samples)
    got = float(loss_fn(batch).detach())
    rows = torch.tensor([5 - i for i in range(6)])
    output = student({"wsi": batch["wsi"], "wsi_mask": batch["wsi_mask"]})
    task_value = task(output, {"label": batch["label"]})
    per_sample = kd(output["logits"], bank.outputs[rows])
    weights = (
        torch.ones(6)
        if modulation is None
        else gradient_agreement_weights(per_sample, task_value, output["logits"], mode=modulation)
    )
    expected = task_value + 0.7 * (weights * per_sample).mean() + 0.2 * crd(output["embedding"], bank.embeddings[rows])
    assert got == pytest.approx(float(expected.detach()), rel=1e-5)
    assert record == pytest.approx([float(weights.mean())])


def test_plain_student_loss_is_the_task_loss() -> None:
    torch.manual_seed(0)
    student = build_student(_settings(), WSI_DIM, 2).eval()
    batch = _collate(_samples(4, 4))
    task = TaskLoss("classification")
    expected = task(student(wsi_inputs(batch)), {"label": batch["label"]})
    got = distillation_loss(student, task, None)(batch)
    assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    with pytest.raises(ValueError, match="reduction='none'"):
        distillation_loss(student, task, None, kd=LogitKDLoss("classification"))


def _mean_kd_to_bank(student: torch.nn.Module, samples: list[dict[str, Any]], bank: TeacherBank) -> float:
    student.eval()
    batch = _collate(samples)
    with torch.no_grad():
        logits = student(wsi_inputs(batch))["logits"]
    kd = LogitKDLoss("classification", temperature=1.0)
    return float(kd(logits, bank.outputs[bank.index(list(batch["case_id"]))]))


def test_distillation_pulls_the_student_towards_the_teacher() -> None:
    train = _samples(24, 5, with_other_modalities=False)
    # a teacher that also reads patch feature 1, which the labels know nothing about
    margins = torch.stack([s["wsi"][:, 0].mean() + 3.0 * s["wsi"][:, 1].mean() for s in train])
    logits = torch.stack([torch.zeros(24), margins], dim=1)
    bank = TeacherBank(logits, torch.randn(24, 16), {s["case_id"]: i for i, s in enumerate(train)})
    distances = {}
    for name, kd_weight in (("plain", 0.0), ("kd", 5.0)):
        torch.manual_seed(0)
        student = build_student(_settings(aggregator="mean"), WSI_DIM, 2)
        kd = LogitKDLoss("classification", temperature=1.0, reduction="none")
        loss_fn = distillation_loss(
            student,
            TaskLoss("classification"),
            bank if kd_weight else None,
            kd=kd,
            kd_weight=kd_weight,
            modulation=None,
        )
        fit = train_with_loss(student, loss_fn, train, None, task="classification", epochs=15, lr=1e-2, batch_size=8)
        assert fit["epochs_run"] == fit["best_epoch"] == 15 and math.isnan(fit["val_metric"])
        distances[name] = _mean_kd_to_bank(student, train, bank)
    assert distances["kd"] < 0.5 * distances["plain"]


def test_early_stopping_restores_the_best_validation_weights() -> None:
    train, val = _samples(16, 7, with_other_modalities=False), _samples(8, 8, with_other_modalities=False)
    torch.manual_seed(0)
    student = build_student(_settings(aggregator="mean"), WSI_DIM, 2)
    loss_fn = distillation_loss(student, TaskLoss("classification"), None)
    fit = train_with_loss(student, loss_fn, train, val, task="classification", epochs=30, patience=2, lr=1e-2)
    assert fit["epochs_run"] == fit["best_epoch"] + 2 < 30  # the labels are easy: validation AUC peaks early
    assert fold_metrics("classification", predict(student, val))["auc"] == pytest.approx(fit["val_metric"])


@pytest.mark.parametrize(
    ("task", "modalities", "metric"),
    [("survival", ("wsi", "omics", "clinical"), "c_index"), ("classification", ("wsi", "omics"), "balanced_accuracy")],
)
def test_one_fold_end_to_end(
    cohort_dir: Path, tmp_path: Path, task: str, modalities: tuple[str, ...], metric: str
) -> None:
    settings = DistillSettings(
        task=task, teacher_modalities=modalities, dim=8, proj_dim=8, epochs=2, batch_size=4, n_folds=4, n_bins=2
    )
    results = run_teacher_student(cohort_dir, 1, settings=settings, seed=0, work_dir=tmp_path)
    assert set(results) == {"teacher", "student_kd", "student_plain"}
    for metrics in results.values():
        assert 0.0 <= metrics[metric] <= 1.0 and 1 <= metrics["best_epoch"] <= 2
    assert 0.0 <= results["student_kd"]["kd_weight_mean"] <= 1.0
    assert "kd_weight_mean" not in results["student_plain"]
    assert (tmp_path / "data_spec.json").is_file()  # the teacher's preprocessing, fitted on the training patients


def test_teacher_epochs(cohort_dir: Path, tmp_path: Path) -> None:
    """Without a validation part every model keeps its last epoch: the teacher's is ``teacher_epochs``."""
    settings = DistillSettings(
        teacher_modalities=("wsi", "omics"),
        dim=8,
        proj_dim=8,
        epochs=3,
        teacher_epochs=1,
        val_fraction=0.0,
        batch_size=4,
        n_folds=4,
        n_bins=2,
    )
    results = run_teacher_student(cohort_dir, 1, settings=settings, seed=0, work_dir=tmp_path)
    assert results["teacher"]["best_epoch"] == 1
    assert results["student_kd"]["best_epoch"] == results["student_plain"]["best_epoch"] == 3


def test_ill_settings() -> None:
    with pytest.raises(ValueError, match="unknown task"):
        DistillSettings(task="segmentation")
    with pytest.raises(ValueError, match="start with 'wsi'"):
        DistillSettings(teacher_modalities=("omics", "wsi"))
    with pytest.raises(ValueError, match="start with 'wsi'"):
        DistillSettings(teacher_modalities=("wsi",))
    with pytest.raises(ValueError, match="text='notes'"):
        DistillSettings(teacher_modalities=("wsi", "text"))
    with pytest.raises(ValueError, match="teacher_epochs"):
        DistillSettings(teacher_epochs=0)
    assert math.isfinite(DistillSettings().lr)

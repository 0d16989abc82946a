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

"""ModalTune, the low-rank teacher and the WSI-only students in the comparison registry: each runs on the tiny
cohort (1 fold, 1 epoch) with its missing-modality rows, the students only ever receive the patch features, and the
distilled student's teacher sees the fold's training patients only (full bags)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import Dataset

from monai_ext.engines import compare_methods_extra as extra
from monai_ext.engines.compare import DEMO_TASKS, METHODS, FoldContext, register_method, run_comparison
from monai_ext.engines.distill import DistillSettings, build_student
from tests.engines.test_compare import FAST, HashEmbedder
from tests.engines.test_missing_modality import write_cohort

NEW = ("modaltune", "lowrank_teacher", "student_plain", "student_kd")
# the task's modalities other than the slides, which the multimodal entries cannot do without
OTHERS = {"staging": ["clinical"], "subtyping": ["omics", "text"], "survival": ["omics", "clinical"]}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cohort(tmp_path_factory.mktemp("compare_extra_cohort"), n_patients=24)


def _base(data: Dataset) -> Any:
    """The MultimodalDataset under a staging WithSlideLabels wrapper."""
    return getattr(data, "data", data)


def test_extra_methods_run_and_students_see_only_slides(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    student_keys: list[set[str]] = []

    def spy_student(*args: Any, **kwargs: Any) -> torch.nn.Module:
        student = build_student(*args, **kwargs)
        student.register_forward_pre_hook(lambda module, inputs: student_keys.append(set(inputs[0])))
        return student

    banks: list[Any] = []
    real_bank = extra.teacher_bank

    def spy_bank(teacher: torch.nn.Module, data: Dataset, *args: Any, **kwargs: Any) -> Any:
        banks.append(_base(data))
        return real_bank(teacher, data, *args, **kwargs)

    contexts: list[FoldContext] = []
    kd = METHODS["student_kd"]

    def spy_train(model: torch.nn.Module, context: FoldContext) -> torch.nn.Module:
        contexts.append(context)
        return kd.train(model, context)

    monkeypatch.setattr(extra, "build_student", spy_student)
    monkeypatch.setattr(extra, "teacher_bank", spy_bank)
    register_method(dataclasses.replace(kd, train=spy_train), replace=True)
    try:
        results = run_comparison(manifest, tmp_path, methods=NEW, settings=FAST, text_embedder=HashEmbedder())
    finally:
        register_method(kd, replace=True)

    runs = {key: group["removed"].tolist() for key, group in results.groupby(["task", "method"], sort=False)}
    expected = {}
    for task in DEMO_TASKS:
        expected.update({(task, "modaltune"): OTHERS[task], (task, "lowrank_teacher"): OTHERS[task]})
        expected.update({(task, "student_plain"): [], (task, "student_kd"): []})
    assert runs == {key: ["none", *removed] for key, removed in expected.items()}
    for task, rows in results.groupby("task"):
        metrics = rows[[m for m in DEMO_TASKS[task].metrics if m in rows.columns]]
        assert metrics.notna().any().all(), task
        low = -1.0 if task == "staging" else 0.0  # kappa
        assert ((metrics.stack() >= low) & (metrics.stack() <= 1.0)).all(), task

    # training, validation and test batches of both students: the patch features and nothing else
    assert len(student_keys) > 6 and all(keys == {"wsi", "wsi_mask"} for keys in student_keys)
    # the distilled student's teacher: the task's modalities, the fold's training patients, full bags
    assert len(banks) == len(contexts) == len(DEMO_TASKS)
    for bank_data, context in zip(banks, contexts, strict=True):
        train_ids = set(_base(context.train_data).case_ids)
        assert set(bank_data.case_ids) == train_ids and bank_data.max_patches is None
        assert not train_ids & set(_base(context.test_data).case_ids)
        assert tuple(bank_data.modalities) == DEMO_TASKS[context.task].modalities


def test_wsi_only_strips_other_modalities() -> None:
    torch.manual_seed(0)
    student = build_student(DistillSettings(task="classification", dim=8), wsi_dim=5, n_outputs=3).eval()
    seen: list[set[str]] = []
    student.register_forward_pre_hook(lambda module, inputs: seen.append(set(inputs[0])))
    batch = {"wsi": torch.randn(2, 7, 5), "wsi_mask": torch.ones(2, 7, dtype=torch.bool), "omics": torch.randn(2, 4)}
    batch["omics_mask"] = torch.ones(2, dtype=torch.bool)
    wrapped = extra.WsiOnly(student)(batch)
    direct = student({"wsi": batch["wsi"], "wsi_mask": batch["wsi_mask"]})
    assert seen == [{"wsi", "wsi_mask"}] * 2
    torch.testing.assert_close(wrapped["logits"], direct["logits"])

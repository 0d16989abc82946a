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

"""ModalTune, the low-rank teacher and the pathology-only students as entries of the methods comparison.

Registered into :data:`monai_ext.engines.compare.METHODS` when :mod:`monai_ext.engines.compare` is imported; each
entry reuses the existing builders and training loops (no copies):

- ``modaltune``: :func:`~monai_ext.networks.modaltune_task.build_modaltune_task` (slide encoder + modality
  adapters, one cohort, the shared head of the task, as the bundles' ``modaltune.json``) trained end to end by the
  comparison's default training (Ramanathan et al. 2025, https://arxiv.org/abs/2503.17564).
- ``lowrank_teacher``: :func:`~monai_ext.engines.distill.build_teacher` over the task's modalities, trained with
  the task loss plus the low-rank term (:func:`~monai_ext.engines.distill.teacher_loss`,
  :func:`~monai_ext.engines.distill.train_with_loss`; Xing et al. 2023,
  https://doi.org/10.1016/j.media.2023.102874).
- ``student_plain``: :func:`~monai_ext.engines.distill.build_student` (WSI only), task loss alone.
- ``student_kd``: the same student distilled from a low-rank teacher trained first on the same fold's training
  patients (its validation on the fold's inner split), through :func:`~monai_ext.engines.distill.teacher_bank`
  and :func:`~monai_ext.engines.distill.distillation_loss`.

Both students are wrapped in :class:`WsiOnly`, so they only ever receive ``wsi`` and ``wsi_mask``, in training,
validation and test alike.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from monai_ext.engines.compare import ALL_TASKS, FoldContext, Method, register_method
from monai_ext.engines.distill import (
    DistillSettings,
    build_student,
    build_teacher,
    distillation_loss,
    student_kd_loss,
    teacher_bank,
    teacher_loss,
    train_with_loss,
    wsi_inputs,
)
from monai_ext.engines.task_loss import TaskLoss
from monai_ext.losses.lowrank import LowRankLoss
from monai_ext.networks.modaltune_task import ModalTuneTask, build_modaltune_task
from monai_ext.networks.multimodal import MultimodalModel

__all__ = ["EXTRA_METHODS", "WsiOnly", "distill_settings"]


class WsiOnly(nn.Module):
    """A pathology-only student that sees nothing but the patch features: every batch is reduced to
    :func:`~monai_ext.engines.distill.wsi_inputs` (``wsi [B, N, D]``, ``wsi_mask [B, N]``) before its forward pass.

    Args:
        student: a ``MultimodalModel(modalities=("wsi",))``.
    """

    modalities = ("wsi",)

    def __init__(self, student: MultimodalModel) -> None:
        super().__init__()
        self.student = student

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The student's outputs for the slides of ``batch`` alone."""
        return self.student(wsi_inputs(batch))


def distill_settings(context: FoldContext) -> DistillSettings:
    """:class:`~monai_ext.engines.distill.DistillSettings` from the comparison's settings (the distillation
    weights keep their defaults); the teacher reads the task's modalities."""
    settings = context.settings
    modalities = context.spec.modalities
    return DistillSettings(
        task=context.spec.fit_task,
        teacher_modalities=modalities,
        text="notes" if "text" in modalities else None,
        dim=settings.dim,
        dropout=settings.dropout,
        epochs=settings.epochs,
        patience=settings.patience,
        lr=settings.lr,
        batch_size=settings.batch_size,
        max_patches=settings.max_patches,
        n_bins=settings.n_bins,
        val_fraction=settings.val_fraction,
        device=settings.device,
    )


def _train_kwargs(context: FoldContext, settings: DistillSettings) -> dict[str, Any]:
    return {
        "task": settings.task,
        "epochs": settings.epochs,
        "patience": settings.patience,
        "lr": settings.lr,
        "weight_decay": settings.weight_decay,
        "batch_size": settings.batch_size,
        "seed": context.seed,
        "device": settings.device,
    }


def _modaltune(context: FoldContext) -> ModalTuneTask:
    """ModalTune for one cohort: the encoder is trained too (no pretrained slide encoder is available locally, and
    a frozen random encoder would be a random feature map)."""
    return build_modaltune_task(
        modalities=context.modalities,
        input_dims=context.dims,
        task="survival" if context.spec.fit_task == "survival" else "classification",
        n_outputs=context.n_outputs,
        dim=context.settings.dim,
        dropout=context.settings.dropout,
        freeze_encoder=False,
    )


def _teacher(context: FoldContext) -> MultimodalModel:
    return build_teacher(distill_settings(context), context.dims, context.n_outputs)


def _train_teacher(model: nn.Module, context: FoldContext) -> nn.Module:
    """Task loss plus the low-rank term on the teacher's modality embeddings, early stopping on the inner split."""
    settings = distill_settings(context)
    loss_fn = teacher_loss(
        model,
        TaskLoss(settings.task).to(settings.device),
        lowrank=LowRankLoss(settings.lowrank_mode),
        lowrank_weight=settings.lowrank_weight,
        device=settings.device,
    )
    train_with_loss(model, loss_fn, context.train_data, context.val_data, **_train_kwargs(context, settings))
    return model


def _student(context: FoldContext) -> WsiOnly:
    return WsiOnly(build_student(distill_settings(context), context.dims["wsi"], context.n_outputs))


def _train_plain(model: nn.Module, context: FoldContext) -> nn.Module:
    """The student with the task loss alone (the baseline of ``student_kd``)."""
    settings = distill_settings(context)
    loss_fn = distillation_loss(
        model.student, TaskLoss(settings.task).to(settings.device), None, device=settings.device
    )
    train_with_loss(model, loss_fn, context.train_data, context.val_data, **_train_kwargs(context, settings))
    return model


def _train_kd(model: nn.Module, context: FoldContext) -> nn.Module:
    """Train a low-rank teacher on the fold's training patients (all modalities), keep its outputs for them (full
    bags), then train the student with logit KD (gradient-agreement weights) and CRD against that bank."""
    if context.make_dataset is None:
        raise ValueError("student_kd needs FoldContext.make_dataset (the fold's full-bag training patients)")
    settings = distill_settings(context)
    teacher = _train_teacher(_teacher(context), context)
    bank = teacher_bank(teacher, context.make_dataset("train", None), settings.model_task, settings.device)
    task_loss = TaskLoss(settings.task).to(settings.device)
    loss_fn, crd = student_kd_loss(model.student, teacher, bank, task_loss, settings, settings.device)
    train_with_loss(
        model,
        loss_fn,
        context.train_data,
        context.val_data,
        extra_parameters=list(crd.parameters()),
        **_train_kwargs(context, settings),
    )
    return model


DISTILL = "Xing et al. 2023, https://doi.org/10.1016/j.media.2023.102874"
EXTRA_METHODS = (
    Method(
        "modaltune",
        "slide encoder with modality adapters and the task's head, one cohort (ModalTune, Ramanathan et al. 2025, "
        "https://arxiv.org/abs/2503.17564)",
        ALL_TASKS,
        _modaltune,
    ),
    Method(
        "lowrank_teacher",
        f"all modalities, concat fusion, task loss + low-rank term on the modality embeddings ({DISTILL})",
        ALL_TASKS,
        _teacher,
        train=_train_teacher,
    ),
    Method(
        "student_plain",
        f"WSI-only ABMIL student, task loss alone (the baseline of student_kd, {DISTILL})",
        ALL_TASKS,
        _student,
        modalities=("wsi",),
        train=_train_plain,
    ),
    Method(
        "student_kd",
        f"WSI-only ABMIL student distilled from the fold's low-rank teacher: logit KD with gradient-agreement "
        f"weights + CRD ({DISTILL})",
        ALL_TASKS,
        _student,
        train=_train_kd,
    ),
)
for _method in EXTRA_METHODS:
    register_method(_method)

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

"""Low-rank multimodal teacher -> pathology-only student (Xing et al., MedIA 2023).

Xing, Chen, Hou and Yuan, "Gradient modulated contrastive distillation of low-rank multi-modal knowledge for
disease diagnosis", Medical Image Analysis 2023 (https://doi.org/10.1016/j.media.2023.102874). Two stages on one
patient-grouped split (:class:`~monai_ext.engines.bundle_data.BundleData`: scalers, encoders and survival bins
fitted on the training patients only):

1. **Teacher**: a :class:`~monai_ext.networks.multimodal.MultimodalModel` over all modalities, trained with the
   task loss plus ``lowrank_weight`` times :class:`~monai_ext.losses.lowrank.LowRankLoss` on its per-modality
   embeddings (``return_tokens=True`` gives them).
2. **Students**: ``MultimodalModel(modalities=("wsi",))``, which only ever receives the patch features (the student
   datasets hold no other modality, and :func:`wsi_inputs` strips any other key before the forward pass). The
   teacher is frozen; its outputs and fused embeddings for the training patients (full bags, eval mode) are
   computed once. ``student_kd`` trains with ``task + kd_weight * mean_i(w_i KD_i) + crd_weight * CRD`` (logit KD
   :class:`~monai_ext.losses.distillation.LogitKDLoss`, weights ``w_i`` from
   :func:`~monai_ext.losses.distillation.gradient_agreement_weights`, CRD
   :class:`~monai_ext.losses.distillation.ContrastiveDistillationLoss` against the bank of teacher embeddings);
   ``student_plain`` with the task loss alone, from the same initial weights and the same batch order.

Training uses one Ignite ``Engine`` with a custom iteration function (the loss is a closure over the frozen
teacher's bank, which MONAI's ``SupervisedTrainer`` has no place for), validation on an inner split after every
epoch (:func:`~monai_ext.engines.predict.predict` and the task's key metric), early stopping and the best weights
restored, as :func:`~monai_ext.engines.fit.fit_model` does. :func:`run_teacher_student` is the factory a methods
registry calls: one fold in, the test metrics of the teacher and both students out.
"""

from __future__ import annotations

import copy
import logging
import math
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader
from torch import Tensor, nn
from torch.utils.data import Dataset

from monai_ext.data.collate import collate_multimodal
from monai_ext.data.dataset import MultimodalDataset
from monai_ext.engines.bundle_data import BundleData
from monai_ext.engines.crossval import fold_metrics
from monai_ext.engines.predict import predict
from monai_ext.engines.prepare_batch import MultimodalPrepareBatch
from monai_ext.engines.task_loss import TaskLoss
from monai_ext.losses.distillation import ContrastiveDistillationLoss, LogitKDLoss, gradient_agreement_weights
from monai_ext.losses.lowrank import LowRankLoss
from monai_ext.networks.multimodal import MultimodalModel

__all__ = [
    "KEY_METRIC",
    "DistillSettings",
    "TeacherBank",
    "build_student",
    "build_teacher",
    "distillation_loss",
    "modality_stack",
    "run_teacher_student",
    "settings_dict",
    "student_kd_loss",
    "teacher_bank",
    "teacher_loss",
    "train_with_loss",
    "wsi_inputs",
]

logger = logging.getLogger(__name__)

KEY_METRIC = {"survival": "c_index", "classification": "auc", "staging": "kappa"}
WSI_KEYS = ("wsi", "wsi_mask")


@dataclass
class DistillSettings:
    """Settings of :func:`run_teacher_student` (the defaults suit the demo cohort).

    Args:
        task: ``"survival"``, ``"classification"`` or ``"staging"``.
        teacher_modalities: modalities of the teacher (``wsi`` first); the student always has ``("wsi",)``.
        clinical_columns: manifest columns of the clinical modality.
        categorical: which of them are categorical.
        allow_columns: manifest columns tolerated but unused (the demo's ``age`` and ``sex`` when the teacher has no
            clinical modality; columns in ``clinical_columns`` are dropped from it when the teacher uses them).
        text: ``"notes"`` when the teacher uses ``text`` (see :class:`BundleData`).
        dim: token width of both networks.
        aggregator: MIL aggregator of both networks.
        fusion: teacher fusion (the student has a single modality; its fusion is the same module type).
        dropout: dropout of both networks.
        epochs: maximum epochs per model.
        teacher_epochs: maximum epochs of the teacher when it should train for another length than the students
            (None: ``epochs``); e.g. a teacher whose omics encoder overfits a small cohort in fewer epochs than the
            students need to converge.
        patience: early-stopping patience in epochs (validation key metric).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        batch_size: patients per step (the relation low-rank term and in-batch statistics need 2+).
        max_patches: training cap on patches per patient.
        n_bins: survival time bins.
        n_folds: folds of the patient-grouped split.
        val_fraction: share of the training part used for early stopping; 0 trains every model for ``epochs``
            epochs on the whole training part and keeps the last weights (steadier than early stopping on a
            validation split of a few patients).
        lowrank_weight: weight of the teacher's low-rank term (0: plain multimodal teacher).
        lowrank_mode: ``"relation"`` (the paper's t-SVD on sample relations) or ``"sample"``.
        kd_weight: weight of the logit KD term of ``student_kd``.
        crd_weight: weight of the CRD term of ``student_kd``.
        temperature: KD temperature.
        survival_kd: ``"bernoulli"`` or ``"distribution"`` (see :class:`LogitKDLoss`).
        crd_temperature: CRD temperature.
        proj_dim: CRD projection width.
        modulation: ``"soft"``, ``"hard"`` or None (no gradient modulation: all KD weights 1).
        device: torch device.
        extra: further :class:`MultimodalModel` keyword arguments for both networks.
    """

    task: str = "survival"
    teacher_modalities: tuple[str, ...] = ("wsi", "omics", "clinical")
    clinical_columns: tuple[str, ...] = ("age", "sex")
    categorical: tuple[str, ...] = ("sex",)
    allow_columns: tuple[str, ...] = ("age", "sex")
    text: str | None = None
    dim: int = 64
    aggregator: str = "abmil"
    fusion: str = "concat"
    dropout: float = 0.25
    epochs: int = 30
    teacher_epochs: int | None = None
    patience: int = 10
    lr: float = 5e-4
    weight_decay: float = 1e-4
    batch_size: int = 8
    max_patches: int | None = 512
    n_bins: int = 4
    n_folds: int = 5
    val_fraction: float = 0.2
    lowrank_weight: float = 0.1
    lowrank_mode: str = "relation"
    kd_weight: float = 1.0
    crd_weight: float = 0.1
    temperature: float = 2.0
    survival_kd: str = "bernoulli"
    crd_temperature: float = 0.1
    proj_dim: int = 64
    modulation: str | None = "soft"
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in KEY_METRIC:
            raise ValueError(f"unknown task {self.task!r}; choose one of {sorted(KEY_METRIC)}")
        self.teacher_modalities = tuple(self.teacher_modalities)
        if not self.teacher_modalities or self.teacher_modalities[0] != "wsi" or len(self.teacher_modalities) < 2:
            raise ValueError(
                f"teacher_modalities must start with 'wsi' and add at least one other modality, got "
                f"{list(self.teacher_modalities)}"
            )
        if ("text" in self.teacher_modalities) != (self.text is not None):
            raise ValueError(f"modality 'text' needs text='notes' and vice versa (got text={self.text!r})")
        if self.batch_size < 1 or self.epochs < 1 or (self.teacher_epochs is not None and self.teacher_epochs < 1):
            raise ValueError(
                f"batch_size, epochs and teacher_epochs must be >= 1, got {self.batch_size}, {self.epochs} and "
                f"{self.teacher_epochs}"
            )

    @property
    def model_task(self) -> str:
        """The :class:`MultimodalModel` task (staging is a classification)."""
        return "survival" if self.task == "survival" else "classification"


def wsi_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Only the patch features of a batch (``wsi`` and ``wsi_mask``): what a pathology-only student may see."""
    return {key: inputs[key] for key in WSI_KEYS if key in inputs}


def modality_stack(output: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
    """Per-modality embeddings of a ``MultimodalModel(..., return_tokens=True)`` output, stacked.

    Returns:
        ``embeddings [B, M, D]`` and ``present`` bool ``[B, M]`` (a modality is present when any of its tokens is).
    """
    names = list(output["modality_embeddings"])
    embeddings = torch.stack([output["modality_embeddings"][name] for name in names], dim=1)
    present = torch.stack([output["token_masks"][name].any(dim=1) for name in names], dim=1)
    return embeddings, present


def build_teacher(settings: DistillSettings, input_dims: Mapping[str, int], n_outputs: int) -> MultimodalModel:
    """The multimodal teacher over ``settings.teacher_modalities``.

    Args:
        settings: the run settings.
        input_dims: input widths by modality (``wsi``, ``omics``, ``clinical``, ``text``).
        n_outputs: classes or survival bins.
    """
    return MultimodalModel(
        modalities=settings.teacher_modalities,
        wsi_dim=input_dims["wsi"],
        omics_dim=input_dims.get("omics"),
        clinical_dim=input_dims.get("clinical"),
        text_dim=input_dims.get("text"),
        dim=settings.dim,
        aggregator=settings.aggregator,
        fusion=settings.fusion,
        task=settings.model_task,
        n_classes=max(n_outputs, 2),
        n_bins=n_outputs,
        dropout=settings.dropout,
        **settings.extra,
    )


def build_student(settings: DistillSettings, wsi_dim: int, n_outputs: int) -> MultimodalModel:
    """The pathology-only student: ``MultimodalModel(modalities=("wsi",))`` with the teacher's sizes."""
    return MultimodalModel(
        modalities=("wsi",),
        wsi_dim=wsi_dim,
        dim=settings.dim,
        aggregator=settings.aggregator,
        fusion=settings.fusion,
        task=settings.model_task,
        n_classes=max(n_outputs, 2),
        n_bins=n_outputs,
        dropout=settings.dropout,
        **settings.extra,
    )


def _kd_outputs(output: Mapping[str, Tensor], model_task: str) -> Tensor:
    """What logit KD compares: ``logits [B, K]`` (classification, discrete-time survival) or ``risk [B]`` (Cox)."""
    return output["risk"] if model_task == "cox" else output["logits"]


def teacher_loss(
    teacher: MultimodalModel,
    task_loss: nn.Module,
    *,
    lowrank: LowRankLoss | None = None,
    lowrank_weight: float = 0.0,
    device: str | torch.device = "cpu",
) -> Callable[[dict[str, Any]], Tensor]:
    """The teacher's training loss on a collated batch: ``task + lowrank_weight * LowRankLoss(modality embeddings)``.

    Args:
        teacher: the multimodal model.
        task_loss: ``task_loss(output, targets) -> scalar`` (e.g. :class:`TaskLoss`).
        lowrank: the low-rank penalty (None or ``lowrank_weight=0``: task loss only).
        lowrank_weight: its weight.
        device: where the batch goes.

    Returns:
        ``loss(batch) -> scalar``.
    """
    prepare = MultimodalPrepareBatch()

    def loss(batch: dict[str, Any]) -> Tensor:
        inputs, targets = prepare(batch, device)
        output = teacher(inputs, return_tokens=True)
        value = task_loss(output, targets)
        if lowrank is not None and lowrank_weight:
            value = value + lowrank_weight * lowrank(*modality_stack(output))
        return value

    return loss


@dataclass
class TeacherBank:
    """The frozen teacher's outputs for a set of patients: ``outputs [N, K]`` (or ``[N]`` risks), fused
    ``embeddings [N, E]`` and the row of each ``case_id``."""

    outputs: Tensor
    embeddings: Tensor
    rows: dict[str, int]

    def index(self, case_ids: list[str]) -> Tensor:
        """Rows of ``case_ids`` (long ``[B]``).

        Raises:
            KeyError: a patient the teacher has no output for.
        """
        missing = [case for case in case_ids if case not in self.rows]
        if missing:
            raise KeyError(f"no teacher output for patients {missing}: build the bank on the student's training set")
        return torch.tensor([self.rows[case] for case in case_ids], dtype=torch.long, device=self.outputs.device)


@torch.no_grad()
def teacher_bank(teacher: nn.Module, data: Dataset, model_task: str, device: str | torch.device = "cpu") -> TeacherBank:
    """Run the teacher (eval mode, one patient at a time, full bags) over ``data`` and keep its outputs.

    Args:
        teacher: the trained teacher.
        data: a dataset yielding ``case_id`` and the teacher's modalities.
        model_task: the model's task (``classification``, ``survival`` or ``cox``).
        device: torch device.
    """
    teacher.eval().to(device)
    prepare = MultimodalPrepareBatch()
    outputs, embeddings, rows = [], [], {}
    for batch in DataLoader(data, batch_size=1, shuffle=False, collate_fn=collate_multimodal):
        inputs, _ = prepare(batch, device)
        output = teacher(inputs)
        rows[batch["case_id"][0]] = len(outputs)
        outputs.append(_kd_outputs(output, model_task)[0])
        embeddings.append(output["embedding"][0])
    return TeacherBank(torch.stack(outputs), torch.stack(embeddings), rows)


def student_kd_loss(
    student: MultimodalModel,
    teacher: nn.Module,
    bank: TeacherBank,
    task_loss: nn.Module,
    settings: DistillSettings,
    device: str | torch.device,
    record: list[float] | None = None,
) -> tuple[Callable[[dict[str, Any]], Tensor], ContrastiveDistillationLoss]:
    """The distilled student's loss as ``settings`` describe it: logit KD and CRD against ``bank``.

    Args:
        student: the pathology-only model.
        teacher: the trained teacher (its ``embedding_dim`` sizes the CRD projection).
        bank: the teacher's outputs for the training patients.
        task_loss: ``task_loss(output, targets) -> scalar``.
        settings: KD temperature and survival form, CRD projection and temperature, weights, modulation.
        device: where the CRD heads live.
        record: see :func:`distillation_loss`.

    Returns:
        The loss function and the CRD module, whose projection heads train with the student.
    """
    crd = ContrastiveDistillationLoss(
        student.embedding_dim,
        teacher.embedding_dim,
        proj_dim=settings.proj_dim,
        temperature=settings.crd_temperature,
    ).to(device)
    kd = LogitKDLoss(
        settings.model_task, temperature=settings.temperature, survival=settings.survival_kd, reduction="none"
    )
    loss_fn = distillation_loss(
        student,
        task_loss,
        bank,
        kd=kd,
        crd=crd,
        kd_weight=settings.kd_weight,
        crd_weight=settings.crd_weight,
        modulation=settings.modulation,
        device=device,
        record=record,
    )
    return loss_fn, crd


def distillation_loss(
    student: MultimodalModel,
    task_loss: nn.Module,
    bank: TeacherBank | None,
    *,
    kd: LogitKDLoss | None = None,
    crd: ContrastiveDistillationLoss | None = None,
    kd_weight: float = 1.0,
    crd_weight: float = 0.1,
    modulation: str | None = "soft",
    device: str | torch.device = "cpu",
    record: list[float] | None = None,
) -> Callable[[dict[str, Any]], Tensor]:
    """The student's training loss on a collated batch.

    ``task + kd_weight * mean_i(w_i * KD_i) + crd_weight * CRD`` where ``KD_i`` compares the student's outputs with
    the teacher's (bank rows of the batch's patients), ``w_i`` are the gradient-agreement weights
    (``modulation``; 1 when None) and CRD contrasts the student's embedding against every teacher embedding of the
    bank. Without ``bank`` (or with both weights 0) the loss is the task loss alone: the plain student. The
    student's forward pass sees :func:`wsi_inputs` only.

    Args:
        student: the pathology-only model.
        task_loss: ``task_loss(output, targets) -> scalar``.
        bank: the frozen teacher's outputs for the training patients.
        kd: logit KD with ``reduction="none"``.
        crd: the contrastive distillation module (its projections must be in the optimiser).
        kd_weight: weight of the KD term.
        crd_weight: weight of the CRD term.
        modulation: ``"soft"``, ``"hard"`` or None.
        device: where the batch goes.
        record: when given, the mean KD weight of each step is appended (a diagnostic).

    Returns:
        ``loss(batch) -> scalar``.

    Raises:
        ValueError: ``kd`` without ``reduction="none"``.
    """
    if kd is not None and kd.reduction != "none":
        raise ValueError("distillation_loss needs a LogitKDLoss with reduction='none' (per-sample KD)")
    prepare = MultimodalPrepareBatch()
    use_kd = bank is not None and kd is not None and kd_weight > 0
    use_crd = bank is not None and crd is not None and crd_weight > 0

    def loss(batch: dict[str, Any]) -> Tensor:
        inputs, targets = prepare(batch, device)
        output = student(wsi_inputs(inputs))
        value = task_loss(output, targets)
        if not (use_kd or use_crd):
            return value
        assert bank is not None  # use_kd / use_crd imply it
        rows = bank.index(list(batch["case_id"]))
        if use_kd:
            student_out = _kd_outputs(output, student.task)
            per_sample = kd(student_out, bank.outputs[rows])
            weights = (
                gradient_agreement_weights(per_sample, value, student_out, mode=modulation)
                if modulation is not None
                else torch.ones_like(per_sample)
            )
            if record is not None:
                record.append(float(weights.mean()))
            value = value + kd_weight * (weights * per_sample).mean()
        if use_crd:
            value = value + crd_weight * crd(output["embedding"], bank=bank.embeddings, index=rows)
        return value

    return loss


def _key_metric(model: nn.Module, data: Dataset, task: str, device: str | torch.device) -> float:
    """The task's key validation metric (NaN when undefined, e.g. one class only)."""
    metrics = fold_metrics(task, predict(model, data, device=device))
    return float(metrics.get(KEY_METRIC[task], metrics.get("balanced_accuracy", math.nan)))


def train_with_loss(
    model: nn.Module,
    loss_fn: Callable[[dict[str, Any]], Tensor],
    train_data: Dataset,
    val_data: Dataset | None,
    *,
    task: str,
    extra_parameters: list[nn.Parameter] | None = None,
    epochs: int = 30,
    patience: int = 10,
    lr: float = 5e-4,
    weight_decay: float = 1e-4,
    batch_size: int = 8,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Train ``model`` with a custom loss (an Ignite ``Engine`` whose iteration is one AdamW step on ``loss_fn``).

    After every epoch the task's key metric is computed on ``val_data`` (an inner split, never the test fold);
    training stops after ``patience`` epochs without improvement and the best weights are loaded back into
    ``model`` (the last ones if the metric was never defined). Without ``val_data`` every epoch runs and the last
    weights are kept.

    Args:
        model: the network (its parameters are optimised).
        loss_fn: ``loss_fn(collated batch) -> scalar``; it puts the model in no particular mode (training mode is
            set here before each step).
        train_data: training dataset (its ``set_epoch`` is called each epoch when present).
        val_data: validation dataset, or None.
        task: ``survival``, ``classification`` or ``staging`` (selects the key metric).
        extra_parameters: further trainable parameters (e.g. CRD projections).
        epochs: maximum epochs.
        patience: epochs without improvement before stopping.
        lr: learning rate.
        weight_decay: weight decay.
        batch_size: patients per step.
        seed: seed of the batch order.
        device: torch device.

    Returns:
        ``{"best_epoch", "val_metric", "epochs_run"}`` (without ``val_data``: the last epoch and NaN).
    """
    model.to(device)
    parameters = list(model.parameters()) + list(extra_parameters or [])
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    loader = DataLoader(
        train_data,
        batch_size=batch_size,
        shuffle=True,
        collate_fn=collate_multimodal,
        generator=torch.Generator().manual_seed(seed),
    )

    def step(engine: Engine, batch: dict[str, Any]) -> float:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(batch)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    trainer = Engine(step)
    best = {"metric": -math.inf, "epoch": 0, "state": copy.deepcopy(model.state_dict())}

    @trainer.on(Events.EPOCH_STARTED)
    def _set_epoch(engine: Engine) -> None:
        if hasattr(train_data, "set_epoch"):
            train_data.set_epoch(engine.state.epoch)

    def _validate(engine: Engine) -> None:
        metric = _key_metric(model, val_data, task, device)
        epoch = engine.state.epoch
        logger.debug("epoch %d: loss %.4f, val %s %.4f", epoch, engine.state.output, KEY_METRIC[task], metric)
        if math.isfinite(metric) and metric > best["metric"] + 1e-4:
            best.update(metric=metric, epoch=epoch, state=copy.deepcopy(model.state_dict()))
        elif epoch - best["epoch"] >= patience:
            engine.terminate()

    if val_data is None:
        trainer.run(loader, max_epochs=epochs)
        return {"best_epoch": float(trainer.state.epoch), "val_metric": math.nan, "epochs_run": trainer.state.epoch}
    trainer.add_event_handler(Events.EPOCH_COMPLETED, _validate)
    trainer.run(loader, max_epochs=epochs)
    if best["epoch"]:
        model.load_state_dict(best["state"])
    return {"best_epoch": float(best["epoch"]), "val_metric": float(best["metric"]), "epochs_run": trainer.state.epoch}


def _student_dataset(data: BundleData, part: str, *, train: bool) -> MultimodalDataset:
    """The ``wsi``-only dataset of a split part, with the teacher data's bins, classes and encoder."""
    return MultimodalDataset(
        data.cohort,
        list(getattr(data.split, part)),
        modalities=("wsi",),
        time_bin_edges=data.time_bin_edges,
        label_values=data.spec.get("label_values") or None,
        encoder=data.spec["encoder"],
        max_patches=data.max_patches if train else None,
        seed=data.seed,
    )


def _val_part(data: BundleData, *, student: bool) -> Dataset | None:
    """The validation dataset of the split, or None when the split has no validation patients."""
    if len(data.split.val) == 0:
        return None
    return _student_dataset(data, "val", train=False) if student else data.val


def _test_metrics(model: nn.Module, data: Dataset, task: str, device: str, fit: Mapping[str, float]) -> dict:
    metrics = fold_metrics(task, predict(model, data, device=device))
    return {**metrics, "best_epoch": fit["best_epoch"], f"val_{KEY_METRIC[task]}": fit["val_metric"]}


def run_teacher_student(
    dataset_dir: str | Path,
    fold: int = 0,
    *,
    settings: DistillSettings | None = None,
    seed: int = 0,
    work_dir: str | Path | None = None,
    demo: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, float]]:
    """Train the low-rank teacher, the distilled student and the plain student on one fold; test all three.

    Args:
        dataset_dir: cohort folder (``manifest.csv``, features, ``omics.csv``); empty with ``demo`` builds the demo.
        fold: test fold of the ``settings.n_folds``-fold patient-grouped split drawn with ``seed``.
        settings: run settings (default :class:`DistillSettings`).
        seed: seed of the split, the initial weights and the batch order.
        work_dir: folder for the fitted scalers and data spec (default: a temporary folder).
        demo: :func:`~monai_ext.data.demo.make_demo_cohort` arguments used when ``dataset_dir`` is empty.

    Returns:
        ``{"teacher": metrics, "student_kd": metrics, "student_plain": metrics}``: test metrics of
        :func:`~monai_ext.engines.crossval.fold_metrics` plus ``best_epoch`` and the validation metric;
        ``student_kd`` also has ``kd_weight_mean`` (mean gradient-agreement weight over its steps).
    """
    settings = settings or DistillSettings()
    with tempfile.TemporaryDirectory(prefix="distill_") as tmp:
        models_dir = Path(work_dir) if work_dir is not None else Path(tmp)
        data = BundleData(
            dataset_dir,
            models_dir,
            task=settings.task,
            modalities=settings.teacher_modalities,
            demo=demo,
            clinical_columns=settings.clinical_columns if "clinical" in settings.teacher_modalities else (),
            categorical=settings.categorical if "clinical" in settings.teacher_modalities else (),
            allow_columns=_unused_columns(settings),
            text=settings.text,
            n_bins=settings.n_bins,
            n_folds=settings.n_folds,
            fold=fold,
            val_fraction=settings.val_fraction,
            seed=seed,
            max_patches=settings.max_patches,
        )
        return _run(data, settings, seed)


def _unused_columns(settings: DistillSettings) -> tuple[str, ...]:
    """``settings.allow_columns`` minus the clinical columns the teacher uses."""
    used = set(settings.clinical_columns) if "clinical" in settings.teacher_modalities else set()
    return tuple(column for column in settings.allow_columns if column not in used)


def _run(data: BundleData, settings: DistillSettings, seed: int) -> dict[str, dict[str, float]]:
    """Both stages on prepared data (see :func:`run_teacher_student`)."""
    device, task = settings.device, settings.task
    dims, n_outputs = data.spec["input_dims"], int(data.spec["n_outputs"])
    train_kwargs = {
        "task": task,
        "epochs": settings.epochs,
        "patience": settings.patience,
        "lr": settings.lr,
        "weight_decay": settings.weight_decay,
        "batch_size": settings.batch_size,
        "seed": seed,
        "device": device,
    }
    loss_task = TaskLoss(task).to(device)

    torch.manual_seed(seed)
    teacher = build_teacher(settings, dims, n_outputs)
    lowrank = LowRankLoss(settings.lowrank_mode)
    fit = train_with_loss(
        teacher,
        teacher_loss(teacher, loss_task, lowrank=lowrank, lowrank_weight=settings.lowrank_weight, device=device),
        data.train,
        _val_part(data, student=False),
        **{**train_kwargs, "epochs": settings.teacher_epochs or settings.epochs},
    )
    results = {"teacher": _test_metrics(teacher, data.test, task, device, fit)}
    full_train = MultimodalDataset(
        data.cohort,
        list(data.split.train),
        modalities=data.modalities,
        omics=data.omics,
        clinical=data.clinical,
        text=data.text,
        time_bin_edges=data.time_bin_edges,
        label_values=data.spec.get("label_values") or None,
        encoder=data.spec["encoder"],
    )
    bank = teacher_bank(teacher, full_train, settings.model_task, device)
    student_parts = {
        "train": _student_dataset(data, "train", train=True),
        "val": _val_part(data, student=True),
        "test": _student_dataset(data, "test", train=False),
    }
    for name in ("student_plain", "student_kd"):
        torch.manual_seed(seed)  # both students start from the same weights
        student = build_student(settings, int(dims["wsi"]), n_outputs)
        record: list[float] = []
        crd = None
        if name == "student_kd":
            loss_fn, crd = student_kd_loss(student, teacher, bank, loss_task, settings, device, record=record)
        else:
            loss_fn = distillation_loss(student, loss_task, None, device=device)
        fit = train_with_loss(
            student,
            loss_fn,
            student_parts["train"],
            student_parts["val"],
            extra_parameters=list(crd.parameters()) if crd is not None else None,
            **train_kwargs,
        )
        results[name] = _test_metrics(student, student_parts["test"], task, device, fit)
        if record:
            results[name]["kd_weight_mean"] = float(np.mean(record))
    logger.info("distillation fold results: %s", results)
    return results


def settings_dict(settings: DistillSettings) -> dict[str, Any]:
    """The settings as a plain dict (for logs and result tables)."""
    return asdict(settings)

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

"""Pan-cancer multi-task training over several cohorts and evaluation on cohorts never seen in training.

The ModalTune recipe (Ramanathan et al. 2025, https://arxiv.org/abs/2503.17564) in a small loop: every training
cohort (a cancer type) has its own task heads and all cohorts share the slide encoder, the modality adapters and a
set of shared heads (:class:`~monai_ext.networks.modaltune.CohortTaskHeads`). Each step takes a batch from one
cohort (so a modality or label absent from a whole cohort is simply absent from its batches); cohorts take turns
in a random order each epoch, every batch of every cohort once. The loss
(:class:`~monai_ext.losses.multitask.MultiTaskLoss`) trains the cohort's heads and, with ``shared_weight``, the
shared heads on the same samples.

**Rule for an unseen cohort**: its samples are routed to the shared heads, i.e. heads trained on every training
cohort together; the adapters and encoder are shared anyway. Evaluation reports which heads answered.

Samples are dicts as in :mod:`monai_ext.data.dataset` with the multi-task label keys of
:mod:`monai_ext.losses.multitask` (``subtype``, ``stage``, ``survival_bin``, ``survival_event``, their ``_mask``
keys, and ``survival_time`` for the C-index); :class:`TaskKeys` renames the targets of an existing dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from monai_ext.data.collate import collate_multimodal
from monai_ext.losses.multitask import MultiTaskLoss
from monai_ext.metrics.classification import balanced_accuracy
from monai_ext.metrics.survival import concordance_index
from monai_ext.networks.modaltune import SHARED_HEADS, ModalTuneModel

__all__ = ["PanCancerResult", "TaskKeys", "evaluate_cohort", "run_pancancer", "train_pancancer"]

logger = logging.getLogger(__name__)


class TaskKeys(Dataset):
    """A dataset whose sample keys are renamed to the multi-task convention, e.g. ``{"label": "subtype"}``.

    Args:
        dataset: any map-style dataset of sample dicts (e.g. :class:`~monai_ext.data.dataset.MultimodalDataset`).
        rename: ``{old key: new key}``; e.g. for a survival cohort ``{"bin": "survival_bin", "event":
            "survival_event", "time": "survival_time"}``.
    """

    def __init__(self, dataset: Dataset, rename: Mapping[str, str]) -> None:
        self.dataset = dataset
        self.rename = dict(rename)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.dataset[index]
        return {self.rename.get(key, key): value for key, value in sample.items()}


def _collate_cohort(samples: Sequence[dict[str, Any]], cohort: str) -> dict[str, Any]:
    """Collate and tag every sample with its cohort name."""
    batch = collate_multimodal(samples)
    batch["cohort"] = [cohort] * len(samples)
    return batch


def _loader(dataset: Dataset, cohort: str, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    collate = partial(_collate_cohort, cohort=cohort)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator)


def _to(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


def train_pancancer(
    model: ModalTuneModel,
    cohorts: Mapping[str, Dataset],
    *,
    loss: MultiTaskLoss | None = None,
    epochs: int = 10,
    batch_size: int = 8,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> list[dict[str, float]]:
    """Train ``model`` on several cohorts, one cohort per batch.

    Args:
        model: a ModalTune model with heads for every training cohort.
        cohorts: ``{cohort name: dataset of sample dicts}``.
        loss: the multi-task loss (default: :class:`MultiTaskLoss` over the model's tasks).
        epochs: passes over every cohort.
        batch_size: samples per batch.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        seed: seed of the batch order and of the cohort schedule.
        device: where to train.

    Returns:
        one dict per epoch: the mean of each logged loss part over the epoch's batches, and ``epoch``.

    Raises:
        ValueError: no cohorts, an empty cohort, a cohort without its own heads, or nothing to train.
    """
    if not cohorts:
        raise ValueError("train_pancancer needs at least one training cohort")
    without_heads = sorted(set(cohorts) - set(model.heads.cohorts))
    if without_heads:
        raise ValueError(
            f"training cohorts {without_heads} have no heads of their own (model cohorts: {list(model.heads.cohorts)});"
            " build the model with cohorts= listing every training cohort"
        )
    empty = sorted(name for name, dataset in cohorts.items() if len(dataset) == 0)  # type: ignore[arg-type]
    if empty:
        raise ValueError(f"training cohorts {empty} have no samples")
    parameters = model.trainable_parameters()
    if not parameters:
        raise ValueError("the model has no trainable parameters (frozen encoder without adapters or heads?)")
    loss = loss or MultiTaskLoss({name: spec.kind for name, spec in model.tasks.items()})
    device = torch.device(device)
    model.to(device)
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    history = []
    for epoch in range(epochs):
        loaders = {
            name: _loader(dataset, name, batch_size, True, seed + 1000 * epoch + i)
            for i, (name, dataset) in enumerate(cohorts.items())
        }
        schedule = [name for name, loader in loaders.items() for _ in range(len(loader))]
        schedule = [schedule[i] for i in rng.permutation(len(schedule))]
        iterators = {name: iter(loader) for name, loader in loaders.items()}
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        model.train()
        for name in schedule:
            batch = _to(next(iterators[name]), device)
            optimizer.zero_grad()
            total, parts = loss(model(batch), batch)
            total.backward()
            optimizer.step()
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + float(value)
                counts[key] = counts.get(key, 0) + 1
        record = {key: sums[key] / counts[key] for key in sums}
        logger.info("epoch %d: %s", epoch, ", ".join(f"{k}={v:.4f}" for k, v in sorted(record.items())))
        history.append({"epoch": float(epoch), **record})
    return history


@torch.no_grad()
def evaluate_cohort(
    model: ModalTuneModel,
    dataset: Dataset,
    cohort: str,
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> dict[str, float | str]:
    """Metrics of every task on one cohort, over the samples labelled for each task.

    Classification: ``<task>/accuracy`` and ``<task>/balanced_accuracy``; survival: ``<task>/c_index``
    (Harrell's, from the head's risk, needs ``<task>_time`` and ``<task>_event``). A task without labelled samples
    (or, for the C-index, without an event) is left out. ``heads`` names the heads that answered: the cohort's own,
    or ``"shared"`` for a cohort never seen in training.

    Args:
        model: the trained model.
        dataset: the cohort's samples.
        cohort: its name.
        batch_size: samples per batch.
        device: where to run.

    Returns:
        ``{"heads": ..., "n": samples, "<task>/<metric>": value}``.
    """
    device = torch.device(device)
    model.to(device).eval()
    collected: dict[str, list[np.ndarray]] = {}
    for batch in _loader(dataset, cohort, batch_size, False, 0):
        out = model(_to(batch, device))
        for name, spec in model.tasks.items():
            prediction = out["tasks"][name]["logits" if spec.kind == "classification" else "risk"]
            _append(collected, f"{name}:prediction", prediction.cpu().numpy())
            rows = batch.get(f"{name}_mask", torch.ones(len(prediction), dtype=torch.bool))
            _append(collected, f"{name}:rows", rows.numpy())
            for suffix in ("", "_time", "_event"):
                if f"{name}{suffix}" in batch:
                    _append(collected, f"{name}{suffix}", batch[f"{name}{suffix}"].numpy())
    arrays = {key: np.concatenate(values) for key, values in collected.items()}
    metrics: dict[str, float | str] = {
        "heads": cohort if cohort in model.heads.cohorts else SHARED_HEADS,
        "n": float(len(dataset)),  # type: ignore[arg-type]
    }
    for name, spec in model.tasks.items():
        rows = arrays[f"{name}:rows"]
        prediction = arrays[f"{name}:prediction"][rows]
        if spec.kind == "classification" and name in arrays and rows.any():
            label = arrays[name][rows]
            predicted = prediction.argmax(axis=1)
            metrics[f"{name}/accuracy"] = float(np.mean(predicted == label))
            metrics[f"{name}/balanced_accuracy"] = balanced_accuracy(label, predicted)
        elif spec.kind == "survival" and f"{name}_time" in arrays and rows.any():
            event = arrays[f"{name}_event"][rows]
            if event.any():
                metrics[f"{name}/c_index"] = concordance_index(arrays[f"{name}_time"][rows], event, prediction)
    return metrics


def _append(store: dict[str, list[np.ndarray]], key: str, value: np.ndarray) -> None:
    store.setdefault(key, []).append(value)


@dataclass
class PanCancerResult:
    """Training history and evaluation of :func:`run_pancancer`.

    Attributes:
        history: per-epoch mean loss parts (see :func:`train_pancancer`).
        metrics: ``{cohort: metrics}`` for every evaluated cohort (see :func:`evaluate_cohort`).
        unseen: the evaluated cohorts that were not trained on (answered by the shared heads).
    """

    history: list[dict[str, float]]
    metrics: dict[str, dict[str, float | str]] = field(default_factory=dict)
    unseen: list[str] = field(default_factory=list)


def run_pancancer(
    model: ModalTuneModel,
    train: Mapping[str, Dataset],
    evaluate: Mapping[str, Dataset],
    **kwargs: Any,
) -> PanCancerResult:
    """Train on ``train`` cohorts, then evaluate every cohort of ``evaluate`` (seen or never seen in training).

    Args:
        model: a ModalTune model with heads for every training cohort and shared heads for the unseen ones.
        train: ``{cohort: training dataset}``.
        evaluate: ``{cohort: evaluation dataset}``; a name not in ``train`` is an unseen cohort.
        kwargs: arguments of :func:`train_pancancer` (``epochs``, ``batch_size``, ``lr``, ``loss``, ``seed``,
            ``device``).

    Returns:
        the history, the metrics per evaluated cohort and the list of unseen cohorts.

    Raises:
        ValueError: an unseen cohort but no shared heads to answer it.
    """
    unseen = [name for name in evaluate if name not in train]
    if unseen and model.heads.shared is None:
        raise ValueError(f"cohorts {unseen} were not trained on and the model has no shared heads (shared_heads=False)")
    history = train_pancancer(model, train, **kwargs)
    device = kwargs.get("device", "cpu")
    metrics = {name: evaluate_cohort(model, dataset, name, device=device) for name, dataset in evaluate.items()}
    for name in unseen:
        logger.info("unseen cohort %s (shared heads): %s", name, metrics[name])
    return PanCancerResult(history=history, metrics=metrics, unseen=unseen)

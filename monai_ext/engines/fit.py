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

"""Train a multimodal model with MONAI's supervised engines: validation each epoch, early stopping, best checkpoint.

The same pieces serve ``scripts/crossval.py`` and the bundles' ``train.json``: :class:`MultimodalPrepareBatch`,
:class:`TaskLoss` and :func:`task_metric`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import (
    CheckpointSaver,
    EarlyStopHandler,
    StatsHandler,
    TensorBoardStatsHandler,
    ValidationHandler,
    stopping_fn_from_metric,
)
from torch.utils.data import Dataset

from monai_ext.data.collate import collate_multimodal
from monai_ext.engines.metrics import task_metric
from monai_ext.engines.prepare_batch import MultimodalPrepareBatch
from monai_ext.engines.task_loss import TaskLoss

logger = logging.getLogger(__name__)


def _loss_value(output: dict) -> float:
    """The scalar training loss from a (not decollated) MONAI trainer output."""
    return float(output["loss"].detach())


@dataclass
class FitResult:
    """Outcome of :func:`fit_model`: the best validation metric, its epoch and the checkpoint holding it."""

    metric_name: str
    best_metric: float
    best_epoch: int
    checkpoint: Path | None
    epochs_run: int


def fit_model(
    model: torch.nn.Module,
    train_data: Dataset,
    val_data: Dataset,
    *,
    task: str,
    out_dir: str | Path,
    epochs: int = 20,
    lr: float = 2e-4,
    weight_decay: float = 1e-5,
    patience: int = 5,
    batch_size: int = 1,
    alpha: float = 0.0,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    seed: int = 0,
) -> FitResult:
    """Fit ``model`` on ``train_data``, validating on ``val_data`` (an inner split, never the test fold).

    Stops early when the task metric has not improved for ``patience`` epochs and reloads the best weights into
    ``model`` before returning. Logs per-epoch losses and metrics to TensorBoard under ``out_dir/tensorboard``.

    Returns:
        the :class:`FitResult`.
    """
    torch.manual_seed(seed)
    out_dir = Path(out_dir)
    device = torch.device(device)
    model.to(device)
    train_loader = DataLoader(
        train_data,
        batch_size=batch_size,
        shuffle=True,
        collate_fn=collate_multimodal,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )
    val_loader = DataLoader(
        val_data, batch_size=1, shuffle=False, collate_fn=collate_multimodal, num_workers=num_workers
    )
    metric_name, metric = task_metric(task)
    evaluator = SupervisedEvaluator(
        device=device,
        val_data_loader=val_loader,
        network=model,
        prepare_batch=MultimodalPrepareBatch(),
        key_val_metric={metric_name: metric},
        decollate=False,
        amp=device.type == "cuda",
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=epochs,
        train_data_loader=train_loader,
        network=model,
        optimizer=optimizer,
        loss_function=TaskLoss(task, alpha=alpha).to(device),
        prepare_batch=MultimodalPrepareBatch(label_to_model=True),
        decollate=False,
        amp=device.type == "cuda",
    )
    if hasattr(train_data, "set_epoch"):
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: train_data.set_epoch(engine.state.epoch))
    ValidationHandler(validator=evaluator, interval=1, epoch_level=True).attach(trainer)
    saver = CheckpointSaver(
        save_dir=str(out_dir / "checkpoints"),
        save_dict={"model": model},
        save_key_metric=True,
        key_metric_n_saved=1,
        file_prefix="best",
    )
    saver.attach(evaluator)
    EarlyStopHandler(
        patience=patience,
        score_function=stopping_fn_from_metric(metric_name),
        trainer=trainer,
        min_delta=1e-4,
        epoch_level=True,
    ).attach(evaluator)
    tensorboard = out_dir / "tensorboard"
    TensorBoardStatsHandler(log_dir=str(tensorboard), tag_name="train_loss", output_transform=_loss_value).attach(
        trainer
    )
    TensorBoardStatsHandler(
        log_dir=str(tensorboard), iteration_log=False, global_epoch_transform=lambda _: trainer.state.epoch
    ).attach(evaluator)
    StatsHandler(
        name="monai_ext.fit",
        tag_name="train_loss",
        iteration_log=False,
        output_transform=_loss_value,
    ).attach(trainer)
    trainer.run()
    checkpoint = saver._key_metric_checkpoint.last_checkpoint if saver._key_metric_checkpoint else None
    checkpoint_path = Path(checkpoint) if checkpoint else None
    if checkpoint_path is not None and checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        model.load_state_dict(state)
    return FitResult(
        metric_name,
        float(evaluator.state.best_metric),
        int(evaluator.state.best_metric_epoch),
        checkpoint_path,
        int(trainer.state.epoch),
    )

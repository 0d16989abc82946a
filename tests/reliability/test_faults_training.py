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

"""Faults during training: a NaN loss stops the run through the bundles' ``TerminateOnNan`` and the last good
resume checkpoint is kept untouched.

SIGKILL during training and resume is tested on a trained bundle in
``tests/bundles/test_training_runs.py::test_killed_mid_epoch_then_resumed_matches_uninterrupted``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from ignite.handlers import TerminateOnNan
from monai.bundle import ConfigParser
from monai.data import DataLoader
from monai.engines import SupervisedTrainer
from monai.handlers import CheckpointSaver
from torch.utils.data import Dataset

from monai_ext.data.collate import collate_multimodal
from monai_ext.engines.prepare_batch import MultimodalPrepareBatch
from monai_ext.engines.task_loss import TaskLoss
from monai_ext.networks.multimodal import MultimodalModel
from tests.reliability.conftest import REPO

BUNDLES = sorted(path.name for path in (REPO / "bundles").iterdir() if (path / "configs" / "train.json").is_file())
N_PATIENTS, BATCH_SIZE, POISONED_EPOCH = 8, 2, 3


class PoisonableBags(Dataset):
    """Small labelled bags ``wsi [N, 4]``; while poisoned, every bag is NaN (a corrupt batch, an overflow)."""

    def __init__(self, n: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.bags = [torch.randn(5 + index % 3, 4, generator=generator) for index in range(n)]
        self.poisoned = False

    def __len__(self) -> int:
        return len(self.bags)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        bag = self.bags[index]
        return {"wsi": torch.full_like(bag, float("nan")) if self.poisoned else bag, "label": torch.tensor(index % 2)}


def _train_config(name: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / name / "configs" / "train.json"))
    return parser


@pytest.mark.parametrize("name", BUNDLES)
def test_bundles_attach_terminate_on_nan_every_iteration(name):
    parser = _train_config(name)
    steps = [step for step in parser.get("training") if "@train#nan_guard" in step]  # read before parsing
    assert len(steps) == 1 and "Events.ITERATION_COMPLETED" in steps[0] and "@train#trainer" in steps[0]
    assert isinstance(parser.get_parsed_content("train#nan_guard"), TerminateOnNan)


def test_nan_loss_stops_training_and_keeps_last_good_checkpoint(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    parser = _train_config("pathology_survival_multimodal")
    nan_guard = parser.get_parsed_content("train#nan_guard")
    saver_args = {k: v for k, v in parser.get("train#checkpointer").items() if k not in ("_target_", "save_dir")}
    torch.manual_seed(0)
    network = MultimodalModel(modalities=["wsi"], wsi_dim=4, dim=8, n_classes=2, dropout=0.0)
    data = PoisonableBags(N_PATIENTS)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-2)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=POISONED_EPOCH + 2,
        train_data_loader=DataLoader(data, batch_size=BATCH_SIZE, collate_fn=collate_multimodal),
        network=network,
        optimizer=optimizer,
        loss_function=TaskLoss("classification"),
        prepare_batch=MultimodalPrepareBatch(label_to_model=True),
        decollate=False,
    )
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    @trainer.on(Events.EPOCH_STARTED)
    def poison(engine):
        data.poisoned = engine.state.epoch == POISONED_EPOCH

    @trainer.on(Events.EPOCH_COMPLETED)
    def snapshot(engine):
        snapshots[engine.state.epoch] = copy.deepcopy(network.state_dict())

    save_dict = {"network": network, "optimizer": optimizer, "trainer": trainer}
    CheckpointSaver(save_dir=str(tmp_path), **{**saver_args, "save_dict": save_dict}).attach(trainer)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, nan_guard)  # as the bundles' "training" list does
    nan_guard.logger.addHandler(caplog.handler)  # ignite's loggers do not propagate to the root logger
    try:
        trainer.run()
    finally:
        nan_guard.logger.removeHandler(caplog.handler)

    iterations_per_epoch = N_PATIENTS // BATCH_SIZE
    assert trainer.state.epoch == POISONED_EPOCH
    assert trainer.state.iteration == (POISONED_EPOCH - 1) * iterations_per_epoch + 1  # the first NaN iteration
    assert "NaN or Inf" in caplog.text
    assert not all(torch.isfinite(value).all() for value in network.state_dict().values())  # NaN reached weights
    assert sorted(snapshots) == list(range(1, POISONED_EPOCH))
    kept = sorted(path.name for path in tmp_path.iterdir())
    assert kept == [f"resume_checkpoint_epoch={POISONED_EPOCH - 1}.pt"]
    checkpoint = torch.load(tmp_path / kept[0], map_location="cpu", weights_only=True)
    assert checkpoint["trainer"]["iteration"] == (POISONED_EPOCH - 1) * iterations_per_epoch
    for key, value in snapshots[POISONED_EPOCH - 1].items():
        assert torch.isfinite(checkpoint["network"][key]).all()
        torch.testing.assert_close(checkpoint["network"][key], value, rtol=0, atol=0)

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

"""MONAI-engine training glue: batch splitting, task losses, fit with early stopping and best checkpoint, predict."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from monai_ext.data.collate import collate_multimodal
from monai_ext.engines.fit import fit_model
from monai_ext.engines.predict import predict
from monai_ext.engines.prepare_batch import MultimodalPrepareBatch
from monai_ext.engines.task_loss import TaskLoss
from monai_ext.losses.survival import CoxPHLoss, DiscreteTimeNLLLoss
from monai_ext.metrics.classification import roc_auc


class BagDataset(Dataset):
    """Bags whose mean first feature carries the class (label 1 -> shifted by +1.5)."""

    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.labels = rng.integers(0, 2, size=n)
        self.bags = [rng.normal(size=(rng.integers(3, 20), 4)).astype(np.float32) for _ in range(n)]
        for bag, label in zip(self.bags, self.labels, strict=True):
            bag[:, 0] += 1.5 * label

    def __len__(self) -> int:
        return len(self.bags)

    def __getitem__(self, i: int) -> dict:
        return {"case_id": f"p{i}", "wsi": torch.from_numpy(self.bags[i]), "label": torch.tensor(int(self.labels[i]))}


class MeanPoolClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, batch: dict) -> dict:
        mask = batch["wsi_mask"].unsqueeze(-1).float()
        pooled = (batch["wsi"] * mask).sum(1) / mask.sum(1)
        logits = self.linear(pooled)
        return {"logits": logits, "probs": logits.softmax(-1)}


def test_prepare_batch_splits_inputs_and_targets():
    batch = collate_multimodal([BagDataset(2, 0)[0], BagDataset(2, 0)[1]])
    inputs, targets = MultimodalPrepareBatch()(batch, "cpu")
    assert set(inputs) == {"wsi", "wsi_mask"} and set(targets) == {"label"}


def test_task_losses_equal_direct_computation():
    torch.manual_seed(0)
    logits, label = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    assert torch.isclose(
        TaskLoss("classification")({"logits": logits}, {"label": label}), F.cross_entropy(logits, label)
    )
    event, time = torch.tensor([1.0, 0, 1, 0, 1]), torch.tensor([3.0, 5, 1, 8, 2])
    nll = DiscreteTimeNLLLoss(alpha=0.4)(logits, label, event)
    assert torch.isclose(TaskLoss("survival", alpha=0.4)({"logits": logits}, {"bin": label, "event": event}), nll)
    risk = torch.randn(5)
    assert torch.isclose(
        TaskLoss("cox")({"risk": risk}, {"time": time, "event": event}), CoxPHLoss()(risk, time, event)
    )
    with_instance = TaskLoss("classification", instance_weight=0.5)(
        {"logits": logits, "instance_loss": torch.tensor(2.0)}, {"label": label}
    )
    assert torch.isclose(with_instance, F.cross_entropy(logits, label) + 1.0)
    with pytest.raises(ValueError, match="unknown task"):
        TaskLoss("segmentation")
    with pytest.raises(KeyError, match="time_bin_edges"):
        TaskLoss("survival")({"logits": logits}, {"event": event})


def test_fit_learns_stops_early_and_keeps_best(tmp_path):
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    result = fit_model(
        model,
        BagDataset(48, 1),
        BagDataset(24, 2),
        task="classification",
        out_dir=tmp_path,
        epochs=40,
        lr=5e-2,
        patience=3,
        batch_size=4,
    )
    assert result.metric_name == "auc"
    assert result.best_metric > 0.85
    assert result.epochs_run < 40, "early stopping should end training before max_epochs"
    assert result.checkpoint is not None and result.checkpoint.is_file()
    saved = torch.load(result.checkpoint, weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items()), "best weights must be reloaded"
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    test = BagDataset(30, 3)
    table = predict(model, test)
    assert list(table["case_id"]) == [f"p{i}" for i in range(30)]
    assert np.isclose(
        roc_auc(table["label"].to_numpy(int), table["prob_1"].to_numpy()),
        roc_auc(test.labels, table["prob_1"].to_numpy()),
    )
    assert roc_auc(test.labels, table["prob_1"].to_numpy()) > 0.85


def test_training_batches_hand_the_label_to_the_model_evaluation_batches_do_not():
    batch = collate_multimodal([BagDataset(2, 0)[0], BagDataset(2, 0)[1]])
    train_inputs, _ = MultimodalPrepareBatch(label_to_model=True)(batch, "cpu")
    eval_inputs, _ = MultimodalPrepareBatch()(batch, "cpu")
    assert "label" in train_inputs and "label" not in eval_inputs


def test_clam_instance_loss_reaches_training(tmp_path):
    from monai_ext.networks.multimodal import MultimodalModel

    model = MultimodalModel(modalities=("wsi",), wsi_dim=4, dim=8, aggregator="clam_sb", task="classification")
    batch = collate_multimodal([BagDataset(2, 0)[i] for i in range(2)])
    inputs, targets = MultimodalPrepareBatch(label_to_model=True)(batch, "cpu")
    model.train()
    output = model(inputs)
    assert "instance_loss" in output
    loss = TaskLoss("classification", instance_weight=1.0)(output, targets)
    assert torch.isclose(loss, F.cross_entropy(output["logits"], targets["label"]) + output["instance_loss"])

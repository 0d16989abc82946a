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

"""One loss module per task that reads the model's output dict and the target dict."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monai_ext.losses.survival import CoxPHLoss, DiscreteTimeNLLLoss

TASKS = ("classification", "staging", "survival", "cox")


class TaskLoss(nn.Module):
    """Loss of the model's output for a task, plus auxiliary losses the model reports.

    - ``classification`` / ``staging``: cross-entropy of ``pred["logits"]`` [B, K] with ``target["label"]`` [B];
    - ``survival``: discrete-time NLL of ``pred["logits"]`` [B, T] with ``target["bin"]`` and ``target["event"]``;
    - ``cox``: negative Cox partial log-likelihood of ``pred["risk"]`` [B] with ``target["time"]``/``["event"]``.
    An ``instance_loss`` in the output (CLAM's clustering loss) is added with weight ``instance_weight``.

    Args:
        task: one of ``classification``, ``staging``, ``survival``, ``cox``.
        alpha: weight of the uncensored term in the discrete-time NLL (MCAT's alpha).
        instance_weight: weight of a model-reported ``instance_loss``.
        class_weights: optional per-class weights for cross-entropy.
    """

    def __init__(
        self, task: str, *, alpha: float = 0.0, instance_weight: float = 0.3, class_weights: list[float] | None = None
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
        self.task = task
        self.instance_weight = instance_weight
        self.nll = DiscreteTimeNLLLoss(alpha=alpha)
        self.cox = CoxPHLoss()
        self.register_buffer("class_weights", torch.tensor(class_weights) if class_weights else None)

    def forward(self, pred: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.task in ("classification", "staging"):
            loss = F.cross_entropy(pred["logits"], target["label"].long(), weight=self.class_weights)
        elif self.task == "survival":
            if "bin" not in target:
                raise KeyError("survival loss needs target['bin']: give the dataset time_bin_edges from the train fold")
            loss = self.nll(pred["logits"], target["bin"].long(), target["event"])
        else:
            loss = self.cox(pred["risk"], target["time"], target["event"])
        if "instance_loss" in pred:
            loss = loss + self.instance_weight * pred["instance_loss"]
        return loss

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

"""The validation metric of each task, as an Ignite metric reading MONAI engine outputs (not decollated)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from ignite.metrics import Metric

from monai_ext.metrics.ignite import AUCMetric, CIndexMetric, KappaMetric, SurvivalOutputTransform

# MONAI engine output keys (monai.utils.enums.CommonKeys): the model output under "pred", targets under "label".
PRED, LABEL = "pred", "label"


class ClassificationOutputTransform:
    """Engine output -> ``(probabilities [B, K], labels [B])``.

    Args:
        prob_key: key of the probabilities in the model output.
    """

    def __init__(self, prob_key: str = "probs") -> None:
        self.prob_key = prob_key

    def __call__(self, output: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return output[PRED][self.prob_key].detach().float(), output[LABEL]["label"].long()


class LabelOutputTransform(ClassificationOutputTransform):
    """Engine output -> ``(predicted class [B], labels [B])`` (for agreement metrics such as kappa)."""

    def __call__(self, output: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        probs, labels = super().__call__(output)
        return probs.argmax(dim=1), labels


def task_metric(task: str) -> tuple[str, Metric]:
    """The key metric of a task: C-index for survival, AUC for classification, weighted kappa for staging.

    Returns:
        the metric's name and the metric.
    """
    if task in ("survival", "cox"):
        return "c_index", CIndexMetric(SurvivalOutputTransform("pred.risk", "label.time", "label.event"))
    if task == "staging":
        return "kappa", KappaMetric(LabelOutputTransform())
    if task == "classification":
        return "auc", AUCMetric(ClassificationOutputTransform())
    raise ValueError(f"unknown task {task!r}")

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

from monai_ext.losses.alignment import TextAlignmentLoss
from monai_ext.losses.survival import CoxPHLoss, DiscreteTimeNLLLoss

TASKS = ("classification", "staging", "survival", "cox")


class TaskLoss(nn.Module):
    """Loss of the model's output for a task, plus auxiliary losses the model reports.

    - ``classification`` / ``staging``: cross-entropy of ``pred["logits"]`` [B, K] with ``target["label"]`` [B];
    - ``survival``: discrete-time NLL of ``pred["logits"]`` [B, T] with ``target["bin"]`` and ``target["event"]``;
    - ``cox``: negative Cox partial log-likelihood of ``pred["risk"]`` [B] with ``target["time"]``/``["event"]``.

    Auxiliary terms, each added only when the model reports it (so models that report none train as before):

    - ``instance_loss`` (CLAM's clustering loss) with weight ``instance_weight``;
    - ``slide_loss`` (slide-stage cross-entropy of :class:`~monai_ext.networks.hierarchical.SlideToPatientModel`
      trained with slide labels) with weight ``slide_weight``;
    - the slide-text alignment of HMF (https://github.com/ErShiY/HMF) with weight ``alignment_weight``: a
      model-reported ``alignment_loss``, or else, for a classification model whose output has
      ``slide_text_similarity [B, K]`` (bi-cross fusion with one prompt class per task class), the
      :class:`~monai_ext.losses.alignment.TextAlignmentLoss` of that similarity with ``target["label"]``.

    HMF adds its slide and alignment terms with weight 1, the defaults here.

    Args:
        task: one of ``classification``, ``staging``, ``survival``, ``cox``.
        alpha: weight of the uncensored term in the discrete-time NLL (MCAT's alpha).
        instance_weight: weight of a model-reported ``instance_loss``.
        class_weights: optional per-class weights for cross-entropy.
        slide_weight: weight of a model-reported ``slide_loss``.
        alignment_weight: weight of the slide-text alignment term (0 turns it off).
        alignment_temperature: temperature of the alignment term computed here (HMF: 0.07).
    """

    def __init__(
        self,
        task: str,
        *,
        alpha: float = 0.0,
        instance_weight: float = 0.3,
        class_weights: list[float] | None = None,
        slide_weight: float = 1.0,
        alignment_weight: float = 1.0,
        alignment_temperature: float = 0.07,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
        self.task = task
        self.instance_weight = instance_weight
        self.slide_weight = slide_weight
        self.alignment_weight = alignment_weight
        self.nll = DiscreteTimeNLLLoss(alpha=alpha)
        self.cox = CoxPHLoss()
        self.alignment = TextAlignmentLoss(alignment_temperature)
        self.register_buffer("class_weights", torch.tensor(class_weights) if class_weights else None)

    def forward(self, pred: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> torch.Tensor:
        """The task loss plus the weighted auxiliary terms the model reports.

        Args:
            pred: the model's output dict (see the class docstring for the keys read).
            target: ``label [B]``, or ``bin``/``event [B]`` (survival), or ``time``/``event [B]`` (cox).

        Returns:
            the scalar loss.

        Raises:
            KeyError: survival without ``bin``.
            ValueError: a ``slide_text_similarity [B, K]`` whose ``K`` differs from the classes of ``logits``.
        """
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
        if "slide_loss" in pred:
            loss = loss + self.slide_weight * pred["slide_loss"]
        if self.alignment_weight:
            alignment = self._alignment(pred, target)
            if alignment is not None:
                loss = loss + self.alignment_weight * alignment
        return loss

    def _alignment(self, pred: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The model's ``alignment_loss``, or the alignment of a classification model's bag with its class text."""
        if "alignment_loss" in pred:
            return pred["alignment_loss"]
        similarity = pred.get("slide_text_similarity")
        if similarity is None or similarity.ndim != 2 or self.task not in ("classification", "staging"):
            return None  # [B, S, K] similarities of a slide -> patient model are aligned by the model itself
        if similarity.shape[1] != pred["logits"].shape[1]:
            raise ValueError(
                f"slide_text_similarity has {similarity.shape[1]} prompt classes but the logits "
                f"{pred['logits'].shape[1]} task classes: give one prompt class per task class, or alignment_weight=0"
            )
        return self.alignment(similarity, target["label"].long(), pred.get("slide_text_mask"))

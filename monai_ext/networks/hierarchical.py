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

"""Slide -> patient aggregation for lymph-node pN staging: the CAMELYON17 rule and a learned patient head.

A patient's lymph-node slides are each staged negative / ITC / micro / macro; the patient's pN stage follows from
those slide stages by the CAMELYON17 rule (:func:`pn_stage_from_slides`). :class:`SlideToPatientModel` runs a
slide-level model over every slide of a patient and adds a differentiable patient head, the slide -> patient
hierarchy of HMF (Hierarchical Multimodal Fusion of Whole Slide Images and Text for Patient-Level Cancer Staging,
https://github.com/ErShiY/HMF).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from monai_ext.losses.alignment import TextAlignmentLoss
from monai_ext.networks.fusion.layers import GatedAttentionPool
from monai_ext.networks.heads import ClassificationHead

__all__ = [
    "PATIENT_MODALITIES",
    "PN_STAGES",
    "SLIDE_STAGES",
    "SlideToPatientModel",
    "pn_stage_from_slides",
    "pn_stages_from_probs",
    "split_bags_by_slide",
]

SLIDE_STAGES = ("negative", "itc", "micro", "macro")
PN_STAGES = ("pN0", "pN0(i+)", "pN1mi", "pN1", "pN2")
# patient-level modalities copied to each of the patient's slides (with their masks)
PATIENT_MODALITIES = ("omics", "clinical", "text", "radiology")


def pn_stage_from_slides(slide_labels: Sequence[str | int]) -> str:
    """Patient pN stage from the stages of its lymph-node slides, by the CAMELYON17 rule.

    One slide is one lymph node; a node is positive when it holds a micro- or macro-metastasis (isolated tumour
    cells do not count). The rule (CAMELYON17, Bandi et al. 2019, https://doi.org/10.1109/TMI.2018.2867350):

    - ``pN0``: every node negative;
    - ``pN0(i+)``: only isolated tumour cells (ITC), no micro or macro;
    - ``pN1mi``: micro-metastases and no macro-metastasis, whatever the number of micro-positive nodes (so 4 or
      more micro-positive nodes without a macro are ``pN1mi``, not ``pN2``: the rule asks for a macro in pN1/pN2);
    - ``pN1``: 1 to 3 positive nodes with at least one macro;
    - ``pN2``: 4 to 9 positive nodes with at least one macro.

    Args:
        slide_labels: one stage per slide, a name of ``SLIDE_STAGES`` (case-insensitive) or its index.

    Returns:
        one of ``PN_STAGES``.

    Raises:
        ValueError: for no slide, an unknown stage, or 10 or more positive nodes (pN3, outside the CAMELYON17
            rule).
    """
    if isinstance(slide_labels, str) or len(slide_labels) == 0:
        raise ValueError(f"give the stages of a patient's slides as a non-empty sequence, got {slide_labels!r}")
    stages = []
    for label in slide_labels:
        if isinstance(label, str) and label.lower() in SLIDE_STAGES:
            stages.append(label.lower())
        elif isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(SLIDE_STAGES):
            stages.append(SLIDE_STAGES[label])
        else:
            raise ValueError(f"unknown slide stage {label!r}; use one of {list(SLIDE_STAGES)} or their index 0-3")
    n_macro, n_micro, n_itc = (stages.count(stage) for stage in ("macro", "micro", "itc"))
    positive = n_macro + n_micro
    if positive == 0:
        return "pN0(i+)" if n_itc else "pN0"
    if n_macro == 0:
        return "pN1mi"
    if positive <= 3:
        return "pN1"
    if positive <= 9:
        return "pN2"
    raise ValueError(f"{positive} positive nodes is pN3 (10 or more), which the CAMELYON17 rule does not cover")


def pn_stages_from_probs(slide_probs: Tensor, slide_mask: Tensor) -> list[str]:
    """Apply :func:`pn_stage_from_slides` to the most probable stage of each valid slide.

    Args:
        slide_probs: ``[B, S, 4]`` slide-stage probabilities (or logits) in ``SLIDE_STAGES`` order.
        slide_mask: bool ``[B, S]``, True for real slides.

    Returns:
        one pN stage per patient.
    """
    predicted = slide_probs.argmax(dim=-1)
    return [pn_stage_from_slides(predicted[b][slide_mask[b]].tolist()) for b in range(predicted.shape[0])]


def split_bags_by_slide(x: Tensor, mask: Tensor, slide_index: Tensor) -> dict[str, Tensor]:
    """Split padded patient bags into padded slide bags.

    Args:
        x: patient bags ``[B, N, D]``.
        mask: bool ``[B, N]``, True for real patches.
        slide_index: long ``[B, N]``, each patch's slide within its patient (``>= 0``; padding may hold ``-1``).

    Returns:
        ``wsi [S, M, D]`` (one row per slide that has patches, ordered by patient then slide index, patches in
        their original order), ``wsi_mask`` bool ``[S, M]``, ``patient`` and ``slide`` long ``[S]`` (the patient
        row and slide index of each row), and ``source_patient``, ``source_patch``, ``target_row``,
        ``target_position`` long ``[P]`` mapping each real patch to its place in the slide bags.

    Raises:
        ValueError: for mismatched shapes or a real patch with a negative slide index.
    """
    if x.ndim != 3 or mask.shape != x.shape[:2] or slide_index.shape != x.shape[:2]:
        raise ValueError(
            f"expected wsi [B, N, D] with wsi_mask and wsi_slide_index [B, N], got {tuple(x.shape)}, "
            f"{tuple(mask.shape)} and {tuple(slide_index.shape)}"
        )
    if bool((slide_index[mask] < 0).any()):
        raise ValueError("a real patch (wsi_mask True) has a negative wsi_slide_index; -1 is for padding only")
    n_slots = int(slide_index[mask].max()) + 1 if bool(mask.any()) else 1
    patient, patch = mask.nonzero(as_tuple=True)  # row-major: by patient, then patch
    key = patient * n_slots + slide_index[patient, patch]
    order = torch.argsort(key, stable=True)
    patient, patch, key = patient[order], patch[order], key[order]
    slides, counts = torch.unique_consecutive(key, return_counts=True)
    row = torch.repeat_interleave(torch.arange(len(slides), device=x.device), counts)
    starts = torch.cumsum(counts, dim=0) - counts
    position = torch.arange(len(key), device=x.device) - starts[row]
    longest = int(counts.max()) if len(counts) else 0
    bags = x.new_zeros(len(slides), longest, x.shape[-1])
    bags[row, position] = x[patient, patch]
    bag_mask = torch.zeros(len(slides), longest, dtype=torch.bool, device=x.device)
    bag_mask[row, position] = True
    return {
        "wsi": bags,
        "wsi_mask": bag_mask,
        "patient": slides // n_slots,
        "slide": slides % n_slots,
        "source_patient": patient,
        "source_patch": patch,
        "target_row": row,
        "target_position": position,
    }


class SlideToPatientModel(nn.Module):
    """Stage every slide of a patient with a slide model, then the patient with a learned head (after HMF,
    https://github.com/ErShiY/HMF; pN rule of CAMELYON17, https://doi.org/10.1109/TMI.2018.2867350).

    The patient bag ``wsi [B, N, D]`` is split by ``wsi_slide_index`` into one bag per slide; patient-level
    modalities (``PATIENT_MODALITIES`` and their masks) are repeated for each of the patient's slides, and the
    slide model (e.g. a :class:`~monai_ext.networks.multimodal.MultimodalModel` with ``task="classification"`` and
    ``n_classes=4``) gives per-slide stage logits and embeddings. The patient head projects the slide embeddings,
    pools them with gated attention (Ilse et al. 2018, https://arxiv.org/abs/1802.04712) and classifies the pooled
    vector concatenated with the expected number of slides per stage (sum of the slide probabilities): pN depends
    on how many nodes are positive, which an attention pool, a weighted mean, cannot count. The deterministic rule
    is :func:`pn_stages_from_probs` on the returned ``slide_probs``.

    Slide supervision (HMF trains the slide stage with its own loss): in training, a batch with ``slide_label``
    (long ``[B, L]``, the stage index of slide ``s`` of each patient at ``[b, s]``, ``-1`` where unknown or
    padded) adds ``slide_loss``, the cross-entropy of the slide logits, and, when the slide model reports
    ``slide_text_similarity`` (bi-cross fusion with ``n_prompt_classes``), ``alignment_loss``
    (:class:`~monai_ext.losses.alignment.TextAlignmentLoss`) to the outputs, for
    :class:`~monai_ext.engines.task_loss.TaskLoss` to weight and add. Slide labels are never read in eval mode.

    Args:
        slide_model: maps a batch dict of slide bags to ``{"logits": [S, n_slide_classes], "embedding": [S, E]}``
            (plus optionally ``attention [S, M]`` over its patches).
        embedding_dim: slide embedding width ``E`` (default: ``slide_model.embedding_dim``).
        hidden_dim: width of the projected slide embeddings in the patient head.
        n_slide_classes: slide stages (4: negative, ITC, micro, macro).
        n_patient_classes: patient stages (5: ``PN_STAGES``).
        dropout: dropout in the patient head.
        alignment_temperature: temperature of the slide-text alignment loss (HMF: 0.07).

    Raises:
        ValueError: when ``embedding_dim`` is neither given nor known from the slide model, or a size is not
            positive.
    """

    def __init__(
        self,
        *,
        slide_model: nn.Module,
        embedding_dim: int | None = None,
        hidden_dim: int = 128,
        n_slide_classes: int = len(SLIDE_STAGES),
        n_patient_classes: int = len(PN_STAGES),
        dropout: float = 0.25,
        alignment_temperature: float = 0.07,
    ) -> None:
        super().__init__()
        embedding_dim = embedding_dim or getattr(slide_model, "embedding_dim", None)
        if embedding_dim is None:
            raise ValueError("pass embedding_dim: the slide model has no embedding_dim attribute")
        if min(embedding_dim, hidden_dim, n_slide_classes, n_patient_classes) < 1:
            raise ValueError(
                f"sizes must be positive, got embedding_dim={embedding_dim}, hidden_dim={hidden_dim}, "
                f"n_slide_classes={n_slide_classes}, n_patient_classes={n_patient_classes}"
            )
        self.slide_model = slide_model
        self.embedding_dim = hidden_dim
        self.n_slide_classes = n_slide_classes
        self.slide_projection = nn.Sequential(nn.Linear(embedding_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.slide_pool = GatedAttentionPool(hidden_dim, dropout=dropout)
        self.patient_head = ClassificationHead(hidden_dim + n_slide_classes, n_patient_classes, dropout=dropout)
        self.alignment = TextAlignmentLoss(alignment_temperature)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Stage slides and patients.

        Args:
            batch: ``wsi [B, N, D]``, ``wsi_mask`` bool ``[B, N]`` (optional, default all True),
                ``wsi_slide_index`` long ``[B, N]``, any patient-level modality of ``PATIENT_MODALITIES`` and, for
                training only, ``slide_label`` long ``[B, L]`` (see the class docstring).

        Returns:
            ``logits``, ``probs [B, n_patient_classes]`` (patient stage), ``embedding [B, hidden_dim]``,
            ``slide_logits``, ``slide_probs [B, S, n_slide_classes]`` and ``slide_embedding [B, S, E]`` (all zero
            at slide slots without patches), ``slide_mask`` bool ``[B, S]``, ``slide_weights [B, S]`` (patient
            attention over slides, sums to 1 over real slides) and, when the slide model reports patch attention,
            ``slide_patch_attention [B, N]`` (sums to 1 within each slide) and ``attention [B, N]`` (slide
            weight times patch attention: sums to 1 over the patient's patches). When the slide model reports them,
            ``slide_text_similarity [B, S, K]`` and ``slide_text_mask`` bool ``[B, S, K]`` (False at empty slots).
            In training with ``slide_label``: ``slide_loss`` and (with the similarity) ``alignment_loss``, scalars.

        Raises:
            ValueError: without ``wsi_slide_index``, for a patient without patches, wrong slide model outputs, or
                ``slide_label`` too short for the slide indices.
        """
        if "wsi" not in batch or "wsi_slide_index" not in batch:
            raise ValueError("SlideToPatientModel needs 'wsi' and 'wsi_slide_index' [B, N] to split bags by slide")
        x = batch["wsi"]
        mask = batch.get("wsi_mask")
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        empty = (~mask.any(dim=1)).nonzero().squeeze(1).tolist()
        if empty:
            raise ValueError(f"patients {empty} have no patch (wsi_mask all False); drop them before the model")
        split = split_bags_by_slide(x, mask, batch["wsi_slide_index"])
        slide_batch: dict[str, Tensor] = {"wsi": split["wsi"], "wsi_mask": split["wsi_mask"]}
        for name in PATIENT_MODALITIES:
            for key in (name, f"{name}_mask"):
                if key in batch:
                    slide_batch[key] = batch[key][split["patient"]]
        slide_out = self.slide_model(slide_batch)
        n_slides = len(split["patient"])
        logits, embedding = slide_out.get("logits"), slide_out.get("embedding")
        if logits is None or embedding is None or logits.shape != (n_slides, self.n_slide_classes):
            got = None if logits is None else tuple(logits.shape)
            raise ValueError(
                f"the slide model must return logits [{n_slides}, {self.n_slide_classes}] and an embedding; got "
                f"logits {got}: build it with task='classification', n_classes={self.n_slide_classes}"
            )
        batch_size, n_slots = x.shape[0], int(split["slide"].max()) + 1
        place = (split["patient"], split["slide"])
        slide_logits = logits.new_zeros(batch_size, n_slots, logits.shape[1]).index_put(place, logits)
        slide_embedding = embedding.new_zeros(batch_size, n_slots, embedding.shape[1]).index_put(place, embedding)
        slide_mask = torch.zeros(batch_size, n_slots, dtype=torch.bool, device=x.device)
        slide_mask[place] = True
        slide_probs = torch.softmax(slide_logits, dim=-1) * slide_mask[..., None]
        projected = self.slide_projection(slide_embedding)
        pooled, slide_weights = self.slide_pool(projected, slide_mask)
        expected_counts = slide_probs.sum(dim=1)  # [B, n_slide_classes]
        patient_logits = self.patient_head(torch.cat([pooled, expected_counts], dim=-1))
        out = {
            "logits": patient_logits,
            "probs": torch.softmax(patient_logits, dim=-1),
            "embedding": pooled,
            "slide_logits": slide_logits,
            "slide_probs": slide_probs,
            "slide_embedding": slide_embedding,
            "slide_mask": slide_mask,
            "slide_weights": slide_weights,
        }
        if "attention" in slide_out:
            patch_attention = slide_out["attention"][split["target_row"], split["target_position"]]
            source = (split["source_patient"], split["source_patch"])
            out["slide_patch_attention"] = patch_attention.new_zeros(mask.shape).index_put(source, patch_attention)
            weight = slide_weights[split["source_patient"], split["slide"][split["target_row"]]]
            out["attention"] = patch_attention.new_zeros(mask.shape).index_put(source, patch_attention * weight)
        similarity = slide_out.get("slide_text_similarity")
        if similarity is not None:
            out["slide_text_similarity"] = similarity.new_zeros(batch_size, n_slots, similarity.shape[1]).index_put(
                place, similarity
            )
            class_mask = torch.zeros(batch_size, n_slots, similarity.shape[1], dtype=torch.bool, device=x.device)
            out["slide_text_mask"] = class_mask.index_put(place, slide_out["slide_text_mask"])
        if self.training and "slide_label" in batch:
            labels = self._slide_labels(batch["slide_label"], split["patient"], split["slide"])
            known = labels >= 0
            out["slide_loss"] = F.cross_entropy(logits[known], labels[known]) if bool(known.any()) else logits.sum() * 0
            if similarity is not None:
                out["alignment_loss"] = self.alignment(similarity, labels, slide_out["slide_text_mask"])
        return out

    def _slide_labels(self, slide_label: Tensor, patient: Tensor, slide: Tensor) -> Tensor:
        """The label of each slide row ``[S]`` from ``slide_label [B, L]`` (``-1``: unknown)."""
        if slide_label.ndim != 2 or int(slide.max()) >= slide_label.shape[1]:
            raise ValueError(
                f"slide_label must be [B, L] with L above every slide index (max {int(slide.max())}), got "
                f"{tuple(slide_label.shape)}; pad it with -1"
            )
        labels = slide_label[patient, slide].long()
        if bool((labels >= self.n_slide_classes).any()):
            raise ValueError(f"slide_label holds values >= n_slide_classes={self.n_slide_classes}: {labels.tolist()}")
        return labels

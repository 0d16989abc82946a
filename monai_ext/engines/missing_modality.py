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

"""Evaluate a trained model with each modality removed at test time, and report the drop against all present.

A removed modality looks exactly like a modality the patient does not have (see
:class:`monai_ext.data.dataset.MultimodalDataset`): zero placeholder values with a False mask for ``omics``,
``clinical`` and ``text``, and no ``wsi`` keys at all for slides. Models trained with modality dropout
(``MultimodalModel(modality_dropout=p)``, Neverova et al. 2016, https://arxiv.org/abs/1501.00102) should lose
less. Evaluation runs one patient at a time with full bags, as :func:`monai_ext.engines.predict.predict`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch
from monai.data import DataLoader
from torch.utils.data import Dataset

from monai_ext.data.collate import collate_multimodal
from monai_ext.engines.crossval import fold_metrics
from monai_ext.engines.predict import predict
from monai_ext.engines.prepare_batch import MultimodalPrepareBatch
from monai_ext.metrics.staging import staging_report
from monai_ext.networks.hierarchical import PN_STAGES, pn_stages_from_probs

__all__ = [
    "REMOVABLE",
    "WithoutModality",
    "evaluate_model",
    "missing_modality_table",
    "model_modalities",
    "staging_predictions",
]

logger = logging.getLogger(__name__)

REMOVABLE = ("wsi", "omics", "clinical", "text")
SLIDE_LABEL = "slide_label"  # per-patient slide stages, long [L] padded with -1 (added by the staging datasets)


class WithoutModality(Dataset):
    """A dataset whose samples lack one modality, marked the way the dataset marks a missing one.

    Args:
        data: a dataset of sample dicts (e.g. :class:`~monai_ext.data.dataset.MultimodalDataset`).
        modality: one of ``REMOVABLE``.

    Raises:
        ValueError: for another modality name.
    """

    def __init__(self, data: Dataset, modality: str) -> None:
        if modality not in REMOVABLE:
            raise ValueError(f"cannot remove {modality!r}; choose one of {list(REMOVABLE)}")
        self.data = data
        self.modality = modality

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = dict(self.data[index])
        name = self.modality
        if name not in sample:
            return sample
        if name == "wsi":
            for key in ("wsi", "wsi_mask", "wsi_slide_index"):
                sample.pop(key, None)
        elif name == "text":
            sample["text"] = torch.zeros(1, sample["text"].shape[-1])
            sample["text_mask"] = torch.zeros(1, dtype=torch.bool)
        else:
            sample[name] = torch.zeros_like(sample[name])
            sample[f"{name}_mask"] = torch.tensor(False)
        return sample


def model_modalities(model: torch.nn.Module) -> tuple[str, ...] | None:
    """The modalities a model reads (``model.modalities``, or its slide model's), None when it does not say."""
    for candidate in (model, getattr(model, "slide_model", None)):
        names = getattr(candidate, "modalities", None)
        if names is not None:
            return tuple(names)
    return None


def _requires_wsi(model: torch.nn.Module) -> bool:
    """Whether the model refuses a batch without slides (slide -> patient models always do)."""
    return getattr(model, "slide_model", None) is not None or bool(getattr(model, "require_wsi", False))


@torch.inference_mode()
def staging_predictions(
    model: torch.nn.Module, data: Dataset, *, device: str | torch.device = "cpu"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Slide and patient predictions of a slide -> patient model
    (:class:`~monai_ext.networks.hierarchical.SlideToPatientModel`), one patient at a time.

    Slide labels, when the samples carry them (``slide_label``), are read for the table only and never given to
    the model.

    Args:
        model: returns ``probs [1, 5]``, ``slide_probs [1, S, 4]`` and ``slide_mask [1, S]``.
        data: samples with ``wsi``, ``wsi_slide_index`` and the patient ``label`` (pN index).
        device: torch device.

    Returns:
        ``(slides, patients)``: ``slides`` has ``case_id``, ``slide`` (index within the patient), ``label`` (-1
        when unknown) and ``pred`` per slide with patches; ``patients`` has ``case_id``, ``label``, ``learned``
        (argmax of the patient head) and ``rule`` (:func:`~monai_ext.networks.hierarchical.pn_stages_from_probs`
        on the predicted slide stages), as ``PN_STAGES`` indices.
    """
    model.eval().to(device)
    prepare = MultimodalPrepareBatch()
    slide_rows, patient_rows = [], []
    for batch in DataLoader(data, batch_size=1, shuffle=False, collate_fn=collate_multimodal):
        inputs, targets = prepare(batch, device)
        slide_labels = inputs.pop(SLIDE_LABEL, None)
        out = model(inputs)
        case_id = batch["case_id"][0]
        slide_pred = out["slide_probs"][0].argmax(dim=-1)
        for slot in out["slide_mask"][0].nonzero().squeeze(1).tolist():
            label = int(slide_labels[0, slot]) if slide_labels is not None and slot < slide_labels.shape[1] else -1
            slide_rows.append({"case_id": case_id, "slide": slot, "label": label, "pred": int(slide_pred[slot])})
        rule = pn_stages_from_probs(out["slide_probs"], out["slide_mask"])[0]
        patient_rows.append(
            {
                "case_id": case_id,
                "label": int(targets["label"][0]),
                "learned": int(out["probs"][0].argmax()),
                "rule": PN_STAGES.index(rule),
            }
        )
    return pd.DataFrame(slide_rows), pd.DataFrame(patient_rows)


def evaluate_model(
    model: torch.nn.Module, data: Dataset, *, task: str, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """Test metrics of a model on a dataset.

    - ``staging`` with a slide -> patient model: :func:`~monai_ext.metrics.staging.staging_report` with the
      ``learned`` and ``rule`` aggregators (slide metrics over the slides with a known label);
    - ``staging`` with a patient-level model: the ``learned`` patient metrics of the same report only;
    - ``classification`` / ``survival`` / ``cox``: :func:`~monai_ext.engines.crossval.fold_metrics`.

    Args:
        model: a trained model.
        data: the test samples.
        task: ``staging``, ``classification``, ``survival`` or ``cox``.
        device: torch device.

    Returns:
        metric name -> value.
    """
    if task != "staging":
        return fold_metrics(task, predict(model, _without_slide_labels(data), device=device))
    if getattr(model, "slide_model", None) is not None:
        slides, patients = staging_predictions(model, data, device=device)
        known = slides[slides["label"] >= 0]
        return staging_report(
            known["label"].to_numpy() if len(known) else None,
            known["pred"].to_numpy() if len(known) else None,
            patients["label"].to_numpy(),
            {"learned": patients["learned"].to_numpy(), "rule": patients["rule"].to_numpy()},
            n_patient_classes=len(PN_STAGES),
        )
    table = predict(model, _without_slide_labels(data), device=device)
    patient_preds = {"learned": table["pred"].to_numpy(int)}
    return staging_report(None, None, table["label"].to_numpy(int), patient_preds, n_patient_classes=len(PN_STAGES))


def missing_modality_table(
    model: torch.nn.Module,
    data: Dataset,
    *,
    task: str,
    modalities: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    evaluate: Callable[..., dict[str, float]] = evaluate_model,
) -> pd.DataFrame:
    """Metrics with all modalities present, then with each modality removed, and the drop.

    Args:
        model: a trained model (put in eval mode).
        data: test samples carrying every modality of the model.
        task: the task passed to ``evaluate``.
        modalities: modalities to remove one at a time; default: those the model reads (:func:`model_modalities`,
            else ``data.modalities``), without ``wsi`` when the model cannot run without slides, and none for a
            single-modality model.
        device: torch device.
        evaluate: ``evaluate(model, data, task=..., device=...) -> {metric: value}`` (default
            :func:`evaluate_model`).

    Returns:
        one row per setting: ``removed`` (``"none"`` first, then each modality), the metrics, and ``drop_<metric>``
        = value with all present - value with the modality removed (positive: the model got worse).

    Raises:
        ValueError: a modality outside ``REMOVABLE``.
    """
    if modalities is None:
        modalities = _default_removals(model, data)
    unknown = sorted(set(modalities) - set(REMOVABLE))
    if unknown:
        raise ValueError(f"cannot remove {unknown}; choose among {list(REMOVABLE)}")
    baseline = evaluate(model, data, task=task, device=device)
    rows = [{"removed": "none", **baseline}]
    for name in modalities:
        metrics = evaluate(model, WithoutModality(data, name), task=task, device=device)
        rows.append({"removed": name, **metrics})
        logger.info("without %s: %s", name, metrics)
    table = pd.DataFrame(rows)
    for metric in baseline:
        table[f"drop_{metric}"] = baseline[metric] - table[metric].astype(float)
    return table


def _default_removals(model: torch.nn.Module, data: Dataset) -> tuple[str, ...]:
    """The modalities worth removing: those the model reads (and can do without), if it reads two or more."""
    used = model_modalities(model) or tuple(getattr(data, "modalities", ()))
    used = tuple(name for name in used if name in REMOVABLE)
    if len(used) < 2:
        return ()
    if _requires_wsi(model) and "wsi" in used:
        logger.info("not removing 'wsi': %s cannot run without slides", type(model).__name__)
        used = tuple(name for name in used if name != "wsi")
    return used


class _DropKey(Dataset):
    """The samples of ``data`` without one key."""

    def __init__(self, data: Dataset, key: str) -> None:
        self.data = data
        self.key = key

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = dict(self.data[index])
        sample.pop(self.key, None)
        return sample


def _without_slide_labels(data: Dataset) -> Dataset:
    """Patient-level prediction never sees slide labels (they would reach the model as an input)."""
    probe = data[0] if len(data) else {}  # type: ignore[arg-type]
    return _DropKey(data, SLIDE_LABEL) if SLIDE_LABEL in probe else data

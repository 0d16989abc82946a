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

"""Per-patient multimodal samples: all slides' patch features plus omics, clinical and text, with masks.

A sample is a dict (see ARCHITECTURE.md): ``wsi`` float ``[N, D]`` (every slide of the patient, concatenated),
``wsi_slide_index`` long ``[N]``, ``omics`` float ``[G]`` with ``omics_mask`` (bool scalar), ``clinical``
``[C]`` with ``clinical_mask``, ``text`` ``[T, E]`` with ``text_mask`` ``[T]``, the task's targets and
``case_id``. A modality missing for a patient is legal: its mask is False and its placeholder values are zeros
that every model must ignore through the mask (the collate keeps masks next to values, so nothing is zero-filled
silently). Training can cap the patches per patient (a fresh random subset each epoch); evaluation uses all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from monai_ext.data.cohort import Cohort
from monai_ext.data.survival_bins import assign_bins
from monai_ext.wsi.store import read_features

PN_STAGES = ("pN0", "pN0(i+)", "pN1mi", "pN1", "pN2")
SLIDE_STAGES = ("negative", "itc", "micro", "macro")


class MultimodalDataset(Dataset):
    """One sample per patient of ``case_ids``.

    Args:
        cohort: the validated cohort (its manifest needs ``features_path``).
        case_ids: the patients of this split.
        modalities: modalities to include, among ``wsi``, ``omics``, ``clinical``, ``text``.
        omics: float table indexed by ``case_id`` (already scaled with statistics of the training fold); patients
            without a row get ``omics_mask=False``.
        clinical: float table indexed by ``case_id`` (already encoded); same convention.
        text: ``case_id -> [T, E]`` embeddings; absent or empty means ``text_mask`` all False.
        time_bin_edges: survival bin edges computed on the training fold (adds the ``bin`` target).
        label_values: ordered class values for classification (default: sorted labels of the cohort).
        encoder: feature files must carry this encoder identity (when given).
        max_patches: training cap on patches per patient (None: all patches).
        seed: seed of the patch sub-sampling.
        cache_features: keep loaded feature files in memory.
    """

    def __init__(
        self,
        cohort: Cohort,
        case_ids: Sequence[str],
        *,
        modalities: Sequence[str] = ("wsi",),
        omics: pd.DataFrame | None = None,
        clinical: pd.DataFrame | None = None,
        text: Mapping[str, np.ndarray] | None = None,
        time_bin_edges: np.ndarray | None = None,
        label_values: Sequence[Any] | None = None,
        encoder: str | None = None,
        max_patches: int | None = None,
        seed: int = 0,
        cache_features: bool = True,
    ) -> None:
        unknown = set(modalities) - {"wsi", "omics", "clinical", "text"}
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}; use wsi, omics, clinical, text")
        if "omics" in modalities and omics is None:
            raise ValueError("modality 'omics' requested but no omics table given")
        if "clinical" in modalities and clinical is None:
            raise ValueError("modality 'clinical' requested but no clinical table given")
        if max_patches is not None and max_patches < 1:
            raise ValueError(f"max_patches must be >= 1 or None, got {max_patches}")
        self.cohort = cohort
        self.case_ids = list(case_ids)
        self.modalities = tuple(modalities)
        self.omics = omics
        self.clinical = clinical
        self.text = text or {}
        self.time_bin_edges = time_bin_edges
        self.encoder = encoder
        self.max_patches = max_patches
        self.seed = seed
        self.epoch = 0
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] | None = {} if cache_features else None
        self.targets = cohort.labels(self.case_ids)
        if cohort.task == "classification":
            values = label_values if label_values is not None else sorted(cohort.labels()["label"].unique())
            self.label_values = list(values)
        elif cohort.task == "staging":
            self.label_values = list(PN_STAGES)
        else:
            self.label_values = []

    def set_epoch(self, epoch: int) -> None:
        """Change the patch sub-sample drawn for training (call once per epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        case_id = self.case_ids[index]
        sample: dict[str, Any] = {"case_id": case_id}
        if "wsi" in self.modalities:
            features, slide_index = self._patient_features(case_id)
            if self.max_patches is not None and len(features) > self.max_patches:
                rng = np.random.default_rng((self.seed, self.epoch, index))
                keep = np.sort(rng.choice(len(features), size=self.max_patches, replace=False))
                features, slide_index = features[keep], slide_index[keep]
            sample["wsi"] = torch.from_numpy(features)
            sample["wsi_slide_index"] = torch.from_numpy(slide_index)
        for name, table in (("omics", self.omics), ("clinical", self.clinical)):
            if name in self.modalities:
                sample[name], sample[f"{name}_mask"] = _row(table, case_id)
        if "text" in self.modalities:
            embedding = self.text.get(case_id)
            if embedding is None or len(embedding) == 0:
                width = next((len(v[0]) for v in self.text.values() if len(v)), 1)
                sample["text"], sample["text_mask"] = torch.zeros(1, width), torch.zeros(1, dtype=torch.bool)
            else:
                array = np.atleast_2d(np.asarray(embedding, dtype=np.float32))
                sample["text"], sample["text_mask"] = torch.from_numpy(array), torch.ones(len(array), dtype=torch.bool)
        sample.update(self._targets(case_id))
        return sample

    def _patient_features(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        """All slides' features of a patient, concatenated, with the slide index of each patch."""
        if self._cache is not None and case_id in self._cache:
            return self._cache[case_id]
        blocks, index = [], []
        for slide_number, path in enumerate(self.cohort.paths_of(case_id, "features_path")):
            features = read_features(path, encoder=self.encoder).features
            if len(features) == 0:  # a model must never see an empty bag: it would answer from its bias alone
                raise ValueError(
                    f"{path} (patient {case_id}) holds no patches, as a slide without tissue does: remove the slide "
                    "from the manifest"
                )
            blocks.append(features)
            index.append(np.full(len(features), slide_number, dtype=np.int64))
        result = (np.concatenate(blocks).astype(np.float32), np.concatenate(index))
        if self._cache is not None:
            self._cache[case_id] = result
        return result

    def _targets(self, case_id: str) -> dict[str, torch.Tensor]:
        row = self.targets.loc[case_id]
        task = self.cohort.task
        if task == "survival":
            time, event = float(row["survival_months"]), float(row["event"])
            out = {"time": torch.tensor(time), "event": torch.tensor(event)}
            if self.time_bin_edges is not None:
                out["bin"] = torch.tensor(int(assign_bins(np.array([time]), self.time_bin_edges)[0]))
            return out
        column = "label" if task == "classification" else "patient_stage"
        value = row[column]
        if value not in self.label_values:
            raise ValueError(f"patient {case_id}: {column}={value!r} is not one of {self.label_values}")
        return {"label": torch.tensor(self.label_values.index(value))}


def _row(table: pd.DataFrame, case_id: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A patient's row as float32 and a presence flag; an absent or all-NaN row is masked."""
    if case_id in table.index:
        values = table.loc[case_id].to_numpy(dtype=np.float32)
        if not np.isnan(values).all():
            return torch.from_numpy(np.nan_to_num(values, nan=0.0)), torch.tensor(True)
    return torch.zeros(table.shape[1]), torch.tensor(False)

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

"""Bundle inference: raw slides of a patient (+ any genomics, clinical values, text) -> prediction JSON + heatmaps.

Each slide goes through the foundation pipeline (:func:`monai_ext.wsi.extract.extract_slide`: open and validate,
tissue mask, patch grid, batched reads, the bundle's patch encoder, feature file); the other modalities go through
the preprocessing fitted at training time (``models/gene_scaler.json``, ``models/clinical_encoder.json``, the text
encoder), and a modality not given is passed as missing (mask False), as in training. The network's patch
attention is drawn over each slide's thumbnail (:mod:`monai_ext.engines.heatmap`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from monai_ext.data.clinical import ClinicalEncoder
from monai_ext.data.omics import MISSING_GENE_POLICIES, GeneReport, GeneScaler
from monai_ext.engines.bundle_data import (
    CLINICAL_ENCODER_FILE,
    GENE_SCALER_FILE,
    load_spec,
    scale_text,
    time_bin_edges,
)
from monai_ext.engines.heatmap import save_attention_heatmap
from monai_ext.wsi.extract import ExtractionConfig, extract_slide
from monai_ext.wsi.store import read_features

__all__ = ["PatientInference"]

logger = logging.getLogger(__name__)


class PatientInference:
    """Predict for one patient from raw slides and whatever other modalities are at hand.

    Args:
        network: the trained network (put in eval mode here), taking the batch dict of the bundle's datasets.
        models_dir: the bundle's ``models/`` (``data_spec.json`` and the fitted preprocessing).
        output_dir: outputs go to ``output_dir/<case_id>/``: ``prediction.json``, ``heatmap_<slide_id>.png`` and
            the slides' feature files, QC pictures and status under ``features/``.
        encoder: the patch encoder; it must be the one the training features were made with (same identity).
        extraction: slide pipeline parameters (MPP, patch size, tissue detection); training's patch size and MPP
            are checked.
        device: where the encoder and the network run.
        class_names: names of the classes in index order (classification, staging).
        class_prompts: the class prompts used in training, for networks trained with ``text="prompts"``.
        text_model: local sentence-encoder folder (None: the packaged all-MiniLM-L6-v2).
        thumbnail_mpp: micrometers per pixel of the heatmap thumbnails.
        missing_genes: what to do when the omics input lacks genes of the training gene list: ``"error"`` (refuse,
            naming the genes), ``"mean"`` (fill with the training mean, 0 after scaling) or ``"zero"`` (fill with 0
            on the raw scale). Columns are always matched by name, never by position; the gene report (policy,
            genes found, missing and extra) goes into ``prediction.json`` under ``omics_genes``.

    Raises:
        ValueError: an encoder or extraction setting that differs from training, or an unknown gene policy.
    """

    def __init__(
        self,
        network: nn.Module,
        models_dir: str | Path,
        output_dir: str | Path,
        *,
        encoder: nn.Module,
        extraction: ExtractionConfig | None = None,
        device: str | torch.device = "cpu",
        class_names: Sequence[str] | None = None,
        class_prompts: Mapping[str, Sequence[str]] | None = None,
        text_model: str | None = None,
        thumbnail_mpp: float = 8.0,
        missing_genes: str = "error",
    ) -> None:
        if missing_genes not in MISSING_GENE_POLICIES:
            raise ValueError(f"missing_genes must be one of {MISSING_GENE_POLICIES}, got {missing_genes!r}")
        self.missing_genes = missing_genes
        self.models_dir = Path(models_dir)
        self.spec = load_spec(self.models_dir)
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.output_dir = Path(output_dir)
        self.encoder = encoder.to(self.device).eval()
        self.extraction = extraction or ExtractionConfig()
        self.class_names = list(class_names) if class_names else [str(v) for v in self.spec.get("label_values", [])]
        self.class_prompts = class_prompts
        self.text_model = text_model
        self.thumbnail_mpp = thumbnail_mpp
        identity = getattr(encoder, "identity", None)
        if identity != self.spec["encoder"]:
            raise ValueError(
                f"the patch encoder {identity!r} is not the one the model was trained on ({self.spec['encoder']!r}): "
                "use the training encoder and its weights"
            )
        trained = self.spec.get("wsi", {})
        for key in ("patch_size", "mpp"):
            if key in trained and float(getattr(self.extraction, key)) != float(trained[key]):
                raise ValueError(
                    f"extraction {key}={getattr(self.extraction, key)} differs from training ({trained[key]}): "
                    "set the inference config's WSI parameters to the training ones"
                )

    def __call__(
        self,
        slide_paths: str | Path | Sequence[str | Path],
        *,
        case_id: str | None = None,
        omics: str | Path | Mapping[str, float] | None = None,
        clinical: Mapping[str, Any] | None = None,
        text: str | Sequence[str] | None = None,
        mpp: float | None = None,
    ) -> dict[str, Any]:
        """Predict for one patient; writes ``prediction.json`` and the heatmaps.

        Args:
            slide_paths: the patient's slide file(s) (all lymph nodes for staging).
            case_id: the patient's id (default: the first slide's file stem); also the row of an omics CSV.
            omics: a gene table CSV (``case_id`` column; the row of ``case_id``, or its only row) or
                ``{gene column: value}``; None: missing.
            clinical: ``{column: value}`` for the clinical columns of training (e.g. ``{"age": 61, "sex": "F"}``);
                None or all-missing: missing.
            text: the patient's notes (one text or several); None or empty: missing.
            mpp: level-0 micrometers per pixel for slides whose file lacks it.

        Returns:
            the prediction (also written to ``prediction.json``).

        Raises:
            RuntimeError: a slide failed in the slide pipeline (the reason is given).
            ValueError: omics without a row for the patient.
        """
        paths = [Path(slide_paths)] if isinstance(slide_paths, str | Path) else [Path(p) for p in slide_paths]
        if not paths:
            raise ValueError("give at least one slide path")
        case_id = case_id or paths[0].stem
        case_dir = self.output_dir / _safe_name(case_id)
        slides = [self._slide(path, case_dir, mpp) for path in paths]
        batch, gene_report = self._batch(slides, omics, clinical, text, case_id)
        with torch.inference_mode():
            output = self.network(batch)
        prediction = self._describe(output, case_id, batch)
        if gene_report is not None:
            prediction["omics_genes"] = {
                "policy": gene_report.policy,
                "n_expected": gene_report.n_expected,
                "n_found": gene_report.n_found,
                "missing": gene_report.missing,
                "n_extra_ignored": len(gene_report.extra),
                "n_nonfinite": gene_report.n_nonfinite,
            }
        attention = output.get("attention")
        offset = 0
        for number, slide in enumerate(slides):
            n_patches = len(slide["coords"])
            entry = {"slide_path": str(slide["path"]), "n_patches": n_patches}
            if attention is not None:
                weights = attention[0, offset : offset + n_patches].float().cpu().numpy()
                heatmap = case_dir / f"heatmap_{_safe_name(slide['slide_id'])}.png"
                save_attention_heatmap(
                    slide["path"],
                    slide["coords"],
                    weights,
                    slide["patch_size_level0"],
                    heatmap,
                    thumbnail_mpp=self.thumbnail_mpp,
                    mpp=mpp,
                )
                entry["heatmap"] = str(heatmap)
            if "slide_probs" in output and number < output["slide_probs"].shape[1]:
                entry["slide_probabilities"] = output["slide_probs"][0, number].float().cpu().tolist()
            prediction["slides"].append(entry)
            offset += n_patches
        if attention is None:
            logger.warning("the network reports no patch attention: no heatmap written")
        case_dir.mkdir(parents=True, exist_ok=True)
        target = case_dir / "prediction.json"
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(json.dumps(prediction, indent=1) + "\n")
        os.replace(tmp, target)
        logger.info("prediction for %s written to %s", case_id, target)
        return prediction

    def _slide(self, path: Path, case_dir: Path, mpp: float | None) -> dict[str, Any]:
        """Run the slide pipeline and read the features back."""
        result = extract_slide(path, case_dir / "features", self.encoder, self.extraction, mpp=mpp, device=self.device)
        if result.status != "done":
            raise RuntimeError(f"{path}: slide pipeline ended with {result.status}: {result.reason}")
        loaded = read_features(result.features_path, encoder=self.spec["encoder"])
        slide_mpp = float(loaded.attrs.get("slide_mpp", loaded.attrs["mpp"]))
        return {
            "path": path,
            "slide_id": result.slide_id,
            "features": loaded.features,
            "coords": loaded.coords,
            "patch_size_level0": float(loaded.attrs["patch_size"]) * float(loaded.attrs["mpp"]) / slide_mpp,
        }

    def _batch(
        self,
        slides: list[dict[str, Any]],
        omics: str | Path | Mapping[str, float] | None,
        clinical: Mapping[str, Any] | None,
        text: str | Sequence[str] | None,
        case_id: str,
    ) -> tuple[dict[str, torch.Tensor], GeneReport | None]:
        """One-patient batch dict on the device, missing modalities masked, and the gene report of the omics
        (None when no omics were given)."""
        modalities = self.spec["modalities"]
        features = np.concatenate([slide["features"] for slide in slides]).astype(np.float32)
        index = np.concatenate([np.full(len(s["features"]), k, dtype=np.int64) for k, s in enumerate(slides)])
        batch = {
            "wsi": torch.from_numpy(features)[None],
            "wsi_mask": torch.ones(1, len(features), dtype=torch.bool),
            "wsi_slide_index": torch.from_numpy(index)[None],
        }
        gene_report = None
        if "omics" in modalities:
            batch["omics"], batch["omics_mask"], gene_report = self._omics(omics, case_id)
        if "clinical" in modalities:
            batch["clinical"], batch["clinical_mask"] = self._clinical(clinical)
        if "text" in modalities:
            batch["text"], batch["text_mask"] = self._text(text)
        return {key: value.to(self.device) for key, value in batch.items()}, gene_report

    def _omics(
        self, omics: str | Path | Mapping[str, float] | None, case_id: str
    ) -> tuple[torch.Tensor, torch.Tensor, GeneReport | None]:
        """The scaled gene vector ``[1, G]`` in training order, its mask ``[1]`` and the gene report."""
        scaler = GeneScaler.load(self.models_dir / GENE_SCALER_FILE)
        if omics is None:
            return torch.zeros(1, len(scaler.genes)), torch.zeros(1, dtype=torch.bool), None
        if isinstance(omics, Mapping):
            row = pd.DataFrame([dict(omics)])
        else:
            table = pd.read_csv(omics)
            table["case_id"] = table["case_id"].astype(str)
            row = table[table["case_id"] == case_id] if len(table) > 1 else table
            if len(row) != 1:
                raise ValueError(f"{omics} has {len(row)} rows for case_id {case_id!r}; pass the patient's id")
            row = row.drop(columns="case_id")
        try:
            values, report = scaler.transform(row, policy=self.missing_genes)
        except ValueError as error:
            source = "the omics mapping" if isinstance(omics, Mapping) else str(omics)
            raise ValueError(f"{source}, case {case_id!r}: {error}") from error
        return torch.from_numpy(values.astype(np.float32)), torch.ones(1, dtype=torch.bool), report

    def _clinical(self, clinical: Mapping[str, Any] | None) -> tuple[torch.Tensor, torch.Tensor]:
        encoder = ClinicalEncoder.load(self.models_dir / CLINICAL_ENCODER_FILE)
        row = pd.DataFrame([{column: (clinical or {}).get(column) for column in encoder.columns}])
        features, observed = encoder.transform(row)
        return torch.from_numpy(features), torch.from_numpy(observed)

    def _text(self, text: str | Sequence[str] | None) -> tuple[torch.Tensor, torch.Tensor]:
        from monai_ext.data.text import TextEmbedder  # loads transformers: only when text is used

        width = int(self.spec["input_dims"]["text"])
        embedder = TextEmbedder(self.text_model)
        if self.spec.get("text_source") == "prompts":
            if not self.class_prompts:
                raise ValueError("this network was trained with class prompts: give the same class_prompts")
            vectors = embedder.class_prompt_embeddings(self.class_prompts)
            vectors = vectors.reshape(-1, vectors.shape[-1])
        else:
            items = [text] if isinstance(text, str) else list(text or [])
            items = [item for item in items if isinstance(item, str) and item.strip()]
            if not items:
                return torch.zeros(1, 1, width), torch.zeros(1, 1, dtype=torch.bool)
            vectors = scale_text(embedder.embed(items), self.spec)
        if vectors.shape[1] != width:
            raise ValueError(f"text embeddings have width {vectors.shape[1]}, the network expects {width}")
        return torch.from_numpy(vectors)[None], torch.ones(1, len(vectors), dtype=torch.bool)

    def _describe(self, output: Mapping[str, torch.Tensor], case_id: str, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The prediction JSON (without the per-slide entries)."""
        present = ["wsi"] + [
            name
            for name in ("omics", "clinical", "text")
            if f"{name}_mask" in batch and bool(batch[f"{name}_mask"].any())
        ]
        prediction: dict[str, Any] = {
            "case_id": case_id,
            "task": self.spec["task"],
            "modalities_used": present,
            "modalities_missing": [name for name in self.spec["modalities"] if name not in present],
            "slides": [],
        }
        if self.spec["model_task"] == "survival":
            edges = time_bin_edges(self.spec)
            prediction["risk"] = float(output["risk"][0])
            prediction["survival_curve"] = {
                "bin_start_months": [float(edge) for edge in edges[:-1]],
                "survival": output["survival"][0].float().cpu().tolist(),
                "hazards": output["hazards"][0].float().cpu().tolist(),
            }
        else:
            probs = output["probs"][0].float().cpu().tolist()
            names = self.class_names or [str(k) for k in range(len(probs))]
            prediction["probabilities"] = dict(zip(names, probs, strict=True))
            prediction["prediction"] = names[int(np.argmax(probs))]
        return prediction


def _safe_name(name: str) -> str:
    """A file-name-safe version of an id."""
    return re.sub(r"[^\w.-]", "_", str(name)) or "case"

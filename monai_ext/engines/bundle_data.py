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

"""Config-facing data preparation for the bundles, so that their JSON configs stay declarative.

:class:`BundleData` turns a ``dataset_dir`` into the train / val / test datasets of a bundle: it builds the demo
cohort when the folder is empty (:func:`ensure_cohort`), validates the cohort, draws one patient-grouped split,
fits the omics scaler, clinical encoder and survival bins on the training patients only, and saves them with a
``data_spec.json`` under the bundle's ``models/``. Evaluation and inference read those files back
(:func:`load_spec`), so every stage sees the same split, scaling, encoding and network sizes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch.distributed as dist

from monai_ext.data.clinical import ClinicalEncoder
from monai_ext.data.cohort import Cohort
from monai_ext.data.dataset import PN_STAGES, MultimodalDataset
from monai_ext.data.demo import make_demo_cohort
from monai_ext.data.omics import GeneScaler, select_modalities
from monai_ext.data.pathways import pathway_gene_index
from monai_ext.data.splits import Fold, check_no_leakage, patient_kfold
from monai_ext.data.survival_bins import make_time_bins
from monai_ext.wsi.store import read_attrs, read_features

__all__ = [
    "GENE_SCALER_FILE",
    "SPEC_FILE",
    "BundleData",
    "ensure_cohort",
    "fit_text_scaling",
    "load_spec",
    "scale_text",
    "time_bin_edges",
]

logger = logging.getLogger(__name__)

SPEC_FILE = "data_spec.json"
GENE_SCALER_FILE = "gene_scaler.json"
CLINICAL_ENCODER_FILE = "clinical_encoder.json"
MODES = ("train", "evaluate")
TEXT_SOURCES = ("notes", "prompts")
_MODEL_TASK = {"classification": "classification", "staging": "classification", "survival": "survival"}


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def ensure_cohort(dataset_dir: str | Path, demo: Mapping[str, Any] | None = None) -> Path:
    """The cohort manifest of ``dataset_dir``, building the demo cohort there first when the folder is empty.

    Under ``torch.distributed`` rank 0 builds the demo while the other ranks wait.

    Args:
        dataset_dir: folder holding ``manifest.csv`` (and the files it names), or an empty / missing folder.
        demo: keyword arguments of :func:`monai_ext.data.demo.make_demo_cohort` (``n_patients``, ``seed``,
            ``slide_size``, ``max_slides_per_patient``); None never builds a demo.

    Returns:
        the path of ``manifest.csv``.

    Raises:
        FileNotFoundError: no manifest, and either the folder holds other files or ``demo`` is None.
    """
    root = Path(dataset_dir)
    manifest = root / "manifest.csv"
    if manifest.is_file():
        return manifest
    is_demo = (root / "cohort.json").is_file()  # an interrupted demo build resumes
    if root.is_dir() and any(root.iterdir()) and not is_demo:
        raise FileNotFoundError(
            f"{root} has no manifest.csv but holds other files: point dataset_dir at your cohort folder (with "
            "manifest.csv, see monai_ext.data.cohort) or at an empty folder to build the demo cohort there"
        )
    if demo is None:
        raise FileNotFoundError(f"{manifest} not found and no demo cohort requested (demo=None)")
    if _rank() == 0:
        logger.info("building the demo cohort in %s (%s)", root, dict(demo))
        settings = dict(demo)
        if "slide_size" in settings:
            settings["slide_size"] = tuple(settings["slide_size"])
        make_demo_cohort(root, **settings)
    _barrier()
    return manifest


def load_spec(models_dir: str | Path) -> dict[str, Any]:
    """Read ``models_dir/data_spec.json`` written by :class:`BundleData` in training mode.

    Raises:
        FileNotFoundError: the file is absent (train the bundle first, or copy its ``models/`` folder).
    """
    path = Path(models_dir) / SPEC_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: run the bundle's training first (it writes the data spec, scalers and model.pt "
            "to models/), or copy a trained bundle's models/ folder"
        )
    return json.loads(path.read_text())


class BundleData:
    """The datasets of a bundle and the preprocessing fitted on its training patients.

    In ``"train"`` mode the split is drawn and the omics scaler (``gene_scaler.json``), clinical encoder
    (``clinical_encoder.json``), survival bin edges and network sizes (``data_spec.json``) are fitted on the
    training patients and written to ``models_dir``; in ``"evaluate"`` mode they are read back, never refitted.
    The split is one fold of a patient-grouped, stratified ``n_folds``-fold split
    (:func:`monai_ext.data.splits.patient_kfold`): the fold's test part is held out for evaluation and
    ``val_fraction`` of its training part is used for validation (early stopping, best checkpoint).

    Args:
        dataset_dir: the cohort folder (``manifest.csv``, features, ``omics.csv``); empty builds the demo.
        models_dir: the bundle's ``models/`` folder.
        task: ``"survival"``, ``"classification"`` or ``"staging"``.
        modalities: modalities of the model, among ``wsi``, ``omics``, ``clinical``, ``text``.
        mode: ``"train"`` (fit and save) or ``"evaluate"`` (load).
        demo: demo cohort arguments used when ``dataset_dir`` is empty (see :func:`ensure_cohort`).
        omics_file: gene table CSV (``case_id`` column) inside ``dataset_dir``.
        omics_suffixes: gene column suffixes kept (``_rnaseq``, ``_cnv``, ``_mut``).
        pathways: gene-set composition for pathway tokens (``"hallmarks"``, a CSV path) or None.
        min_pathway_genes: pathways with fewer genes present are dropped.
        clinical_columns: manifest columns of the clinical modality.
        categorical: which of them are one-hot encoded.
        allow_columns: further manifest columns tolerated (e.g. another task's labels).
        text: ``"notes"`` (the manifest's ``text`` column, one note per slide), ``"prompts"`` (the embeddings of
            ``class_prompts``, the same for every patient, as HMF's class text) or None.
        class_prompts: class name -> prompts, for ``text="prompts"``.
        text_model: local sentence-encoder folder (None: the packaged all-MiniLM-L6-v2).
        encoder: the feature files must carry this encoder identity (None: take the first file's).
        label_values: ordered classes for classification (default: sorted labels).
        n_bins: survival time bins (quantiles of the training patients' event times).
        n_folds: folds of the split (the test part is ``1 / n_folds`` of the patients).
        fold: which fold.
        val_fraction: share of the training part used for validation.
        seed: seed of the split and of the training patch sub-sampling.
        max_patches: training cap on patches per patient (full bags for validation and test).
        patients_with: keep only the patients who have all these modalities (before the split), e.g.
            ``["omics"]`` so that runs with and without genomics are trained and tested on the same patients.

    Raises:
        ValueError: bad arguments, or data that do not fit the saved spec.
        FileNotFoundError: evaluation mode without the files training writes.
    """

    def __init__(
        self,
        dataset_dir: str | Path,
        models_dir: str | Path,
        *,
        task: str,
        modalities: Sequence[str],
        mode: str = "train",
        demo: Mapping[str, Any] | None = None,
        omics_file: str = "omics.csv",
        omics_suffixes: Sequence[str] = ("_rnaseq",),
        pathways: str | None = None,
        min_pathway_genes: int = 1,
        clinical_columns: Sequence[str] = (),
        categorical: Sequence[str] = (),
        allow_columns: Sequence[str] = (),
        text: str | None = None,
        class_prompts: Mapping[str, Sequence[str]] | None = None,
        text_model: str | None = None,
        encoder: str | None = None,
        label_values: Sequence[Any] | None = None,
        n_bins: int = 4,
        n_folds: int = 5,
        fold: int = 0,
        val_fraction: float = 0.2,
        seed: int = 0,
        max_patches: int | None = 512,
        patients_with: Sequence[str] = (),
    ) -> None:
        if task not in _MODEL_TASK:
            raise ValueError(f"unknown task {task!r}; choose one of {sorted(_MODEL_TASK)}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if text is not None and text not in TEXT_SOURCES:
            raise ValueError(f"text must be one of {TEXT_SOURCES} or None, got {text!r}")
        if ("text" in modalities) != (text is not None):
            raise ValueError(f"modality 'text' needs text='notes' or 'prompts' and vice versa (got text={text!r})")
        if text == "prompts" and not class_prompts:
            raise ValueError("text='prompts' needs class_prompts: {class name: [prompt, ...]}")
        if not 0 <= fold < n_folds:
            raise ValueError(f"fold must be in 0..{n_folds - 1}, got {fold}")
        self.dataset_dir = Path(dataset_dir)
        self.models_dir = Path(models_dir)
        self.task = task
        self.modalities = tuple(modalities)
        self.mode = mode
        self.max_patches = max_patches
        self.seed = seed
        manifest = ensure_cohort(self.dataset_dir, demo if mode == "train" else None)
        cohort_args = {
            "task": task,
            "label_values": PN_STAGES if task == "staging" else label_values,
            "clinical_columns": tuple(clinical_columns),
            "allow_columns": tuple(dict.fromkeys(("text", *allow_columns))),
            "encoder": encoder,
        }
        self.cohort = Cohort.from_csv(manifest, **cohort_args)
        unknown = sorted(set(patients_with) - {"wsi", "omics", "clinical", "text"})
        if unknown:
            raise ValueError(f"patients_with takes modality names (wsi, omics, clinical, text), got {unknown}")
        if patients_with and mode == "train":
            keep = self._patients_with(patients_with, omics_file, omics_suffixes, clinical_columns)
            slides = self.cohort.slide_table
            logger.info("keeping the %d of %d patients with %s", len(keep), len(self.cohort.patients), patients_with)
            self.cohort = Cohort(
                slides[slides["case_id"].isin(keep)], data_root=self.dataset_dir, source=str(manifest), **cohort_args
            )
        if mode == "train":
            self.split = self._draw_split(n_folds, fold, val_fraction, seed)
            self.spec = {"task": task, "model_task": _MODEL_TASK[task], "modalities": list(self.modalities)}
            self.spec["split"] = {part: ids.tolist() for part, ids in self.split.parts().items()}
            self.spec["patients_with"] = list(patients_with)
        else:
            self.spec = load_spec(self.models_dir)
            self._check_spec()
            self.split = Fold(*(np.asarray(self.spec["split"][part], dtype=str) for part in ("train", "val", "test")))
        check_no_leakage([self.split], self.cohort.slide_table)
        self._prepare_labels(label_values, n_bins)
        self._prepare_wsi(encoder)
        self.omics = self._prepare_omics(omics_file, omics_suffixes, pathways, min_pathway_genes)
        self.clinical = self._prepare_clinical(clinical_columns, categorical)
        self.text = self._prepare_text(text, class_prompts, text_model)
        if mode == "train":
            self._save_spec()
        self._datasets: dict[str, MultimodalDataset] = {}

    # -- public -------------------------------------------------------------------------------------------------

    @property
    def train(self) -> MultimodalDataset:
        """Training patients (patch cap ``max_patches``, a fresh sub-sample each epoch)."""
        return self.dataset("train")

    @property
    def val(self) -> MultimodalDataset:
        """Validation patients (full bags)."""
        return self.dataset("val")

    @property
    def test(self) -> MultimodalDataset:
        """Held-out test patients (full bags)."""
        return self.dataset("test")

    def dataset(self, part: str) -> MultimodalDataset:
        """The dataset of ``part`` (``train``, ``val`` or ``test``), built once.

        Raises:
            ValueError: unknown part, or a part without patients.
        """
        if part not in ("train", "val", "test"):
            raise ValueError(f"part must be train, val or test, got {part!r}")
        if part not in self._datasets:
            ids = getattr(self.split, part)
            if len(ids) == 0:
                raise ValueError(f"the {part} part of the split has no patient; lower n_folds or raise val_fraction")
            self._datasets[part] = MultimodalDataset(
                self.cohort,
                list(ids),
                modalities=self.modalities,
                omics=self.omics,
                clinical=self.clinical,
                text=self.text,
                time_bin_edges=self.time_bin_edges,
                label_values=self.spec.get("label_values") or None,
                encoder=self.spec["encoder"],
                max_patches=self.max_patches if part == "train" else None,
                seed=self.seed,
            )
        return self._datasets[part]

    def __repr__(self) -> str:
        sizes = {part: len(ids) for part, ids in self.split.parts().items()}
        return f"BundleData(task={self.task!r}, modalities={self.modalities}, patients={sizes})"

    # -- preparation ---------------------------------------------------------------------------------------------

    def _patients_with(
        self, modalities: Sequence[str], omics_file: str, suffixes: Sequence[str], clinical_columns: Sequence[str]
    ) -> set[str]:
        """Patients of the cohort for whom every modality of ``modalities`` is present."""
        keep = set(self.cohort.patients)
        if "omics" in modalities:
            table = select_modalities(pd.read_csv(self.dataset_dir / omics_file).set_index("case_id"), tuple(suffixes))
            keep &= {str(case) for case in table.index[table.notna().any(axis=1)]}
        if "clinical" in modalities:
            clinical = self.cohort.patient_table()[list(clinical_columns)]
            keep &= set(clinical.index[clinical.notna().any(axis=1)])
        if "text" in modalities:
            slides = self.cohort.slide_table
            noted = slides["text"].map(lambda note: isinstance(note, str) and bool(note.strip()))
            keep &= set(slides.loc[noted, "case_id"])
        return keep

    def _draw_split(self, n_folds: int, fold: int, val_fraction: float, seed: int) -> Fold:
        stratify = {"survival": "survival", "classification": "label", "staging": "patient_stage"}[self.task]
        folds = patient_kfold(self.cohort, n_folds, stratify_by=stratify, seed=seed, val_fraction=val_fraction)
        return folds[fold]

    def _check_spec(self) -> None:
        if self.spec.get("task") != self.task or list(self.spec.get("modalities", [])) != list(self.modalities):
            raise ValueError(
                f"{self.models_dir / SPEC_FILE} was written for task {self.spec.get('task')!r} with modalities "
                f"{self.spec.get('modalities')}, not {self.task!r} with {list(self.modalities)}: evaluate with the "
                "settings the model was trained with"
            )
        unknown = sorted(set().union(*self.spec["split"].values()) - set(self.cohort.patients))
        if unknown:
            raise ValueError(
                f"{len(unknown)} patient(s) of the saved split are not in {self.dataset_dir}, first {unknown[:5]}: "
                "evaluate on the cohort the model was trained on"
            )

    def _prepare_labels(self, label_values: Sequence[Any] | None, n_bins: int) -> None:
        self.time_bin_edges: np.ndarray | None = None
        if self.task == "survival":
            if self.mode == "train":
                train = self.cohort.labels(self.split.train)
                edges = make_time_bins(train["survival_months"].to_numpy(), train["event"].to_numpy(), n_bins)
                self.spec["time_bin_edges"] = [float(edge) if np.isfinite(edge) else None for edge in edges]
                self.spec["n_outputs"] = n_bins
            self.time_bin_edges = time_bin_edges(self.spec)
            return
        if self.mode == "train":
            if self.task == "staging":
                values = list(PN_STAGES)
            elif label_values is not None:
                values = list(label_values)
            else:
                values = sorted(self.cohort.labels()["label"].unique().tolist())
            self.spec["label_values"] = [value.item() if isinstance(value, np.generic) else value for value in values]
            self.spec["n_outputs"] = len(values)

    def _prepare_wsi(self, encoder: str | None) -> None:
        first = self.cohort.paths_of(self.cohort.patients[0], "features_path")[0]
        attrs = read_attrs(first) or {}
        if self.mode == "train":
            self.spec["encoder"] = encoder or attrs.get("encoder")
            self.spec["wsi"] = {
                key: _plain(attrs[key]) for key in ("patch_size", "mpp", "min_tissue_fraction") if key in attrs
            }
            self.spec.setdefault("input_dims", {})["wsi"] = int(read_features(first).features.shape[1])
        elif attrs.get("encoder") not in (None, self.spec["encoder"]):
            raise ValueError(
                f"{first} was made with encoder {attrs.get('encoder')!r} but the model with {self.spec['encoder']!r}"
            )

    def _prepare_omics(
        self, omics_file: str, suffixes: Sequence[str], pathways: str | None, min_genes: int
    ) -> pd.DataFrame | None:
        if "omics" not in self.modalities:
            return None
        path = self.dataset_dir / omics_file
        if not path.is_file():
            raise FileNotFoundError(f"modality 'omics' needs the gene table {path} (one row per case_id)")
        table = select_modalities(pd.read_csv(path).set_index("case_id"), tuple(suffixes))
        table.index = table.index.astype(str)
        scaler_path = self.models_dir / GENE_SCALER_FILE
        if self.mode == "train":
            scaler = GeneScaler().fit(table, [case for case in self.split.train if case in table.index])
            if _rank() == 0:
                self.models_dir.mkdir(parents=True, exist_ok=True)
                scaler.save(scaler_path)
            self.spec["input_dims"]["omics"] = len(scaler.genes)
            if pathways is not None:
                index, report = pathway_gene_index(scaler.genes, pathways, min_genes=min_genes)
                logger.info("omics pathway tokens: %s", report)
                self.spec["pathway_names"] = [name for name, _ in index]
                self.spec["pathway_gene_index"] = [columns for _, columns in index]
        else:
            scaler = GeneScaler.load(scaler_path)
        values, _ = scaler.transform(table)
        return pd.DataFrame(values, index=table.index, columns=scaler.genes)

    def _prepare_clinical(self, columns: Sequence[str], categorical: Sequence[str]) -> pd.DataFrame | None:
        if "clinical" not in self.modalities:
            return None
        if not columns:
            raise ValueError("modality 'clinical' needs clinical_columns (manifest columns such as age, sex)")
        patients = self.cohort.patient_table()
        path = self.models_dir / CLINICAL_ENCODER_FILE
        if self.mode == "train":
            encoder = ClinicalEncoder().fit(
                patients, list(columns), categorical=list(categorical), case_ids=list(self.split.train)
            )
            if _rank() == 0:
                self.models_dir.mkdir(parents=True, exist_ok=True)
                encoder.save(path)
            self.spec["input_dims"]["clinical"] = encoder.n_features
            self.spec["clinical_features"] = encoder.feature_names
        else:
            encoder = ClinicalEncoder.load(path)
        return encoder.transform_frame(patients)

    def _prepare_text(
        self, source: str | None, prompts: Mapping[str, Sequence[str]] | None, model: str | None
    ) -> dict[str, np.ndarray] | None:
        if source is None:
            return None
        from monai_ext.data.text import TextEmbedder  # loads transformers: only when text is used

        embedder = TextEmbedder(model)
        if source == "prompts":
            assert prompts is not None  # checked in __init__
            vectors = embedder.class_prompt_embeddings(prompts)
            flat = vectors.reshape(-1, vectors.shape[-1])
            texts = {case: flat for case in self.cohort.patients}
        else:
            slides = self.cohort.slide_table
            notes = {
                case: [note for note in group["text"] if isinstance(note, str)]
                for case, group in slides.groupby("case_id", sort=True)
            }
            texts = embedder.embed_by_case(notes)
        width = next(len(v[0]) for v in texts.values() if len(v))
        if self.mode == "train":
            self.spec["input_dims"]["text"] = int(width)
            self.spec["text_source"] = source
            if source == "notes":
                training = [texts[case] for case in self.split.train if len(texts.get(case, ()))]
                self.spec["text_scaling"] = fit_text_scaling(np.concatenate(training))
        elif self.spec["input_dims"].get("text") != width:
            raise ValueError(f"text embeddings have width {width}, the model {self.spec['input_dims'].get('text')}")
        return {case: scale_text(vectors, self.spec) for case, vectors in texts.items()}

    def _save_spec(self) -> None:
        if _rank() != 0:
            return
        self.models_dir.mkdir(parents=True, exist_ok=True)
        path = self.models_dir / SPEC_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.spec, indent=1) + "\n")
        os.replace(tmp, path)


def fit_text_scaling(vectors: np.ndarray) -> dict[str, list[float]]:
    """Per-dimension mean and standard deviation of note embeddings ``[N, E]`` (the training patients' notes).

    Sentence embeddings are unit vectors whose components are a few hundredths: unscaled, a linear text encoder
    starts orders of magnitude below the other modalities' and learns slowly next to them. Scaled like the genes,
    every modality enters on the same footing.
    """
    std = vectors.std(axis=0)
    return {"mean": vectors.mean(axis=0).tolist(), "std": np.where(std > 1e-6, std, 1.0).tolist()}


def scale_text(vectors: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    """Note embeddings ``[T, E]`` scaled with the spec's ``text_scaling`` (unchanged without one, e.g. prompts or
    a spec saved before the scaling existed; empty arrays stay empty)."""
    scaling = spec.get("text_scaling")
    if scaling is None or len(vectors) == 0:
        return vectors
    mean, std = np.asarray(scaling["mean"]), np.asarray(scaling["std"])
    return ((vectors - mean) / std).astype(vectors.dtype)


def time_bin_edges(spec: Mapping[str, Any]) -> np.ndarray:
    """The survival bin edges of a data spec (saved with ``null`` for the last, infinite edge: strict JSON)."""
    return np.asarray([np.inf if edge is None else edge for edge in spec["time_bin_edges"]], dtype=float)


def _plain(value: Any) -> Any:
    """NumPy scalars as Python numbers (for JSON)."""
    return value.item() if isinstance(value, np.generic) else value

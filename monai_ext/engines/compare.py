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

"""Compare methods (WSI only, omics only, each fusion, HMF, ...) on the demo cohort's three tasks, with every model
also evaluated with each modality removed at test time.

A method is a named :class:`Method` in the :data:`METHODS` registry: which tasks it applies to, which modalities it
reads, how to build its network for a fold (:class:`FoldContext` gives the input sizes, the fold's datasets and the
settings) and, optionally, how to train it (default: :func:`monai_ext.engines.fit.fit_model` with early stopping
on an inner validation split). New methods join with :func:`register_method`; a method with its own training
(e.g. a teacher then a student) gives ``train``. ModalTune, the low-rank teacher and the WSI-only students
(plain and distilled) live in :mod:`monai_ext.engines.compare_methods_extra`, registered when this module loads.

For each task, seed and patient-grouped fold (:func:`monai_ext.data.splits.patient_kfold`, stratified), the omics
scaler, clinical encoder and survival bins are fitted on the fold's training patients only (as in
:func:`monai_ext.engines.crossval.run_crossval`); each method is trained and then evaluated on the test patients with
all modalities and with each one removed (:func:`monai_ext.engines.missing_modality.missing_modality_table`).
:func:`comparison_markdown` turns the per-run rows into mean +/- std tables over folds and seeds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from monai_ext.data.cohort import Cohort
from monai_ext.data.dataset import PN_STAGES, SLIDE_STAGES, MultimodalDataset
from monai_ext.data.omics import select_modalities
from monai_ext.data.pathways import pathway_gene_index
from monai_ext.data.prompts import DEMO_STAGE_PROMPTS, check_class_prompts, load_class_prompts
from monai_ext.data.splits import Fold, check_no_leakage, patient_kfold
from monai_ext.engines.crossval import CrossValSettings, _fold_inputs
from monai_ext.engines.fit import fit_model
from monai_ext.engines.missing_modality import SLIDE_LABEL, missing_modality_table
from monai_ext.networks.hierarchical import SlideToPatientModel
from monai_ext.networks.multimodal import MultimodalModel

__all__ = [
    "DEFAULT_METHODS",
    "DEMO_TASKS",
    "METHODS",
    "CompareSettings",
    "FoldContext",
    "Method",
    "TaskSpec",
    "WithSlideLabels",
    "comparison_markdown",
    "register_method",
    "run_comparison",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSpec:
    """One comparison task on a cohort.

    Attributes:
        cohort_task: the :class:`~monai_ext.data.cohort.Cohort` task (``staging``, ``classification``,
            ``survival``).
        fit_task: the training / metric task (``staging``, ``classification``, ``survival``).
        modalities: what the multimodal methods read (a method may ask for its own set).
        clinical_columns: manifest columns of the clinical modality.
        categorical: which of them are one-hot encoded.
        text: source of the ``text`` modality: ``"notes"`` (the manifest's ``text``), ``"prompts"`` (class prompts,
            the same for every patient) or None.
        needs_omics: keep only the patients with an omics row (so omics-only models see every test patient).
        metrics: the table columns, the first one being the main metric (its drop is shown).
    """

    cohort_task: str
    fit_task: str
    modalities: tuple[str, ...]
    clinical_columns: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    text: str | None = None
    needs_omics: bool = False
    metrics: tuple[str, ...] = ()


DEMO_TASKS: dict[str, TaskSpec] = {
    "staging": TaskSpec(
        cohort_task="staging",
        fit_task="staging",
        modalities=("wsi", "clinical"),
        clinical_columns=("age", "sex"),
        categorical=("sex",),
        text="prompts",
        metrics=(
            "patient_learned_kappa",
            "patient_learned_accuracy",
            "patient_learned_macro_f1",
            "patient_rule_kappa",
            "patient_rule_accuracy",
            "patient_rule_macro_f1",
            "slide_accuracy",
            "slide_macro_f1",
        ),
    ),
    "subtyping": TaskSpec(
        cohort_task="classification",
        fit_task="classification",
        modalities=("wsi", "omics", "text"),
        text="notes",
        needs_omics=True,
        metrics=("auc", "balanced_accuracy", "macro_f1"),
    ),
    "survival": TaskSpec(
        cohort_task="survival",
        fit_task="survival",
        modalities=("wsi", "omics", "clinical"),
        clinical_columns=("age", "sex"),
        categorical=("sex",),
        needs_omics=True,
        metrics=("c_index",),
    ),
}


@dataclass
class CompareSettings:
    """Training settings shared by every method.

    Attributes:
        folds: patient-grouped folds per seed.
        run_folds: run only the first ``run_folds`` folds of each seed (None: all), e.g. 1 for a smoke test.
        seeds: seeds; each draws its own folds and initialisations.
        epochs: maximum epochs per run.
        patience: early-stopping patience on the inner validation split.
        lr: AdamW learning rate.
        batch_size: patients per training step (bags are padded and masked).
        dim: shared token width of the networks.
        dropout: dropout of the networks.
        modality_dropout: per-sample modality dropout in training for multimodal methods (slides are never
            dropped).
        keep_ratio: HMF's attention-filter ratio.
        max_patches: training cap on patches per patient.
        n_bins: survival time bins.
        val_fraction: share of each training part held out for early stopping.
        device: torch device.
    """

    folds: int = 3
    run_folds: int | None = None
    seeds: tuple[int, ...] = (0, 1)
    epochs: int = 15
    patience: int = 5
    lr: float = 1e-3
    batch_size: int = 4
    dim: int = 64
    dropout: float = 0.1
    modality_dropout: float = 0.25
    keep_ratio: float = 0.5
    max_patches: int | None = 512
    n_bins: int = 4
    val_fraction: float = 0.2
    device: str = "cpu"


@dataclass
class FoldContext:
    """Everything a method needs to build and train its network on one fold.

    Attributes:
        task: the comparison task name (a key of the task table).
        spec: its :class:`TaskSpec`.
        modalities: the modalities this method reads.
        dims: input widths of the modalities present (``wsi``, ``omics``, ``clinical``, ``text``).
        n_outputs: patient classes (staging: 5 pN stages), or survival bins.
        omics_columns: the fold's gene columns, in model input order (for pathway tokens).
        settings: the comparison settings.
        seed: the run's seed.
        out_dir: the run's output folder.
        train_data: training patients (with ``slide_label`` for staging).
        val_data: inner validation patients.
        test_data: held-out patients.
        make_dataset: ``make_dataset(part, max_patches) -> Dataset``: the fold's ``"train"``, ``"val"`` or
            ``"test"`` patients with this method's modalities and preprocessing, capped at ``max_patches`` patches
            per patient (None: full bags, e.g. for a teacher's outputs on its training patients).
    """

    task: str
    spec: TaskSpec
    modalities: tuple[str, ...]
    dims: dict[str, int]
    n_outputs: int
    omics_columns: tuple[str, ...]
    settings: CompareSettings
    seed: int
    out_dir: Path
    train_data: Dataset
    val_data: Dataset
    test_data: Dataset
    make_dataset: Callable[[str, int | None], Dataset] | None = None


@dataclass(frozen=True)
class Method:
    """A named method of the comparison.

    Attributes:
        name: registry key and table row name.
        description: one line with the paper link.
        tasks: comparison tasks it applies to.
        build: ``build(context) -> network``.
        modalities: modalities it reads, or None for the task's own set.
        train: ``train(network, context) -> network`` (the trained network to evaluate); None trains with
            :func:`monai_ext.engines.fit.fit_model`.
    """

    name: str
    description: str
    tasks: tuple[str, ...]
    build: Callable[[FoldContext], nn.Module]
    modalities: tuple[str, ...] | None = None
    train: Callable[[nn.Module, FoldContext], nn.Module] | None = None


METHODS: dict[str, Method] = {}


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Add a method to :data:`METHODS`.

    Args:
        method: the method.
        replace: allow replacing a registered method of the same name.

    Returns:
        the method.

    Raises:
        ValueError: the name is taken and ``replace`` is False.
    """
    if method.name in METHODS and not replace:
        raise ValueError(f"method {method.name!r} is already registered; pass replace=True to override it")
    METHODS[method.name] = method
    return method


class WithSlideLabels(Dataset):
    """Samples of a staging dataset with ``slide_label``: long ``[width]``, the stage index of each of the
    patient's slides in manifest order (the order of ``wsi_slide_index``), padded with -1.

    Args:
        data: a :class:`~monai_ext.data.dataset.MultimodalDataset` of a staging cohort with ``slide_stage``.
        width: label slots (at least the most slides of a patient).

    Raises:
        ValueError: no ``slide_stage`` column, or a patient with more slides than ``width``.
    """

    def __init__(self, data: MultimodalDataset, width: int) -> None:
        slides = data.cohort.slide_table
        if "slide_stage" not in slides.columns:
            raise ValueError("slide labels need the manifest column 'slide_stage' (negative / itc / micro / macro)")
        self.data = data
        self.modalities = data.modalities
        self.labels: dict[str, torch.Tensor] = {}
        by_case = dict(tuple(slides.groupby("case_id", sort=False)["slide_stage"]))
        for case_id in data.case_ids:
            stages = by_case[case_id].tolist()
            if len(stages) > width:
                raise ValueError(f"patient {case_id} has {len(stages)} slides, more than width={width}")
            label = torch.full((width,), -1, dtype=torch.long)
            for s, stage in enumerate(stages):
                label[s] = SLIDE_STAGES.index(stage) if stage in SLIDE_STAGES else -1
            self.labels[case_id] = label

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to the wrapped dataset (new patch sub-sample)."""
        self.data.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.data[index]
        sample[SLIDE_LABEL] = self.labels[sample["case_id"]]
        return sample


def _multimodal(
    context: FoldContext,
    *,
    fusion: str = "concat",
    omics_encoder: str = "snn",
    fusion_kwargs: dict[str, Any] | None = None,
    n_classes: int | None = None,
) -> MultimodalModel:
    """A :class:`MultimodalModel` of the method's modalities for the fold (ABMIL for vector fusions; Hallmark
    pathway tokens for ``omics_encoder="pathways"``); ``n_classes`` overrides the task's classes."""
    settings, dims = context.settings, context.dims
    names = context.modalities
    index = None
    if "omics" in names and omics_encoder == "pathways":
        index = [columns for _, columns in pathway_gene_index(list(context.omics_columns), "hallmarks")[0]]
    survival = context.spec.fit_task == "survival"
    return MultimodalModel(
        modalities=names,
        wsi_dim=dims.get("wsi"),
        omics_dim=dims.get("omics"),
        clinical_dim=dims.get("clinical"),
        text_dim=dims.get("text"),
        dim=settings.dim,
        aggregator="abmil",
        fusion=fusion,
        fusion_kwargs=fusion_kwargs,
        omics_encoder=omics_encoder if "omics" in names else "snn",
        pathway_gene_index=index,
        task="survival" if survival else "classification",
        n_classes=n_classes or context.n_outputs,
        n_bins=context.n_outputs,
        modality_dropout=settings.modality_dropout if len(names) > 1 else 0.0,
        dropout=settings.dropout,
    )


def _slides_to_patient(context: FoldContext, slide_model: nn.Module) -> SlideToPatientModel:
    """The slide model under the learned patient head (gated attention over slides plus expected stage counts)."""
    return SlideToPatientModel(
        slide_model=slide_model, hidden_dim=context.settings.dim, dropout=context.settings.dropout
    )


def _hmf(context: FoldContext) -> SlideToPatientModel:
    """HMF: bi-cross attention of the class prompts and patches with the attention filter and slide-text
    alignment, slide stages supervised, then the learned patient head (and the pN rule at evaluation)."""
    kwargs = {"keep_ratio": context.settings.keep_ratio, "n_prompt_classes": len(SLIDE_STAGES)}
    slide_model = _multimodal(context, fusion="bicross", fusion_kwargs=kwargs, n_classes=len(SLIDE_STAGES))
    return _slides_to_patient(context, slide_model)


def _slides_abmil(context: FoldContext) -> SlideToPatientModel:
    return _slides_to_patient(context, _multimodal(context, n_classes=len(SLIDE_STAGES)))


ALL_TASKS = tuple(DEMO_TASKS)
PARTS = ("train", "val", "test")
DEFAULT_METHODS = (
    Method(
        "wsi_abmil",
        "WSI only, gated attention MIL over the patient's patches (ABMIL, Ilse et al. 2018, "
        "https://arxiv.org/abs/1802.04712)",
        ALL_TASKS,
        lambda context: _multimodal(context),
        modalities=("wsi",),
    ),
    Method(
        "omics_snn",
        "omics only, self-normalizing network (SNN, Klambauer et al. 2017, https://arxiv.org/abs/1706.02515)",
        ("subtyping", "survival"),
        lambda context: _multimodal(context),
        modalities=("omics",),
    ),
    Method(
        "concat",
        "late fusion: concatenation of the ABMIL bag embedding and each modality's embedding (baseline)",
        ALL_TASKS,
        lambda context: _multimodal(context, fusion="concat"),
    ),
    Method(
        "kronecker",
        "gated Kronecker fusion with the appended 1 (Pathomic Fusion, Chen et al. 2020, "
        "https://arxiv.org/abs/1912.08937)",
        ALL_TASKS,
        lambda context: _multimodal(context, fusion="kronecker"),
    ),
    Method(
        "coattention",
        "genomic-guided co-attention over patches (MCAT, Chen et al. 2021, "
        "https://doi.org/10.1109/ICCV48922.2021.00398), Hallmark pathway tokens",
        ("subtyping", "survival"),  # genomic queries: tasks with omics
        lambda context: _multimodal(context, fusion="coattention", omics_encoder="pathways"),
    ),
    Method(
        "pathway_cross",
        "pathway tokens and patches with cross-attention (SurvPath, Jaume et al. 2024, "
        "https://arxiv.org/abs/2304.06819)",
        ("subtyping", "survival"),  # genomic queries: tasks with omics
        lambda context: _multimodal(context, fusion="pathway_cross", omics_encoder="pathways"),
    ),
    Method(
        "slides_abmil",
        "WSI only, slide -> patient: ABMIL slide stages, learned patient head and the pN rule",
        ("staging",),
        _slides_abmil,
        modalities=("wsi",),
    ),
    Method(
        "hmf",
        "HMF: bi-cross attention of class prompts and patches, attention filter, slide-text alignment, "
        "slide -> patient (https://github.com/ErShiY/HMF)",
        ("staging",),
        _hmf,
        modalities=("wsi", "text"),
    ),
)
METHODS.update({default.name: default for default in DEFAULT_METHODS})


def _fit(model: nn.Module, context: FoldContext) -> nn.Module:
    """The default training: :func:`~monai_ext.engines.fit.fit_model` with early stopping; best weights kept."""
    settings = context.settings
    fit_model(
        model,
        context.train_data,
        context.val_data,
        task=context.spec.fit_task,
        out_dir=context.out_dir,
        epochs=settings.epochs,
        lr=settings.lr,
        patience=settings.patience,
        batch_size=settings.batch_size,
        device=settings.device,
        seed=context.seed,
    )
    return model


def _load_cohort(manifest: Path, spec: TaskSpec, omics: pd.DataFrame | None) -> Cohort:
    """The task's cohort; only patients with omics when the task needs them."""
    allow = tuple(column for column in ("age", "sex") if column not in spec.clinical_columns)
    kwargs: dict[str, Any] = {
        "task": spec.cohort_task,
        "clinical_columns": spec.clinical_columns,
        "allow_columns": allow,
        "label_values": PN_STAGES if spec.cohort_task == "staging" else None,
    }
    cohort = Cohort.from_csv(manifest, **kwargs)
    if spec.needs_omics and omics is not None:
        slides = cohort.slide_table
        kept = slides[slides["case_id"].isin(omics.index)]
        logger.info("%d of %d patients have omics", kept["case_id"].nunique(), len(cohort.patients))
        cohort = Cohort(kept, data_root=manifest.parent, source=str(manifest), **kwargs)
    return cohort


def _texts(
    cohort: Cohort, source: str | None, embedder: Any, prompts: Mapping[str, Sequence[str]]
) -> dict[str, np.ndarray] | None:
    """Per-patient text embeddings: the patient's notes, or the class prompts (the same for everyone)."""
    if source is None:
        return None
    if source == "prompts":
        vectors = np.asarray(embedder.class_prompt_embeddings(prompts))
        flat = vectors.reshape(-1, vectors.shape[-1])
        return {case_id: flat for case_id in cohort.patients}
    slides = cohort.slide_table
    notes = {
        case_id: [note for note in group["text"] if isinstance(note, str) and note.strip()]
        for case_id, group in slides.groupby("case_id", sort=True)
    }
    return embedder.embed_by_case(notes)


def _stratify(spec: TaskSpec, cohort: Cohort) -> str:
    return "survival" if spec.cohort_task == "survival" else cohort.labels().columns[0]


def run_comparison(
    manifest: str | Path,
    out_dir: str | Path,
    *,
    tasks: Sequence[str] = ALL_TASKS,
    methods: Sequence[str] | None = None,
    settings: CompareSettings | None = None,
    task_specs: Mapping[str, TaskSpec] | None = None,
    omics_file: str | Path | None = None,
    prompts: str | Path | Mapping[str, Sequence[str]] | None = None,
    text_embedder: Any = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Train and evaluate the methods on every task, seed and fold; write ``results.csv`` under ``out_dir``.

    Args:
        manifest: the cohort manifest (e.g. the demo cohort's ``manifest.csv``).
        out_dir: output folder (one sub-folder per task / seed / fold / method, and ``results.csv``).
        tasks: task names of ``task_specs``.
        methods: names in :data:`METHODS` (default: every method registered for each task).
        settings: training settings.
        task_specs: the tasks (default :data:`DEMO_TASKS`).
        omics_file: gene table CSV with ``case_id`` (default: ``omics.csv`` beside the manifest); its ``_rnaseq``
            columns are used.
        prompts: class prompts for the staging text: a JSON / CSV file or a mapping (default
            :data:`~monai_ext.data.prompts.DEMO_STAGE_PROMPTS`).
        text_embedder: an object with ``embed_by_case`` and ``class_prompt_embeddings`` (default: a
            :class:`~monai_ext.data.text.TextEmbedder`, created when a method reads text).
        progress: show a progress bar over the runs.

    Returns:
        one row per task, method, seed, fold and removed modality (``"none"`` = all present) with the metrics and
        their drops.

    Raises:
        ValueError: an unknown task or method.
    """
    settings = settings or CompareSettings()
    specs = dict(task_specs or DEMO_TASKS)
    manifest, out_dir = Path(manifest), Path(out_dir)
    unknown = sorted(set(tasks) - set(specs)) + sorted(set(methods or ()) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown task(s) or method(s) {unknown}; tasks: {sorted(specs)}, methods: {sorted(METHODS)}")
    omics_path = Path(omics_file) if omics_file is not None else manifest.parent / "omics.csv"
    omics = select_modalities(pd.read_csv(omics_path).set_index("case_id"), ("_rnaseq",))
    if isinstance(prompts, str | Path):
        class_prompts = load_class_prompts(prompts, SLIDE_STAGES)
    else:
        class_prompts = check_class_prompts(prompts or DEMO_STAGE_PROMPTS, SLIDE_STAGES)
    plan = [(task, [METHODS[name] for name in (methods or METHODS) if task in METHODS[name].tasks]) for task in tasks]
    n_folds = min(settings.folds, settings.run_folds or settings.folds)
    n_runs = sum(len(chosen) for _, chosen in plan) * len(settings.seeds) * n_folds
    rows: list[dict[str, Any]] = []
    with tqdm(total=n_runs, desc="compare", unit="run", disable=not progress) as bar:
        for task, chosen in plan:
            spec = specs[task]
            cohort = _load_cohort(manifest, spec, omics)
            reads_text = any("text" in (method.modalities or spec.modalities) for method in chosen)
            if reads_text and text_embedder is None:
                from monai_ext.data.text import TextEmbedder  # loads transformers: only when text is used

                text_embedder = TextEmbedder()
            texts = _texts(cohort, spec.text, text_embedder, class_prompts) if reads_text else None
            for seed in settings.seeds:
                folds = patient_kfold(
                    cohort,
                    settings.folds,
                    stratify_by=_stratify(spec, cohort),
                    seed=seed,
                    val_fraction=settings.val_fraction,
                )
                check_no_leakage(folds, cohort.slide_table)
                for k, fold in enumerate(folds[:n_folds]):
                    fold_dir = out_dir / task / f"seed_{seed}" / f"fold_{k}"
                    for method in chosen:
                        bar.set_postfix_str(f"{task} {method.name} seed {seed} fold {k}")
                        table = _run_method(method, task, spec, cohort, fold, omics, texts, settings, seed, fold_dir)
                        for row in table.to_dict("records"):
                            rows.append({"task": task, "method": method.name, "seed": seed, "fold": k, **row})
                        bar.update(1)
    results = pd.DataFrame(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    results.to_csv(out_dir / "results.csv", index=False)
    return results


def _run_method(
    method: Method,
    task: str,
    spec: TaskSpec,
    cohort: Cohort,
    fold: Fold,
    omics: pd.DataFrame,
    texts: dict[str, np.ndarray] | None,
    settings: CompareSettings,
    seed: int,
    fold_dir: Path,
) -> pd.DataFrame:
    """Fit the fold's preprocessing on its training patients, build, train and evaluate one method."""
    names = method.modalities or spec.modalities
    run_dir = fold_dir / method.name
    fold_settings = CrossValSettings(
        task=spec.fit_task,
        modalities=names,
        n_bins=settings.n_bins,
        clinical_columns=spec.clinical_columns if "clinical" in names else (),
        categorical=spec.categorical if "clinical" in names else (),
    )
    inputs = _fold_inputs(cohort, fold, fold_settings, run_dir, omics, cohort.patient_table())

    def make_dataset(part: str, max_patches: int | None) -> Dataset:
        data: Dataset = MultimodalDataset(
            cohort,
            getattr(fold, part),
            modalities=names,
            omics=inputs["omics"],
            clinical=inputs["clinical"],
            text=texts,
            time_bin_edges=inputs["edges"],
            max_patches=max_patches,
            seed=seed,
        )
        if spec.cohort_task == "staging":
            data = WithSlideLabels(data, width=int(cohort.slide_table.groupby("case_id").size().max()))
        return data

    datasets = {part: make_dataset(part, settings.max_patches if part == "train" else None) for part in PARTS}
    probe = datasets["train"][0]
    dims = {name: int(probe[name].shape[-1]) for name in ("wsi", "omics", "clinical", "text") if name in probe}
    if spec.fit_task == "survival":
        n_outputs = settings.n_bins
    else:
        n_outputs = len(PN_STAGES) if spec.cohort_task == "staging" else cohort.labels()["label"].nunique()
    context = FoldContext(
        task=task,
        spec=spec,
        modalities=tuple(names),
        dims=dims,
        n_outputs=int(n_outputs),
        omics_columns=tuple(inputs["omics"].columns) if inputs["omics"] is not None else (),
        settings=settings,
        seed=seed,
        out_dir=run_dir,
        train_data=datasets["train"],
        val_data=datasets["val"],
        test_data=datasets["test"],
        make_dataset=make_dataset,
    )
    torch.manual_seed(seed)
    model = method.build(context)
    model = (method.train or _fit)(model, context)
    return missing_modality_table(model, datasets["test"], task=spec.fit_task, device=settings.device)


def comparison_markdown(results: pd.DataFrame, task_specs: Mapping[str, TaskSpec] | None = None) -> str:
    """Markdown tables (one per task) of mean +/- std over folds and seeds, one row per method and removed
    modality, with the mean drop of the task's main metric.

    Args:
        results: the rows of :func:`run_comparison`.
        task_specs: the tasks (default :data:`DEMO_TASKS`), for the metric columns.

    Returns:
        the markdown text.
    """
    specs = task_specs or DEMO_TASKS
    parts = []
    for task, rows in results.groupby("task", sort=False):
        spec = specs[str(task)]
        metrics = [metric for metric in spec.metrics if metric in rows.columns]
        main = metrics[0]
        n_runs = rows.groupby(["method", "removed"], sort=False).size().max()
        header = ["method", "removed", *metrics, f"drop in {main}"]
        lines = [
            f"### {task} (mean +/- std over {n_runs} runs: folds x seeds)",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        for (method, removed), group in rows.groupby(["method", "removed"], sort=False):
            cells = [str(method), "none (all present)" if removed == "none" else f"- {removed}"]
            cells += [_mean_std(group[metric]) for metric in metrics]
            cells.append("" if removed == "none" else _mean_std(group[f"drop_{main}"]))
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _mean_std(values: pd.Series) -> str:
    values = values.astype(float).dropna()
    if values.empty:
        return "n/a"
    if len(values) == 1:
        return f"{values.iloc[0]:.3f}"
    return f"{values.mean():.3f} +/- {values.std(ddof=1):.3f}"


# the extra methods register themselves into METHODS; imported last because they build on the names above
from monai_ext.engines import compare_methods_extra  # noqa: E402, F401

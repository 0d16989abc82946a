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

"""Genomics + clinical survival benchmark on TCGA-format tables (MCAT / PORPOISE folds), with baselines beside.

Per fold, everything is fitted on the fold's training patients only: the gene scaler, the clinical encoder, the
survival bins (the published MCAT code fits bins on the whole cohort; not here) and the Breslow baseline hazard.
Networks stop early on an inner split of the training fold (never on the test fold). Hyperparameters are fixed
once in :class:`BenchmarkSettings` for every cohort.

Baselines (lifelines, MIT): Cox on age, Cox on age + sex, elastic-net Cox on RNA + age (the
``enet_genes`` RNA genes most associated with survival in the training fold by the univariate Cox score test,
:func:`cox_score_screen`, as lifelines' elastic net is too slow on ~1,500; the tables' RNA columns are mostly
z-scores already, so their variance ranks nothing).
Models: :class:`monai_ext.networks.multimodal.MultimodalModel` with an SNN (Klambauer et al. 2017,
https://arxiv.org/abs/1706.02515) or pathway-token (SurvPath, https://arxiv.org/abs/2304.06819) genomics encoder,
with or without clinical variables, trained with the discrete-time NLL (MCAT, https://arxiv.org/abs/2109.09520) or
the Cox partial likelihood (DeepSurv, https://arxiv.org/abs/1606.00931).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from lifelines import CoxPHFitter
from sklearn.model_selection import train_test_split

from monai_ext.data.clinical import ClinicalEncoder
from monai_ext.data.omics import GeneScaler, gene_columns
from monai_ext.data.pathways import pathway_gene_index
from monai_ext.data.splits import Fold, check_no_leakage
from monai_ext.data.survival_bins import assign_bins, make_time_bins
from monai_ext.data.tcga import TcgaTable
from monai_ext.engines.crossval import inner_validation
from monai_ext.losses.survival import CoxPHLoss, DiscreteTimeNLLLoss
from monai_ext.metrics.survival import concordance_index, concordance_index_ipcw, integrated_brier_score
from monai_ext.networks.multimodal import MultimodalModel

__all__ = [
    "BenchmarkSettings",
    "FoldInputs",
    "ModelSpec",
    "Prediction",
    "build_fold_inputs",
    "cox_baseline",
    "cox_score_screen",
    "default_models",
    "evaluate_survival",
    "patient_table",
    "resplit",
    "run_survival_benchmark",
    "select_models",
    "summarize",
    "train_network",
]

logger = logging.getLogger(__name__)

STAGE_ORDER = ("0", "I", "II", "III", "IV")


@dataclass(frozen=True)
class BenchmarkSettings:
    """Hyperparameters fixed once for every cohort (no tuning on any test fold).

    Attributes:
        gene_suffixes: gene modalities fed to the networks.
        composition: pathway composition of the pathway-token model (shipped name or CSV path).
        min_pathway_genes: pathways with fewer genes present are dropped.
        dim: token width of the networks.
        dropout: dropout of the networks.
        epochs: maximum epochs.
        patience: epochs without inner-validation C-index gain before stopping.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        batch_size: patients per step (the Cox loss needs several per batch).
        n_bins: discrete-time bins (quantiles of uncensored training times).
        val_fraction: part of the training fold held out for early stopping.
        enet_genes: RNA genes (largest univariate Cox score statistic on the training fold) given to the elastic-net
            Cox and the random survival forest.
        enet_penalizer: lifelines ``penalizer`` of the elastic-net Cox.
        enet_l1_ratio: lifelines ``l1_ratio`` of the elastic-net Cox.
        seed: random seed.
    """

    gene_suffixes: tuple[str, ...] = ("_rnaseq", "_cnv", "_mut")
    composition: str = "hallmarks"
    min_pathway_genes: int = 5
    dim: int = 64
    dropout: float = 0.25
    epochs: int = 40
    patience: int = 8
    lr: float = 5e-4
    weight_decay: float = 1e-3
    batch_size: int = 64
    n_bins: int = 4
    val_fraction: float = 0.2
    enet_genes: int = 100
    enet_penalizer: float = 0.1
    enet_l1_ratio: float = 0.5
    seed: int = 0


@dataclass(frozen=True)
class ModelSpec:
    """One network of the benchmark.

    Attributes:
        name: row name in the table.
        omics_encoder: ``"snn"`` or ``"pathways"``.
        clinical: whether the clinical vector is a second modality.
        loss: ``"nll"`` (discrete-time hazards) or ``"cox"``.
        members: networks averaged (bagging over inner splits): member ``m`` is trained with seed ``seed + m`` and
            early-stopped on its own inner split of the training fold, so together they learn from every training
            patient; risks are averaged after z-scoring each member's on the training fold, survival curves
            averaged.
    """

    name: str
    omics_encoder: str
    clinical: bool
    loss: str
    members: int = 1


def select_models(specs: Sequence[Any], wanted: str | Sequence[str] | None) -> list[Any]:
    """The specs (anything with a ``name``) whose names are in ``wanted`` (comma-separated or a list), in their
    original order; all of them when ``wanted`` is None.

    Raises:
        ValueError: a wanted name that is not among the specs, listing the choices.
    """
    if wanted is None:
        return list(specs)
    names = wanted.split(",") if isinstance(wanted, str) else list(wanted)
    unknown = sorted(set(names) - {spec.name for spec in specs})
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose among {[spec.name for spec in specs]}")
    return [spec for spec in specs if spec.name in names]


def default_models() -> list[ModelSpec]:
    """SNN and pathway-token models, each with and without clinical variables, with the NLL and with the Cox loss;
    then both encoders with clinical variables and the Cox loss as bags of 5 (``_bag5``)."""
    single = [
        ModelSpec(f"{encoder}{'+clin' if clinical else ''}_{loss}", encoder, clinical, loss)
        for encoder in ("snn", "pathways")
        for clinical in (False, True)
        for loss in ("nll", "cox")
    ]
    bagged = [ModelSpec(f"{encoder}+clin_cox_bag5", encoder, True, "cox", members=5) for encoder in ("snn", "pathways")]
    return single + bagged


@dataclass
class FoldInputs:
    """Everything one fold's models and baselines need, fitted on the training fold only.

    Attributes:
        parts: ``{"train", "val", "test"}`` -> case ids (``val`` is the inner split of the training fold).
        omics: scaled gene matrix per part ``[N, G]`` (float32).
        clinical: encoded clinical matrix per part ``[N, C]`` (float32), or empty ``{}`` without clinical columns.
        covariates: raw per-patient table (``survival_months``, ``event``, ``age``, ``is_female``, ...) per part.
        rna: scaled RNA genes per part as DataFrames (for the elastic-net baseline).
        edges: survival bin edges ``[n_bins + 1]`` from the training fold.
        genes: gene column names in model input order.
    """

    parts: dict[str, np.ndarray]
    omics: dict[str, np.ndarray]
    clinical: dict[str, np.ndarray]
    covariates: dict[str, pd.DataFrame]
    rna: dict[str, pd.DataFrame]
    edges: np.ndarray
    genes: list[str]

    def outcome(self, part: str) -> tuple[np.ndarray, np.ndarray]:
        """``(time [N], event [N])`` of a part."""
        table = self.covariates[part]
        return table["survival_months"].to_numpy(float), table["event"].to_numpy(int)


@dataclass
class Prediction:
    """Test-fold output of one model: risk ``[N]`` (higher = earlier death) and survival curves ``[N, T]``."""

    risk: np.ndarray
    survival: Callable[[np.ndarray], np.ndarray]
    info: dict[str, float] = field(default_factory=dict)


def patient_table(table: TcgaTable, clinical: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per patient: outcome, ``age``, ``is_female`` and, when given, ``stage`` / ``grade``.

    Args:
        table: from :func:`monai_ext.data.tcga.read_tcga_table` (``event`` = 1 when death was observed).
        clinical: from :func:`monai_ext.data.tcga.read_clinical` (indexed by ``case_id``), or None.

    Returns:
        DataFrame indexed by ``case_id`` (sorted), restricted to patients with gene data.

    Raises:
        ValueError: outcome columns that differ between slides of one patient.
    """
    columns = [c for c in ("survival_months", "event", "age", "is_female", "oncotree_code") if c in table.slides]
    grouped = table.slides.groupby("case_id", sort=True)
    differing = [c for c in ("survival_months", "event") if (grouped[c].nunique(dropna=False) > 1).any()]
    if differing:
        raise ValueError(f"{differing} differ between slides of one patient: fix the table before benchmarking")
    patients = grouped[columns].first()
    if clinical is not None:
        extra = [c for c in ("stage", "grade") if c in clinical.columns and clinical[c].notna().any()]
        patients = patients.join(clinical[extra], how="left")
        if "stage" in patients:
            unlisted = patients["stage"].notna() & ~patients["stage"].isin(STAGE_ORDER)
            if unlisted.any():
                logger.warning(
                    "stage value(s) %s outside %s treated as missing",
                    sorted(patients.loc[unlisted, "stage"].astype(str).unique()),
                    STAGE_ORDER,
                )
                patients.loc[unlisted, "stage"] = np.nan
    return patients.loc[patients.index.intersection(table.genes.index)]


def clinical_spec(patients: pd.DataFrame) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """Clinical columns of a patient table: ``(columns, categorical, ordinal)``; ``stage`` is ordinal (0 to IV,
    other values count as missing), ``grade`` categorical, ``is_female`` left out when constant."""
    columns = ["age"] if "age" in patients else []
    categorical = []
    if "is_female" in patients and patients["is_female"].nunique() > 1:
        columns.append("is_female")
        categorical.append("is_female")
    if "grade" in patients:
        columns.append("grade")
        categorical.append("grade")
    ordinal = {}
    if "stage" in patients:
        columns.append("stage")
        ordinal["stage"] = list(STAGE_ORDER)
    return columns, categorical, ordinal


def build_fold_inputs(
    patients: pd.DataFrame, genes: pd.DataFrame, fold: Fold, settings: BenchmarkSettings, seed: int
) -> FoldInputs:
    """Scale genes, encode clinical variables and bin survival times on the fold's training patients only.

    Args:
        patients: from :func:`patient_table`.
        genes: gene table indexed by ``case_id``.
        fold: the fold (its ``test`` is held out; ``val`` is drawn from ``train`` when empty).
        settings: benchmark settings.
        seed: seed of the inner split.

    Raises:
        LeakageError: a patient in two parts.
        ValueError: fold case ids without gene data or outcome.
    """
    known = patients.index
    unknown = sorted(set(fold.train).union(fold.test).difference(known))
    if unknown:
        logger.warning(
            "%d fold case id(s) without gene data or outcome are skipped, e.g. %s", len(unknown), unknown[:5]
        )
    fold = Fold(*(np.asarray(sorted(set(ids) & set(known)), dtype=str) for ids in (fold.train, fold.val, fold.test)))
    fold = inner_validation(fold, patients["event"], settings.val_fraction, seed)
    check_no_leakage([fold])
    parts = fold.parts()
    training = np.concatenate([fold.train, fold.val])
    columns = gene_columns(genes.columns, settings.gene_suffixes)
    scaler = GeneScaler().fit(genes[columns], list(training))
    scaled, _ = scaler.transform(genes[columns])
    scaled = pd.DataFrame(scaled, index=genes.index, columns=scaler.genes)
    rna_columns = gene_columns(scaler.genes, ("_rnaseq",))
    train_outcome = patients.loc[training]
    score = cox_score_screen(
        scaled.loc[training, rna_columns].to_numpy(np.float64),
        train_outcome["survival_months"].to_numpy(),
        train_outcome["event"].to_numpy(),
    )
    top_rna = [rna_columns[i] for i in np.argsort(-np.abs(score), kind="stable")[: settings.enet_genes]]
    clinical_columns, categorical, ordinal = clinical_spec(patients)
    encoder = ClinicalEncoder().fit(
        patients, clinical_columns, categorical=categorical, ordinal=ordinal, case_ids=list(training)
    )
    clinical, _ = encoder.transform(patients)
    clinical = pd.DataFrame(clinical, index=patients.index)
    edges = make_time_bins(
        train_outcome["survival_months"].to_numpy(), train_outcome["event"].to_numpy(), settings.n_bins
    )
    return FoldInputs(
        parts=parts,
        omics={part: scaled.loc[ids].to_numpy(np.float32) for part, ids in parts.items()},
        clinical={part: clinical.loc[ids].to_numpy(np.float32) for part, ids in parts.items()},
        covariates={part: patients.loc[ids] for part, ids in parts.items()},
        rna={part: scaled.loc[ids, top_rna] for part, ids in parts.items()},
        edges=edges,
        genes=list(scaler.genes),
    )


def cox_score_screen(x: np.ndarray, time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """Univariate Cox score test statistic of every column, at zero coefficient (Breslow risk sets).

    ``z_g = U_g / sqrt(I_g)`` with ``U_g = sum over deaths i of (x_ig - mean of x_g over the risk set of i)`` and
    ``I_g`` the sum of the risk-set variances: the signed square root of the score (log-rank) chi-square of a Cox
    model on column ``g`` alone. Vectorised over columns, for screening genes on a training fold.

    Args:
        x: covariates ``[N, G]``.
        time: follow-up times ``[N]``.
        event: 1 = death observed, 0 = censored ``[N]``.

    Returns:
        ``[G]`` statistics (0 for a column constant over every risk set, or without any death).

    Raises:
        ValueError: mismatched lengths.
    """
    x = np.asarray(x, dtype=np.float64)
    time, event = np.asarray(time, dtype=np.float64), np.asarray(event).astype(bool)
    if x.ndim != 2 or len(x) != len(time) or len(time) != len(event):
        raise ValueError(f"x [N, G], time [N] and event [N] must agree, got {x.shape}, {time.shape}, {event.shape}")
    order = np.argsort(time, kind="stable")
    x, time, event = x[order], time[order], event[order]
    # risk set of a death at t: every patient with time >= t (tied times included), via reverse cumulative sums
    at_risk = np.cumsum(np.ones(len(time))[::-1])[::-1]
    s1 = np.cumsum(x[::-1], axis=0)[::-1]
    s2 = np.cumsum((x * x)[::-1], axis=0)[::-1]
    first = np.searchsorted(time, time[event], side="left")
    n, mean = at_risk[first][:, None], s1[first] / at_risk[first][:, None]
    score = (x[event] - mean).sum(axis=0)
    information = np.clip(s2[first] / n - mean * mean, 0.0, None).sum(axis=0)
    return np.divide(score, np.sqrt(information), out=np.zeros_like(score), where=information > 1e-12)


def _numeric_covariates(fold: FoldInputs, part: str, columns: Sequence[str]) -> pd.DataFrame:
    """Covariate columns as floats, standardised with training-fold statistics (train + val), missing -> 0."""
    frames = {p: fold.covariates[p][[c for c in columns if c in fold.covariates[p]]].astype(float) for p in fold.parts}
    training = pd.concat([frames["train"], frames["val"]])
    mean, std = training.mean(), training.std(ddof=0).replace(0.0, 1.0)
    return ((frames[part] - mean) / std).fillna(0.0)


def cox_baseline(
    fold: FoldInputs, columns: Sequence[str], *, rna: bool = False, penalizer: float = 0.0, l1_ratio: float = 0.0
) -> Prediction:
    """Cox proportional hazards (lifelines ``CoxPHFitter``) on covariates (and RNA genes), fitted on the whole
    training fold (train + inner val), predicting the test fold. Cox, JRSS-B 1972
    (https://doi.org/10.1111/j.2517-6161.1972.tb00899.x); elastic net: Simon et al. 2011
    (https://doi.org/10.18637/jss.v039.i05).

    Args:
        fold: the fold inputs.
        columns: covariate columns (e.g. ``["age"]``, ``["age", "is_female"]``); constant ones are dropped.
        rna: add the fold's selected RNA genes.
        penalizer: lifelines ``penalizer`` (0 = plain Cox).
        l1_ratio: lifelines ``l1_ratio``.

    Returns:
        the test-fold :class:`Prediction`.
    """
    frames = {}
    for part in ("train", "val", "test"):
        frame = _numeric_covariates(fold, part, columns)
        frames[part] = pd.concat([frame, fold.rna[part]], axis=1) if rna else frame
    training = pd.concat([frames["train"], frames["val"]])
    kept = [c for c in training.columns if training[c].std() > 0]
    dropped = sorted(set(frames["test"].columns) - set(kept))
    if dropped:
        logger.info("Cox baseline: constant training column(s) %s dropped", dropped)
    time = np.concatenate([fold.outcome("train")[0], fold.outcome("val")[0]])
    event = np.concatenate([fold.outcome("train")[1], fold.outcome("val")[1]])
    data = training[kept].assign(_time=time, _event=event)
    model = CoxPHFitter(penalizer=penalizer, l1_ratio=l1_ratio).fit(data, "_time", "_event")
    test = frames["test"].reindex(columns=kept, fill_value=0.0)
    risk = np.asarray(model.predict_log_partial_hazard(test), dtype=float)

    def survival(times: np.ndarray) -> np.ndarray:
        return model.predict_survival_function(test, times=times).to_numpy().T

    return Prediction(risk, survival)


def _tensor_batch(fold: FoldInputs, part: str, rows: np.ndarray | slice, clinical: bool) -> dict[str, torch.Tensor]:
    batch = {"omics": torch.from_numpy(fold.omics[part][rows])}
    if clinical:
        batch["clinical"] = torch.from_numpy(fold.clinical[part][rows])
    return batch


def breslow_survival(
    train_risk: np.ndarray, train_time: np.ndarray, train_event: np.ndarray, risk: np.ndarray, times: np.ndarray
) -> np.ndarray:
    """Survival curves ``S(t | x) = exp(-H0(t) exp(r))`` with Breslow's baseline cumulative hazard
    ``H0(t) = sum_{t_i <= t, event_i} 1 / sum_{t_j >= t_i} exp(r_j)`` from the training set (Breslow, 1974,
    https://doi.org/10.2307/2529620).

    Args:
        train_risk: ``[M]`` training log hazard ratios.
        train_time: ``[M]`` training times.
        train_event: ``[M]`` training event indicators.
        risk: ``[N]`` log hazard ratios to predict for.
        times: ``[T]`` evaluation times.

    Returns:
        ``[N, T]`` survival probabilities.
    """
    shift = train_risk.max()
    event_times = np.unique(train_time[train_event == 1])
    at_risk = np.array([np.exp(train_risk[train_time >= t] - shift).sum() for t in event_times])
    deaths = np.array([np.sum((train_time == t) & (train_event == 1)) for t in event_times])
    cumulative = np.cumsum(deaths / at_risk)
    h0 = np.concatenate(([0.0], cumulative))[np.searchsorted(event_times, times, side="right")]
    return np.exp(-h0[None, :] * np.exp(risk - shift)[:, None])


def discrete_survival(survival_bins: np.ndarray, edges: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Step survival curves from discrete-time model outputs: ``S(t)`` is the survival past the last bin that
    ends at or before ``t`` (1 before the first edge).

    Args:
        survival_bins: ``[N, K]`` probability of surviving past bin ``k`` (the model's ``survival`` output).
        edges: ``[K + 1]`` bin edges.
        times: ``[T]`` evaluation times.

    Returns:
        ``[N, T]`` survival probabilities.
    """
    padded = np.concatenate([np.ones((len(survival_bins), 1)), survival_bins], axis=1)
    completed = np.searchsorted(edges[1:], times, side="right")
    return padded[:, completed]


def train_network(fold: FoldInputs, spec: ModelSpec, settings: BenchmarkSettings, seed: int) -> Prediction:
    """Train :class:`MultimodalModel` (``spec.members`` of them) on inner training parts of the fold, early stopping
    on the inner validation C-index, and predict the test fold.

    Args:
        fold: the fold inputs.
        spec: which encoder, modalities, loss and number of bagged members.
        settings: benchmark settings.
        seed: torch seed (of the first member).

    Returns:
        the test-fold :class:`Prediction` (``info`` holds ``best_epoch`` and ``val_c_index``, means over members).
    """
    if spec.loss not in ("nll", "cox"):
        raise ValueError(f"ModelSpec {spec.name!r}: loss must be 'nll' or 'cox', got {spec.loss!r}")
    if spec.members < 1:
        raise ValueError(f"ModelSpec {spec.name!r}: members must be at least 1, got {spec.members}")
    if spec.members == 1:
        return _train_member(fold, spec, settings, seed)[0]
    members = [
        _train_member(fold if m == 0 else resplit(fold, settings.val_fraction, seed + m), spec, settings, seed + m)
        for m in range(spec.members)
    ]
    risk = np.mean([(p.risk - center) / scale for p, (center, scale) in members], axis=0)
    curves = [p.survival for p, _ in members]

    def survival(times: np.ndarray) -> np.ndarray:
        return np.mean([curve(times) for curve in curves], axis=0)

    info = {key: float(np.mean([p.info[key] for p, _ in members])) for key in ("best_epoch", "val_c_index")}
    return Prediction(risk, survival, info)


def resplit(fold: FoldInputs, fraction: float, seed: int) -> FoldInputs:
    """The fold with its inner split redrawn: the training patients (``train`` + ``val``) split again, stratified by
    event, ``fraction`` of them to ``val``; the test part and everything fitted on the training fold are kept."""
    parts = ("train", "val")
    ids = np.concatenate([fold.parts[part] for part in parts])
    events = np.concatenate([fold.outcome(part)[1] for part in parts])
    train, val = train_test_split(np.arange(len(ids)), test_size=fraction, random_state=seed, stratify=events)
    rows = {"train": np.sort(train), "val": np.sort(val)}
    redrawn = {}
    for name in ("parts", "omics", "clinical", "covariates", "rna"):
        per_part = getattr(fold, name)
        if not per_part:  # no clinical columns
            continue
        if isinstance(per_part["train"], pd.DataFrame):
            joined = pd.concat([per_part[part] for part in parts])
            redrawn[name] = {**per_part, **{part: joined.iloc[rows[part]] for part in parts}}
        else:
            joined = np.concatenate([per_part[part] for part in parts])
            redrawn[name] = {**per_part, **{part: joined[rows[part]] for part in parts}}
    check_no_leakage([Fold(redrawn["parts"]["train"], redrawn["parts"]["val"], fold.parts["test"])])
    return replace(fold, **redrawn)


def _train_member(
    fold: FoldInputs, spec: ModelSpec, settings: BenchmarkSettings, seed: int
) -> tuple[Prediction, tuple[float, float]]:
    """One network of :func:`train_network`; also the mean and std of its risk over the training fold."""
    torch.manual_seed(seed)
    index = None
    if spec.omics_encoder != "snn":
        groups, _ = pathway_gene_index(fold.genes, settings.composition, min_genes=settings.min_pathway_genes)
        index = [columns for _, columns in groups]
    model = MultimodalModel(
        modalities=("omics", "clinical") if spec.clinical else ("omics",),
        dim=settings.dim,
        omics_encoder=spec.omics_encoder,
        omics_dim=fold.omics["train"].shape[1],
        pathway_gene_index=index,
        clinical_dim=fold.clinical["train"].shape[1] if spec.clinical else None,
        task="survival" if spec.loss == "nll" else "cox",
        n_bins=settings.n_bins,
        dropout=settings.dropout,
        require_wsi=False,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    time, event = (torch.as_tensor(a) for a in fold.outcome("train"))
    bins = torch.from_numpy(assign_bins(time.numpy(), fold.edges))
    nll, cox = DiscreteTimeNLLLoss(), CoxPHLoss()
    val_time, val_event = fold.outcome("val")
    generator = torch.Generator().manual_seed(seed)
    best, best_epoch, best_state = -np.inf, 0, copy.deepcopy(model.state_dict())
    for epoch in range(1, settings.epochs + 1):
        model.train()
        for rows in torch.randperm(len(time), generator=generator).split(settings.batch_size):
            if len(rows) < 2:
                continue
            out = model(_tensor_batch(fold, "train", rows.numpy(), spec.clinical))
            if spec.loss == "nll":
                loss = nll(out["logits"], bins[rows], event[rows])
            else:
                loss = cox(out["risk"], time[rows], event[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        score = concordance_index(val_time, val_event, _risk(model, fold, "val", spec.clinical))
        if score > best + 1e-4:
            best, best_epoch, best_state = score, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= settings.patience:
            break
    model.load_state_dict(best_state)
    risk = _risk(model, fold, "test", spec.clinical)
    train_risk = np.concatenate([_risk(model, fold, part, spec.clinical) for part in ("train", "val")])
    standard = (float(train_risk.mean()), float(train_risk.std()) or 1.0)
    if spec.loss == "nll":
        with torch.inference_mode():
            bins_survival = model.eval()(_tensor_batch(fold, "test", slice(None), spec.clinical))["survival"].numpy()

        def survival(times: np.ndarray) -> np.ndarray:
            return discrete_survival(bins_survival, fold.edges, times)

    else:
        train_time = np.concatenate([fold.outcome(part)[0] for part in ("train", "val")])
        train_event = np.concatenate([fold.outcome(part)[1] for part in ("train", "val")])

        def survival(times: np.ndarray) -> np.ndarray:
            return breslow_survival(train_risk, train_time, train_event, risk, times)

    return Prediction(risk, survival, {"best_epoch": float(best_epoch), "val_c_index": float(best)}), standard


@torch.inference_mode()
def _risk(model: MultimodalModel, fold: FoldInputs, part: str, clinical: bool) -> np.ndarray:
    return model.eval()(_tensor_batch(fold, part, slice(None), clinical))["risk"].float().numpy().astype(float)


def evaluate_survival(fold: FoldInputs, prediction: Prediction) -> dict[str, float]:
    """Harrell's C-index, Uno's IPCW C-index (truncated at the training fold's 80th time percentile) and the
    integrated Brier score (over the 10th to 80th percentiles of the test times) of a test-fold prediction.

    Returns:
        ``{"c_index", "c_index_ipcw", "ibs"}`` (NaN where a metric is undefined on this fold).
    """
    test_time, test_event = fold.outcome("test")
    train_time = np.concatenate([fold.outcome(part)[0] for part in ("train", "val")])
    train_event = np.concatenate([fold.outcome(part)[1] for part in ("train", "val")])
    metrics = {"c_index": concordance_index(test_time, test_event, prediction.risk)}
    tau = float(np.quantile(train_time, 0.8))
    try:
        metrics["c_index_ipcw"] = concordance_index_ipcw(
            train_time, train_event, test_time, test_event, prediction.risk, tau=tau
        )
    except ValueError as error:
        logger.warning("IPCW C-index undefined on this fold: %s", error)
        metrics["c_index_ipcw"] = float("nan")
    times = np.unique(np.quantile(test_time, np.linspace(0.1, 0.8, 8)))
    times = times[(times >= test_time.min()) & (times < test_time.max())]
    survival = np.clip(prediction.survival(times), 0.0, 1.0)
    metrics["ibs"] = integrated_brier_score(train_time, train_event, test_time, test_event, survival, times)
    return metrics


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Per cohort and model, mean and std over folds of every metric column.

    Args:
        results: one row per (cohort, model, fold) with metric columns ``c_index``, ``c_index_ipcw``, ``ibs``.

    Returns:
        DataFrame indexed by (cohort, model) with columns ``<metric>_mean`` and ``<metric>_std`` (std with ddof 1).
    """
    metrics = [c for c in ("c_index", "c_index_ipcw", "ibs") if c in results]
    grouped = results.groupby(["cohort", "model"], sort=False)[metrics]
    mean = grouped.mean().add_suffix("_mean")
    std = grouped.std(ddof=1).add_suffix("_std")
    return pd.concat([mean, std], axis=1)[[f"{m}_{s}" for m in metrics for s in ("mean", "std")]]


BASELINES: dict[str, Callable[[FoldInputs, BenchmarkSettings], Prediction]] = {
    "cox_age": lambda fold, settings: cox_baseline(fold, ["age"]),
    "cox_age_sex": lambda fold, settings: cox_baseline(fold, ["age", "is_female"]),
    "enet_cox_rna_age": lambda fold, settings: cox_baseline(
        fold, ["age"], rna=True, penalizer=settings.enet_penalizer, l1_ratio=settings.enet_l1_ratio
    ),
}


def run_survival_benchmark(
    patients: pd.DataFrame,
    genes: pd.DataFrame,
    folds: Sequence[Fold],
    *,
    models: Sequence[ModelSpec] | None = None,
    baselines: dict[str, Callable[[FoldInputs, BenchmarkSettings], Prediction]] | None = None,
    settings: BenchmarkSettings | None = None,
    cohort: str = "cohort",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run baselines and networks on the same folds.

    Args:
        patients: from :func:`patient_table`.
        genes: gene table indexed by ``case_id``.
        folds: held-out ``test`` parts (e.g. ``read_published_splits(folder, val_as="test")``).
        models: networks to train (default :func:`default_models`).
        baselines: name -> ``f(fold_inputs, settings) -> Prediction`` (default :data:`BASELINES`).
        settings: hyperparameters (default :class:`BenchmarkSettings`).
        cohort: name written in the ``cohort`` column.

    Returns:
        ``results``: one row per (model, fold) with ``cohort, model, fold, n_test, c_index, c_index_ipcw, ibs``
        (plus ``best_epoch``, ``val_c_index`` for networks); ``predictions``: out-of-fold rows ``cohort, model,
        fold, case_id, risk, survival_months, event``.
    """
    settings = settings or BenchmarkSettings()
    models = default_models() if models is None else list(models)
    baselines = BASELINES if baselines is None else baselines
    rows, predictions = [], []
    for k, fold in enumerate(folds):
        inputs = build_fold_inputs(patients, genes, fold, settings, seed=settings.seed + k)
        test_time, test_event = inputs.outcome("test")
        runs: list[tuple[str, ModelSpec | Callable[[FoldInputs, BenchmarkSettings], Prediction]]] = [
            *baselines.items(),
            *((spec.name, spec) for spec in models),
        ]
        for name, run in runs:
            if isinstance(run, ModelSpec):
                prediction = train_network(inputs, run, settings, settings.seed + k)
            else:
                prediction = run(inputs, settings)
            metrics = evaluate_survival(inputs, prediction)
            rows.append(
                {"cohort": cohort, "model": name, "fold": k, "n_test": len(test_time), **metrics, **prediction.info}
            )
            logger.info("%s fold %d %s: %s", cohort, k, name, {key: round(v, 4) for key, v in metrics.items()})
            predictions.append(
                pd.DataFrame(
                    {
                        "cohort": cohort,
                        "model": name,
                        "fold": k,
                        "case_id": inputs.parts["test"],
                        "risk": prediction.risk,
                        "survival_months": test_time,
                        "event": test_event,
                    }
                )
            )
    return pd.DataFrame(rows), pd.concat(predictions, ignore_index=True)

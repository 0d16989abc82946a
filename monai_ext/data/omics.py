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

"""Gene tables: modality selection, a per-gene scaler fitted on training patients, alignment by gene name.

A gene table is a DataFrame indexed by ``case_id`` with one column per gene and modality, named
``<SYMBOL>_rnaseq`` (expression), ``<SYMBOL>_cnv`` (copy number) or ``<SYMBOL>_mut`` (mutation 0/1), as in the
TCGA tables of MCAT (https://arxiv.org/abs/2109.09520) and PORPOISE (https://doi.org/10.1016/j.ccell.2022.07.004).

Columns are always matched by name, never by position: at inference :func:`align_genes` reorders a table to the
training gene list and reports (and, by policy, refuses or fills) genes that are missing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "GENE_SUFFIXES",
    "MISSING_GENE_POLICIES",
    "GeneReport",
    "GeneScaler",
    "align_genes",
    "gene_columns",
    "gene_symbol",
    "read_xena_matrix",
    "select_modalities",
]

logger = logging.getLogger(__name__)

GENE_SUFFIXES = ("_rnaseq", "_cnv", "_mut")
MISSING_GENE_POLICIES = ("error", "zero", "mean")
_SCALER_FORMAT = "monai_ext.gene_scaler"
_SCALER_VERSION = 1


def gene_symbol(column: str) -> str:
    """Gene symbol of a column name: ``"TP53_cnv"`` -> ``"TP53"`` (names without a known suffix are returned as is)."""
    for suffix in GENE_SUFFIXES:
        if column.endswith(suffix):
            return column[: -len(suffix)]
    return column


def gene_columns(columns: Sequence[str], suffixes: Sequence[str] = GENE_SUFFIXES) -> list[str]:
    """The column names that end with one of ``suffixes``, in their original order."""
    unknown = [suffix for suffix in suffixes if suffix not in GENE_SUFFIXES]
    if unknown:
        raise ValueError(f"unknown modality suffix(es) {unknown}: choose among {GENE_SUFFIXES}")
    return [column for column in columns if str(column).endswith(tuple(suffixes))]


def select_modalities(table: pd.DataFrame, suffixes: Sequence[str] = ("_rnaseq",)) -> pd.DataFrame:
    """Columns of the chosen modalities (``"_rnaseq"``, ``"_cnv"``, ``"_mut"``), in their original order.

    Args:
        table: gene table ``[patients, genes]``.
        suffixes: modality suffixes to keep.

    Raises:
        ValueError: unknown suffix, or no column of these modalities.
    """
    columns = gene_columns(table.columns, suffixes)
    if not columns:
        raise ValueError(f"no column ends with {tuple(suffixes)} (table has {table.shape[1]} columns)")
    return table[columns]


@dataclass
class GeneReport:
    """How a table matched the expected gene list.

    Attributes:
        policy: the policy applied to missing genes.
        n_expected: genes expected (the training list).
        missing: expected genes absent from the table (filled, or the reason for an error).
        extra: table columns not in the list (ignored).
        n_nonfinite: NaN or infinite values among the matched columns (left as they are).
    """

    policy: str
    n_expected: int
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    n_nonfinite: int = 0

    @property
    def n_found(self) -> int:
        """Expected genes present in the table."""
        return self.n_expected - len(self.missing)

    def __str__(self) -> str:
        return (
            f"{self.n_found}/{self.n_expected} genes found, {len(self.missing)} missing "
            f"(policy {self.policy!r}), {len(self.extra)} extra ignored, {self.n_nonfinite} non-finite values"
        )


def align_genes(
    table: pd.DataFrame,
    gene_list: Sequence[str],
    policy: str = "error",
    *,
    means: Mapping[str, float] | pd.Series | None = None,
) -> tuple[np.ndarray, GeneReport]:
    """Reorder a table's columns to ``gene_list`` by name and deal with missing genes by ``policy``.

    Args:
        table: gene table ``[N, *]`` (rows are patients).
        gene_list: the expected columns, in order (e.g. the training fold's).
        policy: ``"error"`` raises when a gene is missing; ``"zero"`` fills it with 0 (raw scale, e.g. "no
            mutation"); ``"mean"`` fills it with its training mean from ``means`` (0 after z-scoring). Filling
            logs a warning naming the genes.
        means: training mean per gene, required by ``policy="mean"``.

    Returns:
        the float ``[N, G]`` matrix in ``gene_list`` order, and the :class:`GeneReport`.

    Raises:
        ValueError: unknown policy, duplicated column or gene names, a missing gene under ``"error"``, or no
            training mean for a missing gene under ``"mean"``.
    """
    if policy not in MISSING_GENE_POLICIES:
        raise ValueError(f"policy must be one of {MISSING_GENE_POLICIES}, got {policy!r}")
    gene_list = list(gene_list)
    for name, names in (("table columns", pd.Index(table.columns)), ("gene list", pd.Index(gene_list))):
        repeated = sorted({str(gene) for gene in names[names.duplicated()]})
        if repeated:
            raise ValueError(f"{name} repeat gene name(s) {repeated[:10]}: names must be unique to match by name")
    present = set(table.columns)
    expected = set(gene_list)
    report = GeneReport(
        policy=policy,
        n_expected=len(gene_list),
        missing=[gene for gene in gene_list if gene not in present],
        extra=[column for column in table.columns if column not in expected],
    )
    if report.missing and policy == "error":
        raise ValueError(
            f"{len(report.missing)} of {len(gene_list)} expected genes are missing from the table, first "
            f"{report.missing[:10]}; supply them, or choose policy 'zero' or 'mean' to fill them"
        )
    fill = _fill_values(report.missing, policy, means)
    matrix = np.empty((len(table), len(gene_list)), dtype=float)
    for j, gene in enumerate(gene_list):
        matrix[:, j] = fill[gene] if gene in fill else pd.to_numeric(table[gene], errors="coerce").to_numpy(float)
    found = [j for j, gene in enumerate(gene_list) if gene not in fill]
    report.n_nonfinite = int((~np.isfinite(matrix[:, found])).sum())
    if report.missing:
        logger.warning(
            "%d of %d genes missing, filled by policy %r: %s%s",
            len(report.missing),
            len(gene_list),
            policy,
            report.missing[:10],
            " ..." if len(report.missing) > 10 else "",
        )
    if report.n_nonfinite:
        logger.warning("%d NaN or infinite values among the matched genes", report.n_nonfinite)
    return matrix, report


def _fill_values(missing: list[str], policy: str, means: Mapping[str, float] | pd.Series | None) -> dict[str, float]:
    """The value each missing gene is filled with under ``policy``."""
    if policy == "zero":
        return dict.fromkeys(missing, 0.0)
    if not missing:
        return {}
    if means is None:
        raise ValueError("policy 'mean' needs the training means (means=...), e.g. from a fitted GeneScaler")
    without = [gene for gene in missing if gene not in means]
    if without:
        raise ValueError(f"policy 'mean': no training mean for missing gene(s) {without[:10]}")
    return {gene: float(means[gene]) for gene in missing}


class GeneScaler:
    """Per-gene standardisation fitted on training patients only, saved with its ordered gene list.

    ``"zscore"``: ``(x - mean) / std`` (population std, as scikit-learn's ``StandardScaler``).
    ``"robust"``: ``(x - median) / IQR`` (as scikit-learn's ``RobustScaler``). A constant gene gets scale 1.

    Args:
        method: ``"zscore"`` or ``"robust"``.
    """

    METHODS = ("zscore", "robust")

    def __init__(self, method: str = "zscore") -> None:
        if method not in self.METHODS:
            raise ValueError(f"method must be one of {self.METHODS}, got {method!r}")
        self.method = method
        self.genes: list[str] = []
        self.center = np.zeros(0)
        self.scale = np.ones(0)
        self.mean = np.zeros(0)
        self.n_train = 0

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` (or :meth:`load`) has run."""
        return bool(self.genes)

    def fit(self, table: pd.DataFrame, case_ids: Sequence[str] | None = None) -> GeneScaler:
        """Learn per-gene statistics from the training rows.

        Args:
            table: gene table indexed by ``case_id`` ``[N, G]``; its columns become the gene list.
            case_ids: the training patients (rows of ``table``) to fit on; None uses every row, so pass the
                training fold's ids when ``table`` holds the whole cohort.

        Raises:
            KeyError: case ids not in the table.
            ValueError: empty selection, or non-finite values in the training rows.
        """
        if case_ids is not None:
            case_ids = list(case_ids)
            unknown = [case for case in case_ids if case not in table.index]
            if unknown:
                raise KeyError(f"{len(unknown)} training case id(s) not in the gene table, first {unknown[:10]}")
            table = table.loc[case_ids]
        if table.empty:
            raise ValueError(f"cannot fit a GeneScaler on an empty table (shape {table.shape})")
        values = table.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
        bad = [table.columns[j] for j in np.flatnonzero(~np.isfinite(values).all(axis=0))]
        if bad:
            raise ValueError(f"non-finite or non-numeric training values in gene(s) {bad[:10]}; impute them first")
        if self.method == "zscore":
            center, scale = values.mean(axis=0), values.std(axis=0)
        else:
            q25, center, q75 = np.percentile(values, [25, 50, 75], axis=0)
            scale = q75 - q25
        self.genes = [str(column) for column in table.columns]
        self.center = center
        self.scale = np.where(scale > 0, scale, 1.0)
        self.mean = values.mean(axis=0)
        self.n_train = len(values)
        return self

    def transform(self, table: pd.DataFrame, policy: str = "error") -> tuple[np.ndarray, GeneReport]:
        """Align ``table`` to the training gene list (see :func:`align_genes`) and scale it.

        Returns:
            float32 ``[N, G]`` in the training gene order, and the :class:`GeneReport`.
        """
        self._check_fitted()
        means = dict(zip(self.genes, self.mean, strict=True))
        matrix, report = align_genes(table, self.genes, policy, means=means)
        return ((matrix - self.center) / self.scale).astype(np.float32), report

    def save(self, path: str | Path) -> Path:
        """Write the method, gene list and statistics as JSON."""
        self._check_fitted()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "format": _SCALER_FORMAT,
            "version": _SCALER_VERSION,
            "method": self.method,
            "n_train": self.n_train,
            "genes": self.genes,
            "center": self.center.tolist(),
            "scale": self.scale.tolist(),
            "mean": self.mean.tolist(),
        }
        path.write_text(json.dumps(state))
        return path

    @classmethod
    def load(cls, path: str | Path) -> GeneScaler:
        """Read a scaler written by :meth:`save`.

        Raises:
            ValueError: not a scaler file, or inconsistent lengths.
        """
        path = Path(path)
        state = json.loads(path.read_text())
        if state.get("format") != _SCALER_FORMAT or state.get("version") != _SCALER_VERSION:
            raise ValueError(f"{path}: not a {_SCALER_FORMAT} v{_SCALER_VERSION} file")
        scaler = cls(state["method"])
        scaler.genes = list(state["genes"])
        scaler.center, scaler.scale, scaler.mean = (
            np.asarray(state[key], float) for key in ("center", "scale", "mean")
        )
        scaler.n_train = int(state["n_train"])
        lengths = {len(scaler.genes), len(scaler.center), len(scaler.scale), len(scaler.mean)}
        if len(lengths) != 1 or not scaler.genes:
            raise ValueError(f"{path}: gene list and statistics have different or zero lengths")
        return scaler

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError("GeneScaler is not fitted: call fit(train_table) or GeneScaler.load(path) first")


def read_xena_matrix(
    path: str | Path, *, suffix: str | None = None, sep: str = "\t", case_ids: bool = False
) -> pd.DataFrame:
    """Read a UCSC Xena gene x sample matrix (genes as rows) and return it as samples x genes.

    Args:
        path: the matrix (tab-separated by default; ``.gz`` is decompressed); first column gene names, first row
            sample ids.
        suffix: modality suffix appended to the gene names (e.g. ``"_rnaseq"``).
        sep: field separator.
        case_ids: index rows by patient (``TCGA-XX-XXXX``, the first 12 characters of the sample barcode).

    Returns:
        DataFrame ``[samples, genes]`` indexed by sample (or case) id.

    Raises:
        ValueError: repeated gene names, or two samples of one patient when ``case_ids`` is set.
    """
    if suffix is not None and suffix not in GENE_SUFFIXES:
        raise ValueError(f"suffix must be one of {GENE_SUFFIXES}, got {suffix!r}")
    matrix = pd.read_csv(path, sep=sep, index_col=0)
    genes = matrix.index.astype(str)
    repeated = sorted(set(genes[genes.duplicated()]))
    if repeated:
        raise ValueError(f"{path}: gene(s) listed on several rows {repeated[:10]}; aggregate them first")
    table = matrix.T
    table.columns = [f"{gene}{suffix or ''}" for gene in genes]
    table.index = table.index.astype(str)
    if case_ids:
        cases = table.index.str.slice(0, 12)
        clash = sorted(set(cases[cases.duplicated()]))
        if clash:
            raise ValueError(f"{path}: several samples of the same patient {clash[:10]}; keep one sample each")
        table.index = cases
    table.index.name = "case_id" if case_ids else "sample"
    return table

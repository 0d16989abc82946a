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

"""Readers for the public TCGA tables of MCAT (https://arxiv.org/abs/2109.09520) and SurvPath
(https://arxiv.org/abs/2304.06819): genomics + survival per slide, survival endpoints, clinical stage.

**Event convention (the one place it is converted).** These tables carry ``censorship`` = 1 when the patient was
censored (no death observed). The whole project uses ``event`` = 1 when death was observed and 0 when censored,
so every reader here returns ``event = 1 - censorship`` (:func:`event_from_censorship`) and drops
``censorship``. Survival times are in months and must be > 0.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from monai_ext.data.omics import gene_columns

__all__ = [
    "ENDPOINTS",
    "TcgaTable",
    "event_from_censorship",
    "read_clinical",
    "read_survpath_metadata",
    "read_tcga_table",
]

logger = logging.getLogger(__name__)

ENDPOINTS = {"overall": "", "dss": "_dss", "pfi": "_pfi"}
_INDEX_COLUMNS = ("Unnamed: 0", "")


class TcgaTable(NamedTuple):
    """A TCGA ``*_all_clean`` table split in two.

    Attributes:
        slides: one row per slide: ``case_id``, ``slide_id``, ``survival_months``, ``event``, ``age``,
            ``is_female``, ``site``, ``oncotree_code``, ``train`` (whatever non-gene columns the file has).
        genes: one row per patient, indexed by ``case_id`` (sorted), gene columns ``*_rnaseq``, ``*_cnv``,
            ``*_mut`` in file order.
    """

    slides: pd.DataFrame
    genes: pd.DataFrame


def event_from_censorship(censorship: pd.Series | np.ndarray, *, where: str = "table") -> np.ndarray:
    """``event = 1 - censorship`` as int, after checking that every value is 0 or 1.

    Args:
        censorship: 1 = censored (no event observed), 0 = event observed.
        where: name used in the error message.

    Raises:
        ValueError: a value other than 0 or 1 (or missing).
    """
    values = pd.to_numeric(pd.Series(np.asarray(censorship)), errors="coerce")
    bad = np.flatnonzero(~values.isin([0, 1]).to_numpy())
    if len(bad):
        raise ValueError(f"{where}: censorship must be 0 or 1, found {values.iloc[bad[:5]].tolist()} at rows {bad[:5]}")
    return (1 - values.to_numpy()).astype(int)


def read_tcga_table(path: str | Path) -> TcgaTable:
    """Read ``tcga_<cohort>_all_clean.csv.zip`` (or ``.csv``): the slide manifest and the per-patient gene table.

    Slides of one patient repeat the patient's gene values; they are checked to agree and kept once.

    Args:
        path: the table.

    Returns:
        :class:`TcgaTable` with ``slides`` (``event`` = 1 - ``censorship``) and ``genes``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: missing columns, duplicate slides, times <= 0, censorship not 0/1, or gene values that differ
            between slides of the same patient (the message names the cases).
    """
    table = _read(path)
    _require(table, ("case_id", "slide_id", "survival_months", "censorship"), path)
    duplicated = table["slide_id"][table["slide_id"].duplicated()].tolist()
    if duplicated:
        raise ValueError(f"{path}: slide_id listed more than once: {duplicated[:10]}")
    genes = gene_columns(table.columns)
    if not genes:
        raise ValueError(f"{path}: no gene column (names ending with _rnaseq, _cnv or _mut)")
    slides = _survival(table.drop(columns=genes), "", path)
    gene_table = table[["case_id", *genes]].set_index("case_id")
    first = gene_table.groupby(level=0, sort=False).transform("first")
    same = (gene_table == first) | (gene_table.isna() & first.isna())
    differing = sorted(set(gene_table.index[~same.all(axis=1).to_numpy()]))
    if differing:
        raise ValueError(
            f"{path}: gene values differ between slides of the same patient for {len(differing)} case(s), first "
            f"{differing[:10]}; fix the table or keep one slide per patient"
        )
    gene_table = gene_table[~gene_table.index.duplicated()].sort_index()
    logger.info("%s: %d slides, %d patients, %d gene columns", path, len(slides), len(gene_table), len(genes))
    return TcgaTable(slides=slides.reset_index(drop=True), genes=gene_table)


def read_survpath_metadata(path: str | Path, *, endpoint: str = "overall") -> pd.DataFrame:
    """Read a SurvPath metadata table (one row per slide) for one endpoint.

    Args:
        path: ``survpath_metadata/tcga_<cohort>.csv``.
        endpoint: ``"overall"`` survival, ``"dss"`` (disease-specific) or ``"pfi"`` (progression-free interval).

    Returns:
        one row per slide: ``case_id``, ``slide_id``, ``survival_months``, ``event`` of that endpoint, then the
        descriptive columns (``age``, ``site``, ``is_female``, ``oncotree_code``, ``train``) when present.

    Raises:
        ValueError: unknown endpoint, missing columns, times <= 0 or censorship not 0/1.
    """
    if endpoint not in ENDPOINTS:
        raise ValueError(f"endpoint must be one of {list(ENDPOINTS)}, got {endpoint!r}")
    table = _read(path)
    suffix = ENDPOINTS[endpoint]
    _require(table, ("case_id", "slide_id", f"survival_months{suffix}", f"censorship{suffix}"), path)
    endpoint_columns = [f"{name}{other}" for name in ("survival_months", "censorship") for other in ENDPOINTS.values()]
    table = table.rename(columns={f"survival_months{suffix}": "_time", f"censorship{suffix}": "_censorship"})
    table = table.drop(columns=[column for column in endpoint_columns if column in table.columns])
    table = table.rename(columns={"_time": "survival_months", "_censorship": "censorship"})
    return _survival(table, f" ({endpoint})", path).reset_index(drop=True)


def read_clinical(path: str | Path, *, on_conflict: str = "error") -> pd.DataFrame:
    """Read ``clinical/tcga_<cohort>_clinical.csv``: ``stage``, ``grade``, ``subtype`` per patient.

    ``"N/A"`` and empty cells become missing values; values are otherwise kept as written (strings).
    Identical repeated rows are merged; patients listed with different values are an error, or dropped with a
    warning when ``on_conflict="drop"``.

    Args:
        path: the clinical table.
        on_conflict: ``"error"`` or ``"drop"``.

    Returns:
        DataFrame indexed by ``case_id`` (sorted).

    Raises:
        ValueError: missing ``case_id`` column, or conflicting rows under ``"error"``.
    """
    if on_conflict not in ("error", "drop"):
        raise ValueError(f"on_conflict must be 'error' or 'drop', got {on_conflict!r}")
    table = _read(path, dtype=str, na_values=["N/A", "NA", ""])
    _require(table, ("case_id",), path)
    table = table.drop_duplicates()
    conflicting = sorted(set(table["case_id"][table["case_id"].duplicated()]))
    if conflicting and on_conflict == "error":
        raise ValueError(
            f"{path}: {len(conflicting)} patient(s) listed with different values, first {conflicting[:10]}; "
            "fix the table or pass on_conflict='drop'"
        )
    if conflicting:
        logger.warning(
            "%s: dropped %d patient(s) listed with different values: %s", path, len(conflicting), conflicting
        )
        table = table[~table["case_id"].isin(conflicting)]
    return table.set_index("case_id").sort_index()


def _read(path: str | Path, **kwargs: object) -> pd.DataFrame:
    """CSV (zip-compressed or not) without the saved pandas index column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TCGA table {path} not found")
    table = pd.read_csv(path, **kwargs)
    return table.drop(columns=[column for column in table.columns if column in _INDEX_COLUMNS])


def _require(table: pd.DataFrame, columns: tuple[str, ...], path: str | Path) -> None:
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing} (found {list(table.columns)[:12]} ...)")


def _survival(table: pd.DataFrame, label: str, path: str | Path) -> pd.DataFrame:
    """Check times > 0 and replace ``censorship`` by ``event`` (placed after ``survival_months``)."""
    time = pd.to_numeric(table["survival_months"], errors="coerce")
    bad = table["slide_id"][~(np.isfinite(time) & (time > 0))].tolist()
    if bad:
        raise ValueError(f"{path}: survival_months{label} missing or <= 0 for slide(s) {bad[:10]}")
    event = event_from_censorship(table["censorship"], where=f"{path}{label}")
    table = table.drop(columns=["censorship"]).assign(survival_months=time.astype(float))
    table.insert(table.columns.get_loc("survival_months") + 1, "event", event)
    return table

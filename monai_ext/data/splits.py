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

"""Patient-level cross-validation folds: stratified k-fold, published MCAT-style splits, leakage checks, JSON.

The unit of every split is the patient (``case_id``): a slide table is first reduced to one row per patient, so
all slides of a patient land in the same part by construction, and :func:`check_no_leakage` verifies it for folds
from anywhere (including slides listed under two patients).
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from monai_ext.data.cohort import Cohort

__all__ = [
    "Fold",
    "LeakageError",
    "check_no_leakage",
    "load_folds",
    "patient_kfold",
    "read_published_splits",
    "save_folds",
]

logger = logging.getLogger(__name__)

PARTS = ("train", "val", "test")
_FOLDS_FORMAT = "monai_ext.folds"
_FOLDS_VERSION = 1


class LeakageError(ValueError):
    """A patient (or a slide, through its patient) found in two parts of the same fold."""


@dataclass(frozen=True, eq=False)
class Fold:
    """One cross-validation fold: sorted arrays of case ids.

    Attributes:
        train: patients to fit on.
        val: patients for early stopping and model selection (drawn from the training part; may be empty).
        test: held-out patients the fold is evaluated on.
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def parts(self) -> dict[str, np.ndarray]:
        """``{"train": ..., "val": ..., "test": ...}``."""
        return {"train": self.train, "val": self.val, "test": self.test}


def _ids(values: Sequence[str] | np.ndarray | pd.Series) -> np.ndarray:
    """Sorted unique case ids as a string array."""
    return np.asarray(sorted({str(value) for value in values}), dtype=str)


def patient_kfold(
    data: Cohort | pd.DataFrame,
    n_folds: int = 5,
    *,
    stratify_by: str | None = None,
    seed: int = 0,
    val_fraction: float = 0.0,
    n_time_bins: int = 4,
) -> list[Fold]:
    """Patient-grouped k-fold cross-validation, optionally stratified, with an optional inner validation split.

    Every patient is in the test part of exactly one fold. Stratification keeps label proportions similar across
    folds (scikit-learn ``StratifiedKFold`` over patients, which equals ``StratifiedGroupKFold`` over slides with
    one group per patient, weighted by patients rather than slides).

    Args:
        data: a :class:`Cohort`, or a table with a ``case_id`` column (one row per slide or per patient).
        n_folds: number of folds (>= 2).
        stratify_by: None (no stratification), a column name (its values are the strata), or ``"survival"``:
            strata are event x time-quantile bins (``survival_months`` quantiles among all patients, ``event``
            1 = death observed); bins are merged (fewer quantiles, then event only) until each stratum has at
            least ``n_folds`` patients.
        seed: random seed of the shuffles.
        val_fraction: fraction of each training part moved to ``val`` (stratified when possible), for early
            stopping; 0 leaves ``val`` empty. Test patients are never used.
        n_time_bins: time quantile bins for ``stratify_by="survival"``.

    Returns:
        ``n_folds`` :class:`Fold` objects of case ids.

    Raises:
        ValueError: bad arguments, missing columns, labels that differ between slides of one patient, or fewer
            patients than folds.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    patients = _patient_table(data, stratify_by)
    if len(patients) < n_folds:
        raise ValueError(f"{len(patients)} patients cannot be split into {n_folds} folds")
    case_ids = patients.index.to_numpy(dtype=str)
    strata = _strata(patients, stratify_by, n_folds, n_time_bins)
    if strata is None:
        splits = list(KFold(n_folds, shuffle=True, random_state=seed).split(case_ids))
    else:
        with warnings.catch_warnings():  # rare classes are logged by _strata with their names
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            splits = list(StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(case_ids, strata))
    folds = []
    for k, (train_rows, test_rows) in enumerate(splits):
        train, val = train_rows, np.zeros(0, dtype=int)
        if val_fraction > 0:
            train, val = _inner_split(
                train_rows, None if strata is None else strata[train_rows], val_fraction, seed + k
            )
        folds.append(Fold(_ids(case_ids[train]), _ids(case_ids[val]), _ids(case_ids[test_rows])))
    return folds


def _patient_table(data: Cohort | pd.DataFrame, stratify_by: str | None) -> pd.DataFrame:
    """One row per patient (index ``case_id``, sorted) with the stratification columns, checked for agreement."""
    if isinstance(data, Cohort):
        table = data.slide_table
    else:
        table = data.reset_index() if "case_id" not in data.columns and data.index.name == "case_id" else data
    if "case_id" not in table.columns:
        raise ValueError(f"need a case_id column to group by patient (found {list(table.columns)[:10]})")
    if table["case_id"].isna().any():
        raise ValueError(f"{int(table['case_id'].isna().sum())} row(s) without case_id: every slide needs a patient")
    columns = {None: [], "survival": ["survival_months", "event"]}.get(stratify_by, [stratify_by])
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise ValueError(f"stratify_by={stratify_by!r} needs column(s) {missing} (found {list(table.columns)[:10]})")
    table = table.assign(case_id=table["case_id"].astype(str))
    grouped = table.groupby("case_id", sort=True)
    for column in columns:
        counts = grouped[column].nunique(dropna=False)
        differing = counts.index[counts > 1].tolist()
        if differing:
            raise ValueError(f"{column} differs between slides of patient(s) {differing[:10]}: cannot stratify")
    return grouped[columns].first() if columns else pd.DataFrame(index=grouped.size().index)


def _strata(patients: pd.DataFrame, stratify_by: str | None, n_folds: int, n_time_bins: int) -> np.ndarray | None:
    """Stratum label per patient, or None without stratification."""
    if stratify_by is None:
        return None
    if stratify_by != "survival":
        values = patients[stratify_by]
        if values.isna().any():
            raise ValueError(f"{stratify_by} is missing for patient(s) {values.index[values.isna()].tolist()[:10]}")
        strata = values.astype(str).to_numpy()
        labels, counts = np.unique(strata, return_counts=True)
        rare = {str(label): int(count) for label, count in zip(labels, counts, strict=True) if count < n_folds}
        if rare:
            logger.warning(
                "%s values with fewer than %d patients are missing from some folds: %s", stratify_by, n_folds, rare
            )
        return strata
    time = patients["survival_months"].to_numpy(dtype=float)
    event = patients["event"].to_numpy()
    if not set(np.unique(event)) <= {0, 1}:
        raise ValueError("event must be 0 or 1 (1 = death observed) to stratify by survival")
    if not np.isfinite(time).all():
        raise ValueError("survival_months must be finite for every patient to stratify by survival")
    event = event.astype(int)
    for bins in range(n_time_bins, 0, -1):
        time_bin = pd.qcut(time, bins, labels=False, duplicates="drop") if bins > 1 else np.zeros(len(time), int)
        strata = event * n_time_bins + np.asarray(time_bin, dtype=int)
        if np.unique(strata, return_counts=True)[1].min() >= n_folds:
            return strata
    logger.warning("fewer than %d events or censored patients: folds are not stratified", n_folds)
    return None


def _inner_split(
    rows: np.ndarray, strata: np.ndarray | None, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split training rows into train and val, stratified when every stratum can be represented."""
    n_val = max(1, round(val_fraction * len(rows)))
    feasible = strata is not None
    if feasible:
        _, counts = np.unique(strata, return_counts=True)
        feasible = counts.min() >= 2 and len(counts) <= min(n_val, len(rows) - n_val)
        if not feasible:
            logger.warning("inner validation split not stratified: too few patients per stratum")
    return train_test_split(rows, test_size=n_val, random_state=seed, stratify=strata if feasible else None)


def read_published_splits(folder: str | Path, *, val_as: str = "test") -> list[Fold]:
    """Read MCAT/PORPOISE-style folds: ``splits_0.csv`` ... ``splits_{K-1}.csv`` with columns ``train``, ``val``
    (and ``test`` when present) holding case ids.

    Args:
        folder: the folder of ``splits_{k}.csv`` files.
        val_as: where the published ``val`` column goes when there is no ``test`` column: ``"test"`` (MCAT
            reports its results on ``val``, which is therefore the held-out part) or ``"val"``.

    Raises:
        FileNotFoundError: no ``splits_{k}.csv`` in ``folder``.
        ValueError: missing columns or fold numbers with gaps.
    """
    if val_as not in ("test", "val"):
        raise ValueError(f"val_as must be 'test' or 'val', got {val_as!r}")
    folder = Path(folder)
    matches = [(re.fullmatch(r"splits_(\d+)\.csv", path.name), path) for path in folder.glob("splits_*.csv")]
    files = {int(match.group(1)): path for match, path in matches if match}
    if not files:
        raise FileNotFoundError(f"no splits_{{k}}.csv files in {folder}")
    if sorted(files) != list(range(len(files))):
        raise ValueError(f"{folder}: fold numbers {sorted(files)} are not 0..{len(files) - 1}")
    folds, none = [], np.zeros(0, dtype=str)
    for k in range(len(files)):
        table = pd.read_csv(files[k], dtype=str)
        missing = [column for column in ("train", "val") if column not in table.columns]
        if missing:
            raise ValueError(f"{files[k]}: missing column(s) {missing} (found {list(table.columns)})")
        parts = {column: _ids(table[column].dropna().str.strip()) for column in PARTS if column in table.columns}
        if "test" not in parts:
            published_val = parts.pop("val")
            parts["val"], parts["test"] = (none, published_val) if val_as == "test" else (published_val, none)
        folds.append(Fold(parts["train"], parts["val"], parts["test"]))
    return folds


def check_no_leakage(folds: Sequence[Fold], slide_table: pd.DataFrame | None = None) -> None:
    """Raise if any patient, or any slide through its patients, appears in two parts of the same fold.

    Args:
        folds: the folds to check.
        slide_table: optional table with ``case_id`` and ``slide_id`` (one row per slide). With it, a slide listed
            under several patients is an error, and so is a case id of a fold that is not in the table.

    Raises:
        LeakageError: every problem found, naming the case ids (and slides) and the fold.
    """
    problems = []
    for k, fold in enumerate(folds):
        parts = {name: {str(case) for case in ids} for name, ids in fold.parts().items()}
        for i, first in enumerate(PARTS):
            for second in PARTS[i + 1 :]:
                shared = sorted(parts[first] & parts[second])
                if shared:
                    problems.append(f"fold {k}: case_id(s) {shared[:10]} in both {first} and {second}")
    if slide_table is not None:
        problems += _slide_problems(folds, slide_table)
    if problems:
        listing = "\n".join(f"  - {problem}" for problem in problems)
        raise LeakageError(f"patient leakage between parts of a fold ({len(problems)} problem(s)):\n{listing}")


def _slide_problems(folds: Sequence[Fold], slide_table: pd.DataFrame) -> list[str]:
    """Slides mapped to several patients (and the folds where they leak), and unknown case ids."""
    missing = [column for column in ("case_id", "slide_id") if column not in slide_table.columns]
    if missing:
        raise ValueError(f"slide_table needs columns case_id and slide_id (missing {missing})")
    table = slide_table[["case_id", "slide_id"]].astype(str).drop_duplicates()
    cases_of = table.groupby("slide_id")["case_id"].agg(lambda cases: sorted(set(cases)))
    shared = cases_of[cases_of.map(len) > 1]
    problems = [f"slide {slide} listed under several patients {cases}" for slide, cases in shared.items()]
    known = set(table["case_id"])
    for k, fold in enumerate(folds):
        part_of = {str(case): name for name, ids in fold.parts().items() for case in ids}
        for slide, cases in shared.items():
            names = sorted({part_of[case] for case in cases if case in part_of})
            if len(names) > 1:
                problems.append(f"fold {k}: slide {slide} is in {names} through patients {cases}")
        unknown = sorted(set(part_of) - known)
        if unknown:
            problems.append(f"fold {k}: {len(unknown)} case_id(s) not in the slide table, first {unknown[:10]}")
    return problems


def save_folds(folds: Sequence[Fold], path: str | Path) -> Path:
    """Write folds as JSON (``{"format", "version", "folds": [{"train": [...], "val": [...], "test": [...]}]}``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": _FOLDS_FORMAT,
        "version": _FOLDS_VERSION,
        "folds": [{name: ids.tolist() for name, ids in fold.parts().items()} for fold in folds],
    }
    path.write_text(json.dumps(state, indent=1))
    return path


def load_folds(path: str | Path) -> list[Fold]:
    """Read folds written by :func:`save_folds`.

    Raises:
        ValueError: not a folds file.
    """
    path = Path(path)
    state = json.loads(path.read_text())
    if state.get("format") != _FOLDS_FORMAT or state.get("version") != _FOLDS_VERSION:
        raise ValueError(f"{path}: not a {_FOLDS_FORMAT} v{_FOLDS_VERSION} file")
    return [Fold(*(_ids(fold[name]) for name in PARTS)) for fold in state["folds"]]

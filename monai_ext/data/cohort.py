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

"""A cohort manifest: one row per slide, slides grouped by patient, labels, paths kept inside a data root.

Manifest columns (CSV, one row per slide):

- ``case_id`` (patient) and ``slide_id`` (unique);
- ``slide_path`` and/or ``features_path``, relative to ``data_root`` or absolute inside it;
- the task's labels: ``label`` (classification), ``survival_months`` > 0 and ``event`` (survival; ``event`` = 1
  when death was observed, 0 when censored; TCGA tables carry ``censorship`` = 1 - event and are converted by
  :mod:`monai_ext.data.tcga`), ``patient_stage`` and/or ``slide_stage`` (staging);
- optional ``text``, ``mpp`` and the clinical columns the caller declares.

Validation is strict and done once, when the cohort is built: every problem found is collected and reported
together in one :class:`CohortError` that names the rows (counted from 1, header excluded) and the ids involved.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monai_ext.wsi.store import read_attrs

__all__ = ["KNOWN_COLUMNS", "TASKS", "Cohort", "CohortError", "resolve_in_root"]

logger = logging.getLogger(__name__)

TASKS = ("classification", "survival", "staging")
PATH_COLUMNS = ("slide_path", "features_path")
TASK_LABELS: dict[str, tuple[str, ...]] = {
    "classification": ("label",),
    "survival": ("survival_months", "event"),
    "staging": ("patient_stage", "slide_stage"),
}
KNOWN_COLUMNS = (
    "case_id",
    "slide_id",
    *PATH_COLUMNS,
    "label",
    "survival_months",
    "event",
    "patient_stage",
    "slide_stage",
    "text",
    "mpp",
)
SLIDE_LEVEL_COLUMNS = ("slide_id", *PATH_COLUMNS, "slide_stage", "text", "mpp")
_STRING_COLUMNS = ("case_id", "slide_id", *PATH_COLUMNS, "patient_stage", "slide_stage", "text")
_COLUMN_HINTS = {
    "censorship": "TCGA's censorship is 1 - event: convert it (monai_ext.data.tcga.event_from_censorship)",
    "Unnamed: 0": "a pandas index was written to the CSV: save it with index=False",
}
_MAX_LISTED = 20


class CohortError(ValueError):
    """A manifest that failed validation. ``problems`` lists every problem found, one string each."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        listing = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(
            f"{source}: {len(problems)} problem(s) in the cohort manifest (rows counted from 1, header excluded):"
            f"\n{listing}\nFix the manifest and load it again."
        )


def resolve_in_root(root: str | Path, path: str | Path) -> Path:
    """Resolve ``path`` (relative to ``root``, or absolute) and check that it stays inside ``root``.

    Symbolic links are followed, so a link inside the root that points elsewhere is refused too.

    Args:
        root: the data root.
        path: the path as written in the manifest.

    Returns:
        the resolved absolute path.

    Raises:
        ValueError: the path resolves outside ``root``.
    """
    root = Path(root).resolve()
    candidate = Path(path)
    resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not resolved.is_relative_to(root):
        raise ValueError(f"path {str(path)!r} resolves to {resolved}, outside the data root {root}")
    return resolved


class Cohort:
    """Slides and patients of a validated manifest, with patient-level labels.

    Args:
        table: the manifest, one row per slide (see the module docstring for its columns).
        task: ``"classification"``, ``"survival"`` or ``"staging"``: which label columns are required.
        data_root: folder that relative paths resolve in; no path may resolve outside it.
        label_values: allowed values of the label (``label``; for staging ``patient_stage`` when present,
            else ``slide_stage``); None accepts any non-missing value.
        clinical_columns: patient-level columns to keep; they must exist and agree across a patient's slides
            (missing values are allowed).
        allow_columns: further columns tolerated and kept without checks.
        encoder: when given, feature files whose ``encoder`` attribute differs are an error.
        require_features: whether every ``features_path`` given must exist.
        require_slides: whether every ``slide_path`` given must exist.
        source: name of the manifest used in error messages.

    Raises:
        CohortError: every problem found in the manifest, reported together.
    """

    def __init__(
        self,
        table: pd.DataFrame,
        *,
        task: str,
        data_root: str | Path,
        label_values: Sequence[Any] | None = None,
        clinical_columns: Sequence[str] = (),
        allow_columns: Sequence[str] = (),
        encoder: str | None = None,
        require_features: bool = True,
        require_slides: bool = False,
        source: str = "manifest",
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.task = task
        self.data_root = Path(data_root).resolve()
        self.clinical_columns = tuple(clinical_columns)
        table = _clean(table)
        problems = _Validator(table, self, label_values, allow_columns, source).run(
            encoder=encoder, require_features=require_features, require_slides=require_slides
        )
        if problems:
            raise CohortError(source, problems)
        self.label_columns = tuple(column for column in TASK_LABELS[task] if column in table.columns)
        self._slides = _typed_labels(_resolved_paths(table, self.data_root)).reset_index(drop=True)
        self._groups = self._slides.groupby("case_id", sort=True).indices
        logger.info("cohort %s: %d patients, %d slides", source, len(self._groups), len(self._slides))

    @classmethod
    def from_csv(
        cls,
        path: str | Path,
        *,
        data_root: str | Path | None = None,
        task: str,
        label_values: Sequence[Any] | None = None,
        clinical_columns: Sequence[str] = (),
        allow_columns: Sequence[str] = (),
        encoder: str | None = None,
        require_features: bool = True,
        require_slides: bool = False,
    ) -> Cohort:
        """Read and validate a manifest CSV.

        Args:
            path: the CSV file.
            data_root: folder that relative paths resolve in (default: the CSV's folder).
            task, label_values, clinical_columns, allow_columns, encoder, require_features, require_slides:
                as in :class:`Cohort`.

        Raises:
            FileNotFoundError: no such CSV.
            CohortError: every problem found in the manifest.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"cohort manifest {path} not found")
        header = pd.read_csv(path, nrows=0).columns
        table = pd.read_csv(path, dtype={column: str for column in _STRING_COLUMNS if column in header})
        return cls(
            table,
            task=task,
            data_root=path.parent if data_root is None else data_root,
            label_values=label_values,
            clinical_columns=clinical_columns,
            allow_columns=allow_columns,
            encoder=encoder,
            require_features=require_features,
            require_slides=require_slides,
            source=str(path),
        )

    @property
    def patients(self) -> list[str]:
        """Sorted patient (case) ids."""
        return sorted(self._groups)

    @property
    def slide_table(self) -> pd.DataFrame:
        """A copy of the validated manifest, one row per slide, paths resolved to absolute strings."""
        return self._slides.copy()

    def slides_of(self, case_id: str) -> list[str]:
        """Slide ids of one patient, in manifest order.

        Raises:
            KeyError: unknown case id.
        """
        return self._slides["slide_id"].iloc[self._rows_of(case_id)].tolist()

    def paths_of(self, case_id: str, column: str = "features_path") -> list[Path]:
        """Resolved paths (``features_path`` or ``slide_path``) of one patient's slides, in manifest order.

        Raises:
            KeyError: unknown case id, or the manifest has no such column.
        """
        if column not in PATH_COLUMNS or column not in self._slides.columns:
            raise KeyError(f"{column!r} is not a path column of this cohort (have {list(self._path_columns())})")
        return [Path(value) for value in self._slides[column].iloc[self._rows_of(case_id)]]

    def patient_table(self) -> pd.DataFrame:
        """One row per patient (index ``case_id``, sorted): label columns, clinical columns and ``n_slides``.

        ``slide_stage`` stays a slide-level label and is not part of this table.
        """
        columns = [c for c in (*self.label_columns, *self.clinical_columns) if c not in SLIDE_LEVEL_COLUMNS]
        grouped = self._slides.groupby("case_id", sort=True)
        table = grouped[columns].first() if columns else pd.DataFrame(index=grouped.size().index)
        table["n_slides"] = grouped.size()
        return table

    def labels(self, case_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Patient-level labels in the order asked (all patients, sorted, when None).

        Returns:
            DataFrame indexed by ``case_id`` with the task's patient-level label columns
            (``label``; ``survival_months``, ``event``; ``patient_stage``).

        Raises:
            KeyError: case ids not in the cohort.
        """
        table = self.patient_table()
        columns = [c for c in self.label_columns if c in table.columns]
        if case_ids is None:
            return table[columns]
        case_ids = list(case_ids)
        unknown = [case for case in case_ids if case not in self._groups]
        if unknown:
            raise KeyError(f"{len(unknown)} case id(s) not in the cohort: {_listing(unknown)}")
        return table.loc[case_ids, columns]

    def __repr__(self) -> str:
        return f"Cohort(task={self.task!r}, patients={len(self._groups)}, slides={len(self._slides)})"

    def _rows_of(self, case_id: str) -> np.ndarray:
        if case_id not in self._groups:
            raise KeyError(f"case id {case_id!r} is not in the cohort ({len(self._groups)} patients)")
        return self._groups[case_id]

    def _path_columns(self) -> tuple[str, ...]:
        return tuple(column for column in PATH_COLUMNS if column in self._slides.columns)


class _Validator:
    """Collects every problem of a manifest table (one string per kind of problem, naming the rows and ids)."""

    def __init__(
        self,
        table: pd.DataFrame,
        cohort: Cohort,
        label_values: Sequence[Any] | None,
        allow_columns: Sequence[str],
        source: str,
    ) -> None:
        self.table = table
        self.task = cohort.task
        self.root = cohort.data_root
        self.clinical = cohort.clinical_columns
        self.label_values = None if label_values is None else list(label_values)
        self.allowed = {*KNOWN_COLUMNS, *cohort.clinical_columns, *allow_columns}
        self.source = source
        self.problems: list[str] = []

    def run(self, *, encoder: str | None, require_features: bool, require_slides: bool) -> list[str]:
        """All checks; returns the problems found (empty when the manifest is valid)."""
        self._columns()
        self._ids()
        self._labels()
        self._patient_agreement()
        self._paths(encoder=encoder, require_features=require_features, require_slides=require_slides)
        return self.problems

    def _report(self, what: str, mask: pd.Series | np.ndarray) -> None:
        """Record one problem for the rows selected by ``mask``, naming row numbers and slide/case ids."""
        rows = np.flatnonzero(np.asarray(mask, dtype=bool))
        if len(rows):
            self.problems.append(f"{what}: {_listing([self._row(i) for i in rows])}")

    def _row(self, i: int) -> str:
        row = self.table.iloc[i]
        ids = [f"{key} {row[key]}" for key in ("slide_id", "case_id") if key in row.index and pd.notna(row[key])]
        return f"row {i + 1}" + (f" ({', '.join(ids)})" if ids else "")

    def _columns(self) -> None:
        columns = self.table.columns
        for required in ("case_id", "slide_id"):
            if required not in columns:
                self.problems.append(f"missing required column {required!r}")
        if not any(column in columns for column in PATH_COLUMNS):
            self.problems.append(f"no path column: give at least one of {PATH_COLUMNS}")
        needed = TASK_LABELS[self.task]
        if self.task == "staging":
            if not any(column in columns for column in needed):
                self.problems.append(f"staging needs a label column: at least one of {needed}")
        else:
            missing = [column for column in needed if column not in columns]
            if missing:
                self.problems.append(f"missing label column(s) {missing} required by task {self.task!r}")
        absent = [column for column in self.clinical if column not in columns]
        if absent:
            self.problems.append(f"clinical column(s) {absent} declared but absent from the manifest")
        duplicated = sorted({column for column in columns if list(columns).count(column) > 1})
        if duplicated:
            self.problems.append(f"duplicated column name(s) {duplicated}")
        unknown = [column for column in columns if column not in self.allowed]
        if unknown:
            hints = "".join(f"; {column}: {_COLUMN_HINTS[column]}" for column in unknown if column in _COLUMN_HINTS)
            self.problems.append(
                f"unknown column(s) {unknown}: declare them in clinical_columns or allow_columns, or remove them{hints}"
            )

    def _ids(self) -> None:
        table = self.table
        if "case_id" in table.columns:
            self._report("slide without case_id", table["case_id"].isna())
        if "slide_id" not in table.columns:
            return
        self._report("missing slide_id", table["slide_id"].isna())
        listed = table[table["slide_id"].notna()]
        repeated = listed[listed["slide_id"].duplicated(keep=False)]
        for slide_id, group in repeated.groupby("slide_id", sort=True):
            rows = ", ".join(str(i + 1) for i in np.flatnonzero(table.index.isin(group.index)))
            cases = sorted(group["case_id"].dropna().unique()) if "case_id" in group.columns else []
            if len(cases) > 1:
                self.problems.append(f"slide {slide_id} listed under two patients {cases} (rows {rows})")
            else:
                self.problems.append(f"duplicate slide_id {slide_id} (rows {rows})")

    def _labels(self) -> None:
        table = self.table
        if self.task == "classification" and "label" in table.columns:
            self._check_values("label", table["label"])
        elif self.task == "staging":
            checked = "patient_stage" if "patient_stage" in table.columns else "slide_stage"
            if checked in table.columns:
                self._check_values(checked, table[checked])
        elif self.task == "survival":
            if "survival_months" in table.columns:
                time = pd.to_numeric(table["survival_months"], errors="coerce").to_numpy(dtype=float)
                self._report("survival_months missing, not a number or <= 0", ~(np.isfinite(time) & (time > 0)))
            if "event" in table.columns:
                event = pd.to_numeric(table["event"], errors="coerce")
                self._report("event not in {0, 1} (1 = death observed, 0 = censored)", ~event.isin([0, 1]))
        if "mpp" in table.columns:
            mpp = pd.to_numeric(table["mpp"], errors="coerce").to_numpy(dtype=float)
            given = table["mpp"].notna().to_numpy()
            self._report("mpp not a positive number", given & ~(np.isfinite(mpp) & (mpp > 0)))

    def _check_values(self, column: str, values: pd.Series) -> None:
        self._report(f"missing {column}", values.isna())
        if self.label_values is not None:
            outside = values.notna() & ~values.isin(self.label_values)
            self._report(f"{column} not in label_values {self.label_values}", outside)

    def _patient_agreement(self) -> None:
        table = self.table
        if "case_id" not in table.columns:
            return
        columns = [c for c in (*TASK_LABELS[self.task], *self.clinical) if c in table.columns]
        columns = [c for c in dict.fromkeys(columns) if c not in SLIDE_LEVEL_COLUMNS]
        with_case = table[table["case_id"].notna()]
        for column in columns:
            counts = with_case.groupby("case_id")[column].nunique(dropna=False)
            cases = counts.index[counts > 1].tolist()
            if cases:
                values = {
                    case: sorted(map(str, with_case.loc[with_case["case_id"] == case, column].unique()))
                    for case in cases[:_MAX_LISTED]
                }
                self.problems.append(
                    f"{column} differs between slides of the same patient for {len(cases)} patient(s): "
                    f"{_listing([f'{case} {values[case]}' for case in values], total=len(cases))}"
                )

    def _paths(self, *, encoder: str | None, require_features: bool, require_slides: bool) -> None:
        table = self.table
        present = [column for column in PATH_COLUMNS if column in table.columns]
        if not present:
            return
        if not self.root.is_dir():
            self.problems.append(f"data root {self.root} is not a folder")
        self._report(f"no path given (need one of {present})", table[present].isna().all(axis=1))
        escaping, missing, unreadable, other_encoder = [], [], [], []
        for column in present:
            must_exist = require_features if column == "features_path" else require_slides
            for i, value in enumerate(table[column]):
                if pd.isna(value):
                    continue
                try:
                    path = resolve_in_root(self.root, value)
                except ValueError:
                    escaping.append(f"{self._row(i)} {column} {value!r}")
                    continue
                if not path.is_file():
                    if must_exist:
                        missing.append(f"{self._row(i)} {column} {path}")
                    continue
                if column == "features_path" and encoder is not None and path.suffix == ".h5":
                    attrs = read_attrs(path)
                    if attrs is None:
                        unreadable.append(f"{self._row(i)} {path}")
                    elif "encoder" in attrs and attrs["encoder"] != encoder:
                        other_encoder.append(f"{self._row(i)} {path} has {attrs['encoder']!r}")
        if escaping:
            self.problems.append(f"path outside the data root {self.root}: {_listing(escaping)}")
        if missing:
            self.problems.append(f"file not found: {_listing(missing)}")
        if unreadable:
            self.problems.append(f"feature file unreadable (not an h5 file?): {_listing(unreadable)}")
        if other_encoder:
            self.problems.append(
                f"feature files made with another encoder than {encoder!r} (re-run preprocessing): "
                f"{_listing(other_encoder)}"
            )


def _clean(table: pd.DataFrame) -> pd.DataFrame:
    """Copy with a fresh row index, string columns stripped and empty strings turned into missing values."""
    table = table.reset_index(drop=True)
    for column in _STRING_COLUMNS:
        if column in table.columns and table[column].dtype == object:
            stripped = table[column].map(lambda value: value.strip() if isinstance(value, str) else value)
            table[column] = stripped.replace("", np.nan)
    return table


def _resolved_paths(table: pd.DataFrame, root: Path) -> pd.DataFrame:
    """Path columns replaced by resolved absolute paths (strings; missing stays missing)."""
    for column in PATH_COLUMNS:
        if column in table.columns:
            table[column] = [None if pd.isna(value) else str(resolve_in_root(root, value)) for value in table[column]]
    return table


def _typed_labels(table: pd.DataFrame) -> pd.DataFrame:
    """Survival columns as float time and int event; integral numeric labels as int."""
    if "survival_months" in table.columns:
        table["survival_months"] = pd.to_numeric(table["survival_months"], errors="coerce").astype(float)
    if "event" in table.columns:
        event = pd.to_numeric(table["event"], errors="coerce")
        if event.notna().all():
            table["event"] = event.astype(int)
    label = table.get("label")
    integral = label is not None and pd.api.types.is_float_dtype(label) and label.notna().all()
    if integral and np.all(np.mod(label.to_numpy(), 1) == 0):
        table["label"] = label.astype(int)
    return table


def _listing(items: Sequence[str], total: int | None = None) -> str:
    """Comma-separated items, the first ``_MAX_LISTED`` of them, then how many more there are."""
    total = len(items) if total is None else total
    shown = ", ".join(str(item) for item in items[:_MAX_LISTED])
    return shown + (f" ... and {total - _MAX_LISTED} more" if total > _MAX_LISTED else "")

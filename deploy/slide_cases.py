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

"""The plain-Python part of the deploy app: which slides, which patients, and the summary table.

Nothing here imports the MONAI Deploy App SDK or holoscan, so it runs (and is tested) without the optional extra.

Without a manifest every slide of the input folder is its own patient, named by its file stem. A manifest is a CSV
in the cohort layout (:mod:`monai_ext.data.cohort`): ``case_id`` plus ``slide_path`` (relative to the manifest's
folder, or absolute) or ``slide_id`` (the file stem of a slide in the input folder); optional ``text`` (one note a
row), ``mpp`` and clinical columns (every column the cohort layout does not reserve, e.g. ``age``, ``sex``).
Problems with the manifest's structure stop the run before any inference; a problem with one patient's data (a
slide file that is missing, clinical values that disagree between its rows) fails only that patient.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from monai_ext.data.cohort import KNOWN_COLUMNS
from monai_ext.wsi.batch import SLIDE_SUFFIXES

__all__ = [
    "SUMMARY_COLUMNS",
    "CaseResult",
    "PatientCase",
    "cases_from_manifest",
    "cases_from_slides",
    "list_slide_files",
    "plan_cases",
    "write_summary",
]

logger = logging.getLogger(__name__)

SUMMARY_COLUMNS = ("case_id", "status", "reason", "n_slides", "prediction", "risk", "prediction_json", "seconds")


@dataclass(frozen=True)
class PatientCase:
    """One patient to predict for.

    Args:
        case_id: the patient's id (also the name of its output folder and the row of an omics table).
        slide_paths: the patient's slide files, in manifest (or name) order.
        clinical: ``{column: value}`` from the manifest; None when it gives none.
        text: the patient's notes (one per manifest row that has one).
        mpp: level-0 micrometers per pixel from the manifest's ``mpp`` column (None: read it from the files).
        problem: why this patient cannot run (empty when it can); such a patient is reported as failed.
    """

    case_id: str
    slide_paths: tuple[Path, ...]
    clinical: dict[str, Any] | None = None
    text: tuple[str, ...] = ()
    mpp: float | None = None
    problem: str = ""


@dataclass(frozen=True)
class CaseResult:
    """The outcome for one patient: a row of ``summary.csv``.

    Args:
        case_id: the patient's id.
        status: ``"done"`` or ``"failed"``.
        reason: why it failed (empty when done).
        n_slides: number of slides of the patient.
        prediction: the predicted class (classification and staging bundles; empty otherwise).
        risk: the predicted risk (survival bundles; None otherwise).
        prediction_json: path of the written ``prediction.json`` (empty when failed).
        seconds: wall-clock seconds spent on the patient.
    """

    case_id: str
    status: str
    reason: str = ""
    n_slides: int = 0
    prediction: str = ""
    risk: float | None = None
    prediction_json: str = ""
    seconds: float = field(default=0.0, compare=False)


def list_slide_files(folder: str | Path, suffixes: Sequence[str] = SLIDE_SUFFIXES) -> list[Path]:
    """Slide files directly inside ``folder`` (recognised suffixes, any case; hidden files skipped), sorted by name.

    Raises:
        NotADirectoryError: ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: the input must be a folder of slides (give its path with --input)")
    allowed = {suffix.lower() for suffix in suffixes}
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in allowed
    )


def cases_from_slides(slides: Iterable[str | Path]) -> list[PatientCase]:
    """One patient per slide, named by the file stem.

    Raises:
        ValueError: two slides share a stem (``a.svs`` and ``a.tif``): use a manifest to say which patient is which.
    """
    paths = [Path(slide) for slide in slides]
    stems = pd.Series([path.stem for path in paths], dtype=object)
    shared = sorted(set(stems[stems.duplicated()]))
    if shared:
        raise ValueError(
            f"slides {shared[:5]} share a file stem, so one patient per slide is ambiguous: give a manifest "
            "(--manifest) with case_id and slide_path columns"
        )
    return [PatientCase(case_id=path.stem, slide_paths=(path,)) for path in paths]


def cases_from_manifest(manifest: str | Path, slides_dir: str | Path | None = None) -> list[PatientCase]:
    """Patients from a manifest CSV (see the module docstring), in order of first appearance.

    Args:
        manifest: the CSV.
        slides_dir: the input folder, where ``slide_id`` rows are looked up by file stem.

    Raises:
        FileNotFoundError: the manifest does not exist.
        ValueError: a missing ``case_id`` column, neither ``slide_path`` nor ``slide_id``, an empty ``case_id``,
            a row naming no slide, a slide listed twice, or ``slide_id`` rows without ``slides_dir``.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: manifest not found (give an existing CSV with --manifest)")
    table = pd.read_csv(manifest, dtype={"case_id": str, "slide_id": str, "slide_path": str, "text": str})
    if "case_id" not in table.columns:
        raise ValueError(f"{manifest}: needs a case_id column (found {list(table.columns)})")
    if "slide_path" not in table.columns and "slide_id" not in table.columns:
        raise ValueError(f"{manifest}: needs a slide_path or slide_id column to name each row's slide")
    empty = [number + 1 for number, value in enumerate(table["case_id"]) if not _text(value)]
    if empty:
        raise ValueError(f"{manifest}: rows {empty[:10]} (counted from 1) have no case_id")
    by_stem = _slides_by_stem(slides_dir) if slides_dir is not None else None
    paths = [_row_slide(manifest, row, by_stem, number + 1) for number, row in enumerate(_records(table))]
    listed = pd.Series([str(path.resolve()) for path, _ in paths], dtype=object)
    twice = sorted(set(listed[listed.duplicated()]))
    if twice:
        raise ValueError(f"{manifest}: slides {twice[:5]} are listed more than once; keep one row per slide")
    if by_stem is not None:
        named = set(listed.tolist())
        unlisted = sorted(str(path) for group in by_stem.values() for path in group if str(path.resolve()) not in named)
        if unlisted:
            logger.warning(
                "%d slide(s) of the input folder are not in the manifest, skipped: %s", len(unlisted), unlisted
            )
    clinical_columns = [column for column in table.columns if column not in KNOWN_COLUMNS]
    cases = []
    for case_id, rows in table.groupby("case_id", sort=False):
        cases.append(_case(str(case_id), rows.index.tolist(), table, paths, clinical_columns))
    return cases


def plan_cases(input_dir: str | Path, manifest: str | Path | None = None) -> list[PatientCase]:
    """The patients of a run: from ``manifest`` when given, else one per slide file of ``input_dir``.

    Raises:
        ValueError: no patient to run (an empty folder or manifest), or the errors of the two helpers.
    """
    if manifest is not None:
        cases = cases_from_manifest(manifest, input_dir)
    else:
        cases = cases_from_slides(list_slide_files(input_dir))
    if not cases:
        source = manifest if manifest is not None else input_dir
        raise ValueError(f"{source}: no slides found (suffixes {', '.join(SLIDE_SUFFIXES)})")
    return cases


def write_summary(results: Iterable[CaseResult], path: str | Path) -> Path:
    """Write one row per patient (:data:`SUMMARY_COLUMNS`) to a CSV, atomically (a temporary name, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame([asdict(result) for result in results], columns=list(SUMMARY_COLUMNS))
    tmp = path.with_name(f".{path.name}.tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts with missing cells as None."""
    return [
        {key: (None if _missing(value) else value) for key, value in row.items()} for row in table.to_dict("records")
    ]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text(value: Any) -> str:
    """A cell as stripped text ('' when missing)."""
    return "" if _missing(value) else str(value).strip()


def _slides_by_stem(folder: str | Path) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = {}
    for path in list_slide_files(folder):
        groups.setdefault(path.stem, []).append(path)
    return groups


def _row_slide(
    manifest: Path, row: dict[str, Any], by_stem: dict[str, list[Path]] | None, number: int
) -> tuple[Path, str]:
    """The slide file a manifest row names and, when it cannot be used, why ('' when it can)."""
    slide_path, slide_id = _text(row.get("slide_path")), _text(row.get("slide_id"))
    if slide_path:
        path = Path(slide_path)
        path = path if path.is_absolute() else manifest.parent / path
        return path, "" if path.is_file() else f"slide file {path} not found"
    if not slide_id:
        raise ValueError(f"{manifest}: row {number} (counted from 1) has neither slide_path nor slide_id")
    if by_stem is None:
        raise ValueError(f"{manifest}: row {number} names slide_id {slide_id!r}; give the slides' folder to find it")
    matches = by_stem.get(slide_id, [])
    if len(matches) == 1:
        return matches[0], ""
    if not matches:
        return Path(slide_id), f"slide_id {slide_id!r}: no slide file with that stem in the input folder"
    return matches[0], f"slide_id {slide_id!r} matches several files {[p.name for p in matches]}: give slide_path"


def _case(
    case_id: str,
    index: Sequence[int],
    table: pd.DataFrame,
    paths: Sequence[tuple[Path, str]],
    clinical_columns: Sequence[str],
) -> PatientCase:
    """One patient from its manifest rows; a data problem goes into ``problem``."""
    rows = table.loc[list(index)]
    slides = tuple(paths[position][0] for position in index)
    problems = [paths[position][1] for position in index if paths[position][1]]
    clinical: dict[str, Any] = {}
    for column in clinical_columns:
        values = [value for value in rows[column].tolist() if not _missing(value)]
        if len({str(value) for value in values}) > 1:
            problems.append(f"clinical column {column!r} has different values in the patient's rows {values}")
        elif values:
            clinical[column] = values[0]
    mpp: float | None = None
    if "mpp" in rows.columns:
        spacings = sorted({float(value) for value in rows["mpp"].tolist() if not _missing(value)})
        if len(spacings) > 1:
            problems.append(f"slides with different mpp {spacings}: one patient's slides are predicted together")
        mpp = spacings[0] if spacings else None
    texts = tuple(dict.fromkeys(_text(value) for value in rows["text"])) if "text" in rows.columns else ()
    return PatientCase(
        case_id=case_id,
        slide_paths=slides,
        clinical=clinical or None,
        text=tuple(text for text in texts if text),
        mpp=mpp,
        problem="; ".join(problems),
    )

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

"""The deploy app's plain-Python part (no SDK needed): slide listing, patients from a folder or a manifest, the
summary table. References are written independently in each test (a plain loop over the manifest rows, the csv
module reading the summary back)."""

from __future__ import annotations

import csv
import logging
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest
from slide_cases import (
    SUMMARY_COLUMNS,
    CaseResult,
    cases_from_manifest,
    cases_from_slides,
    list_slide_files,
    plan_cases,
    write_summary,
)


def _touch(folder: Path, *names: str) -> list[Path]:
    """Empty files (listing and grouping never open a slide)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return [folder / name for name in names]


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["b.svs", "a.TIF", "c.ndpi", "notes.txt", ".hidden.svs", "d.tiff"], ["a.TIF", "b.svs", "c.ndpi", "d.tiff"]),
        (["x.csv", "y.json"], []),
    ],
)
def test_list_slide_files(tmp_path: Path, names: list[str], expected: list[str]) -> None:
    _touch(tmp_path, *names)
    (tmp_path / "sub.svs").mkdir()  # a folder with a slide suffix is not a slide
    assert [path.name for path in list_slide_files(tmp_path)] == expected


def test_one_patient_per_slide(tmp_path: Path) -> None:
    slides = _touch(tmp_path, "P-1.svs", "P-2.tif")
    cases = plan_cases(tmp_path)
    assert [(case.case_id, case.slide_paths) for case in cases] == [("P-1", (slides[0],)), ("P-2", (slides[1],))]
    assert all(case.clinical is None and case.text == () and not case.problem for case in cases)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda root: root / "missing", "must be a folder"),
        (lambda root: _touch(root, "a.svs", "a.tif")[0].parent, "share a file stem"),
        (lambda root: _touch(root, "notes.txt")[0].parent, "no slides found"),
    ],
)
def test_folder_ill_arg(tmp_path: Path, make, match: str) -> None:
    with pytest.raises((ValueError, NotADirectoryError), match=match):
        plan_cases(make(tmp_path / "slides"))


def test_cases_from_slides_duplicate_stems() -> None:
    with pytest.raises(ValueError, match="manifest"):
        cases_from_slides([Path("x/a.svs"), Path("y/a.svs")])


def _manifest(root: Path) -> Path:
    """Three patients: two slides by path (one in a sub-folder), one by slide_id, one with a missing file."""
    slides = root / "slides"
    _touch(slides, "A-1.svs", "A-2.svs", "B-1.tif", "C-1.svs", "stray.svs")
    table = pd.DataFrame(
        {
            "case_id": ["A", "A", "B", "C", "C"],
            "slide_id": ["A-1", "A-2", "B-1", "C-1", "C-9"],
            "slide_path": ["slides/A-1.svs", str(slides / "A-2.svs"), None, "slides/C-1.svs", "slides/C-9.svs"],
            "text": ["node 1 note", "node 2 note", None, "note", "note"],
            "mpp": [0.5, 0.5, None, 0.25, 0.25],
            "survival_months": [10.0, 10.0, 3.0, 7.0, 7.0],  # a label: never passed on as clinical
            "age": [61, 61, 50, None, 70],  # C: one row without age, one with
            "sex": ["F", "F", None, "M", "M"],
        }
    )
    path = root / "manifest.csv"
    table.to_csv(path, index=False)
    return path


def test_manifest_grouping_against_a_plain_loop(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    manifest = _manifest(tmp_path)
    slides = tmp_path / "slides"
    with caplog.at_level(logging.WARNING):
        cases = {case.case_id: case for case in cases_from_manifest(manifest, slides)}
    assert "stray.svs" in caplog.text  # in the folder, not in the manifest: reported, not run
    expected: dict[str, list[Path]] = {}
    with manifest.open() as handle:
        for row in csv.DictReader(handle):
            path = tmp_path / row["slide_path"] if row["slide_path"] else slides / f"{row['slide_id']}.tif"
            expected.setdefault(row["case_id"], []).append(Path(path))
    assert list(cases) == ["A", "B", "C"]
    assert {case_id: list(case.slide_paths) for case_id, case in cases.items()} == expected
    assert cases["A"].clinical == {"age": 61, "sex": "F"}
    assert cases["A"].text == ("node 1 note", "node 2 note")
    assert cases["A"].mpp == 0.5 and not cases["A"].problem
    assert cases["B"].clinical == {"age": 50}  # sex missing: left out, not filled in
    assert cases["B"].text == () and cases["B"].mpp is None and not cases["B"].problem
    assert cases["C"].text == ("note",)  # the same note twice is given once
    assert cases["C"].clinical == {"sex": "M", "age": 70.0}
    assert "C-9.svs not found" in cases["C"].problem  # a missing slide fails its own patient only


@pytest.mark.parametrize(
    ("rows", "problem"),
    [
        ({"case_id": ["A", "A"], "slide_id": ["A-1", "A-2"], "age": [61, 62]}, "different values"),
        ({"case_id": ["A", "A"], "slide_id": ["A-1", "A-2"], "mpp": [0.5, 0.25]}, "different mpp"),
        ({"case_id": ["A"], "slide_id": ["A-3"]}, "no slide file with that stem"),
        ({"case_id": ["A"], "slide_id": ["A-1"]}, "matches several files"),
    ],
)
def test_manifest_patient_problems(tmp_path: Path, rows: dict, problem: str) -> None:
    names = ["A-1.svs", "A-1.tif"] if problem == "matches several files" else ["A-1.svs", "A-2.svs"]
    _touch(tmp_path / "slides", *names)
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    (case,) = cases_from_manifest(tmp_path / "m.csv", tmp_path / "slides")
    assert problem in case.problem


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ({"slide_id": ["A-1"]}, "needs a case_id column"),
        ({"case_id": ["A"], "age": [3]}, "slide_path or slide_id"),
        ({"case_id": ["A", None], "slide_id": ["A-1", "A-2"]}, r"rows \[2\].*no case_id"),
        ({"case_id": ["A", "B"], "slide_path": ["slides/A-1.svs", "slides/A-1.svs"]}, "more than once"),
        ({"case_id": ["A", "B"], "slide_path": ["slides/A-1.svs", None]}, "neither slide_path nor slide_id"),
    ],
)
def test_manifest_ill_arg(tmp_path: Path, rows: dict, match: str) -> None:
    _touch(tmp_path / "slides", "A-1.svs", "A-2.svs")
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ValueError, match=match):
        cases_from_manifest(tmp_path / "m.csv", tmp_path / "slides")


def test_manifest_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        plan_cases(tmp_path, tmp_path / "nope.csv")


def test_write_summary_round_trip(tmp_path: Path) -> None:
    results = [
        CaseResult("A", "done", n_slides=2, risk=-1.25, prediction_json="out/A/prediction.json", seconds=1.5),
        CaseResult("B, 2", "failed", reason='RuntimeError: b.svs: "truncated"', n_slides=1),
        CaseResult("C", "done", n_slides=1, prediction="ILC"),
    ]
    path = write_summary(results, tmp_path / "out" / "summary.csv")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(SUMMARY_COLUMNS)
    expected = [{key: "" if value is None else str(value) for key, value in asdict(r).items()} for r in results]
    assert rows == expected
    assert [p.name for p in path.parent.iterdir()] == ["summary.csv"]  # no temporary file left

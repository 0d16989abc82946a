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

"""Run feature extraction over many slides: listing, sharding across ``torchrun`` ranks, status table.

Each slide's status lives in its own JSON file (``status/<slide_id>.json``, written atomically by
:func:`monai_ext.wsi.extract.extract_slide`), so ranks never write the same file and an interrupted job loses
nothing; ``status.csv`` is assembled from them at the end.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd

from monai_ext.wsi.extract import SlideOutputs, SlideResult

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".dcm", ".qptiff")


@dataclass(frozen=True)
class SlideJob:
    """One slide to process: its file, identifier and manifest pixel spacing (None to use the file's)."""

    path: Path
    slide_id: str
    mpp: float | None = None


def list_slides(source: str | Path) -> list[SlideJob]:
    """Slides from a folder (recognised suffixes, sorted) or a manifest CSV (``slide_path``, optional ``slide_id``,
    ``mpp``; relative paths resolve against the CSV's folder).

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: manifest without ``slide_path``, duplicate slide ids, or a folder without slides.
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such folder or manifest")
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES)
        jobs = [SlideJob(p, p.stem) for p in paths]
    else:
        table = pd.read_csv(source)
        if "slide_path" not in table.columns:
            raise ValueError(f"{source}: manifest needs a slide_path column (found {list(table.columns)})")
        jobs = []
        for row in table.itertuples(index=False):
            path = Path(row.slide_path)
            path = path if path.is_absolute() else source.parent / path
            slide_id = str(getattr(row, "slide_id", "") or path.stem)
            mpp = getattr(row, "mpp", None)
            jobs.append(SlideJob(path, slide_id, None if mpp is None or pd.isna(mpp) else float(mpp)))
    if not jobs:
        raise ValueError(f"{source}: no slides found (suffixes {', '.join(SLIDE_SUFFIXES)})")
    ids = pd.Series([job.slide_id for job in jobs])
    duplicated = sorted(set(ids[ids.duplicated()]))
    if duplicated:
        raise ValueError(f"{source}: duplicate slide ids {duplicated[:5]}; give unique slide_id values in a manifest")
    return jobs


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) from the ``torchrun`` environment; (0, 1) when not launched by it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def shard(jobs: list[SlideJob], rank: int, world_size: int) -> list[SlideJob]:
    """The slides rank ``rank`` of ``world_size`` processes (round-robin, so each rank gets a mix)."""
    return jobs[rank::world_size]


def write_status_table(out_dir: str | Path, jobs: list[SlideJob]) -> pd.DataFrame:
    """Collect the status JSON of every job into ``status.csv`` (atomically) and return it.

    A slide without a status file (never reached) is listed as ``pending``.
    """
    out_dir = Path(out_dir)
    columns = [f.name for f in fields(SlideResult)]
    rows = []
    for job in jobs:
        status_path = SlideOutputs(out_dir, job.slide_id).status
        if status_path.is_file():
            rows.append(json.loads(status_path.read_text()))
        else:
            rows.append({"slide_id": job.slide_id, "slide_path": str(job.path), "status": "pending"})
    table = pd.DataFrame(rows, columns=columns)
    tmp = out_dir / "status.csv.tmp"
    table.to_csv(tmp, index=False)
    tmp.replace(out_dir / "status.csv")
    return table

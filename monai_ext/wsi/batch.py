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

import functools
import json
import multiprocessing
import os
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
from tqdm import tqdm

from monai_ext.wsi.encoders import build_encoder
from monai_ext.wsi.extract import ExtractionConfig, SlideOutputs, SlideResult, extract_slide

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


def pick_device(device: str, rank: int) -> torch.device:
    """``auto`` -> this rank's GPU when CUDA is available, else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return torch.device("cuda", rank % max(torch.cuda.device_count(), 1))
    return torch.device(device)


def preprocess_slides(
    slides: str | Path,
    out: str | Path,
    *,
    encoder: str = "builtin_cnn",
    weights: str | Path | None = None,
    config: ExtractionConfig | None = None,
    device: str = "auto",
    resume: bool = True,
    seed: int = 0,
    isolate: bool = True,
) -> pd.DataFrame | None:
    """Extract features from every slide of a folder or manifest, with a progress bar; resumable.

    Under ``torchrun`` each rank takes its share of the slides (gloo on CPU, NCCL on GPUs) and rank 0 writes the
    status table once all ranks are done.

    Args:
        slides: folder of slides, or manifest CSV (``slide_path``, optional ``slide_id``, ``mpp``).
        out: output folder (``features/``, ``qc/``, ``status/``, ``status.csv``).
        encoder: registered patch encoder name.
        weights: local weights file (required for all encoders but ``builtin_cnn``).
        config: extraction parameters (defaults when None).
        device: ``cpu``, ``cuda`` or ``auto``.
        resume: skip slides already extracted with the same settings.
        seed: seed of the built-in encoder.
        isolate: run the slides in a child process, so a crash inside a native reader fails that slide
            (``reader_crashed``) instead of the whole job.

    Returns:
        the status table on rank 0, None on other ranks.
    """
    config = config or ExtractionConfig()
    rank, world_size = distributed_rank()
    run_device = pick_device(device, rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if run_device.type == "cuda" else "gloo")
    jobs = list_slides(slides)
    work = functools.partial(
        extract_jobs,
        out=str(out),
        encoder=encoder,
        weights=weights,
        config=config,
        device=str(run_device),
        resume=resume,
        seed=seed,
        position=rank,
        label=f"slides (rank {rank})" if world_size > 1 else "slides",
    )
    mine = shard(jobs, rank, world_size)
    if isolate:  # spawn, not fork: forking a process with live thread pools (torch, cuCIM) can deadlock the child
        run_isolated(mine, out, work, start_method="spawn")
    else:
        work(mine)
    if world_size > 1:
        dist.barrier()
    table = write_status_table(out, jobs) if rank == 0 else None
    if world_size > 1:
        dist.destroy_process_group()
    return table


def extract_jobs(
    jobs: list[SlideJob],
    *,
    out: str,
    encoder: str,
    weights: str | Path | None,
    config: ExtractionConfig,
    device: str,
    resume: bool,
    seed: int,
    position: int = 0,
    label: str = "slides",
) -> None:
    """Extract ``jobs`` in order with a progress bar, marking each slide as running while it is processed."""
    model = build_encoder(encoder, weights, seed=seed).to(device).eval()
    counts: Counter[str] = Counter()
    progress = tqdm(jobs, desc=label, unit="slide", position=position, file=sys.stderr, dynamic_ncols=True)
    for job in progress:
        progress.set_postfix_str(job.slide_id[:24])
        marker = running_marker(out, job.slide_id)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(job.path))
        result = extract_slide(
            job.path, out, model, config, slide_id=job.slide_id, mpp=job.mpp, device=device, resume=resume
        )
        marker.unlink()
        counts[result.status] += 1
        if result.status == "failed":
            tqdm.write(f"failed: {result.reason}", file=sys.stderr)
        progress.set_postfix(dict(counts))
    progress.close()


def running_marker(out: str | Path, slide_id: str) -> Path:
    """The file that says a slide is being processed (present only while it is)."""
    status = SlideOutputs(out, slide_id).status
    return status.with_name(f"{slide_id}.running")


def run_isolated(
    jobs: list[SlideJob], out: str | Path, work: Callable[[list[SlideJob]], None], *, start_method: str = "spawn"
) -> list[str]:
    """Run ``work(jobs)`` in a child process and survive a crash of the native readers.

    When the child dies (e.g. a segfault inside a reader), the slide it was processing gets status ``failed`` with
    reason ``reader_crashed`` and a new child takes the slides after it; finished slides are kept (and skipped on
    the way, since extraction resumes).

    Returns:
        the ids of the slides that crashed their process.

    Raises:
        RuntimeError: the child died outside any slide (e.g. while loading the encoder).
    """
    context = multiprocessing.get_context(start_method)
    remaining, crashed = list(jobs), []
    while remaining:
        child = context.Process(target=work, args=(remaining,), name="monai_ext-extract")
        child.start()
        child.join()
        if child.exitcode == 0:
            break
        position = next((i for i, job in enumerate(remaining) if running_marker(out, job.slide_id).exists()), None)
        if position is None:
            raise RuntimeError(f"feature extraction process exited with code {child.exitcode} outside any slide")
        job = remaining[position]
        running_marker(out, job.slide_id).unlink()
        reason = (
            f"reader_crashed: {job.path}: the extraction process died (exit code {child.exitcode}) while "
            "reading this slide; the file is probably malformed"
        )
        SlideOutputs(out, job.slide_id).write_status(SlideResult(job.slide_id, str(job.path), "failed", reason))
        tqdm.write(f"failed: {reason}", file=sys.stderr)
        crashed.append(job.slide_id)
        remaining = remaining[position + 1 :]
    return crashed

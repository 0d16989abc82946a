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

"""Slide -> features end to end: statuses, resume after SIGKILL, broken tiles dropped and counted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_ext.wsi.batch import SlideJob, list_slides, write_status_table
from monai_ext.wsi.extract import ExtractionConfig, extract_slide
from monai_ext.wsi.grid import make_grid
from monai_ext.wsi.open import open_slide
from monai_ext.wsi.store import read_features
from monai_ext.wsi.synthetic import corrupt_tile
from monai_ext.wsi.tissue import detect_tissue
from tests.wsi.conftest import write_tiff

REPO = Path(__file__).resolve().parents[2]
CONFIG = ExtractionConfig(mpp=0.5, patch_size=256, min_tissue_fraction=0.25, batch_size=8, num_threads=2)


class MeanColorEncoder(torch.nn.Module):
    """Deterministic stand-in encoder: per-channel mean and std of the patch ([B, 6])."""

    identity = "mean_color@test"
    feature_dim = 6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], dim=1)


def test_statuses_done_no_tissue_failed(make_tiff, tmp_path):
    good = make_tiff("good.tif", width=2048, height=1536)
    blank = write_tiff(tmp_path / "blank.tif", np.full((768, 1024, 3), 238, np.uint8))
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00" + b"\x00" * 64)
    out = tmp_path / "out"
    results = {p.stem: extract_slide(p, out, MeanColorEncoder(), CONFIG) for p in (good, blank, broken)}
    assert results["good"].status == "done" and results["good"].n_patches > 0
    assert results["blank"].status == "no_tissue"
    assert results["broken"].status == "failed" and str(broken) in results["broken"].reason
    loaded = read_features(out / "features" / "good.h5", encoder="mean_color@test", feature_dim=6)
    assert len(loaded.features) == results["good"].n_patches
    assert (out / "qc" / "good.png").is_file() and (out / "qc" / "blank.png").is_file()
    table = write_status_table(out, [SlideJob(p, p.stem) for p in (good, blank, broken)])
    assert list(table["status"]) == ["done", "no_tissue", "failed"]


def test_broken_tile_patch_absent_and_counted(make_tiff, tmp_path):
    path = make_tiff("slide.tif", width=2048, height=1536)
    with open_slide(path) as slide:
        grid = make_grid(slide.info, detect_tissue(slide), target_mpp=0.5, patch_size=256, min_tissue_fraction=0.25)
    victim = tuple(int(v) for v in grid.coords[len(grid) // 2])
    corrupt_tile(path, level=0, x=victim[0] + 10, y=victim[1] + 10)
    config = ExtractionConfig(**{**CONFIG.__dict__, "max_broken_fraction": 0.5})
    result = extract_slide(path, tmp_path / "out", MeanColorEncoder(), config)
    assert result.status == "done"
    assert result.n_broken == 1 and result.n_patches == len(grid) - 1
    loaded = read_features(tmp_path / "out" / "features" / "slide.h5")
    assert victim not in {tuple(c) for c in loaded.coords.tolist()}
    assert loaded.attrs["n_broken"] == 1
    assert (loaded.features[:, :3] > 0).all(), "no black patch may reach the encoder"


def test_too_many_broken_tiles_fail_the_slide(make_tiff, tmp_path):
    path = make_tiff("slide.tif", width=2048, height=1536)
    with open_slide(path) as slide:
        grid = make_grid(slide.info, detect_tissue(slide), target_mpp=0.5, patch_size=256, min_tissue_fraction=0.25)
    for x, y in grid.coords[:4]:
        corrupt_tile(path, level=0, x=int(x), y=int(y))
    config = ExtractionConfig(**{**CONFIG.__dict__, "max_broken_fraction": 0.05})
    result = extract_slide(path, tmp_path / "out", MeanColorEncoder(), config)
    assert result.status == "failed" and "BrokenTilesError" in result.reason and str(path) in result.reason
    assert not (tmp_path / "out" / "features" / "slide.h5").exists()


DRIVER = """
import sys, time, pathlib, torch
sys.path.insert(0, sys.argv[1])
from tests.wsi.test_extract import CONFIG, MeanColorEncoder
from monai_ext.wsi.extract import extract_slide

class StallingEncoder(MeanColorEncoder):
    def __init__(self, stall):
        super().__init__()
        self.stall, self.calls = stall, 0
    def forward(self, x):
        self.calls += 1
        if self.stall and self.calls == 2:
            pathlib.Path(sys.argv[3]).write_text("stalled")
            time.sleep(600)
        return super().forward(x)

out = sys.argv[2]
for path in sys.argv[4:]:
    extract_slide(path, out, StallingEncoder(stall=path.endswith("b.tif")), CONFIG)
"""


def test_sigkill_mid_slide_then_resume(make_tiff, tmp_path):
    slides = [make_tiff(f"{name}.tif", width=2048, height=1536, seed=i) for i, name in enumerate("abc")]
    out, marker = tmp_path / "out", tmp_path / "stalled"
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(REPO), str(out), str(marker), *map(str, slides)])
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, "driver exited before reaching slide b"
        assert time.monotonic() < deadline, "driver never reached slide b"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_a = out / "features" / "a.h5"
    assert done_a.is_file() and not (out / "features" / "b.h5").exists()
    mtime_a = done_a.stat().st_mtime_ns
    results = [extract_slide(p, out, MeanColorEncoder(), CONFIG) for p in slides]
    assert [r.status for r in results] == ["done"] * 3
    assert results[0].reason == "already extracted" and results[1].reason == ""
    assert done_a.stat().st_mtime_ns == mtime_a
    clean = tmp_path / "clean"
    for path in slides:
        extract_slide(path, clean, MeanColorEncoder(), CONFIG)
    for name in "abc":
        resumed, reference = (
            read_features(out / "features" / f"{name}.h5"),
            read_features(clean / "features" / f"{name}.h5"),
        )
        np.testing.assert_array_equal(resumed.features, reference.features)
        np.testing.assert_array_equal(resumed.coords, reference.coords)


def test_other_settings_are_not_reused(make_tiff, tmp_path):
    path = make_tiff("slide.tif", width=2048, height=1536)
    first = extract_slide(path, tmp_path, MeanColorEncoder(), CONFIG)
    again = extract_slide(
        path, tmp_path, MeanColorEncoder(), ExtractionConfig(**{**CONFIG.__dict__, "patch_size": 128})
    )
    assert first.status == again.status == "done"
    assert again.reason != "already extracted" and again.n_patches > first.n_patches


def test_list_slides_folder_and_manifest(make_tiff, tmp_path):
    a, b = make_tiff("a.tif"), make_tiff("b.svs")
    (tmp_path / "notes.txt").write_text("x")
    assert [job.slide_id for job in list_slides(tmp_path)] == ["a", "b"]
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide_id,slide_path,mpp\nA,a.tif,0.25\nB,b.svs,\n")
    jobs = list_slides(manifest)
    assert [(j.slide_id, j.path, j.mpp) for j in jobs] == [("A", a, 0.25), ("B", b, None)]
    manifest.write_text("slide_id,slide_path\nA,a.tif\nA,b.svs\n")
    with pytest.raises(ValueError, match="duplicate slide ids"):
        list_slides(manifest)


def test_status_json_is_valid_after_each_slide(make_tiff, tmp_path):
    path = make_tiff("slide.tif")
    extract_slide(path, tmp_path, MeanColorEncoder(), CONFIG)
    status = json.loads((tmp_path / "status" / "slide.json").read_text())
    assert status["status"] in {"done", "no_tissue"}


def test_shipped_config_equals_library_defaults_and_unknown_keys_fail(tmp_path):
    shipped = ExtractionConfig.from_json(REPO / "configs" / "wsi.json")
    assert shipped == ExtractionConfig()
    assert ExtractionConfig.from_json(REPO / "configs" / "wsi.json", mpp=0.25, patch_size=None).mpp == 0.25
    bad = tmp_path / "wsi.json"
    bad.write_text(json.dumps({"mpp": 0.5, "tissue": {"otsu": True}}))
    with pytest.raises(ValueError, match="unknown tissue parameters"):
        ExtractionConfig.from_json(bad)


def _crash_on_b(jobs, out):
    """A worker that processes slides in order and segfaults on slide "b", as a broken native reader would."""
    from monai_ext.wsi.batch import running_marker

    for job in jobs:
        running_marker(out, job.slide_id).parent.mkdir(parents=True, exist_ok=True)
        running_marker(out, job.slide_id).write_text(str(job.path))
        if job.slide_id == "b":
            os.kill(os.getpid(), signal.SIGSEGV)
        extract_slide(job.path, out, MeanColorEncoder(), CONFIG, slide_id=job.slide_id)
        running_marker(out, job.slide_id).unlink()


def test_reader_crash_fails_only_that_slide(make_tiff, tmp_path):
    from functools import partial

    from monai_ext.wsi.batch import run_isolated

    slides = [make_tiff(f"{name}.tif", width=2048, height=1536, seed=i) for i, name in enumerate("abc")]
    jobs = [SlideJob(path, path.stem) for path in slides]
    out = tmp_path / "out"
    crashed = run_isolated(jobs, out, partial(_crash_on_b, out=out))
    assert crashed == ["b"]
    table = write_status_table(out, jobs).set_index("slide_id")
    assert table.loc["a", "status"] == "done" and table.loc["c", "status"] == "done"
    assert table.loc["b", "status"] == "failed" and table.loc["b", "reason"].startswith("reader_crashed")
    assert str(slides[1]) in table.loc["b", "reason"]
    assert not list((out / "status").glob("*.running"))

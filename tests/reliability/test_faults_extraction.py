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

"""Faults during feature extraction: SIGKILL then rerun, a full disk, a reader crashing the worker.

Finished outputs are never touched, nothing half-written ever sits under a final name, and a rerun redoes only
what is missing.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_ext.wsi import store
from monai_ext.wsi.batch import SlideJob, run_isolated, running_marker, write_status_table
from monai_ext.wsi.extract import extract_slide
from monai_ext.wsi.store import FeatureWriteError, read_features, write_features
from tests.reliability.conftest import REPO, assert_names_file, write_small_features
from tests.wsi.test_extract import CONFIG, MeanColorEncoder


class WideEncoder(MeanColorEncoder):
    """The mean-colour encoder's 6 values repeated to 8192 per patch: feature files of about 1 MB per slide."""

    identity = "wide@test"
    feature_dim = 8192

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).repeat(1, self.feature_dim // 6 + 1)[:, : self.feature_dim]


SIGKILL_DRIVER = """
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

DISK_FULL_DRIVER = """
import dataclasses, json, resource, signal, sys
sys.path.insert(0, sys.argv[1])
from tests.reliability.test_faults_extraction import WideEncoder
from tests.wsi.test_extract import CONFIG
from monai_ext.wsi.extract import extract_slide

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG instead of killing us
limit = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
results = [dataclasses.asdict(extract_slide(path, sys.argv[2], WideEncoder(), CONFIG)) for path in sys.argv[4:]]
print(json.dumps(results))
"""


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sigkill_mid_slide_then_resume(make_tiff, tmp_path):
    slides = [make_tiff(f"{name}.tif", width=2048, height=1536, seed=i) for i, name in enumerate("abc")]
    out, marker = tmp_path / "out", tmp_path / "stalled"
    args = [sys.executable, "-c", SIGKILL_DRIVER, str(REPO), str(out), str(marker), *map(str, slides)]
    proc = subprocess.Popen(args)
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


def test_disk_full_fails_the_slide_keeps_finished_outputs(make_tiff, tmp_path):
    """RLIMIT_FSIZE in a child process stands in for a full disk: writes past the limit fail with EFBIG."""
    slide_a = make_tiff("a.tif", width=2048, height=1536, seed=0)
    slide_b = make_tiff("b.tif", width=2048, height=1536, seed=1)
    out = tmp_path / "out"
    assert extract_slide(slide_a, out, WideEncoder(), CONFIG).status == "done"
    done_a = out / "features" / "a.h5"
    digest_a, mtime_a = _sha256(done_a), done_a.stat().st_mtime_ns
    limit = done_a.stat().st_size // 2  # too small for b's feature file, enough for status and QC files
    args = [sys.executable, "-c", DISK_FULL_DRIVER, str(REPO), str(out), str(limit), str(slide_a), str(slide_b)]
    child = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    assert child.returncode == 0, child.stderr[-3000:]
    result_a, result_b = json.loads(child.stdout.strip().splitlines()[-1])
    assert result_a["status"] == "done" and result_a["reason"] == "already extracted"
    assert result_b["status"] == "failed" and result_b["reason"].startswith("FeatureWriteError")
    features_b = out / "features" / "b.h5"
    assert str(slide_b) in result_b["reason"] and str(features_b) in result_b["reason"]
    assert os.strerror(errno.EFBIG) in result_b["reason"]
    assert not features_b.exists() and not list((out / "features").glob("*.partial"))
    assert json.loads((out / "status" / "b.json").read_text())["status"] == "failed"
    assert _sha256(done_a) == digest_a and done_a.stat().st_mtime_ns == mtime_a
    assert read_features(done_a, encoder="wide@test").features.shape[1] == WideEncoder.feature_dim
    rerun = [extract_slide(path, out, WideEncoder(), CONFIG) for path in (slide_a, slide_b)]
    assert [r.reason for r in rerun] == ["already extracted", ""] and rerun[1].status == "done"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_write_failure_leaves_previous_file_and_no_partial(tmp_path, monkeypatch, code):
    path, features, _ = write_small_features(tmp_path / "s1.h5")
    before = _sha256(path)

    def failing_fsync(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(store.os, "fsync", failing_fsync)
    with pytest.raises(FeatureWriteError) as err:
        write_features(
            path, features * 2, np.zeros((5, 2)), slide_id="s1", encoder="enc@abc", patch_size=256, mpp=0.5, level=0
        )
    assert err.value.errno == code and err.value.filename == str(path)
    assert_names_file(err.value, path)
    assert os.strerror(code) in str(err.value)
    assert _sha256(path) == before and not list(tmp_path.glob("*.partial"))


def test_status_write_failure_names_the_record_and_leaves_no_temporary(make_tiff, tmp_path, monkeypatch):
    slide = make_tiff("a.tif")
    rename = Path.replace

    def full_disk_on_status(self, target):
        if self.name.endswith(".json.tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return rename(self, target)

    monkeypatch.setattr(Path, "replace", full_disk_on_status)
    with pytest.raises(OSError) as err:
        extract_slide(slide, tmp_path / "out", MeanColorEncoder(), CONFIG)
    assert err.value.errno == errno.ENOSPC
    assert_names_file(err.value, tmp_path / "out" / "status" / "a.json")
    assert list((tmp_path / "out" / "status").iterdir()) == []


def _crash_on_b(jobs, out):
    """A worker that processes slides in order and segfaults on slide "b", as a broken native reader would."""
    for job in jobs:
        running_marker(out, job.slide_id).parent.mkdir(parents=True, exist_ok=True)
        running_marker(out, job.slide_id).write_text(str(job.path))
        if job.slide_id == "b":
            os.kill(os.getpid(), signal.SIGSEGV)
        extract_slide(job.path, out, MeanColorEncoder(), CONFIG, slide_id=job.slide_id)
        running_marker(out, job.slide_id).unlink()


def test_reader_crash_fails_only_that_slide(make_tiff, tmp_path):
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

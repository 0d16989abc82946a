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

"""``scripts/preprocess.py`` as a user runs it: demo slides plus the real fixture slides, rerun, torchrun shards."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from monai_ext.wsi.synthetic import write_demo_slide

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "preprocess.py"


def _run(*args: str, launcher: tuple[str, ...] = (sys.executable,)) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*launcher, str(SCRIPT), *args], capture_output=True, encoding="utf-8", errors="replace", timeout=600, cwd=REPO
    )


def _demo_folder(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(n):
        write_demo_slide(folder / f"demo_{index}.tif", seed=index, size=(2048, 1536), tumor="micro")
    return folder


@pytest.mark.slow
def test_demo_and_fixture_slides_all_end_with_a_status(shared_data, tmp_path):
    slides = _demo_folder(tmp_path / "slides", 2)
    for fixture in (shared_data / "fixtures" / "slides").iterdir():
        if fixture.suffix in {".svs", ".tiff", ".dcm"}:
            shutil.copy(fixture, slides / fixture.name)
    out = tmp_path / "out"
    done = _run("--slides", str(slides), "--out", str(out), "--batch-size", "16")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    table = pd.read_csv(out / "status.csv").set_index("slide_id")
    assert set(table["status"]) <= {"done", "no_tissue", "failed"}
    assert (table.loc[["demo_0", "demo_1"], "status"] == "done").all()
    unopenable = table.loc["unopenable", "reason"]
    assert table.loc["unopenable", "status"] == "failed" and str(slides / "unopenable.tiff") in unopenable
    assert "unopenable.tiff" in done.stderr
    assert (table["status"] != "failed").sum() >= 4
    mtime = (out / "features" / "demo_0.h5").stat().st_mtime_ns
    again = _run("--slides", str(slides), "--out", str(out), "--batch-size", "16")
    assert again.returncode == 0
    assert (out / "features" / "demo_0.h5").stat().st_mtime_ns == mtime
    assert pd.read_csv(out / "status.csv").set_index("slide_id").loc["demo_0", "reason"] == "already extracted"


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_share_the_slides(tmp_path):
    slides = _demo_folder(tmp_path / "slides", 3)
    out = tmp_path / "out"
    launcher = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531")
    done = _run("--slides", str(slides), "--out", str(out), "--device", "cpu", launcher=launcher)
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_csv(out / "status.csv")
    assert list(table["status"]) == ["done"] * 3
    assert len(list((out / "features").glob("*.h5"))) == 3


def test_help_lists_the_options():
    text = "".join(_run("--help").__dict__[stream] for stream in ("stdout", "stderr"))
    assert "folder of slides, or manifest CSV" in text and "patch encoder name" in text

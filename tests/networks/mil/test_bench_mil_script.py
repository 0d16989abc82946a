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

"""``scripts/bench_mil.py`` end to end on tiny bags: one row per (model, size), ABMIL added as the baseline, ratios
computed against it in the same run. Behaviour only: no timing is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "bench_mil.py"


def test_bench_mil_table(tmp_path: Path) -> None:
    csv_path = tmp_path / "bench.csv"
    args = ["--sizes", "1,64", "--models", "mean,transmil", "--in_dim", "16", "--reps", "1", "--threads", "1"]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--csv_path", str(csv_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| model | patches |" in result.stdout
    table = pd.read_csv(csv_path)
    assert sorted(zip(table["model"], table["n_patches"], strict=True)) == [
        (model, size) for model in ("abmil", "mean", "transmil") for size in (1, 64)
    ]
    assert (table["status"] == "ok").all()
    assert (table["seconds"] > 0).all() and (table["peak_rss_delta_mb"] >= 0).all()
    for _, row in table.iterrows():
        baseline = table[(table["model"] == "abmil") & (table["n_patches"] == row["n_patches"])].iloc[0]
        ratio = float(str(row["time_vs_abmil"]).rstrip("x"))
        assert ratio == pytest.approx(row["seconds"] / baseline["seconds"], rel=0.06, abs=0.01)


def test_bench_mil_refuses_unknown_model() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--models", "nosuchmil", "--sizes", "8"], capture_output=True, text=True
    )
    assert result.returncode != 0 and "nosuchmil" in result.stderr

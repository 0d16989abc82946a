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

"""MIL aggregator benchmark: forward + backward time and peak memory per aggregator and bag size.

Usage:
    python scripts/bench_mil.py [--sizes 1000,10000,50000,100000] [--models mean,max,abmil,clam_sb,clam_mb,
        transmil,dsmil] [--in_dim 1024] [--reps 3] [--single_rep_from 50000] [--threads 2] [--csv_path bench_mil.csv]

Each (model, size) case runs in a fresh Python process: one bag of ``size`` random ``in_dim``-d features, the
model in training mode with its default configuration (mean / max with the same 512-d projection as ABMIL, CLAM
with a bag label so that its instance loss is included), backward of the sum of every float output. Time is the
median over ``reps`` runs after one warm-up run (a single cold run from ``single_rep_from`` patches on); memory is
the process's peak RSS (``ru_maxrss``) minus its value after imports, model construction and input creation, i.e.
what forward + backward needed on top of the bag itself. Ratios are against ABMIL measured in the same run (it is
added when missing from ``models``). The load average is printed: timings on a shared machine depend on it.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import fire
import torch

import monai_ext  # noqa: F401 - silences native library banners
from monai_ext.networks.mil import AGGREGATORS

BASELINE = "abmil"

PROBE = """
import json, resource, statistics, sys, time
import torch
import monai_ext
from monai_ext.networks.mil import build_aggregator
name = sys.argv[1]
n_patches, in_dim, reps, threads = (int(v) for v in sys.argv[2:6])
torch.set_num_threads(threads)
torch.manual_seed(0)
kwargs = {"hidden_dim": 512} if name in ("mean", "max") else {}  # the same 1024 -> 512 projection as ABMIL
model = build_aggregator(name, in_dim=in_dim, **kwargs).train()
x = torch.randn(1, n_patches, in_dim)
extra = {"bag_label": torch.tensor([1])} if name.startswith("clam") else {}
baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
seconds = []
for rep in range(reps + (reps > 1)):  # an untimed warm-up run when there are several
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    out = model(x, **extra)
    sum(v.sum() for k, v in out.items() if v.is_floating_point() and k != "attention").backward()
    if rep or reps == 1:
        seconds.append(time.perf_counter() - start)
peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
delta_mb = (peak_kb - baseline_kb) / 1024
print(json.dumps({"seconds": statistics.median(seconds), "reps": reps, "peak_rss_delta_mb": delta_mb}))
"""


def _as_list(value: str | int | tuple | list) -> list[str]:
    """Fire turns ``--sizes 1000,10000`` into a tuple and ``--sizes 1000`` into an int; accept all forms."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (tuple, list)):
        return [str(v) for v in value]
    return [str(value)]


def run_case(name: str, n_patches: int, in_dim: int, reps: int, threads: int, timeout: float) -> dict[str, object]:
    """Measure one (model, size) case in a fresh process; a failure or timeout is reported in ``status``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-c", PROBE, name, str(n_patches), str(in_dim), str(reps), str(threads)]
    try:
        done = subprocess.run(
            command, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        return {"status": f"timeout > {timeout:.0f} s"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return {"status": f"failed: {last[:80]}"}
    return {"status": "ok", **json.loads(done.stdout.strip().splitlines()[-1])}


def _ratio(value: object, reference: object) -> str:
    if isinstance(value, float) and isinstance(reference, float) and reference > 0:
        return f"{value / reference:.2g}x"
    return "-"


def main(
    sizes: str | tuple = "1000,10000,50000,100000",
    models: str | tuple = ",".join(AGGREGATORS),
    in_dim: int = 1024,
    reps: int = 3,
    single_rep_from: int = 50_000,
    threads: int = 2,
    timeout: float = 600.0,
    csv_path: str | None = None,
) -> None:
    """Run every (model, size) case, print one markdown table and optionally write it as CSV.

    Args:
        sizes: comma-separated bag sizes (patches).
        models: comma-separated aggregator names (see ``monai_ext.networks.mil.AGGREGATORS``).
        in_dim: feature size of each patch.
        reps: timed repetitions per case (median reported).
        single_rep_from: from this bag size on, one repetition only.
        threads: torch / OpenMP threads of each case.
        timeout: seconds before a case is abandoned.
        csv_path: where to write the rows as CSV; None writes nothing.
    """
    size_list = [int(s) for s in _as_list(sizes)]
    names = _as_list(models)
    unknown = sorted(set(names) - set(AGGREGATORS))
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {sorted(AGGREGATORS)}")
    if BASELINE not in names:
        names = [BASELINE, *names]
    print(
        f"torch {torch.__version__}, {threads} threads, {platform.processor() or platform.machine()}, "
        f"in_dim {in_dim}, training mode, forward + backward of one bag; load average {os.getloadavg()}"
    )
    rows: list[dict[str, object]] = []
    for n_patches in size_list:
        n_reps = 1 if n_patches >= single_rep_from else reps
        results = {name: run_case(name, n_patches, in_dim, n_reps, threads, timeout) for name in names}
        reference = results[BASELINE]
        for name, result in results.items():
            rows.append(
                {
                    "model": name,
                    "n_patches": n_patches,
                    "status": result["status"],
                    "reps": result.get("reps", n_reps),
                    "seconds": result.get("seconds"),
                    "peak_rss_delta_mb": result.get("peak_rss_delta_mb"),
                    "time_vs_abmil": _ratio(result.get("seconds"), reference.get("seconds")),
                    "memory_vs_abmil": _ratio(result.get("peak_rss_delta_mb"), reference.get("peak_rss_delta_mb")),
                }
            )
            print(f"  {name:>8} {n_patches:>7,} patches: {result}", file=sys.stderr)
    header = ["model", "patches", "s fwd+bwd", "reps", "peak RSS delta MB", "time vs ABMIL", "memory vs ABMIL"]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        if row["status"] != "ok":
            cells = [row["model"], f"{row['n_patches']:,}", str(row["status"]), str(row["reps"]), "-", "-", "-"]
        else:
            cells = [
                row["model"],
                f"{row['n_patches']:,}",
                f"{row['seconds']:.3f}",
                str(row["reps"]),
                f"{row['peak_rss_delta_mb']:,.0f}",
                str(row["time_vs_abmil"]),
                str(row["memory_vs_abmil"]),
            ]
        print("| " + " | ".join(cells) + " |")
    if csv_path is not None:
        Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
        with open(csv_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"\nwrote {csv_path}")
    print(f"\nload average (1, 5, 15 min) at the end: {os.getloadavg()}")


if __name__ == "__main__":
    fire.Fire(main)

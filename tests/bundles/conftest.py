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

"""Fixtures of the bundle tests: a copy of a bundle trained once per session on a tiny demo cohort.

Every command runs as a user would type it (``python -m monai.bundle ...``) in a subprocess, on a copy of the
bundle's ``configs/`` in a temporary folder, with ``--bundle_root`` pointing there, so the repository's bundles
stay clean. The tiny overrides keep each run to seconds: 16 patients on small slides, 2 epochs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUNDLES = REPO / "bundles"
# per bundle: command-line overrides that shrink the demo and the training (defaults are the README's run)
_DEMO = ["--demo#n_patients", "16", "--demo#slide_size", "[2048, 1024]", "--data#n_folds", "3"]
TINY: dict[str, list[str]] = {
    "pathology_staging_multimodal": ["--epochs", "2", *_DEMO, "--demo#max_slides_per_patient", "3"],
    "pathology_subtyping_multimodal": ["--epochs", "2", *_DEMO],
    "pathology_survival_multimodal": [
        "--epochs",
        "2",
        "--demo#n_patients",
        "16",
        "--demo#slide_size",
        "[2048, 1024]",
        "--data#n_folds",
        "3",
        "--data#n_bins",
        "2",
        "--accumulation_steps",
        "2",
    ],
}


def copy_bundle(name: str, target: Path) -> Path:
    """Copy a bundle's configs, docs and license (not its generated folders) to ``target``."""
    source = BUNDLES / name
    target.mkdir(parents=True, exist_ok=True)
    for part in ("configs", "docs"):
        shutil.copytree(source / part, target / part)
    shutil.copy(source / "LICENSE", target / "LICENSE")
    return target


def bundle_env() -> dict[str, str]:
    """Environment of the subprocesses: one thread each (CI machines are small), no network."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}


def run_module(args: Sequence[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python <args>`` in ``cwd`` and fail the test with the output's tail when it fails."""
    result = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=bundle_env(),
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
    )
    if result.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def run_bundle(command: str, run_id: str | None, configs: Sequence[str], root: Path, *extra: str) -> None:
    """``python -m monai.bundle <command> [run_id] --config_file [...] --bundle_root <root> <extra>``."""
    files = [str(root / "configs" / name) for name in configs]
    config_arg = files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]"
    args = ["-m", "monai.bundle", command, *([run_id] if run_id else [])]
    run_module([*args, "--config_file", config_arg, "--bundle_root", str(root), *extra], cwd=root)


@pytest.fixture(scope="session")
def trained_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Cache of bundles trained in this session: name -> bundle root (filled by :func:`train_bundle`)."""
    return {}


def train_bundle(name: str, cache: dict[str, Path], factory: pytest.TempPathFactory) -> Path:
    """The root of a copy of bundle ``name`` trained with its tiny overrides; the demo cohort is built by the
    training command itself in the empty ``demo_data`` folder."""
    if name not in cache:
        root = copy_bundle(name, factory.mktemp("bundles") / name)
        run_bundle("run", "training", ["train.json"], root, *TINY[name])
        cache[name] = root
    return cache[name]

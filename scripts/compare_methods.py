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

"""Compare methods on the demo cohort (staging, subtyping, survival), with missing-modality rows, as markdown.

Usage:
    python scripts/compare_methods.py --out runs/compare [--n-patients 60 --folds 3 --seeds 0,1 --epochs 15]
        [--tasks staging,subtyping,survival] [--methods wsi_abmil,concat,hmf] [--table docs/methods.md]
        [--manifest my_cohort/manifest.csv --prompts my_prompts.json]

Builds the demo cohort under ``<out>/cohort`` unless ``--manifest`` is given, trains every method of
:data:`monai_ext.engines.compare.METHODS` for each task, seed and fold, evaluates each model with all modalities and
with each one removed, and writes ``<out>/results.csv`` (one row per run and removed modality) and the markdown
table (mean +/- std over folds and seeds) to ``--table`` (default ``<out>/methods.md``).
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from pathlib import Path

import fire

import monai_ext  # noqa: F401 - silences native library banners before MONAI loads
from monai_ext.data.demo import make_demo_cohort
from monai_ext.engines.compare import METHODS, CompareSettings, comparison_markdown, run_comparison


def _names(value: str | int | tuple | list) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, int):
        return (str(value),)
    return tuple(str(part) for part in value)


def main(
    out: str = "runs/compare",
    manifest: str | None = None,
    n_patients: int = 60,
    cohort_seed: int = 0,
    tasks: str = "staging,subtyping,survival",
    methods: str | None = None,
    folds: int = 3,
    run_folds: int | None = None,
    seeds: str = "0,1",
    epochs: int = 15,
    patience: int = 5,
    lr: float = 1e-3,
    batch_size: int = 4,
    dim: int = 64,
    modality_dropout: float = 0.25,
    keep_ratio: float = 0.5,
    n_bins: int = 4,
    prompts: str | None = None,
    table: str | None = None,
    device: str = "cpu",
) -> None:
    """Run the comparison and write the markdown table.

    Args:
        out: output folder (cohort, runs, results.csv).
        manifest: an existing cohort manifest; default: build the demo cohort in <out>/cohort.
        n_patients: demo cohort size (up to 5 lymph-node slides per patient).
        cohort_seed: demo cohort seed.
        tasks: comma-separated tasks among staging, subtyping, survival.
        methods: comma-separated method names (default: all registered); see --help of the module.
        folds: patient-grouped folds per seed.
        run_folds: run only the first folds of each seed (default all).
        seeds: comma-separated seeds (each draws folds and initialisations).
        epochs: maximum epochs per run (early stopping on an inner validation split).
        patience: early-stopping patience.
        lr: learning rate (AdamW).
        batch_size: patients per training step.
        dim: token width of the networks.
        modality_dropout: modality dropout in training of multimodal methods.
        keep_ratio: HMF attention-filter ratio.
        n_bins: survival time bins (from each training fold's uncensored times).
        prompts: JSON or CSV file of slide-stage prompts (default: the built-in demo prompts).
        table: markdown output path (default <out>/methods.md).
        device: cpu or cuda.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    out_dir = Path(out)
    if manifest is None:
        manifest_path = make_demo_cohort(
            out_dir / "cohort", n_patients=n_patients, seed=cohort_seed, max_slides_per_patient=5, progress=True
        )
    else:
        manifest_path = Path(manifest)
    settings = CompareSettings(
        folds=folds,
        run_folds=run_folds,
        seeds=tuple(int(seed) for seed in _names(seeds)),
        epochs=epochs,
        patience=patience,
        lr=lr,
        batch_size=batch_size,
        dim=dim,
        modality_dropout=modality_dropout,
        keep_ratio=keep_ratio,
        n_bins=n_bins,
        device=device,
    )
    chosen = _names(methods) if methods is not None else None
    results = run_comparison(
        manifest_path,
        out_dir,
        tasks=_names(tasks),
        methods=chosen,
        settings=settings,
        prompts=prompts,
        progress=True,
    )
    minutes = (time.perf_counter() - start) / 60
    command = "python " + " ".join(shlex.quote(argument) for argument in sys.argv)
    names = chosen or tuple(METHODS)
    lines = [
        f"Command: `{command}` ({minutes:.1f} min). Methods:",
        "",
        *[f"- `{name}`: {METHODS[name].description}" for name in names],
        "",
        comparison_markdown(results),
    ]
    table_path = Path(table) if table is not None else out_dir / "methods.md"
    table_path.parent.mkdir(parents=True, exist_ok=True)
    table_path.write_text("\n".join(lines))
    print(f"results: {out_dir / 'results.csv'}; table: {table_path} ({minutes:.1f} min)")


if __name__ == "__main__":
    fire.Fire(main)

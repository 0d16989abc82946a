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
"""Fusion against each single modality on a bundle's demo cohort: the performance table of the bundle README.

Usage:
    python scripts/bundle_results.py bundles/pathology_survival_multimodal --out runs/results_survival \
        [--folds 5] [--seeds 0,1] [--variants "wsi;omics;clinical;wsi,omics,clinical"]

For every modality variant, fold and seed it runs the bundle's own ``training`` then ``evaluating`` workflows
(``configs/train.json`` and ``configs/train.json + configs/evaluate.json``, exactly what ``python -m monai.bundle run``
executes) with ``modalities``, ``data#fold`` and ``seed`` overridden, on one demo cohort built once under
``out/demo_data`` by the first run. Each run has its own bundle root ``out/<variant>/fold<k>_seed<s>`` (models,
eval/metrics.json, TensorBoard); finished runs are skipped on a rerun. The table of the test metrics (mean +/- std
over folds and seeds) is printed and written to ``out/results.md``; every run's metrics to ``out/results.csv``.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fire
import pandas as pd
from tqdm import tqdm

import monai_ext  # noqa: F401 - silences native library banners before MONAI loads

# the test metrics reported per task (metrics.json keys), first one is the headline
REPORTED = {
    "survival": ("c_index", "logrank_p"),
    "classification": ("auc", "balanced_accuracy"),
    "staging": ("kappa", "macro_f1", "accuracy"),
}


def _variants(text: str | Sequence[str] | None, default: Sequence[str]) -> list[list[str]]:
    """``"wsi;omics;wsi,omics"`` -> ``[["wsi"], ["omics"], ["wsi", "omics"]]``; default: each single modality of
    the bundle's configuration, then all of them."""
    if text is None:
        return [[name] for name in default] + [list(default)]
    if not isinstance(text, str):  # fire turns "wsi,omics" into a tuple: one variant
        text = ",".join(str(name) for name in text)
    groups = [[name.strip() for name in group.split(",") if name.strip()] for group in text.split(";")]
    return [group for group in groups if group]


def _run(root: Path, run_id: str, configs: Sequence[str], overrides: dict[str, Any]) -> None:
    """One bundle workflow (``training`` or ``evaluating``) in this process."""
    from monai.bundle import ConfigWorkflow  # after monai_ext, which silences the native banners MONAI triggers

    files = [str(root / "configs" / name) for name in configs]
    workflow = ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        logging_file=str(root / "configs" / "logging.conf"),
        run_id=run_id,
        workflow_type=None,
        **overrides,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()


def _copy_configs(bundle: Path, root: Path) -> None:
    if not (root / "configs").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        shutil.copytree(bundle / "configs", root / "configs")


def main(
    bundle: str,
    out: str,
    folds: int = 5,
    seeds: str | int | Sequence[int] = "0",
    variants: str | Sequence[str] | None = None,
    epochs: int | None = None,
    n_patients: int | None = None,
    variant_overrides: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Train and evaluate the bundle on each modality variant, fold and seed; write and print the table.

    Args:
        bundle: the bundle folder (``bundles/<task>``).
        out: output folder (demo cohort, one bundle root per run, results.csv, results.md).
        folds: number of folds of the bundle's patient split; every fold is the test set once.
        seeds: training seeds, comma separated.
        variants: modality sets separated by ``;``, modalities by ``,``; default each single modality and all.
        epochs: override the bundle's maximum epochs.
        n_patients: override the demo cohort's size.
        variant_overrides: extra config overrides per variant name (modalities joined by ``+``), e.g.
            ``{"wsi": {"network_def#network#slide_model#fusion": "concat"}}`` where the bundle's fusion needs a
            modality the variant lacks.

    The demo cohort's patients without one of the bundle's modalities (the demo leaves out genomics or notes for
    some) are left out of every variant (``data#patients_with``), so all variants see the same patients.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    bundle_dir, out_dir = Path(bundle).resolve(), Path(out).resolve()
    base = json.loads((bundle_dir / "configs" / "train.json").read_text())
    task = base["task"]
    seed_list = [int(s) for s in str(seeds).strip("()[]").split(",") if s.strip()]
    runs = [
        (variant, fold, seed)
        for variant in _variants(variants, base["modalities"])
        for fold in range(folds)
        for seed in seed_list
    ]
    demo_dir = out_dir / "demo_data"
    # every variant trains and tests on the same patients: those with all the bundle's modalities (class prompts
    # are the same for every patient and never missing)
    prompts = base["data"].get("text") == "prompts"
    patients_with = [name for name in base["modalities"] if not (name == "text" and prompts)]
    rows = []
    for variant, fold, seed in tqdm(runs, desc=bundle_dir.name, unit="run"):
        name = "+".join(variant)
        root = out_dir / name / f"fold{fold}_seed{seed}"
        metrics_file = root / "eval" / "metrics.json"
        if not metrics_file.is_file():
            _copy_configs(bundle_dir, root)
            overrides: dict[str, Any] = {
                "bundle_root": str(root),
                "dataset_dir": str(demo_dir),
                "modalities": variant,
                "seed": seed,
                "data#n_folds": folds,
                "data#fold": fold,
                "data#patients_with": patients_with,
                **({} if "text" in variant else {"data#text": None}),  # no text source without the text modality
                **(variant_overrides or {}).get(name, {}),
            }
            if epochs is not None:
                overrides["epochs"] = epochs
            if n_patients is not None:
                overrides["demo#n_patients"] = n_patients
            _run(root, "training", ["train.json"], overrides)
            _run(root, "evaluating", ["train.json", "evaluate.json"], overrides)
        metrics = json.loads(metrics_file.read_text())
        rows.append({"variant": name, "fold": fold, "seed": seed, **{k: metrics.get(k) for k in REPORTED[task]}})
    table = pd.DataFrame(rows)
    table.to_csv(out_dir / "results.csv", index=False)
    markdown = summary_markdown(table, REPORTED[task], len(seed_list), folds)
    (out_dir / "results.md").write_text(markdown)
    print(markdown)


def summary_markdown(table: pd.DataFrame, metrics: Sequence[str], n_seeds: int, n_folds: int) -> str:
    """Mean +/- std of each metric per variant, in the order the variants were run, as a markdown table."""
    header = "| modalities | " + " | ".join(f"test {m}" for m in metrics) + " |"
    lines = [header, "|---" * (len(metrics) + 1) + "|"]
    for variant, group in table.groupby("variant", sort=False):
        cells = []
        for metric in metrics:
            values = pd.to_numeric(group[metric], errors="coerce")
            spread = f" ± {values.std(ddof=1):.3f}" if len(values) > 1 else ""
            cells.append(f"{values.mean():.3f}{spread}")
        lines.append(f"| {variant.replace('+', ' + ')} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"mean ± std over {n_folds} folds x {n_seeds} seed(s) ({len(table)} runs)")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    fire.Fire(main)

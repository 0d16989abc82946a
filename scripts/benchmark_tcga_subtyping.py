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

"""Subtype classification from genomics + clinical variables on any TCGA-format table, baselines beside.

Labels from a folder of json files (one entry per slide with a patient key and a class index)::

    python scripts/benchmark_tcga_subtyping.py --table ../shared/data/tcga/tcga_brca_all_clean.csv.zip \\
        --labels ../shared/data/tcga/subtyping/tcga_brca \\
        --clinical ../shared/data/tcga/clinical/tcga_brca_clinical.csv --out_dir runs/subtyping_brca

or from a column of the table, class names listed in class-index order::

    python scripts/benchmark_tcga_subtyping.py --table ../shared/data/tcga/tcga_brca_all_clean.csv.zip \\
        --label_column oncotree_code --classes IDC,ILC --out_dir runs/subtyping_brca

Writes ``results.csv`` (per model and fold), ``summary.csv`` / ``summary.md`` (mean +/- std over folds), ``folds.csv``
(the test fold of each patient, all folds even with ``--folds``) and ``predictions.csv`` (out-of-fold probabilities).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import fire
import pandas as pd

from monai_ext.data.tcga import read_clinical, read_tcga_table
from monai_ext.engines.tcga_benchmark import patient_table, select_models
from monai_ext.engines.tcga_subtyping import (
    SubtypingSettings,
    default_subtyping_models,
    labels_from_column,
    read_json_labels,
    run_subtyping_benchmark,
    stratified_patient_folds,
    summarize_subtyping,
)

logger = logging.getLogger("benchmark_tcga_subtyping")


def markdown_table(summary: pd.DataFrame) -> str:
    """Summary as a markdown table: ``mean +/- std`` of AUC and balanced accuracy."""
    lines = ["| cohort | model | AUC | balanced accuracy |", "|---|---|---|---|"]
    for (cohort, model), row in summary.iterrows():
        cells = [f"{row[f'{m}_mean']:.3f} +/- {row[f'{m}_std']:.3f}" for m in ("auc", "balanced_accuracy")]
        lines.append(f"| {cohort} | {model} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def main(
    table: str,
    labels: str | None = None,
    label_column: str | None = None,
    classes: str | tuple[str, ...] | None = None,
    id_key: str = "case_submitter_id",
    clinical: str | None = None,
    out_dir: str = "runs/benchmark_tcga_subtyping",
    models: str | tuple[str, ...] | None = None,
    cohort: str | None = None,
    n_folds: int = 5,
    folds: int | None = None,
    seed: int = 0,
) -> str:
    """Run the baselines and networks on stratified patient-grouped folds of one cohort and write the tables.

    Args:
        table: ``tcga_<cohort>_all_clean.csv.zip``-format table (genes + ``case_id``, ``age``, ...).
        labels: folder of json label files (``primary_class``; -1 is excluded). Give this or ``label_column``.
        label_column: column of the table holding class names (e.g. ``oncotree_code``), with ``classes``.
        classes: class names in class-index order (comma-separated or a list), e.g. ``IDC,ILC``; other values
            are left out.
        id_key: json key matching the table's ``case_id``.
        clinical: optional ``case_id, stage, grade`` table (stage / grade join the clinical variables).
        out_dir: output folder.
        models: network names to run (comma-separated or a list), default all of ``default_subtyping_models()``.
        cohort: name in the tables (default: the table's file name).
        n_folds: number of outer folds.
        folds: run only the first ``folds`` folds (for a quick check).
        seed: seed of the folds, inner splits and networks.

    Returns:
        the summary as a markdown table (fire prints it).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    start = time.perf_counter()
    if (labels is None) == (label_column is None):
        raise ValueError("give exactly one of --labels (json folder) and --label_column (with --classes)")
    settings = SubtypingSettings(n_folds=n_folds, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = cohort or Path(table).name.split(".")[0]
    tcga = read_tcga_table(table)
    if labels is not None:
        patient_labels = read_json_labels(labels, id_key=id_key)
    else:
        if not classes:
            raise ValueError("--label_column needs --classes, the class names in class-index order (e.g. IDC,ILC)")
        names = classes.split(",") if isinstance(classes, str) else list(classes)
        patient_labels = labels_from_column(tcga.slides, {c: i for i, c in enumerate(names)}, column=label_column)
    patients = patient_table(tcga, read_clinical(clinical, on_conflict="drop") if clinical else None)
    patients = patients.join(patient_labels, how="inner")
    if patients.empty:
        raise ValueError(f"no labelled patient of {labels or label_column} is in {table}: check --id_key")
    counts = patients["label"].value_counts().sort_index().to_dict()
    logger.info("%s: %d patients with genes and a label, per class %s", name, len(patients), counts)
    all_folds = stratified_patient_folds(patients.index, patients["label"], settings.n_folds, settings.seed)
    fold_list = all_folds[:folds]
    specs = select_models(default_subtyping_models(), models)
    results, predictions = run_subtyping_benchmark(
        patients, tcga.genes, fold_list, models=specs, settings=settings, cohort=name
    )
    summary = summarize_subtyping(results)
    pd.DataFrame(
        [(case, k) for k, fold in enumerate(all_folds) for case in fold.test], columns=["case_id", "fold"]
    ).to_csv(out / "folds.csv", index=False)
    results.to_csv(out / "results.csv", index=False)
    predictions.to_csv(out / "predictions.csv", index=False)
    summary.to_csv(out / "summary.csv")
    (out / "summary.md").write_text(markdown_table(summary))
    logger.info("%s done in %.0f s", name, time.perf_counter() - start)
    return markdown_table(summary)


if __name__ == "__main__":
    fire.Fire(main)

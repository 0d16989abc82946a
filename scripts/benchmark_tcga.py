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

"""Genomics + clinical survival benchmark on any TCGA-format cohort table and its published 5 folds.

Example::

    python scripts/benchmark_tcga.py --table ../shared/data/tcga/tcga_blca_all_clean.csv.zip \\
        --splits ../shared/data/tcga/splits/tcga_blca --clinical ../shared/data/tcga/clinical/tcga_blca_clinical.csv \\
        --out_dir runs/tcga_blca

Writes ``results.csv`` (per model and fold), ``summary.csv`` / ``summary.md`` (mean +/- std over folds),
``predictions.csv`` (out-of-fold risks) and ``km_<model>.png`` (Kaplan-Meier curves of the pooled out-of-fold
high / low risk groups, split at each test fold's median risk) for the best network and the best baseline.

``--rsf`` adds a random survival forest from scikit-survival. scikit-survival is GPL-3.0: it is imported only here,
only when asked for, and is not a dependency of monai_ext.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import fire
import matplotlib
import numpy as np
import pandas as pd
from lifelines import KaplanMeierFitter
from lifelines.statistics import logrank_test

from monai_ext.data.splits import read_published_splits
from monai_ext.data.tcga import read_clinical, read_tcga_table
from monai_ext.engines.tcga_benchmark import (
    BASELINES,
    BenchmarkSettings,
    FoldInputs,
    Prediction,
    default_models,
    patient_table,
    run_survival_benchmark,
    select_models,
    summarize,
)

matplotlib.use("Agg")
from matplotlib import pyplot as plt

logger = logging.getLogger("benchmark_tcga")


def random_survival_forest(fold: FoldInputs, settings: BenchmarkSettings) -> Prediction:
    """scikit-survival's random survival forest (Ishwaran et al. 2008, https://doi.org/10.1214/08-AOAS169) on the
    fold's selected RNA genes + age, fixed hyperparameters (200 trees, min 15 patients per leaf)."""
    from sksurv.ensemble import RandomSurvivalForest  # GPL-3.0, optional: never imported by the library
    from sksurv.util import Surv

    def features(part: str) -> np.ndarray:
        age = fold.covariates[part][["age"]].astype(float).fillna(fold.covariates["train"]["age"].median())
        return np.concatenate([fold.rna[part].to_numpy(), age.to_numpy()], axis=1)

    train = np.concatenate([features("train"), features("val")])
    time_, event = (np.concatenate([fold.outcome(p)[i] for p in ("train", "val")]) for i in (0, 1))
    forest = RandomSurvivalForest(
        n_estimators=200, min_samples_leaf=15, max_features="sqrt", n_jobs=1, random_state=settings.seed
    )
    forest.fit(train, Surv.from_arrays(event.astype(bool), time_))
    test = features("test")

    def survival(times: np.ndarray) -> np.ndarray:
        return np.stack([curve(times) for curve in forest.predict_survival_function(test)])

    return Prediction(forest.predict(test), survival)


def plot_risk_groups(predictions: pd.DataFrame, model: str, path: Path) -> float:
    """Kaplan-Meier curves of the pooled out-of-fold low / high risk groups (split at each fold's median test
    risk); returns the log-rank p-value."""
    rows = predictions[predictions["model"] == model]
    high = rows.groupby("fold")["risk"].transform(lambda risk: risk > risk.median()).to_numpy(bool)
    test = logrank_test(
        rows["survival_months"][high], rows["survival_months"][~high], rows["event"][high], rows["event"][~high]
    )
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, group in (("low risk", ~high), ("high risk", high)):
        KaplanMeierFitter(label=f"{name} (n={group.sum()})").fit(
            rows["survival_months"][group], rows["event"][group]
        ).plot_survival_function(ax=ax)
    ax.set(xlabel="months", ylabel="overall survival", title=f"{model}: log-rank p = {test.p_value:.2g}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return float(test.p_value)


def markdown_table(summary: pd.DataFrame) -> str:
    """Summary as a markdown table: ``mean +/- std`` per metric."""
    lines = ["| cohort | model | C-index | IPCW C-index | IBS |", "|---|---|---|---|---|"]
    for (cohort, model), row in summary.iterrows():
        cells = [f"{row[f'{m}_mean']:.3f} +/- {row[f'{m}_std']:.3f}" for m in ("c_index", "c_index_ipcw", "ibs")]
        lines.append(f"| {cohort} | {model} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def main(
    table: str,
    splits: str,
    clinical: str | None = None,
    out_dir: str = "runs/benchmark_tcga",
    models: str | tuple[str, ...] | None = None,
    rsf: bool = False,
    cohort: str | None = None,
    folds: int | None = None,
) -> str:
    """Run the baselines and networks on every published fold of one cohort and write the tables.

    Args:
        table: ``tcga_<cohort>_all_clean.csv.zip``-format table.
        splits: folder of ``splits_{k}.csv`` (the ``val`` column is the held-out test part).
        clinical: optional ``case_id, stage, grade`` table (stage / grade join the clinical variables).
        out_dir: output folder.
        models: network names to run (comma-separated or a list), default all of ``default_models()``.
        rsf: also run scikit-survival's random survival forest (GPL-3.0, optional).
        cohort: name in the tables (default: the table's file name).
        folds: run only the first ``folds`` folds (for a quick check).

    Returns:
        the summary as a markdown table (fire prints it).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = cohort or Path(table).name.split(".")[0]
    tcga = read_tcga_table(table)
    patients = patient_table(tcga, read_clinical(clinical, on_conflict="drop") if clinical else None)
    fold_list = read_published_splits(splits, val_as="test")[:folds]
    specs = select_models(default_models(), models)
    baselines = {**BASELINES, "rsf_rna_age": random_survival_forest} if rsf else BASELINES
    results, predictions = run_survival_benchmark(
        patients, tcga.genes, fold_list, models=specs, baselines=baselines, cohort=name
    )
    summary = summarize(results)
    results.to_csv(out / "results.csv", index=False)
    predictions.to_csv(out / "predictions.csv", index=False)
    summary.to_csv(out / "summary.csv")
    (out / "summary.md").write_text(markdown_table(summary))
    means = summary["c_index_mean"].droplevel(0)
    best_network = means.drop(list(baselines)).idxmax() if specs else None
    for model in filter(None, (best_network, means[list(baselines)].idxmax())):
        p_value = plot_risk_groups(predictions, model, out / f"km_{model}.png")
        logger.info("%s: Kaplan-Meier risk groups, log-rank p = %.3g", model, p_value)
    logger.info("%s done in %.0f s", name, time.perf_counter() - start)
    return markdown_table(summary)


if __name__ == "__main__":
    fire.Fire(main)

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

"""TCGA benchmark: leakage-free fold inputs, baselines and networks against lifelines and hand computations, the
CLI on a synthetic TCGA-format table, and BLCA fold 0 of the real data."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter
from lifelines.statistics import logrank_test
from lifelines.utils import concordance_index as lifelines_cindex

from monai_ext.data.pathways import load_composition
from monai_ext.data.splits import Fold, read_published_splits
from monai_ext.data.survival_bins import make_time_bins
from monai_ext.data.tcga import read_clinical, read_tcga_table
from monai_ext.engines.tcga_benchmark import (
    BenchmarkSettings,
    ModelSpec,
    breslow_survival,
    build_fold_inputs,
    cox_baseline,
    cox_score_screen,
    discrete_survival,
    evaluate_survival,
    patient_table,
    resplit,
    run_survival_benchmark,
    summarize,
    train_network,
)

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "benchmark_tcga.py"
FAST = BenchmarkSettings(dim=32, epochs=30, patience=30, lr=2e-3, batch_size=32, enet_genes=10, min_pathway_genes=2)


def write_synthetic_cohort(folder: Path, n_patients: int = 240, seed: int = 0) -> dict[str, Path]:
    """A TCGA-format table (``censorship`` = 1 - event, some patients with two slides), its clinical table and
    5 MCAT-style split files; risk depends on three RNA genes and age."""
    rng = np.random.default_rng(seed)
    symbols = list(dict.fromkeys(g for genes in load_composition("hallmarks").values() for g in genes))[:40]
    cases = [f"TCGA-XX-{i:04d}" for i in range(n_patients)]
    rna = rng.normal(size=(n_patients, len(symbols)))
    age = rng.normal(62, 10, n_patients)
    log_hazard = 1.2 * rna[:, 0] + 1.0 * rna[:, 1] - 1.0 * rna[:, 2] + 0.03 * (age - 62)
    event_time = rng.exponential(30 * np.exp(-log_hazard))
    censor_time = rng.uniform(5, 120, n_patients)
    table = pd.DataFrame(
        {
            "case_id": cases,
            "site": "XX",
            "is_female": rng.integers(0, 2, n_patients).astype(float),
            "oncotree_code": "XX",
            "age": age,
            "survival_months": np.maximum(np.minimum(event_time, censor_time), 0.1),
            "censorship": (event_time > censor_time).astype(int),
            "train": 1,
        }
    )
    genes = pd.DataFrame(rna, columns=[f"{s}_rnaseq" for s in symbols])
    genes[[f"{s}_cnv" for s in symbols[:10]]] = rng.integers(-1, 2, (n_patients, 10))
    genes[[f"{s}_mut" for s in symbols[10:20]]] = rng.integers(0, 2, (n_patients, 10))
    table = pd.concat([table, genes], axis=1)
    table = pd.concat([table, table.iloc[:20]], ignore_index=True)  # second slides of 20 patients
    table.insert(1, "slide_id", [f"{case}-slide{i}" for i, case in enumerate(table["case_id"])])
    paths = {"table": folder / "tcga_synth_all_clean.csv.zip", "clinical": folder / "clinical.csv"}
    table.to_csv(paths["table"], compression="zip")
    stages = np.array(["I", "II", "III", "IV", "N/A"])[np.clip((log_hazard + 2).astype(int), 0, 4)]
    pd.DataFrame({"case_id": cases, "stage": stages, "grade": rng.choice(["G1", "G2", "G3"], n_patients)}).to_csv(
        paths["clinical"], index=False
    )
    splits = folder / "splits"
    splits.mkdir()
    order = rng.permutation(n_patients)
    for k, test in enumerate(np.array_split(order, 5)):
        train = np.setdiff1d(order, test)
        pd.DataFrame({"train": pd.Series(np.asarray(cases)[train]), "val": pd.Series(np.asarray(cases)[test])}).to_csv(
            splits / f"splits_{k}.csv"
        )
    paths["splits"] = splits
    return paths


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict:
    paths = write_synthetic_cohort(tmp_path_factory.mktemp("tcga"))
    tcga = read_tcga_table(paths["table"])
    patients = patient_table(tcga, read_clinical(paths["clinical"]))
    folds = read_published_splits(paths["splits"], val_as="test")
    return {"paths": paths, "genes": tcga.genes, "patients": patients, "folds": folds}


def test_patient_table(cohort: dict) -> None:
    patients = cohort["patients"]
    assert patients.index.is_unique and len(patients) == 240
    assert {"survival_months", "event", "age", "is_female", "stage", "grade"} <= set(patients.columns)
    assert patients["stage"].isna().sum() > 0  # "N/A" read as missing


def test_fold_inputs_fitted_on_training_only(cohort: dict) -> None:
    patients, genes, fold = cohort["patients"], cohort["genes"], cohort["folds"][0]
    inputs = build_fold_inputs(patients, genes, fold, FAST, seed=0)
    training = np.concatenate([inputs.parts["train"], inputs.parts["val"]])
    assert sorted(training) == sorted(fold.train) and list(inputs.parts["test"]) == list(fold.test)
    assert not set(training) & set(inputs.parts["test"])
    # the scaler's statistics are those of the training patients (hand z-score)
    raw = genes.loc[inputs.parts["test"], inputs.genes].to_numpy(float)
    train_raw = genes.loc[training, inputs.genes].to_numpy(float)
    std = np.where(train_raw.std(0) > 0, train_raw.std(0), 1.0)
    np.testing.assert_allclose(inputs.omics["test"], (raw - train_raw.mean(0)) / std, rtol=1e-4, atol=1e-4)
    expected = make_time_bins(patients.loc[training, "survival_months"], patients.loc[training, "event"], FAST.n_bins)
    np.testing.assert_allclose(inputs.edges, expected)
    # changing the test patients' outcomes and genes changes nothing fitted
    changed = patients.copy()
    changed.loc[fold.test, "survival_months"] *= 7.0
    changed.loc[fold.test, "age"] += 30.0
    genes_changed = genes.copy()
    genes_changed.loc[fold.test] += 5.0
    again = build_fold_inputs(changed, genes_changed, fold, FAST, seed=0)
    np.testing.assert_allclose(again.edges, inputs.edges)
    np.testing.assert_allclose(again.omics["train"], inputs.omics["train"])
    np.testing.assert_allclose(again.clinical["train"], inputs.clinical["train"])
    assert list(again.rna["train"].columns) == list(inputs.rna["train"].columns)


def test_cox_on_age_ranks_by_age(cohort: dict) -> None:
    inputs = build_fold_inputs(cohort["patients"], cohort["genes"], cohort["folds"][1], FAST, seed=1)
    prediction = cox_baseline(inputs, ["age"])
    age = inputs.covariates["test"]["age"].to_numpy()
    assert abs(np.corrcoef(prediction.risk, age)[0, 1]) == pytest.approx(1.0, abs=1e-9)  # log-linear in age
    time, event = inputs.outcome("test")
    metrics = evaluate_survival(inputs, prediction)
    assert metrics["c_index"] == pytest.approx(lifelines_cindex(time, -prediction.risk, event), abs=1e-9)
    sksurv_metrics = pytest.importorskip("sksurv.metrics")  # GPL-3.0: an independent reference in tests only
    train_time = np.concatenate([inputs.outcome(part)[0] for part in ("train", "val")])
    train_event = np.concatenate([inputs.outcome(part)[1] for part in ("train", "val")])
    train = np.array(list(zip(train_event.astype(bool), train_time, strict=True)), dtype=[("e", bool), ("t", float)])
    test = np.array(list(zip(event.astype(bool), time, strict=True)), dtype=[("e", bool), ("t", float)])
    tau = np.quantile(train_time, 0.8)
    ipcw = sksurv_metrics.concordance_index_ipcw(train, test, prediction.risk, tau=tau)[0]
    assert metrics["c_index_ipcw"] == pytest.approx(ipcw, abs=1e-9)
    times = np.unique(np.quantile(time, np.linspace(0.1, 0.8, 8)))
    ibs = sksurv_metrics.integrated_brier_score(train, test, prediction.survival(times), times)
    assert metrics["ibs"] == pytest.approx(ibs, abs=1e-9)


def test_breslow_matches_lifelines() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(120, 2))
    time = rng.exponential(np.exp(-x @ np.array([0.8, -0.5]))) + 0.01
    event = rng.integers(0, 2, 120)
    data = pd.DataFrame(x, columns=["a", "b"]).assign(T=time, E=event)
    model = CoxPHFitter().fit(data, "T", "E")
    risk = x @ model.params_.to_numpy()
    times = np.sort(time[event == 1])[[5, 20, 40]]  # lifelines interpolates between event times
    expected = model.predict_survival_function(data[["a", "b"]], times=times).to_numpy().T
    np.testing.assert_allclose(breslow_survival(risk, time, event, risk, times), expected, rtol=1e-6, atol=1e-8)


def test_discrete_survival_by_hand() -> None:
    survival_bins = np.array([[0.9, 0.7, 0.4, 0.1]])
    edges = np.array([0.0, 10.0, 20.0, 30.0, np.inf])
    got = discrete_survival(survival_bins, edges, np.array([5.0, 10.0, 25.0, 31.0]))
    np.testing.assert_allclose(got, [[1.0, 0.9, 0.7, 0.4]])


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec("snn_nll", "snn", False, "nll"),
        ModelSpec("snn+clin_cox", "snn", True, "cox"),
        ModelSpec("pathways_cox", "pathways", False, "cox"),
        ModelSpec("pathways+clin_nll", "pathways", True, "nll"),
    ],
)
def test_networks_learn_the_gene_signal(cohort: dict, spec: ModelSpec) -> None:
    inputs = build_fold_inputs(cohort["patients"], cohort["genes"], cohort["folds"][2], FAST, seed=2)
    prediction = train_network(inputs, spec, FAST, seed=0)
    metrics = evaluate_survival(inputs, prediction)
    time, event = inputs.outcome("test")
    assert metrics["c_index"] == pytest.approx(lifelines_cindex(time, -prediction.risk, event), abs=1e-9)
    # the generator's risk is 1.2 g0 + g1 - g2 (+ age): a C-index of about 0.8 is reachable, chance is 0.5
    assert metrics["c_index"] > 0.65, metrics
    assert 1 <= prediction.info["best_epoch"] <= FAST.epochs
    survival = prediction.survival(np.array([5.0, 20.0]))
    assert survival.shape == (len(time), 2) and np.all(np.diff(survival, axis=1) <= 1e-6)


def test_run_and_summarize(cohort: dict) -> None:
    spec = ModelSpec("snn_cox", "snn", False, "cox")
    settings = replace(FAST, epochs=5)
    results, predictions = run_survival_benchmark(
        cohort["patients"], cohort["genes"], cohort["folds"][:2], models=[spec], settings=settings, cohort="synth"
    )
    assert len(results) == 2 * 4 and set(results["model"]) == {"cox_age", "cox_age_sex", "enet_cox_rna_age", "snn_cox"}
    assert len(predictions) == 4 * sum(len(f.test) for f in cohort["folds"][:2])
    summary = summarize(results)
    rows = results[results["model"] == "snn_cox"]["c_index"].to_numpy()
    assert summary.loc[("synth", "snn_cox"), "c_index_mean"] == pytest.approx(rows.mean())
    assert summary.loc[("synth", "snn_cox"), "c_index_std"] == pytest.approx(rows.std(ddof=1))


def test_ill_arg(cohort: dict) -> None:
    inputs = build_fold_inputs(cohort["patients"], cohort["genes"], cohort["folds"][0], FAST, seed=0)
    with pytest.raises(ValueError, match="loss must be"):
        train_network(inputs, ModelSpec("x", "snn", False, "mse"), FAST, seed=0)
    leaky = Fold(cohort["folds"][0].train, cohort["folds"][0].test[:3], cohort["folds"][0].test)
    with pytest.raises(ValueError, match="leakage"):
        build_fold_inputs(cohort["patients"], cohort["genes"], leaky, FAST, seed=0)


def _run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, encoding="utf-8", env=env, cwd=REPO
    )


def test_script_on_synthetic_cohort(cohort: dict, tmp_path: Path) -> None:
    paths = cohort["paths"]
    common = ("--table", str(paths["table"]), "--splits", str(paths["splits"]), "--out_dir", str(tmp_path))
    done = _run_script(*common, "--clinical", str(paths["clinical"]), "--models", "snn_cox", "--folds", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert set(summary["model"]) == {"cox_age", "cox_age_sex", "enet_cox_rna_age", "snn_cox"}
    assert (tmp_path / "km_snn_cox.png").stat().st_size > 0
    assert "| tcga_synth_all_clean | snn_cox |" in done.stdout
    bad = _run_script(*common, "--models", "nope", "--folds", "1")
    assert bad.returncode != 0 and "unknown model(s) ['nope']" in bad.stderr


def test_blca_fold0(shared_data: Path) -> None:
    tcga = read_tcga_table(shared_data / "tcga" / "tcga_blca_all_clean.csv.zip")
    patients = patient_table(
        tcga, read_clinical(shared_data / "tcga/clinical/tcga_blca_clinical.csv", on_conflict="drop")
    )
    fold = read_published_splits(shared_data / "tcga/splits/tcga_blca", val_as="test")[0]
    results, _ = run_survival_benchmark(
        patients, tcga.genes, [fold], models=[ModelSpec("snn_cox", "snn", False, "cox")], baselines={}, cohort="blca"
    )
    row = results.iloc[0]
    assert row["n_test"] == len(set(fold.test) & set(patients.index))
    assert np.isfinite(row[["c_index", "c_index_ipcw", "ibs"]].to_numpy(float)).all()
    # measured 0.64 on this fold (chance 0.5; MCAT's published SNN mean over folds 0.541)
    assert row["c_index"] > 0.56, row.to_dict()


def test_cox_score_screen_matches_logrank_and_ranks_planted_gene() -> None:
    """The score statistic of a binary column squared is lifelines' log-rank chi-square (no tied times), its sign
    follows the hazard, and the planted survival gene ranks first among noise genes."""
    rng = np.random.default_rng(3)
    n = 300
    group = (rng.random(n) < 0.5).astype(float)
    time = rng.exponential(10.0, n) * np.exp(-0.6 * group)
    event = rng.random(n) < 0.7
    z = cox_score_screen(group[:, None], time, event)
    reference = logrank_test(time[group == 1], time[group == 0], event[group == 1], event[group == 0])
    np.testing.assert_allclose(z[0] ** 2, reference.test_statistic, rtol=1e-10)
    assert z[0] > 0  # the group dies sooner
    genes = np.column_stack([rng.normal(size=(n, 20)), -group + 0.3 * rng.normal(size=n)])
    scores = cox_score_screen(genes, time, event)
    assert np.argmax(np.abs(scores)) == 20 and scores[20] < 0
    assert cox_score_screen(np.ones((n, 1)), time, event)[0] == 0.0


def test_resplit_keeps_test_part_and_fitted_inputs(cohort: dict) -> None:
    inputs = build_fold_inputs(cohort["patients"], cohort["genes"], cohort["folds"][0], FAST, seed=0)
    again = resplit(inputs, 0.2, seed=5)
    training = set(inputs.parts["train"]) | set(inputs.parts["val"])
    assert set(again.parts["train"]) | set(again.parts["val"]) == training
    assert not set(again.parts["train"]) & set(again.parts["val"])
    assert set(again.parts["val"]) != set(inputs.parts["val"])
    np.testing.assert_array_equal(again.parts["test"], inputs.parts["test"])
    np.testing.assert_array_equal(again.omics["test"], inputs.omics["test"])
    np.testing.assert_array_equal(again.edges, inputs.edges)
    # every row moved with its patient: the matrices of the new parts are the old rows of those patients
    old = {
        case: row for part in ("train", "val") for case, row in zip(inputs.parts[part], inputs.omics[part], strict=True)
    }
    for part in ("train", "val"):
        np.testing.assert_array_equal(again.omics[part], np.stack([old[c] for c in again.parts[part]]))
        assert list(again.covariates[part].index) == list(again.parts[part])
        assert list(again.rna[part].index) == list(again.parts[part])


def test_bagged_network_averages_members(cohort: dict) -> None:
    inputs = build_fold_inputs(cohort["patients"], cohort["genes"], cohort["folds"][2], FAST, seed=2)
    settings = replace(FAST, epochs=8, patience=8)
    spec = ModelSpec("snn+clin_cox_bag3", "snn", True, "cox", members=3)
    bagged = train_network(inputs, spec, settings, seed=0)
    single = [
        train_network(
            inputs if m == 0 else resplit(inputs, settings.val_fraction, m), replace(spec, members=1), settings, seed=m
        )
        for m in range(3)
    ]
    assert evaluate_survival(inputs, bagged)["c_index"] > 0.65
    # the bag's risk ranks like the mean of the members' standardised risks (standardised on the training fold)
    by_hand = np.mean([(p.risk - p.risk.mean()) / p.risk.std() for p in single], axis=0)
    assert np.corrcoef(bagged.risk, by_hand)[0, 1] > 0.95
    curves = bagged.survival(np.array([5.0, 20.0]))
    np.testing.assert_allclose(curves, np.mean([p.survival(np.array([5.0, 20.0])) for p in single], axis=0))
    with pytest.raises(ValueError, match="members"):
        train_network(inputs, replace(spec, members=0), settings, seed=0)

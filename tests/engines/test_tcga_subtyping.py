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

"""TCGA subtyping benchmark: stratified patient-grouped folds, leakage-free fold inputs, metrics against
scikit-learn, label readers, networks and baselines on a synthetic table, the CLI, and the real BRCA labels."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from monai_ext.data.splits import Fold
from monai_ext.data.tcga import read_tcga_table
from monai_ext.engines.tcga_benchmark import patient_table
from monai_ext.engines.tcga_subtyping import (
    ClassifierSpec,
    SubtypingSettings,
    build_subtyping_fold,
    classification_metrics,
    labels_from_column,
    logistic_baseline,
    read_json_labels,
    run_subtyping_benchmark,
    stratified_patient_folds,
    summarize_subtyping,
    train_classifier,
)

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "benchmark_tcga_subtyping.py"
FAST = SubtypingSettings(dim=32, epochs=25, patience=25, lr=2e-3, batch_size=32, logistic_genes=10, logistic_c=1.0)


def write_subtyping_cohort(folder: Path, n_patients: int = 200, seed: int = 0) -> dict[str, Path]:
    """A TCGA-format table whose class (``oncotree_code`` ``AAA`` = 0, ``BBB`` = 1, a few ``CCC`` left
    unlabelled) depends on age and the three RNA genes of highest variance; 20 patients have two slides. Also a
    json label folder (patients keyed by ``case_submitter_id``, ``-1`` for ``CCC``)."""
    rng = np.random.default_rng(seed)
    cases = [f"TCGA-YY-{i:04d}" for i in range(n_patients)]
    rna = rng.normal(size=(n_patients, 30)) * np.r_[np.full(3, 3.0), np.ones(27)]
    age = rng.normal(60, 10, n_patients)
    logit = (2.0 * rna[:, 0] - 1.5 * rna[:, 1] + 1.5 * rna[:, 2]) / 3.0 + 0.05 * (age - 60) - 1.2
    label = (rng.uniform(size=n_patients) < 1 / (1 + np.exp(-logit))).astype(int)
    code = np.where(label == 1, "BBB", "AAA")
    code[rng.choice(n_patients, 8, replace=False)] = "CCC"
    table = pd.DataFrame(
        {
            "case_id": cases,
            "site": "YY",
            "is_female": rng.integers(0, 2, n_patients).astype(float),
            "oncotree_code": code,
            "age": age,
            "survival_months": rng.uniform(1, 100, n_patients),
            "censorship": rng.integers(0, 2, n_patients),
            "train": 1,
        }
    )
    genes = pd.DataFrame(rna, columns=[f"G{i}_rnaseq" for i in range(30)])
    genes[[f"G{i}_cnv" for i in range(5)]] = rng.integers(-1, 2, (n_patients, 5))
    table = pd.concat([table, genes], axis=1)
    table = pd.concat([table, table.iloc[:20]], ignore_index=True)
    table.insert(1, "slide_id", [f"{case}-slide{i}" for i, case in enumerate(table["case_id"])])
    paths = {"table": folder / "tcga_synth_all_clean.csv.zip", "labels": folder / "labels"}
    table.to_csv(paths["table"], compression="zip", index=False)
    paths["labels"].mkdir()
    classes = {"AAA": 0, "BBB": 1, "CCC": -1}
    entries = [
        {"case_id": f"uuid-{case}", "case_submitter_id": case, "primary_class": classes[c]}
        for case, c in zip(table["case_id"], table["oncotree_code"], strict=True)
    ]
    half = len(entries) // 2
    (paths["labels"] / "train_synth.json").write_text(json.dumps({"data": entries[:half]}))
    (paths["labels"] / "test_synth.json").write_text(json.dumps(entries[half:]))
    return paths


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict:
    paths = write_subtyping_cohort(tmp_path_factory.mktemp("subtyping"))
    tcga = read_tcga_table(paths["table"])
    labels = labels_from_column(tcga.slides, {"AAA": 0, "BBB": 1})
    patients = patient_table(tcga).join(labels, how="inner")
    folds = stratified_patient_folds(patients.index, patients["label"], FAST.n_folds, FAST.seed)
    return {"paths": paths, "tcga": tcga, "patients": patients, "genes": tcga.genes, "folds": folds}


@pytest.mark.parametrize("n_folds", [3, 5])
@pytest.mark.parametrize("seed", [0, 7])
def test_folds_grouped_and_stratified(cohort: dict, n_folds: int, seed: int) -> None:
    slides = cohort["tcga"].slides
    slides = slides[slides["oncotree_code"] != "CCC"]
    y = (slides["oncotree_code"] == "BBB").to_numpy(int)
    folds = stratified_patient_folds(slides["case_id"], y, n_folds, seed)
    patients = slides.groupby("case_id")["oncotree_code"].first().eq("BBB").astype(int)
    tests = [set(fold.test) for fold in folds]
    assert len(folds) == n_folds
    assert sum(len(t) for t in tests) == len(patients) and set().union(*tests) == set(patients.index)
    for fold, test in zip(folds, tests, strict=True):
        assert not set(fold.train) & test and set(fold.train) | test == set(patients.index)
        expected = patients.mean() * len(test)
        assert abs(patients.loc[sorted(test)].sum() - expected) <= 2, "test fold not stratified"
    again = stratified_patient_folds(slides["case_id"], y, n_folds, seed)
    assert all(np.array_equal(a.test, b.test) for a, b in zip(folds, again, strict=True))


def test_folds_ill_arg() -> None:
    with pytest.raises(ValueError, match="same length"):
        stratified_patient_folds(["a", "b"], [0])
    with pytest.raises(ValueError, match="two labels"):
        stratified_patient_folds(["a", "a", "b"], [0, 1, 0], n_folds=2)
    with pytest.raises(ValueError, match=">= 5 patients"):
        stratified_patient_folds([f"p{i}" for i in range(12)], [0] * 9 + [1] * 3)


def test_fold_inputs_fitted_on_training_only(cohort: dict) -> None:
    patients, genes, fold = cohort["patients"], cohort["genes"], cohort["folds"][0]
    inputs = build_subtyping_fold(patients, genes, fold, FAST, seed=0)
    training = np.concatenate([inputs.parts["train"], inputs.parts["val"]])
    assert sorted(training) == sorted(fold.train) and list(inputs.parts["test"]) == list(fold.test)
    assert not set(inputs.parts["train"]) & set(inputs.parts["val"])
    assert set(inputs.labels["val"]) == {0, 1}, "the inner split must be stratified"
    np.testing.assert_array_equal(inputs.labels["test"], patients.loc[fold.test, "label"].to_numpy())
    # hand z-score of the test genes with the training patients' mean and std
    columns = list(genes.columns)
    raw, train_raw = genes.loc[fold.test, columns].to_numpy(float), genes.loc[training, columns].to_numpy(float)
    std = np.where(train_raw.std(0) > 0, train_raw.std(0), 1.0)
    np.testing.assert_allclose(inputs.omics["test"], (raw - train_raw.mean(0)) / std, rtol=1e-4, atol=1e-4)
    # changing the test patients' genes, age and labels changes nothing fitted
    changed = patients.copy()
    changed.loc[fold.test, "age"] += 30.0
    changed.loc[fold.test, "label"] = 1 - changed.loc[fold.test, "label"]
    genes_changed = genes.copy()
    genes_changed.loc[fold.test] += 5.0
    again = build_subtyping_fold(changed, genes_changed, fold, FAST, seed=0)
    raw_rna = genes.loc[training, [c for c in genes.columns if c.endswith("_rnaseq")]]
    top = raw_rna.var().sort_values(ascending=False).index[: FAST.logistic_genes]
    expected = (genes.loc[fold.test, top] - raw_rna[top].mean()) / raw_rna[top].std(ddof=0)
    np.testing.assert_allclose(inputs.rna_age["test"][:, :-1], expected.to_numpy(), rtol=1e-4, atol=1e-4)
    for name in ("omics", "clinical", "rna_age"):
        np.testing.assert_allclose(getattr(again, name)["train"], getattr(inputs, name)["train"])
        np.testing.assert_allclose(getattr(again, name)["val"], getattr(inputs, name)["val"])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_metrics_equal_sklearn(seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 80)
    probability = rng.uniform(size=80) * 0.6 + 0.4 * labels
    if ties:
        probability = np.round(probability, 1)
    metrics = classification_metrics(labels, probability)
    assert metrics["auc"] == pytest.approx(roc_auc_score(labels, probability))
    expected = balanced_accuracy_score(labels, (probability >= 0.5).astype(int))
    assert metrics["balanced_accuracy"] == pytest.approx(expected)


def test_labels_from_column_and_json(cohort: dict) -> None:
    slides = cohort["tcga"].slides
    from_column = labels_from_column(slides, {"AAA": 0, "BBB": 1})
    first = slides.groupby("case_id")["oncotree_code"].first()
    kept = first[first != "CCC"]
    assert list(from_column.index) == sorted(kept.index)
    np.testing.assert_array_equal(from_column.to_numpy(), (kept.sort_index() == "BBB").to_numpy(int))
    swapped = labels_from_column(slides, {"BBB": 0, "AAA": 1})
    np.testing.assert_array_equal(swapped.to_numpy(), 1 - from_column.to_numpy())
    from_json = read_json_labels(cohort["paths"]["labels"])
    pd.testing.assert_series_equal(from_json, from_column)


def test_labels_ill_arg(tmp_path: Path) -> None:
    slides = pd.DataFrame({"case_id": ["a", "a", "b"], "oncotree_code": ["X", "Y", "X"]})
    with pytest.raises(ValueError, match="two labels"):
        labels_from_column(slides, {"X": 0, "Y": 1})
    with pytest.raises(ValueError, match="none of"):
        labels_from_column(slides, {"Z": 0})
    with pytest.raises(ValueError, match="no column"):
        labels_from_column(slides, {"X": 0}, column="histology")
    with pytest.raises(FileNotFoundError, match=r"no \*\.json"):
        read_json_labels(tmp_path)
    (tmp_path / "a.json").write_text(json.dumps([{"case_id": "u1", "primary_class": 0}]))
    with pytest.raises(ValueError, match="case_submitter_id"):
        read_json_labels(tmp_path)


def test_models_learn_without_test_labels(cohort: dict) -> None:
    patients, genes, fold = cohort["patients"], cohort["genes"], cohort["folds"][0]
    inputs = build_subtyping_fold(patients, genes, fold, FAST, seed=0)
    logistic = logistic_baseline(inputs, FAST)
    network, info = train_classifier(inputs, ClassifierSpec("snn+clin", True), FAST, seed=0)
    assert classification_metrics(inputs.labels["test"], logistic)["auc"] > 0.8
    assert classification_metrics(inputs.labels["test"], network)["auc"] > 0.75
    assert 1 <= info["best_epoch"] <= FAST.epochs
    # flipping the test labels leaves every prediction unchanged: nothing looks at them
    flipped = replace(inputs, labels={**inputs.labels, "test": 1 - inputs.labels["test"]})
    np.testing.assert_allclose(logistic_baseline(flipped, FAST), logistic)
    again, _ = train_classifier(flipped, ClassifierSpec("snn+clin", True), FAST, seed=0)
    np.testing.assert_allclose(again, network, rtol=1e-6)
    with pytest.raises(ValueError, match="features"):
        logistic_baseline(inputs, FAST, features="wsi")


def test_run_and_summarize(cohort: dict) -> None:
    folds = [Fold(f.train, f.val, f.test) for f in cohort["folds"][:2]]
    settings = replace(FAST, epochs=3, patience=3)
    results, predictions = run_subtyping_benchmark(
        cohort["patients"], cohort["genes"], folds, models=[ClassifierSpec("snn", False)], settings=settings
    )
    assert list(results["model"].unique()) == ["logreg_rna_age", "logreg_clinical", "logreg_genes_clinical", "snn"]
    for (model, k), rows in predictions.groupby(["model", "fold"]):
        row = results[(results["model"] == model) & (results["fold"] == k)].iloc[0]
        assert row["auc"] == pytest.approx(roc_auc_score(rows["label"], rows["probability"]))
        assert set(rows["case_id"]) == set(folds[k].test)
    summary = summarize_subtyping(results)
    snn = results[results["model"] == "snn"]
    assert summary.loc[("cohort", "snn"), "auc_mean"] == pytest.approx(snn["auc"].mean())
    assert summary.loc[("cohort", "snn"), "auc_std"] == pytest.approx(np.std(snn["auc"], ddof=1))


def load_script() -> ModuleType:
    """The CLI module, imported in-process (a subprocess would re-import torch)."""
    spec = importlib.util.spec_from_file_location("benchmark_tcga_subtyping", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli(cohort: dict, tmp_path: Path) -> None:
    paths, script = cohort["paths"], load_script()
    common = {"table": str(paths["table"]), "folds": 2, "models": "snn"}
    from_json = script.main(labels=str(paths["labels"]), out_dir=str(tmp_path / "json"), **common)
    from_column = script.main(
        label_column="oncotree_code", classes="AAA,BBB", out_dir=str(tmp_path / "column"), **common
    )
    assert from_json == from_column == (tmp_path / "json" / "summary.md").read_text()
    assert "logreg_rna_age" in from_json and "| snn |" in from_json and "snn+clin" not in from_json
    folds = pd.read_csv(tmp_path / "json" / "folds.csv")
    assert folds["case_id"].is_unique and set(folds["case_id"]) == set(cohort["patients"].index)
    assert sorted(pd.read_csv(tmp_path / "json" / "results.csv")["fold"].unique()) == [0, 1]
    with pytest.raises(ValueError, match="--classes"):
        script.main(label_column="oncotree_code", out_dir=str(tmp_path / "bad"), **common)
    with pytest.raises(ValueError, match="exactly one"):
        script.main(out_dir=str(tmp_path / "bad"), **common)


def test_brca_labels_and_folds(shared_data: Path) -> None:
    tcga = read_tcga_table(shared_data / "tcga" / "tcga_brca_all_clean.csv.zip")
    from_json = read_json_labels(shared_data / "tcga" / "subtyping" / "tcga_brca")
    from_code = labels_from_column(tcga.slides, {"IDC": 0, "ILC": 1})
    shared = from_json.index.intersection(from_code.index)
    assert len(shared) > 800 and set(from_json.loc[shared]) == {0, 1}
    # the json's IDC 0 / ILC 1 agrees with the table's oncotree code for every patient labelled in both
    pd.testing.assert_series_equal(from_json.loc[shared], from_code.loc[shared])
    patients = patient_table(tcga).join(from_json, how="inner")
    folds = stratified_patient_folds(patients.index, patients["label"])
    rate = patients["label"].mean()
    for fold in folds:
        assert abs(patients.loc[fold.test, "label"].mean() - rate) < 0.02
    inputs = build_subtyping_fold(patients, tcga.genes, folds[0], SubtypingSettings(), seed=0)
    auc = classification_metrics(inputs.labels["test"], logistic_baseline(inputs, SubtypingSettings()))["auc"]
    assert auc > 0.7, f"IDC vs ILC from RNA + age should be well above chance, got AUC {auc:.3f}"

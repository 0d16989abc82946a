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

"""The comparison harness on a tiny synthetic cohort (1 fold, 1 epoch): every default method runs on its tasks
with its missing-modality rows, a new method joins through the registry with its own training, slide labels follow
the manifest, the markdown table is mean +/- std by hand, and the CLI writes it."""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from monai_ext.data.dataset import SLIDE_STAGES, MultimodalDataset
from monai_ext.engines.compare import (
    DEFAULT_METHODS,
    DEMO_TASKS,
    METHODS,
    CompareSettings,
    FoldContext,
    Method,
    WithSlideLabels,
    comparison_markdown,
    register_method,
    run_comparison,
)
from monai_ext.networks.multimodal import MultimodalModel
from tests.engines.test_missing_modality import load, write_cohort

FAST = CompareSettings(folds=2, run_folds=1, seeds=(0,), epochs=1, patience=1, dim=8, n_bins=2, val_fraction=0.3)
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "compare_methods.py"


class HashEmbedder:
    """Test double of :class:`monai_ext.data.text.TextEmbedder` (no language model): a fixed random unit vector
    per distinct text."""

    dim = 6

    def vector(self, text: str) -> np.ndarray:
        rng = np.random.default_rng(int(hashlib.sha256(text.encode()).hexdigest()[:8], 16))
        values = rng.normal(size=self.dim)
        return (values / np.linalg.norm(values)).astype(np.float32)

    def embed_by_case(self, texts: Mapping[str, Sequence[str]]) -> dict[str, np.ndarray]:
        return {
            case: np.stack([self.vector(t) for t in items]) if items else np.zeros((0, self.dim), np.float32)
            for case, items in texts.items()
        }

    def class_prompt_embeddings(self, prompts: Mapping[str, Sequence[str]]) -> np.ndarray:
        return np.stack([np.stack([self.vector(t) for t in items]) for items in prompts.values()])


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cohort(tmp_path_factory.mktemp("compare_cohort"), n_patients=24)


# what each method reads, and so which modalities its missing-modality rows remove (never the required slides)
EXPECTED_REMOVALS = {
    ("staging", "wsi_abmil"): [],
    ("staging", "concat"): ["clinical"],
    ("staging", "kronecker"): ["clinical"],
    ("staging", "slides_abmil"): [],
    ("staging", "hmf"): ["text"],
    **{(task, "wsi_abmil"): [] for task in ("subtyping", "survival")},
    **{(task, "omics_snn"): [] for task in ("subtyping", "survival")},
    **{("subtyping", m): ["omics", "text"] for m in ("concat", "kronecker", "coattention", "pathway_cross")},
    **{("survival", m): ["omics", "clinical"] for m in ("concat", "kronecker", "coattention", "pathway_cross")},
}


def test_every_method_runs_with_its_missing_modality_rows(manifest: Path, tmp_path: Path) -> None:
    defaults = [method.name for method in DEFAULT_METHODS]  # the extra methods: tests/engines/test_compare_extra.py
    results = run_comparison(manifest, tmp_path, methods=defaults, settings=FAST, text_embedder=HashEmbedder())
    assert (tmp_path / "results.csv").is_file()
    runs = {key: group["removed"].tolist() for key, group in results.groupby(["task", "method"], sort=False)}
    assert runs == {key: ["none", *removed] for key, removed in EXPECTED_REMOVALS.items()}
    for task, rows in results.groupby("task"):
        metrics = rows[[m for m in DEMO_TASKS[task].metrics if m in rows.columns]]
        assert metrics.notna().any().all(), task
        low = -1.0 if task == "staging" else 0.0  # kappa
        assert ((metrics.stack() >= low) & (metrics.stack() <= 1.0)).all(), task
    hmf = results[(results["method"] == "hmf") & (results["removed"] == "none")].iloc[0]
    assert np.isfinite(hmf[["slide_accuracy", "patient_rule_accuracy", "patient_learned_accuracy"]].astype(float)).all()
    # fold preprocessing was fitted on the run's training patients (saved beside each run)
    assert (tmp_path / "survival" / "seed_0" / "fold_0" / "concat" / "gene_scaler.json").is_file()
    assert (tmp_path / "survival" / "seed_0" / "fold_0" / "concat" / "time_bins.json").is_file()
    markdown = comparison_markdown(results)
    assert markdown.count("### ") == 3 and "| hmf | - text |" in markdown


def test_registered_method_with_its_own_training(manifest: Path, tmp_path: Path) -> None:
    seen: list[FoldContext] = []

    def train(model: torch.nn.Module, context: FoldContext) -> torch.nn.Module:
        seen.append(context)
        return model

    method = Method(
        "probe",
        "an untrained MultimodalModel (test)",
        ("survival",),
        lambda context: MultimodalModel(
            modalities=context.modalities,
            wsi_dim=context.dims["wsi"],
            omics_dim=context.dims["omics"],
            dim=8,
            task="survival",
            n_bins=context.n_outputs,
        ),
        modalities=("wsi", "omics"),
        train=train,
    )
    register_method(method)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_method(method)
        settings = CompareSettings(folds=2, seeds=(3, 4), epochs=1, dim=8, n_bins=2, val_fraction=0.3)
        results = run_comparison(manifest, tmp_path, tasks=["survival"], methods=["probe"], settings=settings)
    finally:
        METHODS.pop("probe")
    assert len(seen) == 4 and {c.seed for c in seen} == {3, 4}
    context = seen[0]
    assert context.dims == {"wsi": 8, "omics": 10} and context.n_outputs == 2 and context.modalities == ("wsi", "omics")
    assert context.out_dir.is_relative_to(tmp_path)
    train_ids, test_ids = set(context.train_data.case_ids), set(context.test_data.case_ids)
    assert train_ids and test_ids and not train_ids & test_ids and not train_ids & set(context.val_data.case_ids)
    assert results.groupby(["seed", "fold"]).size().tolist() == [2] * 4  # none + omics, per run


def test_slide_labels_follow_the_manifest(manifest: Path) -> None:
    cohort = load(manifest.parent, "staging")
    data = WithSlideLabels(MultimodalDataset(cohort, cohort.patients, modalities=("wsi",)), width=4)
    table = pd.read_csv(manifest)
    for i, case_id in enumerate(cohort.patients):
        stages = table.loc[table["case_id"] == case_id, "slide_stage"].tolist()
        sample = data[i]
        expected = [SLIDE_STAGES.index(s) for s in stages] + [-1] * (4 - len(stages))
        assert sample["slide_label"].tolist() == expected
        assert int(sample["wsi_slide_index"].max()) == len(stages) - 1
    with pytest.raises(ValueError, match="more than width=2"):
        WithSlideLabels(MultimodalDataset(cohort, cohort.patients, modalities=("wsi",)), width=2)


def test_markdown_is_mean_and_std_over_runs() -> None:
    rows = pd.DataFrame(
        {
            "task": ["survival"] * 4,
            "method": ["a", "a", "a", "a"],
            "removed": ["none", "none", "omics", "omics"],
            "c_index": [0.5, 0.7, 0.4, 0.6],
            "drop_c_index": [0.0, 0.0, 0.1, 0.1],
        }
    )
    lines = comparison_markdown(rows).splitlines()
    assert lines[0] == "### survival (mean +/- std over 2 runs: folds x seeds)"
    assert lines[2] == "| method | removed | c_index | drop in c_index |"
    assert lines[4] == f"| a | none (all present) | 0.600 +/- {np.std([0.5, 0.7], ddof=1):.3f} |  |"
    assert lines[5] == f"| a | - omics | 0.500 +/- {np.std([0.4, 0.6], ddof=1):.3f} | 0.100 +/- 0.000 |"
    rows["c_index"] = np.nan
    assert "| a | none (all present) | n/a |" in comparison_markdown(rows)


def test_cli_writes_the_table(manifest: Path, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("compare_methods", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    table = tmp_path / "docs" / "methods.md"
    module.main(
        out=str(tmp_path / "run"),
        manifest=str(manifest),
        tasks="survival",
        methods="wsi_abmil,omics_snn",
        folds=2,
        run_folds=1,
        seeds="0",
        epochs=1,
        dim=8,
        n_bins=2,
        table=str(table),
    )
    text = table.read_text()
    assert (
        text.startswith("Command: `python ") and "### survival" in text and "| omics_snn | none (all present)" in text
    )
    assert (tmp_path / "run" / "results.csv").is_file()


def test_unknown_names(manifest: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown task\(s\) or method\(s\) \['grading', 'magic'\]"):
        run_comparison(manifest, tmp_path, tasks=["grading"], methods=["magic"])

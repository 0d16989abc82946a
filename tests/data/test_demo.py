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

"""Demo cohort: valid manifests for every task, pN rule, CAMELYON17 proportions, resumable writes, real signal."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from lifelines import CoxPHFitter
from lifelines.utils import concordance_index
from skimage.color import hed_from_rgb
from sklearn.metrics import roc_auc_score

from monai_ext.data.cohort import Cohort
from monai_ext.data.demo import (
    CAMELYON17_NODE_PATTERNS,
    CLASS_NAMES,
    draw_patterns,
    make_demo_cohort,
    node_patterns,
    patient_stage,
    sample_node_stages,
)
from monai_ext.data.pathways import pathway_gene_index
from monai_ext.wsi.store import read_features
from monai_ext.wsi.synthetic import write_demo_slide

ENCODER = "builtin_cnn@seed0"
SMALL = {"n_patients": 6, "seed": 0, "slide_size": (2048, 1024)}  # smallest size whose slides all hold patches
PN = ("pN0", "pN0(i+)", "pN1mi", "pN1", "pN2")
SLIDE = ("negative", "itc", "micro", "macro")
# CAMELYON17 training set (splits/output.csv): slides and patients per stage
CAMELYON_SLIDES = {"negative": 318, "itc": 36, "micro": 59, "macro": 87}
CAMELYON_PATIENTS = {"pN0": 24, "pN0(i+)": 11, "pN1mi": 21, "pN1": 30, "pN2": 14}


def rule(stages: list[str]) -> str:
    """The pN rule as worded by CAMELYON17, written independently of the library."""
    counts = Counter(stages)
    positive = counts["micro"] + counts["macro"]
    if positive == 0:
        return "pN0(i+)" if counts["itc"] else "pN0"
    if counts["macro"] == 0:
        return "pN1mi"
    return {1: "pN1", 2: "pN1", 3: "pN1"}.get(positive, "pN2")


def files_and_mtimes(root: Path) -> dict[str, int]:
    """Every file under ``root`` with its modification time in nanoseconds."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def patients(root: Path) -> pd.DataFrame:
    """Patient-level table from the written manifest, with the slide stages of each patient."""
    manifest = pd.read_csv(root / "manifest.csv")
    table = manifest.groupby("case_id", sort=True).first()
    table["stages"] = manifest.groupby("case_id", sort=True)["slide_stage"].agg(list)
    return table


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-patient demo cohort with features."""
    root = tmp_path_factory.mktemp("demo")
    make_demo_cohort(root, **SMALL, extract=True)
    return root


@pytest.fixture(scope="module")
def signal_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64-patient cohort of tiny slides without features, for the signal tests.

    At this size the Cox C-index of the documented covariates was 0.685-0.793 over 12 seeds, and 0.497-0.618 when
    the generator's risk coefficients were set to zero, so the thresholds below separate signal from chance.
    """
    return _signal_cohort(tmp_path_factory.mktemp("signal"))


def _signal_cohort(root: Path, **options: bool) -> Path:
    """The signal tests' 64-patient cohort of tiny slides without features, with generator ``options``."""
    make_demo_cohort(
        root, n_patients=64, seed=0, slide_size=(256, 256), max_slides_per_patient=2, extract=False, **options
    )
    return root


@pytest.mark.parametrize("task, label_values", [("classification", [0, 1]), ("survival", None), ("staging", list(PN))])
def test_manifest_validates(demo_root: Path, task: str, label_values: list | None) -> None:
    cohort = Cohort.from_csv(
        demo_root / "manifest.csv",
        task=task,
        label_values=label_values,
        clinical_columns=("age", "sex"),
        encoder=ENCODER,
        require_slides=True,
    )
    assert len(cohort.patients) == SMALL["n_patients"]
    assert len(cohort.slide_table) == len(list((demo_root / "slides").glob("*.tif")))
    assert set(cohort.slide_table["slide_stage"]) <= set(SLIDE)


def test_patient_stage_follows_the_rule(demo_root: Path) -> None:
    table = patients(demo_root)
    for case_id, row in table.iterrows():
        assert row["patient_stage"] == rule(row["stages"]), case_id


@pytest.mark.parametrize(
    "stages, expected",
    [
        (["negative"] * 5, "pN0"),
        (["itc", "negative", "itc"], "pN0(i+)"),
        (["itc", "micro"], "pN1mi"),
        (["micro"] * 5, "pN1mi"),
        (["macro"], "pN1"),
        (["macro", "micro", "micro", "itc", "itc"], "pN1"),
        (["macro", "micro", "micro", "micro"], "pN2"),
        (["macro"] * 9, "pN2"),
    ],
)
def test_patient_stage_cases(stages: list[str], expected: str) -> None:
    assert patient_stage(stages) == expected == rule(stages)


@pytest.mark.parametrize("stages", [[], ["tumor"], ["macro"] * 10])
def test_patient_stage_ill_arg(stages: list[str]) -> None:
    with pytest.raises(ValueError):
        patient_stage(stages)


def test_camelyon17_reference(shared_data: Path) -> None:
    path = shared_data / "camelyon17" / "splits" / "output.csv"
    assert node_patterns(path) == CAMELYON17_NODE_PATTERNS
    table = pd.read_csv(path)
    case = table["patient"].str.rsplit("_node", n=1).str[0]
    for _, group in table.groupby(case):
        assert patient_stage(group["slide_stage"].tolist()) == group["patient_stage"].iloc[0]


def test_shipped_patterns_match_camelyon17_totals() -> None:
    slides = Counter()
    patients_per_stage = Counter()
    for pattern, count in CAMELYON17_NODE_PATTERNS.items():
        assert sum(pattern) == 5
        stages = [stage for stage, n in zip(SLIDE, pattern, strict=True) for _ in range(n)]
        slides.update({stage: n * count for stage, n in zip(SLIDE, pattern, strict=True)})
        patients_per_stage[rule(stages)] += count
    assert dict(slides) == CAMELYON_SLIDES
    assert dict(patients_per_stage) == CAMELYON_PATIENTS


@pytest.mark.parametrize("n", [25, 100, 7])
def test_draw_patterns_systematic(n: int) -> None:
    total = sum(CAMELYON17_NODE_PATTERNS.values())
    drawn = Counter(draw_patterns(np.random.default_rng(n), n, CAMELYON17_NODE_PATTERNS))
    assert sum(drawn.values()) == n
    for pattern, count in CAMELYON17_NODE_PATTERNS.items():
        assert abs(drawn[pattern] - n * count / total) < 1.0, pattern


def test_slide_stages_have_camelyon17_proportions() -> None:
    rng = np.random.default_rng(0)
    n = 20000
    stages = [sample_node_stages(rng, 1, p)[0] for p in draw_patterns(rng, n, CAMELYON17_NODE_PATTERNS)]
    counts = Counter(stages)
    for stage, expected in CAMELYON_SLIDES.items():
        p = expected / 500
        assert abs(counts[stage] / n - p) < 4 * np.sqrt(p * (1 - p) / n), stage


@pytest.mark.parametrize("n_slides", [0, 6])
def test_sample_node_stages_ill_arg(n_slides: int) -> None:
    with pytest.raises(ValueError, match="n_slides"):
        sample_node_stages(np.random.default_rng(0), n_slides, (5, 0, 0, 0))


def test_features_open(demo_root: Path) -> None:
    manifest = pd.read_csv(demo_root / "manifest.csv")
    width, height = SMALL["slide_size"]
    for row in manifest.itertuples():
        loaded = read_features(demo_root / row.features_path, encoder=ENCODER)
        assert len(loaded.features) > 0 and loaded.attrs["slide_id"] == row.slide_id
        assert (
            (loaded.coords >= 0).all() and (loaded.coords[:, 0] < width).all() and (loaded.coords[:, 1] < height).all()
        )


def test_deterministic_by_seed(demo_root: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    make_demo_cohort(again, **SMALL, extract=False)
    for name in ("manifest.csv", "omics.csv", "cohort.json", "slides/truth.json"):
        assert (again / name).read_bytes() == (demo_root / name).read_bytes(), name
    for slide in (demo_root / "slides").glob("*.tif"):
        assert (again / "slides" / slide.name).read_bytes() == slide.read_bytes(), slide.name
    other = tmp_path / "other"
    make_demo_cohort(other, **{**SMALL, "seed": 1, "slide_size": (256, 256)}, extract=False)
    assert (other / "omics.csv").read_text() != (demo_root / "omics.csv").read_text()
    assert not pd.read_csv(other / "manifest.csv").equals(pd.read_csv(demo_root / "manifest.csv"))


def test_patients_do_not_depend_on_cohort_size(demo_root: Path, tmp_path: Path) -> None:
    make_demo_cohort(tmp_path, **{**SMALL, "n_patients": 3, "slide_size": (256, 256)}, extract=False)
    fewer = pd.read_csv(tmp_path / "manifest.csv")
    full = pd.read_csv(demo_root / "manifest.csv")
    pd.testing.assert_frame_equal(fewer, full[full["case_id"].isin(fewer["case_id"])].reset_index(drop=True))


def test_rerun_is_a_no_op(demo_root: Path) -> None:
    before = files_and_mtimes(demo_root)
    assert make_demo_cohort(demo_root, **SMALL, extract=True) == demo_root / "manifest.csv"
    assert files_and_mtimes(demo_root) == before


def test_resume_rebuilds_only_what_is_missing(demo_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(demo_root, root)
    manifest = pd.read_csv(root / "manifest.csv")
    victim = manifest.iloc[-1]
    (root / victim["slide_path"]).unlink()
    (root / victim["features_path"]).unlink()
    (root / "manifest.csv").unlink()
    kept = {k: v for k, v in files_and_mtimes(root).items() if k.endswith((".tif", ".h5"))}
    make_demo_cohort(root, **SMALL, extract=True)
    assert (root / "manifest.csv").read_bytes() == (demo_root / "manifest.csv").read_bytes()
    assert (root / victim["slide_path"]).read_bytes() == (demo_root / victim["slide_path"]).read_bytes()
    assert read_features(root / victim["features_path"], encoder=ENCODER).features.shape[0] > 0
    after = files_and_mtimes(root)
    assert {k: after[k] for k in kept} == kept
    assert not list(root.rglob("*.part"))


def test_other_parameters_refused(demo_root: Path) -> None:
    before = files_and_mtimes(demo_root)
    with pytest.raises(ValueError, match=r"other parameters.*seed"):
        make_demo_cohort(demo_root, **{**SMALL, "seed": 1})
    assert files_and_mtimes(demo_root) == before


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"n_patients": 0}, ValueError),
        ({"max_slides_per_patient": 0}, ValueError),
        ({"max_slides_per_patient": 6}, ValueError),
        ({"stage_reference": "no/such/output.csv"}, FileNotFoundError),
    ],
)
def test_ill_arg(tmp_path: Path, kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        make_demo_cohort(tmp_path / "root", **kwargs)
    assert not (tmp_path / "root").exists()


def test_omics_and_masking(demo_root: Path) -> None:
    omics = pd.read_csv(demo_root / "omics.csv", index_col="case_id")
    description = json.loads((demo_root / "cohort.json").read_text())
    rnaseq = [c for c in omics.columns if c.endswith("_rnaseq")]
    assert 100 <= len(rnaseq) <= 140
    assert any(c.endswith("_cnv") for c in omics.columns) and any(c.endswith("_mut") for c in omics.columns)
    assert omics.notna().all().all()
    index, report = pathway_gene_index(list(omics.columns), "hallmarks")
    assert report.unused_columns == [] and len(index) >= 10
    table = patients(demo_root)
    missing = description["label_distribution"]["missing_omics"]
    assert missing and sorted(set(table.index) - set(omics.index)) == missing
    manifest = pd.read_csv(demo_root / "manifest.csv")
    no_text = sorted(manifest.loc[manifest["text"].isna(), "case_id"].unique())
    assert no_text and no_text == description["label_distribution"]["missing_text"]
    assert manifest.groupby("case_id")["text"].apply(lambda t: t.isna().all() or t.notna().all()).all()


def test_notes_never_name_the_class(signal_root: Path) -> None:
    notes = pd.read_csv(signal_root / "manifest.csv")["text"].dropna().str.lower()
    for word in [*CLASS_NAMES.values(), "ductal", "lobular", "subtype", "label", "class"]:
        assert not notes.str.contains(word, regex=False).any(), word


def test_description_counts(demo_root: Path) -> None:
    described = json.loads((demo_root / "cohort.json").read_text())["label_distribution"]
    manifest = pd.read_csv(demo_root / "manifest.csv")
    table = patients(demo_root)
    assert described["n_patients"] == len(table) and described["n_slides"] == len(manifest)
    assert described["patient_stage"] == {s: int((table["patient_stage"] == s).sum()) for s in PN}
    assert described["slide_stage"] == {s: int((manifest["slide_stage"] == s).sum()) for s in SLIDE}
    assert described["label"] == {str(v): int((table["label"] == v).sum()) for v in (0, 1)}


def _program_score(omics: pd.DataFrame, program: dict[str, int]) -> pd.Series:
    """Signed mean of the z-scored columns of one documented program."""
    columns = list(program)
    z = (omics[columns] - omics[columns].mean()) / omics[columns].std()
    return (z * pd.Series(program)).mean(axis=1)


def test_survival_signal(signal_root: Path) -> None:
    description = json.loads((signal_root / "cohort.json").read_text())
    models = description["models"]
    omics = pd.read_csv(signal_root / "omics.csv", index_col="case_id")
    table = patients(signal_root)
    event_rate = table["event"].mean()
    assert 0.5 < event_rate < 0.85  # about a third censored
    load = table["stages"].apply(lambda stages: sum(models["survival"]["stage_load"][s] for s in stages))
    data = pd.DataFrame(
        {
            "burden": np.log1p(load),
            "proliferation": _program_score(omics, models["omics_programs"]["proliferation"]),
            "nuisance": _program_score(omics, models["omics_programs"]["nuisance_hypoxia"]),
            "T": table["survival_months"],
            "E": table["event"],
        }
    ).dropna()
    cox = CoxPHFitter().fit(data[["burden", "proliferation", "T", "E"]], "T", "E")
    combined = concordance_index(data["T"], -cox.predict_partial_hazard(data), data["E"])
    assert combined > 0.65
    assert combined > concordance_index(data["T"], -data["nuisance"], data["E"]) + 0.05  # an unrelated program
    for column in ("burden", "proliferation"):
        assert concordance_index(data["T"], -data[column], data["E"]) > 0.55, column
        assert combined > concordance_index(data["T"], -data[column], data["E"]), column


def test_subtype_signal(signal_root: Path) -> None:
    description = json.loads((signal_root / "cohort.json").read_text())
    models = description["models"]
    omics = pd.read_csv(signal_root / "omics.csv", index_col="case_id")
    table = patients(signal_root)
    score = _program_score(omics, models["omics_programs"]["subtype"])
    auc = roc_auc_score(table.loc[score.index, "label"], score)
    assert 0.65 < auc < 1.0
    manifest = pd.read_csv(signal_root / "manifest.csv").dropna(subset=["text"])
    cue = manifest["text"].apply(lambda note: any(c in note for c in models["text_cues"]["1"]))
    rate = cue.groupby(manifest["label"]).mean()
    assert rate[1] > rate[0] > 0.0  # informative but noisy: label-0 notes carry label-1 cues too


def test_report_of_unscanned_nodes(signal_root: Path, tmp_path: Path) -> None:
    """With the report, pN counts all five nodes: the slides' stages plus the reported unscanned ones; the slides
    themselves are those of the cohort without the report."""
    root = _signal_cohort(tmp_path / "reported", report_unscanned_nodes=True)
    table, plain = patients(root), patients(signal_root)
    pd.testing.assert_series_equal(table["stages"], plain["stages"])
    counts = table[["unscanned_itc", "unscanned_micro", "unscanned_macro"]]
    assert ((counts.sum(axis=1) + table["stages"].str.len()) <= 5).all()
    for case_id, row in table.iterrows():
        unscanned = (
            ["itc"] * row["unscanned_itc"] + ["micro"] * row["unscanned_micro"] + ["macro"] * row["unscanned_macro"]
        )
        negatives = ["negative"] * (5 - len(row["stages"]) - len(unscanned))
        assert row["patient_stage"] == rule(row["stages"] + unscanned + negatives), case_id
    from_slides = table["stages"].apply(rule)
    assert (from_slides != table["patient_stage"]).mean() > 0.2  # the slides alone often miss the stage
    assert (plain["stages"].apply(rule) == plain["patient_stage"]).all()
    described = json.loads((root / "cohort.json").read_text())
    assert described["parameters"]["report_unscanned_nodes"] is True
    assert "unscanned_macro" in described["columns"]


def test_proliferation_in_slides(tmp_path: Path) -> None:
    """The cue changes only slides with a tumor; everything else (manifest, omics, negative slides) is the cohort
    without it."""
    kwargs = {"n_patients": 10, "seed": 0, "slide_size": (1024, 1024), "max_slides_per_patient": 2, "extract": False}
    plain, cued = tmp_path / "plain", tmp_path / "cued"
    make_demo_cohort(plain, **kwargs)
    make_demo_cohort(cued, **kwargs, proliferation_in_slides=True)
    pd.testing.assert_frame_equal(pd.read_csv(plain / "manifest.csv"), pd.read_csv(cued / "manifest.csv"))
    assert (plain / "omics.csv").read_text() == (cued / "omics.csv").read_text()
    manifest = pd.read_csv(cued / "manifest.csv")
    changed = {
        row.slide_id
        for row in manifest.itertuples()
        if (plain / row.slide_path).read_bytes() != (cued / row.slide_path).read_bytes()
    }
    assert changed and all(manifest.set_index("slide_id").loc[sorted(changed), "slide_stage"] != "negative")
    described = json.loads((cued / "cohort.json").read_text())
    assert described["parameters"]["proliferation_in_slides"] is True
    with pytest.raises(ValueError, match="nuclei_spacing"):
        write_demo_slide(tmp_path / "x.tif", seed=0, size=(512, 512), tumor="micro", nuclei_spacing=4)


def _stain_gains(before: Path, after: Path) -> np.ndarray | None:
    """Log ratio of the mean hematoxylin, eosin and DAB optical densities of two versions of a slide, over the
    tissue pixels of the first one (colour deconvolution written out here, independently of the generator); None
    when the slide shows almost no tissue."""
    density = [-np.log((tifffile.imread(path).reshape(-1, 3) + 1.0) / 256.0) for path in (before, after)]
    tissue = density[0].sum(axis=1) > 0.3  # the background is ~240 grey (density sum ~0.2)
    if tissue.sum() < 500:
        return None
    stains = [(values[tissue] @ hed_from_rgb).mean(axis=0) for values in density]
    return np.log(stains[1] / stains[0])


def test_distillation_scenario(signal_root: Path, tmp_path: Path) -> None:
    """Every slide, negative ones included, carries a DAB stain that follows the omics proliferation program,
    under a larger stain variation without signal; the omics, stages and notes are those of the default cohort, and
    proliferation drives survival more."""
    scenario = _signal_cohort(tmp_path / "scenario", distillation_scenario=True)
    assert (signal_root / "omics.csv").read_text() == (scenario / "omics.csv").read_text()
    plain, cued = pd.read_csv(signal_root / "manifest.csv"), pd.read_csv(scenario / "manifest.csv")
    same = [c for c in plain.columns if c not in ("survival_months", "event")]
    pd.testing.assert_frame_equal(plain[same], cued[same])
    described = json.loads((scenario / "cohort.json").read_text())
    assert described["parameters"]["distillation_scenario"] is True
    assert "distillation_scenario" not in json.loads((signal_root / "cohort.json").read_text())["parameters"]

    omics = pd.read_csv(scenario / "omics.csv", index_col="case_id")
    proliferation = _program_score(omics, described["models"]["omics_programs"]["proliferation"])
    rows = []
    for row in cued.itertuples():
        gain = _stain_gains(signal_root / row.slide_path, scenario / row.slide_path)  # hematoxylin, eosin, DAB
        if gain is not None and row.case_id in proliferation.index:
            rows.append({"stage": row.slide_stage, "program": proliferation[row.case_id], "h": gain[0], "dab": gain[2]})
    gains = pd.DataFrame(rows)
    negative = gains[gains["stage"] == "negative"]
    assert len(negative) >= 30
    assert negative["program"].corr(negative["dab"]) > 0.8  # the cue is on tissue without tumor too
    assert abs(negative["program"].corr(negative["h"])) < 0.3  # the stain variation carries no signal
    assert gains["h"].std() > 2 * gains["dab"].std()  # ... and is larger than the cue (3x per SD)

    def c_index(root: Path) -> float:
        table = patients(root).loc[proliferation.index]
        return concordance_index(table["survival_months"], -proliferation, table["event"])

    assert c_index(scenario) > c_index(signal_root) + 0.05

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

"""The built-in multimodal demo cohort: synthetic slides, features, omics, text and clinical data with known signal.

The data-generating story (every number below is a module constant, written into ``cohort.json``):

- **Staging.** Each patient has 1..``max_slides_per_patient`` lymph-node slides. Node stages are drawn by taking a
  real CAMELYON17 patient's five node stages (Bandi et al., IEEE TMI 2019, https://doi.org/10.1109/TMI.2018.2867350;
  :data:`CAMELYON17_NODE_PATTERNS`), shuffling them and keeping the first ones: every slide's stage then has the
  CAMELYON17 slide proportions and nodes of one patient stay correlated as in the real data; patterns are drawn by
  systematic sampling in blocks of 25 patients, so even a small cohort keeps the real mix. The pN stage follows
  from the slide stages by the CAMELYON17 rule (:func:`patient_stage`); pN2 needs four positive nodes, so it only
  appears with ``max_slides_per_patient`` of 4 or 5. With ``report_unscanned_nodes`` every patient keeps all five
  nodes of its pattern, only the first ones are scanned, and the pathology report gives the stages of the others as
  counts (``unscanned_itc``, ``unscanned_micro``, ``unscanned_macro``); the pN stage then follows from all five
  nodes, so the slides and the report each hold part of it and only together give it exactly.
- **Survival.** A latent risk ``r = 0.8 * burden + 0.7 * proliferation + 0.025 * (age - 62)`` sets a Weibull
  hazard (shape 1.4, scale 60 months at ``r = 0``); ``burden`` is the standardized log tumor load of the slides
  (negative 0, ITC 0.5, micro 1.5, macro 3 per node) and ``proliferation`` a standard normal omics program. Follow-up
  ends at a uniform censoring time (24-150 months), so about a third of the patients are censored. With
  ``proliferation_in_slides`` the tumor of a slide shows a weak copy of the proliferation program: its nuclei lie
  ``round(13 - 2 * proliferation)`` pixels apart (9-17; 13 otherwise), a cue only on the tumor patches of the
  positive slides, for a slide-only model to learn from a teacher that sees the omics.
- **Distillation scenario** (``distillation_scenario``; off by default, the cohort is then unchanged). Every slide,
  negative or not, is restained by colour deconvolution: its DAB optical density (the brown of the IHC texture, a
  Ki-67-like stain) is multiplied by ``exp(0.1 * proliferation)``, its hematoxylin and eosin densities by
  ``exp(N(0, 0.3))`` each, a per-slide stain variation three times the cue's spread that carries no signal. The risk
  becomes ``0.3 * burden + 1.2 * proliferation + 0.025 * (age - 62)``, so most of it shows on every patient's
  tissue, but faintly: a slide-only model must find the DAB direction among larger stain changes from ~77 censored
  survival times, where a teacher that reads the omics proliferation genes gives it a cleaner target.
- **Subtype** (``label`` 0/1, balanced in pairs of patients) drives a second omics program (a shift of +-0.75 with
  N(0, 0.5) noise; 10% of patients express the other subtype's program), CNV/mutation rates, and text cues in
  the notes; the program and the notes are about equally informative and independent given the subtype. The
  slides carry no subtype information: staging and survival come from the slides, subtype from omics and text, so
  fusion has something to fuse.
- **Omics** (``omics.csv``): 120 ``<SYMBOL>_rnaseq`` columns with real symbols of the shipped MSigDB Hallmark sets
  (proliferation genes from G2M checkpoint / E2F targets, subtype genes from the estrogen-response sets, nuisance
  genes following three unrelated latent factors), each gene with its own mean and scale, and a few ``_cnv`` /
  ``_mut`` columns. Every eighth patient (``index % 8 == 3``) has no omics row.
- **Text**: one short note per slide with a morphology sentence that matches the subtype 65% of the time, the other
  subtype 15% of the time, and is neutral otherwise; never the class name. Every eighth patient
  (``index % 8 == 5``) has no notes (empty text).
- **Clinical**: ``age`` (years, in the risk) and ``sex`` (no signal).

Everything about patient ``i`` is drawn from its own random stream, so a patient is the same whatever
``n_patients`` is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tifffile
from skimage import color as skcolor
from tqdm import tqdm

from monai_ext.data.dataset import PN_STAGES, SLIDE_STAGES
from monai_ext.data.pathways import load_composition
from monai_ext.wsi.batch import preprocess_slides
from monai_ext.wsi.encoders import build_encoder
from monai_ext.wsi.extract import ExtractionConfig, SlideOutputs, expected_attrs
from monai_ext.wsi.store import is_complete
from monai_ext.wsi.synthetic import TRUTH_FILE, write_demo_slide

__all__ = [
    "CAMELYON17_NODE_PATTERNS",
    "CLASS_NAMES",
    "draw_patterns",
    "make_demo_cohort",
    "node_patterns",
    "patient_stage",
    "sample_node_stages",
    "shuffle_nodes",
]

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 2  # 2: subtype shift 0.75 (was 0.5), optional report of unscanned nodes
ENCODER = "builtin_cnn"
SLIDE_MPP = 0.5
# The CAMELYON17 training set, measured from its splits/output.csv (100 patients x 5 lymph nodes): key = number of
# (negative, itc, micro, macro) nodes of a patient, value = number of patients with that pattern. Slide totals are
# 318 negative, 36 itc, 59 micro, 87 macro; patients 24 pN0, 11 pN0(i+), 21 pN1mi, 30 pN1, 14 pN2.
CAMELYON17_NODE_PATTERNS: dict[tuple[int, int, int, int], int] = {
    (5, 0, 0, 0): 24,
    (4, 0, 1, 0): 10,
    (4, 0, 0, 1): 9,
    (1, 0, 0, 4): 8,
    (3, 2, 0, 0): 6,
    (4, 1, 0, 0): 4,
    (3, 1, 1, 0): 4,
    (3, 0, 2, 0): 4,
    (3, 0, 0, 2): 4,
    (1, 1, 1, 2): 3,
    (2, 0, 2, 1): 3,
    (1, 0, 2, 2): 3,
    (3, 0, 1, 1): 3,
    (2, 1, 0, 2): 2,
    (1, 1, 2, 1): 2,
    (2, 1, 2, 0): 2,
    (2, 0, 1, 2): 1,
    (3, 1, 0, 1): 1,
    (2, 3, 0, 0): 1,
    (0, 1, 2, 2): 1,
    (2, 0, 3, 0): 1,
    (1, 0, 3, 1): 1,
    (1, 0, 1, 3): 1,
    (0, 2, 1, 2): 1,
    (2, 0, 0, 3): 1,
}
CLASS_NAMES = {0: "cohesive (ductal-like)", 1: "discohesive (lobular-like)"}

# survival model
STAGE_LOAD = {"negative": 0.0, "itc": 0.5, "micro": 1.5, "macro": 3.0}
BURDEN_MEAN, BURDEN_SD = 0.66, 0.72  # of log1p(total load) with 1-3 slides per patient (measured on 3,000 patients)
BETA_BURDEN, BETA_PROLIFERATION, BETA_AGE = 0.8, 0.7, 0.025
AGE_CENTER = 62.0
WEIBULL_SHAPE, WEIBULL_SCALE_MONTHS = 1.4, 60.0
CENSOR_MONTHS = (24.0, 150.0)
NUCLEI_SPACING, SLIDE_PROLIFERATION_CUE, NUCLEI_SPACING_RANGE = 13, 2.0, (9, 17)  # pixels, pixels per SD, clip
# distillation scenario: risk weights, and the stain gains of every slide (log of the factor on the optical density)
DISTILL_BETA_BURDEN, DISTILL_BETA_PROLIFERATION = 0.3, 1.2
DAB_PER_PROLIFERATION, STAIN_NUISANCE_SD = 0.10, 0.3
RESTAIN_JPEG_QUALITY = 85
# subtype and omics
SUBTYPE_SHIFT, SUBTYPE_SPREAD, SUBTYPE_DISCORDANCE = 0.75, 0.5, 0.10
PROGRAMS: dict[str, tuple[tuple[str, ...], int]] = {  # program -> (hallmark gene sets it draws from, genes)
    "proliferation": (("HALLMARK_G2M_CHECKPOINT", "HALLMARK_E2F_TARGETS"), 20),
    "subtype": (("HALLMARK_ESTROGEN_RESPONSE_EARLY", "HALLMARK_ESTROGEN_RESPONSE_LATE"), 15),
    "nuisance_hypoxia": (("HALLMARK_HYPOXIA",), 29),
    "nuisance_inflammation": (("HALLMARK_INFLAMMATORY_RESPONSE",), 28),
    "nuisance_oxphos": (("HALLMARK_OXIDATIVE_PHOSPHORYLATION",), 28),
}
PATTERN_BLOCK = 25  # node patterns are drawn for blocks of this many patients (see draw_patterns)
MISSING_OMICS_EVERY, MISSING_OMICS_AT = 8, 3
MISSING_TEXT_EVERY, MISSING_TEXT_AT = 8, 5
# text
TEXT_CUES = {
    0: (
        "glandular and tubule formation",
        "cohesive nests of tumor cells",
        "tumor cells arranged in solid cohesive sheets",
    ),
    1: ("single-file infiltration of small cells", "discohesive tumor cells", "scattered cells with targetoid growth"),
}
TEXT_NEUTRAL = ("tumor cells of intermediate nuclear grade", "moderate nuclear pleomorphism", "scant desmoplasia")
TEXT_CUE_MATCH, TEXT_CUE_OPPOSITE = 0.65, 0.15
_NODE_SITES = ("sentinel", "axillary level I", "axillary level II", "internal mammary")
_FILLERS = (
    "Sections are adequate for evaluation.",
    "Background lymphoid tissue with reactive follicles.",
    "Capsule intact.",
    "Fixation satisfactory.",
    "Fatty replacement of the hilum.",
)
# random streams, one per purpose
_PATIENT, _PAIR, _GENES, _PATTERNS, _STAIN = 1, 2, 3, 4, 5


def patient_stage(slide_stages: Sequence[str]) -> str:
    """The pN stage of a patient from the stages of its lymph-node slides (CAMELYON17 rule).

    pN0: all negative; pN0(i+): ITC only; pN1mi: micro-metastases and no macro; pN1: 1-3 positive nodes (micro or
    macro) with at least one macro; pN2: 4-9 positive nodes with at least one macro (Bandi et al. 2019,
    https://doi.org/10.1109/TMI.2018.2867350).

    Args:
        slide_stages: one of ``negative``, ``itc``, ``micro``, ``macro`` per slide.

    Returns:
        one of :data:`~monai_ext.data.dataset.PN_STAGES`.

    Raises:
        ValueError: an unknown stage, no slides, or 10 or more positive nodes (pN3 is outside the label set).
    """
    stages = list(slide_stages)
    unknown = sorted(set(stages) - set(SLIDE_STAGES))
    if unknown or not stages:
        raise ValueError(f"slide stages must be a non-empty list of {SLIDE_STAGES}, got {stages}")
    positive = sum(stage in ("micro", "macro") for stage in stages)
    if "macro" in stages:
        if positive >= 10:
            raise ValueError(f"{positive} positive nodes make pN3, which is not one of {PN_STAGES}")
        return "pN2" if positive >= 4 else "pN1"
    if "micro" in stages:
        return "pN1mi"
    return "pN0(i+)" if "itc" in stages else "pN0"


def node_patterns(reference: str | Path | None = None) -> dict[tuple[int, int, int, int], int]:
    """Patients per node-stage pattern ``(negative, itc, micro, macro)``.

    Args:
        reference: CAMELYON17's ``output.csv`` (columns ``patient`` such as ``patient_004_node_2`` and
            ``slide_stage``); None returns :data:`CAMELYON17_NODE_PATTERNS`, measured from that file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: missing columns or unknown stages.
    """
    if reference is None:
        return dict(CAMELYON17_NODE_PATTERNS)
    path = Path(reference)
    if not path.is_file():
        raise FileNotFoundError(f"stage reference {path} not found (CAMELYON17 splits/output.csv); pass None")
    table = pd.read_csv(path)
    if not {"patient", "slide_stage"} <= set(table.columns):
        raise ValueError(f"{path}: needs columns 'patient' and 'slide_stage', found {list(table.columns)}")
    unknown = sorted(set(table["slide_stage"]) - set(SLIDE_STAGES))
    if unknown:
        raise ValueError(f"{path}: slide stages {unknown} are not in {SLIDE_STAGES}")
    case = table["patient"].astype(str).str.rsplit("_node", n=1).str[0]
    counts: dict[tuple[int, int, int, int], int] = {}
    for _, stages in table.groupby(case, sort=True)["slide_stage"]:
        key = tuple(int((stages == stage).sum()) for stage in SLIDE_STAGES)
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def draw_patterns(
    rng: np.random.Generator, n: int, patterns: Mapping[tuple[int, int, int, int], int]
) -> list[tuple[int, int, int, int]]:
    """``n`` node-stage patterns in proportion to their counts, by systematic sampling, in random order.

    Systematic sampling (one uniform offset, ``n`` evenly spaced points on the cumulative distribution) keeps each
    pattern's count within one of its expectation, so even a small demo cohort has the reference's stage mix.

    Args:
        rng: random generator.
        n: number of patterns.
        patterns: ``{(negative, itc, micro, macro): patients}``, e.g. from :func:`node_patterns`.
    """
    keys = list(patterns)
    cumulative = np.cumsum([patterns[key] for key in keys], dtype=float)
    points = (rng.random() + np.arange(n)) / n * cumulative[-1]
    chosen = np.minimum(np.searchsorted(cumulative, points, side="right"), len(keys) - 1)
    return [keys[int(i)] for i in rng.permutation(chosen)]


def shuffle_nodes(rng: np.random.Generator, pattern: tuple[int, int, int, int]) -> list[str]:
    """The stages of all nodes of ``pattern`` (``(negative, itc, micro, macro)`` counts) in random order."""
    nodes = [stage for stage, count in zip(SLIDE_STAGES, pattern, strict=True) for _ in range(count)]
    return [str(stage) for stage in rng.permutation(nodes)]


def sample_node_stages(rng: np.random.Generator, n_slides: int, pattern: tuple[int, int, int, int]) -> list[str]:
    """Stages of ``n_slides`` nodes of one patient: the first ``n_slides`` of :func:`shuffle_nodes`.

    With patterns drawn in proportion to their counts, each slide is a uniformly chosen node of a reference patient,
    so slide stages have the reference's slide proportions while nodes of one patient stay correlated.

    Args:
        rng: random generator.
        n_slides: number of slides, at most the nodes of the pattern.
        pattern: number of ``(negative, itc, micro, macro)`` nodes.

    Raises:
        ValueError: ``n_slides`` outside 1..nodes of the pattern.
    """
    if not 1 <= n_slides <= sum(pattern):
        raise ValueError(f"n_slides must be between 1 and {sum(pattern)} (nodes of {pattern}), got {n_slides}")
    return shuffle_nodes(rng, pattern)[:n_slides]


def make_demo_cohort(
    root: str | Path,
    *,
    n_patients: int = 24,
    seed: int = 0,
    slide_size: tuple[int, int] = (3072, 2048),
    max_slides_per_patient: int = 3,
    extract: bool = True,
    progress: bool = False,
    stage_reference: str | Path | None = None,
    report_unscanned_nodes: bool = False,
    proliferation_in_slides: bool = False,
    distillation_scenario: bool = False,
) -> Path:
    """Write (or complete) the demo cohort under ``root``; idempotent and resumable.

    Writes ``cohort.json`` (parameters, story, tasks, columns, programs, label distribution) and ``omics.csv``
    first, then ``slides/<slide_id>.tif`` with ``slides/truth.json`` (tumor boxes, tissue masks), then features
    with the built-in encoder (``features/features/<slide_id>.h5``, QC pictures and status under ``features/``) and
    ``manifest.csv`` last. Every file is written under a temporary name and renamed, text files only when their
    content changes; slides and feature files already complete are reused, so a second call changes nothing.
    Slides are at 0.5 um/px; macro-metastases larger than a small slide are drawn smaller (their
    ``tumor_scale`` is in ``truth.json``) and keep their stage.

    Args:
        root: output folder (created).
        n_patients: number of patients.
        seed: seed of everything (the same arguments give the same files).
        slide_size: level-0 ``(width, height)`` of every slide, multiples of 16 and at least 128.
        max_slides_per_patient: 1-5 slides per patient (CAMELYON17 has 5 nodes per patient); pN2 needs 4 or 5.
        extract: extract features (otherwise ``features_path`` names where :func:`preprocess_slides` will put them).
        progress: show a progress bar while writing slides.
        stage_reference: CAMELYON17 ``output.csv`` to draw node stages from (default: the patterns measured from
            it, :data:`CAMELYON17_NODE_PATTERNS`).
        report_unscanned_nodes: the pN stage counts all nodes of a patient's pattern, the scanned ones (the slides)
            and the others, whose stages the manifest gives as counts in ``unscanned_itc``, ``unscanned_micro`` and
            ``unscanned_macro`` (patient-level columns, e.g. clinical inputs of a staging model).
        proliferation_in_slides: the tumor nuclei of positive slides are denser the higher the patient's
            proliferation program (a weak slide copy of an omics signal, e.g. for distillation experiments).
        distillation_scenario: every slide shows a faint DAB stain that follows the proliferation program, under
            a larger random hematoxylin / eosin variation, and proliferation dominates the survival risk (see the
            module docstring); the cohort for testing knowledge distillation into a slide-only model.

    Returns:
        the path of ``manifest.csv``.

    Raises:
        ValueError: bad arguments, or ``root`` holds a demo cohort made with other parameters.
        RuntimeError: feature extraction failed on some slide.
    """
    if n_patients < 1:
        raise ValueError(f"n_patients must be at least 1, got {n_patients}")
    patterns = node_patterns(stage_reference)
    n_nodes = min(sum(key) for key in patterns)
    if not 1 <= max_slides_per_patient <= n_nodes:
        raise ValueError(f"max_slides_per_patient must be between 1 and {n_nodes}, got {max_slides_per_patient}")
    root = Path(root)
    parameters = {
        "n_patients": int(n_patients),
        "seed": int(seed),
        "slide_size": [int(slide_size[0]), int(slide_size[1])],
        "slide_mpp": SLIDE_MPP,
        "max_slides_per_patient": int(max_slides_per_patient),
        "stage_patterns": {"-".join(map(str, key)): count for key, count in patterns.items()},
        "generator_version": GENERATOR_VERSION,
        "report_unscanned_nodes": bool(report_unscanned_nodes),
        "proliferation_in_slides": bool(proliferation_in_slides),
    }
    if distillation_scenario:  # only when on, so that cohorts written before the option still match
        parameters["distillation_scenario"] = True
    _check_parameters(root / "cohort.json", parameters)
    manifest, omics, programs, draws = _simulate(
        n_patients,
        seed,
        max_slides_per_patient,
        patterns,
        report_unscanned_nodes,
        proliferation_in_slides,
        distillation_scenario,
    )
    root.mkdir(parents=True, exist_ok=True)
    _write_text(root / "cohort.json", json.dumps(_description(parameters, manifest, omics, programs), indent=2) + "\n")
    _write_text(root / "omics.csv", omics.to_csv())
    _write_slides(root, manifest, seed, parameters["slide_size"], draws, progress)
    if extract:
        _extract(root, manifest)
    _write_text(root / "manifest.csv", manifest.to_csv(index=False))
    logger.info(f"demo cohort: {n_patients} patients, {len(manifest)} slides in {root}")
    return root / "manifest.csv"


def _rng(seed: int, stream: int, *index: int) -> np.random.Generator:
    """An independent generator per purpose (``stream``) and item (``index``)."""
    return np.random.default_rng([int(seed), stream, *index])


def _gene_programs() -> dict[str, list[str]]:
    """Gene symbols of each omics program, no gene in two programs.

    A program takes the genes shared by all its hallmark sets first (e.g. the core proliferation genes of both G2M
    checkpoint and E2F targets), then the others, each group in file order.
    """
    hallmarks = load_composition("hallmarks")
    used: set[str] = set()
    programs = {}
    for name, (gene_sets, n_genes) in PROGRAMS.items():
        members = [gene for gene_set in gene_sets for gene in hallmarks[gene_set] if gene not in used]
        shared = [gene for gene in members if all(gene in hallmarks[gene_set] for gene_set in gene_sets)]
        programs[name] = list(dict.fromkeys(shared + members))[:n_genes]
        used.update(programs[name])
    return programs


def _simulate(
    n_patients: int,
    seed: int,
    max_slides: int,
    patterns: Mapping[tuple[int, int, int, int], int],
    report_unscanned: bool = False,
    proliferation_in_slides: bool = False,
    distillation_scenario: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any], dict[str, dict[str, Any]]]:
    """The manifest (one row per slide), the omics table (index ``case_id``), the program description and how to
    draw each slide (:func:`write_demo_slide` keywords, and the stain gains of :func:`_restain`)."""
    programs = _gene_programs()
    gene_rng = _rng(seed, _GENES)
    genes = [(name, gene) for name, symbols in programs.items() for gene in symbols]
    means = gene_rng.uniform(4.0, 12.0, len(genes))
    scales = gene_rng.uniform(0.5, 1.5, len(genes))
    loadings = gene_rng.uniform(0.5, 0.9, len(genes)) * gene_rng.choice([-1.0, 1.0], len(genes))
    rows, omics_rows, draws = [], {}, {}
    for index in range(n_patients):
        rng = _rng(seed, _PATIENT, index)
        case_id = f"DEMO-{index:03d}"
        label = (index % 2) ^ int(_rng(seed, _PAIR, index // 2).integers(2))
        block, offset = divmod(index, PATTERN_BLOCK)
        pattern = draw_patterns(_rng(seed, _PATTERNS, block), PATTERN_BLOCK, patterns)[offset]
        n_slides = int(rng.integers(1, max_slides + 1))
        nodes = shuffle_nodes(rng, pattern)
        stages = nodes[:n_slides]
        report = _unscanned_report(nodes[n_slides:]) if report_unscanned else {}
        pn_stage = patient_stage(nodes if report_unscanned else stages)
        age = int(np.clip(np.rint(rng.normal(AGE_CENTER, 12.0)), 28, 90))
        sex = "F" if rng.random() < 0.85 else "M"
        factors = {"proliferation": rng.normal()}
        concordant = rng.random() >= SUBTYPE_DISCORDANCE
        direction = 1.0 if (label == 1) == concordant else -1.0
        factors["subtype"] = direction * SUBTYPE_SHIFT + rng.normal(0.0, SUBTYPE_SPREAD)
        factors.update({name: rng.normal() for name in programs if name.startswith("nuisance")})
        burden = (np.log1p(sum(STAGE_LOAD[stage] for stage in stages)) - BURDEN_MEAN) / BURDEN_SD
        beta_burden, beta_proliferation = _risk_weights(distillation_scenario)
        risk = beta_burden * burden + beta_proliferation * factors["proliferation"] + BETA_AGE * (age - AGE_CENTER)
        death = WEIBULL_SCALE_MONTHS * (rng.exponential() / np.exp(risk)) ** (1.0 / WEIBULL_SHAPE)
        censor = rng.uniform(*CENSOR_MONTHS)
        months, event = max(round(float(min(death, censor)), 1), 0.1), int(death <= censor)
        latent = np.array([factors[name] for name, _ in genes])
        expression = means + scales * (loadings * latent + rng.normal(size=len(genes)))
        values = {f"{gene}_rnaseq": round(float(v), 4) for (_, gene), v in zip(genes, expression, strict=True)}
        values.update(_alterations(rng, factors["proliferation"], factors["subtype"]))
        if index % MISSING_OMICS_EVERY != MISSING_OMICS_AT:
            omics_rows[case_id] = values
        has_text = index % MISSING_TEXT_EVERY != MISSING_TEXT_AT
        spacing = NUCLEI_SPACING
        if proliferation_in_slides:
            spacing = int(
                np.clip(
                    np.rint(NUCLEI_SPACING - SLIDE_PROLIFERATION_CUE * factors["proliferation"]), *NUCLEI_SPACING_RANGE
                )
            )
        for node, stage in enumerate(stages):
            slide_id = f"{case_id}-N{node}"
            draws[slide_id] = {"nuclei_spacing": spacing}
            if distillation_scenario:
                nuisance = _rng(seed, _STAIN, index, node).normal(0.0, STAIN_NUISANCE_SD, 2)
                draws[slide_id]["stain_gains"] = (
                    float(nuisance[0]),
                    float(nuisance[1]),
                    float(DAB_PER_PROLIFERATION * factors["proliferation"]),
                )
            rows.append(
                {
                    "case_id": case_id,
                    "slide_id": slide_id,
                    "slide_path": f"slides/{slide_id}.tif",
                    "features_path": SlideOutputs("features", slide_id).features.as_posix(),
                    "label": label,
                    "survival_months": months,
                    "event": event,
                    "slide_stage": stage,
                    "patient_stage": pn_stage,
                    "text": _note(rng, node, label) if has_text else "",
                    "age": age,
                    "sex": sex,
                    **report,
                }
            )
    omics = pd.DataFrame.from_dict(omics_rows, orient="index")
    omics.index.name = "case_id"
    signs = {f"{gene}_rnaseq": int(np.sign(w)) for (name, gene), w in zip(genes, loadings, strict=True)}
    described = {
        name: {f"{gene}_rnaseq": signs[f"{gene}_rnaseq"] for gene in symbols} for name, symbols in programs.items()
    }
    return pd.DataFrame(rows), omics, described, draws


def _risk_weights(distillation_scenario: bool) -> tuple[float, float]:
    """(beta_burden, beta_proliferation) of the survival risk: the distillation scenario's or the default's."""
    if distillation_scenario:
        return DISTILL_BETA_BURDEN, DISTILL_BETA_PROLIFERATION
    return BETA_BURDEN, BETA_PROLIFERATION


def _unscanned_report(stages: Sequence[str]) -> dict[str, int]:
    """The report's counts of the unscanned nodes by stage (negative nodes are the rest)."""
    return {f"unscanned_{stage}": sum(node == stage for node in stages) for stage in ("itc", "micro", "macro")}


def _sigmoid(x: float) -> float:
    """The logistic function."""
    return float(1.0 / (1.0 + np.exp(-x)))


def _alterations(rng: np.random.Generator, proliferation: float, subtype: float) -> dict[str, int]:
    """Copy-number (-1, 0, 1 gain, 2 amplification) and mutation (0/1) columns tied to the latent programs."""
    gain = rng.random()
    myc = 2 if gain < _sigmoid(-3.0 + proliferation) else int(gain < _sigmoid(-1.0 + proliferation))
    return {
        "MYC_cnv": myc,
        "ERBB2_cnv": int(rng.random() < _sigmoid(-1.5 - 1.5 * subtype)),
        "CCND1_cnv": int(rng.choice([-1, 0, 1], p=[0.1, 0.75, 0.15])),
        "TP53_mut": int(rng.random() < _sigmoid(-1.0 + 0.9 * proliferation)),
        "PIK3CA_mut": int(rng.random() < _sigmoid(-1.0 + 0.5 * subtype)),
        "CDH1_mut": int(rng.random() < _sigmoid(-3.0 + 3.0 * subtype)),
    }


def _note(rng: np.random.Generator, node: int, label: int) -> str:
    """A short pathology note for one slide: specimen, a noisy morphology cue of the subtype, a filler."""
    draw = rng.random()
    if draw < TEXT_CUE_MATCH:
        cues = TEXT_CUES[label]
    elif draw < TEXT_CUE_MATCH + TEXT_CUE_OPPOSITE:
        cues = TEXT_CUES[1 - label]
    else:
        cues = TEXT_NEUTRAL
    site = _NODE_SITES[int(rng.integers(len(_NODE_SITES)))]
    cue = cues[int(rng.integers(len(cues)))]
    filler = _FILLERS[int(rng.integers(len(_FILLERS)))]
    return f"Lymph node {node + 1} ({site}). Primary tumor: {cue}. {filler}"


def _description(
    parameters: dict[str, Any], manifest: pd.DataFrame, omics: pd.DataFrame, programs: dict[str, Any]
) -> dict[str, Any]:
    """The content of ``cohort.json``."""
    patients = manifest.groupby("case_id", sort=True).first()
    scenario = bool(parameters.get("distillation_scenario"))
    beta_burden, beta_proliferation = _risk_weights(scenario)
    cases = list(patients.index)

    def counts(values: pd.Series, order: Sequence[Any]) -> dict[str, int]:
        return {str(value): int((values == value).sum()) for value in order}

    return {
        "name": "monai_ext demo cohort",
        "generator": __name__,
        "parameters": parameters,
        "story": _story(),
        "tasks": {
            "classification": {"columns": ["label"], "classes": {str(k): v for k, v in CLASS_NAMES.items()}},
            "survival": {"columns": ["survival_months", "event"], "event": "1 = death observed, 0 = censored"},
            "staging": {"columns": ["patient_stage", "slide_stage"], "patient": list(PN_STAGES)},
        },
        "columns": {
            "case_id": "patient",
            "slide_id": "lymph-node slide, <case_id>-N<node>",
            "slide_path": "synthetic slide, relative to this folder",
            "features_path": f"patch features ({ENCODER}), relative to this folder",
            "label": "subtype 0/1 (patient level)",
            "survival_months": "time to death or censoring",
            "event": "1 = death observed",
            "slide_stage": "negative / itc / micro / macro (slide level)",
            "patient_stage": "pN stage by the CAMELYON17 rule, from the slides (and the unscanned nodes if reported)",
            "text": "pathology note of the slide (empty when the patient has none)",
            "age": "years",
            "sex": "F / M (no signal)",
            **{
                column: f"{column.split('_')[1]} nodes among the patient's unscanned nodes (pathology report)"
                for column in manifest.columns
                if column.startswith("unscanned_")
            },
        },
        "files": {
            "manifest": "manifest.csv",
            "omics": "omics.csv",
            "slides": "slides/",
            "truth": f"slides/{TRUTH_FILE}",
            "features": "features/features/",
        },
        "models": {
            "survival": {
                "risk": "beta_burden * burden + beta_proliferation * proliferation + beta_age * (age - age_center)",
                "stage_load": STAGE_LOAD,
                "burden": f"(log1p(sum of stage_load over the slides) - {BURDEN_MEAN}) / {BURDEN_SD}",
                "beta_burden": beta_burden,
                "beta_proliferation": beta_proliferation,
                "beta_age": BETA_AGE,
                "age_center": AGE_CENTER,
                "weibull_shape": WEIBULL_SHAPE,
                "weibull_scale_months": WEIBULL_SCALE_MONTHS,
                "censoring_months_uniform": list(CENSOR_MONTHS),
            },
            "subtype": {"shift": SUBTYPE_SHIFT, "spread": SUBTYPE_SPREAD, "discordance": SUBTYPE_DISCORDANCE},
            "tumor_nuclei_spacing": {
                "pixels": f"round({NUCLEI_SPACING} - {SLIDE_PROLIFERATION_CUE} * proliferation), clipped to "
                f"{list(NUCLEI_SPACING_RANGE)}"
                if parameters["proliferation_in_slides"]
                else NUCLEI_SPACING,
            },
            **(
                {
                    "slide_stain": {
                        "method": "colour deconvolution (skimage hed_from_rgb); each stain's optical density of "
                        "every pixel of every slide multiplied by exp(log_gain)",
                        "dab_log_gain": f"{DAB_PER_PROLIFERATION} * proliferation",
                        "hematoxylin_log_gain": f"N(0, {STAIN_NUISANCE_SD}) per slide (no signal)",
                        "eosin_log_gain": f"N(0, {STAIN_NUISANCE_SD}) per slide (no signal)",
                    }
                }
                if scenario
                else {}
            ),
            "omics_programs": programs,
            "omics_program_note": "column -> sign of its loading on the program's latent factor",
            "text_cues": {str(k): list(v) for k, v in TEXT_CUES.items()},
            "text_neutral": list(TEXT_NEUTRAL),
        },
        "label_distribution": {
            "n_patients": len(cases),
            "n_slides": len(manifest),
            "label": counts(patients["label"], sorted(CLASS_NAMES)),
            "patient_stage": counts(patients["patient_stage"], PN_STAGES),
            "slide_stage": counts(manifest["slide_stage"], SLIDE_STAGES),
            "event": counts(patients["event"], [0, 1]),
            "missing_omics": sorted(set(cases) - set(omics.index)),
            "missing_text": sorted(patients.index[patients["text"] == ""]),
        },
    }


def _story() -> list[str]:
    """The data-generating story of the module docstring, one entry per paragraph or bullet, on one line each."""
    paragraphs = (__doc__ or "").split("\n\n")[1:]
    parts = [part for paragraph in paragraphs for part in paragraph.split("\n- ") if part.strip()]
    return [" ".join(part.removeprefix("- ").split()) for part in parts]


def _check_parameters(path: Path, parameters: dict[str, Any]) -> None:
    """Refuse a root that holds a demo cohort made with other parameters (its files would be mixed)."""
    if not path.is_file():
        return
    existing = json.loads(path.read_text()).get("parameters")
    if existing != parameters:
        changed = sorted(k for k in {*parameters, *(existing or {})} if (existing or {}).get(k) != parameters.get(k))
        raise ValueError(
            f"{path.parent} holds a demo cohort made with other parameters (differing: {changed}); "
            f"use another folder or delete this one"
        )


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically, and only when the file's content differs (so reruns keep modification times)."""
    if path.is_file() and path.read_text() == text:
        return
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextmanager
def _quiet_small_slide_warnings() -> Iterator[list[str]]:
    """Silence (and collect) the per-slide warnings of macro tumors shrunk to fit a small slide."""
    seen: list[str] = []

    def keep(record: logging.LogRecord) -> bool:
        if "too small for a" in record.getMessage():
            seen.append(record.getMessage())
            return False
        return True

    synthetic_logger = logging.getLogger(write_demo_slide.__module__)
    synthetic_logger.addFilter(keep)
    try:
        yield seen
    finally:
        synthetic_logger.removeFilter(keep)


def _write_slides(
    root: Path,
    manifest: pd.DataFrame,
    seed: int,
    size: list[int],
    draws: Mapping[str, Mapping[str, Any]],
    progress: bool,
) -> None:
    """Write the missing slides (atomically) and keep ``slides/truth.json`` in step with them."""
    slides_dir = root / "slides"
    slides_dir.mkdir(exist_ok=True)
    truth_path = slides_dir / TRUTH_FILE
    truths = json.loads(truth_path.read_text())["slides"] if truth_path.is_file() else []
    known = {Path(values["path"]).stem: values for values in truths}
    todo = [row for row in manifest.itertuples() if not (row.slide_id in known and (root / row.slide_path).is_file())]
    with _quiet_small_slide_warnings() as shrunk:
        for row in tqdm(todo, desc="demo slides", unit="slide", disable=not progress):
            path = root / row.slide_path
            slide_seed = int.from_bytes(hashlib.sha256(f"{seed}/{row.slide_id}".encode()).digest()[:4], "little")
            tmp = path.with_name(f".{path.name}.part")
            truth = write_demo_slide(
                tmp,
                seed=slide_seed,
                size=(size[0], size[1]),
                tumor=row.slide_stage,
                nuclei_spacing=draws[row.slide_id]["nuclei_spacing"],
                mpp=SLIDE_MPP,
            )
            if "stain_gains" in draws[row.slide_id]:
                _restain(tmp, draws[row.slide_id]["stain_gains"])
            os.replace(tmp, path)
            known[row.slide_id] = replace(truth, path=path).as_dict(relative_to=slides_dir)
            ordered = [known[slide_id] for slide_id in manifest["slide_id"] if slide_id in known]
            _write_text(truth_path, json.dumps({"generator": __name__, "seed": seed, "slides": ordered}))
    if shrunk:
        logger.info(f"{len(shrunk)} macro tumors drawn smaller than 2 mm to fit {size[0]}x{size[1]} slides")


def _restain(path: Path, log_gains: Sequence[float]) -> None:
    """Rewrite every page of a demo slide with its hematoxylin, eosin and DAB optical densities scaled.

    Colour deconvolution (Ruifrok and Johnston 2001, ``skimage.color.rgb2hed``) splits each pixel into the three
    stains' optical densities; each is multiplied by ``exp(log_gain)`` and the pixel recomposed. Pages keep their
    tiling, JPEG compression and resolution tags. Each level is changed on its own: the map is non-linear in RGB, so
    a restained coarse level only approximately equals the area average of the restained finer one (the models
    read level 0).
    """
    gains = np.exp(np.asarray(log_gains, np.float64))
    with tifffile.TiffFile(path) as slide:
        pages = [(page.asarray(), page) for page in slide.pages]
        args = [
            {
                "tile": (page.tilelength, page.tilewidth),
                "photometric": "rgb",
                "compression": "jpeg",
                "compressionargs": {"level": RESTAIN_JPEG_QUALITY},
                "subsampling": page.subsampling,
                "resolution": page.resolution,
                "resolutionunit": page.resolutionunit,
                "subfiletype": page.subfiletype,
                "metadata": None,
            }
            for _, page in pages
        ]
        images = [image for image, _ in pages]
    # optical density OD = -log((rgb + 1) / 256) = stains @ rgb_from_hed, so scaling the stains is one 3x3 map on OD
    transform = skcolor.hed_from_rgb @ np.diag(gains) @ skcolor.rgb_from_hed
    restained = []
    for image in images:
        density = -np.log((image.astype(np.float32) + 1.0) / 256.0)
        rgb = 256.0 * np.exp(-density @ transform.astype(np.float32)) - 1.0
        restained.append(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
    tmp = path.with_name(f".{path.name}.restain")
    with tifffile.TiffWriter(tmp) as writer:
        for image, kwargs in zip(restained, args, strict=True):
            writer.write(image, **kwargs)
    os.replace(tmp, path)


def _extract(root: Path, manifest: pd.DataFrame) -> None:
    """Extract features of the slides that lack a finished feature file; raise if any slide failed."""
    config = ExtractionConfig()
    attrs = expected_attrs(config, build_encoder(ENCODER).identity)
    pending = [
        slide_id
        for slide_id, path in zip(manifest["slide_id"], manifest["features_path"], strict=True)
        if not is_complete(root / path, {**attrs, "slide_id": slide_id})
    ]
    if not pending:
        return
    logger.info(f"extracting features of {len(pending)} demo slides with {ENCODER}")
    table = preprocess_slides(root / "slides", root / "features", encoder=ENCODER, config=config)
    failed = table[(table["status"] != "done") & table["slide_id"].isin(manifest["slide_id"])]
    if len(failed):
        reasons = "; ".join(f"{row.slide_id}: {row.status} {row.reason}" for row in failed.itertuples())
        raise RuntimeError(
            f"feature extraction failed on {len(failed)} demo slide(s) ({reasons}); "
            f"use a larger slide_size so every slide holds tissue patches"
        )

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

"""Slide -> patient staging: the pN rule case by case and on the 100 CAMELYON17 patients, bag splitting against a
loop, SlideToPatientModel on patients with 1 to 5 slides, and HMF's slide supervision (slide and alignment
losses from slide labels in training only)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from monai_ext.data import dataset as data_dataset
from monai_ext.engines.task_loss import TaskLoss
from monai_ext.losses.alignment import TextAlignmentLoss
from monai_ext.networks.hierarchical import (
    PN_STAGES,
    SLIDE_STAGES,
    SlideToPatientModel,
    pn_stage_from_slides,
    pn_stages_from_probs,
    split_bags_by_slide,
)
from monai_ext.networks.multimodal import MultimodalModel

WSI_DIM, TEXT_DIM, DIM = 6, 5, 8

RULE_CASES = [
    (["negative"], "pN0"),
    (["negative"] * 5, "pN0"),
    (["itc", "negative"], "pN0(i+)"),
    (["itc"] * 5, "pN0(i+)"),
    (["micro"], "pN1mi"),
    (["micro", "itc", "negative"], "pN1mi"),
    (["micro"] * 3, "pN1mi"),
    (["micro"] * 4, "pN1mi"),  # >= 4 positive nodes but no macro: pN1mi (the rule needs a macro for pN1/pN2)
    (["micro"] * 5, "pN1mi"),
    (["macro"], "pN1"),
    (["macro", "micro", "micro"], "pN1"),
    (["macro", "itc", "itc", "itc", "itc"], "pN1"),  # ITC nodes are not positive
    (["macro"] * 3 + ["negative"] * 2, "pN1"),
    (["macro", "micro", "micro", "micro"], "pN2"),
    (["macro"] * 4 + ["negative"], "pN2"),
    (["micro"] * 8 + ["macro"], "pN2"),
    (["MACRO", "Negative"], "pN1"),
    ([3, 0, 1], "pN1"),
    ([2, 2, 2, 2, 0], "pN1mi"),
]


@pytest.mark.parametrize(("slides", "expected"), RULE_CASES)
def test_pn_rule(slides: list[Any], expected: str) -> None:
    assert pn_stage_from_slides(slides) == expected


@pytest.mark.parametrize(
    ("slides", "match"),
    [
        ([], "non-empty"),
        ("macro", "non-empty"),
        (["tumour"], "unknown slide stage"),
        ([4], "unknown slide stage"),
        ([True], "unknown slide stage"),
        (["macro"] * 10, "pN3"),
    ],
)
def test_pn_rule_ill_arg(slides: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pn_stage_from_slides(slides)


def test_pn_rule_properties_on_every_patient_of_up_to_five_nodes() -> None:
    """Over all 4^5 node combinations: order does not matter, a negative node changes nothing, and turning a node
    into a worse stage never lowers the patient stage."""
    severity = {stage: i for i, stage in enumerate(PN_STAGES)}
    for n in range(1, 6):
        for slides in itertools.product(SLIDE_STAGES, repeat=n):
            stage = pn_stage_from_slides(slides)
            assert pn_stage_from_slides(slides[::-1]) == stage
            assert pn_stage_from_slides([*slides, "negative"]) == stage
            for i, node in enumerate(slides):
                for worse in SLIDE_STAGES[SLIDE_STAGES.index(node) + 1 :]:
                    changed = [*slides[:i], worse, *slides[i + 1 :]]
                    assert severity[pn_stage_from_slides(changed)] >= severity[stage], (slides, changed)


def test_stage_names_match_the_dataset() -> None:
    assert PN_STAGES == data_dataset.PN_STAGES
    assert SLIDE_STAGES == data_dataset.SLIDE_STAGES


@pytest.mark.shared_data
def test_pn_rule_on_camelyon17(shared_data: Path) -> None:
    """Every one of the 100 CAMELYON17 training patients: slide stages -> the published patient pN stage, by the
    rule directly and through :func:`pn_stages_from_probs` on one-hot slide probabilities with a padded slot."""
    table = pd.read_csv(shared_data / "camelyon17" / "splits" / "output.csv")
    table["case_id"] = table["patient"].str.rsplit("_node", n=1).str[0]
    patients = list(table.groupby("case_id", sort=True))
    assert len(patients) == 100
    probs = torch.zeros(len(patients), 6, len(SLIDE_STAGES))
    mask = torch.zeros(len(patients), 6, dtype=torch.bool)
    expected = []
    for b, (case_id, rows) in enumerate(patients):
        assert rows["patient_stage"].nunique() == 1, case_id
        expected.append(rows["patient_stage"].iloc[0])
        assert pn_stage_from_slides(list(rows["slide_stage"])) == expected[-1], case_id
        for s, stage in enumerate(rows["slide_stage"]):
            probs[b, s, SLIDE_STAGES.index(stage)] = 1.0
            mask[b, s] = True
    probs[:, -1, SLIDE_STAGES.index("macro")] = 1.0  # a padded slot claiming macro must be ignored
    assert pn_stages_from_probs(probs, mask) == expected
    assert set(expected) == set(PN_STAGES)


def random_patients(slides_per_patient: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Patient bags whose slides have 1..4 patches each, interleaved in a random order, padded with junk."""
    gen = torch.Generator().manual_seed(seed)
    indices = []
    for n_slides in slides_per_patient:
        counts = torch.randint(1, 5, (n_slides,), generator=gen)
        index = torch.repeat_interleave(torch.arange(n_slides), counts)
        indices.append(index[torch.randperm(len(index), generator=gen)])
    longest = max(len(i) for i in indices) + 2
    slide_index = torch.full((len(indices), longest), -1, dtype=torch.long)
    mask = torch.zeros(len(indices), longest, dtype=torch.bool)
    for b, index in enumerate(indices):
        slide_index[b, : len(index)] = index
        mask[b, : len(index)] = True
    wsi = torch.randn(len(indices), longest, WSI_DIM, generator=gen)
    wsi[~mask] = 1e3
    return {"wsi": wsi, "wsi_mask": mask, "wsi_slide_index": slide_index}


def test_split_bags_by_slide_matches_a_loop() -> None:
    batch = random_patients([3, 1, 5, 2], seed=3)
    batch["wsi_slide_index"][0][batch["wsi_slide_index"][0] == 1] = 4  # a gap: slides 0, 2, 4
    split = split_bags_by_slide(batch["wsi"], batch["wsi_mask"], batch["wsi_slide_index"])
    row = 0
    for b in range(batch["wsi"].shape[0]):
        index = batch["wsi_slide_index"][b][batch["wsi_mask"][b]]
        for s in sorted(set(index.tolist())):
            patches = batch["wsi"][b][batch["wsi_mask"][b]][index == s]
            n = len(patches)
            assert (split["patient"][row], split["slide"][row]) == (b, s)
            torch.testing.assert_close(split["wsi"][row, :n], patches)
            assert split["wsi_mask"][row, :n].all() and not split["wsi_mask"][row, n:].any()
            assert (split["wsi"][row, n:] == 0).all()
            row += 1
    assert row == len(split["patient"])
    placed = split["wsi"][split["target_row"], split["target_position"]]
    torch.testing.assert_close(placed, batch["wsi"][split["source_patient"], split["source_patch"]])


def test_split_refuses_a_real_patch_without_slide() -> None:
    batch = random_patients([2, 2])
    batch["wsi_slide_index"][1, 0] = -1
    with pytest.raises(ValueError, match="negative wsi_slide_index"):
        split_bags_by_slide(batch["wsi"], batch["wsi_mask"], batch["wsi_slide_index"])


def make_model(fusion: str, seed: int = 0) -> SlideToPatientModel:
    torch.manual_seed(seed)
    slide_model = MultimodalModel(
        modalities=("wsi", "text"),
        wsi_dim=WSI_DIM,
        text_dim=TEXT_DIM,
        dim=DIM,
        fusion=fusion,
        fusion_kwargs={"n_heads": 2} if fusion == "bicross" else None,
        task="classification",
        n_classes=len(SLIDE_STAGES),
        dropout=0.0,
    )
    return SlideToPatientModel(slide_model=slide_model, hidden_dim=6, dropout=0.0)


@pytest.mark.parametrize("fusion", ["concat", "bicross"])
def test_forward_backward_one_to_five_slides(fusion: str) -> None:
    slides = [1, 2, 3, 4, 5]
    model = make_model(fusion).train()
    batch = random_patients(slides)
    batch["text"] = torch.randn(len(slides), 3, TEXT_DIM)
    batch["text_mask"] = torch.tensor([[True, True, False]] * len(slides))
    out = model(batch)
    n_slots = max(slides)
    assert out["logits"].shape == out["probs"].shape == (5, len(PN_STAGES))
    assert out["slide_logits"].shape == out["slide_probs"].shape == (5, n_slots, len(SLIDE_STAGES))
    assert out["slide_embedding"].shape == (5, n_slots, DIM)
    assert out["slide_mask"].sum(dim=1).tolist() == slides
    assert (out["slide_probs"][~out["slide_mask"]] == 0).all()
    torch.testing.assert_close(out["slide_probs"].sum(dim=(1, 2)), torch.tensor(slides, dtype=torch.float))
    assert (out["slide_weights"][~out["slide_mask"]] == 0).all()
    torch.testing.assert_close(out["slide_weights"].sum(dim=1), torch.ones(5))
    mask = batch["wsi_mask"]
    assert (out["attention"][~mask] == 0).all()
    torch.testing.assert_close(out["attention"].sum(dim=1), torch.ones(5))
    per_slide = torch.zeros(5, n_slots).index_put_(
        (torch.arange(5)[:, None].expand_as(mask)[mask], batch["wsi_slide_index"][mask]),
        out["slide_patch_attention"][mask],
        accumulate=True,
    )
    torch.testing.assert_close(per_slide, out["slide_mask"].float())
    loss = torch.nn.functional.cross_entropy(out["logits"], torch.arange(5))
    loss = loss + out["slide_logits"][out["slide_mask"]].logsumexp(dim=1).sum()
    loss.backward()
    for module in (model.slide_model.encoders, model.slide_model.fusion, model.slide_pool, model.patient_head):
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("fusion", ["concat", "bicross"])
def test_slide_outputs_equal_separate_slide_runs(fusion: str) -> None:
    """Each slide's logits and embedding equal the slide model run on that slide alone (with the patient's text)."""
    model = make_model(fusion).eval()
    batch = random_patients([2, 4, 1], seed=5)
    batch["text"] = torch.randn(3, 2, TEXT_DIM)
    batch["text_mask"] = torch.tensor([[True, True], [True, False], [False, False]])
    with torch.no_grad():
        out = model(batch)
        for b in range(3):
            index = batch["wsi_slide_index"][b]
            for s in range(int(index.max()) + 1):
                keep = batch["wsi_mask"][b] & (index == s)
                alone = model.slide_model(
                    {
                        "wsi": batch["wsi"][b, keep][None],
                        "text": batch["text"][b : b + 1],
                        "text_mask": batch["text_mask"][b : b + 1],
                    }
                )
                torch.testing.assert_close(out["slide_logits"][b, s], alone["logits"][0], rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(out["slide_embedding"][b, s], alone["embedding"][0], rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(out["slide_patch_attention"][b, keep], alone["attention"][0])


def test_patient_outputs_ignore_padding_and_slide_order() -> None:
    """Renumbering a patient's slides and adding padded patches leaves the patient prediction unchanged."""
    model = make_model("concat").eval()
    batch = random_patients([3, 2], seed=7)
    renumbered = dict(batch)
    index = batch["wsi_slide_index"].clone()
    index[0][batch["wsi_mask"][0]] = 2 - index[0][batch["wsi_mask"][0]]
    renumbered["wsi_slide_index"] = index
    padded = {
        "wsi": torch.cat([batch["wsi"], torch.full((2, 3, WSI_DIM), float("nan"))], dim=1),
        "wsi_mask": torch.cat([batch["wsi_mask"], torch.zeros(2, 3, dtype=torch.bool)], dim=1),
        "wsi_slide_index": torch.cat([batch["wsi_slide_index"], torch.full((2, 3), -1)], dim=1),
    }
    with torch.no_grad():
        reference = model(batch)
        for other in (model(renumbered), model(padded)):
            torch.testing.assert_close(other["logits"], reference["logits"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model(padded)["attention"][:, : batch["wsi"].shape[1]], reference["attention"])


def test_ill_inputs() -> None:
    model = make_model("concat")
    batch = random_patients([2, 3])
    with pytest.raises(ValueError, match="wsi_slide_index"):
        model({"wsi": batch["wsi"], "wsi_mask": batch["wsi_mask"]})
    empty = {**batch, "wsi_mask": batch["wsi_mask"].clone()}
    empty["wsi_mask"][1] = False
    with pytest.raises(ValueError, match=r"patients \[1\] have no patch"):
        model(empty)
    wrong = MultimodalModel(modalities=("wsi",), wsi_dim=WSI_DIM, dim=DIM, n_classes=3)
    with pytest.raises(ValueError, match="n_classes=4"):
        SlideToPatientModel(slide_model=wrong)(batch)
    with pytest.raises(ValueError, match="embedding_dim"):
        SlideToPatientModel(slide_model=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="positive"):
        SlideToPatientModel(slide_model=wrong, hidden_dim=0)


def make_hmf_model(keep_ratio: float = 0.5, seed: int = 0) -> SlideToPatientModel:
    """HMF: a bi-cross slide model over 4 classes x 2 prompts with the attention filter, and the patient head."""
    torch.manual_seed(seed)
    slide_model = MultimodalModel(
        modalities=("wsi", "text"),
        wsi_dim=WSI_DIM,
        text_dim=TEXT_DIM,
        dim=DIM,
        fusion="bicross",
        fusion_kwargs={"n_heads": 2, "keep_ratio": keep_ratio, "n_prompt_classes": len(SLIDE_STAGES)},
        task="classification",
        n_classes=len(SLIDE_STAGES),
        dropout=0.0,
    )
    return SlideToPatientModel(slide_model=slide_model, hidden_dim=6, dropout=0.0)


def hmf_batch() -> dict[str, torch.Tensor]:
    """Patients with 2, 3 and 1 slides, the same 8 prompts each, slide labels padded to 5 (slide 1 of patient 1
    unknown)."""
    batch = random_patients([2, 3, 1], seed=11)
    batch["text"] = torch.randn(1, 2 * len(SLIDE_STAGES), TEXT_DIM).expand(3, -1, -1)
    batch["text_mask"] = torch.ones(3, 2 * len(SLIDE_STAGES), dtype=torch.bool)
    batch["slide_label"] = torch.tensor([[3, 0, -1, -1, -1], [2, -1, 1, -1, -1], [0, -1, -1, -1, -1]])
    return batch


def test_hmf_slide_losses_equal_direct_computation() -> None:
    """Training with slide labels reports the slide cross-entropy and the slide-text alignment over the labelled
    slides, both equal to the losses computed from the returned slide outputs."""
    model = make_hmf_model().train()
    batch = hmf_batch()
    out = model(batch)
    labels = batch["slide_label"][:, :3]
    labelled = out["slide_mask"] & (labels >= 0)
    assert labelled.sum() == 5
    expected = torch.nn.functional.cross_entropy(out["slide_logits"][labelled], labels[labelled])
    torch.testing.assert_close(out["slide_loss"], expected)
    alignment = TextAlignmentLoss(0.07)(
        out["slide_text_similarity"][labelled], labels[labelled], out["slide_text_mask"][labelled]
    )
    torch.testing.assert_close(out["alignment_loss"], alignment)
    assert out["slide_text_similarity"].shape == out["slide_text_mask"].shape == (3, 3, len(SLIDE_STAGES))
    assert not out["slide_text_mask"][~out["slide_mask"]].any()
    loss = TaskLoss("staging")(out, {"label": torch.tensor([3, 2, 0])})
    torch.testing.assert_close(
        loss,
        torch.nn.functional.cross_entropy(out["logits"], torch.tensor([3, 2, 0]))
        + out["slide_loss"]
        + out["alignment_loss"],
    )
    loss.backward()
    fusion = model.slide_model.fusion
    for module in (fusion.align_slide, fusion.align_text, model.patient_head, model.slide_model.head):
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters())


def test_hmf_eval_never_reads_slide_labels() -> None:
    model = make_hmf_model().eval()
    batch = hmf_batch()
    with torch.no_grad():
        out = model(batch)
        without = model({key: value for key, value in batch.items() if key != "slide_label"})
    assert "slide_loss" not in out and "alignment_loss" not in out
    for key in ("logits", "slide_logits", "slide_text_similarity", "attention"):
        torch.testing.assert_close(out[key], without[key])
    # the filter keeps half of each slide's patches (rounded up) in the patch attention
    index, mask = batch["wsi_slide_index"], batch["wsi_mask"]
    for b in range(3):
        for s in range(int(index[b][mask[b]].max()) + 1):
            in_slide = mask[b] & (index[b] == s)
            kept = int((out["slide_patch_attention"][b][in_slide] > 0).sum())
            assert kept == -(-int(in_slide.sum()) // 2)


def test_hmf_slide_label_checks() -> None:
    model = make_hmf_model().train()
    batch = hmf_batch()
    with pytest.raises(ValueError, match="pad it with -1"):
        model({**batch, "slide_label": batch["slide_label"][:, :2]})
    with pytest.raises(ValueError, match="n_slide_classes"):
        model({**batch, "slide_label": batch["slide_label"].clamp(min=0) + 1})

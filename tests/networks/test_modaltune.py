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

"""ModalTune: zero-initialised gates leave the slide encoder's output unchanged at step 0 and change it after one
step, a frozen encoder stays fixed, masked modalities have no effect, per-cohort heads route each sample, and class-text
soft targets match a NumPy hand computation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from monai_ext.losses.multitask import MultiTaskLoss
from monai_ext.networks.modaltune import (
    ModalitySpec,
    ModalTuneModel,
    TaskSpec,
    build_modaltune,
    class_text_targets,
)
from monai_ext.networks.slide_encoder import SlideEncoder

WSI_DIM, DIM = 12, 16
MODALITIES = {"omics": 10, "clinical": 3, "text": 6}
TASKS = {"survival": ("survival", 4), "subtype": ("classification", 2), "stage": ("classification", 3)}


def _model(seed: int = 0, **kwargs: Any) -> ModalTuneModel:
    torch.manual_seed(seed)
    options = {"modalities": MODALITIES, "tasks": TASKS, "cohorts": ("A", "B"), "dim": DIM, "depth": 3}
    return build_modaltune(wsi_dim=WSI_DIM, **{**options, **kwargs})


def _batch(batch: int = 4, n: int = 7, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    wsi_mask = torch.ones(batch, n, dtype=torch.bool)
    wsi_mask[-1, n // 2 :] = False
    return {
        "wsi": torch.randn(batch, n, WSI_DIM, generator=g),
        "wsi_mask": wsi_mask,
        "omics": torch.randn(batch, 10, generator=g),
        "omics_mask": torch.tensor([True, False, True, True][:batch]),
        "clinical": torch.randn(batch, 3, generator=g),
        "text": torch.randn(batch, 2, 6, generator=g),
        "text_mask": torch.tensor([[True, True], [True, False], [False, False], [True, True]][:batch]),
        "cohort": ["A", "B", "unseen", "A"][:batch],
        "survival_bin": torch.tensor([0, 3, 1, 2][:batch]),
        "survival_event": torch.tensor([1.0, 0.0, 1.0, 1.0][:batch]),
        "subtype": torch.tensor([0, 1, 1, 0][:batch]),
        "stage": torch.tensor([2, 0, 1, 1][:batch]),
    }


def _loss() -> MultiTaskLoss:
    return MultiTaskLoss({name: kind for name, (kind, _) in TASKS.items()})


@pytest.mark.parametrize(
    ("adapter_blocks", "coords"), [(None, False), ([1], False), ([0, 2], True)], ids=["all", "one", "coords"]
)
def test_zero_gates_leave_the_encoder_unchanged_then_one_step_changes_it(
    adapter_blocks: list[int] | None, coords: bool
) -> None:
    model = _model(adapter_blocks=adapter_blocks).train()
    batch = _batch()
    if coords:
        batch["wsi_coords"] = torch.rand(4, 7, 2) * 4096
    encoder_state = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    reference = model.encoder(batch["wsi"], batch["wsi_mask"], batch.get("wsi_coords"))
    out = model(batch)
    assert torch.equal(out["slide_embedding"], reference["embedding"])
    assert torch.equal(out["patch_tokens"], reference["tokens"])
    assert len(model.adapters) == (3 if adapter_blocks is None else len(adapter_blocks))

    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=1e-2)
    loss, _ = _loss()(out, batch)
    loss.backward()
    optimizer.step()
    assert all(bool((adapter.gate != 0).any()) for adapter in model.adapters.values())
    after = model(batch)
    assert not torch.allclose(after["slide_embedding"], reference["embedding"], atol=1e-6)
    # the frozen encoder itself did not move: only adapters, tokenizers and heads trained
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, encoder_state[key]), key
    reference_after = model.encoder(batch["wsi"], batch["wsi_mask"], batch.get("wsi_coords"))
    assert torch.equal(reference_after["embedding"], reference["embedding"])


def test_unfrozen_encoder_trains_and_frozen_encoder_stays_in_eval() -> None:
    frozen = _model(dropout=0.5).train()
    assert not frozen.encoder.training and frozen.adapters["0"].training
    assert not any(p.requires_grad for p in frozen.encoder.parameters())
    unfrozen = _model(freeze_encoder=False).train()
    assert unfrozen.encoder.training
    loss, _ = _loss()(unfrozen(_batch()), _batch())
    loss.backward()
    assert unfrozen.encoder.patch_embed.weight.grad is not None
    assert float(unfrozen.encoder.patch_embed.weight.grad.abs().sum()) > 0


def _open_gates(model: ModalTuneModel, value: float = 0.7) -> None:
    with torch.no_grad():
        for adapter in model.adapters.values():
            adapter.alpha.fill_(value)


def _outputs(out: dict[str, Any]) -> list[torch.Tensor]:
    tensors = [out["embedding"], out["slide_embedding"], out["patch_tokens"]]
    for key in ("tasks", "shared_tasks"):
        tensors += [value for task in out[key].values() for value in task.values()]
    return tensors


def test_masked_modality_has_no_effect() -> None:
    model = _model().eval()
    _open_gates(model)  # with open gates every present modality changes the slide tokens
    batch = _batch()
    base = model(batch)
    changed = dict(batch)
    changed["omics"] = batch["omics"].clone()
    changed["omics"][1] = torch.randn(10) * 100  # sample 1 has omics_mask False
    changed["text"] = batch["text"].clone()
    changed["text"][2] = float("nan")  # sample 2 has no valid text token: even NaN placeholders are never read
    changed["text"][1, 1] = 50.0  # a padded text token of sample 1
    for a, b in zip(_outputs(model(changed)), _outputs(base), strict=True):
        assert torch.equal(a, b)
    # the test can fail: a present modality does change the output
    present = dict(batch)
    present["omics"] = batch["omics"].clone()
    present["omics"][0] += 1.0
    assert not torch.allclose(model(present)["slide_embedding"][0], base["slide_embedding"][0])
    torch.testing.assert_close(model(present)["slide_embedding"][1:], base["slide_embedding"][1:])


def test_all_modalities_masked_equals_absent_and_leaves_the_slide_alone() -> None:
    model = _model().eval()
    _open_gates(model)
    batch = _batch()
    masked = dict(batch)
    masked["omics_mask"] = torch.zeros(4, dtype=torch.bool)
    masked["clinical_mask"] = torch.zeros(4, dtype=torch.bool)
    masked["text_mask"] = torch.zeros(4, 2, dtype=torch.bool)
    absent = {k: v for k, v in batch.items() if not k.startswith(("omics", "clinical", "text"))}
    out_masked, out_absent = model(masked), model(absent)
    for a, b in zip(_outputs(out_masked), _outputs(out_absent), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    reference = model.encoder(batch["wsi"], batch["wsi_mask"])
    assert torch.equal(out_absent["slide_embedding"], reference["embedding"])
    # the pooled modality half of the head input is the learned "no modality" vector, not zeros
    no_modality = model.no_modality.detach().expand(4, -1)
    assert torch.equal(out_absent["embedding"][:, DIM:], no_modality)
    assert bool((no_modality != 0).any())


def test_per_cohort_heads_route_each_sample() -> None:
    model = _model().eval()
    batch = _batch()
    out = model(batch)
    embedding = out["embedding"]
    heads = model.heads
    own = dict(heads.cohort_heads.items())
    for row, cohort in enumerate(batch["cohort"]):
        task_heads = own.get(cohort, heads.shared)
        for task in TASKS:
            expected = task_heads[task](embedding[row : row + 1])
            for key, value in expected.items():
                torch.testing.assert_close(out["tasks"][task][key][row : row + 1], value)
    # distinct heads per cohort: cohort A's and B's subtype logits differ for the same embedding
    a = heads.cohort_heads["A"]["subtype"](embedding)["logits"]
    b = heads.cohort_heads["B"]["subtype"](embedding)["logits"]
    assert not torch.allclose(a, b)
    # no cohort key: every sample goes to the shared heads
    no_cohort = {k: v for k, v in batch.items() if k != "cohort"}
    torch.testing.assert_close(model(no_cohort)["tasks"]["stage"]["logits"], out["shared_tasks"]["stage"]["logits"])


def test_unknown_cohort_without_shared_heads_is_refused() -> None:
    model = _model(shared_heads=False).eval()
    assert "shared_tasks" not in model({**_batch(), "cohort": ["A", "B", "B", "A"]})
    with pytest.raises(ValueError, match="unseen"):
        model(_batch())
    with pytest.raises(ValueError, match="one cohort name per sample"):
        model({**_batch(), "cohort": ["A"]})


def test_no_modalities_is_a_head_only_baseline() -> None:
    model = _model(modalities={}).eval()
    assert len(model.adapters) == 0 and model.no_modality is None
    out = model(_batch())
    assert out["embedding"].shape == (4, DIM)
    assert torch.equal(out["embedding"], model.encoder(_batch()["wsi"], _batch()["wsi_mask"])["embedding"])


def test_build_with_local_encoder_weights(tmp_path: Path) -> None:
    torch.manual_seed(5)
    source = SlideEncoder(in_dim=WSI_DIM, dim=DIM, depth=3, n_heads=4)
    path = tmp_path / "encoder.pt"
    torch.save(source.state_dict(), path)
    model = _model(encoder_weights=path)
    for key, value in source.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[key], value)


@pytest.mark.parametrize("prompts", [1, 3])
def test_class_text_targets_match_hand_computation(prompts: int) -> None:
    rng = np.random.default_rng(0)
    embedding = rng.normal(size=(5, 8))
    text = rng.normal(size=(3, prompts, 8))
    unit = text / np.linalg.norm(text, axis=-1, keepdims=True)
    classes = unit.mean(axis=1)
    classes /= np.linalg.norm(classes, axis=-1, keepdims=True)
    cosine = (embedding / np.linalg.norm(embedding, axis=1, keepdims=True)) @ classes.T
    logits = cosine / 0.1
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    class_text = torch.tensor(text if prompts > 1 else text[:, 0])
    got = class_text_targets(torch.tensor(embedding), class_text, temperature=0.1)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-9)


def test_ill_arg() -> None:
    with pytest.raises(ValueError, match="unknown task kind"):
        TaskSpec("regression", 1)
    with pytest.raises(ValueError, match="unknown modality kind"):
        ModalitySpec(4, "image")
    with pytest.raises(ValueError, match="adapter_blocks"):
        _model(adapter_blocks=[3])
    with pytest.raises(ValueError, match="'wsi'"):
        _model(modalities={"wsi": 12})
    with pytest.raises(ValueError, match="reserved"):
        _model(cohorts=("shared",))
    with pytest.raises(ValueError, match=r"without '\.'"):
        _model(cohorts=("TCGA.BRCA",))
    model = _model().eval()
    with pytest.raises(ValueError, match=r"batch\['omics'\]"):
        model({**_batch(), "omics": torch.randn(4, 9)})
    with pytest.raises(ValueError, match=r"batch\['text_mask'\]"):
        model({**_batch(), "text_mask": torch.ones(4, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="needs batch"):
        model({"omics": torch.randn(4, 10)})
    with pytest.raises(ValueError, match="temperature"):
        class_text_targets(torch.randn(2, 4), torch.randn(3, 4), temperature=0.0)

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

"""Low-rank penalties against NumPy references (nuclear norms, the block-circulant form of the t-SVD norm,
scikit-learn cosine similarities), their documented extremes, and training: the term lowers the nuclear norm of a
tiny multimodal teacher's stacked modality embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics.pairwise import cosine_similarity

from monai_ext.engines.distill import modality_stack
from monai_ext.losses.lowrank import LowRankLoss, nuclear_norm, relation_tensor, tensor_nuclear_norm
from monai_ext.networks.multimodal import MultimodalModel


def _block_circulant(x: np.ndarray) -> np.ndarray:
    """``bcirc(X)`` of a tensor ``[n1, n2, n3]``: block ``(i, j)`` is the frontal slice ``(i - j) mod n3``."""
    n1, n2, n3 = x.shape
    out = np.zeros((n1 * n3, n2 * n3))
    for i in range(n3):
        for j in range(n3):
            out[i * n1 : (i + 1) * n1, j * n2 : (j + 1) * n2] = x[:, :, (i - j) % n3]
    return out


@pytest.mark.parametrize("shape", [(4, 4), (3, 7), (2, 5, 3)])
def test_nuclear_norm_matches_numpy(shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(0).normal(size=shape)
    expected = np.linalg.norm(x, "nuc", axis=(-2, -1))
    np.testing.assert_allclose(nuclear_norm(torch.tensor(x)).numpy(), expected, rtol=1e-10)


@pytest.mark.parametrize("shape", [(5, 5, 3), (4, 6, 2), (3, 3, 1), (6, 4, 4)])
def test_tensor_nuclear_norm_is_the_block_circulant_norm_over_n3(shape: tuple[int, int, int]) -> None:
    # Lu et al. (TPAMI 2020): TNN(X) = ||bcirc(X)||_* / n3, computed here without any FFT
    x = np.random.default_rng(1).normal(size=shape)
    expected = np.linalg.norm(_block_circulant(x), "nuc") / shape[2]
    np.testing.assert_allclose(float(tensor_nuclear_norm(torch.tensor(x))), expected, rtol=1e-10)


def test_relation_tensor_holds_cosine_similarities_per_modality() -> None:
    x = np.random.default_rng(2).normal(size=(5, 3, 4))
    relations = relation_tensor(torch.tensor(x)).numpy()
    for m in range(3):
        np.testing.assert_allclose(relations[:, :, m], cosine_similarity(x[:, m]), atol=1e-12)


@pytest.mark.parametrize("n_modalities", [2, 3, 4])
def test_relation_penalty_is_one_when_modalities_agree_and_grows_otherwise(n_modalities: int) -> None:
    rng = np.random.default_rng(3)
    shared = rng.normal(size=(6, 1, 8))
    scales = rng.uniform(0.5, 2.0, size=(1, n_modalities, 1))  # scaling keeps cosine relations
    same = torch.tensor(shared * scales)
    different = torch.tensor(rng.normal(size=(6, n_modalities, 8)))
    loss = LowRankLoss("relation")
    assert float(loss(same)) == pytest.approx(1.0, abs=1e-9)
    assert float(loss(different)) > 1.05


@pytest.mark.parametrize("n_modalities", [2, 3, 5])
def test_sample_penalty_spans_one_to_sqrt_m(n_modalities: int) -> None:
    rng = np.random.default_rng(4)
    direction = rng.normal(size=(3, 1, 6))
    signs = rng.choice([-2.0, 1.0, 3.0], size=(1, n_modalities, 1))
    collinear = torch.tensor(direction * signs)  # rank 1 per sample
    orthonormal = torch.tensor(np.stack([np.linalg.qr(rng.normal(size=(6, 6)))[0][:n_modalities] for _ in range(3)]))
    loss = LowRankLoss("sample")
    assert float(loss(collinear)) == pytest.approx(1.0, abs=1e-9)
    assert float(loss(orthonormal)) == pytest.approx(np.sqrt(n_modalities), abs=1e-9)


def test_absent_modalities_are_left_out() -> None:
    rng = np.random.default_rng(5)
    x = torch.tensor(rng.normal(size=(4, 3, 5)))
    present = torch.ones(4, 3, dtype=torch.bool)
    present[0, 2] = False
    junk = x.clone()
    junk[0, 2] = 1e6  # the absent embedding's values must not matter
    sample = LowRankLoss("sample")
    assert float(sample(junk, present)) == pytest.approx(float(sample(x, present)), rel=1e-12)
    by_hand = np.mean(
        [np.linalg.norm(x[0, :2].numpy() / np.linalg.norm(x[0, :2].numpy(), axis=1, keepdims=True), "nuc") / np.sqrt(2)]
        + [
            np.linalg.norm(x[i].numpy() / np.linalg.norm(x[i].numpy(), axis=1, keepdims=True), "nuc") / np.sqrt(3)
            for i in range(1, 4)
        ]
    )
    assert float(sample(x, present)) == pytest.approx(by_hand, rel=1e-10)
    relation = LowRankLoss("relation")  # the incomplete sample is dropped from the relation tensor
    assert float(relation(junk, present)) == pytest.approx(float(relation(x[1:])), rel=1e-12)


def test_degenerate_batches_give_a_zero_that_keeps_the_graph() -> None:
    x = torch.randn(1, 3, 4, requires_grad=True)
    value = LowRankLoss("relation")(x)  # one sample: no relation
    assert float(value.detach()) == 0.0 and value.requires_grad
    lonely = torch.zeros(2, 3, dtype=torch.bool)
    lonely[:, 0] = True
    assert float(LowRankLoss("sample")(torch.randn(2, 3, 4), lonely)) == 0.0


def test_gradient_is_finite_at_rank_one() -> None:
    x = (torch.randn(4, 1, 6) * torch.tensor([1.0, 2.0, 3.0])[None, :, None]).requires_grad_()
    for mode in ("relation", "sample"):
        LowRankLoss(mode)(x).backward()
        assert torch.isfinite(x.grad).all()
        x.grad = None


def test_ill_arguments() -> None:
    with pytest.raises(ValueError, match="low-rank mode"):
        LowRankLoss("batch")
    with pytest.raises(ValueError, match=r"\[B, M, D\]"):
        LowRankLoss()(torch.randn(3, 4))
    with pytest.raises(ValueError, match="present"):
        LowRankLoss()(torch.randn(3, 2, 4), torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="n3"):
        tensor_nuclear_norm(torch.randn(3, 3))
    with pytest.raises(ValueError, match="matrix"):
        nuclear_norm(torch.randn(3))


def _teacher_batch(seed: int, batch: int = 16) -> dict[str, torch.Tensor]:
    """Random bags, gene vectors and clinical vectors with a label tied to the omics."""
    g = torch.Generator().manual_seed(seed)
    omics = torch.randn(batch, 10, generator=g)
    return {
        "wsi": torch.randn(batch, 6, 12, generator=g),
        "omics": omics,
        "clinical": torch.randn(batch, 3, generator=g),
        "label": (omics[:, 0] > 0).long(),
    }


def _train_teacher(mode: str, weight: float, steps: int = 40) -> tuple[float, float]:
    """Penalty of the stacked modality embeddings of a fixed batch before and after training (eval mode)."""
    torch.manual_seed(0)
    model = MultimodalModel(
        modalities=("wsi", "omics", "clinical"),
        wsi_dim=12,
        omics_dim=10,
        clinical_dim=3,
        dim=16,
        aggregator="mean",
        dropout=0.0,
    )
    penalty = LowRankLoss(mode)
    probe = _teacher_batch(99)

    def measure() -> float:
        model.eval()
        with torch.no_grad():
            return float(penalty(*modality_stack(model(probe, return_tokens=True))))

    before = measure()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        batch = _teacher_batch(step)
        model.train()
        output = model(batch, return_tokens=True)
        loss = torch.nn.functional.cross_entropy(output["logits"], batch["label"])
        loss = loss + weight * penalty(*modality_stack(output))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return before, measure()


@pytest.mark.parametrize("mode", ["relation", "sample"])
def test_low_rank_term_lowers_the_nuclear_norm_during_training(mode: str) -> None:
    before, with_term = _train_teacher(mode, weight=1.0)
    _, without_term = _train_teacher(mode, weight=0.0)
    assert with_term < before
    assert with_term < without_term
    floor = 1.0  # both normalised penalties are >= 1: compare the excess over it
    assert with_term - floor < 0.9 * (without_term - floor)

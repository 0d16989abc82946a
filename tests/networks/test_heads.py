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

"""Heads: shapes and the discrete-time survival algebra against a NumPy hand computation, risk monotonicity,
Cox shift invariance, and modality dropout statistics."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from monai_ext.networks.heads import ClassificationHead, CoxHead, DiscreteHazardHead, ModalityDropout


@pytest.mark.parametrize(("batch", "n_classes"), [(1, 2), (5, 4)])
def test_classification_head(batch: int, n_classes: int) -> None:
    head = ClassificationHead(8, n_classes)
    x = torch.randn(batch, 8)
    torch.testing.assert_close(head(x), x @ head.linear.weight.T + head.linear.bias)
    assert head(x).shape == (batch, n_classes)


@pytest.mark.parametrize("n_bins", [1, 4])
def test_discrete_hazard_algebra(n_bins: int) -> None:
    torch.manual_seed(0)
    head = DiscreteHazardHead(8, n_bins)
    out = head(torch.randn(6, 8) * 5)
    logits = out["logits"].detach().double().numpy()
    hazards = 1.0 / (1.0 + np.exp(-logits))
    survival = np.ones((6, n_bins))
    for k in range(n_bins):  # S(k) = prod_{j<=k} (1 - h_j), written out
        survival[:, k] = (survival[:, k - 1] if k else 1.0) * (1.0 - hazards[:, k])
    np.testing.assert_allclose(out["hazards"].detach().numpy(), hazards, rtol=1e-5)
    np.testing.assert_allclose(out["survival"].detach().numpy(), survival, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(out["risk"].detach().numpy(), -survival.sum(axis=1), rtol=1e-4)
    assert (np.diff(out["survival"].detach().numpy(), axis=1) <= 0).all(), "survival never increases"
    assert out["risk"].shape == (6,)


def test_risk_increases_with_hazard() -> None:
    """Raising the logit of any bin raises the risk (a lower survival curve)."""
    torch.manual_seed(0)
    head = DiscreteHazardHead(4, 5)
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.bias.copy_(torch.randn(5))
        base = head(torch.zeros(1, 4))["risk"]
        for k in range(5):
            head.linear.bias[k] += 1.0
            raised = head(torch.zeros(1, 4))["risk"]
            assert raised > base
            base = raised


def test_survival_stable_for_large_logits() -> None:
    head = DiscreteHazardHead(1, 3)
    with torch.no_grad():
        head.linear.weight.fill_(1.0)
        head.linear.bias.zero_()
        out = head(torch.tensor([[-60.0], [60.0]]))
    assert torch.isfinite(out["survival"]).all()
    assert out["survival"][0, -1] > 0.999 and out["survival"][1, 0] < 1e-20


def test_cox_head_linear_without_bias() -> None:
    torch.manual_seed(0)
    head = CoxHead(8)
    x = torch.randn(5, 8)
    risk = head(x)
    assert risk.shape == (5,) and head.linear.bias is None
    torch.testing.assert_close(risk, x @ head.linear.weight[0])


@pytest.mark.parametrize("head", [ClassificationHead(4, 2), DiscreteHazardHead(4, 3), CoxHead(4)])
def test_torchscript_round_trip(head: torch.nn.Module) -> None:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(head), buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    x = torch.randn(3, 4)
    expected, out = head(x), loaded(x)
    for key in expected if isinstance(expected, dict) else [None]:
        torch.testing.assert_close(out[key] if key else out, expected[key] if key else expected)


@pytest.mark.parametrize("head", [ClassificationHead(4, 2), DiscreteHazardHead(4, 3), CoxHead(4)])
def test_heads_reject_wrong_shape(head: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        head(torch.randn(2, 5))


def test_heads_ill_args() -> None:
    with pytest.raises(ValueError, match="positive"):
        ClassificationHead(4, 0)
    with pytest.raises(ValueError, match="positive"):
        DiscreteHazardHead(0, 4)
    with pytest.raises(ValueError, match="positive"):
        CoxHead(0)


def _masks(batch: int, present: dict[str, list[bool]]) -> dict[str, torch.Tensor]:
    return {name: torch.tensor(rows)[:, None].expand(batch, 3).clone() for name, rows in present.items()}


@pytest.mark.parametrize("p", [0.5, 0.9, 1.0])
def test_modality_dropout_never_drops_everything(p: float) -> None:
    torch.manual_seed(0)
    batch = 4000
    gen = torch.Generator().manual_seed(1)
    present = {name: (torch.rand(batch, generator=gen) < 0.7).tolist() for name in ("wsi", "omics", "text")}
    masks = _masks(batch, present)
    dropout = ModalityDropout(p, ("wsi", "omics", "text")).train()
    out = dropout(masks)
    had_any = torch.stack([m.any(1) for m in masks.values()]).any(0)
    has_any = torch.stack([m.any(1) for m in out.values()]).any(0)
    assert (has_any == had_any).all()
    for name in masks:
        assert not (out[name] & ~masks[name]).any(), "dropout never switches a modality on"
        kept_rows = out[name].any(1)
        assert (out[name][kept_rows] == masks[name][kept_rows]).all(), "a kept modality keeps its whole mask"
    if p == 1.0:
        assert (torch.stack([m.any(1) for m in out.values()]).sum(0)[had_any] == 1).all()


def test_modality_dropout_rate() -> None:
    """With three present modalities, each is dropped with probability p, except the rescue when all three were
    drawn: P(kept) = (1 - p) + p^3 / 3."""
    torch.manual_seed(0)
    batch, p = 20000, 0.5
    masks = _masks(batch, {name: [True] * batch for name in ("wsi", "omics", "text")})
    out = ModalityDropout(p, ("wsi", "omics", "text")).train()(masks)
    expected = (1 - p) + p**3 / 3
    for name in masks:
        assert abs(out[name].any(1).float().mean().item() - expected) < 0.02


def test_modality_dropout_leaves_others_and_eval_alone() -> None:
    masks = _masks(3, {"wsi": [True, True, False], "clinical": [True, False, False]})
    dropout = ModalityDropout(1.0, ("wsi",)).train()
    out = dropout(masks)
    assert (out["clinical"] == masks["clinical"]).all()
    assert not out["wsi"][0].any(), "clinical is present, so wsi may go"
    assert out["wsi"][1].all(), "wsi is the only modality of sample 1"
    assert all((a == b).all() for a, b in zip(dropout.eval()(masks).values(), masks.values(), strict=True))


def test_modality_dropout_ill_args() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ModalityDropout(1.5, ("wsi",))
    with pytest.raises(ValueError, match="non-empty"):
        ModalityDropout(0.5, "wsi")

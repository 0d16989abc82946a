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

"""Multi-task loss: masked labels against NumPy hand computations of the cross-entropy and the discrete-time NLL,
the KL to soft targets against SciPy, weights, shared heads, and zero gradients for unlabelled samples."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from scipy.stats import entropy

from monai_ext.losses.multitask import MultiTaskLoss, soft_target_kl

TASKS = {"survival": "survival", "subtype": "classification", "stage": "classification"}


def _ce(logits: np.ndarray, label: np.ndarray) -> float:
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(label)), label].mean())


def _nll(logits: np.ndarray, bins: np.ndarray, event: np.ndarray, alpha: float) -> float:
    """Discrete-time NLL written from its definition (hazard h = sigmoid, S(k) = prod_{j<=k} (1 - h_j))."""
    hazards = 1.0 / (1.0 + np.exp(-logits))
    values = []
    for h, y, e in zip(hazards, bins, event, strict=True):
        s_before = np.prod(1.0 - h[:y])  # S(y - 1), 1 for y = 0
        s_at = np.prod(1.0 - h[: y + 1])  # S(y)
        uncensored = -e * (np.log(s_before) + np.log(h[y]))
        censored = -(1.0 - e) * np.log(s_at)
        values.append((1.0 - alpha) * (censored + uncensored) + alpha * uncensored)
    return float(np.mean(values))


def _outputs(seed: int, batch: int = 6) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {
        "survival": {"logits": torch.randn(batch, 4, generator=g, dtype=torch.float64, requires_grad=True)},
        "subtype": {"logits": torch.randn(batch, 2, generator=g, dtype=torch.float64, requires_grad=True)},
        "stage": {"logits": torch.randn(batch, 3, generator=g, dtype=torch.float64, requires_grad=True)},
    }


def _target(masks: dict[str, list[bool]]) -> dict[str, Any]:
    target = {
        "survival_bin": torch.tensor([0, 3, 1, 2, 2, 0]),
        "survival_event": torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0]),
        "subtype": torch.tensor([0, 1, 1, -1, 0, 1]),  # -1: a placeholder under a False mask
        "stage": torch.tensor([2, 0, 1, 1, -1, 2]),
    }
    target.update({f"{name}_mask": torch.tensor(mask) for name, mask in masks.items()})
    return target


MASKS = [
    {"subtype_mask": [True, True, True, False, True, True], "stage_mask": [True, True, True, True, False, True]},
    {
        "survival_mask": [False, True, False, True, True, False],
        "subtype_mask": [True, False, False, False, True, False],
        "stage_mask": [False, False, True, True, False, True],
    },
]


@pytest.mark.parametrize("masks", MASKS)
@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_masked_losses_match_hand_computation(masks: dict[str, list[bool]], alpha: float) -> None:
    weights = {"survival": 1.0, "subtype": 0.5, "stage": 2.0}
    loss_fn = MultiTaskLoss(TASKS, weights=weights, alpha=alpha)
    outputs = _outputs(0)
    target = _target({k.removesuffix("_mask"): v for k, v in masks.items()})
    total, parts = loss_fn({"tasks": outputs}, target)
    expected = {}
    for name in TASKS:
        rows = np.asarray(masks.get(f"{name}_mask", [True] * 6))
        logits = outputs[name]["logits"].detach().numpy()[rows]
        if name == "survival":
            bins, event = target["survival_bin"].numpy()[rows], target["survival_event"].numpy()[rows]
            expected[name] = _nll(logits, bins, event, alpha)
        else:
            expected[name] = _ce(logits, target[name].numpy()[rows])
        assert float(parts[name]) == pytest.approx(expected[name], rel=1e-10)
    assert float(total.detach()) == pytest.approx(sum(weights[n] * expected[n] for n in TASKS), rel=1e-10)
    assert float(parts["total"]) == pytest.approx(float(total.detach()))


def test_unlabelled_samples_get_no_gradient() -> None:
    outputs = _outputs(1)
    masks = MASKS[1]
    total, _ = MultiTaskLoss(TASKS)({"tasks": outputs}, _target({k.removesuffix("_mask"): v for k, v in masks.items()}))
    total.backward()
    for name in TASKS:
        grad = outputs[name]["logits"].grad.abs().sum(dim=1)
        rows = torch.tensor(masks[f"{name}_mask"])
        assert bool((grad[~rows] == 0).all()), name
        assert bool((grad[rows] > 0).all()), name


def test_tasks_without_labels_contribute_nothing() -> None:
    outputs = _outputs(2)
    subtype_rows = [True, True, True, False, True, True]
    target = _target({"subtype": subtype_rows, "stage": [False] * 6})
    del target["survival_bin"]  # no survival labels in this batch at all
    total, parts = MultiTaskLoss(TASKS)({"tasks": outputs}, target)
    assert set(parts) == {"subtype", "total"}
    rows = np.asarray(subtype_rows)
    expected = _ce(outputs["subtype"]["logits"].detach().numpy()[rows], target["subtype"].numpy()[rows])
    assert float(total.detach()) == pytest.approx(expected, rel=1e-10)
    # the -1 placeholder of sample 3 is only legal under a False mask
    with pytest.raises(ValueError, match="subtype_mask=False"):
        MultiTaskLoss(TASKS)({"tasks": outputs}, {**target, "subtype_mask": torch.ones(6, dtype=torch.bool)})
    nothing, nothing_parts = MultiTaskLoss(TASKS)({"tasks": outputs}, {})
    assert float(nothing.detach()) == 0.0 and set(nothing_parts) == {"total"}
    nothing.backward()  # a zero that keeps the graph


@pytest.mark.parametrize("mask", [None, [True, False, True, True, False, True]])
def test_soft_target_kl_matches_scipy(mask: list[bool] | None) -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(6, 3))
    target = rng.dirichlet(np.ones(3), size=6)
    target[0] = [0.0, 1.0, 0.0]  # 0 log 0 = 0
    rows = np.ones(6, dtype=bool) if mask is None else np.asarray(mask)
    q = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = np.mean([entropy(target[i], q[i]) for i in np.flatnonzero(rows)])
    got = soft_target_kl(torch.tensor(logits), torch.tensor(target), None if mask is None else torch.tensor(mask))
    assert float(got) == pytest.approx(expected, rel=1e-10)


def test_soft_targets_and_shared_heads_in_the_total() -> None:
    rng = np.random.default_rng(4)
    soft = torch.tensor(rng.dirichlet(np.ones(2), size=6))
    soft_mask = torch.tensor([True, True, False, True, True, True])
    target = {**_target({"subtype": [True, True, True, False, True, True]}), "subtype_soft": soft}
    target["subtype_soft_mask"] = soft_mask
    target["stage_mask"] = torch.tensor([True, True, True, True, False, True])
    routed, shared = _outputs(5), _outputs(6)
    loss_fn = MultiTaskLoss(TASKS, weights={"subtype": 0.5}, soft_weight=0.2, shared_weight=0.7)
    _, parts = loss_fn({"tasks": routed, "shared_tasks": shared}, target)
    _, routed_parts = loss_fn({"tasks": routed}, target)
    _, shared_parts = loss_fn({"tasks": shared}, target)
    expected_total = float(routed_parts["total"]) + 0.7 * float(shared_parts["total"])
    assert float(parts["total"]) == pytest.approx(expected_total, rel=1e-10)
    kl = float(soft_target_kl(routed["subtype"]["logits"], soft, soft_mask).detach())
    assert float(parts["subtype_soft"]) == pytest.approx(kl, rel=1e-10)
    assert float(parts["shared/stage"]) == pytest.approx(float(shared_parts["stage"]), rel=1e-10)
    hand = routed_parts["survival"] + 0.5 * (routed_parts["subtype"] + 0.2 * kl) + routed_parts["stage"]
    assert float(routed_parts["total"]) == pytest.approx(float(hand), rel=1e-10)


def test_ill_arg() -> None:
    with pytest.raises(ValueError, match="tasks must map"):
        MultiTaskLoss({"grade": "regression"})
    with pytest.raises(ValueError, match="unknown tasks"):
        MultiTaskLoss(TASKS, weights={"grade": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        MultiTaskLoss(TASKS, weights={"stage": -1.0})
    with pytest.raises(KeyError, match="stage"):
        MultiTaskLoss(TASKS)({"tasks": {"survival": {}, "subtype": {}}}, {})
    with pytest.raises(ValueError, match="subtype_mask"):
        MultiTaskLoss(TASKS)({"tasks": _outputs(0)}, {**_target({}), "subtype_mask": torch.ones(6)})
    with pytest.raises(ValueError, match="probabilities"):
        soft_target_kl(torch.zeros(2, 3), torch.full((2, 3), 0.5))

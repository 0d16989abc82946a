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

"""Distillation losses against hand computations (SciPy softmax / entropy, explicit survival products), the CRD
loss on matched vs shuffled pairs, and the gradient-agreement weights on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import expit, log_softmax, softmax
from scipy.stats import entropy

from monai_ext.losses.distillation import (
    ContrastiveDistillationLoss,
    LogitKDLoss,
    gradient_agreement_weights,
    kd_bernoulli,
    kd_classification,
    kd_regression,
    kd_survival_distribution,
)


def _logits(seed: int, shape: tuple[int, int], scale: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0, scale, shape), rng.normal(0, scale, shape)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("n_classes", [2, 5])
def test_classification_kd_equals_tempered_kl_times_t_squared(temperature: float, n_classes: int) -> None:
    student, teacher = _logits(0, (6, n_classes))
    expected = [
        temperature**2 * entropy(softmax(t / temperature), softmax(s / temperature))
        for s, t in zip(student, teacher, strict=True)
    ]
    got = kd_classification(torch.tensor(student), torch.tensor(teacher), temperature)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_bernoulli_kd_sums_per_bin_kl(temperature: float) -> None:
    student, teacher = _logits(1, (5, 4))
    expected = []
    for s, t in zip(student, teacher, strict=True):
        p, q = expit(t / temperature), expit(s / temperature)
        expected.append(temperature**2 * sum(entropy([a, 1 - a], [b, 1 - b]) for a, b in zip(p, q, strict=True)))
    got = kd_bernoulli(torch.tensor(student), torch.tensor(teacher), temperature)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9)


def _event_distribution(logits: np.ndarray) -> np.ndarray:
    """P(event in bin k) = prod_{j<k} (1 - h_j) h_k, and P(alive after the last bin) = prod_j (1 - h_j)."""
    hazards = expit(logits)
    probs, alive = [], 1.0
    for h in hazards:
        probs.append(alive * h)
        alive *= 1.0 - h
    return np.array([*probs, alive])


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_survival_distribution_kd_compares_event_time_distributions(temperature: float) -> None:
    student, teacher = _logits(2, (4, 4))
    expected = []
    for s, t in zip(student, teacher, strict=True):
        p_t, p_s = _event_distribution(t / temperature), _event_distribution(s / temperature)
        assert p_t.sum() == pytest.approx(1.0)
        expected.append(temperature**2 * entropy(p_t, p_s))
    got = kd_survival_distribution(torch.tensor(student), torch.tensor(teacher), temperature)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9)


@pytest.mark.parametrize(
    ("task", "survival", "shape"),
    [("classification", "bernoulli", (5, 3)), ("survival", "bernoulli", (5, 4)), ("survival", "distribution", (5, 4))],
)
def test_kd_is_zero_when_logits_match(task: str, survival: str, shape: tuple[int, int]) -> None:
    logits = torch.tensor(_logits(3, shape, scale=5.0)[0])
    loss = LogitKDLoss(task, temperature=2.0, survival=survival, reduction="none")
    assert torch.all(loss(logits, logits.clone()).abs() < 1e-12)
    assert float(LogitKDLoss("cox")(logits[:, 0], logits[:, 0].clone())) == 0.0


def test_t_squared_keeps_the_gradient_scale() -> None:
    # d/ds [T^2 KL] = T (softmax(s/T) - softmax(t/T)): the documented reason for the T^2 factor
    student, teacher = _logits(4, (3, 4))
    s = torch.tensor(student, requires_grad=True)
    for temperature in (1.0, 4.0):
        (grad,) = torch.autograd.grad(kd_classification(s, torch.tensor(teacher), temperature).sum(), s)
        expected = temperature * (softmax(student / temperature, axis=1) - softmax(teacher / temperature, axis=1))
        np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-9, atol=1e-12)


def test_reductions_and_regression() -> None:
    student, teacher = (torch.tensor(a) for a in _logits(5, (6, 3)))
    per_sample = LogitKDLoss("classification", reduction="none")(student, teacher)
    assert per_sample.shape == (6,)
    assert float(LogitKDLoss("classification")(student, teacher)) == pytest.approx(float(per_sample.mean()))
    np.testing.assert_allclose(
        kd_regression(student[:, 0], teacher[:, 0]).numpy(), 0.5 * (student[:, 0] - teacher[:, 0]).numpy() ** 2
    )


def test_teacher_receives_no_gradient() -> None:
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3, requires_grad=True)
    for fn in (kd_classification, kd_bernoulli, kd_survival_distribution):
        fn(student, teacher).sum().backward()
    assert teacher.grad is None and student.grad is not None


def _identity_crd(dim: int, temperature: float = 0.1) -> ContrastiveDistillationLoss:
    crd = ContrastiveDistillationLoss(dim, dim, proj_dim=dim, temperature=temperature)
    with torch.no_grad():
        for layer in (crd.student_proj, crd.teacher_proj):
            layer.weight.copy_(torch.eye(dim))
            layer.bias.zero_()
    return crd


def test_crd_matched_pairs_score_lower_than_shuffled() -> None:
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(12, 16, generator=g)
    student = teacher + 0.3 * torch.randn(12, 16, generator=g)
    crd = _identity_crd(16)
    matched = crd(student, teacher, reduction="none")
    shuffled = crd(student, teacher[torch.roll(torch.arange(12), 1)], reduction="none")
    assert float(matched.mean().detach()) < float(shuffled.mean().detach())
    assert bool((matched < shuffled).all())


def test_crd_equals_a_hand_computed_infonce_and_bank_mode_matches_in_batch() -> None:
    rng = np.random.default_rng(6)
    student, teacher = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    crd = _identity_crd(8, temperature=0.5)
    z_s = student / np.linalg.norm(student, axis=1, keepdims=True)
    z_t = teacher / np.linalg.norm(teacher, axis=1, keepdims=True)
    expected = -np.diag(log_softmax(z_s @ z_t.T / 0.5, axis=1))
    crd.double()
    got = crd(torch.tensor(student), torch.tensor(teacher), reduction="none")
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-9)
    order = torch.tensor([3, 0, 4, 1, 2])  # the same candidates stored in another order
    bank = torch.tensor(teacher)[torch.argsort(order)]
    in_bank = crd(torch.tensor(student), bank=bank, index=order, reduction="none")
    np.testing.assert_allclose(in_bank.detach().numpy(), expected, rtol=1e-9)


def test_crd_bank_gives_negatives_with_a_batch_of_one() -> None:
    crd = ContrastiveDistillationLoss(6, 10, proj_dim=4)
    value = crd(torch.randn(1, 6), bank=torch.randn(7, 10), index=torch.tensor([2]))
    assert float(value.detach()) > 0.0


def _ce_kd_weights(student: np.ndarray, teacher: np.ndarray, labels: np.ndarray, t: float) -> np.ndarray:
    """Hand formula: cos(T (softmax(s/T) - softmax(t/T)), softmax(s) - onehot(y)), clipped at 0."""
    g_kd = t * (softmax(student / t, axis=1) - softmax(teacher / t, axis=1))
    g_ce = softmax(student, axis=1) - np.eye(student.shape[1])[labels]
    cosine = (g_kd * g_ce).sum(1) / (np.linalg.norm(g_kd, axis=1) * np.linalg.norm(g_ce, axis=1))
    return np.clip(cosine, 0.0, 1.0)


def _weights(student: np.ndarray, teacher: np.ndarray, labels: np.ndarray, t: float, mode: str) -> np.ndarray:
    s = torch.tensor(student, requires_grad=True)
    kd = kd_classification(s, torch.tensor(teacher), t)
    task = torch.nn.functional.cross_entropy(s, torch.tensor(labels))
    return gradient_agreement_weights(kd, task, s, mode=mode).numpy()


def test_gradient_agreement_on_a_two_class_hand_case() -> None:
    # 2 classes: both gradients are multiples of (1, -1), so the cosine is +1 or -1
    student = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, -1.0]])
    teacher = np.array([[3.0, -3.0], [-3.0, 3.0], [4.0, -4.0]])
    labels = np.array([0, 0, 0])
    # sample 0: teacher and label both favour class 0 -> agree; sample 1: teacher favours class 1 -> disagree;
    # sample 2: the student is less sure of class 0 than the teacher -> both push class 0 up -> agree
    np.testing.assert_allclose(_weights(student, teacher, labels, 2.0, "soft"), [1.0, 0.0, 1.0], atol=1e-9)
    np.testing.assert_allclose(_weights(student, teacher, labels, 2.0, "hard"), [1.0, 0.0, 1.0])


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_gradient_agreement_follows_the_analytic_cosine(temperature: float) -> None:
    rng = np.random.default_rng(7)
    student, teacher = rng.normal(0, 2, (16, 4)), rng.normal(0, 2, (16, 4))
    labels = rng.integers(0, 4, 16)
    weights = _weights(student, teacher, labels, temperature, "soft")
    np.testing.assert_allclose(weights, _ce_kd_weights(student, teacher, labels, temperature), atol=1e-9)
    assert ((weights >= 0) & (weights <= 1)).all() and (weights == 0).any() and (weights > 0).any()
    hard = _weights(student, teacher, labels, temperature, "hard")
    np.testing.assert_array_equal(hard, (weights > 0).astype(float))


@pytest.mark.parametrize("seed", range(3))
def test_gradient_agreement_for_survival_is_a_weight(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(8, 4, generator=g, requires_grad=True)
    kd = kd_bernoulli(student, torch.randn(8, 4, generator=g))
    task = torch.nn.functional.binary_cross_entropy_with_logits(student, torch.rand(8, 4, generator=g))
    weights = gradient_agreement_weights(kd, task, student)
    assert weights.shape == (8,) and not weights.requires_grad
    assert bool(((weights >= 0) & (weights <= 1)).all())


def test_matching_logits_give_zero_weight_and_the_graph_survives() -> None:
    student = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    kd = kd_classification(student, student.detach().clone())
    task = torch.nn.functional.cross_entropy(student, torch.tensor([0, 1, 2]))
    weights = gradient_agreement_weights(kd, task, student)
    np.testing.assert_allclose(weights.numpy(), 0.0, atol=1e-6)  # rounding noise is no gradient
    (task + (weights * kd).mean()).backward()  # the graph was retained for the real backward pass
    assert student.grad is not None


def test_ill_arguments() -> None:
    with pytest.raises(ValueError, match="unknown task"):
        LogitKDLoss("segmentation")
    with pytest.raises(ValueError, match="survival KD mode"):
        LogitKDLoss("survival", survival="pmf")
    with pytest.raises(ValueError, match="temperature"):
        LogitKDLoss("classification", temperature=0.0)
    with pytest.raises(ValueError, match="same shape"):
        kd_classification(torch.randn(2, 3), torch.randn(2, 4))
    crd = ContrastiveDistillationLoss(4, 5)
    with pytest.raises(ValueError, match="either teacher"):
        crd(torch.randn(2, 4))
    with pytest.raises(ValueError, match="either teacher"):
        crd(torch.randn(2, 4), torch.randn(2, 5), bank=torch.randn(3, 5), index=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\[\*, 5\]"):
        crd(torch.randn(2, 4), torch.randn(2, 6))
    student = torch.randn(3, 2, requires_grad=True)
    with pytest.raises(ValueError, match="modulation mode"):
        gradient_agreement_weights(student.sum(1), student.sum(), student, mode="linear")
    with pytest.raises(ValueError, match="reduction='none'"):
        gradient_agreement_weights(student.sum(), student.sum(), student)

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

"""CLAM: the smooth top-1 SVM loss against scikit-learn's multiclass hinge loss and a NumPy transcription, the
instance clustering loss against a per-bag transcription of the CLAM reference loop, and CLAM-MB's per-class
bag scores by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import hinge_loss

from monai_ext.networks.mil import CLAMMB, CLAMSB, smooth_top1_svm_loss


def test_smooth_svm_tends_to_the_crammer_singer_hinge() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(50, 4, generator=gen)
    target = torch.randint(0, 4, (50,), generator=gen)
    ours = smooth_top1_svm_loss(scores, target, alpha=1.0, tau=1e-4)
    expected = hinge_loss(target.numpy(), scores.numpy(), labels=np.arange(4))
    np.testing.assert_allclose(float(ours), expected, rtol=1e-3)


@pytest.mark.parametrize(("alpha", "tau"), [(1.0, 1.0), (0.5, 0.2)])
def test_smooth_svm_matches_numpy(alpha: float, tau: float) -> None:
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(20, 2, generator=gen) * 3
    target = torch.randint(0, 2, (20,), generator=gen)
    s, y = scores.double().numpy(), target.numpy()
    margin = alpha * (np.arange(2)[None] != y[:, None])
    expected = np.mean(tau * np.log(np.exp((margin + s) / tau).sum(axis=1)) - s[np.arange(20), y])
    np.testing.assert_allclose(float(smooth_top1_svm_loss(scores, target, alpha, tau)), expected, rtol=1e-5)


def reference_instance_loss(model: CLAMSB | CLAMMB, bag: torch.Tensor, label: int) -> torch.Tensor:
    """The CLAM reference loop (``inst_eval`` / ``inst_eval_out``) on one unpadded bag, cross-entropy loss."""
    h = model.encoder(bag)  # [n, H]
    attention = torch.softmax(model.scorer(h[None])[0], dim=-1)  # [branches, n]
    k = min(model.k_sample, bag.shape[0] // 2)
    total = torch.zeros(())
    for c in range(model.n_classes):
        a = attention[c] if model.multi_branch else attention[0]
        classifier = model.instance_classifiers[c]
        if c == label:
            top, bottom = torch.topk(a, k)[1], torch.topk(-a, k)[1]
            logits = classifier(torch.cat([h[top], h[bottom]]))
            total = total + F.cross_entropy(logits, torch.cat([torch.ones(k), torch.zeros(k)]).long())
        elif model.subtyping:
            total = total + F.cross_entropy(classifier(h[torch.topk(a, k)[1]]), torch.zeros(k).long())
    return total / model.n_classes if model.subtyping else total


@pytest.mark.parametrize("cls", [CLAMSB, CLAMMB])
@pytest.mark.parametrize("subtyping", [False, True])
def test_instance_loss_matches_reference(cls: type[CLAMSB], subtyping: bool) -> None:
    torch.manual_seed(0)
    model = cls(
        in_dim=6, hidden_dim=8, attention_dim=4, n_classes=3, k_sample=3, instance_loss="ce", subtyping=subtyping
    )
    model.eval()
    sizes, labels = [11, 40, 7], [2, 0, 1]
    bags = [torch.randn(n, 6) for n in sizes]
    x = torch.zeros(3, 40, 6)
    mask = torch.zeros(3, 40, dtype=torch.bool)
    for b, bag in enumerate(bags):
        x[b, : len(bag)], mask[b, : len(bag)] = bag, True
    loss = model(x, mask, bag_label=torch.tensor(labels))["instance_loss"]
    expected = torch.stack([reference_instance_loss(model, bag, y) for bag, y in zip(bags, labels, strict=True)]).mean()
    torch.testing.assert_close(loss, expected)


def test_instance_loss_skips_single_patch_bags() -> None:
    torch.manual_seed(0)
    model = CLAMSB(in_dim=6, hidden_dim=8, n_classes=2, instance_loss="ce").eval()
    bag = torch.randn(9, 6)
    x = torch.zeros(2, 9, 6)
    x[0, :1], x[1] = bag[:1], bag
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, 0], mask[1] = True, True
    both = model(x, mask, bag_label=torch.tensor([1, 0]))["instance_loss"]
    torch.testing.assert_close(both, reference_instance_loss(model, bag, 0))
    alone = model(bag[:1][None], bag_label=torch.tensor([1]))["instance_loss"]
    assert alone == 0


def test_svm_instance_loss_is_used() -> None:
    torch.manual_seed(0)
    ce = CLAMSB(in_dim=6, hidden_dim=8, n_classes=2, instance_loss="ce").eval()
    svm = CLAMSB(in_dim=6, hidden_dim=8, n_classes=2, instance_loss="svm").eval()
    svm.load_state_dict(ce.state_dict())
    x, label = torch.randn(1, 30, 6), torch.tensor([1])
    h = ce.encoder(x[0])
    order = torch.softmax(ce.scorer(h[None])[0, 0], dim=-1).argsort(descending=True)
    index = torch.cat([order[:8], order[-8:]])
    target = torch.cat([torch.ones(8), torch.zeros(8)]).long()
    expected = smooth_top1_svm_loss(ce.instance_classifiers[1](h[index]), target)
    torch.testing.assert_close(svm(x, bag_label=label)["instance_loss"], expected)
    assert not torch.isclose(ce(x, bag_label=label)["instance_loss"], expected)


def test_multi_branch_bag_scores_by_hand() -> None:
    torch.manual_seed(0)
    model = CLAMMB(in_dim=6, hidden_dim=8, attention_dim=4, n_classes=3).eval()
    x = torch.randn(1, 15, 6)
    out = model(x)
    h = model.encoder(x[0])
    for c in range(3):
        a = torch.softmax(model.scorer(h[None])[0, c], dim=-1)
        z = a @ h
        torch.testing.assert_close(out["class_attention"][0, c], a)
        torch.testing.assert_close(out["embedding"][0, c * 8 : (c + 1) * 8], z)
        torch.testing.assert_close(out["logits"][0, c], model.bag_classifiers[c](z)[0])
    torch.testing.assert_close(out["attention"][0], out["class_attention"][0].mean(dim=0))


@pytest.mark.parametrize("label", [torch.tensor([3]), torch.tensor([-1]), torch.tensor([0, 1]), torch.tensor([0.0])])
def test_bad_bag_label(label: torch.Tensor) -> None:
    model = CLAMSB(in_dim=6, n_classes=3)
    with pytest.raises(ValueError, match="bag_label"):
        model(torch.randn(1, 10, 6), bag_label=label)

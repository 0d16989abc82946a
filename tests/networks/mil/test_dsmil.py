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

"""DSMIL against a per-bag transcription of the reference implementation (sort for the critical instances,
``softmax(Q q_max^T / sqrt(L))`` over patches, ``B = A^T V``, 1D convolution for the bag score)."""

from __future__ import annotations

import math

import pytest
import torch

from monai_ext.networks.mil import DSMIL


def reference(model: DSMIL, feats: torch.Tensor) -> dict[str, torch.Tensor]:
    """The DSMIL reference ``BClassifier.forward`` on one unpadded bag ``feats [n, D]``."""
    instance = model.instance_classifier(feats)  # [n, C]
    values, queries = model.value(feats), model.query(feats)
    _, order = torch.sort(instance, 0, descending=True)
    q_max = model.query(torch.index_select(feats, 0, order[0, :]))  # queries of the critical instances [C, L]
    attention = torch.softmax(queries @ q_max.T / math.sqrt(queries.shape[1]), 0)  # [n, C]
    bag = attention.T @ values  # [C, H]
    logits = model.bag_classifier(bag[None]).reshape(-1)
    return {"class_attention": attention.T, "embedding": bag.reshape(-1), "logits": logits, "instance": instance}


@pytest.mark.parametrize(("n_classes", "sizes"), [(1, [4]), (2, [30, 1]), (4, [12, 50, 7])])
def test_matches_reference(n_classes: int, sizes: list[int]) -> None:
    torch.manual_seed(0)
    model = DSMIL(in_dim=10, hidden_dim=6, attention_dim=5, n_classes=n_classes).eval()
    bags = [torch.randn(n, 10) for n in sizes]
    x = torch.zeros(len(sizes), max(sizes), 10)
    mask = torch.zeros(len(sizes), max(sizes), dtype=torch.bool)
    for b, bag in enumerate(bags):
        x[b, : len(bag)], mask[b, : len(bag)] = bag, True
    out = model(x, mask)
    assert model.out_dim == n_classes * 6
    for b, bag in enumerate(bags):
        ref = reference(model, bag)
        n = len(bag)
        torch.testing.assert_close(out["embedding"][b], ref["embedding"])
        torch.testing.assert_close(out["logits"][b], ref["logits"])
        torch.testing.assert_close(out["class_attention"][b, :, :n], ref["class_attention"])
        torch.testing.assert_close(out["instance_logits"][b, :n], ref["instance"])
        torch.testing.assert_close(out["max_instance_logits"][b], ref["instance"].max(dim=0).values)
        assert (out["instance_logits"][b, n:] == 0).all()


def test_critical_instance_gets_the_most_attention() -> None:
    """``<q_n, q_m>`` is largest for ``n = m`` when the queries are unit-norm one-hot codes."""
    torch.manual_seed(0)
    model = DSMIL(in_dim=4, hidden_dim=3, attention_dim=4, n_classes=1).eval()
    with torch.no_grad():
        model.instance_classifier.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
        model.instance_classifier.bias.zero_()
        model.query[0].weight.copy_(torch.eye(4) * 20)
        model.query[0].bias.zero_()
        model.query[2].weight.copy_(torch.eye(4))
        model.query[2].bias.zero_()
    x = torch.eye(4)[None]  # patch 0 has the highest instance score
    out = model(x)
    assert out["attention"][0].argmax() == 0
    torch.testing.assert_close(out["max_instance_logits"][0], torch.tensor([1.0]))

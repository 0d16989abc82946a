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

"""The contract every MIL aggregator keeps: shapes, gradients, attention that sums to 1 over real patches and is 0
on padding, padding invariance (junk and NaN in the padding), refusal of empty bags, ragged batches equal to
per-bag runs, permutation invariance where the model claims it, TorchScript round trips and bad arguments."""

from __future__ import annotations

import io

import pytest
import torch
from torch import Tensor, nn

from monai_ext.networks.mil import AGGREGATORS, build_aggregator

IN_DIM = 12
N_CLASSES = 3
# small configurations; TransMIL with 8 landmarks so that bags above 8 patches take the Nystrom path
SMALL = {
    "mean": {"in_dim": IN_DIM},
    "max": {"in_dim": IN_DIM, "hidden_dim": 16},
    "abmil": {"in_dim": IN_DIM, "hidden_dim": 16, "attention_dim": 8},
    "clam_sb": {"in_dim": IN_DIM, "hidden_dim": 16, "attention_dim": 8, "n_classes": N_CLASSES, "k_sample": 4},
    "clam_mb": {"in_dim": IN_DIM, "hidden_dim": 16, "attention_dim": 8, "n_classes": N_CLASSES, "k_sample": 4},
    "transmil": {"in_dim": IN_DIM, "hidden_dim": 16, "n_heads": 2, "num_landmarks": 8},
    "dsmil": {"in_dim": IN_DIM, "hidden_dim": 16, "attention_dim": 8, "n_classes": N_CLASSES},
}
NAMES = sorted(AGGREGATORS)
ORDER_FREE = [name for name in NAMES if name != "transmil"]  # TransMIL encodes patch order (PPEG)


def make(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_aggregator(name, **SMALL[name])


def ragged(sizes: list[int], n_max: int | None = None, seed: int = 1) -> tuple[Tensor, Tensor, list[Tensor]]:
    """A padded batch of bags of the given sizes: ``x [B, N, D]`` with NaN in the padding, mask, and the bags."""
    gen = torch.Generator().manual_seed(seed)
    bags = [torch.randn(n, IN_DIM, generator=gen) for n in sizes]
    n_max = n_max or max(sizes)
    x = torch.full((len(sizes), n_max, IN_DIM), float("nan"))
    mask = torch.zeros(len(sizes), n_max, dtype=torch.bool)
    for b, bag in enumerate(bags):
        x[b, : len(bag)] = bag
        mask[b, : len(bag)] = True
    return x, mask, bags


def total_loss(out: dict[str, Tensor]) -> Tensor:
    """A fixed random readout of every float output, so each parameter that any output depends on receives a
    gradient (a plain sum would not do: it is constant over a LayerNorm output such as TransMIL's embedding)."""
    gen = torch.Generator().manual_seed(7)
    return sum(
        (v.float() * torch.randn(v.shape, generator=gen)).sum()
        for k, v in out.items()
        if v.is_floating_point() and k != "attention"
    )


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("sizes", [[1], [7, 300], [40, 3, 17]])
def test_shapes_and_attention(name: str, sizes: list[int]) -> None:
    model = make(name).eval()
    x, mask, _ = ragged(sizes)
    out = model(x, mask)
    assert out["embedding"].shape == (len(sizes), model.out_dim)
    assert out["attention"].shape == mask.shape
    assert torch.isfinite(out["embedding"]).all()
    assert (out["attention"][~mask] == 0).all(), "padded patches must get exactly zero attention"
    assert (out["attention"] >= 0).all()
    torch.testing.assert_close(out["attention"].sum(dim=1), torch.ones(len(sizes)))


# bag sizes and CLAM bag labels; CLAM pseudo-labels no instance of a 1-patch bag, so every class also labels a bag
# of 2+ patches (each instance classifier gets a gradient)
BAG_SETS = [
    pytest.param([25, 9, 14], [0, 2, 1], id="small"),
    pytest.param([1, 100_000, 5, 6], [0, 0, 1, 2], id="1-to-100k", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("sizes, labels", BAG_SETS)
def test_forward_backward(name: str, sizes: list[int], labels: list[int]) -> None:
    """One ragged batch in training mode: attention sums to 1 over each bag's real patches and is 0 on the padding;
    gradients are finite, reach every bag's patches and every parameter, and never the padding (small widths keep
    the 100k bag cheap; the 1024-d cost is what ``scripts/bench_mil.py`` measures)."""
    model = make(name).train()
    x, mask, _ = ragged(sizes)
    x.requires_grad_(True)
    kwargs = {"bag_label": torch.tensor(labels)} if name.startswith("clam") else {}
    out = model(x, mask, **kwargs)
    if name.startswith("clam"):
        assert out["instance_loss"].shape == () and out["instance_loss"] > 0
    torch.testing.assert_close(out["attention"].sum(dim=1), torch.ones(len(sizes)))
    assert (out["attention"][~mask] == 0).all()
    total_loss(out).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad[~mask] == 0).all(), "no gradient may reach the padding"
    assert all(x.grad[b][mask[b]].abs().sum() > 0 for b in range(len(sizes))), "every bag's patches need a gradient"
    for pname, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), f"{name}.{pname} got no gradient"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("junk", [float("nan"), 1e6, -1e6])
def test_padding_invariance(name: str, junk: float) -> None:
    model = make(name).eval()
    x, _, bags = ragged([30])
    padded = torch.cat([x, torch.full((1, 50, IN_DIM), junk)], dim=1)
    mask = torch.zeros(1, 80, dtype=torch.bool)
    mask[0, :30] = True
    kwargs = {"bag_label": torch.tensor([1])} if name.startswith("clam") else {}
    ref, out = model(bags[0][None], **kwargs), model(padded, mask, **kwargs)
    torch.testing.assert_close(out["embedding"], ref["embedding"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["attention"][:, :30], ref["attention"], rtol=1e-5, atol=1e-7)
    for key in ref.keys() - {"embedding", "attention", "class_attention", "instance_logits"}:
        torch.testing.assert_close(out[key], ref[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_ragged_batch_equals_single_bags(name: str) -> None:
    model = make(name).eval()
    x, mask, bags = ragged([1, 120, 33])
    out = model(x, mask)
    for b, bag in enumerate(bags):
        single = model(bag[None])
        torch.testing.assert_close(out["embedding"][b], single["embedding"][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out["attention"][b, : len(bag)], single["attention"][0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ORDER_FREE)
def test_permutation_invariance(name: str) -> None:
    model = make(name).eval()
    _, _, (bag,) = ragged([50])
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(3))
    ref, out = model(bag[None]), model(bag[perm][None])
    torch.testing.assert_close(out["embedding"], ref["embedding"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["attention"][0], ref["attention"][0, perm], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_empty_bag_refused(name: str) -> None:
    model = make(name).eval()
    x, mask, _ = ragged([5, 4])
    mask[1] = False
    with pytest.raises(ValueError, match="no valid patch"):
        model(x, mask)
    with pytest.raises(ValueError, match="no valid patch"):
        model(torch.zeros(2, 0, IN_DIM))


@pytest.mark.parametrize("name", NAMES)
def test_torchscript_round_trip(name: str) -> None:
    model = make(name).eval()
    x, mask, _ = ragged([20, 6])
    scripted = torch.jit.script(model)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    ref, out = model(x, mask), loaded(x, mask)
    assert ref.keys() == out.keys()
    for key in ref:
        torch.testing.assert_close(out[key], ref[key], equal_nan=True)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("x_shape", "mask"),
    [
        ((10, IN_DIM), None),  # no batch axis
        ((1, 10, IN_DIM + 1), None),  # wrong feature size
        ((1, 10, IN_DIM), torch.ones(1, 10, dtype=torch.long)),  # mask not bool
        ((1, 10, IN_DIM), torch.ones(1, 9, dtype=torch.bool)),  # mask of another shape
    ],
)
def test_ill_input(name: str, x_shape: tuple[int, ...], mask: Tensor | None) -> None:
    with pytest.raises(ValueError):
        make(name)(torch.randn(x_shape), mask)


ILL_ARGS = [(name, {"in_dim": 0}) for name in NAMES] + [
    ("mean", {"dropout": 1.0}),
    ("max", {"hidden_dim": -1}),
    ("abmil", {"dropout": -0.1}),
    ("abmil", {"attention_dim": 0}),
    ("clam_sb", {"instance_loss": "focal"}),
    ("clam_sb", {"k_sample": 0}),
    ("clam_mb", {"n_classes": 0}),
    ("transmil", {"n_heads": 3}),
    ("transmil", {"num_landmarks": 0}),
    ("transmil", {"residual_kernel": 4}),
    ("dsmil", {"n_classes": 0}),
]


@pytest.mark.parametrize(("name", "override"), ILL_ARGS)
def test_ill_arg(name: str, override: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        build_aggregator(name, **{**SMALL[name], **override})


def test_registry() -> None:
    assert set(AGGREGATORS) == {"mean", "max", "abmil", "clam_sb", "clam_mb", "transmil", "dsmil"}
    assert isinstance(build_aggregator("ABMIL", in_dim=4), AGGREGATORS["abmil"])
    with pytest.raises(ValueError, match="unknown MIL aggregator 'gcn'"):
        build_aggregator("gcn", in_dim=4)
    with pytest.raises(TypeError):
        build_aggregator("mean", in_dim=4, n_classes=2)
    with pytest.raises(TypeError):  # keyword-only constructors
        AGGREGATORS["abmil"](4)

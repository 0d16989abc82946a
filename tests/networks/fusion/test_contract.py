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

"""The fusion contract, checked for every fusion: any subset of modalities, ragged and missing rows, padding
that cannot leak, batch-composition independence, documented missing-modality semantics, linear memory in patches,
permutation invariance and argument checks."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from monai_ext.networks.fusion import FUSIONS, build_fusion

MODALITIES = ("wsi", "omics", "clinical", "text")
N_TOKENS = {"wsi": 9, "omics": 5, "clinical": 1, "text": 4}
DIM = 8
OUT_DIM = 6
SUBSETS = [s for r in range(1, len(MODALITIES) + 1) for s in itertools.combinations(MODALITIES, r)]
# per-fusion options that keep the test models tiny
SMALL = {
    "concat": {},
    "kronecker": {"gated_dim": 3},
    "lowrank": {"rank": 3},
    "coattention": {"n_heads": 2, "n_layers": 1},
    "pathway_cross": {"n_heads": 2},
    "bicross": {"n_heads": 2},
}
# how each fusion treats an absent modality (documented in its docstring)
EXCLUDES_MISSING = {"kronecker": "units", "lowrank": "factors"}


def make_fusion(name: str, modalities: tuple[str, ...] = MODALITIES, **kwargs) -> torch.nn.Module:
    """A small fusion with a fixed seed."""
    torch.manual_seed(0)
    return build_fusion(name, modalities=modalities, dim=DIM, out_dim=OUT_DIM, **{**SMALL[name], **kwargs})


def make_batch(
    batch_size: int = 3, modalities: tuple[str, ...] = MODALITIES, seed: int = 1, missing: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Random tokens with ragged masks (each row keeps 1..N tokens); with ``missing``, modality ``i`` is absent
    for row ``i % batch_size``."""
    gen = torch.Generator().manual_seed(seed)
    tokens, masks = {}, {}
    for i, name in enumerate(MODALITIES):
        if name not in modalities:
            continue
        n = N_TOKENS[name]
        tokens[name] = torch.randn(batch_size, n, DIM, generator=gen)
        counts = torch.randint(1, n + 1, (batch_size,), generator=gen)
        masks[name] = torch.arange(n)[None, :] < counts[:, None]
        if missing:
            masks[name][i % batch_size] = False
    return tokens, masks


def run_eval(fusion: torch.nn.Module, tokens: dict, masks: dict) -> dict:
    fusion.eval()
    with torch.no_grad():
        return fusion(tokens, masks)


@pytest.mark.parametrize("name", sorted(FUSIONS))
@pytest.mark.parametrize("subset", SUBSETS, ids="+".join)
def test_forward_backward_every_subset(name: str, subset: tuple[str, ...]) -> None:
    fusion = make_fusion(name).train()
    tokens, masks = make_batch(modalities=subset)
    out = fusion(tokens, masks)
    assert out["embedding"].shape == (3, OUT_DIM)
    assert torch.isfinite(out["embedding"]).all()
    loss = out["embedding"].square().sum()
    for name_m, weights in out["attention"].items():
        assert name_m in subset
        assert weights.shape == masks[name_m].shape
        assert (weights[~masks[name_m]] == 0).all(), "padded or absent tokens must get zero attention"
        present = masks[name_m].any(dim=1)
        torch.testing.assert_close(weights.sum(dim=1)[present], torch.ones(int(present.sum())))
        loss = loss + (weights * torch.arange(weights.shape[1])).sum()
    loss.backward()
    grads = [p.grad for p in fusion.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", sorted(FUSIONS))
@pytest.mark.parametrize("junk", ["large", "nan"])
def test_padding_cannot_change_outputs(name: str, junk: str) -> None:
    fusion = make_fusion(name)
    tokens, masks = make_batch()
    reference = run_eval(fusion, tokens, masks)
    gen = torch.Generator().manual_seed(7)
    padded_tokens, padded_masks = {}, {}
    for name_m, x in tokens.items():
        extra = 3
        x = torch.cat([x, torch.zeros(x.shape[0], extra, DIM)], dim=1)
        mask = torch.cat([masks[name_m], torch.zeros(x.shape[0], extra, dtype=torch.bool)], dim=1)
        fill = torch.full_like(x, float("nan")) if junk == "nan" else 1e3 * torch.randn(x.shape, generator=gen)
        padded_tokens[name_m] = torch.where(mask[..., None], x, fill)
        padded_masks[name_m] = mask
    out = run_eval(fusion, padded_tokens, padded_masks)
    torch.testing.assert_close(out["embedding"], reference["embedding"], rtol=1e-5, atol=1e-5)
    for name_m, weights in reference["attention"].items():
        n = weights.shape[1]
        torch.testing.assert_close(out["attention"][name_m][:, :n], weights, rtol=1e-5, atol=1e-6)
        assert (out["attention"][name_m][:, n:] == 0).all()
    if "coattention" in reference:
        n_q, n_p = reference["coattention"].shape[1:]
        torch.testing.assert_close(out["coattention"][:, :n_q, :n_p], reference["coattention"], rtol=1e-5, atol=1e-6)
        assert (out["coattention"][:, n_q:] == 0).all() and (out["coattention"][:, :, n_p:] == 0).all()


@pytest.mark.parametrize("name", sorted(FUSIONS))
@pytest.mark.parametrize("absent", MODALITIES)
def test_missing_sample_independent_of_batch(name: str, absent: str) -> None:
    """A sample without ``absent`` gives the same output alone (modality left out) as beside samples that have it."""
    fusion = make_fusion(name)
    tokens, masks = make_batch(missing=False)
    masks[absent][0] = False
    in_batch = run_eval(fusion, tokens, masks)
    alone_tokens = {k: v[:1] for k, v in tokens.items() if k != absent}
    alone_masks = {k: v[:1] for k, v in masks.items() if k != absent}
    alone = run_eval(fusion, alone_tokens, alone_masks)
    torch.testing.assert_close(in_batch["embedding"][:1], alone["embedding"], rtol=1e-5, atol=1e-6)
    for name_m, weights in alone["attention"].items():
        torch.testing.assert_close(in_batch["attention"][name_m][:1], weights, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_sample_with_no_modality_is_finite_and_independent(name: str) -> None:
    fusion = make_fusion(name)
    tokens, masks = make_batch(missing=False)
    for mask in masks.values():
        mask[1] = False
    out = run_eval(fusion, tokens, masks)
    assert torch.isfinite(out["embedding"]).all()
    alone = run_eval(fusion, {k: v[1:2] for k, v in tokens.items()}, {k: v[1:2] for k, v in masks.items()})
    torch.testing.assert_close(out["embedding"][1:2], alone["embedding"], rtol=1e-5, atol=1e-6)


def fused_vector(fusion: torch.nn.Module, tokens: dict, masks: dict) -> torch.Tensor:
    """The combined representation before the output layers (the input of ``mlp``/``encoder``, else the
    embedding), so that a dead ReLU cannot hide a change."""
    head = getattr(fusion, "mlp", None) or getattr(fusion, "encoder", None)
    if head is None:
        return run_eval(fusion, tokens, masks)["embedding"]
    captured = []
    handle = head.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    run_eval(fusion, tokens, masks)
    handle.remove()
    return captured[0]


@pytest.mark.parametrize("name", sorted(FUSIONS))
@pytest.mark.parametrize("absent", MODALITIES)
def test_missing_modality_semantics(name: str, absent: str) -> None:
    """Fusions with missing embeddings: changing the embedding of ``absent`` moves only the samples lacking it.
    Excluding fusions: changing the weights of ``absent`` moves only the samples that have it."""
    fusion = make_fusion(name)
    tokens, masks = make_batch(missing=False)
    masks[absent][0] = False
    before = fused_vector(fusion, tokens, masks)
    with torch.no_grad():
        if name in EXCLUDES_MISSING:
            weights = getattr(fusion, EXCLUDES_MISSING[name])[absent]
            for param in weights.parameters() if isinstance(weights, torch.nn.Module) else [weights]:
                param.add_(torch.randn_like(param))
        else:
            fusion.missing.vectors[absent].add_(1.0)
    after = fused_vector(fusion, tokens, masks)
    lacking_changes = not torch.allclose(before[0], after[0])
    having_changes = not torch.allclose(before[1:], after[1:])
    if name in EXCLUDES_MISSING:
        assert not lacking_changes and having_changes
    else:
        assert lacking_changes and not having_changes


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_permuting_tokens_permutes_attention(name: str) -> None:
    """No positional information: permuting the tokens within each modality leaves the embedding unchanged and
    permutes the attention."""
    fusion = make_fusion(name)
    tokens, masks = make_batch()
    reference = run_eval(fusion, tokens, masks)
    gen = torch.Generator().manual_seed(3)
    perms = {k: torch.randperm(v.shape[1], generator=gen) for k, v in tokens.items()}
    out = run_eval(
        fusion, {k: v[:, perms[k]] for k, v in tokens.items()}, {k: v[:, perms[k]] for k, v in masks.items()}
    )
    torch.testing.assert_close(out["embedding"], reference["embedding"], rtol=1e-5, atol=1e-5)
    for name_m, weights in reference["attention"].items():
        torch.testing.assert_close(out["attention"][name_m], weights[:, perms[name_m]], rtol=1e-5, atol=1e-6)


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in out if isinstance(out, tuple | list) else (out,):
            if isinstance(item, torch.Tensor):
                self.largest = max(self.largest, item.numel())
        return out


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_memory_linear_in_patches(name: str) -> None:
    """No tensor anywhere near ``N_patches ** 2``: the largest intermediate grows linearly with the bag."""
    fusion = make_fusion(name).eval()
    largest = []
    for n_patches in (1000, 2000):
        tokens, masks = make_batch(batch_size=1, missing=False)
        tokens["wsi"] = torch.randn(1, n_patches, DIM)
        masks["wsi"] = torch.ones(1, n_patches, dtype=torch.bool)
        recorder = _LargestTensor()
        with torch.no_grad(), recorder:
            fusion(tokens, masks)
        largest.append(recorder.largest)
    assert largest[1] <= 2.2 * largest[0], f"largest tensor grew {largest[1] / largest[0]:.2f}x for 2x patches"
    assert largest[1] < 2000**2 / 10


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_forward_backward_from_1_to_100k_patches(name: str) -> None:
    """A batch of a 1-patch and a 100,000-patch sample with every modality: finite outputs, zero attention on the
    padding and finite gradients reaching the patches of both samples. Eval mode: with dropout, MCAT's final ReLU
    can switch off every output unit of one sample (6 here), which would legitimately cut its gradient."""
    fusion = make_fusion(name).eval()
    tokens, masks = make_batch(batch_size=2, missing=False)
    tokens["wsi"] = torch.randn(2, 100_000, DIM, requires_grad=True)
    masks["wsi"] = torch.zeros(2, 100_000, dtype=torch.bool)
    masks["wsi"][0, 0] = True
    masks["wsi"][1] = True
    out = fusion(tokens, masks)
    assert torch.isfinite(out["embedding"]).all()
    if "wsi" in out["attention"]:  # fusions that attend over the patches
        weights = out["attention"]["wsi"]
        assert (weights[0, 1:] == 0).all() and float(weights[0, 0]) == pytest.approx(1.0)
        torch.testing.assert_close(weights[1].sum(), torch.tensor(1.0))
    readout = torch.randn(out["embedding"].shape, generator=torch.Generator().manual_seed(7))
    (out["embedding"] * readout).sum().backward()
    grad = tokens["wsi"].grad
    assert torch.isfinite(grad).all() and (grad[0, 1:] == 0).all()
    assert grad[0, 0].abs().sum() > 0 and grad[1].abs().sum() > 0


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_ill_inputs(name: str) -> None:
    fusion = make_fusion(name)
    tokens, masks = make_batch()
    with pytest.raises(ValueError, match="unknown modalities"):
        fusion({**tokens, "radiology": tokens["wsi"]}, {**masks, "radiology": masks["wsi"]})
    with pytest.raises(ValueError, match="same modalities"):
        fusion(tokens, {k: v for k, v in masks.items() if k != "text"})
    with pytest.raises(ValueError, match="at least one"):
        fusion({}, {})
    with pytest.raises(ValueError, match=r"\[B, N, 8\]"):
        fusion({**tokens, "clinical": torch.randn(3, DIM)}, masks)
    with pytest.raises(ValueError, match="bool"):
        fusion(tokens, {**masks, "wsi": masks["wsi"].float()})
    with pytest.raises(ValueError, match="bool"):
        fusion(tokens, {**masks, "wsi": masks["wsi"][:, :2]})
    with pytest.raises(ValueError, match="batch size"):
        fusion({**tokens, "text": tokens["text"][:2]}, {**masks, "text": masks["text"][:2]})


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_ill_construction(name: str) -> None:
    with pytest.raises(ValueError, match="distinct"):
        make_fusion(name, modalities=("wsi", "wsi", "omics"))
    with pytest.raises(ValueError, match="sequence of names"):
        make_fusion(name, modalities="wsi")
    with pytest.raises(ValueError, match=r"without '\.'"):
        make_fusion(name, modalities=("wsi", "omics", "a.b"))
    if name in ("coattention", "pathway_cross", "bicross"):
        with pytest.raises(ValueError, match="patch_modality"):
            make_fusion(name, modalities=("omics", "text"))


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_export_with_dynamic_patch_count(name: str) -> None:
    """``torch.export`` (the deploy path) traces each fusion once and runs bags of another size identically."""
    fusion = make_fusion(name).eval()
    tokens, masks = make_batch()
    tokens["wsi"], masks["wsi"] = torch.randn(3, 20, DIM), torch.rand(3, 20) > 0.3
    dynamic = {k: ({1: torch.export.Dim.AUTO} if k == "wsi" else None) for k in tokens}
    exported = torch.export.export(fusion, (tokens, masks), dynamic_shapes={"tokens": dynamic, "masks": dynamic})
    other_tokens, other_masks = make_batch(seed=5)
    expected = run_eval(fusion, other_tokens, other_masks)
    out = exported.module()(other_tokens, other_masks)
    torch.testing.assert_close(out["embedding"], expected["embedding"], rtol=1e-5, atol=1e-6)
    for name_m, weights in expected["attention"].items():
        torch.testing.assert_close(out["attention"][name_m], weights, rtol=1e-5, atol=1e-6)

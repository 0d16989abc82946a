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

"""Omics encoders: SNN self-normalisation at init (a property a ReLU net of the same init lacks), LeCun init,
the grouped pathway encoder against a per-pathway loop, gene locality of every token, and real pathway tables."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from monai_ext.networks.omics import SNN, GeneFamilyEncoder, PathwayTokenEncoder

GROUPS = [[0, 3, 5], [1], [2, 4, 6, 7, 8, 9, 10, 11, 12], [5, 13], [0, 1, 2, 3]]
N_GENES = 16


def _relu_twin(depth: int, in_dim: int, width: int) -> torch.nn.Sequential:
    layers, fan_in = [], in_dim
    for _ in range(depth):
        linear = torch.nn.Linear(fan_in, width)
        torch.nn.init.normal_(linear.weight, 0.0, fan_in**-0.5)
        torch.nn.init.zeros_(linear.bias)
        layers += [linear, torch.nn.ReLU()]
        fan_in = width
    return torch.nn.Sequential(*layers)


@pytest.mark.parametrize(("depth", "train"), [(4, False), (8, False), (8, True)])
def test_snn_self_normalises(depth: int, train: bool) -> None:
    """Klambauer et al. 2017: with SELU, LeCun init (and AlphaDropout) activations keep mean ~0 and variance ~1."""
    torch.manual_seed(0)
    x = torch.randn(2048, 500)
    snn = SNN(500, hidden=(256,) * depth, dropout=0.1 if train else 0.0).train(train)
    with torch.no_grad():
        y = snn(x)
        relu = _relu_twin(depth, 500, 256)(x)
    assert abs(y.mean().item()) < 0.1
    assert 0.8 < y.var().item() < 1.2
    assert relu.var().item() < 0.1, "the same init without SELU does not normalise (the test can tell)"


def test_snn_lecun_init_and_shapes() -> None:
    torch.manual_seed(0)
    snn = SNN(400, hidden=(300, 7), dropout=0.25)
    linears = [m for m in snn.layers if isinstance(m, torch.nn.Linear)]
    assert abs(linears[0].weight.std().item() - 400**-0.5) < 0.05 * 400**-0.5
    assert all((lin.bias == 0).all() for lin in linears)
    assert any(isinstance(m, torch.nn.AlphaDropout) for m in snn.layers)
    assert snn(torch.randn(2, 5, 400)).shape == (2, 5, 7) and snn.out_dim == 7


def test_snn_ill_args() -> None:
    with pytest.raises(ValueError, match="positive"):
        SNN(0)
    with pytest.raises(ValueError, match="non-empty"):
        SNN(4, hidden=())
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        SNN(4)(torch.randn(2, 5))


def _pathway_reference(encoder: PathwayTokenEncoder, genes: torch.Tensor) -> torch.Tensor:
    """A plain loop: pathway p's first layer is its own [n_p, H] weight applied to its genes."""
    order = torch.argsort(encoder.restore_order)  # position in the bucket concatenation -> pathway id
    slot = 0
    tokens = [None] * encoder.n_pathways
    for bucket in encoder.buckets:
        for row in range(bucket.gene_index.shape[0]):
            p = int(order[slot])
            n = int(bucket.valid[row].sum())
            w1, b1 = bucket.weight[row, :n], bucket.bias[row]
            hidden = torch.selu(genes[:, GROUPS[p]] @ w1 + b1)
            tokens[p] = torch.selu(hidden @ encoder.second_weight[p] + encoder.second_bias[p])
            slot += 1
    return torch.stack(tokens, dim=1)


def test_pathway_encoder_matches_per_pathway_loop() -> None:
    torch.manual_seed(0)
    encoder = PathwayTokenEncoder(GROUPS, 6, hidden=5, n_genes=N_GENES).eval()
    genes = torch.randn(4, N_GENES)
    with torch.no_grad():
        out = encoder(genes)
        torch.testing.assert_close(out, _pathway_reference(encoder, genes))
    assert out.shape == (4, len(GROUPS), 6)


@pytest.mark.parametrize("encoder_cls", [PathwayTokenEncoder, GeneFamilyEncoder])
def test_token_sees_only_its_genes(encoder_cls: type) -> None:
    torch.manual_seed(0)
    encoder = encoder_cls(GROUPS, 6, n_genes=N_GENES).eval()
    genes = torch.randn(2, N_GENES)
    with torch.no_grad():
        base = encoder(genes)
        for gene in range(N_GENES):
            changed = genes.clone()
            changed[:, gene] += 3.0
            out = encoder(changed)
            for p, group in enumerate(GROUPS):
                moved = not torch.allclose(out[:, p], base[:, p])
                assert moved == (gene in group), f"token {p} {'ignored' if gene in group else 'saw'} gene {gene}"


def test_pathway_encoder_init_and_padding_gradients() -> None:
    torch.manual_seed(0)
    groups = [list(range(100)), [100, 101, 102, 103]] * 20
    encoder = PathwayTokenEncoder(groups, 8, hidden=64)
    big = next(b for b in encoder.buckets if b.gene_index.shape[1] == 100)
    assert abs(big.weight.std().item() - 100**-0.5) < 0.05 * 100**-0.5
    encoder(torch.randn(3, 104)).sum().backward()
    for bucket in encoder.buckets:
        assert (bucket.weight.grad[bucket.valid == 0] == 0).all(), "padded weight slots must receive no gradient"


def test_gene_family_encoder_shapes() -> None:
    encoder = GeneFamilyEncoder(GROUPS, 6)
    assert encoder(torch.randn(3, N_GENES)).shape == (3, len(GROUPS), 6)
    assert len(encoder.networks) == len(GROUPS) and encoder.networks[2].in_dim == len(GROUPS[2])


@pytest.mark.parametrize("encoder_cls", [PathwayTokenEncoder, GeneFamilyEncoder])
def test_ill_groups(encoder_cls: type) -> None:
    with pytest.raises(ValueError, match="at least one group"):
        encoder_cls([], 4)
    with pytest.raises(ValueError, match="no genes"):
        encoder_cls([[0], []], 4)
    with pytest.raises(ValueError, match="twice"):
        encoder_cls([[0, 1, 1]], 4)
    with pytest.raises(ValueError, match="outside"):
        encoder_cls([[0, 9]], 4, n_genes=5)
    with pytest.raises(ValueError, match="G >= 10"):
        encoder_cls([[0, 9]], 4)(torch.randn(2, 8))


@pytest.mark.parametrize("table", ["hallmarks_comps.csv", "combine_comps.csv"])
def test_real_pathway_tables(shared_data, table: str) -> None:
    """SurvPath's pathway memberships: padding stays below 2x of the true per-pathway weights."""
    comps = pd.read_csv(shared_data / "pathways" / table, index_col=0)
    groups = [list(comps.index.get_indexer(comps.index[comps[c] > 0])) for c in comps.columns]
    encoder = PathwayTokenEncoder(groups, 16, n_genes=len(comps))
    stored = sum(bucket.weight.numel() for bucket in encoder.buckets)
    true = sum(len(g) for g in groups) * 16
    assert true <= stored < 2 * true
    out = encoder(torch.randn(2, len(comps)))
    assert out.shape == (2, comps.shape[1], 16) and torch.isfinite(out).all()

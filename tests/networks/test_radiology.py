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

"""3D radiology encoder: shapes, gradients, batch independence, TorchScript, learning a spatial cue, bad args."""

from __future__ import annotations

import io

import pytest
import torch

from monai_ext.networks.radiology import Radiology3DEncoder


@pytest.mark.parametrize(
    "in_channels, out_dim, widths, batch, size",
    [
        (1, 128, (16, 32, 64), 2, (32, 32, 32)),
        (1, 16, (4, 8), 1, (12, 20, 9)),
        (2, 32, (8,), 3, (5, 6, 7)),
    ],
)
def test_forward_backward_shapes(in_channels, out_dim, widths, batch, size):
    torch.manual_seed(0)
    encoder = Radiology3DEncoder(in_channels, out_dim, widths).train()
    volumes = torch.randn(batch, in_channels, *size, requires_grad=True)
    embedding = encoder(volumes)
    assert embedding.shape == (batch, out_dim) and torch.isfinite(embedding).all()
    embedding.square().mean().backward()
    assert volumes.grad is not None and volumes.grad.abs().sum() > 0
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


@pytest.mark.parametrize("train", [True, False])
def test_each_embedding_ignores_the_rest_of_the_batch(train):
    """Instance normalisation: a patient's embedding is the same alone or beside others (batch norm would differ)."""
    torch.manual_seed(1)
    encoder = Radiology3DEncoder(1, 24, (4, 8)).train(train)
    volumes = torch.randn(3, 1, 16, 16, 16) * torch.tensor([1.0, 5.0, 0.2]).view(3, 1, 1, 1, 1)
    together = encoder(volumes)
    alone = torch.cat([encoder(volumes[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(together[0], together[1])


def test_learns_where_a_lesion_is():
    """A real property: a few optimiser steps separate volumes by the side (left/right) of a bright blob."""
    torch.manual_seed(2)
    n, size = 16, 16
    volumes = torch.randn(n, 1, size, size, size) * 0.3
    labels = torch.arange(n) % 2
    for i in range(n):
        x = 3 if labels[i] == 0 else size - 7
        y, z = torch.randint(2, size - 6, (2,)).tolist()
        volumes[i, 0, x : x + 4, y : y + 4, z : z + 4] += 3.0
    encoder = Radiology3DEncoder(1, 2, (4, 8))
    optimiser = torch.optim.Adam(encoder.parameters(), lr=1e-2)
    for _ in range(40):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(encoder(volumes), labels)
        loss.backward()
        optimiser.step()
    encoder.eval()
    with torch.no_grad():
        accuracy = (encoder(volumes).argmax(1) == labels).float().mean().item()
    assert accuracy == 1.0 and loss.item() < 0.1


def test_torchscript_round_trip():
    torch.manual_seed(3)
    encoder = Radiology3DEncoder(1, 8, (4, 8)).eval()
    volumes = torch.randn(2, 1, 16, 12, 10)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(encoder), buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    torch.testing.assert_close(loaded(volumes), encoder(volumes))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"in_channels": 0}, "must be positive"),
        ({"out_dim": 0}, "must be positive"),
        ({"widths": ()}, "widths non-empty"),
        ({"widths": (8, 0)}, "must be positive"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ],
)
def test_ill_arg(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Radiology3DEncoder(**kwargs)


@pytest.mark.parametrize("shape", [(2, 16, 16, 16), (2, 3, 16, 16, 16)])
def test_wrong_input_shape(shape):
    with pytest.raises(ValueError, match=r"expected volumes \[B, 1, H, W, D\]"):
        Radiology3DEncoder(1, 8, (4,))(torch.zeros(shape))

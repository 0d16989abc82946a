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

"""ABMIL against a NumPy transcription of Ilse et al. 2018, eq. 8-9 (gated and plain attention)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_ext.networks.mil import ABMIL


def numpy_abmil(model: ABMIL, x: np.ndarray, gated: bool) -> tuple[np.ndarray, np.ndarray]:
    """``a = softmax(w^T (tanh(V h) * sigm(U h)))``, ``z = sum a h`` with ``h = relu(W x + b)``, on one bag."""
    p = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    h = np.maximum(x @ p["encoder.0.weight"].T + p["encoder.0.bias"], 0.0)
    hidden = np.tanh(h @ p["scorer.tanh_branch.0.weight"].T + p["scorer.tanh_branch.0.bias"])
    if gated:
        gate = h @ p["scorer.gate_branch.0.weight"].T + p["scorer.gate_branch.0.bias"]
        hidden = hidden / (1.0 + np.exp(-gate))
    logits = (hidden @ p["scorer.to_logits.weight"].T + p["scorer.to_logits.bias"])[:, 0]
    attention = np.exp(logits - logits.max())
    attention /= attention.sum()
    return attention @ h, attention


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("n", [1, 2, 57])
def test_matches_numpy(gated: bool, n: int) -> None:
    torch.manual_seed(0)
    model = ABMIL(in_dim=10, hidden_dim=8, attention_dim=5, gated=gated).eval()
    x = torch.randn(1, n, 10)
    out = model(x)
    embedding, attention = numpy_abmil(model, x[0].double().numpy(), gated)
    np.testing.assert_allclose(out["embedding"][0].detach().numpy(), embedding, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["attention"][0].detach().numpy(), attention, rtol=1e-5, atol=1e-7)


def test_attention_follows_the_scores() -> None:
    """Pushing one patch's attention logit up moves attention mass onto that patch."""
    torch.manual_seed(0)
    model = ABMIL(in_dim=4, hidden_dim=4, attention_dim=3, gated=False).eval()
    with torch.no_grad():
        model.encoder[0].weight.copy_(torch.eye(4))
        model.encoder[0].bias.zero_()
        model.scorer.tanh_branch[0].weight.copy_(torch.eye(3, 4) * 5)
        model.scorer.tanh_branch[0].bias.zero_()
        model.scorer.to_logits.weight.fill_(2.0)  # logit 6 * tanh(5) for the marked patch, 0 for the others
    x = torch.zeros(1, 6, 4)
    x[0, 4] = 1.0  # the only patch with a positive score
    attention = model(x)["attention"][0]
    torch.testing.assert_close(attention[4], 1.0 / (1.0 + 5.0 * torch.exp(-6.0 * torch.tanh(torch.tensor(5.0)))))

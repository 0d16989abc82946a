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

"""ModalTune as a single-task network: the shared head's outputs, built from a bundle's modalities."""

from __future__ import annotations

import pytest
import torch

from monai_ext.networks.modaltune import build_modaltune
from monai_ext.networks.modaltune_task import ModalTuneTask, build_modaltune_task


@pytest.mark.parametrize(
    ("kind", "keys"), [("survival", {"logits", "hazards", "survival", "risk"}), ("classification", {"logits", "probs"})]
)
def test_modaltune_task_gives_the_task_outputs(kind: str, keys: set[str]) -> None:
    torch.manual_seed(0)
    model = build_modaltune(wsi_dim=5, tasks={"t": (kind, 3)}, modalities={"omics": 4}, dim=8, freeze_encoder=False)
    batch = {"wsi": torch.randn(2, 6, 5), "wsi_mask": torch.ones(2, 6, dtype=torch.bool), "omics": torch.randn(2, 4)}
    out = ModalTuneTask(model, "t", ("wsi", "omics")).eval()(batch)
    reference = model.eval()(batch)
    assert set(out) == keys | {"embedding"}
    for key in keys:
        torch.testing.assert_close(out[key], reference["tasks"]["t"][key])
    torch.testing.assert_close(out["embedding"], reference["embedding"])


def test_builder_reads_the_bundle_modalities_and_widths() -> None:
    torch.manual_seed(0)
    network = build_modaltune_task(
        modalities=["wsi", "omics", "clinical", "text"],
        input_dims={"wsi": 8, "omics": 12, "clinical": 3, "text": 6},
        task="classification",
        n_outputs=2,
        dim=16,
        depth=3,
    )
    assert sorted(network.model.tokenizers) == ["clinical", "omics", "text"]
    assert len(network.model.adapters) == 3 and network.modalities == ("wsi", "omics", "clinical", "text")
    batch = {
        "wsi": torch.randn(1, 5, 8),
        "omics": torch.randn(1, 12),
        "clinical": torch.randn(1, 3),
        "text": torch.randn(1, 4, 6),
        "text_mask": torch.ones(1, 4, dtype=torch.bool),
    }
    assert network.eval()(batch)["probs"].shape == (1, 2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"task": "staging"}, "survival and subtyping bundles"),
        ({"modalities": ["omics"]}, "needs 'wsi'"),
    ],
)
def test_builder_refuses_what_modaltune_cannot_be(kwargs, match) -> None:
    arguments = {"modalities": ["wsi", "omics"], "input_dims": {"wsi": 8, "omics": 4}, "task": "survival"}
    with pytest.raises(ValueError, match=match):
        build_modaltune_task(**{**arguments, **kwargs}, n_outputs=3)


def test_task_view_needs_a_shared_head() -> None:
    model = build_modaltune(wsi_dim=5, tasks={"t": ("survival", 3)}, cohorts=["a"], shared_heads=False, dim=8)
    with pytest.raises(ValueError, match="no shared head"):
        ModalTuneTask(model, "t", ("wsi",))

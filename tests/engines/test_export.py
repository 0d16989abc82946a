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

"""TorchScript export wrapper: transparent state dict, scripted outputs equal to eager ones on other bag sizes and
with missing modalities, a save/load round trip."""

from __future__ import annotations

import io

import pytest
import torch

from monai_ext.engines.export import ExportableNetwork, example_batch
from monai_ext.networks.hierarchical import SlideToPatientModel
from monai_ext.networks.multimodal import MultimodalModel

DIMS = {"wsi": 16, "omics": 12, "clinical": 3, "text": 8}
MODALITIES = ("wsi", "omics", "clinical", "text")


def _network(fusion: str, task: str = "survival", modalities: tuple[str, ...] = MODALITIES) -> MultimodalModel:
    torch.manual_seed(0)
    return MultimodalModel(
        modalities=modalities,
        wsi_dim=DIMS["wsi"],
        omics_dim=DIMS["omics"],
        clinical_dim=DIMS["clinical"],
        text_dim=DIMS["text"],
        dim=16,
        fusion=fusion,
        task=task,
        n_classes=3,
    ).eval()


def _batches() -> dict[str, dict[str, torch.Tensor]]:
    """One-patient batches unlike the trace example (57 patches, 5 notes), with modalities missing."""
    generator = torch.Generator().manual_seed(3)
    full = {
        "wsi": torch.randn(1, 57, DIMS["wsi"], generator=generator),
        "wsi_mask": torch.ones(1, 57, dtype=torch.bool),
        "omics": torch.randn(1, DIMS["omics"], generator=generator),
        "omics_mask": torch.ones(1, dtype=torch.bool),
        "clinical": torch.randn(1, DIMS["clinical"], generator=generator),
        "clinical_mask": torch.ones(1, dtype=torch.bool),
        "text": torch.randn(1, 5, DIMS["text"], generator=generator),
        "text_mask": torch.tensor([[True, True, True, False, False]]),
    }
    return {
        "full": full,
        "no omics key": {k: v for k, v in full.items() if not k.startswith("omics")},
        "omics masked": {**full, "omics_mask": torch.zeros(1, dtype=torch.bool)},
        "no text, no clinical": {k: v for k, v in full.items() if not k.startswith(("text", "clinical"))},
        "slides only, no mask": {"wsi": full["wsi"]},
        "padded pair": example_batch(MODALITIES, DIMS, seed=9),
    }


@pytest.mark.parametrize("fusion", ["concat", "coattention", "kronecker", "lowrank"])
@pytest.mark.parametrize("task", ["survival", "classification"])
def test_scripted_equals_eager(fusion: str, task: str) -> None:
    wrapper = ExportableNetwork(_network(fusion, task), modalities=MODALITIES, input_dims=DIMS).eval()
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(wrapper), buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    for name, batch in _batches().items():
        with torch.no_grad():
            eager, scripted = wrapper(batch), loaded(batch)
        tensors = {key for key, value in eager.items() if isinstance(value, torch.Tensor)}
        assert set(scripted) == tensors, name
        for key in tensors:
            torch.testing.assert_close(scripted[key], eager[key], rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")


@pytest.mark.parametrize("fusion", ["concat", "coattention"])
def test_slide_to_patient_scripted_equals_eager(fusion: str) -> None:
    modalities = ("wsi", "clinical", "text")
    torch.manual_seed(0)
    slide_model = MultimodalModel(
        modalities=modalities,
        wsi_dim=DIMS["wsi"],
        clinical_dim=DIMS["clinical"],
        text_dim=DIMS["text"],
        dim=16,
        fusion=fusion,
        fusion_kwargs={"query_modality": "text", "n_layers": 1} if fusion == "coattention" else None,
        task="classification",
        n_classes=4,
    )
    network = SlideToPatientModel(slide_model=slide_model, hidden_dim=16)
    wrapper = ExportableNetwork(network, modalities=modalities, input_dims=DIMS, slide_index=True).eval()
    scripted = torch.jit.script(wrapper)
    three_slides = {  # slides 0, 2, 1 in that order, of 20, 35 and 15 patches; slide 3 absent
        "wsi": torch.randn(1, 70, DIMS["wsi"], generator=torch.Generator().manual_seed(1)),
        "wsi_mask": torch.ones(1, 70, dtype=torch.bool),
        "wsi_slide_index": torch.cat([torch.zeros(20), torch.full((35,), 2), torch.ones(15)]).long()[None],
        "clinical": torch.randn(1, DIMS["clinical"]),
        "text": torch.randn(1, 6, DIMS["text"]),
    }
    batches = {
        "padded pair": example_batch(modalities, DIMS, slide_index=True, seed=5),
        "three slides": three_slides,
        "no clinical": {k: v for k, v in three_slides.items() if k != "clinical"},
    }
    for name, batch in batches.items():
        with torch.no_grad():
            eager, exported = wrapper(batch), scripted(batch)
        assert set(exported) == set(eager), name
        for key, value in eager.items():
            torch.testing.assert_close(exported[key], value, rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")


def test_state_dict_is_the_wrapped_networks() -> None:
    network = _network("concat")
    wrapper = ExportableNetwork(_network("concat"), modalities=MODALITIES, input_dims=DIMS)
    assert list(wrapper.state_dict()) == list(network.state_dict())
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(1.0)
    wrapper.load_state_dict(network.state_dict())
    batch = _batches()["full"]
    torch.testing.assert_close(wrapper.eval()(batch)["risk"], network(batch)["risk"])
    with pytest.raises(RuntimeError, match="Missing key"):
        wrapper.load_state_dict({})


@pytest.mark.parametrize(
    ("modalities", "dims", "match"),
    [
        (("wsi", "radiology"), DIMS, "supports"),
        (("wsi", "omics"), {"wsi": 16}, "omics"),
        (("wsi", "omics"), {"wsi": 16, "omics": 0}, "omics"),
    ],
)
def test_ill_arg(modalities: tuple[str, ...], dims: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ExportableNetwork(torch.nn.Identity(), modalities=modalities, input_dims=dims)


def test_export_needs_slides() -> None:
    wrapper = ExportableNetwork(_network("concat", modalities=("omics",)), modalities=("omics",), input_dims=DIMS)
    with pytest.raises(ValueError, match="wsi"):
        torch.jit.script(wrapper)
